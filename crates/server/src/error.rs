//! The one mapping from application errors to HTTP responses. Every error
//! body has the same shape: `{"error": {"code", "message", "field"?}}`.
//! Internal details are logged, never returned.

use axum::Json;
use axum::extract::rejection::{
    FormRejection, JsonRejection, PathRejection, QueryRejection, RawFormRejection,
};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use overvisor_control::AppError;
use overvisor_control::consoles::TicketRefused;
use overvisor_oidc::OidcError;
use serde::Serialize;
use utoipa::ToSchema;

/// The error envelope of every API response that is not a success.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `not_found`, `invalid_input`.
    pub code: &'static str,
    /// A human-readable explanation.
    pub message: String,
    /// The input field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_input", message);
        e.field = Some(field.to_owned());
        e
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// A form body whose fields do not fit, worded as axum's `Form` words it.
    pub fn bad_form(err: &impl std::fmt::Display) -> Self {
        form_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Failed to deserialize form body: {err}"),
        )
    }

    pub fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "missing or invalid CSRF token (send the X-CSRF-Token header with the token from sign-in)",
        )
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> Self {
        let message = err.to_string();
        match err {
            AppError::Unauthenticated => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            }
            AppError::BadCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "bad_credentials", message)
            }
            AppError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            AppError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            AppError::Invalid(invalid) => {
                let mut e = Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    invalid.to_string(),
                );
                e.field = Some(invalid.field);
                e
            }
            AppError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            AppError::RateLimited { retry_after_secs } => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
                e.retry_after = Some(retry_after_secs);
                e
            }
            AppError::TooManyStreams { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", message)
            }
            AppError::TooManyConsoles(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_consoles", message)
            }
            AppError::ConsoleTicket(TicketRefused::Invalid) => {
                Self::new(StatusCode::GONE, "console_ticket_invalid", message)
            }
            AppError::ConsoleTicket(TicketRefused::TooMany) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_tickets", message)
            }
            AppError::InvalidTransition(_) => {
                Self::new(StatusCode::CONFLICT, "invalid_transition", message)
            }
            AppError::HostUnreachable(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "host_unreachable", message)
            }
            AppError::HostKeyMismatch { .. } => {
                Self::new(StatusCode::CONFLICT, "host_key_mismatch", message)
            }
            AppError::HostTimeout(_) => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "host_timeout", message)
            }
            AppError::HostFailed(_) => Self::new(StatusCode::BAD_GATEWAY, "host_error", message),
            AppError::StorageFull => {
                tracing::error!("the disk holding the database is full; changes are refused");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage_full", message)
            }
            AppError::Unavailable(detail) => {
                tracing::warn!(%detail, "service unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "service temporarily unavailable",
                )
            }
            AppError::InvalidToken(_) => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
            }
            AppError::NoRole(_) => Self::new(StatusCode::FORBIDDEN, "no_role", message),
            AppError::SignIn(err) => match err {
                OidcError::StateMismatch | OidcError::Refused(_) => {
                    Self::new(StatusCode::UNAUTHORIZED, "sign_in_failed", message)
                }
                OidcError::Http(_)
                | OidcError::Discovery(_)
                | OidcError::Exchange(_)
                | OidcError::IdToken(_) => {
                    tracing::warn!(error = %err, "signing in through the identity provider failed");
                    Self::new(StatusCode::BAD_GATEWAY, "identity_provider", message)
                }
            },
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        set_retry_after(&mut response, self.retry_after);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `Retry-After` on a throttled answer, API or portal alike.
pub fn set_retry_after(response: &mut Response, secs: Option<u64>) {
    if let Some(secs) = secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match &rejection {
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            JsonRejection::JsonSyntaxError(_) => "bad_json",
            JsonRejection::JsonDataError(_) => "invalid_input",
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            _ => "bad_request",
        };
        // Syntax/data errors from serde name the position and field, never secrets.
        if code == "invalid_input" {
            return data_error(&rejection.body_text());
        }
        Self::new(status, code, rejection.body_text())
    }
}

/// Turns serde's "field.path: problem at line L column C" into an error
/// naming the field, so clients can point at the right input.
fn data_error(text: &str) -> ApiError {
    let detail = text
        .split_once("target type: ")
        .map_or(text, |(_, rest)| rest);
    let field = detail.split_once(": ").map(|(path, _)| path).filter(|p| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._[]".contains(c))
    });
    let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", detail);
    err.field = field.map(str::to_owned);
    err
}

impl From<FormRejection> for ApiError {
    fn from(rejection: FormRejection) -> Self {
        form_error(rejection.status(), rejection.body_text())
    }
}

impl From<RawFormRejection> for ApiError {
    fn from(rejection: RawFormRejection) -> Self {
        form_error(rejection.status(), rejection.body_text())
    }
}

fn form_error(status: StatusCode, message: String) -> ApiError {
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "body_too_large"
    } else {
        "bad_form"
    };
    ApiError::new(status, code, message)
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        // A path segment that cannot be an id names nothing that exists.
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such resource ({})", rejection.body_text()),
        )
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
