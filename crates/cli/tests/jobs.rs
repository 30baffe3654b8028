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
    assert_eq!(field_of(&list, "id"), [slow_id.as_str(), id.as_str()]);
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

    // Every outcome is audited, once.
    let (_, audit) = op.get("/api/v1/audit?action=test.sleep").await;
    assert_eq!(
        field_of(&audit, "outcome"),
        ["failure", "success"],
        "{audit}"
    );
    assert!(!app.logs().contains(&op_token), "a token was logged");
}

async fn app_with_lease() -> TestApp {
    TestApp::builder()
        .env("OVERVISOR_TEST_JOBS", "1")
        .env("OVERVISOR_JOB_LEASE_SECS", "2")
        .start()
        .await
}

/// Starts a `test.steps` job; returns its id.
async fn steps_job(api: &Api, body: Value) -> String {
    let (status, job) = api.post("/api/v1/jobs/test-steps", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["kind"], "test.steps");
    job["id"].as_str().unwrap().to_owned()
}

/// Waits until step `index` of job `id` is running and has said so.
async fn step_running(api: &Api, id: &str, index: usize) {
    for _ in 0..400 {
        let (_, job) = api.get(&format!("/api/v1/jobs/{id}")).await;
        // The step is marked running a moment before it logs that it ran:
        // a test that kills the service in between would lose the line.
        let ran = format!("step {} ran", index + 1);
        if job["steps"][index]["status"] == "running" && log_lines(&job).contains(&ran) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("step {index} of {id} never ran");
}

/// `key` of every object in the array `list`, as strings.
fn field_of(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].as_str().unwrap().to_owned())
        .collect()
}

fn step_statuses(job: &Value) -> Vec<String> {
    field_of(&job["steps"], "status")
}

fn log_lines(job: &Value) -> Vec<String> {
    field_of(&job["log"], "message")
}

/// Steps run in order and show on the job; the third fails, and the two
/// before it are undone in reverse; a cancel during step two undoes it and
/// step one.
#[tokio::test]
async fn steps_failures_and_cancel_undo_in_reverse() {
    let app = app().await;
    let admin = app.admin();
    let id = steps_job(&admin, json!({"steps": 4, "step_millis": 10, "fail_at": 3})).await;
    let (_, job) = admin.get(&format!("/api/v1/jobs/{id}?wait=30")).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        step_statuses(&job),
        ["undone", "undone", "failed", "skipped"]
    );
    assert_eq!(
        log_lines(&job),
        [
            "step 1 ran",
            "step 2 ran",
            "step 3 ran",
            "step 2 undone",
            "step 1 undone"
        ]
    );
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("undone: step 2 \"step 2\", step 1 \"step 1\""),
        "{job}"
    );

    let id = steps_job(&admin, json!({"steps": 3, "step_millis": 1500})).await;
    step_running(&admin, &id, 1).await;
    let (status, job) = admin
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(step_statuses(&job), ["undone", "undone", "skipped"]);
    assert_eq!(
        log_lines(&job),
        ["step 1 ran", "step 2 ran", "step 2 undone", "step 1 undone"]
    );
    let (status, body) = admin
        .post("/api/v1/jobs/test-steps", json!({"steps": 9}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
}

/// SIGKILL in the middle of a step. The same service, started again on the
/// same data directory, takes the job over once its lease lapses: a job
/// whose steps are idempotent is resumed from the step it stopped in (the
/// steps before it never run again); one that must not run twice is marked
/// interrupted, naming that step, and nothing of it runs again.
#[tokio::test]
async fn sigkill_during_a_step_resumes_or_interrupts_and_the_database_stays_intact() {
    let mut app = app_with_lease().await;
    let admin = app.admin();
    let resumable = steps_job(&admin, json!({"steps": 3, "step_millis": 3000})).await;
    let once = steps_job(
        &admin,
        json!({"steps": 3, "step_millis": 3000, "resumable": false}),
    )
    .await;
    step_running(&admin, &resumable, 1).await;
    step_running(&admin, &once, 1).await;
    app.kill();
    // On SQLite (not PostgreSQL, which is its own process) the file stays.
    let db = app
        .postgres_url()
        .is_none()
        .then(|| app.data_path().join("overvisor.db"));
    if let Some(db) = &db {
        assert!(db.exists(), "database file {} missing", db.display());
    }

    app.restart().await;
    let admin = app.admin();
    let (_, job) = admin
        .get(&format!("/api/v1/jobs/{resumable}?wait=30"))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(step_statuses(&job), ["done", "done", "done"]);
    let log = log_lines(&job);
    assert_eq!(log[..2], ["step 1 ran", "step 2 ran"], "{log:?}");
    assert!(
        log[2].starts_with("resumed at step 2 \"step 2\""),
        "{log:?}"
    );
    assert_eq!(
        log[3..],
        ["step 2 ran", "step 3 ran"],
        "step 1 never ran twice: {log:?}"
    );

    let (_, job) = admin.get(&format!("/api/v1/jobs/{once}?wait=30")).await;
    assert_eq!(job["status"], "interrupted", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("not run again") && error.contains("step 2 \"step 2\""),
        "{error}"
    );
    assert_eq!(step_statuses(&job), ["done", "failed", "skipped"]);
    assert!(job["finished_at"].is_string());
    let lines = log_lines(&job);
    assert_eq!(lines, ["step 1 ran", "step 2 ran"]);
    // Nothing runs it again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, again) = admin.get(&format!("/api/v1/jobs/{once}")).await;
    assert_eq!(again["status"], "interrupted");
    assert_eq!(log_lines(&again), lines);
    let (_, all) = admin.get("/api/v1/jobs?all=true").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, audit) = admin.get("/api/v1/audit?all=true&action=test.steps").await;
    assert_eq!(
        field_of(&audit, "outcome").len(),
        2,
        "one row per job: {audit}"
    );
    assert!(audit.to_string().contains("status=interrupted"), "{audit}");

    // SQLite agrees the file is sound (read while the service runs).
    if let Some(db) = db {
        let store = overvisor_store::Store::open_sqlite_read_only(&db)
            .await
            .unwrap();
        store.integrity_check().await.unwrap();
        store.close().await;
    }
}

/// Two processes on one database: one (with `run_jobs` off) accepts jobs,
/// the other runs them; a cancel asked of the first reaches the job
/// running in the second.
#[tokio::test]
async fn a_job_queued_by_one_process_is_run_by_another() {
    let front = TestApp::builder()
        .env("OVERVISOR_TEST_JOBS", "1")
        .env("OVERVISOR_RUN_JOBS", "0")
        .start()
        .await;
    let api = front.admin();
    let id = steps_job(&api, json!({"steps": 2, "step_millis": 10})).await;
    // Nobody runs it yet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, job) = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "queued", "{job}");

    let worker = TestApp::builder()
        .env("OVERVISOR_TEST_JOBS", "1")
        .env("OVERVISOR_JOB_LEASE_SECS", "3")
        .data_dir(front.data_path())
        .start()
        .await;
    let (_, job) = api.get(&format!("/api/v1/jobs/{id}?wait=30")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(log_lines(&job), ["step 1 ran", "step 2 ran"]);

    let id = steps_job(&api, json!({"steps": 3, "step_millis": 4000})).await;
    step_running(&api, &id, 0).await;
    let (status, _) = api
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, job) = api.get(&format!("/api/v1/jobs/{id}?wait=30")).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(step_statuses(&job), ["undone", "skipped", "skipped"]);
    drop(worker);
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
