//! `overvisor agent enroll`: the host side of enrolment. Run on a
//! hypervisor host (as root, or as the automation user), it tells the
//! control plane "I am here" (`POST /v1/servers/connect` with the owner's
//! API key) and authorizes the returned public key for the automation
//! account, idempotently. It needs nothing of libvirt: only the network,
//! the host's SSH host key (to report its fingerprint) and `/etc/passwd`.
//!
//! A Hyper-V host runs Windows, where this binary does not: with
//! `--kind hyperv` it prints a PowerShell script that does the same there.

use std::io::Write;
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use clap::{Args, Subcommand};
use overvisor_hv::powershell_literal;
use overvisor_model::host::{HostKind, check_ssh_user};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Where OpenSSH keeps the host key we report when none is named.
const DEFAULT_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key.pub";

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Register this host with a control plane and authorize its SSH key.
    Enroll(EnrollArgs),
}

#[derive(Args)]
pub struct EnrollArgs {
    /// Base URL of the Overvisor API, e.g. https://overvisor.example:8081.
    #[arg(long)]
    url: String,
    /// `libvirt`: enrol this (Linux) host. `hyperv`: print a PowerShell
    /// script that enrols a Windows Hyper-V host when run there.
    #[arg(long, default_value = "libvirt", value_parser = parse_kind)]
    kind: HostKind,
    /// An API key of the account that will own this host (with `--kind
    /// hyperv`, the script reads it on the host instead).
    #[arg(long, env = "OVERVISOR_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The automation account Overvisor logs in as.
    #[arg(long, default_value = "ovdeploy")]
    user: String,
    /// This host's name; default: the system hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// The address the control plane should connect to; default: the
    /// source address of the route to the control plane.
    #[arg(long)]
    ip_address: Option<String>,
    /// SSH port of this host.
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// Install the key here instead of ~USER/.ssh/authorized_keys.
    #[arg(long)]
    authorized_keys_file: Option<PathBuf>,
    /// This host's SSH public host key, whose fingerprint is reported so the
    /// control plane can pin it. Default: /etc/ssh/ssh_host_ed25519_key.pub.
    #[arg(long)]
    host_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Connected {
    host: Value,
    created: bool,
    automation_user: String,
    authorized_keys: String,
}

pub async fn run(cmd: AgentCommand) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::Enroll(args) if args.kind == HostKind::Hyperv => {
            print!("{}", hyperv_script(&args)?);
            Ok(())
        }
        AgentCommand::Enroll(args) => enroll(args).await,
    }
}

fn parse_kind(text: &str) -> Result<HostKind, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a host kind: libvirt or hyperv"))
}

/// The PowerShell script that enrols a Hyper-V host, for `args`. What it
/// is given is checked here and written as PowerShell literals; the API
/// key never appears in it.
fn hyperv_script(args: &EnrollArgs) -> anyhow::Result<String> {
    let base = args.url.trim_end_matches('/');
    let url = reqwest::Url::parse(base).with_context(|| format!("--url {base} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--url {base} is not an http(s) URL");
    }
    check_ssh_user(&args.user).map_err(|e| anyhow::anyhow!("--user {e}"))?;
    let address = match &args.ip_address {
        Some(ip) => ip
            .parse::<IpAddr>()
            .with_context(|| format!("--ip-address {ip} is not an IP address"))?
            .to_string(),
        None => String::new(),
    };
    if args.hostname.is_some()
        || args.host_key_file.is_some()
        || args.authorized_keys_file.is_some()
    {
        bail!(
            "--hostname, --host-key-file and --authorized-keys-file are read on the Windows host by the script"
        );
    }
    Ok(HYPERV_SCRIPT
        .replace(
            "{{URL}}",
            &powershell_literal(url.as_str().trim_end_matches('/')),
        )
        .replace("{{USER}}", &powershell_literal(&args.user))
        .replace("{{PORT}}", &args.port.to_string())
        .replace("{{ADDRESS}}", &powershell_literal(&address)))
}

/// Versioned with the service: the enrolment endpoint it calls is this
/// build's.
const HYPERV_SCRIPT: &str = include_str!("agent/enroll-hyperv.ps1");

