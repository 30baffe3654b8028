//! Hosts: the hypervisors Overvisor drives. What kind they are, what they
//! report about themselves, and the SSH host-key fingerprint they are pinned
//! to (an operator accepts a fingerprint, never "any key").

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    pub memory_free_mib: Option<u64>,
    /// e.g. "QEMU" or "Hyper-V".
    pub hypervisor: String,
    pub hypervisor_version: String,
    /// Version of the management layer (libvirt; the OS build on Hyper-V).
    pub management_version: String,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
