//! The caller's own profile (`/users/me…`) and user administration (`/users…`, admin only).

use axum::extract::State;
use axum::http::StatusCode;
use overvisor_control::accounts::NewUser;
use overvisor_control::credentials::ssh_fingerprint;
use overvisor_model::account::{ApiKey, Email, Role, User, UserChanges, UserId, UserName};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};

#[utoipa::path(get, path = "/api/v1/users/me", tag = "account",
    responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
pub async fn user_me(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<User>> {
    Ok(Json(state.app.user_get(&subject, subject.id()).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// Changes the caller's password; every other session of theirs ends.
#[utoipa::path(post, path = "/api/v1/users/me/password", tag = "account", request_body = PasswordChange,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "Too many wrong current passwords (they count with the account's sign-in failures); `Retry-After` says when to retry"),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn password_change(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Json(body): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    state
        .app
        .password_change(&subject, body.current_password, body.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct SshPublicKey {
    /// OpenSSH `authorized_keys` line of the caller's automation identity.
    pub public_key: String,
    pub fingerprint: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/users/me/ssh-key", tag = "account",
    responses((status = 200, body = SshPublicKey), (status = 401, body = ErrorBody)))]
pub async fn ssh_key_get(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<SshPublicKey>> {
    let public_key = state.app.ssh_public_key(&subject, subject.id()).await?;
    let fingerprint = ssh_fingerprint(&public_key);
    Ok(Json(SshPublicKey {
        public_key,
        fingerprint,
    }))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = Vec<User>), (status = 403, body = ErrorBody)))]
pub async fn users_list(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(state.app.users_list(&subject).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub name: UserName,
    pub email: Email,
    #[serde(default = "default_role")]
    pub role: Role,
    /// Omit to have one generated and returned once.
    pub password: Option<String>,
}

fn default_role() -> Role {
    Role::Operator
}

#[derive(Serialize, ToSchema)]
pub struct UserCreated {
    pub user: User,
    /// Present only when the password was generated; shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub api_key: ApiKey,
    /// The first API key's token; shown this once.
    pub token: String,
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = UserCreate,
    responses((status = 201, body = UserCreated), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn user_create(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Json(body): Json<UserCreate>,
) -> ApiResult<(StatusCode, Json<UserCreated>)> {
    let created = state
        .app
        .user_create(
            &subject,
            NewUser {
                name: body.name,
                email: body.email,
                role: body.role,
                password: body.password,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserCreated {
            user: created.user,
            password: created.password,
            api_key: created.api_key,
            token: created.api_token,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
pub async fn user_get(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<UserId>,
) -> ApiResult<Json<User>> {
    Ok(Json(state.app.user_get(&subject, id).await?))
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path)), request_body = UserChanges,
    responses((status = 200, body = User), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn user_update(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<UserId>,
    Json(changes): Json<UserChanges>,
) -> ApiResult<Json<User>> {
    Ok(Json(state.app.user_update(&subject, id, changes).await?))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    /// Omit to have one generated and returned once.
    pub password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PasswordResetDone {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/users/{id}/reset-password", tag = "users", params(("id" = String, Path)),
    request_body = PasswordReset,
    responses((status = 200, body = PasswordResetDone), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "The body is not `Content-Type: application/json`")))]
pub async fn user_reset_password(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<UserId>,
    Json(body): Json<PasswordReset>,
) -> ApiResult<Json<PasswordResetDone>> {
    let password = state
        .app
        .user_reset_password(&subject, id, body.password)
        .await?;
    Ok(Json(PasswordResetDone { password }))
}
