//! User accounts: creation (with an SSH identity and a first API key),
//! administration, passwords, and the first-start administrator.

use std::time::Instant;

use chrono::Utc;
use overvisor_hv::generate_ed25519_identity;
use overvisor_model::account::{
    ApiKey, Credential, Email, Outcome, Role, User, UserChanges, UserId, UserName,
    check_password_policy,
};

use crate::audit::Target;
use crate::authz::{Action, Resource, Subject, authorize};
use crate::credentials::{generate_password, hash_password, verify_password};
use crate::{App, AppError};

/// What an administrator supplies to create an account.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: UserName,
    pub email: Email,
    pub role: Role,
    /// `None` generates one, returned once.
    pub password: Option<String>,
}

/// A created account and the secrets shown exactly once.
#[derive(Debug)]
pub struct CreatedUser {
    pub user: User,
    pub password: Option<String>,
    pub api_key: ApiKey,
    pub api_token: String,
}

impl Subject {
    /// The operator at the server's own console (`overvisor user …`), who
    /// has administrator rights by virtue of owning the data directory.
    pub fn console() -> Self {
        let now = Utc::now();
        Subject {
            user: User {
                id: UserId(uuid::Uuid::nil()),
                name: UserName::parse("console")
                    .unwrap_or_else(|_| unreachable!("static name is valid")),
                email: Email::parse("console@localhost.localdomain")
                    .unwrap_or_else(|_| unreachable!("static e-mail is valid")),
                role: Role::Admin,
                disabled: false,
                created_at: now,
                updated_at: now,
            },
            credential: Credential::Console,
            source_ip: None,
        }
    }
}

impl App {
    /// On first start (no accounts at all) creates `admin` with a generated
    /// password and returns it, to be printed once.
    pub async fn bootstrap_admin(&self) -> Result<Option<CreatedUser>, AppError> {
        if self.store().users_count().await? > 0 {
            return Ok(None);
        }
        let new = NewUser {
            name: UserName::parse("admin")?,
            email: Email::parse("admin@localhost.localdomain")?,
            role: Role::Admin,
            password: None,
        };
        let mut system = Subject::console();
        system.credential = Credential::System;
        self.user_create(&system, new).await.map(Some)
    }

