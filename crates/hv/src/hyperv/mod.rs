//! The Hyper-V driver: versioned PowerShell scripts ([`script`]) run as
//! `powershell.exe -EncodedCommand` over the host's shared SSH session
//! (Windows Server 2019+ ships OpenSSH), each answering one JSON envelope
//! ([`parse`]).
//!
//! Nothing here has run against a real Windows host; docs/hyperv.md says
//! what each part rests on.

pub mod parse;
pub mod script;

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use overvisor_model::host::HostFacts;
use overvisor_model::metrics::{CpuReading, HostReading, VmReading};
use overvisor_model::vm::{VmAction, VmEvent, VmInfo, VmName, VmState, VmSummary};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::driver::{HvError, HvResult, Hypervisor, VmAddresses};
use crate::ssh::{PtyChannel, SshSession};
use parse::{EventLine, RawDisk, RawNic, RawVm, ScriptError};
use script::Script;

/// How often a quiet event session prints a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Silence after which the event session counts as stalled: three missed
/// heartbeats.
const STALLED_AFTER: Duration = Duration::from_secs(15);

/// `Msvm_VirtualSystemManagementService.AddKvpItems` takes at most this
/// many items a call.
pub const KVP_ITEMS_PER_CALL: usize = 128;
/// The KVP exchange buffers hold a key of 512 and a value of 2048 bytes in
/// UTF-16 with its terminating NUL.
pub const KVP_MAX_KEY_UNITS: usize = 255;
pub const KVP_MAX_VALUE_UNITS: usize = 1023;
/// What a chunked value's own key holds: `overvisor-chunks:<count>`; the
/// parts are `<key>#<index>`.
const CHUNKS_MARK: &str = "overvisor-chunks:";

/// Drives one Hyper-V host.
#[derive(Debug, Clone)]
pub struct HypervDriver {
    ssh: SshSession,
}

/// One KVP item.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KvpItem {
    pub name: String,
    pub value: String,
}

/// Which KVP pool to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvpPool {
    /// Items the host set for the guest.
    HostToGuest,
    /// Items the guest published (its addresses, OS, the guest agent's).
    GuestToHost,
}

impl HypervDriver {
    pub fn new(ssh: SshSession) -> Self {
        Self { ssh }
    }

    pub fn ssh(&self) -> &SshSession {
        &self.ssh
    }

    /// Runs `script` with `params`; the envelope's data, or its error typed.
    async fn run(
        &self,
        script: Script,
        params: Value,
        vm: Option<(&VmName, Option<VmAction>)>,
    ) -> HvResult<Value> {
        let out = self.ssh.exec(&script.command(&params)?).await?;
        let env = parse::envelope(script.op, &out.stdout_text(), &out.stderr_text())?;
        if env.ok {
            return Ok(env.data);
        }
        let error = env.error.unwrap_or(ScriptError {
            code: "host_error".into(),
            fqid: None,
            message: format!("{} failed without saying why", script.op),
        });
        tracing::debug!(addr = %self.ssh.addr(), op = script.op, code = %error.code, fqid = ?error.fqid, "script failed");
        Err(classify(error, vm))
    }

    async fn list(&self) -> HvResult<Vec<VmSummary>> {
        let data = self.run(script::VM_LIST, json!({}), None).await?;
        parse::many(data)
            .into_iter()
            .map(|v| {
                let vm: RawVm = parse::data(script::VM_LIST.op, v)?;
                Ok(VmSummary {
                    uuid: vm.id,
                    name: vm.name,
                    state: parse::state(&vm.state),
                    vcpus: vm.cpus,
                    memory_mib: vm.memory_bytes.map(|b| b >> 20),
                })
            })
            .collect()
    }

