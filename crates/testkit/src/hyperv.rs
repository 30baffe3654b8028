//! The lab's scripted Hyper-V hosts (`scripts/lab up --hyperv N`), for
//! tests: where they are, and how to steer their answers.
//!
//! A host's answer mode is shared by every test that uses the host, so a
//! test that changes it holds the host exclusively ([`HypervLabHost::exclusive`])
//! and every other test holds it shared ([`HypervLabHost::shared`]): nextest
//! runs tests as parallel processes, so the lock is a file lock.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

/// One scripted Hyper-V host.
#[derive(Debug, Clone, Deserialize)]
pub struct HypervLabHost {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub host_key_fingerprint: String,
    pub host_key_pub: String,
    pub netns: String,
    /// The stand-in's state: `state.json`, `control.json`, `events.jsonl`.
    pub home: PathBuf,
    #[serde(skip)]
    pub(crate) model: PathBuf,
}

/// Held while a test relies on (or changes) a host's answer mode.
#[derive(Debug)]
pub struct HostLock(#[expect(dead_code, reason = "held for its lock")] File);

impl HypervLabHost {
    fn lock_file(&self) -> File {
        let path = self.home.join("tests.lock");
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
    }

    /// For a test that needs the host to answer normally.
    pub fn shared(&self) -> HostLock {
        let f = self.lock_file();
        f.lock_shared().expect("lock the Hyper-V lab host");
        HostLock(f)
    }

    /// For a test that changes how the host answers (and sets it back to
    /// normal with [`Self::set_mode`] before it ends).
    pub fn exclusive(&self) -> HostLock {
        let f = self.lock_file();
        f.lock().expect("lock the Hyper-V lab host");
        HostLock(f)
    }

    fn model(&self, args: &[&str]) {
        let out = Command::new(&self.model)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.model.display()));
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.model.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `normal`, `quirks`, `stall` or `drop`; `seconds`: how long the
    /// host's Starting/Stopping/Saving states last.
    pub fn set_mode(&self, mode: &str, seconds: f64) {
        let home = self.home.to_string_lossy().into_owned();
        self.model(&["mode", &home, mode, &seconds.to_string()]);
    }

    /// The `POST /api/v1/hosts` body that registers this host: kind
    /// `hyperv`, pinned to its key, logging in with `client_key_pem` (the
    /// lab's key, which the host lets in).
    pub fn registration(&self, client_key_pem: &str) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "kind": "hyperv",
            "address": self.address,
            "port": self.port,
            "ssh_user": self.user,
            "host_key_fingerprint": self.host_key_fingerprint,
            "credential": {"private_key": client_key_pem},
        })
    }

    /// `count` more VMs (Off) named `prefix-NNN`; existing names are kept.
    pub fn add_vms(&self, prefix: &str, count: usize) {
        let home = self.home.to_string_lossy().into_owned();
        self.model(&["add", &home, prefix, &count.to_string()]);
    }
}
