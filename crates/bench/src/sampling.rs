//! `--sampling`: what the usage graphs cost at 200 hosts × 100 VMs, in
//! process and without a lab: the memory of every VM's and host's history
//! (allocated whole on the first sample, so one round shows the steady
//! state) on top of the inventory, and the CPU time of one host's sample
//! — parsing `domstats` output of 100 running domains as the libvirt
//! driver gets it, turning it into points, keeping them and publishing
//! the event — as a share of one core at the default 30-second step. The
//! SSH round trip itself is the host's work and the connection's, measured
//! by the fleet mode. With several replicas, each sample is also passed on
//! to the others: the owner cuts it into announcements, each other replica
//! reads them and keeps the points; both are timed too.

use std::time::Duration;

use tokio::time::Instant;

use overvisor_control::metrics::{Metrics, MetricsSettings, Sample};
use overvisor_hv::libvirt::parse;
use overvisor_model::account::UserId;
use overvisor_model::host::Host;
use overvisor_model::metrics::{CpuReading, HostReading};
use overvisor_store::replicas::MAX_ANNOUNCEMENT;
use uuid::Uuid;

use crate::list::{app_with_admin, synthetic_host};
use crate::process;
use crate::stats::{Samples, versus};

/// `virsh domstats --raw --state --cpu-total --balloon --block --interface
/// --vcpu` as one host prints it for `names`, at `round`.
fn domstats_text(names: &[String], round: u64) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        let t = round * 30 + i as u64;
        out.push_str(&format!(
            "Domain: '{name}'\n  state.state=1\n  state.reason=1\n  cpu.time={}\n  cpu.user=1\n  cpu.system=1\n  \
             balloon.current=1048576\n  balloon.maximum=1048576\n  balloon.rss={}\n  vcpu.current=2\n  vcpu.maximum=2\n  \
             vcpu.0.state=1\n  vcpu.0.time=1\n  vcpu.1.state=1\n  vcpu.1.time=1\n  net.count=1\n  net.0.name=vnet{i}\n  \
             net.0.rx.bytes={}\n  net.0.rx.pkts=1\n  net.0.tx.bytes={}\n  net.0.tx.pkts=1\n  block.count=1\n  block.0.name=vda\n  \
             block.0.rd.bytes={}\n  block.0.rd.reqs=1\n  block.0.wr.bytes={}\n  block.0.wr.reqs=1\n\n",
            t * 300_000_000,
            500_000 + i,
            t * 2000,
            t * 1000,
            t * 8192,
            t * 4096,
        ));
    }
    out
}

pub async fn run(hosts: usize, per_host: usize, rounds: u64) -> anyhow::Result<()> {
    println!(
        "== Usage sampling at {} VMs ({hosts} hosts × {per_host}), in process",
        hosts * per_host
    );
    let dir = tempfile::tempdir()?;
    let (app, _token, owner) = app_with_admin(dir.path()).await?;
    let mut fleet = Vec::with_capacity(hosts);
    for h in 0..hosts {
        let (host, vms) = synthetic_host(owner, h, per_host);
        let names: Vec<String> = vms.iter().map(|v| v.name.clone()).collect();
        let uuids: Vec<_> = vms.iter().map(|v| v.uuid).collect();
        app.inventory().load_synthetic(&host, vms);
        fleet.push((host, names, uuids));
    }
    let (rss_inventory, _) = process::memory_mib()?;
    let mut per_sample = Samples::default();
    let start = Instant::now();
    let cpu_start = process::cpu_ms()?;
    for round in 0..rounds {
        for (took, _) in take_round(&app, &fleet, start, round) {
            per_sample.push(took);
        }
    }
    // CPU time is counted in scheduler ticks: over the whole run, per sample.
    let cpu_per_sample = (process::cpu_ms()? - cpu_start) / per_sample.len() as f64;
    let (rss_sampled, _) = process::memory_mib()?;
    let history = rss_sampled - rss_inventory;
    let bytes = app.metrics().shape().series_bytes();
    println!(
        "   RSS with the inventory {rss_inventory:.1} MiB; with every history {rss_sampled:.1} MiB \
         (+{history:.1} MiB, {:.2} KiB per VM; the rings alone {bytes} B per VM or host)",
        history * 1024.0 / (hosts * per_host) as f64
    );
    println!(
        "   per host sample (parse 100 domains, points, rings, event): wall {}; CPU {cpu_per_sample:.3} ms on average",
        per_sample.line()
    );
    let share = cpu_per_sample * hosts as f64 / 30_000.0 * 100.0;
    println!(
        "   {hosts} hosts every 30 s: {} of one core",
        versus(share, 5.0, "%")
    );
    println!(
        "   whole process RSS with sampling: {}",
        versus(rss_sampled, 150.0, "MiB")
    );
    // As many rounds again, each sample passed on as it is taken (after
    // the memory figures: the other replica's histories are a second
    // copy of every ring).
    let mut elsewhere = Relayed::new();
    for round in rounds..2 * rounds {
        for (_, sample) in take_round(&app, &fleet, start, round) {
            elsewhere.pass_on(sample, owner)?;
        }
    }
    elsewhere.report();
    Ok(())
}

