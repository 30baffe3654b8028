//! Metric 4: a full resync — `list_vms` on every lab host at once over kept
//! connections. The lab has five hosts, not 200; the 200-host figure is an
//! extrapolation from the control plane's own CPU per host list (the hosts
//! work in parallel, our process is the shared part), and is labelled so.

use std::time::Instant;

use overvisor_hv::{Hypervisor, LibvirtDriver};

use crate::process;
use crate::stats::{Samples, versus};

pub async fn run(drivers: &[(String, LibvirtDriver)], rounds: usize) -> anyhow::Result<()> {
    println!(
        "== 4. Full resync: list_vms on {} hosts at once over kept connections ({rounds} rounds)",
        drivers.len()
    );
    let list_all = || futures::future::try_join_all(drivers.iter().map(|(_, d)| d.list_vms()));
    let warm = list_all().await?;
    let vms: usize = warm.iter().map(Vec::len).sum();
    for ((name, _), list) in drivers.iter().zip(&warm) {
        println!("   {name}: {} VMs", list.len());
    }
    let (mut wall, mut cpu) = (Samples::default(), Samples::default());
    for _ in 0..rounds {
        let cpu_before = process::cpu_ms()?;
        let t = Instant::now();
        list_all().await?;
        wall.push(t.elapsed());
        cpu.push_ms(process::cpu_ms()? - cpu_before);
    }
    println!("   wall time, all hosts         {}", wall.line());
    println!("   our CPU per resync           {}", cpu.line());
    let per_vm_cpu = cpu.median() / vms.max(1) as f64;
    let per_host_cpu = cpu.median() / drivers.len().max(1) as f64;
    // 200 × 100 VMs: the larger of the per-host and per-VM scalings of our
    // CPU, spread over 2 cores, but never faster than one host's own answer
    // (this round's wall time). Host-side work is not on our cores.
    let extrapolated = (per_host_cpu * 200.0).max(per_vm_cpu * 20_000.0) / 2.0;
    let extrapolated = extrapolated.max(wall.median());
    println!(
        "   our CPU per host {per_host_cpu:.2} ms, per listed VM {per_vm_cpu:.4} ms ({vms} VMs)"
    );
    println!("   EXTRAPOLATED 200 hosts × 100 VMs: ~{extrapolated:.0} ms");
    println!("   extrapolated {}", versus(extrapolated, 3000.0, "ms"));
    Ok(())
}
