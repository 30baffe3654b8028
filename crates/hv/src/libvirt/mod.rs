//! The libvirt (KVM/QEMU) driver: `virsh -c <uri>` run over the host's
//! shared SSH session.
//!
//! virsh is on every libvirt host and speaks the same protocol as the C
//! API, so the control plane needs no libvirt client library and no open
//! libvirt port. Commands run under `LC_ALL=C` so error texts can be
//! classified, and only machine formats are parsed (see [`parse`]).

pub mod deploy;
pub mod parse;
mod shell;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use overvisor_model::host::HostFacts;
use overvisor_model::metrics::HostReading;
use overvisor_model::vm::{VmAction, VmEvent, VmInfo, VmName, VmState, VmSummary};
use uuid::Uuid;

use crate::driver::{HvError, HvResult, Hypervisor, VmAddresses};
use crate::quote::CommandLine;
use crate::ssh::{ExecOutput, PtyChannel, PtyOutput, SshSession, TcpTunnel};
use shell::{FixedCommand, VirshShell};

/// `list` for the inventory: every domain's UUID and name.
const LIST_COMMAND: FixedCommand = "list --all --uuid --name";
/// `domstats` for the inventory: state, memory and vCPUs of every domain.
const STATS_COMMAND: FixedCommand = "domstats --raw --state --balloon --vcpu";
/// `domstats` for usage graphs: also CPU time, disk and network counters.
const USAGE_COMMAND: FixedCommand =
    "domstats --raw --state --cpu-total --balloon --block --interface --vcpu";

/// What a host says of itself, in [`LibvirtDriver::facts`]' order.
const FACTS_COMMANDS: [FixedCommand; 5] = [
    "hostname",
    "nodeinfo",
    "nodememstats",
    "version",
    "net-list --all --name",
];

/// Whether a caller waits for the kept virsh when another call has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A list must not queue behind a slow command: it runs its own virsh.
    No,
    /// Sampling is not urgent and runs often: it waits its turn.
    Yes,
}

/// Drives one libvirt host.
#[derive(Clone)]
pub struct LibvirtDriver {
    ssh: SshSession,
    uri: String,
    /// The kept interactive virsh for inventory reads (see [`shell`]);
    /// `None` until first used and after it failed.
    shell: Arc<tokio::sync::Mutex<Option<VirshShell>>>,
    /// Whether libvirt offers KVM here, once virsh answered: it does not
    /// change while the host runs, and a deployment asks every time.
    kvm: Arc<tokio::sync::OnceCell<bool>>,
}

