//! The SSH transport every driver uses: one pure-Rust connection per host,
//! shared by all work on that host.
//!
//! A handshake costs ~80 ms of CPU, so [`SshSession`] keeps the connection
//! and multiplexes channels over it (bounded by a semaphore, below OpenSSH's
//! `MaxSessions`). It pins host keys, reconnects with capped exponential
//! backoff when the connection drops, and puts a deadline on everything that
//! goes over the network. Remote commands are [`CommandLine`]s, so every
//! argument went through [`crate::quote`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use overvisor_model::host::HostKeyFingerprint;
use russh::client::{self, Handle};
use russh::keys::PrivateKeyWithHashAlg;
use russh::{ChannelMsg, Disconnect};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout};

use crate::quote::CommandLine;

mod channel;
mod host_key;
mod keys;

use channel::ClosingChannel;
pub use channel::{LineStream, PipedChannel, PtyChannel, PtyOutput, TcpTunnel};
use host_key::{ClientHandler, SessionHostKey};
pub use host_key::{HostKeyPolicy, PresentedHostKey, probe_host_key};
pub use keys::{ClientKey, generate_ed25519_identity};

/// How to reach one host, and the limits that apply to it.
#[derive(Debug, Clone)]
pub struct SshConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key: ClientKey,
    pub host_key: HostKeyPolicy,
    /// TCP connect + handshake + authentication.
    pub connect_timeout: Duration,
    /// Default deadline of one [`SshSession::exec`], waiting for a free
    /// channel included.
    pub command_timeout: Duration,
    /// Keepalives find a dead peer on an idle connection (and on a
    /// long-lived event channel that would otherwise wait forever).
    pub keepalive_interval: Duration,
    /// Unanswered keepalives after which the connection counts as dead.
    pub keepalive_max: usize,
    /// Session channels for commands (kept ones included: the event
    /// stream, the kept virsh) open at once; more wait for a turn. OpenSSH
    /// refuses more than `MaxSessions` (default 10) session channels per
    /// connection, so this plus `max_consoles` stays within it.
    pub max_channels: usize,
    /// Serial consoles (session channels too) open at once. They live as
    /// long as someone watches, so they have a share of their own: however
    /// many are open, commands still get their channels. One more is
    /// refused at once ([`SshError::ChannelsBusy`]) rather than queued.
    pub max_consoles: usize,
    /// `direct-tcpip` tunnels (graphical consoles) open at once; refused
    /// beyond like consoles. They are not session channels, so `MaxSessions`
    /// does not count them.
    pub max_tunnels: usize,
    /// `direct-streamlocal` channels to guest agents' sockets (a
    /// deployment's provisioning) open at once; refused beyond.
    pub max_guest_channels: usize,
    /// Per stream (stdout, stderr) of one exec; the rest is dropped and
    /// [`ExecOutput::truncated`] set.
    pub max_output_bytes: usize,
    /// First wait after a failed connect; doubled per failure up to
    /// `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Shared by every session of a fleet: bounds the handshakes in
    /// flight (see [`ConnectGate`]). `None`: this session is not bounded.
    pub connect_gate: Option<ConnectGate>,
}

/// A bound on SSH handshakes in flight across many sessions.
///
/// When a control plane (re)starts, every host's session connects at
/// once. Unbounded, hundreds of key exchanges share the CPU, every one of
/// them is slow, none finishes for seconds and some run into the connect
/// timeout and back off. Through a gate, hosts connect a few at a time and
/// come up steadily. The wait for a turn is not part of the connect
/// timeout: that deadline covers the handshake itself.
#[derive(Clone)]
pub struct ConnectGate(Arc<Semaphore>);

impl ConnectGate {
    /// At most `in_flight` handshakes at once (at least one).
    pub fn new(in_flight: usize) -> Self {
        Self(Arc::new(Semaphore::new(in_flight.max(1))))
    }

    /// Handshakes that could start right now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

impl fmt::Debug for ConnectGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectGate")
            .field("available", &self.available())
            .finish()
    }
}

