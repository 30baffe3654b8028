//! The HTTP face of Overvisor. Handlers are thin: parse, authenticate,
//! call one application function, map the error. No SQL and no SSH here.
//!
//! Two listeners: the UI port serves the portal (and the API, so the
//! portal's scripts stay same-origin); the API port serves the API, health,
//! metrics and the OpenAPI document.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod forward;
pub mod listen;
pub mod observe;
pub mod portal;
pub mod vouch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use overvisor_control::App;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

pub use config::Config;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub app: App,
    pub settings: Arc<Settings>,
}

/// The part of the configuration handlers need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub secure_cookies: bool,
    pub trust_forwarded_for: bool,
    /// The API base URL shown to users (dashboard, agent snippet).
    pub public_api_url: String,
    /// The portal's base URL as browsers reach it (identity providers send
    /// them back there).
    pub public_ui_url: String,
    pub started: Instant,
    /// The largest request body accepted (and forwarded to another replica).
    pub max_body_bytes: usize,
    /// The client that forwards requests to other replicas.
    pub peers: reqwest::Client,
    /// Every upgraded socket (event streams, consoles, relays): once the
    /// listeners have drained, the service waits a moment for them to say
    /// goodbye (they end on shutdown) before it exits.
    pub sockets: tokio_util::task::TaskTracker,
    /// Vouches for the client of a request passed to another replica.
    pub vouch: vouch::Vouch,
}

/// How long a stopping service waits for its sockets' last frames.
const SOCKETS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Builds the router served on the API port.
pub fn api_router(state: AppState, max_body: usize) -> Router {
    let routes = Router::new()
        .merge(api::routes())
        .merge(api::jobs::test_routes(state.app.test_jobs_enabled()))
        .merge(api::docs_routes())
        .merge(observe::routes());
    serve_routes(routes, state, max_body)
}

/// Builds the router served on the UI port: the portal plus the API.
pub fn ui_router(state: AppState, max_body: usize) -> Router {
    let routes = Router::new()
        .merge(portal::routes())
        .merge(api::routes())
        .merge(api::jobs::test_routes(state.app.test_jobs_enabled()))
        .merge(observe::health_routes());
    serve_routes(routes, state, max_body)
}

/// What both listeners put around their routes: forwarding to the replica
/// that owns a host, the body limit, request metrics and spans.
fn serve_routes(routes: Router<AppState>, state: AppState, max_body: usize) -> Router {
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::to_owner,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::mark_served,
        ))
        .fallback(api::not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(observe::track_requests))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
}

/// Request spans as tower-http makes them, but with the path redacted
/// where it carries a secret (a console ticket), and never the query.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %api::consoles::redacted_path(request.uri().path()),
        version = ?request.version(),
    )
}

/// Bound listeners, so callers (and tests) can learn the actual ports.
pub struct Listeners {
    pub ui: TcpListener,
    pub api: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            ui: TcpListener::bind(config.ui_bind).await?,
            api: TcpListener::bind(config.api_bind).await?,
        })
    }

    pub fn addresses(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.ui.local_addr()?, self.api.local_addr()?))
    }
}

/// Serves both routers until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(
    state: AppState,
    config: &Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = config.connection_limits();
    let sockets = state.settings.sockets.clone();
    let ui = ui_router(state.clone(), config.max_body_bytes);
    let api = api_router(state, config.max_body_bytes);
    tokio::try_join!(
        listen::serve_listener(listeners.ui, ui, limits, shutdown.clone()),
        listen::serve_listener(listeners.api, api, limits, shutdown),
    )?;
    sockets.close();
    if tokio::time::timeout(SOCKETS_GRACE, sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = sockets.len(),
            "sockets still open after {SOCKETS_GRACE:?}; closing them"
        );
    }
    Ok(())
}