    pub async fn user_create(
        &self,
        subject: &Subject,
        new: NewUser,
    ) -> Result<CreatedUser, AppError> {
        authorize(subject, Action::AdministerUsers, Resource::UserDirectory)?;
        let (password, generated) = match new.password {
            Some(p) => {
                check_password_policy(&p)?;
                (p, false)
            }
            None => (generate_password(), true),
        };
        let hash = hash_password(password.clone()).await?;
        let now = Utc::now();
        let user = User {
            id: UserId::new(),
            name: new.name,
            email: new.email,
            role: new.role,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.store().user_insert(&user, Some(&hash)).await?;
        self.ssh_identity_create(&user).await?;
        let (api_key, api_token) = self.api_key_insert(user.id, "default", None).await?;
        self.audit(
            subject,
            "user.create",
            Target::user(user.id),
            Outcome::Success,
            Some(format!("role={}", user.role)),
        )
        .await;
        Ok(CreatedUser {
            user,
            password: generated.then_some(password),
            api_key,
            api_token,
        })
    }

    /// Gives a new account its SSH automation identity (the key its hosts
    /// are reached with).
    pub(crate) async fn ssh_identity_create(&self, user: &User) -> Result<(), AppError> {
        let (public, private) = generate_ed25519_identity(&format!("overvisor:{}", user.name))
            .map_err(|e| AppError::Internal(format!("generating an SSH identity: {e}")))?;
        self.store()
            .ssh_identity_put(self.sealer(), user.id, &public, &private, Utc::now())
            .await?;
        Ok(())
    }

    pub async fn users_list(&self, subject: &Subject) -> Result<Vec<User>, AppError> {
        authorize(subject, Action::Read, Resource::UserDirectory)?;
        Ok(self.store().users_list().await?)
    }

    pub async fn user_get(&self, subject: &Subject, id: UserId) -> Result<User, AppError> {
        authorize(subject, Action::Read, Resource::Account(id))?;
        Ok(self.store().user_get(id).await?)
    }

    /// Finds a user by name for console commands.
    pub async fn user_by_name(&self, subject: &Subject, name: &str) -> Result<User, AppError> {
        authorize(subject, Action::Read, Resource::UserDirectory)?;
        Ok(self.store().user_credentials_by_name(name).await?.user)
    }

    pub async fn user_update(
        &self,
        subject: &Subject,
        id: UserId,
        changes: UserChanges,
    ) -> Result<User, AppError> {
        authorize(subject, Action::AdministerUsers, Resource::Account(id))?;
        let before = self.store().user_get(id).await?;
        let loses_admin = before.role == Role::Admin
            && (changes.role.is_some_and(|r| r != Role::Admin) || changes.disabled == Some(true));
        if loses_admin && self.active_admin_count().await? <= 1 {
            return Err(AppError::Conflict(
                "this is the last active administrator; promote another one first".into(),
            ));
        }
        let after = self.store().user_update(id, &changes, Utc::now()).await?;
        if after.disabled {
            self.store().sessions_delete_all(id, None).await?;
        }
        // Open event streams of this user re-check their role and standing.
        self.events().credentials_changed(id);
        let detail = format!(
            "role={} disabled={}{}",
            after.role,
            after.disabled,
            if changes.email.is_some() {
                " email changed"
            } else {
                ""
            }
        );
        self.audit(
            subject,
            "user.update",
            Target::user(id),
            Outcome::Success,
            Some(detail),
        )
        .await;
        Ok(after)
    }

    async fn active_admin_count(&self) -> Result<usize, AppError> {
        Ok(self
            .store()
            .users_list()
            .await?
            .iter()
            .filter(|u| u.role == Role::Admin && !u.disabled)
            .count())
    }

    /// An administrator sets a new password (generated when `None`, and
    /// then returned once); every session of the user ends.
    pub async fn user_reset_password(
        &self,
        subject: &Subject,
        id: UserId,
        password: Option<String>,
    ) -> Result<Option<String>, AppError> {
        authorize(subject, Action::AdministerUsers, Resource::Account(id))?;
        let (password, generated) = match password {
            Some(p) => {
                check_password_policy(&p)?;
                (p, false)
            }
            None => (generate_password(), true),
        };
        self.store().user_get(id).await?;
        let hash = hash_password(password.clone()).await?;
        self.store()
            .user_set_password_hash(id, &hash, Utc::now())
            .await?;
        self.store().sessions_delete_all(id, None).await?;
        self.events().credentials_changed(id);
        self.audit(
            subject,
            "user.reset_password",
            Target::user(id),
            Outcome::Success,
            None,
        )
        .await;
        Ok(generated.then_some(password))
    }

    /// A user changes their own password; their other sessions end.
    pub async fn password_change(
        &self,
        subject: &Subject,
        current: String,
        new: String,
    ) -> Result<(), AppError> {
        let me = subject.id();
        authorize(subject, Action::ManageCredentials, Resource::Account(me))?;
        check_password_policy(&new)?;
        // A stolen session or key must not become a way to guess the
        // password: wrong guesses count with the account's sign-in failures.
        let name = subject.user.name.as_str();
        let ip = subject.source_ip.as_deref();
        if let Err(retry_after_secs) = self.login_limiter().check(name, ip, Instant::now()) {
            return Err(AppError::RateLimited { retry_after_secs });
        }
        let creds = self.store().user_credentials(me).await?;
        if !verify_password(current, creds.password_hash).await {
            self.login_limiter()
                .record_failure(name, ip, Instant::now());
            self.audit(
                subject,
                "user.change_password",
                Target::user(me),
                Outcome::Failure,
                Some("wrong current password".into()),
            )
            .await;
            return Err(AppError::Invalid(overvisor_model::InvalidInput::new(
                "current_password",
                "is not correct",
            )));
        }
        self.login_limiter().record_success(name);
        let hash = hash_password(new).await?;
        self.store()
            .user_set_password_hash(me, &hash, Utc::now())
            .await?;
        let keep = match subject.credential {
            Credential::Session { id } => Some(id),
            _ => None,
        };
        self.store().sessions_delete_all(me, keep).await?;
        self.events().credentials_changed(me);
        self.audit(
            subject,
            "user.change_password",
            Target::user(me),
            Outcome::Success,
            None,
        )
        .await;
        Ok(())
    }

    /// The public half of a user's SSH automation identity.
    pub async fn ssh_public_key(
        &self,
        subject: &Subject,
        user: UserId,
    ) -> Result<String, AppError> {
        authorize(subject, Action::Read, Resource::Account(user))?;
        Ok(self.store().ssh_public_key(user).await?)
    }
}
