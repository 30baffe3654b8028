//! Requests that need a host's own connection, forwarded to the replica
//! that owns the host. Where several replicas share one database, only the
//! owner of a host connects to it (see `overvisor_control::replicas`);
//! a live read — a VM's details or page, a host's facts —, a deployment's
//! pre-checks or a console ticket that land on another replica are passed
//! on to the owner as they came (method, path, query, credentials, body;
//! API requests to its API, portal pages to its portal) and its answer is
//! passed back, so no second SSH connection is opened. Lifecycle requests
//! need no forwarding: they become jobs, which only the owner runs. A
//! console's socket is relayed to the replica that issued its ticket
//! (`api::consoles`).

use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use overvisor_model::host::HostId;

use crate::AppState;
use crate::error::ApiError;

/// Marks a forwarded request, so it is never forwarded twice (a lease
/// that moved in between is served where it lands).
const FORWARDED_BY: HeaderName = HeaderName::from_static("x-overvisor-forwarded-by");
/// On a forwarded answer: the replica that served it.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-overvisor-served-by");

/// Which listener a route is served on; it is forwarded to the same one
/// of the owner.
#[derive(Clone, Copy)]
enum Face {
    Api,
    Portal,
}

/// Where a route names its host.
#[derive(Clone, Copy)]
enum HostIn {
    /// The path segment at this index (`/api/v1/hosts/{id}`: 4).
    Path(usize),
    /// The `host` field of its form (the deployment wizard).
    Form,
}

/// The routes that use a host's connection while the request waits.
const LIVE_ROUTES: [(Method, &str, Face, HostIn); 11] = [
    (
        Method::GET,
        "/api/v1/hosts/{id}/facts",
        Face::Api,
        HostIn::Path(4),
    ),
    (
        Method::GET,
        "/api/v1/hosts/{id}/vms/{name}",
        Face::Api,
        HostIn::Path(4),
    ),
    (
        Method::POST,
        "/api/v1/hosts/{id}/deployments",
        Face::Api,
        HostIn::Path(4),
    ),
    // The ticket is kept by the owner, which opens the console.
    (
        Method::POST,
        "/api/v1/hosts/{id}/vms/{name}/console",
        Face::Api,
        HostIn::Path(4),
    ),
    (
        Method::GET,
        "/hosts/{id}/facts",
        Face::Portal,
        HostIn::Path(2),
    ),
    (
        Method::GET,
        "/vms/{host}/{uuid}",
        Face::Portal,
        HostIn::Path(2),
    ),
    (
        Method::GET,
        "/vms/{host}/{uuid}/panel",
        Face::Portal,
        HostIn::Path(2),
    ),
    (
        Method::POST,
        "/vms/{host}/{uuid}/action",
        Face::Portal,
        HostIn::Path(2),
    ),
    (
        Method::GET,
        "/vms/{host}/{uuid}/console",
        Face::Portal,
        HostIn::Path(2),
    ),
    (Method::POST, "/deploy", Face::Portal, HostIn::Form),
    (Method::POST, "/deploy/create", Face::Portal, HostIn::Form),
];

