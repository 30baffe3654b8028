//! An account's guest SSH keys: public keys a deployment injects when its
//! request names none. Each key is checked as a deployment checks its
//! keys (`overvisor_deploy::ssh_keys`), stored re-encoded with its
//! fingerprint, at most once per account and at most as many as one
//! deployment injects.

use chrono::Utc;
use overvisor_deploy::DeploymentRequest;
use overvisor_deploy::request::MAX_SSH_KEYS;
use overvisor_deploy::ssh_keys::check_public_key;
use overvisor_model::account::{GuestKey, GuestKeyId, Outcome, UserId, check_key_name};

use crate::audit::Target;
use crate::authz::{Action, Resource, Subject, authorize};
use crate::{App, AppError};

/// The most guest keys an account keeps: what one deployment injects, so
/// the default never exceeds what a deployment accepts.
pub const MAX_GUEST_KEYS: usize = MAX_SSH_KEYS;

fn key_target(key: &GuestKey) -> Target {
    Target::named(format!("guest_key:{}", key.id), key.user_id)
}

impl App {
    /// `owner`'s guest keys, oldest first.
    pub async fn guest_keys_list(
        &self,
        subject: &Subject,
        owner: UserId,
    ) -> Result<Vec<GuestKey>, AppError> {
        authorize(subject, Action::Read, Resource::Account(owner))?;
        Ok(self.store().guest_keys_of_user(owner).await?)
    }

    /// Adds a key to `owner`'s guest keys (the subject's own, or anyone's
    /// for an admin). `public_key` is one OpenSSH public key line.
    pub async fn guest_key_add(
        &self,
        subject: &Subject,
        owner: UserId,
        name: &str,
        public_key: &str,
    ) -> Result<GuestKey, AppError> {
        authorize(subject, Action::ManageCredentials, Resource::Account(owner))?;
        check_key_name(name)?;
        // A `.pub` file ends with a line break: only one inside is refused.
        let checked = check_public_key("public_key", public_key.trim())?;
        self.store().user_get(owner).await?;
        let key = GuestKey {
            id: GuestKeyId::new(),
            user_id: owner,
            name: name.to_owned(),
            public_key: checked.openssh,
            fingerprint: checked.fingerprint,
            created_at: Utc::now(),
        };
        self.store().guest_key_insert(&key, MAX_GUEST_KEYS).await?;
        self.audit(
            subject,
            "guest_key.add",
            key_target(&key),
            Outcome::Success,
            Some(format!("name={name} fingerprint={}", key.fingerprint)),
        )
        .await;
        Ok(key)
    }

    /// Removes one of `owner`'s guest keys; another account's key is a 404.
    pub async fn guest_key_remove(
        &self,
        subject: &Subject,
        owner: UserId,
        id: GuestKeyId,
    ) -> Result<GuestKey, AppError> {
        authorize(subject, Action::ManageCredentials, Resource::Account(owner))?;
        let key = self.store().guest_key_delete(owner, id).await?;
        self.audit(
            subject,
            "guest_key.remove",
            key_target(&key),
            Outcome::Success,
            Some(format!("name={} fingerprint={}", key.name, key.fingerprint)),
        )
        .await;
        Ok(key)
    }

    /// `req` with what it leaves out taken from the requesting account:
    /// its guest user name and (when `ssh_keys` is left out) its guest
    /// keys. A request made with an API key is its owner's.
    pub(crate) async fn deploy_request_of(
        &self,
        subject: &Subject,
        req: &DeploymentRequest,
    ) -> Result<DeploymentRequest, AppError> {
        let keys = match req.ssh_keys {
            Some(_) => Vec::new(),
            None => self
                .guest_keys_list(subject, subject.id())
                .await?
                .into_iter()
                .map(|k| k.public_key)
                .collect(),
        };
        Ok(req.with_account_defaults(&self.config().profiles, subject.user.name.as_str(), keys))
    }
}
