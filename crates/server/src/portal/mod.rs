//! The operator portal: server-rendered pages (askama). Every form carries
//! the session's CSRF token; the sign-in form uses a double-submit cookie
//! because there is no session yet.

mod account;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use overvisor_control::authz::Subject;
use overvisor_control::credentials::{constant_time_eq, random_token};
use overvisor_model::account::Role;
use serde::Deserialize;

use crate::AppState;
use crate::api::auth::RequestMeta;
use crate::auth::{
    client_info, cookie_value, expired_session_cookie, session_cookie, session_cookie_name,
};
use crate::extract::Form;

const LOGIN_CSRF_COOKIE: &str = "ov_login_csrf";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout))
        .route(
            "/static/app.css",
            get(|| async { static_asset("text/css", include_str!("../../static/app.css")) }),
        )
        .route(
            "/static/app.js",
            get(|| async { static_asset("text/javascript", include_str!("../../static/app.js")) }),
        )
        .merge(account::routes())
}

fn static_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Renders a template, or a plain 500 if rendering fails (a bug, logged).
pub(crate) fn render<T: Template>(template: &T) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A signed-in portal user; anything else is sent to the sign-in page.
pub struct PortalSession {
    pub subject: Subject,
    pub csrf_token: String,
}

impl PortalSession {
    pub fn is_admin(&self) -> bool {
        self.subject.role() == Role::Admin
    }

    /// Checks a form's CSRF token against the session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), CsrfRejected> {
        if constant_time_eq(presented.as_bytes(), self.csrf_token.as_bytes()) {
            Ok(())
        } else {
            Err(CsrfRejected)
        }
    }
}

/// A form whose CSRF token did not match the session's.
pub struct CsrfRejected;

impl IntoResponse for CsrfRejected {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            "The form has expired or did not come from this site. Go back, reload and try again.",
        )
            .into_response()
    }
}

impl FromRequestParts<AppState> for PortalSession {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client = client_info(parts, &state.settings);
        let to_login = || Redirect::to("/login").into_response();
        let cookie = cookie_value(&parts.headers, session_cookie_name(&state.settings))
            .ok_or_else(to_login)?;
        match state.app.session_authenticate(cookie, client.ip).await {
            Ok(auth) => Ok(PortalSession {
                subject: auth.subject,
                csrf_token: auth.csrf_token,
            }),
            Err(overvisor_control::AppError::Unauthenticated) => {
                // Expired or revoked: clear the stale cookie on the way to sign-in.
                Err((
                    [(header::SET_COOKIE, expired_session_cookie(&state.settings))],
                    Redirect::to("/login"),
                )
                    .into_response())
            }
            Err(err) => Err(crate::error::ApiError::from(err).into_response()),
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf_token: String,
    error: Option<String>,
    name: String,
}

fn login_form(error: Option<String>, name: String, status: StatusCode) -> Response {
    let csrf_token = random_token(24);
    let cookie = format!(
        "{LOGIN_CSRF_COOKIE}={csrf_token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600"
    );
    let page = render(&LoginPage {
        csrf_token,
        error,
        name,
    });
    (status, [(header::SET_COOKIE, cookie)], page).into_response()
}

async fn login_page() -> Response {
    login_form(None, String::new(), StatusCode::OK)
}

#[derive(Deserialize)]
struct LoginForm {
    csrf_token: String,
    name: String,
    password: String,
}

async fn login_submit(
    State(state): State<AppState>,
    RequestMeta(parts): RequestMeta,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie_value(&parts.headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), form.csrf_token.as_bytes()) {
        return login_form(
            Some("The sign-in form expired. Please try again.".into()),
            form.name,
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
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Err(err) => {
            let api = crate::error::ApiError::from(err);
            login_form(Some(api.message), form.name, api.status)
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    csrf_token: String,
}

async fn logout(
    State(state): State<AppState>,
    session: PortalSession,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(rejected) = session.check_csrf(&form.csrf_token) {
        return rejected.into_response();
    }
    if let Err(err) = state.app.logout(&session.subject).await {
        return crate::error::ApiError::from(err).into_response();
    }
    (
        [(header::SET_COOKIE, expired_session_cookie(&state.settings))],
        Redirect::to("/login"),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    user_name: String,
    csrf_token: String,
    is_admin: bool,
    api_url: String,
}

async fn dashboard(State(state): State<AppState>, session: PortalSession) -> Response {
    render(&DashboardPage {
        user_name: session.subject.user.name.to_string(),
        is_admin: session.is_admin(),
        csrf_token: session.csrf_token,
        api_url: state.settings.public_api_url.clone(),
    })
}
