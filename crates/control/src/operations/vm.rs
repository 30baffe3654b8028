//! VM lifecycle actions and delete as steps. The state a VM was found in is
//! known before any job exists (from the inventory when it allows the
//! action, else read from the host, where a refused transition answers 409)
//! and recorded as the `check` step's output; `act` runs the one `virsh`
//! command; `confirm` takes the state it was left in from the inventory,
//! which the host's event stream updates, and asks the host only when the
//! inventory does not show it.

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
            // The host's event stream usually tells the inventory the new
            // state before the action's command has even returned; only
            // when it does not (or the action has no immediate goal) is the
            // host asked again.
            let seen = match action.immediate_goal() {
                Some(goal) => shown_by_inventory(cx, host.get().id, vm, goal).await,
                None => None,
            };
            let state = match seen {
                Some(state) => state,
                None => driver.vm_state(vm).await.map_err(fail)?,
            };
            cx.info(format!("{vm} is {state}")).await;
            Ok(Some(state_output(state)))
        }
    }
}

/// How long `confirm` waits for the inventory before asking the host.
const INVENTORY_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

/// `goal`, once the inventory shows `vm` in it (within [`INVENTORY_WAIT`]).
async fn shown_by_inventory(
    cx: &StepCx<'_>,
    host: HostId,
    vm: &VmName,
    goal: VmState,
) -> Option<VmState> {
    let deadline = tokio::time::Instant::now() + INVENTORY_WAIT;
    loop {
        match cx.app.inventory().vm_state(host, vm.as_str()) {
            Some(state) if state == goal => return Some(state),
            // Not followed by the inventory: ask the host.
            None => return None,
            Some(_) if tokio::time::Instant::now() >= deadline => return None,
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
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
