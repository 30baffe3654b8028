//! The audit log: append-only, filterable, readable by owners (their own
//! events and events about their things) and by administrators (all).

use chrono::{DateTime, Utc};
use overvisor_model::account::{AuditEvent, Outcome, UserId};

use crate::{DbRow, Result, Store, builder, parse_col, with_pool};

/// A new audit record (the id and time are assigned on insert).
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub actor_id: Option<UserId>,
    pub actor_name: Option<String>,
    pub via: Option<String>,
    pub source_ip: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub target_owner: Option<UserId>,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

/// Filters for reading the log; `visible_to` limits to one user's events.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub visible_to: Option<UserId>,
    pub actor: Option<UserId>,
    pub action_prefix: Option<String>,
    pub outcome: Option<Outcome>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only events with an id below this (keyset pagination, newest first).
    pub before_id: Option<i64>,
    pub limit: u32,
}

fn event_from_row(row: &impl DbRow) -> Result<AuditEvent> {
    let actor_id: Option<String> = row.col("actor_id")?;
    let owner: Option<String> = row.col("target_owner")?;
    let outcome: String = row.col("outcome")?;
    Ok(AuditEvent {
        id: row.col("id")?,
        at: row.col("at")?,
        actor_id: actor_id.map(|a| parse_col(&a, "actor id")).transpose()?,
        actor_name: row.col("actor_name")?,
        via: row.col("via")?,
        source_ip: row.col("source_ip")?,
        action: row.col("action")?,
        target: row.col("target")?,
        target_owner: owner.map(|o| parse_col(&o, "owner id")).transpose()?,
        outcome: parse_col(&outcome, "outcome")?,
        detail: row.col("detail")?,
    })
}

impl Store {
    pub async fn audit_append(&self, event: &NewAuditEvent, at: DateTime<Utc>) -> Result<i64> {
        let id = with_pool!(self, |pool| {
            sqlx::query_scalar::<_, i64>(
            "INSERT INTO audit_log (at, actor_id, actor_name, via, source_ip, action, target, target_owner, outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(at)
        .bind(event.actor_id.map(|a| a.to_string()))
        .bind(&event.actor_name)
        .bind(&event.via)
        .bind(&event.source_ip)
        .bind(&event.action)
        .bind(&event.target)
        .bind(event.target_owner.map(|o| o.to_string()))
        .bind(event.outcome.as_str())
        .bind(&event.detail)
        .fetch_one(pool)
        .await
        })?;
        Ok(id)
    }

    /// Newest first.
    pub async fn audit_list(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let rows = with_pool!(self, |pool| {
            let mut sql = builder(
            pool,
            "SELECT id, at, actor_id, actor_name, via, source_ip, action, target, target_owner, outcome, detail
             FROM audit_log WHERE 1 = 1",
        );
            if let Some(user) = query.visible_to {
                sql.push(" AND (actor_id = ")
                    .push_bind(user.to_string())
                    .push(" OR target_owner = ")
                    .push_bind(user.to_string())
                    .push(")");
            }
            if let Some(actor) = query.actor {
                sql.push(" AND actor_id = ").push_bind(actor.to_string());
            }
            if let Some(prefix) = &query.action_prefix {
                // Escape LIKE wildcards so the filter is a literal prefix.
                let escaped = prefix
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                sql.push(" AND action LIKE ")
                    .push_bind(format!("{escaped}%"))
                    .push(" ESCAPE '\\'");
            }
            if let Some(outcome) = query.outcome {
                sql.push(" AND outcome = ").push_bind(outcome.as_str());
            }
            if let Some(since) = query.since {
                sql.push(" AND at >= ").push_bind(since);
            }
            if let Some(until) = query.until {
                sql.push(" AND at < ").push_bind(until);
            }
            if let Some(before) = query.before_id {
                sql.push(" AND id < ").push_bind(before);
            }
            sql.push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(query.limit.clamp(1, 1000)));
            sql.build().fetch_all(pool).await
        })?;
        rows.iter().map(event_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(actor: Option<UserId>, owner: Option<UserId>, action: &str) -> NewAuditEvent {
        NewAuditEvent {
            actor_id: actor,
            actor_name: None,
            via: None,
            source_ip: None,
            action: action.into(),
            target: None,
            target_owner: owner,
            outcome: Outcome::Success,
            detail: None,
        }
    }

    async fn visibility_and_filters(store: Store) {
        let (a, b) = (UserId::new(), UserId::new());
        let now = Utc::now();
        store
            .audit_append(&event(Some(a), None, "auth.login"), now)
            .await
            .expect("1");
        store
            .audit_append(&event(Some(b), Some(a), "user.update"), now)
            .await
            .expect("2");
        store
            .audit_append(&event(Some(b), None, "auth_login"), now)
            .await
            .expect("3");
        let mine = store
            .audit_list(&AuditQuery {
                visible_to: Some(a),
                limit: 50,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(mine.len(), 2);
        let logins = store
            .audit_list(&AuditQuery {
                action_prefix: Some("auth.".into()),
                limit: 50,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(logins.len(), 1, "'.' and '_' are literal in the prefix");
        let page = store
            .audit_list(&AuditQuery {
                limit: 1,
                ..Default::default()
            })
            .await
            .expect("page");
        let next = store
            .audit_list(&AuditQuery {
                limit: 10,
                before_id: Some(page[0].id),
                ..Default::default()
            })
            .await
            .expect("next");
        assert_eq!(next.len(), 2);
    }

    crate::testdb::on_both_backends!(visibility_and_filters);
}
