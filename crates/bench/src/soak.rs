//! The soak (on demand, not in CI): the real service under mixed load for a
//! long while — API reads from several clients, event-stream subscribers
//! that come and go, lifecycle jobs on two running guests and resyncs —
//! sampling the process as it goes. What it proves is that nothing
//! accumulates: resident memory, open descriptors and threads stay flat,
//! and no request, job or stream fails. It prints one line per sample and
//! a summary (RSS slope by least squares over the samples after warm-up).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use overvisor_testkit::{Lab, TestGuest};
use tokio::sync::Mutex;

use crate::fleet::api::Api;
use crate::fleet::events::{next_frame, subscribe};
use crate::lab::{self, BulkDomains};
use crate::process::{Proc, memory};
use crate::service::{Launch, Service};
use crate::stats::Samples;

pub struct SoakArgs {
    pub duration: Duration,
    pub sample_every: Duration,
    /// Inactive domains defined on each host, so lists have content.
    pub domains: usize,
}

/// Readers issuing API requests back to back.
const READERS: usize = 3;
/// Event-stream subscribers; each reconnects every `STREAM_LIFETIME`.
const SUBSCRIBERS: usize = 3;
const STREAM_LIFETIME: Duration = Duration::from_secs(120);
/// Every this many lifecycle pairs, a resync of the guest's host.
const RESYNC_EVERY: u64 = 10;
/// Pauses that make the load steady rather than saturating: a soak looks
/// for what accumulates over time, and leaves the machine's other work be.
const READ_PAUSE: Duration = Duration::from_millis(10);
const JOB_PAUSE: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    jobs: AtomicU64,
    events: AtomicU64,
    streams: AtomicU64,
    /// The first few errors, to print.
    first_errors: Mutex<Vec<String>>,
}

impl Counters {
    async fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().await;
        if first.len() < 10 {
            first.push(what);
        }
    }
}

/// One reading of the service process.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    rss: f64,
    /// `RssAnon`: `rss` without the binary's pages.
    anon: f64,
    fds: usize,
    threads: usize,
}

/// The thread ids of the service's SQLite connection workers (one thread
/// per pooled connection, named `sqlx-sqlite-worker-N`; `comm` keeps 15
/// bytes of it).
fn database_workers(pid: u32) -> anyhow::Result<BTreeSet<u32>> {
    let mut workers = BTreeSet::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("sqlx-sqlite")
            && let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok())
        {
            workers.insert(tid);
        }
    }
    Ok(workers)
}

fn sample(pid: u32, at: Duration) -> anyhow::Result<Sample> {
    let memory = memory(Proc::Pid(pid))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))?.count();
    Ok(Sample {
        at,
        rss: memory.rss,
        anon: memory.anon,
        fds,
        threads,
    })
}

/// The service's warnings and errors, counted, with the first few.
fn report_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("sqlx"))
        .collect();
    println!(
        "   service log: {} warnings, errors and sqlx lines ({} from sqlx)",
        lines.len(),
        lines.iter().filter(|l| l.contains("sqlx")).count()
    );
    for line in lines.iter().take(5) {
        println!("   | {line}");
    }
}

