//! Server-side browser sessions. Only a hash of the cookie value is stored,
//! so a copy of the database does not let anyone sign in.

use chrono::{DateTime, Utc};
use overvisor_model::account::{Session, SessionId, UserId};

use crate::{DbRow, Result, Store, StoreError, parse_col, with_pool};

/// A session with the CSRF token that forms must echo.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub session: Session,
    pub csrf_token: String,
}

fn session_from_row(row: &impl DbRow) -> Result<SessionRecord> {
    let id: String = row.col("id")?;
    let user_id: String = row.col("user_id")?;
    Ok(SessionRecord {
        session: Session {
            id: parse_col(&id, "session id")?,
            user_id: parse_col(&user_id, "user id")?,
            created_at: row.col("created_at")?,
            expires_at: row.col("expires_at")?,
            last_seen_at: row.col("last_seen_at")?,
            source_ip: row.col("source_ip")?,
            user_agent: row.col("user_agent")?,
        },
        csrf_token: row.col("csrf_token")?,
    })
}

const COLUMNS: &str =
    "id, user_id, csrf_token, created_at, expires_at, last_seen_at, source_ip, user_agent";

impl Store {
    pub async fn session_insert(&self, record: &SessionRecord, token_hash: &[u8]) -> Result<()> {
        let s = &record.session;
        with_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, csrf_token, created_at, expires_at, last_seen_at, source_ip, user_agent)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
        .execute(pool)
        .await
        })?;
        Ok(())
    }

    /// Finds a live session by the hash of its cookie value.
    pub async fn session_by_token_hash(
        &self,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<SessionRecord> {
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sessions WHERE token_hash = $1 AND expires_at > $2"
        ))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("session"))?;
        session_from_row(&row)
    }

    pub async fn session_touch(&self, id: SessionId, now: DateTime<Utc>) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE sessions SET last_seen_at = $1 WHERE id = $2"
        )
        .bind(now)
        .bind(id.to_string())
        .execute(pool)
        .await)?;
        Ok(())
    }

    pub async fn sessions_of_user(&self, user: UserId, now: DateTime<Utc>) -> Result<Vec<Session>> {
        let rows = with_pool!(self, |pool| {
            sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sessions WHERE user_id = $1 AND expires_at > $2 ORDER BY created_at DESC"
        ))
        .bind(user.to_string())
        .bind(now)
        .fetch_all(pool)
        .await
        })?;
        rows.iter()
            .map(|r| session_from_row(r).map(|s| s.session))
            .collect()
    }

    /// Revokes one session of `user`; `NotFound` when it is not theirs.
    pub async fn session_delete(&self, user: UserId, id: SessionId) -> Result<()> {
        let done = with_pool!(self, |pool| sqlx::query(
            "DELETE FROM sessions WHERE id = $1 AND user_id = $2"
        )
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(pool)
        .await)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("session"));
        }
        Ok(())
    }

    /// Revokes every session of `user` except `keep`; returns how many ended.
    pub async fn sessions_delete_all(&self, user: UserId, keep: Option<SessionId>) -> Result<u64> {
        let done = with_pool!(self, |pool| sqlx::query(
            "DELETE FROM sessions WHERE user_id = $1 AND id IS DISTINCT FROM $2"
        )
        .bind(user.to_string())
        .bind(keep.map(|k| k.to_string()))
        .execute(pool)
        .await)?;
        Ok(done.rows_affected())
    }

    pub async fn sessions_delete_expired(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = with_pool!(self, |pool| sqlx::query(
            "DELETE FROM sessions WHERE expires_at <= $1"
        )
        .bind(now)
        .execute(pool)
        .await)?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb;

    fn record(user: UserId, expires_at: DateTime<Utc>) -> SessionRecord {
        let now = testdb::now();
        SessionRecord {
            session: Session {
                id: SessionId::new(),
                user_id: user,
                created_at: now,
                expires_at,
                last_seen_at: now,
                source_ip: Some("192.0.2.1".into()),
                user_agent: None,
            },
            csrf_token: "csrf".into(),
        }
    }

    async fn live_expired_and_revoked(store: Store) {
        let user = testdb::user(&store, "alice").await.id;
        let now = testdb::now();
        let hour = chrono::Duration::hours(1);
        let (a, b, old) = (
            record(user, now + hour),
            record(user, now + hour),
            record(user, now - hour),
        );
        for (r, hash) in [(&a, b"a"), (&b, b"b"), (&old, b"o")] {
            store.session_insert(r, hash).await.expect("insert");
        }
        let found = store.session_by_token_hash(b"a", now).await.expect("live");
        assert_eq!(found.session, a.session);
        assert_eq!(found.csrf_token, "csrf");
        assert!(matches!(
            store.session_by_token_hash(b"o", now).await,
            Err(StoreError::NotFound(_))
        ));
        store
            .session_touch(a.session.id, now + hour / 2)
            .await
            .expect("touch");
        assert_eq!(
            store.sessions_of_user(user, now).await.expect("list").len(),
            2
        );
        assert!(matches!(
            store.session_delete(UserId::new(), a.session.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store.sessions_delete_expired(now).await.expect("expired"),
            1
        );
        // Everything but the current session; then, with none kept, the rest.
        assert_eq!(
            store
                .sessions_delete_all(user, Some(a.session.id))
                .await
                .expect("others"),
            1
        );
        assert_eq!(store.sessions_delete_all(user, None).await.expect("all"), 1);
        assert!(
            store
                .sessions_of_user(user, now)
                .await
                .expect("list")
                .is_empty()
        );
    }

    testdb::on_both_backends!(live_expired_and_revoked);
}
