//! Serial consoles against the real lab: a ticket from
//! `POST .../console` opens `GET /api/v1/consoles/{ticket}` once, for the
//! credential that asked; the socket carries the guest's shell both ways;
//! revoking the key ends it; the session is one audit row with its byte
//! counts. Tenancy, roles, reuse and expiry are refused before any upgrade.
//!
//! Several viewers share one console (one types at a time); a viewer that
//! does not read is dropped with memory bounded; the graphical console
//! speaks VNC (RFB) through the same socket.
//!
//! Hosts: ovh1 (only guests of our own are touched); ovh8 belongs to the
//! disconnect test (its sshd is killed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/console_socket.rs"]
mod console_socket;
#[path = "support/event_stream.rs"]
mod event_stream;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use console_socket::{
    PATIENCE, ask, control_until, open, read_until, refused, socket_request, text_frame, ticket,
    ticket_of, type_keys,
};
use event_stream::Ws;
use futures::{SinkExt, StreamExt};
use lab_hosts::{SshdDown, id, register};
use overvisor_testkit::{Lab, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error};
use tokio_tungstenite::tungstenite::Message;

const BOOT: Duration = Duration::from_secs(120);
/// The longest a ticket may live, by the issue's contract.
const TICKET_TTL: Duration = Duration::from_secs(30);

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

#[tokio::test(flavor = "multi_thread")]
async fn a_console_ends_saying_the_service_stops() {
    let lab = Lab::load();
    let mut app = TestApp::start().await;
    let (_, token, _) = app.create_user("ivo", "operator").await;
    let api = app.client(&token);
    let host = id(&register(&api, &lab, lab.host("ovh1")).await);
    let guest = running_guest(&lab, "con-stop").await;
    let mut ws = open(&app, &token, &ticket(&api, &host, &guest.name).await)
        .await
        .unwrap();
    control_until(&mut ws, |_| true).await;

    app.signal_stop();
    let closed = text_frame(&mut ws).await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert_eq!(closed["reason"], "shutting_down", "{closed}");
    assert_eq!(app.terminate(), Some(0), "{}", app.logs());
}

