//! VM consoles in the application: tickets, the open console and its
//! audit row (the WebSocket that carries it is the server's).
//!
//! Console tickets are the first half of opening a VM's console. A caller
//! allowed to operate the VM's host gets a short-lived, single-use ticket
//! bound to them, the VM and the kind of console; the WebSocket that
//! carries the console redeems it. Tickets live only in this process's
//! memory (a ticket is redeemed within seconds, by the replica that issued
//! it) and only their SHA-256 is kept, so no secret sits in memory longer
//! than the answer that carries it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use overvisor_model::account::{Credential, UserId};
use overvisor_model::host::{HostId, HostKind};
use overvisor_model::vm::VmName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use overvisor_hv::{HvError, Hypervisor, SshError, TcpTunnel};
use overvisor_model::account::Outcome;
use overvisor_model::host::Host;
use overvisor_model::operation::vm_target;
use overvisor_model::vm::VmState;

use crate::audit::Target;
use crate::authz::{Action, Authorized, Subject};
use crate::credentials::{random_token, sha256};
use crate::events::{CredentialWatch, PresentedCredential, StreamEnd};
use crate::{App, AppError};

pub mod shared;

use shared::Viewer;
pub use shared::{ControlView, NotTyped, SerialHub, ViewerOutput};

/// How long a ticket may wait to be redeemed (the issue's bound is 30 s).
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// Tickets one user may hold unredeemed at once; more are refused, so a
/// client in a loop cannot grow the table without bound.
const PENDING_PER_USER: usize = 16;

/// Which console of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleKind {
    /// The guest's serial line (`virsh console`).
    Serial,
    /// The guest's graphical display (its VNC listener on the host).
    Vnc,
}

impl ConsoleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleKind::Serial => "serial",
            ConsoleKind::Vnc => "vnc",
        }
    }
}

/// What a ticket allows: one console of one VM, for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleGrant {
    pub user: UserId,
    /// The credential that asked for the ticket: revoking it ends the console.
    pub credential: Credential,
    pub host: HostId,
    pub vm: VmName,
    pub kind: ConsoleKind,
}

/// A freshly issued ticket (the secret is shown once, in the answer).
#[derive(Debug)]
pub struct IssuedTicket {
    pub ticket: String,
    pub expires_in: Duration,
}

/// Why a ticket was refused. One message for every case, so a caller
/// learns nothing about other users' tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefused {
    #[error("console ticket unknown, already used or expired; ask for a new one")]
    Invalid,
    #[error("too many unused console tickets; open or let expire the ones asked for")]
    TooMany,
}

struct Pending {
    grant: ConsoleGrant,
    expires: Instant,
}

/// The unredeemed tickets, keyed by the SHA-256 of the secret.
#[derive(Default)]
pub struct ConsoleTickets {
    pending: Mutex<HashMap<Vec<u8>, Pending>>,
}

impl ConsoleTickets {
    /// Issues a ticket for `grant`, valid until `now + TICKET_TTL`.
    pub fn issue(&self, grant: ConsoleGrant, now: Instant) -> Result<IssuedTicket, TicketRefused> {
        let ticket = random_token(32);
        let mut pending = self.lock();
        pending.retain(|_, p| p.expires > now);
        let held = pending
            .values()
            .filter(|p| p.grant.user == grant.user)
            .count();
        if held >= PENDING_PER_USER {
            return Err(TicketRefused::TooMany);
        }
        pending.insert(
            sha256(ticket.as_bytes()),
            Pending {
                grant,
                expires: now + TICKET_TTL,
            },
        );
        Ok(IssuedTicket {
            ticket,
            expires_in: TICKET_TTL,
        })
    }

