//! Hosts: the hypervisors Overvisor drives. What kind they are, what they
//! report about themselves, and the SSH host-key fingerprint they are pinned
//! to (an operator accepts a fingerprint, never "any key").

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::InvalidInput;
use crate::account::{UserId, id_type};

/// Which driver talks to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostKind {
    /// KVM/QEMU through `virsh` over SSH.
    Libvirt,
    /// Hyper-V through PowerShell over SSH.
    Hyperv,
}

impl fmt::Display for HostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Libvirt => "libvirt",
            Self::Hyperv => "hyperv",
        })
    }
}

impl HostKind {
    /// What people call it: `KVM` or `Hyper-V`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Libvirt => "KVM",
            Self::Hyperv => "Hyper-V",
        }
    }
}

impl std::str::FromStr for HostKind {
    type Err = UnknownHostKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "libvirt" => Ok(Self::Libvirt),
            "hyperv" => Ok(Self::Hyperv),
            _ => Err(UnknownHostKind(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown host kind {0:?} (expected \"libvirt\" or \"hyperv\")")]
pub struct UnknownHostKind(pub String);

/// What a host says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostFacts {
    pub hostname: String,
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpus: u32,
    pub cpu_mhz: Option<u32>,
    pub sockets: Option<u32>,
    pub cores_per_socket: Option<u32>,
    pub threads_per_core: Option<u32>,
    pub memory_total_mib: u64,
    /// What the host can give a new VM: on libvirt, free memory with
    /// buffers and page cache (the kernel gives them back); the rest is
    /// what the usage graph counts as used.
    pub memory_free_mib: Option<u64>,
    /// e.g. "QEMU" or "Hyper-V".
    pub hypervisor: String,
    pub hypervisor_version: String,
    /// Version of the management layer (libvirt; the OS build on Hyper-V).
    pub management_version: String,
    /// Networks a VM can be plugged into: libvirt networks (active or not).
    #[serde(default)]
    pub networks: Vec<String>,
    /// ... and Linux bridges.
    #[serde(default)]
    pub bridges: Vec<String>,
}

/// An SSH host key fingerprint in OpenSSH's form: `SHA256:` followed by the
/// unpadded base64 of the 32-byte digest (43 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "SHA256:WfUtCh6yiEwEmg0bzsZN/86BpFpC2hj+937BK2XDXSI")]
pub struct HostKeyFingerprint(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an OpenSSH SHA256 fingerprint (expected \"SHA256:\" and 43 base64 characters)")]
pub struct BadFingerprint;

impl HostKeyFingerprint {
    pub fn parse(s: &str) -> Result<Self, BadFingerprint> {
        let digest = s.strip_prefix("SHA256:").ok_or(BadFingerprint)?;
        let base64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
        // 32 bytes → 43 base64 characters without padding; the last one only
        // carries 4 bits, but checking that is not worth the code.
        if digest.len() != 43 || !digest.chars().all(base64) {
            return Err(BadFingerprint);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostKeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for HostKeyFingerprint {
    type Error = BadFingerprint;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<HostKeyFingerprint> for String {
    fn from(f: HostKeyFingerprint) -> Self {
        f.0
    }
}

impl std::str::FromStr for HostKeyFingerprint {
    type Err = BadFingerprint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

id_type!(
    /// Identifies a registered host.
    HostId
);

/// The SSH user Overvisor logs in as when none is given (the account
/// `overvisor agent enroll` prepares).
pub const DEFAULT_SSH_USER: &str = "ovdeploy";
/// The libvirt URI used when none is given.
pub const DEFAULT_LIBVIRT_URI: &str = "qemu:///system";
/// Most tags one host may carry.
pub const MAX_TAGS: usize = 32;

/// A registered hypervisor host as the API shows it. Credentials are
/// deliberately absent: only whether the host has its own is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub id: HostId,
    pub owner: UserId,
    /// Display name, unique per owner.
    pub name: String,
    pub kind: HostKind,
    /// Hostname or IP address the control plane connects to; unique per owner.
    pub address: String,
    pub port: u16,
    /// The account Overvisor logs in as.
    pub ssh_user: String,
    pub libvirt_uri: String,
    pub tags: Vec<String>,
    /// The pinned SSH host key. `None` only for a host that enrolled
    /// itself without one: it is not used until an operator confirms a key.
    pub host_key_fingerprint: Option<HostKeyFingerprint>,
    /// Whether the host has its own uploaded credential (otherwise the
    /// owner's SSH identity is used).
    pub has_credential: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A host's display name: 1 to 64 printable characters without
/// surrounding spaces. It never reaches a host, so it may be friendly.
pub fn check_host_name(name: &str) -> Result<(), InvalidInput> {
    let len = name.chars().count();
    if len == 0 || len > 64 || name.chars().any(char::is_control) || name.trim() != name {
        return Err(InvalidInput::new(
            "name",
            "must be 1 to 64 printable characters without surrounding spaces",
        ));
    }
    Ok(())
}

/// Checks and normalises a host address: an IPv4/IPv6 address or a DNS
/// hostname (letters, digits, '-' and '.'; labels of 1 to 63 characters not
/// starting or ending with '-'). Anything a shell or SSH could read as
/// syntax or an option is refused. Hostnames are lower-cased.
pub fn parse_host_address(raw: &str) -> Result<String, InvalidInput> {
    let bad = || {
        InvalidInput::new(
            "address",
            "must be an IP address or a hostname (letters, digits, '-' and '.')",
        )
    };
    let raw = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    if let Ok(ip) = IpAddr::from_str(raw) {
        return Ok(ip.to_string());
    }
    let host = raw.strip_suffix('.').unwrap_or(raw);
    if host.is_empty() || host.len() > 253 {
        return Err(bad());
    }
    for label in host.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    // An all-numeric name like "10.0.0.300" is a typo for an address.
    if host
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(host.to_ascii_lowercase())
}

/// An SSH login name: letters, digits, '.', '_' and '-', not starting with
/// '-', at most 64 characters (Hyper-V hosts use names like `Administrator`).
pub fn check_ssh_user(user: &str) -> Result<(), InvalidInput> {
    let ok = (1..=64).contains(&user.len())
        && !user.starts_with('-')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(
            "ssh_user",
            "must be 1 to 64 of letters, digits, '.', '_' and '-', not starting with '-'",
        ))
    }
}

/// A libvirt connection URI such as `qemu:///system` or
/// `qemu+ssh://other/system`: a scheme, `://`, and URI characters only.
pub fn check_libvirt_uri(uri: &str) -> Result<(), InvalidInput> {
    let bad = || {
        InvalidInput::new(
            "libvirt_uri",
            "must look like qemu:///system (scheme://path, URI characters only)",
        )
    };
    let (scheme, rest) = uri.split_once("://").ok_or_else(bad)?;
    let scheme_ok = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'+');
    let rest_ok = rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._~:/?=&%-@,+[]".contains(&b));
    if uri.len() > 256 || !scheme_ok || !rest_ok {
        return Err(bad());
    }
    Ok(())
}

/// Checks tags (1 to 64 of letters, digits, '.', '_', ':', '=', '/', '-';
/// at most [`MAX_TAGS`]) and drops duplicates, keeping the first.
pub fn normalize_tags(tags: Vec<String>) -> Result<Vec<String>, InvalidInput> {
    if tags.len() > MAX_TAGS {
        return Err(InvalidInput::new(
            "tags",
            format!("at most {MAX_TAGS} tags are allowed"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let ok = (1..=64).contains(&tag.len())
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:=/-".contains(&b));
        if !ok {
            return Err(InvalidInput::new(
                "tags",
                "each tag must be 1 to 64 of letters, digits, '.', '_', ':', '=', '/' and '-'",
            ));
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

/// A host's own login secret. Write-only: never shown again.
// Hence no `Serialize`, and a redacted `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = CredentialInput)]
pub enum HostSecret {
    /// An OpenSSH private key without passphrase.
    PrivateKey(String),
    /// Not supported by the SSH transport yet (refused with 400).
    Password(String),
}

/// What an operator supplies to register a host.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = HostCreate)]
pub struct NewHost {
    /// Display name; defaults to the address.
    pub name: Option<String>,
    #[serde(default = "default_kind")]
    pub kind: HostKind,
    /// Hostname or IP address.
    pub address: String,
    /// Default 22.
    pub port: Option<u16>,
    /// Default `ovdeploy`.
    pub ssh_user: Option<String>,
    /// Default `qemu:///system`.
    pub libvirt_uri: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The fingerprint you confirmed (see `POST /api/v1/hosts/probe`).
    pub host_key_fingerprint: Option<HostKeyFingerprint>,
    /// Without a fingerprint: record whatever key the host presents now.
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// The host's own login; without one, your SSH identity is used.
    pub credential: Option<HostSecret>,
}

fn default_kind() -> HostKind {
    HostKind::Libvirt
}

impl NewHost {
    /// A libvirt host with what `changes` sets and defaults for the rest
    /// (pinned to its fingerprint, if it names one); a missing address is
    /// left empty, for the address check to name.
    pub fn from_changes(changes: HostChanges) -> Self {
        Self {
            name: changes.name,
            kind: default_kind(),
            address: changes.address.unwrap_or_default(),
            port: changes.port,
            ssh_user: changes.ssh_user,
            libvirt_uri: changes.libvirt_uri,
            tags: changes.tags.unwrap_or_default(),
            host_key_fingerprint: changes.host_key_fingerprint,
            trust_on_first_use: false,
            credential: changes.credential,
        }
    }
}

/// Changes to a host; a field left out is kept.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = HostUpdate)]
pub struct HostChanges {
    pub name: Option<String>,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub ssh_user: Option<String>,
    pub libvirt_uri: Option<String>,
    /// Replaces all tags.
    pub tags: Option<Vec<String>>,
    /// A newly confirmed host key (after a host was reinstalled).
    pub host_key_fingerprint: Option<HostKeyFingerprint>,
    pub credential: Option<HostSecret>,
    /// Forget the host's own credential and use your SSH identity again.
    #[serde(default)]
    pub remove_credential: bool,
}

impl HostSecret {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PrivateKey(_) => "private_key",
            Self::Password(_) => "password",
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::PrivateKey(s) | Self::Password(s) => s.as_bytes(),
        }
    }
}

impl HostSecret {
    /// Rebuilds a secret from its [`HostSecret::kind`] and bytes (as sealed).
    pub fn from_parts(kind: &str, bytes: Vec<u8>) -> Option<Self> {
        let text = String::from_utf8(bytes).ok()?;
        match kind {
            "private_key" => Some(Self::PrivateKey(text)),
            "password" => Some(Self::Password(text)),
            _ => None,
        }
    }

    /// `kind` NUL bytes: one buffer to seal beside a job.
    pub fn to_sealable(&self) -> Vec<u8> {
        let mut out = self.kind().as_bytes().to_vec();
        out.push(0);
        out.extend_from_slice(self.bytes());
        out
    }

    pub fn from_sealable(buffer: Vec<u8>) -> Option<Self> {
        let at = buffer.iter().position(|b| *b == 0)?;
        let kind = std::str::from_utf8(&buffer[..at]).ok()?.to_owned();
        Self::from_parts(&kind, buffer[at + 1..].to_vec())
    }
}

impl fmt::Debug for HostSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostSecret::{}(<redacted>)", self.kind())
    }
}

/// What to do with a host's credential on update.
#[derive(Debug, Clone)]
pub enum CredentialChange {
    Keep,
    Set(HostSecret),
    Remove,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses() {
        assert_eq!(parse_host_address("10.0.0.1").as_deref(), Ok("10.0.0.1"));
        assert_eq!(parse_host_address("[::1]").as_deref(), Ok("::1"));
        assert_eq!(parse_host_address("fe80::1").as_deref(), Ok("fe80::1"));
        assert_eq!(
            parse_host_address("KVM-01.Example.org.").as_deref(),
            Ok("kvm-01.example.org")
        );
        for bad in [
            "",
            "-oProxyCommand=x",
            "a;b",
            "a b",
            "$(id)",
            "`id`",
            "a\nb",
            "host\n",
            "a|b",
            "a&b",
            "a/b",
            "user@host",
            "-host",
            "host-",
            "a..b",
            "10.0.0.300",
            "é.example",
            &"a".repeat(64),
            &["a"; 130].join("."),
        ] {
            assert!(parse_host_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_fields() {
        assert!(check_ssh_user("ovdeploy").is_ok());
        assert!(check_ssh_user("Administrator").is_ok());
        for bad in ["", "-l", "a b", "a;b", "root\n", &"u".repeat(65)] {
            assert!(check_ssh_user(bad).is_err(), "{bad:?}");
        }
        assert!(check_libvirt_uri("qemu:///system").is_ok());
        assert!(check_libvirt_uri("qemu+tcp://h:16509/system").is_ok());
        for bad in [
            "",
            "system",
            "qemu:///sys tem",
            "qemu:///x;id",
            "QEMU:///x",
            "://x",
        ] {
            assert!(check_libvirt_uri(bad).is_err(), "{bad:?}");
        }
        assert!(check_host_name("kvm 01 (rack 3)").is_ok());
        assert!(check_host_name(" x").is_err());
        assert!(check_host_name("a\nb").is_err());
        assert_eq!(
            normalize_tags(vec!["env=prod".into(), "rack:3".into(), "env=prod".into()]),
            Ok(vec!["env=prod".to_owned(), "rack:3".to_owned()])
        );
        assert!(normalize_tags(vec!["a b".into()]).is_err());
        assert!(normalize_tags(vec![String::new()]).is_err());
        assert!(normalize_tags(vec!["t".into(); MAX_TAGS + 1]).is_err());
    }

    #[test]
    fn fingerprints() {
        let good = "SHA256:WfUtCh6yiEwEmg0bzsZN/86BpFpC2hj+937BK2XDXSI";
        assert_eq!(
            HostKeyFingerprint::parse(good).expect("valid").as_str(),
            good
        );
        for bad in [
            "",
            "WfUtCh6yiEwEmg0bzsZN/86BpFpC2hj+937BK2XDXSI",
            "MD5:aa:bb",
            "SHA256:short",
            "SHA256:WfUtCh6yiEwEmg0bzsZN/86BpFpC2hj+937BK2XDXS=",
            "SHA256:WfUtCh6yiEwEmg0bzsZN/86BpFpC2hj+937BK2XDXSI\n",
        ] {
            assert!(HostKeyFingerprint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_kind_round_trip() {
        for k in [HostKind::Libvirt, HostKind::Hyperv] {
            assert_eq!(k.to_string().parse::<HostKind>(), Ok(k));
            let json = serde_json::to_string(&k).expect("serialize");
            assert_eq!(json, format!("\"{k}\""));
        }
        assert!("vmware".parse::<HostKind>().is_err());
    }

    #[test]
    fn host_bodies_refuse_unknown_fields_and_hide_secrets() {
        let new: NewHost = serde_json::from_value(serde_json::json!({
            "address": "kvm1",
            "credential": {"private_key": "PEM"},
        }))
        .expect("minimal body");
        assert_eq!(new.kind, HostKind::Libvirt);
        assert!(!new.trust_on_first_use && new.tags.is_empty());
        assert!(!format!("{new:?}").contains("PEM"), "Debug is redacted");
        let typo = serde_json::json!({"address": "kvm1", "ssh_usr": "x"});
        assert!(serde_json::from_value::<NewHost>(typo).is_err());
        let changes: HostChanges =
            serde_json::from_value(serde_json::json!({"remove_credential": true})).expect("body");
        assert!(changes.remove_credential && changes.name.is_none());
        let bad = serde_json::json!({"credential": {"private_key": "k", "password": "p"}});
        assert!(serde_json::from_value::<HostChanges>(bad).is_err());
    }
}
