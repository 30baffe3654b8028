//! Requests that need a host's own connection, forwarded to the replica
//! that owns the host. Where several replicas share one database, only the
//! owner of a host connects to it (see `overvisor_control::replicas`);
//! a live read — a VM's details, a host's facts — or a deployment's
//! pre-checks that land on another replica are passed on to the owner as
//! they came (method, path, query, credentials, body) and its answer is
//! passed back, so no second SSH connection is opened. Lifecycle requests
//! need no forwarding: they become jobs, which only the owner runs.

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

/// The routes that use a host's connection while the request waits.
const LIVE_ROUTES: [(Method, &str); 3] = [
    (Method::GET, "/api/v1/hosts/{id}/facts"),
    (Method::GET, "/api/v1/hosts/{id}/vms/{name}"),
    (Method::POST, "/api/v1/hosts/{id}/deployments"),
];

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Passes a live request for another replica's host on to that replica.
pub async fn to_owner(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(host) = live_host(&request) else {
        return next.run(request).await;
    };
    let owner = match state.app.host_owner_elsewhere(host).await {
        Ok(Some(url)) => url,
        Ok(None) => return next.run(request).await,
        Err(err) => return ApiError::from(err).into_response(),
    };
    match forward(&state, &owner, request).await {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(%host, owner = %owner, error = %err, "cannot forward a request to the host's owner");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the replica that owns this host did not answer; retry in a moment",
            )
            .into_response()
        }
    }
}

/// The host of a live request that was not forwarded already.
fn live_host(request: &Request) -> Option<HostId> {
    if request.headers().contains_key(&FORWARDED_BY) {
        return None;
    }
    let matched = request.extensions().get::<MatchedPath>()?.as_str();
    if !LIVE_ROUTES
        .iter()
        .any(|(method, route)| method == request.method() && *route == matched)
    {
        return None;
    }
    // `/api/v1/hosts/{id}/…`: a malformed id is the handler's to refuse.
    request.uri().path().split('/').nth(4)?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("reading the request body: {0}")]
    Body(String),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("building the answer: {0}")]
    Answer(#[from] axum::http::Error),
}

async fn forward(
    state: &AppState,
    owner: &str,
    request: Request,
) -> Result<Response, ForwardError> {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, state.settings.max_body_bytes)
        .await
        .map_err(|e| ForwardError::Body(e.to_string()))?;
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let mut outgoing = state.settings.peers.request(
        parts.method.clone(),
        format!("{}{path}", owner.trim_end_matches('/')),
    );
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(name) {
            outgoing = outgoing.header(name, value);
        }
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
