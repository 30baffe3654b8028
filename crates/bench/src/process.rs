//! What this process costs, read from /proc: resident memory and CPU time
//! (summed over every thread, in nanoseconds, so short runs are measurable).

/// `VmRSS` and `VmHWM` (peak) in MiB.
pub fn memory_mib() -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no {name}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time used by all live threads of this process so far, in ms.
pub fn cpu_ms() -> anyhow::Result<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
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
