//! Shared lab plumbing of metrics 2–4: loading the lab (a missing lab is an
//! error, never a skip), warm SSH drivers, and defining many domains at
//! once in one root virsh session reading commands on stdin (a process per
//! define costs 20–270 ms; a line in one session ~2 ms).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use overvisor_hv::{ClientKey, HostKeyPolicy, LibvirtDriver, SshConfig, SshSession};
use overvisor_model::host::HostKeyFingerprint;
use overvisor_testkit::{Lab, LabHost};

/// The lab, or an error that says how to bring it up.
pub fn load() -> anyhow::Result<Lab> {
    // `Lab::load` panics with instructions (it serves tests); turn that into
    // an error here. The default hook would print the message twice.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let lab = std::panic::catch_unwind(Lab::load);
    std::panic::set_hook(hook);
    lab.map_err(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown reason".into());
        anyhow!("{why}\n(bench --no-lab runs only the metrics that need no lab)")
    })
}

/// A driver on a warm (already connected) SSH session to `host`.
pub async fn driver(lab: &Lab, host: &LabHost) -> anyhow::Result<LibvirtDriver> {
    let key = ClientKey::from_openssh(&lab.client_key_pem())?;
    let pinned = HostKeyFingerprint::parse(&host.host_key_fingerprint)
        .map_err(|e| anyhow!("lab fingerprint of {}: {e}", host.name))?;
    let mut cfg = SshConfig::new(
        host.address.clone(),
        host.port,
        host.user.clone(),
        key,
        HostKeyPolicy::Pinned(pinned),
    );
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.command_timeout = Duration::from_secs(30);
    let ssh = SshSession::connect(cfg)
        .await
        .with_context(|| format!("connecting to lab host {}", host.name))?;
    Ok(LibvirtDriver::new(ssh, host.uri.clone()))
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