impl SshConfig {
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        key: ClientKey,
        host_key: HostKeyPolicy,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            user: user.into(),
            key,
            host_key,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 3,
            max_channels: 6,
            max_consoles: 4,
            max_tunnels: 16,
            max_guest_channels: 16,
            max_output_bytes: 16 << 20,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_gate: None,
        }
    }

    /// `host:port`, for messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Everything that can go wrong on the way to a host and back. Cloneable (the
/// sources are shared) so a session can keep the failure it backs off from.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("no SSH session with {addr} within {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error(
        "host key of {addr} does not match the pinned one: expected {expected}, presented {presented}"
    )]
    HostKeyMismatch {
        addr: String,
        expected: HostKeyFingerprint,
        presented: HostKeyFingerprint,
    },
    #[error("{user}@{addr} did not accept our key")]
    AuthRejected { addr: String, user: String },
    /// The last attempt failed and the next is not due yet. The failure is
    /// kept typed, so a caller can still tell a changed host key apart.
    #[error("{addr} is unreachable (last error: {last_error}); next attempt in {retry_in:?}")]
    Backoff {
        addr: String,
        retry_in: Duration,
        last_error: Box<SshError>,
    },
    #[error("connection to {addr} lost: {reason}")]
    Disconnected { addr: String, reason: String },
    #[error("`{what}` on {addr} timed out after {after:?}")]
    Timeout {
        addr: String,
        what: String,
        after: Duration,
    },
    #[error("{addr} refused a channel: {reason}")]
    ChannelRefused { addr: String, reason: String },
    /// The share of channels for `what` is all in use (a console or tunnel
    /// beyond `limit`): refused at once, the connection is fine.
    #[error("{addr} already has {limit} {what} open, the most allowed; close one first")]
    ChannelsBusy {
        addr: String,
        what: &'static str,
        limit: usize,
    },
    #[error("invalid remote command: {0}")]
    InvalidCommand(&'static str),
    #[error("unusable client key: {0}")]
    Key(String),
    #[error("SSH protocol error with {addr}: {source}")]
    Protocol {
        addr: String,
        #[source]
        source: Arc<russh::Error>,
    },
}

impl SshError {
    pub(crate) fn connect(addr: String, source: std::io::Error) -> Self {
        Self::Connect {
            addr,
            source: Arc::new(source),
        }
    }

    pub(crate) fn protocol(addr: String, source: russh::Error) -> Self {
        Self::Protocol {
            addr,
            source: Arc::new(source),
        }
    }

    /// The host key mismatch behind this error, met now or by the attempt
    /// the session is backing off from: `(address, expected, presented)`.
    pub fn host_key_mismatch(&self) -> Option<(&str, &HostKeyFingerprint, &HostKeyFingerprint)> {
        match self {
            Self::HostKeyMismatch {
                addr,
                expected,
                presented,
            } => Some((addr, expected, presented)),
            Self::Backoff { last_error, .. } => last_error.host_key_mismatch(),
            _ => None,
        }
    }

    /// Whether the host could not be reached or talked to at all (as
    /// opposed to a command that ran and failed): the host is disconnected.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::ConnectTimeout { .. }
                | Self::Backoff { .. }
                | Self::Disconnected { .. }
                | Self::Protocol { .. }
        )
    }
}

/// What a command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `None` when the command died of a signal.
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    /// Output beyond [`SshConfig::max_output_bytes`] was dropped.
    pub truncated: bool,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

fn russh_config(cfg: &SshConfig) -> Arc<client::Config> {
    Arc::new(client::Config {
        keepalive_interval: Some(cfg.keepalive_interval),
        keepalive_max: cfg.keepalive_max,
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    })
}

type SshHandle = Handle<ClientHandler>;

#[derive(Default)]
struct ConnState {
    handle: Option<Arc<SshHandle>>,
    failures: u32,
    /// When the next attempt is due, and why the last one failed.
    retry: Option<(Instant, SshError)>,
}

struct Inner {
    cfg: SshConfig,
    addr: String,
    host_key: SessionHostKey,
    state: Mutex<ConnState>,
    channels: Arc<Semaphore>,
    consoles: Arc<Semaphore>,
    tunnels: Arc<Semaphore>,
    guests: Arc<Semaphore>,
}

