//! Jobs and the event stream, through the real service over HTTP: the job
//! lifecycle with long-poll and cancel, tenancy, a SIGKILL in the middle of
//! a job, and `/api/v1/events` over WebSocket and SSE.
//!
//! These use the test-only `test.sleep` job (`OVERVISOR_TEST_JOBS=1`): a job
//! that is reliably still running when the test kills or cancels it, with
//! no host whose timing could make the test flaky.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn app() -> TestApp {
    TestApp::builder()
        .env("OVERVISOR_TEST_JOBS", "1")
        .start()
        .await
}

/// Starts a sleep job; returns (Location header, body).
async fn sleep_job(api: &Api, seconds: u32) -> (String, Value) {
    let resp = api
        .request(reqwest::Method::POST, "/api/v1/jobs/test-sleep")
        .json(&json!({"seconds": seconds}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    (location, body)
}

async fn wait_status(api: &Api, id: &str, want: &str) -> Value {
    for _ in 0..200 {
        let (status, job) = api.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if job["status"] == want {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never became {want}");
}

#[tokio::test]
async fn job_lifecycle_long_poll_cancel_and_tenancy() {
    let app = app().await;
    let admin = app.admin();
    let (_, op_token, _) = app.create_user("olga", "operator").await;
    let (_, other_token, _) = app.create_user("otto", "operator").await;
    let (_, reader_token, _) = app.create_user("rita", "reader").await;
    let op = app.client(&op_token);
    let other = app.client(&other_token);

    // 202 + Location + the job, queued.
    let (location, job) = sleep_job(&op, 1).await;
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/jobs/{id}"));
    assert_eq!(job["kind"], "test.sleep");
    assert!(matches!(job["status"].as_str(), Some("queued" | "running")));

    // Long-poll until it has finished.
    let (status, done) = op.get(&format!("{location}?wait=30")).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"], 100);
    assert_eq!(done["result"], json!({"slept_seconds": 1}));
    assert_eq!(done["log"][0]["message"], "slept 0 of 1 s");
    assert!(done["log"][0]["at"].is_string() && done["finished_at"].is_string());

    // A wait that expires answers with the job still running.
    let (_, slow) = sleep_job(&op, 60).await;
    let slow_id = slow["id"].as_str().unwrap().to_owned();
    let (status, still) = op.get(&format!("/api/v1/jobs/{slow_id}?wait=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(still["status"], "running", "{still}");
    let (status, body) = op.get(&format!("/api/v1/jobs/{slow_id}?wait=61")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");

    // Another tenant sees nothing and cannot cancel.
    let (status, body) = other.get(&format!("/api/v1/jobs/{slow_id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = other
        .post(&format!("/api/v1/jobs/{slow_id}/cancel"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, list) = other.get("/api/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));

    // The owner cancels it; a second cancel is a conflict.
    let (status, cancelled) = op
        .post(&format!("/api/v1/jobs/{slow_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["error"].as_str().unwrap().contains("cancelled"));
    let (status, body) = op
        .post(&format!("/api/v1/jobs/{slow_id}/cancel"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    // Lists: newest first, filters, keyset pagination, admin's `all`.
    let (_, list) = op.get("/api/v1/jobs").await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [slow_id.as_str(), id.as_str()]);
    let (_, list) = op
        .get("/api/v1/jobs?status=succeeded&kind=test.sleep")
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list) = op.get(&format!("/api/v1/jobs?before={slow_id}")).await;
    assert_eq!(list[0]["id"], id.as_str());
    let (_, list) = admin.get("/api/v1/jobs?all=true").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (status, body) = op.get("/api/v1/jobs?all=true").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = op.get("/api/v1/jobs?status=done").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_query");
    let (status, body) = op.get("/api/v1/jobs?limit=0").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    let (status, body) = op.get("/api/v1/jobs/not-a-uuid").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // Roles and authentication.
    let (status, body) = app
        .client(&reader_token)
        .post("/api/v1/jobs/test-sleep", json!({"seconds": 1}))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = app.anonymous().get("/api/v1/jobs").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, body) = op
        .post("/api/v1/jobs/test-sleep", json!({"seconds": 0}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");

    // Every outcome is audited.
    let (_, audit) = op.get("/api/v1/audit?action=job.test.sleep").await;
    let outcomes: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failure", "success"], "{audit}");
    assert!(!app.logs().contains(&op_token), "a token was logged");
}

/// The same service again on the same data directory finds the killed job
/// interrupted, its database intact, and runs nothing again.
#[tokio::test]
async fn sigkill_during_a_job_leaves_it_interrupted_and_the_database_intact() {
    let mut app = app().await;
    let admin = app.admin();
    let (_, job) = sleep_job(&admin, 120).await;
    let id = job["id"].as_str().unwrap().to_owned();
    // Let it run and write a few log lines and progress updates.
    wait_status(&admin, &id, "running").await;
    loop {
        let (_, job) = admin.get(&format!("/api/v1/jobs/{id}")).await;
        if job["log"].as_array().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.kill();
    let db = app.data_path().join("overvisor.db");
    assert!(db.exists(), "database file {} missing", db.display());

    app.restart().await;
    let admin = app.admin();
    let (status, job) = admin.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["status"], "interrupted", "{job}");
    assert!(job["error"].as_str().unwrap().contains("not run again"));
    assert!(job["finished_at"].is_string());
    let lines = job["log"].as_array().unwrap().len();

    // Nothing runs it again: no new log lines, no new job.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, again) = admin.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(again["status"], "interrupted");
    assert_eq!(again["log"].as_array().unwrap().len(), lines);
    let (_, all) = admin.get("/api/v1/jobs?all=true").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    let (_, audit) = admin
        .get("/api/v1/audit?all=true&action=job.test.sleep")
        .await;
    assert_eq!(audit[0]["outcome"], "failure", "{audit}");
    assert!(audit[0]["detail"].as_str().unwrap().contains("interrupted"));

    // SQLite agrees the file is sound (read while the service runs).
    let store = overvisor_store::Store::open_sqlite_read_only(&db)
        .await
        .unwrap();
    store.integrity_check().await.unwrap();
    store.close().await;
}

async fn ws_connect(
    app: &TestApp,
    token: &str,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/api/v1/events{query}", app.api.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    ws
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no event within 30 s")
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(p) => ws.send(Message::Pong(p)).await.unwrap(),
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test]
async fn event_stream_delivers_job_updates_to_their_owner_only() {
    let app = app().await;
    let (_, op_token, _) = app.create_user("evan", "operator").await;
    let (_, other_token, _) = app.create_user("eve", "operator").await;
    let mut mine = ws_connect(&app, &op_token, "?types=job").await;
    let mut theirs = ws_connect(&app, &other_token, "").await;
    let mut admins = ws_connect(&app, &app.admin_token, "?types=job.updated").await;

    let (_, job) = sleep_job(&app.client(&op_token), 1).await;
    let id = job["id"].as_str().unwrap();
    let first = next_json(&mut mine).await;
    assert_eq!(first["type"], "job.created");
    assert_eq!(first["job"]["id"], id);
    let mut seq = first["seq"].as_u64().unwrap();
    let mut types = Vec::new();
    loop {
        let event = next_json(&mut mine).await;
        assert!(event["seq"].as_u64().unwrap() > seq, "ordered: {event}");
        seq = event["seq"].as_u64().unwrap();
        types.push(event["type"].as_str().unwrap().to_owned());
        if event["type"] == "job.updated" && event["job"]["status"] == "succeeded" {
            break;
        }
    }
    assert!(types.contains(&"job.log".to_owned()), "{types:?}");
    // Admins see everyone's, filtered to what they asked for.
    let event = next_json(&mut admins).await;
    assert_eq!(event["type"], "job.updated");
    assert_eq!(event["job"]["id"], id);

    // The other tenant saw none of it: the first thing it gets is its own job.
    let (_, own) = sleep_job(&app.client(&other_token), 1).await;
    let event = next_json(&mut theirs).await;
    assert_eq!(event["type"], "job.created");
    assert_eq!(event["job"]["id"], own["id"]);

    // SSE variant on the same path.
    let resp = app
        .client(&op_token)
        .request(reqwest::Method::GET, "/api/v1/events?types=job")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut resp = resp;
    let chunk = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains(r#"data: {"type":"subscribed"}"#));
    drop(resp);

    // Bad requests: unknown type, no upgrade, no credentials, foreign origin.
    let (status, body) = app.client(&op_token).get("/api/v1/events?types=jobs").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    let (status, body) = app.client(&op_token).get("/api/v1/events").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "upgrade_required");
    let (status, body) = app.anonymous().get("/api/v1/events").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (session, status, _) = Api::login(&app.api, "evan", "evan-password-123").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = session
        .send(
            session
                .request(reqwest::Method::GET, "/api/v1/events")
                .header("origin", "https://evil.example")
                .header("accept", "text/event-stream"),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "bad_origin");
    mine.close(None).await.ok();
}
