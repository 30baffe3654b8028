//! `overvisor serve`: opens the store, bootstraps the first administrator,
//! binds both ports and serves until SIGINT/SIGTERM, then drains.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use overvisor_control::connections::ConnectionSettings;
use overvisor_control::inventory::reconcile::InventorySettings;
use overvisor_control::jobs::JobSettings;
use overvisor_control::metrics::MetricsSettings;
use overvisor_control::replicas::ReplicaSettings;
use overvisor_control::{App, AppConfig, login_limit::Limits};
use overvisor_server::{AppState, Config, Listeners, Settings};
use overvisor_store::replicas::ReplicaAddress;
use overvisor_store::{MasterKey, Sealer, Store};
use tokio_util::sync::CancellationToken;

/// Opens the data directory, master key and database (migrated) as configured.
pub async fn open_app(config: &Config) -> anyhow::Result<App> {
    create_private_dir(&config.data_dir)?;
    let master = match &config.master_key {
        Some(b64) => MasterKey::from_base64(b64).context("OVERVISOR_MASTER_KEY")?,
        None => {
            let path = config.master_key_path();
            let (key, created) = MasterKey::load_or_create(&path)
                .with_context(|| format!("master key file {}", path.display()))?;
            if created {
                tracing::info!(path = %path.display(), "generated a new master key; back it up with the database");
            }
            key
        }
    };
    let store = Store::open_url(&config.database_url())
        .await
        .context("opening the database")?;
    store.migrate().await.context("migrating the database")?;
    // A bad operator profile stops start-up, naming its file and field.
    let profiles = overvisor_deploy::Catalog::load(&config.profiles_dir())
        .map_err(|e| anyhow::anyhow!("deployment {e}"))?;
    let app_config = AppConfig {
        session_ttl: std::time::Duration::from_secs(config.session_ttl_secs),
        login_limits: Limits {
            window: std::time::Duration::from_secs(config.login_window_secs),
            per_account: config.login_max_failures_per_account,
            per_address: config.login_max_failures_per_address,
        },
        stream_recheck: std::time::Duration::from_secs(config.stream_recheck_secs),
        event_streams_per_credential: config.event_streams_per_credential,
        test_jobs: config.test_jobs,
        connections: ConnectionSettings {
            connects_in_flight: config.ssh_connects_in_flight,
            command_timeout: std::time::Duration::from_secs(config.ssh_command_timeout_secs),
            keepalive_interval: std::time::Duration::from_secs(config.ssh_keepalive_secs),
            consoles_per_host: config.consoles_per_host,
            ..ConnectionSettings::default()
        },
        profiles: Arc::new(profiles),
        deploy_emulated: config.deploy_emulated,
        image_cache_dir: config.data_dir.join("images"),
        image_cache_keep: (config.image_cache_keep_days > 0)
            .then(|| std::time::Duration::from_secs(config.image_cache_keep_days * 24 * 3600)),
        oidc: std::sync::Arc::new(overvisor_oidc::Oidc::new(config.oidc.clone())?),
        password_login: config.password_login,
        metrics: MetricsSettings {
            step: (config.metrics_step_secs > 0)
                .then(|| std::time::Duration::from_secs(config.metrics_step_secs)),
            per_vm_prometheus: config.metrics_per_vm,
        },
        jobs: JobSettings {
            lease: std::time::Duration::from_secs(config.job_lease_secs),
            ..JobSettings::default()
        },
    };
    Ok(App::new(store, Sealer::new(&master), app_config))
}

/// The data directory holds the database and the master key: it is the
/// owner's alone. A new one is made 0700; an existing one that group or
/// others may enter is tightened to 0700, and the log says so.
fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    let created = !path.exists();
    if created {
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating data directory {}", path.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("data directory {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting data directory {}", path.display()))?;
            // A new directory only got the umask's mode: nothing to report.
            if !created {
                tracing::warn!(
                    path = %path.display(),
                    was = format!("{:o}", mode & 0o777),
                    "data directory was open to other users; restricted it to its owner (0700)"
                );
            }
        }
    }
    Ok(())
}

