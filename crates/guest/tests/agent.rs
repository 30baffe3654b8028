//! The agent binary against a host played by the test: over a UNIX socket
//! standing in for the virtio-serial port, and over KVP pool files. Every
//! refusal is reported with its reason and applies nothing; the genuine
//! payload is applied to a scratch root with the real `useradd` and
//! `chpasswd`; a second run does nothing, and a replayed nonce is refused.
//! Runs as root (useradd --root needs it), as the test suite does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use overvisor_provision::payload::{File, User};
use overvisor_provision::{
    DeploymentNonce, GuestIdentity, GuestKey, GuestMessage, GuestPublicKey, HostMessage,
    MAX_PAYLOAD_BYTES, Outcome, Payload, ProvisioningKey, SealedPayload, kvp, seal,
};
use uuid::Uuid;

const HASH: &str = "$6$Yx3d9Fv0$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ./abcdefghijklmnopqrstu";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv3lYxk0Ff2oA test@overvisor";

struct Guest {
    dir: tempfile::TempDir,
    cp: ProvisioningKey,
    identity: GuestIdentity,
}

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        for (file, text) in [
            ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("group", "root:x:0:\nusers:x:100:\n"),
            ("shadow", "root:*:19000:0:99999:7:::\n"),
            ("gshadow", "root:*::\n"),
            ("hosts", "127.0.0.1\tlocalhost\n127.0.1.1\told-name\n"),
        ] {
            std::fs::write(root.join("etc").join(file), text).unwrap();
        }
        let cp = ProvisioningKey::from_seed(&[42; 32]);
        let identity = GuestIdentity::new(Uuid::new_v4(), DeploymentNonce::generate(), cp.public());
        std::fs::write(dir.path().join("identity.json"), identity.to_json()).unwrap();
        Self { dir, cp, identity }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn agent(&self, channel: &[&str]) -> Child {
        let d = self.dir.path();
        Command::new(env!("CARGO_BIN_EXE_overvisor-guest"))
            .args(channel)
            .arg("--identity")
            .arg(d.join("identity.json"))
            .arg("--trusted-key")
            .arg(d.join("no-baked-key"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--root")
            .arg(self.root())
            .args(["--hello-every", "1", "--give-up", "120"])
            .spawn()
            .unwrap()
    }

    fn payload() -> Payload {
        Payload {
            hostname: "web-01".into(),
            users: vec![User {
                name: "olga".into(),
                password_hash: Some(HASH.into()),
                authorized_keys: vec![KEY.into()],
                sudo: true,
            }],
            files: vec![
                File {
                    path: "/etc/app/token".into(),
                    mode: 0o600,
                    content: b"t0ken".to_vec(),
                },
                // Large enough to need several KVP items.
                File {
                    path: "/etc/app/blob".into(),
                    mode: 0o644,
                    content: vec![b'z'; 2500],
                },
            ],
            network: None,
        }
    }

    fn seal_for(&self, cp: &ProvisioningKey, uuid: Uuid, to: &GuestPublicKey) -> SealedPayload {
        seal::seal(cp, uuid, self.identity.nonce, to, &Self::payload()).unwrap()
    }

    /// Every message a refused payload could have left: none.
    fn assert_nothing_applied(&self) {
        let root = self.root();
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(!passwd.contains("olga"), "{passwd}");
        assert!(!root.join("etc/app/token").exists());
        assert!(!root.join("etc/hostname").exists());
    }

    fn assert_applied(&self) {
        let root = self.root();
        let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
        assert!(shadow.contains(&format!("olga:{HASH}:")), "{shadow}");
        let keys = root.join("home/olga/.ssh/authorized_keys");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("{KEY}\n"));
        assert_eq!(mode(&keys), 0o600);
        assert_eq!(mode(&root.join("home/olga/.ssh")), 0o700);
        let token = root.join("etc/app/token");
        assert_eq!(std::fs::read(&token).unwrap(), b"t0ken");
        assert_eq!(mode(&token), 0o600);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "web-01\n"
        );
        let hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
        assert!(
            hosts.contains("127.0.1.1\tweb-01") && !hosts.contains("old-name"),
            "{hosts}"
        );
        let sudo = root.join("etc/sudoers.d/90-overvisor-olga");
        assert_eq!(mode(&sudo), 0o440);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn assert_root() {
    assert!(
        is_root(),
        "the agent tests need root (useradd --root), as the suite runs"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn exited(child: &mut Child) -> i32 {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < until, "the agent did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The host side of the socket: lines in, lines out.
struct Host {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Host {
    fn accept(listener: &UnixListener) -> Self {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Self {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn next(&mut self) -> GuestMessage {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        GuestMessage::decode(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// The guest's key from its hello.
    fn hello(&mut self) -> GuestPublicKey {
        match self.next() {
            GuestMessage::Hello {
                public_key: Some(k),
                ..
            } => k,
            other => panic!("not a hello with a key: {other:?}"),
        }
    }

    fn send(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
    }

    /// The next status, skipping the hellos in between.
    fn status(&mut self) -> Outcome {
        loop {
            if let GuestMessage::Status { outcome, .. } = self.next() {
                return outcome;
            }
        }
    }

    fn refused(&mut self, sealed: SealedPayload, because: &str) {
        self.send(&HostMessage::Sealed(sealed).encode());
        self.refused_line(because);
    }

    fn refused_line(&mut self, because: &str) {
        match self.status() {
            Outcome::Failed { reason } => assert!(reason.contains(because), "{reason}"),
            Outcome::Applied => panic!("applied what should be refused ({because})"),
        }
    }
}

#[test]
fn over_the_virtio_port_refusals_apply_nothing_and_the_genuine_payload_applies_once() {
    assert_root();
    let g = Guest::new();
    let sock = g.dir.path().join("port.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut agent = g.agent(&["--channel", "virtio", "--port", sock.to_str().unwrap()]);
    let mut host = Host::accept(&listener);
    let key = host.hello();
    let uuid = g.identity.vm_uuid;

    let mut tampered = g.seal_for(&g.cp, uuid, &key);
    tampered.ciphertext[5] ^= 0x40;
    host.refused(
        tampered,
        "not signed by the control plane's provisioning key",
    );
    let forger = ProvisioningKey::from_seed(&[1; 32]);
    host.refused(g.seal_for(&forger, uuid, &key), "not signed");
    let other = Uuid::new_v4();
    host.refused(
        g.seal_for(&g.cp, other, &key),
        &format!("is for VM {other}"),
    );
    let injected = GuestKey::generate();
    host.refused(
        g.seal_for(&g.cp, uuid, &injected.public()),
        "a key was substituted",
    );
    let mut oversized = g.seal_for(&g.cp, uuid, &key);
    oversized.ciphertext = vec![0; MAX_PAYLOAD_BYTES + 100];
    host.refused(oversized, "more than the limit");
    host.send("{\"type\":\"sealed\",\"v\":1}\n");
    host.refused_line("not a message");
    g.assert_nothing_applied();

    host.send(&HostMessage::Sealed(g.seal_for(&g.cp, uuid, &key)).encode());
    assert_eq!(host.status(), Outcome::Applied);
    assert_eq!(exited(&mut agent), 0);
    g.assert_applied();

    // Once applied, a later boot does not take anything again.
    let mut again = g.agent(&["--channel", "virtio", "--port", sock.to_str().unwrap()]);
    let mut host = Host::accept(&listener);
    assert!(matches!(
        host.next(),
        GuestMessage::Hello {
            public_key: None,
            state: overvisor_provision::GuestState::Applied,
            ..
        }
    ));
    assert_eq!(exited(&mut again), 0);
}

#[test]
fn a_replayed_nonce_is_refused_even_to_a_new_key() {
    assert_root();
    let g = Guest::new();
    // An earlier run opened this deployment's payload but did not finish.
    let state = g.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("state.json"),
        format!(
            "{{\"applied\": false, \"used_nonces\": [\"{}\"]}}",
            g.identity.nonce
        ),
    )
    .unwrap();
    let sock = g.dir.path().join("port.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut agent = g.agent(&["--channel", "virtio", "--port", sock.to_str().unwrap()]);
    let mut host = Host::accept(&listener);
    let key = host.hello();
    host.refused(g.seal_for(&g.cp, g.identity.vm_uuid, &key), "a replay");
    g.assert_nothing_applied();
    agent.kill().unwrap();
    let _ = agent.wait();
}

/// The pool files as the Hyper-V KVP daemon keeps them: the test writes
/// pool 0 (the host's items) and reads pool 1 (the guest's).
#[test]
fn over_kvp_pool_files_the_payload_travels_in_chunks() {
    assert_root();
    let g = Guest::new();
    let pools = g.dir.path().join("hyperv");
    std::fs::create_dir_all(&pools).unwrap();
    let pool0 = pools.join(".kvp_pool_0");
    let pool1 = pools.join(".kvp_pool_1");
    std::fs::write(
        &pool0,
        kvp::pool_write(&[], &[("unrelated".into(), "x".into())], None).unwrap(),
    )
    .unwrap();
    let mut agent = g.agent(&["--channel", "kvp", "--kvp-dir", pools.to_str().unwrap()]);
    let guest_says = |prefix: &str| -> Option<GuestMessage> {
        let pool = std::fs::read(&pool1).ok()?;
        let line = kvp::unchunk(prefix, &kvp::records_decode(&pool))?;
        Some(GuestMessage::decode(&line).unwrap())
    };
    let wait_for = |prefix: &str| -> GuestMessage {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(m) = guest_says(prefix) {
                return m;
            }
            assert!(Instant::now() < until, "no {prefix} in pool 1");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let GuestMessage::Hello {
        public_key: Some(key),
        ..
    } = wait_for(kvp::HELLO)
    else {
        panic!("no key in the hello");
    };
    let write_sealed = |sealed: SealedPayload| {
        let line = HostMessage::Sealed(sealed).encode();
        let items = kvp::chunk(kvp::SEALED, &line);
        assert!(items.len() > 2, "a payload takes several items");
        let old = std::fs::read(&pool0).unwrap();
        std::fs::write(
            &pool0,
            kvp::pool_write(&old, &items, Some(kvp::SEALED)).unwrap(),
        )
        .unwrap();
    };
    let other = Uuid::new_v4();
    write_sealed(g.seal_for(&g.cp, other, &key));
    match wait_for(kvp::STATUS) {
        GuestMessage::Status {
            outcome: Outcome::Failed { reason },
            ..
        } => assert!(reason.contains("is for VM"), "{reason}"),
        m => panic!("{m:?}"),
    }
    g.assert_nothing_applied();
    write_sealed(g.seal_for(&g.cp, g.identity.vm_uuid, &key));
    assert_eq!(exited(&mut agent), 0);
    assert!(matches!(
        guest_says(kvp::STATUS),
        Some(GuestMessage::Status {
            outcome: Outcome::Applied,
            ..
        })
    ));
    g.assert_applied();
}