    /// Redeems `ticket` for `user` authenticated with `credential`: it is
    /// gone afterwards whatever the outcome, so a ticket presented twice,
    /// late, or by someone else (or with another key) never opens a console.
    pub fn redeem(
        &self,
        ticket: &str,
        user: UserId,
        credential: &Credential,
        now: Instant,
    ) -> Result<ConsoleGrant, TicketRefused> {
        let found = self.lock().remove(&sha256(ticket.as_bytes()));
        match found {
            Some(p)
                if p.expires > now && p.grant.user == user && &p.grant.credential == credential =>
            {
                Ok(p.grant)
            }
            _ => Err(TicketRefused::Invalid),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Pending>> {
        // A panic while holding the lock cannot leave the map half-changed
        // (every change is one call), so a poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl App {
    /// Issues a console ticket for `vm` on `host`: operators of the host
    /// (and admins) only; a VM the caller may not see is a 404, as is one
    /// the host does not have.
    pub async fn console_ticket(
        &self,
        subject: &Subject,
        host: HostId,
        vm: &VmName,
        kind: ConsoleKind,
    ) -> Result<IssuedTicket, AppError> {
        let authorized = self
            .host_authorized(subject, host, Action::Operate, AUDIT_ACTION)
            .await?;
        if authorized.get().kind == HostKind::Hyperv {
            return Err(AppError::Conflict(match kind {
                ConsoleKind::Serial => overvisor_hv::hyperv::NO_SERIAL_CONSOLE.into(),
                ConsoleKind::Vnc => "Hyper-V VMs have no VNC display; use VMConnect or RDP".into(),
            }));
        }
        let driver = self.console_vm_running(&authorized, vm).await?;
        self.console_room(authorized.get(), driver.as_ref(), vm, kind)?;
        let grant = ConsoleGrant {
            user: subject.id(),
            credential: subject.credential.clone(),
            host,
            vm: vm.clone(),
            kind,
        };
        let issued = self
            .console_tickets()
            .issue(grant, Instant::now())
            .map_err(|e| AppError::Conflict(e.to_string()))?;
        Ok(IssuedTicket {
            ticket: format!("{}.{}", self.replicas().id(), issued.ticket),
            ..issued
        })
    }

    /// Where a console's socket must be relayed to: the API of the replica
    /// that issued `ticket`, when that is not this one (several replicas:
    /// the console's PTY or tunnel lives on the owner of its host). A
    /// ticket from a replica that is gone is refused as unknown.
    pub async fn console_issued_elsewhere(&self, ticket: &str) -> Result<Option<String>, AppError> {
        let (Some(issuer), _) = ticket_parts(ticket) else {
            return Ok(None);
        };
        if issuer == self.replicas().id() {
            return Ok(None);
        }
        match self.replica_address(issuer).await? {
            Some(address) => address.api.map(Some).ok_or_else(|| {
                AppError::Unavailable(format!("replica {issuer} announced no replica_url"))
            }),
            None => Err(TicketRefused::Invalid.into()),
        }
    }
}

/// A ticket is `<issuing replica>.<secret>`; only the secret is kept.
fn ticket_parts(ticket: &str) -> (Option<&str>, &str) {
    match ticket.split_once('.') {
        Some((issuer, secret)) => (Some(issuer), secret),
        None => (None, ticket),
    }
}

/// The audit action of a console session (and of a refused request).
const AUDIT_ACTION: &str = "vm.console";

/// Who has a console open and what keeps it honest; the same for every
/// kind. Closed with [`App::console_closed`], which audits it.
pub struct ConsoleSession {
    /// Ends the console when the credential that opened it stops being valid.
    watch: CredentialWatch,
    /// Who opened it, kept fresh by `watch`.
    subject: Subject,
    pub grant: ConsoleGrant,
    target: Target,
    started: Instant,
    started_at: DateTime<Utc>,
}

impl ConsoleSession {
    /// Resolves when the credential that opened the console stops being
    /// valid (or the role changes). Cancel-safe.
    pub async fn revoked(&mut self) -> ConsoleEnd {
        ConsoleEnd::Credentials(self.watch.ended(&mut self.subject).await)
    }
}

/// A console just opened, of the kind its ticket named.
pub enum OpenConsole {
    Serial(SerialConsole),
    Vnc(VncConsole),
}

/// One viewer of a VM's serial console (shared with its other viewers).
pub struct SerialConsole {
    viewer: Viewer,
    pub session: ConsoleSession,
}

/// A VM's graphical display: a tunnel to its VNC server on the host's
/// loopback, one per viewer (VNC servers share a display themselves).
pub struct VncConsole {
    pub tunnel: TcpTunnel,
    pub session: ConsoleSession,
}

/// Why a console session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// The viewer closed it.
    ClientClosed,
    /// The domain stopped (the console program on the host ended).
    DomainStopped,
    /// The host's connection broke.
    HostDisconnected,
    /// The viewer did not read fast enough; its queue was full.
    ClientTooSlow,
    /// The credential stopped being valid, or the role changed.
    Credentials(StreamEnd),
}

impl ConsoleEnd {
    /// A stable machine-readable reason.
    pub fn code(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::DomainStopped => "domain_stopped",
            Self::HostDisconnected => "host_disconnected",
            Self::ClientTooSlow => "client_too_slow",
            Self::Credentials(end) => end.code(),
        }
    }

    /// What the viewer is told (fits a WebSocket close frame).
    pub fn message(self) -> &'static str {
        match self {
            Self::ClientClosed => "console closed",
            Self::DomainStopped => "the VM stopped; its console is closed",
            Self::HostDisconnected => "the connection to the host was lost",
            Self::ClientTooSlow => "the console output was not read fast enough",
            Self::Credentials(end) => end.message(),
        }
    }
}

