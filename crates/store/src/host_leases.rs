//! Leases on hosts, for several replicas on one database: a host's
//! connection belongs to the replica holding its lease. Taking a lease is
//! one statement (an upsert that only wins over a lapsed lease or one's
//! own), so two replicas racing for a host cannot both win, on SQLite or
//! PostgreSQL. Each change of owner bumps the lease's generation: the
//! fencing token a holder renews with.

use chrono::{DateTime, Utc};
use overvisor_model::host::HostId;

use crate::{Result, Store, with_pool};

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

    use crate::hosts::tests::host;
    use crate::testdb::{now, user};
    use crate::{MasterKey, Sealer, Store};

    async fn one_owner_at_a_time_and_the_lapsed_are_fenced_off(store: Store) {
        let sealer = Sealer::new(&MasterKey::generate());
        let owner = user(&store, "alice").await.id;
        let h = store
            .host_insert(&sealer, &host(owner, "one", "10.0.0.1"), None)
            .await
            .expect("host")
            .id;
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

    crate::testdb::on_both_backends!(one_owner_at_a_time_and_the_lapsed_are_fenced_off);
}