/// Headers that belong to one connection, not to the request. `Host`
/// stays: the owner checks a cookie-authenticated change's `Origin`
/// against it.
const HOP_BY_HOP: [HeaderName; 4] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Passes a live request for another replica's host on to that replica.
pub async fn to_owner(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // A lone process owns every host: nothing to look at.
    if !state.app.replicas().is_shared() {
        return next.run(request).await;
    }
    let Some((face, host_in)) = live_route(&request) else {
        return next.run(request).await;
    };
    // The body is read whole either way (it is small: these are reads,
    // forms and deployment requests), to find the host or to pass it on.
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, state.settings.max_body_bytes).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
        .into_response();
    };
    let host = match host_in {
        HostIn::Path(index) => parts.uri.path().split('/').nth(index).map(str::to_owned),
        HostIn::Form => url::form_urlencoded::parse(&body)
            .find(|(name, _)| name == "host")
            .map(|(_, value)| value.into_owned()),
    };
    // A malformed or missing host is the handler's to refuse.
    let Some(host) = host.and_then(|h| h.parse::<HostId>().ok()) else {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    };
    let owner = match state.app.host_owner_elsewhere(host).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return next.run(Request::from_parts(parts, Body::from(body))).await,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let url = match face {
        Face::Api => owner.api,
        Face::Portal => owner.ui,
    };
    let unavailable = |why: &str| {
        tracing::warn!(%host, why, "cannot forward a request to the host's owner");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the replica that owns this host did not answer; retry in a moment",
        )
        .into_response()
    };
    let Some(url) = url else {
        return unavailable("it announced no URL (replica_url, replica_ui_url)");
    };
    match forward(&state, &url, parts, body).await {
        Ok(response) => response,
        Err(err) => unavailable(&err.to_string()),
    }
}

/// The face and host position of a live request not forwarded already.
fn live_route(request: &Request) -> Option<(Face, HostIn)> {
    if request.headers().contains_key(&FORWARDED_BY) {
        return None;
    }
    let matched = request.extensions().get::<MatchedPath>()?.as_str();
    LIVE_ROUTES
        .iter()
        .find(|(method, route, ..)| method == request.method() && *route == matched)
        .map(|(_, _, face, host_in)| (*face, *host_in))
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("building the answer: {0}")]
    Answer(#[from] axum::http::Error),
}

async fn forward(
    state: &AppState,
    owner: &str,
    parts: axum::http::request::Parts,
    body: axum::body::Bytes,
) -> Result<Response, ForwardError> {
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let mut outgoing = state.settings.peers.request(
        parts.method.clone(),
        format!("{}{path}", owner.trim_end_matches('/')),
    );
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(name) && *name != crate::vouch::CLIENT {
            outgoing = outgoing.header(name, value);
        }
    }
    let client = crate::auth::client_info(&parts, &state.settings).ip;
    let method = parts.method.as_str();
    if let Some(vouched) = state.settings.vouch.header(client.as_deref(), method, path) {
        outgoing = outgoing.header(&crate::vouch::CLIENT, vouched);
    }
    let answer = outgoing
        .header(&FORWARDED_BY, state.app.replicas().id())
        .body(body)
        .send()
        .await?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !HOP_BY_HOP.contains(name) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await?;
    Ok(response.body(Body::from(bytes))?)
}

/// On the owner: says which replica served a forwarded request.
pub async fn mark_served(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let forwarded = request.headers().contains_key(&FORWARDED_BY);
    let mut response = next.run(request).await;
    if forwarded && let Ok(me) = header::HeaderValue::from_str(state.app.replicas().id()) {
        response.headers_mut().insert(SERVED_BY, me);
    }
    response
}

/// What a relayed console socket carries to the replica that holds the
/// console: the credential and what the same-origin check reads.
const RELAYED: [HeaderName; 5] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::ORIGIN,
    header::HOST,
    HeaderName::from_static("sec-fetch-site"),
];

