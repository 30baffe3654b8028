//! Who is signed in to the portal, and the checks every portal request
//! makes: a live session (else back to sign-in — through `HX-Redirect` for
//! htmx requests, which cannot follow a plain redirect into a full page) and,
//! on changes, the session's CSRF token.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use overvisor_control::authz::Subject;
use overvisor_control::credentials::constant_time_eq;
use overvisor_model::account::Role;

use crate::AppState;
use crate::auth::{
    CSRF_HEADER, client_info, cookie_value, expired_session_cookie, session_cookie_name,
};

/// A signed-in portal user; anything else is sent to the sign-in page.
pub struct PortalSession {
    pub subject: Subject,
    pub csrf_token: String,
    /// The request came from htmx and wants a fragment, not a page.
    pub htmx: bool,
}

impl PortalSession {
    pub fn is_admin(&self) -> bool {
        self.subject.role() == Role::Admin
    }

    pub fn can_operate(&self) -> bool {
        self.subject.role() >= Role::Operator
    }

    /// Checks a form's CSRF token against the session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), CsrfRejected> {
        if constant_time_eq(presented.as_bytes(), self.csrf_token.as_bytes()) {
            Ok(())
        } else {
            Err(CsrfRejected)
        }
    }
}

/// A form whose CSRF token did not match the session's.
pub struct CsrfRejected;

impl IntoResponse for CsrfRejected {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "The form has expired or did not come from this site. Reload the page and try again.",
        )
            .into_response()
    }
}

/// An htmx request that wants a fragment. History restoration (the back
/// button after htmx changed the URL) wants the whole page.
pub fn is_htmx(headers: &HeaderMap) -> bool {
    headers.get("hx-request").is_some_and(|v| v == "true")
        && headers
            .get("hx-history-restore-request")
            .is_none_or(|v| v != "true")
}

/// Where to come back to after signing in: only a path on this site.
pub fn safe_next(next: &str) -> Option<&str> {
    let local = next.starts_with('/') && !next.starts_with("//") && !next.contains('\\');
    (local && next.len() <= 512 && next != "/login").then_some(next)
}

fn to_login(parts: &Parts, expired: bool, clear_cookie: Option<String>) -> Response {
    let mut target = String::from("/login");
    let next = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .and_then(safe_next)
        .filter(|_| parts.method == Method::GET && !is_htmx(&parts.headers));
    let mut sep = '?';
    if expired {
        target.push_str("?expired=1");
        sep = '&';
    }
    if let Some(next) = next {
        target.push(sep);
        target.push_str("next=");
        target.push_str(&urlencode(next));
    }
    let mut response = if is_htmx(&parts.headers) {
        (StatusCode::UNAUTHORIZED, [("hx-redirect", target.as_str())]).into_response()
    } else {
        Redirect::to(&target).into_response()
    };
    if let Some(cookie) = clear_cookie
        && let Ok(value) = cookie.parse()
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Percent-encodes everything but unreserved characters and `/`.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FromRequestParts<AppState> for PortalSession {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client = client_info(parts, &state.settings);
        let Some(cookie) = cookie_value(&parts.headers, session_cookie_name(&state.settings))
        else {
            return Err(to_login(parts, false, None));
        };
        match state.app.session_authenticate(cookie, client.ip).await {
            Ok(auth) => {
                let htmx = is_htmx(&parts.headers);
                // htmx requests must carry the token in the header as well,
                // so even a GET fragment cannot be fetched cross-site.
                if htmx && parts.method != Method::GET {
                    let presented = parts
                        .headers
                        .get(CSRF_HEADER)
                        .map(|v| v.as_bytes())
                        .unwrap_or_default();
                    if !constant_time_eq(presented, auth.csrf_token.as_bytes()) {
                        return Err(CsrfRejected.into_response());
                    }
                }
                Ok(PortalSession {
                    subject: auth.subject,
                    csrf_token: auth.csrf_token,
                    htmx,
                })
            }
            Err(overvisor_control::AppError::Unauthenticated) => {
                // Expired or revoked: clear the stale cookie on the way to sign-in.
                Err(to_login(
                    parts,
                    true,
                    Some(expired_session_cookie(&state.settings)),
                ))
            }
            Err(err) => Err(crate::error::ApiError::from(err).into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_must_stay_on_this_site() {
        assert_eq!(safe_next("/vms?q=a"), Some("/vms?q=a"));
        assert_eq!(safe_next("//evil.example/"), None);
        assert_eq!(safe_next("https://evil.example/"), None);
        assert_eq!(safe_next("/\\evil.example"), None);
        assert_eq!(safe_next("/login"), None);
    }

    #[test]
    fn urlencode_keeps_paths_readable() {
        assert_eq!(urlencode("/vms?q=a b&x"), "/vms%3Fq%3Da%20b%26x");
    }
}
