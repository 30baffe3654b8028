//! What an operator asks for when deploying a VM, and the checks that turn
//! it into a [`Deployment`]: every field is validated against the profile
//! and against the rules of what it becomes in the guest (a hostname, a
//! Unix or Windows account, an `authorized_keys` line), so hostile input is
//! refused here, with the field named, before anything is generated.

use overvisor_model::InvalidInput;
use overvisor_model::vm::VmName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::catalog::Catalog;
use crate::profile::{ImageSource, ImageTransfer, OsFamily, Profile, Sizing, check_transfer};
use crate::secret::{ProductKey, RequestSecret};
use crate::ssh_keys::check_public_key;
use crate::text::check_chars;

/// The most SSH keys one deployment injects.
pub const MAX_SSH_KEYS: usize = 32;
/// useradd's limit for a Linux user name.
const LINUX_USERNAME_MAX: usize = 32;
/// The SAM account name limit.
const WINDOWS_USERNAME_MAX: usize = 20;
/// Windows NetBIOS computer names are at most 15 characters.
const WINDOWS_COMPUTER_NAME_MAX: usize = 15;

/// A request to deploy a VM from a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequest {
    /// The profile's name (`GET /api/v1/profiles`).
    pub profile: String,
    /// The VM's name; also its hostname (`_` becomes `-`).
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub network: NetworkAttachment,
    /// OpenSSH public keys, one per entry (`ssh-ed25519 AAAA… comment`).
    /// Left out: the requesting account's guest keys (none on Windows);
    /// given (even `[]`): exactly these, instead of the account's.
    #[serde(default)]
    pub ssh_keys: Option<Vec<String>>,
    /// The account created in the guest. Left out: the requesting
    /// account's name, as a guest user name (`.` becomes `-`, cut to the
    /// guest's limit). On Windows, `Administrator` means no account
    /// besides the built-in one.
    #[serde(default)]
    pub username: Option<String>,
    /// A language and region such as `en-US` (default `en-US`).
    pub locale: Option<String>,
    /// An IANA time zone (`Europe/Berlin`) for Linux, a Windows time zone
    /// id (`W. Europe Standard Time`) for Windows; default `UTC`.
    pub timezone: Option<String>,
    /// How the image reaches the host, instead of the profile's
    /// `transfer`: `host` (the host downloads it) or `stream` (the control
    /// plane sends it over the host's SSH connection).
    #[serde(default)]
    pub image_transfer: Option<ImageTransfer>,
    /// Windows only: the product key Setup installs with and activates
    /// (`XXXXX-XXXXX-XXXXX-XXXXX-XXXXX`), for installer media that asks
    /// for one (evaluation media does not). It goes only into the
    /// Autounattend.xml sealed to the job: never stored otherwise, logged
    /// or shown again.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "XXXXX-XXXXX-XXXXX-XXXXX-XXXXX")]
    pub product_key: Option<RequestSecret>,
}

/// Where the VM's network card is plugged in on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkAttachment {
    /// A Linux bridge on the host, e.g. `{"bridge": "br0"}`.
    Bridge(String),
    /// A libvirt network, e.g. `{"network": "default"}`.
    Network(String),
}

/// A checked request: everything the generators need, nothing unchecked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub profile: Profile,
    pub name: VmName,
    /// The guest's host name (first label of the name, RFC 1123).
    pub hostname: String,
    /// The full name when the VM's name has dots (`web.example.org`).
    pub fqdn: Option<String>,
    pub sizing: Sizing,
    pub network: NetworkAttachment,
    /// Each key re-encoded by the parser, so no input byte reaches the seed
    /// unparsed.
    pub ssh_keys: Vec<String>,
    pub username: String,
    pub locale: Locale,
    pub timezone: String,
    /// Windows only.
    pub product_key: Option<ProductKey>,
}

/// A language and region, `en-US`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locale {
    pub language: String,
    pub region: String,
}

impl Locale {
    /// `en-US`, as Windows writes it.
    pub fn tag(&self) -> String {
        format!("{}-{}", self.language, self.region)
    }

