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

pub mod reconcile;
pub mod resync;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use overvisor_model::account::UserId;
use overvisor_model::host::{Host, HostId};
use overvisor_model::vm::{VmState, VmSummary};
use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::authz::{Action, Resource, Subject, authorize};
use crate::events::{Event, EventBus, VmBrief};
use crate::{App, AppError};

/// One VM as the inventory knows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmRecord {
    pub uuid: Uuid,
    pub name: String,
    pub state: VmState,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub host_id: HostId,
    pub host_name: String,
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
        }
    }

    /// Whether `name_or_uuid` names this VM.
    fn is_called(&self, name_or_uuid: &str) -> bool {
        self.name == name_or_uuid || Uuid::try_parse(name_or_uuid).is_ok_and(|u| u == self.uuid)
    }

    /// Whether `other` is this VM with another state (and time) only.
    fn differs_only_in_state(&self, other: &VmRecord) -> bool {
        self.uuid == other.uuid
            && self.host_id == other.host_id
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
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

/// How a list is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmSort {
    #[default]
    Name,
    State,
    Host,
    Memory,
    Vcpus,
}

impl VmSort {
    const ALL: [VmSort; 5] = [
        VmSort::Name,
        VmSort::State,
        VmSort::Host,
        VmSort::Memory,
        VmSort::Vcpus,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "name" => Self::Name,
            "state" => Self::State,
            "host" => Self::Host,
            "memory" => Self::Memory,
            "vcpus" => Self::Vcpus,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }

    fn compare(self, a: &VmRecord, b: &VmRecord) -> Ordering {
        let primary = match self {
            Self::Name => Ordering::Equal,
            Self::State => a.state.as_str().cmp(b.state.as_str()),
            Self::Host => a.host_name.cmp(&b.host_name),
            Self::Memory => a.memory_mib.cmp(&b.memory_mib),
            Self::Vcpus => a.vcpus.cmp(&b.vcpus),
        };
        // Ties broken by name, then identity, so pages are stable.
        primary
            .then_with(|| a.name_key.cmp(&b.name_key))
            .then_with(|| a.host_id.cmp(&b.host_id))
            .then_with(|| a.uuid.cmp(&b.uuid))
    }
}

/// What a caller asks of the VM list.
#[derive(Debug, Clone, Default)]
pub struct VmQuery {
    pub host: Option<HostId>,
    pub state: Option<VmState>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    /// Hosts carrying all these tags.
    pub tags: Vec<String>,
    pub sort: VmSort,
    pub descending: bool,
    pub offset: usize,
    pub limit: usize,
}

/// One page of VMs and how many matched in all.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmPage {
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    #[schema(value_type = Vec<VmRecord>)]
    pub items: Vec<Arc<VmRecord>>,
}

/// One host's VMs as the inventory knows them, with the host's status:
/// when it is not `connected`, the VMs are as last seen and `last_error`
/// says why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HostVmPage {
    pub host: HostStatus,
    #[serde(flatten)]
    pub page: VmPage,
}

/// A change the published snapshot can take without a rebuild.
enum Patch {
    /// The VM's state changed (nothing else).
    State(Arc<VmRecord>),
    /// A VM new to the inventory.
    Added(Arc<VmRecord>),
}

/// More changes at once than this are left to a rebuild: each insertion
/// moves a part of five orders.
const MAX_PATCHES: usize = 64;

/// An immutable view of every VM, with every sort order precomputed.
/// A snapshot patched for a few changes (see [`Snapshot::patched`])
/// shares with its predecessor whatever the changes left alone.
#[derive(Clone)]
pub struct Snapshot {
    generation: u64,
    vms: Vec<Arc<VmRecord>>,
    orders: [Arc<Vec<u32>>; 5],
    by_uuid: Arc<HashMap<Uuid, u32>>,
    /// What filters look at, by VM index, in contiguous memory.
    columns: Arc<Columns>,
    /// Each VM's state, by index (apart from `columns`: it is what changes).
    states: Arc<Vec<VmState>>,
}

