//! The `overvisor` CLI's remote commands, run as the real binary against
//! the real service (and, for hosts, VMs and consoles, lab host ovh1 with a
//! throwaway guest): remotes and their private file, tables and the API's
//! JSON, every exit code, waiting (progress bar in a pseudo-terminal, log
//! lines, Ctrl-C, --no-wait), a failed job, events, the serial console,
//! completions and man pages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overvisor_testkit::{Lab, unique_name};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestApp, lab_profile};

/// A guard against a hang, not a measurement.
const PATIENCE: Duration = Duration::from_secs(60);
const BOOT: Duration = Duration::from_secs(120);

/// What one run of the CLI left behind.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn code(self, want: i32) -> Self {
        assert_eq!(
            self.code, want,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The CLI of one user: its own config directory, and the service's URL
/// and key in the environment unless a test uses its remotes file.
struct Cli {
    home: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Cli {
    fn new(url: &str, key: &str) -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            env: vec![
                ("OVERVISOR_URL".into(), url.into()),
                ("OVERVISOR_API_KEY".into(), key.into()),
            ],
        }
    }

    /// No URL or key in the environment: only the remotes file.
    fn with_file_only() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    fn config_dir(&self) -> std::path::PathBuf {
        self.home.path().join("config")
    }

    /// A clean environment: this user's config directory, URL and key.
    fn apply_env(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.config_dir());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(TestApp::binary());
        cmd.args(args);
        self.apply_env(&mut cmd);
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_input(args, "")
    }

    fn run_input(&self, args: &[&str], input: &str) -> Out {
        output(support::run_with_input(self.command(args), input))
    }

    /// Runs the CLI on a pseudo-terminal (`script`), stdout and stderr
    /// both the terminal's, typing `input`; returns everything the
    /// terminal showed.
    fn run_on_terminal(&self, args: &[&str], input: &str) -> Out {
        let line = std::iter::once(TestApp::binary())
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = Command::new("script");
        self.apply_env(&mut script);
        script
            .env("TERM", "xterm")
            .args(["-qfec", &line, "/dev/null"]);
        output(support::run_with_input(script, input))
    }
}

