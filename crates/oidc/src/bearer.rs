//! Bearer JWTs on the API (service principals' client-credentials access
//! tokens). The header is read first to refuse what must never be tried —
//! unsigned tokens (`alg: none`) and HMAC ones, whose "key" would be the
//! provider's public key — then the unverified `iss` picks the provider,
//! whose key set (by `kid`) verifies the signature, and issuer, audience,
//! expiry and not-before are checked with the provider's bounded clock
//! skew.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::jwks::{Lookup, parse_keys};
use crate::{Identity, MAX_AGE, Oidc, Provider, error_chain};

/// Why a bearer token was refused. Each message names the problem for
/// the caller; none repeats the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("unsigned tokens (alg \"none\") are refused")]
    Unsigned,
    #[error(
        "tokens signed with a shared secret (alg {0}) are refused; the provider must sign with its private key"
    )]
    Symmetric(String),
    #[error("the token's signing algorithm {0:?} is not supported")]
    UnsupportedAlgorithm(String),
    #[error("the token's issuer {0:?} is not a provider this service accepts API tokens from")]
    UnknownIssuer(String),
    #[error("the token names no issuer (iss)")]
    NoIssuer,
    #[error("the token is signed with a key the provider does not publish (kid {0:?})")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience is not this service (expected {0:?})")]
    WrongAudience(String),
    #[error("the token's issuer is not the provider's")]
    WrongIssuer,
    #[error("the token lacks the required claim {0}")]
    MissingClaim(String),
    #[error("the identity provider's keys could not be fetched: {0}")]
    ProviderUnavailable(String),
}

impl TokenError {
    /// Whether the provider, not the token, is at fault (→ 503, not 401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TokenError::ProviderUnavailable(_))
    }
}

/// Whether a bearer token is a JWT (our API keys have no dots), so the two
/// kinds are told apart before either is checked.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

fn decode_part(part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice::<Map<String, Value>>(&bytes).map_err(|_| TokenError::Malformed)
}

/// The algorithm of a token's header, refusing `none` and HMAC by name.
fn algorithm(header: &Map<String, Value>) -> Result<Algorithm, TokenError> {
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::Unsigned);
    }
    if alg.to_ascii_uppercase().starts_with("HS") {
        return Err(TokenError::Symmetric(alg.to_owned()));
    }
    let parsed = match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(TokenError::UnsupportedAlgorithm(other.to_owned())),
    };
    Ok(parsed)
}

/// The header and claims of a token, unverified: only to choose the
/// provider and the key; nothing in them is trusted yet.
fn peek(token: &str) -> Result<(Algorithm, Option<String>, String), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = decode_part(header)?;
    let alg = algorithm(&header)?;
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    let claims = decode_part(payload)?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenError::NoIssuer)?
        .to_owned();
    Ok((alg, kid, issuer))
}

impl Oidc {
    /// Verifies a bearer JWT against the provider that issued it; returns
    /// the provider's settings index and who the token stands for.
    pub async fn verify_bearer(&self, token: &str) -> Result<(&Provider, Identity), TokenError> {
        let (alg, kid, issuer) = peek(token)?;
        let provider = self
            .providers
            .iter()
            .find(|p| p.settings.api_audience.is_some() && same_issuer(&p.settings.issuer, &issuer))
            .ok_or_else(|| TokenError::UnknownIssuer(issuer.clone()))?;
        let identity = provider.verify_bearer(token, alg, kid.as_deref()).await?;
        Ok((provider, identity))
    }
}

/// Issuers compare verbatim, but a trailing slash is forgiven.
fn same_issuer(configured: &str, presented: &str) -> bool {
    configured.trim_end_matches('/') == presented.trim_end_matches('/')
}

