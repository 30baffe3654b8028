//! The real `overvisor serve` binary as the benchmarks run it: on free
//! loopback ports and a data directory of our choosing, killed when the
//! handle is dropped so a failed run leaves no process behind. The cold
//! start times a bare spawn; the fleet mode also needs the administrator's
//! API key from the first-start banner and the service's log.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

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
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How to start the service.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub data_dir: &'a Path,
    /// `OVERVISOR_LOG` filter.
    pub log_filter: &'a str,
    /// Where its log (stderr) goes; `None` discards it.
    pub log_file: Option<&'a Path>,
    /// Read the first-start banner for the administrator's API key.
    pub read_banner: bool,
    /// Further settings (`OVERVISOR_…` variables).
    pub env: &'a [(&'a str, &'a str)],
}

/// A running service; killed (SIGKILL) and reaped on drop.
pub struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT` of the API listener.
    pub api: String,
    /// ... and of the portal's.
    pub ui: String,
    /// The bootstrap administrator's API key, when the banner was read and
    /// the data directory was fresh.
    banner_key: Option<mpsc::Receiver<String>>,
}

impl Service {
    pub fn spawn(launch: &Launch<'_>) -> anyhow::Result<Self> {
        let api_port = free_port()?;
        let ui_port = free_port()?;
        let stderr = match launch.log_file {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        let mut child = Command::new(launch.binary)
            .arg("serve")
            .env("OVERVISOR_DATA_DIR", launch.data_dir)
            .env("OVERVISOR_UI_BIND", format!("127.0.0.1:{ui_port}"))
            .env("OVERVISOR_API_BIND", format!("127.0.0.1:{api_port}"))
            .env("OVERVISOR_LOG", launch.log_filter)
            .envs(launch.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(if launch.read_banner {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", launch.binary.display()))?;
        let banner_key = child.stdout.take().map(read_banner);
        Ok(Self {
            child,
            api: format!("http://127.0.0.1:{api_port}"),
            ui: format!("http://127.0.0.1:{ui_port}"),
            banner_key,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` every 2 ms until it answers 200; returns how long
    /// that took from `since`. The client is made by the caller, before
    /// the clock starts (building one costs milliseconds).
    pub async fn wait_ready(
        &mut self,
        client: &reqwest::Client,
        since: Instant,
    ) -> anyhow::Result<Duration> {
        let url = format!("{}/readyz", self.api);
        loop {
            if let Ok(resp) = client.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(since.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("overvisor serve exited with {status} before it was ready");
            }
            if since.elapsed() > Duration::from_secs(30) {
                bail!("overvisor serve was not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The administrator's API key from the first-start banner.
    pub fn admin_key(&self, timeout: Duration) -> anyhow::Result<String> {
        self.banner_key
            .as_ref()
            .context("the banner was not read")?
            .recv_timeout(timeout)
            .context("no API key in the first-start banner (was the data directory fresh?)")
    }

    /// Asks for a graceful shutdown (SIGTERM) and waits up to `timeout`.
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("overvisor serve did not stop within {timeout:?} of SIGTERM")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drains the service's stdout on a thread (a full pipe would block it)
/// and hands over the API key line of the banner. The key is a secret: it
/// is passed on, never printed.
fn read_banner(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(key) = line.trim().strip_prefix("API key:") {
                let _ = tx.send(key.trim().to_owned());
            }
        }
    });
    rx
}

/// The tail of a log file, for an error message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The service on a fresh data directory under `dir`, ready, as the
/// administrator, with the lab `host` registered: the service, an API
/// client and the host's id.
pub async fn start_with_host(
    binary: &Path,
    dir: &Path,
    lab: &overvisor_testkit::Lab,
    host: &overvisor_testkit::LabHost,
) -> anyhow::Result<(Service, crate::fleet::api::Api, String)> {
    let (service, api, mut ids) =
        start_with_hosts(binary, dir, lab, std::slice::from_ref(host)).await?;
    let id = ids.pop().context("no host id")?;
    Ok((service, api, id))
}

/// [`start_with_host`] for several hosts: their ids in the same order.
pub async fn start_with_hosts(
    binary: &Path,
    dir: &Path,
    lab: &overvisor_testkit::Lab,
    hosts: &[overvisor_testkit::LabHost],
) -> anyhow::Result<(Service, crate::fleet::api::Api, Vec<String>)> {
    let data = dir.join("data");
    let (service, api) = start(&Launch {
        binary,
        data_dir: &data,
        log_filter: "warn",
        log_file: None,
        read_banner: true,
        env: &[],
    })
    .await?;
    let ids = register_hosts(&api, lab, hosts).await?;
    Ok((service, api, ids))
}

/// Spawns a first start of the service, waits until it is ready, and
/// gives an API client with the administrator's key from its banner.
pub async fn start(launch: &Launch<'_>) -> anyhow::Result<(Service, crate::fleet::api::Api)> {
    let mut service = Service::spawn(launch)?;
    service
        .wait_ready(&reqwest::Client::new(), Instant::now())
        .await?;
    let api =
        crate::fleet::api::Api::new(&service.api, &service.admin_key(Duration::from_secs(10))?)?;
    Ok((service, api))
}

/// Registers lab `hosts` through the API; their ids in the same order.
pub async fn register_hosts(
    api: &crate::fleet::api::Api,
    lab: &overvisor_testkit::Lab,
    hosts: &[overvisor_testkit::LabHost],
) -> anyhow::Result<Vec<String>> {
    crate::fleet::register(api, lab, hosts).await?;
    let listed = api.get("/api/v1/hosts").await?;
    let id_of = |name: &str| {
        listed
            .as_array()
            .and_then(|all| all.iter().find(|h| h["name"] == name))
            .and_then(|h| h["id"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("host {name} is not listed"))
    };
    hosts.iter().map(|h| id_of(&h.name)).collect()
}
