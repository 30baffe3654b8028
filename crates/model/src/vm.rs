//! Virtual machines as seen on a host, and their lifecycle state machine.
//!
//! These types are what drivers report and what the API shows. `VmName` is
//! the gate every VM identifier passes before it may reach a host, and
//! [`allowed`] is the single place that decides which lifecycle action makes
//! sense in which state (an invalid transition becomes a 409, not a host
//! round-trip).

use std::fmt;
use std::str::FromStr;

use crate::InvalidInput;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Longest name Overvisor gives a VM it creates. libvirt allows more, but
/// long names are unreadable in the portal and Hyper-V caps names at 100.
pub const VM_NAME_MAX_LEN: usize = 64;

/// Longest name accepted for an existing VM, in bytes: far beyond what
/// hosts allow (libvirt keeps a VM's definition in a file named after it),
/// so only garbage is refused.
pub const VM_NAME_MAX_BYTES: usize = 1024;

/// The name (or UUID) of a VM on a host, as the host spells it.
///
/// Hosts accept names Overvisor would never choose (`odd name ü`), and an
/// existing VM must be addressable by whatever name it has: any text is
/// accepted except control characters (NUL, newlines, ...) and absurd
/// lengths. That is safe because every remote argument is quoted by one
/// function (`overvisor_hv::quote`) and virsh gets names only as the value
/// of `--domain`, so even a leading `-` is read as a name.
/// Names for VMs Overvisor creates pass the strict [`VmName::new_strict`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "web-01")]
pub struct VmName(String);

/// Why a string is not a valid [`VmName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmNameError {
    #[error("VM name is empty")]
    Empty,
    #[error("VM name is longer than {VM_NAME_MAX_LEN} characters")]
    TooLong,
    #[error("VM name is longer than {VM_NAME_MAX_BYTES} bytes")]
    Absurd,
    #[error("VM name must not contain control characters (found {0:?})")]
    ControlChar(char),
    #[error("VM name must not start with '-'")]
    LeadingDash,
    #[error("VM name may only contain letters, digits, '.', '_' and '-' (found {0:?})")]
    BadChar(char),
}

impl VmName {
    /// Accepts the name of an existing VM (or its UUID): any text without
    /// control characters, up to [`VM_NAME_MAX_BYTES`].
    pub fn parse(s: &str) -> Result<Self, VmNameError> {
        if s.is_empty() {
            return Err(VmNameError::Empty);
        }
        if s.len() > VM_NAME_MAX_BYTES {
            return Err(VmNameError::Absurd);
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(VmNameError::ControlChar(c));
        }
        Ok(Self(s.to_owned()))
    }

    /// The rules for a name Overvisor gives a VM it creates: only
    /// `[A-Za-z0-9._-]`, no leading `-`, at most [`VM_NAME_MAX_LEN`]
    /// characters (a UUID passes too). Readable everywhere, valid on every
    /// kind of host.
    pub fn new_strict(s: &str) -> Result<Self, VmNameError> {
        if s.is_empty() {
            return Err(VmNameError::Empty);
        }
        if s.chars().count() > VM_NAME_MAX_LEN {
            return Err(VmNameError::TooLong);
        }
        if s.starts_with('-') {
            return Err(VmNameError::LeadingDash);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(VmNameError::BadChar(c));
        }
        Ok(Self(s.to_owned()))
    }

