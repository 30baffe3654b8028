//! Deployments through the real service onto real lab hosts: a VM reaches
//! `running`; two deployments of one image download it once; an image
//! verified by a published checksum list, fetched over HTTPS from a mirror
//! with a private CA, is cached under the listed digest; a wrong
//! checksum, a cancel and a host that dies mid-download leave nothing of
//! the VM behind (and a retry resumes the download); a host with no route
//! to the image gets it streamed by the control plane instead, once, from
//! the partial file it has; hostile input is a 4xx before any job exists.
//!
//! Hosts: ovh1-ovh3 are shared (only VMs of our own are touched; a test
//! that compares a host's VM directories before and after has that host
//! to itself among these tests); ovh9 belongs to the lost-mid-download
//! test, whose sshd it stops.
//!
//! Images are made here (random raw disks: a domain with no OS still
//! runs) and served by the test itself on the lab bridge, where the hosts'
//! curl reaches them; the server counts what it sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/deploy_fixtures.rs"]
mod fixtures;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fixtures::*;
use lab_hosts::job_finished;
use overvisor_testkit::{Lab, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{lab_profile, lab_profile_verified};

#[tokio::test]
async fn two_deployments_of_one_image_reach_running_and_download_it_once() {
    let lab = Lab::load();
    let host = lab.host("ovh1");
    let Setup {
        server,
        api,
        host_id,
        sha,
        ..
    } = &setup(Route::Bridge, &lab, host, 4, None, None).await;
    let (a, b) = (unique_name("dep-a"), unique_name("dep-b"));
    let (ja, jb) = tokio::join!(
        deploy(api, host_id, request("lab-img", &a, &lab)),
        deploy(api, host_id, request("lab-img", &b, &lab)),
    );
    for accepted in [&ja, &jb] {
        let password = accepted["credentials"]["password"].as_str().unwrap();
        assert!(password.len() >= 16, "{accepted}");
        assert_eq!(accepted["credentials"]["username"], "ops");
        assert_eq!(accepted["job"]["kind"], "vm.deploy");
    }
    let mut downloaded = 0;
    let mut uuids = Vec::new();
    for (name, accepted) in [(&a, &ja), (&b, &jb)] {
        let job = job_finished(api, accepted["job"]["id"].as_str().unwrap()).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"]["state"], "running", "{job}");
        uuids.push(job["result"]["uuid"].as_str().unwrap().to_owned());
        let image = &step(&job, "image")["output"];
        if image["cached"] == false {
            downloaded += 1;
            assert_eq!(image["bytes"], 4 << 20, "{job}");
        }
        assert_eq!(host.domstate(name), "running");
        // The password appears nowhere after the answer that showed it.
        let password = accepted["credentials"]["password"].as_str().unwrap();
        assert!(!job.to_string().contains(password));
    }
    assert_eq!(downloaded, 1, "one of the two jobs downloads");
    assert_eq!(server.gets("img.raw").len(), 1, "one GET of the image");
    assert!(cached(host, sha));
    for ((name, _), uuid) in [(&a, 0), (&b, 1)].iter().zip(&uuids) {
        remove_vm(host, name, uuid);
    }
}

#[tokio::test]
async fn a_published_checksum_list_over_https_with_a_private_ca_verifies_the_image() {
    let lab = Lab::load();
    let host = lab.host("ovh1");
    let dir = tempfile::tempdir().unwrap();
    let (image, sha) = make_image(dir.path(), "lab-disk.raw", 2);
    // A list as distributions publish it (binary-mode line among others),
    // and a stale one without this image.
    let other = "0".repeat(64);
    let lists = [
        (
            "SHA256SUMS",
            format!("{other}  other.raw\n{sha} *lab-disk.raw\n"),
        ),
        ("STALE256SUMS", format!("{other}  other.raw\n")),
    ];
    let mut files = vec![("lab-disk.raw".to_owned(), image)];
    for (name, text) in &lists {
        std::fs::write(dir.path().join(name), text).unwrap();
        files.push(((*name).to_owned(), dir.path().join(name)));
    }
    // The mirror's CA, in a file the hosts' curl can read.
    let tls = support::test_tls(&[&bridge_ip(&lab)]);
    let ca = dir.path().join("mirror-ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(host.path_exists(&ca), "the host sees the CA file");
    let ca = ca.to_str().unwrap();
    let server = FileServer::start_tls(&lab, files, tls.acceptor).await;
    let url = server.url("lab-disk.raw");
    let listed = |list: &str, ca: Option<&str>| {
        let ca = ca
            .map(|c| format!("\nca_file = \"{c}\""))
            .unwrap_or_default();
        let verify = format!("checksums_url = \"{}\"{ca}", server.url(list));
        lab_profile_verified(&url, &verify)
    };
    let (_app, api, ids, _profiles) = service(
        &lab,
        &[
            ("lab-listed", listed("SHA256SUMS", Some(ca))),
            ("lab-stale", listed("STALE256SUMS", Some(ca))),
            ("lab-untrusted", listed("SHA256SUMS", None)),
        ],
        &[host],
    )
    .await;
    let host_id = &ids[0];

    // The list names the image: its digest is the one downloaded, verified
    // and cached under.
    let name = unique_name("dep-listed");
    let accepted = deploy(&api, host_id, request("lab-listed", &name, &lab)).await;
    let job = job_finished(&api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let image = &step(&job, "image")["output"];
    assert_eq!(image["digest"]["algorithm"], "sha256", "{image}");
    assert_eq!(image["digest"]["hex"], sha.as_str(), "{image}");
    assert!(cached(host, &sha));
    assert_eq!(host.domstate(&name), "running");
    assert_eq!(server.gets("lab-disk.raw").len(), 1);
    assert_eq!(server.gets("SHA256SUMS").len(), 1);
    remove_vm(host, &name, job["result"]["uuid"].as_str().unwrap());

    // A list without the image, and a host that does not trust the
    // mirror: each fails clearly before any download, leaving nothing.
    for (profile, why) in [
        (
            "lab-stale",
            "the checksum list has no line for lab-disk.raw",
        ),
        ("lab-untrusted", "cannot fetch"),
    ] {
        let name = unique_name("dep-unlisted");
        let accepted = deploy(&api, host_id, request(profile, &name, &lab)).await;
        let job = job_finished(&api, accepted["job"]["id"].as_str().unwrap()).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert!(
            job["error"].as_str().unwrap().contains(why),
            "{profile}: {job}"
        );
        assert!(host.try_virsh(&["domstate", "--domain", &name]).is_err());
        let uuid = job["operation"]["spec"]["uuid"].as_str().unwrap();
        assert!(!vm_dirs(host).iter().any(|d| d == uuid), "{uuid} left");
    }
    assert_eq!(server.gets("lab-disk.raw").len(), 1, "no second download");
}

#[tokio::test]
async fn a_checksum_mismatch_fails_the_job_and_leaves_nothing() {
    let lab = Lab::load();
    let host = lab.host("ovh2");
    let wrong = "ab".repeat(32);
    let Setup { api, host_id, .. } = &setup(Route::Bridge, &lab, host, 1, None, Some(&wrong)).await;
    let before = vm_dirs(host);
    let name = unique_name("dep-bad");
    let accepted = deploy(api, host_id, request("lab-img", &name, &lab)).await;
    let job = job_finished(api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = step(&job, "image")["error"].as_str().unwrap_or_default();
    assert!(error.contains("checksum mismatch"), "{job}");
    for later in ["overlay", "seed", "define", "start"] {
        assert_eq!(step(&job, later)["status"], "skipped", "{job}");
    }
    assert!(host.try_virsh(&["domstate", "--domain", &name]).is_err());
    assert_eq!(vm_dirs(host), before, "no VM directory left");
    assert!(!cached(host, &wrong), "nothing cached under the wrong sum");
}

#[tokio::test]
async fn a_cancelled_deployment_is_undone() {
    let lab = Lab::load();
    let host = lab.host("ovh3");
    // 8 MiB at 1 MiB/s: the download is still running when the cancel comes.
    let Setup {
        server,
        api,
        host_id,
        sha,
        ..
    } = &setup(Route::Bridge, &lab, host, 8, Some(1 << 20), None).await;
    let before = vm_dirs(host);
    let name = unique_name("dep-cancel");
    // Requests for one name at the same moment (a form sent twice, two
    // operators): one job, the others 409.
    let path = format!("/api/v1/hosts/{host_id}/deployments");
    let body = request("lab-img", &name, &lab);
    let answers = futures::future::join_all((0..4).map(|_| api.post(&path, body.clone()))).await;
    let (mut accepted, refused): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .partition(|(status, _)| *status == StatusCode::ACCEPTED);
    assert_eq!(accepted.len(), 1, "{accepted:?} {refused:?}");
    assert!(
        refused
            .iter()
            .all(|(status, body)| *status == StatusCode::CONFLICT
                && body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("already being deployed")),
        "{refused:?}"
    );
    let (_, accepted) = accepted.remove(0);
    let job_id = accepted["job"]["id"].as_str().unwrap();
    // Cancel once the host is fetching.
    fetch_started(server, "img.raw").await;
    // The host does not know the name before `define`; the deployment
    // under way still holds it.
    let (status, body) = api
        .post(
            &format!("/api/v1/hosts/{host_id}/deployments"),
            request("lab-img", &name, &lab),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(job_id),
        "{body}"
    );
    cancel(api, job_id).await;
    assert!(host.try_virsh(&["domstate", "--domain", &name]).is_err());
    assert_eq!(vm_dirs(host), before, "no VM directory left");
    assert!(!cached(host, sha), "a cancelled download is not cached");
}

#[tokio::test]
async fn a_host_lost_mid_download_fails_the_job_and_a_retry_resumes() {
    let lab = Lab::load();
    let host = lab.host("ovh9");
    let Setup {
        server,
        api,
        host_id,
        sha,
        ..
    } = &setup(Route::Bridge, &lab, host, 8, Some(1 << 20), None).await;
    let name = unique_name("dep-resume");
    let accepted = deploy(api, host_id, request("lab-img", &name, &lab)).await;
    let job_id = accepted["job"]["id"].as_str().unwrap();
    // Wait until part of the image is on the host, then kill its sshd.
    let part = PathBuf::from(format!("{DEPLOY_DIR}/images/{sha}.part"));
    while !host.path_exists(&part) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    host.stop_sshd();
    let job = job_finished(api, job_id).await;
    host.start_sshd();
    assert_eq!(job["status"], "failed", "{job}");
    assert!(host.try_virsh(&["domstate", "--domain", &name]).is_err());
    // The retry carries on from what the first attempt left.
    let retry = request("lab-img", &name, &lab);
    retry_resumes(api, host, host_id, server, &name, retry).await;
}

#[tokio::test]
async fn hostile_input_is_refused_before_any_job() {
    let lab = Lab::load();
    let host = lab.host("ovh2");
    let sha = "cd".repeat(32);
    let (app, api, ids, _p) = service(
        &lab,
        &[
            (
                "lab-never",
                lab_profile("http://127.0.0.1:9/never.raw", &sha),
            ),
            (
                "lab-private-ca",
                lab_profile_verified(
                    "http://127.0.0.1:9/never.raw",
                    &format!("sha256 = \"{sha}\"\nca_file = \"/etc/ssl/mirror.pem\""),
                ),
            ),
        ],
        &[host],
    )
    .await;
    let good = request("lab-never", "fine-name", &lab);
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let hostile = [
        with("name", json!("a;reboot")),
        with("name", json!("$(id)")),
        with("name", json!("x".repeat(300))),
        with("name", json!("")),
        with("profile", json!("../../etc/passwd")),
        with("profile", json!("nope")),
        with("username", json!("root")),
        with("username", json!("a b")),
        with("username", json!("ops\nroot")),
        with("ssh_keys", json!(["ssh-ed25519 AAAA\nrm -rf /"])),
        with("ssh_keys", json!(["not a key"])),
        with("vcpus", json!(0)),
        with("vcpus", json!(100_000)),
        with("memory_mib", json!(1)),
        with("memory_mib", json!(u64::MAX)),
        with("disk_gib", json!(0)),
        with("network", json!({"bridge": "br0;reboot"})),
        with("network", json!({"bridge": "nosuchbr"})),
        with("network", json!({"network": "nosuchnet"})),
        with("timezone", json!("../../etc/shadow")),
        with("locale", json!("en_US.UTF-8;id")),
        with("image_transfer", json!("pigeon")),
        // A product key is for Windows profiles, and has one shape.
        with("product_key", json!("VDYBY-N7KWH-9GXR3-XBQX3-CVHD8")),
        with("product_key", json!("VDYBY;reboot")),
        with("extra", json!(1)),
    ];
    for body in hostile {
        let (status, answer) = api
            .post(
                &format!("/api/v1/hosts/{}/deployments", ids[0]),
                body.clone(),
            )
            .await;
        assert!(status.is_client_error(), "{body} → {status} {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    // A CA file on the hosts means nothing to the control plane's download.
    let (status, answer) = api
        .post(
            &format!("/api/v1/hosts/{}/deployments", ids[0]),
            streamed("lab-private-ca", "fine-name", &lab),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["field"], "image_transfer", "{answer}");
    let (_, jobs) = api.get("/api/v1/jobs?kind=vm.deploy").await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
    // Another tenant's host is not found; a reader may not deploy.
    let (_, other, _) = app.create_user("otto", "operator").await;
    let (status, _) = app
        .client(&other)
        .post(
            &format!("/api/v1/hosts/{}/deployments", ids[0]),
            good.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The facts list the host's bridges.
    let (status, facts) = api.get(&format!("/api/v1/hosts/{}/facts", ids[0])).await;
    assert_eq!(status, StatusCode::OK, "{facts}");
    assert!(
        facts["bridges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == "br0"),
        "{facts}"
    );
}

/// A UEFI deployment of the test's blank image, its secrets for the guest
/// agent (which a blank disk never runs, so the job waits in `provision`
/// with the VM running): the live domain has OVMF and its own variable
/// store, which libvirt made at the start; a cancel undoes the start, the
/// definition (with the store) and the files.
#[tokio::test]
async fn a_uefi_deployment_cancelled_after_its_start_leaves_no_nvram() {
    let lab = Lab::load();
    let host = lab.host("ovh10");
    let images = tempfile::tempdir().unwrap();
    let (file, sha) = make_image(images.path(), "uefi.raw", 1);
    let server = FileServer::start(&lab, vec![("uefi.raw".into(), file)], None).await;
    let profile = lab_profile(&server.url("uefi.raw"), &sha).replace(
        "firmware = \"bios\"",
        "firmware = \"uefi\"\nprovisioning = \"agent\"",
    );
    let (_app, api, ids, _profiles) = service(&lab, &[("lab-uefi", profile)], &[host]).await;
    let name = unique_name("dep-uefi");
    let accepted = deploy(&api, &ids[0], request("lab-uefi", &name, &lab)).await;
    let job_id = accepted["job"]["id"].as_str().unwrap();
    let job = lab_hosts::job_at_step(&api, job_id, "provision").await;
    let uuid = job["operation"]["spec"]["uuid"].as_str().unwrap();
    let nvram = format!("{DEPLOY_DIR}/vms/{uuid}/VARS.fd");
    let xml = host.virsh(&["dumpxml", "--domain", &name]);
    assert!(
        xml.contains(
            "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
        ),
        "{xml}"
    );
    assert!(
        xml.contains(&format!(
            "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>{nvram}</nvram>"
        )),
        "{xml}"
    );
    assert_eq!(host.domstate(&name), "running");
    assert!(host.path_exists(Path::new(&nvram)), "libvirt made {nvram}");

    let (status, body) = api
        .post(&format!("/api/v1/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert!(status.is_success(), "{body}");
    let job = job_finished(&api, job_id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(host.try_virsh(&["domstate", "--domain", &name]).is_err());
    assert!(!host.path_exists(Path::new(&nvram)), "{nvram} is left");
    assert!(!vm_dirs(host).iter().any(|d| d == uuid), "{uuid} left");
}

#[tokio::test]
async fn a_host_without_a_route_fails_to_download_and_gets_the_image_streamed_once() {
    let lab = Lab::load();
    let host = lab.host("ovh1");
    let s = &setup(Route::Loopback, &lab, host, 3, None, None).await;
    let (api, host_id, sha) = (&s.api, &s.host_id, &s.sha);
    // An earlier attempt left the first MiB on the host.
    leave_part(host, &s.dirs.0.path().join("img.raw"), sha, 1 << 20);

    // The host's own download cannot reach the server.
    let name = unique_name("dep-noroute");
    let accepted = deploy(api, host_id, request("lab-img", &name, &lab)).await;
    let job = job_finished(api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = step(&job, "image")["error"].as_str().unwrap_or_default();
    assert!(error.contains("download"), "{job}");
    assert!(host.try_virsh(&["domstate", "--domain", &name]).is_err());
    assert!(s.server.gets("img.raw").is_empty(), "the host reached it");

    // Streamed by the control plane: the rest of the image only.
    let accepted = deploy(api, host_id, streamed("lab-img", &name, &lab)).await;
    let job = job_finished(api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["state"], "running", "{job}");
    let image = &step(&job, "image")["output"];
    assert_eq!(image["transfer"], "stream", "{image}");
    assert_eq!(image["cached"], false, "{image}");
    assert_eq!(image["resumed_from"], 1 << 20, "{image}");
    assert_eq!(image["bytes"], 3 << 20, "{image}");
    assert_eq!(image["total"], 3 << 20, "{image}");
    assert_eq!(host.domstate(&name), "running");
    assert!(cached(host, sha));
    assert_eq!(s.server.gets("img.raw").len(), 1, "one download, here");
    let kept = s.app.data_path().join(format!("images/{sha}.img"));
    assert!(kept.exists(), "the control plane keeps its copy");

    // The host has it now: a second deployment sends nothing.
    let again = unique_name("dep-noroute");
    let accepted = deploy(api, host_id, streamed("lab-img", &again, &lab)).await;
    let second = job_finished(api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(step(&second, "image")["output"]["cached"], true, "{second}");
    assert_eq!(s.server.gets("img.raw").len(), 1);
    for (name, job) in [(&name, &job), (&again, &second)] {
        remove_vm(host, name, job["result"]["uuid"].as_str().unwrap());
    }
}

#[tokio::test]
async fn a_streamed_image_with_a_wrong_checksum_is_cached_nowhere() {
    let lab = Lab::load();
    let host = lab.host("ovh2");
    let wrong = "cd".repeat(32);
    let s = &setup(Route::Loopback, &lab, host, 1, None, Some(&wrong)).await;
    let (api, host_id) = (&s.api, &s.host_id);
    let name = unique_name("dep-badstream");
    let accepted = deploy(api, host_id, streamed("lab-img", &name, &lab)).await;
    let job = job_finished(api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = step(&job, "image")["error"].as_str().unwrap_or_default();
    assert!(error.contains("checksum mismatch"), "{job}");
    assert!(host.try_virsh(&["domstate", "--domain", &name]).is_err());
    assert!(!cached(host, &wrong), "nothing cached on the host");
    let part = PathBuf::from(format!("{DEPLOY_DIR}/images/{wrong}.part"));
    assert!(!host.path_exists(&part), "nothing sent to the host");
    let images = s.app.data_path().join("images");
    for file in [format!("{wrong}.img"), format!("{wrong}.part")] {
        assert!(!images.join(&file).exists(), "{file} left");
    }
}

#[tokio::test]
async fn a_stream_cancelled_mid_download_resumes_on_the_next_deployment() {
    let lab = Lab::load();
    let host = lab.host("ovh2");
    // 4 MiB at 2 MiB/s: the cancel comes while the control plane fetches.
    let s = &setup(Route::Loopback, &lab, host, 4, Some(2 << 20), None).await;
    let name = unique_name("dep-streamcancel");
    let first = deploy(&s.api, &s.host_id, streamed("lab-img", &name, &lab)).await;
    fetch_started(&s.server, "img.raw").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel(&s.api, first["job"]["id"].as_str().unwrap()).await;
    assert!(!cached(host, &s.sha));
    let retry = streamed("lab-img", &name, &lab);
    retry_resumes(&s.api, host, &s.host_id, &s.server, &name, retry).await;
    assert_eq!(s.server.gets("img.raw").len(), 2);
    assert!(cached(host, &s.sha));
}
