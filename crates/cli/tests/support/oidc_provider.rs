//! A real OpenID Connect provider for tests: `ui/tests/oidc-provider.mjs`
//! (the `oidc-provider` npm package) under Node on a loopback port, and the
//! service configured to trust it. Node and `ui/node_modules` are required
//! (the server crate's build installs the latter); missing ones fail.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub struct OidcProvider {
    child: Child,
    pub issuer: String,
    http: reqwest::Client,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../ui/tests/oidc-provider.mjs")
}

impl OidcProvider {
    pub fn start() -> Self {
        let mut child = Command::new("node")
            .arg(script())
            // The script exits when its standard input closes: with us.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js 20+) is required for the OIDC tests: scripts/install-deps");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).expect(
            "the OIDC provider did not start (is ui/node_modules installed? npm --prefix ui ci)",
        );
        let issuer = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["issuer"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("the OIDC provider printed {line:?}, not its issuer"));
        Self {
            child,
            issuer,
            http: reqwest::Client::new(),
        }
    }

    /// The service's configuration trusting this provider (sign-in with
    /// client `overvisor`, bearer tokens for `urn:overvisor`), shared with
    /// the browser test.
    pub fn config(&self) -> String {
        let path = script().with_file_name("oidc-overvisor.toml");
        std::fs::read_to_string(&path)
            .expect("ui/tests/oidc-overvisor.toml")
            .replace("@ISSUER@", &self.issuer)
    }

    /// A client-credentials access token of service principal `client`
    /// (for `resource`, `urn:overvisor` by default).
    pub async fn client_credentials(&self, client: &str, resource: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let response = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&form)
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: Value = response.json().await.expect("token response");
        assert!(status.is_success(), "token endpoint: {status} {body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// A token with exactly these claims, signed with the provider's
    /// current key.
    pub async fn mint(&self, claims: Value) -> String {
        let body = self.test_endpoint("mint", claims).await;
        body["token"].as_str().expect("token").to_owned()
    }

    /// Makes a new signing key current (the old one stays published);
    /// returns its key id.
    pub async fn rotate(&self) -> String {
        let body = self.test_endpoint("rotate", json!({})).await;
        body["kid"].as_str().expect("kid").to_owned()
    }

    async fn test_endpoint(&self, name: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/test/{name}", self.issuer))
            .json(&body)
            .send()
            .await
            .expect(name);
        assert!(
            response.status().is_success(),
            "{name}: {}",
            response.status()
        );
        response.json().await.expect(name)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
