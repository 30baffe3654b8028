//! The fleet mode (`bench --fleet`): the product targets measured end to
//! end on a real fleet instead of extrapolated from five hosts. It starts
//! the real `overvisor serve` binary, registers every host of a lab
//! instance of its own (e.g. 200 hosts × 100 domains) through the API,
//! restarts the service so all hosts connect at once, and then measures
//! through HTTP: the VM list and the deployment wizard's host step at that
//! size, host event → `/api/v1/events`,
//! full resyncs as jobs, and the service's memory at that many host
//! connections. Timings are printed, never asserted.

pub(crate) mod api;
pub(crate) mod events;
pub(crate) mod hyperv;
mod replicas;
mod resync;
pub(crate) mod wizard;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use overvisor_testkit::{Lab, LabHost};
use serde_json::{Value, json};

use crate::process::{self, Proc};
use crate::service::{self, Launch, Service};
use crate::stats::versus;
use api::Api;

/// What the fleet mode does, from the command line.
pub struct FleetArgs {
    /// Domains each host is expected to hold (`scripts/lab populate`).
    pub domains: usize,
    /// Register only the first N hosts (default: all).
    pub hosts: Option<usize>,
    /// Timed requests per list query.
    pub requests: usize,
    /// Suspend/resume pairs for the event latency.
    pub event_runs: usize,
    /// Timed full resyncs.
    pub resyncs: usize,
    /// Timed host steps of the deployment wizard.
    pub wizard_pages: usize,
    /// `OVERVISOR_LOG` of the service.
    pub log_filter: String,
    /// Longest wait for every host to be connected and synced.
    pub sync_timeout: Duration,
    /// More than one: that many replicas on `database_url` (PostgreSQL).
    pub replicas: usize,
    pub database_url: Option<String>,
}

/// The queries timed at fleet size. Domains are named
/// `fleet-HOST-NNN` by `scripts/lab populate`; hosts are tagged `rack-0`
/// .. `rack-9` at registration.
const QUERIES: [(&str, &str); 5] = [
    ("unfiltered, by name", "limit=100"),
    (
        "name filter (1/10 match), by -memory",
        "name=-04&sort=-memory&limit=100",
    ),
    (
        "name filter (1/100 match), by state",
        "name=-042&sort=state&limit=100",
    ),
    (
        "tag filter (1/10 of hosts), by host",
        "tags=rack-3&sort=host&limit=100",
    ),
    (
        "deep page, by host, offset 19900",
        "sort=host&offset=19900&limit=100",
    ),
];