    /// Every VM's adapters in one script; the addresses of those asked for.
    async fn addresses_of(&self, vms: &[Uuid]) -> HvResult<VmAddresses> {
        let data = self.run(script::VM_ADDRESSES, json!({}), None).await?;
        let mut found: Vec<(Uuid, Vec<String>)> = vms.iter().map(|u| (*u, Vec::new())).collect();
        for item in parse::many(data) {
            let nic: parse::RawAddresses = parse::data(script::VM_ADDRESSES.op, item)?;
            if let Some((_, ips)) = found.iter_mut().find(|(u, _)| *u == nic.id) {
                for ip in parse::addresses(nic.ips) {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
            }
        }
        Ok(found)
    }

    async fn info(&self, vm: &VmName) -> HvResult<VmInfo> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(flatten)]
            vm: RawVm,
            #[serde(default)]
            disks: Value,
            #[serde(default)]
            nics: Value,
        }
        let data = self
            .run(
                script::VM_INFO,
                json!({ "vm": vm.as_str() }),
                Some((vm, None)),
            )
            .await?;
        let raw: Raw = parse::data(script::VM_INFO.op, data)?;
        let disks = parse::many(raw.disks)
            .into_iter()
            .map(|d| parse::data::<RawDisk>(script::VM_INFO.op, d).map(RawDisk::into_disk))
            .collect::<HvResult<_>>()?;
        let mut nics = Vec::new();
        let mut ips = Vec::new();
        for n in parse::many(raw.nics) {
            let (nic, addrs) = parse::data::<RawNic>(script::VM_INFO.op, n)?.into_nic();
            nics.push(nic);
            ips.extend(addrs);
        }
        Ok(VmInfo {
            uuid: raw.vm.id,
            name: raw.vm.name,
            state: parse::state(&raw.vm.state),
            vcpus: raw.vm.cpus.unwrap_or_default(),
            memory_mib: raw.vm.memory_bytes.unwrap_or_default() >> 20,
            disks,
            nics,
            ips,
            os: None,
            graphics: Vec::new(),
        })
    }

    async fn state(&self, vm: &VmName) -> HvResult<VmState> {
        let data = self
            .run(
                script::VM_STATE,
                json!({ "vm": vm.as_str() }),
                Some((vm, None)),
            )
            .await?;
        let name: String = parse::data(script::VM_STATE.op, data)?;
        Ok(parse::state(&name))
    }

    async fn action(&self, vm: &VmName, action: VmAction) -> HvResult<()> {
        if action == VmAction::Delete {
            return self.remove(vm, false).await;
        }
        self.run_action(vm, action.as_str(), Some(action)).await
    }

    async fn run_action(&self, vm: &VmName, verb: &str, action: Option<VmAction>) -> HvResult<()> {
        let params = json!({ "vm": vm.as_str(), "action": verb });
        self.run(script::VM_ACTION, params, Some((vm, action)))
            .await
            .map(drop)
    }

    /// Saves the VM's memory to disk and turns it off (`Save-VM`); it counts
    /// as shut off afterwards and starts where it was.
    pub async fn save(&self, vm: &VmName) -> HvResult<()> {
        // Refused states answer 409 like a stop would.
        self.run_action(vm, "save", Some(VmAction::ForceStop)).await
    }

    async fn remove(&self, vm: &VmName, with_disks: bool) -> HvResult<()> {
        let params = json!({ "vm": vm.as_str(), "with_disks": with_disks });
        self.run(
            script::VM_DELETE,
            params,
            Some((vm, Some(VmAction::Delete))),
        )
        .await
        .map(drop)
    }

    /// The host's and every VM's usage counters (see `host_usage.ps1`).
    async fn usage(&self) -> HvResult<HostReading> {
        #[derive(Deserialize)]
        struct RawUsage {
            #[serde(default)]
            cpu_percent: Option<f64>,
            #[serde(default)]
            logical_processors: Option<u32>,
            #[serde(default)]
            memory_total_bytes: Option<u64>,
            #[serde(default)]
            memory_free_bytes: Option<u64>,
            #[serde(default)]
            vms: Value,
        }
        #[derive(Deserialize)]
        struct RawVmUsage {
            id: uuid::Uuid,
            state: String,
            #[serde(default)]
            cpus: Option<u32>,
            #[serde(default)]
            cpu_percent: Option<f64>,
            #[serde(default)]
            memory_bytes: Option<u64>,
            #[serde(default)]
            disk_read_bytes: Option<u64>,
            #[serde(default)]
            disk_write_bytes: Option<u64>,
            #[serde(default)]
            net_rx_bytes: Option<u64>,
            #[serde(default)]
            net_tx_bytes: Option<u64>,
        }
        let op = script::HOST_USAGE.op;
        let data = self.run(script::HOST_USAGE, json!({}), None).await?;
        let raw: RawUsage = parse::data(op, data)?;
        let vms = parse::many(raw.vms)
            .into_iter()
            .map(|v| {
                let vm: RawVmUsage = parse::data(op, v)?;
                let running = parse::state(&vm.state).is_active();
                // A VM that is off has no usage; Hyper-V reports zeros.
                let when_running = |v: Option<u64>| v.filter(|_| running);
                Ok(VmReading {
                    uuid: vm.id,
                    running,
                    vcpus: vm.cpus,
                    cpu: vm.cpu_percent.filter(|_| running).map(CpuReading::Percent),
                    memory_used_bytes: when_running(vm.memory_bytes),
                    disk_read_bytes: when_running(vm.disk_read_bytes),
                    disk_write_bytes: when_running(vm.disk_write_bytes),
                    net_rx_bytes: when_running(vm.net_rx_bytes),
                    net_tx_bytes: when_running(vm.net_tx_bytes),
                })
            })
            .collect::<HvResult<Vec<_>>>()?;
        Ok(HostReading {
            cpu: raw.cpu_percent.map(CpuReading::Percent),
            cpus: raw.logical_processors,
            memory_total_bytes: raw.memory_total_bytes,
            memory_used_bytes: raw
                .memory_total_bytes
                .zip(raw.memory_free_bytes)
                .map(|(t, f)| t.saturating_sub(f)),
            vms,
        })
    }

    async fn facts(&self) -> HvResult<HostFacts> {
        #[derive(Deserialize)]
        struct Raw {
            name: String,
            logical_processors: u32,
            memory_bytes: u64,
            #[serde(default)]
            memory_free_bytes: Option<u64>,
            #[serde(default)]
            cpu_model: String,
            #[serde(default)]
            cpu_mhz: Option<u32>,
            #[serde(default)]
            sockets: Option<u32>,
            #[serde(default)]
            cores_per_socket: Option<u32>,
            os_version: String,
            powershell_version: String,
        }
        let data = self.run(script::HOST_FACTS, json!({}), None).await?;
        let r: Raw = parse::data(script::HOST_FACTS.op, data)?;
        let threads = match (r.sockets, r.cores_per_socket) {
            (Some(s), Some(c)) if s * c > 0 => Some(r.logical_processors / (s * c)),
            _ => None,
        };
        Ok(HostFacts {
            hostname: r.name,
            cpu_model: r.cpu_model,
            cpus: r.logical_processors,
            cpu_mhz: r.cpu_mhz,
            sockets: r.sockets,
            cores_per_socket: r.cores_per_socket,
            threads_per_core: threads,
            memory_total_mib: r.memory_bytes >> 20,
            memory_free_mib: r.memory_free_bytes.map(|b| b >> 20),
            hypervisor: "Hyper-V".into(),
            hypervisor_version: r.os_version.clone(),
            management_version: format!(
                "Windows {} (PowerShell {})",
                r.os_version, r.powershell_version
            ),
            // Virtual switches are what a Hyper-V VM plugs into; listing
            // them comes with Hyper-V deployments.
            networks: Vec::new(),
            bridges: Vec::new(),
        })
    }

    async fn event_stream(&self) -> HvResult<BoxStream<'static, HvResult<VmEvent>>> {
        let cmd =
            script::VM_EVENTS.command(&json!({ "heartbeat_seconds": HEARTBEAT.as_secs() }))?;
        // On a PTY, so the remote session ends with the channel.
        let mut lines = self.ssh.stream_lines(&cmd).await?;
        // Changes are reported from the host's `ready` on: waiting for it
        // means an action taken once this returns is never missed.
        loop {
            let line = tokio::time::timeout(STALLED_AFTER, lines.next_line())
                .await
                .map_err(|_| HvError::Timeout(STALLED_AFTER))??
                .ok_or_else(|| {
                    HvError::Host("the event stream ended before it was ready".into())
                })?;
            if let Some(EventLine::Ready) = parse::event_line(&line)? {
                break;
            }
        }
        let s = stream::unfold(Some(lines), |state| async move {
            let mut lines = state?;
            loop {
                let next = tokio::time::timeout(STALLED_AFTER, lines.next_line()).await;
                let line = match next {
                    Err(_) => return Some((Err(HvError::Timeout(STALLED_AFTER)), None)),
                    Ok(Err(e)) => return Some((Err(e.into()), None)),
                    Ok(Ok(None)) => return None,
                    Ok(Ok(Some(line))) => line,
                };
                match parse::event_line(&line) {
                    Ok(Some(EventLine::Change(ev))) => return Some((Ok(ev), Some(lines))),
                    Ok(_) => {}
                    Err(e) => return Some((Err(e), None)),
                }
            }
        });
        Ok(s.boxed())
    }

    async fn kvp(&self, vm: &VmName, params: Value) -> HvResult<Value> {
        self.run(script::VM_KVP, params, Some((vm, None))).await
    }

    /// The items of `pool`, chunked values joined again.
    pub async fn kvp_get(&self, vm: &VmName, pool: KvpPool) -> HvResult<Vec<KvpItem>> {
        let which = match pool {
            KvpPool::HostToGuest => "get_host",
            KvpPool::GuestToHost => "get_guest",
        };
        let data = self
            .kvp(vm, json!({ "vm": vm.as_str(), "kvp": which }))
            .await?;
        let items = parse::many(data)
            .into_iter()
            .map(|v| parse::data(script::VM_KVP.op, v))
            .collect::<HvResult<Vec<KvpItem>>>()?;
        Ok(join_chunks(items))
    }

    /// Sets host→guest items. An existing key is removed first (adding one
    /// that exists fails); values over the exchange's limit are chunked.
    pub async fn kvp_set(&self, vm: &VmName, items: &[KvpItem]) -> HvResult<()> {
        let mut parts = Vec::new();
        for item in items {
            parts.extend(chunk(item)?);
        }
        let names: Vec<String> = items.iter().map(|i| i.name.clone()).collect();
        self.kvp_remove(vm, &names).await?;
        for batch in batches(
            vm,
            "set",
            &parts,
            |i| json!({ "name": i.name, "value": i.value }),
        )? {
            self.kvp(vm, batch).await?;
        }
        Ok(())
    }

    /// Removes host→guest items (and the chunks of chunked ones) that exist.
    pub async fn kvp_remove(&self, vm: &VmName, names: &[String]) -> HvResult<()> {
        let existing = self.kvp_raw_names(vm).await?;
        let gone: Vec<String> = existing
            .into_iter()
            .filter(|e| names.iter().any(|n| e == n || is_chunk_of(e, n)))
            .collect();
        for batch in batches(vm, "remove", &gone, |n| json!(n))? {
            self.kvp(vm, batch).await?;
        }
        Ok(())
    }

    /// Host→guest keys as stored (chunks not joined).
    async fn kvp_raw_names(&self, vm: &VmName) -> HvResult<Vec<String>> {
        let data = self
            .kvp(vm, json!({ "vm": vm.as_str(), "kvp": "get_host" }))
            .await?;
        parse::many(data)
            .into_iter()
            .map(|v| parse::data::<KvpItem>(script::VM_KVP.op, v).map(|i| i.name))
            .collect()
    }
}

