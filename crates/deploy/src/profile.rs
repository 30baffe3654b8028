//! Deployment profiles: everything Overvisor needs to know about an operating
//! system to deploy it (where its image comes from and how it is verified,
//! firmware, buses, sizing, how the guest is configured on first boot).
//!
//! A profile is data. It is read from a TOML file ([`ProfileFile`], the shape
//! operators write) and checked once into a [`Profile`], whose fields are
//! typed so nothing downstream re-checks them. Every check names the field
//! it refused, so a bad file stops start-up with file, field and reason.

use std::fmt;

use overvisor_model::InvalidInput;
pub use overvisor_model::operation::{DigestAlgorithm, ImageTransfer};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::text::{check_chars, check_identifier, check_printable};

/// The most vCPUs a deployment may ask for (libvirt's KVM limit is higher;
/// beyond this a request is a typo).
pub const MAX_VCPUS: u32 = 512;
/// The most memory a deployment may ask for: 16 TiB.
pub const MAX_MEMORY_MIB: u64 = 16 * 1024 * 1024;
/// The largest system disk a deployment may ask for: 64 TiB.
pub const MAX_DISK_GIB: u64 = 64 * 1024;

const PROFILE_NAME_MAX: usize = 64;
const TITLE_MAX: usize = 80;
const URL_MAX: usize = 2048;
const PATH_MAX: usize = 1024;

/// `as_str`, `Display` and `From<_> for String` of a checked string newtype.
macro_rules! checked_string {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}

/// A profile's name: the file name without `.toml` for operators' profiles.
/// Lower case so it is the same on every file system and in every URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(into = "String")]
#[schema(value_type = String, example = "ubuntu-24.04")]
pub struct ProfileName(String);

impl ProfileName {
    pub fn parse(field: &str, s: &str) -> Result<Self, InvalidInput> {
        check_identifier(field, s, PROFILE_NAME_MAX)?;
        Ok(Self(s.to_owned()))
    }
}

checked_string!(ProfileName);

// Lets the catalog look a profile up by the name a request carries.
impl std::borrow::Borrow<str> for ProfileName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    Linux,
    Windows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// The bus of the system disk. `virtio` is fastest; Windows needs the
/// virtio-win drivers for it, `sata` works with the installer alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    #[default]
    Virtio,
    /// virtio-scsi: a virtio SCSI controller (discard, many disks).
    Scsi,
    Sata,
}

/// The model of the network card, the same trade-off as [`DiskBus`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    #[default]
    Virtio,
    E1000e,
}

/// How the guest receives its first-boot configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SeedKind {
    /// cloud-init NoCloud: an ISO labelled `CIDATA` with user-data and meta-data.
    Nocloud,
    /// Windows Setup: an ISO with `Autounattend.xml` at its root.
    Autounattend,
}

/// Who puts the guest's secrets (password hash, SSH keys) into it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Provisioning {
    /// cloud-init reads them from the seed (which then holds the hash).
    #[default]
    CloudInit,
    /// The guest agent (`overvisor-guest`, in the image) receives them
    /// sealed to its own key; the seed holds no secret.
    Agent,
}

/// What the image file is: a disk to clone (cloud images) or an installer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Qcow2,
    Raw,
    Iso,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
            Self::Iso => "iso",
        }
    }
}

/// vCPUs, memory and system disk size: a profile's defaults and minimum,
/// and what a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sizing {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Sizing {
    /// Checks each size is at least `minimum` and at most Overvisor's limits;
    /// errors name the field as `{prefix}vcpus` and so on.
    pub fn check(&self, prefix: &str, minimum: &Sizing) -> Result<(), InvalidInput> {
        let within = |name: &str, value: u64, min: u64, max: u64| {
            if value < min.max(1) {
                Err(InvalidInput::new(
                    format!("{prefix}{name}"),
                    format!("must be at least {}", min.max(1)),
                ))
            } else if value > max {
                Err(InvalidInput::new(
                    format!("{prefix}{name}"),
                    format!("must be at most {max}"),
                ))
            } else {
                Ok(())
            }
        };
        within(
            "vcpus",
            self.vcpus.into(),
            minimum.vcpus.into(),
            MAX_VCPUS.into(),
        )?;
        within(
            "memory_mib",
            self.memory_mib,
            minimum.memory_mib,
            MAX_MEMORY_MIB,
        )?;
        within("disk_gib", self.disk_gib, minimum.disk_gib, MAX_DISK_GIB)
    }
}

