//! API keys: several named keys per user, optional expiry, revocation and
//! rotation. The token is returned once; only its SHA-256 is stored.

use chrono::{DateTime, Duration, Utc};
use overvisor_model::account::{ApiKey, ApiKeyId, Credential, Outcome, UserId, check_key_name};
use overvisor_store::StoreError;

use crate::audit::Target;
use crate::authz::{Action, Resource, Subject, authorize};
use crate::credentials::{api_token_prefix, constant_time_eq, new_api_token, sha256};
use crate::{App, AppError};

/// `last_used_at` is refreshed at most this often.
const TOUCH_EVERY: Duration = Duration::seconds(60);

fn key_target(key: &ApiKey) -> Target {
    Target::named(format!("api_key:{}", key.id), key.user_id)
}

impl App {
    pub(crate) async fn api_key_insert(
        &self,
        user: UserId,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(ApiKey, String), AppError> {
        check_key_name(name)?;
        let fresh = new_api_token();
        let key = ApiKey {
            id: ApiKeyId::new(),
            user_id: user,
            name: name.to_owned(),
            prefix: fresh.prefix,
            created_at: Utc::now(),
            expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        self.store().api_key_insert(&key, &fresh.hash).await?;
        Ok((key, fresh.token))
    }

    pub async fn api_key_create(
        &self,
        subject: &Subject,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(ApiKey, String), AppError> {
        self.api_key_create_for(subject, subject.id(), name, expires_at)
            .await
    }

    /// Creates a key for `owner` (the subject itself, or anyone for an admin).
    pub async fn api_key_create_for(
        &self,
        subject: &Subject,
        owner: UserId,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(ApiKey, String), AppError> {
        authorize(subject, Action::ManageCredentials, Resource::Account(owner))?;
        if expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err(
                overvisor_model::InvalidInput::new("expires_at", "must be in the future").into(),
            );
        }
        self.store().user_get(owner).await?;
        let (key, token) = self.api_key_insert(owner, name, expires_at).await?;
        self.audit(
            subject,
            "api_key.create",
            key_target(&key),
            Outcome::Success,
            Some(format!("name={name}")),
        )
        .await;
        Ok((key, token))
    }

    pub async fn api_keys_list(&self, subject: &Subject) -> Result<Vec<ApiKey>, AppError> {
        self.api_keys_list_for(subject, subject.id()).await
    }

    pub async fn api_keys_list_for(
        &self,
        subject: &Subject,
        owner: UserId,
    ) -> Result<Vec<ApiKey>, AppError> {
        authorize(subject, Action::Read, Resource::Account(owner))?;
        Ok(self.store().api_keys_of_user(owner).await?)
    }

    pub async fn api_key_get(&self, subject: &Subject, id: ApiKeyId) -> Result<ApiKey, AppError> {
        authorize(subject, Action::Read, Resource::Account(subject.id()))?;
        Ok(self.store().api_key_get(subject.id(), id).await?)
    }

    pub async fn api_key_revoke(
        &self,
        subject: &Subject,
        id: ApiKeyId,
    ) -> Result<ApiKey, AppError> {
        self.api_key_revoke_for(subject, subject.id(), id).await
    }

    pub async fn api_key_revoke_for(
        &self,
        subject: &Subject,
        owner: UserId,
        id: ApiKeyId,
    ) -> Result<ApiKey, AppError> {
        authorize(subject, Action::ManageCredentials, Resource::Account(owner))?;
        let key = self.store().api_key_revoke(owner, id, Utc::now()).await?;
        self.events().credentials_changed(owner);
        self.audit(
            subject,
            "api_key.revoke",
            key_target(&key),
            Outcome::Success,
            None,
        )
        .await;
        Ok(key)
    }

    /// Gives the key a new secret; the old token stops working at once. The
    /// expiry keeps its original lifetime, counted from now.
    pub async fn api_key_rotate(
        &self,
        subject: &Subject,
        id: ApiKeyId,
    ) -> Result<(ApiKey, String), AppError> {
        authorize(
            subject,
            Action::ManageCredentials,
            Resource::Account(subject.id()),
        )?;
        let old = self.store().api_key_get(subject.id(), id).await?;
        if old.revoked_at.is_some() {
            return Err(AppError::Conflict("a revoked key cannot be rotated".into()));
        }
        let now = Utc::now();
        let expires_at = old
            .expires_at
            .map(|e| now + (e - old.created_at).max(Duration::zero()));
        let fresh = new_api_token();
        let key = self
            .store()
            .api_key_replace_secret(subject.id(), id, &fresh.prefix, &fresh.hash, expires_at)
            .await?;
        self.events().credentials_changed(subject.id());
        self.audit(
            subject,
            "api_key.rotate",
            key_target(&key),
            Outcome::Success,
            None,
        )
        .await;
        Ok((key, fresh.token))
    }

    /// Resolves `Authorization: Bearer <token>`.
    pub async fn api_key_authenticate(
        &self,
        token: &str,
        source_ip: Option<String>,
    ) -> Result<Subject, AppError> {
        let prefix = api_token_prefix(token).ok_or(AppError::Unauthenticated)?;
        self.api_key_authenticate_digest(prefix, &sha256(token.as_bytes()), source_ip)
            .await
    }

    /// Authenticates a token known by its lookup prefix and SHA-256: the
    /// path every request takes, and the one open event streams re-check
    /// through without keeping the token itself.
    pub(crate) async fn api_key_authenticate_digest(
        &self,
        prefix: &str,
        digest: &[u8],
        source_ip: Option<String>,
    ) -> Result<Subject, AppError> {
        let record = match self.store().api_key_by_prefix(prefix).await {
            Ok(r) => r,
            Err(StoreError::NotFound(_)) => return Err(AppError::Unauthenticated),
            Err(e) => return Err(e.into()),
        };
        let now = Utc::now();
        if !constant_time_eq(&record.token_hash, digest) || !record.key.is_usable_at(now) {
            return Err(AppError::Unauthenticated);
        }
        let user = self.store().user_get(record.key.user_id).await?;
        if user.disabled {
            return Err(AppError::Unauthenticated);
        }
        if record
            .key
            .last_used_at
            .is_none_or(|t| now - t > TOUCH_EVERY)
        {
            // Best effort: a failed touch (a full disk, say) must not
            // refuse a request that may only read.
            if let Err(err) = self.store().api_key_touch(record.key.id, now).await {
                tracing::warn!(error = %err, "could not record an API key's last use");
            }
        }
        Ok(Subject {
            user,
            credential: Credential::ApiKey { id: record.key.id },
            source_ip,
        })
    }
}
