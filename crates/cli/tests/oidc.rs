//! OpenID Connect against a real provider (the `oidc-provider` npm
//! package on loopback): service principals' client-credentials JWTs on
//! the API with their mapped roles, every kind of bad token refused with
//! 401 and a message naming the problem, key rotation at the provider
//! picked up, API keys still working beside JWTs, and configuration
//! mistakes refused at start. The browser sign-in is ui/tests/oidc.test.mjs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/oidc_provider.rs"]
mod oidc_provider;
mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oidc_provider::OidcProvider;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, assert_error};

struct Setup {
    provider: OidcProvider,
    app: TestApp,
    _config: tempfile::TempDir,
}

async fn setup() -> Setup {
    let provider = OidcProvider::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("overvisor.toml");
    std::fs::write(&path, provider.config()).expect("write config");
    let app = TestApp::builder()
        .env("OVERVISOR_CONFIG", path.display().to_string())
        .start()
        .await;
    Setup {
        provider,
        app,
        _config: dir,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a well-formed token for service principal `automation`.
fn claims(provider: &OidcProvider) -> Value {
    json!({
        "iss": provider.issuer,
        "sub": "automation",
        "client_id": "automation",
        "aud": "urn:overvisor",
        "iat": now(),
        "exp": now() + 600,
        "roles": ["Overvisor.Operator"],
    })
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

/// A token with this header and claims, and a made-up signature.
fn forged(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode("not a signature"),
    )
}

async fn me(app: &TestApp, token: &str) -> (StatusCode, Value) {
    Api::new(&app.api, Some(token.to_owned()))
        .get("/api/v1/users/me")
        .await
}

/// Asserts a 401 `invalid_token` whose message contains `words`.
async fn refused(app: &TestApp, token: &str, words: &str) {
    let (status, body) = me(app, token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(words), "{words:?} not in {message:?}");
}

#[tokio::test]
async fn service_principals_get_their_mapped_roles_and_bad_tokens_are_refused() {
    let Setup { provider, app, .. } = setup().await;

    // Client-credentials tokens from the provider: an account per service
    // principal, with the role its `roles` claim maps to.
    let automation = provider.client_credentials("automation", None).await;
    let (status, body) = me(&app, &automation).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "automation");
    assert_eq!(body["role"], "operator");
    let auditor = provider.client_credentials("auditor", None).await;
    let (status, body) = me(&app, &auditor).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "reader");
    // The same principal again is the same account.
    let again = provider.client_credentials("automation", None).await;
    let (_, body2) = me(&app, &again).await;
    let (_, first) = me(&app, &automation).await;
    assert_eq!(body2["id"], first["id"]);

    // Roles follow the claims on every token: the same principal with a
    // reader's claims is a reader, then an operator again.
    let demoted = provider
        .mint(with(
            claims(&provider),
            json!({"roles": ["Overvisor.Reader"]}),
        ))
        .await;
    let (status, body) = me(&app, &demoted).await;
    assert_eq!(
        (status, body["role"].as_str()),
        (StatusCode::OK, Some("reader")),
        "{body}"
    );
    assert_eq!(body["id"], first["id"]);
    let (_, body) = me(&app, &automation).await;
    assert_eq!(body["role"], "operator");

    // An event stream opened with a JWT (re-checked by the token's expiry).
    let stream = reqwest::Client::new()
        .get(format!("{}/api/v1/events", app.api))
        .bearer_auth(&automation)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("events");
    assert_eq!(stream.status(), StatusCode::OK);
    drop(stream);

    // A principal whose roles map to nothing: 403, and no account.
    let stranger = provider.client_credentials("stranger", None).await;
    let (status, body) = me(&app, &stranger).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "no_role");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Test IdP")
    );

    // Every problem is named.
    let other_audience = provider
        .client_credentials("automation", Some("urn:someone-else"))
        .await;
    refused(&app, &other_audience, "audience").await;
    let c = claims(&provider);
    let expired = provider
        .mint(with(
            c.clone(),
            json!({"iat": now() - 7200, "exp": now() - 3600}),
        ))
        .await;
    refused(&app, &expired, "expired").await;
    let early = provider
        .mint(with(c.clone(), json!({"nbf": now() + 3600})))
        .await;
    refused(&app, &early, "not valid yet").await;
    // Within the configured skew (60 s) a just-expired token still passes.
    let just_expired = provider
        .mint(with(c.clone(), json!({"exp": now() - 20})))
        .await;
    let (status, body) = me(&app, &just_expired).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Signed by the provider's key, but claiming another issuer.
    let foreign = provider
        .mint(with(c.clone(), json!({"iss": "https://idp.example.org"})))
        .await;
    refused(&app, &foreign, "issuer").await;
    let unsigned = forged(json!({"alg": "none", "typ": "JWT"}), &c);
    refused(&app, &unsigned, "unsigned").await;
    let hmac = forged(json!({"alg": "HS256", "typ": "JWT"}), &c);
    refused(&app, &hmac, "shared secret").await;
    // A real token whose claims were changed after signing.
    let mut parts: Vec<String> = automation.split('.').map(str::to_owned).collect();
    parts[1] =
        URL_SAFE_NO_PAD.encode(with(c.clone(), json!({"roles": ["overvisor-admins"]})).to_string());
    refused(&app, &parts.join("."), "signature").await;
    refused(&app, "eyJ.not-base64!.x", "not a JWT").await;

    // API keys keep working beside JWTs, and a key-shaped typo is still
    // the API key path's plain 401.
    let (status, body) = me(&app, &app.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "admin");
    let (status, body) = me(&app, "ovk_nope").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");

    // The accounts' creation and the refusal are in the audit log.
    let (status, audit) = app.admin().get("/api/v1/audit?all=true&limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let text = audit.to_string();
    assert!(text.contains("via oidc provider=test"), "{text}");
    assert!(text.contains("no role mapped"), "{text}");
    assert!(text.contains("role operator -> reader"), "{text}");

    // Nothing secret reached the log.
    let logs = app.logs();
    for secret in ["overvisor-secret", automation.as_str(), auditor.as_str()] {
        assert!(!logs.contains(secret), "a secret was logged");
    }
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_on_first_sight() {
    let Setup { provider, app, .. } = setup().await;
    let before = provider.client_credentials("automation", None).await;
    let (status, body) = me(&app, &before).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let kid = provider.rotate().await;
    let after = provider.client_credentials("automation", None).await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(after.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header["kid"],
        kid.as_str(),
        "the provider signs with the new key"
    );
    let (status, body) = me(&app, &after).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The old key is still published, so tokens signed with it still pass.
    let (status, _) = me(&app, &before).await;
    assert_eq!(status, StatusCode::OK);
    let fetches = app
        .logs()
        .matches("fetched the identity provider's signing keys")
        .count();
    assert_eq!(fetches, 2, "one fetch at first use, one for the new kid");
}

#[tokio::test]
async fn the_sign_in_redirect_carries_pkce_and_a_callback_must_match_it() {
    let Setup { provider, app, .. } = setup().await;
    let browser = Api::new(&app.ui, None);
    let get = |path: &str| browser.http.get(format!("{}{path}", app.ui)).send();

    let start = get("/login/oidc/test?next=/hosts").await.expect("start");
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let cookie = start.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("ov_oidc=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let location = url::Url::parse(start.headers()["location"].to_str().unwrap()).unwrap();
    assert!(
        location
            .as_str()
            .starts_with(&format!("{}/auth?", provider.issuer))
    );
    let query: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["client_id"], "overvisor");
    assert_eq!(
        query["redirect_uri"],
        format!("{}/login/oidc/test/callback", app.ui)
    );
    assert!(query["scope"].split(' ').any(|s| s == "openid"));
    for field in ["state", "nonce", "code_challenge"] {
        assert!(query[field].len() >= 22, "{field}");
    }
    // Nothing of the attempt is readable in the cookie.
    assert!(!cookie.contains(query["state"].as_str()));

    // Back with another state than the one this browser was given.
    let forged = get("/login/oidc/test/callback?code=abc&state=not-the-state")
        .await
        .expect("callback");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let page = forged.text().await.unwrap();
    assert!(page.contains("not the one this browser started"), "{page}");
    // A callback with no attempt at all (another browser's link).
    let (status, _) = Api::new(&app.ui, None)
        .get(&format!(
            "/login/oidc/test/callback?code=abc&state={}",
            query["state"]
        ))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The provider refused.
    let refused = get("/login/oidc/test/callback?error=access_denied")
        .await
        .expect("callback");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("refused the sign-in: access_denied")
    );
    let unknown = get("/login/oidc/nope").await.expect("unknown");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_is_a_503_not_a_401() {
    let Setup { provider, app, .. } = setup().await;
    let token = provider.client_credentials("automation", None).await;
    drop(provider);
    let (status, body) = me(&app, &token).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
}

fn serve_with_config(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("overvisor.toml");
    std::fs::write(&path, text).expect("write config");
    std::process::Command::new(TestApp::binary())
        .arg("serve")
        .env_clear()
        .env("OVERVISOR_CONFIG", &path)
        .env("OVERVISOR_DATA_DIR", dir.path().join("data"))
        .env("OVERVISOR_UI_BIND", "127.0.0.1:0")
        .env("OVERVISOR_API_BIND", "127.0.0.1:0")
        .output()
        .expect("run overvisor serve")
}

#[test]
fn configuration_mistakes_are_refused_at_start() {
    let good = r#"
[[oidc]]
id = "corp"
display_name = "Corp"
issuer = "https://login.example.com"
client_id = "overvisor"
client_secret = "very-secret-value"
[oidc.roles.map]
admins = "admin"
"#;
    for (change, words) in [
        (
            ("client_secret = \"very-secret-value\"", ""),
            "client_secret",
        ),
        (
            ("https://login.example.com", "http://login.example.com"),
            "issuer",
        ),
        (
            ("admins = \"admin\"", "admins = \"root\""),
            "unknown variant",
        ),
        (("id = \"corp\"", "id = \"Corp Inc\""), "id"),
        (
            ("[oidc.roles.map]\nadmins = \"admin\"", ""),
            "nobody could sign in",
        ),
    ] {
        let text = good.replace(change.0, change.1);
        let out = serve_with_config(&text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(stderr.contains(words), "{words:?} not in {stderr}");
        assert!(
            !stderr.contains("very-secret-value"),
            "the secret was printed: {stderr}"
        );
    }
    let out = serve_with_config("password_login = false\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("password_login = false needs"), "{stderr}");
}
