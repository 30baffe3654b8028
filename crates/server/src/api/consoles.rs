//! VM consoles: `POST /api/v1/hosts/{id}/vms/{name}/console` hands out a
//! short-lived, single-use ticket, and `GET /api/v1/consoles/{ticket}`
//! (a WebSocket) redeems it and bridges the browser to the VM's serial
//! console or its VNC display on the host (control's `consoles` owns
//! tickets, the shared PTY, the tunnel and the audit row; this module owns
//! the socket).
//!
//! Serial: binary frames carry terminal bytes both ways; the viewer sends
//! `{"resize":[cols,rows]}` or `{"take_control":true}` as text frames. The
//! service sends `{"type":"connected"}` first, `{"type":"control","you",
//! "holder","viewers"}` whenever control moves or viewers come and go, an
//! `{"type":"error"}` for typing without control, and, when the console
//! ends, `{"type":"closed","reason","message"}` and a close frame. Output
//! waits in a short queue; a viewer that lets it fill is disconnected
//! (`client_too_slow`) rather than growing the service. Input is read only
//! as fast as the host takes it.
//!
//! VNC: binary frames carry the RFB protocol both ways, unchanged (noVNC
//! speaks it); a slow viewer slows the VNC server down.
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
use overvisor_control::consoles::{
    ConsoleEnd, ConsoleKind, ConsoleTraffic, ControlView, NotTyped, OpenConsole, SerialConsole,
    ViewerOutput, VncConsole,
};
use overvisor_control::events::StreamEnd;
use overvisor_model::account::Credential;
use overvisor_model::host::HostId;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::events::{
    CLOSE_CREDENTIALS, CLOSE_ROLE_CHANGED, CLOSE_SHUTTING_DOWN, presented_credential,
};
use crate::api::vms::vm_name;
use crate::auth::{Caller, check_same_origin};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};

/// Where console sockets live; the ticket follows.
const SOCKET_PREFIX: &str = "/api/v1/consoles/";
/// Frames waiting for a viewer's socket (a serial frame is at most
/// `shared::MAX_FRAME`, 64 KiB; a VNC one 32 KiB). While it is full the
/// serial bridge stops taking output, which then waits in the console's
/// byte-counted backlog: that, not a count of frames (a busy guest writes
/// many small ones), says when a viewer is too slow.
const OUTPUT_QUEUE: usize = 16;
/// Service frames (control changes, errors) held while the queue is full;
/// a viewer that lets this many pile up is not reading.
const MAX_HELD: usize = 16;
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
    /// `serial` (the guest's serial line) or `vnc` (its display).
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
        (status = 429, body = ErrorBody, description = "Too many tickets asked for and not used \
            (`too_many_tickets`), or the host has all its consoles of this kind open \
            (`too_many_consoles`, see `consoles_per_host`)"),
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
        (status = 429, body = ErrorBody, description = "The host has all its consoles of this kind open (`too_many_consoles`)"),
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
    // Several replicas: the console lives where its ticket was issued.
    if let Some(issuer) = state.app.console_issued_elsewhere(&ticket).await? {
        let path = format!("{SOCKET_PREFIX}{ticket}");
        let client = subject.source_ip.as_deref();
        return crate::forward::console_relay(&state, &issuer, &path, &headers, client, upgrade)
            .await;
    }
    let presented = presented_credential(&headers, &state.settings, &subject)?;
    let console = state
        .app
        .console_open(&subject, &ticket, presented, INITIAL_SIZE)
        .await?;
    let app = state.app.clone();
    // noVNC asks for the `binary` subprotocol; so may other viewers.
    let upgrade = upgrade
        .max_message_size(MAX_INPUT_FRAME)
        .protocols(["binary"]);
    let sockets = state.settings.sockets.clone();
    Ok(match console {
        OpenConsole::Serial(console) => upgrade
            .on_upgrade(move |socket| sockets.track_future(serial_bridge(app, socket, console))),
        OpenConsole::Vnc(console) => {
            upgrade.on_upgrade(move |socket| sockets.track_future(vnc_bridge(app, socket, console)))
        }
    }
    .into_response())
}

