//! Jobs over HTTP: list, show (with `?wait=` long-poll), cancel — and
//! [`job_accepted`], the one `202 Accepted` + `Location` response every
//! handler that starts a job answers with.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use overvisor_control::jobs::JobDetail;
use overvisor_model::job::{Job, JobId, JobQuery, JobStatus};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};

/// Longest `?wait=` a client may ask for, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// `202 Accepted`, `Location: /api/v1/jobs/{id}` and the job as the body:
/// the answer to every request that starts a job.
pub fn job_accepted(job: &Job) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(job)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobsParams {
    pub status: Option<JobStatus>,
    /// Exact kind, e.g. `vm.start`.
    pub kind: Option<String>,
    /// Exact target, e.g. `vm:<host id>/web-01` or `host:<host id>`.
    pub target: Option<String>,
    /// Only children of this job.
    pub parent: Option<JobId>,
    /// Jobs created before this one (next page: the last id you got).
    pub before: Option<JobId>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Admins: `true` for every user's jobs.
    #[serde(default)]
    pub all: bool,
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobsParams),
    responses((status = 200, body = Vec<Job>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn jobs_list(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Query(params): Query<JobsParams>,
) -> ApiResult<Json<Vec<Job>>> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let query = JobQuery {
        owner: None,
        status: params.status,
        kind: params.kind,
        target: params.target,
        parent: params.parent,
        before: params.before,
        limit,
    };
    Ok(Json(
        state.app.jobs_list(&subject, query, params.all).await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    /// Seconds to wait for the job to finish before answering (0..=60).
    #[param(minimum = 0, maximum = 60)]
    pub wait: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id"), WaitParams),
    responses((status = 200, body = JobDetail, description = "The job with its log; with `wait`, once finished or when the wait expires"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn job_get(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<JobId>,
    Query(params): Query<WaitParams>,
) -> ApiResult<Json<JobDetail>> {
    let detail = match params.wait {
        None | Some(0) => state.app.job_get(&subject, id).await?,
        Some(secs) if secs <= MAX_WAIT_SECS => {
            state
                .app
                .job_wait(&subject, id, Duration::from_secs(secs))
                .await?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "wait",
                format!("must be between 0 and {MAX_WAIT_SECS} seconds"),
            ));
        }
    };
    Ok(Json(detail))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobDetail, description = "The job, cancelled (or still stopping)"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The job has already finished")))]
pub async fn job_cancel(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<JobId>,
) -> ApiResult<Json<JobDetail>> {
    Ok(Json(state.app.job_cancel(&subject, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSleep {
    /// 1..=3600.
    pub seconds: u32,
    #[serde(default)]
    pub fail: bool,
}

pub async fn job_test_sleep(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Json(body): Json<TestSleep>,
) -> ApiResult<Response> {
    if !(1..=3600).contains(&body.seconds) {
        return Err(ApiError::invalid("seconds", "must be between 1 and 3600"));
    }
    let job = state
        .app
        .job_test_sleep(&subject, body.seconds, body.fail)
        .await?;
    Ok(job_accepted(&job))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSteps {
    /// 1..=8 steps, each with an undo.
    pub steps: u8,
    /// How long each step takes (0..=60,000 ms).
    #[serde(default)]
    pub step_millis: u32,
    /// This step (1-based) fails.
    pub fail_at: Option<u8>,
    /// This step's undo (1-based) fails.
    pub undo_fails: Option<u8>,
    /// Whether the job may be resumed after its runner died (default true).
    #[serde(default = "yes")]
    pub resumable: bool,
}

fn yes() -> bool {
    true
}

pub async fn job_test_steps(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Json(body): Json<TestSteps>,
) -> ApiResult<Response> {
    if body.step_millis > 60_000 {
        return Err(ApiError::invalid("step_millis", "must be at most 60000"));
    }
    let op = overvisor_model::operation::Operation::TestSteps {
        steps: body.steps,
        step_millis: body.step_millis,
        fail_at: body.fail_at,
        undo_fails: body.undo_fails,
        resumable: body.resumable,
    };
    let job = state.app.job_test_steps(&subject, op).await?;
    Ok(job_accepted(&job))
}

/// The test-only routes, when `enabled` (the `test_jobs` setting):
/// `POST /api/v1/jobs/test-sleep`, a job that only sleeps, and
/// `POST /api/v1/jobs/test-steps`, a job of steps that can fail or whose
/// undo can fail where asked. Integration tests need jobs that are reliably
/// still running when they kill or cancel them, without depending on a
/// host's timing. Off in production; they change nothing anyway.
pub fn test_routes(enabled: bool) -> Router<AppState> {
    if enabled {
        Router::new()
            .route("/api/v1/jobs/test-sleep", post(job_test_sleep))
            .route("/api/v1/jobs/test-steps", post(job_test_steps))
    } else {
        Router::new()
    }
}
