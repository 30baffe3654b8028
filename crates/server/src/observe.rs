//! Operations endpoints: `/healthz` (the process answers), `/readyz` (the
//! database answers), `/metrics` (Prometheus), and request metrics.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// Request latency buckets, in seconds: 1 ms to 10 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder (metrics are process-global by nature).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Fixed buckets, not the default summaries: a summary keeps a
        // sketch per series and time window that grew with every request
        // (the soak in docs/benchmarks.md), and summaries cannot be
        // summed across replicas.
        let builder = PrometheusBuilder::new();
        let recorder = builder
            .set_buckets(LATENCY_BUCKETS_SECONDS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours just stays empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Drains recorded histogram samples into their summaries every few
/// seconds. Without it they pile up between scrapes, without bound when
/// nothing scrapes `/metrics` (the recorder is built, not installed with
/// its own upkeep task).
pub fn spawn_metrics_upkeep() {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    let handle = prometheus();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

pub fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

pub fn routes() -> Router<AppState> {
    health_routes().route("/metrics", get(metrics_text))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub uptime_secs: u64,
}

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        uptime_secs: state.settings.started.elapsed().as_secs(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let uptime_secs = state.settings.started.elapsed().as_secs();
    match state.app.store().ping().await {
        Ok(()) => Json(Health {
            status: "ready",
            uptime_secs,
        })
        .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "database unavailable",
                    uptime_secs,
                }),
            )
                .into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", security(()), responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    // The service's own metrics, then the hosts' latest usage figures
    // (rendered from the graphs' history, so a removed host leaves no
    // stale series behind).
    let mut text = prometheus().render();
    text.push_str(&state.app.metrics_prometheus());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Counts requests and their latency. Every label takes a bounded set of
/// values whatever clients send (each new value is a new series kept for
/// the life of the process): the route template, never the raw path; a
/// standard method or `other`.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("overvisor_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("overvisor_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}

/// A method as a metrics label: the standard ones by name, anything made up `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}
