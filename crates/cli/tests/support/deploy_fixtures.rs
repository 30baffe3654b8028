//! What the deployment tests share: a file server for images (on the lab
//! bridge, where the hosts' curl reaches it, or on the test's own loopback,
//! where it does not), random images, the service with a lab profile, and
//! looks at a host's deployment files.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use overvisor_testkit::{Lab, LabHost};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use crate::lab_hosts::{id, register};
use crate::support::{Api, TestApp, lab_profile};

/// Where deployments keep files on a host (`hv::libvirt::deploy`).
pub const DEPLOY_DIR: &str = "/var/lib/libvirt/overvisor";

/// One GET the file server answered: the offset it started at.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub from: u64,
}

/// A file server on the lab bridge: answers HEAD and GET (with
/// `Range: bytes=N-`) for the files it was given, optionally slowly.
pub struct FileServer {
    base: String,
    log: Arc<Mutex<Vec<(String, Served)>>>,
}

/// The lab bridge's address, where the hosts reach the test's servers:
/// the hosts are .2, .3, ... of the lab subnet, the bridge is .1.
pub fn bridge_ip(lab: &Lab) -> String {
    let first = &lab.hosts[0].address;
    format!("{}.1", first.rsplit_once('.').unwrap().0)
}

impl FileServer {
    pub async fn start(
        lab: &Lab,
        files: Vec<(String, PathBuf)>,
        bytes_per_sec: Option<u64>,
    ) -> Self {
        Self::serve(&bridge_ip(lab), files, bytes_per_sec, None).await
    }

    /// On the test's own loopback: the control plane reaches it, the lab
    /// hosts (each in its own network namespace) do not.
    pub async fn start_unreachable(
        files: Vec<(String, PathBuf)>,
        bytes_per_sec: Option<u64>,
    ) -> Self {
        Self::serve("127.0.0.1", files, bytes_per_sec, None).await
    }

    /// Over HTTPS, with a certificate `tls` issued for the bridge address.
    pub async fn start_tls(lab: &Lab, files: Vec<(String, PathBuf)>, tls: TlsAcceptor) -> Self {
        Self::serve(&bridge_ip(lab), files, None, Some(tls)).await
    }

    async fn serve(
        ip: &str,
        files: Vec<(String, PathBuf)>,
        bytes_per_sec: Option<u64>,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
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

    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    pub fn gets(&self, name: &str) -> Vec<Served> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .collect()
    }
}

pub async fn serve_one(
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
pub fn make_image(dir: &Path, name: &str, mib: usize) -> (PathBuf, String) {
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
pub async fn service(
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
pub struct Setup {
    pub server: FileServer,
    pub api: Api,
    pub host_id: String,
    pub sha: String,
    pub app: TestApp,
    pub dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Where a test's file server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On the lab bridge: the hosts' curl reaches it.
    Bridge,
    /// On the test's own loopback: the control plane reaches it, the lab
    /// hosts (each in its own network namespace) do not.
    Loopback,
}

pub async fn setup(
    route: Route,
    lab: &Lab,
    host: &LabHost,
    mib: usize,
    rate: Option<u64>,
    sha256: Option<&str>,
) -> Setup {
    let images = tempfile::tempdir().unwrap();
    let (file, own) = make_image(images.path(), "img.raw", mib);
    let sha = sha256.map_or(own, str::to_owned);
    let files = vec![("img.raw".into(), file)];
    let server = match route {
        Route::Bridge => FileServer::start(lab, files, rate).await,
        Route::Loopback => FileServer::start_unreachable(files, rate).await,
    };
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
        app,
        dirs: (images, profiles),
    }
}

pub fn request(profile: &str, name: &str, lab: &Lab) -> Value {
    json!({
        "profile": profile, "name": name, "vcpus": 1, "memory_mib": 128, "disk_gib": 1,
        "network": {"bridge": "br0"}, "username": "ops",
        "ssh_keys": [lab.client_key_pub],
    })
}

/// Posts a deployment; returns the response body (job + credentials).
pub async fn deploy(api: &Api, host: &str, body: Value) -> Value {
    let (status, accepted) = api
        .post(&format!("/api/v1/hosts/{host}/deployments"), body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    accepted
}

pub fn step<'a>(job: &'a Value, name: &str) -> &'a Value {
    job["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {job}"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {job}"))
}

/// The VM's directory on the host (from the job's result or audit).
pub fn vm_dirs(host: &LabHost) -> Vec<String> {
    let out = host.run_as_root("ls", &["-1", &format!("{DEPLOY_DIR}/vms")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Removes a deployed VM as root (a test's own leftovers).
pub fn remove_vm(host: &LabHost, name: &str, uuid: &str) {
    let _ = host.try_virsh(&["destroy", "--domain", name]);
    let _ = host.try_virsh(&["undefine", "--domain", name]);
    host.run_as_root("rm", &["-rf", &format!("{DEPLOY_DIR}/vms/{uuid}")]);
}

pub fn cached(host: &LabHost, sha: &str) -> bool {
    host.path_exists(Path::new(&format!("{DEPLOY_DIR}/images/{sha}.img")))
}

/// Leaves the first `bytes` of `image` on `host` as a partial download
/// of `sha`, owned by the automation user, as an interrupted transfer
/// would.
pub fn leave_part(host: &LabHost, image: &Path, sha: &str, bytes: u64) {
    let dir = format!("{DEPLOY_DIR}/images");
    let part = format!("{dir}/{sha}.part");
    let script = format!(
        "mkdir -p {dir} && chown --reference={DEPLOY_DIR} {dir} && \
         head -c {bytes} {} > {part} && chown --reference={DEPLOY_DIR} {part}",
        image.display()
    );
    let out = host.run_as_root("sh", &["-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Posts a deployment of `profile` whose image the control plane streams.
pub fn streamed(profile: &str, name: &str, lab: &Lab) -> Value {
    let mut body = request(profile, name, lab);
    body["image_transfer"] = json!("stream");
    body
}

/// Waits until the file server was asked for `name`.
pub async fn fetch_started(server: &FileServer, name: &str) {
    while server.gets(name).is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cancels a job and waits for it to end `cancelled`; returns it.
pub async fn cancel(api: &Api, job_id: &str) -> Value {
    let (status, body) = api
        .post(&format!("/api/v1/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert!(status.is_success(), "{body}");
    let job = crate::lab_hosts::job_finished(api, job_id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    job
}

/// Deploys `retry` after an interrupted attempt: it succeeds, and the file
/// server was asked only for the rest of the image. Removes the VM.
pub async fn retry_resumes(
    api: &Api,
    host: &LabHost,
    host_id: &str,
    server: &FileServer,
    name: &str,
    retry: Value,
) {
    let accepted = deploy(api, host_id, retry).await;
    let job = crate::lab_hosts::job_finished(api, accepted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let gets = server.gets("img.raw");
    assert!(
        gets.last().is_some_and(|g| g.from > 0),
        "the retry asked for the rest only: {gets:?}"
    );
    remove_vm(host, name, job["result"]["uuid"].as_str().unwrap());
}
