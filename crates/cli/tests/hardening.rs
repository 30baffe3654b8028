//! Findings of the security review (issue 18), each checked against the real
//! service over HTTP: redirects after sign-in, cross-site writes, metrics
//! labels, idle connections, password guessing, file modes; and the
//! allocator settings the soak needs (docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use support::TestApp;

/// A browser-like client of the portal: keeps cookies, follows no redirect.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of hidden input `name` in a page.
fn hidden_input(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect("input in page") + marker.len();
    let len = html[start..].find('"').expect("end of value");
    html[start..start + len].to_owned()
}

/// Posts the portal's sign-in form as `admin` with `next`; answers the
/// response and the client (signed in on success).
async fn portal_sign_in(
    app: &TestApp,
    next: &str,
    extra: &[(&str, &str)],
) -> (reqwest::Response, reqwest::Client) {
    portal_sign_in_as(app, &app.admin_password, next, extra).await
}

async fn portal_sign_in_as(
    app: &TestApp,
    password: &str,
    next: &str,
    extra: &[(&str, &str)],
) -> (reqwest::Response, reqwest::Client) {
    let client = browser();
    let page = client
        .get(format!("{}/login", app.ui))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden_input(&page, "csrf_token");
    let mut request = client.post(format!("{}/login", app.ui)).form(&[
        ("csrf_token", csrf.as_str()),
        ("name", "admin"),
        ("password", password),
        ("next", next),
    ]);
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    (request.send().await.unwrap(), client)
}

fn location(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn sign_in_redirects_only_to_this_site_and_never_fails_on_next() {
    let app = TestApp::start().await;
    let (response, _) = portal_sign_in(&app, "/jobs?state=running", &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/jobs?state=running");

    // Browsers drop tab/CR/LF and read `\` as `/`: each of these would land
    // on evil.example if passed through.
    for hostile in [
        "/\t/evil.example/",
        "/\r/evil.example/",
        "/\n/evil.example/",
        "\t//evil.example/",
        " //evil.example/",
        "/\\evil.example/",
        "/..//evil.example/",
        "https://evil.example/",
    ] {
        let (response, client) = portal_sign_in(&app, hostile, &[]).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "next={hostile:?}");
        assert_eq!(location(&response), "/", "next={hostile:?}");
        // The session works: the sign-in completed.
        let dashboard = client.get(format!("{}/", app.ui)).send().await.unwrap();
        assert_eq!(dashboard.status(), StatusCode::OK, "next={hostile:?}");
    }

    // Control characters cannot go in a Location header: this used to fail
    // (5xx) after the session had been created.
    for (next, want) in [
        ("/jobs\n", "/jobs"),
        ("/jobs\r\nSet-Cookie: x=y", "/jobsSet-Cookie:%20x=y"),
        // Trailing controls are trimmed (as browsers do), inner ones refused.
        ("/jobs\x0b", "/jobs"),
        ("/jo\x0bbs", "/"),
        ("/jo\0bs", "/"),
    ] {
        let (response, _) = portal_sign_in(&app, next, &[]).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "next={next:?}");
        assert_eq!(location(&response), want, "next={next:?}");
    }
}

