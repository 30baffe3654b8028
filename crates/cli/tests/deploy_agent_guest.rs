//! The proof that sealed provisioning works on a real guest: the lab's
//! Debian 12 cloud image, which carries `overvisor-guest`, is deployed
//! through the API with a profile that says `provisioning = "agent"`.
//! The job's `provision` step reaches the agent's virtio-serial port
//! through the host's SSH connection; inside the guest (one boot, shared
//! by every check) the account, its password hash and the key are there;
//! and no file on the host (seed, domain XML, libvirt's logs and state,
//! the serial log) holds the password, its hash or the key.
//!
//! The agent's refusals (tampered, forged, other VM, injected key,
//! replayed, oversized) are proven against the agent binary itself, in
//! `crates/guest/tests/agent.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cloud_guest.rs"]
mod cloud_guest;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use cloud_guest::{
    Deployed, GuestAccount, crypt_accepts, deploy, guest_ip, guest_ssh_when_up, remove_vm,
};
use overvisor_testkit::{Lab, LabHost, unique_name};

/// Files on `host` (its libvirt state, configuration and logs, the VM's
/// directory but not its disk, which is the guest's own) that hold any of
/// `needles`.
fn host_files_holding(host: &LabHost, needles: &[&str]) -> String {
    let mut args = vec!["-rlF", "-D", "skip", "--exclude=disk.qcow2"];
    for n in needles {
        args.extend(["-e", n]);
    }
    args.extend([
        "/var/lib/libvirt",
        "/etc/libvirt",
        "/var/log/libvirt",
        "/run/libvirt",
    ]);
    let out = host.run_as_root("grep", &args);
    // grep: 0 found, 1 none, 2 trouble.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "grep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn an_agent_provisioned_guest_gets_its_secrets_sealed_and_the_host_keeps_none() {
    let lab = Lab::load();
    let host = lab.host("ovh11");
    let Deployed {
        app,
        api,
        host_id,
        name,
        password,
        job_id,
        ..
    } = &deploy(
        &lab,
        host,
        "provisioning = \"agent\"",
        unique_name("sealed"),
        GuestAccount::Given,
    )
    .await;
    // The provision step waits for the guest's first boot.
    let job = lab_hosts::job_finished_within(api, job_id, cloud_guest::BOOT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let uuid = job["result"]["uuid"].as_str().unwrap().to_owned();
    let names: Vec<&str> = job["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["image", "overlay", "seed", "define", "start", "provision"]
    );
    let said = job.to_string();
    for line in [
        "waiting for the guest's key",
        "sealed data delivered",
        "applied",
    ] {
        assert!(said.contains(line), "no {line:?} in the job's log: {said}");
    }

    // Inside the guest, booted once for all of these.
    let ip = guest_ip(api, &lab, host_id, name).await;
    let inside = guest_ssh_when_up(
        &lab,
        host,
        &ip,
        "olga",
        "hostname; id -un; sudo -n getent shadow olga; sudo -n cat /var/lib/overvisor-guest/state.json",
    )
    .await;
    let lines: Vec<&str> = inside.lines().collect();
    assert_eq!(lines.first().copied(), Some(name.as_str()), "{inside}");
    assert_eq!(
        lines.get(1).copied(),
        Some("olga"),
        "logged in with the key: {inside}"
    );
    let hash = lines
        .get(2)
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or_else(|| panic!("no shadow entry: {inside}"))
        .to_owned();
    assert!(
        crypt_accepts(&hash, password),
        "the guest's hash {hash} is not the generated password's"
    );
    assert!(inside.contains("\"applied\": true"), "{inside}");

    // The job's record and the service's log hold none of it either.
    let key_body = lab.client_key_pub.split_whitespace().nth(1).unwrap();
    let record = format!("{job}{}", app.logs());
    for secret in [password.as_str(), hash.as_str(), key_body] {
        assert!(!record.contains(secret), "the job shows a secret: {record}");
    }

    // On the host: the seed and the domain XML are there (the grep can
    // find what they hold), and no file holds a secret.
    let found = host_files_holding(host, &[&uuid]);
    for file in ["seed.iso", "domain.xml"] {
        assert!(
            found.contains(file),
            "{file} not found on the host: {found}"
        );
    }
    let found = host_files_holding(host, &[password, &hash, key_body]);
    assert!(found.is_empty(), "host files hold a secret:\n{found}");

    remove_vm(host, name, &uuid);
}
