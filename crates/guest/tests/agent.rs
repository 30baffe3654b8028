//! The agent binary against a host played by the test: over a UNIX socket
//! standing in for the virtio-serial port, and over KVP pool files. Every
//! refusal is reported with its reason and applies nothing; the genuine
//! payload is applied to a scratch root with the real `useradd` and
//! `chpasswd`; a second run does nothing, and a replayed nonce is refused.
//! Runs as root (useradd --root needs it), as the test suite does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::{Guest, assert_root, exited};
use overvisor_provision::{
    GuestKey, GuestMessage, GuestPublicKey, HostMessage, MAX_PAYLOAD_BYTES, Outcome,
    ProvisioningKey, SealedPayload, kvp,
};
use uuid::Uuid;

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
