//! Writing the inventory: host lists, pushed states and removals from the
//! reconcilers go into the per-host maps, and each change either patches
//! the published snapshot or has it rebuilt (inline while that is cheap,
//! in the background once it is not).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use overvisor_model::host::{Host, HostId};
use overvisor_model::vm::{VmState, VmSummary};

use super::snapshot::{MAX_PATCHES, Patch};
use super::{Connectivity, HostSlot, HostStatus, Inventory, Snapshot, VmRecord, read, write};
use crate::events::{Event, EventBus};

/// Above this rebuild time (µs), snapshots are rebuilt in the background.
pub(super) const INLINE_REBUILD_MICROS: u64 = 5_000;

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
                host_kind: host.kind,
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
                        let mut record = new_record(&slot.status, &slot.tags, vm, now);
                        // Addresses come separately; a VM that still runs keeps its own.
                        if record.state.is_active()
                            && let Some(old) = &old
                        {
                            record.ips = old.ips.clone();
                        }
                        let record = Arc::new(record);
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
        // A resync that changed nothing is not written out for the other
        // replicas (every minute, the whole fleet's documents otherwise):
        // their `last_seen` of the host is that of its last change.
        if !events.is_empty() {
            self.touched.add(id);
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
            if !state.is_active() {
                record.ips.clear();
            }
            record.updated_at = Utc::now();
            *vm = Arc::new(record);
            let published = (vm.owner, vm.brief());
            self.changed_with(&[Patch::State(vm.clone())]);
            published
        };
        self.touched.add(id);
        bus.publish(
            published.0,
            Event::VmChanged {
                host_id: id,
                vm: published.1,
            },
        );
        true
    }

    /// The UUIDs of a host's active VMs (whose addresses to ask for).
    pub fn active_vms(&self, id: HostId) -> Vec<uuid::Uuid> {
        read(&self.hosts).get(&id).map_or_else(Vec::new, |slot| {
            slot.vms
                .values()
                .filter(|vm| vm.state.is_active())
                .map(|vm| vm.uuid)
                .collect()
        })
    }

    /// Records the addresses the host gave for its VMs (VMs it no longer
    /// has, or that stopped meanwhile, are left alone), publishing a change
    /// for each VM whose addresses changed.
    pub fn apply_addresses(&self, bus: &EventBus, id: HostId, found: overvisor_hv::VmAddresses) {
        let (owner, changed) = {
            let mut hosts = write(&self.hosts);
            let Some(slot) = hosts.get_mut(&id) else {
                return;
            };
            let mut changed = Vec::new();
            for (uuid, ips) in found {
                let Some(vm) = slot.vms.get_mut(&uuid) else {
                    continue;
                };
                if vm.ips == ips || !vm.state.is_active() {
                    continue;
                }
                let mut record = (**vm).clone();
                record.ips = ips;
                *vm = Arc::new(record);
                changed.push(vm.clone());
            }
            if changed.is_empty() {
                return;
            }
            let patches: Vec<Patch> = changed.iter().cloned().map(Patch::State).collect();
            self.changed_with(&patches);
            (slot.status.owner, changed)
        };
        self.touched.add(id);
        for vm in changed {
            bus.publish(
                owner,
                Event::VmChanged {
                    host_id: id,
                    vm: vm.brief(),
                },
            );
        }
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
            self.touched.add(id);
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
        self.touched.add(id);
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
            self.touched.add(id);
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
        ips: Vec::new(),
        host_id: status.host_id,
        host_name: status.host_name.clone(),
        host_kind: status.host_kind,
        owner: status.owner,
        tags: tags.clone(),
        updated_at: now,
    }
}
