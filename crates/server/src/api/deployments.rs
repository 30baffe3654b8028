//! Deployments over HTTP: one call checks the request and answers with the
//! `vm.deploy` job and, in this one response only, the guest's credentials.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use overvisor_deploy::DeploymentRequest;
use overvisor_model::host::HostId;
use overvisor_model::job::Job;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};

/// The answer to a deployment: its job, and the guest's credentials.
#[derive(Serialize, ToSchema)]
pub struct DeploymentAccepted {
    pub job: Job,
    pub credentials: GuestCredentials,
}

/// Shown only in this response: Overvisor keeps no copy of the password
/// (the guest's seed carries only its SHA-512-crypt hash).
#[derive(Serialize, ToSchema)]
pub struct GuestCredentials {
    pub username: String,
    pub password: String,
}

/// Deploys a VM from a profile on a libvirt host, as a `vm.deploy` job
/// (steps `image`, `overlay`, `seed`, `define`, `start`). Every field is
/// checked first, with the host's networks, CPUs and memory: a bad request
/// is a 4xx and no job exists.
#[utoipa::path(post, path = "/api/v1/hosts/{id}/deployments", tag = "vms",
    params(("id" = String, Path)),
    request_body = DeploymentRequest,
    responses((status = 202, body = DeploymentAccepted, description = "The job deploying the VM (`Location` names it) and the generated credentials, shown only now"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn deployment_create(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<HostId>,
    Json(req): Json<DeploymentRequest>,
) -> ApiResult<Response> {
    let (job, credentials) = state.app.vm_deploy_job(&subject, id, &req).await?;
    let location = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)).ok();
    let body = DeploymentAccepted {
        job,
        credentials: GuestCredentials {
            username: credentials.username,
            password: credentials.password.expose().to_owned(),
        },
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    // The body holds a password: nobody may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
