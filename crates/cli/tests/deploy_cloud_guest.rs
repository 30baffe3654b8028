//! The proof that a deployment configures a real guest: the lab's Debian 12
//! cloud image (cloud-init, qemu-guest-agent, sshd) is deployed through the
//! API onto a lab host with UEFI firmware (OVMF, its own variable store),
//! boots under TCG, and is checked from inside over SSH from the host's
//! own network: booted by UEFI, hostname, user, authorized key, the
//! password's hash, and the guest agent's address as the API shows it, in
//! the VM's detail and in the inventory's list. (The same image boots
//! under BIOS in the agent-provisioned guest's test: one boot each.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cloud_guest.rs"]
mod cloud_guest;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::time::{Duration, Instant};

use cloud_guest::{
    Deployed, GuestAccount, crypt_accepts, deploy, guest_ip, guest_ssh_when_up, remove_vm,
};
use lab_hosts::job_finished;
use overvisor_testkit::{Lab, unique_name};
use reqwest::StatusCode;

#[tokio::test]
async fn a_deployed_cloud_guest_has_what_the_request_asked_for() {
    let lab = Lab::load();
    let host = lab.host("ovh10");
    let Deployed {
        api,
        host_id,
        name,
        password,
        job_id,
        ..
    } = &deploy(
        &lab,
        host,
        "firmware = \"uefi\"",
        unique_name("cloud"),
        GuestAccount::Defaults,
    )
    .await;
    let job = job_finished(api, job_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let uuid = job["result"]["uuid"].as_str().unwrap().to_owned();
    let xml = host.virsh(&["dumpxml", "--domain", name]);
    assert!(
        xml.contains(&format!(
            "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/overvisor/vms/{uuid}/VARS.fd</nvram>"
        )),
        "{xml}"
    );

    // The guest agent's address, as the API shows it.
    let ip = guest_ip(api, &lab, host_id, name).await;
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
    let said = guest_ssh_when_up(
        &lab,
        host,
        &ip,
        "olga",
        "cloud-init status --wait >/dev/null; hostname; id -un; sudo -n getent shadow olga; \
         test -d /sys/firmware/efi && echo booted-by-uefi",
    )
    .await;
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(name.as_str()),
        "hostname: {said}"
    );
    assert_eq!(
        lines.get(1).copied(),
        Some("olga"),
        "user (logged in with the account's guest key): {said}"
    );
    let hash = lines
        .get(2)
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or_else(|| panic!("no shadow entry: {said}"));
    assert!(
        crypt_accepts(hash, password),
        "the guest's hash {hash} is not the generated password's"
    );
    // Linux saw EFI firmware: the kernel was started by OVMF.
    assert_eq!(lines.get(3).copied(), Some("booted-by-uefi"), "{said}");
    remove_vm(host, name, &uuid);
}