    /// The UUID form of a VM reference, as a UUID.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid.hyphenated().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this reference is a UUID rather than a name.
    pub fn is_uuid(&self) -> bool {
        Uuid::try_parse(&self.0).is_ok()
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for VmName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VmName {
    type Error = VmNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<VmName> for String {
    fn from(n: VmName) -> Self {
        n.0
    }
}

impl std::str::FromStr for VmName {
    type Err = VmNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The power state of a VM, in libvirt's terms (Hyper-V states map onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    /// Running but blocked on a resource (libvirt "idle"); acts like running.
    Blocked,
    Paused,
    ShuttingDown,
    ShutOff,
    Crashed,
    /// Suspended by the guest's power management (S3/S4).
    PmSuspended,
    Unknown,
}

impl VmState {
    /// Maps libvirt's `virDomainState` number (as in `domstats state.state`).
    pub fn from_libvirt_code(code: i64) -> Self {
        match code {
            1 => Self::Running,
            2 => Self::Blocked,
            3 => Self::Paused,
            4 => Self::ShuttingDown,
            5 => Self::ShutOff,
            6 => Self::Crashed,
            7 => Self::PmSuspended,
            _ => Self::Unknown,
        }
    }

    /// Maps the text `virsh domstate` prints (C locale).
    pub fn from_virsh(text: &str) -> Self {
        match text.trim() {
            "running" => Self::Running,
            "idle" | "blocked" => Self::Blocked,
            "paused" => Self::Paused,
            "in shutdown" => Self::ShuttingDown,
            "shut off" => Self::ShutOff,
            "crashed" => Self::Crashed,
            "pmsuspended" => Self::PmSuspended,
            _ => Self::Unknown,
        }
    }

    /// Whether a QEMU process exists for the VM.
    pub fn is_active(self) -> bool {
        !matches!(self, Self::ShutOff | Self::Unknown)
    }
}

impl VmState {
    /// The API's name of the state (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Blocked => "blocked",
            Self::Paused => "paused",
            Self::ShuttingDown => "shutting_down",
            Self::ShutOff => "shut_off",
            Self::Crashed => "crashed",
            Self::PmSuspended => "pm_suspended",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle action an operator can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmAction {
    Start,
    /// Graceful: ACPI power button, the guest decides.
    Shutdown,
    /// Pull the plug.
    ForceStop,
    /// Graceful reboot through the guest.
    Reboot,
    /// Hardware reset, no guest involvement.
    Reset,
    /// Pause the vCPUs (libvirt "suspend").
    Suspend,
    Resume,
    /// Undefine; with or without its disks.
    Delete,
}

impl VmAction {
    pub const ALL: [VmAction; 8] = [
        Self::Start,
        Self::Shutdown,
        Self::ForceStop,
        Self::Reboot,
        Self::Reset,
        Self::Suspend,
        Self::Resume,
        Self::Delete,
    ];

    /// The one name of an action: in job kinds (`vm.<name>`), the audit log
    /// and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Shutdown => "shutdown",
            Self::ForceStop => "force_stop",
            Self::Reboot => "reboot",
            Self::Reset => "reset",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Delete => "delete",
        }
    }

    /// Whether running the action twice does the same as running it once
    /// when the second run first checks where the VM already is. Reboot and
    /// reset are not: a second run would restart the guest again.
    pub fn repeatable(self) -> bool {
        !matches!(self, Self::Reboot | Self::Reset)
    }

    /// The state the VM is in as soon as the action's command returns
    /// (a graceful shutdown or reboot only asks the guest).
    pub fn immediate_goal(self) -> Option<VmState> {
        match self {
            Self::Start | Self::Resume => Some(VmState::Running),
            Self::ForceStop => Some(VmState::ShutOff),
            Self::Suspend => Some(VmState::Paused),
            Self::Shutdown | Self::Reboot | Self::Reset | Self::Delete => None,
        }
    }

    /// The state the action leaves the VM in, when it decides one.
    pub fn goal(self) -> Option<VmState> {
        match self {
            Self::Start | Self::Resume => Some(VmState::Running),
            Self::Shutdown | Self::ForceStop | Self::Delete => Some(VmState::ShutOff),
            Self::Suspend => Some(VmState::Paused),
            Self::Reboot | Self::Reset => None,
        }
    }
}

impl fmt::Display for VmAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl VmAction {
    /// An action as spelled in `POST …/vms/{name}/{action}` (`force-stop`);
    /// delete has its own verb there, so it is not one of these.
    pub fn from_url(s: &str) -> Result<Self, InvalidInput> {
        Self::ALL
            .into_iter()
            .filter(|a| *a != Self::Delete)
            .find(|a| a.as_str().split('_').eq(s.split('-')))
            .ok_or_else(|| {
                InvalidInput::new(
                    "action",
                    "must be one of start, shutdown, force-stop, reboot, reset, suspend, resume",
                )
            })
    }
}

impl FromStr for VmAction {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| InvalidInput::new("action", format!("unknown action: {s}")))
    }
}

