use super::*;

/// A valid Linux profile file; tests change one thing in it.
pub(crate) const LINUX: &str = r#"
title = "Test Linux"
os = "linux"
firmware = "bios"
seed = "nocloud"
[image]
format = "qcow2"
url = "https://images.example.org/linux/disk.qcow2"
sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF"
[defaults]
vcpus = 2
memory_mib = 2048
disk_gib = 20
[minimum]
vcpus = 1
memory_mib = 512
disk_gib = 4
"#;

fn check(text: &str) -> Result<Profile, InvalidInput> {
    let file: ProfileFile = toml::from_str(text).expect("test TOML parses");
    file.check(ProfileName::parse("name", "test").expect("valid"), false)
}

fn field_of(text: &str) -> String {
    check(text).expect_err("refused").field
}

/// Each (profile text, field) is refused with that field named.
fn assert_refused<'a>(cases: impl IntoIterator<Item = (String, &'a str)>) {
    for (text, field) in cases {
        assert_eq!(field_of(&text), field, "{text}");
    }
}

#[test]
fn a_valid_profile_is_typed() {
    let p = check(LINUX).expect("valid");
    assert_eq!(p.os, OsFamily::Linux);
    assert_eq!(p.disk_bus, DiskBus::Virtio);
    let ImageSource::Download {
        url,
        checksum,
        ca_file,
        transfer,
    } = &p.image.source
    else {
        panic!("download expected");
    };
    assert_eq!(ca_file, &None);
    assert_eq!(transfer, &ImageTransfer::Host);
    assert_eq!(url, "https://images.example.org/linux/disk.qcow2");
    assert_eq!(
        checksum,
        &ImageChecksum::Sha256 {
            hex: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into()
        }
    );
}

#[test]
fn every_bad_field_is_named() {
    let cases = [
        (LINUX.replace("Test Linux", "Bad\\ntitle"), "title"),
        (LINUX.replace("vcpus = 2", "vcpus = 0"), "defaults.vcpus"),
        (
            LINUX.replace("memory_mib = 512", "memory_mib = 4096"),
            "defaults.memory_mib",
        ),
        (
            LINUX.replace("disk_gib = 20", "disk_gib = 9999999"),
            "defaults.disk_gib",
        ),
        (
            LINUX.replace("sha256 = \"0123", "sha256 = \"x123"),
            "image.sha256",
        ),
        (
            LINUX.replace("sha256 =", "checksums_url = \"https://e.org/S\"\nsha256 ="),
            "image.sha256",
        ),
        (LINUX.replace("https://images", "ftp://images"), "image.url"),
        (
            LINUX.replace("disk.qcow2", "disk.qcow2;reboot"),
            "image.url",
        ),
        (LINUX.replace("disk.qcow2", "$(reboot)"), "image.url"),
        (LINUX.replace("disk.qcow2", "a`id`"), "image.url"),
        (LINUX.replace("disk.qcow2", "a b"), "image.url"),
        (
            LINUX.replace("https://images", "https://user:pw@images"),
            "image.url",
        ),
        (LINUX.replace("/linux/disk.qcow2", "/"), "image.url"),
        (
            LINUX.replace("format = \"qcow2\"", "format = \"iso\""),
            "image.format",
        ),
        (
            LINUX.replace("seed = \"nocloud\"", "seed = \"autounattend\""),
            "seed",
        ),
        (
            format!("packages = [\"ok\", \"bad;pkg\"]\n{LINUX}"),
            "packages[1]",
        ),
        (format!("{LINUX}[windows]\nimage_name = \"x\"\n"), "windows"),
        (
            LINUX.replace("sha256 =", "ca_file = \"relative.pem\"\nsha256 ="),
            "image.ca_file",
        ),
        (
            LINUX.replace(
                "sha256 =",
                "ca_file = \"/etc/ssl/m.pem\"\ntransfer = \"stream\"\nsha256 =",
            ),
            "image.transfer",
        ),
    ];
    assert_refused(cases);
}

#[test]
fn a_download_may_trust_a_ca_file_on_the_host() {
    let p = check(&LINUX.replace("sha256 =", "ca_file = \"/etc/ssl/mirror.pem\"\nsha256 ="))
        .expect("valid");
    let ImageSource::Download { ca_file, .. } = &p.image.source else {
        panic!("download expected");
    };
    assert_eq!(
        ca_file.as_ref().map(HostPath::as_str),
        Some("/etc/ssl/mirror.pem")
    );
}

#[test]
fn the_transfer_is_the_hosts_unless_the_profile_streams() {
    let transfer_of = |text: &str| {
        let p = check(text).expect("valid");
        let ImageSource::Download { transfer, .. } = p.image.source else {
            panic!("download expected");
        };
        transfer
    };
    assert_eq!(transfer_of(LINUX), ImageTransfer::Host);
    let streamed = LINUX.replace("sha256 =", "transfer = \"stream\"\nsha256 =");
    assert_eq!(transfer_of(&streamed), ImageTransfer::Stream);
}

