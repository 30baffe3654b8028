//! What a process costs, read from /proc: resident memory and CPU time
//! (summed over every thread, in nanoseconds, so short runs are measurable)
//! — of this process, or of the service the fleet mode started — and how
//! many SSH connections a process holds.

use std::collections::HashSet;

use anyhow::Context;

/// Which process to read: `self` or a pid.
#[derive(Debug, Clone, Copy)]
pub enum Proc {
    This,
    Pid(u32),
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::This => "/proc/self".into(),
            Proc::Pid(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Resident memory of a process, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: f64,
    /// `VmHWM`: the peak resident size so far.
    pub hwm: f64,
    /// `RssAnon`: the resident part that is not a file's pages (the heap,
    /// stacks). Pages of the binary that were run count in `rss` only;
    /// they come and go with the page cache and are not the process's
    /// own growth.
    pub anon: f64,
}

/// `VmRSS`, `VmHWM` and `RssAnon` of `proc`.
pub fn memory(proc: Proc) -> anyhow::Result<Memory> {
    let path = format!("{}/status", proc.dir());
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{path} has no {name}"))?;
        Ok(kib / 1024.0)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:")?,
    })
}

/// `VmRSS` and `VmHWM` (peak) of this process in MiB.
pub fn memory_mib() -> anyhow::Result<(f64, f64)> {
    let m = memory(Proc::This)?;
    Ok((m.rss, m.hwm))
}

/// CPU time used by all live threads of `proc` so far, in ms.
pub fn cpu_ms_of(proc: Proc) -> anyhow::Result<f64> {
    let mut ns: u64 = 0;
    let tasks = format!("{}/task", proc.dir());
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between listing and reading.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 / 1e6)
}

/// CPU time used by all live threads of this process so far, in ms.
pub fn cpu_ms() -> anyhow::Result<f64> {
    cpu_ms_of(Proc::This)
}

/// CPU time the whole machine spent busy (user, nice, system, irq,
/// softirq, steal: not idle or iowait) since boot, in ms, from /proc/stat.
/// Over a phase it shows what the service's own CPU is a part of: the lab
/// hosts (sshd, virsh, libvirtd) share this machine's cores.
pub fn machine_busy_ms() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let cpu = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("/proc/stat has no cpu line")?;
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    // USER_HZ is 100 on Linux.
    Ok(busy as f64 * 10.0)
}

/// Established TCP connections to port `remote_port` that `pid` itself
/// holds: its socket inodes (from its fds) matched against the kernel's
/// TCP tables, so other processes' connections are not counted.
pub fn established_to_port(pid: u32, remote_port: u16) -> anyhow::Result<usize> {
    let fds = format!("/proc/{pid}/fd");
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(&fds).with_context(|| format!("reading {fds}"))? {
        // An fd may close between listing and reading.
        let Ok(target) = std::fs::read_link(fd?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut count = 0;
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        count += count_established(&text, remote_port, &inodes);
    }
    Ok(count)
}

/// Rows of a /proc/net/tcp table in state ESTABLISHED (01) to
/// `remote_port` whose inode is in `inodes`.
fn count_established(table: &str, remote_port: u16, inodes: &HashSet<String>) -> usize {
    let port = format!(":{remote_port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            cols.len() > 9
                && cols[2].ends_with(&port)
                && cols[3] == "01"
                && inodes.contains(cols[9])
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_our_established_ssh_sockets() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 010011AC:C350 020011AC:0016 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1\n\
   1: 010011AC:C351 030011AC:0016 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n\
   2: 010011AC:C352 040011AC:0016 06 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1\n\
   3: 0100007F:0016 0100007F:C353 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0 20 4 30 10 -1\n";
        let ours: HashSet<String> = ["111", "333", "444"].map(String::from).into();
        // 222 is someone else's, 333 is TIME_WAIT, 444 is from port 22.
        assert_eq!(count_established(table, 22, &ours), 1);
    }
}
