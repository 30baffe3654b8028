//! Each user's SSH automation identity: the public key in clear, the
//! private key sealed under the master key and bound to the user's row.

use chrono::{DateTime, Utc};
use overvisor_model::account::UserId;
use sqlx::Row;

use crate::{Result, Sealer, Store, StoreError};

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
        sqlx::query(
            "INSERT INTO ssh_identities (user_id, public_key, private_sealed, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (user_id) DO UPDATE SET public_key = excluded.public_key,
                private_sealed = excluded.private_sealed, created_at = excluded.created_at",
        )
        .bind(user.to_string())
        .bind(public_key)
        .bind(sealed)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn ssh_public_key(&self, user: UserId) -> Result<String> {
        sqlx::query_scalar("SELECT public_key FROM ssh_identities WHERE user_id = ?")
            .bind(user.to_string())
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound("SSH identity"))
    }

    /// The private key in OpenSSH format, for the SSH transport only.
    pub async fn ssh_private_key(&self, sealer: &Sealer, user: UserId) -> Result<Vec<u8>> {
        let row = sqlx::query("SELECT private_sealed FROM ssh_identities WHERE user_id = ?")
            .bind(user.to_string())
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound("SSH identity"))?;
        let sealed: Vec<u8> = row.try_get("private_sealed")?;
        Ok(sealer.open(&binding(user), &sealed)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MasterKey, test_store};
    use overvisor_model::account::{Email, Role, User, UserName};

    #[tokio::test]
    async fn private_key_is_sealed_and_bound() {
        let store = test_store().await;
        let sealer = Sealer::new(&MasterKey::generate());
        let now = Utc::now();
        let mut ids = Vec::new();
        for name in ["a", "b"] {
            let user = User {
                id: UserId::new(),
                name: UserName::parse(name).expect("name"),
                email: Email::parse("x@example.com").expect("email"),
                role: Role::Reader,
                disabled: false,
                created_at: now,
                updated_at: now,
            };
            store.user_insert(&user, None).await.expect("user");
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
        let raw: Vec<u8> =
            sqlx::query_scalar("SELECT private_sealed FROM ssh_identities WHERE user_id = ?")
                .bind(ids[0].to_string())
                .fetch_one(store.pool())
                .await
                .expect("raw");
        assert!(!raw.windows(7).any(|w| w == b"PRIVATE"));
        // A sealed value moved to another row no longer opens.
        sqlx::query("UPDATE ssh_identities SET private_sealed = ? WHERE user_id = ?")
            .bind(&raw)
            .bind(ids[1].to_string())
            .execute(store.pool())
            .await
            .expect("swap");
        assert!(store.ssh_private_key(&sealer, ids[1]).await.is_err());
    }
}