fn output(out: std::process::Output) -> Out {
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn has_escapes(text: &str) -> bool {
    text.contains('\x1b')
}

async fn service() -> TestApp {
    TestApp::builder()
        .env("OVERVISOR_TEST_JOBS", "true")
        .start()
        .await
}

/// A job of `steps` test steps, the `fail_at`-th failing; returns its id.
async fn steps_job(api: &Api, steps: u8, step_millis: u32, fail_at: Option<u8>) -> String {
    let (status, job) = api
        .post(
            "/api/v1/jobs/test-steps",
            json!({"steps": steps, "step_millis": step_millis, "fail_at": fail_at}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn remotes_live_in_a_private_file_and_keys_are_never_shown() {
    let app = service().await;
    let key = app.admin_token.clone();
    // `ovk_<prefix>_<secret>`; the secret's own alphabet has `_` too.
    let secret = key.splitn(3, '_').nth(2).unwrap().to_owned();
    assert!(secret.len() >= 32, "{key}");
    let cli = Cli::with_file_only();

    // Nothing configured: a usage error saying what to do.
    let out = cli.run(&["host", "list"]).code(2);
    assert!(
        out.stderr.contains("overvisor remote add"),
        "{}",
        out.stderr
    );

    // The key comes from stdin; the URL and key are checked by signing in.
    let out = cli
        .run_input(&["remote", "add", "lab", &app.api], &format!("{key}\n"))
        .ok();
    assert!(out.stdout.contains("as admin (admin)"), "{}", out.stdout);
    let file = cli.config_dir().join("overvisor").join("remotes.toml");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "remotes.toml mode {mode:o}");
    let dir_mode = std::fs::metadata(file.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o077, 0, "config directory mode {dir_mode:o}");
    assert!(std::fs::read_to_string(&file).unwrap().contains(&key));
    // Made readable behind its back: every use warns, and the next save
    // makes it private again.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli.run(&["remote", "list"]).ok();
    assert!(
        out.stderr.contains("may be read by others"),
        "{}",
        out.stderr
    );
    cli.run(&["remote", "use", "lab"]).ok();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "remotes.toml mode {mode:o}");

    // A wrong key is refused (4) and not saved; the key is not echoed.
    let wrong = "ovk_0123456789ab_WRONGWRONGWRONGWRONGWRONGWRONGWRONGWRONGWRO";
    let out = cli
        .run_input(&["remote", "add", "bad", &app.api], wrong)
        .code(4);
    assert!(!out.stderr.contains("WRONGWRONG"), "{}", out.stderr);
    assert!(!std::fs::read_to_string(&file).unwrap().contains("bad"));

    // An unreachable one can be added unchecked, then used: 5.
    cli.run_input(
        &["remote", "add", "dead", "http://127.0.0.1:9", "--no-check"],
        &key,
    )
    .ok();

    // The list shows names, URLs and key prefixes only.
    let out = cli.run(&["remote", "list"]).ok();
    assert!(out.stdout.contains("lab"), "{}", out.stdout);
    assert!(out.stdout.contains(&app.api), "{}", out.stdout);
    assert!(out.stdout.contains(&key[..16]), "{}", out.stdout);
    assert!(!out.stdout.contains(&secret), "{}", out.stdout);
    let list = cli.run(&["remote", "list", "-o", "json"]).ok().json();
    let lab = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "lab")
        .unwrap();
    assert_eq!(lab["current"], true, "{list}");
    assert!(!list.to_string().contains(&secret));

    // The current remote is used; --remote and `remote use` choose another.
    let hosts = cli.run(&["host", "list", "-o", "json"]).ok().json();
    assert_eq!(hosts, json!([]));
    let out = cli.run(&["host", "list", "--remote", "dead"]).code(5);
    assert!(
        out.stderr.contains("cannot reach http://127.0.0.1:9"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&secret), "{}", out.stderr);
    cli.run(&["remote", "use", "dead"]).ok();
    cli.run(&["job", "list"]).code(5);
    cli.run(&["remote", "use", "nope"]).code(3);
    cli.run(&["remote", "use", "lab"]).ok();
    cli.run(&["job", "list"]).ok();

    // The environment wins over the file, for scripts.
    let mut scripted = Cli::with_file_only();
    scripted.home = cli.home;
    scripted.env = vec![
        ("OVERVISOR_URL".into(), "http://127.0.0.1:9".into()),
        ("OVERVISOR_API_KEY".into(), key.clone()),
    ];
    scripted.run(&["job", "list"]).code(5);
    scripted.env[1].1 = wrong.into();
    scripted.env[0].1 = app.api.clone();
    let out = scripted.run(&["job", "list"]).code(4);
    assert!(out.stderr.contains("unauthenticated"), "{}", out.stderr);
    assert!(!app.logs().contains(&secret), "the key reached a log line");
}

#[tokio::test]
async fn guest_keys_are_added_listed_and_removed() {
    let app = service().await;
    let (_, key, _) = app.create_user("gina", "reader").await;
    let cli = Cli::new(&app.api, &key);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("laptop.pub");
    std::fs::write(&file, include_str!("../../deploy/tests/data/ed25519.pub")).unwrap();
    let file = file.to_str().unwrap();
    let added = cli
        .run(&["guest-key", "add", file, "-o", "json"])
        .ok()
        .json();
    assert_eq!(added["name"], "laptop.pub", "{added}");
    let id = added["id"].as_str().unwrap();
    let fingerprint = added["fingerprint"].as_str().unwrap();
    let out = cli.run(&["guest-key", "list"]).ok();
    assert!(
        out.stdout.contains(fingerprint) && out.stdout.contains(id),
        "{}",
        out.stdout
    );
    // The same key again: a conflict, exit 1 with the service's message.
    let out = cli
        .run(&["guest-key", "add", file, "--name", "again"])
        .code(1);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    cli.run(&["guest-key", "rm", id]).ok();
    let listed = cli.run(&["guest-key", "list", "-o", "json"]).ok().json();
    assert_eq!(listed, serde_json::json!([]));
}

#[tokio::test]
async fn exit_codes_name_what_went_wrong() {
    let app = service().await;
    let admin = Cli::new(&app.api, &app.admin_token);
    let (_, reader_key, _) = app.create_user("rita", "reader").await;
    let reader = Cli::new(&app.api, &reader_key);

    // Usage: clap's and ours.
    admin.run(&["vm", "bogus"]).code(2);
    admin.run(&["vm", "list", "--sort"]).code(2);
    admin.run(&["job", "list", "-o", "xml"]).code(2);
    Cli::new("not a url", "k").run(&["job", "list"]).code(2);
    // Not found.
    admin.run(&["vm", "show", "no-such-vm"]).code(3);
    admin.run(&["host", "show", "no-such-host"]).code(3);
    let missing = uuid::Uuid::new_v4().to_string();
    let out = admin.run(&["job", "show", &missing]).code(3);
    assert!(out.stderr.contains("not_found"), "{}", out.stderr);
    // Denied: a reader may not change infrastructure or read everyone's audit.
    let out = reader.run(&["host", "resync"]).code(4);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);
    reader.run(&["audit", "--all"]).code(4);
    // Another API error (bad input) is a plain failure.
    let out = admin.run(&["job", "list", "--limit", "5000"]).code(1);
    assert!(out.stderr.contains("limit"), "{}", out.stderr);
    // Unreachable.
    Cli::new("http://127.0.0.1:9", &app.admin_token)
        .run(&["profile", "list"])
        .code(5);
    // None of it printed anything on stdout.
    let out = admin
        .run(&["vm", "show", "no-such-vm", "-o", "json"])
        .code(3);
    assert_eq!(out.stdout, "");
}