/// Which share of the connection's channels a channel takes.
#[derive(Clone, Copy)]
enum Share {
    /// Commands wait for a free channel.
    Commands,
    /// Long-lived channels for viewers are refused when none is free.
    Consoles,
    Tunnels,
    /// Guest agents' sockets, refused like consoles.
    Guests,
}

/// A cloneable handle on the one connection to a host. Connects lazily (or
/// eagerly with [`SshSession::connect`]) and again after the connection
/// dropped, no sooner than the backoff allows.
#[derive(Clone)]
pub struct SshSession {
    inner: Arc<Inner>,
}

impl fmt::Debug for SshSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshSession")
            .field("addr", &self.inner.addr)
            .field("user", &self.inner.cfg.user)
            .finish_non_exhaustive()
    }
}

/// Where a session stands, for "host disconnected: why" displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStatus {
    pub connected: bool,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

impl SshSession {
    /// A session that connects on first use.
    pub fn new(cfg: SshConfig) -> Self {
        let addr = cfg.addr();
        let host_key = SessionHostKey::new(cfg.host_key.clone());
        let share = |n: usize| Arc::new(Semaphore::new(n.max(1)));
        Self {
            inner: Arc::new(Inner {
                addr,
                host_key,
                state: Mutex::new(ConnState::default()),
                channels: share(cfg.max_channels),
                consoles: share(cfg.max_consoles),
                tunnels: share(cfg.max_tunnels),
                guests: share(cfg.max_guest_channels),
                cfg,
            }),
        }
    }

    /// A session that is connected and authenticated on return.
    pub async fn connect(cfg: SshConfig) -> Result<Self, SshError> {
        let session = Self::new(cfg);
        session.handle().await?;
        Ok(session)
    }

