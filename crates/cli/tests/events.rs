//! An open event stream lives only as long as its credential, through the
//! real service over HTTP: revoking the key, disabling the user, demoting
//! an admin, signing out or revoking a session ends the stream at once;
//! `overvisor key revoke` from another process and a key's expiry end it
//! at the next periodic re-check. Streams whose credential is untouched
//! carry on.
//!
//! Events come from the test-only `test.sleep` job (`OVERVISOR_TEST_JOBS=1`),
//! whose `job.created` is published the moment it is accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a stream may take to close after a change made through this
/// service: it is told at once, so this is only a functional bound.
const PROMPTLY: Duration = Duration::from_secs(10);
/// The periodic re-check is set to 1 s in the tests that need it; allow
/// for a slow, busy machine.
const RECHECK_WAIT: Duration = Duration::from_secs(20);
/// How long to wait for an event that must arrive.
const EVENT_WAIT: Duration = Duration::from_secs(30);

async fn app() -> TestApp {
    TestApp::builder()
        .env("OVERVISOR_TEST_JOBS", "1")
        .start()
        .await
}

/// Starts a sleep job as `api`; returns its id.
async fn sleep_job(api: &Api) -> String {
    let (status, job) = api
        .post("/api/v1/jobs/test-sleep", json!({"seconds": 1}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

/// Creates another API key for the holder of `api`; returns (id, token).
async fn new_key(api: &Api, name: &str, extra: Value) -> (String, String) {
    let mut body = json!({ "name": name });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, created) = api.post("/api/v1/users/me/keys", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["key"]["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

/// Opens `/api/v1/events?types=job.created` as a WebSocket with one
/// authentication header, and reads the `subscribed` greeting.
async fn ws_open(app: &TestApp, header: &'static str, value: &str) -> Ws {
    let url = format!(
        "{}/api/v1/events?types=job.created",
        app.api.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(header, value.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    match ws_next(&mut ws, EVENT_WAIT).await {
        WsNext::Json(v) => assert_eq!(v["type"], "subscribed", "{v}"),
        WsNext::Closed(frame) => panic!("closed at once: {frame:?}"),
    }
    ws
}

async fn ws_with_key(app: &TestApp, token: &str) -> Ws {
    ws_open(app, "authorization", &format!("Bearer {token}")).await
}

enum WsNext {
    Json(Value),
    Closed(Option<CloseFrame>),
}

async fn ws_next(ws: &mut Ws, wait: Duration) -> WsNext {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("nothing on the stream within {wait:?}"));
        match msg {
            None => return WsNext::Closed(None),
            Some(Err(err)) => panic!("websocket error: {err}"),
            Some(Ok(Message::Text(text))) => {
                return WsNext::Json(serde_json::from_str(&text).unwrap());
            }
            Some(Ok(Message::Ping(p))) => ws.send(Message::Pong(p)).await.unwrap(),
            Some(Ok(Message::Close(frame))) => return WsNext::Closed(frame),
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }
}

/// The next `job.created` event's job id.
async fn ws_next_job(ws: &mut Ws) -> String {
    match ws_next(ws, EVENT_WAIT).await {
        WsNext::Json(v) => {
            assert_eq!(v["type"], "job.created", "{v}");
            v["job"]["id"].as_str().unwrap().to_owned()
        }
        WsNext::Closed(frame) => panic!("stream closed: {frame:?}"),
    }
}

/// Expects, within `wait`, the final `closed` message with `reason` and
/// then a close frame with `code`.
async fn ws_expect_closed(ws: &mut Ws, wait: Duration, code: u16, reason: &str) {
    match ws_next(ws, wait).await {
        WsNext::Json(v) => {
            assert_eq!(v["type"], "closed", "{v}");
            assert_eq!(v["reason"], reason, "{v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        }
        WsNext::Closed(frame) => panic!("closed without the final message: {frame:?}"),
    }
    match ws_next(ws, PROMPTLY).await {
        WsNext::Closed(Some(frame)) => {
            assert_eq!(u16::from(frame.code), code, "{frame:?}");
            assert!(!frame.reason.is_empty(), "{frame:?}");
        }
        WsNext::Closed(None) => panic!("closed without a close frame"),
        WsNext::Json(v) => panic!("a message after `closed`: {v}"),
    }
}

/// Opens the SSE variant with `api`'s credentials (bearer or cookie).
async fn sse_open(api: &Api) -> reqwest::Response {
    let resp = api
        .request(reqwest::Method::GET, "/api/v1/events?types=job.created")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp = resp;
    let seen = sse_read_until(&mut resp, r#"{"type":"subscribed"}"#).await;
    assert!(seen.contains("data: "), "{seen}");
    resp
}

/// Reads the SSE body until it contains `needle`; returns what was read.
async fn sse_read_until(resp: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within {EVENT_WAIT:?}; got {seen:?}"))
            .expect("body error")
            .unwrap_or_else(|| panic!("body ended before {needle:?}; got {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

/// Expects, within `wait`, a final `event: closed` with `reason` and then
/// the end of the response.
async fn sse_expect_closed(resp: &mut reqwest::Response, wait: Duration, reason: &str) {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!("the SSE response did not end within {wait:?}; got {seen:?}")
            })
            .expect("body error");
        match chunk {
            Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            None => break,
        }
    }
    let last = seen
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .last()
        .unwrap_or_default();
    assert!(
        last.lines().any(|l| l == "event: closed"),
        "the last event is not `closed`: {seen:?}"
    );
    let data = last
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("`closed` without data: {seen:?}"));
    let data: Value = serde_json::from_str(data).unwrap();
    assert_eq!(data["type"], "closed", "{data}");
    assert_eq!(data["reason"], reason, "{data}");
}

/// Signs in; returns the session cookie value and the CSRF token.
async fn sign_in(app: &TestApp, name: &str, password: &str) -> (String, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", app.api))
        .json(&json!({"name": name, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("ov_session="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    (cookie, body["csrf_token"].as_str().unwrap().to_owned())
}

/// An API client that authenticates with a session cookie.
fn cookie_client(app: &TestApp, cookie: &str, csrf: &str) -> Api {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("cookie", format!("ov_session={cookie}").parse().unwrap());
    let mut api = Api::new(&app.api, None);
    api.http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    api.csrf = Some(csrf.to_owned());
    api
}

#[tokio::test]
async fn revoking_a_key_closes_its_streams_and_only_those() {
    let app = app().await;
    let (_, kim_default, _) = app.create_user("kim", "operator").await;
    let (_, lee_token, _) = app.create_user("lee", "operator").await;
    let kim = app.client(&kim_default);
    let lee = app.client(&lee_token);
    let (stream_key, stream_token) = new_key(&kim, "stream", json!({})).await;

    let mut doomed_ws = ws_with_key(&app, &stream_token).await;
    let mut doomed_sse = sse_open(&app.client(&stream_token)).await;
    let mut kim_ws = ws_with_key(&app, &kim_default).await;
    let mut lee_ws = ws_with_key(&app, &lee_token).await;

    // Everything flows before.
    let job = sleep_job(&kim).await;
    assert_eq!(ws_next_job(&mut doomed_ws).await, job);
    assert_eq!(ws_next_job(&mut kim_ws).await, job);
    sse_read_until(&mut doomed_sse, &job).await;

    let (status, body) = kim
        .delete(&format!("/api/v1/users/me/keys/{stream_key}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ws_expect_closed(&mut doomed_ws, PROMPTLY, 4401, "credentials_revoked").await;
    sse_expect_closed(&mut doomed_sse, PROMPTLY, "credentials_revoked").await;

    // Streams on other keys — the same user's and another user's — carry on.
    let job = sleep_job(&kim).await;
    assert_eq!(ws_next_job(&mut kim_ws).await, job);
    let job = sleep_job(&lee).await;
    assert_eq!(ws_next_job(&mut lee_ws).await, job);

    // And the revoked key cannot open a new one.
    let (status, _) = app.client(&stream_token).get("/api/v1/events").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!app.logs().contains(&stream_token), "a token was logged");
}

#[tokio::test]
async fn rotating_a_key_closes_the_stream_opened_with_the_old_secret() {
    let app = app().await;
    let (_, token, _) = app.create_user("rory", "operator").await;
    let api = app.client(&token);
    let (key, old) = new_key(&api, "stream", json!({})).await;
    let mut ws = ws_with_key(&app, &old).await;
    let (status, body) = api
        .post(&format!("/api/v1/users/me/keys/{key}/rotate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ws_expect_closed(&mut ws, PROMPTLY, 4401, "credentials_revoked").await;
    // The new secret streams.
    let mut ws = ws_with_key(&app, body["token"].as_str().unwrap()).await;
    let job = sleep_job(&api).await;
    assert_eq!(ws_next_job(&mut ws).await, job);
}

#[tokio::test]
async fn disabling_a_user_closes_their_stream() {
    let app = app().await;
    let (dana_id, dana_token, _) = app.create_user("dana", "operator").await;
    let (_, other_token, _) = app.create_user("omar", "operator").await;
    let mut dana_ws = ws_with_key(&app, &dana_token).await;
    let mut admin_ws = ws_with_key(&app, &app.admin_token).await;
    let mut omar_ws = ws_with_key(&app, &other_token).await;

    let (status, body) = app
        .admin()
        .patch(
            &format!("/api/v1/users/{dana_id}"),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ws_expect_closed(&mut dana_ws, PROMPTLY, 4401, "credentials_revoked").await;

    // The admin who did it, and everyone else, carry on.
    let job = sleep_job(&app.client(&other_token)).await;
    assert_eq!(ws_next_job(&mut admin_ws).await, job);
    assert_eq!(ws_next_job(&mut omar_ws).await, job);
}

#[tokio::test]
async fn demoting_an_admin_closes_the_stream_and_the_new_one_sees_only_their_own() {
    let app = app().await;
    let (ada_id, ada_token, _) = app.create_user("ada", "admin").await;
    let (_, tess_token, _) = app.create_user("tess", "operator").await;
    let ada = app.client(&ada_token);
    let tess = app.client(&tess_token);

    // As an admin, Ada sees another tenant's jobs.
    let mut ws = ws_with_key(&app, &ada_token).await;
    let job = sleep_job(&tess).await;
    assert_eq!(ws_next_job(&mut ws).await, job);

    let (status, body) = app
        .admin()
        .patch(
            &format!("/api/v1/users/{ada_id}"),
            json!({"role": "operator"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ws_expect_closed(&mut ws, PROMPTLY, 4403, "role_changed").await;

    // Reconnected as an operator: Tess's next job is not shown, Ada's own is
    // (events arrive in order, so Tess's would have come first).
    let mut ws = ws_with_key(&app, &ada_token).await;
    sleep_job(&tess).await;
    let own = sleep_job(&ada).await;
    assert_eq!(ws_next_job(&mut ws).await, own);
}

#[tokio::test]
async fn cookie_streams_close_on_sign_out_and_on_session_revoke() {
    let app = app().await;
    let (_, token, password) = app.create_user("sam", "operator").await;
    let api = app.client(&token);

    // A WebSocket on a session, ended by signing out of that session.
    let (cookie, csrf) = sign_in(&app, "sam", &password).await;
    let mut ws = ws_open(&app, "cookie", &format!("ov_session={cookie}")).await;
    let job = sleep_job(&api).await;
    assert_eq!(ws_next_job(&mut ws).await, job);
    let (status, body) = cookie_client(&app, &cookie, &csrf)
        .post("/api/v1/auth/logout", json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    ws_expect_closed(&mut ws, PROMPTLY, 4401, "credentials_revoked").await;

    // SSE on another session, ended from the sessions list.
    let (cookie, csrf) = sign_in(&app, "sam", &password).await;
    let mut sse = sse_open(&cookie_client(&app, &cookie, &csrf)).await;
    let (status, sessions) = api.get("/api/v1/users/me/sessions").await;
    assert_eq!(status, StatusCode::OK, "{sessions}");
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let id = sessions[0]["id"].as_str().unwrap();
    let (status, body) = api.delete(&format!("/api/v1/users/me/sessions/{id}")).await;
    assert!(status.is_success(), "{status} {body}");
    sse_expect_closed(&mut sse, PROMPTLY, "credentials_revoked").await;
    assert!(!app.logs().contains(&cookie), "a session cookie was logged");
}

/// Changes the service cannot announce — a revocation by another process
/// on the same database, a key reaching its expiry — are caught by the
/// periodic re-check.
#[tokio::test]
async fn periodic_recheck_catches_cli_revocation_and_expiry() {
    let app = TestApp::builder()
        .env("OVERVISOR_TEST_JOBS", "1")
        .env("OVERVISOR_STREAM_RECHECK_SECS", "1")
        .start()
        .await;
    let (_, token, _) = app.create_user("cleo", "operator").await;
    let cleo = app.client(&token);
    let (cli_key, cli_token) = new_key(&cleo, "cli-revoked", json!({})).await;
    let expires_at = (chrono::Utc::now() + chrono::Duration::seconds(6)).to_rfc3339();
    let (_, short_token) = new_key(&cleo, "short", json!({"expires_at": expires_at})).await;

    let mut revoked_ws = ws_with_key(&app, &cli_token).await;
    let mut expiring_sse = sse_open(&app.client(&short_token)).await;
    let mut kept_ws = ws_with_key(&app, &token).await;

    let out = app.cli(&["key", "revoke", "cleo", &cli_key], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ws_expect_closed(&mut revoked_ws, RECHECK_WAIT, 4401, "credentials_revoked").await;
    sse_expect_closed(&mut expiring_sse, RECHECK_WAIT, "credentials_revoked").await;

    // Re-checks of an untouched key change nothing for its stream.
    let job = sleep_job(&cleo).await;
    assert_eq!(ws_next_job(&mut kept_ws).await, job);
}

/// Tries to open a WebSocket stream with `token`; the handshake's HTTP
/// status and JSON body when it is refused.
async fn ws_try(app: &TestApp, token: &str) -> Result<Ws, (StatusCode, Value)> {
    let url = format!(
        "{}/api/v1/events?types=job.created",
        app.api.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            let body = resp.body().clone().unwrap_or_default();
            Err((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
        Err(other) => panic!("websocket handshake failed: {other}"),
    }
}

fn assert_too_many_streams(status: StatusCode, body: &Value, limit: usize) {
    support::assert_error(
        status,
        body,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_streams",
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{limit} event streams"))
            && message.contains("event_streams_per_credential"),
        "the refusal names the limit: {body}"
    );
}

/// One credential holds at most `event_streams_per_credential` (default
/// 16) streams, WebSocket and SSE together: one more is refused with 429
/// before any upgrade, other credentials are not affected, and closing a
/// stream (either kind) makes room for a new one.
#[tokio::test]
async fn streams_per_credential_are_capped_and_closing_one_frees_a_place() {
    const CAP: usize = 16; // the default, which this test relies on
    let app = app().await;
    let (_, kim_token, _) = app.create_user("kim", "operator").await;
    let kim = app.client(&kim_token);
    let (_, other_token) = new_key(&kim, "other", json!({})).await;

    let mut ws_streams = Vec::new();
    for _ in 0..CAP / 2 {
        ws_streams.push(ws_with_key(&app, &kim_token).await);
    }
    let mut sse_streams = Vec::new();
    for _ in 0..CAP / 2 {
        sse_streams.push(sse_open(&kim).await);
    }

    // The 17th, either way, is refused with the limit named.
    let Err((status, body)) = ws_try(&app, &kim_token).await else {
        panic!("a WebSocket beyond the cap was upgraded");
    };
    assert_too_many_streams(status, &body, CAP);
    let (status, body) = kim
        .send(
            kim.request(reqwest::Method::GET, "/api/v1/events")
                .header("accept", "text/event-stream"),
        )
        .await;
    assert_too_many_streams(status, &body, CAP);

    // Another key of the same user is counted apart.
    let mut other_ws = ws_with_key(&app, &other_token).await;

    // The capped streams still work.
    let job = sleep_job(&kim).await;
    for ws in &mut ws_streams {
        assert_eq!(ws_next_job(ws).await, job);
    }
    for sse in &mut sse_streams {
        sse_read_until(sse, &job).await;
    }
    assert_eq!(ws_next_job(&mut other_ws).await, job);

    // Closing a WebSocket frees its place (the server notices the close
    // frame; bounded wait for that).
    let mut closed = ws_streams.pop().unwrap();
    closed.close(None).await.unwrap();
    drop(closed);
    let mut replacement = open_when_room(&app, &kim_token).await;
    assert_too_many_streams_now(&app, &kim_token).await;

    // Dropping an SSE response frees its place too.
    drop(sse_streams.pop());
    let replacement_too = open_when_room(&app, &kim_token).await;
    assert_too_many_streams_now(&app, &kim_token).await;

    let job = sleep_job(&kim).await;
    assert_eq!(ws_next_job(&mut replacement).await, job);
    drop(replacement_too);
}

/// Opens a WebSocket as soon as the cap allows (within 10 s).
async fn open_when_room(app: &TestApp, token: &str) -> Ws {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        match ws_try(app, token).await {
            Ok(mut ws) => {
                match ws_next(&mut ws, EVENT_WAIT).await {
                    WsNext::Json(v) => assert_eq!(v["type"], "subscribed", "{v}"),
                    WsNext::Closed(frame) => panic!("closed at once: {frame:?}"),
                }
                return ws;
            }
            Err((status, body)) => {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a closed stream did not free its place within {PROMPTLY:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn assert_too_many_streams_now(app: &TestApp, token: &str) {
    let Err((status, body)) = ws_try(app, token).await else {
        panic!("the cap no longer holds after a replacement");
    };
    assert_too_many_streams(status, &body, 16);
}

/// A bad `event_streams_per_credential` stops start-up with a message
/// naming the setting.
#[test]
fn a_bad_stream_cap_stops_start_up() {
    for bad in ["0", "4097", "many"] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(TestApp::binary())
            .arg("serve")
            .env_clear()
            .env("OVERVISOR_DATA_DIR", dir.path().join("data"))
            .env("OVERVISOR_UI_BIND", "127.0.0.1:0")
            .env("OVERVISOR_API_BIND", "127.0.0.1:0")
            .env("OVERVISOR_EVENT_STREAMS_PER_CREDENTIAL", bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with cap {bad:?}: {stderr}");
        assert!(
            stderr.contains("event_streams_per_credential"),
            "cap {bad:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn streams_end_saying_the_service_stops_and_never_hold_up_its_exit() {
    let mut app = app().await;
    let token = app.admin_token.clone();
    let admin = app.client(&token);
    let mut ws = ws_with_key(&app, &token).await;
    let mut sse = sse_open(&admin).await;
    app.signal_stop();
    ws_expect_closed(&mut ws, PROMPTLY, 1012, "shutting_down").await;
    sse_expect_closed(&mut sse, PROMPTLY, "shutting_down").await;
    // The SSE response ended, so the drain had nothing left to wait for.
    assert_eq!(app.terminate(), Some(0), "{}", app.logs());
}
