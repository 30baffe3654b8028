//! The account page: profile, API keys (create — shown once —, revoke),
//! SSH public key, password change, sessions.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use overvisor_model::account::{ApiKey, ApiKeyId, Session, User};
use serde::Deserialize;

use super::{CsrfOnly, PortalSession, render};
use crate::AppState;
use crate::api::keys::expiry;
use crate::error::ApiError;
use crate::extract::{Form, Path, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/account", get(account_page))
        .route("/account/keys", post(key_create))
        .route("/account/keys/{id}/revoke", post(key_revoke))
        .route("/account/password", post(password_change))
        .route("/account/sessions/end-all", post(sessions_end_all))
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    user_name: String,
    csrf_token: String,
    is_admin: bool,
    user: User,
    keys: Vec<ApiKey>,
    sessions: Vec<Session>,
    ssh_public_key: String,
    notice: Option<String>,
    error: Option<String>,
    new_token: Option<String>,
}

/// Short codes in `?done=` so redirects after a change can say what happened.
fn notice_text(code: &str) -> Option<String> {
    match code {
        "key-revoked" => Some("The API key was revoked.".into()),
        "password-changed" => {
            Some("Your password was changed; your other sessions were signed out.".into())
        }
        _ => None,
    }
}

async fn render_account(
    state: &AppState,
    session: PortalSession,
    notice: Option<String>,
    error: Option<String>,
    new_token: Option<String>,
) -> Response {
    let subject = &session.subject;
    let loaded = async {
        Ok::<_, overvisor_control::AppError>((
            state.app.user_get(subject, subject.id()).await?,
            state.app.api_keys_list(subject).await?,
            state.app.sessions_list(subject).await?,
            state.app.ssh_public_key(subject, subject.id()).await?,
        ))
    }
    .await;
    match loaded {
        Ok((user, keys, sessions, ssh_public_key)) => render(&AccountPage {
            user_name: user.name.to_string(),
            is_admin: session.is_admin(),
            csrf_token: session.csrf_token.clone(),
            user,
            keys,
            sessions,
            ssh_public_key,
            notice,
            error,
            new_token,
        }),
        Err(err) => ApiError::from(err).into_response(),
    }
}

#[derive(Deserialize)]
struct AccountQuery {
    done: Option<String>,
}

async fn account_page(
    State(state): State<AppState>,
    session: PortalSession,
    Query(q): Query<AccountQuery>,
) -> Response {
    let notice = q.done.as_deref().and_then(notice_text);
    render_account(&state, session, notice, None, None).await
}

#[derive(Deserialize)]
struct KeyForm {
    csrf_token: String,
    name: String,
    #[serde(default)]
    expires_in_days: String,
}

async fn key_create(
    State(state): State<AppState>,
    session: PortalSession,
    Form(form): Form<KeyForm>,
) -> Response {
    if let Err(rejected) = session.check_csrf(&form.csrf_token) {
        return rejected.into_response();
    }
    let days = match form.expires_in_days.trim() {
        "" => Ok(None),
        d => d
            .parse::<u32>()
            .map(Some)
            .map_err(|_| ApiError::invalid("expires_in_days", "must be a whole number of days")),
    };
    let created = match days.and_then(|d| expiry(None, d)) {
        Ok(expires_at) => state
            .app
            .api_key_create(&session.subject, form.name.trim(), expires_at)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match created {
        Ok((key, token)) => {
            let notice = Some(format!("API key \"{}\" created.", key.name));
            render_account(&state, session, notice, None, Some(token)).await
        }
        Err(e) => render_account(&state, session, None, Some(e.message), None).await,
    }
}

async fn key_revoke(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<ApiKeyId>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(rejected) = session.check_csrf(&form.csrf_token) {
        return rejected.into_response();
    }
    match state.app.api_key_revoke(&session.subject, id).await {
        Ok(_) => Redirect::to("/account?done=key-revoked").into_response(),
        Err(e) => {
            render_account(&state, session, None, Some(ApiError::from(e).message), None).await
        }
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    csrf_token: String,
    current_password: String,
    new_password: String,
}

async fn password_change(
    State(state): State<AppState>,
    session: PortalSession,
    Form(form): Form<PasswordForm>,
) -> Response {
    if let Err(rejected) = session.check_csrf(&form.csrf_token) {
        return rejected.into_response();
    }
    match state
        .app
        .password_change(&session.subject, form.current_password, form.new_password)
        .await
    {
        Ok(()) => Redirect::to("/account?done=password-changed").into_response(),
        Err(e) => {
            render_account(&state, session, None, Some(ApiError::from(e).message), None).await
        }
    }
}

async fn sessions_end_all(
    State(state): State<AppState>,
    session: PortalSession,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(rejected) = session.check_csrf(&form.csrf_token) {
        return rejected.into_response();
    }
    match state.app.logout_everywhere(&session.subject).await {
        Ok(_) => Redirect::to("/login").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