impl std::fmt::Debug for LibvirtDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtDriver")
            .field("ssh", &self.ssh)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl LibvirtDriver {
    /// `uri` is the libvirt URI on the host, usually `qemu:///system`.
    pub fn new(ssh: SshSession, uri: impl Into<String>) -> Self {
        Self {
            ssh,
            uri: uri.into(),
            shell: Arc::default(),
            kvm: Arc::default(),
        }
    }

    pub fn ssh(&self) -> &SshSession {
        &self.ssh
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// `env LC_ALL=C COLUMNS=4096 virsh -q -c <uri> <args…>`, every word quoted later.
    fn virsh<I, S>(&self, args: I) -> CommandLine
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.virsh_loud(["-q"]).args(args)
    }

    /// `env LC_ALL=C COLUMNS=4096 virsh <args…> -c <uri>`: without `-q`,
    /// virsh also says what it is doing (e.g. that a console is attached).
    /// `COLUMNS` is for the kept interactive virsh: without a terminal,
    /// readline takes the line to be 80 columns wide and redraws a longer
    /// command scrolled (`\r<…`) instead of echoing it, which the framing
    /// cannot read; every usage sample failed that way. Other commands
    /// ignore it.
    fn virsh_loud<I, S>(&self, args: I) -> CommandLine
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandLine::new("env")
            .args(["LC_ALL=C", "COLUMNS=4096", "virsh"])
            .args(args)
            .arg("-c")
            .arg(self.uri.clone())
    }

    /// Runs virsh and turns a failure into a typed error.
    async fn run(
        &self,
        args: &[&str],
        vm: Option<(&VmName, Option<VmAction>)>,
    ) -> HvResult<String> {
        let out = self.ssh.exec(&self.virsh(args.iter().copied())).await?;
        if out.success() {
            return Ok(out.stdout_text());
        }
        Err(classify(&out, vm))
    }

    /// Serial console of `vm` on a PTY (`virsh console --force`, so a stale
    /// session elsewhere does not block it). Write 0x1d (`^]`) to leave.
    ///
    /// Answers once virsh is attached and its terminal is raw: virsh
    /// prints its banner *before* it makes the terminal raw with
    /// `TCSAFLUSH`, so keys typed in between would be echoed by the host's
    /// terminal and then thrown away. The shell in front of virsh prints
    /// the terminal's name, and `stty -F` on it says when it is raw. What
    /// is said up to then (the name, virsh's banner, polkit's complaints)
    /// is not the guest's and is dropped; a failure to attach is an error
    /// with virsh's words.
    pub async fn console(&self, vm: &VmName, cols: u32, rows: u32) -> HvResult<PtyChannel> {
        let virsh = self.virsh_loud(Vec::<String>::new()).args([
            "console",
            "--force",
            "--domain",
            vm.as_str(),
        ]);
        let cmd = CommandLine::new("sh")
            .args(["-c", "tty && exec \"$@\"", "sh"])
            .args(virsh.words().iter().cloned());
        let mut pty = self.ssh.open_console(&cmd, cols, rows).await?;
        let deadline = self.ssh.config().command_timeout;
        let mut said = Vec::new();
        let attached = tokio::time::timeout(deadline, async {
            loop {
                match pty.read().await? {
                    PtyOutput::Data(data) => said.extend_from_slice(&data),
                    PtyOutput::Exit(_) => {
                        let text = String::from_utf8_lossy(&said);
                        let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
                        return Err(HvError::Host(format!(
                            "virsh console ended: {}",
                            last.trim()
                        )));
                    }
                }
                if let Some(rest) = after_console_banner(&said) {
                    let tty = console_tty(&said)
                        .ok_or_else(|| HvError::Parse("no terminal name before virsh's".into()))?;
                    pty.unread(rest);
                    return self.wait_raw(&tty).await;
                }
                if said.len() > CONSOLE_BANNER_MAX {
                    return Err(HvError::Parse(
                        "virsh console never said it attached".into(),
                    ));
                }
            }
        })
        .await;
        match attached {
            Ok(Ok(())) => Ok(pty),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HvError::Timeout(deadline)),
        }
    }

    /// Until the terminal `tty` on the host is in raw mode (no canonical
    /// input): virsh switches it right after its banner.
    async fn wait_raw(&self, tty: &str) -> HvResult<()> {
        let stty = CommandLine::new("stty").args(["-F", tty, "-a"]);
        loop {
            let out = self.ssh.exec(&stty).await?;
            if !out.success() {
                return Err(HvError::Host(format!(
                    "stty -F {tty}: {}",
                    out.stderr_text().trim()
                )));
            }
            if out.stdout_text().split_whitespace().any(|w| w == "-icanon") {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A tunnel to the VNC server of a running `vm`, through the SSH
    /// connection (the VNC port listens on the host's loopback).
    pub async fn vnc_tunnel(&self, vm: &VmName) -> HvResult<TcpTunnel> {
        let xml = self
            .run(&["dumpxml", "--domain", vm.as_str()], Some((vm, None)))
            .await?;
        let dom = parse::domain_xml(&xml)?;
        let g = dom
            .graphics
            .iter()
            .find(|g| g.kind == "vnc")
            .ok_or_else(|| HvError::Host(format!("VM {vm} has no VNC display")))?;
        let port = g.port.ok_or_else(|| HvError::InvalidState {
            vm: vm.to_string(),
            action: VmAction::Start,
            message: "VNC display has no port (VM not running)".into(),
        })?;
        let listen = match g.listen.as_deref() {
            None | Some("0.0.0.0") | Some("::") => "127.0.0.1".to_owned(),
            Some(l) => l.to_owned(),
        };
        Ok(self.ssh.direct_tcpip(&listen, port).await?)
    }

    /// Every domain, through the kept virsh when it is free and works,
    /// otherwise with a virsh per command.
    async fn list(&self) -> HvResult<Vec<VmSummary>> {
        let [names, stats] = self
            .fixed_commands([LIST_COMMAND, STATS_COMMAND], Wait::No)
            .await?;
        summaries(&names, &stats)
    }

    /// Usage counters of the host and every domain: four fixed commands,
    /// on the kept virsh when it works (one domstats for all domains).
    async fn sample(&self) -> HvResult<HostReading> {
        let [names, stats, cpu, mem] = self
            .fixed_commands(
                [LIST_COMMAND, USAGE_COMMAND, "nodecpustats", "nodememstats"],
                Wait::Yes,
            )
            .await?;
        let stats = parse::domstats(&stats);
        let empty = HashMap::new();
        let vms = parse::list_uuid_name(&names)?
            .into_iter()
            .map(|(uuid, name)| parse::vm_reading(uuid, stats.get(&name).unwrap_or(&empty)))
            .collect();
        let (cpu, memory_total_bytes, memory_used_bytes) = parse::host_usage(&cpu, &mem);
        Ok(HostReading {
            cpu,
            cpus: None,
            memory_total_bytes,
            memory_used_bytes,
            vms,
        })
    }

    /// Runs fixed commands on the kept virsh, else (busy and `wait` is
    /// `No`, or broken) each with its own virsh. After a timeout or with
    /// the connection gone, the other way is not tried: it would only
    /// double the wait.
    async fn fixed_commands<const N: usize>(
        &self,
        commands: [FixedCommand; N],
        wait: Wait,
    ) -> HvResult<[String; N]> {
        match self.on_shell(&commands, wait).await {
            Ok(Some(outputs)) => return Ok(outputs),
            Ok(None) => {}
            Err(e) => self.alone_after(e).await?,
        }
        let runs = commands.map(|c| async move { self.run(&split(c), None).await });
        let outputs = futures::future::try_join_all(runs).await?;
        outputs
            .try_into()
            .map_err(|_| HvError::Parse("virsh answered a different number of commands".into()))
    }

    /// `Ok(None)`: the kept virsh is busy and `wait` is `No`.
    async fn on_shell<const N: usize>(
        &self,
        commands: &[FixedCommand; N],
        wait: Wait,
    ) -> HvResult<Option<[String; N]>> {
        let mut slot = match wait {
            Wait::Yes => self.shell.lock().await,
            Wait::No => match self.shell.try_lock() {
                Ok(slot) => slot,
                Err(_) => return Ok(None),
            },
        };
        let commands = *commands;
        self.on_kept(&mut slot, move |shell| {
            Box::pin(async move {
                let mut outputs: [String; N] = std::array::from_fn(|_| String::new());
                for (out, command) in outputs.iter_mut().zip(commands) {
                    *out = shell.run(command).await?;
                }
                Ok(outputs)
            })
        })
        .await
        .map(Some)
    }

    /// `Ok(())` when a command the kept virsh failed is worth running with
    /// a virsh of its own; else the error. After a timeout or with the
    /// connection gone it is not: that would only double the wait.
    async fn alone_after(&self, e: HvError) -> HvResult<()> {
        if matches!(e, HvError::Timeout(_)) || !self.ssh.status().await.connected {
            return Err(e);
        }
        tracing::debug!(addr = %self.ssh.addr(), error = %e, "kept virsh failed; running virsh per command");
        Ok(())
    }

    /// `work` on the kept virsh in `slot`, started if there is none. One
    /// kept from a connection lost since (the host's sshd restarted, say)
    /// fails on its dead channel: then `work` runs once more on a virsh
    /// started on the new connection. A failure empties `slot` (dropping
    /// the channel ends the remote virsh: its stdin closes).
    async fn on_kept<T>(
        &self,
        slot: &mut Option<VirshShell>,
        work: impl for<'s> Fn(&'s mut VirshShell) -> BoxFuture<'s, HvResult<T>>,
    ) -> HvResult<T> {
        let reused = slot.is_some();
        let mut answer = match self.kept(slot).await {
            Ok(shell) => work(shell).await,
            Err(e) => Err(e),
        };
        if reused && matches!(answer, Err(HvError::Transport(_))) {
            *slot = None;
            answer = match self.kept(slot).await {
                Ok(shell) => work(shell).await,
                Err(e) => Err(e),
            };
        }
        if answer.is_err() {
            *slot = None;
        }
        answer
    }

    /// The kept virsh in `slot`, started if there is none.
    async fn kept<'s>(&self, slot: &'s mut Option<VirshShell>) -> HvResult<&'s mut VirshShell> {
        Ok(match slot {
            Some(shell) => shell,
            empty => {
                empty.insert(VirshShell::open(&self.ssh, self.virsh(Vec::<String>::new())).await?)
            }
        })
    }

    /// The state of the domain with `uuid`, asked on the kept virsh (no
    /// virsh started for it), else with a virsh of its own.
    pub async fn state_by_uuid(&self, uuid: Uuid) -> HvResult<VmState> {
        let answer = {
            let mut slot = self.shell.lock().await;
            self.on_kept(&mut slot, |shell| {
                Box::pin(shell.run_on("domstate --domain", uuid, ""))
            })
            .await
        };
        let out = match answer {
            Ok(Ok(out)) => out,
            Ok(Err(refused)) => return Err(HvError::Host(refused)),
            Err(e) => {
                self.alone_after(e).await?;
                self.run(&["domstate", "--domain", &uuid.to_string()], None)
                    .await?
            }
        };
        Ok(VmState::from_virsh(&out))
    }

    /// The names of every domain (one `list` on the kept virsh).
    pub async fn domain_names(&self) -> HvResult<Vec<String>> {
        let [names] = self.fixed_commands([LIST_COMMAND], Wait::Yes).await?;
        Ok(parse::list_uuid_name(&names)?
            .into_iter()
            .map(|(_, name)| name)
            .collect())
    }

    async fn info(&self, vm: &VmName) -> HvResult<VmInfo> {
        let target = Some((vm, None));
        let dumpxml = ["dumpxml", "--domain", vm.as_str()];
        let domstate = ["domstate", "--domain", vm.as_str()];
        let (xml, state) =
            futures::try_join!(self.run(&dumpxml, target), self.run(&domstate, target))?;
        let dom = parse::domain_xml(&xml)?;
        let uuid = dom
            .uuid
            .ok_or_else(|| HvError::Parse(format!("domain XML of {vm} has no <uuid>")))?;
        Ok(VmInfo {
            uuid,
            name: dom.name,
            state: VmState::from_virsh(&state),
            vcpus: dom.vcpus,
            memory_mib: dom.memory_mib,
            disks: dom.disks,
            nics: dom.nics,
            ips: if state.trim() == "running" {
                // A detail page shows what it can: no addresses is no error.
                self.addresses_of(&[uuid])
                    .await
                    .ok()
                    .and_then(|found| found.into_iter().next())
                    .map(|(_, ips)| ips)
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
            os: dom.os,
            graphics: dom.graphics,
        })
    }

    /// The addresses of each of `vms`: from the guest's agent (which knows
    /// best), else from libvirt's DHCP leases, else from the host's ARP
    /// table; a source that fails or knows nothing passes on to the next,
    /// and none is not an error. All on the kept virsh: one to three
    /// `domifaddr` per VM on one channel, each for the cost of its RPC (no
    /// virsh started, no SSH channel opened per command).
    async fn addresses_of(&self, vms: &[Uuid]) -> HvResult<VmAddresses> {
        let mut slot = self.shell.lock().await;
        let mut found = Vec::with_capacity(vms.len());
        for uuid in vms {
            let shell = self.kept(&mut slot).await?;
            let mut ips = Vec::new();
            for source in ADDRESS_SOURCE_ARGS {
                match shell.run_on("domifaddr --domain", *uuid, source).await {
                    Ok(Ok(out)) => ips = parse::domifaddr(&out),
                    // This source knows nothing (no agent, not a libvirt
                    // network, the VM just stopped): try the next.
                    Ok(Err(_)) => continue,
                    Err(e) => {
                        // Framing or time ran out: the session is unusable.
                        *slot = None;
                        return Err(e);
                    }
                }
                if !ips.is_empty() {
                    break;
                }
            }
            found.push((*uuid, ips));
        }
        Ok(found)
    }

    async fn action(&self, vm: &VmName, action: VmAction) -> HvResult<()> {
        let verb = match action {
            VmAction::Start => "start",
            VmAction::Shutdown => "shutdown",
            VmAction::ForceStop => "destroy",
            VmAction::Reboot => "reboot",
            VmAction::Reset => "reset",
            VmAction::Suspend => "suspend",
            VmAction::Resume => "resume",
            VmAction::Delete => return self.remove(vm, false).await,
        };
        self.run(&[verb, "--domain", vm.as_str()], Some((vm, Some(action))))
            .await
            .map(drop)
    }

    async fn remove(&self, vm: &VmName, with_storage: bool) -> HvResult<()> {
        // Metadata that would otherwise make undefine refuse (snapshots,
        // checkpoints, managed save, UEFI vars) goes with the VM.
        let mut args = vec![
            "undefine",
            "--domain",
            vm.as_str(),
            "--managed-save",
            "--snapshots-metadata",
            "--checkpoints-metadata",
            "--nvram",
        ];
        if with_storage {
            args.push("--remove-all-storage");
        }
        self.run(&args, Some((vm, Some(VmAction::Delete))))
            .await
            .map(drop)
    }

    /// On the kept virsh (five RPCs, no virsh started), and the Linux
    /// bridges from one small script beside it.
    async fn facts(&self) -> HvResult<HostFacts> {
        let ([hostname, nodeinfo, memstats, version, networks], bridges) = futures::try_join!(
            self.fixed_commands(FACTS_COMMANDS, Wait::Yes),
            self.bridges(),
        )?;
        let mut facts = parse::host_facts(&hostname, &nodeinfo, &memstats, &version)?;
        facts.networks = parse::sorted_lines(&networks);
        facts.bridges = bridges;
        Ok(facts)
    }

    async fn event_stream(&self) -> HvResult<BoxStream<'static, HvResult<VmEvent>>> {
        // On a PTY: when we drop the channel, the remote virsh gets SIGHUP
        // instead of lingering with an event callback registered.
        let lines = self
            .ssh
            .stream_lines(&self.virsh(["event", "--all", "--loop"]))
            .await?;
        let s = stream::unfold(Some(lines), |state| async move {
            let mut lines = state?;
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(ev) = parse::event_line(&line) {
                            return Some((Ok(ev), Some(lines)));
                        }
                        if line.starts_with("error:") {
                            return Some((Err(HvError::Host(line)), None));
                        }
                    }
                    Ok(None) => return None,
                    Err(e) => return Some((Err(e.into()), None)),
                }
            }
        });
        Ok(s.boxed())
    }
}

