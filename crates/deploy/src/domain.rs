//! The libvirt domain definition of a deployed VM, from typed structs.
//!
//! What every deployed VM gets: a q35 machine, the system disk and CD-ROMs
//! (seed, installer, drivers) on the profile's buses, one NIC, a serial
//! console, VNC bound to the host's loopback only (the portal reaches it
//! through the SSH tunnel, nobody else can), the QEMU guest agent channel, a
//! virtio RNG, and UEFI with its variable store and a TPM when the profile
//! says so. Paths come from the deployment job (where it put the files on
//! the host); everything else comes from the checked [`Deployment`].

use serde::Serialize;
use uuid::Uuid;

use crate::GenerateError;
use crate::profile::{DiskBus, Firmware, HostPath, NicModel, OsFamily};
use crate::request::{Deployment, NetworkAttachment};
use crate::xml::{Empty, Text, to_document};

/// libvirt's domain type: `kvm` with hardware virtualization, `qemu`
/// (emulation) where the host has none, as in nested test labs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtType {
    Kvm,
    Qemu,
}

/// The virtio-serial port of Overvisor's guest agent (sealed provisioning).
pub const GUEST_AGENT_PORT: &str = "org.overvisor.guest.0";

/// The files of a VM on its host, chosen by the deployment job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainFiles {
    /// The system disk: a qcow2 overlay on the cached image, or a blank
    /// qcow2 for an installer.
    pub disk: HostPath,
    /// The seed ISO (NoCloud or Autounattend).
    pub seed: HostPath,
    /// The installer ISO, for profiles that install from one.
    pub installer: Option<HostPath>,
    /// UEFI firmware paths, for UEFI profiles.
    pub uefi: Option<UefiFiles>,
    /// The host end of the guest agent's virtio-serial port
    /// (`org.overvisor.guest.0`), for agent provisioning: a UNIX socket
    /// QEMU listens on.
    pub guest_agent_socket: Option<HostPath>,
}

/// OVMF on the host (paths differ between distributions, so the job finds
/// them) and the VM's own copy of the variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiFiles {
    pub loader: HostPath,
    pub vars_template: HostPath,
    pub nvram: HostPath,
}

#[derive(Serialize)]
#[serde(rename = "domain")]
struct Domain<'a> {
    #[serde(rename = "@type")]
    virt_type: &'static str,
    name: &'a str,
    uuid: String,
    memory: Memory,
    vcpu: Text<u32>,
    os: Os<'a>,
    features: Features,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cpu>,
    clock: Clock,
    on_poweroff: &'static str,
    on_reboot: &'static str,
    on_crash: &'static str,
    devices: Devices<'a>,
}

#[derive(Serialize)]
struct Memory {
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "$text")]
    value: u64,
}

#[derive(Serialize)]
struct Os<'a> {
    #[serde(rename = "type")]
    os_type: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    loader: Option<Loader<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nvram: Option<Nvram<'a>>,
}

#[derive(Serialize)]
struct OsType {
    #[serde(rename = "@arch")]
    arch: &'static str,
    #[serde(rename = "@machine")]
    machine: &'static str,
    #[serde(rename = "$text")]
    text: &'static str,
}

#[derive(Serialize)]
struct Loader<'a> {
    #[serde(rename = "@readonly")]
    readonly: &'static str,
    /// Secure Boot: only firmware in SMM may write the variable store.
    #[serde(rename = "@secure", skip_serializing_if = "Option::is_none")]
    secure: Option<&'static str>,
    #[serde(rename = "@type")]
    loader_type: &'static str,
    #[serde(rename = "$text")]
    path: &'a str,
}

#[derive(Serialize)]
struct Nvram<'a> {
    #[serde(rename = "@template")]
    template: &'a str,
    #[serde(rename = "$text")]
    path: &'a str,
}

#[derive(Serialize)]
struct Features {
    acpi: Empty,
    apic: Empty,
    /// System management mode, which Secure Boot firmware needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    smm: Option<Smm>,
}

