//! The live inventory and the event stream against the real lab: changes
//! made behind Overvisor's back (`virsh` as root on the host) show up in
//! `/api/v1/vms` and on `/api/v1/events`; VM actions run as jobs; and a
//! host that dies under a running job fails the job clearly, is marked
//! disconnected, and reconnects by itself.
//!
//! Hosts: ovh1 is shared (only a guest of our own is touched); ovh5
//! belongs to this file's resilience test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::time::Duration;

use futures::StreamExt;
use lab_hosts::{SshdDown, id, register};
use overvisor_testkit::{Lab, LabHost, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn events(app: &TestApp, token: &str, types: &str) -> Ws {
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

async fn next_event(ws: &mut Ws, within: Duration) -> Value {
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
async fn wait_event(ws: &mut Ws, within: Duration, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = next_event(ws, left).await;
        if want(&event) {
            return event;
        }
    }
}

async fn host_status(api: &Api, host: &str) -> Value {
    let (status, summary) = api.get("/api/v1/inventory").await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    summary["host_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host_id"] == host)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_connected(api: &Api, host: &str) {
    for _ in 0..300 {
        if host_status(api, host).await["status"] == "connected" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "host {host} never connected: {}",
        host_status(api, host).await
    );
}

async fn job_done(api: &Api, job: &Value) -> Value {
    let (status, done) = api
        .get(&format!(
            "/api/v1/jobs/{}?wait=60",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    done
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_band_changes_reach_the_inventory_and_the_event_stream() {
    let lab = Lab::load();
    let ovh1 = lab.host("ovh1");
    let app = TestApp::start().await;
    let (_, token, _) = app.create_user("ines", "operator").await;
    let (_, other_token, _) = app.create_user("oscar", "operator").await;
    let api = app.client(&token);
    let other = app.client(&other_token);
    let host = id(&register(&api, &lab, ovh1).await);
    let mut ws = events(&app, &token, "vm,host").await;
    wait_connected(&api, &host).await;

    // Defined behind our back: it appears.
    let guest = lab.define_guest(ovh1, &unique_name("inv-oob"));
    let name = guest.name.clone();
    let added = wait_event(&mut ws, Duration::from_secs(30), |e| {
        e["type"] == "vm.added" && e["vm"]["name"] == name.as_str()
    })
    .await;
    assert_eq!(added["host_id"], host.as_str());
    assert_eq!(added["vm"]["state"], "shut_off");
    let uuid = added["vm"]["uuid"].as_str().unwrap().to_owned();

    // Started and destroyed behind our back: both reach the stream.
    ovh1.virsh(&["start", &name]);
    let changed = wait_event(&mut ws, Duration::from_secs(30), |e| {
        e["type"] == "vm.changed" && e["vm"]["name"] == name.as_str()
    })
    .await;
    assert_eq!(changed["vm"]["state"], "running");
    let (status, page) = api.get(&format!("/api/v1/vms?name={name}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["state"], "running");
    assert_eq!(page["items"][0]["host_name"], "ovh1");
    assert_eq!(page["items"][0]["tags"], json!(["lab"]));
    ovh1.virsh(&["destroy", &name]);
    let changed = wait_event(&mut ws, Duration::from_secs(30), |e| {
        e["type"] == "vm.changed" && e["vm"]["name"] == name.as_str()
    })
    .await;
    assert_eq!(changed["vm"]["state"], "shut_off");

    // One VM by UUID; queries; another tenant sees none of it.
    let (status, vm) = api.get(&format!("/api/v1/vms/{uuid}")).await;
    assert_eq!(
        (status, vm["name"].as_str()),
        (StatusCode::OK, Some(name.as_str()))
    );
    let (status, body) = other.get(&format!("/api/v1/vms/{uuid}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, theirs) = other.get("/api/v1/vms").await;
    assert_eq!(theirs["total"], 0, "{theirs}");
    let (status, body) = other.get(&format!("/api/v1/vms?host={host}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, page) = api
        .get(&format!(
            "/api/v1/vms?host={host}&state=shut_off&sort=-memory&limit=1&tags=lab"
        ))
        .await;
    assert!(page["total"].as_u64().unwrap() >= 1, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (status, body) = api.get("/api/v1/vms?sort=colour").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    let (status, body) = api.get("/api/v1/vms?limit=5000").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");

    // An action through the API is a job; its effect is on the stream too.
    let (status, job) = api
        .post(&format!("/api/v1/hosts/{host}/vms/{name}/start"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["kind"], "vm.start");
    let done = job_done(&api, &job).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["state"], "running");
    wait_event(&mut ws, Duration::from_secs(30), |e| {
        e["type"] == "vm.changed"
            && e["vm"]["name"] == name.as_str()
            && e["vm"]["state"] == "running"
    })
    .await;
    // Starting a running VM is refused at once, before any job exists.
    let (status, body) = api
        .post(&format!("/api/v1/hosts/{host}/vms/{name}/start"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_transition");
    let (status, job) = api
        .post(
            &format!("/api/v1/hosts/{host}/vms/{name}/force-stop"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job_done(&api, &job).await["result"]["state"], "shut_off");

    // Undefined behind our back: it leaves.
    drop(guest);
    wait_event(&mut ws, Duration::from_secs(30), |e| {
        e["type"] == "vm.removed" && e["vm"]["name"] == name.as_str()
    })
    .await;
    let (_, page) = api.get(&format!("/api/v1/vms?name={name}")).await;
    assert_eq!(page["total"], 0);
}

/// Puts the host's network back on drop.
struct NetDown<'a>(&'a LabHost);

impl<'a> NetDown<'a> {
    fn new(host: &'a LabHost) -> Self {
        host.net_down();
        Self(host)
    }
}

impl Drop for NetDown<'_> {
    fn drop(&mut self) {
        self.0.net_up();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_on_a_host_that_dies_fails_clearly_and_the_host_reconnects() {
    let lab = Lab::load();
    let ovh5 = lab.host("ovh5");
    let app = TestApp::start().await;
    let (_, token, _) = app.create_user("hugo", "operator").await;
    let api = app.client(&token);
    let host = id(&register(&api, &lab, ovh5).await);
    let guest = lab.define_guest(ovh5, &unique_name("inv-dies"));
    let name = guest.name.clone();
    let mut ws = events(&app, &token, "host").await;
    wait_connected(&api, &host).await;

    // The host vanishes from the network (the request's quick check gets no
    // answer, so the job is accepted and waits on the host), then its sshd
    // dies, sessions and all; then the network returns to a host with no
    // sshd.
    let net = NetDown::new(ovh5);
    let (status, job) = api
        .post(&format!("/api/v1/hosts/{host}/vms/{name}/start"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let sshd = SshdDown::new(ovh5);
    drop(net);

    let mut done = Value::Null;
    for _ in 0..4 {
        done = job_done(&api, &job).await;
        if done["status"] != "running" {
            break;
        }
    }
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("ovh5"), "unclear error: {error}");
    let started =
        chrono::DateTime::parse_from_rfc3339(done["started_at"].as_str().unwrap()).unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(done["finished_at"].as_str().unwrap()).unwrap();
    assert!(
        finished - started <= chrono::Duration::seconds(180),
        "the job outlived its timeout: {done}"
    );
    assert_eq!(
        ovh5.domstate(&name),
        "shut off",
        "the action never reached the host"
    );

    let gone = wait_event(&mut ws, Duration::from_secs(90), |e| {
        e["type"] == "host.disconnected" && e["host_id"] == host.as_str()
    })
    .await;
    assert!(!gone["error"].as_str().unwrap().is_empty());
    let status = host_status(&api, &host).await;
    assert_eq!(status["status"], "disconnected", "{status}");
    assert!(status["last_error"].is_string());

    // sshd comes back: the host reconnects without anyone asking.
    drop(sshd);
    wait_event(&mut ws, Duration::from_secs(60), |e| {
        e["type"] == "host.connected" && e["host_id"] == host.as_str()
    })
    .await;
    wait_connected(&api, &host).await;
    let (status, vms) = api.get(&format!("/api/v1/hosts/{host}/vms")).await;
    assert_eq!(status, StatusCode::OK, "{vms}");
    drop(guest);
}