    /// `en_US.UTF-8`, as glibc writes it.
    pub fn posix(&self) -> String {
        format!("{}_{}.UTF-8", self.language, self.region)
    }

    fn parse(s: &str) -> Result<Self, InvalidInput> {
        let bad = || InvalidInput::new("locale", "must look like en-US (language-REGION)");
        let (language, region) = s.split_once('-').ok_or_else(bad)?;
        let letters = |s: &str, n: std::ops::RangeInclusive<usize>, upper: bool| {
            n.contains(&s.len())
                && s.chars().all(|c| {
                    if upper {
                        c.is_ascii_uppercase()
                    } else {
                        c.is_ascii_lowercase()
                    }
                })
        };
        if !letters(language, 2..=3, false) || !letters(region, 2..=2, true) {
            return Err(bad());
        }
        Ok(Self {
            language: language.to_owned(),
            region: region.to_owned(),
        })
    }
}

/// The name's parts a deployment uses.
pub struct CheckedName {
    pub name: VmName,
    pub hostname: String,
    pub fqdn: Option<String>,
}

/// The guest account's parts a deployment uses.
pub struct CheckedAccount {
    pub username: String,
    pub ssh_keys: Vec<String>,
    pub locale: Locale,
    pub timezone: String,
    pub product_key: Option<ProductKey>,
}

impl DeploymentRequest {
    /// Checks the request against the catalog's profile: [`Self::profile_in`],
    /// [`Self::check_sizing`], [`Self::check_name`], [`Self::check_account`],
    /// in that order. The portal's deploy wizard asks them one by one, as
    /// its steps fill the request in.
    pub fn check(&self, catalog: &Catalog) -> Result<Deployment, InvalidInput> {
        let profile = self.profile_in(catalog)?;
        self.check_transfer(profile)?;
        let sizing = self.check_sizing(profile)?;
        let CheckedName {
            name,
            hostname,
            fqdn,
        } = self.check_name(profile)?;
        let CheckedAccount {
            username,
            ssh_keys,
            locale,
            timezone,
            product_key,
        } = self.check_account(profile)?;
        Ok(Deployment {
            profile: profile.clone(),
            name,
            hostname,
            fqdn,
            sizing,
            network: self.network.clone(),
            ssh_keys,
            username,
            locale,
            timezone,
            product_key,
        })
    }

    /// The request with what it leaves out filled in from the requesting
    /// account: its guest user name (when the account's name makes a valid
    /// one on the profile's OS) and its guest keys (`account_keys`; none
    /// for a Windows profile, which takes no keys). A request naming an
    /// unknown profile is answered as it is (its check refuses it).
    pub fn with_account_defaults(
        &self,
        catalog: &Catalog,
        account: &str,
        account_keys: Vec<String>,
    ) -> DeploymentRequest {
        let mut filled = self.clone();
        let Ok(profile) = self.profile_in(catalog) else {
            return filled;
        };
        if filled.username.is_none() {
            filled.username = default_username(account, profile.os);
        }
        if filled.ssh_keys.is_none() && profile.os == OsFamily::Linux {
            filled.ssh_keys = Some(account_keys);
        }
        filled
    }

