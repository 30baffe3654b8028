//! Faults against the real service and the real lab: libvirtd restarted
//! on a host (idle and under a job), a host cut from the network under a
//! job, the data directory's disk filling up, and a SIGKILL under a hundred
//! concurrent jobs. Each test checks that what breaks fails clearly and
//! that the service recovers by itself once the fault is gone.
//!
//! Hosts: `ovh6` belongs to the libvirtd test and `ovh7` to the network
//! test (both are disrupted); `ovh1` is shared and only a guest of our own
//! is touched on it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/event_stream.rs"]
mod event_stream;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use event_stream::{events, wait_event};
use lab_hosts::{id, job_finished, register, vm_names};
use overvisor_testkit::{Lab, LabHost, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp};

fn host_event(kind: &'static str, host: &str) -> impl Fn(&Value) -> bool {
    let host = host.to_owned();
    move |e| e["type"] == kind && e["host_id"] == host.as_str()
}

async fn host_status(api: &Api, host: &str) -> Value {
    let (status, summary) = api.get("/api/v1/inventory").await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    summary["host_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host_id"] == host)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_connected(api: &Api, host: &str) {
    for _ in 0..600 {
        if host_status(api, host).await["status"] == "connected" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "host {host} never connected: {}",
        host_status(api, host).await
    );
}