/// The filterable facts of every VM, laid out by VM index so that a filter
/// is one sequential scan: walking 20,000 records in sort order instead
/// means two cache misses each (the record, then its name) and costs
/// milliseconds where this costs a fraction of one.
#[derive(Clone)]
struct Columns {
    /// Distinct owners, and each VM's index into them.
    owners: Vec<UserId>,
    owner_of: Vec<u32>,
    /// Distinct hosts with their tags, and each VM's index into them.
    hosts: Vec<(HostId, Arc<[String]>)>,
    host_of: Vec<u32>,
    /// Lower-case names end to end: VM `i`'s ends at `name_ends[i]` and
    /// starts where the one before it ends.
    names: String,
    name_ends: Vec<u32>,
}

impl Columns {
    fn build(vms: &[Arc<VmRecord>]) -> Self {
        let mut columns = Self {
            owners: Vec::new(),
            owner_of: Vec::with_capacity(vms.len()),
            hosts: Vec::new(),
            host_of: Vec::with_capacity(vms.len()),
            names: String::with_capacity(vms.iter().map(|vm| vm.name_key.len()).sum()),
            name_ends: Vec::with_capacity(vms.len()),
        };
        for vm in vms {
            columns.append(vm);
        }
        columns
    }

    /// Appends one VM, numbering its owner and host if they are new. The
    /// look-up tries the previous VM's first: the inventory lists VMs host
    /// by host, so that almost always hits; otherwise it is a linear scan
    /// (few owners, hosts in the hundreds).
    fn append(&mut self, vm: &VmRecord) {
        let owner = number(&self.owners, self.owner_of.last(), vm.owner, |o| *o);
        let host = number(&self.hosts, self.host_of.last(), vm.host_id, |(h, _)| *h);
        if host as usize == self.hosts.len() {
            self.hosts.push((vm.host_id, vm.tags.clone()));
        }
        if owner as usize == self.owners.len() {
            self.owners.push(vm.owner);
        }
        self.owner_of.push(owner);
        self.host_of.push(host);
        self.names.push_str(&vm.name_key);
        self.name_ends.push(self.names.len() as u32);
    }
}

/// The number of `key` in `known` (by `key_of`), trying `last` first;
/// `known.len()` when it is new (the caller then pushes it).
fn number<T, K: PartialEq>(
    known: &[T],
    last: Option<&u32>,
    key: K,
    key_of: impl Fn(&T) -> K,
) -> u32 {
    if let Some(&last) = last
        && known.get(last as usize).is_some_and(|k| key_of(k) == key)
    {
        return last;
    }
    known
        .iter()
        .position(|k| key_of(k) == key)
        .unwrap_or(known.len()) as u32
}

impl Columns {
    /// The VMs whose lower-case name contains `needle` (not empty): one
    /// substring search over all names end to end. A hit that runs into
    /// the next name is no hit, and the search goes on at that next name's
    /// start, so no name is skipped.
    fn named(&self, needle: &str) -> Matches {
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        let names = self.names.as_bytes();
        let mut bits = vec![0u64; self.name_ends.len().div_ceil(64)];
        let mut from = 0;
        while let Some(at) = finder.find(&names[from..]).map(|at| at + from) {
            // The name the hit starts in: the first that ends after `at`.
            let i = self.name_ends.partition_point(|&end| end as usize <= at);
            let Some(&end) = self.name_ends.get(i) else {
                break;
            };
            let end = end as usize;
            if at + needle.len() <= end {
                bits[i / 64] |= 1 << (i % 64);
            }
            from = end;
        }
        Matches(bits)
    }
}

/// One bit per VM index.
struct Matches(Vec<u64>);

impl Matches {
    fn contains(&self, i: u32) -> bool {
        self.0[i as usize / 64] & (1 << (i % 64)) != 0
    }

    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

impl Snapshot {
    fn build(generation: u64, vms: Vec<Arc<VmRecord>>) -> Self {
        let orders = VmSort::ALL.map(|sort| {
            let mut order: Vec<u32> = (0..vms.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| sort.compare(&vms[a as usize], &vms[b as usize]));
            Arc::new(order)
        });
        let by_uuid = vms
            .iter()
            .enumerate()
            .map(|(i, vm)| (vm.uuid, i as u32))
            .collect();
        let columns = Columns::build(&vms);
        let states = vms.iter().map(|vm| vm.state).collect();
        Self {
            generation,
            vms,
            orders,
            by_uuid: Arc::new(by_uuid),
            columns: Arc::new(columns),
            states: Arc::new(states),
        }
    }

