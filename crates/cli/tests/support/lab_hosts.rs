//! Lab hosts as seen through the public API: register one the way an
//! operator does (probe, compare the fingerprint with the lab's record,
//! confirm it), and guards that undo what a test did to a shared host.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use overvisor_testkit::{Lab, LabHost};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::Api;

/// Probes `host` through the API and checks the fingerprint against the
/// lab's own record of the host key — the out-of-band comparison an
/// operator makes before confirming.
pub async fn probe(api: &Api, host: &LabHost) -> String {
    let (status, body) = api
        .post(
            "/api/v1/hosts/probe",
            json!({"address": host.address, "port": host.port}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "probe {}: {body}", host.name);
    let fingerprint = body["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint, host.host_key_fingerprint, "{}", host.name);
    assert_eq!(body["public_key"], host.host_key_pub);
    fingerprint
}

/// Registers `host` for the caller with its confirmed fingerprint and the
/// lab client key as the host's own credential; returns the host.
pub async fn register(api: &Api, lab: &Lab, host: &LabHost) -> Value {
    let fingerprint = probe(api, host).await;
    let (status, body) = api
        .post(
            "/api/v1/hosts",
            json!({
                "name": host.name,
                "address": host.address,
                "port": host.port,
                "ssh_user": host.user,
                "libvirt_uri": host.uri,
                "tags": ["lab"],
                "host_key_fingerprint": fingerprint,
                "credential": {"private_key": lab.client_key_pem()},
            }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "register {}: {body}",
        host.name
    );
    assert_eq!(body["has_credential"], true);
    assert!(
        !body.to_string().contains("PRIVATE KEY"),
        "the credential came back: {body}"
    );
    body
}

/// Registers `name` at `at`'s address but pinned to `key_of`'s host key
/// (the API accepts it; every use is then refused as a key mismatch).
pub async fn register_with_wrong_key(
    api: &Api,
    lab: &Lab,
    name: &str,
    at: &LabHost,
    key_of: &LabHost,
) -> Value {
    probe(api, at).await;
    let (status, host) = api
        .post(
            "/api/v1/hosts",
            json!({"name": name, "address": at.address,
                   "host_key_fingerprint": key_of.host_key_fingerprint,
                   "credential": {"private_key": lab.client_key_pem()}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{host}");
    host
}

pub fn id(host: &Value) -> String {
    host["id"].as_str().unwrap().to_owned()
}

/// Waits (long-poll) for job `id` to end and returns it.
pub async fn job_finished(api: &Api, id: &str) -> Value {
    job_finished_within(api, id, Duration::from_secs(60)).await
}

fn unfinished(job: &Value) -> bool {
    matches!(job["status"].as_str(), Some("queued" | "running"))
}

/// Waits (the API's long poll) for job `id` to end, at most `within`.
pub async fn job_finished_within(api: &Api, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, job) = api.get(&format!("/api/v1/jobs/{id}?wait=60")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if !unfinished(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} still unfinished after {within:?}: {job}"
        );
    }
}

/// Waits for job `id` to be running its step `name`; the job must not end
/// before.
pub async fn job_at_step(api: &Api, id: &str, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, job) = api.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        let step = job["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["name"] == name));
        if step.is_some_and(|s| s["status"] == "running") {
            return job;
        }
        assert!(unfinished(&job), "the job ended before {name}: {job}");
        assert!(Instant::now() < deadline, "never reached {name}: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a VM action as a job and waits for it to succeed.
pub async fn act(api: &Api, host: &str, vm: &str, action: &str) -> Value {
    let (status, job) = api
        .post(
            &format!(
                "/api/v1/hosts/{host}/vms/{}/{action}",
                crate::support::path_segment(vm)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let done = job_finished(api, job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done
}

/// `POST /api/v1/hosts/{host}/resync`: accepted as an `inventory.resync`
/// job; returns the finished job (succeeded or failed).
pub async fn resync(api: &Api, host_id: &str) -> Value {
    let (status, job) = api
        .post(&format!("/api/v1/hosts/{host_id}/resync"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["kind"], "inventory.resync", "{job}");
    job_finished(api, job["id"].as_str().unwrap()).await
}

/// `GET /api/v1/hosts/{host}/vms` (the inventory's view, with the host's
/// status); always answers at once, whatever the host's state.
pub async fn host_vms(api: &Api, host_id: &str) -> Value {
    let (status, body) = api.get(&format!("/api/v1/hosts/{host_id}/vms")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Names of the VMs on a host after an explicit resync (so VMs defined
/// behind our back a moment ago are listed).
///
/// On a shared host another test may define or undefine a guest between
/// the resync and the list; the pair is then taken again (a few times).
pub async fn vm_names(api: &Api, host_id: &str) -> Vec<String> {
    let mut attempts = 0;
    let body = loop {
        attempts += 1;
        let job = resync(api, host_id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let body = host_vms(api, host_id).await;
        assert_eq!(body["host"]["status"], "connected", "{body}");
        if body["total"] == job["result"]["vms"] {
            break body;
        }
        assert!(attempts < 5, "{body} vs {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls the host's VM list until the host's status is `want`; returns
/// the last answer.
pub async fn wait_host_status(api: &Api, host_id: &str, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let body = host_vms(api, host_id).await;
        if body["host"]["status"] == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "host {host_id} not {want} after {timeout:?}: {}",
            body["host"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Calls `GET path` until it answers 200 or `timeout` passes; returns the
/// last answer.
pub async fn get_until_ok(api: &Api, path: &str, timeout: Duration) -> (StatusCode, Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = api.get(path).await;
        if status == StatusCode::OK || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Keeps a host's sshd down while alive; starts it again on drop, so a
/// failing test does not leave the host dead for the next one.
pub struct SshdDown<'a>(pub &'a LabHost);

impl<'a> SshdDown<'a> {
    pub fn new(host: &'a LabHost) -> Self {
        host.stop_sshd();
        Self(host)
    }
}

impl Drop for SshdDown<'_> {
    fn drop(&mut self) {
        self.0.start_sshd();
    }
}

/// The automation account's `authorized_keys` (one home directory serves
/// every lab host).
pub fn authorized_keys_path(host: &LabHost) -> PathBuf {
    let out = host.run_as_root("getent", &["passwd", &host.user]);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let home = line.trim().split(':').nth(5).expect("home directory");
    PathBuf::from(home).join(".ssh").join("authorized_keys")
}

/// Removes the lines holding `key` (type and base64) from the file on
/// drop, in place so owner and mode stay: enrolment tests must not leave
/// their users' keys authorized on the shared lab account.
pub struct AuthorizedKeyCleanup {
    pub path: PathBuf,
    pub key: String,
}

impl AuthorizedKeyCleanup {
    pub fn new(path: PathBuf, public_line: &str) -> Self {
        let key = public_line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        // An empty pattern would match (and remove) every line.
        assert!(
            key.len() > 40 && key.contains(' '),
            "not a key line: {public_line:?}"
        );
        Self { path, key }
    }

    pub fn count(&self) -> usize {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&self.key))
            .count()
    }
}

impl Drop for AuthorizedKeyCleanup {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return;
        };
        let kept: String = text
            .lines()
            .filter(|l| !l.contains(&self.key))
            .map(|l| format!("{l}\n"))
            .collect();
        if kept != text {
            let _ = std::fs::write(&self.path, kept);
        }
    }
}