/// Least-squares slope of `of` (MiB) over time, in MiB per hour.
fn slope_per_hour(samples: &[Sample], of: impl Fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let xs: Vec<f64> = samples
        .iter()
        .map(|s| s.at.as_secs_f64() / 3600.0)
        .collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = samples.iter().map(&of).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, s) in xs.iter().zip(samples) {
        num += (x - mean_x) * (of(s) - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    if den == 0.0 { 0.0 } else { num / den }
}

pub async fn run(binary: &Path, lab: &Lab, args: &SoakArgs) -> anyhow::Result<()> {
    let hosts: Vec<_> = ["ovh1", "ovh2"]
        .iter()
        .map(|name| {
            lab.hosts
                .iter()
                .find(|h| h.name == *name)
                .cloned()
                .ok_or_else(|| anyhow!("the lab has no host {name}: scripts/lab up"))
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "== S. Soak: {:.0} min of mixed load on {} and {} ({READERS} API readers pausing {} ms, {SUBSCRIBERS} event subscribers reconnecting every {} s, suspend/resume jobs on 2 running guests pausing {} ms, a resync every {RESYNC_EVERY} pairs; {} inactive domains per host)",
        args.duration.as_secs_f64() / 60.0,
        hosts[0].name,
        hosts[1].name,
        READ_PAUSE.as_millis(),
        STREAM_LIFETIME.as_secs(),
        JOB_PAUSE.as_millis(),
        args.domains,
    );

    let mut bulk = Vec::new();
    for host in &hosts {
        let (lab, host, n) = (lab.clone(), host.clone(), args.domains);
        let prefix = overvisor_testkit::unique_name("soak");
        bulk.push(
            tokio::task::spawn_blocking(move || BulkDomains::define(&lab, &host, &prefix, n))
                .await??,
        );
    }
    let mut guests = Vec::new();
    for host in &hosts {
        let name = overvisor_testkit::unique_name("soak-vm");
        guests.push(lab::boot_guest(lab, host, &name).await?);
    }

    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let log = dir.path().join("overvisor.log");
    let mut service = Service::spawn(&Launch {
        binary,
        data_dir: &data,
        // sqlx says at info why it drops a pooled connection.
        log_filter: "warn,sqlx=info",
        log_file: Some(&log),
        read_banner: true,
        env: &[],
    })?;
    let result = soak(&mut service, lab, &hosts, &guests, args).await;
    report_log(&log);
    let stopped = service.terminate(Duration::from_secs(30));
    // `virsh destroy` of a TCG guest takes 1-2 s: off the async threads.
    tokio::task::spawn_blocking(move || {
        drop(guests);
        drop(bulk);
    })
    .await?;
    result?;
    stopped
}

async fn soak(
    service: &mut Service,
    lab: &Lab,
    hosts: &[overvisor_testkit::LabHost],
    guests: &[TestGuest],
    args: &SoakArgs,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    service.wait_ready(&client, Instant::now()).await?;
    let api = Arc::new(Api::new(
        &service.api,
        &service.admin_key(Duration::from_secs(10))?,
    )?);
    crate::fleet::register(&api, lab, hosts).await?;
    let listed = api.get("/api/v1/hosts").await?;
    let host_id = |name: &str| -> anyhow::Result<String> {
        listed
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["name"] == name)
            .and_then(|h| h["id"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("host {name} is not registered"))
    };
    let mut targets = Vec::new();
    for guest in guests {
        targets.push((host_id(&guest.host.name)?, guest.name.clone()));
    }
    let expected = 2 * args.domains + guests.len();
    let wait_started = Instant::now();
    loop {
        let summary = api.get("/api/v1/inventory").await?;
        if summary["vms"].as_u64().unwrap_or(0) as usize >= expected {
            break;
        }
        if wait_started.elapsed() > Duration::from_secs(120) {
            return Err(anyhow!(
                "the inventory did not reach {expected} VMs: {summary}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for reader in 0..READERS {
        let (api, counters) = (api.clone(), counters.clone());
        let (host, vm) = targets[reader % targets.len()].clone();
        tasks.spawn(async move { read_loop(&api, &counters, deadline, &host, &vm).await });
    }
    for _ in 0..SUBSCRIBERS {
        let (api, counters) = (api.clone(), counters.clone());
        tasks.spawn(async move { subscribe_loop(&api, &counters, deadline).await });
    }
    for (host, vm) in targets.clone() {
        let (api, counters) = (api.clone(), counters.clone());
        tasks.spawn(async move { lifecycle_loop(&api, &counters, deadline, &host, &vm).await });
    }

    let pid = service.pid();
    // Every database worker thread seen, polled more often than the
    // samples so a short-lived one is not missed.
    let first_workers = database_workers(pid)?;
    let workers_seen = Arc::new(std::sync::Mutex::new(first_workers.clone()));
    let watcher = {
        let seen = workers_seen.clone();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                if let Ok(now) = database_workers(pid)
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.extend(now);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut samples = Vec::new();
    println!(
        "   t(min)   RSS MiB  anon MiB   fds  threads   requests  errors   jobs   events  streams"
    );
    loop {
        let now = Instant::now();
        let s = sample(pid, started.elapsed())?;
        println!(
            "   {:6.1}  {:8.1}  {:8.1}  {:4}  {:7}  {:9}  {:6}  {:5}  {:7}  {:7}",
            s.at.as_secs_f64() / 60.0,
            s.rss,
            s.anon,
            s.fds,
            s.threads,
            counters.requests.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed),
            counters.jobs.load(Ordering::Relaxed),
            counters.events.load(Ordering::Relaxed),
            counters.streams.load(Ordering::Relaxed),
        );
        samples.push(s);
        if now >= deadline {
            break;
        }
        tokio::time::sleep(args.sample_every.min(deadline - now)).await;
    }
    let (mut reads, mut jobs) = (Samples::default(), Samples::default());
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(Latencies::Reads(s)) => reads.extend(s),
            Ok(Latencies::Jobs(s)) => jobs.extend(s),
            Ok(Latencies::None) => {}
            Err(e) => counters.error(format!("{e:#}")).await,
        }
    }
    report(&samples, &counters, &reads, &jobs).await;
    watcher.await?;
    let seen = workers_seen.lock().map(|s| s.len()).unwrap_or_default();
    let alive = database_workers(pid)?.len();
    println!(
        "   database worker threads: {} at the start, {alive} at the end, {} started during the soak",
        first_workers.len(),
        seen.saturating_sub(first_workers.len()),
    );
    Ok(())
}

enum Latencies {
    Reads(Samples),
    Jobs(Samples),
    None,
}

/// API reads in a round: lists with filters and sorts, one host, one VM,
/// jobs, audit, summary, profiles.
async fn read_loop(
    api: &Api,
    counters: &Counters,
    deadline: Instant,
    host: &str,
    vm: &str,
) -> anyhow::Result<Latencies> {
    let paths = [
        "/api/v1/vms?limit=50&sort=name".to_owned(),
        "/api/v1/vms?state=running".to_owned(),
        "/api/v1/vms?name=soak&limit=20&sort=-name".to_owned(),
        "/api/v1/hosts".to_owned(),
        format!("/api/v1/hosts/{host}"),
        format!("/api/v1/hosts/{host}/vms"),
        format!("/api/v1/hosts/{host}/vms/{vm}"),
        "/api/v1/jobs?limit=20".to_owned(),
        "/api/v1/audit?limit=20".to_owned(),
        "/api/v1/inventory".to_owned(),
        "/api/v1/profiles".to_owned(),
    ];
    let mut latencies = Samples::default();
    'rounds: loop {
        for path in &paths {
            if Instant::now() >= deadline {
                break 'rounds;
            }
            let started = Instant::now();
            counters.requests.fetch_add(1, Ordering::Relaxed);
            match api.get(path).await {
                Ok(_) => latencies.push(started.elapsed()),
                Err(e) => counters.error(format!("{e:#}")).await,
            }
            tokio::time::sleep(READ_PAUSE).await;
        }
    }
    Ok(Latencies::Reads(latencies))
}

/// A subscriber that reads every frame and reconnects now and then, as
/// browsers do when people move between pages.
async fn subscribe_loop(
    api: &Api,
    counters: &Counters,
    deadline: Instant,
) -> anyhow::Result<Latencies> {
    while Instant::now() < deadline {
        counters.streams.fetch_add(1, Ordering::Relaxed);
        let mut socket = match subscribe(api, "vm,job,host").await {
            Ok(socket) => socket,
            Err(e) => {
                counters.error(format!("subscribing: {e:#}")).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let until = deadline.min(Instant::now() + STREAM_LIFETIME);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Jobs run back to back, so a quiet stream means a stuck one.
            match tokio::time::timeout(left, next_frame(&mut socket, Duration::from_secs(60))).await
            {
                Err(_) => break,
                Ok(Ok(frame)) => {
                    counters.events.fetch_add(1, Ordering::Relaxed);
                    if frame["type"] == "resync" || frame["type"] == "closed" {
                        counters
                            .error(format!("the event stream sent {frame}"))
                            .await;
                    }
                }
                Ok(Err(e)) => {
                    counters.error(format!("event stream: {e:#}")).await;
                    break;
                }
            }
        }
        // A close the server never answers is also an error worth seeing.
        if let Err(e) = socket.close(None).await {
            counters.error(format!("closing a stream: {e}")).await;
        }
    }
    Ok(Latencies::None)
}

/// Suspend and resume one guest as jobs, back to back, with a resync of
/// its host every few pairs.
async fn lifecycle_loop(
    api: &Api,
    counters: &Counters,
    deadline: Instant,
    host: &str,
    vm: &str,
) -> anyhow::Result<Latencies> {
    let mut latencies = Samples::default();
    let mut pairs = 0u64;
    while Instant::now() < deadline {
        for verb in ["suspend", "resume"] {
            let started = Instant::now();
            counters.requests.fetch_add(2, Ordering::Relaxed);
            match job(api, &format!("/api/v1/hosts/{host}/vms/{vm}/{verb}")).await {
                Ok(()) => {
                    counters.jobs.fetch_add(1, Ordering::Relaxed);
                    latencies.push(started.elapsed());
                }
                Err(e) => counters.error(format!("{verb}: {e:#}")).await,
            }
            tokio::time::sleep(JOB_PAUSE).await;
        }
        pairs += 1;
        if pairs.is_multiple_of(RESYNC_EVERY) {
            counters.requests.fetch_add(2, Ordering::Relaxed);
            match job(api, &format!("/api/v1/hosts/{host}/resync")).await {
                Ok(()) => {
                    counters.jobs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => counters.error(format!("resync: {e:#}")).await,
            }
        }
    }
    Ok(Latencies::Jobs(latencies))
}

/// POSTs a change and waits for its job to succeed.
async fn job(api: &Api, path: &str) -> anyhow::Result<()> {
    let reply = api.post(path, None).await?;
    if reply.status.as_u16() != 202 {
        return Err(anyhow!("POST {path}: {}", reply.describe()));
    }
    let id = reply.body["id"].as_str().context("the job has no id")?;
    let job = api.get(&format!("/api/v1/jobs/{id}?wait=30")).await?;
    if job["status"] != "succeeded" {
        return Err(anyhow!(
            "job {id} ended {}: {}",
            job["status"],
            job["error"]
        ));
    }
    Ok(())
}

async fn report(samples: &[Sample], counters: &Counters, reads: &Samples, jobs: &Samples) {
    // The first tenth of the run (at least one sample) is warm-up: caches,
    // pools and the allocator's arenas filling.
    let total = samples.last().map_or(Duration::ZERO, |s| s.at);
    let steady: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.at >= total / 10)
        .collect();
    let (first, last) = (steady.first(), steady.last());
    let max_rss = steady.iter().map(|s| s.rss).fold(0.0, f64::max);
    println!("   --");
    if let (Some(first), Some(last)) = (first, last) {
        println!(
            "   after warm-up: RSS {:.1} → {:.1} MiB (max {:.1}), slope {:+.2} MiB/hour; of it anonymous {:.1} → {:.1} MiB, slope {:+.2} MiB/hour; fds {} → {}; threads {} → {}",
            first.rss,
            last.rss,
            max_rss,
            slope_per_hour(&steady, |s| s.rss),
            first.anon,
            last.anon,
            slope_per_hour(&steady, |s| s.anon),
            first.fds,
            last.fds,
            first.threads,
            last.threads,
        );
    }
    println!(
        "   requests {}, jobs {}, event frames {}, streams opened {}, errors {}",
        counters.requests.load(Ordering::Relaxed),
        counters.jobs.load(Ordering::Relaxed),
        counters.events.load(Ordering::Relaxed),
        counters.streams.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
    );
    println!("   API reads                     {}", reads.line());
    println!("   lifecycle jobs (POST + wait)  {}", jobs.line());
    for e in counters.first_errors.lock().await.iter() {
        println!("   error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, rss: f64) -> Sample {
        Sample {
            at: Duration::from_secs(secs),
            rss,
            anon: rss / 2.0,
            fds: 0,
            threads: 0,
        }
    }

    #[test]
    fn slope_is_mib_per_hour() {
        let flat = [at(0, 30.0), at(600, 30.0), at(1200, 30.0)];
        assert_eq!(slope_per_hour(&flat, |s| s.rss), 0.0);
        // +1 MiB every 10 minutes = +6 MiB/hour.
        let growing = [at(0, 30.0), at(600, 31.0), at(1200, 32.0)];
        assert!((slope_per_hour(&growing, |s| s.rss) - 6.0).abs() < 1e-9);
        assert!((slope_per_hour(&growing, |s| s.anon) - 3.0).abs() < 1e-9);
        assert_eq!(slope_per_hour(&growing[..1], |s| s.rss), 0.0);
    }
}