/// A guest of our own on ovh1, running and at its shell.
async fn running_guest(lab: &Lab, prefix: &str) -> overvisor_testkit::TestGuest {
    let ovh1 = lab.host("ovh1");
    let guest = lab.define_guest(ovh1, &unique_name(prefix));
    ovh1.virsh(&["start", &guest.name]);
    guest.wait_ready(1, BOOT);
    guest
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_share_a_console_and_one_types_at_a_time() {
    let lab = Lab::load();
    let app = TestApp::start().await;
    let (_, alice_token, _) = app.create_user("alice", "operator").await;
    // An administrator may open any tenant's console.
    let (_, bob_token, _) = app.create_user("bob", "admin").await;
    let (alice, bob) = (app.client(&alice_token), app.client(&bob_token));
    let host = id(&register(&alice, &lab, lab.host("ovh1")).await);
    let guest = running_guest(&lab, "con-share").await;
    let vm = guest.name.clone();
    let marker = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();

    let mut a = open(&app, &alice_token, &ticket(&alice, &host, &vm).await)
        .await
        .unwrap();
    let first = control_until(&mut a, |_| true).await;
    assert_eq!(first["you"], true, "{first}");
    assert_eq!(first["holder"], "alice", "{first}");
    let mut b = open(&app, &bob_token, &ticket(&bob, &host, &vm).await)
        .await
        .unwrap();
    let joined = control_until(&mut b, |_| true).await;
    assert_eq!(joined["you"], false, "{joined}");
    assert_eq!(joined["holder"], "alice", "{joined}");
    assert_eq!(joined["viewers"], 2, "{joined}");
    control_until(&mut a, |v| v["viewers"] == 2).await;

    // Bob may watch but not type while Alice has control; he is told who has it.
    let (mut alice_sent, mut bob_sent) = (0, 0);
    type_keys(&mut b, &mut 0, "x").await;
    let refused = text_frame(&mut b).await;
    assert_eq!(refused["reason"], "not_in_control", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("alice"),
        "{refused}"
    );

    // What Alice types, both see.
    type_keys(
        &mut a,
        &mut alice_sent,
        &format!("\recho SHARED-\"\"{marker}\r"),
    )
    .await;
    read_until(&mut a, &format!("SHARED-{marker}")).await;
    read_until(&mut b, &format!("SHARED-{marker}")).await;

    // Bob takes control: both are told, and now he types.
    b.send(Message::Text(r#"{"take_control":true}"#.into()))
        .await
        .unwrap();
    let now_a = control_until(&mut a, |v| v["holder"] == "bob").await;
    assert_eq!(now_a["you"], false, "{now_a}");
    let now_b = control_until(&mut b, |v| v["holder"] == "bob").await;
    assert_eq!(now_b["you"], true, "{now_b}");
    type_keys(&mut b, &mut bob_sent, &format!("echo BOB-\"\"{marker}\r")).await;
    read_until(&mut a, &format!("BOB-{marker}")).await;
    type_keys(&mut a, &mut 0, "y").await;
    assert_eq!(text_frame(&mut a).await["reason"], "not_in_control");

    // A viewer who joins late first sees what is on the screen.
    let mut c = open(&app, &alice_token, &ticket(&alice, &host, &vm).await)
        .await
        .unwrap();
    read_until(&mut c, &format!("BOB-{marker}")).await;
    control_until(&mut a, |v| v["viewers"] == 3).await;

    // Bob leaves: control passes to the viewer watching longest.
    b.close(None).await.unwrap();
    let back = control_until(&mut a, |v| v["viewers"] == 2).await;
    assert_eq!(back["you"], true, "{back}");
    type_keys(
        &mut a,
        &mut alice_sent,
        &format!("echo BACK-\"\"{marker}\r"),
    )
    .await;
    read_until(&mut c, &format!("BACK-{marker}")).await;

    // One audit row per viewer, with the bytes that viewer typed (refused
    // keystrokes are not counted).
    let bob_row = session_row(&bob, |r| r["actor_name"] == "bob").await;
    assert_eq!(detail_field(&bob_row, "bytes_to_vm"), bob_sent.to_string());
    a.close(None).await.unwrap();
    let alice_row = session_row(&alice, |r| {
        r["actor_name"] == "alice" && detail_field(r, "bytes_to_vm") != "0"
    })
    .await;
    assert_eq!(
        detail_field(&alice_row, "bytes_to_vm"),
        alice_sent.to_string()
    );
    drop(c);
    lab.host("ovh1").virsh(&["destroy", &vm]);
}

/// A guest of our own on ovh1, started (not waited for: a console opens
/// on a VM that is still booting).
fn started_guest(lab: &Lab, prefix: &str) -> overvisor_testkit::TestGuest {
    let ovh1 = lab.host("ovh1");
    let guest = lab.define_guest(ovh1, &unique_name(prefix));
    ovh1.virsh(&["start", &guest.name]);
    guest
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_with_all_its_consoles_open_refuses_one_more_and_still_runs_commands() {
    let lab = Lab::load();
    // One serial console and four graphical ones per host.
    let app = TestApp::builder()
        .env("OVERVISOR_CONSOLES_PER_HOST", "1")
        .start()
        .await;
    let (_, token, _) = app.create_user("lena", "operator").await;
    let api = app.client(&token);
    let host = id(&register(&api, &lab, lab.host("ovh1")).await);
    let (a, b) = (
        started_guest(&lab, "con-full-a"),
        started_guest(&lab, "con-full-b"),
    );

    let first = open(&app, &token, &ticket(&api, &host, &a.name).await)
        .await
        .unwrap();
    // Another viewer of the same console shares its channel.
    let second = open(&app, &token, &ticket(&api, &host, &a.name).await)
        .await
        .unwrap();
    // Another VM's console would need a channel of its own: refused at
    // once, naming the host's limit and the setting.
    let (status, body) = ask(&api, &host, &b.name, "serial").await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_consoles",
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ovh1") && message.contains("consoles_per_host"),
        "{body}"
    );

    // Graphical consoles have a share of their own (4× the serial one).
    let mut displays = Vec::new();
    for _ in 0..4 {
        let granted = ticket_of(&api, &host, &a.name, "vnc").await;
        let (ws, _) = tokio_tungstenite::connect_async(socket_request(&app, &token, &granted))
            .await
            .unwrap();
        displays.push(ws);
    }
    let (status, body) = ask(&api, &host, &b.name, "vnc").await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_consoles",
    );

    // With every console open, commands still get their channels: a
    // resync job runs on the host and succeeds.
    let job = lab_hosts::resync(&api, &host).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // Closing the first VM's console makes room for the other's.
    drop((first, second));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = ask(&api, &host, &b.name, "serial").await;
        if status == StatusCode::CREATED {
            open(&app, &token, &body).await.unwrap();
            break;
        }
        assert_error(
            status,
            &body,
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_consoles",
        );
        assert!(Instant::now() < deadline, "no room after closing: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(displays);
    for guest in [&a, &b] {
        lab.host("ovh1").virsh(&["destroy", &guest.name]);
    }
}

/// The service's resident memory, from the kernel.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_that_does_not_read_is_dropped_and_memory_stays_bounded() {
    /// Output the guest prints at most: far more than the kernel's socket
    /// buffers (the sender's grows to 4 MiB on loopback) and every queue
    /// hold. The test stops reading once it has measured what it needs,
    /// so how much of it is printed depends on those buffers, not on luck.
    const BURST: usize = 64 << 20;
    /// Output that must pass to the viewer that reads after the other was
    /// dropped, while the service's memory is watched.
    const AFTER_DROP: usize = 2 << 20;
    let lab = Lab::load();
    let app = TestApp::start().await;
    let pid = app.pid().unwrap();
    let (_, token, _) = app.create_user("sam", "operator").await;
    let api = app.client(&token);
    let host = id(&register(&api, &lab, lab.host("ovh1")).await);
    let guest = running_guest(&lab, "con-slow").await;
    let vm = guest.name.clone();

    // A viewer whose socket holds a few KiB and who then stops reading.
    let addr = app.api.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(addr.parse().unwrap()).await.unwrap();
    let request = socket_request(&app, &token, &ticket(&api, &host, &vm).await);
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut slow, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(text_frame(&mut slow).await["type"], "connected");
    let keys =
        format!("\ryes 0123456789abcdef0123456789abcdef | head -c {BURST}; echo BURST-\"\"DONE\r");
    type_keys(&mut slow, &mut 0, &keys).await;

    // Another viewer watches the burst to its end.
    let mut watcher = open(&app, &token, &ticket(&api, &host, &vm).await)
        .await
        .unwrap();
    // The one that does not read is dropped once its socket, its queue and
    // its byte-counted backlog are full, long before the burst ends (a busy
    // guest's many small frames alone never drop a viewer); its audit row
    // says why. From then on the service's memory stays flat while the
    // rest of the burst passes through it to the viewer that reads.
    // The audit is watched by a task of its own: the viewer that reads must
    // never wait on it, or it falls behind and is dropped too.
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = tokio::spawn({
        let (api, dropped) = (app.client(&token), dropped.clone());
        async move {
            loop {
                let rows = console_audit(&api).await;
                if rows
                    .iter()
                    .any(|r| detail_field(r, "end") == "client_too_slow")
                {
                    dropped.store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    let mut dropped_at = None;
    let mut before = 0;
    let mut peak = 0;
    let mut seen = 0usize;
    let mut ended = None;
    let done = tokio::time::timeout(Duration::from_secs(300), async {
        let mut tail = String::new();
        while let Some(msg) = watcher.next().await {
            let data = match msg.unwrap() {
                Message::Binary(data) => data,
                Message::Close(frame) => {
                    ended = Some(format!("{frame:?}"));
                    return;
                }
                _ => continue,
            };
            seen += data.len();
            if dropped_at.is_none() && dropped.load(std::sync::atomic::Ordering::Acquire) {
                dropped_at = Some(seen);
                before = rss_kib(pid);
            }
            if dropped_at.is_some() {
                peak = peak.max(rss_kib(pid));
            }
            if dropped_at.is_some_and(|at| seen - at >= AFTER_DROP) {
                return;
            }
            tail.push_str(&String::from_utf8_lossy(&data));
            if tail.contains("BURST-DONE") {
                return;
            }
            let cut = tail.len().saturating_sub(64);
            tail = tail[tail.floor_char_boundary(cut)..].to_owned();
        }
    })
    .await;
    watch.abort();
    assert!(
        ended.is_none(),
        "the viewer that reads was closed: {ended:?} ({seen} bytes)"
    );
    assert!(done.is_ok(), "the burst stalled ({seen} bytes seen)");
    let dropped_at = dropped_at
        .unwrap_or_else(|| panic!("the viewer that did not read was never dropped ({seen} bytes)"));
    let after_drop = seen - dropped_at;
    let grown_kib = peak.saturating_sub(before);
    eprintln!(
        "dropped after {dropped_at} bytes; RSS grew by {grown_kib} KiB while {after_drop} more passed"
    );
    assert!(
        after_drop >= AFTER_DROP,
        "dropped late: after {dropped_at} of {seen} bytes"
    );
    assert!(
        grown_kib < 1 << 10,
        "the service grew by {grown_kib} KiB while {after_drop} bytes passed"
    );
    let row = session_row(&api, |r| detail_field(r, "end") == "client_too_slow").await;
    assert_eq!(row["actor_name"], "sam", "{row}");
    // The dropped viewer's socket has ended.
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(msg)) = slow.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the viewer that did not read is still served"
    );
    lab.host("ovh1").virsh(&["destroy", &vm]);
}

/// Reads exactly `n` bytes of RFB from the socket's binary frames,
/// keeping what is left over for the next read.
async fn rfb_read(ws: &mut Ws, pending: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while pending.len() < n {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("no VNC data in time")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Binary(data) => pending.extend_from_slice(&data),
            Message::Close(frame) => panic!("console closed: {frame:?}"),
            _ => {}
        }
    }
    pending.drain(..n).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_graphical_console_speaks_vnc_and_shows_a_picture() {
    let lab = Lab::load();
    let app = TestApp::start().await;
    let (_, token, _) = app.create_user("vera", "operator").await;
    let api = app.client(&token);
    let host = id(&register(&api, &lab, lab.host("ovh1")).await);
    let guest = running_guest(&lab, "con-vnc").await;
    let vm = guest.name.clone();

    let granted = ticket_of(&api, &host, &vm, "vnc").await;
    assert_eq!(granted["kind"], "vnc");
    let (mut ws, _) = tokio_tungstenite::connect_async(socket_request(&app, &token, &granted))
        .await
        .unwrap();
    // RFB 3.8 (RFC 6143): version, security "None" (the listener is on the
    // host's loopback only), shared session, then one full frame.
    let mut pending = Vec::new();
    let version = rfb_read(&mut ws, &mut pending, 12).await;
    assert!(version.starts_with(b"RFB 003."), "{version:?}");
    let send = |data: Vec<u8>| Message::Binary(data.into());
    ws.send(send(b"RFB 003.008\n".to_vec())).await.unwrap();
    let count = rfb_read(&mut ws, &mut pending, 1).await[0] as usize;
    let types = rfb_read(&mut ws, &mut pending, count).await;
    assert!(types.contains(&1), "security types {types:?}");
    ws.send(send(vec![1])).await.unwrap();
    assert_eq!(rfb_read(&mut ws, &mut pending, 4).await, [0, 0, 0, 0]);
    ws.send(send(vec![1])).await.unwrap();
    let init = rfb_read(&mut ws, &mut pending, 24).await;
    let (width, height) = (
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    );
    assert!(width > 0 && height > 0, "{width}x{height}");
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    let name = rfb_read(&mut ws, &mut pending, name_len).await;
    assert!(
        String::from_utf8_lossy(&name).contains(&vm),
        "desktop name {:?}",
        String::from_utf8_lossy(&name)
    );
    // Raw encoding only, then the whole screen.
    ws.send(send(vec![2, 0, 0, 1, 0, 0, 0, 0])).await.unwrap();
    let mut request = vec![3, 0, 0, 0, 0, 0];
    request.extend(width.to_be_bytes());
    request.extend(height.to_be_bytes());
    ws.send(send(request)).await.unwrap();
    let header = rfb_read(&mut ws, &mut pending, 4).await;
    assert_eq!(header[0], 0, "a FramebufferUpdate");
    let rects = u16::from_be_bytes([header[2], header[3]]);
    let bytes_per_pixel = usize::from(init[4] / 8);
    let mut lit = 0usize;
    for _ in 0..rects {
        let r = rfb_read(&mut ws, &mut pending, 12).await;
        let (w, h) = (
            usize::from(u16::from_be_bytes([r[4], r[5]])),
            usize::from(u16::from_be_bytes([r[6], r[7]])),
        );
        assert_eq!(&r[8..12], [0, 0, 0, 0], "raw encoding");
        let pixels = rfb_read(&mut ws, &mut pending, w * h * bytes_per_pixel).await;
        lit += pixels.iter().filter(|b| **b != 0).count();
    }
    assert!(lit > 0, "the guest's screen is blank");
    ws.close(None).await.unwrap();

    // The session is audited like a serial one.
    let row = session_row(&api, |r| detail_field(r, "kind") == "vnc").await;
    assert_eq!(detail_field(&row, "end"), "client_closed");
    assert!(detail_field(&row, "bytes_from_vm").parse::<u64>().unwrap() > 0);
    lab.host("ovh1").virsh(&["destroy", &vm]);
}
