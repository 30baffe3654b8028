//! Deployments (`--deploy`): a `vm.deploy` job through the real service's
//! API from an image already in the host's cache to `running`, against the
//! host's own commands for the same VM (`qemu-img create`, `virsh define`,
//! `virsh start`, as root inside the host), interleaved; then ten
//! deployments at once across five hosts. The lab's cloud guest is the
//! image; each VM is destroyed and removed as soon as it was measured.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use overvisor_testkit::{Lab, LabHost, unique_name};
use serde_json::{Value, json};

use crate::fleet::api::Api;
use crate::service::{self, Launch};
use crate::stats::Samples;

const DEPLOY_DIR: &str = "/var/lib/libvirt/overvisor";

/// One deployment through the API, waited for; its wall time and job (with
/// `accepted_ms`, how long the POST took, added for [`Phases`]).
async fn deploy(api: &Api, host_id: &str, name: &str) -> anyhow::Result<(Duration, Value)> {
    deploy_by(api, host_id, name, None).await
}

/// [`deploy`] with the image's way to the host (`host`, `stream`) given.
async fn deploy_by(
    api: &Api,
    host_id: &str,
    name: &str,
    transfer: Option<&str>,
) -> anyhow::Result<(Duration, Value)> {
    let started = Instant::now();
    let mut body = json!({"profile": "bench-cloud", "name": name, "vcpus": 1, "memory_mib": 256,
        "disk_gib": 4, "network": {"bridge": "br0"}, "username": "bench"});
    if let Some(transfer) = transfer {
        body["image_transfer"] = json!(transfer);
    }
    let reply = api
        .post(&format!("/api/v1/hosts/{host_id}/deployments"), Some(&body))
        .await?;
    if reply.status.as_u16() != 202 {
        bail!("deploy {name}: {}", reply.describe());
    }
    let accepted = started.elapsed();
    let id = reply.body["job"]["id"].as_str().context("no job id")?;
    let mut job = loop {
        let job = api.get(&format!("/api/v1/jobs/{id}?wait=60")).await?;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
    };
    if job["status"] != "succeeded" {
        bail!("job {id} ended {}: {}", job["status"], job["error"]);
    }
    job["accepted_ms"] = json!(accepted.as_secs_f64() * 1000.0);
    Ok((started.elapsed(), job))
}

/// Where a deployment's time goes: the POST (checks before the job), the
/// wait for a runner, each step, and from the job's end to the client
/// seeing it; the host's own commands one by one.
#[derive(Default)]
struct Phases(Vec<(String, Samples)>);

impl Phases {
    fn push(&mut self, phase: &str, ms: f64) {
        match self.0.iter_mut().find(|(p, _)| p == phase) {
            Some((_, s)) => s.push_ms(ms),
            None => {
                let mut s = Samples::default();
                s.push_ms(ms);
                self.0.push((phase.to_owned(), s));
            }
        }
    }

    /// The phases of one API deployment that took `took` in all.
    fn of_job(&mut self, job: &Value, took: Duration) {
        let accepted = job["accepted_ms"].as_f64().unwrap_or(0.0);
        self.push("POST until 202", accepted);
        let (created, started, finished) = (
            at(&job["created_at"]),
            at(&job["started_at"]),
            at(&job["finished_at"]),
        );
        if let (Some(c), Some(s)) = (created, started) {
            self.push("queued", ms(c, s));
        }
        let mut steps_ms = 0.0;
        for (name, took) in step_times(job) {
            steps_ms += took;
            self.push(&format!("step {name}"), took);
        }
        if let (Some(s), Some(f)) = (started, finished) {
            self.push("job bookkeeping between steps", ms(s, f) - steps_ms);
        }
        if let (Some(c), Some(f)) = (created, finished) {
            let total = took.as_secs_f64() * 1000.0;
            self.push(
                "end of job until the client saw it",
                total - accepted - ms(c, f),
            );
        }
    }

    fn print(&self) {
        for (phase, s) in &self.0 {
            println!(
                "     {phase:<36} median {:>7.1} ms  p95 {:>7.1} ms",
                s.median(),
                s.quantile(0.95)
            );
        }
    }
}

