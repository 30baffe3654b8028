//! The live inventory over HTTP: a fleet summary and the VM list across
//! every host the caller may see — filtered, sorted, paginated — answered
//! from memory, never by asking a host.

use axum::extract::State;
use overvisor_control::inventory::{InventorySummary, VmPage, VmQuery, VmRecord, VmSort};
use overvisor_model::host::HostId;
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
    pub state: Option<VmState>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    /// Comma-separated host tags, all required.
    pub tags: Option<String>,
    /// `name` (default), `state`, `host`, `memory`, `vcpus`; prefix `-` for descending.
    pub sort: Option<String>,
    /// Page size, 1..=1000 (default 100).
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