#[derive(Serialize)]
struct Smm {
    #[serde(rename = "@state")]
    state: &'static str,
}

#[derive(Serialize)]
struct Cpu {
    #[serde(rename = "@mode")]
    mode: &'static str,
}

#[derive(Serialize)]
struct Clock {
    /// Windows keeps the hardware clock in local time.
    #[serde(rename = "@offset")]
    offset: &'static str,
}

#[derive(Serialize)]
struct Devices<'a> {
    disk: Vec<Disk<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    controller: Option<Controller>,
    interface: Interface<'a>,
    serial: Serial,
    console: Console,
    channel: Vec<Channel<'a>>,
    input: Input,
    graphics: Graphics,
    video: Video,
    #[serde(skip_serializing_if = "Option::is_none")]
    tpm: Option<Tpm>,
    rng: Rng,
}

#[derive(Serialize)]
struct Disk<'a> {
    #[serde(rename = "@type")]
    disk_type: &'static str,
    #[serde(rename = "@device")]
    device: &'static str,
    driver: Driver,
    source: FileSource<'a>,
    target: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    readonly: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<Boot>,
}

#[derive(Serialize)]
struct Driver {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@type")]
    format: &'static str,
}

#[derive(Serialize)]
struct FileSource<'a> {
    #[serde(rename = "@file")]
    file: &'a str,
}

#[derive(Serialize)]
struct Target {
    #[serde(rename = "@dev")]
    dev: String,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

#[derive(Serialize)]
struct Boot {
    #[serde(rename = "@order")]
    order: u32,
}

#[derive(Serialize)]
struct Controller {
    #[serde(rename = "@type")]
    controller_type: &'static str,
    #[serde(rename = "@model")]
    model: &'static str,
}

#[derive(Serialize)]
struct Interface<'a> {
    #[serde(rename = "@type")]
    interface_type: &'static str,
    source: InterfaceSource<'a>,
    model: TypeAttr,
}

#[derive(Serialize)]
struct InterfaceSource<'a> {
    #[serde(rename = "@bridge", skip_serializing_if = "Option::is_none")]
    bridge: Option<&'a str>,
    #[serde(rename = "@network", skip_serializing_if = "Option::is_none")]
    network: Option<&'a str>,
}

/// `<x type="..."/>`.
#[derive(Serialize)]
struct TypeAttr {
    #[serde(rename = "@type")]
    value: &'static str,
}

#[derive(Serialize)]
struct Serial {
    #[serde(rename = "@type")]
    serial_type: &'static str,
    target: SerialTarget,
}

#[derive(Serialize)]
struct SerialTarget {
    #[serde(rename = "@port")]
    port: u32,
}

#[derive(Serialize)]
struct Console {
    #[serde(rename = "@type")]
    console_type: &'static str,
    target: ConsoleTarget,
}

#[derive(Serialize)]
struct ConsoleTarget {
    #[serde(rename = "@type")]
    target_type: &'static str,
    #[serde(rename = "@port")]
    port: u32,
}

#[derive(Serialize)]
struct Channel<'a> {
    #[serde(rename = "@type")]
    channel_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<ChannelSource<'a>>,
    target: ChannelTarget,
}

#[derive(Serialize)]
struct ChannelSource<'a> {
    #[serde(rename = "@mode")]
    mode: &'static str,
    #[serde(rename = "@path")]
    path: &'a str,
}

#[derive(Serialize)]
struct ChannelTarget {
    #[serde(rename = "@type")]
    target_type: &'static str,
    #[serde(rename = "@name")]
    name: &'static str,
}