pub async fn run(binary: &Path, lab: &Lab, args: &FleetArgs) -> anyhow::Result<()> {
    let hosts = match args.hosts {
        Some(n) if n > lab.hosts.len() => bail!(
            "--fleet-hosts {n}, but the lab has {} hosts (scripts/lab up --hosts {n})",
            lab.hosts.len()
        ),
        Some(n) => &lab.hosts[..n],
        None => &lab.hosts[..],
    };
    println!(
        "== Fleet: {} lab hosts × {} domains (lab instance {}, {}), through the running service",
        hosts.len(),
        args.domains,
        lab.instance
            .map_or_else(|| "default".into(), |n| n.to_string()),
        lab.lab_dir.display(),
    );
    if args.replicas > 1 {
        let url = args
            .database_url
            .as_deref()
            .context("--fleet-replicas needs --database-url postgres://… (an empty database)")?;
        return replicas::run(binary, lab, hosts, args, args.replicas, url).await;
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let log = dir.path().join("overvisor.log");
    let result = measure(binary, lab, hosts, args, &data, &log).await;
    if result.is_err() {
        eprintln!(
            "--- last lines of the service's log ---\n{}",
            service::log_tail(&log, 30)
        );
    }
    result
}

async fn measure(
    binary: &Path,
    lab: &Lab,
    hosts: &[LabHost],
    args: &FleetArgs,
    data: &Path,
    log: &Path,
) -> anyhow::Result<()> {
    let launch = |read_banner| Launch {
        binary,
        data_dir: data,
        log_filter: &args.log_filter,
        log_file: Some(log),
        read_banner,
        env: &[],
    };
    let expected_vms = hosts.len() * args.domains;

    // 1. A fresh service; every host registered through the API.
    let client = reqwest::Client::new();
    let mut first = Service::spawn(&launch(true))?;
    first.wait_ready(&client, Instant::now()).await?;
    let token = first.admin_key(Duration::from_secs(10))?;
    let api = Api::new(&first.api, &token)?;
    let started = Instant::now();
    register(&api, lab, hosts).await?;
    let registered = started.elapsed();
    let after = wait_synced(&api, hosts.len(), expected_vms, args.sync_timeout).await?;
    println!(
        "   registered {} hosts in {:.2} s (POST /api/v1/hosts, 8 at a time); all connected and synced {:.2} s after the first POST ({:.2} s after the last)",
        hosts.len(),
        registered.as_secs_f64(),
        (registered + after).as_secs_f64(),
        after.as_secs_f64()
    );
    first.terminate(Duration::from_secs(30))?;

    // 2. A restart: every host connects and resyncs at once.
    let machine_before = process::machine_busy_ms()?;
    let started = Instant::now();
    let mut service = Service::spawn(&launch(false))?;
    let pid = service.pid();
    let ready = service.wait_ready(&client, started).await?;
    let api = Api::new(&service.api, &token)?;
    let synced =
        wait_synced_from(&api, hosts.len(), expected_vms, args.sync_timeout, started).await?;
    let storm_cpu = process::cpu_ms_of(Proc::Pid(pid))?;
    let machine_cpu = process::machine_busy_ms()? - machine_before;
    println!(
        "   restart: ready in {:.0} ms; {} hosts connected and {expected_vms}+ VMs synced {:.2} s after spawn",
        ready.as_secs_f64() * 1000.0,
        hosts.len(),
        synced.all.as_secs_f64(),
    );
    println!(
        "   hosts connected after spawn: first {:.2} s, half {:.2} s, 90 % {:.2} s, all {:.2} s",
        synced.first.as_secs_f64(),
        synced.half.as_secs_f64(),
        synced.ninety.as_secs_f64(),
        synced.all.as_secs_f64(),
    );
    println!(
        "   CPU meanwhile: the service {:.2} s, the whole machine {:.2} s (lab hosts' sshd, virsh, libvirtd included)",
        storm_cpu / 1000.0,
        machine_cpu / 1000.0
    );
    report_memory("after connecting", pid)?;
    // Two steps of the usage sampling (on by default, every 30 s): its
    // CPU is in this figure and every VM's history in the next one.
    idle_cpu(pid, Duration::from_secs(60)).await?;
    memory_line("after two sampling steps", pid)?;
    println!(
        "== F6. The deployment wizard's host step ({} pages)",
        args.wizard_pages
    );
    let portals = wizard::admin_portals(&api, std::slice::from_ref(&service.ui)).await?;
    for portal in &portals {
        wizard::host_step(portal, hosts.len(), args.wizard_pages).await?;
    }

    list_latency(&api, args.requests, &QUERIES).await?;
    memory_line("after the list rounds", pid)?;
    // The guest boots on the last host: the first ones are the ones a
    // reader of the list sees first, and nothing else runs there.
    let event_host = hosts.last().context("the lab has no hosts")?;
    events::run(&api, lab, event_host, args.event_runs).await?;
    memory_line("after the event rounds", pid)?;
    // A missing resync endpoint must not cost the memory figure.
    let resynced = resync::run(&api, pid, hosts, args.resyncs).await;
    report_memory("after the list, event and resync rounds", pid)?;
    resynced?;
    service.terminate(Duration::from_secs(30))?;
    Ok(())
}

/// Registers every host (name, address, pinned fingerprint, the lab's
/// client key as the host's own credential, a `rack-N` tag), a few at a
/// time as an operator's script would.
pub(crate) async fn register(api: &Api, lab: &Lab, hosts: &[LabHost]) -> anyhow::Result<()> {
    let key = std::fs::read_to_string(&lab.client_key)
        .with_context(|| format!("reading the lab client key {}", lab.client_key.display()))?;
    let bodies = hosts.iter().enumerate().map(|(i, host)| {
        json!({
            "name": host.name,
            "address": host.address,
            "port": host.port,
            "ssh_user": host.user,
            "libvirt_uri": host.uri,
            "host_key_fingerprint": host.host_key_fingerprint,
            "credential": {"private_key": key},
            "tags": [format!("rack-{}", i % 10)],
        })
    });
    post_hosts(api, bodies).await
}

/// `POST /api/v1/hosts` of each body, 8 at a time; any refusal fails all.
pub(crate) async fn post_hosts(
    api: &Api,
    bodies: impl Iterator<Item = Value>,
) -> anyhow::Result<()> {
    futures::stream::iter(bodies)
        .map(|body| async move {
            let reply = api.post("/api/v1/hosts", Some(&body)).await?;
            if reply.status != reqwest::StatusCode::CREATED {
                bail!("registering {}: {}", body["name"], reply.describe());
            }
            Ok(())
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
}

/// Polls the inventory summary until `hosts` hosts are connected and at
/// least `vms` VMs are known; returns how long that took.
async fn wait_synced(
    api: &Api,
    hosts: usize,
    vms: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    Ok(wait_synced_from(api, hosts, vms, timeout, Instant::now())
        .await?
        .all)
}

/// When the first host, half of them, 90 % and all were connected and
/// synced, counted from `started`.
struct Milestones {
    first: Duration,
    half: Duration,
    ninety: Duration,
    all: Duration,
}

async fn wait_synced_from(
    api: &Api,
    hosts: usize,
    vms: usize,
    timeout: Duration,
    started: Instant,
) -> anyhow::Result<Milestones> {
    let mut last_note = Instant::now();
    let (mut first, mut half, mut ninety) = (None, None, None);
    loop {
        let summary = api.get("/api/v1/inventory").await?;
        let connected = summary
            .pointer("/hosts_by_status/connected")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        let known = summary["vms"].as_u64().unwrap_or(0) as usize;
        let now = started.elapsed();
        if connected >= 1 {
            first.get_or_insert(now);
        }
        if connected * 2 >= hosts {
            half.get_or_insert(now);
        }
        if connected * 10 >= hosts * 9 {
            ninety.get_or_insert(now);
        }
        if connected >= hosts && known >= vms {
            return Ok(Milestones {
                first: first.unwrap_or(now),
                half: half.unwrap_or(now),
                ninety: ninety.unwrap_or(now),
                all: now,
            });
        }
        if started.elapsed() > timeout {
            bail!(
                "after {timeout:?}: {connected}/{hosts} hosts connected, {known}/{vms} VMs; {}",
                not_connected(&summary)
            );
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            println!(
                "   ... {:.0} s: {connected}/{hosts} hosts connected, {known} VMs",
                started.elapsed().as_secs_f64()
            );
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hosts not connected, by status, with a few of their errors.
fn not_connected(summary: &Value) -> String {
    let mut by_status: HashMap<String, usize> = HashMap::new();
    let mut errors = Vec::new();
    for h in summary["host_status"].as_array().into_iter().flatten() {
        let status = h["status"].as_str().unwrap_or("?");
        if status == "connected" {
            continue;
        }
        *by_status.entry(status.to_owned()).or_default() += 1;
        if let (Some(name), Some(error), true) = (
            h["host_name"].as_str(),
            h["last_error"].as_str(),
            errors.len() < 5,
        ) {
            errors.push(format!("{name}: {error}"));
        }
    }
    format!("not connected: {by_status:?}; errors: {errors:?}")
}

/// The service's memory and how many SSH connections it holds, so the
/// figure is known to be at that many host connections.
fn report_memory(when: &str, pid: u32) -> anyhow::Result<()> {
    let m = process::memory(Proc::Pid(pid))?;
    let ssh = process::established_to_port(pid, 22)?;
    println!(
        "== F5. Service memory {when}: VmRSS {:.1} MiB, VmHWM (peak) {:.1} MiB, {ssh} established SSH connections",
        m.rss, m.hwm
    );
    println!("   RSS  {}", versus(m.rss, 150.0, "MiB"));
    println!("   peak {}", versus(m.hwm, 150.0, "MiB"));
    Ok(())
}

/// One line of the service's memory between phases (does it grow?).
fn memory_line(when: &str, pid: u32) -> anyhow::Result<()> {
    let m = process::memory(Proc::Pid(pid))?;
    println!(
        "   service memory {when}: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        m.rss, m.hwm
    );
    Ok(())
}

/// What the service spends while nothing happens: keepalives, event
/// channels, the periodic resync if one falls in the window.
async fn idle_cpu(pid: u32, window: Duration) -> anyhow::Result<()> {
    let before = process::cpu_ms_of(Proc::Pid(pid))?;
    tokio::time::sleep(window).await;
    let used = process::cpu_ms_of(Proc::Pid(pid))? - before;
    println!(
        "   service CPU while idle (keepalives, resyncs, usage sampling every 30 s): {used:.0} ms over {:.0} s ({:.1}% of one core)",
        window.as_secs_f64(),
        used / window.as_secs_f64() / 10.0
    );
    Ok(())
}

/// Target 1 at fleet size: pages of the real inventory over HTTP.
async fn list_latency(api: &Api, requests: usize, queries: &[(&str, &str)]) -> anyhow::Result<()> {
    println!(
        "== F1. VM list through the service at fleet size ({requests} timed requests per query after 100 warm-up)"
    );
    let mut worst_p99: f64 = 0.0;
    for (label, query) in queries {
        let path = format!("/api/v1/vms?{query}");
        let total = api.get(&path).await?["total"].as_u64().unwrap_or(0);
        let (samples, bytes) =
            crate::list::time_gets(api.client(), &api.url(&path), api.token(), requests).await?;
        worst_p99 = worst_p99.max(samples.quantile(0.99));
        println!(
            "   {label:<38} {}  ({bytes} B, {total} matches)",
            samples.line()
        );
        println!("      GET {path}");
    }
    println!("   worst p99: {}", versus(worst_p99, 10.0, "ms"));
    Ok(())
}
