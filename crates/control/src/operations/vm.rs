//! VM lifecycle actions and delete as steps. The state a VM was found in is
//! read once (usually at submit, where a refused transition answers 409
//! before any job exists, and recorded as the `check` step's output) and the
//! state it was left in once, by `confirm`: one `virsh` call for the action
//! plus these two reads.

use overvisor_hv::HvError;
use overvisor_model::host::HostId;
use overvisor_model::vm::{VmAction, VmName, VmState, allowed};

use super::{StepCx, StepResult};
use crate::jobs::JobError;

pub const CHECK: &str = "check";
pub const ACT: &str = "act";
pub const CONFIRM: &str = "confirm";
pub const UNDEFINE: &str = "undefine";

/// The output of `check` and `confirm`.
pub fn state_output(state: VmState) -> serde_json::Value {
    serde_json::json!({ "state": state })
}

fn state_in(output: Option<&serde_json::Value>) -> Option<VmState> {
    output
        .and_then(|o| o.get("state"))
        .and_then(|s| serde_json::from_value(s.clone()).ok())
}

/// Why `action` cannot run on a VM in `state`, in the API's words.
pub fn transition_refusal(vm: &VmName, action: VmAction, state: VmState) -> String {
    format!(
        "cannot {} VM {vm} while it is {state}",
        action.as_str().replace('_', "-")
    )
}

pub async fn run_action(
    cx: &StepCx<'_>,
    host: HostId,
    vm: &VmName,
    action: VmAction,
    index: u16,
) -> StepResult {
    let (host, driver) = cx.host_driver(host).await?;
    let fail = |e: HvError| cx.host_failure(&host, e);
    match index {
        0 => {
            let state = driver.vm_state(vm).await.map_err(fail)?;
            if !allowed(state, action) {
                return Err(JobError::new(transition_refusal(vm, action, state)));
            }
            Ok(Some(state_output(state)))
        }
        1 => {
            if cx.resumed {
                // An earlier attempt may have acted already.
                let state = driver.vm_state(vm).await.map_err(fail)?;
                if action.goal() == Some(state) {
                    cx.info(format!("{vm} is already {state}")).await;
                    return Ok(None);
                }
            }
            cx.info(format!("{action} {vm}")).await;
            driver.act(vm, action).await.map_err(fail)?;
            Ok(None)
        }
        _ => {
            let state = driver.vm_state(vm).await.map_err(fail)?;
            cx.info(format!("{vm} is {state}")).await;
            Ok(Some(state_output(state)))
        }
    }
}

pub async fn run_delete(
    cx: &StepCx<'_>,
    host: HostId,
    vm: &VmName,
    with_storage: bool,
    index: u16,
) -> StepResult {
    let (host, driver) = cx.host_driver(host).await?;
    let fail = |e: HvError| cx.host_failure(&host, e);
    if index == 0 {
        let state = driver.vm_state(vm).await.map_err(fail)?;
        if !allowed(state, VmAction::Delete) {
            return Err(JobError::new(transition_refusal(
                vm,
                VmAction::Delete,
                state,
            )));
        }
        return Ok(Some(state_output(state)));
    }
    cx.info(format!("delete {vm} (with_storage={with_storage})"))
        .await;
    match driver.undefine(vm, with_storage).await {
        Ok(()) => {}
        // A resumed delete may find its work done.
        Err(HvError::NotFound(_)) if cx.resumed => {}
        Err(e) => return Err(fail(e)),
    }
    cx.info(format!("{vm} is deleted")).await;
    Ok(None)
}

/// `{"state": <left in>, "found": <found in>}`.
pub fn action_result(outputs: &[Option<serde_json::Value>]) -> serde_json::Value {
    let found = state_in(outputs.first().and_then(Option::as_ref));
    let left = state_in(outputs.get(2).and_then(Option::as_ref));
    serde_json::json!({ "state": left, "found": found })
}

pub fn audit_detail(outputs: &[Option<serde_json::Value>]) -> Option<String> {
    let found = state_in(outputs.first().and_then(Option::as_ref));
    let left = state_in(outputs.get(2).and_then(Option::as_ref));
    let show = |s: Option<VmState>| s.map_or_else(|| "-".to_owned(), |s| s.to_string());
    Some(format!("found={} left={}", show(found), show(left)))
}
