//! Test support: runs the real `overvisor serve` binary on free loopback
//! ports with a fresh data directory, and talks to it over real HTTP.
//!
//! `TestApp::start()` waits until the service is listening, and captures
//! the one-time admin password and API key from its first-start banner and
//! every log line (so tests can assert that no secret was ever logged).
//!
//! The service keeps its data in SQLite in its data directory, or, with
//! `OVERVISOR_TEST_DATABASE=postgres` (or [`TestAppBuilder::postgres`]), in
//! a fresh database of its own on the test PostgreSQL cluster
//! (`scripts/with-postgres`): `scripts/test` runs a subset of these tests
//! that way too.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

/// A running service process and what it printed.
pub struct TestApp {
    child: Option<Child>,
    data_dir: Option<tempfile::TempDir>,
    data_path: PathBuf,
    env: Vec<(String, String)>,
    /// The PostgreSQL database's URL when the service runs on one.
    postgres: Option<String>,
    /// Whether the next start is the first on an empty PostgreSQL database.
    fresh_database: bool,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// `http://127.0.0.1:<port>` of the portal (which also serves the API).
    pub ui: String,
    /// `http://127.0.0.1:<port>` of the API port.
    pub api: String,
    pub admin_password: String,
    pub admin_token: String,
}

pub struct TestAppBuilder {
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    postgres: bool,
}

/// Beside a test's data directory: the URL of its PostgreSQL database, so
/// a second service started on that directory uses the same database.
const POSTGRES_URL_FILE: &str = "postgres-url";

