//! Installer (Windows) deployments through the real service onto a real
//! lab host: a stand-in installer ISO (a tiny ISO this test builds: Windows
//! itself cannot be booted here) on the host, UEFI with Secure Boot, an
//! emulated TPM 2.0, the installer and the generated `Autounattend.xml`
//! media as CD-ROMs, a blank disk. The domain is defined and started (it
//! runs the firmware, which finds nothing to boot on the stand-in); the
//! live definition and the media on the host are checked while the job
//! waits for Setup, and once its wait is over the media is detached and
//! deleted. Setup's end is proven with a real guest agent: the lab's
//! Debian guest is put on the deployment's disk as Setup would put
//! Windows there, and once its agent answers the job removes the media at
//! once. A deployment whose start fails is undone to nothing: domain,
//! disk, media, UEFI variable store, TPM state. An installer the host
//! lacks is a 400 before any job.
//!
//! Host: ovh11 (shared with the agent-provisioned cloud guest; only VMs of
//! these tests' own names and UUIDs are looked at).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use lab_hosts::{id, job_at_step, job_finished, job_finished_within, register};
use overvisor_testkit::{Lab, LabHost, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp};

const DEPLOY_DIR: &str = "/var/lib/libvirt/overvisor";
/// Where libvirt keeps an emulated TPM's state, by the VM's UUID.
const SWTPM_DIR: &str = "/var/lib/libvirt/swtpm";

