//! Signing in and out. The sign-in form has no session to bind a CSRF token
//! to, so it uses a double-submit cookie scoped to `/login`. Identity
//! providers (OIDC, see [`super::sso`]) are offered beside the password
//! form, or instead of it.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use overvisor_control::App;
use overvisor_control::credentials::random_token;
use overvisor_control::oidc::SignInOption;
use serde::Deserialize;

use super::session::safe_next;
use super::{CsrfOnly, PortalSession, VerifiedForm, render};
use crate::AppState;
use crate::api::auth::RequestMeta;
use crate::auth::{
    check_same_origin, client_info, cookie_value, csrf_matches, expired_session_cookie,
    session_cookie,
};
use crate::error::{ApiError, set_retry_after};
use crate::extract::{Form, Query};

const LOGIN_CSRF_COOKIE: &str = "ov_login_csrf";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout))
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf_token: String,
    error: Option<String>,
    notice: Option<String>,
    name: String,
    next: String,
    password_login: bool,
    providers: Vec<SignInOption>,
}

/// The sign-in page, with `error` or `notice` above the form.
pub(super) fn login_form(
    app: &App,
    error: Option<String>,
    notice: Option<String>,
    name: String,
    next: String,
    status: StatusCode,
) -> Response {
    let csrf_token = random_token(24);
    let cookie = format!(
        "{LOGIN_CSRF_COOKIE}={csrf_token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600"
    );
    let page = render(&LoginPage {
        csrf_token,
        error,
        notice,
        name,
        next,
        password_login: app.password_login_enabled(),
        providers: app.oidc_sign_in_options(),
    });
    (status, [(header::SET_COOKIE, cookie)], page).into_response()
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    expired: Option<String>,
    next: Option<String>,
    signed_out: Option<String>,
}

async fn login_page(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let notice = if q.expired.is_some() {
        Some("Your session has ended. Please sign in again.".to_owned())
    } else if q.signed_out.is_some() {
        Some("You are signed out.".to_owned())
    } else {
        None
    };
    let next = q
        .next
        .as_deref()
        .and_then(safe_next)
        .unwrap_or_else(|| "/".to_owned());
    login_form(
        &state.app,
        None,
        notice,
        String::new(),
        next,
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
struct LoginForm {
    csrf_token: String,
    name: String,
    password: String,
    #[serde(default)]
    next: String,
}

async fn login_submit(
    State(state): State<AppState>,
    RequestMeta(parts): RequestMeta,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(&form.next).unwrap_or_else(|| "/".to_owned());
    // Another site's page must not sign its visitor in (login CSRF).
    if let Err(cross_site) = check_same_origin(&parts.headers) {
        return cross_site.into_response();
    }
    let expected = cookie_value(&parts.headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !csrf_matches(form.csrf_token.as_bytes(), expected) {
        return login_form(
            &state.app,
            Some("The sign-in form expired. Please try again.".into()),
            None,
            form.name,
            next,
            StatusCode::FORBIDDEN,
        );
    }
    let client = client_info(&parts, &state.settings);
    match state.app.login(&form.name, form.password, client).await {
        Ok(signed_in) => {
            let max_age = (signed_in.session.expires_at - chrono::Utc::now())
                .num_seconds()
                .max(0);
            let cookie = session_cookie(&state.settings, &signed_in.cookie_value, max_age);
            ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
        }
        Err(err) => {
            let api = ApiError::from(err);
            let mut page = login_form(
                &state.app,
                Some(api.message),
                None,
                form.name,
                next,
                api.status,
            );
            set_retry_after(&mut page, api.retry_after);
            page
        }
    }
}

async fn logout(
    State(state): State<AppState>,
    session: PortalSession,
    _: VerifiedForm<CsrfOnly>,
) -> Response {
    if let Err(err) = state.app.logout(&session.subject).await {
        return super::error_response(&session, err);
    }
    (
        [(header::SET_COOKIE, expired_session_cookie(&state.settings))],
        Redirect::to("/login?signed_out=1"),
    )
        .into_response()
}
