//! The live inventory over HTTP: a fleet summary and the VM list across
//! every host the caller may see — or one host's, with its status —
//! filtered, sorted, paginated, answered from memory, never by asking a
//! host; and resync on demand, as a job.

use axum::extract::State;
use overvisor_control::inventory::{
    HostVmPage, InventorySummary, VmPage, VmQuery, VmRecord, VmSort,
};
use overvisor_model::host::{HostId, HostKind};
use overvisor_model::vm::VmState;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};

/// Largest page a client may ask for.
pub const MAX_PAGE: usize = 1000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VmsParams {
    /// Only VMs on this host.
    pub host: Option<HostId>,
    /// Only VMs on hosts of this kind: `libvirt` or `hyperv`.
    pub kind: Option<HostKind>,
    pub state: Option<VmState>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    /// Comma-separated host tags, all required.
    pub tags: Option<String>,
    /// `name` (default), `state`, `host`, `memory`, `vcpus`; prefix `-` for descending.
    pub sort: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// How many matches to skip (default 0).
    pub offset: Option<usize>,
}

fn vm_query(params: VmsParams) -> Result<VmQuery, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let (descending, sort) = match params.sort.as_deref() {
        None => (false, VmSort::Name),
        Some(raw) => {
            let (descending, key) = match raw.strip_prefix('-') {
                Some(key) => (true, key),
                None => (false, raw),
            };
            let sort = VmSort::parse(key).ok_or_else(|| {
                ApiError::invalid(
                    "sort",
                    "must be name, state, host, memory or vcpus (prefix '-' for descending)",
                )
            })?;
            (descending, sort)
        }
    };
    if params.name.as_ref().is_some_and(|n| n.len() > 256) {
        return Err(ApiError::invalid("name", "at most 256 characters"));
    }
    let tags = params
        .tags
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(VmQuery {
        host: params.host,
        kind: params.kind,
        state: params.state,
        name: params.name.filter(|n| !n.is_empty()),
        tags,
        sort,
        descending,
        offset: params.offset.unwrap_or(0),
        limit,
    })
}

#[utoipa::path(get, path = "/api/v1/inventory", tag = "inventory",
    responses((status = 200, body = InventorySummary), (status = 401, body = ErrorBody)))]
pub async fn inventory_summary(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<InventorySummary>> {
    Ok(Json(state.app.inventory_summary(&subject)?))
}

#[utoipa::path(get, path = "/api/v1/vms", tag = "inventory", params(VmsParams),
    responses((status = 200, body = VmPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn inventory_vms(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Query(params): Query<VmsParams>,
) -> ApiResult<Json<VmPage>> {
    let query = vm_query(params)?;
    Ok(Json(state.app.inventory_vms(&subject, &query)?))
}

#[utoipa::path(get, path = "/api/v1/vms/{id}", tag = "inventory",
    params(("id" = String, Path, description = "VM UUID")),
    responses((status = 200, body = VmRecord), (status = 404, body = ErrorBody)))]
pub async fn inventory_vm(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<VmRecord>> {
    let vm = state.app.inventory_vm(&subject, id)?;
    Ok(Json(VmRecord::clone(&vm)))
}

/// One host's VMs from the inventory, with the host's status (`connected`,
/// `connecting`, or `disconnected` with `last_error`: the VMs are then as
/// last seen). Takes the parameters of `GET /api/v1/vms` except `host`.
#[utoipa::path(get, path = "/api/v1/hosts/{id}/vms", tag = "vms",
    params(("id" = String, Path), VmsParams),
    responses((status = 200, body = HostVmPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn host_vms(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<HostId>,
    Query(params): Query<VmsParams>,
) -> ApiResult<Json<HostVmPage>> {
    if params.host.is_some() {
        return Err(ApiError::invalid("host", "the host is given by the path"));
    }
    let query = vm_query(params)?;
    Ok(Json(
        state.app.inventory_host_vms(&subject, id, &query).await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ResyncParams {
    /// Only this host (default: every host the caller may operate).
    pub host: Option<HostId>,
}

/// Re-reads hosts now over their kept connections, as an
/// `inventory.resync` job; its result is `{hosts, vms, failed: [{host_id,
/// host_name, error}], duration_ms}`. Over many hosts the job succeeds and
/// lists the hosts that failed; for one host it fails with the host's error.
#[utoipa::path(post, path = "/api/v1/inventory/resync", tag = "inventory", params(ResyncParams),
    responses((status = 202, body = overvisor_model::job::Job, description = "The job; `Location` names it"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn inventory_resync(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Query(params): Query<ResyncParams>,
) -> ApiResult<axum::response::Response> {
    let job = state
        .app
        .inventory_resync_job(&subject, params.host)
        .await?;
    Ok(crate::api::jobs::job_accepted(&job))
}

/// Re-reads one host now (`POST /api/v1/inventory/resync?host=ID`).
#[utoipa::path(post, path = "/api/v1/hosts/{id}/resync", tag = "inventory",
    params(("id" = String, Path)),
    responses((status = 202, body = overvisor_model::job::Job, description = "The job; `Location` names it"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn host_resync(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<HostId>,
) -> ApiResult<axum::response::Response> {
    let job = state.app.inventory_resync_job(&subject, Some(id)).await?;
    Ok(crate::api::jobs::job_accepted(&job))
}