/// What the viewer may say in a text frame: a new terminal size, or that
/// it takes the keyboard.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
enum Control {
    #[serde(rename = "resize")]
    Resize(u32, u32),
    #[serde(rename = "take_control")]
    TakeControl(bool),
}

/// The socket's two halves: frames are written by a task of their own
/// through a short queue, so the bridge never waits on a slow viewer.
struct Socket {
    out: mpsc::Sender<Message>,
    /// Frames for the queue once it has room, in order.
    held: std::collections::VecDeque<Message>,
    incoming: futures::stream::SplitStream<WebSocket>,
    writer: tokio::task::JoinHandle<()>,
    /// The last frames, sent ahead of anything still queued.
    farewell: oneshot::Sender<Vec<Message>>,
    ping: tokio::time::Interval,
}

impl Socket {
    fn new(socket: WebSocket) -> Self {
        let (mut sink, incoming) = socket.split();
        let (out, mut queued) = mpsc::channel::<Message>(OUTPUT_QUEUE);
        let (farewell, mut last) = oneshot::channel::<Vec<Message>>();
        let writer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    // What is still queued is dropped: the viewer is told
                    // why at once, even one that fell behind.
                    frames = &mut last => {
                        for frame in frames.into_iter().flatten() {
                            if sink.send(frame).await.is_err() {
                                break;
                            }
                        }
                        break;
                    }
                    frame = queued.recv() => match frame {
                        Some(frame) => if sink.send(frame).await.is_err() {
                            break;
                        },
                        None => break,
                    },
                }
            }
        });
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Self {
            out,
            held: std::collections::VecDeque::new(),
            incoming,
            writer,
            farewell,
            ping,
        }
    }

    /// Queues a frame, or holds it (after any held before it) until the
    /// queue has room.
    fn queue(&mut self, frame: Message) -> Option<ConsoleEnd> {
        if self.held.len() >= MAX_HELD {
            return Some(too_slow());
        }
        if !self.held.is_empty() {
            self.held.push_back(frame);
            return None;
        }
        match self.out.try_send(frame) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(frame)) => {
                self.held.push_back(frame);
                None
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Some(ConsoleEnd::ClientClosed),
        }
    }

    fn queue_json(&mut self, value: serde_json::Value) -> Option<ConsoleEnd> {
        self.queue(Message::Text(value.to_string().into()))
    }

    /// Says why the console ended (unless the viewer ended it) and lets
    /// the last frames go, for a few seconds at most.
    /// `notice`: the reason goes in a JSON text frame too (not on a VNC
    /// socket, whose frames are all RFB; its close frame says it).
    async fn close(self, end: ConsoleEnd, notice: bool) {
        if end == ConsoleEnd::ClientClosed {
            drop(self.farewell);
        } else {
            let closed = serde_json::json!({"type": "closed", "reason": end.code(), "message": end.message()});
            let frames = [
                Message::Text(closed.to_string().into()),
                Message::Close(Some(CloseFrame {
                    code: close_code(end),
                    reason: end.message().into(),
                })),
            ];
            let _ = self
                .farewell
                .send(frames.into_iter().skip(usize::from(!notice)).collect());
        }
        drop(self.out);
        // A viewer that does not read does not hold the session open.
        let abort = self.writer.abort_handle();
        if tokio::time::timeout(FAREWELL, self.writer).await.is_err() {
            abort.abort();
        }
    }
}

fn too_slow() -> ConsoleEnd {
    metrics::counter!("overvisor_console_overflows_total").increment(1);
    ConsoleEnd::ClientTooSlow
}

/// What the viewer sent, as far as a bridge cares.
enum Incoming {
    Data(bytes::Bytes),
    Text(String),
    Ended,
    Other,
}

fn incoming(frame: Option<Result<Message, axum::Error>>) -> Incoming {
    match frame {
        Some(Ok(Message::Binary(data))) => Incoming::Data(data),
        Some(Ok(Message::Text(text))) => Incoming::Text(text.as_str().to_owned()),
        Some(Ok(Message::Close(_)) | Err(_)) | None => Incoming::Ended,
        Some(Ok(_)) => Incoming::Other,
    }
}

