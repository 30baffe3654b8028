//! The authorization-code flow with PKCE: [`Provider::start`] makes the
//! URL to send the browser to and what must be remembered until it comes
//! back (state, nonce, PKCE verifier — kept by the caller, sealed in a
//! cookie); [`Provider::finish`] checks the returned state, exchanges the
//! code and verifies the ID token (signature against the discovered keys,
//! issuer, audience, expiry, nonce).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient};
use openidconnect::{
    AuthorizationCode, ClientId, CsrfToken, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Identity, OidcError, Provider, error_chain};

/// A sign-in in progress, as the browser carries it between leaving for
/// the provider and coming back. It holds secrets (the PKCE verifier): the
/// caller must seal it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub provider: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub redirect_uri: String,
    /// Where to go once signed in (a path of this site).
    pub next: String,
    /// Unix seconds, to refuse stale attempts.
    pub started_at: i64,
}

/// Where to send the browser, and what to remember.
#[derive(Debug)]
pub struct Started {
    pub url: String,
    pub pending: Pending,
}

impl Provider {
    fn client(
        &self,
        metadata: openidconnect::core::CoreProviderMetadata,
        redirect_uri: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        OidcError,
    > {
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| OidcError::Discovery(format!("bad redirect URL: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            self.settings
                .client_secret
                .as_ref()
                .map(|s| openidconnect::ClientSecret::new(s.expose().to_owned())),
        )
        .set_redirect_uri(redirect))
    }

    /// Begins a sign-in that will come back to `redirect_uri`.
    pub async fn start(
        &self,
        redirect_uri: &str,
        next: &str,
        now_unix: i64,
    ) -> Result<Started, OidcError> {
        let metadata = self.metadata(false).await?;
        let client = self.client(metadata, redirect_uri)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            // The client adds `openid` itself.
            .add_scopes(
                self.settings
                    .scopes_with_openid()
                    .into_iter()
                    .skip(1)
                    .map(Scope::new),
            )
            .set_pkce_challenge(challenge)
            .url();
        Ok(Started {
            url: url.to_string(),
            pending: Pending {
                provider: self.settings.id.clone(),
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
                redirect_uri: redirect_uri.to_owned(),
                next: next.to_owned(),
                started_at: now_unix,
            },
        })
    }

    /// Completes a sign-in: `state` and `code` as the provider returned
    /// them to the browser.
    pub async fn finish(
        &self,
        pending: Pending,
        state: &str,
        code: &str,
    ) -> Result<Identity, OidcError> {
        if pending.provider != self.settings.id
            || !constant_time_eq(pending.state.as_bytes(), state.as_bytes())
        {
            return Err(OidcError::StateMismatch);
        }
        let metadata = self.metadata(false).await?;
        let client = self.client(metadata, &pending.redirect_uri)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(error_chain(&e)))?;
        let id_token = openidconnect::TokenResponse::id_token(&response)
            .ok_or_else(|| OidcError::IdToken("the token response has no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let skew =
            chrono::Duration::seconds(i64::try_from(self.settings.clock_skew_secs).unwrap_or(0));
        let verify = |client: &CoreClient<_, _, _, _, _, _>| {
            let verifier = client
                .id_token_verifier()
                .set_time_fn(move || chrono::Utc::now() - skew);
            id_token
                .claims(&verifier, &nonce)
                .map(|c| c.subject().to_string())
        };
        let subject = match verify(&client) {
            Ok(sub) => sub,
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider rotated its keys since discovery: fetch
                // them again (rate-limited) and try once more.
                let metadata = self.metadata(true).await?;
                let fresh = self.client(metadata, &pending.redirect_uri)?;
                verify(&fresh).map_err(|e| OidcError::IdToken(e.to_string()))?
            }
            Err(e) => return Err(OidcError::IdToken(e.to_string())),
        };
        // The signature is verified: every claim of the token can be read,
        // including the ones the library does not model (roles, groups).
        let claims = payload(&id_token.to_string())
            .ok_or_else(|| OidcError::IdToken("the ID token's claims are not JSON".into()))?;
        Ok(Identity {
            issuer: self.settings.issuer.clone(),
            subject,
            claims,
        })
    }
}

fn payload(jwt: &str) -> Option<Map<String, Value>> {
    let part = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
