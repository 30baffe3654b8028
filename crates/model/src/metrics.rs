//! Usage figures of hosts and VMs: what a driver reads from a host
//! ([`HostReading`], cumulative counters as the host keeps them) and what
//! the control plane keeps and serves ([`Point`], rates over an interval).
//!
//! Counters stay cumulative up to the control plane so a driver needs no
//! memory between two readings: the rate is the difference of two readings
//! over the time between them, and a counter that went backwards (a VM
//! restarted) simply gives no rate for that interval.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// How busy a CPU (a VM's vCPUs, a host's logical CPUs) has been.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CpuReading {
    /// Cumulative busy time and, for a host, cumulative total time, in
    /// nanoseconds. A VM's capacity is its vCPUs × wall time instead.
    Time { busy_ns: u64, total_ns: Option<u64> },
    /// A percentage the host computed over its own window (Hyper-V).
    Percent(f64),
}

/// One VM's counters at one moment. `None`: the host does not report it
/// (a VM that is off reports almost nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct VmReading {
    pub uuid: Uuid,
    /// Whether the VM runs; a VM that does not has no usage to show.
    pub running: bool,
    pub vcpus: Option<u32>,
    pub cpu: Option<CpuReading>,
    pub memory_used_bytes: Option<u64>,
    pub disk_read_bytes: Option<u64>,
    pub disk_write_bytes: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
}

impl VmReading {
    /// A VM that is known but reports nothing (e.g. it is off).
    pub fn idle(uuid: Uuid) -> Self {
        Self {
            uuid,
            running: false,
            vcpus: None,
            cpu: None,
            memory_used_bytes: None,
            disk_read_bytes: None,
            disk_write_bytes: None,
            net_rx_bytes: None,
            net_tx_bytes: None,
        }
    }
}

/// One host's counters, and those of all its VMs, read together.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReading {
    pub cpu: Option<CpuReading>,
    /// Logical CPUs, where the host says (else counted from CPU time).
    pub cpus: Option<u32>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub vms: Vec<VmReading>,
}

/// The series every host and VM has, in the order [`Point::values`] holds
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Series {
    /// Percent of the capacity: a VM's vCPUs, a host's logical CPUs.
    CpuPercent,
    MemoryUsedBytes,
    DiskReadBytesPerSec,
    DiskWriteBytesPerSec,
    NetRxBytesPerSec,
    NetTxBytesPerSec,
}

impl Series {
    pub const ALL: [Series; 6] = [
        Series::CpuPercent,
        Series::MemoryUsedBytes,
        Series::DiskReadBytesPerSec,
        Series::DiskWriteBytesPerSec,
        Series::NetRxBytesPerSec,
        Series::NetTxBytesPerSec,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Series::CpuPercent => "cpu_percent",
            Series::MemoryUsedBytes => "memory_used_bytes",
            Series::DiskReadBytesPerSec => "disk_read_bytes_per_sec",
            Series::DiskWriteBytesPerSec => "disk_write_bytes_per_sec",
            Series::NetRxBytesPerSec => "net_rx_bytes_per_sec",
            Series::NetTxBytesPerSec => "net_tx_bytes_per_sec",
        }
    }
}

/// How many series a [`Point`] holds.
pub const SERIES: usize = Series::ALL.len();

/// The figures of one interval, in [`Series::ALL`] order; `None` where the
/// host said nothing (a gap in the chart, not a zero).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point {
    pub values: [Option<f64>; SERIES],
}

impl Point {
    pub fn get(&self, series: Series) -> Option<f64> {
        self.values[series as usize]
    }

    pub fn set(&mut self, series: Series, value: Option<f64>) {
        self.values[series as usize] = value;
    }

    pub fn is_empty(&self) -> bool {
        self.values.iter().all(Option::is_none)
    }
}

/// Which stretch of history a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum Range {
    /// The last hour at the sampling interval.
    #[default]
    #[serde(rename = "1h")]
    Hour,
    /// The last day at the coarse interval.
    #[serde(rename = "24h")]
    Day,
}

impl Range {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1h" => Some(Self::Hour),
            "24h" => Some(Self::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_index_matches_all() {
        for (i, s) in Series::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{s:?}");
        }
        let mut p = Point::default();
        assert!(p.is_empty());
        p.set(Series::NetTxBytesPerSec, Some(3.0));
        assert_eq!(p.get(Series::NetTxBytesPerSec), Some(3.0));
        assert_eq!(p.values[5], Some(3.0));
        assert!(!p.is_empty());
    }

    #[test]
    fn range_parses_only_its_names() {
        assert_eq!(Range::parse("1h"), Some(Range::Hour));
        assert_eq!(Range::parse("24h"), Some(Range::Day));
        assert_eq!(Range::parse("7d"), None);
        assert_eq!(Range::Day.as_str(), "24h");
    }
}
