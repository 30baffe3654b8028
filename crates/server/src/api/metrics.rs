//! Usage graphs over HTTP: a host's, a VM's and the whole visible fleet's
//! figures over the last hour or day.

use axum::extract::State;
use overvisor_control::metrics::MetricsWindow;
use overvisor_model::host::HostId;
use overvisor_model::metrics::Range;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MetricsParams {
    /// `1h` (default: the sampling step, 30 s unless configured) or `24h`
    /// (10-minute averages).
    pub range: Option<Range>,
}

#[utoipa::path(get, path = "/api/v1/hosts/{id}/metrics", tag = "metrics",
    params(("id" = String, Path, description = "Host id"), MetricsParams),
    responses((status = 200, body = MetricsWindow,
        description = "The host's CPU and memory, and its VMs' disk and network traffic summed"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn host_metrics(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<HostId>,
    Query(params): Query<MetricsParams>,
) -> ApiResult<Json<MetricsWindow>> {
    let range = params.range.unwrap_or_default();
    Ok(Json(state.app.metrics_host(&subject, id, range)?))
}

#[utoipa::path(get, path = "/api/v1/vms/{id}/metrics", tag = "metrics",
    params(("id" = String, Path, description = "VM UUID"), MetricsParams),
    responses((status = 200, body = MetricsWindow), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn vm_metrics(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<MetricsParams>,
) -> ApiResult<Json<MetricsWindow>> {
    let range = params.range.unwrap_or_default();
    Ok(Json(state.app.metrics_vm(&subject, id, range)?))
}

#[utoipa::path(get, path = "/api/v1/metrics/fleet", tag = "metrics",
    params(MetricsParams),
    responses((status = 200, body = MetricsWindow,
        description = "Every host the caller may see: CPU weighted by each host's CPUs, the rest summed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn fleet_metrics(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Query(params): Query<MetricsParams>,
) -> ApiResult<Json<MetricsWindow>> {
    let range = params.range.unwrap_or_default();
    Ok(Json(state.app.metrics_fleet(&subject, range)?))
}
