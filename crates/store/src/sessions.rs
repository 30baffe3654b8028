//! Server-side browser sessions. Only a hash of the cookie value is stored,
//! so a copy of the database does not let anyone sign in.

use chrono::{DateTime, Utc};
use overvisor_model::account::{Session, SessionId, UserId};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Result, Store, StoreError, parse_col};

/// A session with the CSRF token that forms must echo.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub session: Session,
    pub csrf_token: String,
}

fn session_from_row(row: &SqliteRow) -> Result<SessionRecord> {
    let id: String = row.try_get("id")?;
    let user_id: String = row.try_get("user_id")?;
    Ok(SessionRecord {
        session: Session {
            id: parse_col(&id, "session id")?,
            user_id: parse_col(&user_id, "user id")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            last_seen_at: row.try_get("last_seen_at")?,
            source_ip: row.try_get("source_ip")?,
            user_agent: row.try_get("user_agent")?,
        },
        csrf_token: row.try_get("csrf_token")?,
    })
}

const COLUMNS: &str =
    "id, user_id, csrf_token, created_at, expires_at, last_seen_at, source_ip, user_agent";

impl Store {
    pub async fn session_insert(&self, record: &SessionRecord, token_hash: &[u8]) -> Result<()> {
        let s = &record.session;
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, csrf_token, created_at, expires_at, last_seen_at, source_ip, user_agent)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.id.to_string())
        .bind(token_hash)
        .bind(s.user_id.to_string())
        .bind(&record.csrf_token)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.last_seen_at)
        .bind(&s.source_ip)
        .bind(&s.user_agent)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Finds a live session by the hash of its cookie value.
    pub async fn session_by_token_hash(
        &self,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<SessionRecord> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sessions WHERE token_hash = ? AND expires_at > ?"
        ))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("session"))?;
        session_from_row(&row)
    }

    pub async fn session_touch(&self, id: SessionId, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE id = ?")
            .bind(now)
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn sessions_of_user(&self, user: UserId, now: DateTime<Utc>) -> Result<Vec<Session>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sessions WHERE user_id = ? AND expires_at > ? ORDER BY created_at DESC"
        ))
        .bind(user.to_string())
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| session_from_row(r).map(|s| s.session))
            .collect()
    }

    /// Revokes one session of `user`; `NotFound` when it is not theirs.
    pub async fn session_delete(&self, user: UserId, id: SessionId) -> Result<()> {
        let done = sqlx::query("DELETE FROM sessions WHERE id = ? AND user_id = ?")
            .bind(id.to_string())
            .bind(user.to_string())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("session"));
        }
        Ok(())
    }

    /// Revokes every session of `user` except `keep`; returns how many ended.
    pub async fn sessions_delete_all(&self, user: UserId, keep: Option<SessionId>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = ? AND id IS NOT ?")
            .bind(user.to_string())
            .bind(keep.map(|k| k.to_string()))
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn sessions_delete_expired(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
