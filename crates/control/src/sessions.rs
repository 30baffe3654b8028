//! Password sign-in and server-side browser sessions: created on sign-in,
//! looked up by the hash of the cookie value, revocable one by one or all
//! at once ("sign out everywhere").

use std::time::Instant;

use chrono::{Duration, Utc};
use overvisor_model::account::{Credential, Outcome, Session, SessionId};
use overvisor_store::audit::NewAuditEvent;
use overvisor_store::sessions::SessionRecord;

use crate::audit::Target;
use crate::authz::{Action, Resource, Subject, authorize};
use crate::credentials::{random_token, sha256, verify_password};
use crate::{App, AppError};

/// Where a request came from, for the audit log and rate limits.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A new session: the cookie value and CSRF token are shown only here.
#[derive(Debug)]
pub struct SignedIn {
    pub subject: Subject,
    pub session: Session,
    pub cookie_value: String,
    pub csrf_token: String,
}

/// A session found from its cookie.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    pub subject: Subject,
    pub csrf_token: String,
}

/// `last_seen_at` is refreshed at most this often, to spare the database a write per request.
const TOUCH_EVERY: Duration = Duration::seconds(60);

impl App {
    pub async fn login(
        &self,
        name: &str,
        password: String,
        client: ClientInfo,
    ) -> Result<SignedIn, AppError> {
        if !self.config().password_login {
            return Err(AppError::Forbidden(
                "sign in with a password here: use your identity provider",
            ));
        }
        let ip = client.ip.as_deref();
        if let Err(retry_after_secs) = self.login_limiter().check(name, ip, Instant::now()) {
            metrics::counter!("overvisor_logins_total", "outcome" => "throttled").increment(1);
            self.audit_login_failure(name, None, &client, "throttled")
                .await;
            return Err(AppError::RateLimited { retry_after_secs });
        }
        let found = self.store().user_credentials_by_name(name).await.ok();
        let stored_hash = found.as_ref().and_then(|c| c.password_hash.clone());
        let password_ok = verify_password(password, stored_hash).await;
        let user = match found {
            Some(creds) if password_ok && !creds.user.disabled => creds.user,
            other => {
                self.login_limiter()
                    .record_failure(name, ip, Instant::now());
                metrics::counter!("overvisor_logins_total", "outcome" => "failure").increment(1);
                let reason = match &other {
                    Some(c) if password_ok && c.user.disabled => "account disabled",
                    Some(_) => "wrong password",
                    None => "unknown user",
                };
                self.audit_login_failure(name, other.map(|c| c.user.id), &client, reason)
                    .await;
                return Err(AppError::BadCredentials);
            }
        };
        self.login_limiter().record_success(name);
        metrics::counter!("overvisor_logins_total", "outcome" => "success").increment(1);
        self.session_start(user, client, None).await
    }

    /// Opens a session for a user who proved who they are (password or
    /// identity provider), and records the sign-in with `detail`.
    pub(crate) async fn session_start(
        &self,
        user: overvisor_model::account::User,
        client: ClientInfo,
        detail: Option<String>,
    ) -> Result<SignedIn, AppError> {
        let now = Utc::now();
        let ttl = Duration::from_std(self.config().session_ttl).unwrap_or(Duration::hours(12));
        let cookie_value = random_token(32);
        let record = SessionRecord {
            session: Session {
                id: SessionId::new(),
                user_id: user.id,
                created_at: now,
                expires_at: now + ttl,
                last_seen_at: now,
                source_ip: client.ip.clone(),
                user_agent: client
                    .user_agent
                    .as_deref()
                    .map(|ua| ua.chars().take(256).collect()),
            },
            csrf_token: random_token(32),
        };
        self.store()
            .session_insert(&record, &sha256(cookie_value.as_bytes()))
            .await?;
        let subject = Subject {
            user,
            credential: Credential::Session {
                id: record.session.id,
            },
            source_ip: client.ip,
        };
        self.audit(
            &subject,
            "auth.login",
            Target::user(subject.id()),
            Outcome::Success,
            detail,
        )
        .await;
        Ok(SignedIn {
            subject,
            session: record.session,
            cookie_value,
            csrf_token: record.csrf_token,
        })
    }

