//! VM consoles: `POST /api/v1/hosts/{id}/vms/{name}/console` hands out a
//! short-lived, single-use ticket, and `GET /api/v1/consoles/{ticket}`
//! (a WebSocket) redeems it and bridges the browser to the VM's serial
//! console on the host (control's `consoles.rs` owns tickets, the PTY and
//! the audit row; this module owns the socket).
//!
//! On the socket, binary frames carry terminal bytes both ways; the viewer
//! sends `{"resize":[cols,rows]}` as a text frame to resize. The service
//! sends `{"type":"connected"}` first and, when the console ends,
//! `{"type":"closed","reason","message"}` and a close frame. Both
//! directions are bounded: input is read only as fast as the host takes
//! it, and output waits in a short queue; a viewer that lets it fill is
//! disconnected (`client_too_slow`) rather than growing the service.
//!
//! The ticket is a credential while it lives: it is in the socket's path,
//! so request logs show that path redacted ([`redacted_path`]).

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use overvisor_control::App;
use overvisor_control::consoles::{ConsoleEnd, ConsoleKind, ConsoleTraffic, SerialConsole};
use overvisor_control::events::StreamEnd;
use overvisor_model::account::Credential;
use overvisor_model::host::HostId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::AppState;
use crate::api::events::{CLOSE_CREDENTIALS, CLOSE_ROLE_CHANGED, presented_credential};
use crate::api::vms::vm_name;
use crate::auth::{Caller, check_same_origin};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};

/// Where console sockets live; the ticket follows.
const SOCKET_PREFIX: &str = "/api/v1/consoles/";
/// Frames of output waiting for a viewer (each at most one SSH packet,
/// 32 KiB): beyond this the viewer is too slow and is disconnected.
const OUTPUT_QUEUE: usize = 64;
/// Largest frame a viewer may send (keystrokes and pastes).
const MAX_INPUT_FRAME: usize = 64 << 10;
/// How often an idle socket is pinged (keeps proxies from closing it).
const PING_EVERY: Duration = Duration::from_secs(25);
/// How long the last frames may take to reach a viewer that is going away.
const FAREWELL: Duration = Duration::from_secs(5);
/// The terminal size until the viewer says otherwise.
const INITIAL_SIZE: (u32, u32) = (80, 24);
/// Largest terminal a viewer may ask for, either way.
const MAX_SIDE: u32 = 1000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleRequest {
    /// `serial` (the guest's serial line) or `vnc` (its display; not yet).
    pub kind: ConsoleKind,
}

/// A console ticket: open `url` as a WebSocket, with the same credential,
/// within `expires_in_secs`. It works once, for this VM and kind only.
#[derive(Serialize, ToSchema)]
pub struct ConsoleTicketBody {
    pub ticket: String,
    pub kind: ConsoleKind,
    pub expires_in_secs: u64,
    /// The WebSocket path to open (the ticket included), relative to the service.
    pub url: String,
}

