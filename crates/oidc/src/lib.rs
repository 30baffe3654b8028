//! Overvisor's OpenID Connect client, free of HTTP serving and of the
//! database: what a provider is ([`ProviderSettings`], validated at start),
//! discovery, the authorization-code flow with PKCE ([`Provider::start`],
//! [`Provider::finish`]), bearer JWTs checked against the provider's JWKS
//! ([`Oidc::verify_bearer`]), and the mapping of claims to a [`Role`].
//!
//! The application layer decides what an identity means (which account,
//! which session); this crate only says who the provider vouches for.
//!
//! [`Role`]: overvisor_model::account::Role

mod bearer;
mod error;
mod flow;
mod jwks;
mod settings;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::Mutex;

pub use bearer::{TokenError, looks_like_jwt};
pub use error::OidcError;
pub use flow::{Pending, Started};
pub use settings::{ClientSecret, ProviderSettings, RoleDecision, RoleMapping};

/// Discovery documents and key sets are fetched again after this long,
/// so keys a provider withdrew stop being accepted.
const MAX_AGE: Duration = Duration::from_secs(3600);

/// Longest a request to a provider may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Every configured provider, shared by the sign-in pages and the API.
#[derive(Default)]
pub struct Oidc {
    providers: Vec<Arc<Provider>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| &p.settings.id))
            .finish()
    }
}

impl Oidc {
    /// Providers from validated settings. Nothing is fetched yet: discovery
    /// happens on first use (and [`Oidc::warm_up`]), so a provider that is
    /// down does not keep the service from starting.
    pub fn new(settings: Vec<ProviderSettings>) -> Result<Self, OidcError> {
        let http = reqwest::Client::builder()
            // Following redirects would let a discovery document send us
            // anywhere (SSRF); conforming providers answer directly.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| OidcError::Http(e.to_string()))?;
        let providers = settings
            .into_iter()
            .map(|settings| {
                Arc::new(Provider {
                    settings,
                    http: http.clone(),
                    discovered: Mutex::new(None),
                    jwks: Mutex::new(jwks::JwksCache::default()),
                })
            })
            .collect();
        Ok(Self { providers })
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.settings.id == id)
    }

    /// Discovers every provider once, logging the ones that do not answer
    /// (they are tried again on first use).
    pub async fn warm_up(&self) {
        for provider in &self.providers {
            match provider.metadata(false).await {
                Ok(_) => {
                    tracing::info!(provider = %provider.settings.id, "OIDC provider discovered")
                }
                Err(err) => tracing::warn!(
                    provider = %provider.settings.id,
                    error = %err,
                    "OIDC provider not reachable yet; will retry on first use"
                ),
            }
        }
    }
}

/// One provider: its settings, its discovery document and key set, cached.
pub struct Provider {
    settings: ProviderSettings,
    http: reqwest::Client,
    discovered: Mutex<Option<Discovered>>,
    jwks: Mutex<jwks::JwksCache>,
}

#[derive(Clone)]
struct Discovered {
    metadata: openidconnect::core::CoreProviderMetadata,
    at: Instant,
}

impl Provider {
    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    /// The discovery document, fetched when missing, older than
    /// [`MAX_AGE`], or when `refresh` asks for a new key set (at most once
    /// per `jwks_refresh_min_secs`).
    async fn metadata(
        &self,
        refresh: bool,
    ) -> Result<openidconnect::core::CoreProviderMetadata, OidcError> {
        let mut cached = self.discovered.lock().await;
        let min = Duration::from_secs(self.settings.jwks_refresh_min_secs);
        let stale = match cached.as_ref() {
            None => true,
            Some(d) => d.at.elapsed() > MAX_AGE || (refresh && d.at.elapsed() >= min),
        };
        if stale {
            let issuer = openidconnect::IssuerUrl::new(self.settings.issuer.clone())
                .map_err(|e| OidcError::Discovery(e.to_string()))?;
            let metadata =
                openidconnect::core::CoreProviderMetadata::discover_async(issuer, &self.http)
                    .await
                    .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
            *cached = Some(Discovered {
                metadata,
                at: Instant::now(),
            });
        }
        cached
            .as_ref()
            .map(|d| d.metadata.clone())
            .ok_or_else(|| OidcError::Discovery("no discovery document".into()))
    }
}

/// Who a provider vouches for: the issuer, the subject, and every claim
/// of the verified token (for names, e-mail and roles).
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub claims: Map<String, Value>,
}

impl Identity {
    fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A name for the account, in the order providers usually fill them.
    pub fn preferred_name(&self) -> Option<&str> {
        [
            "preferred_username",
            "upn",
            "email",
            "name",
            "client_id",
            "azp",
        ]
        .iter()
        .find_map(|c| self.claim_str(c))
    }

    pub fn email(&self) -> Option<&str> {
        self.claim_str("email")
    }

    /// The e-mail address, only when the provider says it verified it.
    pub fn verified_email(&self) -> Option<&str> {
        let verified = match self.claims.get("email_verified") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        verified.then(|| self.email()).flatten()
    }
}

/// An error with its sources, for messages (the HTTP clients' errors put
/// the useful part in a source).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
