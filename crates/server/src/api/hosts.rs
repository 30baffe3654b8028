//! Hosts: probe a host key, register (with the confirmed fingerprint),
//! list, show, change, remove, live facts — and agent enrolment at
//! `POST /v1/servers/connect`.

use axum::extract::State;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use overvisor_control::hosts::Enrolment;
use overvisor_model::host::{
    Host, HostChanges, HostFacts, HostId, HostKeyFingerprint, HostKind, NewHost,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::jobs::job_accepted;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostProbe {
    pub address: String,
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    22
}

/// The key a host presented, for the operator to compare out of band.
#[derive(Serialize, ToSchema)]
pub struct ProbedHostKey {
    pub address: String,
    pub port: u16,
    pub fingerprint: HostKeyFingerprint,
    /// `ssh-ed25519 AAAA…`
    pub public_key: String,
}

/// Reads the SSH host key `address:port` presents, without logging in.
/// Send the fingerprint back as `host_key_fingerprint` once confirmed.
#[utoipa::path(post, path = "/api/v1/hosts/probe", tag = "hosts", request_body = HostProbe,
    responses((status = 200, body = ProbedHostKey), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 502, body = ErrorBody), (status = 504, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn host_probe(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Json(body): Json<HostProbe>,
) -> ApiResult<Json<ProbedHostKey>> {
    let key = state
        .app
        .host_probe(&subject, &body.address, body.port)
        .await?;
    Ok(Json(ProbedHostKey {
        address: body.address,
        port: body.port,
        fingerprint: key.fingerprint,
        public_key: key.public_key,
    }))
}

/// Registers a host. `Location` names the host; `X-Job-Id` the finished
/// `host.create` job that records the change.
#[utoipa::path(post, path = "/api/v1/hosts", tag = "hosts", request_body = NewHost,
    responses((status = 201, body = Host, headers(("x-job-id" = String, description = "The host.create job"))), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn host_create(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Json(new): Json<NewHost>,
) -> ApiResult<Response> {
    let (host, job) = state.app.host_create(&subject, new).await?;
    let location = format!("/api/v1/hosts/{}", host.id);
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (JOB_ID_HEADER, job.id.to_string()),
        ],
        Json(host),
    )
        .into_response())
}

/// Names the (finished) `host.create` job that recorded a registration:
/// `Location` already names the new host.
pub const JOB_ID_HEADER: HeaderName = HeaderName::from_static("x-job-id");

/// Your hosts; an administrator sees everyone's.
#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts",
    responses((status = 200, body = Vec<Host>), (status = 401, body = ErrorBody)))]
pub async fn hosts_list(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<Vec<Host>>> {
    Ok(Json(state.app.hosts_list(&subject).await?))
}

#[utoipa::path(get, path = "/api/v1/hosts/{id}", tag = "hosts", params(("id" = String, Path)),
    responses((status = 200, body = Host), (status = 404, body = ErrorBody)))]
pub async fn host_get(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<HostId>,
) -> ApiResult<Json<Host>> {
    Ok(Json(state.app.host_get(&subject, id).await?))
}

/// Changes a host in a `host.update` job (its result is `{"host"}`); the
/// host's connection is replaced on the next call. Bad input, access and
/// clashes are refused before any job exists.
#[utoipa::path(patch, path = "/api/v1/hosts/{id}", tag = "hosts", params(("id" = String, Path)),
    request_body = HostChanges,
    responses((status = 202, body = overvisor_model::job::Job, description = "The job; `Location` names it"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn host_update(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<HostId>,
    Json(changes): Json<HostChanges>,
) -> ApiResult<Response> {
    let job = state.app.host_update_job(&subject, id, changes).await?;
    Ok(job_accepted(&job))
}

/// Removes the host from Overvisor (its VMs are not touched) in a
/// `host.delete` job.
#[utoipa::path(delete, path = "/api/v1/hosts/{id}", tag = "hosts", params(("id" = String, Path)),
    responses((status = 202, body = overvisor_model::job::Job, description = "The job; `Location` names it"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn host_delete(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<HostId>,
) -> ApiResult<Response> {
    let job = state.app.host_delete_job(&subject, id).await?;
    Ok(job_accepted(&job))
}

/// CPU, memory and hypervisor versions, asked of the host now.
#[utoipa::path(get, path = "/api/v1/hosts/{id}/facts", tag = "hosts", params(("id" = String, Path)),
    responses((status = 200, body = HostFacts), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn host_facts(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<HostId>,
) -> ApiResult<Json<HostFacts>> {
    Ok(Json(state.app.host_facts(&subject, id).await?))
}

/// What a host agent reports when it enrols.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConnect {
    /// `libvirt` (default) or `hyperv`.
    pub kind: Option<HostKind>,
    pub hostname: Option<String>,
    pub ip_address: Option<String>,
    /// SSH port; default 22.
    pub port: Option<u16>,
    /// The automation account; default `ovdeploy`.
    pub user: Option<String>,
    /// The host's own SSH host key fingerprint, read on the host. Without
    /// it the host is recorded unconfirmed until an operator sets one.
    pub host_key_fingerprint: Option<HostKeyFingerprint>,
}

#[derive(Serialize, ToSchema)]
pub struct ServerConnected {
    pub host: Host,
    /// Whether this call created the host (else it updated it).
    pub created: bool,
    /// The account to authorize the key for.
    pub automation_user: String,
    pub port: u16,
    /// The line to add to the automation account's `authorized_keys`.
    pub authorized_keys: String,
}

/// Host agent enrolment (`overvisor agent enroll`): creates or updates
/// your host at this address — never a second one — and answers the public
/// key its automation account must authorize. Also at `/v1/servers/connect`.
#[utoipa::path(post, path = "/api/v1/servers/connect", tag = "hosts", request_body = ServerConnect,
    responses((status = 201, body = ServerConnected), (status = 200, body = ServerConnected),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn server_connect(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Json(body): Json<ServerConnect>,
) -> ApiResult<Response> {
    let enrolment = Enrolment {
        kind: body.kind,
        hostname: body.hostname,
        ip_address: body.ip_address,
        port: body.port,
        ssh_user: body.user,
        host_key_fingerprint: body.host_key_fingerprint,
    };
    let enrolled = state.app.host_enrol(&subject, enrolment).await?;
    let status = if enrolled.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = ServerConnected {
        automation_user: enrolled.host.ssh_user.clone(),
        port: enrolled.host.port,
        created: enrolled.created,
        authorized_keys: enrolled.authorized_key,
        host: enrolled.host,
    };
    Ok((status, Json(body)).into_response())
}
