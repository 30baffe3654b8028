//! The background reconcilers that keep the inventory true to the hosts:
//! a supervisor that follows the host registry, and one loop per host that
//! subscribes to the host's libvirt events, resyncs fully (on connect, on
//! a timer, and shortly after events that change more than a state), marks
//! the host disconnected with the error when the connection breaks, and
//! reconnects with backoff. They take no input, are idempotent, log and
//! carry on, and stop on shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use overvisor_hv::Hypervisor;
use overvisor_model::host::{Host, HostId};
use overvisor_model::vm::{VmEventKind, VmState};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::authz::authorize_system;
use crate::inventory::resync::{ResyncReply, answer_all};
use crate::{App, AppError};

/// How the reconcilers pace themselves.
#[derive(Debug, Clone)]
pub struct InventorySettings {
    /// Full resync of every connected host this often.
    pub resync_every: Duration,
    /// The host registry is re-read this often (and on [`App::inventory_wake`]).
    pub registry_every: Duration,
    /// First wait before reconnecting to a host; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A resync follows an event that changes more than a state after this.
    pub debounce: Duration,
    /// VMs' addresses are read this long after one starts (a guest needs
    /// a moment to get one); otherwise after every resync.
    pub addresses_after_start: Duration,
}

impl Default for InventorySettings {
    fn default() -> Self {
        Self {
            resync_every: Duration::from_secs(60),
            registry_every: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(15),
            debounce: Duration::from_millis(50),
            addresses_after_start: Duration::from_secs(10),
        }
    }
}

impl App {
    /// Starts the inventory's reconcilers; they stop when `shutdown` is
    /// cancelled.
    pub fn inventory_start(&self, settings: InventorySettings, shutdown: CancellationToken) {
        tokio::spawn(supervise(self.clone(), settings, shutdown));
    }

    /// Tells the reconcilers to look at the host registry now (call after
    /// a host was added, changed or removed).
    pub fn inventory_wake(&self) {
        self.inventory().wake.notify_one();
        // Where replicas share hosts, a new host is taken on at once.
        self.replicas().tick_now.notify_one();
    }
}

/// Follows the host registry: one reconciler per host, restarted when the
/// host row changes, stopped when it is removed.
async fn supervise(app: App, settings: InventorySettings, shutdown: CancellationToken) {
    let mut running: HashMap<HostId, Watched> = HashMap::new();
    let mut tick = tokio::time::interval(settings.registry_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.inventory().wake.notified() => {}
            _ = shutdown.cancelled() => break,
        }
        let hosts = match app.store().hosts_list(None).await {
            Ok(hosts) => hosts,
            Err(err) => {
                tracing::warn!(error = %err, "inventory cannot read the host registry");
                continue;
            }
        };
        let mut present = HashMap::with_capacity(hosts.len());
        for host in hosts {
            present.insert(host.id, ());
            // Another replica's host is mirrored here, not connected to.
            let lease = app.replicas().owned_generation(host.id);
            let current = running.get(&host.id);
            if current.is_some_and(|w| w.version == host.updated_at && w.lease == lease) {
                continue;
            }
            if let Some(Watched {
                stop: Some(stop), ..
            }) = running.remove(&host.id)
            {
                stop.cancel();
            }
            app.inventory().host_upsert(&host);
            if lease.is_none() {
                app.inventory().resyncers.close(host.id);
                running.insert(
                    host.id,
                    Watched {
                        version: host.updated_at,
                        lease,
                        stop: None,
                    },
                );
                continue;
            }
            let stop = shutdown.child_token();
            running.insert(
                host.id,
                Watched {
                    version: host.updated_at,
                    lease,
                    stop: Some(stop.clone()),
                },
            );
            let requests = app.inventory().resyncers.open(&host);
            tokio::spawn(reconcile_host(
                app.clone(),
                host,
                settings.clone(),
                requests,
                stop,
            ));
        }
        running.retain(|id, watched| {
            let keep = present.contains_key(id);
            if !keep {
                if let Some(stop) = &watched.stop {
                    stop.cancel();
                }
                app.inventory().resyncers.close(*id);
                app.inventory().host_remove(app.events(), *id);
                app.metrics().forget(*id);
            }
            keep
        });
    }
    for watched in running.into_values() {
        if let Some(stop) = watched.stop {
            stop.cancel();
        }
    }
}