async fn enroll(args: EnrollArgs) -> anyhow::Result<()> {
    let Some(key) = args.key.as_deref() else {
        bail!(
            "--key (or OVERVISOR_API_KEY) is needed: an API key of the account that will own this host"
        );
    };
    let base = args.url.trim_end_matches('/');
    let url = reqwest::Url::parse(&format!("{base}/v1/servers/connect"))
        .with_context(|| format!("--url {base} is not a URL"))?;
    let hostname = args.hostname.clone().or_else(system_hostname);
    let ip_address = args
        .ip_address
        .clone()
        .or_else(|| route_source(&url).map(|ip| ip.to_string()));
    if hostname.is_none() && ip_address.is_none() {
        bail!("cannot tell this host's name or address; pass --hostname or --ip-address");
    }
    let fingerprint = host_key_fingerprint(args.host_key_file.as_deref())?;
    let body = json!({
        "hostname": hostname,
        "ip_address": ip_address,
        "port": args.port,
        "user": args.user,
        "host_key_fingerprint": fingerprint,
    });
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?
        .post(url.clone())
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("enrolment refused ({status}): {message}");
    }
    let connected: Connected =
        serde_json::from_str(&text).context("unexpected answer from the control plane")?;
    let key_line = check_key_line(&connected.authorized_keys)?;
    let (path, owner) = match &args.authorized_keys_file {
        Some(path) => (path.clone(), None),
        None => {
            let account = passwd_entry(&connected.automation_user)?;
            let path = account.home.join(".ssh").join("authorized_keys");
            (path, Some((account.uid, account.gid)))
        }
    };
    let added = install_key(&path, key_line, owner)
        .with_context(|| format!("installing the key in {}", path.display()))?;
    let host = &connected.host;
    println!(
        "{} host {} ({}) at {}:{}",
        if connected.created {
            "registered"
        } else {
            "updated"
        },
        host["name"].as_str().unwrap_or("?"),
        host["id"].as_str().unwrap_or("?"),
        host["address"].as_str().unwrap_or("?"),
        host["port"],
    );
    println!(
        "{} key for {} in {}",
        if added {
            "authorized"
        } else {
            "already authorized:"
        },
        connected.automation_user,
        path.display()
    );
    if host["host_key_fingerprint"].is_null() {
        println!("the host key is not confirmed yet: confirm it on the control plane");
    }
    Ok(())
}

fn system_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

/// The local address the kernel would use to reach the control plane (a
/// connected UDP socket sends nothing). Loopback says nothing useful.
fn route_source(url: &reqwest::Url) -> Option<IpAddr> {
    let target = (url.host_str()?, url.port_or_known_default()?)
        .to_socket_addrs()
        .ok()?
        .next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// OpenSSH's `SHA256:` fingerprint of a public key file, if there is one.
fn host_key_fingerprint(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let path = file.unwrap_or(Path::new(DEFAULT_HOST_KEY));
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // Only the default may be missing; a named file must exist.
        Err(e) if file.is_none() && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    fingerprint_of(&text)
        .map(Some)
        .with_context(|| format!("{} is not an OpenSSH public key", path.display()))
}

fn fingerprint_of(public_line: &str) -> anyhow::Result<String> {
    let blob = public_line
        .split_whitespace()
        .nth(1)
        .context("no key data")?;
    let raw = STANDARD.decode(blob).context("key data is not base64")?;
    Ok(format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(Sha256::digest(&raw))
    ))
}

/// The server's answer goes into `authorized_keys`, where options such as
/// `command=` would mean something: accept one plain key line only.
fn check_key_line(line: &str) -> anyhow::Result<&str> {
    let line = line.trim();
    let mut fields = line.split(' ');
    let kind = fields.next().unwrap_or_default();
    let blob = fields.next().unwrap_or_default();
    let plain_kind = kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-");
    if !plain_kind
        || blob.is_empty()
        || STANDARD.decode(blob).is_err()
        || line.chars().any(char::is_control)
    {
        bail!("the control plane sent something that is not a public key line");
    }
    Ok(line)
}

struct Account {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

fn passwd_entry(user: &str) -> anyhow::Result<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 7 && f[0] == user {
            return Ok(Account {
                uid: f[2].parse().context("bad uid in /etc/passwd")?,
                gid: f[3].parse().context("bad gid in /etc/passwd")?,
                home: PathBuf::from(f[5]),
            });
        }
    }
    bail!(
        "the automation user {user} does not exist here; create it first (e.g. useradd -m {user})"
    )
}