/// Asks for a console of a running VM (operators and admins): a
/// short-lived, single-use ticket and the WebSocket to open with it.
#[utoipa::path(post, path = "/api/v1/hosts/{id}/vms/{name}/console", tag = "consoles",
    params(("id" = String, Path), ("name" = String, Path, description = "VM name or UUID")),
    request_body = ConsoleRequest,
    responses((status = 201, body = ConsoleTicketBody), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such host or VM, or another tenant's"),
        (status = 409, body = ErrorBody, description = "The VM is not running, or the kind is not available yet"),
        (status = 429, body = ErrorBody, description = "Too many tickets asked for and not used"),
        (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn console_ticket(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path((id, name)): Path<(HostId, String)>,
    Json(req): Json<ConsoleRequest>,
) -> ApiResult<(StatusCode, Json<ConsoleTicketBody>)> {
    let name = vm_name(&name)?;
    let issued = state
        .app
        .console_ticket(&subject, id, &name, req.kind)
        .await?;
    let url = format!("{SOCKET_PREFIX}{}", issued.ticket);
    Ok((
        StatusCode::CREATED,
        Json(ConsoleTicketBody {
            ticket: issued.ticket,
            kind: req.kind,
            expires_in_secs: issued.expires_in.as_secs(),
            url,
        }),
    ))
}

/// The console a ticket stands for, as a WebSocket. Open it with the
/// credential that asked for the ticket.
#[utoipa::path(get, path = "/api/v1/consoles/{ticket}", tag = "consoles",
    params(("ticket" = String, Path, description = "From POST .../console; works once")),
    responses(
        (status = 101, description = "WebSocket: binary frames are terminal bytes both ways; \
            send `{\"resize\":[cols,rows]}` as text to resize; the service's text frames are \
            `{\"type\":\"connected\"}` and, last, `{\"type\":\"closed\",\"reason\",\"message\"}`"),
        (status = 400, body = ErrorBody, description = "Not a WebSocket request (the ticket is kept)"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The VM is not running any more"),
        (status = 410, body = ErrorBody, description = "The ticket is unknown, used, expired or someone else's"),
        (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn console_socket(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(ticket): Path<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // A cross-site page could open a console with the user's cookie.
    if matches!(subject.credential, Credential::Session { .. }) {
        check_same_origin(&headers)?;
    }
    let Ok(upgrade) = ws else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "upgrade_required",
            "open this as a WebSocket",
        ));
    };
    let presented = presented_credential(&headers, &state.settings, &subject)?;
    let console = state
        .app
        .console_open(&subject, &ticket, presented, INITIAL_SIZE)
        .await?;
    let app = state.app.clone();
    Ok(upgrade
        .max_message_size(MAX_INPUT_FRAME)
        .on_upgrade(move |socket| bridge(app, socket, console))
        .into_response())
}

/// What the viewer may say in a text frame.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    resize: (u32, u32),
}

/// Carries a console until either side ends it, then audits it.
async fn bridge(app: App, socket: WebSocket, mut console: SerialConsole) {
    // Counted here, not when the console opened: an upgrade that fails
    // never gets this far, and its console is dropped (and closed) unused.
    let open = metrics::gauge!("overvisor_consoles_open", "kind" => console.grant.kind.as_str());
    open.increment(1.0);
    let (mut sink, mut incoming) = socket.split();
    let (out, mut queued) = mpsc::channel::<Message>(OUTPUT_QUEUE);
    // The writer alone waits on a slow viewer; the loop below never does.
    let writer = tokio::spawn(async move {
        while let Some(frame) = queued.recv().await {
            let last = matches!(frame, Message::Close(_));
            if sink.send(frame).await.is_err() || last {
                break;
            }
        }
    });
    let mut traffic = ConsoleTraffic::default();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ping.tick().await;
    let connected = serde_json::json!({"type": "connected", "kind": console.grant.kind.as_str()});
    let mut end = match out.try_send(Message::Text(connected.to_string().into())) {
        Ok(()) => None,
        Err(_) => Some(ConsoleEnd::ClientClosed),
    };
    while end.is_none() {
        tokio::select! {
            output = console.read() => end = match output {
                Ok(data) => {
                    traffic.from_vm += data.len() as u64;
                    match out.try_send(Message::Binary(data.into())) {
                        Ok(()) => None,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            metrics::counter!("overvisor_console_overflows_total").increment(1);
                            Some(ConsoleEnd::ClientTooSlow)
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => Some(ConsoleEnd::ClientClosed),
                    }
                }
                Err(ended) => Some(ended),
            },
            frame = incoming.next() => end = match frame {
                Some(Ok(Message::Binary(data))) => {
                    traffic.to_vm += data.len() as u64;
                    console.write(&data).await.err()
                }
                Some(Ok(Message::Text(text))) => control(&mut console, &out, text.as_str()).await,
                Some(Ok(Message::Close(_)) | Err(_)) | None => Some(ConsoleEnd::ClientClosed),
                Some(Ok(_)) => None,
            },
            _ = ping.tick() => {
                // A full queue means the viewer is behind already; the
                // next output says so.
                let _ = out.try_send(Message::Ping(Vec::new().into()));
            }
        }
    }
    let end = end.unwrap_or(ConsoleEnd::ClientClosed);
    if end != ConsoleEnd::ClientClosed {
        let closed =
            serde_json::json!({"type": "closed", "reason": end.code(), "message": end.message()});
        let _ = out.try_send(Message::Text(closed.to_string().into()));
        let _ = out.try_send(Message::Close(Some(CloseFrame {
            code: close_code(end),
            reason: end.message().into(),
        })));
    }
    drop(out);
    // A viewer that does not read does not hold the session open.
    let abort = writer.abort_handle();
    if tokio::time::timeout(FAREWELL, writer).await.is_err() {
        abort.abort();
    }
    app.console_closed(console, end, traffic).await;
    open.decrement(1.0);
}

/// Applies a viewer's text frame; a malformed one is answered, not fatal.
async fn control(
    console: &mut SerialConsole,
    out: &mpsc::Sender<Message>,
    text: &str,
) -> Option<ConsoleEnd> {
    let refused = |message: &str| {
        let error = serde_json::json!({"type": "error", "message": message});
        let _ = out.try_send(Message::Text(error.to_string().into()));
        None
    };
    let Ok(Control {
        resize: (cols, rows),
    }) = serde_json::from_str::<Control>(text)
    else {
        return refused(
            r#"text frames carry {"resize":[cols,rows]}; send terminal bytes as binary"#,
        );
    };
    if !(1..=MAX_SIDE).contains(&cols) || !(1..=MAX_SIDE).contains(&rows) {
        return refused("resize: cols and rows must be between 1 and 1000");
    }
    console.resize(cols, rows).await.err()
}

fn close_code(end: ConsoleEnd) -> u16 {
    match end {
        ConsoleEnd::Credentials(StreamEnd::CredentialsInvalid) => CLOSE_CREDENTIALS,
        ConsoleEnd::Credentials(StreamEnd::RoleChanged) => CLOSE_ROLE_CHANGED,
        ConsoleEnd::ClientClosed | ConsoleEnd::DomainStopped => 1000,
        ConsoleEnd::HostDisconnected => 1011,
        ConsoleEnd::ClientTooSlow => 1008,
    }
}

/// A request path fit for logs: a console socket's ticket is replaced.
pub fn redacted_path(path: &str) -> &str {
    if path.starts_with(SOCKET_PREFIX) {
        "/api/v1/consoles/{ticket}"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_never_reach_the_log() {
        assert_eq!(
            redacted_path("/api/v1/consoles/s3cr3t"),
            "/api/v1/consoles/{ticket}"
        );
        assert_eq!(redacted_path("/api/v1/hosts"), "/api/v1/hosts");
    }
}
