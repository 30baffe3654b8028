//! Reading what the Hyper-V scripts print.
//!
//! The scripts print one compressed JSON envelope; Windows PowerShell 5.1
//! still gets in the way at times, and this parser tolerates what it is
//! documented to do: a UTF-8 BOM, CRLF line ends, a single object where an
//! array was meant (`ConvertTo-Json` unrolls one-element arrays), `\/Date(ms)\/`
//! for dates, `\u0027`-style escapes (plain JSON), empty output, and CLIXML
//! progress or error records on stderr.

use overvisor_model::vm::{VmDisk, VmEvent, VmEventKind, VmNic, VmState};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::driver::{HvError, HvResult};

/// The one document a script prints.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub ok: bool,
    pub op: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub error: Option<ScriptError>,
}

/// A failure as the script classified it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ScriptError {
    /// `not_found`, `invalid_state`, `no_shutdown_service`, `shared_disk`,
    /// `ambiguous`, `bad_params`, `kvp_duplicate`, `kvp_limit`, `host_error`.
    pub code: String,
    /// PowerShell's FullyQualifiedErrorId, for the log.
    #[serde(default)]
    pub fqid: Option<String>,
    #[serde(default)]
    pub message: String,
}

/// Strips what PowerShell puts around the text: a BOM, CR before LF.
fn clean(text: &str) -> String {
    text.trim_start_matches('\u{feff}').replace("\r\n", "\n")
}

/// The envelope of `op` in a script's stdout; stderr is only consulted to
/// explain an answer that has none.
pub fn envelope(op: &str, stdout: &str, stderr: &str) -> HvResult<Envelope> {
    let text = clean(stdout);
    let mut found = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Envelope>(l).ok());
    let Some(env) = found.next() else {
        let errors = clixml_errors(stderr);
        let why = if !errors.is_empty() {
            errors.join("; ")
        } else if text.trim().is_empty() {
            "no output".to_owned()
        } else {
            format!("no JSON envelope in {:?}", truncate(text.trim(), 200))
        };
        return Err(HvError::Parse(format!("{op}: {why}")));
    };
    if found.next().is_some() {
        return Err(HvError::Parse(format!("{op}: more than one envelope")));
    }
    if env.op != op {
        return Err(HvError::Parse(format!(
            "asked for {op}, the host answered {}",
            env.op
        )));
    }
    Ok(env)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Error texts in a CLIXML stream (`#< CLIXML` then `<Objs>`), as PowerShell
/// writes its error and progress records to a non-console stderr. Progress
/// records are dropped; `_x000D__x000A_` escapes are decoded.
pub fn clixml_errors(stderr: &str) -> Vec<String> {
    let text = clean(stderr);
    let Some(xml) = text.trim_start().strip_prefix("#< CLIXML") else {
        let plain = text.trim();
        return if plain.is_empty() {
            Vec::new()
        } else {
            vec![plain.to_owned()]
        };
    };
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<S S=\"Error\">") {
        rest = &rest[i + "<S S=\"Error\">".len()..];
        let end = rest.find("</S>").unwrap_or(rest.len());
        let msg = decode_clixml(&rest[..end]);
        let msg = msg.trim();
        if !msg.is_empty() {
            out.push(msg.to_owned());
        }
        rest = &rest[end..];
    }
    out
}

/// `_xHHHH_` (a UTF-16 unit) and the five XML entities.
fn decode_clixml(s: &str) -> String {
    let mut units: Vec<u16> = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(hex) = rest.strip_prefix("_x").and_then(|r| r.get(..5))
            && hex.ends_with('_')
            && let Ok(u) = u16::from_str_radix(&hex[..4], 16)
        {
            units.push(u);
            rest = &rest[7..];
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        let mut buf = [0u16; 2];
        units.extend_from_slice(c.encode_utf16(&mut buf));
        rest = &rest[c.len_utf8()..];
    }
    String::from_utf16_lossy(&units)
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// A list as the script meant it: PS 5.1 gives a lone object for a list of
/// one, and `null` for none.
pub fn many(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        one => vec![one],
    }
}

/// Deserializes `data` (or a part of it) into `T`, naming the op on failure.
pub fn data<T: DeserializeOwned>(op: &str, v: Value) -> HvResult<T> {
    serde_json::from_value(v).map_err(|e| HvError::Parse(format!("{op}: {e}")))
}

/// `\/Date(1700000000000)\/` (how 5.1 writes a `DateTime` it was not asked to
/// format; JSON reads the `\/` as `/`) as milliseconds since the epoch.
pub fn ms_date(s: &str) -> Option<i64> {
    let inner = s.strip_prefix("/Date(")?.strip_suffix(")/")?;
    // A time zone offset may follow: /Date(1700000000000+0100)/.
    let end = inner[1..].find(['+', '-']).map_or(inner.len(), |i| i + 1);
    inner[..end].parse().ok()
}

