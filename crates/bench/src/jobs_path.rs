//! Metric 2 again, the way users drive it: a lifecycle action as a job
//! through the real service's API (`POST …/vms/{name}/suspend`, then
//! `GET /api/v1/jobs/{id}?wait=` until it has succeeded), interleaved with
//! root `virsh` inside the host. Also counts the SSH commands each action
//! costs the host, from the service's `overvisor_ssh_commands_total`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use overvisor_testkit::{Lab, TestGuest};

use crate::fleet::api::Api;
use crate::stats::{Samples, versus};

/// Runs one action as a job and waits for it; its wall time.
async fn act(api: &Api, path: &str) -> anyhow::Result<Duration> {
    job_round_trip(api, path, None).await
}

/// POSTs `body` to `path`, which must answer 202 with a job, and waits
/// until the job has succeeded; the wall time of both.
pub(crate) async fn job_round_trip(
    api: &Api,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let reply = api.post(path, body).await?;
    if reply.status.as_u16() != 202 {
        bail!("POST {path}: {}", reply.describe());
    }
    let id = reply.body["id"].as_str().context("the job has no id")?;
    let job = api.get(&format!("/api/v1/jobs/{id}?wait=30")).await?;
    if job["status"] != "succeeded" {
        bail!("job {id} ended {}: {}", job["status"], job["error"]);
    }
    Ok(started.elapsed())
}

/// The service's count of SSH commands run so far.
async fn ssh_commands(client: &reqwest::Client, base: &str) -> anyhow::Result<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("overvisor_ssh_commands_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

pub async fn run(binary: &Path, lab: &Lab, guest: &TestGuest, runs: usize) -> anyhow::Result<()> {
    println!(
        "== 2b. The same actions as jobs through the API ({}, {runs} runs each): POST, then wait for the job",
        guest.host.name
    );
    let dir = tempfile::tempdir()?;
    let (service, api, host_id) =
        crate::service::start_with_host(binary, dir.path(), lab, &guest.host).await?;
    let client = api.client().clone();
    let path = |verb: &str| format!("/api/v1/hosts/{host_id}/vms/{}/{verb}", guest.name);
    for _ in 0..3 {
        act(&api, &path("suspend")).await?;
        act(&api, &path("resume")).await?;
    }
    let (mut ours, mut root) = (Samples::default(), Samples::default());
    let before = ssh_commands(&client, &service.api).await?;
    for _ in 0..runs {
        ours.push(act(&api, &path("suspend")).await?);
        ours.push(act(&api, &path("resume")).await?);
        root.push(crate::actions::root_virsh(&guest.host, &["suspend", &guest.name]).await?);
        root.push(crate::actions::root_virsh(&guest.host, &["resume", &guest.name]).await?);
    }
    let commands = (ssh_commands(&client, &service.api).await? - before) / (2 * runs) as f64;
    println!("   API job suspend/resume       {}", ours.line());
    println!("   root virsh suspend/resume    {}", root.line());
    println!(
        "   overhead (median difference): {}",
        versus(ours.median() - root.median(), 20.0, "ms")
    );
    println!(
        "   SSH commands the service ran per action: {commands:.2} (a state read at submit or in confirm counts when the inventory could not answer)"
    );
    service.terminate(Duration::from_secs(30))?;
    Ok(())
}
