//! What replicas on one database share beyond the tables every feature
//! has: heartbeats (who is alive, to split the hosts fairly), each host's
//! inventory as its owner last saw it, and — on PostgreSQL — the
//! announcement of each inventory write (`LISTEN`/`NOTIFY`), so the other
//! replicas mirror it within milliseconds instead of polling.

use chrono::{DateTime, Utc};
use overvisor_model::host::HostId;

use crate::{Db, DbRow, Result, Store, StoreError, parse_col, with_pool};

/// The channel inventory writes are announced on; the payload is
/// `<host id>:<version>`.
const INVENTORY_CHANNEL: &str = "overvisor_inventory";
/// The channel events are passed on to other replicas on (JSON).
const EVENTS_CHANNEL: &str = "overvisor_events";
/// What PostgreSQL accepts as a notification's payload is under 8000 bytes.
pub const MAX_ANNOUNCEMENT: usize = 7900;

/// Where the other replicas reach a replica (none: it cannot be reached).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaAddress {
    /// Its API.
    pub api: Option<String>,
    /// Its portal.
    pub ui: Option<String>,
}

/// A live replica and the hosts it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLoad {
    pub id: String,
    /// Its last heartbeat.
    pub seen: DateTime<Utc>,
    /// Host leases it holds.
    pub held: u64,
}

fn address_of<R: DbRow>(row: &R) -> Result<ReplicaAddress> {
    Ok(ReplicaAddress {
        api: row.col("url")?,
        ui: row.col("ui_url")?,
    })
}

