//! Shared lab plumbing of metrics 2–4 and the fleet mode: loading the lab
//! (a missing lab is an error, never a skip), a booted guest of our own,
//! warm SSH drivers, and defining many domains at once in one root virsh
//! session reading commands on stdin (a process per define costs 20–270 ms;
//! a line in one session ~2 ms).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use overvisor_hv::{ClientKey, HostKeyPolicy, LibvirtDriver, SshConfig, SshSession};
use overvisor_model::host::HostKeyFingerprint;
use overvisor_testkit::{Lab, LabHost, TestGuest};

/// The lab, or an error that says how to bring it up.
pub fn load() -> anyhow::Result<Lab> {
    try_load()
        .map_err(|why| anyhow!("{why}\n(bench --no-lab runs only the metrics that need no lab)"))
}

/// How to bring up the fleet mode's own lab, for its error messages.
const FLEET_HOWTO: &str = "The fleet mode needs its own lab instance beside the test lab. As root:
  OVERVISOR_LAB_INSTANCE=2 scripts/lab up --hosts 200
  OVERVISOR_LAB_INSTANCE=2 scripts/lab populate 100
  OVERVISOR_LAB_INSTANCE=2 cargo run --release -p overvisor-bench -- --fleet
  OVERVISOR_LAB_INSTANCE=2 scripts/lab down";

/// The fleet mode's lab: a lab instance of its own (never the default lab
/// the test suite uses), or an error that says how to bring one up.
pub fn load_fleet() -> anyhow::Result<Lab> {
    let set = |var| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if !set("OVERVISOR_LAB_INSTANCE") && !set("OVERVISOR_LAB_DIR") {
        bail!("no lab instance selected (OVERVISOR_LAB_INSTANCE).\n{FLEET_HOWTO}");
    }
    let lab = try_load().map_err(|why| anyhow!("{why}\n{FLEET_HOWTO}"))?;
    if lab.instance.is_none() {
        bail!(
            "{} is the default lab, which the test suite uses.\n{FLEET_HOWTO}",
            lab.lab_dir.display()
        );
    }
    Ok(lab)
}

/// `Lab::load`, whose panic (it serves tests) becomes the error text.
fn try_load() -> Result<Lab, String> {
    // The default hook would print the message twice.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let lab = std::panic::catch_unwind(Lab::load);
    std::panic::set_hook(hook);
    lab.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown reason".into())
    })
}

/// Defines and starts a tiny guest `name` on `host` as root and waits
/// until it is up. The guard destroys and undefines it when dropped; a
/// failure half way drops it too, so nothing is left running.
pub async fn boot_guest(lab: &Lab, host: &LabHost, name: &str) -> anyhow::Result<TestGuest> {
    let (lab, host, name) = (lab.clone(), host.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        let guest = lab.define_guest(&host, &name);
        host.virsh(&["start", &name]);
        guest.wait_ready(1, Duration::from_secs(60));
        guest
    })
    .await
    .map_err(|e| anyhow!("booting a guest failed (see the message above): {e}"))
}

/// A driver on a warm (already connected) SSH session to `host`.
pub async fn driver(lab: &Lab, host: &LabHost) -> anyhow::Result<LibvirtDriver> {
    let ssh = session(
        lab,
        &host.name,
        (&host.address, host.port, &host.user),
        &host.host_key_fingerprint,
    )
    .await?;
    Ok(LibvirtDriver::new(ssh, host.uri.clone()))
}

/// A connected SSH session to a lab machine (`address`, `port`, `user`),
/// pinned to `fingerprint`, logging in with the lab's key.
pub async fn session(
    lab: &Lab,
    name: &str,
    (address, port, user): (&str, u16, &str),
    fingerprint: &str,
) -> anyhow::Result<SshSession> {
    let key = ClientKey::from_openssh(&lab.client_key_pem())?;
    let pinned = HostKeyFingerprint::parse(fingerprint)
        .map_err(|e| anyhow!("lab fingerprint of {name}: {e}"))?;
    let mut cfg = SshConfig::new(address, port, user, key, HostKeyPolicy::Pinned(pinned));
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.command_timeout = Duration::from_secs(30);
    SshSession::connect(cfg)
        .await
        .with_context(|| format!("connecting to lab host {name}"))
}

/// Runs `commands` (one virsh command a line) in one root virsh session
/// inside `host`; returns how many lines virsh reported errors for.
fn virsh_batch(host: &LabHost, commands: &str) -> anyhow::Result<usize> {
    let pid = std::fs::read_to_string(&host.libvirtd_pid_file)
        .with_context(|| format!("host {} has no libvirtd pid file", host.name))?;
    let mut child = Command::new("nsenter")
        .args(["-t", pid.trim(), "-m", "-n", "-u", "virsh", "-c", &host.uri])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nsenter")?;
    child
        .stdin
        .take()
        .context("virsh stdin")?
        .write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .count())
}

/// Domains this run defined on one host; undefined again on drop.
pub struct BulkDomains {
    host: LabHost,
    names: Vec<String>,
}

impl BulkDomains {
    /// Defines `count` (inactive) tiny-guest domains named `prefix-NNN`.
    pub fn define(lab: &Lab, host: &LabHost, prefix: &str, count: usize) -> anyhow::Result<Self> {
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:03}")).collect();
        let mut commands = String::new();
        for name in &names {
            let path = host.xml_dir.join(format!("{name}.xml"));
            std::fs::write(&path, lab.domain_xml(host, name))
                .with_context(|| format!("writing {}", path.display()))?;
            commands.push_str(&format!("define {}\n", path.display()));
        }
        // Own them before defining, so even a partial define is cleaned up.
        let domains = Self {
            host: host.clone(),
            names,
        };
        let errors = virsh_batch(host, &commands)?;
        if errors > 0 {
            bail!("{errors} of {count} defines failed on {}", host.name);
        }
        Ok(domains)
    }
}

impl Drop for BulkDomains {
    fn drop(&mut self) {
        let commands: String = self
            .names
            .iter()
            .map(|n| format!("undefine {n}\n"))
            .collect();
        match virsh_batch(&self.host, &commands) {
            Ok(0) => {}
            Ok(n) => eprintln!("warning: {n} undefines failed on {}", self.host.name),
            Err(e) => eprintln!("warning: cleanup on {} failed: {e}", self.host.name),
        }
        for name in &self.names {
            let _ = std::fs::remove_file(self.host.xml_dir.join(format!("{name}.xml")));
        }
    }
}