/// Whether `action` is a valid transition from `state`.
///
/// This is deliberately stricter than libvirt in places (e.g. delete only a
/// stopped VM, so a running one never turns transient by accident). In
/// [`VmState::Unknown`] nothing is allowed: the caller must refresh first.
pub fn allowed(state: VmState, action: VmAction) -> bool {
    use VmAction as A;
    use VmState as S;
    match action {
        A::Start => matches!(state, S::ShutOff),
        A::Shutdown | A::Reboot | A::Suspend => matches!(state, S::Running | S::Blocked),
        A::Reset => matches!(state, S::Running | S::Blocked | S::Paused),
        A::Resume => matches!(state, S::Paused | S::PmSuspended),
        A::ForceStop => matches!(
            state,
            S::Running | S::Blocked | S::Paused | S::ShuttingDown | S::Crashed | S::PmSuspended
        ),
        A::Delete => matches!(state, S::ShutOff),
    }
}

/// One line of a VM list: what a host reports cheaply for every VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmSummary {
    pub uuid: Uuid,
    /// As the host spells it: a [`VmName`] unless it holds control
    /// characters; the UUID is the handle that survives a rename.
    pub name: String,
    pub state: VmState,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// Everything we know about one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmInfo {
    pub uuid: Uuid,
    pub name: String,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<VmNic>,
    /// Guest addresses, where the host knows them (guest agent, DHCP lease).
    pub ips: Vec<String>,
    /// Guest OS identifier, where declared (libosinfo id, Hyper-V KVP).
    pub os: Option<String>,
    pub graphics: Vec<VmGraphics>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmDisk {
    /// Guest-side device name (`vda`, `hdc`).
    pub target: String,
    /// `disk`, `cdrom`, `floppy`, `lun`.
    pub device: String,
    pub bus: Option<String>,
    /// Host-side file, block device or volume, if any.
    pub source: Option<String>,
    /// Image format (`qcow2`, `raw`).
    pub format: Option<String>,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmNic {
    pub mac: Option<String>,
    /// `bridge`, `network`, `user`, `direct`, ...
    pub kind: String,
    /// The bridge or network (or switch on Hyper-V) it is plugged into.
    pub source: Option<String>,
    pub model: Option<String>,
    /// Host-side device (e.g. `vnet0`) while running.
    pub host_device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmGraphics {
    /// `vnc` or `spice`.
    pub kind: String,
    /// Listening port while running (`None` when not yet assigned).
    pub port: Option<u16>,
    pub listen: Option<String>,
}

/// A lifecycle change a host reported on its own (push, not poll).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmEventKind {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    Rebooted,
    /// Any other event type (device added, metadata changed, ...): the VM
    /// should be re-read.
    Other,
}

impl VmEventKind {
    /// Maps libvirt's lifecycle event names (as `virsh event` prints them).
    pub fn from_libvirt(name: &str) -> Self {
        match name {
            "Defined" => Self::Defined,
            "Undefined" => Self::Undefined,
            "Started" => Self::Started,
            "Suspended" => Self::Suspended,
            "Resumed" => Self::Resumed,
            "Stopped" => Self::Stopped,
            "Shutdown" => Self::Shutdown,
            "PMSuspended" => Self::PmSuspended,
            "Crashed" => Self::Crashed,
            _ => Self::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmEvent {
    /// The VM's name as the host reported it.
    pub vm: String,
    pub kind: VmEventKind,
    /// The host's own words for the reason ("Booted", "Destroyed", or the
    /// event type for [`VmEventKind::Other`]).
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_names() {
        for ok in [
            "a",
            "web-01",
            "db_2.example",
            "0e5ad3b2-4a5e-4a0c-9a43-9f1c8f3a2b11",
        ] {
            assert!(VmName::new_strict(ok).is_ok(), "{ok}");
        }
        assert_eq!(VmName::new_strict(""), Err(VmNameError::Empty));
        assert_eq!(VmName::new_strict("-rf"), Err(VmNameError::LeadingDash));
        assert_eq!(
            VmName::new_strict(&"a".repeat(65)),
            Err(VmNameError::TooLong)
        );
        assert!(VmName::new_strict(&"a".repeat(64)).is_ok());
        for bad in [
            "x;touch /tmp/pwned",
            "$(id)",
            "`id`",
            "a b",
            "a\nb",
            "a\tb",
            "a'b",
            "a\"b",
            "a|b",
            "a&b",
            "a>b",
            "a\\b",
            "a/b",
            "é",
            "a\0b",
        ] {
            assert!(
                matches!(VmName::new_strict(bad), Err(VmNameError::BadChar(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn existing_names_are_whatever_the_host_allows() {
        for ok in [
            "odd name ü",
            "-rf",
            "x;touch /tmp/pwned",
            "$(id)",
            "a'b\"c",
            "名前",
            "0e5ad3b2-4a5e-4a0c-9a43-9f1c8f3a2b11",
        ] {
            assert_eq!(VmName::parse(ok).map(String::from).as_deref(), Ok(ok));
        }
        assert!(VmName::parse(&"é".repeat(VM_NAME_MAX_BYTES / 2)).is_ok());
        assert_eq!(VmName::parse(""), Err(VmNameError::Empty));
        assert_eq!(
            VmName::parse(&"a".repeat(VM_NAME_MAX_BYTES + 1)),
            Err(VmNameError::Absurd)
        );
        for (bad, c) in [
            ("a\nb", '\n'),
            ("a\0b", '\0'),
            ("a\tb", '\t'),
            ("a\u{7f}", '\u{7f}'),
            ("a\u{85}", '\u{85}'),
        ] {
            assert_eq!(
                VmName::parse(bad),
                Err(VmNameError::ControlChar(c)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn vm_name_uuid_and_serde() {
        let u = Uuid::new_v4();
        let n = VmName::from_uuid(u);
        assert!(n.is_uuid());
        assert!(!VmName::parse("web").expect("valid").is_uuid());
        let json = serde_json::to_string(&n).expect("serialize");
        assert_eq!(serde_json::from_str::<VmName>(&json).expect("parse"), n);
        assert!(serde_json::from_str::<VmName>("\"a\\nb\"").is_err());
    }

    #[test]
    fn state_mapping() {
        assert_eq!(VmState::from_libvirt_code(1), VmState::Running);
        assert_eq!(VmState::from_libvirt_code(5), VmState::ShutOff);
        assert_eq!(VmState::from_libvirt_code(42), VmState::Unknown);
        assert_eq!(VmState::from_virsh("shut off\n"), VmState::ShutOff);
        assert_eq!(VmState::from_virsh("in shutdown"), VmState::ShuttingDown);
        assert_eq!(VmState::from_virsh("paused"), VmState::Paused);
    }

    #[test]
    fn state_machine() {
        use VmAction as A;
        use VmState as S;
        assert!(allowed(S::ShutOff, A::Start));
        assert!(!allowed(S::Running, A::Start));
        assert!(allowed(S::Running, A::Suspend));
        assert!(!allowed(S::Paused, A::Suspend));
        assert!(allowed(S::Paused, A::Resume));
        assert!(!allowed(S::Running, A::Resume));
        assert!(allowed(S::Paused, A::ForceStop));
        assert!(!allowed(S::ShutOff, A::ForceStop));
        assert!(!allowed(S::ShutOff, A::Shutdown));
        assert!(!allowed(S::Paused, A::Reboot));
        assert!(allowed(S::Paused, A::Reset));
        assert!(allowed(S::ShutOff, A::Delete));
        assert!(!allowed(S::Running, A::Delete));
        for a in [
            A::Start,
            A::Shutdown,
            A::ForceStop,
            A::Reboot,
            A::Reset,
            A::Suspend,
            A::Resume,
            A::Delete,
        ] {
            assert!(!allowed(S::Unknown, a), "{a:?}");
        }
    }
}
