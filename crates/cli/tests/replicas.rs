//! `overvisor serve` replicas on one PostgreSQL database and real lab
//! hosts: each host is owned by one replica, every replica lists every
//! VM, a lifecycle request made on any replica is carried out by the
//! host's owner, and the replicas survive a SIGKILL and a rolling restart
//! (after which the hosts are spread evenly again). Usage graphs are
//! whole on every replica.
//!
//! Hosts: `ovh1`–`ovh5`, shared with other tests; only domains of our own
//! are defined and touched on them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/console_socket.rs"]
mod console_socket;
#[path = "support/event_stream.rs"]
mod event_stream;
#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_stream::{events, wait_event};
use lab_hosts::{act, id, job_finished, register};
use overvisor_testkit::{Lab, TestGuest, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, TestAppBuilder};

/// Lease of a host on a replica, and of a job on a runner (seconds): short,
/// so a takeover happens within the test's patience.
const LEASE_SECS: &str = "3";

/// A master key for replicas to share.
fn new_master_key() -> String {
    use base64::Engine;
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    base64::engine::general_purpose::STANDARD.encode([*a.as_bytes(), *b.as_bytes()].concat())
}

/// A replica on PostgreSQL with short leases: the first one makes the
/// database; others get `.data_dir(D)` where `D/../postgres-url` names it
/// ([`join`]).
fn replica_builder(master_key: &str) -> TestAppBuilder {
    TestApp::builder()
        .postgres()
        .env("OVERVISOR_MASTER_KEY", master_key)
        .env("OVERVISOR_HOST_LEASE_SECS", LEASE_SECS)
        .env("OVERVISOR_JOB_LEASE_SECS", LEASE_SECS)
        .env("OVERVISOR_TEST_JOBS", "1")
}

/// `builder` made a replica on `first`'s database, its data in `dir`.
fn join(builder: TestAppBuilder, first: &TestApp, dir: &Path) -> TestAppBuilder {
    std::fs::write(dir.join("postgres-url"), first.postgres_url().unwrap()).unwrap();
    builder.data_dir(&dir.join("data"))
}

/// The hosts a replica owns now, from what it logged (taken on, handed over).
fn owned_hosts(app: &TestApp) -> BTreeSet<String> {
    let mut owned = BTreeSet::new();
    // What an earlier run of the process logged does not count.
    let logs = app.logs();
    let this_run = logs.rfind("joining the replicas").map_or(&logs[..], |at| {
        &logs[logs[..at].rfind('\n').map_or(0, |n| n + 1)..]
    });
    for line in this_run.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let host = v["fields"]["host"].as_str().unwrap_or_default().to_owned();
        match v["fields"]["message"].as_str() {
            Some("host taken on by this replica") => {
                owned.insert(host);
            }
            Some("host handed over to another replica") => {
                owned.remove(&host);
            }
            _ => {}
        }
    }
    owned
}

/// The replica's name in leases, from what it logged at its last start.
fn replica_id(app: &TestApp) -> String {
    app.logs()
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "joining the replicas on this database")
        .find_map(|v| v["fields"]["replica"].as_str().map(str::to_owned))
        .expect("the replica logged its name")
}

/// Names of the VMs called `prefix…` in the fleet-wide list, with states.
async fn listed(api: &Api, prefix: &str) -> Result<BTreeSet<String>, String> {
    let (status, page) = api
        .get(&format!("/api/v1/vms?name={prefix}&limit=500"))
        .await;
    if status != StatusCode::OK {
        return Err(format!("{status}: {page}"));
    }
    Ok(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap().to_owned())
        .collect())
}

