//! The event stream as tests read it: a WebSocket to `/api/v1/events`
//! and waits for the events a test expects (shared by the lab tests).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::TestApp;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn events(app: &TestApp, token: &str, types: &str) -> Ws {
    let url = format!(
        "{}/api/v1/events?types={types}",
        app.api.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        next_event(&mut ws, Duration::from_secs(10)).await["type"],
        "subscribed"
    );
    ws
}

pub async fn next_event(ws: &mut Ws, within: Duration) -> Value {
    loop {
        let msg = tokio::time::timeout(within, ws.next())
            .await
            .expect("no event in time")
            .expect("stream ended")
            .expect("websocket error");
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Skips events until one satisfies `want`.
pub async fn wait_event(ws: &mut Ws, within: Duration, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = next_event(ws, left).await;
        if want(&event) {
            return event;
        }
    }
}
