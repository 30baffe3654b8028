//! Leases on hosts, for several replicas on one database: a host's
//! connection belongs to the replica holding its lease. Taking a lease is
//! one statement (an upsert that only wins over a lapsed lease or one's
//! own), so two replicas racing for a host cannot both win, on SQLite or
//! PostgreSQL. Each change of owner bumps the lease's generation: the
//! fencing token a holder renews with.

use chrono::{DateTime, Utc};
use overvisor_model::host::HostId;

use crate::{DbRow, Result, Store, parse_col, with_pool};

/// A `(host_id, generation)` row.
fn held(row: &impl DbRow) -> Result<(HostId, i64)> {
    let host: String = row.col("host_id")?;
    Ok((parse_col(&host, "host id")?, row.col("generation")?))
}

/// A lease held: by whom, until when, in which generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLease {
    pub generation: i64,
    pub expires: DateTime<Utc>,
}

impl Store {
    /// Takes or renews `owner`'s lease on `host` until `expires`, unless
    /// another owner's lease is still valid at `now` (then `None`). A new
    /// owner gets the next generation; the same owner keeps its own.
    pub async fn host_lease_acquire(
        &self,
        host: HostId,
        owner: &str,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<Option<HostLease>> {
        let generation: Option<i64> = with_pool!(self, |pool| sqlx::query_scalar::<_, i64>(
            "INSERT INTO host_leases (host_id, owner, expires_ms, generation)
             VALUES ($1, $2, $3, 1)
             ON CONFLICT (host_id) DO UPDATE SET
                 owner = excluded.owner,
                 expires_ms = excluded.expires_ms,
                 generation = CASE WHEN host_leases.owner = excluded.owner
                                   THEN host_leases.generation
                                   ELSE host_leases.generation + 1 END
             WHERE host_leases.owner = excluded.owner OR host_leases.expires_ms < $4
             RETURNING generation",
        )
        .bind(host.to_string())
        .bind(owner)
        .bind(expires.timestamp_millis())
        .bind(now.timestamp_millis())
        .fetch_optional(pool)
        .await)?;
        Ok(generation.map(|generation| HostLease {
            generation,
            expires,
        }))
    }

    /// Extends a lease `owner` still holds in `generation`; `false` when
    /// it was taken over meanwhile (the caller must let the host go).
    pub async fn host_lease_renew(
        &self,
        host: HostId,
        owner: &str,
        generation: i64,
        expires: DateTime<Utc>,
    ) -> Result<bool> {
        let done = with_pool!(self, |pool| sqlx::query(
            "UPDATE host_leases SET expires_ms = $1
             WHERE host_id = $2 AND owner = $3 AND generation = $4",
        )
        .bind(expires.timestamp_millis())
        .bind(host.to_string())
        .bind(owner)
        .bind(generation)
        .execute(pool)
        .await)?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a lease up at once (a replica stopping), so another replica
    /// need not wait for it to lapse. A lease since taken over is left.
    pub async fn host_lease_release(&self, host: HostId, owner: &str) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE host_leases SET expires_ms = 0 WHERE host_id = $1 AND owner = $2",
        )
        .bind(host.to_string())
        .bind(owner)
        .execute(pool)
        .await)?;
        Ok(())
    }

    /// Extends every lease `owner` holds (not released) until `expires`,
    /// in one statement; returns the hosts still held, with their
    /// generations. A host missing from the answer was taken over.
    pub async fn host_leases_renew_held(
        &self,
        owner: &str,
        expires: DateTime<Utc>,
    ) -> Result<Vec<(HostId, i64)>> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE host_leases SET expires_ms = $1
             WHERE owner = $2 AND expires_ms > 0
             RETURNING host_id, generation",
        )
        .bind(expires.timestamp_millis())
        .bind(owner)
        .fetch_all(pool)
        .await)?;
        rows.iter().map(held).collect()
    }

    /// Takes up to `limit` hosts that no replica holds at `now` (never
    /// leased, lapsed or released) for `owner` until `expires`, in one
    /// statement; returns the hosts taken with their generations. Racing
    /// replicas cannot both take a host: the upsert wins only over a lease
    /// that is still free when it is written.
    pub async fn host_leases_take_free(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(HostId, i64)>> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "INSERT INTO host_leases (host_id, owner, expires_ms, generation)
             SELECT h.id, $1, $2, 1 FROM hosts h
             LEFT JOIN host_leases l ON l.host_id = h.id
             WHERE l.host_id IS NULL OR l.expires_ms < $3
             ORDER BY h.id
             LIMIT $4
             ON CONFLICT (host_id) DO UPDATE SET
                 owner = excluded.owner,
                 expires_ms = excluded.expires_ms,
                 generation = CASE WHEN host_leases.owner = excluded.owner
                                   THEN host_leases.generation
                                   ELSE host_leases.generation + 1 END
             WHERE host_leases.expires_ms < $3
             RETURNING host_id, generation",
        )
        .bind(owner)
        .bind(expires.timestamp_millis())
        .bind(now.timestamp_millis())
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?;
        rows.iter().map(held).collect()
    }

    /// Frees every lease `owner` holds (a replica stopping gracefully), so
    /// the others take its hosts over at once instead of after the TTL.
    pub async fn host_leases_release_all(&self, owner: &str) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE host_leases SET expires_ms = 0 WHERE owner = $1",
        )
        .bind(owner)
        .execute(pool)
        .await)?;
        Ok(())
    }

    /// Releases `owner`'s leases on `hosts` (handed to replicas below
    /// their share); a host another replica took meanwhile is left alone.
    pub async fn host_leases_release(&self, owner: &str, hosts: &[HostId]) -> Result<()> {
        for host in hosts {
            with_pool!(self, |pool| sqlx::query(
                "UPDATE host_leases SET expires_ms = 0 WHERE owner = $1 AND host_id = $2",
            )
            .bind(owner)
            .bind(host.to_string())
            .execute(pool)
            .await)?;
        }
        Ok(())
    }

    /// How many hosts are registered, and how many leases are valid at `now`.
    pub async fn host_leases_count(&self, now: DateTime<Utc>) -> Result<(u64, u64)> {
        let row = with_pool!(self, |pool| sqlx::query(
            "SELECT (SELECT COUNT(*) FROM hosts) AS hosts,
                    (SELECT COUNT(*) FROM host_leases WHERE expires_ms >= $1) AS held",
        )
        .bind(now.timestamp_millis())
        .fetch_one(pool)
        .await)?;
        let count = |name| -> Result<u64> { Ok(u64::try_from(row.col::<i64>(name)?).unwrap_or(0)) };
        Ok((count("hosts")?, count("held")?))
    }

    /// The owner of `host`'s lease if it is valid at `now`.
    pub async fn host_lease_owner(
        &self,
        host: HostId,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        Ok(with_pool!(self, |pool| sqlx::query_scalar::<_, String>(
            "SELECT owner FROM host_leases WHERE host_id = $1 AND expires_ms >= $2",
        )
        .bind(host.to_string())
        .bind(now.timestamp_millis())
        .fetch_optional(pool)
        .await)?)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use crate::Store;
    use crate::testdb::{now, registered_hosts};

    async fn one_owner_at_a_time_and_the_lapsed_are_fenced_off(store: Store) {
        let h = registered_hosts(&store, 1).await[0];
        let t0 = now();
        let ttl = Duration::seconds(15);
        let a = store
            .host_lease_acquire(h, "replica-a", t0, t0 + ttl)
            .await
            .expect("acquire")
            .expect("a free host is taken");
        assert_eq!(a.generation, 1);
        // Another replica cannot take a valid lease; its holder renews.
        let t1 = t0 + Duration::seconds(5);
        assert_eq!(
            store
                .host_lease_acquire(h, "replica-b", t1, t1 + ttl)
                .await
                .expect("acquire"),
            None
        );
        assert!(
            store
                .host_lease_renew(h, "replica-a", a.generation, t1 + ttl)
                .await
                .expect("renew")
        );
        assert_eq!(
            store
                .host_lease_owner(h, t1)
                .await
                .expect("owner")
                .as_deref(),
            Some("replica-a")
        );
        // Acquiring again as the holder keeps the generation.
        let again = store
            .host_lease_acquire(h, "replica-a", t1, t1 + ttl)
            .await
            .expect("acquire")
            .expect("own lease");
        assert_eq!(again.generation, 1);
        // Once it lapses, another replica takes over in a new generation,
        // and the old holder's renewal is refused.
        let t2 = t1 + ttl + Duration::seconds(1);
        assert_eq!(store.host_lease_owner(h, t2).await.expect("owner"), None);
        let b = store
            .host_lease_acquire(h, "replica-b", t2, t2 + ttl)
            .await
            .expect("acquire")
            .expect("a lapsed lease is taken over");
        assert_eq!(b.generation, 2);
        assert!(
            !store
                .host_lease_renew(h, "replica-a", a.generation, t2 + ttl)
                .await
                .expect("renew"),
            "the old holder is fenced off"
        );
        // A release by a former holder changes nothing; the holder's frees
        // the host at once.
        store
            .host_lease_release(h, "replica-a")
            .await
            .expect("release");
        assert_eq!(
            store
                .host_lease_owner(h, t2)
                .await
                .expect("owner")
                .as_deref(),
            Some("replica-b")
        );
        store
            .host_lease_release(h, "replica-b")
            .await
            .expect("release");
        let c = store
            .host_lease_acquire(h, "replica-c", t2, t2 + ttl)
            .await
            .expect("acquire")
            .expect("a released host is free");
        assert_eq!(c.generation, 3);
    }

    async fn replicas_take_free_hosts_in_batches_and_renew_what_they_hold(store: Store) {
        registered_hosts(&store, 5).await;
        let t0 = now();
        let ttl = Duration::seconds(15);
        // Two replicas split the hosts: each takes no more than asked.
        let a = store
            .host_leases_take_free("replica-a", t0, t0 + ttl, 3)
            .await
            .expect("take");
        assert_eq!(a.len(), 3);
        let b = store
            .host_leases_take_free("replica-b", t0, t0 + ttl, 3)
            .await
            .expect("take");
        assert_eq!(b.len(), 2, "only the free hosts are taken");
        assert!(b.iter().all(|(h, _)| !a.iter().any(|(ah, _)| ah == h)));
        assert_eq!(store.host_leases_count(t0).await.expect("count"), (5, 5));
        // Renewing answers what is still held; once b's leases lapse, a
        // takes them over in a new generation and b's renewal drops them.
        let t1 = t0 + ttl + Duration::seconds(1);
        let renewed = store
            .host_leases_renew_held("replica-a", t1 + ttl)
            .await
            .expect("renew");
        assert_eq!(renewed.len(), 3);
        let taken = store
            .host_leases_take_free("replica-a", t1, t1 + ttl, 10)
            .await
            .expect("take");
        assert_eq!(taken.len(), 2);
        assert!(taken.iter().all(|(_, generation)| *generation == 2));
        assert!(
            store
                .host_leases_renew_held("replica-b", t1 + ttl)
                .await
                .expect("renew")
                .is_empty()
        );
        // A graceful stop frees everything at once.
        store
            .host_leases_release_all("replica-a")
            .await
            .expect("release");
        assert_eq!(store.host_leases_count(t1).await.expect("count"), (5, 0));
        let c = store
            .host_leases_take_free("replica-c", t1, t1 + ttl, 10)
            .await
            .expect("take");
        assert_eq!(c.len(), 5);
    }

    crate::testdb::on_both_backends!(
        one_owner_at_a_time_and_the_lapsed_are_fenced_off,
        replicas_take_free_hosts_in_batches_and_renew_what_they_hold
    );
}
