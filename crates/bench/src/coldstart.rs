//! Metric 5: cold start to ready — the built `overvisor serve` binary on a
//! fresh data directory, timed from spawn until `/readyz` answers 200. The
//! first start on a directory also generates the master key and hashes the
//! first administrator's password; later starts only open and migrate.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::service::{Launch, Service};
use crate::stats::{Samples, versus};

/// Spawns `serve` on `data_dir` and returns the time until `/readyz` says 200.
async fn start_once(binary: &Path, data_dir: &Path) -> anyhow::Result<Duration> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let started = Instant::now();
    let mut service = Service::spawn(&Launch {
        binary,
        data_dir,
        log_filter: "warn",
        log_file: None,
        read_banner: false,
        env: &[],
    })?;
    service.wait_ready(&client, started).await
}

pub async fn run(binary: &Path, runs: usize) -> anyhow::Result<()> {
    println!("== 5. Cold start to ready ({})", binary.display());
    let mut first = Samples::default();
    let mut second = Samples::default();
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        first.push(start_once(binary, &data).await?);
        second.push(start_once(binary, &data).await?);
    }
    println!(
        "   first start (fresh data dir, bootstrap) {}",
        first.line()
    );
    println!(
        "   second start (same data dir)           {}",
        second.line()
    );
    println!(
        "   first start median  {}",
        versus(first.median(), 1000.0, "ms")
    );
    println!(
        "   second start median {}",
        versus(second.median(), 1000.0, "ms")
    );
    Ok(())
}