/// A fixed command's words, for running it as its own virsh.
fn split(command: FixedCommand) -> Vec<&'static str> {
    command.split_ascii_whitespace().collect()
}

/// Joins `list --uuid --name` and `domstats` output into summaries.
fn summaries(names: &str, stats: &str) -> HvResult<Vec<VmSummary>> {
    let stats = parse::domstats(stats);
    let empty = HashMap::new();
    Ok(parse::list_uuid_name(names)?
        .into_iter()
        .map(|(uuid, name)| {
            // A VM defined between the two calls has no stats yet.
            let (state, vcpus, memory_mib) =
                parse::stats_summary(stats.get(&name).unwrap_or(&empty));
            VmSummary {
                uuid,
                name,
                state,
                vcpus,
                memory_mib,
            }
        })
        .collect())
}

/// Maps a failed virsh run to an error the API can answer with. The texts
/// are libvirt's (C locale); everything unrecognised stays a host error with
/// the host's message.
fn classify(out: &ExecOutput, vm: Option<(&VmName, Option<VmAction>)>) -> HvError {
    let stderr = out.stderr_text();
    let message = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("error: ").trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    let message = if message.is_empty() {
        format!("virsh exited with {:?}", out.exit_status)
    } else {
        message
    };
    let lower = message.to_ascii_lowercase();
    let Some((vm, action)) = vm else {
        return HvError::Host(message);
    };
    if lower.contains("failed to get domain") || lower.contains("domain not found") {
        return HvError::NotFound(vm.to_string());
    }
    let invalid = [
        "requested operation is not valid",
        "domain is not running",
        "domain is already running",
        "domain is already active",
        "is not paused",
        "already paused",
        "supported only on stopped domains",
    ];
    if let Some(action) = action
        && invalid.iter().any(|p| lower.contains(p))
    {
        return HvError::InvalidState {
            vm: vm.to_string(),
            action,
            message,
        };
    }
    HvError::Host(message)
}

