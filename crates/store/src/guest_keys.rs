//! An account's guest SSH keys (public keys a deployment injects by
//! default). Each key is stored once per account, by fingerprint; the
//! number an account keeps is capped in the same statement that inserts,
//! so two requests at once cannot pass the cap together.

use overvisor_model::account::{GuestKey, GuestKeyId, UserId};

use crate::{DbRow, Result, Store, StoreError, parse_col, with_pool};

const COLUMNS: &str = "id, user_id, name, public_key, fingerprint, created_at";

fn key_from_row(row: &impl DbRow) -> Result<GuestKey> {
    let id: String = row.col("id")?;
    let user_id: String = row.col("user_id")?;
    Ok(GuestKey {
        id: parse_col(&id, "guest key id")?,
        user_id: parse_col(&user_id, "user id")?,
        name: row.col("name")?,
        public_key: row.col("public_key")?,
        fingerprint: row.col("fingerprint")?,
        created_at: row.col("created_at")?,
    })
}

impl Store {
    /// Inserts `key` unless its owner already has `cap` keys (`Conflict`)
    /// or this key (`Conflict`).
    pub async fn guest_key_insert(&self, key: &GuestKey, cap: usize) -> Result<()> {
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let done = with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO guest_keys ({COLUMNS})
             SELECT $1, $2, $3, $4, $5, $6
             WHERE (SELECT COUNT(*) FROM guest_keys WHERE user_id = $2) < $7"
        ))
        .bind(key.id.to_string())
        .bind(key.user_id.to_string())
        .bind(&key.name)
        .bind(&key.public_key)
        .bind(&key.fingerprint)
        .bind(key.created_at)
        .bind(cap)
        .execute(pool)
        .await)
        .map_err(|e| StoreError::on_unique(e, "a guest key with this fingerprint"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "an account keeps at most {cap} guest keys"
            )));
        }
        Ok(())
    }

    /// The keys of `user`, oldest first (the order a deployment injects them).
    pub async fn guest_keys_of_user(&self, user: UserId) -> Result<Vec<GuestKey>> {
        let rows = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM guest_keys WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user.to_string())
        .fetch_all(pool)
        .await)?;
        rows.iter().map(key_from_row).collect()
    }

    /// Deletes one key of `user` and answers it; another user's key is
    /// `NotFound`.
    pub async fn guest_key_delete(&self, user: UserId, id: GuestKeyId) -> Result<GuestKey> {
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "DELETE FROM guest_keys WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(user.to_string())
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("guest key"))?;
        key_from_row(&row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb;

    fn key(user: UserId, fingerprint: &str) -> GuestKey {
        GuestKey {
            id: GuestKeyId::new(),
            user_id: user,
            name: "laptop".into(),
            public_key: format!("ssh-ed25519 AAAA{fingerprint}"),
            fingerprint: fingerprint.into(),
            created_at: testdb::now(),
        }
    }

    async fn keys_are_per_account_unique_and_capped(store: Store) {
        let alice = testdb::user(&store, "alice").await.id;
        let bob = testdb::user(&store, "bob").await.id;
        let first = key(alice, "SHA256:one");
        store.guest_key_insert(&first, 2).await.expect("insert");
        // The same key again for alice: refused; for bob: his own.
        assert!(matches!(
            store.guest_key_insert(&key(alice, "SHA256:one"), 2).await,
            Err(StoreError::Conflict(_))
        ));
        let bobs = key(bob, "SHA256:one");
        store.guest_key_insert(&bobs, 2).await.expect("bob's");
        let mut second = key(alice, "SHA256:two");
        second.created_at = first.created_at + chrono::Duration::seconds(1);
        store.guest_key_insert(&second, 2).await.expect("second");
        // The cap counts alice's keys only.
        assert!(matches!(
            store.guest_key_insert(&key(alice, "SHA256:three"), 2).await,
            Err(StoreError::Conflict(m)) if m.contains("at most 2")
        ));
        assert_eq!(
            store.guest_keys_of_user(alice).await.expect("list"),
            vec![first.clone(), second.clone()]
        );
        // Alice cannot delete bob's key; she deletes her own.
        assert!(matches!(
            store.guest_key_delete(alice, bobs.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store
                .guest_key_delete(alice, first.id)
                .await
                .expect("delete"),
            first
        );
        assert!(matches!(
            store.guest_key_delete(alice, first.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store.guest_keys_of_user(alice).await.expect("list"),
            vec![second]
        );
        assert_eq!(
            store.guest_keys_of_user(bob).await.expect("list"),
            vec![bobs]
        );
    }

    testdb::on_both_backends!(keys_are_per_account_unique_and_capped);
}
