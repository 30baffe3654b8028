//! The dashboard: the fleet at a glance, what is happening, and how to reach
//! the API and enrol a host.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use overvisor_control::audit::AuditFilter;
use overvisor_control::inventory::{Connectivity, InventorySummary};
use overvisor_model::account::AuditEvent;
use overvisor_model::job::JobQuery;
use overvisor_model::job::{Job, JobStatus};

use super::{Chrome, PortalSession, error_response, render};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/dashboard/fleet", get(fleet_fragment))
}

/// The fleet summary, refreshed by the event stream. It comes from the
/// in-memory inventory, so it never waits on a host.
#[derive(Template)]
#[template(path = "dashboard_fleet.html")]
struct FleetFragment {
    summary: InventorySummary,
    /// (state, count), most common first.
    by_state: Vec<(String, usize)>,
    running_jobs: Vec<Job>,
    recent_jobs: Vec<Job>,
}

impl FleetFragment {
    fn hosts_with(&self, status: &str) -> usize {
        self.summary
            .hosts_by_status
            .get(status)
            .copied()
            .unwrap_or(0)
    }
}

async fn fleet_fragment(State(state): State<AppState>, session: PortalSession) -> Response {
    let summary = match state.app.inventory_summary(&session.subject) {
        Ok(summary) => summary,
        Err(e) => return error_response(&session, e),
    };
    let mut by_state: Vec<(String, usize)> = summary
        .vms_by_state
        .iter()
        .map(|(state, n)| (state.replace('_', " "), *n))
        .collect();
    by_state.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let jobs = |status| JobQuery {
        status,
        limit: 8,
        ..JobQuery::default()
    };
    let running = state
        .app
        .jobs_list(&session.subject, jobs(Some(JobStatus::Running)), false)
        .await;
    let recent = state
        .app
        .jobs_list(&session.subject, jobs(None), false)
        .await;
    let (running_jobs, recent_jobs) = match (running, recent) {
        (Ok(r), Ok(j)) => (r, j),
        (Err(e), _) | (_, Err(e)) => return error_response(&session, e),
    };
    render(&FleetFragment {
        summary,
        by_state,
        running_jobs,
        recent_jobs,
    })
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    chrome: Chrome,
    api_url: String,
    api_base: String,
    curl_snippet: String,
    enrol_snippet: String,
    /// Prints the PowerShell script that enrols a Windows Hyper-V host.
    enrol_hyperv_snippet: String,
    activity: Vec<AuditEvent>,
}

async fn dashboard(State(state): State<AppState>, session: PortalSession) -> Response {
    let api_url = state
        .settings
        .public_api_url
        .trim_end_matches('/')
        .to_owned();
    let filter = AuditFilter {
        limit: 8,
        ..AuditFilter::default()
    };
    let activity = match state.app.audit_list(&session.subject, filter).await {
        Ok(events) => events,
        Err(err) => return error_response(&session, err),
    };
    render(&DashboardPage {
        chrome: Chrome::new(&session, "dashboard"),
        api_base: format!("{api_url}/api/v1"),
        curl_snippet: format!(
            "curl -H \"Authorization: Bearer $OVERVISOR_KEY\" {api_url}/api/v1/users/me"
        ),
        enrol_snippet: format!("overvisor agent enroll --url {api_url} --key \"$OVERVISOR_KEY\""),
        enrol_hyperv_snippet: format!(
            "overvisor agent enroll --kind hyperv --url {api_url} > enroll-hyperv.ps1"
        ),
        api_url,
        activity,
    })
}
