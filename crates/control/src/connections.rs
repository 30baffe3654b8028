//! The connection registry: ONE driver (over one SSH connection) per host,
//! shared by every request, job and event stream that touches the host.
//!
//! A driver is made lazily from the host row and a login key — the host's
//! own uploaded key, else the owner's SSH identity — with the host key
//! pinned to the recorded fingerprint. It is replaced when the host row
//! changes (update, delete, a mismatching host key), so an edit takes effect
//! on the next call without a restart. Drivers come from a [`DriverFactory`]
//! held in the application, so unit tests can put a fake there; integration
//! tests use the real lab.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use overvisor_hv::{
    ClientKey, ConnectGate, HostKeyPolicy, HvError, HypervDriver, Hypervisor, LibvirtDriver,
    PresentedHostKey, SshConfig, SshError, SshSession, probe_host_key,
};
use overvisor_model::host::HostSecret;
use overvisor_model::host::{Host, HostId, HostKeyFingerprint, HostKind};

use crate::authz::Authorized;
use crate::{App, AppError};

/// Limits of every host connection.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// TCP connect + handshake + login; also the probe's limit.
    pub connect_timeout: Duration,
    /// Deadline of one remote command.
    pub command_timeout: Duration,
    /// Keepalive period of every connection: three unanswered in a row and
    /// the connection counts as dead (a host gone from the network).
    pub keepalive_interval: Duration,
    /// Longest wait between reconnect attempts to a host that is down.
    pub backoff_max: Duration,
    /// SSH handshakes in flight at once across all hosts, so a restart
    /// with hundreds of hosts brings them up steadily (see [`ConnectGate`]).
    pub connects_in_flight: usize,
    /// Serial consoles open at once on one host; graphical ones get 4×.
    pub consoles_per_host: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            backoff_max: Duration::from_secs(10),
            connects_in_flight: 16,
            consoles_per_host: 4,
        }
    }
}

/// Makes drivers and probes host keys. The real one speaks SSH.
pub trait DriverFactory: Send + Sync {
    /// A driver for `host`, logging in with `key` and accepting only `pinned`.
    /// It connects lazily: this call does no I/O.
    fn driver(
        &self,
        host: &Host,
        pinned: HostKeyFingerprint,
        key: ClientKey,
    ) -> Result<Arc<dyn Hypervisor>, AppError>;

    /// The host key `address:port` presents, without logging in.
    fn probe<'a>(
        &'a self,
        address: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<PresentedHostKey, SshError>>;
}

/// Drivers over the SSH transport: libvirt and Hyper-V.
#[derive(Debug, Clone)]
pub struct SshDriverFactory {
    settings: ConnectionSettings,
    /// Shared by every host's session.
    gate: ConnectGate,
}

impl SshDriverFactory {
    pub fn new(settings: ConnectionSettings) -> Self {
        let gate = ConnectGate::new(settings.connects_in_flight);
        Self { settings, gate }
    }
}

impl Default for SshDriverFactory {
    fn default() -> Self {
        Self::new(ConnectionSettings::default())
    }
}

impl DriverFactory for SshDriverFactory {
    fn driver(
        &self,
        host: &Host,
        pinned: HostKeyFingerprint,
        key: ClientKey,
    ) -> Result<Arc<dyn Hypervisor>, AppError> {
        let mut cfg = SshConfig::new(
            host.address.clone(),
            host.port,
            host.ssh_user.clone(),
            key,
            HostKeyPolicy::Pinned(pinned),
        );
        cfg.connect_timeout = self.settings.connect_timeout;
        cfg.command_timeout = self.settings.command_timeout;
        cfg.keepalive_interval = self.settings.keepalive_interval;
        cfg.backoff_max = self.settings.backoff_max;
        cfg.connect_gate = Some(self.gate.clone());
        cfg.max_consoles = self.settings.consoles_per_host;
        cfg.max_tunnels = self.settings.consoles_per_host * 4;
        let ssh = SshSession::new(cfg);
        Ok(match host.kind {
            HostKind::Libvirt => Arc::new(LibvirtDriver::new(ssh, host.libvirt_uri.clone())),
            HostKind::Hyperv => Arc::new(HypervDriver::new(ssh)),
        })
    }

    fn probe<'a>(
        &'a self,
        address: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<PresentedHostKey, SshError>> {
        Box::pin(probe_host_key(address, port, self.settings.connect_timeout))
    }
}

struct Live {
    /// The host row the driver was made from; another one means a new driver.
    version: DateTime<Utc>,
    driver: Arc<dyn Hypervisor>,
}

/// The live drivers, one per host.
pub struct Connections {
    factory: Arc<dyn DriverFactory>,
    live: Mutex<HashMap<HostId, Live>>,
}

impl Connections {
    pub fn new(factory: Arc<dyn DriverFactory>) -> Self {
        Self {
            factory,
            live: Mutex::new(HashMap::new()),
        }
    }

