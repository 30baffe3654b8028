//! Deployments through the real service onto real lab hosts: a VM reaches
//! `running`; two deployments of one image download it once; an image
//! verified by a published checksum list, fetched over HTTPS from a mirror
//! with a private CA, is cached under the listed digest; a wrong
//! checksum, a cancel and a host that dies mid-download leave nothing of
//! the VM behind (and a retry resumes the download); hostile input is a
//! 4xx before any job exists.
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

#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lab_hosts::{id, job_finished, register};
use overvisor_testkit::{Lab, LabHost, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, lab_profile, lab_profile_verified};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

/// Where deployments keep files on a host (`hv::libvirt::deploy`).
const DEPLOY_DIR: &str = "/var/lib/libvirt/overvisor";

/// One GET the file server answered: the offset it started at.
#[derive(Debug, Clone, Copy)]
struct Served {
    from: u64,
}

/// A file server on the lab bridge: answers HEAD and GET (with
/// `Range: bytes=N-`) for the files it was given, optionally slowly.
struct FileServer {
    base: String,
    log: Arc<Mutex<Vec<(String, Served)>>>,
}

/// The lab bridge's address, where the hosts reach the test's servers:
/// the hosts are .2, .3, ... of the lab subnet, the bridge is .1.
fn bridge_ip(lab: &Lab) -> String {
    let first = &lab.hosts[0].address;
    format!("{}.1", first.rsplit_once('.').unwrap().0)
}

impl FileServer {
    async fn start(lab: &Lab, files: Vec<(String, PathBuf)>, bytes_per_sec: Option<u64>) -> Self {
        Self::serve(lab, files, bytes_per_sec, None).await
    }

    /// Over HTTPS, with a certificate `tls` issued for the bridge address.
    async fn start_tls(lab: &Lab, files: Vec<(String, PathBuf)>, tls: TlsAcceptor) -> Self {
        Self::serve(lab, files, None, Some(tls)).await
    }

    async fn serve(
        lab: &Lab,
        files: Vec<(String, PathBuf)>,
        bytes_per_sec: Option<u64>,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind((bridge_ip(lab).as_str(), 0))
            .await
            .unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let files = Arc::new(files);
        let seen = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (files, seen, tls) = (files.clone(), seen.clone(), tls.clone());
                tokio::spawn(async move {
                    let _ = match tls {
                        None => serve_one(sock, &files, &seen, bytes_per_sec).await,
                        // A client that refuses the certificate ends here.
                        Some(tls) => match tls.accept(sock).await {
                            Ok(sock) => serve_one(sock, &files, &seen, bytes_per_sec).await,
                            Err(e) => Err(e),
                        },
                    };
                });
            }
        });
        Self { base, log }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    fn gets(&self, name: &str) -> Vec<Served> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .collect()
    }
}

