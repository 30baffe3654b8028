//! Administration: user accounts (create, role, disable, password reset) for
//! administrators, and the audit log — everyone sees their own events,
//! administrators may look at everyone's.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, Utc};
use overvisor_control::accounts::NewUser;
use overvisor_control::audit::AuditFilter;
use overvisor_model::account::{
    AuditEvent, Email, Outcome, Role, User, UserChanges, UserId, UserName,
};
use serde::Deserialize;

use super::{Chrome, CsrfOnly, Done, PortalSession, VerifiedForm, error_response, render};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(users_page).post(user_create))
        .route("/admin/users/{id}/role", post(user_role))
        .route("/admin/users/{id}/disabled", post(user_disabled))
        .route(
            "/admin/users/{id}/reset-password",
            post(user_reset_password),
        )
        .route("/audit", get(audit_page))
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    chrome: Chrome,
    users: Vec<User>,
    roles: [Role; 3],
    notice: Option<String>,
    error: Option<String>,
    /// A generated password, shown once.
    secret: Option<(String, String)>,
    form: NewUserForm,
}

#[derive(Deserialize, Default)]
struct NewUserForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
}

#[derive(Default)]
struct Shown {
    notice: Option<String>,
    error: Option<String>,
    secret: Option<(String, String)>,
    form: NewUserForm,
}

async fn render_users(state: &AppState, session: &PortalSession, shown: Shown) -> Response {
    let users = match state.app.users_list(&session.subject).await {
        Ok(users) => users,
        Err(err) => return error_response(session, err),
    };
    let status = if shown.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let page = render(&UsersPage {
        chrome: Chrome::new(session, "users"),
        users,
        roles: Role::ALL,
        notice: shown.notice,
        error: shown.error,
        secret: shown.secret,
        form: shown.form,
    });
    (status, page).into_response()
}

fn notice_text(code: &str) -> Option<String> {
    match code {
        "role" => Some("The role was changed.".into()),
        "disabled" => Some("The account was disabled and signed out everywhere.".into()),
        "enabled" => Some("The account was enabled.".into()),
        _ => None,
    }
}

async fn users_page(
    State(state): State<AppState>,
    session: PortalSession,
    Query(q): Query<Done>,
) -> Response {
    let shown = Shown {
        notice: q.done.as_deref().and_then(notice_text),
        ..Shown::default()
    };
    render_users(&state, &session, shown).await
}

fn parse_new_user(form: &NewUserForm) -> Result<NewUser, ApiError> {
    let name = UserName::parse(form.name.trim()).map_err(super::invalid)?;
    let email = Email::parse(form.email.trim()).map_err(super::invalid)?;
    let role = form.role.parse::<Role>().map_err(super::invalid)?;
    Ok(NewUser {
        name,
        email,
        role,
        password: None,
    })
}