#[tokio::test]
async fn waiting_shows_progress_and_logs_and_a_failed_job_exits_1() {
    let app = service().await;
    let api = app.admin();
    let cli = Cli::new(&app.api, &app.admin_token);

    // A job that fails: exit 1, its error and log lines on stderr; JSON
    // on stdout is the API's job.
    let failing = steps_job(&api, 2, 100, Some(2)).await;
    let out = cli.run(&["job", "watch", &failing]).code(1);
    assert!(out.stderr.contains("failed on purpose"), "{}", out.stderr);
    assert!(out.stderr.contains("step 1 ran"), "{}", out.stderr);
    assert!(
        !has_escapes(&out.stdout) && !has_escapes(&out.stderr),
        "{out:?}",
        out = out.stderr
    );
    let out = cli.run(&["job", "watch", &failing, "-o", "json"]).code(1);
    let job = out.json();
    assert_eq!(job["status"], "failed");
    assert_eq!(job["steps"][1]["status"], "failed", "{job}");

    // A job that succeeds: exit 0, said on stdout.
    let fine = steps_job(&api, 2, 100, None).await;
    let out = cli.run(&["job", "watch", &fine]).ok();
    assert!(
        out.stdout
            .contains(&format!("job {fine} (test.steps) succeeded")),
        "{}",
        out.stdout
    );
    assert!(!has_escapes(&out.stdout) && !has_escapes(&out.stderr));

    // On a terminal: the progress bar with the job's step.
    let slow = steps_job(&api, 3, 1500, None).await;
    let out = cli.run_on_terminal(&["job", "watch", &slow], "").ok();
    assert!(out.stdout.contains("test.steps step"), "{:?}", out.stdout);
    assert!(out.stdout.contains("%"), "{:?}", out.stdout);
    assert!(out.stdout.contains("[="), "no bar drawn: {:?}", out.stdout);

    // Colour on a terminal only, and never with NO_COLOR.
    let out = cli.run_on_terminal(&["job", "list"], "").ok();
    assert!(out.stdout.contains("\x1b[32msucceeded"), "{:?}", out.stdout);
    let mut plain = Cli::new(&app.api, &app.admin_token);
    plain.env.push(("NO_COLOR".into(), "1".into()));
    let out = plain.run_on_terminal(&["job", "list"], "").ok();
    assert!(!has_escapes(&out.stdout), "{:?}", out.stdout);
    assert!(out.stdout.contains("succeeded"), "{:?}", out.stdout);

    // Listing and showing: tables and the API's JSON.
    let out = cli.run(&["job", "list"]).ok();
    assert!(out.stdout.starts_with("ID "), "{}", out.stdout);
    assert!(out.stdout.contains(&failing) && out.stdout.contains("failed"));
    let jobs = cli
        .run(&["job", "list", "-o", "json", "--status", "failed"])
        .ok()
        .json();
    let ids: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![failing.as_str()]);
    let out = cli.run(&["job", "show", &failing]).ok();
    assert!(
        out.stdout.contains("step 2 failed on purpose"),
        "{}",
        out.stdout
    );
    let (_, direct) = api.get(&format!("/api/v1/jobs/{fine}")).await;
    assert_eq!(
        cli.run(&["job", "show", &fine, "-o", "json"]).ok().json(),
        direct
    );
    let yaml = cli.run(&["job", "show", &fine, "-o", "yaml"]).ok();
    let parsed: Value = serde_norway::from_str(&yaml.stdout).unwrap();
    assert_eq!(parsed, direct, "{}", yaml.stdout);
}