impl Provider {
    async fn verify_bearer(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Identity, TokenError> {
        let jwk = self.signing_key(kid).await?;
        if let Some(key_alg) = jwk.common.key_algorithm
            && key_alg.to_string() != format!("{alg:?}")
        {
            return Err(TokenError::BadSignature);
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| TokenError::BadSignature)?;
        let audience = self.settings.api_audience.as_deref().unwrap_or_default();
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.settings.clock_skew_secs;
        validation.validate_nbf = true;
        validation.set_audience(&[audience]);
        let issuer = self.settings.issuer.trim_end_matches('/');
        validation.set_issuer(&[issuer.to_owned(), format!("{issuer}/")]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => TokenError::Expired,
                    K::ImmatureSignature => TokenError::NotYetValid,
                    K::InvalidAudience => TokenError::WrongAudience(audience.to_owned()),
                    K::InvalidIssuer => TokenError::WrongIssuer,
                    K::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                    K::InvalidSignature
                    | K::InvalidAlgorithm
                    | K::InvalidKeyFormat
                    | K::InvalidRsaKey(_)
                    | K::InvalidEcdsaKey
                    | K::InvalidEddsaKey => TokenError::BadSignature,
                    _ => TokenError::Malformed,
                }
            })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::MissingClaim("sub".into()))?
            .to_owned();
        Ok(Identity {
            issuer: self.settings.issuer.clone(),
            subject,
            claims,
        })
    }

    /// The key a token names, fetching the key set when the id is unknown
    /// (rate-limited) or the set is stale.
    async fn signing_key(&self, kid: Option<&str>) -> Result<jsonwebtoken::jwk::Jwk, TokenError> {
        let min = Duration::from_secs(self.settings.jwks_refresh_min_secs);
        let mut cache = self.jwks.lock().await;
        match cache.lookup(kid, Instant::now(), min, MAX_AGE) {
            Lookup::Found(jwk) => return Ok(*jwk),
            Lookup::Unknown => return Err(TokenError::UnknownKey(kid.unwrap_or("").to_owned())),
            Lookup::Unavailable => {
                return Err(TokenError::ProviderUnavailable(
                    "the last attempt failed moments ago".into(),
                ));
            }
            Lookup::Fetch => {}
        }
        let keys = match self.fetch_jwks().await {
            Ok(keys) => keys,
            Err(err) => {
                cache.fetch_failed(Instant::now());
                tracing::warn!(provider = %self.settings.id, error = %err, "could not fetch the identity provider's signing keys");
                return Err(TokenError::ProviderUnavailable(err));
            }
        };
        tracing::info!(
            provider = %self.settings.id,
            keys = keys.len(),
            "fetched the identity provider's signing keys"
        );
        cache.replace(keys, Instant::now());
        cache
            .find(kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.unwrap_or("").to_owned()))
    }

    async fn fetch_jwks(&self) -> Result<Vec<jsonwebtoken::jwk::Jwk>, String> {
        // A new key set usually means new discovery metadata is due too.
        let metadata = self.metadata(true).await.map_err(|e| e.to_string())?;
        let url = metadata.jwks_uri().url().clone();
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("the key set URL answered {}", response.status()));
        }
        let document: Value = response.json().await.map_err(|e| error_chain(&e))?;
        Ok(parse_keys(&document))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn refused_before_any_key_is_looked_at() {
        let p = r#"{"iss":"https://idp.example.com","sub":"x"}"#;
        assert_eq!(
            peek(&token(r#"{"alg":"none"}"#, p)),
            Err(TokenError::Unsigned)
        );
        assert_eq!(
            peek(&token(r#"{"alg":"NONE"}"#, p)),
            Err(TokenError::Unsigned)
        );
        assert_eq!(
            peek(&token(r#"{"alg":"HS256","kid":"k"}"#, p)),
            Err(TokenError::Symmetric("HS256".into()))
        );
        assert!(matches!(
            peek(&token(r#"{"alg":"RSA1_5"}"#, p)),
            Err(TokenError::UnsupportedAlgorithm(_))
        ));
        assert_eq!(
            peek(&token(r#"{"alg":"RS256"}"#, "{}")),
            Err(TokenError::NoIssuer)
        );
        assert_eq!(peek("a.b"), Err(TokenError::Malformed));
        assert_eq!(peek("!!.??.x"), Err(TokenError::Malformed));
        let (alg, kid, iss) = peek(&token(r#"{"alg":"ES256","kid":"k1"}"#, p)).expect("peek");
        assert_eq!(
            (alg, kid.as_deref(), iss.as_str()),
            (Algorithm::ES256, Some("k1"), "https://idp.example.com")
        );
    }

    #[test]
    fn api_keys_are_not_jwts() {
        assert!(!looks_like_jwt(
            "ovk_0123456789abcdef_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
        ));
        assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
    }
}
