//! The interface every hypervisor driver implements, so the control layer
//! can hold `Arc<dyn Hypervisor>` per host without knowing whether libvirt
//! or Hyper-V sits behind it (and tests can put a fake there).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use overvisor_model::host::HostFacts;
use overvisor_model::metrics::HostReading;
use overvisor_model::vm::{VmAction, VmEvent, VmInfo, VmName, VmState, VmSummary};

use uuid::Uuid;

use crate::ssh::{PtyChannel, SshError};

/// Why a driver call failed, in terms the API can answer with.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// No such VM on that host (→ 404).
    #[error("VM {0} not found")]
    NotFound(String),
    /// The VM is in a state where this action makes no sense (→ 409).
    #[error("cannot {action:?} VM {vm}: {message}")]
    InvalidState {
        vm: String,
        action: VmAction,
        message: String,
    },
    /// The host answered, but not in time (→ 504).
    #[error("host did not answer within {0:?}")]
    Timeout(Duration),
    /// The host could not be reached or the connection broke (→ 502/503;
    /// the host is flagged disconnected).
    #[error(transparent)]
    Transport(SshError),
    /// The host refused or failed the operation for another reason; the
    /// message is the host's own.
    #[error("host error: {0}")]
    Host(String),
    /// The host answered something we could not understand.
    #[error("unexpected answer from host: {0}")]
    Parse(String),
    /// This kind of hypervisor has no such feature (→ 409); says what.
    #[error("{0}")]
    Unsupported(String),
}

impl From<SshError> for HvError {
    fn from(e: SshError) -> Self {
        match e {
            SshError::Timeout { after, .. } => Self::Timeout(after),
            e => Self::Transport(e),
        }
    }
}

pub type HvResult<T> = Result<T, HvError>;

/// Guest addresses by VM: each VM asked for, with what the host knows
/// (possibly nothing).
pub type VmAddresses = Vec<(Uuid, Vec<String>)>;

/// Whether a guest's address says where it can be reached: not loopback,
/// not IPv6 link-local, and an address at all.
pub fn reachable_address(ip: &str) -> bool {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => !v6.is_loopback() && !v6.is_unicast_link_local(),
        Ok(std::net::IpAddr::V4(v4)) => !v4.is_loopback(),
        Err(_) => false,
    }
}

/// One hypervisor host, as the control plane drives it.
///
/// Methods return boxed futures so the trait stays object-safe. VMs are
/// addressed by [`VmName`], which also accepts a UUID.
pub trait Hypervisor: Send + Sync {
    fn list_vms(&self) -> BoxFuture<'_, HvResult<Vec<VmSummary>>>;

    fn vm_info<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<VmInfo>>;

    /// The guest addresses of each of `vms` (running VMs, by UUID), read in
    /// one batch over the host's connection; an empty list where the host
    /// knows none. What the inventory keeps, so lists show addresses
    /// without asking hosts.
    fn vm_addresses<'a>(&'a self, vms: &'a [Uuid]) -> BoxFuture<'a, HvResult<VmAddresses>>;

    fn vm_state<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<VmState>>;

    /// Runs a lifecycle action. [`VmAction::Delete`] keeps the disks; use
    /// [`Hypervisor::undefine`] to choose.
    fn act<'a>(&'a self, vm: &'a VmName, action: VmAction) -> BoxFuture<'a, HvResult<()>>;

    fn undefine<'a>(&'a self, vm: &'a VmName, with_storage: bool) -> BoxFuture<'a, HvResult<()>>;

    fn host_facts(&self) -> BoxFuture<'_, HvResult<HostFacts>>;

    /// Usage counters of the host and all its VMs, read together (one
    /// round of commands per call, for the usage graphs).
    fn sample(&self) -> BoxFuture<'_, HvResult<HostReading>>;

    /// Lifecycle events as the host reports them. The stream ends (after an
    /// error item) when the connection breaks; the caller resubscribes and
    /// resyncs, because events missed in between are lost.
    fn events(&self) -> BoxFuture<'_, HvResult<BoxStream<'static, HvResult<VmEvent>>>>;

    /// The libvirt driver behind this host, for what only libvirt hosts do
    /// yet (deployments); `None` for other drivers.
    fn as_libvirt(&self) -> Option<&crate::LibvirtDriver> {
        None
    }

    /// The serial console of a running VM on a pseudo-terminal, `cols` ×
    /// `rows`; it ends when the domain stops or the connection breaks.
    fn serial_console<'a>(
        &'a self,
        vm: &'a VmName,
        cols: u32,
        rows: u32,
    ) -> BoxFuture<'a, HvResult<PtyChannel>>;

    fn start<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<()>> {
        self.act(vm, VmAction::Start)
    }

    fn shutdown<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<()>> {
        self.act(vm, VmAction::Shutdown)
    }

    fn force_stop<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<()>> {
        self.act(vm, VmAction::ForceStop)
    }

    fn reboot<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<()>> {
        self.act(vm, VmAction::Reboot)
    }

    fn reset<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<()>> {
        self.act(vm, VmAction::Reset)
    }

    fn suspend<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<()>> {
        self.act(vm, VmAction::Suspend)
    }

    fn resume<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<()>> {
        self.act(vm, VmAction::Resume)
    }
}