    /// This snapshot with `patches` applied, as `generation`: the orders,
    /// index and columns a patch leaves alone stay shared, the others are
    /// copied once and edited (a VM moved to its place in an order, a new
    /// VM inserted). Costs well under a millisecond where a rebuild at
    /// 20,000 VMs costs tens, so a change is in the list before the event
    /// announcing it goes out. `None` if a patch does not fit (the VM is
    /// not there, or is there already).
    fn patched(&self, generation: u64, patches: &[Patch]) -> Option<Self> {
        let mut next = self.clone();
        next.generation = generation;
        for patch in patches {
            match patch {
                Patch::State(record) => next.set_state(record.clone())?,
                Patch::Added(record) => next.add(record.clone())?,
            }
        }
        Some(next)
    }

    /// Replaces a VM's record by `record`, which differs in the state only.
    fn set_state(&mut self, record: Arc<VmRecord>) -> Option<()> {
        let at = *self.by_uuid.get(&record.uuid)?;
        let old = self.vms.get(at as usize)?.clone();
        if !old.differs_only_in_state(&record) {
            return None;
        }
        let moved: Vec<VmSort> = VmSort::ALL
            .into_iter()
            .filter(|sort| sort.compare(&old, &record) != Ordering::Equal)
            .collect();
        // Out of the orders it moves in while the old record is in place…
        for sort in &moved {
            let vms = &self.vms;
            let order = Arc::make_mut(&mut self.orders[sort.index()]);
            let from = order
                .binary_search_by(|&i| sort.compare(&vms[i as usize], &old))
                .ok()?;
            order.remove(from);
        }
        Arc::make_mut(&mut self.states)[at as usize] = record.state;
        self.vms[at as usize] = record;
        // …and back in at its new place.
        for sort in &moved {
            self.insert_in_order(*sort, at);
        }
        Some(())
    }

    /// Adds a VM the snapshot does not have.
    fn add(&mut self, record: Arc<VmRecord>) -> Option<()> {
        if self.by_uuid.contains_key(&record.uuid) {
            // The same UUID on two hosts: only a rebuild indexes that.
            return None;
        }
        let at = u32::try_from(self.vms.len()).ok()?;
        Arc::make_mut(&mut self.by_uuid).insert(record.uuid, at);
        Arc::make_mut(&mut self.columns).append(&record);
        Arc::make_mut(&mut self.states).push(record.state);
        self.vms.push(record);
        for sort in VmSort::ALL {
            self.insert_in_order(sort, at);
        }
        Some(())
    }

    /// Puts VM `at` (not in the order yet) at its place in `sort`'s order.
    fn insert_in_order(&mut self, sort: VmSort, at: u32) {
        let vms = &self.vms;
        let vm = &vms[at as usize];
        let order = Arc::make_mut(&mut self.orders[sort.index()]);
        let to = order
            .binary_search_by(|&i| sort.compare(&vms[i as usize], vm))
            .unwrap_or_else(|to| to);
        order.insert(to, at);
    }

    pub fn len(&self) -> usize {
        self.vms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vms.is_empty()
    }

    /// The VMs `query` selects (sort and page aside), as one scan over the
    /// columns; `visible` is asked once per distinct owner.
    fn matching(&self, query: &VmQuery, mut visible: impl FnMut(UserId) -> bool) -> Matches {
        let c = &*self.columns;
        let owner_ok: Vec<bool> = c.owners.iter().map(|o| visible(*o)).collect();
        let host_ok: Vec<bool> = c
            .hosts
            .iter()
            .map(|(id, tags)| {
                query.host.is_none_or(|h| *id == h) && query.tags.iter().all(|t| tags.contains(t))
            })
            .collect();
        let named = query
            .name
            .as_ref()
            .filter(|n| !n.is_empty())
            .map(|n| c.named(&n.to_lowercase()));
        let mut bits = vec![0u64; self.vms.len().div_ceil(64)];
        for i in 0..self.vms.len() {
            let selected = owner_ok[c.owner_of[i] as usize]
                && host_ok[c.host_of[i] as usize]
                && query.state.is_none_or(|s| self.states[i] == s)
                && named.as_ref().is_none_or(|named| named.contains(i as u32));
            if selected {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        Matches(bits)
    }

    /// Filters and pages; `visible` decides per owner.
    fn page(&self, query: &VmQuery, visible: impl FnMut(UserId) -> bool) -> VmPage {
        let matches = self.matching(query, visible);
        let total = matches.count();
        let mut items = Vec::with_capacity(query.limit.min(1000));
        if query.limit > 0 && query.offset < total {
            let order = &self.orders[query.sort.index()];
            let walk: Box<dyn Iterator<Item = &u32>> = if query.descending {
                Box::new(order.iter().rev())
            } else {
                Box::new(order.iter())
            };
            let mut skipped = 0;
            for &i in walk {
                if !matches.contains(i) {
                    continue;
                }
                if skipped < query.offset {
                    skipped += 1;
                    continue;
                }
                items.push(self.vms[i as usize].clone());
                if items.len() == query.limit {
                    break;
                }
            }
        }
        VmPage {
            total,
            offset: query.offset,
            limit: query.limit,
            items,
        }
    }
}

/// Counts for the dashboard.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct InventorySummary {
    pub hosts: usize,
    /// Hosts by connectivity (`connected`, `disconnected`, `connecting`).
    pub hosts_by_status: HashMap<String, usize>,
    pub vms: usize,
    /// VMs by state (`running`, `shut_off`, ...).
    pub vms_by_state: HashMap<String, usize>,
    pub host_status: Vec<HostStatus>,
}

/// The inventory itself (lives in [`App`]).
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
    pub(crate) resyncers: resync::Resyncers,
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
        }
    }
}

