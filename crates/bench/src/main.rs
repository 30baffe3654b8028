//! `bench`: measures Overvisor against the targets in the product brief and
//! prints figures (median, p95/p99, max, ratio to the target). It never
//! asserts a timing. Metrics 2–4 need the hypervisor lab and fail, saying
//! how to bring it up, when it is missing; `--no-lab` runs only 1 and 5.
//! `--fleet` instead measures end to end through the running service on a
//! lab instance of its own (200 hosts × 100 domains; see `fleet`).
//! `--soak` runs the service under mixed load for half an hour on the lab
//! (the instance OVERVISOR_LAB_INSTANCE selects, else the default one) and
//! reports whether anything accumulates (see `soak`).
//! `--store-paths` times the API paths that are mostly database work, on
//! SQLite or (`--database-url`) PostgreSQL (see `store_paths`).

mod actions;
mod coldstart;
mod consoles;
mod deploy;
mod fleet;
mod jobs_path;
mod lab;
mod list;
mod process;
mod resync;
mod sampling;
mod service;
mod soak;
mod stats;
mod store_paths;

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
    /// The `overvisor` binary for the cold start and the fleet mode
    /// (default: next to `bench`).
    #[arg(long)]
    overvisor: Option<PathBuf>,
    /// Only the fleet mode: the real service against every host of the lab
    /// instance that OVERVISOR_LAB_INSTANCE (or OVERVISOR_LAB_DIR) selects.
    /// Uses --requests for the list and --runs for the event latency.
    #[arg(long)]
    fleet: bool,
    /// Only the Hyper-V fleet mode: the lab instance's scripted Hyper-V
    /// hosts (`scripts/lab up --hyperv 50`, `hyperv-populate 100`) beside
    /// its libvirt hosts in one service: list and event latency. Uses the
    /// fleet options, --requests and --runs.
    #[arg(long)]
    hyperv_fleet: bool,
    /// Fleet mode: domains each host holds (`scripts/lab populate COUNT`).
    #[arg(long, default_value_t = 100)]
    fleet_domains: usize,
    /// Fleet mode: register only the first N hosts (default: all).
    #[arg(long)]
    fleet_hosts: Option<usize>,
    /// Fleet mode: timed full resyncs.
    #[arg(long, default_value_t = 10)]
    fleet_resyncs: usize,
    /// Fleet mode: timed host steps of the deployment wizard.
    #[arg(long, default_value_t = 20)]
    fleet_wizard_pages: usize,
    /// Only deployments: a `vm.deploy` job from a cached image against the
    /// host's own commands (--runs times), then ten at once over five hosts.
    #[arg(long)]
    deploy: bool,
    /// Only consoles: a keystroke's echo through the service against a
    /// direct `ssh -tt … virsh console` (--keystrokes each), and memory per
    /// open viewer (50 over 10 VMs on 5 hosts).
    #[arg(long)]
    consoles: bool,
    #[arg(long, default_value_t = 100)]
    keystrokes: usize,
    /// Only the soak (on demand): minutes of mixed load on ovh1 and ovh2 of
    /// the lab OVERVISOR_LAB_INSTANCE selects (else the default lab),
    /// sampling the service's memory, descriptors and threads; 0 errors and
    /// flat memory are the pass mark.
    #[arg(long)]
    soak: bool,
    /// Soak mode: how long, in minutes.
    #[arg(long, default_value_t = 30.0)]
    soak_minutes: f64,
    /// Soak mode: seconds between samples of the service process.
    #[arg(long, default_value_t = 60)]
    soak_sample_secs: u64,
    /// Fleet mode: run this many replicas on --database-url (an empty
    /// PostgreSQL database) instead of one service on SQLite.
    #[arg(long, default_value_t = 1)]
    fleet_replicas: usize,
    /// Fleet mode: the service's OVERVISOR_LOG filter.
    #[arg(long, default_value = "warn")]
    fleet_log: String,
    /// Fleet mode: longest wait, in seconds, for every host to be connected
    /// and synced.
    #[arg(long, default_value_t = 600)]
    fleet_sync_timeout: u64,
    /// Only the usage-sampling mode (no lab): memory of the graphs'
    /// history at 200 × 100 VMs and CPU time per host sample, over this
    /// many rounds of every host.
    #[arg(long)]
    sampling: Option<u64>,
    /// Only the store paths (no lab): an authenticated read, job and audit
    /// list pages (--requests each) and job round trips (--runs) through
    /// the service on SQLite, or on --database-url.
    #[arg(long)]
    store_paths: bool,
    /// Store paths mode: run the service on this (empty) PostgreSQL
    /// database instead of SQLite.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Fail before measuring anything if a prerequisite is missing.
    if let Some(rounds) = args.sampling {
        print_machine(", --sampling");
        return sampling::run(200, 100, rounds.max(2)).await;
    }
    let binary = service::locate(args.overvisor.clone())?;
    if args.fleet {
        let lab = lab::load_fleet()?;
        print_machine(", --fleet");
        return fleet::run(&binary, &lab, &fleet_args(&args)).await;
    }
    if args.hyperv_fleet {
        let lab = lab::load_fleet()?;
        print_machine(", --hyperv-fleet");
        return fleet::hyperv::run(&binary, &lab, &fleet_args(&args)).await;
    }
    if args.store_paths {
        print_machine(", --store-paths");
        return store_paths::run(
            &binary,
            args.database_url.as_deref(),
            args.requests,
            args.runs,
        )
        .await;
    }
    if args.deploy {
        let lab = lab::load()?;
        print_machine(", --deploy");
        return deploy::run(&binary, &lab, args.runs).await;
    }
    if args.consoles {
        let lab = lab::load()?;
        print_machine(", --consoles");
        return consoles::run(&binary, &lab, args.keystrokes).await;
    }
    if args.soak {
        let lab = lab::load()?;
        print_machine(", --soak");
        let soak_args = soak::SoakArgs {
            duration: Duration::from_secs_f64(args.soak_minutes * 60.0),
            sample_every: Duration::from_secs(args.soak_sample_secs),
            domains: args.resync_domains,
        };
        return soak::run(&binary, &lab, &soak_args).await;
    }
    let lab = if args.no_lab {
        None
    } else {
        Some(lab::load()?)
    };
    print_machine(if args.no_lab { ", --no-lab" } else { "" });

    list::run(200, 100, args.requests).await?;
    if let Some(lab) = &lab {
        lab_metrics(lab, &args, &binary).await?;
    }
    coldstart::run(&binary, args.starts).await?;
    Ok(())
}

