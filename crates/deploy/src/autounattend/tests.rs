use super::*;
use crate::catalog::Catalog;
use crate::iso::tests::isoinfo;
use crate::request::tests::request;
use crate::secret::RequestSecret;
use crate::xml::tests::{golden, well_formed};

/// A fixed password, so the golden files are stable.
fn fixed_password() -> GeneratedPassword {
    GeneratedPassword::for_tests("Xy7pQ2rT9vW3kM8nB4cD")
}

fn deployment(change: impl FnOnce(&mut crate::request::DeploymentRequest)) -> Deployment {
    let mut r = request("windows-server-2022");
    change(&mut r);
    r.check(&Catalog::builtin().expect("built-ins"))
        .expect("valid")
}

/// The `<settings pass="…">` section of `xml`, its lines trimmed and
/// joined (so assertions read as the document's nesting).
fn settings_pass(xml: &str, pass: &str) -> String {
    xml.split(&format!(r#"<settings pass="{pass}">"#))
        .nth(1)
        .and_then(|s| s.split("</settings>").next())
        .unwrap_or_else(|| panic!("no {pass} pass in {xml}"))
        .lines()
        .map(str::trim)
        .collect()
}

#[test]
fn builtin_profile_golden() {
    let d = deployment(|r| {
        r.locale = Some("de-DE".into());
        r.timezone = Some("W. Europe Standard Time".into());
    });
    let xml = autounattend_xml(&d, &fixed_password()).expect("xml");
    let names = well_formed(&xml);
    assert_eq!(names.first().map(String::as_str), Some("unattend"));
    assert!(
        !names.iter().any(|n| n == "DriverPaths"),
        "no drivers without virtio-win"
    );
    assert!(
        !xml.contains("qemu-ga"),
        "no guest agent without virtio-win"
    );
    golden("autounattend-windows-server-2022.xml", &xml);
}

#[test]
fn virtio_drivers_golden() {
    let mut d = deployment(|r| r.username = Some("Administrator".into()));
    d.profile = crate::profile::tests::windows_virtio("virtio");
    let xml = autounattend_xml(&d, &fixed_password()).expect("xml");
    let names = well_formed(&xml);
    assert!(
        !names.iter().any(|n| n == "LocalAccounts"),
        "Administrator only"
    );
    // Storage and network drivers on D:, E: and F:, in both passes; the
    // virtio-serial driver (for the guest agent) in the installed system.
    assert_eq!(
        names.iter().filter(|n| *n == "PathAndCredentials").count(),
        6 + 9
    );
    assert!(xml.contains(r"E:\viostor\2k22\amd64"));
    assert!(xml.contains(r"F:\NetKVM\2k22\amd64"));
    assert_eq!(xml.matches(r"\vioserial\2k22\amd64").count(), 3);
    // The guest agent is installed while Setup specializes the system.
    let specialize = settings_pass(&xml, "specialize");
    assert!(
        specialize.contains(r"msiexec /i %d:\guest-agent\qemu-ga-x86_64.msi /qn"),
        "{specialize}"
    );
    golden("autounattend-virtio.xml", &xml);
}

#[test]
fn sata_with_virtio_win_still_gets_the_guest_agent() {
    let mut d = deployment(|_| {});
    d.profile = crate::profile::tests::windows_virtio("sata");
    d.profile.nic_model = NicModel::E1000e;
    let xml = autounattend_xml(&d, &fixed_password()).expect("xml");
    let names = well_formed(&xml);
    // Setup needs no driver; the installed system gets virtio-serial.
    assert!(
        !names
            .iter()
            .any(|n| n == "Microsoft-Windows-PnpCustomizationsWinPE")
    );
    assert!(
        !xml.contains("Microsoft-Windows-PnpCustomizationsWinPE"),
        "{xml}"
    );
    assert_eq!(xml.matches(r"\vioserial\2k22\amd64").count(), 3, "{xml}");
    assert!(xml.contains("qemu-ga-x86_64.msi"), "{xml}");
}

#[test]
fn the_password_goes_where_windows_reads_it() {
    let password = GeneratedPassword::generate();
    let xml = autounattend_xml(&deployment(|_| {}), &password).expect("xml");
    assert_eq!(
        xml.matches(password.expose()).count(),
        2,
        "Administrator and ops"
    );
    assert!(xml.contains("<Name>ops</Name>"));
    assert!(xml.contains("<ComputerName>WEB-01</ComputerName>"));
    assert!(!xml.contains("ProductKey"), "no key asked for: {xml}");
}

#[test]
fn a_product_key_goes_to_setup_and_to_activation() {
    let d = deployment(|r| {
        r.product_key = Some(RequestSecret::new("vdyby-n7kwh-9gxr3-xbqx3-cvhd8"));
    });
    let xml = autounattend_xml(&d, &fixed_password()).expect("xml");
    well_formed(&xml);
    // windowsPE: Setup installs with it, and asks only if it is refused.
    let pe = settings_pass(&xml, "windowsPE");
    assert!(
        pe.contains(
            "<ProductKey><Key>VDYBY-N7KWH-9GXR3-XBQX3-CVHD8</Key><WillShowUI>OnError</WillShowUI></ProductKey>"
        ),
        "{xml}"
    );
    assert!(pe.contains("<Organization>Overvisor</Organization><ProductKey>"));
    // specialize: Shell-Setup's key, which Windows activates with.
    let specialize = settings_pass(&xml, "specialize");
    assert!(
        specialize.contains("<ProductKey>VDYBY-N7KWH-9GXR3-XBQX3-CVHD8</ProductKey>"),
        "{xml}"
    );
    assert_eq!(xml.matches("VDYBY-N7KWH-9GXR3-XBQX3-CVHD8").count(), 2);
}

#[test]
fn the_seed_iso_has_autounattend_at_its_root() {
    let xml = autounattend_xml(&deployment(|_| {}), &fixed_password()).expect("xml");
    let image = autounattend_iso(&xml).expect("iso");
    // Windows reads the Joliet names: the mixed-case name must be there.
    let joliet = isoinfo(&image, &["-J", "-f"]);
    assert!(joliet.lines().any(|l| l == "/Autounattend.xml"), "{joliet}");
    assert_eq!(isoinfo(&image, &["-J", "-x", "/Autounattend.xml"]), xml);
}