/// Above this rebuild time (µs), snapshots are rebuilt in the background.
const INLINE_REBUILD_MICROS: u64 = 5_000;

/// Installs `fresh` unless a newer snapshot got there first.
fn publish(slot: &RwLock<Arc<Snapshot>>, fresh: Arc<Snapshot>) {
    let mut current = write(slot);
    if current.generation < fresh.generation {
        *current = fresh;
    }
}

fn record_build_time(timing: &AtomicU64, started: std::time::Instant) {
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    timing.store(micros, AtomicOrdering::Relaxed);
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Inventory {
    fn changed(&self) {
        self.generation.fetch_add(1, AtomicOrdering::Release);
    }

    /// Like [`Inventory::changed`] for changes the snapshot can be patched
    /// with: when the published snapshot was current, it is patched in
    /// place of a rebuild. Otherwise a rebuild is due anyway and will
    /// include these changes. Called under the hosts lock, so changes
    /// reach the snapshot in the order they were made.
    fn changed_with(&self, patches: &[Patch]) {
        let generation = self.generation.fetch_add(1, AtomicOrdering::AcqRel) + 1;
        if patches.is_empty() || patches.len() > MAX_PATCHES {
            return;
        }
        let mut current = write(&self.snapshot);
        if current.generation + 1 != generation {
            return;
        }
        if let Some(patched) = current.patched(generation, patches) {
            *current = Arc::new(patched);
        }
    }

    /// The current snapshot. While the inventory is small it is rebuilt
    /// inline when anything changed, so a read sees every change before it.
    /// Once a rebuild takes longer than [`INLINE_REBUILD_MICROS`] (tens of
    /// thousands of VMs), reads keep getting the previous snapshot while one
    /// background thread builds the next: under constant churn no request
    /// pays for re-sorting the fleet, and the picture lags by one rebuild.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let wanted = self.generation.load(AtomicOrdering::Acquire);
        let current = read(&self.snapshot).clone();
        if current.generation == wanted {
            return current;
        }
        if self.last_build_micros.load(AtomicOrdering::Relaxed) > INLINE_REBUILD_MICROS {
            if !self.rebuilding.swap(true, AtomicOrdering::AcqRel) {
                self.rebuild_in_background();
            }
            return current;
        }
        // One reader rebuilds; the others wait for it and reuse its work.
        let _guard = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let current = read(&self.snapshot).clone();
        let wanted = self.generation.load(AtomicOrdering::Acquire);
        if current.generation == wanted {
            return current;
        }
        let fresh = Arc::new(self.build_timed(wanted));
        publish(&self.snapshot, fresh.clone());
        fresh
    }

    fn collect_vms(&self) -> Vec<Arc<VmRecord>> {
        read(&self.hosts)
            .values()
            .flat_map(|slot| slot.vms.values().cloned())
            .collect()
    }

    fn build_timed(&self, generation: u64) -> Snapshot {
        let started = std::time::Instant::now();
        let snapshot = Snapshot::build(generation, self.collect_vms());
        record_build_time(&self.last_build_micros, started);
        snapshot
    }

    fn rebuild_in_background(&self) {
        // Collecting the records is cheap (reference counts); sorting is not.
        let wanted = self.generation.load(AtomicOrdering::Acquire);
        let vms = self.collect_vms();
        let (slot, busy, timing) = (
            self.snapshot.clone(),
            self.rebuilding.clone(),
            self.last_build_micros.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("inventory-rebuild".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let fresh = Arc::new(Snapshot::build(wanted, vms));
                record_build_time(&timing, started);
                publish(&slot, fresh);
                busy.store(false, AtomicOrdering::Release);
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "cannot start an inventory rebuild thread");
            self.rebuilding.store(false, AtomicOrdering::Release);
        }
    }

    /// Registers (or refreshes the name and tags of) a host.
    pub fn host_upsert(&self, host: &Host) {
        let mut hosts = write(&self.hosts);
        let tags: Arc<[String]> = host.tags.clone().into();
        let slot = hosts.entry(host.id).or_insert_with(|| HostSlot {
            status: HostStatus {
                host_id: host.id,
                host_name: host.name.clone(),
                owner: host.owner,
                status: Connectivity::Connecting,
                since: Utc::now(),
                last_error: None,
                last_seen: None,
                vm_count: 0,
            },
            tags: tags.clone(),
            vms: HashMap::new(),
        });
        if slot.status.host_name != host.name || slot.tags != tags {
            slot.status.host_name = host.name.clone();
            slot.tags = tags.clone();
            for vm in slot.vms.values_mut() {
                let mut r = (**vm).clone();
                r.host_name = host.name.clone();
                r.tags = tags.clone();
                *vm = Arc::new(r);
            }
            self.changed();
        }
    }

    /// Forgets a host that was deleted; its VMs leave the picture.
    pub fn host_remove(&self, bus: &EventBus, id: HostId) {
        let Some(slot) = write(&self.hosts).remove(&id) else {
            return;
        };
        for vm in slot.vms.values() {
            bus.publish(
                vm.owner,
                Event::VmRemoved {
                    host_id: id,
                    vm: vm.brief(),
                },
            );
        }
        self.changed();
    }

    /// Replaces a host's VMs with a full list from the host, publishing
    /// what was added, changed or removed.
    pub fn apply_full(&self, bus: &EventBus, id: HostId, list: Vec<VmSummary>) {
        let mut events = Vec::new();
        let owner;
        {
            let mut hosts = write(&self.hosts);
            let Some(slot) = hosts.get_mut(&id) else {
                return;
            };
            owner = slot.status.owner;
            let now = Utc::now();
            let mut fresh = HashMap::with_capacity(list.len());
            // What the snapshot can be patched with; `None` once a change
            // needs a rebuild (a removal, a renamed or resized VM).
            let mut patches = Some(Vec::new());
            for vm in list {
                let old = slot.vms.remove(&vm.uuid);
                let record = match old {
                    Some(old) if old.same_facts(&vm) => old,
                    old => {
                        let record = Arc::new(new_record(&slot.status, &slot.tags, vm, now));
                        let (event, patch) = match old {
                            Some(old) => (
                                Event::VmChanged {
                                    host_id: id,
                                    vm: record.brief(),
                                },
                                old.differs_only_in_state(&record)
                                    .then(|| Patch::State(record.clone())),
                            ),
                            None => (
                                Event::VmAdded {
                                    host_id: id,
                                    vm: record.brief(),
                                },
                                Some(Patch::Added(record.clone())),
                            ),
                        };
                        events.push(event);
                        match (&mut patches, patch) {
                            (Some(all), Some(patch)) => all.push(patch),
                            _ => patches = None,
                        }
                        record
                    }
                };
                fresh.insert(record.uuid, record);
            }
            for gone in slot.vms.values() {
                patches = None;
                events.push(Event::VmRemoved {
                    host_id: id,
                    vm: gone.brief(),
                });
            }
            slot.vms = fresh;
            slot.status.vm_count = slot.vms.len();
            slot.status.last_seen = Some(now);
            match patches {
                _ if events.is_empty() => {}
                Some(patches) => self.changed_with(&patches),
                None => self.changed(),
            }
        }
        for event in events {
            bus.publish(owner, event);
        }
    }

    /// Applies a state the host pushed for the VM called `name`. Returns
    /// false when the VM is unknown (the caller should resync).
    pub fn apply_state(&self, bus: &EventBus, id: HostId, name: &str, state: VmState) -> bool {
        let published = {
            let mut hosts = write(&self.hosts);
            let Some(slot) = hosts.get_mut(&id) else {
                return false;
            };
            let Some(vm) = slot.vms.values_mut().find(|vm| vm.is_called(name)) else {
                return false;
            };
            if vm.state == state {
                return true;
            }
            let mut record = (**vm).clone();
            record.state = state;
            record.updated_at = Utc::now();
            *vm = Arc::new(record);
            let published = (vm.owner, vm.brief());
            self.changed_with(&[Patch::State(vm.clone())]);
            published
        };
        bus.publish(
            published.0,
            Event::VmChanged {
                host_id: id,
                vm: published.1,
            },
        );
        true
    }

    /// Removes the VM called `name` (the host said it was undefined).
    pub fn apply_removed(&self, bus: &EventBus, id: HostId, name: &str) {
        let removed = {
            let mut hosts = write(&self.hosts);
            let Some(slot) = hosts.get_mut(&id) else {
                return;
            };
            let uuid = slot
                .vms
                .values()
                .find(|vm| vm.name == name)
                .map(|vm| vm.uuid);
            let removed = uuid.and_then(|u| slot.vms.remove(&u));
            slot.status.vm_count = slot.vms.len();
            removed
        };
        if let Some(vm) = removed {
            self.changed();
            bus.publish(
                vm.owner,
                Event::VmRemoved {
                    host_id: id,
                    vm: vm.brief(),
                },
            );
        }
    }

    /// Records that the host answered; publishes when that is news.
    pub fn mark_connected(&self, bus: &EventBus, id: HostId) {
        let owner = {
            let mut hosts = write(&self.hosts);
            let Some(slot) = hosts.get_mut(&id) else {
                return;
            };
            if slot.status.status == Connectivity::Connected {
                return;
            }
            slot.status.status = Connectivity::Connected;
            slot.status.since = Utc::now();
            slot.status.last_error = None;
            slot.status.owner
        };
        tracing::info!(host = %id, "host connected");
        bus.publish(owner, Event::HostConnected { host_id: id });
    }

    /// Records that the host cannot be reached and why.
    pub fn mark_disconnected(&self, bus: &EventBus, id: HostId, error: &str) {
        let (owner, since) = {
            let mut hosts = write(&self.hosts);
            let Some(slot) = hosts.get_mut(&id) else {
                return;
            };
            let news = slot.status.status != Connectivity::Disconnected;
            slot.status.last_error = Some(error.to_owned());
            if !news {
                return;
            }
            slot.status.status = Connectivity::Disconnected;
            slot.status.since = Utc::now();
            (slot.status.owner, slot.status.since)
        };
        tracing::warn!(host = %id, %error, "host disconnected");
        bus.publish(
            owner,
            Event::HostDisconnected {
                host_id: id,
                error: error.to_owned(),
                since,
            },
        );
    }

    pub fn host_status(&self, id: HostId) -> Option<HostStatus> {
        read(&self.hosts).get(&id).map(|slot| slot.status.clone())
    }

    /// Loads `vms` as a host's full list without events (benchmarks, tests).
    pub fn load_synthetic(&self, host: &Host, vms: Vec<VmSummary>) {
        self.host_upsert(host);
        self.apply_full(&EventBus::new(1), host.id, vms);
        self.mark_connected(&EventBus::new(1), host.id);
    }
}

