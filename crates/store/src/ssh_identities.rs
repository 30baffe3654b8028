//! Each user's SSH automation identity: the public key in clear, the
//! private key sealed under the master key and bound to the user's row.

use chrono::{DateTime, Utc};
use overvisor_model::account::UserId;

use crate::{DbRow, Result, Sealer, Store, StoreError, with_pool};

/// The associated data binding a sealed private key to its owner.
fn binding(user: UserId) -> String {
    format!("ssh_identities.private:{user}")
}

impl Store {
    pub async fn ssh_identity_put(
        &self,
        sealer: &Sealer,
        user: UserId,
        public_key: &str,
        private_openssh: &[u8],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let sealed = sealer.seal(&binding(user), private_openssh);
        with_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO ssh_identities (user_id, public_key, private_sealed, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE SET public_key = excluded.public_key,
                private_sealed = excluded.private_sealed, created_at = excluded.created_at",
        )
        .bind(user.to_string())
        .bind(public_key)
        .bind(sealed)
        .bind(now)
        .execute(pool)
        .await
        })?;
        Ok(())
    }

    pub async fn ssh_public_key(&self, user: UserId) -> Result<String> {
        with_pool!(self, |pool| sqlx::query_scalar::<_, String>(
            "SELECT public_key FROM ssh_identities WHERE user_id = $1"
        )
        .bind(user.to_string())
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("SSH identity"))
    }

    /// The private key in OpenSSH format, for the SSH transport only.
    pub async fn ssh_private_key(&self, sealer: &Sealer, user: UserId) -> Result<Vec<u8>> {
        let row = with_pool!(self, |pool| sqlx::query(
            "SELECT private_sealed FROM ssh_identities WHERE user_id = $1"
        )
        .bind(user.to_string())
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("SSH identity"))?;
        let sealed: Vec<u8> = row.col("private_sealed")?;
        Ok(sealer.open(&binding(user), &sealed)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterKey;

    async fn private_key_is_sealed_and_bound(store: Store) {
        let sealer = Sealer::new(&MasterKey::generate());
        let now = Utc::now();
        let mut ids = Vec::new();
        for name in ["a", "b"] {
            let user = crate::testdb::user(&store, name).await;
            store
                .ssh_identity_put(
                    &sealer,
                    user.id,
                    "ssh-ed25519 AAAA",
                    b"PRIVATE-KEY-BYTES",
                    now,
                )
                .await
                .expect("put");
            ids.push(user.id);
        }
        assert_eq!(
            store.ssh_private_key(&sealer, ids[0]).await.expect("open"),
            b"PRIVATE-KEY-BYTES"
        );
        let raw: Vec<u8> = with_pool!(store, |pool| sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT private_sealed FROM ssh_identities WHERE user_id = $1"
        )
        .bind(ids[0].to_string())
        .fetch_one(pool)
        .await)
        .expect("raw");
        assert!(!raw.windows(7).any(|w| w == b"PRIVATE"));
        // A sealed value moved to another row no longer opens.
        with_pool!(store, |pool| sqlx::query(
            "UPDATE ssh_identities SET private_sealed = $1 WHERE user_id = $2"
        )
        .bind(&raw)
        .bind(ids[1].to_string())
        .execute(pool)
        .await)
        .expect("swap");
        assert!(store.ssh_private_key(&sealer, ids[1]).await.is_err());
    }

    crate::testdb::on_both_backends!(private_key_is_sealed_and_bound);
}