    async fn audit_login_failure(
        &self,
        name: &str,
        user: Option<overvisor_model::account::UserId>,
        client: &ClientInfo,
        reason: &str,
    ) {
        // The attempted name is recorded only when it is a real account: a
        // password typed into the name field must not end up in the log.
        self.audit_raw(NewAuditEvent {
            actor_id: user,
            actor_name: user.map(|_| name.to_owned()),
            via: Some("password".into()),
            source_ip: client.ip.clone(),
            action: "auth.login".into(),
            target: user.map(|u| format!("user:{u}")),
            target_owner: user,
            outcome: Outcome::Failure,
            detail: Some(reason.into()),
        })
        .await;
    }

    /// Resolves a session cookie; expired, revoked or unknown → `Unauthenticated`.
    pub async fn session_authenticate(
        &self,
        cookie_value: &str,
        source_ip: Option<String>,
    ) -> Result<SessionAuth, AppError> {
        self.session_authenticate_digest(&sha256(cookie_value.as_bytes()), source_ip)
            .await
    }

    /// Resolves a session by the SHA-256 of its cookie value: the path
    /// every request takes, and the one open event streams re-check through
    /// without keeping the cookie itself.
    pub(crate) async fn session_authenticate_digest(
        &self,
        digest: &[u8],
        source_ip: Option<String>,
    ) -> Result<SessionAuth, AppError> {
        let now = Utc::now();
        let record = match self.store().session_by_token_hash(digest, now).await {
            Ok(r) => r,
            Err(overvisor_store::StoreError::NotFound(_)) => return Err(AppError::Unauthenticated),
            Err(e) => return Err(e.into()),
        };
        let user = self.store().user_get(record.session.user_id).await?;
        if user.disabled {
            return Err(AppError::Unauthenticated);
        }
        if now - record.session.last_seen_at > TOUCH_EVERY {
            // Best effort: a failed touch (a full disk, say) must not
            // refuse a request that may only read.
            if let Err(err) = self.store().session_touch(record.session.id, now).await {
                tracing::warn!(error = %err, "could not record a session's last use");
            }
        }
        Ok(SessionAuth {
            subject: Subject {
                user,
                credential: Credential::Session {
                    id: record.session.id,
                },
                source_ip,
            },
            csrf_token: record.csrf_token,
        })
    }

    /// Ends the session the subject is using (no-op for API keys).
    pub async fn logout(&self, subject: &Subject) -> Result<(), AppError> {
        if let Credential::Session { id } = subject.credential {
            self.store().session_delete(subject.id(), id).await?;
            self.events().credentials_changed(subject.id());
            self.audit(
                subject,
                "auth.logout",
                Target::user(subject.id()),
                Outcome::Success,
                None,
            )
            .await;
        }
        Ok(())
    }

    /// Ends every session of the subject, including the current one.
    pub async fn logout_everywhere(&self, subject: &Subject) -> Result<u64, AppError> {
        authorize(
            subject,
            Action::ManageCredentials,
            Resource::Account(subject.id()),
        )?;
        let ended = self.store().sessions_delete_all(subject.id(), None).await?;
        self.events().credentials_changed(subject.id());
        self.audit(
            subject,
            "auth.logout_everywhere",
            Target::user(subject.id()),
            Outcome::Success,
            Some(format!("{ended} sessions ended")),
        )
        .await;
        Ok(ended)
    }

    pub async fn sessions_list(&self, subject: &Subject) -> Result<Vec<Session>, AppError> {
        authorize(subject, Action::Read, Resource::Account(subject.id()))?;
        Ok(self
            .store()
            .sessions_of_user(subject.id(), Utc::now())
            .await?)
    }

    pub async fn session_revoke(&self, subject: &Subject, id: SessionId) -> Result<(), AppError> {
        authorize(
            subject,
            Action::ManageCredentials,
            Resource::Account(subject.id()),
        )?;
        self.store().session_delete(subject.id(), id).await?;
        self.events().credentials_changed(subject.id());
        self.audit(
            subject,
            "session.revoke",
            Target::named(format!("session:{id}"), subject.id()),
            Outcome::Success,
            None,
        )
        .await;
        Ok(())
    }
}