fn new_record(
    status: &HostStatus,
    tags: &Arc<[String]>,
    vm: VmSummary,
    now: DateTime<Utc>,
) -> VmRecord {
    VmRecord {
        name_key: vm.name.to_lowercase(),
        uuid: vm.uuid,
        name: vm.name,
        state: vm.state,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        host_id: status.host_id,
        host_name: status.host_name.clone(),
        owner: status.owner,
        tags: tags.clone(),
        updated_at: now,
    }
}

/// Memoises `authorize` per owner: a page walk asks once per distinct owner.
fn visibility(subject: &Subject) -> impl FnMut(UserId) -> bool + '_ {
    let mut seen: HashMap<UserId, bool> = HashMap::new();
    move |owner| {
        *seen
            .entry(owner)
            .or_insert_with(|| authorize(subject, Action::Read, Resource::OwnedBy(owner)).is_ok())
    }
}

impl App {
    /// A page of the VMs `subject` may see.
    pub fn inventory_vms(&self, subject: &Subject, query: &VmQuery) -> Result<VmPage, AppError> {
        authorize(subject, Action::Read, Resource::OwnedBy(subject.id()))?;
        if let Some(host) = query.host {
            self.inventory_host_visible(subject, host)?;
        }
        Ok(self.inventory().snapshot().page(query, visibility(subject)))
    }

