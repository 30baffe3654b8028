//! VMs on a host: detail, lifecycle actions and delete. Lists come from
//! the inventory (`inventory.rs`); the detail here is read live (the
//! domain's full definition is not kept in memory), and changes are
//! submitted as operations (`operations/vm.rs` runs them).
//!
//! A change is checked before any job exists: the name already is a
//! [`VmName`] (validated, safe to quote), the subject is authorized once,
//! and the VM's current state, asked of the host, must allow the action
//! ([`allowed`]), so an invalid transition is a 409. That read is the job's
//! `check` step, recorded with what it found.

use overvisor_model::InvalidInput;
use overvisor_model::host::HostId;
use overvisor_model::job::Job;
use overvisor_model::operation::{Operation, vm_target};
use overvisor_model::vm::{VmAction, VmInfo, VmName, allowed};

use crate::audit::Target;
use crate::authz::{Action, Subject};
use crate::jobs::Checked;
use crate::operations::vm::{state_output, transition_refusal};
use crate::{App, AppError};

/// How long a request waits for the host to confirm an action makes sense.
const PRECHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl App {
    /// One VM in detail, live.
    pub async fn vm_get(
        &self,
        subject: &Subject,
        host: HostId,
        vm: &VmName,
    ) -> Result<VmInfo, AppError> {
        let host = self
            .host_authorized(subject, host, Action::Read, "vm.read")
            .await?;
        let driver = self.host_driver(&host).await?;
        driver
            .vm_info(vm)
            .await
            .map_err(|e| self.host_error(host.get(), e))
    }

    /// Submits a lifecycle action (not delete: see [`App::vm_delete_job`])
    /// as a `vm.<action>` job whose result is `{"state": <afterwards>,
    /// "found": <before>}`.
    pub async fn vm_act_job(
        &self,
        subject: &Subject,
        host: HostId,
        vm: &VmName,
        action: VmAction,
    ) -> Result<Job, AppError> {
        if action == VmAction::Delete {
            return Err(InvalidInput::new("action", "delete the VM with DELETE").into());
        }
        let op = Operation::VmAction {
            host,
            vm: vm.clone(),
            action,
        };
        self.vm_submit(subject, op, action).await
    }

    /// Submits the deletion of a shut-off VM as a `vm.delete` job (a VM that
    /// is not shut off is a 409 before any job exists). The job's result is
    /// `{"deleted": <name>, "with_storage": <bool>}`.
    pub async fn vm_delete_job(
        &self,
        subject: &Subject,
        host: HostId,
        vm: &VmName,
        with_storage: bool,
    ) -> Result<Job, AppError> {
        let op = Operation::VmDelete {
            host,
            vm: vm.clone(),
            with_storage,
        };
        self.vm_submit(subject, op, VmAction::Delete).await
    }

    /// Authorizes once, checks the VM's state with the host, then submits.
    async fn vm_submit(
        &self,
        subject: &Subject,
        op: Operation,
        action: VmAction,
    ) -> Result<Job, AppError> {
        let kind = op.kind();
        let (Operation::VmAction { host, vm, .. } | Operation::VmDelete { host, vm, .. }) = &op
        else {
            return Err(AppError::Internal("not a VM operation".into()));
        };
        let authorized = self
            .host_authorized(subject, *host, Action::Operate, &kind)
            .await?;
        let checked = async {
            // The inventory follows the host's events, so a state it shows
            // that allows the action is taken as found (the action itself
            // fails clearly in the rare case the host has just changed).
            // Anything else is asked of the host, so a missing VM, a bad
            // host key, a dead host or an invalid transition answer now,
            // and a refusal is never based on a stale picture. A host too
            // slow to say is left to the job, whose `check` step asks again
            // within its own timeout.
            if let Some(state) = self.inventory().vm_state(*host, vm.as_str())
                && allowed(state, action)
            {
                return Ok(Some(state));
            }
            // Another replica owns the host's connection: its runner checks.
            if !self.replicas().owns(*host) {
                return Ok(None);
            }
            let driver = self.host_driver(&authorized).await?;
            match tokio::time::timeout(PRECHECK_TIMEOUT, driver.vm_state(vm)).await {
                Ok(Ok(state)) if !allowed(state, action) => Err(AppError::InvalidTransition(
                    transition_refusal(vm, action, state),
                )),
                Ok(Ok(state)) => Ok(Some(state)),
                Err(_) => Ok(None),
                Ok(Err(e)) => Err(self.host_error(authorized.get(), e)),
            }
        }
        .await;
        let found = match checked {
            Ok(found) => found,
            Err(refused) => {
                // A refusal is the change's one audit row (no job exists).
                let target = Target::named(vm_target(*host, vm), authorized.get().owner);
                return self
                    .audited(subject, &kind, target, None, Err(refused))
                    .await;
            }
        };
        let checked: Vec<Checked> = found
            .map(|state| Checked {
                index: 0,
                output: state_output(state),
            })
            .into_iter()
            .collect();
        let grant = authorized.grant(subject, Action::Operate);
        self.job_submit(grant, op, None, &checked).await
    }
}
