//! Serial consoles against the real lab: a ticket from
//! `POST .../console` opens `GET /api/v1/consoles/{ticket}` once, for the
//! credential that asked; the socket carries the guest's shell both ways;
//! revoking the key ends it; the session is one audit row with its byte
//! counts. Tenancy, roles, reuse and expiry are refused before any upgrade.
//!
//! Hosts: ovh1 (only a guest of our own is touched); ovh8 belongs to the
//! disconnect test (its sshd is killed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/event_stream.rs"]
mod event_stream;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::time::{Duration, Instant};

use event_stream::{Ws, next_event};
use futures::{SinkExt, StreamExt};
use lab_hosts::{SshdDown, id, register};
use overvisor_testkit::{Lab, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const BOOT: Duration = Duration::from_secs(120);
/// A guard against a hang, not a measurement.
const PATIENCE: Duration = Duration::from_secs(30);
/// The longest a ticket may live, by the issue's contract.
const TICKET_TTL: Duration = Duration::from_secs(30);

/// A path segment with everything but unreserved ASCII percent-encoded.
fn segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn ask(api: &Api, host: &str, vm: &str, kind: &str) -> (StatusCode, Value) {
    let path = format!("/api/v1/hosts/{host}/vms/{}/console", segment(vm));
    api.post(&path, json!({"kind": kind})).await
}

async fn ticket(api: &Api, host: &str, vm: &str) -> Value {
    let (status, body) = ask(api, host, vm, "serial").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["expires_in_secs"].as_u64().unwrap() <= 30, "{body}");
    body
}

