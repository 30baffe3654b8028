//! Sign-in, sessions, CSRF and sign-in throttling against the real service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::{Api, TestApp, assert_error};

#[tokio::test]
async fn first_start_prints_admin_credentials_once() {
    let mut app = TestApp::start().await;
    assert_eq!(app.admin_password.len(), 20, "stdout: {}", app.stdout());
    assert!(app.admin_token.starts_with("ovk_"));
    let (status, me) = app.admin().get("/api/v1/users/me").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["name"], "admin");
    assert_eq!(me["role"], "admin");

    app.restart().await;
    assert_eq!(
        app.stdout()
            .matches("administrator account created")
            .count(),
        1
    );
    let (status, _) = app.admin().get("/api/v1/users/me").await;
    assert_eq!(status, StatusCode::OK, "state survives a restart");
}

#[tokio::test]
async fn password_sign_in_and_session_revocation() {
    let app = TestApp::start().await;
    let (_, _, password) = app.create_user("alice", "operator").await;

    let (_, status, body) = Api::login(&app.api, "alice", "wrong password!!").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "bad_credentials");
    let (_, status, body) = Api::login(&app.api, "nobody", "whatever password").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "bad_credentials");

    let (laptop, status, body) = Api::login(&app.api, "alice", &password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["name"], "alice");
    let (phone, status, _) = Api::login(&app.api, "alice", &password).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(laptop.get("/api/v1/users/me").await.0, StatusCode::OK);

    let (status, sessions) = laptop.get("/api/v1/users/me/sessions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sessions.as_array().unwrap().len(), 2);

    // Logout ends only that session.
    assert_eq!(
        phone.post("/api/v1/auth/logout", json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        phone.get("/api/v1/users/me").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(laptop.get("/api/v1/users/me").await.0, StatusCode::OK);

    // "Sign out everywhere" ends the rest, the current one included.
    let (_, status, _) = Api::login(&app.api, "alice", &password).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = laptop.delete("/api/v1/users/me/sessions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ended"], 2);
    assert_eq!(
        laptop.get("/api/v1/users/me").await.0,
        StatusCode::UNAUTHORIZED
    );

    // An administrator disabling the account ends its sessions too.
    let (again, _, _) = Api::login(&app.api, "alice", &password).await;
    let (_, users) = app.admin().get("/api/v1/users").await;
    let alice = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .unwrap()["id"]
        .clone();
    let id = alice.as_str().unwrap();
    assert_eq!(
        app.admin()
            .patch(&format!("/api/v1/users/{id}"), json!({"disabled": true}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        again.get("/api/v1/users/me").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, status, _) = Api::login(&app.api, "alice", &password).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "disabled accounts cannot sign in"
    );
}

#[tokio::test]
async fn cookie_sessions_need_the_csrf_token_to_change_anything() {
    let app = TestApp::start().await;
    let (_, _, password) = app.create_user("carol", "operator").await;
    let (mut api, _, _) = Api::login(&app.api, "carol", &password).await;
    let good = api.csrf.take().unwrap();

    // Reads need no token.
    assert_eq!(api.get("/api/v1/users/me/keys").await.0, StatusCode::OK);
    // Writes without, or with a wrong token, are refused and change nothing.
    let (status, body) = api
        .post("/api/v1/users/me/keys", json!({"name": "x"}))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "csrf_failed");
    api.csrf = Some("forged".into());
    let (status, body) = api
        .post("/api/v1/users/me/keys", json!({"name": "x"}))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "csrf_failed");
    let (_, keys) = api.get("/api/v1/users/me/keys").await;
    assert_eq!(
        keys.as_array().unwrap().len(),
        1,
        "only the default key exists"
    );

    api.csrf = Some(good);
    assert_eq!(
        api.post("/api/v1/users/me/keys", json!({"name": "x"}))
            .await
            .0,
        StatusCode::CREATED
    );

    // The portal's sign-in form uses a double-submit token.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http
        .post(format!("{}/login", app.ui))
        .form(&[
            ("csrf_token", "guess"),
            ("name", "carol"),
            ("password", password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(
        resp.headers()
            .get("set-cookie")
            .is_none_or(|c| !c.to_str().unwrap().contains("ov_session="))
    );
}

#[tokio::test]
async fn portal_sign_in_sets_a_hardened_cookie() {
    let app = TestApp::start().await;
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(format!("{}/login", app.ui))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = page
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let resp = http
        .post(format!("{}/login", app.ui))
        .form(&[
            ("csrf_token", token),
            ("name", "admin"),
            ("password", app.admin_password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["ov_session=", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing in {cookie}");
    }
    let dash = http.get(format!("{}/", app.ui)).send().await.unwrap();
    assert_eq!(dash.status(), StatusCode::OK);
    assert!(
        dash.text()
            .await
            .unwrap()
            .contains("overvisor agent enroll")
    );

    // With Secure cookies switched on, the cookie says so (and is __Host- prefixed).
    let secure = TestApp::builder()
        .env("OVERVISOR_SECURE_COOKIES", "true")
        .start()
        .await;
    let (status, _) = Api::new(&secure.api, None)
        .post(
            "/api/v1/auth/login",
            serde_json::json!({"name": "admin", "password": secure.admin_password}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", secure.api))
        .json(&serde_json::json!({"name": "admin", "password": secure.admin_password}))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("__Host-ov_session=") && cookie.contains("; Secure"),
        "{cookie}"
    );
}

#[tokio::test]
async fn repeated_failures_lock_the_account_and_the_address() {
    let app = TestApp::builder()
        .env("OVERVISOR_LOGIN_MAX_FAILURES_PER_ACCOUNT", "3")
        .env("OVERVISOR_LOGIN_MAX_FAILURES_PER_ADDRESS", "6")
        .start()
        .await;
    let (_, _, dave_pw) = app.create_user("dave", "reader").await;
    let (_, _, erin_pw) = app.create_user("erin", "reader").await;
    for _ in 0..3 {
        let (_, status, _) = Api::login(&app.api, "dave", "not the password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Locked: even the right password is refused, with Retry-After.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", app.api))
        .json(&json!({"name": "dave", "password": dave_pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 900);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another account from the same address still works…
    let (_, status, _) = Api::login(&app.api, "erin", &erin_pw).await;
    assert_eq!(status, StatusCode::OK);
    // …until the address itself has failed too often.
    for _ in 0..3 {
        Api::login(&app.api, "erin", "not the password").await;
    }
    let (_, status, _) = Api::login(&app.api, "erin", &erin_pw).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // The failures are in the audit log, without the attempted passwords.
    let (_, events) = app
        .admin()
        .get("/api/v1/audit?all=true&action=auth.login&outcome=failure")
        .await;
    assert!(events.as_array().unwrap().len() >= 6, "{events}");
    assert!(!events.to_string().contains("not the password"));
}
