//! Who is signed in to the portal, and the checks every portal request
//! makes: a live session (else back to sign-in — through `HX-Redirect` for
//! htmx requests, which cannot follow a plain redirect into a full page) and,
//! on changes, the session's CSRF token: [`VerifiedForm`] is the only way a
//! portal handler reads a form, and it checks the token.

use axum::extract::{FromRequest, FromRequestParts, RawForm, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use overvisor_control::authz::Subject;
use overvisor_model::account::Role;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::auth::{
    CrossSite, check_same_origin, client_info, cookie_value, csrf_in_header, csrf_matches,
    expired_session_cookie, is_safe, session_cookie_name,
};
use crate::error::ApiError;

/// The form field every portal form carries the session's CSRF token in.
const CSRF_FIELD: &str = "csrf_token";

/// A signed-in portal user; anything else is sent to the sign-in page.
#[derive(Clone)]
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
}

/// A form posted from a portal page whose `csrf_token` field matches the
/// session's; the token is checked before the other fields are read, so a
/// forged request is refused whatever it holds. `T` need not (and should
/// not) have a `csrf_token` field.
pub struct VerifiedForm<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for VerifiedForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        // The handler's own `PortalSession` left it in the extensions, so
        // this does not authenticate twice.
        let session = PortalSession::from_request_parts(&mut parts, state).await?;
        let RawForm(bytes) = RawForm::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| ApiError::from(e).into_response())?;
        let presented = url::form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == CSRF_FIELD)
            .map(|(_, value)| value)
            .unwrap_or_default();
        if !csrf_matches(presented.as_bytes(), &session.csrf_token) {
            return Err(CsrfRejected.into_response());
        }
        let fields = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(&bytes));
        serde_path_to_error::deserialize(fields)
            .map(VerifiedForm)
            .map_err(|e| ApiError::bad_form(&e).into_response())
    }
}

/// A form with nothing but the CSRF token (buttons that do one thing).
#[derive(serde::Deserialize)]
pub struct CsrfOnly {}

/// A form whose CSRF token did not match the session's.
pub struct CsrfRejected;

impl IntoResponse for CsrfRejected {
    fn into_response(self) -> Response {
        refused(
            "The form has expired or did not come from this site. Reload the page and try again.",
        )
    }
}

/// The portal's answer to a change sent by another site's page.
impl IntoResponse for CrossSite {
    fn into_response(self) -> Response {
        refused(
            "This request came from another site and was refused. Use Overvisor's own pages to make changes.",
        )
    }
}

fn refused(message: &'static str) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// An htmx request that wants a fragment. History restoration (the back
/// button after htmx changed the URL) wants the whole page.
pub fn is_htmx(headers: &HeaderMap) -> bool {
    headers.get("hx-request").is_some_and(|v| v == "true")
        && headers
            .get("hx-history-restore-request")
            .is_none_or(|v| v != "true")
}

/// A placeholder origin to resolve `next` against: whatever it resolves to
/// must stay on it.
const NEXT_BASE: &str = "http://overvisor.invalid/";

/// Where to come back to after signing in: only a path on this site, as a
/// percent-encoded path and query (always a valid `Location`).
///
/// Browsers clean a `Location` before following it: they drop ASCII tab,
/// CR and LF anywhere, trim C0 controls and spaces at both ends, and read
/// `\` as `/`. So `/<TAB>/evil.example/` arrives as `//evil.example/`,
/// another origin. The value is cleaned the same way, then resolved by the
/// WHATWG URL parser (what browsers use) and kept only if it stays on
/// this origin.
pub fn safe_next(next: &str) -> Option<String> {
    if next.len() > 512 || next.contains('\\') {
        return None;
    }
    let cleaned: String = next
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| c <= ' ');
    if !cleaned.starts_with('/')
        || cleaned.starts_with("//")
        || cleaned.chars().any(char::is_control)
    {
        return None;
    }
    let base = url::Url::parse(NEXT_BASE).ok()?;
    let resolved = base.join(cleaned).ok()?;
    if resolved.origin() != base.origin() {
        return None;
    }
    let mut path = resolved.path().to_owned();
    // Dot segments can still leave `//host` (`/..//evil`): protocol-relative.
    if path.starts_with("//") || path == "/login" {
        return None;
    }
    if let Some(query) = resolved.query() {
        path.push('?');
        path.push_str(query);
    }
    Some(path)
}

fn to_login(parts: &Parts, expired: bool, clear_cookie: Option<String>) -> Response {
    let mut target = String::from("/login");
    let next = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|_| parts.method == Method::GET && !is_htmx(&parts.headers))
        .and_then(safe_next);
    let mut sep = '?';
    if expired {
        target.push_str("?expired=1");
        sep = '&';
    }
    if let Some(next) = next {
        target.push(sep);
        target.push_str("next=");
        target.push_str(&urlencode(&next));
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
        if let Some(session) = parts.extensions.get::<PortalSession>() {
            return Ok(session.clone());
        }
        let client = client_info(parts, &state.settings);
        let Some(cookie) = cookie_value(&parts.headers, session_cookie_name(&state.settings))
        else {
            return Err(to_login(parts, false, None));
        };
        match state.app.session_authenticate(cookie, client.ip).await {
            Ok(auth) => {
                if !is_safe(&parts.method) {
                    check_same_origin(&parts.headers).map_err(IntoResponse::into_response)?;
                }
                let htmx = is_htmx(&parts.headers);
                // htmx requests must carry the token in the header as well,
                // so even a GET fragment cannot be fetched cross-site.
                if htmx
                    && parts.method != Method::GET
                    && !csrf_in_header(&parts.headers, &auth.csrf_token)
                {
                    return Err(CsrfRejected.into_response());
                }
                let session = PortalSession {
                    subject: auth.subject,
                    csrf_token: auth.csrf_token,
                    htmx,
                };
                parts.extensions.insert(session.clone());
                Ok(session)
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
        assert_eq!(safe_next("/vms?q=a").as_deref(), Some("/vms?q=a"));
        assert_eq!(safe_next("/vms?q=a b").as_deref(), Some("/vms?q=a%20b"));
        assert_eq!(safe_next("/hosts/ü").as_deref(), Some("/hosts/%C3%BC"));
        // Browsers drop these, so they must not hide a second slash.
        assert_eq!(safe_next(" /jobs\t").as_deref(), Some("/jobs"));
        assert_eq!(safe_next("/jobs\x0b").as_deref(), Some("/jobs"));
        for hostile in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "\\/evil.example",
            "/\t/evil.example/",
            "/\r/evil.example/",
            "/\n/evil.example/",
            "\t//evil.example/",
            " //evil.example/",
            "\x01//evil.example/",
            "/..//evil.example/",
            "/./..//evil.example/",
            "/%2e%2e//evil.example/",
            "javascript:alert(1)",
            "/v\x0bms",
            "/vms\u{85}",
            "",
            "vms",
            "/login",
            "/x/../login",
        ] {
            assert_eq!(safe_next(hostile), None, "{hostile:?} accepted");
        }
        assert_eq!(safe_next(&format!("/{}", "a".repeat(600))), None);
    }

    #[test]
    fn urlencode_keeps_paths_readable() {
        assert_eq!(urlencode("/vms?q=a b&x"), "/vms%3Fq%3Da%20b%26x");
    }
}
