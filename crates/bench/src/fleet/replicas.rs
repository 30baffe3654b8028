//! `bench --fleet --fleet-replicas N --database-url URL`: the fleet under
//! several replicas on one PostgreSQL database. N `overvisor serve`
//! processes share the lab instance's hosts (each host owned by one of
//! them); measured: the list and the deployment wizard's host step on
//! each replica, a host event → the event
//! stream of a replica that does NOT own the host (the inventory travels
//! owner → database → NOTIFY → mirror), PostgreSQL's and each replica's
//! CPU at idle, and how long the survivors take to own every host of a
//! replica killed with SIGKILL. Timings are printed, never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use overvisor_testkit::{Lab, LabHost};
use serde_json::Value;

use super::api::Api;
use super::{FleetArgs, QUERIES, list_latency, register, wait_synced_from, wizard};
use crate::process::{self, Proc};
use crate::service::{Launch, Service};
use crate::stats::versus;

/// The replicas' log filter: warnings, and the lease changes this mode
/// reads to know which replica owns which host.
const LOG_FILTER: &str = "warn,overvisor_control::replicas=info";

pub async fn run(
    binary: &Path,
    lab: &Lab,
    hosts: &[LabHost],
    args: &FleetArgs,
    replicas: usize,
    database_url: &str,
) -> anyhow::Result<()> {
    if replicas < 2 {
        bail!("--fleet-replicas needs at least 2");
    }
    println!(
        "== Fleet under {replicas} replicas on one PostgreSQL database: {} hosts × {} domains",
        hosts.len(),
        args.domains
    );
    let tempdir = tempfile::tempdir()?;
    let dir = tempdir.path();
    let measured: anyhow::Result<()> = async {
        let master_key = {
            use base64::Engine;
            let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
            base64::engine::general_purpose::STANDARD.encode([*a.as_bytes(), *b.as_bytes()].concat())
        };
        let env = [
            ("OVERVISOR_DATABASE_URL", database_url),
            ("OVERVISOR_MASTER_KEY", master_key.as_str()),
            ("OVERVISOR_LOG_FORMAT", "json"),
        ];
        let data: Vec<PathBuf> = (0..replicas)
            .map(|i| dir.join(format!("data-{i}")))
            .collect();
        let logs: Vec<PathBuf> = (0..replicas)
            .map(|i| dir.join(format!("replica-{i}.log")))
            .collect();
        let launch = |i: usize| Launch {
            binary,
            data_dir: &data[i],
            log_filter: LOG_FILTER,
            log_file: Some(&logs[i]),
            read_banner: i == 0,
            env: &env,
        };
        let client = reqwest::Client::new();
        let mut services = Vec::new();
        for i in 0..replicas {
            let mut service = Service::spawn(&launch(i))?;
            service.wait_ready(&client, Instant::now()).await?;
            services.push(Some(service));
        }
        let token = services[0]
            .as_ref()
            .context("replica 0")?
            .admin_key(Duration::from_secs(10))?;
        let apis: Vec<Api> = services
            .iter()
            .flatten()
            .map(|s| Api::new(&s.api, &token))
            .collect::<anyhow::Result<_>>()?;

        let started = Instant::now();
        register(&apis[0], lab, hosts).await?;
        let expected_vms = hosts.len() * args.domains;
        for (i, api) in apis.iter().enumerate() {
            let synced =
                wait_synced_from(api, hosts.len(), expected_vms, args.sync_timeout, started).await?;
            println!(
                "   replica {i}: {} hosts connected and {expected_vms}+ VMs listed {:.2} s after the first registration",
                hosts.len(),
                synced.all.as_secs_f64()
            );
        }
        let names = replica_names(&logs)?;
        let owned_by = owners(database_url, &names)?;
        println!(
            "   hosts owned: {}",
            (0..replicas)
                .map(|i| format!(
                    "replica {i} {}",
                    owned_by.values().filter(|o| **o == i).count()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );

        // Idle: what each replica and PostgreSQL spend while nothing happens,
        // once the registrations' tail (jobs' events, first resyncs, first
        // samples) is over: a sampling step after everything is listed.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let window = Duration::from_secs(60);
        let pids: Vec<u32> = services.iter().flatten().map(Service::pid).collect();
        let before: Vec<f64> = pids
            .iter()
            .map(|p| process::cpu_ms_of(Proc::Pid(*p)))
            .collect::<anyhow::Result<_>>()?;
        let pg_before = postgres_cpu_ms()?;
        let xact_before = transactions(database_url)?;
        tokio::time::sleep(window).await;
        let xacts = transactions(database_url)? - xact_before;
        let pg_used = postgres_cpu_ms()? - pg_before;
        println!(
            "== R1. Idle for {:.0} s (keepalives, lease renewals, resyncs, sampling)",
            window.as_secs_f64()
        );
        for (i, pid) in pids.iter().enumerate() {
            let used = process::cpu_ms_of(Proc::Pid(*pid))? - before[i];
            println!(
                "   replica {i}: {:.1}% of one core",
                used / window.as_secs_f64() / 10.0
            );
        }
        println!(
            "   PostgreSQL: {:.1}% of one core in all ({:.2}% per replica), {:.1} transactions/s in all ({:.1} per replica)",
            pg_used / window.as_secs_f64() / 10.0,
            pg_used / window.as_secs_f64() / 10.0 / replicas as f64,
            xacts / window.as_secs_f64(),
            xacts / window.as_secs_f64() / replicas as f64,
        );

        println!("== R2. The VM list on each replica");
        for (i, api) in apis.iter().enumerate() {
            println!("   replica {i}:");
            list_latency(api, args.requests, &QUERIES).await?;
        }

        println!(
            "== R2b. The deployment wizard's host step on each replica ({} pages)",
            args.wizard_pages
        );
        let uis: Vec<String> = services.iter().flatten().map(|s| s.ui.clone()).collect();
        let portals = wizard::admin_portals(&apis[0], &uis).await?;
        for (i, portal) in portals.iter().enumerate() {
            println!("   replica {i}:");
            wizard::host_step(portal, hosts.len(), args.wizard_pages).await?;
        }

        // The event host's owner, and a replica that does not own it.
        let event_host = hosts.last().context("the lab has no hosts")?;
        let event_host_id = host_id(&apis[0], &event_host.name).await?;
        let owner = *owned_by
            .get(&event_host_id)
            .context("nobody owns the event host")?;
        let reader = (owner + 1) % replicas;
        println!(
            "== R3. Host event → the stream of replica {reader}, which does not own {} (replica {owner} does)",
            event_host.name
        );
        super::events::run(&apis[reader], lab, event_host, args.event_runs).await?;
        println!("   (target for this path: p95 ≤ 150 ms)");

        // SIGKILL the owner; time until the survivors own all of its hosts.
        let orphans: BTreeSet<String> = owned_by
            .iter()
            .filter(|(_, o)| **o == owner)
            .map(|(h, _)| h.clone())
            .collect();
        let killed_at = Instant::now();
        drop(services[owner].take());
        let timeout = Duration::from_secs(120);
        let retaken = loop {
            let now_owned = owners(database_url, &names)?;
            let left = orphans
                .iter()
                .filter(|h| now_owned.get(*h).is_none_or(|o| *o == owner))
                .count();
            if left == 0 {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > timeout {
                bail!(
                    "{left} of {} hosts still not taken on after {timeout:?}",
                    orphans.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!(
            "== R4. SIGKILL of replica {owner}: its {} hosts owned by the survivors after {:.2} s (default lease: 15 s, renewed every 5 s)",
            orphans.len(),
            retaken.as_secs_f64(),
        );
        println!("   takeover {}", versus(retaken.as_secs_f64(), 20.0, "s"));
        for i in (0..replicas).filter(|i| *i != owner) {
            let listed = apis[i].get("/api/v1/inventory").await?["vms"]
                .as_u64()
                .unwrap_or(0);
            println!("   replica {i} lists {listed} VMs after the takeover");
        }
        for service in services.into_iter().flatten() {
            service.terminate(Duration::from_secs(30))?;
        }
        Ok(())
    }
    .await;
    if measured.is_err() {
        // What the replicas logged is what explains a failure.
        let kept = tempdir.keep();
        eprintln!("the replicas' data and logs are kept in {}", kept.display());
    }
    measured
}

/// Each replica's name in leases, from the line it logged on joining.
fn replica_names(logs: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    logs.iter()
        .map(|log| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["fields"]["message"] == "joining the replicas on this database")
                .and_then(|v| v["fields"]["replica"].as_str().map(str::to_owned))
                .with_context(|| format!("{} names no replica", log.display()))
        })
        .collect()
}

/// Which replica (by index in `names`) holds a valid lease on each host
/// (by host id), as the database says.
fn owners(database_url: &str, names: &[String]) -> anyhow::Result<BTreeMap<String, usize>> {
    let rows = psql(
        database_url,
        "SELECT host_id || ' ' || owner FROM host_leases
         WHERE expires_ms >= extract(epoch FROM now()) * 1000",
    )?;
    Ok(rows
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(host, owner)| {
            names
                .iter()
                .position(|n| n == owner)
                .map(|i| (host.to_owned(), i))
        })
        .collect())
}

async fn host_id(api: &Api, name: &str) -> anyhow::Result<String> {
    let hosts = api.get("/api/v1/hosts?limit=1000").await?;
    let list = hosts["items"].as_array().or(hosts.as_array());
    list.into_iter()
        .flatten()
        .find(|h| h["name"] == name)
        .and_then(|h| h["id"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("host {name} is not registered"))
}

/// CPU time of every PostgreSQL server process on this machine (the
/// benchmark's throwaway cluster is the only one it should find).
fn postgres_cpu_ms() -> anyhow::Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            total += process::cpu_ms_of(Proc::Pid(pid)).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// Transactions committed in the database so far (`pg_stat_database`).
fn transactions(database_url: &str) -> anyhow::Result<f64> {
    Ok(psql(
        database_url,
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )?
    .parse()?)
}

fn psql(database_url: &str, query: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("psql")
        .args([database_url, "-Atc", query])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