impl SerialConsole {
    /// The console's next output or change of control; the end once the
    /// domain stopped, the host went away or the credential that opened it
    /// stopped being valid. Cancel-safe.
    pub async fn read(&mut self) -> Result<ViewerOutput, ConsoleEnd> {
        tokio::select! {
            // A revocation wins over output already waiting.
            biased;
            end = self.session.revoked() => Err(end),
            output = self.viewer.read() => output,
        }
    }

    /// For a bridge holding off reading while its viewer's socket drains:
    /// resolves once the viewer fell too far behind or the credential that
    /// opened the console stopped being valid. Cancel-safe.
    pub async fn fallen_behind(&mut self) -> ConsoleEnd {
        tokio::select! {
            biased;
            end = self.session.revoked() => end,
            end = self.viewer.fallen_behind() => end,
        }
    }

    /// Types `data` on the console if this viewer is in control.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), NotTyped> {
        self.viewer.write(data).await
    }

    /// This viewer's terminal size (the guest's while it is in control).
    pub async fn resize(&mut self, cols: u32, rows: u32) -> Result<(), ConsoleEnd> {
        self.viewer.resize(cols, rows).await
    }

    /// Takes control of the keyboard from whoever had it.
    pub async fn take_control(&mut self) -> Result<(), ConsoleEnd> {
        self.viewer.take_control().await
    }

    /// Where control is now.
    pub fn control_view(&self) -> ControlView {
        self.viewer.control_view()
    }

    /// Leaves the console (the PTY closes with its last viewer).
    pub fn leave(self) -> ConsoleSession {
        self.session
    }
}

/// Counted over a session; never its content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleTraffic {
    /// Bytes the viewer sent to the VM.
    pub to_vm: u64,
    /// Bytes the VM sent to the viewer.
    pub from_vm: u64,
}

impl App {
    /// Opens the console `ticket` stands for, for `subject` who
    /// authenticated with `presented`. The ticket is spent first; the
    /// host is authorized again (the role may have changed since).
    /// `size` is the viewer's terminal (serial consoles only).
    pub async fn console_open(
        &self,
        subject: &Subject,
        ticket: &str,
        presented: PresentedCredential,
        size: (u32, u32),
    ) -> Result<OpenConsole, AppError> {
        let grant = self.console_tickets().redeem(
            ticket_parts(ticket).1,
            subject.id(),
            &subject.credential,
            Instant::now(),
        )?;
        let watch = self.credential_watch(subject, presented)?;
        let authorized = self
            .host_authorized(subject, grant.host, Action::Operate, AUDIT_ACTION)
            .await?;
        let driver = self.console_vm_running(&authorized, &grant.vm).await?;
        let session = ConsoleSession {
            watch,
            subject: subject.clone(),
            target: Target::named(vm_target(grant.host, &grant.vm), authorized.get().owner),
            grant,
            started: Instant::now(),
            started_at: Utc::now(),
        };
        let vm = session.grant.vm.clone();
        let host_error = |e| self.host_error(authorized.get(), e);
        Ok(match session.grant.kind {
            ConsoleKind::Serial => {
                let (cols, rows) = size;
                let open = async { driver.serial_console(&vm, cols, rows).await };
                let viewer = self
                    .inner
                    .serial_consoles
                    .join(
                        (session.grant.host, vm.clone()),
                        subject.user.name.as_str(),
                        size,
                        open,
                    )
                    .await
                    .map_err(host_error)?;
                OpenConsole::Serial(SerialConsole { viewer, session })
            }
            ConsoleKind::Vnc => {
                let libvirt = driver.as_libvirt().ok_or_else(|| {
                    AppError::Conflict("this host has no graphical console".into())
                })?;
                let tunnel = libvirt.vnc_tunnel(&vm).await.map_err(host_error)?;
                OpenConsole::Vnc(VncConsole { tunnel, session })
            }
        })
    }

    /// Audits a console session that ended: one row, with who, which VM,
    /// from where, how long and how many bytes each way.
    pub async fn console_closed(
        &self,
        session: ConsoleSession,
        end: ConsoleEnd,
        traffic: ConsoleTraffic,
    ) {
        let ConsoleSession {
            subject,
            grant,
            target,
            started,
            started_at,
            ..
        } = session;
        metrics::counter!("overvisor_consoles_ended_total", "reason" => end.code()).increment(1);
        let detail = format!(
            "kind={} started={} duration_ms={} bytes_to_vm={} bytes_from_vm={} end={}",
            grant.kind.as_str(),
            started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            started.elapsed().as_millis(),
            traffic.to_vm,
            traffic.from_vm,
            end.code(),
        );
        self.audit(
            &subject,
            AUDIT_ACTION,
            target,
            Outcome::Success,
            Some(detail),
        )
        .await;
    }

