use std::process::Command;

use overvisor_model::vm::VmName;

use super::*;
use crate::catalog::Catalog;
use crate::request::tests::request;
use crate::xml::tests::{golden, well_formed};

const UUID: &str = "6f1c2a5e-0b7d-4c1e-9a53-2f0e8d4b7c61";

fn path(p: &str) -> HostPath {
    HostPath::parse("test", p).expect("valid path")
}

fn deployment(profile: &str) -> Deployment {
    request(profile)
        .check(&Catalog::builtin().expect("built-ins"))
        .expect("valid")
}

fn linux_files() -> DomainFiles {
    DomainFiles {
        disk: path("/var/lib/overvisor/vms/web-01/disk.qcow2"),
        seed: path("/var/lib/overvisor/vms/web-01/seed.iso"),
        installer: None,
        uefi: None,
        guest_agent_socket: None,
    }
}

fn windows_files() -> DomainFiles {
    DomainFiles {
        disk: path("/var/lib/overvisor/vms/web-01/disk.qcow2"),
        seed: path("/var/lib/overvisor/vms/web-01/autounattend.iso"),
        installer: Some(path("/var/lib/overvisor/iso/windows-server-2022.iso")),
        uefi: Some(UefiFiles {
            loader: path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
            vars_template: path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
            nvram: path("/var/lib/overvisor/vms/web-01/VARS.fd"),
        }),
        guest_agent_socket: None,
    }
}

fn xml(d: &Deployment, virt: VirtType, files: &DomainFiles) -> String {
    domain_xml(d, Uuid::parse_str(UUID).expect("uuid"), virt, files).expect("domain XML")
}

/// libvirt's own schema check (`virt-xml-validate`, package
/// libvirt-clients, which scripts/install-deps installs).
fn libvirt_accepts(xml: &str) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), xml).expect("write");
    let out = Command::new("virt-xml-validate")
        .arg(file.path())
        .arg("domain")
        .output()
        .expect("virt-xml-validate runs (package libvirt-clients)");
    assert!(
        out.status.success(),
        "libvirt refuses:\n{xml}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ubuntu_on_a_bridge() {
    let xml = xml(&deployment("ubuntu-24.04"), VirtType::Kvm, &linux_files());
    well_formed(&xml);
    golden("domain-ubuntu.xml", &xml);
    libvirt_accepts(&xml);
}

#[test]
fn agent_provisioning_adds_the_agents_port() {
    let files = DomainFiles {
        guest_agent_socket: Some(path("/var/lib/overvisor/vms/web-01/guest.sock")),
        ..linux_files()
    };
    let xml = xml(&deployment("ubuntu-24.04"), VirtType::Kvm, &files);
    well_formed(&xml);
    assert!(
        xml.contains(
            "<channel type=\"unix\">\n      <source mode=\"bind\" path=\"/var/lib/overvisor/vms/web-01/guest.sock\"/>\n      <target type=\"virtio\" name=\"org.overvisor.guest.0\"/>\n    </channel>"
        ),
        "{xml}"
    );
    // The QEMU guest agent's channel stays.
    assert!(xml.contains("name=\"org.qemu.guest_agent.0\""), "{xml}");
    libvirt_accepts(&xml);
}

#[test]
fn windows_with_uefi_tpm_and_installer() {
    let mut d = deployment("windows-server-2022");
    d.network = NetworkAttachment::Network("default".into());
    let xml = xml(&d, VirtType::Qemu, &windows_files());
    well_formed(&xml);
    golden("domain-windows.xml", &xml);
    libvirt_accepts(&xml);
    // The profile asks for Secure Boot: a secure loader, which needs SMM.
    assert!(xml.contains("<loader readonly=\"yes\" secure=\"yes\" type=\"pflash\">"));
    assert!(xml.contains("<smm state=\"on\"/>"), "{xml}");
}

#[test]
fn uefi_without_secure_boot_has_no_smm() {
    let mut d = deployment("ubuntu-24.04");
    d.profile.firmware = crate::profile::Firmware::Uefi;
    let files = DomainFiles {
        uefi: Some(UefiFiles {
            loader: path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            vars_template: path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
            nvram: path("/var/lib/overvisor/vms/web-01/VARS.fd"),
        }),
        ..linux_files()
    };
    let xml = xml(&d, VirtType::Qemu, &files);
    libvirt_accepts(&xml);
    assert!(
        xml.contains(
            "<loader readonly=\"yes\" type=\"pflash\">/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
        ),
        "{xml}"
    );
    assert!(xml.contains("<nvram template=\"/usr/share/OVMF/OVMF_VARS_4M.fd\">/var/lib/overvisor/vms/web-01/VARS.fd</nvram>"), "{xml}");
    assert!(!xml.contains("smm"), "{xml}");
}

#[test]
fn windows_with_virtio_drivers_on_scsi() {
    let mut d = deployment("windows-server-2022");
    d.profile = crate::profile::tests::windows_virtio("scsi");
    let xml = xml(&d, VirtType::Kvm, &windows_files());
    libvirt_accepts(&xml);
    // Disk and CD-ROMs share the sd* names without clashing.
    for dev in ["sda", "sdb", "sdc", "sdd"] {
        assert_eq!(
            xml.matches(&format!("dev=\"{dev}\"")).count(),
            1,
            "{dev}\n{xml}"
        );
    }
    assert!(xml.contains("/isos/virtio-win.iso"));
    assert!(xml.contains("virtio-scsi"));
}

/// Values are escaped by the serializer even if one got past the checks.
#[test]
fn metacharacters_are_escaped_not_injected() {
    let mut d = deployment("ubuntu-24.04");
    let hostile = "a</name><on_crash>preserve</on_crash><name>&x;'\"";
    d.name = VmName::parse(hostile).expect("lenient name");
    d.network = NetworkAttachment::Bridge("br0\"/><evil a=\"".into());
    let xml = xml(&d, VirtType::Kvm, &linux_files());
    let names = well_formed(&xml);
    assert!(!names.iter().any(|n| n == "evil"), "{xml}");
    assert_eq!(
        names.iter().filter(|n| *n == "on_crash").count(),
        1,
        "{xml}"
    );
    assert_eq!(names.iter().filter(|n| *n == "name").count(), 1, "{xml}");
    let doc: DomainName = quick_xml::de::from_str(&xml).expect("parses");
    assert_eq!(doc.name, hostile);
}

#[derive(serde::Deserialize)]
struct DomainName {
    name: String,
}

#[test]
fn firmware_paths_must_match_the_profile() {
    let linux = deployment("ubuntu-24.04");
    let mut files = linux_files();
    files.uefi = windows_files().uefi;
    assert!(domain_xml(&linux, Uuid::nil(), VirtType::Kvm, &files).is_err());
    let windows = deployment("windows-server-2022");
    let mut files = windows_files();
    files.uefi = None;
    assert!(domain_xml(&windows, Uuid::nil(), VirtType::Kvm, &files).is_err());
    let mut files = windows_files();
    files.installer = None;
    assert!(domain_xml(&windows, Uuid::nil(), VirtType::Kvm, &files).is_err());
}