/// A registered host as the supervisor last saw it.
struct Watched {
    /// The host row's `updated_at`.
    version: DateTime<Utc>,
    /// This replica's lease generation on it; `None`: another replica
    /// owns it.
    lease: Option<i64>,
    /// Stops its reconciler (only where this replica owns it).
    stop: Option<CancellationToken>,
}

/// Keeps one host's VMs current until `stop`, answering resync requests.
async fn reconcile_host(
    app: App,
    host: Host,
    settings: InventorySettings,
    mut requests: mpsc::Receiver<ResyncReply>,
    stop: CancellationToken,
) {
    let mut backoff = settings.backoff_min;
    // Requests that arrived while disconnected: answered by the next attempt.
    let mut waiting: Vec<ResyncReply> = Vec::new();
    loop {
        let started = Instant::now();
        let error = tokio::select! {
            _ = stop.cancelled() => return,
            error = session(&app, &host, &settings, &mut requests, &mut waiting) => error,
        };
        app.inventory()
            .mark_disconnected(app.events(), host.id, &error.to_string());
        answer_all(std::mem::take(&mut waiting), &Err(error.to_string()));
        if needs_an_edit(&error) {
            // Retrying cannot help (wrong or unconfirmed host key, no
            // usable credential); an edit of the host restarts this loop.
            // Until then a resync request is answered with the reason.
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    Some(reply) = requests.recv() => {
                        answer_all(vec![reply], &Err(error.to_string()));
                    }
                }
            }
        }
        // A session that lasted a while was a real connection: start over.
        if started.elapsed() > settings.backoff_max {
            backoff = settings.backoff_min;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
            // Someone wants this host now: try at once.
            Some(reply) = requests.recv() => {
                waiting.push(reply);
                backoff = settings.backoff_min;
                continue;
            }
        }
        backoff = (backoff * 2).min(settings.backoff_max);
    }
}

/// Errors only an operator can fix.
fn needs_an_edit(error: &AppError) -> bool {
    matches!(
        error,
        AppError::HostKeyMismatch { .. } | AppError::Conflict(_) | AppError::Internal(_)
    )
}

/// Every request queued right now (one resync serves them all).
fn drain(first: ResyncReply, requests: &mut mpsc::Receiver<ResyncReply>) -> Vec<ResyncReply> {
    let mut replies = vec![first];
    while let Ok(reply) = requests.try_recv() {
        replies.push(reply);
    }
    replies
}