/// The fleet modes' options, from the command line.
fn fleet_args(args: &Args) -> fleet::FleetArgs {
    fleet::FleetArgs {
        domains: args.fleet_domains,
        hosts: args.fleet_hosts,
        requests: args.requests,
        event_runs: args.runs,
        resyncs: args.fleet_resyncs,
        wizard_pages: args.fleet_wizard_pages,
        log_filter: args.fleet_log.clone(),
        sync_timeout: Duration::from_secs(args.fleet_sync_timeout),
        replicas: args.fleet_replicas,
        database_url: args.database_url.clone(),
    }
}

fn print_machine(mode: &str) {
    println!(
        "overvisor bench: {} CPUs available{mode}",
        std::thread::available_parallelism().map_or(0, usize::from),
    );
}

/// Metrics 2–4. Our own guest on the shared host ovh2 is destroyed and
/// undefined when this returns (also on error).
async fn lab_metrics(
    lab: &overvisor_testkit::Lab,
    args: &Args,
    binary: &std::path::Path,
) -> anyhow::Result<()> {
    let host = lab
        .hosts
        .iter()
        .find(|h| h.name == "ovh2")
        .ok_or_else(|| anyhow::anyhow!("the lab has no host ovh2: scripts/lab up"))?;
    let driver = lab::driver(lab, host).await?;
    let name = overvisor_testkit::unique_name("bench");
    let guest = lab::boot_guest(lab, host, &name).await?;
    actions::overhead(&driver, &guest, args.runs).await?;
    jobs_path::run(binary, lab, &guest, args.runs).await?;
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
