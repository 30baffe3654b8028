//! What a guest is given: its host name, accounts (password hashes, never
//! passwords), authorized SSH keys, files with their modes, and optionally
//! a static network configuration. Zeroed when dropped.
//!
//! [`Payload::check`] is the one set of rules: the control plane runs it
//! before sealing, the agent again before applying anything, so a value
//! that would become a shell word, a path outside the root or a second
//! line in `/etc/shadow` never reaches a guest's system files.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub hostname: String,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub files: Vec<File>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// A crypt(3) hash (`$6$…`): set with `chpasswd -e`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// Passwordless sudo, as the distributions' own cloud user has.
    #[serde(default)]
    pub sudo: bool,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Absolute, without `.` or `..` components.
    pub path: String,
    /// Permission bits (at most `0o7777`).
    pub mode: u32,
    #[serde(with = "crate::b64")]
    pub content: Vec<u8>,
}

/// One interface's static address; without it the guest keeps DHCP.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub interface: String,
    /// `address/prefix`, IPv4 or IPv6.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
}

impl std::fmt::Debug for Payload {
    /// Names only: a payload's secrets never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        let files: Vec<&str> = self.files.iter().map(|f| f.path.as_str()).collect();
        f.debug_struct("Payload")
            .field("hostname", &self.hostname)
            .field("users", &users)
            .field("files", &files)
            .field("network", &self.network.as_ref().map(|n| &n.interface))
            .finish()
    }
}

/// A payload field that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct PayloadError {
    pub field: String,
    pub why: &'static str,
}

fn refuse<T>(field: impl Into<String>, why: &'static str) -> Result<T, PayloadError> {
    Err(PayloadError {
        field: field.into(),
        why,
    })
}

/// At most this many users, files and keys each: a payload is small.
const MAX_ITEMS: usize = 64;

impl Payload {
    pub fn check(&self) -> Result<(), PayloadError> {
        check_hostname(&self.hostname)?;
        if self.users.len() > MAX_ITEMS || self.files.len() > MAX_ITEMS {
            return refuse("users", "too many users or files");
        }
        for (i, user) in self.users.iter().enumerate() {
            user.check(&format!("users[{i}]"))?;
        }
        for (i, file) in self.files.iter().enumerate() {
            check_path(&format!("files[{i}].path"), &file.path)?;
            if file.mode > 0o7777 {
                return refuse(format!("files[{i}].mode"), "must be at most 0o7777");
            }
        }
        if let Some(net) = &self.network {
            net.check()?;
        }
        Ok(())
    }
}

impl User {
    fn check(&self, at: &str) -> Result<(), PayloadError> {
        let name = self.name.as_bytes();
        let first_ok = name
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || *c == b'_');
        let rest_ok = name
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'));
        if !first_ok || !rest_ok || name.len() > 32 {
            return refuse(
                format!("{at}.name"),
                "must be 1-32 of a-z 0-9 _ -, starting with a letter or _",
            );
        }
        if matches!(
            self.name.as_str(),
            "root" | "daemon" | "bin" | "sys" | "nobody"
        ) {
            return refuse(format!("{at}.name"), "is a system account");
        }
        if let Some(hash) = &self.password_hash {
            let printable = hash.bytes().all(|c| c.is_ascii_graphic() && c != b':');
            if !hash.starts_with('$') || !printable || hash.len() > 512 {
                return refuse(
                    format!("{at}.password_hash"),
                    "must be a crypt(3) hash starting with $, printable, without ':'",
                );
            }
        }
        if self.authorized_keys.len() > MAX_ITEMS {
            return refuse(format!("{at}.authorized_keys"), "too many keys");
        }
        for (k, key) in self.authorized_keys.iter().enumerate() {
            if key.is_empty() || key.len() > 16 * 1024 || key.chars().any(char::is_control) {
                return refuse(
                    format!("{at}.authorized_keys[{k}]"),
                    "must be one line of at most 16 KiB",
                );
            }
        }
        Ok(())
    }
}

impl Network {
    fn check(&self) -> Result<(), PayloadError> {
        let iface = self.interface.as_bytes();
        if iface.is_empty()
            || iface.len() > 15
            || !iface
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return refuse("network.interface", "must be an interface name");
        }
        let address_ok = self.address.split_once('/').is_some_and(|(ip, prefix)| {
            ip.parse::<std::net::IpAddr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 128)
        });
        if !address_ok {
            return refuse("network.address", "must be address/prefix");
        }
        let ip = |s: &String| s.parse::<std::net::IpAddr>().is_ok();
        if self.gateway.as_ref().is_some_and(|g| !ip(g)) {
            return refuse("network.gateway", "must be an IP address");
        }
        if !self.dns.iter().all(ip) || self.dns.len() > 8 {
            return refuse("network.dns", "must be at most 8 IP addresses");
        }
        Ok(())
    }
}

/// RFC 1123 labels, dots between, at most 253 characters.
fn check_hostname(name: &str) -> Result<(), PayloadError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return refuse("hostname", "must be a host name (letters, digits, -, dots)");
    }
    Ok(())
}

fn check_path(field: &str, path: &str) -> Result<(), PayloadError> {
    let parts_ok = path
        .split('/')
        .skip(1)
        .all(|p| !p.is_empty() && p != "." && p != "..");
    if !path.starts_with('/') || !parts_ok || path.len() > 4096 || path.contains('\0') {
        return refuse(field, "must be an absolute path without . or .. components");
    }
    Ok(())
}