    pub fn factory(&self) -> &dyn DriverFactory {
        self.factory.as_ref()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Live>> {
        // The map holds no invariant a panic could break half-way.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, host: &Host) -> Option<Arc<dyn Hypervisor>> {
        self.live()
            .get(&host.id)
            .filter(|l| l.version == host.updated_at)
            .map(|l| l.driver.clone())
    }

    /// Keeps `driver` unless a concurrent caller already stored one for the
    /// same host row, so there is only ever one connection per host.
    fn insert(&self, host: &Host, driver: Arc<dyn Hypervisor>) -> Arc<dyn Hypervisor> {
        let mut live = self.live();
        match live.get(&host.id) {
            Some(l) if l.version == host.updated_at => l.driver.clone(),
            _ => {
                live.insert(
                    host.id,
                    Live {
                        version: host.updated_at,
                        driver: driver.clone(),
                    },
                );
                driver
            }
        }
    }

    /// Drops the host's driver; its connection closes when the last call
    /// using it returns.
    pub fn forget(&self, host: HostId) {
        self.live().remove(&host);
    }

    /// How many hosts have a driver now.
    pub fn len(&self) -> usize {
        self.live().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl App {
    /// The shared driver of a host the caller was authorized for. Only the
    /// replica that owns a host connects to it: elsewhere (requests are
    /// forwarded to the owner) this is reached only while the host changes
    /// hands, and the caller is asked to retry.
    pub async fn host_driver(
        &self,
        host: &Authorized<Host>,
    ) -> Result<Arc<dyn Hypervisor>, AppError> {
        let host = host.get();
        if !self.replicas().owns(host.id) {
            return Err(AppError::Unavailable(format!(
                "host {} is being handed between replicas; retry in a moment",
                host.name
            )));
        }
        if let Some(driver) = self.connections().cached(host) {
            return Ok(driver);
        }
        let pinned = host.host_key_fingerprint.clone().ok_or_else(|| {
            AppError::Conflict(format!(
                "the SSH host key of {} is not confirmed yet: probe it (POST /api/v1/hosts/probe) \
                 and set host_key_fingerprint on the host",
                host.name
            ))
        })?;
        let key = self.host_login_key(host).await?;
        let driver = self.connections().factory().driver(host, pinned, key)?;
        Ok(self.connections().insert(host, driver))
    }

    /// The host's own private key, or else its owner's SSH identity.
    async fn host_login_key(&self, host: &Host) -> Result<ClientKey, AppError> {
        let unusable = |what: &str, e: SshError| {
            AppError::Internal(format!("{what} of host {} is unusable: {e}", host.id))
        };
        match self.store().host_secret(self.sealer(), host.id).await? {
            Some(HostSecret::PrivateKey(pem)) => {
                ClientKey::from_openssh(&pem).map_err(|e| unusable("the uploaded key", e))
            }
            Some(HostSecret::Password(_)) => Err(AppError::Conflict(
                "password logins are not supported by the SSH transport yet; upload a private key"
                    .into(),
            )),
            None => {
                let pem = self
                    .store()
                    .ssh_private_key(self.sealer(), host.owner)
                    .await?;
                let pem = String::from_utf8(pem)
                    .map_err(|_| AppError::Internal("SSH identity is not UTF-8".into()))?;
                ClientKey::from_openssh(&pem).map_err(|e| unusable("the owner's SSH identity", e))
            }
        }
    }

    /// Turns a driver error into the application's, naming the host. A host
    /// key mismatch met by this call also drops the connection, so the next
    /// call checks the key again (a key put back on the host is noticed at
    /// once); one behind another caller's backoff keeps it.
    pub fn host_error(&self, host: &Host, err: HvError) -> AppError {
        let name = &host.name;
        match err {
            HvError::NotFound(_) => AppError::NotFound("VM"),
            HvError::InvalidState { message, .. } => AppError::InvalidTransition(message),
            HvError::Timeout(after) => AppError::HostTimeout(format!(
                "host {name} did not answer within {} s",
                after.as_secs()
            )),
            // Met now, or by the attempt the session backs off from (another
            // caller, such as the inventory, connected first).
            HvError::Transport(ref e)
                if let Some((address, expected, presented)) = e.host_key_mismatch() =>
            {
                if matches!(e, SshError::HostKeyMismatch { .. }) {
                    self.connections().forget(host.id);
                }
                AppError::HostKeyMismatch {
                    address: address.to_owned(),
                    expected: expected.to_string(),
                    presented: presented.to_string(),
                }
            }
            HvError::Transport(SshError::Timeout { what, after, .. }) => {
                AppError::HostTimeout(format!(
                    "host {name}: `{what}` timed out after {} s",
                    after.as_secs()
                ))
            }
            HvError::Transport(SshError::ChannelsBusy { what, limit, .. }) => {
                AppError::TooManyConsoles(format!(
                    "host {name} already has {limit} {what} open, the most allowed \
                     (consoles_per_host); close one first"
                ))
            }
            HvError::Transport(e) => {
                AppError::HostUnreachable(format!("host {name} is unreachable: {e}"))
            }
            HvError::Host(message) => AppError::HostFailed(format!("host {name}: {message}")),
            HvError::Parse(message) => {
                AppError::HostFailed(format!("unexpected answer from host {name}: {message}"))
            }
            HvError::Unsupported(message) => AppError::Conflict(format!("host {name}: {message}")),
        }
    }

    /// Probes `address:port` for its host key.
    pub(crate) async fn probe_key(
        &self,
        address: &str,
        port: u16,
    ) -> Result<PresentedHostKey, AppError> {
        self.connections()
            .factory()
            .probe(address, port)
            .await
            .map_err(|e| match e {
                SshError::ConnectTimeout { addr, after } => AppError::HostTimeout(format!(
                    "no SSH answer from {addr} within {} s",
                    after.as_secs()
                )),
                e => AppError::HostUnreachable(format!("cannot read the host key: {e}")),
            })
    }
}
