//! Recording and reading the audit log. Recording never fails the request
//! it describes: a store error is logged and the work carries on.

use chrono::Utc;
use overvisor_model::account::{AuditEvent, Outcome, UserId};
use overvisor_store::audit::{AuditQuery, NewAuditEvent};

use crate::authz::{Action, Resource, Subject, authorize};
use crate::{App, AppError};

/// What an event is about.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub name: Option<String>,
    pub owner: Option<UserId>,
}

impl Target {
    pub fn user(id: UserId) -> Self {
        Self {
            name: Some(format!("user:{id}")),
            owner: Some(id),
        }
    }

    pub fn named(name: impl Into<String>, owner: UserId) -> Self {
        Self {
            name: Some(name.into()),
            owner: Some(owner),
        }
    }
}

/// Filters a caller may use; visibility is added by [`App::audit_list`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<UserId>,
    pub action_prefix: Option<String>,
    pub outcome: Option<Outcome>,
    pub since: Option<chrono::DateTime<Utc>>,
    pub until: Option<chrono::DateTime<Utc>>,
    pub before_id: Option<i64>,
    pub limit: u32,
    /// Admins see everything unless they ask for only their own events.
    pub all: bool,
}

impl App {
    /// Records an action by an authenticated subject.
    pub async fn audit(
        &self,
        subject: &Subject,
        action: &str,
        target: Target,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let event = NewAuditEvent {
            actor_id: Some(subject.id()),
            actor_name: Some(subject.user.name.to_string()),
            via: Some(subject.credential.to_string()),
            source_ip: subject.source_ip.clone(),
            action: action.to_owned(),
            target: target.name,
            target_owner: target.owner,
            outcome,
            detail,
        };
        self.audit_raw(event).await;
    }

    /// Records an event with no authenticated subject (e.g. a failed sign-in).
    pub(crate) async fn audit_raw(&self, event: NewAuditEvent) {
        metrics::counter!("overvisor_audit_events_total", "outcome" => event.outcome.as_str())
            .increment(1);
        if let Err(err) = self.store().audit_append(&event, Utc::now()).await {
            tracing::error!(error = %err, action = %event.action, "could not write audit event");
        }
    }

    pub async fn audit_list(
        &self,
        subject: &Subject,
        filter: AuditFilter,
    ) -> Result<Vec<AuditEvent>, AppError> {
        let visible_to = if filter.all {
            authorize(subject, Action::Read, Resource::AuditAll)?;
            None
        } else {
            authorize(subject, Action::Read, Resource::AuditOf(subject.id()))?;
            Some(subject.id())
        };
        let query = AuditQuery {
            visible_to,
            actor: filter.actor,
            action_prefix: filter.action_prefix,
            outcome: filter.outcome,
            since: filter.since,
            until: filter.until,
            before_id: filter.before_id,
            limit: filter.limit,
        };
        Ok(self.store().audit_list(&query).await?)
    }
}
