//! The caller's API keys: create (token shown once), list, show, revoke, rotate.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use overvisor_model::account::{ApiKey, ApiKeyId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};

#[utoipa::path(get, path = "/api/v1/users/me/keys", tag = "account",
    responses((status = 200, body = Vec<ApiKey>), (status = 401, body = ErrorBody)))]
pub async fn keys_list(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<Vec<ApiKey>>> {
    Ok(Json(state.app.api_keys_list(&subject).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    pub name: String,
    /// Absolute expiry; or use `expires_in_days`.
    pub expires_at: Option<DateTime<Utc>>,
    pub expires_in_days: Option<u32>,
}

/// A key with its token, returned only by create and rotate.
#[derive(Serialize, ToSchema)]
pub struct KeyWithToken {
    pub key: ApiKey,
    /// Use as `Authorization: Bearer <token>`. Shown this once; only a hash is kept.
    pub token: String,
}

/// Parses an expiry given either absolutely or in days.
pub fn expiry(
    at: Option<DateTime<Utc>>,
    days: Option<u32>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    match (at, days) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "expires_at",
            "give expires_at or expires_in_days, not both",
        )),
        (Some(at), None) => Ok(Some(at)),
        (None, Some(0)) | (None, Some(3651..)) => Err(ApiError::invalid(
            "expires_in_days",
            "must be between 1 and 3650",
        )),
        (None, Some(d)) => Ok(Some(Utc::now() + Duration::days(i64::from(d)))),
        (None, None) => Ok(None),
    }
}

#[utoipa::path(post, path = "/api/v1/users/me/keys", tag = "account", request_body = KeyCreate,
    responses((status = 201, body = KeyWithToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn key_create(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Json(body): Json<KeyCreate>,
) -> ApiResult<Response> {
    let expires_at = expiry(body.expires_at, body.expires_in_days)?;
    let (key, token) = state
        .app
        .api_key_create(&subject, &body.name, expires_at)
        .await?;
    let location = format!("/api/v1/users/me/keys/{}", key.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(KeyWithToken { key, token }),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/users/me/keys/{id}", tag = "account", params(("id" = String, Path)),
    responses((status = 200, body = ApiKey), (status = 404, body = ErrorBody)))]
pub async fn key_get(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<ApiKeyId>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(state.app.api_key_get(&subject, id).await?))
}

/// Revokes the key at once; it stays listed (with `revoked_at`) for the record.
#[utoipa::path(delete, path = "/api/v1/users/me/keys/{id}", tag = "account", params(("id" = String, Path)),
    responses((status = 200, body = ApiKey), (status = 404, body = ErrorBody)))]
pub async fn key_revoke(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<ApiKeyId>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(state.app.api_key_revoke(&subject, id).await?))
}

/// Issues a new secret for the key; the old token stops working at once.
#[utoipa::path(post, path = "/api/v1/users/me/keys/{id}/rotate", tag = "account", params(("id" = String, Path)),
    responses((status = 200, body = KeyWithToken), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn key_rotate(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<ApiKeyId>,
) -> ApiResult<Json<KeyWithToken>> {
    let (key, token) = state.app.api_key_rotate(&subject, id).await?;
    Ok(Json(KeyWithToken { key, token }))
}
