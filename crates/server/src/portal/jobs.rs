//! Jobs in the portal: the list (newest first, filter by status) and the
//! detail page, whose status, progress and log lines follow the event
//! stream while the job runs.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use overvisor_control::jobs::JobDetail;
use overvisor_model::job::JobQuery;
use overvisor_model::job::{Job, JobId, JobStatus};
use overvisor_model::operation::JobStep;
use serde::Deserialize;

use super::{Chrome, PortalSession, error_response, invalid, render};
use crate::AppState;
use crate::extract::{Path, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(jobs_page))
        .route("/jobs/table", get(jobs_table))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/panel", get(job_panel))
}

const JOBS_PAGE: u32 = 50;

#[derive(Deserialize, Default)]
struct JobsQuery {
    #[serde(default)]
    status: String,
    before: Option<JobId>,
    #[serde(default)]
    all: Option<String>,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    q: JobsQuery,
    statuses: [JobStatus; 6],
    table: JobsTable,
}

#[derive(Template)]
#[template(path = "jobs_table.html")]
struct JobsTable {
    jobs: Vec<Job>,
    older: Option<String>,
}

async fn load_jobs(
    state: &AppState,
    session: &PortalSession,
    q: &JobsQuery,
) -> Result<JobsTable, Response> {
    let status = match q.status.as_str() {
        "" => None,
        s => Some(
            s.parse::<JobStatus>()
                .map_err(|e| error_response(session, invalid(e)))?,
        ),
    };
    let query = JobQuery {
        status,
        before: q.before,
        limit: JOBS_PAGE,
        ..JobQuery::default()
    };
    let all = q.all.is_some() && session.is_admin();
    let jobs = state
        .app
        .jobs_list(&session.subject, query, all)
        .await
        .map_err(|e| error_response(session, e))?;
    let older = (jobs.len() == JOBS_PAGE as usize)
        .then(|| jobs.last())
        .flatten()
        .map(|last| {
            let mut s = format!("status={}&before={}", q.status, last.id);
            if q.all.is_some() {
                s.push_str("&all=on");
            }
            s
        });
    Ok(JobsTable { jobs, older })
}

async fn jobs_page(
    State(state): State<AppState>,
    session: PortalSession,
    Query(q): Query<JobsQuery>,
) -> Response {
    match load_jobs(&state, &session, &q).await {
        Ok(table) => render(&JobsPage {
            chrome: Chrome::new(&session, "jobs"),
            q,
            statuses: JobStatus::ALL,
            table,
        }),
        Err(response) => response,
    }
}

/// The table alone, re-rendered when a job event arrives.
async fn jobs_table(
    State(state): State<AppState>,
    session: PortalSession,
    Query(q): Query<JobsQuery>,
) -> Response {
    match load_jobs(&state, &session, &q).await {
        Ok(table) => render(&table),
        Err(response) => response,
    }
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    panel: JobPanel,
}

#[derive(Template)]
#[template(path = "job_panel.html")]
pub(super) struct JobPanel {
    pub(super) detail: JobDetail,
}

impl JobPanel {
    /// What a step moved, for people: an image step's download.
    fn step_bytes(&self, step: &JobStep) -> Option<String> {
        let out = step.output.as_ref()?;
        if out.get("cached").and_then(serde_json::Value::as_bool) == Some(true) {
            return Some("image was cached".into());
        }
        let bytes = out.get("bytes")?.as_u64()?;
        Some(format!("{} downloaded", super::bytes(bytes)))
    }
}

async fn job_page(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<JobId>,
) -> Response {
    match state.app.job_get(&session.subject, id).await {
        Ok(detail) => render(&JobPage {
            chrome: Chrome::new(&session, "jobs"),
            panel: JobPanel { detail },
        }),
        Err(e) => error_response(&session, e),
    }
}

async fn job_panel(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<JobId>,
) -> Response {
    match state.app.job_get(&session.subject, id).await {
        Ok(detail) => render(&JobPanel { detail }),
        Err(e) => error_response(&session, e),
    }
}