/// The stand-in installer: an ISO with one file, readable by the hosts'
/// automation user (the lab's hosts see this machine's /tmp).
fn stand_in_iso(dir: &Path) -> String {
    let iso =
        overvisor_deploy::iso::build("STANDIN", &[("README.TXT", b"not Windows\n")]).expect("ISO");
    let path = dir.join("installer.iso");
    std::fs::write(&path, iso).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn windows_profile(iso: &str) -> String {
    format!(
        r#"
title = "Lab Windows stand-in"
os = "windows"
firmware = "uefi"
secure_boot = true
tpm = true
disk_bus = "sata"
nic_model = "e1000e"
seed = "autounattend"

[image]
format = "iso"
host_path = "{iso}"

[windows]
image_name = "Windows Server 2022 SERVERSTANDARD"
setup_minutes = 1

[defaults]
vcpus = 1
memory_mib = 256
disk_gib = 2

[minimum]
vcpus = 1
memory_mib = 128
disk_gib = 1
"#
    )
}

struct Setup {
    api: Api,
    host_id: String,
    app: TestApp,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn setup(lab: &Lab, host: &LabHost) -> Setup {
    setup_with(lab, host, |iso, _| {
        // The same with an installer that is not on the host.
        let gone = iso.replace("installer.iso", "missing.iso");
        vec![
            ("lab-win", windows_profile(iso)),
            ("lab-win-gone", windows_profile(&gone)),
        ]
    })
    .await
}

/// The service with the profiles `profiles` makes from the stand-in
/// installer's path and the directory it is in, and `host` registered.
async fn setup_with(
    lab: &Lab,
    host: &LabHost,
    profiles: impl FnOnce(&str, &Path) -> Vec<(&'static str, String)>,
) -> Setup {
    let media = tempfile::tempdir().unwrap();
    let iso = stand_in_iso(media.path());
    assert!(host.path_exists(Path::new(&iso)), "the host sees the ISO");
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in profiles(&iso, media.path()) {
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    }
    let app = TestApp::builder().deploy_profiles(dir.path()).start().await;
    let (_, token, _) = app.create_user("wanda", "operator").await;
    let api = app.client(&token);
    let host_id = id(&register(&api, lab, host).await);
    Setup {
        api,
        host_id,
        app,
        _dirs: (media, dir),
    }
}

/// A key of the right shape (not a real one).
const PRODUCT_KEY: &str = "VDYBY-N7KWH-9GXR3-XBQX3-CVHD8";

fn request(name: &str, network: Value) -> Value {
    request_of("lab-win", name, network)
}

fn request_of(profile: &str, name: &str, network: Value) -> Value {
    json!({
        "profile": profile, "name": name, "vcpus": 1, "memory_mib": 256, "disk_gib": 2,
        "network": network, "username": "ops",
        "locale": "de-DE", "timezone": "W. Europe Standard Time",
    })
}

/// XML without the indentation between tags, so assertions read as the
/// document's nesting.
fn compact(xml: &str) -> String {
    xml.lines().map(str::trim).collect()
}

/// The `<disk …>` elements of a live domain definition.
fn disks(xml: &str) -> Vec<String> {
    compact(xml)
        .split("<disk ")
        .skip(1)
        .map(|d| d.split("</disk>").next().unwrap().to_owned())
        .collect()
}

fn gone(host: &LabHost, path: &str) -> bool {
    !host.path_exists(Path::new(path))
}

#[tokio::test]
async fn a_windows_deployment_boots_its_installer_with_uefi_tpm_and_autounattend() {
    let lab = Lab::load();
    let host = lab.host("ovh11");
    let s = setup(&lab, host).await;
    let name = unique_name("win");
    // A product key, typed in lower case.
    let mut body = request(&name, json!({"bridge": lab.guest_network.bridge}));
    body["product_key"] = json!(PRODUCT_KEY.to_ascii_lowercase());
    let (status, accepted) = s
        .api
        .post(&format!("/api/v1/hosts/{}/deployments", s.host_id), body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["credentials"]["username"], "ops");
    assert!(!accepted.to_string().contains("VDYBY"), "{accepted}");
    let password = accepted["credentials"]["password"].as_str().unwrap();
    let job_id = accepted["job"]["id"].as_str().unwrap();
    // The VM runs; the job waits for Setup (a minute, this profile says).
    let job = job_at_step(&s.api, job_id, "setup").await;
    assert!(!job.to_string().contains(password), "{job}");
    assert!(
        !job.to_string().to_ascii_uppercase().contains("VDYBY"),
        "{job}"
    );
    let uuid = job["operation"]["spec"]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = format!("{DEPLOY_DIR}/vms/{uuid}");
    let iso = job["operation"]["spec"]["host_files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|f| f.ends_with("installer.iso"))
        .unwrap_or_else(|| panic!("the job checks the installer: {job}"))
        .to_owned();

    // The live definition: Secure Boot firmware with the VM's own variable
    // store, the TPM, the installer (booted once the blank disk has
    // nothing) and the Autounattend media as CD-ROMs.
    let xml = compact(&host.virsh(&["dumpxml", "--domain", &name]));
    assert!(
        xml.contains(
            "<loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.secboot.fd</loader>"
        ),
        "{xml}"
    );
    assert!(
        xml.contains(&format!(
            "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>{dir}/VARS.fd</nvram>"
        )),
        "{xml}"
    );
    assert!(xml.contains("<smm state='on'/>"), "{xml}");
    assert!(
        xml.contains("<tpm model='tpm-crb'><backend type='emulator' version='2.0'"),
        "{xml}"
    );
    let disks = disks(&xml);
    let find = |file: &str| {
        disks
            .iter()
            .find(|d| d.contains(&format!("<source file='{file}'")))
            .unwrap_or_else(|| panic!("no disk {file}: {xml}"))
            .clone()
    };
    let system = find(&format!("{dir}/disk.qcow2"));
    assert!(system.starts_with("type='file' device='disk'"), "{system}");
    assert!(system.contains("<boot order='1'/>"), "{system}");
    assert!(
        !system.contains("<backingStore type"),
        "a blank disk: {system}"
    );
    let installer = find(&iso);
    assert!(installer.starts_with("type='file' device='cdrom'"));
    assert!(installer.contains("<boot order='2'/>"), "{installer}");
    let seed = find(&format!("{dir}/seed.iso"));
    assert!(seed.starts_with("type='file' device='cdrom'") && !seed.contains("<boot"));
    assert_eq!(host.domstate(&name), "running");
    assert!(host.path_exists(Path::new(&format!("{dir}/VARS.fd"))));
    assert!(host.path_exists(Path::new(&format!("{SWTPM_DIR}/{uuid}"))));
    // The disk is blank: no backing file, the size asked for.
    let info = host.run_as_root("qemu-img", &["info", "-U", &format!("{dir}/disk.qcow2")]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("virtual size: 2 GiB"), "{info}");
    assert!(!info.contains("backing file"), "{info}");

    // The media holds Autounattend.xml (Joliet, as Windows reads it),
    // readable by the host's libvirt group only: it holds the password.
    let seed_path = format!("{dir}/seed.iso");
    let mode = host.run_as_root("stat", &["-c", "%a", &seed_path]);
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "640");
    let out = host.run_as_root(
        "isoinfo",
        &["-i", &seed_path, "-J", "-x", "/Autounattend.xml"],
    );
    assert!(out.status.success(), "{out:?}");
    let unattend = compact(&String::from_utf8_lossy(&out.stdout));
    let label = host.run_as_root("isoinfo", &["-d", "-i", &seed_path]);
    assert!(String::from_utf8_lossy(&label.stdout).contains("Volume id: AUTOUNATTEND"));
    for part in [
        // UEFI/GPT: EFI 100 MiB FAT32, MSR 16 MiB, Windows NTFS (the rest).
        "<Order>1</Order><Type>EFI</Type><Size>100</Size>",
        "<Order>2</Order><Type>MSR</Type><Size>16</Size>",
        "<Order>3</Order><Type>Primary</Type><Extend>true</Extend>",
        "<PartitionID>1</PartitionID><Label>System</Label><Format>FAT32</Format>",
        "<PartitionID>3</PartitionID><Label>Windows</Label><Letter>C</Letter><Format>NTFS</Format>",
        "<InstallTo><DiskID>0</DiskID><PartitionID>3</PartitionID></InstallTo>",
        // The edition by name.
        "<Key>/IMAGE/NAME</Key><Value>Windows Server 2022 SERVERSTANDARD</Value>",
        // Locale and time zone from the request.
        "<InputLocale>de-DE</InputLocale><SystemLocale>de-DE</SystemLocale>",
        "<TimeZone>W. Europe Standard Time</TimeZone>",
        "<ComputerName>",
        // The generated password: the built-in Administrator's and the
        // requested account's (Windows takes no hash).
        &format!(
            "<AdministratorPassword><Value>{password}</Value><PlainText>true</PlainText></AdministratorPassword>"
        ),
        &format!(
            "<Name>ops</Name><Group>Administrators</Group><Password><Value>{password}</Value><PlainText>true</PlainText></Password>"
        ),
    ] {
        assert!(unattend.contains(part), "{part} not in {unattend}");
    }
    assert_eq!(unattend.matches(password).count(), 2, "{unattend}");
    // The product key: Setup's and the one Windows activates with.
    assert!(
        unattend.contains(&format!(
            "<ProductKey><Key>{PRODUCT_KEY}</Key><WillShowUI>OnError</WillShowUI></ProductKey>"
        )),
        "{unattend}"
    );
    assert!(
        unattend.contains(&format!("<ProductKey>{PRODUCT_KEY}</ProductKey>")),
        "{unattend}"
    );
    // No virtio-win, so no guest agent is installed.
    assert!(!unattend.contains("qemu-ga"), "{unattend}");

    // Nothing answers on the stand-in: when the wait is over the media is
    // removed all the same, and the VM stays for the operator.
    let waited = SetupOutcome {
        setup: "unconfirmed",
        said: &[
            // For the installer's boot prompt, while the job waited.
            "pressed space 30 times",
            "Setup was not seen to finish within 1 min",
        ],
        within: Duration::from_secs(180),
    };
    waited.check(&s.api, job_id, host, &name, password).await;
    let (_, job) = s.api.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert!(
        !job.to_string().to_ascii_uppercase().contains("VDYBY"),
        "{job}"
    );
    let logs = s.app.logs().to_ascii_uppercase();
    assert!(!logs.contains("VDYBY"), "the product key was logged");

    remove_vm(host, &name, &uuid);
}

/// The portal's wizard asks for a product key on a Windows profile's name
/// step, refuses a malformed one next to its field, and shows on the
/// confirm step only that one was given.
#[tokio::test]
async fn the_wizard_asks_a_windows_deployment_for_its_product_key() {
    let lab = Lab::load();
    let host = lab.host("ovh11");
    let s = setup(&lab, host).await;
    let (_, _, password) = s.app.create_user("wendy", "admin").await;
    let (portal, status, body) = Api::login(&s.app.ui, "wendy", &password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let network = format!("bridge:{}", lab.guest_network.bridge);
    let name = unique_name("winwiz");
    let post = |form: Vec<(&'static str, String)>| {
        let request = portal.http.post(format!("{}/deploy", s.app.ui)).form(&form);
        async move {
            let answer = request.send().await.unwrap();
            (answer.status(), answer.text().await.unwrap())
        }
    };
    let step = |go: &'static str, key: &'static str| {
        post(vec![
            ("csrf_token", portal.csrf.clone().unwrap()),
            ("profile", "lab-win".into()),
            ("host", s.host_id.clone()),
            ("vcpus", "1".into()),
            ("memory_mib", "256".into()),
            ("disk_gib", "2".into()),
            ("network", network.clone()),
            ("name", name.clone()),
            ("username", "ops".into()),
            ("product_key", key.into()),
            ("go", go.into()),
        ])
    };
    let (status, page) = step("name", "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains(r#"id="d-product-key""#), "{page}");
    let (status, page) = step("confirm", "VDYBY-N7KWH-9GXR3-XBQX3-CV<D8").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains(r#"id="err-product_key""#), "{page}");
    assert!(page.contains("five groups of five"), "{page}");
    let (status, page) = step("confirm", PRODUCT_KEY).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(r#"<td id="deploy-product-key">given</td>"#),
        "{page}"
    );
    // A Linux profile's pages carry no product key, not even hidden.
    let (_, page) = post(vec![
        ("csrf_token", portal.csrf.clone().unwrap()),
        ("profile", "debian-12".into()),
        ("go", "profile".into()),
    ])
    .await;
    assert!(!page.contains("product_key"), "{page}");
}

/// How an installer deployment's job ends once its `setup` step is over.
struct SetupOutcome {
    /// The step's `setup` output.
    setup: &'static str,
    /// In the job's log.
    said: &'static [&'static str],
    within: Duration,
}

impl SetupOutcome {
    /// The job succeeds so, the VM still runs, the media is removed, and
    /// the password is nowhere in the job.
    async fn check(&self, api: &Api, job_id: &str, host: &LabHost, name: &str, password: &str) {
        let job = job_finished_within(api, job_id, self.within).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"]["setup"], self.setup, "{job}");
        assert_eq!(job["result"]["state"], "running", "{job}");
        for said in self.said {
            assert!(job.to_string().contains(said), "{said:?} not in {job}");
        }
        assert!(!job.to_string().contains(password), "{job}");
        let uuid = job["result"]["uuid"].as_str().unwrap();
        media_removed(host, name, &format!("{DEPLOY_DIR}/vms/{uuid}/seed.iso"));
        assert_eq!(host.domstate(name), "running");
    }
}

/// The media at `path` is deleted from the host and no drive of `name`
/// holds it, live or in its definition; the drive itself stays, empty.
fn media_removed(host: &LabHost, name: &str, path: &str) {
    assert!(gone(host, path), "{path} is left");
    for xml in [
        host.virsh(&["dumpxml", "--domain", name]),
        host.virsh(&["dumpxml", "--domain", name, "--inactive"]),
    ] {
        assert!(!xml.contains(path), "{xml}");
        let cdroms = disks(&xml)
            .into_iter()
            .filter(|d| d.starts_with("type='file' device='cdrom'"))
            .count();
        assert!(cdroms >= 2, "the installer and the emptied drive: {xml}");
    }
}

/// A profile like the stand-in's, but one the lab's Debian guest can boot
/// from its disk once it is there: no Secure Boot (its loader is
/// unsigned), virtio buses (Debian's cloud kernel has no AHCI), hence a
/// virtio-win ISO (a stand-in too: its drivers and agent are never read),
/// with which Autounattend.xml installs the guest agent.
fn agent_profile(iso: &str, virtio_win: &str) -> String {
    windows_profile(iso)
        .replace("secure_boot = true", "secure_boot = false")
        .replace("tpm = true", "tpm = false")
        .replace("\"sata\"", "\"virtio\"")
        .replace("\"e1000e\"", "\"virtio\"")
        .replace("memory_mib = 256", "memory_mib = 768")
        .replace(
            "setup_minutes = 1",
            &format!(
                "setup_minutes = 15\nvirtio_win_iso = \"{virtio_win}\"\nvirtio_win_dir = \"2k22\""
            ),
        )
}

/// The end of Setup as the job sees it: the guest agent answers. Windows
/// cannot run here, so the test does what Setup does to the VM — an
/// operating system with a guest agent is put on the blank disk and the VM
/// boots it (the lab's Debian guest, under TCG) — and the job, waiting,
/// removes the media as soon as the agent answers.
#[tokio::test]
async fn the_autounattend_media_goes_once_the_guest_agent_answers() {
    let lab = Lab::load();
    let host = lab.host("ovh11");
    let s = setup_with(&lab, host, |iso, dir| {
        let virtio_win = dir.join("virtio-win.iso");
        std::fs::copy(iso, &virtio_win).unwrap();
        vec![(
            "lab-win-agent",
            agent_profile(iso, virtio_win.to_str().unwrap()),
        )]
    })
    .await;
    let (api, host_id) = (&s.api, &s.host_id);
    let name = unique_name("winagent");
    let mut body = request_of(
        "lab-win-agent",
        &name,
        json!({"bridge": lab.guest_network.bridge}),
    );
    body["memory_mib"] = json!(768);
    let (status, accepted) = api
        .post(&format!("/api/v1/hosts/{host_id}/deployments"), body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let password = accepted["credentials"]["password"].as_str().unwrap();
    let job_id = accepted["job"]["id"].as_str().unwrap();
    let job = job_at_step(api, job_id, "setup").await;
    let uuid = job["operation"]["spec"]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = format!("{DEPLOY_DIR}/vms/{uuid}");
    let seed_path = format!("{dir}/seed.iso");
    // With virtio-win, Setup is told to install the agent from it.
    let out = host.run_as_root(
        "isoinfo",
        &["-i", &seed_path, "-J", "-x", "/Autounattend.xml"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r"guest-agent\qemu-ga-x86_64.msi"),
        "{out:?}"
    );

    // Setup's work: the system on the disk, then a boot from it.
    host.virsh(&["destroy", "--domain", &name]);
    let disk = format!("{dir}/disk.qcow2");
    let image = lab.cloud_image.path.to_str().unwrap();
    let out = host.run_as_root(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "qcow2", image, &disk],
    );
    assert!(out.status.success(), "{out:?}");
    host.virsh(&["start", "--domain", &name]);

    let finished = SetupOutcome {
        setup: "finished",
        said: &[
            "waiting for Windows Setup to finish (the guest agent answers), at most 15 min",
            "Setup finished: the guest agent answered",
        ],
        within: Duration::from_secs(600),
    };
    finished.check(api, job_id, host, &name, password).await;
    let ping = host.virsh(&[
        "qemu-agent-command",
        "--domain",
        &name,
        r#"{"execute":"guest-ping"}"#,
    ]);
    assert!(ping.contains("return"), "{ping}");

    remove_vm(host, &name, &uuid);
}

/// Removes a deployed VM, its UEFI variables and TPM state, and its files.
fn remove_vm(host: &LabHost, name: &str, uuid: &str) {
    let _ = host.try_virsh(&["destroy", "--domain", name]);
    let _ = host.try_virsh(&["undefine", "--domain", name, "--nvram"]);
    host.run_as_root("rm", &["-rf", &format!("{DEPLOY_DIR}/vms/{uuid}")]);
}

/// A libvirt network whose bridge does not exist: libvirt starts it (a
/// bridge-mode network only names its bridge), so a deployment may choose
/// it, and a VM on it fails to start only after libvirt has made its UEFI
/// variable store and TPM state, when it plugs the VM's NIC in.
struct BrokenNetwork<'a> {
    host: &'a LabHost,
    name: String,
}

impl<'a> BrokenNetwork<'a> {
    fn new(host: &'a LabHost) -> Self {
        let name = unique_name("ovbroken");
        let dir = tempfile::tempdir().unwrap();
        let xml = dir.path().join("net.xml");
        std::fs::write(
            &xml,
            format!(
                "<network><name>{name}</name><forward mode='bridge'/><bridge name='ovnobr{}'/></network>",
                &name[name.len() - 4..]
            ),
        )
        .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        host.virsh(&["net-define", xml.to_str().unwrap()]);
        host.virsh(&["net-start", &name]);
        Self { host, name }
    }
}

impl Drop for BrokenNetwork<'_> {
    fn drop(&mut self) {
        let _ = self.host.try_virsh(&["net-destroy", &self.name]);
        let _ = self.host.try_virsh(&["net-undefine", &self.name]);
    }
}

#[tokio::test]
async fn a_windows_deployment_that_fails_to_start_leaves_nothing() {
    let lab = Lab::load();
    let host = lab.host("ovh11");
    let s = setup(&lab, host).await;
    let network = BrokenNetwork::new(host);
    let name = unique_name("winfail");
    // An installer the host does not have: refused before any job, naming
    // the file, on the host field.
    let (status, body) = s
        .api
        .post(
            &format!("/api/v1/hosts/{}/deployments", s.host_id),
            request_of("lab-win-gone", &name, json!({"network": network.name})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "host", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing.iso"),
        "{body}"
    );
    let (_, jobs) = s.api.get("/api/v1/jobs?kind=vm.deploy").await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");

    let (status, accepted) = s
        .api
        .post(
            &format!("/api/v1/hosts/{}/deployments", s.host_id),
            request(&name, json!({"network": network.name})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let job = job_finished(&s.api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed", "{job}");
    let start = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "start")
        .unwrap();
    assert!(start["error"].to_string().contains("ovnobr"), "{job}");
    let uuid = job["operation"]["spec"]["uuid"].as_str().unwrap();
    // libvirt made the variable store and the TPM state before it failed
    // (scripts/lab's libvirt 9.0: both are prepared before the NIC); the
    // undo took them with the domain, and the VM's files with its
    // directory.
    assert!(host.try_virsh(&["domstate", "--domain", &name]).is_err());
    for path in [
        format!("{DEPLOY_DIR}/vms/{uuid}/VARS.fd"),
        format!("{DEPLOY_DIR}/vms/{uuid}/seed.iso"),
        format!("{DEPLOY_DIR}/vms/{uuid}/disk.qcow2"),
        format!("{DEPLOY_DIR}/vms/{uuid}"),
        format!("{SWTPM_DIR}/{uuid}"),
    ] {
        assert!(gone(host, &path), "{path} is left");
    }
}
