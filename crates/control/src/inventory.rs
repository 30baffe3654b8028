//! The live inventory: an in-memory picture of every VM on every host,
//! rebuilt from the hosts themselves (they are the source of truth; there
//! is no VM table to go stale), kept current by each host's libvirt event
//! stream and periodic full resyncs ([`reconcile`]).
//!
//! Reads never wait on a host: writers update per-host maps under a short
//! lock (never held across an await), and readers use an immutable
//! [`Snapshot`] with every sort order precomputed, rebuilt at most once per
//! change (patched in place for a pushed state) and shared by all readers.
//! A page of 100 out of 20,000 VMs is one scan of flat filter columns
//! and a walk of one precomputed order until the page is full, without
//! cloning the VMs.
//!
//! The parts: `snapshot` and `columns` (what readers share), `writers`
//! (what the reconcilers call, and the rebuilds), `queries` (what the API
//! and portal call), [`reconcile`] and [`resync`] (the loops that keep it
//! true to the hosts).

mod columns;
pub(crate) mod mirror;
pub(crate) mod queries;
pub mod reconcile;
pub mod resync;
mod snapshot;
mod writers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use overvisor_model::account::UserId;
use overvisor_model::host::{HostId, HostKind};
use overvisor_model::vm::{VmState, VmSummary};
use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::events::VmBrief;

pub use queries::{HostLoad, HostVmPage, InventorySummary};
pub use snapshot::{Snapshot, VmPage, VmQuery, VmSort};

/// One VM as the inventory knows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmRecord {
    pub uuid: Uuid,
    pub name: String,
    pub state: VmState,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// The guest's addresses while it runs, as the host last told them
    /// (guest agent, DHCP lease or ARP on libvirt; the guest's integration
    /// services on Hyper-V); refreshed after each resync and shortly after
    /// the VM starts.
    pub ips: Vec<String>,
    pub host_id: HostId,
    pub host_name: String,
    /// The host's kind (driver): `libvirt` or `hyperv`.
    pub host_kind: HostKind,
    pub owner: UserId,
    /// The host's tags.
    #[schema(value_type = Vec<String>)]
    pub tags: Arc<[String]>,
    /// When the inventory last learnt something about this VM.
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    name_key: String,
}

impl VmRecord {
    fn brief(&self) -> VmBrief {
        VmBrief {
            uuid: self.uuid,
            name: self.name.clone(),
            state: self.state,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            ips: self.ips.clone(),
        }
    }

    /// Whether `name_or_uuid` names this VM.
    fn is_called(&self, name_or_uuid: &str) -> bool {
        self.name == name_or_uuid || Uuid::try_parse(name_or_uuid).is_ok_and(|u| u == self.uuid)
    }

    /// Whether `other` is this VM with another state, addresses or time
    /// only (nothing a list sorts or filters by but the state).
    fn differs_only_in_state(&self, other: &VmRecord) -> bool {
        self.uuid == other.uuid
            && self.host_id == other.host_id
            && self.host_kind == other.host_kind
            && self.name == other.name
            && self.vcpus == other.vcpus
            && self.memory_mib == other.memory_mib
            && self.owner == other.owner
            && self.tags == other.tags
    }

    fn same_facts(&self, vm: &VmSummary) -> bool {
        self.name == vm.name
            && self.state == vm.state
            && self.vcpus == vm.vcpus
            && self.memory_mib == vm.memory_mib
    }
}

/// Whether the inventory can currently talk to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Connectivity {
    /// Not synced yet since it was registered or the service started.
    Connecting,
    Connected,
    /// Its VMs are shown as last seen; `last_error` says why.
    Disconnected,
}

/// A host's state in the inventory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HostStatus {
    pub host_id: HostId,
    pub host_name: String,
    pub host_kind: HostKind,
    pub owner: UserId,
    pub status: Connectivity,
    /// Since when it has had this status.
    pub since: DateTime<Utc>,
    pub last_error: Option<String>,
    /// Last successful full resync.
    pub last_seen: Option<DateTime<Utc>>,
    pub vm_count: usize,
}

struct HostSlot {
    status: HostStatus,
    tags: Arc<[String]>,
    vms: HashMap<Uuid, Arc<VmRecord>>,
}

/// The inventory itself (lives in [`crate::App`]).
pub struct Inventory {
    hosts: RwLock<HashMap<HostId, HostSlot>>,
    generation: AtomicU64,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    rebuild: Mutex<()>,
    /// A background rebuild is under way.
    rebuilding: Arc<AtomicBool>,
    /// How long the last rebuild took (µs): decides inline vs. background.
    last_build_micros: Arc<AtomicU64>,
    /// Wakes the supervisor (host added, changed or removed).
    pub(crate) wake: Notify,
    /// Each host reconciler's queue of resync requests.
    resyncers: resync::Resyncers,
    /// Hosts changed since their owner last wrote them out for the other
    /// replicas (see [`mirror`]).
    touched: mirror::Touched,
}

impl Default for Inventory {
    fn default() -> Self {
        Self {
            hosts: RwLock::default(),
            generation: AtomicU64::new(1),
            snapshot: Arc::new(RwLock::new(Arc::new(Snapshot::build(0, Vec::new())))),
            rebuild: Mutex::new(()),
            rebuilding: Arc::default(),
            last_build_micros: Arc::default(),
            wake: Notify::new(),
            resyncers: resync::Resyncers::default(),
            touched: mirror::Touched::default(),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
