//! Reading the audit log: one's own events (and events about one's things),
//! or — for administrators with `all=true` — everything. `format=csv` exports.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use overvisor_control::audit::AuditFilter;
use overvisor_model::account::{AuditEvent, Outcome, UserId};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Query};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Admins: `true` for every user's events.
    #[serde(default)]
    pub all: bool,
    pub actor: Option<UserId>,
    /// Action prefix, e.g. `auth.` or `api_key.create`.
    pub action: Option<String>,
    pub outcome: Option<Outcome>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Events with an id below this (next page: the last id you got).
    pub before: Option<i64>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Vec<AuditEvent>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn audit_list(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Query(params): Query<AuditParams>,
) -> ApiResult<Response> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let csv = match params.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::invalid("format", "must be json or csv")),
    };
    let filter = AuditFilter {
        actor: params.actor,
        action_prefix: params.action,
        outcome: params.outcome,
        since: params.since,
        until: params.until,
        before_id: params.before,
        limit,
        all: params.all,
    };
    let events = state.app.audit_list(&subject, filter).await?;
    if csv {
        Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&events),
        )
            .into_response())
    } else {
        Ok(Json(events).into_response())
    }
}

fn to_csv(events: &[AuditEvent]) -> String {
    let mut out =
        String::from("id,at,actor_id,actor_name,via,source_ip,action,target,outcome,detail\n");
    for e in events {
        let fields = [
            e.id.to_string(),
            e.at.to_rfc3339(),
            e.actor_id.map(|a| a.to_string()).unwrap_or_default(),
            e.actor_name.clone().unwrap_or_default(),
            e.via.clone().unwrap_or_default(),
            e.source_ip.clone().unwrap_or_default(),
            e.action.clone(),
            e.target.clone().unwrap_or_default(),
            e.outcome.as_str().to_owned(),
            e.detail.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Quotes a CSV field, and defuses spreadsheet formulas (`=`, `+`, `-`, `@`).
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    format!("\"{}\"", value.replace('"', "\"\""))
}
