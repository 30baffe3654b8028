//! API keys: looked up by their public prefix, verified against a SHA-256
//! hash of the whole token (the token has 256 bits of entropy, so a fast
//! hash is enough and keeps authentication cheap on every request).

use chrono::{DateTime, Utc};
use overvisor_model::account::{ApiKey, ApiKeyId, UserId};

use crate::{DbRow, Result, Store, StoreError, parse_col, with_pool};

/// A key with its stored hash, for authentication only.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub key: ApiKey,
    pub token_hash: Vec<u8>,
}

const COLUMNS: &str =
    "id, user_id, name, prefix, token_hash, created_at, expires_at, last_used_at, revoked_at";

fn key_from_row(row: &impl DbRow) -> Result<ApiKeyRecord> {
    let id: String = row.col("id")?;
    let user_id: String = row.col("user_id")?;
    Ok(ApiKeyRecord {
        key: ApiKey {
            id: parse_col(&id, "api key id")?,
            user_id: parse_col(&user_id, "user id")?,
            name: row.col("name")?,
            prefix: row.col("prefix")?,
            created_at: row.col("created_at")?,
            expires_at: row.col("expires_at")?,
            last_used_at: row.col("last_used_at")?,
            revoked_at: row.col("revoked_at")?,
        },
        token_hash: row.col("token_hash")?,
    })
}

impl Store {
    pub async fn api_key_insert(&self, key: &ApiKey, token_hash: &[u8]) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(key.id.to_string())
        .bind(key.user_id.to_string())
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(token_hash)
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.last_used_at)
        .bind(key.revoked_at)
        .execute(pool)
        .await)
        .map_err(|e| StoreError::on_unique(e, "an API key with this prefix"))?;
        Ok(())
    }

    pub async fn api_key_by_prefix(&self, prefix: &str) -> Result<ApiKeyRecord> {
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE prefix = $1"
        ))
        .bind(prefix)
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("API key"))?;
        key_from_row(&row)
    }

    /// One key of `user`; another user's key is `NotFound`.
    pub async fn api_key_get(&self, user: UserId, id: ApiKeyId) -> Result<ApiKey> {
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND user_id = $2"
        ))
        .bind(id.to_string())
        .bind(user.to_string())
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("API key"))?;
        Ok(key_from_row(&row)?.key)
    }

    pub async fn api_keys_of_user(&self, user: UserId) -> Result<Vec<ApiKey>> {
        let rows = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, name"
        ))
        .bind(user.to_string())
        .fetch_all(pool)
        .await)?;
        rows.iter()
            .map(|r| key_from_row(r).map(|k| k.key))
            .collect()
    }

    pub async fn api_key_revoke(
        &self,
        user: UserId,
        id: ApiKeyId,
        now: DateTime<Utc>,
    ) -> Result<ApiKey> {
        let done = with_pool!(self, |pool| {
            sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND user_id = $3",
        )
        .bind(now)
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(pool)
        .await
        })?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("API key"));
        }
        self.api_key_get(user, id).await
    }

    /// Gives an existing, unrevoked key a new secret (and prefix); the old token stops working at once.
    pub async fn api_key_replace_secret(
        &self,
        user: UserId,
        id: ApiKeyId,
        prefix: &str,
        token_hash: &[u8],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<ApiKey> {
        let done = with_pool!(self, |pool| {
            sqlx::query(
            "UPDATE api_keys SET prefix = $1, token_hash = $2, expires_at = $3, last_used_at = NULL
             WHERE id = $4 AND user_id = $5 AND revoked_at IS NULL",
        )
        .bind(prefix)
        .bind(token_hash)
        .bind(expires_at)
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(pool)
        .await
        })?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("API key"));
        }
        self.api_key_get(user, id).await
    }

    pub async fn api_key_touch(&self, id: ApiKeyId, now: DateTime<Utc>) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE api_keys SET last_used_at = $1 WHERE id = $2"
        )
        .bind(now)
        .bind(id.to_string())
        .execute(pool)
        .await)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb;

    fn key(user: UserId, prefix: &str) -> ApiKey {
        ApiKey {
            id: ApiKeyId::new(),
            user_id: user,
            name: "ci".into(),
            prefix: prefix.into(),
            created_at: testdb::now(),
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        }
    }

    async fn lookup_rotate_and_revoke(store: Store) {
        let user = testdb::user(&store, "alice").await.id;
        let k = key(user, "ovk_aaaa");
        store.api_key_insert(&k, b"hash-1").await.expect("insert");
        assert!(matches!(
            store.api_key_insert(&key(user, "ovk_aaaa"), b"x").await,
            Err(StoreError::Conflict(_))
        ));
        let found = store
            .api_key_by_prefix("ovk_aaaa")
            .await
            .expect("by prefix");
        assert_eq!(
            (found.key.clone(), found.token_hash),
            (k.clone(), b"hash-1".to_vec())
        );
        let now = testdb::now();
        store.api_key_touch(k.id, now).await.expect("touch");
        assert_eq!(
            store
                .api_key_get(user, k.id)
                .await
                .expect("get")
                .last_used_at,
            Some(now)
        );
        assert!(matches!(
            store.api_key_get(UserId::new(), k.id).await,
            Err(StoreError::NotFound(_))
        ));
        let rotated = store
            .api_key_replace_secret(user, k.id, "ovk_bbbb", b"hash-2", None)
            .await
            .expect("rotate");
        assert_eq!(
            (rotated.prefix.as_str(), rotated.last_used_at),
            ("ovk_bbbb", None)
        );
        assert!(store.api_key_by_prefix("ovk_aaaa").await.is_err());
        let revoked = store.api_key_revoke(user, k.id, now).await.expect("revoke");
        assert_eq!(revoked.revoked_at, Some(now));
        // Revoking again keeps the first time; a revoked key is not rotated.
        let later = now + chrono::Duration::seconds(5);
        let again = store
            .api_key_revoke(user, k.id, later)
            .await
            .expect("again");
        assert_eq!(again.revoked_at, Some(now));
        assert!(matches!(
            store
                .api_key_replace_secret(user, k.id, "ovk_cccc", b"h", None)
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store.api_keys_of_user(user).await.expect("list"),
            vec![again]
        );
    }

    testdb::on_both_backends!(lookup_rotate_and_revoke);
}