/// One connected stretch: subscribe, resync, follow events. Returns why it
/// ended (it only ends on an error; cancellation drops it). `waiting`
/// requests are answered after the first resync.
async fn session(
    app: &App,
    host: &Host,
    settings: &InventorySettings,
    requests: &mut mpsc::Receiver<ResyncReply>,
    waiting: &mut Vec<ResyncReply>,
) -> AppError {
    let proof = authorize_system(host.clone());
    let driver = match app.host_driver(&proof).await {
        Ok(driver) => driver,
        Err(err) => return err,
    };
    let describe = |err| app.host_error(host, err);
    // Subscribe first: events during the resync are then not lost.
    let mut events = match driver.events().await {
        Ok(events) => events,
        Err(err) => return describe(err),
    };
    let addressing = Arc::new(AtomicBool::new(false));
    let resync = async || -> Result<usize, AppError> {
        let list = driver.list_vms().await.map_err(describe)?;
        let count = list.len();
        app.inventory().apply_full(app.events(), host.id, list);
        app.inventory().mark_connected(app.events(), host.id);
        refresh_addresses(app, host.id, &driver, &addressing);
        Ok(count)
    };
    match resync().await {
        Ok(count) => answer_all(std::mem::take(waiting), &Ok(count)),
        Err(error) => return error,
    }
    // Sampling runs beside this loop while the session lasts.
    let sampling = CancellationToken::new();
    let _stop_sampling = sampling.clone().drop_guard();
    tokio::spawn({
        let (app, host, driver) = (app.clone(), host.clone(), driver.clone());
        async move { app.metrics_sample_host(host, driver, sampling).await }
    });
    let mut tick = tokio::time::interval_at(
        Instant::now() + first_resync_after(settings.resync_every),
        settings.resync_every,
    );
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut soon: Option<Instant> = None;
    // When to ask for the addresses of VMs that just started.
    let mut addresses_at: Option<Instant> = None;
    loop {
        let debounce = until(soon);
        let addresses_due = until(addresses_at);
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    let known = match state_after(event.kind) {
                        Some(state) => {
                            if state == VmState::Running && addresses_at.is_none() {
                                addresses_at = Some(Instant::now() + settings.addresses_after_start);
                            }
                            app.inventory()
                                .apply_state(app.events(), host.id, &event.vm, state)
                        }
                        None if event.kind == VmEventKind::Undefined => {
                            app.inventory().apply_removed(app.events(), host.id, &event.vm);
                            true
                        }
                        None => false,
                    };
                    if !known && soon.is_none() {
                        soon = Some(Instant::now() + settings.debounce);
                    }
                }
                Some(Err(err)) => return describe(err),
                None => {
                    return AppError::HostUnreachable(format!(
                        "host {}: the event stream ended",
                        host.name
                    ));
                }
            },
            Some(first) = requests.recv() => {
                let replies = drain(first, requests);
                let outcome = resync().await;
                answer_all(
                    replies,
                    &outcome.as_ref().map(|n| *n).map_err(ToString::to_string),
                );
                if let Err(error) = outcome {
                    return error;
                }
            }
            _ = addresses_due => {
                addresses_at = None;
                refresh_addresses(app, host.id, &driver, &addressing);
            }
            _ = debounce => {
                soon = None;
                if let Err(error) = resync().await {
                    return error;
                }
            }
            _ = tick.tick() => {
                if let Err(error) = resync().await {
                    return error;
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Re-reads the addresses of the host's active VMs in the background (one
/// batch over the host's connection), unless a refresh is still under way:
/// the event loop never waits for guests' agents.
fn refresh_addresses(
    app: &App,
    host: HostId,
    driver: &Arc<dyn Hypervisor>,
    busy: &Arc<AtomicBool>,
) {
    if busy.swap(true, Ordering::AcqRel) {
        return;
    }
    let (app, driver, busy) = (app.clone(), driver.clone(), busy.clone());
    tokio::spawn(async move {
        let vms = app.inventory().active_vms(host);
        if !vms.is_empty() {
            match driver.vm_addresses(&vms).await {
                Ok(found) => app.inventory().apply_addresses(app.events(), host, found),
                Err(err) => tracing::debug!(%host, error = %err, "cannot read VM addresses"),
            }
        }
        busy.store(false, Ordering::Release);
    });
}

/// When a host's first periodic resync is due: somewhere between half and
/// one and a half periods after it connected. Hosts connect together (at
/// start-up, after a network blip); without the spread their resyncs would
/// all fall on the same instant, every period.
fn first_resync_after(every: Duration) -> Duration {
    use rand::Rng;
    every.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// The state a lifecycle event leaves a VM in, when the event says it all;
/// `None` means "re-read the host" (defined, rebooted, device changes, ...).
fn state_after(kind: VmEventKind) -> Option<VmState> {
    match kind {
        VmEventKind::Started | VmEventKind::Resumed => Some(VmState::Running),
        VmEventKind::Suspended => Some(VmState::Paused),
        VmEventKind::Stopped => Some(VmState::ShutOff),
        VmEventKind::Crashed => Some(VmState::Crashed),
        VmEventKind::PmSuspended => Some(VmState::PmSuspended),
        VmEventKind::Defined
        | VmEventKind::Undefined
        | VmEventKind::Shutdown
        | VmEventKind::Rebooted
        | VmEventKind::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_resyncs_are_spread_over_a_period() {
        let every = Duration::from_secs(60);
        let firsts: Vec<Duration> = (0..200).map(|_| first_resync_after(every)).collect();
        assert!(firsts.iter().all(|d| *d >= every / 2 && *d < every * 3 / 2));
        // Spread, not bunched: both halves of the window are used.
        assert!(firsts.iter().any(|d| *d < every));
        assert!(firsts.iter().any(|d| *d > every));
    }
}