pub fn init_logging(format: &str) {
    // OVERVISOR_LOG, else the RUST_LOG people reach for first (an empty
    // value counts as unset), else the default.
    let filter = ["OVERVISOR_LOG", "RUST_LOG"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.trim().is_empty())
        .and_then(|value| tracing_subscriber::EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Err(err) = result {
        eprintln!("warning: logging not initialised: {err}");
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    init_logging(&config.log_format);
    // Install the metrics recorder before anything records.
    overvisor_server::observe::prometheus();
    overvisor_server::observe::spawn_metrics_upkeep();
    let app = open_app(&config).await?;

    if let Some(admin) = app.bootstrap_admin().await? {
        // Printed once, to the terminal only — deliberately not through the log.
        let password = admin.password.unwrap_or_default();
        println!("================================================================");
        println!(" Overvisor first start: administrator account created");
        println!("   user name: {}", admin.user.name);
        println!("   password:  {password}");
        println!("   API key:   {}", admin.api_token);
        println!(
            " These are shown only now. Sign in at http://{} and",
            config.ui_bind
        );
        println!(" change it on the Account page.");
        println!("================================================================");
    }

    raise_open_file_limit(&config);
    let listeners = Listeners::bind(&config)
        .await
        .with_context(|| format!("binding {} and {}", config.ui_bind, config.api_bind))?;
    let (ui, api) = listeners.addresses()?;
    let settings = Settings {
        secure_cookies: config.secure_cookies(),
        trust_forwarded_for: config.trust_forwarded_for,
        public_api_url: config
            .public_api_url
            .clone()
            .unwrap_or_else(|| format!("http://{api}")),
        public_ui_url: config
            .public_ui_url
            .as_ref()
            .map(|_| config.public_ui_url())
            .unwrap_or_else(|| format!("http://{ui}")),
        started,
        max_body_bytes: config.max_body_bytes,
        vouch: overvisor_server::vouch::Vouch::new(app.replica_vouch_key().as_slice()),
        peers: reqwest::Client::builder()
            // A forwarded answer is passed back as it is, redirects included.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(
                config.ssh_command_timeout_secs + 10,
            ))
            .build()
            .context("building the client for other replicas")?,
        sockets: tokio_util::task::TaskTracker::new(),
    };
    let state = AppState {
        app: app.clone(),
        settings: Arc::new(settings),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    // Event streams and consoles end with a reason when the service stops:
    // clients reconnect at once, and the drain below does not wait on them.
    let (closing_app, stopping) = (app.clone(), shutdown.clone());
    tokio::spawn(async move {
        stopping.cancelled().await;
        closing_app.events().close_client_streams();
    });
    // Identity providers are discovered in the background: one that is
    // down must not keep the service from starting (it is tried again on
    // first use).
    let oidc_app = app.clone();
    tokio::spawn(async move { oidc_app.oidc_warm_up().await });
    // Replicas on one PostgreSQL database share the hosts: this one takes
    // its share before the reconcilers start.
    let mut replicas = None;
    if app.store().backend() == overvisor_store::Backend::Postgres {
        let leases = app
            .replicas_start(
                ReplicaSettings {
                    lease: std::time::Duration::from_secs(config.host_lease_secs),
                    address: ReplicaAddress {
                        api: config.replica_url.clone().or_else(|| reachable(api)),
                        ui: config.replica_ui_url.clone().or_else(|| reachable(ui)),
                    },
                    ..ReplicaSettings::default()
                },
                shutdown.clone(),
            )
            .await;
        replicas = Some(leases);
        tracing::info!(
            replica = app.replicas().id(),
            owned = app.replicas().owned_count(),
            "sharing hosts with other replicas"
        );
    }
    app.inventory_start(
        InventorySettings {
            resync_every: std::time::Duration::from_secs(config.inventory_resync_secs),
            ..InventorySettings::default()
        },
        shutdown.clone(),
    );
    app.image_cache_start(&shutdown);
    // Queued jobs, and jobs whose runner died (once their lease lapses),
    // run here as in any other replica on this database.
    if config.run_jobs {
        app.jobs_start(shutdown.clone());
    } else {
        tracing::info!("run_jobs is off: jobs accepted here run in other replicas");
    }
    tracing::info!(%ui, %api, ready_ms = started.elapsed().as_millis() as u64, "overvisor listening");
    overvisor_server::serve(state, &config, listeners, shutdown).await?;
    // This replica's hosts are released for the others to take at once.
    if let Some(leases) = replicas {
        let _ = leases.await;
    }
    app.store().close().await;
    tracing::info!("overvisor stopped");
    Ok(())
}

/// Descriptors kept free for the database, SSH connections to hosts and logs.
const SPARE_DESCRIPTORS: u64 = 512;

/// Every connection costs a descriptor, and the usual soft limit (1024) is
/// below what two listeners may hold, so it is raised to the hard limit.
/// When even that is too low for `max_connections`, says so: the service
/// would stop accepting before reaching the cap.
fn raise_open_file_limit(config: &Config) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // The kernel refuses "unlimited" for open files; this is its usual ceiling.
    const CEILING: u64 = 1 << 20;
    let before = getrlimit(Resource::Nofile);
    let hard = before.maximum.unwrap_or(CEILING).min(CEILING);
    if before.current.is_some_and(|soft| soft < hard) {
        let raised = Rlimit {
            current: Some(hard),
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::info!(
                from = before.current,
                to = hard,
                "raised the open-file limit"
            ),
            Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(CEILING);
    let wanted = 2 * config.max_connections as u64 + SPARE_DESCRIPTORS;
    if soft < wanted {
        tracing::warn!(
            open_file_limit = soft,
            max_connections = config.max_connections,
            "the open-file limit is too low for max_connections on both listeners; \
             raise it (LimitNOFILE= in the systemd unit) or lower max_connections"
        );
    }
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// A listener's URL for the other replicas: a specific address is
/// reachable as it is; 0.0.0.0 is not (then the URL must be configured).
fn reachable(bind: std::net::SocketAddr) -> Option<String> {
    (!bind.ip().is_unspecified()).then(|| format!("http://{bind}"))
}
