//! How each [`Operation`] runs: its steps, what each step does, and how
//! a step is undone. The runner (`jobs/runner.rs`) walks the steps, records
//! each on the job, and on failure or cancel undoes the steps that began, in
//! reverse order.
//!
//! Rules every step keeps:
//! - **Idempotent where the operation says so** ([`resumable`]): a step may
//!   run again after a crash, so it first looks at what is already there.
//! - **Undo tolerates a partial step**: an undo may find that its step did
//!   nothing, or only half of it, and must not fail for that.
//! - No secrets in outputs, logs or errors: they are shown on the job.

mod deploy;
mod host;
mod provision;
mod setup;
mod test;
pub(crate) mod vm;

use std::sync::Arc;

use overvisor_hv::Hypervisor;
use overvisor_model::account::UserId;
use overvisor_model::host::Host;
use overvisor_model::job::{JobId, LogLevel};
use overvisor_model::operation::{Grant, Operation};
use tokio_util::sync::CancellationToken;

use crate::App;
use crate::authz::Authorized;
use crate::jobs::JobError;

/// One step as an operation declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDef {
    pub name: &'static str,
    pub has_undo: bool,
}

const fn step(name: &'static str) -> StepDef {
    StepDef {
        name,
        has_undo: false,
    }
}

/// The steps of `op`, in order.
pub fn plan(op: &Operation) -> Vec<StepDef> {
    match op {
        Operation::VmAction { .. } => vec![step(vm::CHECK), step(vm::ACT), step(vm::CONFIRM)],
        Operation::VmDelete { .. } => vec![step(vm::CHECK), step(vm::UNDEFINE)],
        Operation::VmDeploy { spec, .. } => deploy::steps(spec),
        Operation::HostCreate { .. } | Operation::HostUpdate { .. } => vec![step(host::RECORD)],
        Operation::HostDelete { .. } => vec![step(host::REMOVE)],
        Operation::InventoryResync { .. } => vec![step("resync")],
        Operation::TestSleep { .. } => vec![step("sleep")],
        Operation::TestSteps { steps, .. } => (1..=*steps)
            .map(|i| StepDef {
                name: test::STEP_NAMES[usize::from(i.saturating_sub(1)).min(test::MAX_STEPS - 1)],
                has_undo: true,
            })
            .collect(),
    }
}

/// Whether a job whose runner died mid-step may be resumed from that step
/// (every step idempotent), rather than marked interrupted:
/// - VM start, shutdown, force-stop, suspend, resume, delete: resumed (the
///   step first checks whether the VM is already where it should be);
/// - VM reboot and reset: interrupted (a second run restarts the guest again);
/// - VM deploy: resumed (each step looks first, see `operations/deploy.rs`);
/// - host create/update/delete, inventory resync, test sleep: resumed;
/// - test steps: as the test asks.
pub fn resumable(op: &Operation) -> bool {
    match op {
        Operation::VmAction { action, .. } => action.repeatable(),
        Operation::TestSteps { resumable, .. } => *resumable,
        Operation::VmDelete { .. }
        | Operation::VmDeploy { .. }
        | Operation::HostCreate { .. }
        | Operation::HostUpdate { .. }
        | Operation::HostDelete { .. }
        | Operation::InventoryResync { .. }
        | Operation::TestSleep { .. } => true,
    }
}

/// What a step gets: the job it belongs to, the outputs of the steps before
/// it, and ways to report.
pub struct StepCx<'a> {
    pub(crate) app: &'a App,
    pub(crate) job: JobId,
    pub(crate) owner: UserId,
    pub(crate) index: u16,
    pub(crate) grant: &'a Grant,
    /// Outputs of every step so far (by index), for later steps.
    pub(crate) outputs: &'a [Option<serde_json::Value>],
    /// This step began in an earlier attempt whose runner died.
    pub(crate) resumed: bool,
    pub(crate) cancel: &'a CancellationToken,
}

