//! Hostile and malformed input gets a clear 4xx JSON error and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{TestApp, assert_error};

async fn user_count(app: &TestApp) -> usize {
    app.admin()
        .get("/api/v1/users")
        .await
        .1
        .as_array()
        .unwrap()
        .len()
}

async fn raw_post(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{}", app.api, path))
        .bearer_auth(&app.admin_token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_json_errors() {
    let app = TestApp::start().await;
    let before = user_count(&app).await;
    let json_ct = "application/json";

    let (s, b) = raw_post(&app, "/api/v1/users", json_ct, vec![b'{'; 2 * 1024 * 1024]).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let (s, b) = raw_post(&app, "/api/v1/users", json_ct, b"{\"name\": ".to_vec()).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_json");
    let (s, b) = raw_post(
        &app,
        "/api/v1/users",
        json_ct,
        b"{\"name\":\"a\xff\xfe\",\"email\":\"a@b.c\"}".to_vec(),
    )
    .await;
    assert!(s == StatusCode::BAD_REQUEST, "bad UTF-8: {s} {b}");
    assert!(b["error"]["code"].is_string());
    let (s, b) = raw_post(&app, "/api/v1/users", "text/plain", b"name=x".to_vec()).await;
    assert_error(
        s,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let (s, b) = raw_post(&app, "/api/v1/users", json_ct, b"[1,2,3]".to_vec()).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_input");
    let (s, b) = raw_post(
        &app,
        "/api/v1/users",
        json_ct,
        br#"{"name":"zed","email":"z@example.com","password":"long enough pass","is_admin":true}"#
            .to_vec(),
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_input");

    assert_eq!(user_count(&app).await, before, "nothing was created");
}

#[tokio::test]
async fn hostile_values_are_refused_and_change_nothing() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let before = user_count(&app).await;
    let names = [
        "x; rm -rf /",
        "$(reboot)",
        "`id`",
        "-rf",
        "a\nb",
        "../../etc/passwd",
        "<script>",
        "Robert'); DROP TABLE users;--",
    ];
    for name in names {
        let (s, b) = admin
            .post(
                "/api/v1/users",
                json!({"name": name, "email": "x@example.com", "password": "long enough pass"}),
            )
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_input");
        assert_eq!(b["error"]["field"], "name", "{b}");
    }
    for email in [
        "no-at-sign",
        "a@b",
        "a b@example.com",
        "x@example.com\r\nBcc: y@z.com",
    ] {
        let (s, b) = admin
            .post(
                "/api/v1/users",
                json!({"name": "ok", "email": email, "password": "long enough pass"}),
            )
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_input");
    }
    let (s, b) = admin
        .post(
            "/api/v1/users",
            json!({"name": "ok", "email": "o@example.com", "password": "short"}),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_input");
    let (s, b) = admin
        .post(
            "/api/v1/users",
            json!({"name": "ok", "email": "o@example.com", "role": "root"}),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_input");
    assert_eq!(user_count(&app).await, before);

    // Ids that are not ids, queries that are not queries.
    let (s, b) = admin.get("/api/v1/users/not-a-uuid").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = admin.get("/api/v1/users/me/keys/%27%20OR%201=1").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = admin.get("/api/v1/audit?limit=abc").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_query");
    let (s, b) = admin.get("/api/v1/audit?limit=0").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_input");
    let (s, b) = admin.get("/api/v1/audit?action=%25").await;
    assert_eq!(s, StatusCode::OK, "a LIKE wildcard is taken literally: {b}");
    assert_eq!(b.as_array().unwrap().len(), 0);
    let (s, b) = admin.get("/api/v1/nope").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");

    // A duplicate name is a conflict, not a crash.
    app.create_user("twin", "reader").await;
    let (s, b) = admin
        .post(
            "/api/v1/users",
            json!({"name": "twin", "email": "t@example.com", "password": "long enough pass"}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict");
}
