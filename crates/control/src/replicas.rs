//! Several `overvisor serve` replicas on one PostgreSQL database.
//!
//! Requests may land on any replica: accounts, sessions, keys, audit, jobs
//! and hosts are rows every replica reads. What cannot be shared that way
//! is a host's SSH connection: each host is owned by ONE replica at a time
//! through a lease row (`host_leases`), renewed every third of its TTL and
//! taken over by another replica once it lapses (a replica that died) or
//! is released (a replica that stopped). Only the owner connects to the
//! host, follows its events, resyncs and samples it, and runs its jobs
//! (runners claim only jobs of hosts they own, so a lifecycle request
//! made on any replica is carried out by the owner through the job queue).
//!
//! The owner writes each change of a host's inventory out as one document
//! (`host_inventory`) and announces it with `NOTIFY`; the others apply it
//! to their own inventories, so a list or an event stream on any replica
//! is complete. A listener that lost its connection re-reads every
//! document's version on reconnect, and all replicas compare versions
//! periodically as a safety net.
//!
//! A replica takes no more than its share of the hosts (hosts / live
//! replicas, from heartbeats), so replicas started together split them.
//! On a single SQLite database there is one process: it owns every host
//! and none of this runs.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use overvisor_model::account::UserId;
use overvisor_model::host::HostId;
use overvisor_model::job::JobId;
use overvisor_store::Store;
use overvisor_store::replicas::{MAX_ANNOUNCEMENT, ReplicaAddress, ReplicaNews};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::App;
use crate::events::Event;
use crate::inventory::mirror::HostMirror;
use crate::metrics::Sample;

/// How replicas share hosts.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// A hold on a host lasts this long without renewal.
    pub lease: Duration,
    /// Every document's version is compared this often, in case an
    /// announcement was missed.
    pub mirror_check_every: Duration,
    /// Where the other replicas reach this one's API and portal, to
    /// forward requests that need the connection of a host this one owns.
    pub address: ReplicaAddress,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            mirror_check_every: Duration::from_secs(30),
            address: ReplicaAddress::default(),
        }
    }
}

/// Hosts handed over in one round at most: the new owner connects to them
/// at once, so a large imbalance is evened out over a few rounds.
const SHED_PER_ROUND: u64 = 16;

/// How many of its `owned` hosts a replica hands over this round: what it
/// holds beyond its `share`, but no more than half its lead over the live
/// replica holding fewest (`fewest`; a lead of one is what rounding the
/// shares up leaves), and only while no host is `free` (free ones are
/// taken first). Beyond its share, it takes nothing back meanwhile.
fn hosts_to_shed(owned: u64, share: u64, fewest: u64, free: u64) -> u64 {
    if free > 0 {
        return 0;
    }
    let lead = owned.saturating_sub(fewest);
    owned
        .saturating_sub(share)
        .min(lead / 2)
        .min(SHED_PER_ROUND)
}

/// This replica: its name in leases, and the hosts it owns now.
pub struct Replicas {
    id: String,
    /// Hosts are shared with other replicas (PostgreSQL); otherwise this
    /// process owns every host.
    shared: AtomicBool,
    /// Owned hosts, with the lease generation each is held in.
    owned: RwLock<HashMap<HostId, i64>>,
    /// The document version last applied per mirrored host.
    applied: std::sync::Mutex<HashMap<HostId, i64>>,
    /// A document could not be applied yet (its host is not registered
    /// here yet): every version is compared again shortly.
    retry: AtomicBool,
    /// A sample at another metrics step than this replica's was ignored
    /// (said once).
    step_warned: AtomicBool,
    /// Rings when the host registry changed: free hosts are taken at once
    /// rather than at the next round.
    pub(crate) tick_now: tokio::sync::Notify,
}

impl Default for Replicas {
    fn default() -> Self {
        Self {
            id: format!("replica-{}", uuid::Uuid::new_v4()),
            shared: AtomicBool::new(false),
            owned: RwLock::default(),
            applied: std::sync::Mutex::default(),
            retry: AtomicBool::new(false),
            step_warned: AtomicBool::new(false),
            tick_now: tokio::sync::Notify::new(),
        }
    }
}

