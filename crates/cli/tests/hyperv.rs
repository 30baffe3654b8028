//! A KVM host and a Hyper-V host side by side in one service: one VM list
//! of both kinds, jobs on both, live state changes from both on one event
//! stream, and a Hyper-V host enrolled through `/v1/servers/connect`.
//!
//! Windows cannot run here: the Hyper-V host is the lab's scripted one
//! (`scripts/lab up --hyperv N`), which speaks the same protocol (SSH, then
//! `powershell.exe -EncodedCommand` answering JSON) and refuses anything
//! the driver's real scripts would not send.
//!
//! Hosts: ovh1 is shared (only a guest of our own is touched); ovw2 (the
//! second scripted Hyper-V host) is held shared, with VMs of our own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/event_stream.rs"]
mod event_stream;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::time::{Duration, Instant};

use event_stream::{events, wait_event};
use lab_hosts::{act, get_until_ok, id, job_finished, register};
use overvisor_testkit::{HypervLabHost, Lab, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error, path_segment as segment};

const WAIT: Duration = Duration::from_secs(30);

/// Registers a scripted Hyper-V host, pinned to its key, logging in with
/// the lab's client key.
async fn register_hyperv(api: &Api, lab: &Lab, host: &HypervLabHost) -> Value {
    let (status, body) = api
        .post("/api/v1/hosts", host.registration(&lab.client_key_pem()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kind"], "hyperv", "{body}");
    body
}

/// The VMs whose name contains `needle`, once `want` of them are listed.
async fn listed(api: &Api, query: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, page) = api.get(&format!("/api/v1/vms?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.len() == want {
            return items;
        }
        assert!(Instant::now() < deadline, "{query}: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_list_one_event_stream_and_jobs_across_kvm_and_hyperv() {
    let lab = Lab::load();
    let (ovh1, ovw) = (lab.host("ovh1"), lab.hyperv_host(1));
    let _lock = ovw.shared();
    // One marker in both VMs' names, so one query finds exactly them.
    let marker = unique_name("side");
    let kvm_vm = format!("{marker}-kvm");
    ovw.add_vms(&marker, 1);
    let hv_vm = format!("{marker}-001");
    let _guest = lab.define_guest(ovh1, &kvm_vm);

    let app = TestApp::start().await;
    let (_, token, _) = app.create_user("hilde", "operator").await;
    let api = app.client(&token);
    let mut ws = events(&app, &token, "vm,host").await;
    let kvm = id(&register(&api, &lab, ovh1).await);
    let hv = id(&register_hyperv(&api, &lab, ovw).await);

    // One list, both kinds, each VM saying its host's kind.
    let both = listed(&api, &format!("name={marker}&sort=name"), 2).await;
    let kinds: Vec<_> = both
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["host_kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [(hv_vm.as_str(), "hyperv"), (kvm_vm.as_str(), "libvirt")]
    );
    assert_eq!(both[0]["host_id"], hv.as_str());
    assert_eq!(both[0]["state"], "shut_off", "Hyper-V's Off: {}", both[0]);
    let only_hyperv = listed(&api, &format!("name={marker}&kind=hyperv"), 1).await;
    assert_eq!(only_hyperv[0]["name"], hv_vm.as_str());
    let (status, body) = api.get("/api/v1/vms?kind=xen").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, summary) = api.get("/api/v1/inventory").await;
    let mut statuses: Vec<_> = summary["host_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host_kind"].as_str().unwrap(),
                h["host_name"].as_str().unwrap(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [("hyperv", ovw.name.as_str()), ("libvirt", "ovh1")]
    );

    // Jobs on both; the state changes of both reach the one stream.
    for (host, vm) in [(&hv, &hv_vm), (&kvm, &kvm_vm)] {
        let done = act(&api, host, vm, "start").await;
        assert_eq!(done["kind"], "vm.start");
    }
    for vm in [&hv_vm, &kvm_vm] {
        let changed = wait_event(&mut ws, WAIT, |e| {
            e["type"] == "vm.changed"
                && e["vm"]["name"] == vm.as_str()
                && e["vm"]["state"] == "running"
        })
        .await;
        assert!(changed["host_id"] == hv.as_str() || changed["host_id"] == kvm.as_str());
    }
    let running = listed(&api, &format!("name={marker}&state=running"), 2).await;
    assert_eq!(running.len(), 2);
    // The addresses the Hyper-V guest reports (its integration services)
    // reach the inventory's list the way a libvirt guest's do: read after
    // a resync, link-local ones left out.
    let (status, body) = api
        .post(&format!("/api/v1/hosts/{hv}/resync"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_event(&mut ws, WAIT, |e| {
        e["type"] == "vm.changed"
            && e["vm"]["name"] == hv_vm.as_str()
            && e["vm"]["ips"] == json!(["172.20.0.3"])
    })
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let item = listed(&api, &format!("name={hv_vm}"), 1).await.remove(0);
        if item["ips"] == json!(["172.20.0.3"]) {
            break;
        }
        assert!(Instant::now() < deadline, "no addresses listed: {item}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An invalid transition is refused alike on both kinds.
    for (host, vm) in [(&hv, &hv_vm), (&kvm, &kvm_vm)] {
        let (status, body) = api
            .post(&format!("/api/v1/hosts/{host}/vms/{vm}/start"), json!({}))
            .await;
        assert_error(status, &body, StatusCode::CONFLICT, "invalid_transition");
    }
    for (host, vm) in [(&hv, &hv_vm), (&kvm, &kvm_vm)] {
        act(&api, host, vm, "force-stop").await;
    }
    for vm in [&hv_vm, &kvm_vm] {
        wait_event(&mut ws, WAIT, |e| {
            e["type"] == "vm.changed"
                && e["vm"]["name"] == vm.as_str()
                && e["vm"]["state"] == "shut_off"
        })
        .await;
    }
    // A stopped VM has no addresses.
    let stopped = listed(&api, &format!("name={hv_vm}"), 1).await;
    assert_eq!(stopped[0]["ips"], json!([]), "{}", stopped[0]);

    // A name only Windows would give is addressed as the host named it.
    let odd = "odd name ü 'x' [1]";
    let (status, vm) = get_until_ok(
        &api,
        &format!("/api/v1/hosts/{hv}/vms/{}", segment(odd)),
        WAIT,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["name"], odd);
    // Another tenant sees neither host's VMs.
    let (_, other_token, _) = app.create_user("otto", "operator").await;
    let (_, theirs) = app
        .client(&other_token)
        .get(&format!("/api/v1/vms?name={marker}"))
        .await;
    assert_eq!(theirs["total"], 0, "{theirs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hyperv_host_enrols_and_then_serves_its_vms() {
    let lab = Lab::load();
    let ovw = lab.hyperv_host(1);
    let _lock = ovw.shared();
    let app = TestApp::start().await;
    let (_, token, _) = app.create_user("wanda", "operator").await;
    let api = app.client(&token);

    // What the PowerShell script sends from the Windows host.
    let (status, enrolled) = api
        .post(
            "/v1/servers/connect",
            json!({
                "kind": "hyperv",
                "hostname": ovw.name,
                "ip_address": ovw.address,
                "port": ovw.port,
                "user": ovw.user,
                "host_key_fingerprint": ovw.host_key_fingerprint,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    assert_eq!(enrolled["host"]["kind"], "hyperv");
    assert!(
        enrolled["authorized_keys"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 "),
        "{enrolled}"
    );
    let host = enrolled["host"]["id"].as_str().unwrap().to_owned();
    // Enrolling the same host as KVM is refused and changes nothing.
    let (status, body) = api
        .post(
            "/v1/servers/connect",
            json!({"kind": "libvirt", "ip_address": ovw.address}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    // The scripted host authorizes the lab's key, not this account's: the
    // host gets that key as its own credential, as an operator would.
    let (status, job) = api
        .patch(
            &format!("/api/v1/hosts/{host}"),
            json!({"credential": {"private_key": lab.client_key_pem()}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let done = job_finished(&api, job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (status, facts) = get_until_ok(&api, &format!("/api/v1/hosts/{host}/facts"), WAIT).await;
    assert_eq!(status, StatusCode::OK, "{facts}");
    assert_eq!(facts["hypervisor"], "Hyper-V", "{facts}");
    let vms = listed(&api, &format!("host={host}&name=win-01"), 1).await;
    assert_eq!(vms[0]["host_kind"], "hyperv");
}