    pub fn config(&self) -> &SshConfig {
        &self.inner.cfg
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The host key presented at the latest handshake.
    pub fn host_key(&self) -> Option<PresentedHostKey> {
        self.inner.host_key.presented()
    }

    pub fn host_key_fingerprint(&self) -> Option<HostKeyFingerprint> {
        self.host_key().map(|k| k.fingerprint)
    }

    pub async fn status(&self) -> ConnectionStatus {
        let st = self.inner.state.lock().await;
        ConnectionStatus {
            connected: st.handle.as_ref().is_some_and(|h| !h.is_closed()),
            last_error: st.retry.as_ref().map(|(_, e)| e.to_string()),
            consecutive_failures: st.failures,
        }
    }

    /// Command channels open right now on this connection (kept ones
    /// included; consoles and tunnels not).
    pub fn open_channels(&self) -> usize {
        self.in_use(Share::Commands)
    }

    /// Serial consoles open right now on this connection.
    pub fn open_consoles(&self) -> usize {
        self.in_use(Share::Consoles)
    }

    /// Tunnels open right now on this connection.
    pub fn open_tunnels(&self) -> usize {
        self.in_use(Share::Tunnels)
    }

    fn in_use(&self, share: Share) -> usize {
        let (semaphore, limit) = self.share(share);
        limit.max(1).saturating_sub(semaphore.available_permits())
    }

    fn share(&self, share: Share) -> (&Arc<Semaphore>, usize) {
        let (inner, cfg) = (&self.inner, &self.inner.cfg);
        match share {
            Share::Commands => (&inner.channels, cfg.max_channels),
            Share::Consoles => (&inner.consoles, cfg.max_consoles),
            Share::Tunnels => (&inner.tunnels, cfg.max_tunnels),
            Share::Guests => (&inner.guests, cfg.max_guest_channels),
        }
    }

    /// Closes the connection; the next call reconnects.
    pub async fn close(&self) {
        let handle = self.inner.state.lock().await.handle.take();
        if let Some(h) = handle {
            let _ = timeout(
                Duration::from_secs(2),
                h.disconnect(Disconnect::ByApplication, "closing", "en"),
            )
            .await;
        }
    }

    /// The live connection, connecting first if there is none and the
    /// backoff allows. Holding the lock while connecting makes concurrent
    /// callers share one attempt instead of stampeding the host.
    async fn handle(&self) -> Result<Arc<SshHandle>, SshError> {
        let mut st = self.inner.state.lock().await;
        if let Some(h) = &st.handle {
            if !h.is_closed() {
                return Ok(h.clone());
            }
            tracing::info!(addr = %self.inner.addr, "SSH connection dropped");
            st.handle = None;
        }
        if let Some((at, last_error)) = &st.retry {
            let now = Instant::now();
            if now < *at {
                return Err(SshError::Backoff {
                    addr: self.inner.addr.clone(),
                    retry_in: *at - now,
                    last_error: Box::new(last_error.clone()),
                });
            }
        }
        // Never closed, so acquiring only waits for a turn.
        let turn = match &self.inner.cfg.connect_gate {
            Some(gate) => gate.0.acquire().await.ok(),
            None => None,
        };
        let after = self.inner.cfg.connect_timeout;
        let result = match timeout(after, self.connect_once()).await {
            Ok(r) => r,
            Err(_) => Err(SshError::ConnectTimeout {
                addr: self.inner.addr.clone(),
                after,
            }),
        };
        drop(turn);
        match result {
            Ok(h) => {
                let h = Arc::new(h);
                if st.failures > 0 {
                    tracing::info!(addr = %self.inner.addr, "SSH reconnected");
                }
                *st = ConnState {
                    handle: Some(h.clone()),
                    ..ConnState::default()
                };
                Ok(h)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let cfg = &self.inner.cfg;
                let factor = 1u32 << st.failures.saturating_sub(1).min(16);
                let backoff = cfg
                    .backoff_initial
                    .saturating_mul(factor)
                    .min(cfg.backoff_max);
                tracing::warn!(addr = %self.inner.addr, error = %e, ?backoff, "SSH connect failed");
                st.retry = Some((Instant::now() + backoff, e.clone()));
                Err(e)
            }
        }
    }

    async fn connect_once(&self) -> Result<SshHandle, SshError> {
        let cfg = &self.inner.cfg;
        let addr = self.inner.addr.clone();
        let expected = self.inner.host_key.expected()?;
        let handler = self.inner.host_key.handler(expected.clone());
        let connected =
            client::connect(russh_config(cfg), (cfg.host.as_str(), cfg.port), handler).await;
        let mut handle = match connected {
            Ok(h) => h,
            Err(russh::Error::UnknownKey) => {
                return Err(self.inner.host_key.refused(addr, expected));
            }
            Err(russh::Error::IO(source)) => return Err(SshError::connect(addr, source)),
            Err(source) => return Err(SshError::protocol(addr, source)),
        };
        let hash = if cfg.key.private_key().algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(|source| SshError::protocol(addr.clone(), source))?
                .flatten()
        } else {
            None
        };
        let auth = handle
            .authenticate_publickey(
                cfg.user.clone(),
                PrivateKeyWithHashAlg::new(cfg.key.private_key().clone(), hash),
            )
            .await
            .map_err(|source| SshError::protocol(addr.clone(), source))?;
        if !auth.success() {
            return Err(SshError::AuthRejected {
                addr,
                user: cfg.user.clone(),
            });
        }
        if expected.is_none() {
            self.inner.host_key.pin_presented();
        }
        tracing::debug!(%addr, user = %cfg.user, "SSH connected");
        Ok(handle)
    }