/// Every host's sample of `round`, as the service takes it: parsed,
/// turned into points, kept and announced; each with the time it took.
fn take_round(
    app: &overvisor_control::App,
    fleet: &[(Host, Vec<String>, Vec<Uuid>)],
    start: Instant,
    round: u64,
) -> Vec<(std::time::Duration, Sample)> {
    let unix = 1_800_000_000 + round * 30;
    let at = start + Duration::from_secs(round * 30);
    fleet
        .iter()
        .map(|(host, names, uuids)| {
            let text = domstats_text(names, round);
            let began = std::time::Instant::now();
            let stats = parse::domstats(&text);
            let vms = names
                .iter()
                .zip(uuids)
                .map(|(name, uuid)| parse::vm_reading(*uuid, &stats[name]))
                .collect();
            let reading = HostReading {
                cpu: Some(CpuReading::Time {
                    busy_ns: round * 10_000_000_000,
                    total_ns: Some(round * 60_000_000_000),
                }),
                cpus: Some(2),
                memory_total_bytes: Some(256 << 30),
                memory_used_bytes: Some(100 << 30),
                vms,
            };
            let sample = app.metrics().record(host, unix, at, reading);
            app.events().publish(host.owner, sample.event());
            (began.elapsed(), sample)
        })
        .collect()
}

/// The other replicas' side of sampling: each sample cut into
/// announcements (the owner's work), then read and kept by a replica that
/// does not own the host (each other replica's).
struct Relayed {
    elsewhere: Metrics,
    cut: Samples,
    kept: Samples,
    announcements: usize,
}

impl Relayed {
    fn new() -> Self {
        Self {
            elsewhere: Metrics::new(&MetricsSettings::default()),
            cut: Samples::default(),
            kept: Samples::default(),
            announcements: 0,
        }
    }

    fn pass_on(&mut self, sample: Sample, owner: UserId) -> anyhow::Result<()> {
        let began = std::time::Instant::now();
        // The envelope takes about 100 bytes of an announcement.
        let parts = sample
            .parts(MAX_ANNOUNCEMENT - 128)
            .ok_or_else(|| anyhow::anyhow!("a VM larger than an announcement"))?;
        let payloads = parts
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        self.cut.push(began.elapsed());
        self.announcements += payloads.len();
        let began = std::time::Instant::now();
        for payload in &payloads {
            let part: Sample = serde_json::from_str(payload)?;
            self.elsewhere.record_relayed(owner, &part);
            std::hint::black_box(part.event());
        }
        self.kept.push(began.elapsed());
        Ok(())
    }

    fn report(&self) {
        println!(
            "   passed on to other replicas: {:.1} announcements per host sample; cut and written by the owner {}; \
             read and kept by each other replica {}",
            self.announcements as f64 / self.cut.len().max(1) as f64,
            self.cut.line(),
            self.kept.line()
        );
    }
}