impl Store {
    /// Records that replica `id` is alive at `now`, and forgets replicas
    /// silent since before `forget_before`.
    pub async fn replica_heartbeat(
        &self,
        id: &str,
        address: &ReplicaAddress,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO replicas (id, seen_ms, url, ui_url) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET
                 seen_ms = excluded.seen_ms, url = excluded.url, ui_url = excluded.ui_url",
        )
        .bind(id)
        .bind(now.timestamp_millis())
        .bind(address.api.as_deref())
        .bind(address.ui.as_deref())
        .execute(pool)
        .await)?;
        with_pool!(self, |pool| sqlx::query(
            "DELETE FROM replicas WHERE seen_ms < $1"
        )
        .bind(forget_before.timestamp_millis())
        .execute(pool)
        .await)?;
        Ok(())
    }

    /// The replica whose lease on `host` is valid at `now`, and where it
    /// is reached.
    pub async fn host_owner_replica(
        &self,
        host: HostId,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, ReplicaAddress)>> {
        let row = with_pool!(self, |pool| sqlx::query(
            "SELECT l.owner, r.url, r.ui_url FROM host_leases l
             LEFT JOIN replicas r ON r.id = l.owner
             WHERE l.host_id = $1 AND l.expires_ms >= $2",
        )
        .bind(host.to_string())
        .bind(now.timestamp_millis())
        .fetch_optional(pool)
        .await)?;
        row.map(|row| Ok((row.col("owner")?, address_of(&row)?)))
            .transpose()
    }

    /// Where replica `id` is reached, if it is known.
    pub async fn replica_address(&self, id: &str) -> Result<Option<ReplicaAddress>> {
        let row = with_pool!(self, |pool| sqlx::query(
            "SELECT url, ui_url FROM replicas WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(pool)
        .await)?;
        row.as_ref().map(address_of).transpose()
    }

    /// Every replica heard from since `since`, with when it was last
    /// heard from and how many host leases it holds valid at `now`.
    pub async fn replica_loads(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<ReplicaLoad>> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "SELECT r.id, r.seen_ms, COUNT(l.host_id) AS held FROM replicas r
             LEFT JOIN host_leases l ON l.owner = r.id AND l.expires_ms >= $2
             WHERE r.seen_ms >= $1
             GROUP BY r.id, r.seen_ms",
        )
        .bind(since.timestamp_millis())
        .bind(now.timestamp_millis())
        .fetch_all(pool)
        .await)?;
        rows.iter()
            .map(|row| {
                let seen: i64 = row.col("seen_ms")?;
                Ok(ReplicaLoad {
                    id: row.col("id")?,
                    seen: DateTime::from_timestamp_millis(seen).unwrap_or_default(),
                    held: u64::try_from(row.col::<i64>("held")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// A replica stopping gracefully leaves at once.
    pub async fn replica_leave(&self, id: &str) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "DELETE FROM replicas WHERE id = $1"
        )
        .bind(id)
        .execute(pool)
        .await)?;
        Ok(())
    }

    /// Writes `host`'s inventory document as its owner sees it now and
    /// announces it (PostgreSQL); returns the document's new version.
    pub async fn host_inventory_put(
        &self,
        host: HostId,
        doc: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let put = "INSERT INTO host_inventory (host_id, version, doc, written_ms)
                   VALUES ($1, 1, $2, $3)
                   ON CONFLICT (host_id) DO UPDATE SET
                       version = host_inventory.version + 1,
                       doc = excluded.doc,
                       written_ms = excluded.written_ms
                   RETURNING version";
        let version = match self.db() {
            Db::Sqlite(pool) => {
                sqlx::query_scalar::<_, i64>(put)
                    .bind(host.to_string())
                    .bind(doc)
                    .bind(now.timestamp_millis())
                    .fetch_one(pool)
                    .await?
            }
            // Written and announced in one statement: a listener that hears
            // of a version can always read it.
            Db::Postgres(pool) => {
                sqlx::query_scalar::<_, i64>(&format!(
                    "WITH put AS ({put})
                     SELECT version FROM put,
                            pg_notify('{INVENTORY_CHANNEL}', $1 || ':' || put.version)"
                ))
                .bind(host.to_string())
                .bind(doc)
                .bind(now.timestamp_millis())
                .fetch_one(pool)
                .await?
            }
        };
        Ok(version)
    }

    /// `host`'s inventory document and its version, if its owner wrote one.
    pub async fn host_inventory_get(&self, host: HostId) -> Result<Option<(i64, String)>> {
        let row = with_pool!(self, |pool| sqlx::query(
            "SELECT version, doc FROM host_inventory WHERE host_id = $1",
        )
        .bind(host.to_string())
        .fetch_optional(pool)
        .await)?;
        row.map(|row| Ok((row.col("version")?, row.col("doc")?)))
            .transpose()
    }

    /// Every host's inventory version (to find what a mirror missed).
    pub async fn host_inventory_versions(&self) -> Result<Vec<(HostId, i64)>> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "SELECT host_id, version FROM host_inventory",
        )
        .fetch_all(pool)
        .await)?;
        rows.iter()
            .map(|row| {
                let host: String = row.col("host_id")?;
                Ok((parse_col(&host, "host id")?, row.col("version")?))
            })
            .collect()
    }

    /// Passes `payload` (at most [`MAX_ANNOUNCEMENT`] bytes) to every
    /// replica's listener (PostgreSQL only).
    pub async fn announce_event(&self, payload: &str) -> Result<()> {
        let Db::Postgres(pool) = self.db() else {
            return Err(StoreError::Unavailable(
                "announcements need PostgreSQL".into(),
            ));
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(EVENTS_CHANNEL)
            .bind(payload)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Listens for inventory announcements and passed-on events
    /// (PostgreSQL only: a SQLite
    /// database has one process, which needs none).
    pub async fn replica_listener(&self) -> Result<ReplicaListener> {
        let Db::Postgres(pool) = self.db() else {
            return Err(StoreError::Unavailable(
                "inventory announcements need PostgreSQL".into(),
            ));
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.ignore_pool_close_event(true);
        listener
            .listen_all([INVENTORY_CHANNEL, EVENTS_CHANNEL])
            .await?;
        Ok(ReplicaListener { listener })
    }
}

/// What a [`ReplicaListener`] heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaNews {
    /// `host`'s document was written in `version`.
    Written { host: HostId, version: i64 },
    /// The listening connection was lost and is back: announcements in
    /// between are gone, so the caller re-reads every version.
    Reconnected,
    /// An event another replica passed on (see [`Store::announce_event`]).
    Event(String),
}

/// Inventory announcements and passed-on events from every replica.
pub struct ReplicaListener {
    listener: sqlx::postgres::PgListener,
}

impl ReplicaListener {
    /// The next announcement. A lost connection is re-established here
    /// (and reported as [`ReplicaNews::Reconnected`]); an error means
    /// the database cannot be reached now.
    pub async fn next(&mut self) -> Result<ReplicaNews> {
        loop {
            // `try_recv` answers `None` once when the connection dropped,
            // and reconnects on the next call.
            let Some(note) = self.listener.try_recv().await? else {
                return Ok(ReplicaNews::Reconnected);
            };
            if note.channel() == EVENTS_CHANNEL {
                return Ok(ReplicaNews::Event(note.payload().to_owned()));
            }
            if let Some((host, version)) = note.payload().split_once(':')
                && let (Ok(host), Ok(version)) = (host.parse(), version.parse())
            {
                return Ok(ReplicaNews::Written { host, version });
            }
            tracing::warn!(
                payload = note.payload(),
                "ignoring a malformed inventory announcement"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReplicaAddress;
    use crate::Store;
    use crate::testdb::{now, registered_hosts};

    async fn documents_grow_a_version_and_heartbeats_count_the_living(store: Store) {
        let h = registered_hosts(&store, 1).await[0];
        let t0 = now();
        assert_eq!(store.host_inventory_get(h).await.expect("get"), None);
        assert_eq!(
            store
                .host_inventory_put(h, "{\"a\":1}", t0)
                .await
                .expect("put"),
            1
        );
        assert_eq!(
            store
                .host_inventory_put(h, "{\"a\":2}", t0)
                .await
                .expect("put"),
            2
        );
        assert_eq!(
            store.host_inventory_get(h).await.expect("get"),
            Some((2, "{\"a\":2}".to_owned()))
        );
        assert_eq!(
            store.host_inventory_versions().await.expect("versions"),
            vec![(h, 2)]
        );

        let ttl = chrono::Duration::seconds(15);
        // Replicas heard from within the TTL before `at`.
        let alive = async |at| {
            store
                .replica_loads(at - ttl, at)
                .await
                .expect("alive")
                .len()
        };
        let r1 = ReplicaAddress {
            api: Some("http://10.0.0.9:8001".to_owned()),
            ui: Some("http://10.0.0.9:8000".to_owned()),
        };
        store
            .replica_heartbeat("r1", &r1, t0, t0 - ttl)
            .await
            .expect("beat");
        store
            .replica_heartbeat("r2", &ReplicaAddress::default(), t0, t0 - ttl)
            .await
            .expect("beat");
        assert_eq!(alive(t0).await, 2);
        // The owner of a host, with where it is reached.
        assert_eq!(store.host_owner_replica(h, t0).await.expect("owner"), None);
        store
            .host_lease_acquire(h, "r1", t0, t0 + ttl)
            .await
            .expect("lease")
            .expect("free");
        assert_eq!(
            store.host_owner_replica(h, t0).await.expect("owner"),
            Some(("r1".to_owned(), r1.clone()))
        );
        assert_eq!(
            store.replica_address("r1").await.expect("r1"),
            Some(r1.clone())
        );
        assert_eq!(store.replica_address("r9").await.expect("r9"), None);
        let loads = store.replica_loads(t0 - ttl, t0).await.expect("loads");
        let held: Vec<(&str, u64)> = {
            let mut v: Vec<_> = loads.iter().map(|l| (l.id.as_str(), l.held)).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(held, vec![("r1", 1), ("r2", 0)]);
        // A released lease is free for the others at once.
        store
            .host_leases_release("r2", &[h])
            .await
            .expect("not r2's");
        assert_eq!(
            store
                .host_owner_replica(h, t0)
                .await
                .expect("owner")
                .map(|o| o.0),
            Some("r1".to_owned())
        );
        store
            .host_leases_release("r1", &[h])
            .await
            .expect("release");
        assert_eq!(store.host_owner_replica(h, t0).await.expect("owner"), None);
        store
            .host_lease_acquire(h, "r1", t0, t0 + ttl)
            .await
            .expect("lease")
            .expect("free again");
        // A replica silent for longer than the TTL is not counted, then
        // forgotten by the next heartbeat.
        let t1 = t0 + ttl + chrono::Duration::seconds(1);
        store
            .replica_heartbeat("r1", &r1, t1, t1 - ttl)
            .await
            .expect("beat");
        assert_eq!(alive(t1).await, 1);
        store.replica_leave("r1").await.expect("leave");
        assert_eq!(alive(t1).await, 0);
    }

    crate::testdb::on_both_backends!(documents_grow_a_version_and_heartbeats_count_the_living);
}
