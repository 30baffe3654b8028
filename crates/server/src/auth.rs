//! Authentication of HTTP requests: `Authorization: Bearer <API key>` or
//! `Bearer <JWT>` from an OpenID Connect provider, or a
//! session cookie — with the session's CSRF token required in the
//! `X-CSRF-Token` header on every state-changing request.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use overvisor_control::authz::Subject;
use overvisor_control::credentials::constant_time_eq;
use overvisor_control::sessions::ClientInfo;

use crate::error::ApiError;
use crate::{AppState, Settings};

pub const CSRF_HEADER: &str = "x-csrf-token";

/// Whether `presented` is the session's CSRF token; in constant time, so
/// response timing cannot reveal it byte by byte.
pub fn csrf_matches(presented: &[u8], token: &str) -> bool {
    constant_time_eq(presented, token.as_bytes())
}

/// Whether the request carries the session's CSRF token in `X-CSRF-Token`.
pub fn csrf_in_header(headers: &HeaderMap, token: &str) -> bool {
    let presented = headers.get(CSRF_HEADER).map(|v| v.as_bytes());
    csrf_matches(presented.unwrap_or_default(), token)
}

/// The session cookie's name; `__Host-` pins it to this origin when Secure.
pub fn session_cookie_name(settings: &Settings) -> &'static str {
    if settings.secure_cookies {
        "__Host-ov_session"
    } else {
        "ov_session"
    }
}

/// Builds a `Set-Cookie` value for the session: HttpOnly, SameSite=Lax,
/// Secure when configured. Values are base64url tokens, so need no quoting.
pub fn session_cookie(settings: &Settings, value: &str, max_age_secs: i64) -> String {
    let secure = if settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}",
        session_cookie_name(settings)
    )
}

pub fn expired_session_cookie(settings: &Settings) -> String {
    session_cookie(settings, "", 0)
}

/// The value of cookie `name` from the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where the request came from: the client another replica vouches for
/// (a request it forwarded here), else the left-most `X-Forwarded-For`
/// entry when the operator says a trusted proxy is in front, else the peer
/// address.
pub fn client_info(parts: &Parts, settings: &Settings) -> ClientInfo {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_string());
    let vouched = parts
        .headers
        .get(&crate::vouch::CLIENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            settings.vouch.verify(v, parts.method.as_str(), path)
        })
        .map(|ip| ip.to_string());
    let forwarded = settings
        .trust_forwarded_for
        .then(|| forwarded_for(&parts.headers))
        .flatten();
    ClientInfo {
        ip: vouched.or(forwarded).or(peer),
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

fn forwarded_for(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("x-forwarded-for")?.to_str().ok()?;
    let first = raw.split(',').next()?.trim();
    first
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

/// The token of `Authorization: Bearer <token>`, if the header is there.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::from(overvisor_control::AppError::Unauthenticated))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(overvisor_control::AppError::Unauthenticated.into()),
    }
}

pub(crate) fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A browser request made by a page of another site.
#[derive(Debug, Clone, Copy)]
pub struct CrossSite;

impl From<CrossSite> for ApiError {
    fn from(_: CrossSite) -> Self {
        ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "bad_origin",
            "cross-site request refused: with a session cookie, only this site's own pages may do this",
        )
    }
}

/// Browsers attach cookies to requests that other sites' pages make, so a
/// request that authenticates by cookie must come from a page of this
/// origin (the CSRF token is the first wall, this the second; WebSocket
/// and SSE requests carry no token at all). Browsers say where a request
/// comes from in `Origin` (compared with `Host`, so a proxy in front must
/// pass `Host` on) and `Sec-Fetch-Site`; clients that send neither are not
/// browsers and pass.
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), CrossSite> {
    if let Some(site) = headers.get("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Err(CrossSite);
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host.trim_end_matches('/'));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(CrossSite),
    }
}

/// An authenticated caller of the API.
#[derive(Debug, Clone)]
pub struct Caller(pub Subject);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client = client_info(parts, &state.settings);
        if let Some(token) = bearer_token(&parts.headers)? {
            // Our API keys have no dots; a JWT has exactly two.
            let subject = if overvisor_oidc::looks_like_jwt(token) {
                state.app.oidc_token_authenticate(token, client.ip).await?
            } else {
                state.app.api_key_authenticate(token, client.ip).await?
            };
            return Ok(Caller(subject));
        }
        let Some(cookie) = cookie_value(&parts.headers, session_cookie_name(&state.settings))
        else {
            return Err(overvisor_control::AppError::Unauthenticated.into());
        };
        let auth = state.app.session_authenticate(cookie, client.ip).await?;
        if !is_safe(&parts.method) {
            check_same_origin(&parts.headers)?;
            if !csrf_in_header(&parts.headers, &auth.csrf_token) {
                return Err(ApiError::csrf());
            }
        }
        Ok(Caller(auth.subject))
    }
}