fn is_chunk_of(key: &str, name: &str) -> bool {
    key.strip_prefix(name)
        .and_then(|r| r.strip_prefix('#'))
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// An item as stored: itself, or a mark plus `name#i` parts.
fn chunk(item: &KvpItem) -> HvResult<Vec<KvpItem>> {
    if item.name.is_empty() || utf16_len(&item.name) > KVP_MAX_KEY_UNITS - 6 {
        return Err(HvError::Host(format!(
            "KVP key must be 1 to {} characters",
            KVP_MAX_KEY_UNITS - 6
        )));
    }
    if item.name.contains('#') {
        return Err(HvError::Host("KVP key must not contain '#'".into()));
    }
    if utf16_len(&item.value) <= KVP_MAX_VALUE_UNITS && !item.value.starts_with(CHUNKS_MARK) {
        return Ok(vec![item.clone()]);
    }
    let mut parts = Vec::new();
    let mut cur = String::new();
    for c in item.value.chars() {
        if utf16_len(&cur) + c.len_utf16() > KVP_MAX_VALUE_UNITS {
            parts.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    parts.push(cur);
    let mut out = vec![KvpItem {
        name: item.name.clone(),
        value: format!("{CHUNKS_MARK}{}", parts.len()),
    }];
    out.extend(parts.into_iter().enumerate().map(|(i, value)| KvpItem {
        name: format!("{}#{i}", item.name),
        value,
    }));
    Ok(out)
}

/// Stored items back into the items that were set.
fn join_chunks(items: Vec<KvpItem>) -> Vec<KvpItem> {
    let find = |name: &str| {
        items
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.value.clone())
    };
    let mut out = Vec::new();
    for item in &items {
        if item.name.contains('#') && items.iter().any(|o| is_chunk_of(&item.name, &o.name)) {
            continue;
        }
        let joined = item
            .value
            .strip_prefix(CHUNKS_MARK)
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| {
                (0..n)
                    .map(|i| find(&format!("{}#{i}", item.name)))
                    .collect::<Option<String>>()
            });
        out.push(KvpItem {
            name: item.name.clone(),
            value: joined.unwrap_or_else(|| item.value.clone()),
        });
    }
    out
}

/// Parameters for as few `vm.kvp` calls as hold `entries`: at most 128
/// items each, and each within Windows' command-line limit.
fn batches<T>(
    vm: &VmName,
    op: &str,
    entries: &[T],
    to_json: impl Fn(&T) -> Value,
) -> HvResult<Vec<Value>> {
    let key = if op == "set" { "items" } else { "names" };
    let params = |items: &[Value]| json!({ "vm": vm.as_str(), "kvp": op, key: items });
    let mut out = Vec::new();
    let mut cur: Vec<Value> = Vec::new();
    for e in entries {
        cur.push(to_json(e));
        if cur.len() > KVP_ITEMS_PER_CALL || !script::VM_KVP.fits(&params(&cur)) {
            let last = cur.pop().unwrap_or(Value::Null);
            if cur.is_empty() {
                return Err(HvError::Host(format!(
                    "VM name too long for a KVP call on {vm}"
                )));
            }
            out.push(params(&cur));
            cur = vec![last];
        }
    }
    if !cur.is_empty() {
        out.push(params(&cur));
    }
    Ok(out)
}

/// A script's failure as an error the API can answer with.
fn classify(e: ScriptError, vm: Option<(&VmName, Option<VmAction>)>) -> HvError {
    match (e.code.as_str(), vm) {
        ("not_found", Some((vm, _))) => HvError::NotFound(vm.to_string()),
        ("invalid_state" | "no_shutdown_service", Some((vm, Some(action)))) => {
            HvError::InvalidState {
                vm: vm.to_string(),
                action,
                message: e.message,
            }
        }
        _ => HvError::Host(e.message),
    }
}

/// Why a Hyper-V VM has no serial console: its COM port is a named pipe
/// on the host, which PowerShell over SSH cannot bridge to a terminal.
pub const NO_SERIAL_CONSOLE: &str =
    "Hyper-V VMs have no serial console: their COM ports are named pipes on the host";

impl Hypervisor for HypervDriver {
    fn serial_console<'a>(
        &'a self,
        _vm: &'a VmName,
        _cols: u32,
        _rows: u32,
    ) -> BoxFuture<'a, HvResult<PtyChannel>> {
        // A Hyper-V VM's COM port is a named pipe on the host, which
        // PowerShell over SSH cannot bridge to a terminal.
        Box::pin(async {
            Err(HvError::Unsupported(
                "Hyper-V VMs have no serial console: their COM ports are named pipes on the host"
                    .into(),
            ))
        })
    }

    fn list_vms(&self) -> BoxFuture<'_, HvResult<Vec<VmSummary>>> {
        Box::pin(self.list())
    }

    fn vm_info<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<VmInfo>> {
        Box::pin(self.info(vm))
    }

    fn vm_addresses<'a>(&'a self, vms: &'a [Uuid]) -> BoxFuture<'a, HvResult<VmAddresses>> {
        Box::pin(self.addresses_of(vms))
    }

    fn vm_state<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<VmState>> {
        Box::pin(self.state(vm))
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

    fn sample(&self) -> BoxFuture<'_, HvResult<HostReading>> {
        Box::pin(self.usage())
    }

    fn events(&self) -> BoxFuture<'_, HvResult<BoxStream<'static, HvResult<VmEvent>>>> {
        Box::pin(self.event_stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, value: &str) -> KvpItem {
        KvpItem {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn long_values_are_chunked_and_joined() {
        let long = "ü".repeat(KVP_MAX_VALUE_UNITS * 2 + 5);
        let parts = chunk(&item("cfg", &long)).expect("chunks");
        assert_eq!(parts[0].value, "overvisor-chunks:3");
        assert_eq!(parts.len(), 4);
        assert!(
            parts
                .iter()
                .all(|p| utf16_len(&p.value) <= KVP_MAX_VALUE_UNITS)
        );
        let mut stored = parts.clone();
        stored.push(item("other", "x"));
        stored.push(item("cfg-not#1", "y"));
        let joined = join_chunks(stored);
        assert_eq!(joined[0], item("cfg", &long));
        assert_eq!(joined.len(), 3, "{joined:?}");
        assert_eq!(
            chunk(&item("k", "short")).expect("one"),
            [item("k", "short")]
        );
        assert!(chunk(&item("", "v")).is_err());
        assert!(chunk(&item("a#1", "v")).is_err());
    }

    #[test]
    fn batches_hold_at_most_128_items_and_fit_the_command_line() {
        let vm = VmName::parse("vm ü").expect("name");
        let names: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        let b = batches(&vm, "remove", &names, |n| json!(n)).expect("batches");
        assert_eq!(b.len(), 3);
        assert_eq!(b[0]["names"].as_array().map(Vec::len), Some(128));
        let big: Vec<KvpItem> = (0..40)
            .map(|i| item(&format!("k{i}"), &"v".repeat(1000)))
            .collect();
        let b = batches(
            &vm,
            "set",
            &big,
            |i| json!({ "name": i.name, "value": i.value }),
        )
        .expect("b");
        assert!(b.len() > 1);
        assert!(b.iter().all(|p| script::VM_KVP.fits(p)));
        assert_eq!(
            b.iter()
                .map(|p| p["items"].as_array().map_or(0, Vec::len))
                .sum::<usize>(),
            40
        );
    }

    #[test]
    fn script_errors_are_classified() {
        let vm = VmName::parse("a").expect("name");
        let e = |code: &str| ScriptError {
            code: code.into(),
            fqid: None,
            message: "m".into(),
        };
        assert!(matches!(
            classify(e("not_found"), Some((&vm, None))),
            HvError::NotFound(_)
        ));
        assert!(matches!(
            classify(
                e("no_shutdown_service"),
                Some((&vm, Some(VmAction::Shutdown)))
            ),
            HvError::InvalidState {
                action: VmAction::Shutdown,
                ..
            }
        ));
        assert!(matches!(
            classify(e("invalid_state"), Some((&vm, None))),
            HvError::Host(_)
        ));
        assert!(matches!(
            classify(e("shared_disk"), Some((&vm, Some(VmAction::Delete)))),
            HvError::Host(_)
        ));
    }
}