/// Relays a console socket to the replica that issued its ticket (at its
/// API, `issuer`): that replica redeems the ticket and checks the caller
/// as if the viewer had come to it. Its refusal (an unknown ticket, say)
/// is answered as it came, before any upgrade; then frames pass both ways
/// unchanged until either side ends. A slow viewer slows the relay, which
/// slows the holder's socket, so the holder's own rules drop it.
pub async fn console_relay(
    state: &AppState,
    issuer: &str,
    path: &str,
    headers: &axum::http::HeaderMap,
    client: Option<&str>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Result<Response, ApiError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let unavailable = |why: String| {
        tracing::warn!(
            issuer,
            why,
            "cannot relay a console to the replica that holds it"
        );
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the replica that holds this console did not answer; ask for a new ticket",
        )
    };
    let url = format!(
        "{}{path}",
        issuer.trim_end_matches('/').replacen("http", "ws", 1)
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| unavailable(e.to_string()))?;
    for name in RELAYED {
        if let Some(value) = headers.get(&name) {
            request.headers_mut().insert(name, value.clone());
        }
    }
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_static("binary"),
    );
    if let Ok(me) = header::HeaderValue::from_str(state.app.replicas().id()) {
        request.headers_mut().insert(FORWARDED_BY, me);
    }
    if let Some(vouched) = state.settings.vouch.header(client, "GET", path) {
        request.headers_mut().insert(crate::vouch::CLIENT, vouched);
    }
    let upstream = match tokio_tungstenite::connect_async(request).await {
        Ok((upstream, _)) => upstream,
        Err(tokio_tungstenite::tungstenite::Error::Http(refused)) => {
            let (parts, body) = refused.into_parts();
            return Ok((
                parts.status,
                parts.headers,
                Body::from(body.unwrap_or_default()),
            )
                .into_response());
        }
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let (sockets, closing) = (state.settings.sockets.clone(), state.app.events().closing());
    Ok(upgrade
        .protocols(["binary"])
        .on_upgrade(move |socket| sockets.track_future(relay_frames(socket, upstream, closing))))
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Passes frames both ways until either side ends, and the end with them;
/// when this replica stops (`closing`), tells the viewer to reconnect.
async fn relay_frames(
    socket: axum::extract::ws::WebSocket,
    upstream: Upstream,
    closing: tokio_util::sync::CancellationToken,
) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Up;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame as UpClose;
    let (mut down_tx, mut down_rx) = socket.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    loop {
        tokio::select! {
            () = closing.cancelled() => {
                let end = overvisor_control::events::StreamEnd::ShuttingDown;
                let _ = down_tx
                    .send(Message::Close(Some(CloseFrame {
                        code: crate::api::events::CLOSE_SHUTTING_DOWN,
                        reason: end.message().into(),
                    })))
                    .await;
                let _ = up_tx.send(Up::Close(None)).await;
                break;
            }
            frame = up_rx.next() => {
                let frame = match frame {
                    Some(Ok(Up::Binary(data))) => Message::Binary(data),
                    Some(Ok(Up::Text(text))) => Message::Text(text.as_str().into()),
                    // Keeps whatever sits between the viewer and us open.
                    Some(Ok(Up::Ping(data))) => Message::Ping(data),
                    Some(Ok(Up::Pong(_) | Up::Frame(_))) => continue,
                    Some(Ok(Up::Close(end))) => {
                        let end = end.map(|f| CloseFrame {
                            code: f.code.into(),
                            reason: f.reason.as_str().into(),
                        });
                        let _ = down_tx.send(Message::Close(end)).await;
                        break;
                    }
                    Some(Err(_)) | None => {
                        let _ = down_tx
                            .send(Message::Close(Some(CloseFrame {
                                code: 1011,
                                reason: "the replica that holds this console went away".into(),
                            })))
                            .await;
                        break;
                    }
                };
                if down_tx.send(frame).await.is_err() {
                    let _ = up_tx.send(Up::Close(None)).await;
                    break;
                }
            }
            frame = down_rx.next() => {
                let frame = match frame {
                    Some(Ok(Message::Binary(data))) => Up::Binary(data),
                    Some(Ok(Message::Text(text))) => Up::Text(text.as_str().into()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(end))) => {
                        let end = end.map(|f| UpClose {
                            code: f.code.into(),
                            reason: f.reason.as_str().into(),
                        });
                        let _ = up_tx.send(Up::Close(end)).await;
                        break;
                    }
                    Some(Err(_)) | None => {
                        let _ = up_tx.send(Up::Close(None)).await;
                        break;
                    }
                };
                if up_tx.send(frame).await.is_err() {
                    break;
                }
            }
        }
    }
}