/// Counts a console as open while its bridge runs (an upgrade that fails
/// never gets this far).
fn open_gauge(kind: ConsoleKind) -> metrics::Gauge {
    let open = metrics::gauge!("overvisor_consoles_open", "kind" => kind.as_str());
    open.increment(1.0);
    open
}

/// Carries one viewer of a serial console until either side ends it, then
/// audits it.
async fn serial_bridge(app: App, socket: WebSocket, mut console: SerialConsole) {
    let open = open_gauge(ConsoleKind::Serial);
    let mut socket = Socket::new(socket);
    socket.ping.tick().await;
    let mut traffic = ConsoleTraffic::default();
    let connected = serde_json::json!({"type": "connected", "kind": "serial"});
    let mut end = socket.queue_json(connected);
    while end.is_none() {
        // Output is taken only while the queue has room; meanwhile it waits
        // in the console's backlog, which ends this viewer once it is full.
        let reading = socket.held.is_empty();
        tokio::select! {
            output = async {
                if reading { console.read().await } else { Err(console.fallen_behind().await) }
            } => end = match output {
                Ok(ViewerOutput::Data(data)) => {
                    traffic.from_vm += data.len() as u64;
                    socket.queue(Message::Binary(data))
                }
                Ok(ViewerOutput::Control(view)) => socket.queue_json(control_frame(&view)),
                Err(ConsoleEnd::ClientTooSlow) => Some(too_slow()),
                Err(ended) => Some(ended),
            },
            room = socket.out.clone().reserve_owned(), if !reading => end = match room {
                Ok(room) => {
                    if let Some(frame) = socket.held.pop_front() {
                        room.send(frame);
                    }
                    None
                }
                Err(_) => Some(ConsoleEnd::ClientClosed),
            },
            frame = socket.incoming.next() => end = match incoming(frame) {
                Incoming::Data(data) => match console.write(&data).await {
                    Ok(()) => {
                        traffic.to_vm += data.len() as u64;
                        None
                    }
                    Err(NotTyped::NotInControl(holder)) => {
                        socket.queue_json(not_in_control(holder.as_deref()))
                    }
                    Err(NotTyped::Ended(ended)) => Some(ended),
                },
                Incoming::Text(text) => control(&mut console, &mut socket, &text).await,
                Incoming::Ended => Some(ConsoleEnd::ClientClosed),
                Incoming::Other => None,
            },
            _ = socket.ping.tick() => {
                // A full queue means the viewer is behind already; the
                // next output says so.
                let _ = socket.out.try_send(Message::Ping(Vec::new().into()));
            }
        }
    }
    let end = why_ended(&app, end);
    // Audited as it ends, not once the farewell has had its seconds.
    app.console_closed(console.leave(), end, traffic).await;
    socket.close(end, true).await;
    open.decrement(1.0);
}

/// How long a graphical console may wait for a viewer to take its frames
/// before the viewer counts as gone (VNC is flow-controlled by the viewer's
/// own requests, so a healthy one is never this far behind).
const VNC_STALL: Duration = Duration::from_secs(30);
/// Bytes read from the VNC server at a time.
const VNC_CHUNK: usize = 32 << 10;