/// Whether tests run their services on PostgreSQL by default
/// (`OVERVISOR_TEST_DATABASE=postgres`).
pub fn postgres_by_default() -> bool {
    std::env::var("OVERVISOR_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

impl TestAppBuilder {
    /// Sets an environment variable of the service (`OVERVISOR_<FIELD>`
    /// for a setting).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Deployment profiles from `dir`; guests deployed emulated (lab hosts
    /// offer /dev/kvm but run guests under TCG only).
    pub fn deploy_profiles(self, dir: &Path) -> Self {
        self.env("OVERVISOR_PROFILES_DIR", dir.display().to_string())
            .env("OVERVISOR_DEPLOY_EMULATED", "1")
    }

    /// Keeps the service's data in a new database on the test PostgreSQL
    /// cluster instead of SQLite.
    pub fn postgres(mut self) -> Self {
        self.postgres = true;
        self
    }

    /// Reuses an existing data directory (to restart on the same state).
    pub fn data_dir(mut self, path: &Path) -> Self {
        self.data_dir = Some(path.to_owned());
        self
    }

    pub async fn start(self) -> TestApp {
        let (data_dir, data_path) = match self.data_dir {
            Some(p) => (None, p),
            None => {
                let dir = tempfile::tempdir().expect("temp data dir");
                let path = dir.path().join("data");
                (Some(dir), path)
            }
        };
        let url_file = data_path.with_file_name(POSTGRES_URL_FILE);
        let (postgres, fresh_database) = match std::fs::read_to_string(&url_file) {
            Ok(url) => (Some(url), false),
            Err(_) if self.postgres || postgres_by_default() => {
                let url = overvisor_testkit::postgres::fresh_database().await;
                std::fs::create_dir_all(data_path.parent().expect("data dir parent"))
                    .expect("data dir parent");
                std::fs::write(&url_file, &url).expect("write the database URL");
                (Some(url), true)
            }
            Err(_) => (None, false),
        };
        let mut env = self.env;
        if let Some(url) = &postgres {
            env.push(("OVERVISOR_DATABASE_URL".into(), url.clone()));
        }
        let mut app = TestApp {
            child: None,
            data_dir,
            data_path,
            env,
            postgres,
            fresh_database,
            stdout: Arc::default(),
            stderr: Arc::default(),
            ui: String::new(),
            api: String::new(),
            admin_password: String::new(),
            admin_token: String::new(),
        };
        app.spawn().await;
        app
    }
}

fn pump(stream: impl std::io::Read + Send + 'static, sink: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            env: Vec::new(),
            data_dir: None,
            postgres: false,
        }
    }

    pub async fn start() -> TestApp {
        Self::builder().start().await
    }

    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_overvisor")
    }

    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// The service's PostgreSQL database, when it runs on one (else SQLite
    /// in its data directory).
    pub fn postgres_url(&self) -> Option<&str> {
        self.postgres.as_deref()
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(Self::binary());
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("OVERVISOR_DATA_DIR", &self.data_path)
            .env("OVERVISOR_UI_BIND", "127.0.0.1:0")
            .env("OVERVISOR_API_BIND", "127.0.0.1:0")
            .env("OVERVISOR_LOG_FORMAT", "json")
            .env("OVERVISOR_LOG", "debug,sqlx=warn,hyper=info,russh=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // On a fresh data directory the service prints a first-start banner;
        // stdout and stderr are pumped by different threads, so wait for both.
        let fresh = match self.postgres {
            Some(_) => std::mem::take(&mut self.fresh_database),
            None => !self.data_path.join("overvisor.db").exists(),
        };
        let mut child = cmd.spawn().expect("spawn overvisor serve");
        let stdout_start = self.stdout.lock().unwrap().len();
        let stderr_start = self.stderr.lock().unwrap().len();
        pump(child.stdout.take().expect("stdout"), self.stdout.clone());
        pump(child.stderr.take().expect("stderr"), self.stderr.clone());
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(30);
        let listening = loop {
            let found = self.stderr.lock().unwrap()[stderr_start..]
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["fields"]["message"] == "overvisor listening");
            let banner_done =
                !fresh || self.stdout.lock().unwrap()[stdout_start..].contains("API key:");
            if let Some(v) = found
                && banner_done
            {
                break v;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("overvisor serve exited with {status}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "service did not start:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.ui = format!("http://{}", listening["fields"]["ui"].as_str().unwrap());
        self.api = format!("http://{}", listening["fields"]["api"].as_str().unwrap());
        let out = self.stdout.lock().unwrap()[stdout_start..].to_owned();
        for line in out.lines() {
            if let Some(p) = line.trim().strip_prefix("password:") {
                self.admin_password = p.trim().to_owned();
            }
            if let Some(k) = line.trim().strip_prefix("API key:") {
                self.admin_token = k.trim().to_owned();
            }
        }
    }

    /// Everything the service logged (stderr), for assertions on secrets.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (the service starts stopping) without waiting.
    pub fn signal_stop(&self) {
        if let Some(child) = &self.child {
            let sent = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            assert!(sent.is_ok_and(|s| s.success()), "kill -TERM failed");
        }
    }

    /// Sends SIGTERM and waits for a graceful exit; returns its status code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal_stop();
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the service again on the same data directory (after `kill`).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A client of the API port authenticated with `token`.
    /// What `/metrics` shows (no credentials needed).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.api))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("/metrics body")
    }

    pub fn client(&self, token: &str) -> Api {
        Api::new(&self.api, Some(token.to_owned()))
    }

    pub fn admin(&self) -> Api {
        self.client(&self.admin_token)
    }

    pub fn anonymous(&self) -> Api {
        Api::new(&self.api, None)
    }

    /// Creates a user through the API; returns (id, API token, password).
    pub async fn create_user(&self, name: &str, role: &str) -> (String, String, String) {
        let password = format!("{name}-password-123");
        let (status, body) = self
            .admin()
            .post(
                "/api/v1/users",
                json!({"name": name, "email": format!("{name}@example.com"), "role": role, "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["user"]["id"].as_str().unwrap().to_owned(),
            body["token"].as_str().unwrap().to_owned(),
            password,
        )
    }

    /// Runs the `overvisor` CLI against this service's data directory.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut cmd = Command::new(Self::binary());
        cmd.args(args)
            .env("OVERVISOR_DATA_DIR", &self.data_path)
            .env("OVERVISOR_LOG", "warn");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run_with_input(cmd, stdin.unwrap_or_default())
    }
}

/// Runs `cmd` (its stdio piped) with `input` on its stdin, then closed.
pub fn run_with_input(mut cmd: Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn overvisor");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("output")
}

/// A deployment profile of a raw 1 GiB-disk Linux image at `url`, pinned
/// to `sha256`, small enough for lab hosts.
pub fn lab_profile(url: &str, sha256: &str) -> String {
    lab_profile_verified(url, &format!("sha256 = \"{sha256}\""))
}

/// [`lab_profile`] with the image's `[image]` lines that verify it (a
/// pinned `sha256`, or `checksums_url` and the rest) given whole.
pub fn lab_profile_verified(url: &str, verify: &str) -> String {
    format!(
        r#"
title = "Lab blank disk"
os = "linux"
firmware = "bios"
disk_bus = "virtio"
nic_model = "virtio"
seed = "nocloud"

[image]
format = "raw"
url = "{url}"
{verify}

[defaults]
vcpus = 1
memory_mib = 128
disk_gib = 1

[minimum]
vcpus = 1
memory_mib = 64
disk_gib = 1
"#
    )
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small JSON client over real HTTP.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
    /// Sent as `X-CSRF-Token` (for cookie sessions).
    pub csrf: Option<String>,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            base: base.to_owned(),
            token,
            http,
            csrf: None,
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(c) = &self.csrf {
            req = req.header("X-CSRF-Token", c);
        }
        req
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.request(reqwest::Method::PATCH, path).json(&body))
            .await
    }

    /// Signs in with a password (cookie session) and remembers the CSRF token.
    pub async fn login(base: &str, name: &str, password: &str) -> (Api, StatusCode, Value) {
        let mut api = Api::new(base, None);
        let (status, body) = api
            .post(
                "/api/v1/auth/login",
                json!({"name": name, "password": password}),
            )
            .await;
        if status.is_success() {
            api.csrf = body["csrf_token"].as_str().map(str::to_owned);
        }
        (api, status, body)
    }
}

/// Asserts an error envelope with `code`.
/// A path segment with everything but unreserved ASCII percent-encoded
/// (VM names from hosts may hold spaces, quotes, non-ASCII).
pub fn path_segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "unexpected status; body: {body}");
    assert_eq!(
        body["error"]["code"], want_code,
        "unexpected error code; body: {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without message: {body}"
    );
}

/// A CA of a test's own and a server certificate it issued for `names`
/// (host names or IP addresses): the acceptor serving it, and the CA's
/// PEM for the client to trust.
pub struct TestTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub ca_pem: String,
}

pub fn test_tls(names: &[&str]) -> TestTls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "overvisor test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    TestTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_pem: ca_cert.pem(),
    }
}
