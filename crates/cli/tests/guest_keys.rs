//! Guest SSH keys against the real service: add (checked, fingerprinted),
//! list, remove, the refusals (each a 4xx naming the field, changing
//! nothing), the per-account cap, the audit rows, and that one account
//! never sees or removes another's keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error};

const ED25519: &str = include_str!("../../deploy/tests/data/ed25519.pub");
const ECDSA: &str = include_str!("../../deploy/tests/data/ecdsa.pub");
const RSA1024: &str = include_str!("../../deploy/tests/data/rsa1024.pub");
const DSA: &str = include_str!("../../deploy/tests/data/dsa.pub");

const PATH: &str = "/api/v1/users/me/guest-keys";

async fn add(api: &Api, name: &str, key: &str) -> (StatusCode, Value) {
    api.post(PATH, json!({"name": name, "public_key": key}))
        .await
}

async fn listed(api: &Api) -> Vec<Value> {
    let (status, list) = api.get(PATH).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array().unwrap().clone()
}

#[tokio::test]
async fn guest_keys_are_checked_listed_and_removed() {
    let app = TestApp::start().await;
    let (alice_id, token, _) = app.create_user("alice", "reader").await;
    let alice = app.client(&token);
    assert!(listed(&alice).await.is_empty());

    let (status, key) = add(&alice, "laptop", &format!("  {}\n", ED25519.trim())).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert_eq!(key["name"], "laptop");
    assert_eq!(key["user_id"], alice_id.as_str());
    assert_eq!(key["public_key"], ED25519.trim());
    let fingerprint = key["fingerprint"].as_str().unwrap();
    assert!(fingerprint.starts_with("SHA256:"), "{key}");
    let id = key["id"].as_str().unwrap().to_owned();

    // Refusals: a 400 naming the field, or a 409; nothing added.
    let (_, private) = overvisor_hv::generate_ed25519_identity("secret").unwrap();
    let private = String::from_utf8(private).unwrap();
    for (name, public_key, field) in [
        ("p", private.as_str(), "public_key"),
        ("b", "ssh-ed25519 AAAA!!!!", "public_key"),
        ("r", RSA1024.trim(), "public_key"),
        ("d", DSA.trim(), "public_key"),
        ("t", "ssh-ed25519 AAAA\nssh-ed25519 BBBB", "public_key"),
        ("", ECDSA.trim(), "name"),
        ("x\ny", ECDSA.trim(), "name"),
    ] {
        let (status, body) = add(&alice, name, public_key).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_input");
        assert_eq!(body["error"]["field"], field, "{body}");
        // Not a byte of the private key comes back.
        assert!(!body.to_string().contains("PRIVATE"), "{body}");
    }
    let (status, body) = add(&alice, "again", ED25519.trim()).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = alice
        .post(
            PATH,
            json!({"name": "x", "public_key": ECDSA.trim(), "extra": 1}),
        )
        .await;
    assert_eq!(status.as_u16() / 100, 4, "{body}");
    assert_eq!(listed(&alice).await.len(), 1);

    // Bob sees none of alice's keys, cannot remove them (404), and may
    // keep the same key himself.
    let (_, bob_token, _) = app.create_user("bob", "operator").await;
    let bob = app.client(&bob_token);
    assert!(listed(&bob).await.is_empty());
    let (status, body) = bob.delete(&format!("{PATH}/{id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, _) = add(&bob, "mine too", ED25519.trim()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(listed(&alice).await.len(), 1);

    // Removal answers the key, then it is gone.
    let (status, removed) = alice.delete(&format!("{PATH}/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["fingerprint"], fingerprint);
    assert!(listed(&alice).await.is_empty());
    let (status, body) = alice.delete(&format!("{PATH}/{id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(listed(&bob).await.len(), 1);

    // Both changes are in alice's audit log, with the fingerprint.
    let (status, audit) = alice.get("/api/v1/audit?action=guest_key").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor_name"] == "alice")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.len(), 2, "{audit}");
    assert!(actions.contains(&"guest_key.add") && actions.contains(&"guest_key.remove"));
    assert!(audit.to_string().contains(fingerprint), "{audit}");

    // Without credentials: 401.
    let (status, body) = app.anonymous().get(PATH).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn an_account_keeps_at_most_32_guest_keys() {
    let app = TestApp::start().await;
    let (_, token, _) = app.create_user("carol", "operator").await;
    let carol = app.client(&token);
    for i in 0..32 {
        let (public, _) = overvisor_hv::generate_ed25519_identity(&format!("k{i}")).unwrap();
        let (status, body) = add(&carol, &format!("k{i}"), &public).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (public, _) = overvisor_hv::generate_ed25519_identity("one too many").unwrap();
    let (status, body) = add(&carol, "k32", &public).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("32"),
        "{body}"
    );
    assert_eq!(listed(&carol).await.len(), 32);
}
