//! The Hyper-V fleet mode (`bench --hyperv-fleet`): scripted Hyper-V hosts
//! (`scripts/lab up --hyperv 50`, `scripts/lab hyperv-populate 100`) beside
//! the lab instance's libvirt hosts, in one running service. It measures
//! the same targets as the libvirt fleet: the VM list over HTTP (p99 ≤
//! 10 ms) and a host's state change until its frame on `/api/v1/events`
//! (p95 ≤ 100 ms after the host emits it).
//!
//! "Emits" is the time the scripted host wrote the change to its event
//! log (`events.jsonl`, the same clock): its event session relays it from
//! there, as Hyper-V's WMI relays a state change. The scripted host runs a
//! Python process per call, so these figures say how the service copes
//! with that many Hyper-V hosts, not how fast Windows answers.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use overvisor_hv::{HypervDriver, Hypervisor};
use overvisor_model::vm::VmName;
use overvisor_testkit::{HypervLabHost, Lab};

use super::api::Api;
use super::events::{Socket, next_frame, subscribe};
use super::{FleetArgs, list_latency, post_hosts, register, report_memory, wait_synced_from};
use crate::service::{self, Launch};
use crate::stats::{Samples, versus};

/// The list queries timed with both kinds in the inventory.
const QUERIES: [(&str, &str); 4] = [
    ("both kinds, unfiltered, by name", "limit=100"),
    ("Hyper-V only, by name", "kind=hyperv&limit=100"),
    (
        "Hyper-V, name filter (1/10 match), by -memory",
        "kind=hyperv&name=-04&sort=-memory&limit=100",
    ),
    (
        "both kinds, deep page by host",
        "sort=host&offset=5000&limit=100",
    ),
];

pub async fn run(binary: &std::path::Path, lab: &Lab, args: &FleetArgs) -> anyhow::Result<()> {
    let hv_hosts = &lab.hyperv_hosts;
    if hv_hosts.is_empty() {
        bail!(
            "the lab instance has no Hyper-V hosts: scripts/lab up --hyperv 50, then scripts/lab hyperv-populate 100"
        );
    }
    let kvm_hosts = match args.hosts {
        Some(n) => &lab.hosts[..n.min(lab.hosts.len())],
        None => &lab.hosts[..],
    };
    println!(
        "== Hyper-V fleet: {} scripted Hyper-V hosts beside {} libvirt hosts (× {} domains), through the running service",
        hv_hosts.len(),
        kvm_hosts.len(),
        args.domains
    );
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (service, api) = service::start(&Launch {
        binary,
        data_dir: &data,
        log_filter: &args.log_filter,
        log_file: None,
        read_banner: true,
        env: &[],
    })
    .await?;

    // Each Hyper-V host holds its 5 lab VMs, plus what hyperv-populate added.
    let mut expected = kvm_hosts.len() * args.domains;
    for h in hv_hosts {
        expected += vm_count(h)?;
    }
    let started = Instant::now();
    register(&api, lab, kvm_hosts).await?;
    register_hyperv(&api, lab, hv_hosts).await?;
    let synced = wait_synced_from(
        &api,
        kvm_hosts.len() + hv_hosts.len(),
        expected,
        args.sync_timeout,
        started,
    )
    .await?;
    println!(
        "   registered and synced {} hosts, {expected} VMs, {:.2} s after the first POST (half the hosts: {:.2} s)",
        kvm_hosts.len() + hv_hosts.len(),
        synced.all.as_secs_f64(),
        synced.half.as_secs_f64()
    );
    report_memory("after connecting", service.pid())?;
    list_latency(&api, args.requests, &QUERIES).await?;
    let host = hv_hosts.last().context("no Hyper-V host")?;
    event_latency(&api, lab, host, args.event_runs).await?;
    report_memory("after the list and event rounds", service.pid())?;
    service.terminate(Duration::from_secs(30))?;
    Ok(())
}

