//! API key lifecycle against the real service: create (shown once), use,
//! last-used time, rotate, revoke, expiry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::{TestApp, assert_error};

#[tokio::test]
async fn keys_are_shown_once_and_work_until_revoked() {
    let app = TestApp::start().await;
    let (_, first_token, _) = app.create_user("alice", "reader").await;
    let alice = app.client(&first_token);

    let (status, created) = alice
        .post(
            "/api/v1/users/me/keys",
            json!({"name": "ci", "expires_in_days": 30}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&format!(
        "ovk_{}_",
        created["key"]["prefix"].as_str().unwrap()
    )));
    assert!(created["key"]["expires_at"].is_string());

    // Listing and reading never show the token again.
    let (_, list) = alice.get("/api/v1/users/me/keys").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&token));
    let (_, one) = alice.get(&format!("/api/v1/users/me/keys/{id}")).await;
    assert!(!one.to_string().contains(&token));
    assert!(one.get("token").is_none() && one.get("token_hash").is_none());

    // Using it records last-used time.
    let ci = app.client(&token);
    let (status, me) = ci.get("/api/v1/users/me").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["name"], "alice");
    let (_, one) = alice.get(&format!("/api/v1/users/me/keys/{id}")).await;
    assert!(one["last_used_at"].is_string(), "{one}");

    // Rotation: a new secret, the old one dead at once.
    let (status, rotated) = alice
        .post(&format!("/api/v1/users/me/keys/{id}/rotate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let new_token = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    assert_eq!(rotated["key"]["id"], id.as_str());
    assert_eq!(ci.get("/api/v1/users/me").await.0, StatusCode::UNAUTHORIZED);
    let ci = app.client(&new_token);
    assert_eq!(ci.get("/api/v1/users/me").await.0, StatusCode::OK);

    // Revocation: dead at once, still listed with revoked_at.
    let (status, revoked) = alice.delete(&format!("/api/v1/users/me/keys/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(revoked["revoked_at"].is_string());
    let (status, body) = ci.get("/api/v1/users/me").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, body) = alice
        .post(&format!("/api/v1/users/me/keys/{id}/rotate"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    // Malformed bearer values are plain 401s.
    for bad in ["", "ovk_", "ovk_0123456789ab_short", "Basic abc"] {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v1/users/me", app.api))
            .header("Authorization", format!("Bearer {bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
    }
}

#[tokio::test]
async fn expired_keys_stop_working() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let (status, body) = admin
        .post(
            "/api/v1/users/me/keys",
            json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
    assert_eq!(body["error"]["field"], "expires_at");

    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (status, body) = admin
        .post(
            "/api/v1/users/me/keys",
            json!({"name": "short", "expires_at": soon}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let short = app.client(body["token"].as_str().unwrap());
    assert_eq!(short.get("/api/v1/users/me").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        short.get("/api/v1/users/me").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn key_input_is_validated() {
    let app = TestApp::start().await;
    let admin = app.admin();
    for body in [
        json!({"name": ""}),
        json!({"name": " padded "}),
        json!({"name": "x".repeat(65)}),
        json!({"name": "bell\u{7}"}),
        json!({"name": "ok", "expires_in_days": 0}),
        json!({"name": "ok", "expires_in_days": 5000}),
        json!({"name": "ok", "expires_in_days": 1, "expires_at": "2999-01-01T00:00:00Z"}),
    ] {
        let (status, resp) = admin.post("/api/v1/users/me/keys", body.clone()).await;
        assert_error(status, &resp, StatusCode::BAD_REQUEST, "invalid_input");
    }
    let (_, keys) = admin.get("/api/v1/users/me/keys").await;
    assert_eq!(keys.as_array().unwrap().len(), 1, "nothing was created");
}
