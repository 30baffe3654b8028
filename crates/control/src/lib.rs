//! The application layer of Overvisor: everything the service does, without
//! HTTP. Handlers in the server crate parse a request, authenticate it into a
//! [`authz::Subject`], and call one function here; every such function
//! authorizes through [`authz::authorize`] before touching the store.

pub mod accounts;
pub mod api_keys;
pub mod audit;
pub mod authz;
pub mod connections;
pub mod consoles;
pub mod credentials;
pub mod deployments;
pub mod error;
pub mod events;
pub mod guest_keys;
pub mod hosts;
pub mod image_cache;
pub mod inventory;
pub mod jobs;
pub mod login_limit;
pub mod metrics;
pub mod oidc;
pub mod operations;
pub mod profiles;
pub mod replicas;
pub mod sessions;
pub mod vms;

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
    /// How often an open event stream re-validates its credential, for
    /// expiry and for revocations made by another process.
    pub stream_recheck: Duration,
    /// Event streams one credential (API key or session) may have open at
    /// once; more are refused.
    pub event_streams_per_credential: usize,
    /// Offers the test-only `test.sleep` job kind.
    pub test_jobs: bool,
    /// Limits of every host connection.
    pub connections: connections::ConnectionSettings,
    /// How runners claim and lease jobs.
    pub jobs: jobs::JobSettings,
    /// The deployment profiles: built-in and the operator's.
    pub profiles: std::sync::Arc<overvisor_deploy::Catalog>,
    /// Deployed guests are emulated (TCG) even where KVM is offered.
    pub deploy_emulated: bool,
    /// Where the control plane keeps the images it streams to hosts
    /// (`<data_dir>/images`).
    pub image_cache_dir: std::path::PathBuf,
    /// Images there unused this long are removed; `None`: kept for good.
    pub image_cache_keep: Option<Duration>,
    /// Usage sampling for the graphs.
    pub metrics: metrics::MetricsSettings,
    /// The OpenID Connect providers (none by default).
    pub oidc: Arc<overvisor_oidc::Oidc>,
    /// Whether accounts may sign in with a password (off when only the
    /// identity provider should be used).
    pub password_login: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            login_limits: login_limit::Limits::default(),
            stream_recheck: Duration::from_secs(30),
            event_streams_per_credential: 16,
            test_jobs: false,
            connections: connections::ConnectionSettings::default(),
            jobs: jobs::JobSettings::default(),
            profiles: std::sync::Arc::new(overvisor_deploy::Catalog::default()),
            deploy_emulated: false,
            image_cache_dir: std::path::PathBuf::from("data/images"),
            image_cache_keep: Some(Duration::from_secs(30 * 24 * 3600)),
            metrics: metrics::MetricsSettings::default(),
            oidc: Arc::new(overvisor_oidc::Oidc::default()),
            password_login: true,
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
    connections: connections::Connections,
    events: events::EventBus,
    jobs: jobs::JobRunner,
    inventory: inventory::Inventory,
    console_tickets: consoles::ConsoleTickets,
    serial_consoles: consoles::SerialHub,
    metrics: metrics::Metrics,
    replicas: replicas::Replicas,
    images: image_cache::ImageCache,
}

impl App {
    pub fn new(store: Store, sealer: Sealer, config: AppConfig) -> Self {
        let factory = Arc::new(connections::SshDriverFactory::new(
            config.connections.clone(),
        ));
        Self::with_driver_factory(store, sealer, config, factory)
    }

    /// Like [`App::new`], with hosts reached through `factory` (a fake in unit tests).
    pub fn with_driver_factory(
        store: Store,
        sealer: Sealer,
        config: AppConfig,
        factory: Arc<dyn connections::DriverFactory>,
    ) -> Self {
        let login_limiter = login_limit::LoginLimiter::new(config.login_limits.clone());
        let jobs = jobs::JobRunner::new(config.jobs.clone());
        let metrics = metrics::Metrics::new(&config.metrics);
        let images = image_cache::ImageCache::new(config.image_cache_dir.clone());
        Self {
            inner: Arc::new(AppInner {
                store,
                sealer,
                config,
                login_limiter,
                connections: connections::Connections::new(factory),
                events: events::EventBus::default(),
                jobs,
                inventory: inventory::Inventory::default(),
                console_tickets: consoles::ConsoleTickets::default(),
                serial_consoles: consoles::SerialHub::default(),
                metrics,
                replicas: replicas::Replicas::default(),
                images,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn sealer(&self) -> &Sealer {
        &self.inner.sealer
    }

    /// The key replicas vouch for a forwarded request's client address
    /// with: the same on every replica of one master key.
    pub fn replica_vouch_key(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.sealer().derive_key("replica client address")
    }

    /// The key that signs guests' sealed provisioning payloads, derived
    /// from the master key (the same on every replica, stored nowhere).
    pub fn provisioning_key(&self) -> overvisor_provision::ProvisioningKey {
        overvisor_provision::ProvisioningKey::from_seed(
            &self.sealer().derive_key("provisioning ed25519"),
        )
    }

    /// The images the control plane streams to hosts.
    pub(crate) fn images(&self) -> &image_cache::ImageCache {
        &self.inner.images
    }

    pub(crate) fn config(&self) -> &AppConfig {
        &self.inner.config
    }

    /// Whether the test-only `test.sleep` job kind is offered.
    pub fn test_jobs_enabled(&self) -> bool {
        self.inner.config.test_jobs
    }

    pub(crate) fn login_limiter(&self) -> &login_limit::LoginLimiter {
        &self.inner.login_limiter
    }

    /// The one live driver per host.
    pub fn connections(&self) -> &connections::Connections {
        &self.inner.connections
    }

    /// The event bus (inventory and host connections publish here too).
    pub fn events(&self) -> &events::EventBus {
        &self.inner.events
    }

    pub fn jobs(&self) -> &jobs::JobRunner {
        &self.inner.jobs
    }

    /// The live picture of every VM on every host.
    pub fn inventory(&self) -> &inventory::Inventory {
        &self.inner.inventory
    }

    /// Console tickets not yet redeemed.
    pub fn console_tickets(&self) -> &consoles::ConsoleTickets {
        &self.inner.console_tickets
    }
}

/// Runs `task` until it ends or `shutdown` is cancelled.
pub(crate) fn spawn_until(
    shutdown: &tokio_util::sync::CancellationToken,
    task: impl Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = shutdown.cancelled() => {}
        }
    });
}
