//! The lab's real Debian cloud guest, deployed through the API: its
//! profile, waiting for its address, logging in from inside its host, and
//! checking a password against the guest's own hash.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use overvisor_testkit::{Lab, LabHost};
use reqwest::StatusCode;

use crate::lab_hosts::{id, register};
use crate::support::{Api, TestApp};

/// How long a TCG-emulated first boot (cloud-init included) may take.
pub const BOOT: Duration = Duration::from_secs(600);

/// Writes the profile `lab-debian` for the lab's cloud image into `dir`;
/// `extra` is more TOML for the top level (e.g. `provisioning = "agent"`;
/// the firmware is BIOS unless it says `firmware = "uefi"`: the image
/// boots either way).
pub fn write_profile(dir: &Path, lab: &Lab, extra: &str) {
    let image = &lab.cloud_image;
    let firmware = if extra.contains("firmware =") {
        ""
    } else {
        "firmware = \"bios\""
    };
    std::fs::write(
        dir.join("lab-debian.toml"),
        format!(
            r#"
title = "Lab Debian 12"
os = "linux"
{firmware}
disk_bus = "virtio"
nic_model = "virtio"
seed = "nocloud"
{extra}

[image]
format = "qcow2"
url = "{}"
sha256 = "{}"

[defaults]
vcpus = 1
memory_mib = 768
disk_gib = 4

[minimum]
vcpus = 1
memory_mib = 256
disk_gib = 2
"#,
            image.url, image.sha256
        ),
    )
    .unwrap();
}

/// How a deployment names the guest's user and keys.
pub enum GuestAccount {
    /// `username` and `ssh_keys` in the request.
    Given,
    /// Neither: the account's name and guest keys.
    Defaults,
}

/// A deployment of the lab's cloud image through the API, accepted.
pub struct Deployed {
    pub app: TestApp,
    pub api: Api,
    pub host_id: String,
    pub name: String,
    /// Shown once, in the answer.
    pub password: String,
    pub job_id: String,
    _profiles: tempfile::TempDir,
}

/// Deploys the lab's cloud image on `host` as user `olga` (with the lab's
/// client key), the profile written with `extra` (see [`write_profile`]).
/// `GuestAccount::Defaults` names neither user nor keys: the account
/// `olga` keeps the lab's key as its guest key, and the deployment takes
/// both from the account.
pub async fn deploy(
    lab: &Lab,
    host: &LabHost,
    extra: &str,
    name: String,
    account: GuestAccount,
) -> Deployed {
    let profiles = tempfile::tempdir().unwrap();
    write_profile(profiles.path(), lab, extra);
    let app = TestApp::builder()
        .deploy_profiles(profiles.path())
        .start()
        .await;
    let (_, token, _) = app.create_user("olga", "operator").await;
    let api = app.client(&token);
    let host_id = id(&register(&api, lab, host).await);
    let mut request = serde_json::json!({
        "profile": "lab-debian", "name": name, "vcpus": 1, "memory_mib": 768,
        "disk_gib": 4, "network": {"bridge": lab.guest_network.bridge},
    });
    match account {
        GuestAccount::Given => {
            request["username"] = "olga".into();
            request["ssh_keys"] = serde_json::json!([lab.client_key_pub]);
        }
        GuestAccount::Defaults => {
            let (status, key) = api
                .post(
                    "/api/v1/users/me/guest-keys",
                    serde_json::json!({"name": "lab client", "public_key": lab.client_key_pub}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{key}");
        }
    }
    let (status, accepted) = api
        .post(&format!("/api/v1/hosts/{host_id}/deployments"), request)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["credentials"]["username"], "olga", "{accepted}");
    Deployed {
        password: accepted["credentials"]["password"]
            .as_str()
            .unwrap()
            .to_owned(),
        job_id: accepted["job"]["id"].as_str().unwrap().to_owned(),
        app,
        api,
        host_id,
        name,
        _profiles: profiles,
    }
}

/// Runs `cmd` in the guest at `ip` as `user`, over SSH from inside `host`.
pub fn guest_ssh(
    lab: &Lab,
    host: &LabHost,
    ip: &str,
    user: &str,
    cmd: &str,
) -> Result<String, String> {
    let key = lab.client_key.to_string_lossy().into_owned();
    let target = format!("{user}@{ip}");
    let out = host.run_as_root(
        "ssh",
        &[
            "-i",
            &key,
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            &target,
            cmd,
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `cmd` in the guest once SSH lets `user` in (first boot may still be
/// making the account when the address is known).
pub async fn guest_ssh_when_up(
    lab: &Lab,
    host: &LabHost,
    ip: &str,
    user: &str,
    cmd: &str,
) -> String {
    let deadline = Instant::now() + BOOT;
    loop {
        match guest_ssh(lab, host, ip, user, cmd) {
            Ok(out) => return out,
            Err(e) => {
                assert!(Instant::now() < deadline, "no SSH login to {ip}: {e}");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    }
}

/// The guest's address on the lab's guest network, as the API shows it.
pub async fn guest_ip(api: &Api, lab: &Lab, host_id: &str, name: &str) -> String {
    let deadline = Instant::now() + BOOT;
    let prefix = lab.guest_network.gateway.rsplit_once('.').unwrap().0;
    loop {
        let (status, vm) = api
            .get(&format!("/api/v1/hosts/{host_id}/vms/{name}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{vm}");
        let found = vm["ips"].as_array().and_then(|ips| {
            ips.iter()
                .filter_map(|i| i.as_str())
                .find(|i| i.starts_with(prefix))
                .map(str::to_owned)
        });
        if let Some(ip) = found {
            return ip;
        }
        assert!(
            Instant::now() < deadline,
            "no address within {BOOT:?}: {vm}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Whether glibc's crypt (through Python: an implementation other than
/// the one that made the hash) accepts `password` for `hash`. The password
/// goes on stdin.
pub fn crypt_accepts(hash: &str, password: &str) -> bool {
    let mut check = std::process::Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt,sys; h=sys.argv[1]; print(crypt.crypt(sys.stdin.read(), h) == h)",
            hash,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), password.as_bytes()).unwrap();
    let verdict = check.wait_with_output().unwrap();
    String::from_utf8_lossy(&verdict.stdout).trim() == "True"
}

/// Removes a deployed VM and its files from `host`.
pub fn remove_vm(host: &LabHost, name: &str, uuid: &str) {
    let _ = host.try_virsh(&["destroy", "--domain", name]);
    // --nvram: a UEFI VM's variable store goes too (libvirt refuses without).
    let _ = host.try_virsh(&["undefine", "--domain", name, "--nvram"]);
    host.run_as_root(
        "rm",
        &["-rf", &format!("/var/lib/libvirt/overvisor/vms/{uuid}")],
    );
}