/// Root commands inside `host`, off the async threads.
async fn root(host: &LabHost, program: &'static str, args: Vec<String>) -> anyhow::Result<()> {
    let host = host.clone();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = host.run_as_root(program, &args);
        if out.status.success() {
            Ok(())
        } else {
            Err(anyhow!(
                "{program} {args:?} on {}: {}",
                host.name,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .await?
}

/// Removes a VM and its directory (not timed).
async fn remove(host: &LabHost, name: &str, uuid: &str) -> anyhow::Result<()> {
    let _ = root(host, "virsh", vec!["destroy".into(), name.into()]).await;
    let _ = root(host, "virsh", vec!["undefine".into(), name.into()]).await;
    root(
        host,
        "rm",
        vec!["-rf".into(), format!("{DEPLOY_DIR}/vms/{uuid}")],
    )
    .await
}

/// The same VM made by the host's own commands: the job's domain XML under
/// a new name and UUID, the seed copied beforehand; times `qemu-img
/// create`, `virsh define` and `virsh start`.
async fn by_hand(
    host: &LabHost,
    job: &Value,
    sha256: &str,
    phases: &mut Phases,
) -> anyhow::Result<Duration> {
    let spec = &job["operation"]["spec"];
    let (old_uuid, xml) = (
        spec["uuid"].as_str().context("no uuid")?,
        spec["domain_xml"].as_str().context("no xml")?,
    );
    let old_name = job["operation"]["vm"].as_str().context("no name")?;
    let (uuid, name) = (uuid::Uuid::new_v4().to_string(), unique_name("bench-hand"));
    let xml = xml.replace(old_uuid, &uuid).replace(
        &format!("<name>{old_name}</name>"),
        &format!("<name>{name}</name>"),
    );
    let dir = format!("{DEPLOY_DIR}/vms/{uuid}");
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), xml)?;
    root(host, "mkdir", vec!["-p".into(), dir.clone()]).await?;
    root(
        host,
        "cp",
        vec![
            format!("{DEPLOY_DIR}/vms/{old_uuid}/seed.iso"),
            format!("{dir}/seed.iso"),
        ],
    )
    .await?;
    root(
        host,
        "cp",
        vec![path(file.path()), format!("{dir}/domain.xml")],
    )
    .await?;
    let started = Instant::now();
    let mut mark = started;
    let mut lap = |phase: &str| {
        let now = Instant::now();
        phases.push(phase, (now - mark).as_secs_f64() * 1000.0);
        mark = now;
    };
    root(
        host,
        "qemu-img",
        vec![
            "create".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-b".into(),
            format!("{DEPLOY_DIR}/images/{sha256}.img"),
            "-F".into(),
            "qcow2".into(),
            format!("{dir}/disk.qcow2"),
            "4G".into(),
        ],
    )
    .await?;
    lap("qemu-img create");
    root(
        host,
        "virsh",
        vec!["define".into(), format!("{dir}/domain.xml")],
    )
    .await?;
    lap("virsh define");
    root(host, "virsh", vec!["start".into(), name.clone()]).await?;
    lap("virsh start");
    let took = started.elapsed();
    remove(host, &name, &uuid).await?;
    Ok(took)
}

/// A job's timestamp field.
fn at(v: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
}

/// Milliseconds from `a` to `b`.
fn ms(a: chrono::DateTime<chrono::FixedOffset>, b: chrono::DateTime<chrono::FixedOffset>) -> f64 {
    (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// Each finished step of `job`: its name and how long it took (ms).
fn step_times(job: &Value) -> impl Iterator<Item = (&str, f64)> {
    job["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|step| {
            let (a, b) = (at(&step["started_at"])?, at(&step["finished_at"])?);
            Some((step["name"].as_str().unwrap_or("?"), ms(a, b)))
        })
}

/// How long step `name` of `job` took.
fn step_ms(job: &Value, name: &str) -> Option<f64> {
    step_times(job)
        .find(|(n, _)| *n == name)
        .map(|(_, took)| took)
}

/// The image's way to a host whose cache lacks it: the host's own
/// download (`curl` + `sha256sum` as root, the baseline), the job's
/// `image` step downloading on the host, and the job's `image` step with
/// the control plane sending it over the SSH connection (from its own
/// cache, filled by a first, unmeasured stream).
async fn transfers(
    api: &Api,
    host: &LabHost,
    host_id: &str,
    image: &overvisor_testkit::CloudImage,
    runs: usize,
) -> anyhow::Result<()> {
    let cached = format!("{DEPLOY_DIR}/images/{}", image.sha256);
    let uncache = || async {
        root(
            host,
            "rm",
            vec![
                "-f".into(),
                format!("{cached}.img"),
                format!("{cached}.part"),
            ],
        )
        .await
    };
    let mb = image.size as f64 / 1e6;
    println!(
        "== Image transfer to a host without it ({}, {runs} runs, {mb:.0} MB)",
        host.name
    );
    let mut samples: Vec<(&str, Samples)> = [
        "root curl + sha256sum",
        "API transfer=host",
        "API transfer=stream",
    ]
    .into_iter()
    .map(|what| (what, Samples::default()))
    .collect();
    // Fills the control plane's own cache (not measured).
    uncache().await?;
    let name = unique_name("bench-xfer");
    let (_, job) = deploy_by(api, host_id, &name, Some("stream")).await?;
    remove(
        host,
        &name,
        job["result"]["uuid"].as_str().unwrap_or_default(),
    )
    .await?;
    let scratch = "/var/tmp/overvisor-bench-image".to_owned();
    for _ in 0..runs {
        let started = Instant::now();
        root(
            host,
            "curl",
            vec![
                "-sSf".into(),
                "-o".into(),
                scratch.clone(),
                image.url.clone(),
            ],
        )
        .await?;
        root(host, "sha256sum", vec![scratch.clone()]).await?;
        samples[0].1.push(started.elapsed());
        root(host, "rm", vec!["-f".into(), scratch.clone()]).await?;
        for (i, transfer) in [(1, "host"), (2, "stream")] {
            uncache().await?;
            let name = unique_name("bench-xfer");
            let (_, job) = deploy_by(api, host_id, &name, Some(transfer)).await?;
            let ms = step_ms(&job, "image").context("no image step times")?;
            samples[i].1.push_ms(ms);
            remove(
                host,
                &name,
                job["result"]["uuid"].as_str().unwrap_or_default(),
            )
            .await?;
        }
    }
    for (what, s) in &samples {
        println!(
            "   {what:<38} {}  ({:.0} MB/s at the median)",
            s.line(),
            mb / (s.median() / 1000.0)
        );
    }
    println!(
        "   ratio of medians, stream / host download: {:.2}x",
        samples[2].1.median() / samples[1].1.median()
    );
    Ok(())
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub async fn run(binary: &Path, lab: &Lab, runs: usize) -> anyhow::Result<()> {
    let hosts = lab.hosts(5);
    let image = &lab.cloud_image;
    println!(
        "== Deployments from a cached image ({}, {runs} runs; image {} bytes)",
        hosts[0].name, image.size
    );
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("profiles"))?;
    std::fs::write(
        data.join("profiles/bench-cloud.toml"),
        format!(
            "title = \"Bench\"\nos = \"linux\"\nfirmware = \"bios\"\ndisk_bus = \"virtio\"\n\
             nic_model = \"virtio\"\nseed = \"nocloud\"\n[image]\nformat = \"qcow2\"\n\
             url = \"{}\"\nsha256 = \"{}\"\n[defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_gib = 4\n\
             [minimum]\nvcpus = 1\nmemory_mib = 128\ndisk_gib = 2\n",
            image.url, image.sha256
        ),
    )?;
    let (service, api) = service::start(&Launch {
        binary,
        data_dir: &data,
        log_filter: "warn",
        log_file: None,
        read_banner: true,
        // Lab hosts offer /dev/kvm but run guests under TCG only.
        env: &[("OVERVISOR_DEPLOY_EMULATED", "1")],
    })
    .await?;
    let ids: HashMap<&str, String> = hosts
        .iter()
        .map(|h| h.name.as_str())
        .zip(service::register_hosts(&api, lab, hosts).await?)
        .collect();
    let id_of = |h: &LabHost| -> anyhow::Result<String> {
        ids.get(h.name.as_str())
            .cloned()
            .ok_or_else(|| anyhow!("{} not registered", h.name))
    };
    // Warm-up: every host caches the image (not measured).
    let mut warm = Vec::new();
    for h in hosts {
        let (id, name, api) = (id_of(h)?, unique_name("bench-warm"), &api);
        warm.push(async move {
            let (took, job) = deploy(api, &id, &name).await?;
            let uuid = job["result"]["uuid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            remove(h, &name, &uuid).await?;
            anyhow::Ok(took)
        });
    }
    for (h, took) in hosts.iter().zip(futures::future::join_all(warm).await) {
        println!(
            "   warm-up deployment on {} (fetches the image unless cached): {:.1} s",
            h.name,
            took?.as_secs_f64()
        );
    }

    let host = &hosts[0];
    let host_id = id_of(host)?;
    let (mut ours, mut theirs) = (Samples::default(), Samples::default());
    let (mut our_phases, mut their_phases) = (Phases::default(), Phases::default());
    for _ in 0..runs {
        let name = unique_name("bench-dep");
        let (took, job) = deploy(&api, &host_id, &name).await?;
        ours.push(took);
        our_phases.of_job(&job, took);
        theirs.push(by_hand(host, &job, &image.sha256, &mut their_phases).await?);
        let uuid = job["result"]["uuid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        remove(host, &name, &uuid).await?;
    }
    println!("   API vm.deploy, cached image → running   {}", ours.line());
    our_phases.print();
    println!(
        "   root qemu-img create + define + start   {}",
        theirs.line()
    );
    their_phases.print();
    println!(
        "   ratio of medians: {:.2}x (target ≤ 1.2x)",
        ours.median() / theirs.median()
    );

    println!("== Ten deployments at once across five hosts (2 each, cached image)");
    let started = Instant::now();
    let mut all = Vec::new();
    for h in hosts.iter().chain(hosts.iter()) {
        let (id, name) = (id_of(h)?, unique_name("bench-par"));
        let api = &api;
        all.push(async move {
            let r = deploy(api, &id, &name).await;
            (h, name, r)
        });
    }
    let done = futures::future::join_all(all).await;
    let wall = started.elapsed();
    let mut each = Samples::default();
    for (h, name, r) in done {
        let (took, job) = r?;
        each.push(took);
        let uuid = job["result"]["uuid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        remove(h, &name, &uuid).await?;
    }
    println!("   each deployment                         {}", each.line());
    println!(
        "   all ten, wall time: {:.0} ms",
        wall.as_secs_f64() * 1000.0
    );
    transfers(&api, &hosts[1], &id_of(&hosts[1])?, image, runs.min(5)).await?;
    service.terminate(Duration::from_secs(30))?;
    Ok(())
}