/// Hyper-V's `VMState` names onto the common states. Saved VMs count as shut
/// off (they start again, and may be deleted); transitions count as where
/// they lead, except stopping and saving, which are on the way out.
pub fn state(name: &str) -> VmState {
    match name {
        "Running" | "RunningCritical" | "Starting" | "StartingCritical" | "Resuming"
        | "ResumingCritical" | "Reset" | "ResetCritical" => VmState::Running,
        "Off" | "OffCritical" | "Saved" | "SavedCritical" | "FastSaved" | "FastSavedCritical" => {
            VmState::ShutOff
        }
        "Paused" | "PausedCritical" | "Pausing" | "PausingCritical" => VmState::Paused,
        "Stopping" | "StoppingCritical" | "Saving" | "SavingCritical" | "FastSaving"
        | "FastSavingCritical" => VmState::ShuttingDown,
        _ => VmState::Unknown,
    }
}

/// What a change to Hyper-V state `name` means. The event names the new
/// state, so one that counts as running, off or paused says it all (the
/// inventory takes it as is: Starting is already running); a reset and
/// the ways out (stopping, saving) are re-read.
pub fn event_kind(name: &str) -> VmEventKind {
    match name {
        "Reset" | "ResetCritical" => VmEventKind::Rebooted,
        "Resuming" | "ResumingCritical" => VmEventKind::Resumed,
        _ => match state(name) {
            VmState::Running => VmEventKind::Started,
            VmState::ShutOff => VmEventKind::Stopped,
            VmState::Paused => VmEventKind::Suspended,
            _ => VmEventKind::Other,
        },
    }
}

/// A VM as `ConvertTo-OvVm` prints it.
#[derive(Debug, Clone, Deserialize)]
pub struct RawVm {
    pub id: uuid::Uuid,
    pub name: String,
    pub state: String,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawDisk {
    pub controller: String,
    pub number: u32,
    pub location: u32,
    #[serde(default)]
    pub path: Option<String>,
    pub kind: String,
}

impl RawDisk {
    pub fn into_disk(self) -> VmDisk {
        let dvd = self.kind == "dvd";
        VmDisk {
            // Hyper-V has no guest device names; the slot is the handle.
            target: format!("{}{}:{}", self.controller, self.number, self.location),
            device: if dvd { "cdrom" } else { "disk" }.to_owned(),
            bus: Some(self.controller.to_ascii_lowercase()),
            format: self.path.as_deref().and_then(|p| {
                let ext = p.rsplit_once('.')?.1.to_ascii_lowercase();
                matches!(ext.as_str(), "vhd" | "vhdx" | "iso").then_some(ext)
            }),
            source: self.path,
            read_only: dvd,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawNic {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub switch: Option<String>,
    #[serde(default)]
    pub ips: Value,
}

impl RawNic {
    /// The NIC, and the addresses the guest reported for it.
    pub fn into_nic(self) -> (VmNic, Vec<String>) {
        let ips = addresses(self.ips);
        let nic = VmNic {
            // Hyper-V prints MACs as 00155D010203.
            mac: self.mac.map(|m| colon_mac(&m)),
            kind: "switch".to_owned(),
            source: self.switch,
            model: Some("synthetic".to_owned()),
            host_device: Some(self.name),
        };
        (nic, ips)
    }
}

/// An adapter's `IPAddresses` (one or a list), without those that say
/// nothing about where the guest can be reached.
pub fn addresses(ips: Value) -> Vec<String> {
    many(ips)
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .filter(|ip| crate::driver::reachable_address(ip))
        .collect()
}

/// One adapter's addresses as `vm.addresses` lists them.
#[derive(Debug, Clone, Deserialize)]
pub struct RawAddresses {
    pub id: uuid::Uuid,
    #[serde(default)]
    pub ips: Value,
}

fn colon_mac(m: &str) -> String {
    if m.len() != 12 || !m.chars().all(|c| c.is_ascii_hexdigit()) {
        return m.to_owned();
    }
    m.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(":")
}

/// One line of the events session, as it matters to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventLine {
    Ready,
    Heartbeat,
    Change(VmEvent),
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

/// One line of `vm.events`; `Ok(None)` for noise around the envelopes.
pub fn event_line(line: &str) -> HvResult<Option<EventLine>> {
    let line = clean(line);
    let line = line.trim();
    if !line.starts_with('{') {
        return Ok(None);
    }
    let env = envelope(super::script::VM_EVENTS.op, line, "")?;
    if !env.ok {
        let e = env.error.map(|e| e.message).unwrap_or_default();
        return Err(HvError::Host(format!("event session failed: {e}")));
    }
    let raw: RawEvent = data("vm.events", env.data)?;
    Ok(Some(match raw.kind.as_str() {
        "ready" => EventLine::Ready,
        "heartbeat" => EventLine::Heartbeat,
        "state" => {
            let state = raw.state.unwrap_or_default();
            let kind = event_kind(&state);
            let vm = raw
                .name
                .or(raw.id)
                .ok_or_else(|| HvError::Parse("vm.events: a change without a VM".into()))?;
            EventLine::Change(VmEvent {
                vm,
                kind,
                detail: state,
            })
        }
        other => return Err(HvError::Parse(format!("vm.events: unknown line {other}"))),
    }))
}

#[cfg(test)]
mod tests;
