//! "Sign in with <provider>": the portal's side of the OpenID Connect
//! authorization-code flow. `/login/oidc/<id>` sends the browser to the
//! provider with the attempt sealed in a cookie scoped to `/login/oidc`
//! (SameSite=Lax, so it comes back with the provider's top-level redirect);
//! `/login/oidc/<id>/callback` hands what came back to the application
//! layer and, on success, sets the session cookie. Someone whose claims map
//! to no role gets a page saying so (403) and no session.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use overvisor_control::AppError;
use serde::Deserialize;

use super::login::login_form;
use super::render;
use super::session::safe_next;
use crate::AppState;
use crate::api::auth::RequestMeta;
use crate::auth::{client_info, cookie_value, session_cookie};
use crate::error::ApiError;
use crate::extract::Query;

const PENDING_COOKIE: &str = "ov_oidc";
/// How long the browser may stay at the provider.
const PENDING_MAX_AGE_SECS: u32 = 600;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login/oidc/{provider}", get(start))
        .route("/login/oidc/{provider}/callback", get(callback))
}

fn pending_cookie(state: &AppState, value: &str, max_age: u32) -> String {
    let secure = if state.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{PENDING_COOKIE}={value}; Path=/login/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    )
}

fn redirect_uri(state: &AppState, provider: &str) -> String {
    format!(
        "{}/login/oidc/{provider}/callback",
        state.settings.public_ui_url
    )
}

#[derive(Deserialize, Default)]
struct StartQuery {
    next: Option<String>,
}

async fn start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(q): Query<StartQuery>,
) -> Response {
    let next = q
        .next
        .as_deref()
        .and_then(safe_next)
        .unwrap_or_else(|| "/".to_owned());
    let uri = redirect_uri(&state, &provider);
    match state.app.oidc_begin(&provider, &uri, &next).await {
        Ok(redirect) => (
            [(
                header::SET_COOKIE,
                pending_cookie(&state, &redirect.sealed, PENDING_MAX_AGE_SECS),
            )],
            Redirect::to(&redirect.url),
        )
            .into_response(),
        Err(err) => failed(&state, err, next),
    }
}

/// What the provider sends back: a code and the state, or an error.
#[derive(Deserialize, Default)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "oidc_refused.html")]
struct RefusedPage {
    message: String,
}

async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    RequestMeta(parts): RequestMeta,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let sealed = cookie_value(&parts.headers, PENDING_COOKIE).unwrap_or_default();
    let next = state
        .app
        .oidc_pending_next(sealed)
        .unwrap_or_else(|| "/".to_owned());
    let clear = (header::SET_COOKIE, pending_cookie(&state, "", 0));
    let outcome = match (&q.error, &q.code, &q.state) {
        (Some(error), _, _) => Err(AppError::SignIn(overvisor_oidc::OidcError::Refused(
            // The provider's code only: its description is free text from a
            // link anyone can craft.
            error.chars().take(64).collect(),
        ))),
        (None, Some(code), Some(returned_state)) => {
            let client = client_info(&parts, &state.settings);
            state
                .app
                .oidc_complete(&provider, sealed, returned_state, code, client)
                .await
        }
        _ => Err(AppError::SignIn(overvisor_oidc::OidcError::StateMismatch)),
    };
    match outcome {
        Ok(signed_in) => {
            let max_age = (signed_in.session.expires_at - chrono::Utc::now())
                .num_seconds()
                .max(0);
            let session = session_cookie(&state.settings, &signed_in.cookie_value, max_age);
            let mut response = Redirect::to(&next).into_response();
            let headers = response.headers_mut();
            for cookie in [session, clear.1] {
                if let Ok(value) = cookie.parse() {
                    headers.append(header::SET_COOKIE, value);
                }
            }
            response
        }
        Err(err @ AppError::NoRole(_)) => {
            let page = render(&RefusedPage {
                message: err.to_string(),
            });
            (StatusCode::FORBIDDEN, [clear], page).into_response()
        }
        Err(err) => {
            let mut response = failed(&state, err, next);
            if let Ok(value) = clear.1.parse() {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
    }
}

/// The sign-in page again, saying what went wrong.
fn failed(state: &AppState, err: AppError, next: String) -> Response {
    let api = ApiError::from(err);
    login_form(
        &state.app,
        Some(api.message),
        None,
        String::new(),
        next,
        api.status,
    )
}