/// What virsh prints (LC_ALL=C) once a console is attached, in raw mode.
const CONSOLE_BANNER: &[u8] = b"Escape character is";
/// More than virsh says before attaching; beyond it, something is wrong.
const CONSOLE_BANNER_MAX: usize = 16 << 10;

/// The terminal's name the shell printed before starting virsh.
fn console_tty(said: &[u8]) -> Option<String> {
    String::from_utf8_lossy(said)
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("/dev/") && !l.contains(char::is_whitespace))
        .map(str::to_owned)
}

/// The output after virsh's "attached" line, once that line is complete.
fn after_console_banner(said: &[u8]) -> Option<&[u8]> {
    let at = said
        .windows(CONSOLE_BANNER.len())
        .position(|w| w == CONSOLE_BANNER)?;
    let end = said[at..].iter().position(|b| *b == b'\n')?;
    Some(&said[at + end + 1..])
}

/// Where `domifaddr` looks for a guest's addresses, best first.
const ADDRESS_SOURCE_ARGS: [FixedCommand; 3] = ["--source agent", "--source lease", "--source arp"];

impl Hypervisor for LibvirtDriver {
    fn vm_addresses<'a>(&'a self, vms: &'a [Uuid]) -> BoxFuture<'a, HvResult<VmAddresses>> {
        Box::pin(self.addresses_of(vms))
    }