/// Carries a graphical console: VNC bytes both ways, unchanged. A slow
/// viewer slows the VNC server down (through the SSH window) instead of
/// being dropped.
async fn vnc_bridge(app: App, socket: WebSocket, mut console: VncConsole) {
    let open = open_gauge(ConsoleKind::Vnc);
    let mut socket = Socket::new(socket);
    socket.ping.tick().await;
    let mut traffic = ConsoleTraffic::default();
    let mut buf = vec![0u8; VNC_CHUNK];
    let mut end = None;
    while end.is_none() {
        tokio::select! {
            biased;
            ended = console.session.revoked() => end = Some(ended),
            read = console.tunnel.read(&mut buf) => end = match read {
                Ok(0) => Some(ConsoleEnd::DomainStopped),
                Ok(n) => {
                    traffic.from_vm += n as u64;
                    let frame = Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                    match tokio::time::timeout(VNC_STALL, socket.out.send(frame)).await {
                        Ok(Ok(())) => None,
                        Ok(Err(_)) => Some(ConsoleEnd::ClientClosed),
                        Err(_) => Some(too_slow()),
                    }
                }
                Err(_) => Some(ConsoleEnd::HostDisconnected),
            },
            frame = socket.incoming.next() => end = match incoming(frame) {
                Incoming::Data(data) => match console.tunnel.write_all(&data).await {
                    Ok(()) => {
                        traffic.to_vm += data.len() as u64;
                        None
                    }
                    Err(_) => Some(ConsoleEnd::HostDisconnected),
                },
                Incoming::Text(_) => socket.queue_json(serde_json::json!({
                    "type": "error", "message": "a graphical console carries VNC as binary frames only"
                })),
                Incoming::Ended => Some(ConsoleEnd::ClientClosed),
                Incoming::Other => None,
            },
            _ = socket.ping.tick() => {
                let _ = socket.out.try_send(Message::Ping(Vec::new().into()));
            }
        }
    }
    let end = why_ended(&app, end);
    let _ = console.tunnel.shutdown().await;
    app.console_closed(console.session, end, traffic).await;
    socket.close(end, false).await;
    open.decrement(1.0);
}

/// Tells a viewer where control is.
fn control_frame(view: &ControlView) -> serde_json::Value {
    serde_json::json!({
        "type": "control", "you": view.you, "holder": view.holder, "viewers": view.viewers,
    })
}

fn not_in_control(holder: Option<&str>) -> serde_json::Value {
    let message = match holder {
        Some(name) => {
            format!("{name} is typing on this console; take control to type (they will be told)")
        }
        None => "take control to type on this console".to_owned(),
    };
    serde_json::json!({"type": "error", "reason": "not_in_control", "message": message})
}

/// Applies a viewer's text frame; a malformed one is answered, not fatal.
async fn control(
    console: &mut SerialConsole,
    socket: &mut Socket,
    text: &str,
) -> Option<ConsoleEnd> {
    let mut refused =
        |message: &str| socket.queue_json(serde_json::json!({"type": "error", "message": message}));
    match serde_json::from_str::<Control>(text) {
        Ok(Control::Resize(cols, rows)) => {
            if !(1..=MAX_SIDE).contains(&cols) || !(1..=MAX_SIDE).contains(&rows) {
                return refused("resize: cols and rows must be between 1 and 1000");
            }
            console.resize(cols, rows).await.err()
        }
        Ok(Control::TakeControl(true)) => console.take_control().await.err(),
        Ok(Control::TakeControl(false)) => None,
        Err(_) => refused(
            r#"text frames carry {"resize":[cols,rows]} or {"take_control":true}; send terminal bytes as binary"#,
        ),
    }
}

/// Why a console ended, as its viewer should hear it: a host connection
/// lost while the service stops was cut by the stop (a replica releases
/// its hosts as it goes), so the viewer is told to reconnect.
fn why_ended(app: &App, end: Option<ConsoleEnd>) -> ConsoleEnd {
    match end.unwrap_or(ConsoleEnd::ClientClosed) {
        ConsoleEnd::HostDisconnected if app.events().closing().is_cancelled() => {
            ConsoleEnd::Credentials(StreamEnd::ShuttingDown)
        }
        end => end,
    }
}

fn close_code(end: ConsoleEnd) -> u16 {
    match end {
        ConsoleEnd::Credentials(StreamEnd::CredentialsInvalid) => CLOSE_CREDENTIALS,
        ConsoleEnd::Credentials(StreamEnd::RoleChanged) => CLOSE_ROLE_CHANGED,
        ConsoleEnd::Credentials(StreamEnd::ShuttingDown) => CLOSE_SHUTTING_DOWN,
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