    async fn channel_error(&self, h: &Arc<SshHandle>, e: russh::Error) -> SshError {
        let addr = self.inner.addr.clone();
        if h.is_closed() {
            let mut st = self.inner.state.lock().await;
            if st.handle.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, h)) {
                st.handle = None;
            }
            return SshError::Disconnected {
                addr,
                reason: e.to_string(),
            };
        }
        match e {
            russh::Error::ChannelOpenFailure(reason) => SshError::ChannelRefused {
                addr,
                reason: format!("{reason:?}"),
            },
            source => SshError::protocol(addr, source),
        }
    }

    async fn permit(&self, share: Share) -> Result<OwnedSemaphorePermit, SshError> {
        let (semaphore, limit) = self.share(share);
        let what = match share {
            Share::Commands => {
                return semaphore.clone().acquire_owned().await.map_err(|_| {
                    SshError::Disconnected {
                        addr: self.inner.addr.clone(),
                        reason: "session closed".into(),
                    }
                });
            }
            Share::Consoles => "serial consoles",
            Share::Tunnels => "console tunnels",
            Share::Guests => "guest agent channels",
        };
        semaphore
            .clone()
            .try_acquire_owned()
            .map_err(|_| SshError::ChannelsBusy {
                addr: self.inner.addr.clone(),
                what,
                limit: limit.max(1),
            })
    }

    fn timeout_error(&self, cmd: &CommandLine, after: Duration) -> SshError {
        // The program and first arguments identify the call; the rest may be long.
        let what = cmd
            .words()
            .iter()
            .take(4)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        SshError::Timeout {
            addr: self.inner.addr.clone(),
            what,
            after,
        }
    }

    /// Runs `cmd` with the default timeout and no input.
    pub async fn exec(&self, cmd: &CommandLine) -> Result<ExecOutput, SshError> {
        self.exec_with(cmd, None, self.inner.cfg.command_timeout)
            .await
    }

    /// Runs `cmd` feeding it `stdin` (e.g. an XML document or a secret that
    /// must not appear on a command line).
    pub async fn exec_with_stdin(
        &self,
        cmd: &CommandLine,
        stdin: &[u8],
    ) -> Result<ExecOutput, SshError> {
        self.exec_with(cmd, Some(stdin), self.inner.cfg.command_timeout)
            .await
    }

    /// Runs `cmd` with an explicit deadline, which covers waiting for a
    /// channel, the command itself and reading all of its output.
    pub async fn exec_with(
        &self,
        cmd: &CommandLine,
        stdin: Option<&[u8]>,
        deadline: Duration,
    ) -> Result<ExecOutput, SshError> {
        if cmd.has_nul() {
            return Err(SshError::InvalidCommand("NUL byte in an argument"));
        }
        let run = async {
            let _permit = self.permit(Share::Commands).await?;
            let h = self.handle().await?;
            let mut ch = match h.channel_open_session().await {
                Ok(ch) => ClosingChannel(Some(ch)),
                Err(e) => return Err(self.channel_error(&h, e).await),
            };
            let result = self.run_on(&mut ch, cmd, stdin).await;
            match result {
                Err(e) => Err(self.channel_error(&h, e).await),
                Ok(None) => Err(self
                    .lost(&h, "channel closed before the command finished")
                    .await),
                Ok(Some(out)) => Ok(out),
            }
        };
        match timeout(deadline, run).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout_error(cmd, deadline)),
        }
    }

    async fn lost(&self, h: &Arc<SshHandle>, reason: &str) -> SshError {
        if h.is_closed() {
            let mut st = self.inner.state.lock().await;
            if st.handle.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, h)) {
                st.handle = None;
            }
        }
        SshError::Disconnected {
            addr: self.inner.addr.clone(),
            reason: reason.into(),
        }
    }

    /// `Ok(None)`: the channel ended without an exit status.
    async fn run_on(
        &self,
        ch: &mut ClosingChannel,
        cmd: &CommandLine,
        stdin: Option<&[u8]>,
    ) -> Result<Option<ExecOutput>, russh::Error> {
        let max = self.inner.cfg.max_output_bytes;
        let ch = ch.get();
        // Counted so that what an operation costs a host can be measured.
        metrics::counter!("overvisor_ssh_commands_total", "mode" => "exec").increment(1);
        #[expect(
            clippy::disallowed_methods,
            reason = "the one exec of a quoted CommandLine"
        )]
        ch.exec(true, cmd.render()).await?;
        if let Some(data) = stdin {
            ch.data(data).await?;
        }
        // EOF even without input, so a command that reads stdin ends.
        ch.eof().await?;
        let mut out = ExecOutput::default();
        let mut finished = false;
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    append(&mut out.stdout, &data, max, &mut out.truncated)
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    append(&mut out.stderr, &data, max, &mut out.truncated)
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    out.exit_status = Some(exit_status);
                    finished = true;
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    out.exit_signal = Some(format!("{signal_name:?}"));
                    finished = true;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        Ok(finished.then_some(out))
    }

    /// Runs `cmd` on a pseudo-terminal (for `virsh console` and anything
    /// that must die with the channel: a remote process on a PTY gets
    /// SIGHUP when we go away, one without keeps running).
    pub async fn open_pty(
        &self,
        cmd: &CommandLine,
        cols: u32,
        rows: u32,
    ) -> Result<PtyChannel, SshError> {
        self.open_interactive(cmd, Some((cols, rows)), Share::Commands)
            .await
    }

    /// [`Self::open_pty`] for a console someone watches: it takes one of
    /// the `max_consoles`, not a command channel, and is refused at once
    /// when they are all open.
    pub async fn open_console(
        &self,
        cmd: &CommandLine,
        cols: u32,
        rows: u32,
    ) -> Result<PtyChannel, SshError> {
        self.open_interactive(cmd, Some((cols, rows)), Share::Consoles)
            .await
    }

    /// Runs `cmd` with its stdin and stdout kept open, without a terminal
    /// (so nothing is echoed or rewritten), for a remote program that reads
    /// requests on stdin and must end when its stdin closes, i.e. when the
    /// channel is dropped.
    pub async fn open_piped(&self, cmd: &CommandLine) -> Result<PipedChannel, SshError> {
        Ok(PipedChannel(
            self.open_interactive(cmd, None, Share::Commands).await?,
        ))
    }

    async fn open_interactive(
        &self,
        cmd: &CommandLine,
        pty: Option<(u32, u32)>,
        share: Share,
    ) -> Result<PtyChannel, SshError> {
        if cmd.has_nul() {
            return Err(SshError::InvalidCommand("NUL byte in an argument"));
        }
        let deadline = self.inner.cfg.command_timeout;
        let open = async {
            let permit = self.permit(share).await?;
            let h = self.handle().await?;
            let ch = match h.channel_open_session().await {
                Ok(ch) => ClosingChannel(Some(ch)),
                Err(e) => return Err(self.channel_error(&h, e).await),
            };
            metrics::counter!("overvisor_ssh_commands_total", "mode" => "interactive").increment(1);
            #[expect(
                clippy::disallowed_methods,
                reason = "the one interactive exec of a quoted CommandLine"
            )]
            let started = async {
                if let Some((cols, rows)) = pty {
                    ch.channel()
                        .request_pty(true, "xterm", cols, rows, 0, 0, &[])
                        .await?;
                }
                ch.channel().exec(true, cmd.render()).await
            };
            if let Err(e) = started.await {
                return Err(self.channel_error(&h, e).await);
            }
            Ok(PtyChannel {
                ch,
                _permit: permit,
                addr: self.inner.addr.clone(),
                unread: Vec::new(),
            })
        };
        match timeout(deadline, open).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout_error(cmd, deadline)),
        }
    }

    /// Runs a long-lived command on a PTY and hands back its output line by
    /// line (for `virsh event --loop`).
    pub async fn stream_lines(&self, cmd: &CommandLine) -> Result<LineStream, SshError> {
        // Wide, so the remote side does not wrap long lines.
        let pty = self.open_pty(cmd, 4096, 24).await?;
        Ok(LineStream::new(pty))
    }

    /// Runs a command without a terminal, whose stdin the caller writes
    /// (an image streamed to a file) and whose output it reads line by
    /// line. Dropping it closes the command's stdin.
    pub async fn piped_lines(&self, cmd: &CommandLine) -> Result<LineStream, SshError> {
        let pty = self.open_interactive(cmd, None, Share::Commands).await?;
        Ok(LineStream::new(pty))
    }

    /// A TCP connection from the host to `host:port` as seen from the host
    /// (e.g. a VNC server on its loopback), tunnelled over this session.
    pub async fn direct_tcpip(&self, host: &str, port: u16) -> Result<TcpTunnel, SshError> {
        let what = format!("direct-tcpip to {host}:{port}");
        self.tunnel(Share::Tunnels, what, |h| async move {
            h.channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
                .await
        })
        .await
    }

    /// A connection to the UNIX socket at `path` on the host (e.g. a guest
    /// agent's virtio-serial port), tunnelled over this session: nothing
    /// runs on the host for it.
    pub async fn direct_streamlocal(&self, path: &str) -> Result<TcpTunnel, SshError> {
        let what = format!("direct-streamlocal to {path}");
        self.tunnel(Share::Guests, what, |h| async move {
            h.channel_open_direct_streamlocal(path).await
        })
        .await
    }

    /// Opens a forwarding channel in `share`, within the command timeout.
    async fn tunnel<F, Fut>(
        &self,
        share: Share,
        what: String,
        open_channel: F,
    ) -> Result<TcpTunnel, SshError>
    where
        F: FnOnce(Arc<SshHandle>) -> Fut,
        Fut: std::future::Future<Output = Result<russh::Channel<russh::client::Msg>, russh::Error>>,
    {
        let deadline = self.inner.cfg.command_timeout;
        let open = async {
            let permit = self.permit(share).await?;
            let h = self.handle().await?;
            match open_channel(h.clone()).await {
                Ok(ch) => Ok(TcpTunnel {
                    stream: ch.into_stream(),
                    _permit: permit,
                }),
                Err(e) => Err(self.channel_error(&h, e).await),
            }
        };
        match timeout(deadline, open).await {
            Ok(r) => r,
            Err(_) => Err(SshError::Timeout {
                addr: self.inner.addr.clone(),
                what,
                after: deadline,
            }),
        }
    }
}

