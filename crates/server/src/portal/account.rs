//! The account page: profile, API keys (create — shown once —, revoke),
//! guest SSH keys (add, remove), SSH public key, password change, sessions.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use overvisor_control::credentials::ssh_fingerprint;
use overvisor_model::account::{
    ApiKey, ApiKeyId, Credential, GuestKey, GuestKeyId, Session, SessionId, User,
};
use serde::Deserialize;

use super::deploy::StepError;
use super::{Chrome, CsrfOnly, Done, PortalSession, VerifiedForm, error_response, render};
use crate::AppState;
use crate::api::keys::expiry;
use crate::error::ApiError;
use crate::extract::{Path, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/account", get(account_page))
        .route("/account/keys", post(key_create))
        .route("/account/keys/{id}/revoke", post(key_revoke))
        .route("/account/guest-keys", post(guest_key_add))
        .route("/account/guest-keys/{id}/remove", post(guest_key_remove))
        .route("/account/password", post(password_change))
        .route("/account/sessions/{id}/end", post(session_end))
        .route("/account/sessions/end-all", post(sessions_end_all))
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    chrome: Chrome,
    user: User,
    keys: Vec<ApiKey>,
    guest_keys: Vec<GuestKey>,
    sessions: Vec<Session>,
    current_session: Option<SessionId>,
    ssh_public_key: String,
    ssh_fingerprint: String,
    notice: Option<String>,
    error: Option<String>,
    new_token: Option<String>,
    guest_key: GuestKeyTyped,
}

impl AccountPage {
    fn is_current(&self, id: &SessionId) -> bool {
        self.current_session.as_ref() == Some(id)
    }

    /// The refusal of the guest key form about `field`, shown next to it.
    fn guest_key_error(&self, field: &str) -> Option<&str> {
        self.guest_key
            .error
            .as_ref()
            .filter(|e| e.field.as_deref() == Some(field))
            .map(|e| e.message.as_str())
    }

    /// A refusal of the guest key form about neither field (a duplicate,
    /// the cap): shown above the form.
    fn guest_key_form_error(&self) -> Option<&str> {
        self.guest_key
            .error
            .as_ref()
            .filter(|e| !matches!(e.field.as_deref(), Some("name" | "public_key")))
            .map(|e| e.message.as_str())
    }

    fn guest_key_invalid(&self, field: &str) -> &'static str {
        if self.guest_key_error(field).is_some() {
            "true"
        } else {
            "false"
        }
    }
}

/// The guest key form as typed, and why it was refused (with the answer's
/// status).
#[derive(Default)]
struct GuestKeyTyped {
    name: String,
    public_key: String,
    error: Option<StepError>,
    status: Option<axum::http::StatusCode>,
}

fn notice_text(code: &str) -> Option<String> {
    match code {
        "key-revoked" => Some("The API key was revoked; it no longer works.".into()),
        "guest-key-added" => Some("The guest SSH key was added.".into()),
        "guest-key-removed" => {
            Some("The guest SSH key was removed; guests deployed with it keep it.".into())
        }
        "session-ended" => Some("That session was signed out.".into()),
        "password-changed" => {
            Some("Your password was changed; your other sessions were signed out.".into())
        }
        _ => None,
    }
}

/// What the page shows besides its data: a message, or a token shown once.
#[derive(Default)]
struct Outcome {
    notice: Option<String>,
    error: Option<String>,
    new_token: Option<String>,
    guest_key: GuestKeyTyped,
}

async fn render_account(state: &AppState, session: PortalSession, outcome: Outcome) -> Response {
    let subject = &session.subject;
    let loaded = async {
        Ok::<_, overvisor_control::AppError>((
            state.app.user_get(subject, subject.id()).await?,
            state.app.api_keys_list(subject).await?,
            state.app.guest_keys_list(subject, subject.id()).await?,
            state.app.sessions_list(subject).await?,
            state.app.ssh_public_key(subject, subject.id()).await?,
        ))
    }
    .await;
    let (user, keys, guest_keys, sessions, ssh_public_key) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => return error_response(&session, err),
    };
    let current_session = match subject.credential {
        Credential::Session { id } => Some(id),
        _ => None,
    };
    let status = if let Some(status) = outcome.guest_key.status {
        status
    } else if outcome.error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    let page = render(&AccountPage {
        chrome: Chrome::new(&session, "account"),
        ssh_fingerprint: ssh_fingerprint(&ssh_public_key).unwrap_or_default(),
        user,
        keys,
        guest_keys,
        sessions,
        current_session,
        ssh_public_key,
        notice: outcome.notice,
        error: outcome.error,
        new_token: outcome.new_token,
        guest_key: outcome.guest_key,
    });
    (status, page).into_response()
}

