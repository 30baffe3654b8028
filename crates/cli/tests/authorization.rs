//! Every endpoint against every role, without credentials, and against
//! another tenant's objects: the allowed succeed, the rest get 401/403, and
//! other tenants' objects answer 404.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Api, TestApp};

struct Who {
    role: &'static str,
    api: Api,
    id: String,
    key_id: String,
}

async fn who(app: &TestApp, name: &str, role: &'static str) -> Who {
    let (id, token, _) = app.create_user(name, role).await;
    let api = app.client(&token);
    let (_, keys) = api.get("/api/v1/users/me/keys").await;
    let key_id = keys[0]["id"].as_str().unwrap().to_owned();
    Who {
        role,
        api,
        id,
        key_id,
    }
}

/// Expected status per role, in the order reader, operator, admin.
type Expect = [u16; 3];

#[tokio::test]
async fn role_and_tenant_matrix() {
    let app = TestApp::start().await;
    let users = [
        who(&app, "rita", "reader").await,
        who(&app, "otto", "operator").await,
        who(&app, "ada", "admin").await,
    ];
    // The "other tenant": an operator whose things nobody else owns.
    let other = who(&app, "olga", "operator").await;
    let (olga_session, _, _) = Api::login(&app.api, "olga", "olga-password-123").await;
    let (_, sessions) = olga_session.get("/api/v1/users/me/sessions").await;
    let other_session = sessions[0]["id"].as_str().unwrap().to_owned();

    let key_of_other = format!("/api/v1/users/me/keys/{}", other.key_id);
    let user_other = format!("/api/v1/users/{}", other.id);
    let cases: Vec<(Method, String, Value, Expect)> = vec![
        (
            Method::GET,
            "/api/v1/users/me".into(),
            Value::Null,
            [200, 200, 200],
        ),
        (
            Method::GET,
            "/api/v1/users/me/ssh-key".into(),
            Value::Null,
            [200, 200, 200],
        ),
        (
            Method::GET,
            "/api/v1/users/me/sessions".into(),
            Value::Null,
            [200, 200, 200],
        ),
        (
            Method::GET,
            "/api/v1/users/me/keys".into(),
            Value::Null,
            [200, 200, 200],
        ),
        (
            Method::POST,
            "/api/v1/users/me/keys".into(),
            json!({"name": "matrix"}),
            [201, 201, 201],
        ),
        (
            Method::POST,
            "/api/v1/users/me/password".into(),
            json!({"current_password": "wrong password!", "new_password": "another long one"}),
            [400, 400, 400],
        ),
        // Other tenants' keys and sessions do not exist for anyone, admins included
        // (these routes are scoped to the caller).
        (
            Method::GET,
            key_of_other.clone(),
            Value::Null,
            [404, 404, 404],
        ),
        (
            Method::DELETE,
            key_of_other.clone(),
            Value::Null,
            [404, 404, 404],
        ),
        (
            Method::POST,
            format!("{key_of_other}/rotate"),
            json!({}),
            [404, 404, 404],
        ),
        (
            Method::DELETE,
            format!("/api/v1/users/me/sessions/{other_session}"),
            Value::Null,
            [404, 404, 404],
        ),
        // User administration.
        (
            Method::GET,
            "/api/v1/users".into(),
            Value::Null,
            [403, 403, 200],
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            json!({"name": "newbie", "email": "n@example.com", "password": "long enough pass"}),
            [403, 403, 201],
        ),
        (
            Method::GET,
            user_other.clone(),
            Value::Null,
            [404, 404, 200],
        ),
        (
            Method::PATCH,
            user_other.clone(),
            json!({"email": "olga2@example.com"}),
            [404, 404, 200],
        ),
        (
            Method::POST,
            format!("{user_other}/reset-password"),
            json!({}),
            [404, 404, 200],
        ),
        // Audit: own for all, everything for admins.
        (
            Method::GET,
            "/api/v1/audit".into(),
            Value::Null,
            [200, 200, 200],
        ),
        (
            Method::GET,
            "/api/v1/audit?all=true".into(),
            Value::Null,
            [403, 403, 200],
        ),
    ];

    for (method, path, body, expect) in &cases {
        // Without credentials: always 401 with the error envelope.
        let anon = app.anonymous();
        let mut req = anon.request(method.clone(), path);
        if !body.is_null() {
            req = req.json(body);
        }
        let (status, resp) = anon.send(req).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "anonymous {method} {path}: {resp}"
        );
        assert_eq!(resp["error"]["code"], "unauthenticated");

        for (who, want) in users.iter().zip(expect) {
            let mut req = who.api.request(method.clone(), path);
            if !body.is_null() {
                req = req.json(body);
            }
            let (status, resp) = who.api.send(req).await;
            assert_eq!(
                status.as_u16(),
                *want,
                "{} {method} {path}: {resp}",
                who.role
            );
            if status == StatusCode::NOT_FOUND {
                // Nothing about the object leaks.
                assert!(!resp.to_string().contains(&other.id), "{resp}");
            }
            // The user created by the admin is removed from later iterations' way.
            if *method == Method::POST && path == "/api/v1/users" && status == StatusCode::CREATED {
                let id = resp["user"]["id"].as_str().unwrap();
                who.api
                    .patch(&format!("/api/v1/users/{id}"), json!({"disabled": true}))
                    .await;
            }
        }
    }

    // Own objects are reachable by id; a non-admin cannot change their own role.
    for who in &users {
        let (status, _) = who.api.get(&format!("/api/v1/users/{}", who.id)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = who
            .api
            .patch(
                &format!("/api/v1/users/{}", who.id),
                json!({"role": "admin"}),
            )
            .await;
        let want = if who.role == "admin" {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(status, want, "{} promoting themselves", who.role);
    }

    // A reader's audit view holds only their own events.
    let (_, events) = users[0].api.get("/api/v1/audit?limit=1000").await;
    for e in events.as_array().unwrap() {
        assert!(
            e["actor_id"] == users[0].id.as_str() || e["target_owner"] == users[0].id.as_str(),
            "{e}"
        );
    }
    // The admin sees others' events.
    let (_, all) = users[2].api.get("/api/v1/audit?all=true&limit=1000").await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor_id"] == other.id.as_str())
    );
}

#[tokio::test]
async fn the_last_admin_cannot_be_demoted_or_disabled() {
    let app = TestApp::start().await;
    let (_, me) = app.admin().get("/api/v1/users/me").await;
    let id = me["id"].as_str().unwrap();
    let (s, b) = app
        .admin()
        .patch(&format!("/api/v1/users/{id}"), json!({"role": "reader"}))
        .await;
    support::assert_error(s, &b, StatusCode::CONFLICT, "conflict");
    let (s, b) = app
        .admin()
        .patch(&format!("/api/v1/users/{id}"), json!({"disabled": true}))
        .await;
    support::assert_error(s, &b, StatusCode::CONFLICT, "conflict");
    let (_, me) = app.admin().get("/api/v1/users/me").await;
    assert_eq!(me["role"], "admin");
}