/// Waits until `api` lists exactly `want` under `prefix`.
async fn wait_listed(api: &Api, prefix: &str, want: &BTreeSet<String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = listed(api, prefix).await;
        if got.as_ref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: listed {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until some replica in `apps` (by index) logs that it took `host` on.
async fn wait_owner(apps: &[&TestApp], host: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(i) = apps.iter().position(|a| owned_hosts(a).contains(host)) {
            return i;
        }
        assert!(Instant::now() < deadline, "nobody took host {host} on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The source addresses of the console sessions audited, newest first,
/// once there are `count` (a session is audited when it ends).
async fn audited_console_sources(app: &TestApp, token: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, rows) = app
            .client(token)
            .get("/api/v1/audit?all=true&action=vm.console")
            .await;
        assert_eq!(status, StatusCode::OK, "{rows}");
        let sources: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["source_ip"].as_str().map(str::to_owned))
            .collect();
        if sources.len() >= count || Instant::now() >= deadline {
            return sources;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_hosts_and_survive_a_sigkill_and_a_rolling_restart() {
    let lab = Lab::load();
    let master_key = new_master_key();
    let first = replica_builder(&master_key).start().await;
    let token = first.admin_token.clone();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut apps = vec![first];
    for dir in &dirs {
        let builder = join(replica_builder(&master_key), &apps[0], dir.path());
        apps.push(builder.start().await);
    }

    // Three hosts registered on one replica; a domain of ours on each.
    let prefix = unique_name("rep");
    let mut hosts = Vec::new();
    let mut guests: Vec<TestGuest> = Vec::new();
    for name in ["ovh1", "ovh2", "ovh3"] {
        let lab_host = lab.host(name);
        hosts.push(id(&register(&apps[0].client(&token), &lab, lab_host).await));
        guests.push(lab.define_guest(lab_host, &format!("{prefix}-{name}")));
    }
    let want: BTreeSet<String> = guests.iter().map(|g| g.name.clone()).collect();

    // Each host gets one owner; every replica lists every VM.
    let mut owners = Vec::new();
    for host in &hosts {
        let app_refs: Vec<&TestApp> = apps.iter().collect();
        owners.push(wait_owner(&app_refs, host).await);
    }
    for (i, app) in apps.iter().enumerate() {
        wait_listed(&app.client(&token), &prefix, &want, &format!("replica {i}")).await;
    }
    for host in &hosts {
        let holders = apps
            .iter()
            .filter(|a| owned_hosts(a).contains(host))
            .count();
        assert_eq!(holders, 1, "host {host} has {holders} owners");
    }

    // A live read on a replica that does not own the host is answered by
    // the owner (forwarded), not over a second connection of its own.
    let owner_id = replica_id(&apps[owners[1]]);
    let reader = &apps[(owners[1] + 1) % 3];
    for path in [
        format!("/api/v1/hosts/{}/vms/{}", hosts[1], guests[1].name),
        format!("/api/v1/hosts/{}/facts", hosts[1]),
    ] {
        let api = reader.client(&token);
        let answer = api
            .http
            .get(format!("{}{path}", api.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        assert_eq!(
            answer.headers()["x-overvisor-served-by"].to_str().unwrap(),
            owner_id,
            "{path} was not served by the owner"
        );
    }
    let (status, vm) = reader
        .client(&token)
        .get(&format!(
            "/api/v1/hosts/{}/vms/{}",
            hosts[1], guests[1].name
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["name"], guests[1].name.as_str());

    // A lifecycle request made on a replica that does not own the host is
    // carried out by the owner, through the job queue.
    let owner = owners[0];
    let other = (owner + 1) % 3;
    let (status, job) = apps[other]
        .client(&token)
        .post(
            &format!("/api/v1/hosts/{}/vms/{}/start", hosts[0], guests[0].name),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let done = job_finished(&apps[other].client(&token), &job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let ran_on: Vec<usize> = (0..3)
        .filter(|i| {
            apps[*i]
                .logs()
                .lines()
                .any(|l| l.contains("claimed a job") && l.contains(&job_id))
        })
        .collect();
    assert_eq!(ran_on, vec![owner], "the job ran on the host's owner only");

    // A console works from any replica: the ticket asked for on one that
    // does not own the host comes from the owner (forwarded), and its
    // socket opened on the third replica is relayed to the owner, where
    // the console lives; the guest's shell answers through both.
    let third = (owner + 2) % 3;
    guests[0].wait_ready(1, Duration::from_secs(120));
    let ticket =
        console_socket::ticket(&apps[other].client(&token), &hosts[0], &guests[0].name).await;
    let issuer = ticket["ticket"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(issuer, replica_id(&apps[owner]), "{ticket}");
    // The viewer comes from 127.0.0.2; replicas reach each other from
    // 127.0.0.1. The relay vouches for the viewer's address, so the
    // owner's audit row of the session names it.
    let viewer = std::net::IpAddr::from([127, 0, 0, 2]);
    let mut console = console_socket::open_from(&apps[third], &token, &ticket, Some(viewer))
        .await
        .unwrap();
    console_socket::type_keys(&mut console, &mut 0, "\recho relayed-$((6*7))\r").await;
    console_socket::read_until(&mut console, "relayed-42").await;
    drop(console);
    let audited = audited_console_sources(&apps[owner], &token, 1).await;
    assert_eq!(audited, ["127.0.0.2"]);
    // A viewer cannot name an address of its own: the header is not
    // believed without a replica's MAC.
    let ticket =
        console_socket::ticket(&apps[owner].client(&token), &hosts[0], &guests[0].name).await;
    let mut request = console_socket::socket_request(&apps[owner], &token, &ticket);
    request.headers_mut().insert(
        "x-overvisor-client",
        "203.0.113.9 1800000000 00".parse().unwrap(),
    );
    let (mut console, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    console_socket::text_frame(&mut console).await;
    drop(console);
    let audited = audited_console_sources(&apps[owner], &token, 2).await;
    assert_eq!(audited, ["127.0.0.1", "127.0.0.2"]);

    // The portal's VM page needs the host's connection too: on a replica
    // that does not own the host it is the owner's page.
    let (_, _, password) = apps[0].create_user("portal-admin", "admin").await;
    let not_owner = &apps[(owners[1] + 1) % 3];
    let (portal, status, body) = Api::login(&not_owner.ui, "portal-admin", &password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let vm_uuid = vm["uuid"].as_str().unwrap();
    let page = portal
        .http
        .get(format!("{}/vms/{}/{vm_uuid}", not_owner.ui, hosts[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        page.headers()["x-overvisor-served-by"].to_str().unwrap(),
        owner_id,
        "the VM page was not made by the host's owner"
    );
    assert!(page.text().await.unwrap().contains(&guests[1].name));

    // A job running when its replica is killed. Job events are passed on
    // between replicas: another replica's stream shows its steps.
    let (status, steps) = apps[owner]
        .client(&token)
        .post(
            "/api/v1/jobs/test-steps",
            json!({"steps": 6, "step_millis": 1500, "resumable": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{steps}");
    let steps_id = steps["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let runner = loop {
        let claimed = (0..3).find(|i| {
            apps[*i]
                .logs()
                .lines()
                .any(|l| l.contains("claimed a job") && l.contains(&steps_id))
        });
        if let Some(i) = claimed {
            break i;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nobody ran the job"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let survivor = (runner + 1) % 3;
    let mut job_stream = events(&apps[survivor], &token, "job.step").await;
    let step = wait_event(&mut job_stream, Duration::from_secs(15), |e| {
        e["job_id"] == steps_id.as_str()
    })
    .await;
    assert!(step["step"]["index"].is_u64(), "{step}");
    let mut stream = events(&apps[survivor], &token, "vm.changed").await;

    // SIGKILL it. Its hosts are taken on by the others; the lists on the
    // survivors never lose a VM meanwhile.
    let owned_by_dead = owned_hosts(&apps[runner]);
    assert!(!owned_by_dead.is_empty(), "each replica owns a host");
    apps[runner].kill();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != runner).collect();
    loop {
        for i in &survivors {
            let got = listed(&apps[*i].client(&token), &prefix).await;
            assert_eq!(
                got.as_ref(),
                Ok(&want),
                "replica {i} lost a VM during the takeover"
            );
        }
        let retaken = owned_by_dead.iter().all(|host| {
            survivors
                .iter()
                .any(|i| owned_hosts(&apps[*i]).contains(host))
        });
        if retaken {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the dead replica's hosts were not taken on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "hosts taken over {:?} after the SIGKILL",
        killed_at.elapsed()
    );

    // The job the dead replica ran is resumed by a survivor and finishes.
    let done = job_finished(&apps[survivor].client(&token), &steps_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["log"].to_string().contains("resumed at"), "{done}");

    // The survivor's stream keeps flowing: a VM on a host the dead replica
    // owned changes under its new owner, and the change reaches it.
    let h = hosts
        .iter()
        .position(|h| owned_by_dead.contains(h))
        .unwrap();
    let (action, state) = if h == 0 {
        ("force-stop", "shut_off")
    } else {
        ("start", "running")
    };
    let new_owner = wait_owner(
        &survivors.iter().map(|i| &apps[*i]).collect::<Vec<_>>(),
        &hosts[h],
    )
    .await;
    let new_owner = survivors[new_owner];
    let (status, job) = apps[new_owner]
        .client(&token)
        .post(
            &format!("/api/v1/hosts/{}/vms/{}/{action}", hosts[h], guests[h].name),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let name = guests[h].name.clone();
    let changed = wait_event(&mut stream, Duration::from_secs(30), |e| {
        e["vm"]["name"] == name.as_str() && e["vm"]["state"] == state
    })
    .await;
    assert_eq!(changed["host_id"], hosts[h].as_str());

    // The killed replica restarts and rejoins: it lists every VM again.
    apps[runner].restart().await;
    wait_listed(
        &apps[runner].client(&token),
        &prefix,
        &want,
        "the restarted replica",
    )
    .await;

    // A relayed console stays open into the rolling restart: the first of
    // its two replicas to stop tells the viewer to reconnect.
    // The guest that runs now: the one started above, else ovh1's, started
    // again on its host.
    let c = if h == 0 {
        lab.host("ovh1").virsh(&["start", &guests[0].name]);
        0
    } else {
        h
    };
    guests[c].wait_ready(1, Duration::from_secs(120));
    let holder = wait_owner(&apps.iter().collect::<Vec<_>>(), &hosts[c]).await;
    let relay = (holder + 1) % 3;
    let ticket =
        console_socket::ticket(&apps[relay].client(&token), &hosts[c], &guests[c].name).await;
    let mut console = console_socket::open(&apps[relay], &token, &ticket)
        .await
        .unwrap();
    console_socket::type_keys(&mut console, &mut 0, "\recho still-$((6*7))\r").await;
    console_socket::read_until(&mut console, "still-42").await;
    let mut console = Some(console);

    // Rolling restart of all three while a client polls through a
    // "load balancer" that tries the next replica when one refuses the
    // connection. No request fails on every replica, and every answer is
    // complete.
    let bases: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(apps.iter().map(|a| a.api.clone()).collect()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = tokio::spawn({
        let (bases, stop, token, prefix, want) = (
            bases.clone(),
            stop.clone(),
            token.clone(),
            prefix.clone(),
            want.clone(),
        );
        async move {
            let (mut served, mut retried) = (0u32, 0u32);
            let mut turn = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let urls = bases.lock().unwrap().clone();
                let mut answered = false;
                for k in 0..urls.len() {
                    let api = Api::new(&urls[(turn + k) % urls.len()], Some(token.clone()));
                    let sent = api
                        .http
                        .get(format!("{}/api/v1/vms?name={prefix}&limit=500", api.base))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    match sent {
                        // Refused or cut: what a load balancer retries.
                        Err(_) => retried += 1,
                        Ok(resp) => {
                            let status = resp.status();
                            let page: Value = resp.json().await.unwrap_or(Value::Null);
                            if status == StatusCode::SERVICE_UNAVAILABLE {
                                retried += 1;
                                continue;
                            }
                            assert_eq!(status, StatusCode::OK, "{page}");
                            let names: BTreeSet<String> = page["items"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|vm| vm["name"].as_str().unwrap().to_owned())
                                .collect();
                            assert_eq!(names, want, "an incomplete list during the restart");
                            answered = true;
                            break;
                        }
                    }
                }
                assert!(answered, "no replica answered");
                served += 1;
                turn += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (served, retried)
        }
    });
    for (i, app) in apps.iter_mut().enumerate() {
        assert_eq!(app.terminate(), Some(0), "replica {i} did not stop cleanly");
        // The first of the two to stop tells the viewer to reconnect
        // (1012): the relay itself, or the owner through it.
        if (i == relay || i == holder)
            && let Some(mut console) = console.take()
        {
            assert_eq!(
                console_socket::close_code(&mut console).await,
                Some(1012),
                "replica {i} stopped (owner {holder}, relay {relay})"
            );
        }
        app.restart().await;
        bases.lock().unwrap()[i] = app.api.clone();
        wait_listed(&app.client(&token), &prefix, &want, "a restarted replica").await;
        // Some polling with all three up before the next one goes.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (served, retried) = poller.await.unwrap();
    eprintln!("rolling restart: {served} requests answered, {retried} retried on another replica");
    assert!(served > 0);
    // Every host has one owner again.
    for host in &hosts {
        let app_refs: Vec<&TestApp> = apps.iter().collect();
        wait_owner(&app_refs, host).await;
    }
    // The last replica restarted found every host taken; the others hand
    // it its share, so each ends with one of the three.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts: Vec<usize> = apps.iter().map(|a| owned_hosts(a).len()).collect();
        if counts == [1, 1, 1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hosts per replica stay {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(guests);
}

/// The latest `series` value of a metrics window with a time of at least
/// `since`, and the earliest time with one.
fn measured(window: &Value, series: &str, since: u64) -> (Option<f64>, Option<u64>) {
    let times = window["times"].as_array().cloned().unwrap_or_default();
    let values = window[series].as_array().cloned().unwrap_or_default();
    let known: Vec<(u64, f64)> = times
        .iter()
        .zip(&values)
        .filter_map(|(t, v)| Some((t.as_u64()?, v.as_f64()?)))
        .collect();
    (
        known
            .iter()
            .rev()
            .find(|(t, _)| *t >= since)
            .map(|(_, v)| *v),
        known.first().map(|(t, _)| *t),
    )
}

/// Polls `path` on `api` until `ready` accepts its window.
async fn window_when(api: &Api, path: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, window) = api.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {window}");
        if ready(&window) {
            return window;
        }
        assert!(Instant::now() < deadline, "{what}: {window}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Only a host's owner samples it, and passes each sample on: the other
/// replica draws the VM graphs of a host it does not own and the fleet's
/// totals of every host, streams the samples as they come, leaves them
/// out of its Prometheus export (the owner exports them), and goes on
/// with the history it holds when it takes the host over.
#[tokio::test(flavor = "multi_thread")]
async fn every_replica_draws_every_graph_and_keeps_it_through_a_takeover() {
    let lab = Lab::load();
    let master_key = new_master_key();
    let sampled = |builder: TestAppBuilder| {
        builder
            .env("OVERVISOR_METRICS_STEP_SECS", "1")
            .env("OVERVISOR_METRICS_PER_VM", "true")
    };
    let first = sampled(replica_builder(&master_key)).start().await;
    let token = first.admin_token.clone();
    let dir = tempfile::tempdir().unwrap();
    let second = sampled(join(replica_builder(&master_key), &first, dir.path()))
        .start()
        .await;
    let mut apps = [first, second];

    let prefix = unique_name("repgraph");
    let mut hosts = Vec::new();
    let mut guests: Vec<TestGuest> = Vec::new();
    for name in ["ovh4", "ovh5"] {
        let lab_host = lab.host(name);
        hosts.push(id(&register(&apps[0].client(&token), &lab, lab_host).await));
        guests.push(lab.define_guest(lab_host, &format!("{prefix}-{name}")));
    }
    let owner = wait_owner(&[&apps[0], &apps[1]], &hosts[0]).await;
    wait_owner(&[&apps[0], &apps[1]], &hosts[1]).await;
    let reader = 1 - owner;
    act(
        &apps[owner].client(&token),
        &hosts[0],
        &guests[0].name,
        "start",
    )
    .await;
    let api = apps[reader].client(&token);
    let (_, page) = api
        .get(&format!("/api/v1/vms?name={}", guests[0].name))
        .await;
    let uuid = page["items"][0]["uuid"].as_str().unwrap().to_owned();

    // The owner's samples reach the reader's event stream.
    let mut samples = events(&apps[reader], &token, "metrics").await;
    let host0 = hosts[0].clone();
    let sample = wait_event(&mut samples, Duration::from_secs(30), |e| {
        e["type"] == "metrics.sampled"
            && e["host_id"] == host0.as_str()
            && e["vms"]
                .as_array()
                .is_some_and(|vms| vms.iter().any(|vm| vm["uuid"] == uuid.as_str()))
    })
    .await;
    assert!(
        sample["host"]["memory_used_bytes"].as_f64().unwrap() > 0.0,
        "{sample}"
    );

    // The reader draws the VM's graph (it keeps what it was passed) ...
    let vm_path = format!("/api/v1/vms/{uuid}/metrics");
    let window = window_when(
        &api,
        &vm_path,
        "no CPU figures of the VM on the reader",
        |w| {
            measured(w, "cpu_percent", 0).0.is_some()
                && measured(w, "memory_used_bytes", 0).0.is_some()
        },
    )
    .await;
    assert_eq!(window["step_secs"], 1, "{window}");
    let (_, first_measured) = measured(&window, "memory_used_bytes", 0);
    let first_measured = first_measured.unwrap();

    // ... and the fleet's totals count both hosts, whoever owns them.
    let mut cpus = Vec::new();
    for host in &hosts {
        let (status, facts) = api.get(&format!("/api/v1/hosts/{host}/facts")).await;
        assert_eq!(status, StatusCode::OK, "{facts}");
        cpus.push(facts["cpus"].as_u64().unwrap());
    }
    window_when(
        &api,
        "/api/v1/metrics/fleet",
        "the fleet lacks a host",
        |w| {
            w["capacity"]["cpus"].as_u64() == Some(cpus.iter().sum())
                && measured(w, "memory_used_bytes", 0).0.is_some()
        },
    )
    .await;

    // The host's own graph is the reader's to draw: not forwarded.
    let host_path = format!("/api/v1/hosts/{}/metrics", hosts[0]);
    let answer = api
        .request(reqwest::Method::GET, &host_path)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(
        !answer.headers().contains_key("x-overvisor-served-by"),
        "the host's graph was forwarded to its owner"
    );
    let window: Value = answer.json().await.unwrap();
    assert_eq!(
        window["capacity"]["cpus"].as_u64(),
        Some(cpus[0]),
        "{window}"
    );
    assert!(
        measured(&window, "memory_used_bytes", 0).0.is_some(),
        "{window}"
    );

    // The deployment wizard's list of hosts on the reader shows what the
    // owner's host has free, from the samples it was passed.
    let (_, _, password) = apps[owner].create_user("wizard-admin", "admin").await;
    let (portal, status, body) = Api::login(&apps[reader].ui, "wizard-admin", &password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, host0) = api.get(&format!("/api/v1/hosts/{}", hosts[0])).await;
    let host0_name = host0["name"].as_str().unwrap();
    let page = portal
        .http
        .post(format!("{}/deploy", apps[reader].ui))
        .form(&[
            ("csrf_token", portal.csrf.as_deref().unwrap()),
            ("profile", "debian-12"),
            ("go", "host"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let choice = html
        .split(&format!("data-host=\"{host0_name}\""))
        .nth(1)
        .and_then(|rest| rest.split("</label>").next())
        .unwrap_or_else(|| panic!("no choice for {host0_name}: {html}"));
    assert!(choice.contains("data-free-memory>"), "{choice}");
    assert!(
        choice.contains(&format!("of {} CPUs free", cpus[0])),
        "{choice}"
    );

    // The owner exports the host to Prometheus; the reader does not.
    let labels = format!("host_id=\"{}\"", hosts[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !apps[owner].metrics_text().await.contains(&labels) {
        assert!(
            Instant::now() < deadline,
            "the owner never exported the host"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let exported = apps[reader].metrics_text().await;
    assert!(!exported.contains(&labels), "{exported}");
    assert!(
        !exported.contains(&format!("vm_uuid=\"{uuid}\"")),
        "{exported}"
    );

    // The owner dies; the reader takes the host over and samples it on,
    // after the history it was passed.
    apps[owner].kill();
    let killed_at = unix_now();
    wait_owner(&[&apps[reader]], &hosts[0]).await;
    let window = window_when(&api, &vm_path, "no CPU figures after the takeover", |w| {
        measured(w, "cpu_percent", killed_at + 1).0.is_some()
    })
    .await;
    assert_eq!(
        measured(&window, "memory_used_bytes", 0).1,
        Some(first_measured),
        "the history from before the takeover is gone: {window}"
    );
    assert!(first_measured < killed_at, "{window}");
    drop(guests);
}