impl StepCx<'_> {
    pub async fn info(&self, message: impl AsRef<str>) {
        self.app
            .job_log_line(self.job, self.owner, LogLevel::Info, message.as_ref())
            .await;
    }

    pub async fn warn(&self, message: impl AsRef<str>) {
        self.app
            .job_log_line(self.job, self.owner, LogLevel::Warn, message.as_ref())
            .await;
    }

    /// Progress within this step (0..=100).
    pub async fn progress(&self, percent: u8) {
        self.app
            .job_step_progress(self.job, self.owner, self.index, percent)
            .await;
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The output of an earlier step.
    pub fn output_of(&self, index: usize) -> Option<&serde_json::Value> {
        self.outputs.get(index).and_then(Option::as_ref)
    }

    /// The host the operation was granted on, loaded now (it may have
    /// changed since the job was submitted), with its shared driver.
    async fn host_driver(
        &self,
        id: overvisor_model::host::HostId,
    ) -> Result<(Authorized<Host>, Arc<dyn Hypervisor>), JobError> {
        let host = self
            .app
            .store()
            .host_get(id)
            .await
            .map_err(|e| JobError::new(format!("host {id}: {e}")))?;
        let host = crate::authz::granted(self.grant, host)
            .map_err(|_| JobError::new("the host now belongs to someone else"))?;
        let driver = self.app.host_driver(&host).await.map_err(JobError::from)?;
        Ok((host, driver))
    }

    /// A host error as the job should show it (names the host).
    fn host_failure(&self, host: &Authorized<Host>, err: overvisor_hv::HvError) -> JobError {
        JobError::from(self.app.host_error(host.get(), err))
    }
}

pub type StepResult = Result<Option<serde_json::Value>, JobError>;

/// Runs step `index` of `op`.
pub async fn run_step(
    op: &Operation,
    index: u16,
    cx: &StepCx<'_>,
    secret: Option<&[u8]>,
) -> StepResult {
    match op {
        Operation::VmAction { host, vm, action } => {
            vm::run_action(cx, *host, vm, *action, index).await
        }
        Operation::VmDelete {
            host,
            vm,
            with_storage,
        } => vm::run_delete(cx, *host, vm, *with_storage, index).await,
        Operation::VmDeploy { host, vm, spec } => {
            deploy::run(cx, *host, vm, spec, index, secret).await
        }
        Operation::HostCreate { host, .. } => host::create(cx, host, secret).await,
        Operation::HostUpdate {
            host, credential, ..
        } => host::update(cx, host, *credential, secret).await,
        Operation::HostDelete { host } => host::delete(cx, host).await,
        Operation::InventoryResync { hosts, single } => {
            cx.app.inventory_resync_step(cx, hosts, *single).await
        }
        Operation::TestSleep { seconds, fail } => test::sleep(cx, *seconds, *fail).await,
        Operation::TestSteps {
            step_millis,
            fail_at,
            ..
        } => test::step(cx, *step_millis, *fail_at).await,
    }
}

/// Undoes step `index` of `op` (only called for steps with an undo).
pub async fn undo_step(op: &Operation, index: u16, cx: &StepCx<'_>) -> Result<(), JobError> {
    match op {
        Operation::VmDeploy { host, vm, spec } => deploy::undo(cx, *host, vm, spec, index).await,
        Operation::TestSteps { undo_fails, .. } => test::undo(cx, *undo_fails).await,
        _ => Ok(()),
    }
}

/// What the job answers with once every step is done.
pub fn result(op: &Operation, outputs: &[Option<serde_json::Value>]) -> serde_json::Value {
    let last = outputs.iter().rev().flatten().next().cloned();
    match op {
        Operation::VmAction { .. } => vm::action_result(outputs),
        Operation::VmDelete {
            vm, with_storage, ..
        } => serde_json::json!({ "deleted": vm, "with_storage": with_storage }),
        _ => last.unwrap_or(serde_json::Value::Null),
    }
}

/// The audit detail of a finished job: what its steps found and left.
pub fn audit_detail(op: &Operation, outputs: &[Option<serde_json::Value>]) -> Option<String> {
    match op {
        Operation::VmAction { .. } => vm::audit_detail(outputs),
        Operation::VmDelete { with_storage, .. } => Some(format!("with_storage={with_storage}")),
        Operation::VmDeploy { spec, .. } => Some(format!(
            "profile={} uuid={} image={}",
            spec.profile,
            spec.uuid,
            deploy::image_digest(spec, outputs).map_or_else(|| "-".to_owned(), |d| d.hex)
        )),
        Operation::HostCreate {
            host,
            trust_on_first_use,
        } => Some(format!(
            "address={} port={}{}{}",
            host.address,
            host.port,
            if *trust_on_first_use {
                " trust_on_first_use"
            } else {
                ""
            },
            host.host_key_fingerprint
                .as_ref()
                .map(|f| format!(" host_key={f}"))
                .unwrap_or_else(|| " host_key=unconfirmed".into())
        )),
        Operation::HostUpdate { summary, .. } => Some(summary.clone()),
        Operation::HostDelete { host } => Some(format!("address={}", host.address)),
        _ => None,
    }
}
