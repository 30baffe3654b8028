//! Points from two readings of cumulative counters.

use std::time::Duration;

use overvisor_model::metrics::{CpuReading, HostReading, Point, Series, VmReading};

/// What is kept of a VM's last reading to compute the next point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VmCounters {
    cpu: Option<CpuReading>,
    io: [Option<u64>; 4],
}

impl VmCounters {
    pub fn of(r: &VmReading) -> Self {
        Self {
            cpu: r.cpu,
            io: [
                r.disk_read_bytes,
                r.disk_write_bytes,
                r.net_rx_bytes,
                r.net_tx_bytes,
            ],
        }
    }
}

const IO_SERIES: [Series; 4] = [
    Series::DiskReadBytesPerSec,
    Series::DiskWriteBytesPerSec,
    Series::NetRxBytesPerSec,
    Series::NetTxBytesPerSec,
];

/// Per second, from a counter that grew from `before` to `now`; none when
/// it went backwards (the VM restarted and its counters with it).
fn rate(before: Option<u64>, now: Option<u64>, elapsed: Duration) -> Option<f64> {
    let (before, now) = (before?, now?);
    let secs = elapsed.as_secs_f64();
    (now >= before && secs > 0.0).then(|| (now - before) as f64 / secs)
}

/// Busy share of the capacity, in percent, clamped to 0–100 (clocks on
/// either side are not exact).
fn busy_percent(busy: u64, capacity: f64) -> Option<f64> {
    (capacity > 0.0).then(|| (busy as f64 / capacity * 100.0).clamp(0.0, 100.0))
}

fn cpu_percent(
    before: Option<CpuReading>,
    now: Option<CpuReading>,
    capacity_ns: f64,
) -> Option<f64> {
    match (before, now?) {
        (_, CpuReading::Percent(p)) => Some(p.clamp(0.0, 100.0)),
        (
            Some(CpuReading::Time {
                busy_ns: b0,
                total_ns: t0,
            }),
            CpuReading::Time {
                busy_ns: b1,
                total_ns: t1,
            },
        ) => {
            let busy = b1.checked_sub(b0)?;
            match (t0, t1) {
                (Some(t0), Some(t1)) => busy_percent(busy, t1.checked_sub(t0)? as f64),
                _ => busy_percent(busy, capacity_ns),
            }
        }
        _ => None,
    }
}

/// A VM's point for the interval `elapsed` long that ends with `now`.
/// `before` is its previous reading, if there was one in time.
pub fn vm_point(before: Option<&VmCounters>, now: &VmReading, elapsed: Duration) -> Point {
    let mut p = Point::default();
    if !now.running {
        return p;
    }
    let vcpus = f64::from(now.vcpus.unwrap_or(1).max(1));
    let capacity = elapsed.as_nanos() as f64 * vcpus;
    p.set(
        Series::CpuPercent,
        cpu_percent(before.and_then(|b| b.cpu), now.cpu, capacity),
    );
    p.set(
        Series::MemoryUsedBytes,
        now.memory_used_bytes.map(|b| b as f64),
    );
    let io = VmCounters::of(now).io;
    for (i, series) in IO_SERIES.iter().enumerate() {
        p.set(*series, rate(before.and_then(|b| b.io[i]), io[i], elapsed));
    }
    p
}

/// The host's own CPU and memory over the interval; disks and network are
/// the sums of its VMs' (`vms`), which is what the host does for them.
pub fn host_point(before: Option<CpuReading>, now: &HostReading, vms: &[Point]) -> Point {
    let mut p = Point::default();
    p.set(Series::CpuPercent, cpu_percent(before, now.cpu, 0.0));
    p.set(
        Series::MemoryUsedBytes,
        now.memory_used_bytes.map(|b| b as f64),
    );
    for series in IO_SERIES {
        let mut known = vms.iter().filter_map(|v| v.get(series)).peekable();
        if known.peek().is_some() {
            p.set(series, Some(known.sum()));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn reading(cpu_ns: u64, disk: u64) -> VmReading {
        VmReading {
            uuid: Uuid::nil(),
            running: true,
            vcpus: Some(2),
            cpu: Some(CpuReading::Time {
                busy_ns: cpu_ns,
                total_ns: None,
            }),
            memory_used_bytes: Some(1 << 20),
            disk_read_bytes: Some(disk),
            disk_write_bytes: None,
            net_rx_bytes: Some(0),
            net_tx_bytes: Some(0),
        }
    }

    #[test]
    fn vm_rates_over_the_interval() {
        let ten = Duration::from_secs(10);
        let first = reading(1_000_000_000, 1000);
        // The first reading has nothing to compare with: only gauges.
        let p = vm_point(None, &first, ten);
        assert_eq!(p.get(Series::CpuPercent), None);
        assert_eq!(p.get(Series::MemoryUsedBytes), Some(1_048_576.0));
        assert_eq!(p.get(Series::DiskReadBytesPerSec), None);
        // 5 s of CPU in 10 s on 2 vCPUs: 25 %; 10,000 bytes in 10 s.
        let second = reading(6_000_000_000, 11_000);
        let p = vm_point(Some(&VmCounters::of(&first)), &second, ten);
        assert_eq!(p.get(Series::CpuPercent), Some(25.0));
        assert_eq!(p.get(Series::DiskReadBytesPerSec), Some(1000.0));
        assert_eq!(p.get(Series::DiskWriteBytesPerSec), None);
        assert_eq!(p.get(Series::NetRxBytesPerSec), Some(0.0));
        // Restarted: counters went back, no rate rather than a huge one.
        let restarted = reading(10, 5);
        let p = vm_point(Some(&VmCounters::of(&second)), &restarted, ten);
        assert_eq!(p.get(Series::CpuPercent), None);
        assert_eq!(p.get(Series::DiskReadBytesPerSec), None);
        // Off: nothing at all.
        let mut off = restarted.clone();
        off.running = false;
        assert!(vm_point(Some(&VmCounters::of(&second)), &off, ten).is_empty());
        // A host's own percentage is taken as it is, clamped.
        let mut hv = first.clone();
        hv.cpu = Some(CpuReading::Percent(130.0));
        assert_eq!(
            vm_point(None, &hv, ten).get(Series::CpuPercent),
            Some(100.0)
        );
    }

    #[test]
    fn host_point_and_cpu_count() {
        let t = |busy, total| {
            Some(CpuReading::Time {
                busy_ns: busy,
                total_ns: Some(total),
            })
        };
        let now = HostReading {
            cpu: t(300, 1200),
            memory_total_bytes: Some(100),
            memory_used_bytes: Some(40),
            cpus: None,
            vms: Vec::new(),
        };
        let mut a = Point::default();
        a.set(Series::NetRxBytesPerSec, Some(10.0));
        let mut b = Point::default();
        b.set(Series::NetRxBytesPerSec, Some(5.0));
        let p = host_point(t(100, 200), &now, &[a, b]);
        assert_eq!(p.get(Series::CpuPercent), Some(20.0));
        assert_eq!(p.get(Series::MemoryUsedBytes), Some(40.0));
        assert_eq!(p.get(Series::NetRxBytesPerSec), Some(15.0));
        assert_eq!(p.get(Series::DiskReadBytesPerSec), None);
    }
}
