//! Operations: health, readiness, metrics, the OpenAPI document, the CLI,
//! graceful shutdown, backups — and that no secret ever reaches a log line
//! or a later response.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp};

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let app = TestApp::start().await;
    let anon = app.anonymous();
    let (s, b) = anon.get("/healthz").await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, b) = anon.get("/readyz").await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ready")));
    app.admin().get("/api/v1/users/me").await;
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("overvisor_http_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/api/v1/users/me\""),
        "routes are labelled by template"
    );
    // Latency is a histogram with fixed buckets (bounded memory, summable
    // across replicas), not a summary.
    assert!(
        metrics.lines().any(|l| {
            l.starts_with("overvisor_http_request_duration_seconds_bucket{")
                && l.contains("route=\"/api/v1/users/me\"")
                && l.contains("le=\"0.005\"")
        }),
        "{metrics}"
    );
    assert!(!metrics.contains("quantile="), "{metrics}");

    let (s, doc) = anon.get("/api/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/users/me",
        "/api/v1/users/me/keys",
        "/api/v1/users/{id}",
        "/api/v1/audit",
        "/readyz",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let docs = reqwest::get(format!("{}/api/docs/", app.api))
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(
        docs.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("swagger")
    );
}

/// The OpenAPI document states the ranges the handlers enforce (`limit`
/// 1..=1000 wherever it appears, `wait` 0..=60) and that every JSON-body
/// endpoint answers 415 to another content type; each documented 415 is
/// then checked against the running service.
#[tokio::test]
async fn openapi_documents_ranges_and_415_that_the_service_enforces() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let (s, doc) = app.anonymous().get("/api/openapi.json").await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    let paths = doc["paths"].as_object().unwrap();

    let mut ranged = Vec::new();
    let mut with_body = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            for param in op["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().unwrap();
                let schema = &param["schema"];
                let want = match name {
                    "limit" => (1, 1000),
                    "wait" => (0, 60),
                    _ => continue,
                };
                assert_eq!(param["in"], "query", "{method} {path}: {param}");
                assert_eq!(
                    (schema["minimum"].as_i64(), schema["maximum"].as_i64()),
                    (Some(want.0), Some(want.1)),
                    "{method} {path}: range of {name}: {param}"
                );
                ranged.push(format!("{method} {path} {name}"));
            }
            if op.get("requestBody").is_some() {
                let r415 = &op["responses"]["415"];
                assert_eq!(
                    r415["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} takes a JSON body but documents no 415: {}",
                    op["responses"]
                );
                with_body.push((method.clone(), path.clone()));
            }
        }
    }
    ranged.sort();
    assert_eq!(
        ranged,
        [
            "get /api/v1/audit limit",
            "get /api/v1/hosts/{id}/vms limit",
            "get /api/v1/jobs limit",
            "get /api/v1/jobs/{id} wait",
            "get /api/v1/vms limit",
        ],
        "every limit and wait parameter is documented with its range"
    );
    assert_eq!(with_body.len(), 13, "JSON-body endpoints: {with_body:?}");
    // How a deployment's image reaches the host, in a request and a profile.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["ImageTransfer"]["enum"],
        json!(["host", "stream"]),
        "{}",
        schemas["ImageTransfer"]
    );
    assert!(
        schemas["DeploymentRequest"]["properties"]["image_transfer"].is_object(),
        "{}",
        schemas["DeploymentRequest"]
    );
    // Every operation that needs credentials documents the 401 it gives
    // without them; the public ones declare no security.
    let public = ["/healthz", "/readyz", "/metrics", "/api/v1/auth/login"];
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if public.contains(&path.as_str()) {
                assert_eq!(op["security"], json!([{}]), "{method} {path} is public");
                continue;
            }
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} does not document 401"
            );
            let (s, _) = app.anonymous().get(path).await;
            if method == "get" && !path.contains('{') {
                assert_eq!(
                    s,
                    StatusCode::UNAUTHORIZED,
                    "GET {path} without credentials"
                );
            }
        }
    }
    assert!(
        paths["/api/v1/users/me/password"]["post"]["responses"]
            .get("429")
            .is_some(),
        "password changes are throttled like sign-ins"
    );

    // The handlers enforce those ranges at both ends...
    for (path, ok, bad) in [
        ("/api/v1/jobs?limit=", ["1", "1000"], ["0", "1001"]),
        ("/api/v1/audit?limit=", ["1", "1000"], ["0", "1001"]),
        ("/api/v1/vms?limit=", ["1", "1000"], ["0", "1001"]),
    ] {
        for v in ok {
            let (s, b) = admin.get(&format!("{path}{v}")).await;
            assert_eq!(s, StatusCode::OK, "{path}{v}: {b}");
        }
        for v in bad {
            let (s, b) = admin.get(&format!("{path}{v}")).await;
            support::assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_input");
            assert_eq!(b["error"]["field"], "limit", "{path}{v}: {b}");
        }
    }
    let job = uuid::Uuid::new_v4();
    let (s, b) = admin.get(&format!("/api/v1/jobs/{job}?wait=61")).await;
    support::assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_input");
    assert_eq!(b["error"]["field"], "wait", "{b}");

    // ... and every documented 415 is what a text/plain body gets.
    for (method, path) in &with_body {
        let concrete = path.replace("{id}", &uuid::Uuid::new_v4().to_string());
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let req = admin
            .request(method, &concrete)
            .header("content-type", "text/plain")
            .body("{}");
        let (s, b) = admin.send(req).await;
        support::assert_error(
            s,
            &b,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
}

#[tokio::test]
async fn cli_manages_users_and_sigterm_shuts_down_cleanly() {
    let mut app = TestApp::start().await;
    let out = app.cli(
        &[
            "user",
            "create",
            "bob",
            "bob@example.com",
            "--role",
            "reader",
            "--password-stdin",
        ],
        Some("bob's long password\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout
        .lines()
        .find(|l| l.starts_with("ovk_"))
        .expect("token printed")
        .to_owned();
    let bob = app.client(&token);
    let (s, me) = bob.get("/api/v1/users/me").await;
    assert_eq!((s, me["role"].as_str()), (StatusCode::OK, Some("reader")));
    let (_, s, _) = Api::login(&app.api, "bob", "bob's long password").await;
    assert_eq!(s, StatusCode::OK);

    let out = app.cli(&["user", "list", "--json"], None);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.as_array().unwrap().iter().any(|u| u["name"] == "bob"));
    let out = app.cli(
        &[
            "user",
            "create",
            "bad;name",
            "x@example.com",
            "--password-stdin",
        ],
        Some("long enough pass\n"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name"));

    assert!(app.cli(&["user", "disable", "bob"], None).status.success());
    assert_eq!(
        bob.get("/api/v1/users/me").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(app.cli(&["user", "enable", "bob"], None).status.success());
    assert_eq!(bob.get("/api/v1/users/me").await.0, StatusCode::OK);
    let out = app.cli(
        &["user", "reset-password", "bob", "--password-stdin"],
        Some("a brand new password\n"),
    );
    assert!(out.status.success());
    let (_, s, _) = Api::login(&app.api, "bob", "a brand new password").await;
    assert_eq!(s, StatusCode::OK);

    let backup = app.data_path().join("../backup.db");
    let out = app.cli(&["backup", backup.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&backup).unwrap().len() > 0);

    // Keys of any user from the console: created (shown once), listed, revoked.
    let out = app.cli(
        &[
            "key",
            "create",
            "bob",
            "deploy-bot",
            "--expires-in-days",
            "7",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bot_token = stdout
        .lines()
        .find(|l| l.starts_with("ovk_"))
        .unwrap()
        .to_owned();
    let bot = app.client(&bot_token);
    assert_eq!(bot.get("/api/v1/users/me").await.1["name"], "bob");
    let out = app.cli(&["key", "list", "bob", "--json"], None);
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !keys.to_string().contains(&bot_token),
        "listing never shows tokens"
    );
    let id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "deploy-bot")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        app.cli(&["key", "revoke", "bob", &id], None)
            .status
            .success()
    );
    assert_eq!(
        bot.get("/api/v1/users/me").await.0,
        StatusCode::UNAUTHORIZED
    );

    // A user created after the backup is gone once the backup is restored.
    app.create_user("later", "reader").await;
    assert_eq!(
        app.terminate(),
        Some(0),
        "graceful exit on SIGTERM:\n{}",
        app.logs()
    );
    assert!(app.logs().contains("overvisor stopped"));
    let out = app.cli(&["restore", backup.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.restart().await;
    let (_, users) = app.admin().get("/api/v1/users").await;
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"bob") && !names.contains(&"later"),
        "{names:?}"
    );
    let garbage = app.data_path().join("../garbage.db");
    std::fs::write(&garbage, b"not a database at all, certainly not sqlite").unwrap();
    let out = app.cli(&["restore", garbage.to_str().unwrap()], None);
    assert!(!out.status.success(), "a damaged backup is refused");
}

#[tokio::test]
async fn secrets_never_appear_in_responses_or_logs() {
    let app = TestApp::start().await;
    let (alice_id, alice_token, alice_pw) = app.create_user("alice", "operator").await;
    let (session, _, login) = Api::login(&app.api, "alice", &alice_pw).await;
    let csrf = login["csrf_token"].as_str().unwrap().to_owned();
    let (_, created) = session
        .post("/api/v1/users/me/keys", json!({"name": "k2"}))
        .await;
    let token2 = created["token"].as_str().unwrap().to_owned();
    let (_, rotated) = session
        .post(
            &format!(
                "/api/v1/users/me/keys/{}/rotate",
                created["key"]["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    let token3 = rotated["token"].as_str().unwrap().to_owned();
    Api::login(&app.api, "alice", "a wrong password here").await;
    session
        .post(
            "/api/v1/users/me/password",
            json!({"current_password": alice_pw, "new_password": "the next password"}),
        )
        .await;
    let (_, reset) = app
        .admin()
        .post(
            &format!("/api/v1/users/{alice_id}/reset-password"),
            json!({}),
        )
        .await;
    let generated = reset["password"].as_str().unwrap().to_owned();

    // Everything readable afterwards, by the owner and the admin.
    let alice = app.client(&alice_token);
    let mut seen = String::new();
    for path in [
        "/api/v1/users/me",
        "/api/v1/users/me/keys",
        "/api/v1/users/me/ssh-key",
        "/api/v1/users/me/sessions",
        "/api/v1/audit",
    ] {
        seen.push_str(&alice.get(path).await.1.to_string());
    }
    for path in [
        "/api/v1/users",
        "/api/v1/audit?all=true&limit=1000",
        &format!("/api/v1/users/{alice_id}"),
    ] {
        seen.push_str(&app.admin().get(path).await.1.to_string());
    }
    assert!(seen.contains("ssh-ed25519"), "the public key is shown");
    let logs = app.logs();
    assert!(
        logs.len() > 1000,
        "debug logging is on, so logs are substantial"
    );
    let secrets = [
        alice_pw.as_str(),
        "the next password",
        "a wrong password here",
        generated.as_str(),
        alice_token.as_str(),
        token2.as_str(),
        token3.as_str(),
        csrf.as_str(),
        app.admin_token.as_str(),
        app.admin_password.as_str(),
        "PRIVATE KEY",
        "password_hash",
        "$argon2",
    ];
    for secret in secrets {
        assert!(!seen.contains(secret), "secret {secret:?} in a response");
        assert!(!logs.contains(secret), "secret {secret:?} in the logs");
    }
    // The master key file is private and never logged.
    let key = std::fs::read_to_string(app.data_path().join("master.key")).unwrap();
    assert!(!logs.contains(key.trim()));
}

/// Output of a CLI run, for assertion messages.
fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `overvisor migrate --to postgres://…` moves a stopped SQLite install to
/// an empty PostgreSQL database in one command, checking every table's
/// count: a service started on the copy (same master key) knows the same
/// accounts, keys, jobs and audit trail. A second copy into the same
/// database is refused, and `backup`/`restore` on PostgreSQL point to
/// pg_dump.
#[tokio::test]
async fn a_sqlite_install_moves_to_postgres_with_one_command() {
    let mut app = TestApp::builder()
        .env("OVERVISOR_TEST_JOBS", "1")
        .start()
        .await;
    assert!(app.postgres_url().is_none(), "starts on SQLite");
    let (_, bob_token, _) = app.create_user("bob", "operator").await;
    let (status, job) = app
        .admin()
        .post(
            "/api/v1/jobs/test-steps",
            json!({"steps": 2, "step_millis": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap();
    let (_, job) = app.admin().get(&format!("/api/v1/jobs/{id}?wait=30")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(app.terminate(), Some(0));

    let url = overvisor_testkit::postgres::fresh_database().await;
    let out = app.cli(&["migrate", "--to", &url], None);
    assert!(out.status.success(), "{}", said(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows = |table: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(table).filter(|r| r.starts_with(' ')))
            .and_then(|r| r.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no count for {table}: {stdout}"))
    };
    assert_eq!((rows("users"), rows("jobs"), rows("job_steps")), (2, 1, 2));
    assert!(rows("audit_log") >= 2 && rows("api_keys") >= 2, "{stdout}");
    assert!(stdout.contains("the row counts match"), "{stdout}");
    let again = app.cli(&["migrate", "--to", &url], None);
    assert!(!again.status.success());
    assert!(said(&again).contains("not empty"), "{}", said(&again));

    let moved = TestApp::builder()
        .data_dir(app.data_path())
        .env("OVERVISOR_DATABASE_URL", url.clone())
        .start()
        .await;
    let admin = moved.client(&app.admin_token);
    let (status, users) = admin.get("/api/v1/users").await;
    assert_eq!(status, StatusCode::OK, "{users}");
    assert_eq!(field_names(&users), ["admin", "bob"]);
    let (_, me) = moved.client(&bob_token).get("/api/v1/users/me").await;
    assert_eq!(me["name"], "bob");
    // The same job and steps (timestamps kept to PostgreSQL's microsecond).
    let (_, copied) = admin.get(&format!("/api/v1/jobs/{id}")).await;
    let steps = |job: &Value| -> Vec<(Value, Value, Value)> {
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].clone(), s["status"].clone(), s["output"].clone()))
            .collect()
    };
    assert_eq!(copied["status"], job["status"]);
    assert_eq!(steps(&copied), steps(&job));
    assert_eq!(
        copied["finished_at"].as_str().unwrap()[..26],
        job["finished_at"].as_str().unwrap()[..26]
    );
    let (_, audit) = admin.get("/api/v1/audit?all=true").await;
    assert!(audit.to_string().contains("test.steps"), "{audit}");

    for command in [
        &["backup", "/nonexistent/x.db"][..],
        &["restore", "/nonexistent/x.db"],
    ] {
        let out = moved.cli(command, None);
        assert!(!out.status.success());
        assert!(said(&out).contains("pg_dump"), "{}", said(&out));
    }
    let out = moved.cli(&["migrate", "--to", &url], None);
    assert!(said(&out).contains("already PostgreSQL"), "{}", said(&out));
    // The password of a URL never shows in what the command says.
    let out = app.cli(
        &["migrate", "--to", "postgres://u:hunter2@127.0.0.1:1/x"],
        None,
    );
    assert!(!out.status.success());
    assert!(!said(&out).contains("hunter2"), "{}", said(&out));
}

fn field_names(list: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    names.sort_unstable();
    names
}
