//! Target 4 on the real fleet: a full resync of every host over the
//! service's kept connections, asked for through the API
//! (`POST /api/v1/inventory/resync` → 202 + `Location` of an
//! `inventory.resync` job, long-polled with `?wait=60`). Both the client's
//! wall time and the job's own `duration_ms` are reported, with the
//! service's CPU per resync and the whole machine's: the lab's hosts share
//! this machine's two cores, where a real fleet's hosts each work on their
//! own. So one host's resync alone (`POST /api/v1/hosts/{id}/resync`) is
//! timed too: what a host with its own CPU answers in.

use std::time::Instant;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use serde_json::Value;

use overvisor_testkit::LabHost;

use super::api::Api;
use crate::process::{self, Proc};
use crate::stats::{Samples, versus};

/// One resync as the job reported it.
struct Outcome {
    hosts: u64,
    vms: u64,
    failed: Vec<Value>,
    duration_ms: f64,
}

pub async fn run(api: &Api, pid: u32, fleet: &[LabHost], rounds: usize) -> anyhow::Result<()> {
    let hosts = fleet.len();
    println!(
        "== F4. Full resync of {hosts} hosts through the API, as a job ({rounds} timed rounds after 1 warm-up)"
    );
    let (mut wall, mut job) = (Samples::default(), Samples::default());
    let (mut cpu, mut machine) = (Samples::default(), Samples::default());
    for round in 0..=rounds {
        let cpu_before = process::cpu_ms_of(Proc::Pid(pid))?;
        let machine_before = process::machine_busy_ms()?;
        let started = Instant::now();
        let outcome = resync_once(api, "/api/v1/inventory/resync").await?;
        let elapsed = started.elapsed();
        let cpu_used = process::cpu_ms_of(Proc::Pid(pid))? - cpu_before;
        let machine_used = process::machine_busy_ms()? - machine_before;
        if !outcome.failed.is_empty() {
            println!(
                "   round {round}: {} hosts failed, e.g. {}",
                outcome.failed.len(),
                outcome.failed[0]
            );
        }
        if outcome.hosts as usize != hosts {
            println!(
                "   round {round}: the job resynced {} hosts, not {hosts}",
                outcome.hosts
            );
        }
        if round == 0 {
            println!(
                "   warm-up: {:.0} ms wall, job {:.0} ms, {} hosts, {} VMs",
                elapsed.as_secs_f64() * 1000.0,
                outcome.duration_ms,
                outcome.hosts,
                outcome.vms
            );
            continue;
        }
        // Does memory settle or grow with every resync?
        let rss = process::memory(Proc::Pid(pid))?.rss;
        if round == 1 || round == rounds || round % 10 == 0 {
            println!("   service VmRSS after round {round}: {rss:.1} MiB");
        }
        wall.push(elapsed);
        job.push_ms(outcome.duration_ms);
        cpu.push_ms(cpu_used);
        machine.push_ms(machine_used);
    }
    println!("   POST → job succeeded (wall)  {}", wall.line());
    println!("   job duration_ms              {}", job.line());
    println!("   service CPU per resync       {}", cpu.line());
    println!("   machine CPU per resync       {}", machine.line());
    println!("   median wall {}", versus(wall.median(), 3000.0, "ms"));
    println!(
        "   max wall    {}",
        versus(wall.quantile(1.0), 3000.0, "ms")
    );
    if let Some(first) = fleet.first() {
        one_host(api, first, rounds).await?;
    }
    Ok(())
}

/// Resyncs of one host alone: its answer time when nothing else competes
/// for the cores.
async fn one_host(api: &Api, host: &LabHost, rounds: usize) -> anyhow::Result<()> {
    let listed = api.get("/api/v1/hosts").await?;
    let id = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["name"] == host.name.as_str())
        .and_then(|h| h["id"].as_str())
        .with_context(|| format!("GET /api/v1/hosts does not list {}", host.name))?
        .to_owned();
    let path = format!("/api/v1/hosts/{id}/resync");
    let (mut wall, mut job) = (Samples::default(), Samples::default());
    resync_once(api, &path).await?;
    for _ in 0..rounds {
        let started = Instant::now();
        let outcome = resync_once(api, &path).await?;
        wall.push(started.elapsed());
        job.push_ms(outcome.duration_ms);
    }
    println!("   one host alone ({}, POST {path}):", host.name);
    println!("     wall                       {}", wall.line());
    println!("     job duration_ms            {}", job.line());
    Ok(())
}

async fn resync_once(api: &Api, path: &str) -> anyhow::Result<Outcome> {
    let reply = api.post(path, None).await?;
    if matches!(
        reply.status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
    ) {
        bail!(
            "POST {path}: {} (a service without the resync endpoints?)",
            reply.describe()
        );
    }
    if reply.status != StatusCode::ACCEPTED {
        bail!("POST {path}: {}", reply.describe());
    }
    let location = reply
        .headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("the resync answer has no Location")?
        .to_owned();
    let job = loop {
        let job = api.get(&format!("{location}?wait=60")).await?;
        match job["status"].as_str() {
            Some("queued" | "running") => continue,
            Some("succeeded") => break job,
            other => bail!(
                "resync job ended {}: {}",
                other.unwrap_or("?"),
                job["error"].as_str().unwrap_or("no error given")
            ),
        }
    };
    let result = &job["result"];
    Ok(Outcome {
        hosts: result["hosts"].as_u64().unwrap_or(0),
        vms: result["vms"].as_u64().unwrap_or(0),
        failed: result["failed"].as_array().cloned().unwrap_or_default(),
        duration_ms: result["duration_ms"].as_f64().unwrap_or(f64::NAN),
    })
}
