//! Applies a checked payload to the system under `root` (`/` in a guest;
//! a scratch directory in tests): host name, accounts with their password
//! hash (`useradd`, `chpasswd -e`), authorized keys, sudo, files with
//! their modes, and a static address for ifupdown.
//!
//! Values were checked by `Payload::check` before they reach here: a user
//! name is a plain word, a path absolute without `..`, a hash one line.
//! Commands get them as separate arguments or on stdin, never through a
//! shell.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use overvisor_provision::Payload;
use overvisor_provision::payload::{Network, User};
use zeroize::Zeroizing;

/// What failed, in words that name no secret.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {why}")]
pub struct ApplyError {
    pub step: String,
    pub why: String,
}

fn failed(step: impl Into<String>, why: impl ToString) -> ApplyError {
    ApplyError {
        step: step.into(),
        why: why.to_string(),
    }
}

pub struct System {
    root: PathBuf,
}

impl System {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    fn live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `path` (absolute) under the root.
    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    pub fn apply(&self, p: &Payload) -> Result<(), ApplyError> {
        self.hostname(&p.hostname)?;
        for user in &p.users {
            self.user(user)?;
        }
        for f in &p.files {
            write_file(&self.at(&f.path), &f.content, f.mode, None)
                .map_err(|e| failed(format!("file {}", f.path), e))?;
        }
        if let Some(net) = &p.network {
            self.network(net)?;
        }
        Ok(())
    }

    fn hostname(&self, name: &str) -> Result<(), ApplyError> {
        let step = |e: std::io::Error| failed("hostname", e);
        write_file(
            &self.at("/etc/hostname"),
            format!("{name}\n").as_bytes(),
            0o644,
            None,
        )
        .map_err(step)?;
        let hosts_path = self.at("/etc/hosts");
        let hosts = std::fs::read_to_string(&hosts_path).unwrap_or_default();
        let short = name.split('.').next().unwrap_or(name);
        let entry = if short == name {
            format!("127.0.1.1\t{name}")
        } else {
            format!("127.0.1.1\t{name} {short}")
        };
        let mut lines: Vec<String> = hosts
            .lines()
            .filter(|l| !l.starts_with("127.0.1.1"))
            .map(str::to_owned)
            .collect();
        lines.push(entry);
        write_file(
            &hosts_path,
            (lines.join("\n") + "\n").as_bytes(),
            0o644,
            None,
        )
        .map_err(step)?;
        if self.live() {
            run("hostname", Command::new("hostname").arg(name), None)?;
        }
        Ok(())
    }

    /// `useradd`/`chpasswd` on this root.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        if !self.live() {
            c.arg("--root").arg(&self.root);
        }
        c
    }

    fn user(&self, u: &User) -> Result<(), ApplyError> {
        let step = |what: &str| format!("user {}: {what}", u.name);
        if passwd_entry(&self.at("/etc/passwd"), &u.name).is_none() {
            run(
                &step("useradd"),
                self.command("useradd")
                    .args(["--create-home", "--shell", "/bin/bash", "--"])
                    .arg(&u.name),
                None,
            )?;
        }
        let (uid, gid, home) = passwd_entry(&self.at("/etc/passwd"), &u.name)
            .ok_or_else(|| failed(step("useradd"), "the account is not in /etc/passwd"))?;
        if let Some(hash) = &u.password_hash {
            let line = Zeroizing::new(format!("{}:{hash}\n", u.name));
            run(
                &step("chpasswd"),
                self.command("chpasswd").arg("--encrypted"),
                Some(line.as_bytes()),
            )?;
        }
        if !u.authorized_keys.is_empty() {
            let ssh = self.at(&home).join(".ssh");
            let io = |e: std::io::Error| failed(step("authorized_keys"), e);
            std::fs::create_dir_all(&ssh).map_err(io)?;
            std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            std::os::unix::fs::chown(&ssh, Some(uid), Some(gid)).map_err(io)?;
            let keys = u.authorized_keys.join("\n") + "\n";
            write_file(
                &ssh.join("authorized_keys"),
                keys.as_bytes(),
                0o600,
                Some((uid, gid)),
            )
            .map_err(io)?;
        }
        if u.sudo {
            let rule = format!("{} ALL=(ALL) NOPASSWD:ALL\n", u.name);
            let path = self.at(&format!("/etc/sudoers.d/90-overvisor-{}", u.name));
            write_file(&path, rule.as_bytes(), 0o440, None).map_err(|e| failed(step("sudo"), e))?;
        }
        Ok(())
    }

    fn network(&self, n: &Network) -> Result<(), ApplyError> {
        let family = if n.address.contains(':') {
            "inet6"
        } else {
            "inet"
        };
        let mut text = format!(
            "# Written by overvisor-guest.\nauto {i}\niface {i} {family} static\n    address {a}\n",
            i = n.interface,
            a = n.address
        );
        if let Some(g) = &n.gateway {
            text.push_str(&format!("    gateway {g}\n"));
        }
        if !n.dns.is_empty() {
            text.push_str(&format!("    dns-nameservers {}\n", n.dns.join(" ")));
        }
        let path = self.at(&format!(
            "/etc/network/interfaces.d/60-overvisor-{}",
            n.interface
        ));
        write_file(&path, text.as_bytes(), 0o644, None).map_err(|e| failed("network", e))
    }
}

/// Writes `content` to `path` whole (a temporary file renamed over it),
/// with `mode` and, given, owner; parents are made as needed.
fn write_file(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".overvisor-tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
    }
    std::fs::rename(&tmp, path)
}

/// uid, gid and home of `name` in a passwd file.
fn passwd_entry(passwd: &Path, name: &str) -> Option<(u32, u32, String)> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == name)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?, f[5].to_owned())))?
    })
}

/// Runs a command; its failure names the step and its exit status, and
/// its stderr unless it was given a secret on stdin.
fn run(step: &str, cmd: &mut Command, stdin: Option<&[u8]>) -> Result<(), ApplyError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| failed(step, e))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data).map_err(|e| failed(step, e))?;
    }
    let out = child.wait_with_output().map_err(|e| failed(step, e))?;
    if out.status.success() {
        return Ok(());
    }
    let said = if stdin.is_some() {
        String::new()
    } else {
        format!(": {}", String::from_utf8_lossy(&out.stderr).trim())
    };
    Err(failed(step, format!("exited with {}{said}", out.status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_entries_are_read_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0::/root:/bin/sh\nolga:x:1001:1002::/home/olga:/bin/bash\n",
        )
        .expect("write");
        assert_eq!(
            passwd_entry(&p, "olga"),
            Some((1001, 1002, "/home/olga".into()))
        );
        assert_eq!(passwd_entry(&p, "olg"), None);
    }

    #[test]
    fn files_are_written_whole_with_their_mode() {
        let dir = tempfile::tempdir().expect("tmp");
        let sys = System::new(dir.path());
        let path = sys.at("/etc/app/secret");
        write_file(&path, b"x", 0o640, None).expect("write");
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert!(path.starts_with(dir.path()));
        assert_eq!(
            std::fs::read_dir(path.parent().expect("dir"))
                .expect("ls")
                .count(),
            1
        );
    }
}
