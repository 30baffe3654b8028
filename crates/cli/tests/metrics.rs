//! Usage graphs against the lab: a running guest on a KVM host and a VM on
//! a scripted Hyper-V host are sampled over the kept connections, and the
//! figures show up in the metrics API (host, VM, fleet, both ranges), on
//! the event stream for those who ask, and on `/metrics`.
//!
//! Hosts: ovh1 is shared (only a guest of our own is started); ovw2 (the
//! second scripted Hyper-V host) is held shared, with a VM of our own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/event_stream.rs"]
mod event_stream;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::time::{Duration, Instant};

use event_stream::{events, wait_event};
use lab_hosts::{act, id, register};
use overvisor_testkit::{Lab, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error};

const WAIT: Duration = Duration::from_secs(60);

/// The VM named `name` as the inventory lists it.
async fn vm_record(api: &Api, name: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, page) = api.get(&format!("/api/v1/vms?name={name}")).await;
        if let Some(vm) = page["items"].as_array().and_then(|a| a.first()) {
            return vm.clone();
        }
        assert!(Instant::now() < deadline, "{name} never listed: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The latest non-null value of `series` in a metrics window.
fn latest(window: &Value, series: &str) -> Option<f64> {
    window[series]
        .as_array()?
        .iter()
        .rev()
        .find_map(Value::as_f64)
}

/// Polls `path` until every one of `series` has a value that `ok` accepts.
async fn window_with(
    api: &Api,
    path: &str,
    series: &[&str],
    ok: impl Fn(&str, f64) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, window) = api.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {window}");
        if series
            .iter()
            .all(|s| latest(&window, s).is_some_and(|v| ok(s, v)))
        {
            return window;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never had {series:?}: {window}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_its_host_and_the_fleet_have_graphs() {
    let lab = Lab::load();
    let (ovh1, ovw) = (lab.host("ovh1"), lab.hyperv_host(1));
    let _lock = ovw.shared();
    let kvm_vm = unique_name("graph");
    let _guest = lab.define_guest(ovh1, &kvm_vm);
    let marker = unique_name("hvgraph");
    ovw.add_vms(&marker, 1);
    let hv_vm = format!("{marker}-001");

    let app = TestApp::builder()
        .env("OVERVISOR_METRICS_STEP_SECS", "1")
        .env("OVERVISOR_METRICS_PER_VM", "true")
        .start()
        .await;
    let (_, token, _) = app.create_user("greta", "operator").await;
    let api = app.client(&token);
    let kvm = id(&register(&api, &lab, ovh1).await);
    let (status, body) = api
        .post("/api/v1/hosts", ovw.registration(&lab.client_key_pem()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hv = id(&body);
    let mut samples = events(&app, &token, "metrics").await;
    act(&api, &kvm, &kvm_vm, "start").await;
    act(&api, &hv, &hv_vm, "start").await;
    let kvm_uuid = vm_record(&api, &kvm_vm).await["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let hv_uuid = vm_record(&api, &hv_vm).await["uuid"]
        .as_str()
        .unwrap()
        .to_owned();

    // The KVM guest boots under TCG: it uses CPU, QEMU holds memory, and
    // its NIC has counters.
    let vm = window_with(
        &api,
        &format!("/api/v1/vms/{kvm_uuid}/metrics"),
        &["cpu_percent", "memory_used_bytes", "net_rx_bytes_per_sec"],
        |s, v| match s {
            "cpu_percent" => v > 0.0 && v <= 100.0,
            "memory_used_bytes" => v > 1e6,
            _ => v >= 0.0,
        },
    )
    .await;
    assert_eq!(vm["range"], "1h");
    assert_eq!(vm["step_secs"], 1);
    assert_eq!(vm["capacity"]["cpus"], 1, "{vm}");
    assert_eq!(vm["capacity"]["memory_bytes"], 128 << 20, "{vm}");
    let times = vm["times"].as_array().unwrap();
    assert_eq!(times.len(), vm["cpu_percent"].as_array().unwrap().len());
    assert!(
        times
            .windows(2)
            .all(|w| w[1].as_u64() == w[0].as_u64().map(|t| t + 1))
    );

    // The host: its own CPU and memory, and its VMs' traffic summed.
    let host = window_with(
        &api,
        &format!("/api/v1/hosts/{kvm}/metrics"),
        &["cpu_percent", "memory_used_bytes", "net_rx_bytes_per_sec"],
        |s, v| {
            if s == "cpu_percent" {
                (0.0..=100.0).contains(&v)
            } else {
                v >= 0.0
            }
        },
    )
    .await;
    assert!(host["capacity"]["cpus"].as_u64().unwrap() >= 1, "{host}");
    assert!(
        host["capacity"]["memory_bytes"].as_u64().unwrap() > 1 << 30,
        "{host}"
    );

    // The Hyper-V VM, through the host.usage script: the scripted host's
    // counters grow at 8 KiB/s read. Over 1-second steps the script's own
    // start-up jitters each rate; their mean is steady.
    let hv_path = format!("/api/v1/vms/{hv_uuid}/metrics");
    let deadline = Instant::now() + WAIT;
    let hv_window = loop {
        let w = window_with(
            &api,
            &hv_path,
            &["cpu_percent", "disk_read_bytes_per_sec"],
            |_, v| v > 0.0,
        )
        .await;
        let reads: Vec<f64> = w["disk_read_bytes_per_sec"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        if reads.len() >= 5 {
            let mean = reads.iter().sum::<f64>() / reads.len() as f64;
            assert!((6000.0..11000.0).contains(&mean), "mean {mean}: {w}");
            break w;
        }
        assert!(Instant::now() < deadline, "{w}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(hv_window["capacity"]["cpus"], 2, "{hv_window}");
    window_with(
        &api,
        &format!("/api/v1/hosts/{hv}/metrics"),
        &["cpu_percent"],
        |_, v| v > 0.0,
    )
    .await;

    // The fleet: both hosts' capacity together.
    let fleet = window_with(
        &api,
        "/api/v1/metrics/fleet",
        &["cpu_percent", "memory_used_bytes"],
        |_, v| v > 0.0,
    )
    .await;
    assert_eq!(
        fleet["capacity"]["cpus"].as_u64().unwrap(),
        host["capacity"]["cpus"].as_u64().unwrap() + 16,
        "{fleet}"
    );
    // The day: ten-minute averages, the one being filled included.
    let (status, day) = api
        .get(&format!("/api/v1/vms/{kvm_uuid}/metrics?range=24h"))
        .await;
    assert_eq!(status, StatusCode::OK, "{day}");
    assert_eq!(day["step_secs"], 600);
    assert!(latest(&day, "cpu_percent").is_some(), "{day}");
    let (status, body) = api
        .get(&format!("/api/v1/vms/{kvm_uuid}/metrics?range=7d"))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_query");

    // Samples reach the streams that ask for them.
    let sampled = wait_event(&mut samples, WAIT, |e| {
        e["type"] == "metrics.sampled" && e["host_id"] == kvm.as_str()
    })
    .await;
    assert_eq!(sampled["step_secs"], 1);
    assert!(
        sampled["vms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["uuid"] == kvm_uuid.as_str()),
        "{sampled}"
    );

    // Prometheus: per-host aggregates, and (as configured here) per VM.
    let kvm_row = format!("overvisor_host_cpu_percent{{host_id=\"{kvm}\",host=\"ovh1\"}}");
    let deadline = Instant::now() + WAIT;
    let text = loop {
        // A sample of the busy TCG host may be a few steps behind.
        let text = app.metrics_text().await;
        if text.contains(&kvm_row) {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(text.contains("# TYPE overvisor_host_memory_total_bytes gauge"));
    assert!(
        text.contains(&format!("vm_uuid=\"{kvm_uuid}\",vm=\"{kvm_vm}\"}}")),
        "{text}"
    );

    // Another tenant sees none of it.
    let (_, other, _) = app.create_user("olaf", "operator").await;
    let other = app.client(&other);
    for path in [
        format!("/api/v1/hosts/{kvm}/metrics"),
        format!("/api/v1/vms/{kvm_uuid}/metrics"),
    ] {
        let (status, body) = other.get(&path).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    let (_, theirs) = other.get("/api/v1/metrics/fleet").await;
    assert_eq!(theirs["times"], json!([]), "{theirs}");

    act(&api, &kvm, &kvm_vm, "force-stop").await;
    act(&api, &hv, &hv_vm, "force-stop").await;
}