/// `overvisor job watch` of a long test-sleep job, once it is waiting
/// (the job's first log line reached its stderr).
struct Watching {
    id: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
    pump: std::thread::JoinHandle<()>,
}

impl Watching {
    async fn start(cli: &Cli, api: &Api) -> Self {
        let (status, job) = api
            .post("/api/v1/jobs/test-sleep", json!({"seconds": 600}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        let mut child = cli
            .command(&["job", "watch", job["id"].as_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pump = read_in_background(child.stderr.take().unwrap(), stderr.clone());
        wait_for_text(&stderr, "slept", &mut child);
        Self {
            id: job["id"].as_str().unwrap().to_owned(),
            child,
            stderr,
            pump,
        }
    }

    /// Waits for the CLI to exit: its exit code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        self.pump.join().unwrap();
        let said = self.stderr.lock().unwrap().clone();
        (status.code(), said)
    }
}

#[tokio::test]
async fn ctrl_c_leaves_the_job_running_and_cancel_stops_it() {
    let app = service().await;
    let api = app.admin();
    let cli = Cli::new(&app.api, &app.admin_token);
    let watching = Watching::start(&cli, &api).await;
    let id = watching.id.clone();
    let kill = Command::new("kill")
        .args(["-INT", &watching.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (code, said) = watching.finish();
    assert_eq!(code, Some(130), "{said}");
    assert!(
        said.contains(&format!(
            "job {id} keeps running; follow it with `overvisor job watch {id}`"
        )),
        "{said}"
    );
    let (_, still) = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(still["status"], "running", "{still}");

    let out = cli.run(&["job", "cancel", &id, "-o", "json"]).ok();
    assert!(matches!(
        out.json()["status"].as_str(),
        Some("cancelled" | "running")
    ));
    let out = cli.run(&["job", "watch", &id]).code(1);
    assert!(out.stderr.contains("cancelled"), "{}", out.stderr);
    // Cancelling it again: the API's conflict, a plain failure.
    cli.run(&["job", "cancel", &id]).code(1);
}

#[tokio::test]
async fn losing_the_service_while_waiting_is_unreachable_and_names_the_job() {
    let mut app = service().await;
    let cli = Cli::new(&app.api, &app.admin_token);
    let watching = Watching::start(&cli, &app.admin()).await;
    let id = watching.id.clone();
    app.kill();
    let (code, said) = watching.finish();
    assert_eq!(code, Some(5), "{said}");
    assert!(
        said.contains(&format!("`overvisor job watch {id}`")),
        "{said}"
    );
}

/// Runs `overvisor events` for the first `job.created` it sees while jobs
/// are made (the stream may open after the first one); returns the event
/// after checking it is one of those jobs.
async fn first_job_created(cli: &Cli, api: &Api) -> Value {
    let mut child = cli
        .command(&[
            "events",
            "--types",
            "job.created",
            "--count",
            "1",
            "-o",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut made = Vec::new();
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no event arrived");
        made.push(steps_job(api, 1, 0, None).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let event: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(event["type"], "job.created", "{event}");
    assert!(
        made.iter().any(|id| event["job"]["id"] == id.as_str()),
        "{event}"
    );
    event
}

#[tokio::test]
async fn events_are_tailed_filtered_as_asked() {
    let app = service().await;
    let cli = Cli::new(&app.api, &app.admin_token);
    first_job_created(&cli, &app.admin()).await;
    // A wrong key is refused before any event.
    Cli::new(&app.api, "ovk_0123456789ab_nope")
        .run(&["events"])
        .code(4);
}

/// A TLS-terminating proxy in front of the service's API port, its
/// certificate issued by a CA of its own (the service speaks plain HTTP).
struct TlsProxy {
    url: String,
    ca_pem: String,
}

fn tls_proxy(api: &str) -> TlsProxy {
    let support::TestTls { acceptor, ca_pem } = support::test_tls(&["127.0.0.1"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let upstream = api.trim_start_matches("http://").to_owned();
    // Its own thread and runtime: tests block on the CLI's processes.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut back) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
                });
            }
        });
    });
    TlsProxy { url, ca_pem }
}

#[tokio::test]
async fn tls_is_always_verified_and_a_ca_file_adds_a_root() {
    let app = service().await;
    let proxy = tls_proxy(&app.api);
    let cli = Cli::new(&proxy.url, &app.admin_token);
    let ca = cli.home.path().join("ca.pem");
    std::fs::write(&ca, &proxy.ca_pem).unwrap();
    let ca = ca.to_str().unwrap();

    // Unknown issuer: unreachable, saying why; there is no way around it
    // but trusting the CA.
    let out = cli.run(&["job", "list"]).code(5);
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );
    cli.run(&["job", "list", "--ca-file", ca]).ok();
    let garbage = cli.home.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    cli.run(&["job", "list", "--ca-file", garbage.to_str().unwrap()])
        .code(2);

    // A remote keeps its CA file; the event stream uses it too.
    let mut kept = Cli::with_file_only();
    kept.run_input(
        &["remote", "add", "tls", &proxy.url, "--ca-file", ca],
        &app.admin_token,
    )
    .ok();
    kept.run(&["host", "list"]).ok();
    first_job_created(&kept, &app.admin()).await;
    kept.env = vec![("OVERVISOR_CA_FILE".into(), garbage.to_str().unwrap().into())];
    kept.run(&["host", "list"]).code(2);
}

/// `host add` of a lab host as `lab-one`, with the lab's client key as
/// its credential, plus `extra` arguments; on a terminal typing `typed`
/// when given.
fn add_lab_host(
    cli: &Cli,
    lab: &Lab,
    host: &overvisor_testkit::LabHost,
    extra: &[&str],
    typed: Option<&str>,
) -> Out {
    let key_file = cli.home.path().join("lab-key");
    std::fs::write(&key_file, lab.client_key_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = host.port.to_string();
    let mut args = vec![
        "host",
        "add",
        &host.address,
        "--name",
        "lab-one",
        "--port",
        &port,
        "--user",
        &host.user,
        "--libvirt-uri",
        &host.uri,
        "--tag",
        "lab",
        "--private-key",
    ];
    let key_path = key_file.to_str().unwrap();
    args.push(key_path);
    args.extend_from_slice(extra);
    match typed {
        Some(input) => cli.run_on_terminal(&args, input),
        None => cli.run(&args),
    }
}

#[tokio::test]
async fn hosts_and_vms_on_a_lab_host() {
    let lab = Lab::load();
    let ovh1 = lab.host("ovh1");
    let app = service().await;
    let (_, key, _) = app.create_user("olga", "operator").await;
    let cli = Cli::new(&app.api, &key);
    let add = |extra: &[&str]| add_lab_host(&cli, &lab, ovh1, extra, None);

    // Nobody at a terminal to confirm: the fingerprint must be given.
    let out = add(&[]).code(2);
    assert!(
        out.stderr.contains(&ovh1.host_key_fingerprint),
        "{}",
        out.stderr
    );
    let other = lab.host("ovh2");
    let out = add(&["--fingerprint", &other.host_key_fingerprint]).code(1);
    assert!(out.stderr.contains("not added"), "{}", out.stderr);
    let out = add(&["--fingerprint", &ovh1.host_key_fingerprint, "-o", "json"]).ok();
    let host = out.json();
    assert_eq!(
        host["host_key_fingerprint"],
        ovh1.host_key_fingerprint.as_str()
    );
    assert_eq!(host["has_credential"], true);
    assert!(!out.stdout.contains("PRIVATE KEY"));
    let host_id = host["id"].as_str().unwrap().to_owned();

    let out = cli.run(&["host", "list"]).ok();
    assert!(out.stdout.starts_with("NAME "), "{}", out.stdout);
    assert!(out.stdout.contains("lab-one") && out.stdout.contains(&host_id));
    let shown = cli
        .run(&["host", "show", "lab-one", "-o", "json"])
        .ok()
        .json();
    assert_eq!(shown["id"], host_id.as_str());
    let out = cli.run(&["host", "facts", "lab-one"]).ok();
    assert!(out.stdout.contains("hypervisor:"), "{}", out.stdout);

    // Jobs: waited for by default, or just named with --no-wait.
    let out = cli.run(&["host", "resync", "lab-one"]).ok();
    assert!(
        out.stdout.contains("(inventory.resync) succeeded"),
        "{}",
        out.stdout
    );
    let out = cli.run(&["host", "resync", "lab-one", "--no-wait"]).ok();
    let job_id = out.stdout.trim().to_owned();
    assert!(uuid::Uuid::parse_str(&job_id).is_ok(), "{}", out.stdout);
    cli.run(&["job", "watch", &job_id]).ok();
    let out = cli
        .run(&["host", "edit", "lab-one", "--tag", "lab", "--tag", "cli"])
        .ok();
    assert!(
        out.stdout.contains("(host.update) succeeded"),
        "{}",
        out.stdout
    );
    let shown = cli
        .run(&["host", "show", &host_id, "-o", "json"])
        .ok()
        .json();
    assert_eq!(shown["tags"], json!(["lab", "cli"]));
    cli.run(&["host", "edit", "lab-one"]).code(2);

    // A throwaway guest through its lifecycle (and a sibling, to page).
    let base = unique_name("cli");
    let guest = lab.define_guest(ovh1, &format!("{base}-a"));
    let _sibling = lab.define_guest(ovh1, &format!("{base}-b"));
    let vm = guest.name.clone();
    cli.run(&["host", "resync", "lab-one"]).ok();
    let paged = cli
        .run(&[
            "vm",
            "list",
            "--name",
            &base,
            "--page-size",
            "1",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let names: Vec<&str> = paged
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![vm.clone(), format!("{base}-b")], "{paged}");
    let listed = cli
        .run(&["vm", "list", "--host", "lab-one", "-o", "json"])
        .ok()
        .json();
    let record = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vm.as_str())
        .unwrap_or_else(|| panic!("{vm} not in {listed}"))
        .clone();
    assert_eq!(record["state"], "shut_off");
    let out = cli
        .run(&["vm", "list", "--name", &base, "--sort", "-name"])
        .ok();
    assert!(out.stdout.starts_with("NAME "), "{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[1].starts_with(&format!("{base}-b ")),
        "{}",
        out.stdout
    );
    assert!(
        lines[2].starts_with(&format!("{vm} ")) && lines[2].contains("shut_off"),
        "{}",
        out.stdout
    );

    let out = cli.run(&["vm", "start", &vm]).ok();
    assert!(
        out.stdout.contains("(vm.start) succeeded"),
        "{}",
        out.stdout
    );
    assert_eq!(ovh1.domstate(&vm), "running");
    let info = cli.run(&["vm", "show", &vm, "-o", "json"]).ok().json();
    assert_eq!(info["state"], "running");
    assert_eq!(info["uuid"], record["uuid"]);
    let uuid = record["uuid"].as_str().unwrap();
    cli.run(&["vm", "show", uuid]).ok();
    cli.run(&["vm", "start", "no-such-vm", "--host", "lab-one"])
        .code(3);
    // Starting it again is an invalid transition: refused, no job.
    cli.run(&["vm", "start", &vm]).code(1);

    // The serial console, both ways; Ctrl-] detaches.
    guest.wait_ready(1, BOOT);
    console_round_trip(&cli, &vm);
    // And over TLS, with the CA file the WebSocket trusts too.
    let proxy = tls_proxy(&app.api);
    let ca = cli.home.path().join("ca.pem");
    std::fs::write(&ca, &proxy.ca_pem).unwrap();
    let mut tls_cli = Cli::new(&proxy.url, &key);
    tls_cli
        .env
        .push(("OVERVISOR_CA_FILE".into(), ca.to_str().unwrap().into()));
    console_round_trip(&tls_cli, &vm);

    let out = cli
        .run(&["vm", "stop", &vm, "--no-wait", "-o", "json"])
        .ok();
    let job = out.json();
    assert_eq!(job["kind"], "vm.force_stop", "{job}");
    let done = cli
        .run(&["job", "watch", job["id"].as_str().unwrap(), "-o", "json"])
        .ok()
        .json();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(ovh1.domstate(&vm), "shut off");
    let out = cli.run(&["vm", "rm", &vm, "--host", &host_id]).ok();
    assert!(
        out.stdout.contains("(vm.delete) succeeded"),
        "{}",
        out.stdout
    );
    assert!(ovh1.try_virsh(&["domstate", "--domain", &vm]).is_err());
    guest.disarm();

    // A deployment the service refuses is refused before any job (the
    // lab's image-backed deployments belong to their own host).
    cli.run(&[
        "vm",
        "deploy",
        "lab-one",
        "x",
        "--profile",
        "nope",
        "--username",
        "u",
        "--network",
        "default",
    ])
    .code(3);

    let out = cli.run(&["host", "rm", "lab-one"]).ok();
    assert!(
        out.stdout.contains("(host.delete) succeeded"),
        "{}",
        out.stdout
    );
    cli.run(&["host", "show", &host_id]).code(3);
    let out = cli.run(&["audit", "--action", "host."]).ok();
    assert!(out.stdout.contains("host.delete"), "{}", out.stdout);
}

#[tokio::test]
async fn deploy_shows_the_credentials_once_then_waits_for_its_job() {
    let lab = Lab::load();
    let ovh1 = lab.host("ovh1");
    // An image nobody serves (nothing listens there on the host): the
    // deployment fails in its first step and leaves nothing.
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("lab-none.toml"),
        lab_profile("http://127.0.0.1:9/none.raw", &"0".repeat(64)),
    )
    .unwrap();
    let app = TestApp::builder()
        .deploy_profiles(profiles.path())
        .start()
        .await;
    let (_, key, _) = app.create_user("olga", "operator").await;
    let cli = Cli::new(&app.api, &key);
    // At a terminal the fingerprint is shown and confirmed by typing.
    let out = add_lab_host(&cli, &lab, ovh1, &[], Some("n\n")).code(1);
    assert!(
        out.stdout.contains(&ovh1.host_key_fingerprint),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("not confirmed"), "{}", out.stdout);
    assert_eq!(
        cli.run(&["host", "list", "-o", "json"]).ok().json(),
        json!([])
    );
    let out = add_lab_host(&cli, &lab, ovh1, &[], Some("y\n")).ok();
    assert!(
        out.stdout.contains("host key:       SHA256:"),
        "{}",
        out.stdout
    );
    let out = cli.run(&["profile", "list"]).ok();
    assert!(
        out.stdout.contains("lab-none") && out.stdout.contains("operator"),
        "{}",
        out.stdout
    );

    let name = unique_name("cli-dep");
    let deploy = |extra: &[&str]| {
        let mut args = vec![
            "vm",
            "deploy",
            "lab-one",
            &name,
            "--profile",
            "lab-none",
            "--username",
            "ops",
            "--bridge",
            "br0",
        ];
        args.extend_from_slice(extra);
        cli.run(&args)
    };
    // Table: the credentials first, then the job's failure (exit 1).
    let out = deploy(&[]).code(1);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("guest credentials (shown only now): ops / "))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let password = line.rsplit(' ').next().unwrap();
    assert!(password.len() >= 12, "{line}");
    assert!(out.stderr.contains("failed"), "{}", out.stderr);
    // The job keeps no copy of them.
    let jobs = cli
        .run(&["job", "list", "--kind", "vm.deploy", "-o", "json"])
        .ok()
        .json();
    let job_id = jobs[0]["id"].as_str().unwrap();
    let job = cli.run(&["job", "show", job_id, "-o", "json"]).ok();
    assert!(!job.stdout.contains(password), "{}", job.stdout);
    // JSON: one document, the deployment answer with the job as it ended.
    let out = deploy(&["-o", "json"]).code(1);
    let answer = out.json();
    assert_eq!(answer["credentials"]["username"], "ops", "{answer}");
    assert_eq!(answer["job"]["kind"], "vm.deploy", "{answer}");
    assert_eq!(answer["job"]["status"], "failed", "{answer}");
    assert!(answer["job"]["steps"].is_array(), "{answer}");
    // --no-wait: the answer at once.
    let out = deploy(&["-o", "json", "--no-wait"]).ok();
    let answer = out.json();
    assert!(answer["credentials"]["password"].is_string(), "{answer}");
    let id = answer["job"]["id"].as_str().unwrap();
    cli.run(&["job", "watch", id]).code(1);
    // A product key is read from a file and sent (refused here, on a Linux
    // profile), and never echoed.
    let key_file = profiles.path().join("product-key");
    std::fs::write(&key_file, "VDYBY-N7KWH-9GXR3-XBQX3-CVHD8\n").unwrap();
    let out = deploy(&["--product-key-file", key_file.to_str().unwrap()]).code(1);
    assert!(
        out.stderr.contains("only for Windows profiles"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("VDYBY") && !out.stdout.contains("VDYBY"));
    // Nothing of the VM is left on the host.
    assert!(ovh1.try_virsh(&["domstate", "--domain", &name]).is_err());
    assert!(
        !app.logs().contains(password),
        "a guest password was logged"
    );
}

fn read_in_background(
    mut stream: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
}

fn wait_for_text(sink: &Arc<Mutex<String>>, want: &str, child: &mut Child) {
    let deadline = Instant::now() + PATIENCE;
    while !sink.lock().unwrap().contains(want) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "exited with {status} before {want:?}: {}",
                sink.lock().unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {want:?} in: {}",
            sink.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn console_round_trip(cli: &Cli, vm: &str) {
    let mut child = cli
        .command(&["vm", "console", vm])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let pumps = [
        read_in_background(child.stdout.take().unwrap(), stdout.clone()),
        read_in_background(child.stderr.take().unwrap(), stderr.clone()),
    ];
    wait_for_text(&stderr, "Ctrl-] detaches", &mut child);
    let marker = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let mut stdin = child.stdin.take().unwrap();
    // The shell echoes the line as typed (`MARK-""…`); only echo's output
    // has the marker whole.
    stdin
        .write_all(format!("\recho MARK-\"\"{marker}\r").as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    wait_for_text(&stdout, &format!("MARK-{marker}"), &mut child);
    stdin.write_all(&[0x1d]).unwrap();
    stdin.flush().unwrap();
    let status = child.wait().unwrap();
    for pump in pumps {
        pump.join().unwrap();
    }
    assert!(status.success(), "{}", stderr.lock().unwrap());
    assert!(stderr.lock().unwrap().contains("detached"));
}

#[tokio::test]
async fn completions_man_pages_and_help_come_from_the_same_definitions() {
    let cli = Cli::with_file_only();
    for shell in ["bash", "zsh", "fish"] {
        let out = cli.run(&["completions", shell]).ok();
        for word in ["host", "vm", "job", "events", "remote", "console", "deploy"] {
            assert!(out.stdout.contains(word), "{shell} completions lack {word}");
        }
    }
    cli.run(&["completions", "tcsh"]).code(2);
    let out = cli.run(&["man"]).ok();
    // Written once for everyone: the remotes file by its rule, not this
    // user's path.
    assert!(out.stdout.contains("XDG_CONFIG_HOME"), "{}", out.stdout);
    assert!(!out.stdout.contains(cli.home.path().to_str().unwrap()));
    assert!(
        out.stdout.contains(".TH overvisor"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    let dir = cli.home.path().join("man");
    cli.run(&["man", dir.to_str().unwrap()]).ok();
    for page in [
        "overvisor.1",
        "overvisor-vm-start.1",
        "overvisor-remote-add.1",
        "overvisor-job-watch.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(!text.is_empty());
    }
    let out = cli.run(&["--help"]).ok();
    let path = cli.config_dir().join("overvisor").join("remotes.toml");
    assert!(
        out.stdout.contains(path.to_str().unwrap()),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("5 unreachable"), "{}", out.stdout);
    let out = cli.run(&["remote", "--help"]).ok();
    assert!(
        out.stdout.contains(path.to_str().unwrap()),
        "{}",
        out.stdout
    );
    assert!(Path::new(&dir).join("overvisor-host-add.1").exists());
}
