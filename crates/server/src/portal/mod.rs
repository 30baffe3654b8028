//! The operator portal: server-rendered pages (askama) made lively with htmx.
//! Pages call the application layer (`App` methods) exactly like the API
//! handlers do — no SQL and no SSH here. Every form carries the session's
//! CSRF token, checked by the [`VerifiedForm`] extractor (and htmx sends it
//! as `X-CSRF-Token` too, checked with the session); the sign-in form
//! uses a double-submit cookie because there is no session yet.

mod account;
mod admin;
pub mod assets;
mod dashboard;
mod deploy;
mod hosts;
mod jobs;
mod login;
pub mod session;
mod sso;
mod vms;

use askama::Template;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use overvisor_model::host::HostId;

use crate::AppState;
use crate::error::ApiError;
pub use session::{CsrfOnly, CsrfRejected, PortalSession, VerifiedForm};

pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(login::routes())
        .merge(sso::routes())
        .merge(dashboard::routes())
        .merge(deploy::routes())
        .merge(account::routes())
        .merge(admin::routes())
        .merge(hosts::routes())
        .merge(jobs::routes())
        .merge(vms::routes())
        .merge(assets::routes())
        .layer(axum::middleware::map_response(assets::security_headers))
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

/// What every signed-in page shows around its content: the navigation, who
/// is signed in, the CSRF token for forms and scripts.
pub struct Chrome {
    pub user_name: String,
    pub csrf_token: String,
    pub is_admin: bool,
    pub can_operate: bool,
    /// Which navigation entry is the current page.
    pub section: &'static str,
}

impl Chrome {
    pub fn new(session: &PortalSession, section: &'static str) -> Self {
        Self {
            user_name: session.subject.user.name.to_string(),
            csrf_token: session.csrf_token.clone(),
            is_admin: session.is_admin(),
            can_operate: session.can_operate(),
            section,
        }
    }

    /// `aria-current` for a navigation entry.
    pub fn current(&self, section: &str) -> &'static str {
        if self.section == section {
            "page"
        } else {
            "false"
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    message: String,
}

/// Shows an application error: a page with the navigation, or — for htmx —
/// the bare message, which the script puts in the page's alert area.
pub(crate) fn error_response(session: &PortalSession, err: impl Into<ApiError>) -> Response {
    let err = err.into();
    let mut response = if session.htmx {
        (
            err.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            err.message,
        )
            .into_response()
    } else {
        let page = render(&ErrorPage {
            chrome: Chrome::new(session, ""),
            status: err.status.as_u16(),
            message: err.message,
        });
        (err.status, page).into_response()
    };
    crate::error::set_retry_after(&mut response, err.retry_after);
    response
}

/// Short codes in `?done=` so a redirect after a change can say what happened.
#[derive(serde::Deserialize, Default)]
pub(crate) struct Done {
    pub done: Option<String>,
}

/// Formats a time for tables: UTC, to the minute.
pub(crate) fn when(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// Bad input from a form, as the same error the API would give.
pub(crate) fn invalid(err: overvisor_model::InvalidInput) -> ApiError {
    ApiError::from(overvisor_control::AppError::from(err))
}

/// A host id from a form or query field named `host`; `None` when blank.
pub(crate) fn host_field(text: &str, refusal: &str) -> Result<Option<HostId>, ApiError> {
    match text.trim() {
        "" => Ok(None),
        h => h
            .parse::<uuid::Uuid>()
            .map(|u| Some(HostId(u)))
            .map_err(|_| ApiError::invalid("host", refusal)),
    }
}

/// Memory for people: MiB below 1 GiB, else GiB with one decimal.
pub(crate) fn mib(mib: impl Mib) -> String {
    let mib = mib.mib();
    if mib < 1024 {
        format!("{mib} MiB")
    } else if mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    }
}

/// A size in bytes for people: KiB below 1 MiB, else as [`mib`].
pub(crate) fn bytes(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes.div_ceil(1024))
    } else {
        mib(bytes >> 20)
    }
}

/// A VM state as people say it ("shut off", not `shut_off`).
pub(crate) fn state_label(state: &overvisor_model::vm::VmState) -> String {
    state.to_string().replace('_', " ")
}

/// Templates hand values over behind one or two references; this lets
/// [`mib`] take any of them.
pub(crate) trait Mib {
    fn mib(&self) -> u64;
}

impl Mib for u64 {
    fn mib(&self) -> u64 {
        *self
    }
}

impl<T: Mib> Mib for &T {
    fn mib(&self) -> u64 {
        (**self).mib()
    }
}
