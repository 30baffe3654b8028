//! Metrics 2 and 3 on one running tiny guest of our own on a shared host:
//! what the driver adds over plain `virsh` (run as root inside the host),
//! and how long a host-side change takes to arrive as a `VmEvent`.
//! Suspend/resume is the cheapest real action and leaves the guest as it
//! was; nothing else on the host is touched.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures::StreamExt;
use overvisor_hv::{Hypervisor, LibvirtDriver};
use overvisor_model::vm::{VmEventKind, VmName};
use overvisor_testkit::{LabHost, TestGuest};

use crate::stats::{Samples, versus};

/// Root-side virsh inside the host, off the async threads; its wall time.
pub async fn root_virsh(host: &LabHost, args: &[&str]) -> anyhow::Result<Duration> {
    let host = host.clone();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        host.try_virsh(&args)
            .map_err(|e| anyhow!("virsh {args:?} on {}: {e}", host.name))?;
        Ok(t.elapsed())
    })
    .await?
}

/// Root-side `virsh VERB NAME` inside `host`, started now off the async
/// threads; resolves to the instant virsh exited.
pub fn spawn_virsh(
    host: &LabHost,
    verb: &'static str,
    name: &str,
) -> tokio::task::JoinHandle<anyhow::Result<Instant>> {
    let (host, name) = (host.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        host.try_virsh(&[verb, &name])
            .map(|_| Instant::now())
            .map_err(|e| anyhow!("virsh {verb} {name} on {}: {e}", host.name))
    })
}

/// `arrived - exited` in ms; negative when the event overtook the exit of
/// the virsh that caused it.
pub fn signed_ms(arrived: Instant, exited: Instant) -> f64 {
    if arrived >= exited {
        (arrived - exited).as_secs_f64() * 1000.0
    } else {
        -(exited - arrived).as_secs_f64() * 1000.0
    }
}

/// Metric 2: driver vs. root virsh, interleaved so both see the same load.
pub async fn overhead(
    driver: &LibvirtDriver,
    guest: &TestGuest,
    runs: usize,
) -> anyhow::Result<()> {
    println!(
        "== 2. Action overhead over plain virsh on a warm SSH channel ({}, {runs} runs each)",
        guest.host.name
    );
    let vm = VmName::parse(&guest.name).map_err(|e| anyhow!("{e}"))?;
    let host = &guest.host;
    // Warm the channel path (and virsh's own caches) first.
    for _ in 0..3 {
        driver.vm_state(&vm).await?;
        root_virsh(host, &["domstate", &guest.name]).await?;
    }
    let (mut ours_state, mut root_state) = (Samples::default(), Samples::default());
    let (mut ours_act, mut root_act) = (Samples::default(), Samples::default());
    for _ in 0..runs {
        let t = Instant::now();
        driver.vm_state(&vm).await?;
        ours_state.push(t.elapsed());
        root_state.push(root_virsh(host, &["domstate", &guest.name]).await?);

        let t = Instant::now();
        driver.suspend(&vm).await?;
        ours_act.push(t.elapsed());
        let t = Instant::now();
        driver.resume(&vm).await?;
        ours_act.push(t.elapsed());
        root_act.push(root_virsh(host, &["suspend", &guest.name]).await?);
        root_act.push(root_virsh(host, &["resume", &guest.name]).await?);
    }
    println!("   driver vm_state (domstate)   {}", ours_state.line());
    println!("   root virsh domstate          {}", root_state.line());
    println!("   driver suspend/resume        {}", ours_act.line());
    println!("   root virsh suspend/resume    {}", root_act.line());
    let state_over = ours_state.median() - root_state.median();
    let act_over = ours_act.median() - root_act.median();
    println!(
        "   overhead (median difference), domstate:       {}",
        versus(state_over, 20.0, "ms")
    );
    println!(
        "   overhead (median difference), suspend/resume: {}",
        versus(act_over, 20.0, "ms")
    );
    Ok(())
}

/// Metric 3: out-of-band suspend/resume as root → `VmEvent` on the stream.
pub async fn event_latency(
    driver: &LibvirtDriver,
    guest: &TestGuest,
    runs: usize,
) -> anyhow::Result<()> {
    println!(
        "== 3. Event latency: out-of-band virsh → VmEvent on LibvirtDriver::events() ({runs} runs)"
    );
    let mut events = driver.events().await?;
    // The remote `virsh event` registers its callback a moment after it starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut from_start, mut from_exit) = (Samples::default(), Samples::default());
    for i in 0..runs * 2 {
        let (verb, kind) = if i % 2 == 0 {
            ("suspend", VmEventKind::Suspended)
        } else {
            ("resume", VmEventKind::Resumed)
        };
        let started = Instant::now();
        let command = spawn_virsh(&guest.host, verb, &guest.name);
        let arrived = loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .with_context(|| format!("no {kind:?} event within 10 s"))?
                .context("the event stream ended")??;
            if ev.vm == guest.name && ev.kind == kind {
                break Instant::now();
            }
        };
        let exited = command.await??;
        from_start.push(arrived - started);
        from_exit.push_ms(signed_ms(arrived, exited));
    }
    println!("   from virsh start to event    {}", from_start.line());
    println!("   from virsh exit to event     {}", from_exit.line());
    println!(
        "   p95 (from start) {}",
        versus(from_start.quantile(0.95), 100.0, "ms")
    );
    Ok(())
}