async fn account_page(
    State(state): State<AppState>,
    session: PortalSession,
    Query(q): Query<Done>,
) -> Response {
    let notice = q.done.as_deref().and_then(notice_text);
    render_account(
        &state,
        session,
        Outcome {
            notice,
            ..Outcome::default()
        },
    )
    .await
}

#[derive(Deserialize)]
struct KeyForm {
    name: String,
    #[serde(default)]
    expires_in_days: String,
}

async fn key_create(
    State(state): State<AppState>,
    session: PortalSession,
    VerifiedForm(form): VerifiedForm<KeyForm>,
) -> Response {
    let days = match form.expires_in_days.trim() {
        "" => Ok(None),
        d => d.parse::<u32>().map(Some).map_err(|_| {
            ApiError::invalid("expires_in_days", "Expiry must be a whole number of days")
        }),
    };
    let created = match days.and_then(|d| expiry(None, d)) {
        Ok(expires_at) => state
            .app
            .api_key_create(&session.subject, form.name.trim(), expires_at)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let outcome = match created {
        Ok((key, token)) => Outcome {
            notice: Some(format!("API key \"{}\" created.", key.name)),
            new_token: Some(token),
            ..Outcome::default()
        },
        Err(e) => Outcome {
            error: Some(e.message),
            ..Outcome::default()
        },
    };
    render_account(&state, session, outcome).await
}

async fn key_revoke(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<ApiKeyId>,
    _: VerifiedForm<CsrfOnly>,
) -> Response {
    match state.app.api_key_revoke(&session.subject, id).await {
        Ok(_) => Redirect::to("/account?done=key-revoked").into_response(),
        Err(e) => error_response(&session, e),
    }
}

#[derive(Deserialize)]
struct GuestKeyForm {
    name: String,
    public_key: String,
}

async fn guest_key_add(
    State(state): State<AppState>,
    session: PortalSession,
    VerifiedForm(form): VerifiedForm<GuestKeyForm>,
) -> Response {
    let subject = &session.subject;
    let added = state
        .app
        .guest_key_add(
            subject,
            subject.id(),
            form.name.trim(),
            form.public_key.trim(),
        )
        .await;
    match added {
        Ok(_) => Redirect::to("/account?done=guest-key-added#guest-keys-h").into_response(),
        Err(e) => {
            // Typed back for correcting, except what looks like a private
            // key: that is never sent back.
            let public_key = if form.public_key.contains("PRIVATE KEY") {
                String::new()
            } else {
                form.public_key
            };
            let e = ApiError::from(e);
            let outcome = Outcome {
                guest_key: GuestKeyTyped {
                    name: form.name,
                    public_key,
                    status: Some(e.status),
                    error: Some(e.into()),
                },
                ..Outcome::default()
            };
            render_account(&state, session, outcome).await
        }
    }
}

async fn guest_key_remove(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<GuestKeyId>,
    _: VerifiedForm<CsrfOnly>,
) -> Response {
    let subject = &session.subject;
    match state.app.guest_key_remove(subject, subject.id(), id).await {
        Ok(_) => Redirect::to("/account?done=guest-key-removed#guest-keys-h").into_response(),
        Err(e) => error_response(&session, e),
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    current_password: String,
    new_password: String,
    confirm_password: String,
}

async fn password_change(
    State(state): State<AppState>,
    session: PortalSession,
    VerifiedForm(form): VerifiedForm<PasswordForm>,
) -> Response {
    if form.new_password != form.confirm_password {
        let outcome = Outcome {
            error: Some("The new password and its confirmation differ.".into()),
            ..Outcome::default()
        };
        return render_account(&state, session, outcome).await;
    }
    match state
        .app
        .password_change(&session.subject, form.current_password, form.new_password)
        .await
    {
        Ok(()) => Redirect::to("/account?done=password-changed").into_response(),
        Err(e) => {
            let outcome = Outcome {
                error: Some(ApiError::from(e).message),
                ..Outcome::default()
            };
            render_account(&state, session, outcome).await
        }
    }
}

async fn session_end(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<SessionId>,
    _: VerifiedForm<CsrfOnly>,
) -> Response {
    match state.app.session_revoke(&session.subject, id).await {
        Ok(()) => Redirect::to("/account?done=session-ended").into_response(),
        Err(e) => error_response(&session, e),
    }
}

async fn sessions_end_all(
    State(state): State<AppState>,
    session: PortalSession,
    _: VerifiedForm<CsrfOnly>,
) -> Response {
    match state.app.logout_everywhere(&session.subject).await {
        Ok(_) => Redirect::to("/login?signed_out=1").into_response(),
        Err(e) => error_response(&session, e),
    }
}
