//! VMs on a host: detail, lifecycle actions and delete. Lists come from
//! the inventory (`inventory.rs`); the detail here is read live (the
//! domain's full definition is not kept in memory), and changes run as
//! jobs through the host's shared driver.
//!
//! A change is checked twice before it reaches a host: the name already is
//! a [`VmName`] (validated, safe to quote), and the VM's current state must
//! allow the action ([`allowed`]), so an invalid transition is a 409 that
//! never becomes a host round-trip.

use overvisor_model::InvalidInput;
use overvisor_model::host::HostId;
use overvisor_model::job::Job;
use overvisor_model::vm::{VmAction, VmInfo, VmName, VmState, allowed};

use crate::audit::Target;
use crate::authz::{Action, Subject};
use crate::jobs::JobSpec;
use crate::{App, AppError};

/// The audit and API name of an action (`vm.<name>`).
pub fn action_name(action: VmAction) -> &'static str {
    match action {
        VmAction::Start => "start",
        VmAction::Shutdown => "shutdown",
        VmAction::ForceStop => "force_stop",
        VmAction::Reboot => "reboot",
        VmAction::Reset => "reset",
        VmAction::Suspend => "suspend",
        VmAction::Resume => "resume",
        VmAction::Delete => "delete",
    }
}

/// How long a lifecycle job may take (a host command times out sooner).
const VM_JOB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);
/// How long a request waits for the host to confirm an action makes sense.
const PRECHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn transition_error(vm: &VmName, action: VmAction, state: VmState) -> AppError {
    AppError::InvalidTransition(format!(
        "cannot {} VM {vm} while it is {state}",
        action_name(action).replace('_', "-")
    ))
}

fn vm_target(host: HostId, owner: overvisor_model::account::UserId, vm: &VmName) -> Target {
    Target::named(format!("vm:{host}/{vm}"), owner)
}

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

    /// Runs a lifecycle action (not delete: see [`App::vm_delete`]) and
    /// returns the state the VM is in afterwards.
    pub async fn vm_act(
        &self,
        subject: &Subject,
        host: HostId,
        vm: &VmName,
        action: VmAction,
    ) -> Result<VmState, AppError> {
        if action == VmAction::Delete {
            return Err(InvalidInput::new("action", "delete the VM with DELETE").into());
        }
        self.vm_change(subject, host, vm, action, false).await
    }

    /// [`App::vm_act`] as a job (the API's way): host access and the VM's
    /// state are checked now (403/404/409/502); the
    /// action then runs in the background, counted against the host's job
    /// limit. The job's result is `{"state": <state afterwards>}`.
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
        self.vm_change_job(subject, host, vm, action, false).await
    }

    /// [`App::vm_delete`] as a job, checked like [`App::vm_act_job`] (a
    /// VM that is not shut off is a 409 before any job exists). The job's
    /// result is `{"deleted": <name>, "with_storage": <bool>}`.
    pub async fn vm_delete_job(
        &self,
        subject: &Subject,
        host: HostId,
        vm: &VmName,
        with_storage: bool,
    ) -> Result<Job, AppError> {
        self.vm_change_job(subject, host, vm, VmAction::Delete, with_storage)
            .await
    }

    /// Checks a change now, then submits it as a `vm.<action>` job.
    async fn vm_change_job(
        &self,
        subject: &Subject,
        host: HostId,
        vm: &VmName,
        action: VmAction,
        with_storage: bool,
    ) -> Result<Job, AppError> {
        let kind = format!("vm.{}", action_name(action));
        let authorized = self
            .host_authorized(subject, host, Action::Operate, &kind)
            .await?;
        let owner = authorized.get().owner;
        let checked = async {
            // Asked of the host (not the inventory, which may be a few
            // milliseconds behind an action that just finished), so a
            // missing VM, a bad host key, a dead host or an invalid
            // transition answer now. A host too slow to say is left to the
            // job, which fails clearly within its own timeout.
            let driver = self.host_driver(&authorized).await?;
            match tokio::time::timeout(PRECHECK_TIMEOUT, driver.vm_state(vm)).await {
                Ok(Ok(state)) if !allowed(state, action) => {
                    Err(transition_error(vm, action, state))
                }
                Ok(Ok(_)) | Err(_) => Ok(()),
                Ok(Err(e)) => Err(self.host_error(authorized.get(), e)),
            }
        }
        .await;
        if checked.is_err() {
            // Refusals are audited like the host's own (the job audits the rest).
            self.audited(subject, &kind, vm_target(host, owner, vm), None, checked)
                .await?;
        }
        let spec = JobSpec::new(kind, owner)
            .target(format!("vm:{host}/{vm}"))
            .on_host(host)
            .timeout(VM_JOB_TIMEOUT);
        let (requester, vm) = (subject.clone(), vm.clone());
        self.job_submit(subject, spec, move |ctx| async move {
            let app = ctx.app();
            if action == VmAction::Delete {
                ctx.info(format!("delete {vm} (with_storage={with_storage})"))
                    .await;
                app.vm_delete(&requester, host, &vm, with_storage).await?;
                ctx.info(format!("{vm} is deleted")).await;
                return Ok(serde_json::json!({ "deleted": vm, "with_storage": with_storage }));
            }
            ctx.info(format!("{} {vm}", action_name(action))).await;
            let state = app.vm_act(&requester, host, &vm, action).await?;
            ctx.info(format!("{vm} is {state}")).await;
            Ok(serde_json::json!({ "state": state }))
        })
        .await
    }

    /// Undefines a stopped VM, with or without its disks.
    pub async fn vm_delete(
        &self,
        subject: &Subject,
        host: HostId,
        vm: &VmName,
        with_storage: bool,
    ) -> Result<(), AppError> {
        self.vm_change(subject, host, vm, VmAction::Delete, with_storage)
            .await
            .map(|_| ())
    }

    async fn vm_change(
        &self,
        subject: &Subject,
        host_id: HostId,
        vm: &VmName,
        action: VmAction,
        with_storage: bool,
    ) -> Result<VmState, AppError> {
        let audit_action = format!("vm.{}", action_name(action));
        let host = self
            .host_authorized(subject, host_id, Action::Operate, &audit_action)
            .await?;
        let owner = host.get().owner;
        let result = async {
            let driver = self.host_driver(&host).await?;
            let fail = |e| self.host_error(host.get(), e);
            let state = driver.vm_state(vm).await.map_err(fail)?;
            if !allowed(state, action) {
                return Err(transition_error(vm, action, state));
            }
            if action == VmAction::Delete {
                driver.undefine(vm, with_storage).await.map_err(fail)?;
                return Ok(VmState::ShutOff);
            }
            driver.act(vm, action).await.map_err(fail)?;
            driver.vm_state(vm).await.map_err(fail)
        }
        .await;
        let detail = (action == VmAction::Delete).then(|| format!("with_storage={with_storage}"));
        self.audited(
            subject,
            &audit_action,
            vm_target(host_id, owner, vm),
            detail,
            result,
        )
        .await
    }
}