#[test]
fn http_needs_a_pinned_digest() {
    check(&LINUX.replace("https://", "http://")).expect("pinned digest makes http safe");
    let listed = LINUX.replace("https://", "http://").replace(
        "sha256 = ",
        "checksums_url = \"https://e.org/SHA256SUMS\"\n#",
    );
    assert_eq!(field_of(&listed), "image.url");
}

#[test]
fn host_paths_are_plain_absolute_paths() {
    for bad in [
        "relative/x.iso",
        "/a/../etc/shadow",
        "/a//b",
        "/a b.iso",
        "/a;b",
        "/x/",
        "/a/$HOME",
    ] {
        assert!(HostPath::parse("p", bad).is_err(), "{bad}");
    }
    HostPath::parse("p", "/var/lib/overvisor/iso/virtio-win-0.1.262.iso").expect("valid");
}

pub(crate) const WINDOWS: &str = r#"
title = "Test Windows"
os = "windows"
firmware = "uefi"
disk_bus = "sata"
nic_model = "e1000e"
seed = "autounattend"
[image]
format = "iso"
host_path = "/isos/win.iso"
[windows]
image_name = "Windows Server 2022 SERVERSTANDARD"
[defaults]
vcpus = 2
memory_mib = 4096
disk_gib = 64
[minimum]
vcpus = 1
memory_mib = 2048
disk_gib = 32
"#;

/// The test Windows profile on virtio buses (`disk_bus`) with virtio-win.
pub(crate) fn windows_virtio(disk_bus: &str) -> Profile {
    let text = WINDOWS
        .replace("\"sata\"", &format!("\"{disk_bus}\""))
        .replace("\"e1000e\"", "\"virtio\"")
        .replace(
            "[windows]",
            "[windows]\nvirtio_win_iso = \"/isos/virtio-win.iso\"\nvirtio_win_dir = \"2k22\"",
        );
    check(&text).expect("virtio with drivers")
}

#[test]
fn windows_rules() {
    check(WINDOWS).expect("valid");
    let cases = [
        (WINDOWS.replace("\"uefi\"", "\"bios\""), "firmware"),
        (WINDOWS.replace("\"sata\"", "\"virtio\""), "disk_bus"),
        (WINDOWS.replace("\"e1000e\"", "\"virtio\""), "nic_model"),
        (
            WINDOWS.replace("SERVERSTANDARD", "<x>"),
            "windows.image_name",
        ),
        (
            WINDOWS.replace("[windows]", "[windows]\nvirtio_win_iso = \"/isos/v.iso\""),
            "windows.virtio_win_dir",
        ),
        (
            WINDOWS.replace("[windows]", "[windows]\nsetup_minutes = 0"),
            "windows.setup_minutes",
        ),
        (
            WINDOWS.replace("[windows]", "[windows]\nsetup_minutes = 1441"),
            "windows.setup_minutes",
        ),
    ];
    assert_refused(cases);
    let p = windows_virtio("virtio");
    let windows = p.windows.expect("[windows]");
    assert_eq!(
        windows.virtio_win.map(|v| v.os_dir),
        Some("2k22".to_owned())
    );
    assert_eq!(windows.setup_minutes, SETUP_MINUTES_DEFAULT);
    let quick =
        check(&WINDOWS.replace("[windows]", "[windows]\nsetup_minutes = 5")).expect("valid");
    assert_eq!(quick.windows.map(|w| w.setup_minutes), Some(5));
}

#[test]
fn provisioning_is_cloud_init_unless_a_linux_profile_asks_for_the_agent() {
    assert_eq!(
        check(LINUX).expect("valid").provisioning,
        Provisioning::CloudInit
    );
    let agent = LINUX.replace(
        "seed = \"nocloud\"",
        "seed = \"nocloud\"\nprovisioning = \"agent\"",
    );
    assert_eq!(
        check(&agent).expect("valid").provisioning,
        Provisioning::Agent
    );
    let windows = WINDOWS.replace(
        "seed = \"autounattend\"",
        "seed = \"autounattend\"\nprovisioning = \"agent\"",
    );
    assert_eq!(field_of(&windows), "provisioning");
    assert!(
        toml::from_str::<ProfileFile>(&LINUX.replace(
            "seed = \"nocloud\"",
            "seed = \"nocloud\"\nprovisioning = \"magic\""
        ))
        .is_err()
    );
}

#[test]
fn secure_boot_needs_uefi() {
    let linux_uefi = LINUX.replace("firmware = \"bios\"", "firmware = \"uefi\"");
    assert!(!check(&linux_uefi).expect("valid").secure_boot);
    let secure = linux_uefi.replace(
        "firmware = \"uefi\"",
        "firmware = \"uefi\"\nsecure_boot = true",
    );
    assert!(check(&secure).expect("valid").secure_boot);
    let bios = LINUX.replace(
        "firmware = \"bios\"",
        "firmware = \"bios\"\nsecure_boot = true",
    );
    assert_refused([(bios, "secure_boot")]);
}
