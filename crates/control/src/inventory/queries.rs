//! Reading the inventory: pages of VMs, one VM, one host's VMs and the
//! dashboard's counts, all from the published snapshot and limited to what
//! the subject may see.

use std::collections::HashMap;
use std::sync::Arc;

use overvisor_model::account::UserId;
use overvisor_model::host::HostId;
use overvisor_model::vm::VmState;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Connectivity, HostStatus, Inventory, VmPage, VmQuery, VmRecord, read};
use crate::authz::{Action, Resource, Subject, authorize};
use crate::{App, AppError};

/// One host's VMs as the inventory knows them, with the host's status:
/// when it is not `connected`, the VMs are as last seen and `last_error`
/// says why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HostVmPage {
    pub host: HostStatus,
    #[serde(flatten)]
    pub page: VmPage,
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

/// What a host's active (running, paused, ...) VMs take, as last seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLoad {
    pub vms: usize,
    pub vcpus: u64,
    pub memory_mib: u64,
}

impl Inventory {
    /// One walk of the host's VMs (a host has hundreds at most).
    pub fn host_load(&self, host: HostId) -> HostLoad {
        let hosts = read(&self.hosts);
        let mut load = HostLoad::default();
        for vm in hosts
            .get(&host)
            .into_iter()
            .flat_map(|slot| slot.vms.values())
        {
            if vm.state.is_active() {
                load.vms += 1;
                load.vcpus += u64::from(vm.vcpus.unwrap_or(0));
                load.memory_mib += vm.memory_mib.unwrap_or(0);
            }
        }
        load
    }

    pub fn host_status(&self, id: HostId) -> Option<HostStatus> {
        read(&self.hosts).get(&id).map(|slot| slot.status.clone())
    }

    /// The state a VM (by name or UUID) of a connected host was last seen
    /// in; `None` when the host is not connected or the VM not known.
    pub fn vm_state(&self, host: HostId, vm: &str) -> Option<VmState> {
        let hosts = read(&self.hosts);
        let slot = hosts.get(&host)?;
        if slot.status.status != Connectivity::Connected {
            return None;
        }
        let uuid = Uuid::parse_str(vm).ok();
        slot.vms
            .values()
            .find(|r| Some(r.uuid) == uuid || r.name == vm)
            .map(|r| r.state)
    }
}

/// Memoises `authorize` per owner: a page walk asks once per distinct owner.
pub(crate) fn visibility(subject: &Subject) -> impl FnMut(UserId) -> bool + '_ {
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
                host_kind: host.kind,
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

    pub(crate) fn inventory_host_visible(
        &self,
        subject: &Subject,
        host: HostId,
    ) -> Result<(), AppError> {
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
}