    /// The host's driver, once `vm` is known to run (a console of a VM that
    /// does not is a 409; one the host does not have, a 404).
    /// Refuses a ticket the host cannot honour now (its share of consoles
    /// is all open), so the viewer hears why before opening a socket.
    /// Opening checks again: this only saves a round trip.
    fn console_room(
        &self,
        host: &Host,
        driver: &dyn Hypervisor,
        vm: &VmName,
        kind: ConsoleKind,
    ) -> Result<(), AppError> {
        let Some(ssh) = driver.as_libvirt().map(|l| l.ssh()) else {
            return Ok(());
        };
        let (open, limit, what) = match kind {
            ConsoleKind::Serial if self.inner.serial_consoles.is_open(&(host.id, vm.clone())) => {
                return Ok(());
            }
            ConsoleKind::Serial => (
                ssh.open_consoles(),
                ssh.config().max_consoles,
                "serial consoles",
            ),
            ConsoleKind::Vnc => (
                ssh.open_tunnels(),
                ssh.config().max_tunnels,
                "console tunnels",
            ),
        };
        if open < limit {
            return Ok(());
        }
        let busy = SshError::ChannelsBusy {
            addr: ssh.addr().to_owned(),
            what,
            limit,
        };
        Err(self.host_error(host, HvError::Transport(busy)))
    }

    async fn console_vm_running(
        &self,
        host: &Authorized<Host>,
        vm: &VmName,
    ) -> Result<Arc<dyn Hypervisor>, AppError> {
        let driver = self.host_driver(host).await?;
        let state = driver
            .vm_state(vm)
            .await
            .map_err(|e| self.host_error(host.get(), e))?;
        if state != VmState::Running {
            return Err(AppError::InvalidTransition(format!(
                "VM {vm} is {}: its console opens while it runs",
                state.as_str()
            )));
        }
        Ok(driver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(user: UserId) -> ConsoleGrant {
        ConsoleGrant {
            user,
            credential: Credential::System,
            host: HostId::new(),
            vm: VmName::parse("web 01 é").expect("a host-given name with a space"),
            kind: ConsoleKind::Serial,
        }
    }

    #[test]
    fn a_ticket_opens_once_for_its_user_only() {
        let tickets = ConsoleTickets::default();
        let (alice, bob) = (UserId::new(), UserId::new());
        let now = Instant::now();
        let issued = tickets.issue(grant(alice), now).expect("issued");
        assert_eq!(
            tickets
                .redeem(&issued.ticket, alice, &Credential::System, now)
                .map(|g| g.user),
            Ok(alice)
        );
        assert_eq!(
            tickets.redeem(&issued.ticket, alice, &Credential::System, now),
            Err(TicketRefused::Invalid)
        );

        let stolen = tickets.issue(grant(alice), now).expect("issued");
        assert_eq!(
            tickets.redeem(&stolen.ticket, bob, &Credential::System, now),
            Err(TicketRefused::Invalid)
        );
        // Presented by the wrong user, it is spent for the right one too.
        assert_eq!(
            tickets.redeem(&stolen.ticket, alice, &Credential::System, now),
            Err(TicketRefused::Invalid)
        );
    }

    #[test]
    fn a_ticket_expires() {
        let tickets = ConsoleTickets::default();
        let user = UserId::new();
        let now = Instant::now();
        let issued = tickets.issue(grant(user), now).expect("issued");
        assert!(issued.expires_in <= Duration::from_secs(30));
        let late = now + TICKET_TTL;
        assert_eq!(
            tickets.redeem(&issued.ticket, user, &Credential::System, late),
            Err(TicketRefused::Invalid)
        );
        assert_eq!(
            tickets.redeem("not-a-ticket", user, &Credential::System, now),
            Err(TicketRefused::Invalid)
        );
    }

    #[test]
    fn unused_tickets_are_bounded_per_user() {
        let tickets = ConsoleTickets::default();
        let user = UserId::new();
        let now = Instant::now();
        for _ in 0..PENDING_PER_USER {
            tickets.issue(grant(user), now).expect("within the bound");
        }
        assert!(matches!(
            tickets.issue(grant(user), now),
            Err(TicketRefused::TooMany)
        ));
        // Another user is not held back, and expired tickets free the slots.
        tickets
            .issue(grant(UserId::new()), now)
            .expect("other user");
        tickets
            .issue(grant(user), now + TICKET_TTL)
            .expect("expired ones pruned");
    }
}
