//! The caller's browser sessions: list, end one, end all ("sign out everywhere").

use axum::extract::State;
use axum::http::StatusCode;
use overvisor_model::account::{Session, SessionId};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};

#[utoipa::path(get, path = "/api/v1/users/me/sessions", tag = "account",
    responses((status = 200, body = Vec<Session>), (status = 401, body = ErrorBody)))]
pub async fn sessions_list(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<Vec<Session>>> {
    Ok(Json(state.app.sessions_list(&subject).await?))
}

#[derive(Serialize, ToSchema)]
pub struct SessionsEnded {
    pub ended: u64,
}

#[utoipa::path(delete, path = "/api/v1/users/me/sessions", tag = "account",
    responses((status = 200, body = SessionsEnded), (status = 401, body = ErrorBody)))]
pub async fn sessions_delete_all(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<SessionsEnded>> {
    let ended = state.app.logout_everywhere(&subject).await?;
    Ok(Json(SessionsEnded { ended }))
}

#[utoipa::path(delete, path = "/api/v1/users/me/sessions/{id}", tag = "account", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn session_delete(
    State(state): State<AppState>,
    Caller(subject): Caller,
    Path(id): Path<SessionId>,
) -> ApiResult<StatusCode> {
    state.app.session_revoke(&subject, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