/// Waits for the job to end (a few long-polls: a job on a dead host may
/// outlive one).
async fn job_end(api: &Api, job: &Value) -> Value {
    let id = job["id"].as_str().unwrap();
    let mut done = Value::Null;
    for _ in 0..4 {
        let (status, body) = api.get(&format!("/api/v1/jobs/{id}?wait=60")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        done = body;
        if !matches!(done["status"].as_str(), Some("queued" | "running")) {
            return done;
        }
    }
    panic!("job {id} never ended: {done}");
}

/// Runs a lifecycle action as a job and expects it to succeed.
async fn act(api: &Api, host: &str, vm: &str, action: &str) -> Value {
    let (status, job) = api
        .post(
            &format!("/api/v1/hosts/{host}/vms/{vm}/{action}"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{action} {vm}: {job}");
    let done = job_finished(api, job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{action} {vm}: {done}");
    done
}

/// The host's VM list (after a resync) is exactly what libvirt has, as
/// root sees it, each VM once, and `vm`'s state is libvirt's.
async fn assert_list_matches_host(api: &Api, host_id: &str, host: &LabHost, vm: &str) {
    let listed = vm_names(api, host_id).await;
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "duplicate VMs: {listed:?}");
    let on_host: BTreeSet<String> = host
        .virsh(&["list", "--all", "--name"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        unique.into_iter().cloned().collect::<BTreeSet<_>>(),
        on_host,
        "the list is not what libvirt has"
    );
    let (status, page) = api
        .get(&format!("/api/v1/hosts/{host_id}/vms?name={vm}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 1, "{page}");
    let want = match host.domstate(vm).as_str() {
        "running" => "running",
        "shut off" => "shut_off",
        other => panic!("{vm} is {other:?} on {}", host.name),
    };
    assert_eq!(page["items"][0]["state"], want, "{page}");
}

/// libvirtd restarted on a host, once while nothing runs and once just
/// after a start job was accepted: the job ends either way (succeeded, or
/// failed naming the host), the host's event stream reconnects by itself
/// (`host.disconnected`, then `host.connected`), the VM list is again
/// exactly the host's, each VM once, and actions work again.
#[tokio::test(flavor = "multi_thread")]
async fn libvirtd_restarts_leave_jobs_ended_and_the_inventory_whole() {
    let lab = Lab::load();
    let ovh6 = lab.host("ovh6");
    let app = TestApp::start().await;
    let (_, token, _) = app.create_user("lena", "operator").await;
    let api = app.client(&token);
    let host = id(&register(&api, &lab, ovh6).await);
    let guest = lab.define_guest(ovh6, &unique_name("flt-lvd"));
    let _bystander = lab.define_guest(ovh6, &unique_name("flt-lvd-idle"));
    let name = guest.name.clone();
    let mut ws = events(&app, &token, "host").await;
    wait_connected(&api, &host).await;
    assert_list_matches_host(&api, &host, ovh6, &name).await;

    // Idle.
    ovh6.restart_libvirtd();
    let gone = wait_event(
        &mut ws,
        Duration::from_secs(60),
        host_event("host.disconnected", &host),
    )
    .await;
    assert!(!gone["error"].as_str().unwrap().is_empty(), "{gone}");
    wait_event(
        &mut ws,
        Duration::from_secs(60),
        host_event("host.connected", &host),
    )
    .await;
    wait_connected(&api, &host).await;
    assert_list_matches_host(&api, &host, ovh6, &name).await;

    // Under a job.
    let (status, job) = api
        .post(&format!("/api/v1/hosts/{host}/vms/{name}/start"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    ovh6.restart_libvirtd();
    let done = job_end(&api, &job).await;
    eprintln!("start job under a libvirtd restart: {done}");
    match done["status"].as_str() {
        Some("succeeded") => {
            assert_eq!(done["result"]["state"], "running", "{done}");
            ovh6.wait_domstate(&name, "running", Duration::from_secs(30))
                .unwrap();
        }
        Some("failed") => {
            let error = done["error"].as_str().unwrap();
            assert!(error.contains("ovh6"), "unclear error: {done}");
        }
        _ => panic!("the job neither succeeded nor failed: {done}"),
    }
    wait_event(
        &mut ws,
        Duration::from_secs(60),
        host_event("host.connected", &host),
    )
    .await;
    wait_connected(&api, &host).await;
    assert_list_matches_host(&api, &host, ovh6, &name).await;

    // Actions work again; the guest ends shut off either way.
    if ovh6.domstate(&name) != "running" {
        act(&api, &host, &name, "start").await;
    }
    let stopped = act(&api, &host, &name, "force-stop").await;
    assert_eq!(stopped["result"]["state"], "shut_off", "{stopped}");
    assert_list_matches_host(&api, &host, ovh6, &name).await;
}

/// Puts the host's network back on drop.
struct NetDown<'a>(&'a LabHost);

impl<'a> NetDown<'a> {
    fn new(host: &'a LabHost) -> Self {
        host.net_down();
        Self(host)
    }
}

impl Drop for NetDown<'_> {
    fn drop(&mut self) {
        self.0.net_up();
    }
}

/// A host cut from the network under a start job: with a 10 s command
/// timeout and 2 s keepalives the job fails naming the host well within
/// its own timeout, and nothing reached the host; meanwhile an action on
/// another host succeeds; when the link returns the host reconnects by
/// itself and the same action succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_network_cut_fails_its_job_spares_other_hosts_and_heals() {
    let lab = Lab::load();
    let (ovh1, ovh7) = (lab.host("ovh1"), lab.host("ovh7"));
    let app = TestApp::builder()
        .env("OVERVISOR_SSH_COMMAND_TIMEOUT_SECS", "10")
        .env("OVERVISOR_SSH_KEEPALIVE_SECS", "2")
        .start()
        .await;
    let (_, token, _) = app.create_user("nina", "operator").await;
    let api = app.client(&token);
    let cut = id(&register(&api, &lab, ovh7).await);
    let other = id(&register(&api, &lab, ovh1).await);
    let guest = lab.define_guest(ovh7, &unique_name("flt-net"));
    let bystander = lab.define_guest(ovh1, &unique_name("flt-net-other"));
    let mut ws = events(&app, &token, "host").await;
    wait_connected(&api, &cut).await;
    wait_connected(&api, &other).await;
    // Both guests are known before the cut.
    assert!(vm_names(&api, &cut).await.contains(&guest.name));
    assert!(vm_names(&api, &other).await.contains(&bystander.name));

    let net = NetDown::new(ovh7);
    let (status, job) = api
        .post(
            &format!("/api/v1/hosts/{cut}/vms/{}/start", guest.name),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");

    // The other host is not held up by the dead one.
    let started = act(&api, &other, &bystander.name, "start").await;
    assert_eq!(started["result"]["state"], "running", "{started}");
    act(&api, &other, &bystander.name, "force-stop").await;

    let done = job_end(&api, &job).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("ovh7"), "unclear error: {done}");
    let took = chrono::DateTime::parse_from_rfc3339(done["finished_at"].as_str().unwrap()).unwrap()
        - chrono::DateTime::parse_from_rfc3339(done["started_at"].as_str().unwrap()).unwrap();
    eprintln!("start job on a cut host failed after {took}: {error}");
    assert!(
        took < chrono::Duration::seconds(180),
        "the job outlived its own timeout: {done}"
    );
    wait_event(
        &mut ws,
        Duration::from_secs(60),
        host_event("host.disconnected", &cut),
    )
    .await;
    assert_eq!(host_status(&api, &cut).await["status"], "disconnected");
    assert_eq!(
        ovh7.domstate(&guest.name),
        "shut off",
        "the start got through"
    );
    assert_eq!(host_status(&api, &other).await["status"], "connected");

    // The link returns: the host reconnects without anyone asking.
    drop(net);
    wait_event(
        &mut ws,
        Duration::from_secs(90),
        host_event("host.connected", &cut),
    )
    .await;
    wait_connected(&api, &cut).await;
    let started = act(&api, &cut, &guest.name, "start").await;
    assert_eq!(started["result"]["state"], "running", "{started}");
    act(&api, &cut, &guest.name, "force-stop").await;
    assert_list_matches_host(&api, &cut, ovh7, &guest.name).await;
}

/// A small tmpfs mounted for the test (as root), unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("cannot run mount (this test needs root)");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes `name` until the file system refuses: returns its size.
    fn fill(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path().join(name)).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Creates an API key for the caller; the answer as it came.
async fn try_key(api: &Api, name: &str) -> (StatusCode, Value) {
    api.post("/api/v1/users/me/keys", json!({"name": name}))
        .await
}

/// The data directory's disk fills up: requests that write are refused
/// with 503 `storage_full` and a message that says so (never a 500),
/// requests that only read keep working (including with a key whose
/// first use would record its last use), the database stays sound, and
/// once space is freed writes succeed again without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_with_503_keeps_reads_and_recovers() {
    let disk = Tmpfs::mount("8m");
    let data = disk.path().join("data");
    let app = TestApp::builder()
        .data_dir(&data)
        .env("OVERVISOR_TEST_JOBS", "1")
        .start()
        .await;
    let admin = app.admin();
    let (_, dora_token, _) = app.create_user("dora", "operator").await;
    let (status, body) = try_key(&admin, "before").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let filled = disk.fill("filler");
    assert!(filled > 0, "nothing could be written to fill the disk");

    // Writes: the first attempts may still fit in space SQLite already
    // holds; a bounded number must reach the full disk, and every refusal
    // is a 503 storage_full.
    let mut refused = None;
    for i in 0..200 {
        let (status, body) = try_key(&admin, &format!("full-{i}")).await;
        match status {
            StatusCode::CREATED => continue,
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("200 writes fitted on a full disk");
    support::assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_full",
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("storage is full"),
        "{body}"
    );
    // Other kinds of writes too: a user, a job.
    let (status, body) = admin
        .post(
            "/api/v1/users",
            json!({"name": "eve", "email": "eve@example.com", "role": "reader",
                   "password": "eve's long password"}),
        )
        .await;
    support::assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_full",
    );
    let (status, body) = admin
        .post("/api/v1/jobs/test-steps", json!({"steps": 1}))
        .await;
    support::assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_full",
    );

    // Reads keep working, for a key used for the first time too.
    let dora = app.client(&dora_token);
    for (api, path) in [
        (&dora, "/api/v1/users/me"),
        (&dora, "/api/v1/users/me/keys"),
        (&admin, "/api/v1/users"),
        (&admin, "/api/v1/jobs"),
        (&admin, "/api/v1/audit?all=true"),
        (&admin, "/api/v1/vms"),
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path} on a full disk: {body}");
    }
    let (status, keys) = admin.get("/api/v1/users/me/keys").await;
    assert_eq!(status, StatusCode::OK);
    assert!(keys.to_string().contains("\"before\""), "{keys}");
    let (status, body) = app.anonymous().get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The file is sound (read while the service runs).
    let db = data.join("overvisor.db");
    let store = overvisor_store::Store::open_sqlite_read_only(&db)
        .await
        .unwrap();
    store.integrity_check().await.unwrap();
    store.close().await;

    // Space returns: writes work again, without a restart.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let (status, body) = try_key(&admin, "after").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = admin
        .post(
            "/api/v1/users",
            json!({"name": "eve", "email": "eve@example.com", "role": "reader",
                   "password": "eve's long password"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, job) = admin
        .post("/api/v1/jobs/test-steps", json!({"steps": 1}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let done = job_finished(&admin, job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        !app.logs().contains("\"internal error\""),
        "a full disk was reported as an internal error"
    );
    drop(app);
    let store = overvisor_store::Store::open_sqlite_read_only(&db)
        .await
        .unwrap();
    store.integrity_check().await.unwrap();
    store.close().await;
}

fn log_lines(job: &Value) -> Vec<String> {
    job["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

fn step_statuses(job: &Value) -> Vec<String> {
    job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_owned())
        .collect()
}

/// Ids of the jobs (among `ids`) the service lists as running now.
async fn running_among(api: &Api, ids: &BTreeSet<String>) -> usize {
    let (status, list) = api
        .get("/api/v1/jobs?all=true&status=running&limit=1000")
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .filter(|j| ids.contains(j["id"].as_str().unwrap()))
        .count()
}

/// Checks one `test.steps` job of 3 steps after the restart: it ended;
/// no step that had finished ran again (only the step cut off by the
/// kill may show twice, once before and once after "resumed at step K" —
/// or only after, if the kill came before its first line); a job that
/// must not run twice either completed or was interrupted naming the
/// step it was in, with nothing after it run. Returns how it ended:
/// "succeeded", "resumed" or "interrupted".
fn check_steps_job(job: &Value, resumable: bool) -> &'static str {
    let log = log_lines(job);
    let ran = |n: usize| {
        log.iter()
            .filter(|l| **l == format!("step {n} ran"))
            .count()
    };
    let resumed_at = log.iter().find_map(|l| {
        l.strip_prefix("resumed at step ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|k| k.parse::<usize>().ok())
    });
    match job["status"].as_str() {
        Some("succeeded") => {
            assert_eq!(step_statuses(job), ["done", "done", "done"], "{job}");
            for n in 1..=3 {
                let want = if Some(n) == resumed_at { 1..=2 } else { 1..=1 };
                assert!(
                    want.contains(&ran(n)),
                    "step {n} ran {} times (resumed at {resumed_at:?}): {log:?}",
                    ran(n)
                );
            }
            if let Some(k) = resumed_at {
                assert!(resumable, "a job that must not run twice resumed: {job}");
                // The resumed run starts at K: the steps before it are
                // logged once, before the resume line.
                let at = log
                    .iter()
                    .position(|l| l.starts_with("resumed at"))
                    .unwrap();
                let after: Vec<&String> =
                    log[at..].iter().filter(|l| l.ends_with(" ran")).collect();
                let from_k: Vec<String> = (k..=3).map(|n| format!("step {n} ran")).collect();
                assert_eq!(
                    after,
                    from_k.iter().collect::<Vec<_>>(),
                    "after the resume: {log:?}"
                );
                for n in 1..k {
                    assert!(
                        log[..at].contains(&format!("step {n} ran")),
                        "step {n} did not run before the resume: {log:?}"
                    );
                }
                "resumed"
            } else {
                "succeeded"
            }
        }
        Some("interrupted") => {
            assert!(!resumable, "a resumable job was interrupted: {job}");
            let statuses = step_statuses(job);
            let error = job["error"].as_str().unwrap();
            assert!(error.contains("not run again"), "{job}");
            let Some(k) = statuses.iter().position(|s| s == "failed").map(|i| i + 1) else {
                // Killed after the last step finished, before the job's
                // end was recorded: every step ran once, none again.
                let Some(k) = statuses.iter().position(|s| s != "done").map(|i| i + 1) else {
                    assert!(error.contains("(after its last step)"), "{job}");
                    for n in 1..=3 {
                        assert_eq!(ran(n), 1, "step {n}: {log:?}");
                    }
                    return "interrupted";
                };
                // Killed between two steps: none of them is failed, the
                // message names the next one, which never ran.
                assert!(
                    error.contains(&format!("before step {k} \"step {k}\" began")),
                    "the interruption does not name step {k}: {job}"
                );
                for n in 1..=3 {
                    assert_eq!(ran(n), usize::from(n < k), "step {n}: {log:?}");
                    let expected = if n < k { "done" } else { "skipped" };
                    assert_eq!(statuses[n - 1], expected, "step {n}: {job}");
                }
                return "interrupted";
            };
            assert!(
                error.contains(&format!("in step {k} \"step {k}\"")),
                "the interruption does not name step {k}: {job}"
            );
            for n in 1..=3 {
                // Step K may have been cut off before it logged anything.
                let want = match n.cmp(&k) {
                    std::cmp::Ordering::Less => 1..=1,
                    std::cmp::Ordering::Equal => 0..=1,
                    std::cmp::Ordering::Greater => 0..=0,
                };
                assert!(
                    want.contains(&ran(n)),
                    "step {n} ran {} times: {log:?}",
                    ran(n)
                );
                let status = &statuses[n - 1];
                let expected = match n.cmp(&k) {
                    std::cmp::Ordering::Less => "done",
                    std::cmp::Ordering::Equal => "failed",
                    std::cmp::Ordering::Greater => "skipped",
                };
                assert_eq!(status, expected, "step {n}: {job}");
            }
            "interrupted"
        }
        _ => panic!("job did not end as succeeded or interrupted: {job}"),
    }
}

/// SIGKILL while a hundred `test.steps` jobs (3 steps of 300 ms; 30 of
/// them must not run twice) and resyncs of two lab hosts run at once; the
/// service, restarted on the same data with a 2 s lease, ends every one of
/// them: none is lost, no finished step runs again, resumable jobs cut off
/// mid-step resume at that step, the others are interrupted naming it;
/// the database passes `PRAGMA integrity_check`.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_a_hundred_jobs_loses_none_and_repeats_no_finished_step() {
    let lab = Lab::load();
    let mut app = TestApp::builder()
        .env("OVERVISOR_TEST_JOBS", "1")
        .env("OVERVISOR_JOB_LEASE_SECS", "2")
        .start()
        .await;
    let admin = app.admin();
    let hosts = [
        id(&register(&admin, &lab, lab.host("ovh1")).await),
        id(&register(&admin, &lab, lab.host("ovh2")).await),
    ];

    let submit = |i: usize| {
        let admin = admin.clone();
        async move {
            let resumable = i % 10 >= 3;
            let (status, job) = admin
                .post(
                    "/api/v1/jobs/test-steps",
                    json!({"steps": 3, "step_millis": 300, "resumable": resumable}),
                )
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{job}");
            (job["id"].as_str().unwrap().to_owned(), resumable)
        }
    };
    let mut tasks = Vec::new();
    for i in 0..100 {
        tasks.push(tokio::spawn(submit(i)));
    }
    let mut resyncs = BTreeSet::new();
    for round in 0..3 {
        for host in &hosts {
            let (status, job) = admin
                .post(&format!("/api/v1/hosts/{host}/resync"), json!({}))
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "resync {round}: {job}");
            resyncs.insert(job["id"].as_str().unwrap().to_owned());
        }
    }
    let mut steps_jobs = Vec::new();
    for task in tasks {
        steps_jobs.push(task.await.unwrap());
    }
    let once: BTreeSet<String> = steps_jobs
        .iter()
        .filter(|(_, r)| !r)
        .map(|(id, _)| id.clone())
        .collect();
    let again: BTreeSet<String> = steps_jobs
        .iter()
        .filter(|(_, r)| *r)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!((once.len(), again.len()), (30, 70));

    // Kill while jobs of both kinds are in a step.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if running_among(&admin, &once).await > 0 && running_among(&admin, &again).await > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no job of each kind was ever seen running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.kill();
    app.restart().await;
    let admin = app.admin();

    // None lost: every accepted job is listed, and ends.
    let (status, list) = admin.get("/api/v1/jobs?all=true&limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed: BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    let accepted: BTreeSet<String> = once.iter().chain(&again).chain(&resyncs).cloned().collect();
    assert_eq!(accepted.len(), 106);
    assert!(
        accepted.is_subset(&listed),
        "jobs lost: {:?}",
        accepted.difference(&listed).collect::<Vec<_>>()
    );

    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for (id, resumable) in &steps_jobs {
        let job = job_end(&admin, &json!({ "id": id })).await;
        *outcomes
            .entry(check_steps_job(&job, *resumable))
            .or_default() += 1;
    }
    for id in &resyncs {
        let job = job_end(&admin, &json!({ "id": id })).await;
        assert!(
            matches!(
                job["status"].as_str(),
                Some("succeeded" | "interrupted" | "failed")
            ),
            "{job}"
        );
        if job["status"] != "succeeded" {
            assert!(!job["error"].as_str().unwrap().is_empty(), "{job}");
        }
    }
    eprintln!("outcomes of the 100 test.steps jobs: {outcomes:?}");
    // The kill did land in the middle of both kinds.
    assert!(
        outcomes.get("interrupted").is_some_and(|n| *n > 0),
        "{outcomes:?}"
    );
    assert!(
        outcomes.get("resumed").is_some_and(|n| *n > 0),
        "{outcomes:?}"
    );

    let db = app.data_path().join("overvisor.db");
    let store = overvisor_store::Store::open_sqlite_read_only(&db)
        .await
        .unwrap();
    store.integrity_check().await.unwrap();
    store.close().await;
}
