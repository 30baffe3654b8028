//! Metric 5: cold start to ready — the built `overvisor serve` binary on a
//! fresh data directory, timed from spawn until `/readyz` answers 200. The
//! first start on a directory also generates the master key and hashes the
//! first administrator's password; later starts only open and migrate.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::stats::{Samples, versus};

/// The `overvisor` binary built next to this one, unless `explicit`.
pub fn locate(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("overvisor"),
    };
    if !path.is_file() {
        bail!(
            "no overvisor binary at {}: build it first (cargo build --release -p overvisor) or pass --overvisor PATH",
            path.display()
        );
    }
    Ok(path)
}

/// A port free right now (the service binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills the service on drop, so a failed run leaves nothing behind.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `serve` on `data_dir` and returns the time until `/readyz` says 200.
async fn start_once(binary: &Path, data_dir: &Path) -> anyhow::Result<Duration> {
    let api_port = free_port()?;
    let ui_port = free_port()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let url = format!("http://127.0.0.1:{api_port}/readyz");
    let started = Instant::now();
    let mut service = Service(
        Command::new(binary)
            .arg("serve")
            .env("OVERVISOR_DATA_DIR", data_dir)
            .env("OVERVISOR_UI_BIND", format!("127.0.0.1:{ui_port}"))
            .env("OVERVISOR_API_BIND", format!("127.0.0.1:{api_port}"))
            .env("OVERVISOR_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?,
    );
    loop {
        if let Ok(resp) = client.get(&url).send().await
            && resp.status().is_success()
        {
            return Ok(started.elapsed());
        }
        if let Some(status) = service.0.try_wait()? {
            bail!("overvisor serve exited with {status} before it was ready");
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("overvisor serve was not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
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
