//! The live inventory and the event stream against the real lab: changes
//! made behind Overvisor's back (`virsh` as root on the host) show up in
//! `/api/v1/vms` and on `/api/v1/events`; VM actions run as jobs; and a
//! host that dies under a running job fails the job clearly, is marked
//! disconnected, and reconnects by itself.
//!
//! Hosts: ovh1 is shared (only a guest of our own is touched); ovh5
//! belongs to this file's resilience test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/event_stream.rs"]
mod event_stream;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::time::Duration;

use event_stream::{events, wait_event};
use lab_hosts::{SshdDown, id, job_finished, register, register_with_wrong_key};
use overvisor_testkit::{Lab, LabHost, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error};

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
    job_finished(api, job["id"].as_str().unwrap()).await
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
    // The summary counts it, by state; the other tenant counts nothing.
    let (status, summary) = api.get("/api/v1/inventory").await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    let by_state = summary["vms_by_state"].as_object().unwrap();
    assert!(by_state["running"].as_u64().unwrap() >= 1, "{summary}");
    let counted: u64 = by_state.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(summary["vms"].as_u64(), Some(counted), "{summary}");
    let (_, theirs) = other.get("/api/v1/inventory").await;
    assert_eq!(
        (theirs["vms"].as_u64(), theirs["hosts"].as_u64()),
        (Some(0), Some(0))
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn host_vm_lists_come_from_the_inventory_and_resync_runs_on_demand() {
    let lab = Lab::load();
    let (ovh1, ovh2) = (lab.host("ovh1"), lab.host("ovh2"));
    let app = TestApp::start().await;
    let (_, token, _) = app.create_user("rhea", "operator").await;
    let (_, other_token, _) = app.create_user("otto", "operator").await;
    let (_, reader_token, _) = app.create_user("rory", "reader").await;
    let (api, other) = (app.client(&token), app.client(&other_token));
    let h1 = id(&register(&api, &lab, ovh1).await);
    // A host that cannot be resynced: ovh2's address pinned to ovh1's key.
    let bad = register_with_wrong_key(&api, &lab, "bad-key", ovh2, ovh1).await;
    let prefix = unique_name("inv-page");
    let guests: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|s| lab.define_guest(ovh1, &format!("{prefix}-{s}")))
        .collect();

    // The whole fleet at once, as one job that lists what failed.
    let resp = api
        .request(reqwest::Method::POST, "/api/v1/inventory/resync")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = resp.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    let done = job_done(&api, &job).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let report = &done["result"];
    assert_eq!(report["hosts"], 2, "{report}");
    assert!(report["vms"].as_u64().unwrap() >= 3, "{report}");
    assert!(report["duration_ms"].as_f64().unwrap() > 0.0, "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0]["host_id"], bad["id"]);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains(&ovh1.host_key_fingerprint),
        "{report}"
    );

    // One host's VMs: from memory, with its status, filtered, sorted, paged.
    let path = format!("/api/v1/hosts/{h1}/vms?name={prefix}&sort=-name&limit=2");
    let (status, page) = api.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["host"]["status"], "connected", "{page}");
    assert_eq!(page["host"]["host_name"], "ovh1");
    assert!(page["host"]["last_seen"].is_string(), "{page}");
    assert_eq!(
        (page["total"].as_u64(), page["limit"].as_u64()),
        (Some(3), Some(2))
    );
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [format!("{prefix}-c"), format!("{prefix}-b")]);
    let (_, rest) = api.get(&format!("{path}&offset=2")).await;
    assert_eq!(rest["items"][0]["name"], format!("{prefix}-a"), "{rest}");
    let (_, none) = api
        .get(&format!(
            "/api/v1/hosts/{h1}/vms?name={prefix}&state=running"
        ))
        .await;
    assert_eq!(none["total"], 0, "{none}");
    for (bad_query, code) in [
        (format!("host={h1}"), "invalid_input"),
        ("limit=0".into(), "invalid_input"),
        ("sort=colour".into(), "invalid_input"),
        ("colour=red".into(), "invalid_query"),
    ] {
        let (status, body) = api
            .get(&format!("/api/v1/hosts/{h1}/vms?{bad_query}"))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, code);
    }
    let (status, body) = api
        .post("/api/v1/inventory/resync?host=not-an-id", json!({}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_query");

    // Undefined behind our back and resynced at once: gone from the list.
    drop(guests);
    let one = lab_hosts::resync(&api, &h1).await;
    assert_eq!(one["status"], "succeeded", "{one}");
    assert_eq!(one["target"], format!("host:{h1}"));
    let (_, page) = api
        .get(&format!("/api/v1/hosts/{h1}/vms?name={prefix}"))
        .await;
    assert_eq!(page["total"], 0, "{page}");

    // Another tenant resyncs only their own (none); readers may not.
    let (status, job) = other.post("/api/v1/inventory/resync", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job_done(&other, &job).await["result"]["hosts"], 0);
    let (status, body) = other.get(&format!("/api/v1/hosts/{h1}/vms")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app
        .client(&reader_token)
        .post("/api/v1/inventory/resync", json!({}))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    // The administrator's covers every tenant's hosts.
    let (status, job) = app
        .admin()
        .post("/api/v1/inventory/resync", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job_done(&app.admin(), &job).await["result"]["hosts"], 2);
    // One audit row per resync: the job's outcome.
    let (_, audit) = api.get("/api/v1/audit?action=inventory.resync").await;
    assert!(audit.to_string().contains("job="), "{audit}");
    let (_, audit) = api.get("/api/v1/audit?action=job.").await;
    assert_eq!(audit, json!([]), "no second row per job");
}