    fn serial_console<'a>(
        &'a self,
        vm: &'a VmName,
        cols: u32,
        rows: u32,
    ) -> BoxFuture<'a, HvResult<PtyChannel>> {
        Box::pin(self.console(vm, cols, rows))
    }

    fn list_vms(&self) -> BoxFuture<'_, HvResult<Vec<VmSummary>>> {
        Box::pin(self.list())
    }

    fn vm_info<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<VmInfo>> {
        Box::pin(self.info(vm))
    }

    fn vm_state<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<VmState>> {
        Box::pin(async move {
            let out = self
                .run(&["domstate", "--domain", vm.as_str()], Some((vm, None)))
                .await?;
            Ok(VmState::from_virsh(&out))
        })
    }

    fn act<'a>(&'a self, vm: &'a VmName, action: VmAction) -> BoxFuture<'a, HvResult<()>> {
        Box::pin(self.action(vm, action))
    }

    fn undefine<'a>(&'a self, vm: &'a VmName, with_storage: bool) -> BoxFuture<'a, HvResult<()>> {
        Box::pin(self.remove(vm, with_storage))
    }

    fn host_facts(&self) -> BoxFuture<'_, HvResult<HostFacts>> {
        Box::pin(self.facts())
    }

    fn events(&self) -> BoxFuture<'_, HvResult<BoxStream<'static, HvResult<VmEvent>>>> {
        Box::pin(self.event_stream())
    }

    fn sample(&self) -> BoxFuture<'_, HvResult<HostReading>> {
        Box::pin(LibvirtDriver::sample(self))
    }

    fn as_libvirt(&self) -> Option<&LibvirtDriver> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_is_attached_after_virsh_says_so() {
        let polkit = b"Authorization not available.\r\nConnected to domain 'a b'\r\n";
        assert_eq!(after_console_banner(polkit), None);
        let partial = b"Connected to domain 'a b'\r\nEscape character is ^] (Ctr";
        assert_eq!(after_console_banner(partial), None);
        let whole = b"Connected to domain 'a b'\r\nEscape character is ^] (Ctrl + ])\r\n/ # ";
        assert_eq!(after_console_banner(whole), Some(&b"/ # "[..]));
        let named = b"/dev/pts/7\r\nConnected to domain 'a b'\r\nEscape character is ^]\r\n";
        assert_eq!(console_tty(named).as_deref(), Some("/dev/pts/7"));
        assert_eq!(console_tty(whole), None);
    }

    fn failed(stderr: &str) -> ExecOutput {
        ExecOutput {
            stderr: stderr.as_bytes().to_vec(),
            exit_status: Some(1),
            ..ExecOutput::default()
        }
    }

    #[test]
    fn virsh_errors_are_classified() {
        let vm = VmName::parse("t1").expect("valid");
        let t = Some((&vm, Some(VmAction::Resume)));
        assert!(matches!(
            classify(&failed("error: failed to get domain 'nope'\n"), t),
            HvError::NotFound(_)
        ));
        let e = classify(
            &failed(
                "error: Failed to resume domain 't1'\nerror: Requested operation is not valid: domain is already running\n",
            ),
            t,
        );
        match e {
            HvError::InvalidState {
                message, action, ..
            } => {
                assert_eq!(action, VmAction::Resume);
                assert!(message.contains("already running"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(
                &failed("error: Domain is already active\n"),
                Some((&vm, Some(VmAction::Start)))
            ),
            HvError::InvalidState { .. }
        ));
        assert!(matches!(
            classify(&failed("error: internal error: something\n"), t),
            HvError::Host(m) if m == "internal error: something"
        ));
        assert!(matches!(classify(&failed(""), None), HvError::Host(_)));
    }

    #[test]
    fn commands_are_quoted() {
        let cfg = crate::ssh::SshConfig::new(
            "h",
            22,
            "u",
            crate::ssh::ClientKey::from_seed_for_tests(),
            crate::ssh::HostKeyPolicy::TrustOnFirstUse,
        );
        let d = LibvirtDriver::new(SshSession::new(cfg), "qemu:///system");
        let line = d.virsh(["start", "--domain", "a b"]).render();
        assert_eq!(
            line,
            "env LC_ALL=C COLUMNS=4096 virsh -q -c qemu:///system start --domain 'a b'"
        );
    }
}
