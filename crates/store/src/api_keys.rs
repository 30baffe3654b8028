//! API keys: looked up by their public prefix, verified against a SHA-256
//! hash of the whole token (the token has 256 bits of entropy, so a fast
//! hash is enough and keeps authentication cheap on every request).

use chrono::{DateTime, Utc};
use overvisor_model::account::{ApiKey, ApiKeyId, UserId};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Result, Store, StoreError, parse_col};

/// A key with its stored hash, for authentication only.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub key: ApiKey,
    pub token_hash: Vec<u8>,
}

const COLUMNS: &str =
    "id, user_id, name, prefix, token_hash, created_at, expires_at, last_used_at, revoked_at";

fn key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord> {
    let id: String = row.try_get("id")?;
    let user_id: String = row.try_get("user_id")?;
    Ok(ApiKeyRecord {
        key: ApiKey {
            id: parse_col(&id, "api key id")?,
            user_id: parse_col(&user_id, "user id")?,
            name: row.try_get("name")?,
            prefix: row.try_get("prefix")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            last_used_at: row.try_get("last_used_at")?,
            revoked_at: row.try_get("revoked_at")?,
        },
        token_hash: row.try_get("token_hash")?,
    })
}

impl Store {
    pub async fn api_key_insert(&self, key: &ApiKey, token_hash: &[u8]) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO api_keys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::on_unique(e, "an API key with this prefix"))?;
        Ok(())
    }

    pub async fn api_key_by_prefix(&self, prefix: &str) -> Result<ApiKeyRecord> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE prefix = ?"))
            .bind(prefix)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound("API key"))?;
        key_from_row(&row)
    }

    /// One key of `user`; another user's key is `NotFound`.
    pub async fn api_key_get(&self, user: UserId, id: ApiKeyId) -> Result<ApiKey> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE id = ? AND user_id = ?"
        ))
        .bind(id.to_string())
        .bind(user.to_string())
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("API key"))?;
        Ok(key_from_row(&row)?.key)
    }

    pub async fn api_keys_of_user(&self, user: UserId) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE user_id = ? ORDER BY created_at DESC, name"
        ))
        .bind(user.to_string())
        .fetch_all(self.pool())
        .await?;
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
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? AND user_id = ?",
        )
        .bind(now)
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(self.pool())
        .await?;
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
        let done = sqlx::query(
            "UPDATE api_keys SET prefix = ?, token_hash = ?, expires_at = ?, last_used_at = NULL
             WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
        )
        .bind(prefix)
        .bind(token_hash)
        .bind(expires_at)
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("API key"));
        }
        self.api_key_get(user, id).await
    }

    pub async fn api_key_touch(&self, id: ApiKeyId, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
            .bind(now)
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