async fn serve_one(
    mut sock: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    files: &[(String, PathBuf)],
    log: &Mutex<Vec<(String, Served)>>,
    bytes_per_sec: Option<u64>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let name = path.trim_start_matches('/').to_owned();
    let Some((_, file)) = files.iter().find(|(n, _)| *n == name) else {
        sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    };
    let data = std::fs::read(file)?;
    let from = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .and_then(|r| r.trim().strip_suffix('-').map(str::to_owned))
        })
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
        .min(data.len() as u64);
    let len = data.len() as u64;
    let status = if from > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}\r\n",
            len.saturating_sub(1)
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    let header = format!(
        "{status}Content-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        len - from
    );
    sock.write_all(header.as_bytes()).await?;
    if method != "GET" {
        return Ok(());
    }
    log.lock().unwrap().push((name, Served { from }));
    let body = &data[usize::try_from(from).unwrap()..];
    match bytes_per_sec {
        None => sock.write_all(body).await?,
        Some(rate) => {
            // Ten pieces a second, so a test can act mid-download.
            let piece = usize::try_from((rate / 10).max(1)).unwrap();
            for part in body.chunks(piece) {
                sock.write_all(part).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// A random raw disk of `mib` MiB (random, so its SHA-256 is its own and
/// no other test's download is found in a host's cache); returns its hex
/// SHA-256.
fn make_image(dir: &Path, name: &str, mib: usize) -> (PathBuf, String) {
    let path = dir.join(name);
    let mut data = vec![0u8; mib << 20];
    let seed = uuid::Uuid::new_v4();
    for (i, b) in data.iter_mut().enumerate().step_by(4096) {
        *b = seed.as_bytes()[i % 16] ^ (i >> 12) as u8;
    }
    data[..16].copy_from_slice(seed.as_bytes());
    std::fs::write(&path, &data).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    (path, sha)
}

/// The service with `profiles` (name → TOML) and an operator who owns the
/// given lab hosts; returns the app, the operator's client and host ids.
async fn service(
    lab: &Lab,
    profiles: &[(&str, String)],
    hosts: &[&LabHost],
) -> (TestApp, Api, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, toml) in profiles {
        std::fs::write(dir.path().join(format!("{name}.toml")), toml).unwrap();
    }
    let app = TestApp::builder().deploy_profiles(dir.path()).start().await;
    let (_, token, _) = app.create_user("olga", "operator").await;
    let api = app.client(&token);
    let mut ids = Vec::new();
    for h in hosts {
        ids.push(id(&register(&api, lab, h).await));
    }
    (app, api, ids, dir)
}

/// One test's image, served (at `rate` bytes/s, if given) under the
/// profile `lab-img` pinned to `sha256` (the image's own unless told), and
/// the service with an operator owning `host`.
struct Setup {
    server: FileServer,
    api: Api,
    host_id: String,
    sha: String,
    _app: TestApp,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn setup(
    lab: &Lab,
    host: &LabHost,
    mib: usize,
    rate: Option<u64>,
    sha256: Option<&str>,
) -> Setup {
    let images = tempfile::tempdir().unwrap();
    let (file, own) = make_image(images.path(), "img.raw", mib);
    let sha = sha256.map_or(own, str::to_owned);
    let server = FileServer::start(lab, vec![("img.raw".into(), file)], rate).await;
    let (app, api, ids, profiles) = service(
        lab,
        &[("lab-img", lab_profile(&server.url("img.raw"), &sha))],
        &[host],
    )
    .await;
    Setup {
        server,
        api,
        host_id: ids[0].clone(),
        sha,
        _app: app,
        _dirs: (images, profiles),
    }
}

fn request(profile: &str, name: &str, lab: &Lab) -> Value {
    json!({
        "profile": profile, "name": name, "vcpus": 1, "memory_mib": 128, "disk_gib": 1,
        "network": {"bridge": "br0"}, "username": "ops",
        "ssh_keys": [lab.client_key_pub],
    })
}

/// Posts a deployment; returns the response body (job + credentials).
async fn deploy(api: &Api, host: &str, body: Value) -> Value {
    let (status, accepted) = api
        .post(&format!("/api/v1/hosts/{host}/deployments"), body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    accepted
}

fn step<'a>(job: &'a Value, name: &str) -> &'a Value {
    job["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {job}"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {job}"))
}

/// The VM's directory on the host (from the job's result or audit).
fn vm_dirs(host: &LabHost) -> Vec<String> {
    let out = host.run_as_root("ls", &["-1", &format!("{DEPLOY_DIR}/vms")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Removes a deployed VM as root (a test's own leftovers).
fn remove_vm(host: &LabHost, name: &str, uuid: &str) {
    let _ = host.try_virsh(&["destroy", "--domain", name]);
    let _ = host.try_virsh(&["undefine", "--domain", name]);
    host.run_as_root("rm", &["-rf", &format!("{DEPLOY_DIR}/vms/{uuid}")]);
}

fn cached(host: &LabHost, sha: &str) -> bool {
    host.path_exists(Path::new(&format!("{DEPLOY_DIR}/images/{sha}.img")))
}

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
    } = &setup(&lab, host, 4, None, None).await;
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
    let Setup { api, host_id, .. } = &setup(&lab, host, 1, None, Some(&wrong)).await;
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
    } = &setup(&lab, host, 8, Some(1 << 20), None).await;
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
    while server.gets("img.raw").is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let (status, body) = api
        .post(&format!("/api/v1/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert!(status.is_success(), "{body}");
    let job = job_finished(api, job_id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
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
    } = &setup(&lab, host, 8, Some(1 << 20), None).await;
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
    let accepted = deploy(api, host_id, request("lab-img", &name, &lab)).await;
    let job = job_finished(api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let gets = server.gets("img.raw");
    assert!(
        gets.last().is_some_and(|g| g.from > 0),
        "the retry asked for the rest only: {gets:?}"
    );
    remove_vm(host, &name, job["result"]["uuid"].as_str().unwrap());
}

#[tokio::test]
async fn hostile_input_is_refused_before_any_job() {
    let lab = Lab::load();
    let host = lab.host("ovh2");
    let sha = "cd".repeat(32);
    let (app, api, ids, _p) = service(
        &lab,
        &[(
            "lab-never",
            lab_profile("http://127.0.0.1:9/never.raw", &sha),
        )],
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
    let job = loop {
        let (_, job) = api.get(&format!("/api/v1/jobs/{job_id}")).await;
        if step(&job, "provision")["status"] == "running" {
            break job;
        }
        assert!(
            matches!(job["status"].as_str(), Some("queued" | "running")),
            "{job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
