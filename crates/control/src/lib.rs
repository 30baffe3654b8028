//! The application layer of Overvisor: everything the service does, without
//! HTTP. Handlers in the server crate parse a request, authenticate it into a
//! [`authz::Subject`], and call one function here; every such function
//! authorizes through [`authz::authorize`] before touching the store.

pub mod accounts;
pub mod api_keys;
pub mod audit;
pub mod authz;
pub mod credentials;
pub mod error;
pub mod login_limit;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use overvisor_store::{Sealer, Store};

pub use error::AppError;

/// Tunables of the application layer (the server crate fills them from config).
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Absolute lifetime of a browser session.
    pub session_ttl: Duration,
    pub login_limits: login_limit::Limits,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            login_limits: login_limit::Limits::default(),
        }
    }
}

/// The application: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    store: Store,
    sealer: Sealer,
    config: AppConfig,
    login_limiter: login_limit::LoginLimiter,
}

impl App {
    pub fn new(store: Store, sealer: Sealer, config: AppConfig) -> Self {
        let login_limiter = login_limit::LoginLimiter::new(config.login_limits.clone());
        Self {
            inner: Arc::new(AppInner {
                store,
                sealer,
                config,
                login_limiter,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn sealer(&self) -> &Sealer {
        &self.inner.sealer
    }

    pub(crate) fn config(&self) -> &AppConfig {
        &self.inner.config
    }

    pub(crate) fn login_limiter(&self) -> &login_limit::LoginLimiter {
        &self.inner.login_limiter
    }
}
