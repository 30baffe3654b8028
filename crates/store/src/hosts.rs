//! The host registry: one row per hypervisor a user drives. A host may carry
//! a credential of its own (an uploaded private key or a password), sealed
//! under the master key and bound to the host's row, so it cannot be opened
//! for another host; it never leaves this module except to the transport.

use overvisor_model::account::UserId;
use overvisor_model::host::{CredentialChange, Host, HostId, HostKeyFingerprint, HostSecret};

use crate::{DbRow, Result, Sealer, Store, StoreError, parse_col, with_pool};

/// The associated data binding a sealed credential to its host and kind.
fn binding(host: HostId, kind: &str) -> String {
    format!("hosts.credential:{host}:{kind}")
}

const COLUMNS: &str = "id, owner_id, name, kind, address, port, ssh_user, libvirt_uri, tags, \
     host_key_fingerprint, credential_kind IS NOT NULL AS has_credential, created_at, updated_at";

fn host_from_row(row: &impl DbRow) -> Result<Host> {
    let id: String = row.col("id")?;
    let owner: String = row.col("owner_id")?;
    let kind: String = row.col("kind")?;
    let port: i32 = row.col("port")?;
    let tags: String = row.col("tags")?;
    let fingerprint: Option<String> = row.col("host_key_fingerprint")?;
    Ok(Host {
        id: parse_col(&id, "host id")?,
        owner: parse_col(&owner, "user id")?,
        name: row.col("name")?,
        kind: parse_col(&kind, "host kind")?,
        address: row.col("address")?,
        port: u16::try_from(port).map_err(|_| StoreError::Corrupt("bad host port".into()))?,
        ssh_user: row.col("ssh_user")?,
        libvirt_uri: row.col("libvirt_uri")?,
        tags: tags
            .split('\n')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        host_key_fingerprint: fingerprint
            .map(|f| parse_col::<HostKeyFingerprint>(&f, "host key fingerprint"))
            .transpose()?,
        has_credential: row.col("has_credential")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

fn on_unique(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            // SQLite names the columns, PostgreSQL the constraint.
            let what = if db.message().contains("hosts.name")
                || db.constraint() == Some("hosts_owner_id_name_key")
            {
                "a host with this name"
            } else {
                "a host with this address"
            };
            StoreError::Conflict(format!("{what} already exists"))
        }
        _ => err.into(),
    }
}

impl Store {
    /// Inserts a host; `host.has_credential` is derived from `secret`.
    pub async fn host_insert(
        &self,
        sealer: &Sealer,
        host: &Host,
        secret: Option<&HostSecret>,
    ) -> Result<Host> {
        let kind = secret.map(HostSecret::kind);
        let sealed = secret.map(|s| sealer.seal(&binding(host.id, s.kind()), s.bytes()));
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO hosts (id, owner_id, name, kind, address, port, ssh_user, libvirt_uri,
                tags, host_key_fingerprint, credential_kind, credential_sealed, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(host.id.to_string())
        .bind(host.owner.to_string())
        .bind(&host.name)
        .bind(host.kind.to_string())
        .bind(&host.address)
        .bind(i64::from(host.port))
        .bind(&host.ssh_user)
        .bind(&host.libvirt_uri)
        .bind(host.tags.join("\n"))
        .bind(host.host_key_fingerprint.as_ref().map(|f| f.as_str()))
        .bind(kind)
        .bind(sealed)
        .bind(host.created_at)
        .bind(host.updated_at)
        .execute(pool)
        .await)
        .map_err(on_unique)?;
        self.host_get(host.id).await
    }

    /// One host, whoever owns it: the caller authorizes against its owner.
    pub async fn host_get(&self, id: HostId) -> Result<Host> {
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM hosts WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("host"))?;
        host_from_row(&row)
    }

    /// The hosts of `owner`, or of everyone with `None`, by name.
    pub async fn hosts_list(&self, owner: Option<UserId>) -> Result<Vec<Host>> {
        let rows = with_pool!(self, |pool| {
            sqlx::query(&format!(
            "SELECT {COLUMNS} FROM hosts WHERE $1::text IS NULL OR owner_id = $1 ORDER BY name, id"
        ))
        .bind(owner.map(|o| o.to_string()))
        .fetch_all(pool)
        .await
        })?;
        rows.iter().map(host_from_row).collect()
    }

    /// The host of `owner` at `address` (the enrolment match).
    pub async fn host_by_address(&self, owner: UserId, address: &str) -> Result<Option<Host>> {
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM hosts WHERE owner_id = $1 AND address = $2"
        ))
        .bind(owner.to_string())
        .bind(address)
        .fetch_optional(pool)
        .await)?;
        row.as_ref().map(host_from_row).transpose()
    }

    /// Writes every field of `host` (matched by id and owner) and applies
    /// `credential`.
    pub async fn host_update(
        &self,
        sealer: &Sealer,
        host: &Host,
        credential: &CredentialChange,
    ) -> Result<Host> {
        let (kind, sealed) = match credential {
            CredentialChange::Keep | CredentialChange::Remove => (None, None),
            CredentialChange::Set(s) => (
                Some(s.kind()),
                Some(sealer.seal(&binding(host.id, s.kind()), s.bytes())),
            ),
        };
        with_pool!(self, |pool| async {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE hosts SET name = $1, kind = $2, address = $3, port = $4, ssh_user = $5,
                libvirt_uri = $6, tags = $7, host_key_fingerprint = $8, updated_at = $9
             WHERE id = $10 AND owner_id = $11",
            )
            .bind(&host.name)
            .bind(host.kind.to_string())
            .bind(&host.address)
            .bind(i64::from(host.port))
            .bind(&host.ssh_user)
            .bind(&host.libvirt_uri)
            .bind(host.tags.join("\n"))
            .bind(host.host_key_fingerprint.as_ref().map(|f| f.as_str()))
            .bind(host.updated_at)
            .bind(host.id.to_string())
            .bind(host.owner.to_string())
            .execute(&mut *tx)
            .await
            .map_err(on_unique)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound("host"));
            }
            if !matches!(credential, CredentialChange::Keep) {
                sqlx::query(
                    "UPDATE hosts SET credential_kind = $1, credential_sealed = $2 WHERE id = $3",
                )
                .bind(kind)
                .bind(sealed)
                .bind(host.id.to_string())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<(), StoreError>(())
        }
        .await)?;
        self.host_get(host.id).await
    }

    pub async fn host_delete(&self, owner: UserId, id: HostId) -> Result<()> {
        let done = with_pool!(self, |pool| sqlx::query(
            "DELETE FROM hosts WHERE id = $1 AND owner_id = $2"
        )
        .bind(id.to_string())
        .bind(owner.to_string())
        .execute(pool)
        .await)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("host"));
        }
        Ok(())
    }

    /// The host's own credential, opened, for the SSH transport only.
    pub async fn host_secret(&self, sealer: &Sealer, id: HostId) -> Result<Option<HostSecret>> {
        let row = with_pool!(self, |pool| sqlx::query(
            "SELECT credential_kind, credential_sealed FROM hosts WHERE id = $1"
        )
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("host"))?;
        let kind: Option<String> = row.col("credential_kind")?;
        let sealed: Option<Vec<u8>> = row.col("credential_sealed")?;
        let (Some(kind), Some(sealed)) = (kind, sealed) else {
            return Ok(None);
        };
        let plain = sealer.open(&binding(id, &kind), &sealed)?;
        HostSecret::from_parts(&kind, plain)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt("bad host credential".into()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::MasterKey;
    use chrono::Utc;
    use overvisor_model::host::HostKind;

    async fn user(store: &Store, name: &str) -> UserId {
        crate::testdb::user(store, name).await.id
    }

    pub(crate) fn host(owner: UserId, name: &str, address: &str) -> Host {
        let now = Utc::now();
        Host {
            id: HostId::new(),
            owner,
            name: name.into(),
            kind: HostKind::Libvirt,
            address: address.into(),
            port: 22,
            ssh_user: "ovdeploy".into(),
            libvirt_uri: "qemu:///system".into(),
            tags: vec!["env=test".into(), "rack:1".into()],
            host_key_fingerprint: HostKeyFingerprint::parse(
                "SHA256:WfUtCh6yiEwEmg0bzsZN/86BpFpC2hj+937BK2XDXSI",
            )
            .ok(),
            has_credential: false,
            created_at: now,
            updated_at: now,
        }
    }

    async fn crud_and_uniqueness(store: Store) {
        let sealer = Sealer::new(&MasterKey::generate());
        let (a, b) = (user(&store, "a").await, user(&store, "b").await);
        let h = store
            .host_insert(&sealer, &host(a, "one", "10.0.0.1"), None)
            .await
            .expect("insert");
        assert_eq!(h.tags, ["env=test", "rack:1"]);
        assert!(!h.has_credential);
        // Same address or name for the same owner collides; for another owner not.
        for dup in [host(a, "two", "10.0.0.1"), host(a, "one", "10.0.0.2")] {
            assert!(matches!(
                store.host_insert(&sealer, &dup, None).await,
                Err(StoreError::Conflict(_))
            ));
        }
        store
            .host_insert(&sealer, &host(b, "one", "10.0.0.1"), None)
            .await
            .expect("other owner");
        assert_eq!(store.hosts_list(Some(a)).await.expect("list").len(), 1);
        assert_eq!(store.hosts_list(None).await.expect("all").len(), 2);
        assert_eq!(
            store
                .host_by_address(a, "10.0.0.1")
                .await
                .expect("by address")
                .map(|h| h.id),
            Some(h.id)
        );
        let mut changed = h.clone();
        changed.port = 2222;
        changed.tags.clear();
        changed.host_key_fingerprint = None;
        let changed = store
            .host_update(&sealer, &changed, &CredentialChange::Keep)
            .await
            .expect("update");
        assert_eq!((changed.port, changed.tags.len()), (2222, 0));
        assert!(changed.host_key_fingerprint.is_none());
        // Another owner's id does not reach the row.
        assert!(matches!(
            store.host_delete(b, h.id).await,
            Err(StoreError::NotFound(_))
        ));
        store.host_delete(a, h.id).await.expect("delete");
        assert!(matches!(
            store.host_get(h.id).await,
            Err(StoreError::NotFound(_))
        ));
    }

    async fn credential_is_sealed_and_bound(store: Store) {
        let sealer = Sealer::new(&MasterKey::generate());
        let a = user(&store, "a").await;
        let secret = HostSecret::PrivateKey("PRIVATE-KEY-TEXT".into());
        let h1 = store
            .host_insert(&sealer, &host(a, "one", "h1"), Some(&secret))
            .await
            .expect("insert");
        let h2 = store
            .host_insert(&sealer, &host(a, "two", "h2"), None)
            .await
            .expect("insert");
        assert!(h1.has_credential && !h2.has_credential);
        assert_eq!(
            store.host_secret(&sealer, h1.id).await.expect("open"),
            Some(secret.clone())
        );
        assert_eq!(format!("{secret:?}"), "HostSecret::private_key(<redacted>)");
        let raw: Vec<u8> = with_pool!(store, |pool| sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT credential_sealed FROM hosts WHERE id = $1"
        )
        .bind(h1.id.to_string())
        .fetch_one(pool)
        .await)
        .expect("raw");
        assert!(!raw.windows(7).any(|w| w == b"PRIVATE"));
        // Copied to another host's row, it no longer opens.
        with_pool!(store, |pool| sqlx::query(
            "UPDATE hosts SET credential_kind = 'private_key', credential_sealed = $1 WHERE id = $2",
        )
        .bind(&raw)
        .bind(h2.id.to_string())
        .execute(pool)
        .await)
        .expect("copy");
        assert!(store.host_secret(&sealer, h2.id).await.is_err());
        let h1 = store
            .host_update(&sealer, &h1, &CredentialChange::Remove)
            .await
            .expect("remove");
        assert!(!h1.has_credential);
        assert_eq!(store.host_secret(&sealer, h1.id).await.expect("none"), None);
    }

    crate::testdb::on_both_backends!(crud_and_uniqueness, credential_is_sealed_and_bound);
}
