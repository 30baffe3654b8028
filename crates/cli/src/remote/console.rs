//! `overvisor vm console`: the terminal attached to a VM's serial console
//! through a console ticket and its WebSocket; raw mode on a terminal,
//! `Ctrl-]` detaches.

use std::io::{IsTerminal, Write};

use futures::{SinkExt, StreamExt};
use rustix::termios::{self, OptionalActions, Termios};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::client::Client;
use super::error::{Error, Result};
use super::output;

/// The byte `Ctrl-]` sends.
const DETACH: u8 = 0x1d;

/// The terminal in raw mode while alive; restored on drop, however the
/// console ends.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.0);
    }
}

fn resize_message() -> Option<Message> {
    let size = termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_col > 0).then(|| {
        Message::Text(
            json!({"resize": [size.ws_col, size.ws_row]})
                .to_string()
                .into(),
        )
    })
}

pub async fn attach(client: &Client, host: &str, vm: &str) -> Result<()> {
    let ticket = client
        .post(
            &["hosts", host, "vms", vm, "console"],
            &json!({"kind": "serial"}),
        )
        .await?;
    let ticket = ticket["ticket"]
        .as_str()
        .ok_or_else(|| Error::Failed(format!("the service answered no ticket: {ticket}")))?;
    let mut url = client.url(&["consoles", ticket]);
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    if url.set_scheme(scheme).is_err() {
        return Err(Error::Failed("cannot make a WebSocket URL".into()));
    }
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Failed(e.to_string()))?;
    request
        .headers_mut()
        .insert("authorization", client.authorization());
    let unreachable = |reason: String| Error::Unreachable {
        url: url.to_string(),
        reason,
    };
    // `[::1]` in a URL, `::1` to connect and to name the TLS server.
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    // TLS by the same configuration as every other call (and its CA file).
    let stream: Box<dyn Stream> = if url.scheme() == "wss" {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| Error::Usage(format!("{host}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(client.tls())
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => Error::Api {
                status: resp.status().as_u16(),
                message: format!("console refused: {}", resp.status()),
            },
            other => unreachable(other.to_string()),
        })?;
    eprintln!("attached to {vm}'s serial console; Ctrl-] detaches");
    let raw = RawMode::enter();
    let outcome = pump(ws).await;
    drop(raw);
    match &outcome {
        Ok(Some(reason)) => eprintln!("\nconsole closed: {reason}"),
        Ok(None) => eprintln!("\ndetached"),
        Err(_) => {}
    }
    outcome.map(|_| ())
}

/// A connection to the service, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

/// Copies keys to the console and its output to stdout until the user
/// detaches (`None`) or the service ends the console (`Some(reason)`).
async fn pump(ws: Ws) -> Result<Option<String>> {
    let (mut sink, mut stream) = ws.split();
    let send_failed =
        |e: tokio_tungstenite::tungstenite::Error| Error::Failed(format!("console: {e}"));
    if let Some(resize) = resize_message() {
        sink.send(resize).await.map_err(send_failed)?;
    }
    let mut winch = signal(SignalKind::window_change()).map_err(|e| Error::io("signal", e))?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            read = stdin.read(&mut buf) => {
                let n = read.map_err(|e| Error::io("stdin", e))?;
                let keys = &buf[..n];
                let detach = keys.iter().position(|b| *b == DETACH);
                let keys = &keys[..detach.unwrap_or(n)];
                if !keys.is_empty() {
                    sink.send(Message::Binary(keys.to_vec().into())).await.map_err(send_failed)?;
                }
                if n == 0 || detach.is_some() {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(None);
                }
            }
            msg = stream.next() => {
                let msg = match msg {
                    None => return Ok(Some("the service closed the connection".into())),
                    Some(m) => m.map_err(|e| Error::Failed(format!("console: {e}")))?,
                };
                match msg {
                    Message::Binary(bytes) => {
                        stdout
                            .write_all(&bytes)
                            .and_then(|()| stdout.flush())
                            .map_err(|e| Error::io("stdout", e))?;
                    }
                    Message::Text(text) => {
                        let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        match frame["type"].as_str() {
                            Some("closed") => return Ok(Some(output::text(&frame["message"]))),
                            Some("error") => eprint!("\r\n[{}]\r\n", output::text(&frame["message"])),
                            _ => {}
                        }
                    }
                    Message::Close(_) => return Ok(Some("closed".into())),
                    _ => {}
                }
            }
            _ = winch.recv() => {
                if let Some(resize) = resize_message() {
                    sink.send(resize).await.map_err(send_failed)?;
                }
            }
        }
    }
}