#[tokio::test]
async fn cookie_writes_from_another_site_are_refused() {
    let app = TestApp::start().await;
    let ui_host = app.ui.trim_start_matches("http://").to_owned();
    let (session, status, _) = support::Api::login(&app.ui, "admin", &app.admin_password).await;
    assert_eq!(status, StatusCode::OK);
    let keys = || async { session.get("/api/v1/users/me/keys").await.1 };
    let before = keys().await.as_array().unwrap().len();

    // API: a valid session and CSRF token, sent by another site's page.
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let (status, body) = session
            .send(
                session
                    .request(reqwest::Method::POST, "/api/v1/users/me/keys")
                    .header(name, value)
                    .json(&serde_json::json!({"name": "from-evil"})),
            )
            .await;
        support::assert_error(status, &body, StatusCode::FORBIDDEN, "bad_origin");
    }
    assert_eq!(
        keys().await.as_array().unwrap().len(),
        before,
        "no key made"
    );
    // This site's own pages (Origin matches Host) still work.
    let (status, body) = session
        .send(
            session
                .request(reqwest::Method::POST, "/api/v1/users/me/keys")
                .header("origin", format!("http://{ui_host}"))
                .header("sec-fetch-site", "same-origin")
                .json(&serde_json::json!({"name": "from-here"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // API keys are not cookies: a browser cannot attach them for another site.
    let (status, _) = app
        .admin()
        .send(
            app.admin()
                .request(reqwest::Method::POST, "/api/v1/users/me/keys")
                .header("origin", "http://evil.example")
                .json(&serde_json::json!({"name": "bearer"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Portal: sign-out form with the right token, from another site.
    let (response, client) = portal_sign_in(&app, "/", &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let page = client
        .get(format!("{}/account", app.ui))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden_input(&page, "csrf_token");
    let refused = client
        .post(format!("{}/logout", app.ui))
        .header("origin", "http://evil.example")
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.text().await.unwrap().contains("another site"));
    let still = client
        .get(format!("{}/account", app.ui))
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), StatusCode::OK, "still signed in");
    let out = client
        .post(format!("{}/logout", app.ui))
        .header("origin", format!("http://{ui_host}"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);

    // Sign-in form posted by another site's page (login CSRF).
    let (response, client) = portal_sign_in(&app, "/", &[("origin", "http://evil.example")]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let dashboard = client.get(format!("{}/", app.ui)).send().await.unwrap();
    assert_eq!(dashboard.status(), StatusCode::SEE_OTHER, "not signed in");
}

#[tokio::test]
async fn portal_forms_need_the_session_token_before_anything_is_read() {
    let app = TestApp::start().await;
    let (response, client) = portal_sign_in(&app, "/", &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let account = format!("{}/account", app.ui);
    let page = client.get(&account).send().await.unwrap().text().await;
    let csrf = hidden_input(&page.unwrap(), "csrf_token");
    let post = |path: String, form: &[(&str, &str)]| client.post(path).form(form).send();
    let keys = format!("{}/account/keys", app.ui);
    for forged in [
        &[("csrf_token", "forged"), ("name", "forged-key")][..],
        &[("name", "forged-key")],
    ] {
        let refused = post(keys.clone(), forged).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(refused.text().await.unwrap().contains("Reload the page"));
    }
    // Even fields that would not parse: the token is checked first.
    let disabled = format!("{}/admin/users/{}/disabled", app.ui, uuid::Uuid::new_v4());
    let forged = [("csrf_token", "forged"), ("disabled", "maybe")];
    let refused = post(disabled.clone(), &forged).await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    // With the token, a field that does not parse is named.
    let bad = [("csrf_token", csrf.as_str()), ("disabled", "maybe")];
    let bad = post(disabled, &bad).await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.text().await.unwrap().contains("disabled"));
    let page = client.get(&account).send().await.unwrap().text().await;
    assert!(!page.unwrap().contains("forged-key"), "no key was created");
    let real = [("csrf_token", csrf.as_str()), ("name", "real-key")];
    let created = post(keys, &real).await.unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    assert!(created.text().await.unwrap().contains("real-key"));
}

#[tokio::test]
async fn metrics_labels_stay_bounded_whatever_clients_send() {
    let app = TestApp::start().await;
    let http = reqwest::Client::new();
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        for path in [
            "/healthz",
            &format!("/no-such-path-{i}"),
            "/api/v1/users/me",
        ] {
            http.request(method.clone(), format!("{}{path}", app.api))
                .send()
                .await
                .unwrap();
        }
        http.get(format!("{}/api/v1/hosts/{i}/vms/x{i}", app.api))
            .send()
            .await
            .unwrap();
    }
    let text = http
        .get(format!("{}/metrics", app.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("overvisor_http_requests_total{"))
        .collect();
    assert!(!series.is_empty(), "{text}");
    for line in &series {
        assert!(!line.contains("MADEUP"), "raw method as a label: {line}");
        assert!(
            !line.contains("no-such-path"),
            "raw path as a label: {line}"
        );
        assert!(!line.contains("/x1"), "raw path as a label: {line}");
    }
    assert!(
        series
            .iter()
            .any(|l| l.contains(r#"method="other""#) && l.contains(r#"route="/healthz""#)),
        "{text}"
    );
    assert!(
        series.iter().any(|l| l.contains(r#"route="unmatched""#)),
        "{text}"
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains(r#"route="/api/v1/hosts/{id}/vms/{name}""#)),
        "{text}"
    );
}

fn open_descriptors(app: &TestApp) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", app.pid().unwrap()))
        .unwrap()
        .count()
}

/// Opens `n` connections to `addr` that never finish a request: half send
/// nothing, half start one and stop in the middle of its headers.
async fn idle_clients(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut idle = Vec::new();
    for i in 0..n {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(stream);
    }
    idle
}

/// Waits until the server has closed every one of `idle` (end of stream or reset).
async fn assert_all_closed(idle: Vec<tokio::net::TcpStream>, within: Duration) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    for (i, mut stream) in idle.into_iter().enumerate() {
        let mut buf = Vec::new();
        let read = tokio::time::timeout_at(deadline, stream.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "idle connection {i} still open after {within:?}"
        );
    }
}

async fn timed_health(app: &TestApp) -> Duration {
    let started = std::time::Instant::now();
    let health = reqwest::Client::new()
        .get(format!("{}/healthz", app.api))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("/healthz answers while idle clients hold connections");
    assert_eq!(health.status(), StatusCode::OK);
    started.elapsed()
}

#[tokio::test]
async fn idle_connections_are_capped_and_closed_and_health_still_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CAP: usize = 32;
    const TIMEOUT: Duration = Duration::from_secs(2);
    let app = TestApp::builder()
        .env(
            "OVERVISOR_HEADER_READ_TIMEOUT_SECS",
            TIMEOUT.as_secs().to_string(),
        )
        .env("OVERVISOR_BODY_READ_TIMEOUT_SECS", "1")
        .env("OVERVISOR_MAX_CONNECTIONS", CAP.to_string())
        .start()
        .await;
    let addr = app.api.trim_start_matches("http://").to_owned();
    let baseline = open_descriptors(&app);

    // Below the cap: idle clients cost a connection each and nothing else.
    let idle = idle_clients(&addr, CAP - 4).await;
    let waited = timed_health(&app).await;
    assert!(waited < TIMEOUT / 2, "health waited {waited:?}");
    assert_all_closed(idle, TIMEOUT * 3).await;

    // Beyond the cap: the rest wait to be accepted (no descriptor each);
    // the health check gets its turn as the time of those served runs out.
    let idle = idle_clients(&addr, CAP * 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = open_descriptors(&app).saturating_sub(baseline);
    assert!(
        held <= CAP + 4,
        "{held} descriptors for {} idle clients",
        CAP * 3
    );
    let waited = timed_health(&app).await;
    assert!(waited < TIMEOUT * 6, "health waited {waited:?}");
    assert_all_closed(idle, TIMEOUT * 10).await;

    // A body that never arrives in full is answered (4xx), not waited on.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a trickled body holds the connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
}

#[tokio::test]
async fn current_password_guesses_are_throttled_with_sign_in_failures() {
    let app = TestApp::start().await;
    let (_, token, password) = app.create_user("pat", "operator").await;
    let pat = app.client(&token);
    let change = |current: &str| {
        pat.request(reqwest::Method::POST, "/api/v1/users/me/password")
            .json(&serde_json::json!({"current_password": current, "new_password": "a new long password 1"}))
    };
    // One failed sign-in and four wrong current passwords: five failures.
    let (_, status, _) = support::Api::login(&app.api, "pat", "not it").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for guess in 0..4 {
        let (status, body) = pat.send(change(&format!("guess {guess}"))).await;
        support::assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    }
    let throttled = change("guess 5").send().await.unwrap();
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
    let body: serde_json::Value = throttled.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Even the right password waits, and so does signing in.
    let (status, _) = pat.send(change(&password)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (_, status, _) = support::Api::login(&app.api, "pat", &password).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn database_files_and_backups_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // An existing data directory others may read, as a umask of 022 makes it.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = TestApp::builder().data_dir(&data).start().await;
    assert_eq!(mode_of(&data), 0o700);
    assert!(
        app.logs().contains("restricted it to its owner"),
        "the tightening is logged"
    );
    // Write something so the WAL is in use.
    app.create_user("fay", "reader").await;
    for file in ["overvisor.db", "overvisor.db-wal", "overvisor.db-shm"] {
        assert_eq!(mode_of(&data.join(file)), 0o600, "{file}");
    }

    let copy = dir.path().join("copy.db");
    let out = app.cli(&["backup", copy.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode_of(&copy), 0o600, "backup");
}

#[tokio::test]
async fn portal_throttling_says_when_to_retry() {
    let app = TestApp::start().await;
    for _ in 0..5 {
        let (response, _) = portal_sign_in_as(&app, "wrong password", "/", &[]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let (response, _) = portal_sign_in_as(&app, "wrong password", "/", &[]).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
}

#[tokio::test]
async fn rust_log_is_the_fallback_log_filter() {
    // TestApp sets OVERVISOR_LOG; empty counts as unset.
    let app = TestApp::builder()
        .env("OVERVISOR_LOG", "")
        .env("RUST_LOG", "info,tower_http=debug")
        .start()
        .await;
    app.anonymous().get("/healthz").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !app.logs().contains("finished processing request") {
        assert!(
            std::time::Instant::now() < deadline,
            "RUST_LOG's tower_http=debug was not applied:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service's environment as the kernel holds it for its process.
fn environ(app: &TestApp) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{}/environ", app.pid().unwrap())).unwrap();
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[tokio::test]
async fn serve_sets_glibc_malloc_unless_the_operator_chose() {
    // The harness starts the service with a cleared environment: the
    // settings can only come from its re-execution of itself, in place.
    let app = TestApp::start().await;
    let env = environ(&app);
    for want in ["MALLOC_ARENA_MAX=1", "MALLOC_MMAP_THRESHOLD_=131072"] {
        assert!(env.contains(&want.to_owned()), "{want} missing: {env:?}");
    }
    let (status, _) = app.admin().get("/api/v1/hosts").await;
    assert_eq!(status, StatusCode::OK);

    let own = TestApp::builder()
        .env("MALLOC_ARENA_MAX", "4")
        .start()
        .await;
    let env = environ(&own);
    for want in ["MALLOC_ARENA_MAX=4", "MALLOC_MMAP_THRESHOLD_=131072"] {
        assert!(env.contains(&want.to_owned()), "{want} missing: {env:?}");
    }
    assert!(!env.contains(&"MALLOC_ARENA_MAX=1".to_owned()), "{env:?}");
}
