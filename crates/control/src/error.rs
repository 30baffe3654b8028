//! The one error type of the application layer. It knows nothing of HTTP;
//! the server maps each variant to a status in one place. `Internal` keeps
//! the detail for the log and never shows it to the caller.

use overvisor_model::InvalidInput;
use overvisor_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No valid credentials were presented.
    #[error("authentication required")]
    Unauthenticated,
    /// Credentials were presented but are wrong (sign-in).
    #[error("invalid name or password")]
    BadCredentials,
    /// Authenticated, allowed to know the thing exists, but not to do this.
    #[error("you are not allowed to {0}")]
    Forbidden(&'static str),
    /// Does not exist, or belongs to someone the caller may not see.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(#[from] InvalidInput),
    #[error("{0}")]
    Conflict(String),
    #[error("too many attempts; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The credential already has as many event streams open as allowed
    /// (→ 429 `too_many_streams`).
    #[error(
        "this credential already has {limit} event streams open, the most allowed \
         (event_streams_per_credential); close one first"
    )]
    TooManyStreams { limit: usize },
    /// The host has as many consoles open as allowed (→ 429
    /// `too_many_consoles`); the message names the host and the limit.
    #[error("{0}")]
    TooManyConsoles(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The service's storage is full: changes cannot be saved (→ 503
    /// `storage_full`); reads still work.
    #[error(
        "the service's storage is full: no change can be saved until space is freed \
         where it keeps its data; reading still works"
    )]
    StorageFull,
    /// The VM's state forbids the lifecycle action (→ 409 `invalid_transition`).
    #[error("{0}")]
    InvalidTransition(String),
    /// A host could not be reached or talked to, or refused our login
    /// (→ 502 `host_unreachable`). The message names the host and why.
    #[error("{0}")]
    HostUnreachable(String),
    /// A host presented another SSH key than the pinned one (→ 409
    /// `host_key_mismatch`): nothing was sent to it.
    #[error(
        "host key of {address} does not match the pinned one: expected {expected}, presented {presented}"
    )]
    HostKeyMismatch {
        address: String,
        expected: String,
        presented: String,
    },
    /// A host did not answer in time (→ 504 `host_timeout`).
    #[error("{0}")]
    HostTimeout(String),
    /// A host ran the operation and failed it, in its own words (→ 502 `host_error`).
    #[error("{0}")]
    HostFailed(String),
    /// A console ticket was refused (→ 410 `console_ticket_invalid`, or
    /// 429 `too_many_tickets`).
    #[error(transparent)]
    ConsoleTicket(#[from] crate::consoles::TicketRefused),
    /// A bearer JWT was refused (→ 401 `invalid_token`); the message names
    /// the problem (expired, wrong audience, unsigned, …).
    #[error("{0}")]
    InvalidToken(#[from] overvisor_oidc::TokenError),
    /// An identity provider vouched for someone whose claims map to no
    /// role (→ 403 `no_role`); the message names the provider.
    #[error(
        "your account at {0} has no role in Overvisor: ask an administrator to add you to a group \
         that is mapped to an Overvisor role"
    )]
    NoRole(String),
    /// Signing in through an identity provider failed (→ 401
    /// `sign_in_failed`, or 502 when the provider is at fault).
    #[error(transparent)]
    SignIn(#[from] overvisor_oidc::OidcError),
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => AppError::NotFound(what),
            StoreError::Conflict(msg) => AppError::Conflict(msg),
            StoreError::Unavailable(msg) => AppError::Unavailable(msg),
            StoreError::Full => AppError::StorageFull,
            busy if busy.is_pool_exhausted() => AppError::Unavailable("database busy".into()),
            other => AppError::Internal(other.to_string()),
        }
    }
}