fn append(buf: &mut Vec<u8>, data: &[u8], max: usize, truncated: &mut bool) {
    let room = max.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_bounded() {
        let mut buf = Vec::new();
        let mut truncated = false;
        append(&mut buf, b"hello", 8, &mut truncated);
        assert!(!truncated);
        append(&mut buf, b"world", 8, &mut truncated);
        assert_eq!(buf, b"hellowor");
        assert!(truncated);
    }

    /// A TCP server that accepts connections and never speaks SSH, so each
    /// handshake lasts until the connect timeout; counts the connections.
    async fn silent_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        (port, accepted)
    }

    fn stalled_session(port: u16, gate: Option<ConnectGate>) -> SshSession {
        let mut cfg = SshConfig::new(
            "127.0.0.1",
            port,
            "nobody",
            ClientKey::from_seed_for_tests(),
            HostKeyPolicy::TrustOnFirstUse,
        );
        cfg.connect_timeout = Duration::from_millis(800);
        cfg.connect_gate = gate;
        SshSession::new(cfg)
    }

    #[tokio::test]
    async fn a_connect_gate_bounds_the_handshakes_in_flight() {
        let (port, accepted) = silent_server().await;
        let gate = ConnectGate::new(2);
        let sessions: Vec<SshSession> = (0..5)
            .map(|_| stalled_session(port, Some(gate.clone())))
            .collect();
        let attempts: Vec<_> = sessions
            .iter()
            .map(|s| {
                let s = s.clone();
                tokio::spawn(async move { s.handle().await.map(|_| ()) })
            })
            .collect();
        // Well inside the first two handshakes' timeout: only they started.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(gate.available(), 0);
        for attempt in attempts {
            let result = attempt.await.expect("join");
            assert!(
                matches!(result, Err(SshError::ConnectTimeout { .. })),
                "{result:?}"
            );
        }
        // Every session had its turn, and each turn was given back.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(gate.available(), 2);
    }

    #[tokio::test]
    async fn without_a_gate_every_session_connects_at_once() {
        let (port, accepted) = silent_server().await;
        let attempts: Vec<_> = (0..5)
            .map(|_| {
                let s = stalled_session(port, None);
                tokio::spawn(async move { s.handle().await.map(|_| ()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
        for attempt in attempts {
            assert!(attempt.await.expect("join").is_err());
        }
    }
}