    /// The profile the request names.
    pub fn profile_in<'c>(&self, catalog: &'c Catalog) -> Result<&'c Profile, InvalidInput> {
        catalog
            .get(&self.profile)
            .ok_or_else(|| InvalidInput::new("profile", "is not a known profile"))
    }

    /// How the profile's image reaches the host: the request's
    /// `image_transfer`, else the profile's; `None` for a profile that
    /// downloads no image (an installer on the host).
    pub fn check_transfer(&self, profile: &Profile) -> Result<Option<ImageTransfer>, InvalidInput> {
        match &profile.image.source {
            ImageSource::Download {
                ca_file, transfer, ..
            } => {
                let transfer = self.image_transfer.unwrap_or(*transfer);
                check_transfer("image_transfer", transfer, ca_file.as_ref())?;
                Ok(Some(transfer))
            }
            ImageSource::HostFile { .. } if self.image_transfer.is_some() => {
                Err(InvalidInput::new(
                    "image_transfer",
                    "the profile downloads no image (its installer is on the host)",
                ))
            }
            ImageSource::HostFile { .. } => Ok(None),
        }
    }

    /// The sizes (at least the profile's minimum) and the network's name.
    pub fn check_sizing(&self, profile: &Profile) -> Result<Sizing, InvalidInput> {
        let sizing = Sizing {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib,
        };
        sizing.check("", &profile.minimum)?;
        check_network(&self.network)?;
        Ok(sizing)
    }

    /// The VM's name, and the host name it gives the guest.
    pub fn check_name(&self, profile: &Profile) -> Result<CheckedName, InvalidInput> {
        let name =
            VmName::new_strict(&self.name).map_err(|e| InvalidInput::new("name", e.to_string()))?;
        let (hostname, fqdn) = hostnames(name.as_str(), profile.os)?;
        Ok(CheckedName {
            name,
            hostname,
            fqdn,
        })
    }

    /// The guest account: user name, SSH keys, locale, time zone (and a
    /// Windows product key).
    pub fn check_account(&self, profile: &Profile) -> Result<CheckedAccount, InvalidInput> {
        let username = self.username.as_deref().ok_or_else(|| {
            InvalidInput::new(
                "username",
                "must be given: the account's name is not a valid user name on this guest",
            )
        })?;
        check_username(username, profile.os)?;
        let ssh_keys = check_ssh_keys(self.ssh_keys.as_deref().unwrap_or_default(), profile.os)?;
        let locale = Locale::parse(self.locale.as_deref().unwrap_or("en-US"))?;
        let timezone = self.timezone.as_deref().unwrap_or("UTC");
        check_timezone(timezone, profile.os)?;
        let product_key = match (&self.product_key, profile.os) {
            (None, _) => None,
            (Some(key), OsFamily::Windows) => Some(ProductKey::parse("product_key", key.expose())?),
            (Some(_), OsFamily::Linux) => {
                return Err(InvalidInput::new(
                    "product_key",
                    "is only for Windows profiles",
                ));
            }
        };
        Ok(CheckedAccount {
            username: username.to_owned(),
            ssh_keys,
            locale,
            timezone: timezone.to_owned(),
            product_key,
        })
    }
}

/// The guest's host name from the VM's (strict) name: lower case, `_` as
/// `-`, each dot-separated label a valid RFC 1123 label. Windows computer
/// names are the first label cut to 15 characters.
fn hostnames(name: &str, os: OsFamily) -> Result<(String, Option<String>), InvalidInput> {
    let full = name.to_ascii_lowercase().replace('_', "-");
    for label in full.split('.') {
        if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
            return Err(InvalidInput::new(
                "name",
                "cannot be a host name: each dot-separated part needs 1 to 63 characters \
                 and must not start or end with '-' or '_'",
            ));
        }
    }
    let first = full.split('.').next().unwrap_or_default().to_owned();
    let hostname = match os {
        OsFamily::Linux => first,
        OsFamily::Windows => {
            let short: String = first.chars().take(WINDOWS_COMPUTER_NAME_MAX).collect();
            let short = short.trim_end_matches('-').to_owned();
            if short.chars().all(|c| c.is_ascii_digit()) {
                return Err(InvalidInput::new(
                    "name",
                    "cannot be a Windows computer name: it must not be only digits",
                ));
            }
            short
        }
    };
    let fqdn = full.contains('.').then_some(full);
    Ok((hostname, fqdn))
}

fn check_network(network: &NetworkAttachment) -> Result<(), InvalidInput> {
    let (field, value, max) = match network {
        // Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
        NetworkAttachment::Bridge(b) => ("network.bridge", b, 15),
        NetworkAttachment::Network(n) => ("network.network", n, 64),
    };
    check_chars(
        field,
        value,
        max,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
        "only letters, digits, '.', '_' and '-' are allowed",
    )?;
    if value.starts_with('-') {
        return Err(InvalidInput::new(field, "must not start with '-'"));
    }
    Ok(())
}