async fn user_create(
    State(state): State<AppState>,
    session: PortalSession,
    VerifiedForm(form): VerifiedForm<NewUserForm>,
) -> Response {
    let created = match parse_new_user(&form) {
        Ok(new) => state
            .app
            .user_create(&session.subject, new)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let shown = match created {
        Ok(created) => Shown {
            notice: Some(format!(
                "User {} created. Give them the password below; they can change it on their account page.",
                created.user.name
            )),
            secret: created.password.map(|p| (created.user.name.to_string(), p)),
            ..Shown::default()
        },
        Err(e) => Shown {
            error: Some(e.message),
            form,
            ..Shown::default()
        },
    };
    render_users(&state, &session, shown).await
}

#[derive(Deserialize)]
struct RoleForm {
    role: String,
}

async fn user_role(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<UserId>,
    VerifiedForm(form): VerifiedForm<RoleForm>,
) -> Response {
    let role = match form.role.parse::<Role>() {
        Ok(role) => role,
        Err(e) => return error_response(&session, super::invalid(e)),
    };
    let changes = UserChanges {
        role: Some(role),
        ..UserChanges::default()
    };
    update_user(&state, &session, id, changes, "role").await
}

#[derive(Deserialize)]
struct DisabledForm {
    disabled: bool,
}

async fn user_disabled(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<UserId>,
    VerifiedForm(form): VerifiedForm<DisabledForm>,
) -> Response {
    let changes = UserChanges {
        disabled: Some(form.disabled),
        ..UserChanges::default()
    };
    let done = if form.disabled { "disabled" } else { "enabled" };
    update_user(&state, &session, id, changes, done).await
}

async fn update_user(
    state: &AppState,
    session: &PortalSession,
    id: UserId,
    changes: UserChanges,
    done: &str,
) -> Response {
    match state.app.user_update(&session.subject, id, changes).await {
        Ok(_) => Redirect::to(&format!("/admin/users?done={done}")).into_response(),
        Err(e) => {
            let shown = Shown {
                error: Some(ApiError::from(e).message),
                ..Shown::default()
            };
            render_users(state, session, shown).await
        }
    }
}

async fn user_reset_password(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<UserId>,
    _: VerifiedForm<CsrfOnly>,
) -> Response {
    let reset = async {
        let user = state.app.user_get(&session.subject, id).await?;
        let password = state
            .app
            .user_reset_password(&session.subject, id, None)
            .await?;
        Ok::<_, overvisor_control::AppError>((user, password))
    }
    .await;
    let shown = match reset {
        Ok((user, password)) => Shown {
            notice: Some(format!(
                "The password of {} was reset and their sessions ended.",
                user.name
            )),
            secret: password.map(|p| (user.name.to_string(), p)),
            ..Shown::default()
        },
        Err(e) => Shown {
            error: Some(ApiError::from(e).message),
            ..Shown::default()
        },
    };
    render_users(&state, &session, shown).await
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    events: Vec<AuditEvent>,
    q: AuditQuery,
    /// Query string for the next (older) page, when there may be one.
    older: Option<String>,
}

/// The audit filters as typed into the form; empty fields mean "any".
#[derive(Deserialize, Default)]
struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    all: Option<String>,
    before: Option<i64>,
}

const AUDIT_PAGE: u32 = 50;

fn day(field: &str, value: &str, end_of_day: bool) -> Result<Option<DateTime<Utc>>, ApiError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let date = NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d")
        .map_err(|_| ApiError::invalid(field, "Dates look like 2025-01-31"))?;
    let time = if end_of_day {
        date.and_hms_opt(23, 59, 59)
    } else {
        date.and_hms_opt(0, 0, 0)
    };
    Ok(time.map(|t| t.and_utc()))
}

fn audit_filter(q: &AuditQuery) -> Result<AuditFilter, ApiError> {
    let outcome = match q.outcome.as_str() {
        "" => None,
        o => Some(o.parse::<Outcome>().map_err(super::invalid)?),
    };
    Ok(AuditFilter {
        action_prefix: Some(q.action.trim().to_owned()).filter(|a| !a.is_empty()),
        outcome,
        since: day("since", &q.since, false)?,
        until: day("until", &q.until, true)?,
        before_id: q.before,
        limit: AUDIT_PAGE,
        all: q.all.is_some(),
        ..AuditFilter::default()
    })
}

fn older_link(q: &AuditQuery, last_id: i64) -> String {
    use super::session::urlencode;
    let mut s = format!(
        "action={}&outcome={}&since={}&until={}&before={last_id}",
        urlencode(&q.action),
        urlencode(&q.outcome),
        urlencode(&q.since),
        urlencode(&q.until)
    );
    if q.all.is_some() {
        s.push_str("&all=on");
    }
    s
}

async fn audit_page(
    State(state): State<AppState>,
    session: PortalSession,
    Query(q): Query<AuditQuery>,
) -> Response {
    let filter = match audit_filter(&q) {
        Ok(filter) => filter,
        Err(e) => return error_response(&session, e),
    };
    let events = match state.app.audit_list(&session.subject, filter).await {
        Ok(events) => events,
        Err(e) => return error_response(&session, e),
    };
    let older = (events.len() == AUDIT_PAGE as usize)
        .then(|| events.last().map(|e| older_link(&q, e.id)))
        .flatten();
    render(&AuditPage {
        chrome: Chrome::new(&session, "audit"),
        events,
        q,
        older,
    })
}