/// VMs in a scripted host's model.
fn vm_count(host: &HypervLabHost) -> anyhow::Result<usize> {
    let path = host.home.join("state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let state: serde_json::Value = serde_json::from_str(&text)?;
    Ok(state["vms"].as_object().map_or(0, |vms| vms.len()))
}

/// Registers the scripted hosts (kind `hyperv`, pinned, the lab's key),
/// a few at a time.
async fn register_hyperv(api: &Api, lab: &Lab, hosts: &[HypervLabHost]) -> anyhow::Result<()> {
    let key = lab.client_key_pem();
    post_hosts(api, hosts.iter().map(|h| h.registration(&key))).await
}

/// A driver of our own on the scripted host, to change a VM's state as
/// someone else (Hyper-V Manager, another script) would.
async fn driver(lab: &Lab, host: &HypervLabHost) -> anyhow::Result<HypervDriver> {
    let ssh = crate::lab::session(
        lab,
        &host.name,
        (&host.address, host.port, &host.user),
        &host.host_key_fingerprint,
    )
    .await?;
    Ok(HypervDriver::new(ssh))
}

/// Start / force-stop pairs on a VM of our own, each timed from the line
/// the host wrote to the frame on the stream.
async fn event_latency(
    api: &Api,
    lab: &Lab,
    host: &HypervLabHost,
    runs: usize,
) -> anyhow::Result<()> {
    println!(
        "== H2. Event latency: a state change on {} (written by the host) → vm.changed on /api/v1/events ({runs} start/stop pairs)",
        host.name
    );
    let prefix = overvisor_testkit::unique_name("hvbench");
    host.add_vms(&prefix, 1);
    let name = format!("{prefix}-001");
    let vm = VmName::parse(&name).map_err(|e| anyhow!("{name}: {e}"))?;
    known_to_the_service(api, host, &name).await?;
    let mut socket = subscribe(api, "vm").await?;
    let d = driver(lab, host).await?;
    let (mut started, mut stopped) = (Samples::default(), Samples::default());
    for _ in 0..runs {
        d.start(&vm).await?;
        let arrived = wait_frame(&mut socket, &name, "running").await?;
        started.push_ms(since_written(host, &name, "Starting", arrived)?);
        // Settle into Running (no transition left) before stopping.
        tokio::time::sleep(Duration::from_millis(700)).await;
        d.force_stop(&vm).await?;
        let arrived = wait_frame(&mut socket, &name, "shut_off").await?;
        stopped.push_ms(since_written(host, &name, "Off", arrived)?);
    }
    println!("   Starting written → running frame  {}", started.line());
    println!("   Off written → shut_off frame      {}", stopped.line());
    let mut all = started;
    all.extend(stopped);
    println!("   p95 (both) {}", versus(all.quantile(0.95), 100.0, "ms"));
    Ok(())
}

/// Resyncs `host` until the service lists `name`: Hyper-V reports state
/// changes, not new VMs, so a VM added behind its back shows with the next
/// resync (and a first change would be timed with that resync in it).
async fn known_to_the_service(api: &Api, host: &HypervLabHost, name: &str) -> anyhow::Result<()> {
    let hosts = api.get("/api/v1/hosts").await?;
    let id = hosts
        .as_array()
        .and_then(|all| all.iter().find(|h| h["name"] == host.name.as_str()))
        .and_then(|h| h["id"].as_str())
        .with_context(|| format!("{} is not registered", host.name))?
        .to_owned();
    let reply = api
        .post(
            &format!("/api/v1/hosts/{id}/resync"),
            Some(&serde_json::json!({})),
        )
        .await?;
    if reply.status != reqwest::StatusCode::ACCEPTED {
        bail!("resync of {}: {}", host.name, reply.describe());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get(&format!("/api/v1/vms?name={name}")).await?["total"] != 1 {
        if Instant::now() > deadline {
            bail!("{name} not listed a minute after a resync of {}", host.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// When the `vm.changed` frame of `name` in `state` arrived (wall clock).
async fn wait_frame(socket: &mut Socket, name: &str, state: &str) -> anyhow::Result<SystemTime> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = next_frame(socket, left)
            .await
            .with_context(|| format!("waiting for {name} to be {state}"))?;
        if frame["type"] == "vm.changed"
            && frame["vm"]["name"] == name
            && frame["vm"]["state"] == state
        {
            return Ok(SystemTime::now());
        }
    }
}

/// Milliseconds from the host's last `state` line for `name` in its event
/// log to `arrived`.
fn since_written(
    host: &HypervLabHost,
    name: &str,
    state: &str,
    arrived: SystemTime,
) -> anyhow::Result<f64> {
    let path = host.home.join("events.jsonl");
    let log = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let written = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["name"] == name && e["state"] == state)
        .and_then(|e| e["time"].as_str().map(str::to_owned))
        .with_context(|| format!("{name} {state} is not in {}", path.display()))?;
    let written: DateTime<Utc> = DateTime::parse_from_rfc3339(&written)?.into();
    let arrived: DateTime<Utc> = arrived.into();
    Ok((arrived - written).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0)
}