/// Checks each key ([`check_public_key`]) and answers it re-encoded.
fn check_ssh_keys(keys: &[String], os: OsFamily) -> Result<Vec<String>, InvalidInput> {
    if os == OsFamily::Windows && !keys.is_empty() {
        return Err(InvalidInput::new(
            "ssh_keys",
            "are not injected into Windows guests yet (Windows has no SSH server by default)",
        ));
    }
    if keys.len() > MAX_SSH_KEYS {
        return Err(InvalidInput::new(
            "ssh_keys",
            format!("at most {MAX_SSH_KEYS} keys"),
        ));
    }
    keys.iter()
        .enumerate()
        .map(|(i, key)| Ok(check_public_key(&format!("ssh_keys[{i}]"), key)?.openssh))
        .collect()
}

/// Accounts that exist on every system and must not be taken over.
const RESERVED_LINUX_USERS: [&str; 22] = [
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "sshd",
    "messagebus",
    "syslog",
    "polkitd",
];

const RESERVED_WINDOWS_USERS: [&str; 4] =
    ["guest", "defaultaccount", "wdagutilityaccount", "system"];

/// The guest user name an account's name gives (`.` as `-`, cut to the
/// OS's limit), if it is a valid, non-system one there.
pub fn default_username(account: &str, os: OsFamily) -> Option<String> {
    let max = match os {
        OsFamily::Linux => LINUX_USERNAME_MAX,
        OsFamily::Windows => WINDOWS_USERNAME_MAX,
    };
    let name: String = account
        .chars()
        .map(|c| match (c, os) {
            ('.', OsFamily::Linux) => '-',
            (c, _) => c,
        })
        .take(max)
        .collect();
    check_username(&name, os).ok().map(|()| name)
}

fn check_username(name: &str, os: OsFamily) -> Result<(), InvalidInput> {
    match os {
        OsFamily::Linux => {
            // Debian's NAME_REGEX without uppercase; 32 is useradd's limit.
            check_chars(
                "username",
                name,
                LINUX_USERNAME_MAX,
                |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'),
                "only lower-case letters, digits, '_' and '-' are allowed",
            )?;
            if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
                return Err(InvalidInput::new(
                    "username",
                    "must start with a lower-case letter or '_'",
                ));
            }
            if RESERVED_LINUX_USERS.contains(&name) || name.starts_with("systemd-") {
                return Err(InvalidInput::new("username", "is a system account"));
            }
        }
        OsFamily::Windows => {
            // Windows allows more, but not `"/\[]:;|=,+*?<>@`; 20 is the
            // SAM account name limit.
            check_chars(
                "username",
                name,
                WINDOWS_USERNAME_MAX,
                |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
                "only letters, digits, '.', '_' and '-' are allowed",
            )?;
            if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return Err(InvalidInput::new("username", "must start with a letter"));
            }
            if RESERVED_WINDOWS_USERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(InvalidInput::new("username", "is a built-in account"));
            }
        }
    }
    Ok(())
}

fn check_timezone(tz: &str, os: OsFamily) -> Result<(), InvalidInput> {
    match os {
        OsFamily::Linux => {
            check_chars(
                "timezone",
                tz,
                64,
                |c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '+' | '-'),
                "an IANA time zone such as Europe/Berlin",
            )?;
            if tz.starts_with(['/', '-', '+']) || tz.ends_with('/') || tz.contains("//") {
                return Err(InvalidInput::new(
                    "timezone",
                    "must be an IANA time zone such as Europe/Berlin",
                ));
            }
        }
        OsFamily::Windows => {
            check_chars(
                "timezone",
                tz,
                64,
                |c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '(' | ')' | '+' | '-'),
                "a Windows time zone id such as W. Europe Standard Time",
            )?;
            if tz.trim() != tz {
                return Err(InvalidInput::new(
                    "timezone",
                    "must not start or end with a space",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
