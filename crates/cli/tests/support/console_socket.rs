//! Console sockets as tests use them: a ticket from `POST .../console`,
//! the socket it opens, typing and reading the guest's terminal (shared by
//! the console and replica tests).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::event_stream::{Ws, wait_event};
use crate::support::{Api, TestApp, path_segment as segment};

/// A guard against a hang, not a measurement.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub async fn ask(api: &Api, host: &str, vm: &str, kind: &str) -> (StatusCode, Value) {
    let path = format!("/api/v1/hosts/{host}/vms/{}/console", segment(vm));
    api.post(&path, json!({"kind": kind})).await
}

pub async fn ticket(api: &Api, host: &str, vm: &str) -> Value {
    ticket_of(api, host, vm, "serial").await
}

pub async fn ticket_of(api: &Api, host: &str, vm: &str, kind: &str) -> Value {
    let (status, body) = ask(api, host, vm, kind).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["expires_in_secs"].as_u64().unwrap() <= 30, "{body}");
    body
}

/// The socket request for a ticket, authenticated with `token`.
pub fn socket_request(
    app: &TestApp,
    token: &str,
    ticket: &Value,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = format!(
        "{}{}",
        app.api.replacen("http", "ws", 1),
        ticket["url"].as_str().unwrap()
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Opens a ticket's socket with `token`; a refusal comes back as its
/// status and JSON body.
pub async fn open(app: &TestApp, token: &str, ticket: &Value) -> Result<Ws, (u16, Value)> {
    open_from(app, token, ticket, None).await
}

/// Like [`open`], from the local address `from` when given (a client
/// that is not where the replicas are).
pub async fn open_from(
    app: &TestApp,
    token: &str,
    ticket: &Value,
    from: Option<std::net::IpAddr>,
) -> Result<Ws, (u16, Value)> {
    let request = socket_request(app, token, ticket);
    let connected = match from {
        None => tokio_tungstenite::connect_async(request).await,
        Some(ip) => {
            let to: std::net::SocketAddr = app
                .api
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .unwrap();
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind((ip, 0).into()).unwrap();
            let stream = socket.connect(to).await.unwrap();
            let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
            tokio_tungstenite::client_async(request, stream).await
        }
    };
    match connected {
        Ok((mut ws, _)) => {
            assert_eq!(text_frame(&mut ws).await["type"], "connected");
            Ok(ws)
        }
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            Err((
                response.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            ))
        }
        Err(e) => panic!("cannot open the console socket: {e}"),
    }
}

pub fn refused(opened: Result<Ws, (u16, Value)>, status: u16, code: &str) {
    match opened {
        Ok(_) => panic!("the console opened; expected {status} {code}"),
        Err((got, body)) => {
            assert_eq!(got, status, "{body}");
            assert_eq!(body["error"]["code"], code, "{body}");
        }
    }
}

/// The next text frame as JSON, but for news of who is in control
/// (terminal bytes on the way are skipped).
pub async fn text_frame(ws: &mut Ws) -> Value {
    wait_event(ws, PATIENCE, |v| v["type"] != "control").await
}

/// Skips frames until the close frame; its code (`None`: closed without one).
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    tokio::time::timeout(PATIENCE, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the console never closed")
}

/// Skips frames until a `control` frame that `want` accepts.
pub async fn control_until(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
    wait_event(ws, PATIENCE, |v| v["type"] == "control" && want(v)).await
}

/// Reads terminal output until it contains `want`; returns all of it.
pub async fn read_until(ws: &mut Ws, want: &str) -> String {
    let mut seen = String::new();
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(msg) = ws.next().await {
            match msg.expect("socket error") {
                Message::Binary(data) => seen.push_str(&String::from_utf8_lossy(&data)),
                Message::Close(frame) => panic!("console closed: {frame:?}"),
                _ => {}
            }
            if seen.contains(want) {
                return;
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{want:?} never came; the console said {seen:?}"
    );
    seen
}

/// Types `keys`, counting what the viewer sent.
pub async fn type_keys(ws: &mut Ws, sent: &mut u64, keys: &str) {
    ws.send(Message::Binary(keys.as_bytes().to_vec().into()))
        .await
        .unwrap();
    *sent += keys.len() as u64;
}