impl Replicas {
    /// This replica's name in leases and heartbeats.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether hosts are shared with other replicas (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Acquire)
    }

    /// Whether this replica owns `host` now: runs its connection, events,
    /// resyncs and jobs.
    pub fn owns(&self, host: HostId) -> bool {
        !self.is_shared() || self.owned_now().contains_key(&host)
    }

    /// The generation of this replica's lease on `host`, if it owns it (0
    /// when hosts are not shared): a reconciler started for one
    /// generation stops when the host changed hands in between.
    pub(crate) fn owned_generation(&self, host: HostId) -> Option<i64> {
        if !self.is_shared() {
            return Some(0);
        }
        self.owned_now().get(&host).copied()
    }

    /// Whether a job in `slot` (`host:<id>`, or none) may run here.
    pub(crate) fn may_run(&self, slot: Option<&str>) -> bool {
        if !self.is_shared() {
            return true;
        }
        match slot.and_then(|s| s.strip_prefix("host:")) {
            Some(host) => host.parse().is_ok_and(|host| self.owns(host)),
            None => true,
        }
    }

    /// How many hosts this replica owns (every host when not shared).
    pub fn owned_count(&self) -> Option<usize> {
        self.is_shared().then(|| self.owned_now().len())
    }

    fn owned_now(&self) -> std::sync::RwLockReadGuard<'_, HashMap<HostId, i64>> {
        self.owned.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the owned set; answers the hosts lost and gained.
    fn set_owned(&self, now: HashMap<HostId, i64>) -> (Vec<HostId>, Vec<HostId>) {
        let mut owned = self.owned.write().unwrap_or_else(|p| p.into_inner());
        let lost = owned
            .iter()
            .filter(|(host, generation)| now.get(host) != Some(generation))
            .map(|(host, _)| *host)
            .collect();
        let gained = now
            .iter()
            .filter(|(host, generation)| owned.get(host) != Some(generation))
            .map(|(host, _)| *host)
            .collect();
        *owned = now;
        (lost, gained)
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, i64>> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl App {
    /// This replica.
    pub fn replicas(&self) -> &Replicas {
        &self.inner.replicas
    }

    /// Shares hosts with the other replicas on this (PostgreSQL) database
    /// until `shutdown`: takes this replica's share of the hosts before it
    /// returns (so the reconcilers start on them at once), then keeps the
    /// leases, writes out owned hosts' inventories and mirrors the rest.
    /// On shutdown the leases are released, so the others take the hosts
    /// over at once: await the returned handle after `shutdown`, so the
    /// release is done before the database is closed.
    pub async fn replicas_start(
        &self,
        settings: ReplicaSettings,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.replicas().shared.store(true, Ordering::Release);
        // Only now does anyone write changed hosts out.
        self.inventory().track_touched();
        tracing::info!(
            replica = self.replicas().id(),
            "joining the replicas on this database"
        );
        // Renewals must not wait behind inventory writes on a busy pool:
        // a late renewal loses hosts to the others.
        let db = self.store().with_own_pool(2);
        let mut lease_ok_at = tokio::time::Instant::now();
        self.replicas_tick(&db, &settings, &mut lease_ok_at).await;
        self.replicas_preload().await;
        let leases = tokio::spawn({
            let (app, settings, shutdown) = (self.clone(), settings.clone(), shutdown.clone());
            let db = db.clone();
            async move {
                let every = settings.lease / 3;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => app.replicas_tick(&db, &settings, &mut lease_ok_at).await,
                        _ = app.replicas().tick_now.notified() => app.replicas_tick(&db, &settings, &mut lease_ok_at).await,
                        _ = shutdown.cancelled() => break,
                    }
                }
                let me = app.replicas().id().to_owned();
                app.replicas().set_owned(HashMap::new());
                if let Err(err) = db.host_leases_release_all(&me).await {
                    tracing::warn!(error = %err, "cannot release this replica's hosts");
                }
                let _ = app.store().replica_leave(&me).await;
            }
        });
        let app = self.clone();
        crate::spawn_until(&shutdown, async move { app.replicas_write_out().await });
        let app = self.clone();
        crate::spawn_until(
            &shutdown,
            async move { app.replicas_pass_on_events().await },
        );
        let app = self.clone();
        crate::spawn_until(
            &shutdown,
            async move { app.replicas_mirror(&settings).await },
        );
        leases
    }

    /// Starts from the picture the owners last wrote out, for every host
    /// (owned ones too, until their own first resync corrects it): a
    /// replica that starts answers lists completely from its first request.
    async fn replicas_preload(&self) {
        let hosts = match self.store().hosts_list(None).await {
            Ok(hosts) => hosts,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the host registry");
                return;
            }
        };
        for host in &hosts {
            self.inventory().host_upsert(host);
            if let Ok(Some((version, doc))) = self.store().host_inventory_get(host.id).await {
                self.replicas_import(host.id, version, &doc);
            }
        }
    }

    /// One round of leases: heartbeat, renew what is held, take free hosts
    /// up to this replica's share. When the database cannot be reached for
    /// longer than a lease, every host is let go (the others may have
    /// taken them).
    async fn replicas_tick(
        &self,
        db: &Store,
        settings: &ReplicaSettings,
        lease_ok_at: &mut tokio::time::Instant,
    ) {
        match self.replicas_lease_round(db, settings).await {
            Ok(now_owned) => {
                *lease_ok_at = tokio::time::Instant::now();
                self.replicas_apply_owned(now_owned);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot renew host leases");
                if lease_ok_at.elapsed() >= settings.lease {
                    self.replicas_apply_owned(HashMap::new());
                }
            }
        }
    }

    async fn replicas_lease_round(
        &self,
        store: &Store,
        settings: &ReplicaSettings,
    ) -> Result<HashMap<HostId, i64>, overvisor_store::StoreError> {
        let me = self.replicas().id();
        let lease =
            chrono::Duration::from_std(settings.lease).unwrap_or(chrono::Duration::seconds(15));
        let now = Utc::now();
        store
            .replica_heartbeat(me, &settings.address, now, now - lease * 4)
            .await?;
        let mut owned: HashMap<HostId, i64> = store
            .host_leases_renew_held(me, now + lease)
            .await?
            .into_iter()
            .collect();
        let loads = store.replica_loads(now - lease, now).await?;
        let alive = (loads.len() as u64).max(1);
        let (hosts, held) = store.host_leases_count(now).await?;
        let share = hosts.div_ceil(alive);
        let want = share.saturating_sub(owned.len() as u64);
        if want > 0 && held < hosts {
            let limit = u32::try_from(want).unwrap_or(u32::MAX);
            owned.extend(
                store
                    .host_leases_take_free(me, now, now + lease, limit)
                    .await?,
            );
            return Ok(owned);
        }
        // Only replicas heard from in this round or the last count as
        // wanting hosts: one that is dying must not be handed any.
        let fresh = now - lease / 2;
        let owned_now = owned.len() as u64;
        let fewest = loads
            .iter()
            .filter(|l| l.id != me && l.seen >= fresh)
            .map(|l| l.held)
            .min()
            .unwrap_or(owned_now);
        let shed = hosts_to_shed(owned_now, share, fewest, hosts - held.min(hosts));
        if shed > 0 {
            let handed: Vec<HostId> = owned
                .keys()
                .take(usize::try_from(shed).unwrap_or(usize::MAX))
                .copied()
                .collect();
            store.host_leases_release(me, &handed).await?;
            for host in &handed {
                owned.remove(host);
            }
            tracing::info!(
                hosts = handed.len(),
                share,
                "handing hosts to a replica below its share"
            );
        }
        Ok(owned)
    }

    /// Where to forward a request that needs `host`'s connection: the
    /// replica that owns it, when that is not this one. `Ok(None)`: serve
    /// it here (this replica owns it, hosts are not shared, or nobody owns
    /// it right now).
    pub async fn host_owner_elsewhere(
        &self,
        host: HostId,
    ) -> Result<Option<ReplicaAddress>, crate::AppError> {
        if self.replicas().owns(host) {
            return Ok(None);
        }
        match self.store().host_owner_replica(host, Utc::now()).await? {
            Some((owner, address)) if owner != self.replicas().id() => Ok(Some(address)),
            _ => Ok(None),
        }
    }

    /// Where replica `id` is reached, if it is known (alive, or silent for
    /// less than a few leases).
    pub async fn replica_address(
        &self,
        id: &str,
    ) -> Result<Option<ReplicaAddress>, crate::AppError> {
        Ok(self.store().replica_address(id).await?)
    }

    /// Starts and stops reconcilers for hosts gained and lost.
    fn replicas_apply_owned(&self, now_owned: HashMap<HostId, i64>) {
        let (lost, gained) = self.replicas().set_owned(now_owned);
        if lost.is_empty() && gained.is_empty() {
            return;
        }
        for host in &lost {
            // Its connection belongs to the new owner now.
            self.connections().forget(*host);
            tracing::info!(%host, "host handed over to another replica");
        }
        for host in &gained {
            tracing::info!(%host, "host taken on by this replica");
        }
        self.inventory().wake.notify_one();
    }

    /// Writes out each owned host's inventory as it changes.
    async fn replicas_write_out(&self) {
        loop {
            for host in self.inventory().touched_hosts().await {
                if !self.replicas().owns(host) {
                    continue;
                }
                let Some(mirror) = self.inventory().host_export(host) else {
                    continue;
                };
                let written = match serde_json::to_string(&mirror) {
                    Ok(doc) => {
                        self.store()
                            .host_inventory_put(host, &doc, Utc::now())
                            .await
                    }
                    Err(err) => {
                        tracing::error!(%host, error = %err, "cannot serialise a host's inventory");
                        continue;
                    }
                };
                if let Err(err) = written {
                    tracing::warn!(%host, error = %err, "cannot write a host's inventory out; retrying");
                    self.inventory().touch(host);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Mirrors the hosts other replicas own: on each announcement, after
    /// a reconnect of the listener, and every `mirror_check_every`.
    async fn replicas_mirror(&self, settings: &ReplicaSettings) {
        let mut check = tokio::time::interval(settings.mirror_check_every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Documents of hosts not registered here yet are tried again soon.
        let mut retry = tokio::time::interval(Duration::from_millis(500));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let mut listener = match self.store().replica_listener().await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for inventory changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Whatever was written while nobody listened.
            self.replicas_mirror_all().await;
            loop {
                tokio::select! {
                    // The flag is read at each tick, not as a guard: a
                    // guard is read only when the loop comes round, which
                    // a quiet listener delays until the periodic check.
                    _ = retry.tick() => {
                        if self.replicas().retry.swap(false, Ordering::AcqRel) {
                            self.replicas_mirror_all().await;
                        }
                    }
                    news = listener.next() => match news {
                        Ok(ReplicaNews::Written { host, version }) => {
                            self.replicas_mirror_host(host, version).await;
                        }
                        Ok(ReplicaNews::Reconnected) => self.replicas_mirror_all().await,
                        Ok(ReplicaNews::Event(payload)) => self.replicas_event_arrived(&payload).await,
                        Err(err) => {
                            tracing::warn!(error = %err, "inventory listener lost; reconnecting");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            break;
                        }
                    },
                    _ = check.tick() => self.replicas_mirror_all().await,
                }
            }
        }
    }

    /// Passes the job events published here on to the other replicas
    /// (VM and host events need not be: each replica derives them from the
    /// inventory it mirrors). An event too large for one announcement is
    /// passed on as "read it again".
    async fn replicas_pass_on_events(&self) {
        let mut events = self.events().receiver();
        loop {
            let envelope = match events.recv().await {
                Ok(envelope) => envelope,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "job events were not passed on to other replicas");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if envelope.relayed || envelope.event.job_id().is_none() {
                continue;
            }
            let from = self.replicas().id();
            let mut payload = serde_json::to_string(&Relayed {
                from: from.to_owned(),
                owner: envelope.owner,
                event: Some(envelope.event.clone()),
                reread: None,
                sample: None,
            });
            if payload.as_ref().is_ok_and(|p| p.len() > MAX_ANNOUNCEMENT) {
                payload = serde_json::to_string(&Relayed {
                    from: from.to_owned(),
                    owner: envelope.owner,
                    event: None,
                    reread: Reread::of(&envelope.event),
                    sample: None,
                });
            }
            let sent = match payload {
                Ok(payload) if payload.len() <= MAX_ANNOUNCEMENT => {
                    self.store().announce_event(&payload).await
                }
                _ => continue,
            };
            if let Err(err) = sent {
                tracing::warn!(error = %err, "cannot pass a job event on to other replicas");
            }
        }
    }

    /// Publishes here what another replica passed on.
    async fn replicas_event_arrived(&self, payload: &str) {
        let relayed: Relayed = match serde_json::from_str(payload) {
            Ok(relayed) => relayed,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring an unreadable passed-on event");
                return;
            }
        };
        if relayed.from == self.replicas().id() {
            return;
        }
        if let Some(sample) = relayed.sample {
            self.replicas_sample_arrived(relayed.owner, &sample);
            return;
        }
        let event = match (relayed.event, relayed.reread) {
            (Some(event), _) => event,
            (None, Some(Reread::Job(id))) => match self.store().job_get(id).await {
                Ok(job) => Event::JobUpdated { job: Box::new(job) },
                Err(_) => return,
            },
            (None, Some(Reread::Step(id, index))) => {
                let Ok(steps) = self.store().job_steps(id).await else {
                    return;
                };
                let Some(step) = steps.into_iter().find(|s| s.index == index) else {
                    return;
                };
                Event::JobStep {
                    job_id: id,
                    step: Box::new(step),
                }
            }
            (None, None) => return,
        };
        self.events().publish_relayed(relayed.owner, event);
    }

    /// Passes a usage sample this replica took on to the others, in as
    /// many announcements as its VMs need.
    pub(crate) async fn replicas_pass_on_sample(&self, owner: UserId, sample: Sample) {
        let from = self.replicas().id().to_owned();
        let host = sample.host_id;
        let envelope = |sample| Relayed {
            from: from.clone(),
            owner,
            event: None,
            reread: None,
            sample,
        };
        // What the envelope adds around the sample, with room to spare.
        let wrapping = serde_json::to_string(&envelope(None)).map_or(0, |e| e.len()) + 16;
        let Some(parts) = sample.parts(MAX_ANNOUNCEMENT.saturating_sub(wrapping)) else {
            tracing::warn!(%host, "a usage sample too large to pass on to other replicas");
            return;
        };
        for part in parts {
            let sent = match serde_json::to_string(&envelope(Some(part))) {
                Ok(payload) if payload.len() <= MAX_ANNOUNCEMENT => {
                    self.store().announce_event(&payload).await
                }
                _ => {
                    tracing::warn!(%host, "a usage sample too large to pass on to other replicas");
                    return;
                }
            };
            if let Err(err) = sent {
                tracing::debug!(%host, error = %err, "cannot pass a usage sample on to other replicas");
                return;
            }
        }
    }

    /// Keeps and announces here a sample of a host another replica owns.
    fn replicas_sample_arrived(&self, owner: UserId, sample: &Sample) {
        // The owner's own samples are the ones it keeps (a sample sent
        // just before this replica took the host over is one step late).
        if self.replicas().owns(sample.host_id) {
            return;
        }
        if self.metrics().record_relayed(owner, sample) {
            self.events().publish_relayed(owner, sample.event());
        } else if !self.replicas().step_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(host = %sample.host_id, step_secs = sample.step_secs,
                "ignoring usage samples taken at another step than this replica's: \
                 give every replica the same metrics step");
        }
    }

    async fn replicas_mirror_all(&self) {
        match self.store().host_inventory_versions().await {
            Ok(versions) => {
                for (host, version) in versions {
                    self.replicas_mirror_host(host, version).await;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read inventory versions"),
        }
    }

    /// Applies `host`'s document if another replica owns it and `version`
    /// is newer than what was applied.
    async fn replicas_mirror_host(&self, host: HostId, version: i64) {
        let replicas = self.replicas();
        if replicas.owns(host) || replicas.applied().get(&host).is_some_and(|v| *v >= version) {
            return;
        }
        let (version, doc) = match self.store().host_inventory_get(host).await {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(%host, error = %err, "cannot read a host's inventory");
                return;
            }
        };
        // Taken on meanwhile: this replica's own picture wins.
        if replicas.owns(host) {
            return;
        }
        if !self.replicas_import(host, version, &doc) {
            // Registered a moment ago: the registry is read again now, and
            // the document tried again shortly.
            self.inventory_wake();
            replicas.retry.store(true, Ordering::Release);
        }
    }

    /// Applies `host`'s document of `version` to the inventory; `false`
    /// when the host is not in it yet.
    fn replicas_import(&self, host: HostId, version: i64, doc: &str) -> bool {
        let mirror: HostMirror = match serde_json::from_str(doc) {
            Ok(mirror) => mirror,
            Err(err) => {
                tracing::warn!(%host, error = %err, "ignoring an unreadable host inventory");
                // Not worth trying again soon: the owner writes a new one.
                return true;
            }
        };
        let imported = self.inventory().host_import(self.events(), host, mirror);
        if imported {
            self.replicas().applied().insert(host, version);
        }
        imported
    }
}

/// A job event on its way to the other replicas.
#[derive(Serialize, Deserialize)]
struct Relayed {
    /// The replica that published it (which hears its own announcements).
    from: String,
    owner: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<Event>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reread: Option<Reread>,
    /// A usage sample (or part of one) of a host the sender owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sample: Option<Sample>,
}

/// What to read again when the event itself was too large to announce.
#[derive(Serialize, Deserialize)]
enum Reread {
    Job(JobId),
    Step(JobId, u16),
}

impl Reread {
    fn of(event: &Event) -> Option<Self> {
        match event {
            Event::JobCreated { job } | Event::JobUpdated { job } => Some(Self::Job(job.id)),
            Event::JobStep { job_id, step } => Some(Self::Step(*job_id, step.index)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_handed_over_only_to_a_replica_well_below_its_share() {
        // 200 hosts on three replicas, shares of 67: 67/67/66 is even.
        assert_eq!(hosts_to_shed(67, 67, 66, 0), 0);
        // One came back after the others took its hosts: 100/100/0.
        assert_eq!(hosts_to_shed(100, 67, 0, 0), SHED_PER_ROUND);
        // Near the end, no more than half the lead, nor below the share.
        assert_eq!(hosts_to_shed(69, 67, 66, 0), 1);
        assert_eq!(hosts_to_shed(70, 67, 60, 0), 3);
        // Three hosts, three replicas: 2/1/0 becomes 1/1/1.
        assert_eq!(hosts_to_shed(2, 1, 0, 0), 1);
        // Nothing while hosts are free (they are taken first), nor from a
        // replica within its share.
        assert_eq!(hosts_to_shed(100, 67, 0, 5), 0);
        assert_eq!(hosts_to_shed(2, 2, 0, 0), 0);
    }

    #[test]
    fn a_lone_process_owns_every_host_and_runs_every_job() {
        let replicas = Replicas::default();
        let host = HostId::new();
        assert!(replicas.owns(host));
        assert!(replicas.may_run(Some(&format!("host:{host}"))));
        assert!(replicas.may_run(None));
        assert_eq!(replicas.owned_count(), None);
    }

    #[test]
    fn a_shared_replica_runs_only_the_jobs_of_its_own_hosts() {
        let replicas = Replicas::default();
        replicas.shared.store(true, Ordering::Release);
        let (mine, theirs) = (HostId::new(), HostId::new());
        let (lost, gained) = replicas.set_owned(HashMap::from([(mine, 1)]));
        assert!(lost.is_empty());
        assert_eq!(gained, vec![mine]);
        assert!(replicas.owns(mine) && !replicas.owns(theirs));
        assert!(replicas.may_run(Some(&format!("host:{mine}"))));
        assert!(!replicas.may_run(Some(&format!("host:{theirs}"))));
        assert!(!replicas.may_run(Some("host:not-a-host")));
        assert!(replicas.may_run(None), "jobs of no host run anywhere");
        // A new generation of the same host counts as lost and gained: the
        // lease went elsewhere and came back, the connection must restart.
        let (lost, gained) = replicas.set_owned(HashMap::from([(mine, 3)]));
        assert_eq!((lost, gained), (vec![mine], vec![mine]));
        assert_eq!(replicas.owned_count(), Some(1));
    }
}
