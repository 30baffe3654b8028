//! The host registry and VM lifecycle through the public API of the real
//! service, against the real lab: registration after probing and
//! confirming host keys, every lifecycle action on a booting guest,
//! refusals (invalid transitions, hostile names and addresses, a wrong
//! pinned key, other tenants, readers), agent enrolment, and a host whose
//! sshd dies and comes back.
//!
//! Hosts: ovh1 and ovh2 are shared (only guests of our own are touched);
//! ovh4 belongs to this file's resilience test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/lab_hosts.rs"]
mod lab_hosts;
mod support;

use std::time::{Duration, Instant};

use lab_hosts::{
    AuthorizedKeyCleanup, SshdDown, authorized_keys_path, get_until_ok, host_vms, id, register,
    register_with_wrong_key, resync, vm_names, wait_host_status,
};
use overvisor_testkit::{Lab, unique_name};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error};

const BOOT: Duration = Duration::from_secs(60);

async fn operator(app: &TestApp, name: &str) -> Api {
    let (_, token, _) = app.create_user(name, "operator").await;
    app.client(&token)
}

/// `POST /api/v1/hosts/{host}/vms/{vm}/{action}`.
async fn act(api: &Api, host: &str, vm: &str, action: &str) -> (StatusCode, Value) {
    api.post(
        &format!("/api/v1/hosts/{host}/vms/{vm}/{action}"),
        json!({}),
    )
    .await
}

