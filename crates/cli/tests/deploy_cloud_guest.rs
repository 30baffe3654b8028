//! The proof that a deployment configures a real guest: the lab's Debian 12
//! cloud image (cloud-init, qemu-guest-agent, sshd) is deployed through the
//! API onto a lab host, boots under TCG, and is checked from inside over
//! SSH from the host's own network: hostname, user, authorized key, the
//! password's hash, and the guest agent's address as the API shows it, in
//! the VM's detail and in the inventory's list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::time::{Duration, Instant};

use lab_hosts::{id, job_finished, register};
use overvisor_testkit::{Lab, LabHost, unique_name};
use reqwest::StatusCode;
use serde_json::json;
use support::TestApp;

/// How long a TCG-emulated first boot (cloud-init included) may take.
const BOOT: Duration = Duration::from_secs(600);

/// Runs `cmd` in the guest at `ip` as `user`, over SSH from inside `host`.
fn guest_ssh(lab: &Lab, host: &LabHost, ip: &str, user: &str, cmd: &str) -> Result<String, String> {
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

#[tokio::test]
async fn a_deployed_cloud_guest_has_what_the_request_asked_for() {
    let lab = Lab::load();
    let host = lab.host("ovh10");
    let image = &lab.cloud_image;
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("lab-debian.toml"),
        format!(
            r#"
title = "Lab Debian 12"
os = "linux"
firmware = "bios"
disk_bus = "virtio"
nic_model = "virtio"
seed = "nocloud"

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
    let app = TestApp::builder()
        .deploy_profiles(profiles.path())
        .start()
        .await;
    let (_, token, _) = app.create_user("olga", "operator").await;
    let api = app.client(&token);
    let host_id = id(&register(&api, &lab, host).await);
    let name = unique_name("cloud");
    let (status, accepted) = api
        .post(
            &format!("/api/v1/hosts/{host_id}/deployments"),
            json!({
                "profile": "lab-debian", "name": name, "vcpus": 1, "memory_mib": 768,
                "disk_gib": 4, "network": {"bridge": lab.guest_network.bridge},
                "username": "olga", "ssh_keys": [lab.client_key_pub],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let password = accepted["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = job_finished(&api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let uuid = job["result"]["uuid"].as_str().unwrap().to_owned();

    // The guest agent's address, as the API shows it.
    let deadline = Instant::now() + BOOT;
    let ip = loop {
        let (status, vm) = api
            .get(&format!("/api/v1/hosts/{host_id}/vms/{name}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{vm}");
        let found = vm["ips"].as_array().and_then(|ips| {
            ips.iter()
                .filter_map(|i| i.as_str())
                .find(|i| i.starts_with(lab.guest_network.gateway.rsplit_once('.').unwrap().0))
                .map(str::to_owned)
        });
        if let Some(ip) = found {
            break ip;
        }
        assert!(
            Instant::now() < deadline,
            "no address within {BOOT:?}: {vm}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    // The inventory keeps it too: the list shows it without asking the
    // host (read after the next resync or shortly after a start).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, page) = api.get(&format!("/api/v1/vms?name={name}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        if page["items"][0]["ips"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|i| i == ip.as_str()))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the list never showed {ip}: {page}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // cloud-init may still be writing the user when the agent answers.
    let deadline = Instant::now() + BOOT;
    let said = loop {
        match guest_ssh(
            &lab,
            host,
            &ip,
            "olga",
            "cloud-init status --wait >/dev/null; hostname; id -un; sudo -n getent shadow olga",
        ) {
            Ok(out) => break out,
            Err(e) => {
                assert!(Instant::now() < deadline, "no SSH login to {ip}: {e}");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    };
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(name.as_str()),
        "hostname: {said}"
    );
    assert_eq!(
        lines.get(1).copied(),
        Some("olga"),
        "user (logged in with the key): {said}"
    );
    let hash = lines
        .get(2)
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or_else(|| panic!("no shadow entry: {said}"));
    // glibc's crypt (through Python) checks it: an implementation other
    // than the one that made the hash. The password goes on stdin.
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
    assert_eq!(
        String::from_utf8_lossy(&verdict.stdout).trim(),
        "True",
        "the guest's hash {hash} is not the generated password's"
    );

    let _ = host.try_virsh(&["destroy", "--domain", &name]);
    let _ = host.try_virsh(&["undefine", "--domain", &name]);
    host.run_as_root(
        "rm",
        &["-rf", &format!("/var/lib/libvirt/overvisor/vms/{uuid}")],
    );
}