    /// One VM by UUID, if `subject` may see it.
    pub fn inventory_vm(&self, subject: &Subject, uuid: Uuid) -> Result<Arc<VmRecord>, AppError> {
        let snapshot = self.inventory().snapshot();
        let vm = snapshot
            .by_uuid
            .get(&uuid)
            .map(|i| snapshot.vms[*i as usize].clone())
            .ok_or(AppError::NotFound("VM"))?;
        authorize(subject, Action::Read, Resource::OwnedBy(vm.owner))
            .map_err(|_| AppError::NotFound("VM"))?;
        Ok(vm)
    }

    /// A page of one host's VMs with the host's status, from memory: the
    /// host is never asked (a dead host answers at once, as last seen).
    pub async fn inventory_host_vms(
        &self,
        subject: &Subject,
        host: HostId,
        query: &VmQuery,
    ) -> Result<HostVmPage, AppError> {
        let host = self
            .host_authorized(subject, host, Action::Read, "vm.read")
            .await?;
        let host = host.get();
        // Registered a moment ago and not picked up by the reconcilers yet.
        let status = self
            .inventory()
            .host_status(host.id)
            .unwrap_or_else(|| HostStatus {
                host_id: host.id,
                host_name: host.name.clone(),
                owner: host.owner,
                status: Connectivity::Connecting,
                since: host.created_at,
                last_error: None,
                last_seen: None,
                vm_count: 0,
            });
        let query = VmQuery {
            host: Some(host.id),
            ..query.clone()
        };
        let page = self
            .inventory()
            .snapshot()
            .page(&query, visibility(subject));
        Ok(HostVmPage { host: status, page })
    }