/// An absolute path on a hypervisor host. Only a conservative character set
/// is accepted: paths travel in remote commands and in domain XML, and the
/// operator chooses them, so there is no reason for anything exotic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(into = "String")]
#[schema(value_type = String, example = "/var/lib/overvisor/iso/windows-server-2022.iso")]
pub struct HostPath(String);

impl HostPath {
    pub fn parse(field: &str, s: &str) -> Result<Self, InvalidInput> {
        check_chars(
            field,
            s,
            PATH_MAX,
            |c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'),
            "only letters, digits, '/', '.', '_', '-' and '+' are allowed",
        )?;
        if !s.starts_with('/') {
            return Err(InvalidInput::new(field, "must be an absolute path"));
        }
        if s.ends_with('/') || s.split('/').skip(1).any(|c| matches!(c, "" | "." | "..")) {
            return Err(InvalidInput::new(
                field,
                "must name a file, without empty, '.' or '..' components",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

checked_string!(HostPath);

/// Checks an image or checksum-list URL: http(s), a host, no credentials,
/// no fragment, and none of the characters a shell or a query string would
/// give meaning to. The URL is quoted when it reaches a host anyway; refusing
/// these characters keeps a profile from even looking like an injection.
fn check_url(field: &str, s: &str, https_only: bool) -> Result<String, InvalidInput> {
    check_chars(
        field,
        s,
        URL_MAX,
        |c| c.is_ascii_alphanumeric() || "-._~:/?=+,%@[]".contains(c),
        "only letters, digits and -._~:/?=+,%@[] are allowed (no shell metacharacters)",
    )?;
    let url =
        url::Url::parse(s).map_err(|e| InvalidInput::new(field, format!("is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if !https_only => {}
        _ if https_only => return Err(InvalidInput::new(field, "must be an https:// URL")),
        _ => {
            return Err(InvalidInput::new(
                field,
                "must be an http:// or https:// URL",
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(InvalidInput::new(field, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InvalidInput::new(
            field,
            "must not carry credentials (profiles are not secret)",
        ));
    }
    Ok(url.into())
}

fn check_hex(field: &str, s: &str, len: usize) -> Result<String, InvalidInput> {
    if s.len() != len || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(InvalidInput::new(
            field,
            format!("must be {len} hexadecimal digits"),
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// Checks that `transfer` goes with the image's `ca_file`: a streamed
/// image is downloaded by the control plane, which trusts its own store,
/// not a file on the hosts.
pub fn check_transfer(
    field: &str,
    transfer: ImageTransfer,
    ca_file: Option<&HostPath>,
) -> Result<(), InvalidInput> {
    if transfer == ImageTransfer::Stream && ca_file.is_some() {
        return Err(InvalidInput::new(
            field,
            "cannot be stream for an image with a ca_file (a CA file on the hosts; \
             the control plane downloads a streamed image with its own trust store)",
        ));
    }
    Ok(())
}

/// A profile as an operator writes it in `<profiles_dir>/<name>.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub title: String,
    pub os: OsFamily,
    pub firmware: Firmware,
    /// UEFI Secure Boot with Microsoft's keys enrolled (UEFI only).
    #[serde(default)]
    pub secure_boot: bool,
    #[serde(default)]
    pub tpm: bool,
    #[serde(default)]
    pub disk_bus: DiskBus,
    #[serde(default)]
    pub nic_model: NicModel,
    pub seed: SeedKind,
    #[serde(default)]
    pub provisioning: Provisioning,
    pub defaults: Sizing,
    pub minimum: Sizing,
    pub image: ImageFile,
    /// Packages cloud-init installs on first boot (e.g. the guest agent).
    #[serde(default)]
    pub packages: Vec<String>,
    pub windows: Option<WindowsFile>,
}

/// `[image]`: either `url` with `sha256` or `checksums_url`, or `host_path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFile {
    pub format: ImageFormat,
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub checksums_url: Option<String>,
    pub checksums_algorithm: Option<DigestAlgorithm>,
    /// A CA certificate on the hosts that downloads trust (a mirror with
    /// a private CA).
    pub ca_file: Option<String>,
    /// How the image reaches the hosts: `host` (they download it, the
    /// default) or `stream` (the control plane downloads it and sends it
    /// over the host's SSH connection).
    pub transfer: Option<ImageTransfer>,
    pub host_path: Option<String>,
}

/// `[windows]`: what Windows Setup needs besides the installer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsFile {
    /// The image in `install.wim` to install, by its name
    /// (`/IMAGE/NAME`, e.g. "Windows Server 2022 SERVERSTANDARD").
    pub image_name: String,
    /// The virtio-win driver ISO on the host; needed for virtio buses.
    pub virtio_win_iso: Option<String>,
    /// The OS directory inside the virtio-win ISO (`2k22` for Server 2022).
    pub virtio_win_dir: Option<String>,
    /// How long the deployment waits for Setup to finish (the guest agent
    /// answers) before it removes the Autounattend media anyway.
    pub setup_minutes: Option<u32>,
}

/// A checked profile, as the API lists it and deployments use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Profile {
    pub name: ProfileName,
    /// Shipped with Overvisor rather than read from the profiles directory.
    pub builtin: bool,
    pub title: String,
    pub os: OsFamily,
    pub firmware: Firmware,
    /// UEFI Secure Boot, with Microsoft's keys enrolled in the VM's
    /// variable store (a signed loader boots, an unsigned one does not).
    pub secure_boot: bool,
    /// An emulated TPM 2.0 is attached.
    pub tpm: bool,
    pub disk_bus: DiskBus,
    pub nic_model: NicModel,
    pub seed: SeedKind,
    pub provisioning: Provisioning,
    pub defaults: Sizing,
    pub minimum: Sizing,
    pub image: Image,
    pub packages: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<WindowsOptions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Image {
    pub format: ImageFormat,
    pub source: ImageSource,
}

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    /// Downloaded to the host's image cache and verified before use.
    Download {
        url: String,
        checksum: ImageChecksum,
        /// The CA the host's download trusts, if not its own store's.
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_file: Option<HostPath>,
        /// How the image reaches the host, unless a request says otherwise.
        transfer: ImageTransfer,
    },
    /// Already on the host, put there by the operator (installer ISOs).
    HostFile { path: HostPath },
}

/// How a download is verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageChecksum {
    /// A SHA-256 pinned in the profile (lower-case hex).
    Sha256 { hex: String },
    /// The distribution's published checksum list (`SHA256SUMS`), fetched
    /// over HTTPS; the line for the image's file name is used. Built-in
    /// profiles follow a release's latest build this way, since a pinned
    /// build disappears from the mirrors after a while.
    List {
        url: String,
        algorithm: DigestAlgorithm,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct WindowsOptions {
    pub image_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtio_win: Option<VirtioWin>,
    /// The longest the deployment waits for Setup to finish, seen as the
    /// QEMU guest agent (installed from virtio-win) answering; then the
    /// Autounattend media, which holds the password, is detached and
    /// deleted from the host either way.
    pub setup_minutes: u32,
}

/// How long a Windows deployment waits for Setup by default: an unattended
/// Server install takes 10–30 minutes on KVM.
pub const SETUP_MINUTES_DEFAULT: u32 = 90;
/// At most a day: the media must not stay on the host for longer.
const SETUP_MINUTES_MAX: u32 = 24 * 60;

/// The virtio-win driver ISO and the directory of this Windows version in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct VirtioWin {
    pub iso: HostPath,
    pub os_dir: String,
}

impl ProfileFile {
    /// Checks every field and the combinations that must agree.
    pub fn check(self, name: ProfileName, builtin: bool) -> Result<Profile, InvalidInput> {
        check_printable("title", &self.title, TITLE_MAX)?;
        self.minimum.check("minimum.", &Sizing::ZERO)?;
        self.defaults.check("defaults.", &self.minimum)?;
        let image = self.image.check()?;
        for (i, p) in self.packages.iter().enumerate() {
            check_identifier(&format!("packages[{i}]"), p, 128)?;
        }
        let windows = self.windows.map(WindowsFile::check).transpose()?;

        let (want_seed, want_format) = match self.os {
            OsFamily::Linux => (SeedKind::Nocloud, "a disk image (qcow2 or raw)"),
            OsFamily::Windows => (SeedKind::Autounattend, "an installer (iso)"),
        };
        if self.seed != want_seed {
            return Err(InvalidInput::new(
                "seed",
                format!("must be {want_seed:?} for {:?} (lower case)", self.os),
            ));
        }
        if self.provisioning == Provisioning::Agent && self.os != OsFamily::Linux {
            return Err(InvalidInput::new(
                "provisioning",
                "agent provisioning is for Linux profiles (the Windows agent is not built yet)",
            ));
        }
        if (image.format == ImageFormat::Iso) != (self.os == OsFamily::Windows) {
            return Err(InvalidInput::new(
                "image.format",
                format!("must be {want_format} for {:?}", self.os),
            ));
        }
        match (&windows, self.os) {
            (None, OsFamily::Windows) => {
                return Err(InvalidInput::new(
                    "windows",
                    "is required for a Windows profile",
                ));
            }
            (Some(_), OsFamily::Linux) => {
                return Err(InvalidInput::new("windows", "is only for Windows profiles"));
            }
            _ => {}
        }
        if self.secure_boot && self.firmware != Firmware::Uefi {
            return Err(InvalidInput::new(
                "secure_boot",
                "needs firmware = \"uefi\"",
            ));
        }
        if self.os == OsFamily::Windows {
            // The generated Autounattend.xml lays out a GPT disk, which
            // only UEFI boots.
            if self.firmware != Firmware::Uefi {
                return Err(InvalidInput::new(
                    "firmware",
                    "must be uefi for Windows (the disk is laid out as GPT)",
                ));
            }
            if !self.packages.is_empty() {
                return Err(InvalidInput::new(
                    "packages",
                    "are installed by cloud-init, which Windows profiles do not use",
                ));
            }
            let has_drivers = windows.as_ref().is_some_and(|w| w.virtio_win.is_some());
            if self.disk_bus != DiskBus::Sata && !has_drivers {
                return Err(InvalidInput::new(
                    "disk_bus",
                    "must be sata unless windows.virtio_win_iso provides the drivers",
                ));
            }
            if self.nic_model != NicModel::E1000e && !has_drivers {
                return Err(InvalidInput::new(
                    "nic_model",
                    "must be e1000e unless windows.virtio_win_iso provides the drivers",
                ));
            }
        }
        Ok(Profile {
            name,
            builtin,
            title: self.title,
            os: self.os,
            firmware: self.firmware,
            secure_boot: self.secure_boot,
            tpm: self.tpm,
            disk_bus: self.disk_bus,
            nic_model: self.nic_model,
            seed: self.seed,
            provisioning: self.provisioning,
            defaults: self.defaults,
            minimum: self.minimum,
            image,
            packages: self.packages,
            windows,
        })
    }
}

impl Sizing {
    const ZERO: Sizing = Sizing {
        vcpus: 0,
        memory_mib: 0,
        disk_gib: 0,
    };
}

impl ImageFile {
    fn check(self) -> Result<Image, InvalidInput> {
        let source = match (self.url, self.host_path) {
            (Some(url), None) => {
                let checksum = match (self.sha256, self.checksums_url) {
                    (Some(hex), None) => {
                        if self.checksums_algorithm.is_some() {
                            return Err(InvalidInput::new(
                                "image.checksums_algorithm",
                                "goes with checksums_url, not sha256",
                            ));
                        }
                        ImageChecksum::Sha256 {
                            hex: check_hex("image.sha256", &hex, 64)?,
                        }
                    }
                    (None, Some(list)) => ImageChecksum::List {
                        url: check_url("image.checksums_url", &list, true)?,
                        algorithm: self.checksums_algorithm.unwrap_or_default(),
                    },
                    _ => {
                        return Err(InvalidInput::new(
                            "image.sha256",
                            "set either sha256 or checksums_url (one, not both)",
                        ));
                    }
                };
                // Plain HTTP is only safe when the digest is pinned here.
                let https_only = matches!(checksum, ImageChecksum::List { .. });
                let url = check_url("image.url", &url, https_only)?;
                let file_name = url.rsplit('/').next().unwrap_or_default();
                if file_name.is_empty() || url.contains('?') {
                    return Err(InvalidInput::new(
                        "image.url",
                        "must end in the image's file name, without a query",
                    ));
                }
                let ca_file = self
                    .ca_file
                    .map(|p| HostPath::parse("image.ca_file", &p))
                    .transpose()?;
                let transfer = self.transfer.unwrap_or_default();
                check_transfer("image.transfer", transfer, ca_file.as_ref())?;
                ImageSource::Download {
                    url,
                    checksum,
                    ca_file,
                    transfer,
                }
            }
            (None, Some(path)) => {
                if self.sha256.is_some()
                    || self.checksums_url.is_some()
                    || self.ca_file.is_some()
                    || self.transfer.is_some()
                {
                    return Err(InvalidInput::new(
                        "image.host_path",
                        "is not downloaded, so it takes no sha256, checksums_url, ca_file or transfer",
                    ));
                }
                ImageSource::HostFile {
                    path: HostPath::parse("image.host_path", &path)?,
                }
            }
            _ => {
                return Err(InvalidInput::new(
                    "image.url",
                    "set either url or host_path (one, not both)",
                ));
            }
        };
        Ok(Image {
            format: self.format,
            source,
        })
    }
}

impl WindowsFile {
    fn check(self) -> Result<WindowsOptions, InvalidInput> {
        // The image name goes into Autounattend.xml as text (escaped), and
        // Windows names its images in plain words.
        check_chars(
            "windows.image_name",
            &self.image_name,
            128,
            |c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '(' | ')'),
            "only letters, digits, spaces and ._-() are allowed",
        )?;
        let virtio_win = match (self.virtio_win_iso, self.virtio_win_dir) {
            (Some(iso), Some(dir)) => {
                check_identifier("windows.virtio_win_dir", &dir, 16)?;
                Some(VirtioWin {
                    iso: HostPath::parse("windows.virtio_win_iso", &iso)?,
                    os_dir: dir,
                })
            }
            (None, None) => None,
            _ => {
                return Err(InvalidInput::new(
                    "windows.virtio_win_dir",
                    "goes together with virtio_win_iso (both or neither)",
                ));
            }
        };
        let setup_minutes = self.setup_minutes.unwrap_or(SETUP_MINUTES_DEFAULT);
        if !(1..=SETUP_MINUTES_MAX).contains(&setup_minutes) {
            return Err(InvalidInput::new(
                "windows.setup_minutes",
                format!("must be 1 to {SETUP_MINUTES_MAX}"),
            ));
        }
        Ok(WindowsOptions {
            image_name: self.image_name,
            virtio_win,
            setup_minutes,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
