//! The caller's guest SSH keys: list, add, remove. A deployment that names
//! no `ssh_keys` injects these.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use overvisor_model::account::{GuestKey, GuestKeyId};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};

#[utoipa::path(get, path = "/api/v1/users/me/guest-keys", tag = "account",
    responses((status = 200, body = Vec<GuestKey>), (status = 401, body = ErrorBody)))]
pub async fn guest_keys_list(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<Vec<GuestKey>>> {
    Ok(Json(
        state.app.guest_keys_list(&subject, subject.id()).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestKeyCreate {
    /// A name to tell keys apart (1 to 64 printable characters).
    pub name: String,
    /// One OpenSSH public key line, `ssh-ed25519 AAAA… comment`: Ed25519,
    /// ECDSA (also on a security key) or RSA of at least 2048 bits.
    pub public_key: String,
}

/// Adds a guest key. A private key, a bad one, a weak or unknown type is a
/// 400 naming `public_key`; the same key twice, or more than 32 keys, a 409.
#[utoipa::path(post, path = "/api/v1/users/me/guest-keys", tag = "account", request_body = GuestKeyCreate,
    responses((status = 201, body = GuestKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn guest_key_create(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Json(body): Json<GuestKeyCreate>,
) -> ApiResult<Response> {
    let key = state
        .app
        .guest_key_add(&subject, subject.id(), &body.name, &body.public_key)
        .await?;
    let location = format!("/api/v1/users/me/guest-keys/{}", key.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(key),
    )
        .into_response())
}

/// Removes a guest key (later deployments no longer inject it; guests
/// deployed with it keep it). Answers the removed key.
#[utoipa::path(delete, path = "/api/v1/users/me/guest-keys/{id}", tag = "account", params(("id" = String, Path)),
    responses((status = 200, body = GuestKey), (status = 404, body = ErrorBody)))]
pub async fn guest_key_delete(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<GuestKeyId>,
) -> ApiResult<Json<GuestKey>> {
    Ok(Json(
        state
            .app
            .guest_key_remove(&subject, subject.id(), id)
            .await?,
    ))
}