/// Checks a change was accepted as a `kind` job (`202`), waits for the
/// job and returns it, succeeded.
async fn job_done(api: &Api, (status, job): (StatusCode, Value), kind: &str) -> Value {
    assert_eq!(status, StatusCode::ACCEPTED, "{kind}: {job}");
    assert_eq!(job["kind"], kind, "{job}");
    let (status, done) = api
        .get(&format!(
            "/api/v1/jobs/{}?wait=60",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "succeeded", "{kind}: {done}");
    done
}

/// The caller's jobs of one kind.
async fn jobs_of(api: &Api, kind: &str) -> Vec<Value> {
    let (status, list) = api.get(&format!("/api/v1/jobs?kind={kind}")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array().unwrap().clone()
}

/// Runs an action as the API does — `202` and a job — waits for the job,
/// and returns `{"action", "state"}` from its result.
async fn act_ok(api: &Api, host: &str, vm: &str, action: &str) -> Value {
    let kind = format!("vm.{}", action.replace('-', "_"));
    let done = job_done(api, act(api, host, vm, action).await, &kind).await;
    let kind = done["kind"].as_str().unwrap();
    json!({"action": kind.strip_prefix("vm.").unwrap(), "state": done["result"]["state"]})
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_and_every_lifecycle_action_on_a_real_guest() {
    let lab = Lab::load();
    let (ovh1, ovh2) = (lab.host("ovh1"), lab.host("ovh2"));
    let app = TestApp::start().await;
    let api = operator(&app, "olga").await;

    let h1 = register(&api, &lab, ovh1).await;
    let h2 = register(&api, &lab, ovh2).await;
    let (id1, id2) = (id(&h1), id(&h2));
    assert_eq!(h1["host_key_fingerprint"], ovh1.host_key_fingerprint);
    assert_eq!(
        (h1["kind"].as_str(), h1["tags"].clone()),
        (Some("libvirt"), json!(["lab"]))
    );
    let (_, list) = api.get("/api/v1/hosts").await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    let g1 = lab.define_guest(ovh1, &unique_name("api-life"));
    let g2 = lab.define_guest(ovh2, &unique_name("api-seen"));
    let (on1, on2) = (vm_names(&api, &id1).await, vm_names(&api, &id2).await);
    assert!(on1.contains(&g1.name) && !on1.contains(&g2.name), "{on1:?}");
    assert!(on2.contains(&g2.name) && !on2.contains(&g1.name), "{on2:?}");

    let (status, facts) = api.get(&format!("/api/v1/hosts/{id1}/facts")).await;
    assert_eq!(status, StatusCode::OK, "{facts}");
    assert_eq!(facts["hostname"], "ovh1");
    assert!(facts["cpus"].as_u64().unwrap() >= 1);

    let vm_name = g1.name.clone();
    let vm = vm_name.as_str();
    let (status, info) = api.get(&format!("/api/v1/hosts/{id1}/vms/{vm}")).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(
        (info["state"].as_str(), info["vcpus"].as_u64()),
        (Some("shut_off"), Some(1))
    );
    // By UUID as well as by name.
    let uuid = info["uuid"].as_str().unwrap();
    let (status, by_uuid) = api.get(&format!("/api/v1/hosts/{id1}/vms/{uuid}")).await;
    assert_eq!(
        (status, by_uuid["name"].as_str()),
        (StatusCode::OK, Some(vm))
    );

    // Transitions that make no sense in this state never reach the host.
    for action in [
        "shutdown",
        "reboot",
        "suspend",
        "resume",
        "force-stop",
        "reset",
    ] {
        let (status, body) = act(&api, &id1, vm, action).await;
        assert_error(status, &body, StatusCode::CONFLICT, "invalid_transition");
    }
    assert_eq!(ovh1.domstate(vm), "shut off");

    let done = act_ok(&api, &id1, vm, "start").await;
    assert_eq!(
        (done["action"].as_str(), done["state"].as_str()),
        (Some("start"), Some("running"))
    );
    assert_eq!(ovh1.domstate(vm), "running");
    g1.wait_ready(1, BOOT);
    let (status, body) = act(&api, &id1, vm, "start").await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_transition");
    // A running VM cannot be deleted: refused before any job exists.
    let (status, body) = api.delete(&format!("/api/v1/hosts/{id1}/vms/{vm}")).await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_transition");
    assert!(jobs_of(&api, "vm.delete").await.is_empty());

    assert_eq!(act_ok(&api, &id1, vm, "suspend").await["state"], "paused");
    assert_eq!(ovh1.domstate(vm), "paused");
    let (status, body) = act(&api, &id1, vm, "suspend").await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(act_ok(&api, &id1, vm, "resume").await["state"], "running");
    assert_eq!(ovh1.domstate(vm), "running");

    // Reboot goes through the guest, reset does not; both boot it again.
    act_ok(&api, &id1, vm, "reboot").await;
    g1.wait_ready(2, BOOT);
    act_ok(&api, &id1, vm, "reset").await;
    g1.wait_ready(3, BOOT);
    assert_eq!(g1.boots(), 3);

    act_ok(&api, &id1, vm, "shutdown").await;
    ovh1.wait_domstate(vm, "shut off", Duration::from_secs(30))
        .unwrap();
    assert!(ovh1.serial_log(vm).contains("LAB-ACPI-POWERBUTTON"));

    act_ok(&api, &id1, vm, "start").await;
    assert_eq!(
        act_ok(&api, &id1, vm, "force-stop").await["state"],
        "shut_off"
    );
    assert_eq!(ovh1.domstate(vm), "shut off");

    // A stopped VM is deleted by a job.
    let deletes = jobs_of(&api, "vm.delete").await.len();
    let deleted = job_done(
        &api,
        api.delete(&format!("/api/v1/hosts/{id1}/vms/{vm}?with_storage=false"))
            .await,
        "vm.delete",
    )
    .await;
    assert_eq!(
        deleted["result"],
        json!({"deleted": vm, "with_storage": false})
    );
    assert_eq!(jobs_of(&api, "vm.delete").await.len(), deletes + 1);
    assert!(ovh1.try_virsh(&["domstate", vm]).is_err(), "still defined");
    g1.disarm();
    let (status, body) = api.get(&format!("/api/v1/hosts/{id1}/vms/{vm}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // Every change is in the caller's audit log, with its outcome.
    let (_, events) = api.get("/api/v1/audit?limit=200").await;
    let seen = |action: &str, outcome: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == action && e["outcome"] == outcome)
    };
    for action in [
        "host.create",
        "vm.start",
        "vm.suspend",
        "vm.resume",
        "vm.reboot",
        "vm.reset",
        "vm.shutdown",
        "vm.force_stop",
        "vm.delete",
    ] {
        assert!(seen(action, "success"), "{action} not audited: {events}");
    }
    assert!(seen("vm.start", "failure"));
    // Secrets never come back or get logged.
    let pem = lab.client_key_pem();
    let body_line = pem.lines().nth(1).unwrap();
    assert!(!app.logs().contains(body_line), "private key in the logs");
    assert!(!list.to_string().contains(body_line));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_and_addresses_never_reach_a_host() {
    let lab = Lab::load();
    let ovh1 = lab.host("ovh1");
    let app = TestApp::start().await;
    let api = operator(&app, "hugo").await;
    let host = id(&register(&api, &lab, ovh1).await);
    let marker = format!("/tmp/{}", unique_name("pwned"));

    let long = "a".repeat(200);
    let absurd = "a".repeat(2000);
    let touch = format!("x;touch {marker}");
    let subst = format!("$(touch {marker})");
    let backtick = format!("`touch {marker}`");
    // Names a host may give a VM: accepted, passed on quoted as one word,
    // and (no such VM here) not found. Control characters and absurd
    // lengths are refused before anything is asked of the host.
    let names = [
        (touch.as_str(), StatusCode::NOT_FOUND),
        (subst.as_str(), StatusCode::NOT_FOUND),
        (backtick.as_str(), StatusCode::NOT_FOUND),
        ("-rf", StatusCode::NOT_FOUND),
        ("--help", StatusCode::NOT_FOUND),
        ("a b", StatusCode::NOT_FOUND),
        (long.as_str(), StatusCode::NOT_FOUND),
        ("é", StatusCode::NOT_FOUND),
        ("a\nb", StatusCode::BAD_REQUEST),
        ("a\0b", StatusCode::BAD_REQUEST),
        (absurd.as_str(), StatusCode::BAD_REQUEST),
    ];
    for (name, want) in names {
        let encoded = urlencode(name);
        for (method, path) in [
            (Method::GET, format!("/api/v1/hosts/{host}/vms/{encoded}")),
            (
                Method::POST,
                format!("/api/v1/hosts/{host}/vms/{encoded}/start"),
            ),
            (
                Method::POST,
                format!("/api/v1/hosts/{host}/vms/{encoded}/force-stop"),
            ),
            (
                Method::DELETE,
                format!("/api/v1/hosts/{host}/vms/{encoded}?with_storage=true"),
            ),
        ] {
            let (status, body) = api.send(api.request(method.clone(), &path)).await;
            if want == StatusCode::BAD_REQUEST {
                assert_error(status, &body, want, "invalid_input");
                assert_eq!(body["error"]["field"], "name", "{body}");
            } else {
                assert_error(status, &body, want, "not_found");
            }
        }
    }
    let (status, body) = act(&api, &host, "web", "explode").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");

    let hostile_addresses = [
        format!("{};touch {marker}", ovh1.address),
        format!("$(touch {marker})"),
        "-oProxyCommand=touch /tmp/x".to_owned(),
        format!("{} {}", ovh1.address, ovh1.address),
        format!("{}\n", ovh1.address),
        "user@host".to_owned(),
        "a|b".to_owned(),
    ];
    for address in &hostile_addresses {
        let (status, body) = api
            .post(
                "/api/v1/hosts/probe",
                json!({"address": address, "port": 22}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
        let (status, body) = api
            .post(
                "/api/v1/hosts",
                json!({"address": address, "host_key_fingerprint": ovh1.host_key_fingerprint}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
        assert_eq!(body["error"]["field"], "address", "{body}");
        let (status, body) = api
            .patch(
                &format!("/api/v1/hosts/{host}"),
                json!({"address": address}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    }
    for (field, value) in [
        ("ssh_user", json!("-oProxyCommand=x")),
        ("ssh_user", json!("root;id")),
        ("libvirt_uri", json!("qemu:///system;id")),
        ("tags", json!(["a b"])),
        ("name", json!("")),
        ("port", json!(0)),
    ] {
        let (status, body) = api
            .patch(&format!("/api/v1/hosts/{host}"), json!({ field: value }))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    }
    let (status, body) = api
        .post(
            "/api/v1/hosts",
            json!({"address": "10.9.9.9", "host_key_fingerprint": "MD5:aa:bb"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    let (status, body) = api
        .post(
            "/api/v1/hosts",
            json!({"address": "10.9.9.9", "credential": {"private_key": "SECRET-NOT-A-KEY"}, "host_key_fingerprint": ovh1.host_key_fingerprint}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    assert!(!body.to_string().contains("SECRET-NOT-A-KEY"));
    // Without a confirmed fingerprint (and without explicit TOFU): refused.
    let (status, body) = api
        .post("/api/v1/hosts", json!({"address": "10.9.9.9"}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    assert_eq!(body["error"]["field"], "host_key_fingerprint");

    // Nothing ran on the host, nothing changed in the registry.
    assert!(
        !ovh1.path_exists(std::path::Path::new(&marker)),
        "{marker} was created"
    );
    assert!(
        !std::path::Path::new(&marker).exists(),
        "{marker} was created locally"
    );
    let (_, list) = api.get("/api/v1/hosts").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["address"], ovh1.address);
    assert_eq!(list[0]["ssh_user"], ovh1.user);
    // Refused changes created no jobs (only the registration's).
    assert!(jobs_of(&api, "host.update").await.is_empty());
    assert!(jobs_of(&api, "vm.delete").await.is_empty());
    assert_eq!(jobs_of(&api, "host.create").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_named_as_only_a_host_would_is_read_and_driven_by_name() {
    let lab = Lab::load();
    let ovh1 = lab.host("ovh1");
    let app = TestApp::start().await;
    let api = operator(&app, "odile").await;
    let host = id(&register(&api, &lab, ovh1).await);
    // Spaces, non-ASCII, a quote and a leading dash: fine for libvirt,
    // never a name Overvisor would choose.
    let name = format!("-odd name ü'{}", unique_name("q"));
    let guest = lab.define_guest(ovh1, &name);
    assert!(vm_names(&api, &host).await.contains(&name), "listed");
    let vm = urlencode(&name);

    let (status, info) = api.get(&format!("/api/v1/hosts/{host}/vms/{vm}")).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["name"], name.as_str());
    assert_eq!(info["state"], "shut_off");
    assert_eq!(act_ok(&api, &host, &vm, "start").await["state"], "running");
    assert_eq!(ovh1.domstate(&guest.name), "running");
    assert_eq!(
        act_ok(&api, &host, &vm, "force-stop").await["state"],
        "shut_off"
    );
    assert_eq!(ovh1.domstate(&guest.name), "shut off");
}

/// Percent-encodes everything but unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn host_keys_are_pinned() {
    let lab = Lab::load();
    let (ovh1, ovh2) = (lab.host("ovh1"), lab.host("ovh2"));
    let app = TestApp::start().await;
    let api = operator(&app, "pia").await;

    // ovh2's address with ovh1's key: refused on use, naming both keys.
    let wrong = id(&register_with_wrong_key(&api, &lab, "pinned-wrong", ovh2, ovh1).await);
    let names_both_keys = |message: &str| {
        assert!(
            message.contains(&ovh1.host_key_fingerprint)
                && message.contains(&ovh2.host_key_fingerprint),
            "{message}"
        );
    };
    let (status, body) = api.get(&format!("/api/v1/hosts/{wrong}/facts")).await;
    assert_error(status, &body, StatusCode::CONFLICT, "host_key_mismatch");
    names_both_keys(body["error"]["message"].as_str().unwrap());
    // The inventory's view says why the host shows nothing, at once.
    let listed = wait_host_status(&api, &wrong, "disconnected", Duration::from_secs(20)).await;
    names_both_keys(listed["host"]["last_error"].as_str().unwrap());
    assert_eq!(listed["total"], 0, "{listed}");
    // A resync asked for now fails with the same reason, as a failed job.
    let job = resync(&api, &wrong).await;
    assert_eq!(job["status"], "failed", "{job}");
    names_both_keys(job["error"].as_str().unwrap());
    let (status, body) = act(&api, &wrong, "anything", "start").await;
    assert_error(status, &body, StatusCode::CONFLICT, "host_key_mismatch");
    // The operator confirms the right key: the host works at once.
    let updated = job_done(
        &api,
        api.patch(
            &format!("/api/v1/hosts/{wrong}"),
            json!({"host_key_fingerprint": ovh2.host_key_fingerprint}),
        )
        .await,
        "host.update",
    )
    .await;
    assert_eq!(
        updated["result"]["host"]["host_key_fingerprint"],
        ovh2.host_key_fingerprint
    );
    vm_names(&api, &wrong).await;

    // Trust on first use only when asked for: records the presented key.
    // The host is created at once (201, `Location`), and the change is
    // recorded as a finished job (`X-Job-Id`).
    let resp = api
        .request(Method::POST, "/api/v1/hosts")
        .json(&json!({"address": ovh1.address, "trust_on_first_use": true,
                      "credential": {"private_key": lab.client_key_pem()}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let job_id = resp.headers()["x-job-id"].to_str().unwrap().to_owned();
    let tofu: Value = resp.json().await.unwrap();
    assert_eq!(tofu["host_key_fingerprint"], ovh1.host_key_fingerprint);
    let (_, job) = api.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job["kind"], "host.create", "{job}");
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["host"]["id"], tofu["id"]);
    assert!(!job.to_string().contains("PRIVATE KEY"), "{job}");
    vm_names(&api, &id(&tofu)).await;
    // A clash is refused at once, and no job is created.
    let (status, body) = api
        .patch(
            &format!("/api/v1/hosts/{}", id(&tofu)),
            json!({"name": "pinned-wrong"}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(jobs_of(&api, "host.update").await.len(), 1);
    let (_, audit) = api.get("/api/v1/audit?action=host.").await;
    assert!(audit.to_string().contains("trust_on_first_use"), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_and_roles() {
    let lab = Lab::load();
    let ovh1 = lab.host("ovh1");
    let app = TestApp::start().await;
    let (rita_id, rita_token, _) = app.create_user("rita", "operator").await;
    let rita = app.client(&rita_token);
    let bob = operator(&app, "bob").await;
    let host = id(&register(&rita, &lab, ovh1).await);
    let guest = lab.define_guest(ovh1, &unique_name("api-tenant"));
    let vm = guest.name.as_str();

    // Another tenant: the host does not exist for them.
    let paths = [
        (Method::GET, format!("/api/v1/hosts/{host}")),
        (Method::GET, format!("/api/v1/hosts/{host}/facts")),
        (Method::GET, format!("/api/v1/hosts/{host}/vms")),
        (Method::GET, format!("/api/v1/hosts/{host}/vms/{vm}")),
        (Method::POST, format!("/api/v1/hosts/{host}/resync")),
        (
            Method::POST,
            format!("/api/v1/inventory/resync?host={host}"),
        ),
        (Method::POST, format!("/api/v1/hosts/{host}/vms/{vm}/start")),
        (Method::DELETE, format!("/api/v1/hosts/{host}/vms/{vm}")),
        (Method::PATCH, format!("/api/v1/hosts/{host}")),
        (Method::DELETE, format!("/api/v1/hosts/{host}")),
    ];
    for (method, path) in &paths {
        let req = bob
            .request(method.clone(), path)
            .json(&json!({"name": "mine"}));
        let (status, body) = bob.send(req).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    let (_, list) = bob.get("/api/v1/hosts").await;
    assert_eq!(list, json!([]));

    assert!(vm_names(&rita, &host).await.contains(&guest.name));
    // The owner demoted to reader: may look, may not act (nor resync).
    let (status, body) = app
        .admin()
        .patch(
            &format!("/api/v1/users/{rita_id}"),
            json!({"role": "reader"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list) = rita.get("/api/v1/hosts").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let listed = host_vms(&rita, &host).await;
    assert!(listed.to_string().contains(&guest.name), "{listed}");
    for (method, path) in &paths[4..] {
        let req = rita
            .request(method.clone(), path)
            .json(&json!({"name": "mine"}));
        let (status, body) = rita.send(req).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    let (status, body) = rita
        .post("/api/v1/hosts/probe", json!({"address": ovh1.address}))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(ovh1.domstate(vm), "shut off");
    let (_, audit) = rita.get("/api/v1/audit?outcome=denied").await;
    assert!(audit.to_string().contains("vm.start"), "{audit}");

    // The administrator sees and may act on everyone's hosts.
    let (_, all) = app.admin().get("/api/v1/hosts").await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == host.as_str())
    );
    let removed = job_done(
        &app.admin(),
        app.admin().delete(&format!("/api/v1/hosts/{host}")).await,
        "host.delete",
    )
    .await;
    assert_eq!(removed["result"], json!({"host": null}));
    // The owner sees the job too: it changed their infrastructure.
    assert_eq!(jobs_of(&rita, "host.delete").await.len(), 1);
    let (status, body) = rita.get(&format!("/api/v1/hosts/{host}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // Removing a host leaves its VMs alone.
    assert_eq!(ovh1.domstate(vm), "shut off");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_enrolment_creates_then_updates_and_authorizes_the_key() {
    let lab = Lab::load();
    let ovh2 = lab.host("ovh2");
    // The control plane listens where the lab hosts can reach it, so the
    // agent runs entirely inside ovh2 (its network too), like on a real host.
    let gateway = format!("{}.1", ovh2.address.rsplit_once('.').unwrap().0);
    let app = TestApp::builder()
        .env("OVERVISOR_API_BIND", format!("{gateway}:0"))
        .start()
        .await;
    let (_, token, _) = app.create_user("erin", "operator").await;
    let api = app.client(&token);
    let (_, me) = api.get("/api/v1/users/me/ssh-key").await;
    let public = me["public_key"].as_str().unwrap();
    let keys = AuthorizedKeyCleanup::new(authorized_keys_path(ovh2), public);
    assert_eq!(keys.count(), 0);

    let host_key_file = ovh2
        .libvirtd_pid_file
        .parent()
        .unwrap()
        .join("ssh_host_ed25519_key.pub");
    let enroll = || {
        let out = ovh2.run_as_root(
            TestApp::binary(),
            &[
                "agent",
                "enroll",
                "--url",
                &app.api,
                "--key",
                &token,
                "--host-key-file",
                &host_key_file.to_string_lossy(),
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "agent failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = enroll();
    assert!(first.contains("registered host ovh2"), "{first}");
    assert_eq!(keys.count(), 1);
    let (_, hosts) = api.get("/api/v1/hosts").await;
    assert_eq!(hosts.as_array().unwrap().len(), 1, "{hosts}");
    let host = &hosts[0];
    assert_eq!(host["address"], ovh2.address, "detected from the route");
    assert_eq!(host["name"], "ovh2");
    assert_eq!(host["ssh_user"], "ovdeploy");
    assert_eq!(host["has_credential"], false);
    assert_eq!(host["host_key_fingerprint"], ovh2.host_key_fingerprint);
    // The host now accepts erin's own SSH identity: the API drives it. The
    // inventory may have dialled the host in the instant between enrolment
    // and the key being installed; the connection then retries by itself.
    wait_host_status(&api, &id(host), "connected", Duration::from_secs(20)).await;
    vm_names(&api, &id(host)).await;

    let second = enroll();
    assert!(
        second.contains("updated host ovh2") && second.contains("already authorized"),
        "{second}"
    );
    assert_eq!(keys.count(), 1, "the key was added twice");
    let (_, hosts) = api.get("/api/v1/hosts").await;
    assert_eq!(hosts.as_array().unwrap().len(), 1, "duplicated: {hosts}");

    // The endpoint itself, at both paths: same host, never a second one.
    for path in ["/v1/servers/connect", "/api/v1/servers/connect"] {
        let (status, body) = api
            .post(
                path,
                json!({"hostname": "ovh2", "ip_address": ovh2.address, "port": 22}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(
            (body["created"].as_bool(), body["host"]["id"].clone()),
            (Some(false), host["id"].clone())
        );
        assert_eq!(body["authorized_keys"], public);
        assert_eq!(body["automation_user"], "ovdeploy");
        assert_eq!(body["port"], 22);
    }
    for bad in [
        json!({}),
        json!({"ip_address": "10.0.0.1;id"}),
        json!({"hostname": "$(id)"}),
    ] {
        let (status, body) = api.post("/v1/servers/connect", bad).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    }
    let (status, body) = app
        .anonymous()
        .post("/v1/servers/connect", json!({"hostname": "x"}))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (_, reader_token, _) = app.create_user("rudi", "reader").await;
    let (status, body) = app
        .client(&reader_token)
        .post("/v1/servers/connect", json!({"hostname": "x"}))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (_, hosts) = api.get("/api/v1/hosts").await;
    assert_eq!(hosts.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_host_fails_clearly_while_others_work_and_it_recovers_by_itself() {
    let lab = Lab::load();
    let (ovh1, ovh4) = (lab.host("ovh1"), lab.host("ovh4"));
    let app = TestApp::start().await;
    let api = operator(&app, "dora").await;
    let h1 = id(&register(&api, &lab, ovh1).await);
    let h4 = id(&register(&api, &lab, ovh4).await);
    // Warm connections to both.
    vm_names(&api, &h1).await;
    let listed_before = vm_names(&api, &h4).await;

    let down = SshdDown::new(ovh4);
    // The list is the inventory's: it answers at once, marks the host
    // disconnected with the reason, and keeps the VMs as last seen.
    let listed = wait_host_status(&api, &h4, "disconnected", Duration::from_secs(30)).await;
    assert!(
        listed["host"]["last_error"]
            .as_str()
            .unwrap()
            .contains("ovh4"),
        "{listed}"
    );
    assert_eq!(listed["total"], listed_before.len(), "{listed}");
    let job = resync(&api, &h4).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("ovh4"), "{job}");
    for path in [
        format!("/api/v1/hosts/{h4}/facts"),
        format!("/api/v1/hosts/{h4}/vms/anything"),
    ] {
        let started = Instant::now();
        let (status, body) = api.get(&path).await;
        assert_error(status, &body, StatusCode::BAD_GATEWAY, "host_unreachable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&ovh4.address) && message.contains("ovh4"),
            "{message}"
        );
        // Within the connect timeout (10 s), not hanging on a dead host.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{path} took {:?}",
            started.elapsed()
        );
        // The other host is not affected.
        vm_names(&api, &h1).await;
    }
    let (status, body) = act(&api, &h4, "anything", "start").await;
    assert_error(status, &body, StatusCode::BAD_GATEWAY, "host_unreachable");

    drop(down);
    // Back by itself (reconnect backoff is at most 15 s), no edit needed.
    wait_host_status(&api, &h4, "connected", Duration::from_secs(45)).await;
    let (status, body) = get_until_ok(
        &api,
        &format!("/api/v1/hosts/{h4}/facts"),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "ovh4 did not come back: {body}");
    assert_eq!(vm_names(&api, &h4).await, listed_before);
}
