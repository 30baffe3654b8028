//! `GET /api/v1/events`: the live stream of job updates, inventory changes
//! and host connects/disconnects a caller may see, as JSON messages over a
//! WebSocket — or as Server-Sent Events with `Accept: text/event-stream`.
//!
//! The subscription is taken before the upgrade, so nothing published
//! while the handshake completes is lost; the first message is
//! `{"type":"subscribed"}`. A client too slow to keep up gets
//! `{"type":"resync","missed":N}` and should re-read what it shows.
//!
//! A stream lasts only as long as the credential it was opened with. When
//! the key is revoked, rotated or expires, the session ends, the account is
//! disabled or its role changes, the last message is
//! `{"type":"closed","reason":"credentials_revoked"|"role_changed",...}`;
//! a WebSocket then gets a close frame with code [`CLOSE_CREDENTIALS`]
//! (sign in again) or [`CLOSE_ROLE_CHANGED`] (reconnect), and an SSE
//! response ends after a final `event: closed`. So it does, with
//! `"shutting_down"` and [`CLOSE_SHUTTING_DOWN`], when the service stops:
//! a stream never holds up a shutdown.
//!
//! One credential may hold at most `event_streams_per_credential` streams
//! at once; one more is answered `429 too_many_streams` before any upgrade.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use overvisor_control::AppError;
use overvisor_control::authz::Subject;
use overvisor_control::events::{
    Delivery, EventFilter, PresentedCredential, StreamEnd, Subscription,
};
use overvisor_model::account::Credential;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Caller, bearer_token, check_same_origin, cookie_value, session_cookie_name};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Query;
use crate::{AppState, Settings};

/// How often an idle WebSocket is pinged (keeps proxies from closing it).
const PING_EVERY: Duration = Duration::from_secs(25);
const SUBSCRIBED: &str = r#"{"type":"subscribed"}"#;
/// WebSocket close code: the credential is no longer valid (as HTTP 401).
pub const CLOSE_CREDENTIALS: u16 = 4401;
/// WebSocket close code: the account's role changed (as HTTP 403); reconnect.
pub const CLOSE_ROLE_CHANGED: u16 = 4403;
/// WebSocket close code: the service is stopping; reconnect (RFC 6455's
/// "Service Restart").
pub const CLOSE_SHUTTING_DOWN: u16 = 1012;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    /// Comma-separated types or families: `job`, `vm`, `host`,
    /// `job.updated`, `vm.changed`, ... (default: all).
    pub types: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsParams),
    responses(
        (status = 101, description = "WebSocket of JSON events: `{\"seq\", \"at\", \"type\", ...}`; \
            closed with code 4401 when the credential is revoked or expires, 4403 when the account's role changes, \
            1012 when the service shuts down (reconnect), after a last `{\"type\":\"closed\",\"reason\"}` message"),
        (status = 200, description = "With `Accept: text/event-stream`: the same events as SSE, \
            ending with `event: closed` when the credential stops being valid or the service shuts down", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "This API key or session already has as many streams open \
            as `event_streams_per_credential` allows (the message names the limit); nothing was upgraded")))]
pub async fn events_stream(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Query(params): Query<EventsParams>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // A cross-site page could open a stream with the user's cookie (no
    // CSRF token travels with a GET or a WebSocket handshake).
    if matches!(subject.credential, Credential::Session { .. }) {
        check_same_origin(&headers)?;
    }
    let filter = EventFilter::parse(params.types.as_deref().unwrap_or_default())
        .map_err(overvisor_control::AppError::from)?;
    let presented = presented_credential(&headers, &state.settings, &subject)?;
    let subscription = state
        .app
        .events_subscribe_client(&subject, presented, filter)?;
    match ws {
        Ok(upgrade) => {
            let sockets = state.settings.sockets.clone();
            Ok(upgrade
                .on_upgrade(move |socket| {
                    sockets.track_future(pump_websocket(socket, subscription))
                })
                .into_response())
        }
        Err(_) if wants_sse(&headers) => Ok(sse(subscription).into_response()),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "upgrade_required",
            "open this as a WebSocket, or send Accept: text/event-stream",
        )),
    }
}

/// The secret the caller authenticated with (the one [`Caller`] chose), so
/// the stream can re-check it while it is open.
pub(crate) fn presented_credential(
    headers: &HeaderMap,
    settings: &Settings,
    subject: &Subject,
) -> ApiResult<PresentedCredential> {
    let presented = match &subject.credential {
        Credential::ApiKey { .. } => bearer_token(headers)?.and_then(PresentedCredential::api_key),
        Credential::Session { .. } => {
            cookie_value(headers, session_cookie_name(settings)).map(PresentedCredential::session)
        }
        Credential::OidcToken {
            provider,
            expires_at,
        } => Some(PresentedCredential::OidcToken {
            user: subject.id(),
            provider: provider.clone(),
            expires_at: *expires_at,
        }),
        Credential::Console | Credential::System => None,
    };
    presented.ok_or_else(|| AppError::Unauthenticated.into())
}

fn close_code(end: StreamEnd) -> u16 {
    match end {
        StreamEnd::CredentialsInvalid => CLOSE_CREDENTIALS,
        StreamEnd::RoleChanged => CLOSE_ROLE_CHANGED,
        StreamEnd::ShuttingDown => CLOSE_SHUTTING_DOWN,
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

async fn pump_websocket(mut socket: WebSocket, mut subscription: Subscription) {
    if socket.send(Message::Text(SUBSCRIBED.into())).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ping.tick().await;
    let mut close = None;
    loop {
        tokio::select! {
            delivery = subscription.next() => {
                let Some(delivery) = delivery else { break };
                if socket.send(Message::Text(delivery.to_json().into())).await.is_err() {
                    break;
                }
                if let Delivery::Ended(end) = delivery {
                    close = Some(CloseFrame {
                        code: close_code(end),
                        reason: end.message().into(),
                    });
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the library; clients have nothing to say.
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = socket.send(Message::Close(close)).await;
}

fn sse(
    subscription: Subscription,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let first = futures::stream::once(async { Ok(SseEvent::default().data(SUBSCRIBED)) });
    // `next()` answers `None` after `Ended`, which ends the response.
    let rest = futures::stream::unfold(subscription, |mut sub| async move {
        let delivery = sub.next().await?;
        let event = SseEvent::default().data(delivery.to_json());
        let event = match delivery {
            Delivery::Ended(_) => event.event("closed"),
            _ => event,
        };
        Some((Ok(event), sub))
    });
    Sse::new(futures::StreamExt::chain(first, rest)).keep_alive(KeepAlive::default())
}
