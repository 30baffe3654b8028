//! `bench`: measures Overvisor against the targets in the product brief and
//! prints figures (median, p95/p99, max, ratio to the target). It never
//! asserts a timing. Metrics 2–4 need the hypervisor lab and fail, saying
//! how to bring it up, when it is missing; `--no-lab` runs only 1 and 5.

mod actions;
mod coldstart;
mod lab;
mod list;
mod process;
mod resync;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Overvisor benchmarks: prints figures against the product targets")]
struct Args {
    /// Run only the metrics that need no hypervisor lab (list latency and
    /// memory, cold start).
    #[arg(long)]
    no_lab: bool,
    /// Timed requests per list query (after 100 warm-up requests).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Timed runs of each lab measurement.
    #[arg(long, default_value_t = 25)]
    runs: usize,
    /// Cold starts (each: a fresh data dir, then a second start on it).
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// Domains defined (inactive, then undefined) on each of ovh1 and ovh2
    /// for the resync; 0 lists what is there.
    #[arg(long, default_value_t = 100)]
    resync_domains: usize,
    /// The `overvisor` binary for the cold start (default: next to `bench`).
    #[arg(long)]
    overvisor: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Fail before measuring anything if a prerequisite is missing.
    let binary = coldstart::locate(args.overvisor.clone())?;
    let lab = if args.no_lab {
        None
    } else {
        Some(lab::load()?)
    };
    println!(
        "overvisor bench: {} CPUs available{}",
        std::thread::available_parallelism().map_or(0, usize::from),
        if args.no_lab { ", --no-lab" } else { "" }
    );

    list::run(200, 100, args.requests).await?;
    if let Some(lab) = &lab {
        lab_metrics(lab, &args).await?;
    }
    coldstart::run(&binary, args.starts).await?;
    Ok(())
}

/// Metrics 2–4. Our own guest on the shared host ovh2 is destroyed and
/// undefined when this returns (also on error).
async fn lab_metrics(lab: &overvisor_testkit::Lab, args: &Args) -> anyhow::Result<()> {
    let host = lab
        .hosts
        .iter()
        .find(|h| h.name == "ovh2")
        .ok_or_else(|| anyhow::anyhow!("the lab has no host ovh2: scripts/lab up"))?;
    let driver = lab::driver(lab, host).await?;
    let name = overvisor_testkit::unique_name("bench");
    let guest = {
        let (lab, host, name) = (lab.clone(), host.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            let guest = lab.define_guest(&host, &name);
            host.virsh(&["start", &name]);
            guest.wait_ready(1, Duration::from_secs(60));
            guest
        })
        .await?
    };
    actions::overhead(&driver, &guest, args.runs).await?;
    actions::event_latency(&driver, &guest, args.runs).await?;
    drop(guest);

    let mut defined = Vec::new();
    let prefix = overvisor_testkit::unique_name("bench-bulk");
    for shared in ["ovh1", "ovh2"] {
        if args.resync_domains == 0 {
            break;
        }
        if let Some(h) = lab.hosts.iter().find(|h| h.name == shared) {
            let (lab, h, prefix, n) = (lab.clone(), h.clone(), prefix.clone(), args.resync_domains);
            defined.push(
                tokio::task::spawn_blocking(move || lab::BulkDomains::define(&lab, &h, &prefix, n))
                    .await??,
            );
        }
    }
    let mut drivers = Vec::new();
    for h in &lab.hosts {
        match lab::driver(lab, h).await {
            Ok(d) => drivers.push((h.name.clone(), d)),
            // ovh3..ovh5 belong to resilience tests that take them down.
            Err(e) => println!("   (leaving out {}: {e:#})", h.name),
        }
    }
    let result = resync::run(&drivers, args.runs).await;
    tokio::task::spawn_blocking(move || drop(defined)).await?;
    result
}