/// A USB tablet, so the VNC pointer follows the mouse exactly.
#[derive(Serialize)]
struct Input {
    #[serde(rename = "@type")]
    input_type: &'static str,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

#[derive(Serialize)]
struct Graphics {
    #[serde(rename = "@type")]
    graphics_type: &'static str,
    #[serde(rename = "@autoport")]
    autoport: &'static str,
    listen: Listen,
}

#[derive(Serialize)]
struct Listen {
    #[serde(rename = "@type")]
    listen_type: &'static str,
    #[serde(rename = "@address")]
    address: &'static str,
}

#[derive(Serialize)]
struct Video {
    model: TypeAttr,
}

#[derive(Serialize)]
struct Tpm {
    #[serde(rename = "@model")]
    model: &'static str,
    backend: TpmBackend,
}

#[derive(Serialize)]
struct TpmBackend {
    #[serde(rename = "@type")]
    backend_type: &'static str,
    #[serde(rename = "@version")]
    version: &'static str,
}

#[derive(Serialize)]
struct Rng {
    #[serde(rename = "@model")]
    model: &'static str,
    backend: RngBackend,
}

#[derive(Serialize)]
struct RngBackend {
    #[serde(rename = "@model")]
    model: &'static str,
    #[serde(rename = "$text")]
    device: &'static str,
}

/// Names disks per bus in order (`vda`, `vdb`; `sda`, `sdb`, …): libvirt
/// wants each target name once.
#[derive(Default)]
struct Targets {
    virtio: u8,
    scsi_like: u8,
}

impl Targets {
    fn next(&mut self, bus: &'static str) -> Target {
        let (prefix, n) = match bus {
            "virtio" => ("vd", &mut self.virtio),
            _ => ("sd", &mut self.scsi_like),
        };
        let dev = format!("{prefix}{}", char::from(b'a' + *n));
        *n += 1;
        Target { dev, bus }
    }
}

/// The domain XML for `deployment` with the files the job placed.
pub fn domain_xml(
    deployment: &Deployment,
    uuid: Uuid,
    virt_type: VirtType,
    files: &DomainFiles,
) -> Result<String, GenerateError> {
    let profile = &deployment.profile;
    let windows = profile.os == OsFamily::Windows;
    let uefi = match (profile.firmware, &files.uefi) {
        (Firmware::Uefi, Some(uefi)) => Some(uefi),
        (Firmware::Bios, None) => None,
        (Firmware::Uefi, None) => return Err(GenerateError::Missing("UEFI firmware paths")),
        (Firmware::Bios, Some(_)) => {
            return Err(GenerateError::Missing("no UEFI paths for a BIOS profile"));
        }
    };
    let secure_boot = uefi.is_some() && profile.secure_boot;
    if windows && files.installer.is_none() {
        return Err(GenerateError::Missing("the installer ISO"));
    }

    let disk_bus = match profile.disk_bus {
        DiskBus::Virtio => "virtio",
        DiskBus::Scsi => "scsi",
        DiskBus::Sata => "sata",
    };
    // q35 has no IDE. Windows reads SATA (AHCI) CD-ROMs without extra
    // drivers; Linux cloud kernels may lack AHCI (Debian's cloud kernel,
    // used by its genericcloud images, does) but all carry virtio-scsi.
    let cdrom_bus = if windows { "sata" } else { "scsi" };
    let mut targets = Targets::default();
    // The system disk is always qcow2: an overlay on the cached image
    // (whatever its format), or a blank disk an installer installs onto.
    let disk_format = "qcow2";
    let mut disks = vec![Disk {
        disk_type: "file",
        device: "disk",
        driver: Driver {
            name: "qemu",
            format: disk_format,
        },
        source: FileSource {
            file: files.disk.as_str(),
        },
        target: targets.next(disk_bus),
        readonly: None,
        boot: Some(Boot { order: 1 }),
    }];
    // The installer boots when the disk is still empty; the seed and the
    // drivers are only read.
    let virtio_win = profile
        .windows
        .as_ref()
        .and_then(|w| w.virtio_win.as_ref())
        .map(|v| &v.iso);
    let cdroms = [
        files
            .installer
            .as_ref()
            .map(|p| (p, Some(Boot { order: 2 }))),
        Some((&files.seed, None)),
        virtio_win.map(|p| (p, None)),
    ];
    for (path, boot) in cdroms.into_iter().flatten() {
        disks.push(Disk {
            disk_type: "file",
            device: "cdrom",
            driver: Driver {
                name: "qemu",
                format: "raw",
            },
            source: FileSource {
                file: path.as_str(),
            },
            target: targets.next(cdrom_bus),
            readonly: Some(Empty {}),
            boot,
        });
    }

    let (interface_type, source) = match &deployment.network {
        NetworkAttachment::Bridge(b) => (
            "bridge",
            InterfaceSource {
                bridge: Some(b),
                network: None,
            },
        ),
        NetworkAttachment::Network(n) => (
            "network",
            InterfaceSource {
                bridge: None,
                network: Some(n),
            },
        ),
    };
    let domain = Domain {
        virt_type: match virt_type {
            VirtType::Kvm => "kvm",
            VirtType::Qemu => "qemu",
        },
        name: deployment.name.as_str(),
        uuid: uuid.hyphenated().to_string(),
        memory: Memory {
            unit: "MiB",
            value: deployment.sizing.memory_mib,
        },
        vcpu: Text {
            text: deployment.sizing.vcpus,
        },
        os: Os {
            os_type: OsType {
                arch: "x86_64",
                machine: "q35",
                text: "hvm",
            },
            loader: uefi.map(|u| Loader {
                readonly: "yes",
                secure: secure_boot.then_some("yes"),
                loader_type: "pflash",
                path: u.loader.as_str(),
            }),
            nvram: uefi.map(|u| Nvram {
                template: u.vars_template.as_str(),
                path: u.nvram.as_str(),
            }),
        },
        features: Features {
            acpi: Empty {},
            apic: Empty {},
            smm: secure_boot.then_some(Smm { state: "on" }),
        },
        // Emulation has no host CPU to pass through.
        cpu: (virt_type == VirtType::Kvm).then_some(Cpu {
            mode: "host-passthrough",
        }),
        clock: Clock {
            offset: if windows { "localtime" } else { "utc" },
        },
        on_poweroff: "destroy",
        on_reboot: "restart",
        on_crash: "destroy",
        devices: Devices {
            disk: disks,
            controller: (disk_bus == "scsi" || cdrom_bus == "scsi").then_some(Controller {
                controller_type: "scsi",
                model: "virtio-scsi",
            }),
            interface: Interface {
                interface_type,
                source,
                model: TypeAttr {
                    value: match profile.nic_model {
                        NicModel::Virtio => "virtio",
                        NicModel::E1000e => "e1000e",
                    },
                },
            },
            serial: Serial {
                serial_type: "pty",
                target: SerialTarget { port: 0 },
            },
            console: Console {
                console_type: "pty",
                target: ConsoleTarget {
                    target_type: "serial",
                    port: 0,
                },
            },
            channel: std::iter::once(Channel {
                channel_type: "unix",
                source: None,
                target: ChannelTarget {
                    target_type: "virtio",
                    name: "org.qemu.guest_agent.0",
                },
            })
            .chain(files.guest_agent_socket.as_ref().map(|path| Channel {
                channel_type: "unix",
                source: Some(ChannelSource {
                    mode: "bind",
                    path: path.as_str(),
                }),
                target: ChannelTarget {
                    target_type: "virtio",
                    name: GUEST_AGENT_PORT,
                },
            }))
            .collect(),
            input: Input {
                input_type: "tablet",
                bus: "usb",
            },
            graphics: Graphics {
                graphics_type: "vnc",
                autoport: "yes",
                listen: Listen {
                    listen_type: "address",
                    address: "127.0.0.1",
                },
            },
            video: Video {
                // Windows has no virtio-gpu driver out of the box.
                model: TypeAttr {
                    value: if windows { "vga" } else { "virtio" },
                },
            },
            tpm: profile.tpm.then_some(Tpm {
                model: "tpm-crb",
                backend: TpmBackend {
                    backend_type: "emulator",
                    version: "2.0",
                },
            }),
            rng: Rng {
                model: "virtio",
                backend: RngBackend {
                    model: "random",
                    device: "/dev/urandom",
                },
            },
        },
    };
    to_document(&domain, false)
}

#[cfg(test)]
mod tests;
