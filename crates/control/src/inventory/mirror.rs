//! A host's part of the inventory as one document, for several replicas:
//! the replica that owns the host writes it out after each change, and
//! every other replica applies it to its own inventory through the same
//! writers the reconcilers use — so their lists are complete and their
//! event streams carry the same VM and host events.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use overvisor_model::host::HostId;
use overvisor_model::vm::VmSummary;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Connectivity, Inventory, read};
use crate::events::EventBus;

/// Hosts changed since they were last written out, and the bell that
/// wakes the writer. Kept only where replicas share a database (a lone
/// process pays nothing for it on every change).
#[derive(Default)]
pub(crate) struct Touched {
    tracking: AtomicBool,
    hosts: Mutex<HashSet<HostId>>,
    bell: Notify,
}

impl Touched {
    pub(super) fn add(&self, host: HostId) {
        if !self.tracking.load(Ordering::Relaxed) {
            return;
        }
        self.lock().insert(host);
        self.bell.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<HostId>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the other replicas need of one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HostMirror {
    pub status: Connectivity,
    pub last_error: Option<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub vms: Vec<MirroredVm>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MirroredVm {
    #[serde(flatten)]
    pub summary: VmSummary,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
}

impl Inventory {
    /// Waits until some host changed, then hands over every changed host.
    pub(crate) async fn touched_hosts(&self) -> Vec<HostId> {
        loop {
            let taken: Vec<HostId> = self.touched.lock().drain().collect();
            if !taken.is_empty() {
                return taken;
            }
            self.touched.bell.notified().await;
        }
    }

    /// Keeps the changed hosts from now on, for writing them out.
    pub(crate) fn track_touched(&self) {
        self.touched.tracking.store(true, Ordering::Relaxed);
    }

    /// Marks `host` for writing out again (after a failed write).
    pub(crate) fn touch(&self, host: HostId) {
        self.touched.add(host);
    }

    /// `host`'s part, as its owner writes it out.
    pub(crate) fn host_export(&self, host: HostId) -> Option<HostMirror> {
        let hosts = read(&self.hosts);
        let slot = hosts.get(&host)?;
        let mut vms: Vec<MirroredVm> = slot
            .vms
            .values()
            .map(|vm| MirroredVm {
                summary: VmSummary {
                    uuid: vm.uuid,
                    name: vm.name.clone(),
                    state: vm.state,
                    vcpus: vm.vcpus,
                    memory_mib: vm.memory_mib,
                },
                ips: vm.ips.clone(),
            })
            .collect();
        vms.sort_by_key(|vm| vm.summary.uuid);
        Some(HostMirror {
            status: slot.status.status,
            last_error: slot.status.last_error.clone(),
            last_seen: slot.status.last_seen,
            vms,
        })
    }

    /// Applies what `host`'s owner wrote out, publishing what changed.
    /// `false` when the host is not in this inventory yet (the registry is
    /// read again shortly; try then).
    pub(crate) fn host_import(&self, bus: &EventBus, host: HostId, mirror: HostMirror) -> bool {
        if !read(&self.hosts).contains_key(&host) {
            return false;
        }
        let addresses: Vec<_> = mirror
            .vms
            .iter()
            .filter(|vm| !vm.ips.is_empty())
            .map(|vm| (vm.summary.uuid, vm.ips.clone()))
            .collect();
        self.apply_full(
            bus,
            host,
            mirror.vms.into_iter().map(|vm| vm.summary).collect(),
        );
        self.apply_addresses(bus, host, addresses);
        match mirror.status {
            Connectivity::Connected => self.mark_connected(bus, host),
            Connectivity::Disconnected => {
                let error = mirror.last_error.as_deref().unwrap_or("unreachable");
                self.mark_disconnected(bus, host, error);
            }
            Connectivity::Connecting => {}
        }
        if let Some(slot) = super::write(&self.hosts).get_mut(&host) {
            slot.status.last_seen = mirror.last_seen;
        }
        true
    }
}