    fn inventory_host_visible(&self, subject: &Subject, host: HostId) -> Result<(), AppError> {
        let status = self
            .inventory()
            .host_status(host)
            .ok_or(AppError::NotFound("host"))?;
        authorize(subject, Action::Read, Resource::OwnedBy(status.owner))
            .map_err(|_| AppError::NotFound("host"))?;
        Ok(())
    }

    /// Hosts by connectivity and VMs by state, over what `subject` may see.
    pub fn inventory_summary(&self, subject: &Subject) -> Result<InventorySummary, AppError> {
        authorize(subject, Action::Read, Resource::OwnedBy(subject.id()))?;
        let mut visible = visibility(subject);
        let mut summary = InventorySummary::default();
        let mut host_status: Vec<HostStatus> = read(&self.inventory().hosts)
            .values()
            .filter(|slot| visible(slot.status.owner))
            .map(|slot| slot.status.clone())
            .collect();
        host_status.sort_by(|a, b| a.host_name.cmp(&b.host_name));
        for h in &host_status {
            let key = serde_json::to_value(h.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *summary.hosts_by_status.entry(key).or_default() += 1;
        }
        summary.hosts = host_status.len();
        summary.host_status = host_status;
        // From the columns: the dashboard asks this often, and at fleet
        // size touching every record would cost milliseconds.
        let snapshot = self.inventory().snapshot();
        let c = &*snapshot.columns;
        let owner_ok: Vec<bool> = c.owners.iter().map(|o| visible(*o)).collect();
        let mut by_state: HashMap<&'static str, usize> = HashMap::new();
        for (state, owner) in snapshot.states.iter().zip(&c.owner_of) {
            if owner_ok[*owner as usize] {
                *by_state.entry(state.as_str()).or_default() += 1;
                summary.vms += 1;
            }
        }
        summary.vms_by_state = by_state
            .into_iter()
            .map(|(state, n)| (state.to_owned(), n))
            .collect();
        Ok(summary)
    }

    /// Tells the reconcilers to look at the host registry now (call after
    /// a host was added, changed or removed).
    pub fn inventory_wake(&self) {
        self.inventory().wake.notify_one();
    }
}

#[cfg(test)]
mod tests;
