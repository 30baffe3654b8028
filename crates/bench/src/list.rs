//! Metric 1: a page of the VM list at 20,000 VMs, over real HTTP on
//! loopback against the real API router, with an administrator API key;
//! and what the process holds in memory with that inventory loaded.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use overvisor_control::{App, AppConfig};
use overvisor_model::account::UserId;
use overvisor_model::host::{Host, HostId, HostKind};
use overvisor_model::vm::{VmState, VmSummary};
use overvisor_server::{AppState, Settings};
use overvisor_store::{MasterKey, Sealer, Store};
use tokio_util::sync::CancellationToken;

use crate::process;
use crate::stats::{Samples, versus};

const ROLES: [&str; 5] = ["web", "db", "cache", "build", "mail"];
const MEMORY_MIB: [u64; 5] = [512, 1024, 2048, 4096, 8192];

/// The queries timed, as a UI or a script would send them.
const QUERIES: [(&str, &str); 4] = [
    ("unfiltered, by name", "limit=100"),
    (
        "name filter (1/5 match), by -memory",
        "name=web&sort=-memory&limit=100",
    ),
    (
        "name filter (1/200 match), by state",
        "name=-042-&sort=state&limit=100",
    ),
    (
        "deep page, by host, offset 19900",
        "sort=host&offset=19900&limit=100",
    ),
];

/// `hosts × per_host` synthetic VMs with varied names, states and sizes.
pub fn synthetic_host(owner: UserId, h: usize, per_host: usize) -> (Host, Vec<VmSummary>) {
    let now = Utc::now();
    let host = Host {
        id: HostId::new(),
        owner,
        name: format!("host-{h:03}"),
        kind: HostKind::Libvirt,
        address: format!("10.{}.{}.1", h / 250, h % 250),
        port: 22,
        ssh_user: "overvisor".into(),
        libvirt_uri: "qemu:///system".into(),
        tags: vec![format!("rack-{}", h % 10)],
        host_key_fingerprint: None,
        has_credential: false,
        created_at: now,
        updated_at: now,
    };
    let vms = (0..per_host)
        .map(|i| {
            let n = h * per_host + i;
            VmSummary {
                uuid: uuid::Uuid::new_v4(),
                name: format!("{}-{h:03}-{i:02}", ROLES[n % ROLES.len()]),
                state: if n.is_multiple_of(7) {
                    VmState::ShutOff
                } else {
                    VmState::Running
                },
                vcpus: Some(1 + (n % 8) as u32),
                memory_mib: Some(MEMORY_MIB[(n / 3) % MEMORY_MIB.len()]),
            }
        })
        .collect();
    (host, vms)
}

/// An [`App`] on a fresh SQLite store in `dir`, with its first administrator.
pub async fn app_with_admin(dir: &std::path::Path) -> anyhow::Result<(App, String, UserId)> {
    let store = Store::open_sqlite(&dir.join("overvisor.db"))
        .await
        .context("opening the store")?;
    store.migrate().await.context("migrating the store")?;
    let app = App::new(
        store,
        Sealer::new(&MasterKey::generate()),
        AppConfig::default(),
    );
    let admin = app
        .bootstrap_admin()
        .await?
        .context("a fresh store must bootstrap an administrator")?;
    Ok((app, admin.api_token, admin.user.id))
}

/// 100 warm-up GETs, then `requests` timed ones; also the body size.
pub async fn time_gets(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    requests: usize,
) -> anyhow::Result<(Samples, usize)> {
    let get = || async {
        let resp = client.get(url).bearer_auth(token).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        anyhow::ensure!(status.is_success(), "GET {url}: {status}");
        Ok::<usize, anyhow::Error>(body.len())
    };
    for _ in 0..100 {
        get().await?;
    }
    let mut samples = Samples::default();
    let mut bytes = 0;
    for _ in 0..requests {
        let t = Instant::now();
        bytes = get().await?;
        samples.push(t.elapsed());
    }
    Ok((samples, bytes))
}

pub async fn run(hosts: usize, per_host: usize, requests: usize) -> anyhow::Result<()> {
    println!(
        "== 1. VM list at {} VMs ({hosts} hosts × {per_host}), real HTTP on loopback",
        hosts * per_host
    );
    let dir = tempfile::tempdir()?;
    let (app, token, owner) = app_with_admin(dir.path()).await?;
    let (rss_before, _) = process::memory_mib()?;

    let started = Instant::now();
    let mut churn_target = None;
    for h in 0..hosts {
        let (host, vms) = synthetic_host(owner, h, per_host);
        churn_target = churn_target.or_else(|| Some((host.id, vms.first()?.name.clone())));
        app.inventory().load_synthetic(&host, vms);
    }
    let loaded = started.elapsed();
    let started = Instant::now();
    let snapshot = app.inventory().snapshot();
    println!(
        "   loaded {} VMs in {:.1} ms; first snapshot (5 sort orders) built in {:.1} ms",
        snapshot.len(),
        loaded.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0
    );
    drop(snapshot);

    let state = AppState {
        app: app.clone(),
        settings: Arc::new(Settings {
            secure_cookies: false,
            trust_forwarded_for: false,
            public_api_url: "http://127.0.0.1".into(),
            public_ui_url: "http://127.0.0.1".into(),
            started: Instant::now(),
            max_body_bytes: 1 << 20,
            peers: reqwest::Client::new(),
            sockets: tokio_util::task::TaskTracker::new(),
            vouch: overvisor_server::vouch::Vouch::new(app.replica_vouch_key().as_slice()),
        }),
    };
    let router = overvisor_server::api_router(state, 1 << 20)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/api/v1/vms?", listener.local_addr()?);
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await
    });

    let client = reqwest::Client::new();
    let mut worst_p99: f64 = 0.0;
    for (label, query) in QUERIES {
        let url = format!("{base}{query}");
        let (samples, bytes) = time_gets(&client, &url, &token, requests).await?;
        worst_p99 = worst_p99.max(samples.quantile(0.99));
        println!("   {label:<38} {}  ({bytes} B)", samples.line());
        println!("      GET /api/v1/vms?{query}");
    }
    println!("   worst p99: {}", versus(worst_p99, 10.0, "ms"));

    // The same filtered query while one VM changes state every 50 ms, as
    // host events would: every change invalidates the snapshot, and the
    // next reader rebuilds it.
    if let Some((host_id, vm)) = churn_target {
        let churn_app = app.clone();
        let churn_stop = stop.clone();
        let churn = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
            let mut paused = false;
            while !churn_stop.is_cancelled() {
                tick.tick().await;
                paused = !paused;
                let state = if paused {
                    VmState::Paused
                } else {
                    VmState::Running
                };
                churn_app
                    .inventory()
                    .apply_state(churn_app.events(), host_id, &vm, state);
            }
        });
        let url = format!("{base}{}", QUERIES[1].1);
        let (samples, _) = time_gets(&client, &url, &token, requests).await?;
        println!(
            "   {:<38} {}",
            "same filter, 20 state changes/s",
            samples.line()
        );
        println!(
            "      p99 under churn {}",
            versus(samples.quantile(0.99), 10.0, "ms")
        );
        churn.abort();
    }

    let (rss, hwm) = process::memory_mib()?;
    println!(
        "   process memory with {} VMs loaded: VmRSS {rss:.1} MiB (before loading {rss_before:.1} MiB), VmHWM {hwm:.1} MiB",
        hosts * per_host
    );
    println!("   RSS {}", versus(rss, 150.0, "MiB"));
    stop.cancel();
    server.await??;
    app.store().close().await;
    Ok(())
}
