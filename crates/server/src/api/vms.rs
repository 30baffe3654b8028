//! VMs of a host: show (live), lifecycle actions, delete (the host's VM
//! list is the inventory's, in `inventory.rs`). Names are
//! validated here (400) before anything reaches the application, let alone
//! a host; invalid transitions answer 409 `invalid_transition`.

use axum::extract::State;
use overvisor_model::host::HostId;
use overvisor_model::vm::{VmAction, VmInfo, VmName};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};

pub(crate) fn vm_name(raw: &str) -> Result<VmName, ApiError> {
    VmName::parse(raw).map_err(|e| ApiError::invalid("name", e.to_string()))
}

fn parse_action(raw: &str) -> Result<VmAction, ApiError> {
    VmAction::from_url(raw).map_err(|e| ApiError::invalid(&e.field, e.message))
}

/// One VM in detail (by name or UUID).
#[utoipa::path(get, path = "/api/v1/hosts/{id}/vms/{name}", tag = "vms",
    params(("id" = String, Path), ("name" = String, Path, description = "VM name or UUID")),
    responses((status = 200, body = VmInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn vm_get(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path((id, name)): Path<(HostId, String)>,
) -> ApiResult<Json<VmInfo>> {
    let name = vm_name(&name)?;
    Ok(Json(state.app.vm_get(&subject, id, &name).await?))
}

/// Runs a lifecycle action: `start`, `shutdown` (graceful), `force-stop`,
/// `reboot` (graceful), `reset`, `suspend`, `resume`.
#[utoipa::path(post, path = "/api/v1/hosts/{id}/vms/{name}/{action}", tag = "vms",
    params(("id" = String, Path), ("name" = String, Path, description = "VM name or UUID"),
        ("action" = String, Path, description = "start | shutdown | force-stop | reboot | reset | suspend | resume")),
    responses((status = 202, body = overvisor_model::job::Job, description = "The job running the action; `Location` names it and its result is `{\"state\"}`"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn vm_action(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path((id, name, action)): Path<(HostId, String, String)>,
) -> ApiResult<axum::response::Response> {
    let name = vm_name(&name)?;
    let action = parse_action(&action)?;
    let job = state.app.vm_act_job(&subject, id, &name, action).await?;
    Ok(crate::api::jobs::job_accepted(&job))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDeleteQuery {
    /// Also delete the VM's disks. Default false.
    #[serde(default)]
    pub with_storage: bool,
}

/// Undefines a shut-off VM, optionally with its disks, as a `vm.delete`
/// job. A VM that is not shut off is refused (409) before any job exists.
#[utoipa::path(delete, path = "/api/v1/hosts/{id}/vms/{name}", tag = "vms",
    params(("id" = String, Path), ("name" = String, Path, description = "VM name or UUID"),
        ("with_storage" = Option<bool>, Query, description = "also delete its disks")),
    responses((status = 202, body = overvisor_model::job::Job, description = "The job deleting the VM; `Location` names it"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn vm_delete(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path((id, name)): Path<(HostId, String)>,
    Query(query): Query<VmDeleteQuery>,
) -> ApiResult<axum::response::Response> {
    let name = vm_name(&name)?;
    let job = state
        .app
        .vm_delete_job(&subject, id, &name, query.with_storage)
        .await?;
    Ok(crate::api::jobs::job_accepted(&job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_actions_round_trip() {
        for action in VmAction::ALL {
            let url = action.as_str().replace('_', "-");
            if action == VmAction::Delete {
                assert!(parse_action(&url).is_err(), "delete has its own verb");
            } else {
                assert_eq!(parse_action(&url).ok(), Some(action));
            }
        }
        for bad in ["delete", "Start", "force_stop", "", "start;id", "force-"] {
            assert!(parse_action(bad).is_err(), "{bad}");
        }
    }
}
