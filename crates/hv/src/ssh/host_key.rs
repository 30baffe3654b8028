//! Which host keys a connection accepts: pinned fingerprints, trust on
//! first use, and what the server presented, for errors and for an
//! operator to confirm.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use overvisor_model::host::HostKeyFingerprint;
use russh::client;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::{HashAlg, PublicKey};
use tokio::time::timeout;

use super::SshError;

/// Which host key a connection accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Only this key; anything else is refused with
    /// [`SshError::HostKeyMismatch`].
    Pinned(HostKeyFingerprint),
    /// Accept the first key presented and pin it for the reconnects of this
    /// session. Only when an operator asked for it; the caller reads
    /// [`super::SshSession::host_key_fingerprint`] to record what was accepted.
    TrustOnFirstUse,
}

/// A host key as presented by a server, for an operator to confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedHostKey {
    pub fingerprint: HostKeyFingerprint,
    /// `ssh-ed25519 AAAA...`
    pub public_key: String,
}

fn presented_key(key: &PublicKeyOrCertificate) -> Option<PresentedHostKey> {
    let public = match key {
        PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
        PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
    };
    let fingerprint =
        HostKeyFingerprint::parse(&public.fingerprint(HashAlg::Sha256).to_string()).ok()?;
    Some(PresentedHostKey {
        fingerprint,
        public_key: public.to_openssh().ok()?,
    })
}

/// russh calls this during the handshake; it decides on the host key and
/// remembers what was presented so errors can say it.
pub(super) struct ClientHandler {
    /// `None` accepts any key (trust on first use, probing).
    expected: Option<HostKeyFingerprint>,
    /// Probing only looks at the key and never goes on to authenticate.
    reject_all: bool,
    presented: Arc<StdMutex<Option<PresentedHostKey>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let Some(presented) = presented_key(key) else {
            return Ok(false);
        };
        let ok = !self.reject_all
            && self
                .expected
                .as_ref()
                .is_none_or(|e| *e == presented.fingerprint);
        if let Ok(mut slot) = self.presented.lock() {
            *slot = Some(presented);
        }
        Ok(ok)
    }
}

/// One session's host-key policy across its reconnects, and the key its
/// host presented at the latest handshake.
pub(super) struct SessionHostKey {
    /// Trust on first use turns into `Pinned` after the first handshake.
    policy: StdMutex<HostKeyPolicy>,
    presented: Arc<StdMutex<Option<PresentedHostKey>>>,
}

impl SessionHostKey {
    pub(super) fn new(policy: HostKeyPolicy) -> Self {
        Self {
            policy: StdMutex::new(policy),
            presented: Arc::new(StdMutex::new(None)),
        }
    }

    pub(super) fn presented(&self) -> Option<PresentedHostKey> {
        self.presented.lock().ok().and_then(|p| p.clone())
    }

    /// The fingerprint the next handshake must present; `None` accepts any.
    pub(super) fn expected(&self) -> Result<Option<HostKeyFingerprint>, SshError> {
        match self.policy.lock() {
            Ok(p) => Ok(match &*p {
                HostKeyPolicy::Pinned(f) => Some(f.clone()),
                HostKeyPolicy::TrustOnFirstUse => None,
            }),
            // A poisoned lock means a panic elsewhere: fail closed.
            Err(_) => Err(SshError::Key("host key policy unavailable".into())),
        }
    }

    /// The handler for one handshake that accepts `expected` (see
    /// [`Self::expected`]).
    pub(super) fn handler(&self, expected: Option<HostKeyFingerprint>) -> ClientHandler {
        ClientHandler {
            expected,
            reject_all: false,
            presented: self.presented.clone(),
        }
    }

    /// What to report when the handshake refused the host key.
    pub(super) fn refused(&self, addr: String, expected: Option<HostKeyFingerprint>) -> SshError {
        let presented = self.presented().map(|k| k.fingerprint);
        match (expected, presented) {
            (Some(expected), Some(presented)) => SshError::HostKeyMismatch {
                addr,
                expected,
                presented,
            },
            _ => SshError::protocol(addr, russh::Error::UnknownKey),
        }
    }

    /// After a handshake that accepted any key: pin what we accepted, so a
    /// key change after first use is caught.
    pub(super) fn pin_presented(&self) {
        if let (Some(k), Ok(mut p)) = (self.presented(), self.policy.lock()) {
            *p = HostKeyPolicy::Pinned(k.fingerprint);
        }
    }
}

/// Connects to `host:port` only to read the host key it presents, without
/// authenticating: "this is the fingerprint, do you trust it?".
pub async fn probe_host_key(
    host: &str,
    port: u16,
    connect_timeout: Duration,
) -> Result<PresentedHostKey, SshError> {
    let addr = format!("{host}:{port}");
    let presented = Arc::new(StdMutex::new(None));
    let handler = ClientHandler {
        expected: None,
        reject_all: true,
        presented: presented.clone(),
    };
    let config = Arc::new(client::Config {
        nodelay: true,
        ..Default::default()
    });
    let result = timeout(
        connect_timeout,
        client::connect(config, (host, port), handler),
    )
    .await;
    let key = presented.lock().ok().and_then(|p| p.clone());
    match (result, key) {
        (_, Some(key)) => Ok(key),
        (Err(_), None) => Err(SshError::ConnectTimeout {
            addr,
            after: connect_timeout,
        }),
        (Ok(Err(russh::Error::IO(source))), None) => Err(SshError::connect(addr, source)),
        (Ok(Err(source)), None) => Err(SshError::protocol(addr, source)),
        (Ok(Ok(_)), None) => Err(SshError::Disconnected {
            addr,
            reason: "server presented no host key".into(),
        }),
    }
}