/// Opens a ticket's socket with `token`; a refusal comes back as its
/// status and JSON body.
async fn open(app: &TestApp, token: &str, ticket: &Value) -> Result<Ws, (u16, Value)> {
    let url = format!(
        "{}{}",
        app.api.replacen("http", "ws", 1),
        ticket["url"].as_str().unwrap()
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
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

fn refused(opened: Result<Ws, (u16, Value)>, status: u16, code: &str) {
    match opened {
        Ok(_) => panic!("the console opened; expected {status} {code}"),
        Err((got, body)) => {
            assert_eq!(got, status, "{body}");
            assert_eq!(body["error"]["code"], code, "{body}");
        }
    }
}

/// The next text frame as JSON (terminal bytes on the way are skipped).
async fn text_frame(ws: &mut Ws) -> Value {
    next_event(ws, PATIENCE).await
}

/// Reads terminal output until it contains `want`; returns all of it.
async fn read_until(ws: &mut Ws, want: &str) -> String {
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
async fn type_keys(ws: &mut Ws, sent: &mut u64, keys: &str) {
    ws.send(Message::Binary(keys.as_bytes().to_vec().into()))
        .await
        .unwrap();
    *sent += keys.len() as u64;
}

/// The `vm.console` audit rows `api` may see, newest first.
async fn console_audit(api: &Api) -> Vec<Value> {
    let (status, rows) = api.get("/api/v1/audit?action=vm.console").await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    rows.as_array().unwrap().clone()
}

/// The first `vm.console` audit row `api` may see that `want` accepts;
/// it is written as the session ends, so it may take a moment.
async fn session_row(api: &Api, want: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        if let Some(row) = console_audit(api).await.into_iter().find(&want) {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no audit row for the session: {:?}",
        console_audit(api).await
    )
}

/// One `key=value` of an audit row's detail.
fn detail_field(row: &Value, key: &str) -> String {
    let detail = row["detail"].as_str().unwrap_or_default();
    detail
        .split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {row}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_console_round_trip_revocation_audit_and_refusals() {
    let lab = Lab::load();
    let ovh1 = lab.host("ovh1");
    let app = TestApp::start().await;
    let (alice_id, alice_token, _) = app.create_user("alice", "operator").await;
    let (_, oscar_token, _) = app.create_user("oscar", "operator").await;
    let alice = app.client(&alice_token);
    let host = id(&register(&alice, &lab, ovh1).await);
    // Names come from hosts: spaces and non-ASCII reach virsh intact.
    let guest = lab.define_guest(ovh1, &format!("{} con é", unique_name("con")));
    let vm = guest.name.clone();

    // Not running yet: nothing to attach to.
    let (status, body) = ask(&alice, &host, &vm, "serial").await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_transition");
    ovh1.virsh(&["start", &vm]);
    guest.wait_ready(1, BOOT);

    // Another tenant does not learn the VM exists; nobody anonymous gets in.
    let (status, body) = ask(&app.client(&oscar_token), &host, &vm, "serial").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = ask(&app.anonymous(), &host, &vm, "serial").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = ask(&alice, &host, &vm, "telnet").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = ask(&alice, &host, &vm, "vnc").await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    // Taken now, presented after it lapsed (below).
    let late = ticket(&alice, &host, &vm).await;
    let late_issued = Instant::now();

    // A key of its own, so revoking it ends this console only.
    let (status, created) = alice
        .post("/api/v1/users/me/keys", json!({"name": "console"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key_id = created["key"]["id"].as_str().unwrap().to_owned();
    let key_token = created["token"].as_str().unwrap().to_owned();
    let keyed = app.client(&key_token);

    // A ticket is bound to the credential that asked: another key of the
    // same user is refused, and the ticket is spent.
    let wrong_key = ticket(&keyed, &host, &vm).await;
    refused(
        open(&app, &alice_token, &wrong_key).await,
        410,
        "console_ticket_invalid",
    );
    refused(
        open(&app, &key_token, &wrong_key).await,
        410,
        "console_ticket_invalid",
    );

    let granted = ticket(&keyed, &host, &vm).await;
    let mut ws = open(&app, &key_token, &granted).await.unwrap();
    let mut sent = 0;
    let marker = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    // The shell echoes the line as typed (`MARK-""…`); only echo's output
    // has the marker whole.
    type_keys(&mut ws, &mut sent, &format!("\recho MARK-\"\"{marker}\r")).await;
    read_until(&mut ws, &format!("MARK-{marker}")).await;

    // Resize reaches the PTY; a malformed control frame is answered, and
    // the console carries on.
    ws.send(Message::Text(r#"{"resize":[101,37]}"#.into()))
        .await
        .unwrap();
    ws.send(Message::Text(r#"{"resize":"big"}"#.into()))
        .await
        .unwrap();
    let answer = text_frame(&mut ws).await;
    assert_eq!(answer["type"], "error", "{answer}");
    type_keys(&mut ws, &mut sent, &format!("echo AGAIN-\"\"{marker}\r")).await;
    read_until(&mut ws, &format!("AGAIN-{marker}")).await;

    // Used once: the same ticket again is refused before any upgrade.
    refused(
        open(&app, &key_token, &granted).await,
        410,
        "console_ticket_invalid",
    );

    // Revoking the key ends the console, saying why.
    let (status, body) = alice
        .delete(&format!("/api/v1/users/me/keys/{key_id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let closed = text_frame(&mut ws).await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert_eq!(closed["reason"], "credentials_revoked", "{closed}");
    let close = loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("no close")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.expect("a close frame").code), 4401);

    // One audit row for the session: who, which VM, from where, how long,
    // and the bytes each way (exactly what we typed), never the content.
    let via = format!("api_key:{key_id}");
    let row = session_row(&alice, |r| r["via"] == via.as_str()).await;
    assert_eq!(row["outcome"], "success", "{row}");
    assert_eq!(row["actor_name"], "alice", "{row}");
    assert!(row["target"].as_str().unwrap().contains(&vm), "{row}");
    assert!(row["source_ip"].as_str().is_some(), "{row}");
    assert_eq!(detail_field(&row, "kind"), "serial");
    assert_eq!(detail_field(&row, "end"), "credentials_revoked");
    assert_eq!(detail_field(&row, "bytes_to_vm"), sent.to_string());
    let from_vm: u64 = detail_field(&row, "bytes_from_vm").parse().unwrap();
    assert!(from_vm > 0, "{row}");
    detail_field(&row, "duration_ms").parse::<u64>().unwrap();
    assert!(
        !row.to_string().contains(&marker),
        "console content audited: {row}"
    );
    // Requests are logged, the socket's path too, but not its ticket.
    let logs = app.logs();
    assert!(
        logs.contains("/api/v1/consoles/{ticket}"),
        "the socket's request was not logged"
    );
    assert!(
        !logs.contains(granted["ticket"].as_str().unwrap()),
        "a ticket reached the log"
    );

    // The domain stopping ends the console, saying so.
    let again = ticket(&alice, &host, &vm).await;
    let mut ws = open(&app, &alice_token, &again).await.unwrap();
    ovh1.virsh(&["destroy", &vm]);
    let closed = text_frame(&mut ws).await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert_eq!(closed["reason"], "domain_stopped", "{closed}");

    // A ticket not used within its life is refused.
    tokio::time::sleep(TICKET_TTL.saturating_sub(late_issued.elapsed()) + Duration::from_secs(1))
        .await;
    refused(
        open(&app, &alice_token, &late).await,
        410,
        "console_ticket_invalid",
    );

    // Demoted to reader: no console.
    let (status, body) = app
        .admin()
        .patch(
            &format!("/api/v1/users/{alice_id}"),
            json!({"role": "reader"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ask(&alice, &host, &vm, "serial").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_goes_away_ends_the_console_with_a_reason_and_an_audit_row() {
    let lab = Lab::load();
    let ovh8 = lab.host("ovh8");
    let app = TestApp::start().await;
    let (_, token, _) = app.create_user("hana", "operator").await;
    let api = app.client(&token);
    let host = id(&register(&api, &lab, ovh8).await);
    let guest = lab.define_guest(ovh8, &unique_name("con-gone"));
    let vm = guest.name.clone();
    ovh8.virsh(&["start", &vm]);
    guest.wait_ready(1, BOOT);

    let granted = ticket(&api, &host, &vm).await;
    let mut ws = open(&app, &token, &granted).await.unwrap();
    let mut sent = 0;
    type_keys(&mut ws, &mut sent, "\recho UP-\"\"ovh8\r").await;
    read_until(&mut ws, "UP-ovh8").await;

    // sshd and its sessions die: the console says so, then closes.
    let down = SshdDown::new(ovh8);
    let closed = text_frame(&mut ws).await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert_eq!(closed["reason"], "host_disconnected", "{closed}");
    drop(down);

    let row = session_row(&api, |_| true).await;
    assert_eq!(detail_field(&row, "end"), "host_disconnected");
    assert_eq!(detail_field(&row, "bytes_to_vm"), sent.to_string());
}
