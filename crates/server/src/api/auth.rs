//! Browser-style sign-in over JSON: sets the session cookie and returns the
//! CSRF token that every later state-changing request must send back.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use overvisor_model::account::User;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, client_info, expired_session_cookie, session_cookie};
use crate::error::{ApiError, ErrorBody};
use crate::extract::Json;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub name: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub user: User,
    /// Send as `X-CSRF-Token` on every POST/PATCH/DELETE made with the cookie.
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// Request metadata without consuming the body.
pub struct RequestMeta(pub Parts);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestMeta(Parts::clone(parts)))
    }
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest, security(()),
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn auth_login(
    State(state): State<AppState>,
    RequestMeta(parts): RequestMeta,
    Json(body): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let client = client_info(&parts, &state.settings);
    let signed_in = state.app.login(&body.name, body.password, client).await?;
    let max_age = (signed_in.session.expires_at - Utc::now())
        .num_seconds()
        .max(0);
    let cookie = session_cookie(&state.settings, &signed_in.cookie_value, max_age);
    let body = LoginResponse {
        user: signed_in.subject.user,
        csrf_token: signed_in.csrf_token,
        expires_at: signed_in.session.expires_at,
    };
    Ok(([(SET_COOKIE, cookie)], axum::Json(body)).into_response())
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn auth_logout(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> Result<Response, ApiError> {
    state.app.logout(&subject).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(SET_COOKIE, expired_session_cookie(&state.settings))],
    )
        .into_response())
}
