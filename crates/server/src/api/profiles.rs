//! Deployment profiles over HTTP.

use axum::extract::State;
use overvisor_deploy::Profile;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Json;

/// The deployment profiles: built-in ones and those in the operator's
/// profiles directory, by name.
#[utoipa::path(get, path = "/api/v1/profiles", tag = "profiles",
    responses((status = 200, body = Vec<Profile>), (status = 401, body = ErrorBody)))]
pub async fn profiles_list(
    State(state): State<AppState>,
    Caller(subject): Caller,
) -> ApiResult<Json<Vec<Profile>>> {
    Ok(Json(state.app.profiles_list(&subject)?))
}