/// Appends `line` to `path` unless the same key is there already. Creates
/// the directory 0700 and the file 0600, owned by `owner` when given.
/// Returns whether the key was added.
fn install_key(path: &Path, line: &str, owner: Option<(u32, u32)>) -> anyhow::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, chown};

    let chown_to = |p: &Path| -> anyhow::Result<()> {
        if let Some((uid, gid)) = owner {
            chown(p, Some(uid), Some(gid)).with_context(|| format!("chown {}", p.display()))?;
        }
        Ok(())
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        chown_to(dir)?;
    }
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let key_of = |l: &str| -> Option<String> {
        let mut f = l.split_whitespace();
        Some(format!("{} {}", f.next()?, f.next()?))
    };
    let wanted = key_of(line);
    let present = existing
        .lines()
        .any(|l| key_of(l.trim()).is_some_and(|k| Some(k) == wanted));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    if !present {
        let mut text = String::new();
        if !existing.is_empty() && !existing.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    chown_to(path)?;
    Ok(!present)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBqYlAcA+Bcb5aTPWg51XU5U4fV9qf4X5BCONBjt0lRq";

    #[test]
    fn fingerprints_match_openssh() {
        // The lab host ovh1's key and what `ssh-keygen -lf` prints for it.
        assert_eq!(
            fingerprint_of(&format!("{KEY} ovh1\n")).ok().as_deref(),
            Some("SHA256:c3xeTobGH1oQCoS3EqFRAkB+t0EFix4JMOHxDARxeF8")
        );
        assert!(fingerprint_of("garbage").is_err());
    }

    fn hyperv_args(url: &str, user: &str) -> EnrollArgs {
        EnrollArgs {
            url: url.into(),
            kind: HostKind::Hyperv,
            key: Some("ovk_secret_never_printed".into()),
            user: user.into(),
            hostname: None,
            ip_address: Some("10.1.2.3".into()),
            port: 2222,
            authorized_keys_file: None,
            host_key_file: None,
        }
    }

    #[test]
    fn the_hyperv_script_carries_what_it_was_given_as_literals_and_no_key() {
        let script = hyperv_script(&hyperv_args("https://ov.example:8081/", "ovdeploy"))
            .expect("valid arguments");
        assert!(
            script.contains("$Url = 'https://ov.example:8081'\n"),
            "{script}"
        );
        assert!(script.contains("$User = 'ovdeploy'\n"));
        assert!(script.contains("$Port = 2222\n"));
        assert!(script.contains("$Address = '10.1.2.3'\n"));
        assert!(script.contains("kind = 'hyperv'"));
        assert!(script.contains("/v1/servers/connect"));
        assert!(!script.contains("{{"), "a placeholder is left");
        assert!(
            !script.contains("ovk_secret"),
            "the API key is read on the host"
        );
        // A quote in the URL cannot end the literal (the URL parser encodes it).
        let odd = hyperv_script(&hyperv_args("https://ov.example/a'b", "ovdeploy")).expect("a URL");
        let url_line = odd
            .lines()
            .find(|l| l.starts_with("$Url = "))
            .expect("the URL line");
        assert!(
            url_line == "$Url = 'https://ov.example/a%27b'"
                || url_line == "$Url = 'https://ov.example/a''b'",
            "{url_line}"
        );
        for (url, user) in [
            ("ftp://ov.example", "ovdeploy"),
            ("not a url", "ovdeploy"),
            ("https://ov.example", "o'neil"),
            ("https://ov.example", "-x"),
        ] {
            assert!(
                hyperv_script(&hyperv_args(url, user)).is_err(),
                "{url} {user}"
            );
        }
        let mut bad_ip = hyperv_args("https://ov.example", "ovdeploy");
        bad_ip.ip_address = Some("10.0.0.1; rm".into());
        assert!(hyperv_script(&bad_ip).is_err());
    }

    #[test]
    fn only_plain_key_lines_are_accepted() {
        assert!(check_key_line(&format!("{KEY} overvisor:alice\n")).is_ok());
        for bad in [
            format!("command=\"id\" {KEY}"),
            format!("{KEY}\n{KEY}"),
            "ssh-ed25519 not-base64!".to_owned(),
            String::new(),
        ] {
            assert!(check_key_line(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn installing_is_idempotent_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ssh").join("authorized_keys");
        assert!(install_key(&path, &format!("{KEY} a"), None).expect("first"));
        // The same key with another comment is the same key.
        assert!(!install_key(&path, &format!("{KEY} b"), None).expect("again"));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{KEY} a\n"));
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
        // A file without a final newline gets one before the new line.
        std::fs::write(&path, "ssh-ed25519 AAAA other").expect("write");
        assert!(install_key(&path, &format!("{KEY} a"), None).expect("append"));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("ssh-ed25519 AAAA other\n{KEY} a\n")
        );
    }
}
