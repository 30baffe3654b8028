//! Accounts: users, their roles, API key metadata, guest SSH keys and
//! audit records.
//!
//! Secrets (password hashes, key hashes, private keys) are deliberately absent
//! from these types: a value of a type defined here can always be shown to its
//! owner without leaking anything.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::InvalidInput;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| InvalidInput::new("id", "is not a valid UUID"))
            }
        }
    };
}
// Other modules (jobs, hosts) mint their ids the same way.
pub(crate) use id_type;

id_type!(
    /// Identifies a user account.
    UserId
);
id_type!(
    /// Identifies an API key (not the secret token).
    ApiKeyId
);
id_type!(
    /// Identifies a browser session (not the secret cookie value).
    SessionId
);
id_type!(
    /// Identifies one of an account's guest SSH keys.
    GuestKeyId
);

/// Roles are ordered: every right of a lower role is held by the higher ones.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reader" => Ok(Role::Reader),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(InvalidInput::new(
                "role",
                "must be one of reader, operator, admin",
            )),
        }
    }
}

/// A login name: short, lowercase, safe to show anywhere and to use in paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "alice")]
pub struct UserName(String);

impl UserName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let valid_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(InvalidInput::new("name", "must be 1 to 64 characters"));
        }
        if !raw.starts_with(|c: char| c.is_ascii_lowercase()) || !raw.chars().all(valid_char) {
            return Err(InvalidInput::new(
                "name",
                "must start with a lowercase letter and contain only a-z, 0-9, '.', '_' and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserName {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<UserName> for String {
    fn from(value: UserName) -> Self {
        value.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address, checked for shape only (delivery is not our business).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "alice@example.com")]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let ok = raw.len() <= 254
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(raw.split_once('@'), Some((local, domain))
                if !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
                    && !domain.ends_with('.') && !domain.contains('@'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput::new("email", "is not a valid e-mail address"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

/// Password policy, checked before hashing.
pub fn check_password_policy(password: &str) -> Result<(), InvalidInput> {
    let len = password.chars().count();
    if len < 12 {
        return Err(InvalidInput::new(
            "password",
            "must be at least 12 characters long",
        ));
    }
    if len > 1024 {
        return Err(InvalidInput::new(
            "password",
            "must be at most 1024 characters long",
        ));
    }
    Ok(())
}

/// A user account as shown through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub name: UserName,
    pub email: Email,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Fields an administrator may change; a field left out is kept.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UserUpdate)]
pub struct UserChanges {
    pub email: Option<Email>,
    pub role: Option<Role>,
    /// Disabling ends every session; API keys stop working while disabled.
    pub disabled: Option<bool>,
}

/// An API key as shown after creation: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub name: String,
    /// The public lookup prefix, printed at the start of the token, so a user
    /// can tell keys apart without the secret.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|exp| exp > now)
    }
}

/// An API key's display name.
pub fn check_key_name(name: &str) -> Result<(), InvalidInput> {
    let len = name.chars().count();
    if len == 0 || len > 64 || name.chars().any(char::is_control) || name.trim() != name {
        return Err(InvalidInput::new(
            "name",
            "must be 1 to 64 printable characters without surrounding spaces",
        ));
    }
    Ok(())
}

/// An SSH public key an account keeps for its guests: a deployment that
/// names no `ssh_keys` injects its owner's. A public key is no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestKey {
    pub id: GuestKeyId,
    pub user_id: UserId,
    pub name: String,
    /// The OpenSSH `authorized_keys` line as parsed and re-encoded
    /// (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}

/// A browser session as its owner may see it (never the cookie value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// How a request proved who it is; recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    Session {
        id: SessionId,
    },
    ApiKey {
        id: ApiKeyId,
    },
    /// A bearer JWT from an OpenID Connect provider (a service principal's
    /// access token), valid until `expires_at`.
    OidcToken {
        provider: String,
        expires_at: DateTime<Utc>,
    },
    /// The command line on the server itself (`overvisor user …`).
    Console,
    /// The service acting on its own (bootstrap, background work).
    System,
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Session { id } => write!(f, "session:{id}"),
            Credential::ApiKey { id } => write!(f, "api_key:{id}"),
            Credential::OidcToken { provider, .. } => write!(f, "oidc_token:{provider}"),
            Credential::Console => f.write_str("console"),
            Credential::System => f.write_str("system"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

impl FromStr for Outcome {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "success" => Ok(Outcome::Success),
            "failure" => Ok(Outcome::Failure),
            "denied" => Ok(Outcome::Denied),
            _ => Err(InvalidInput::new(
                "outcome",
                "must be one of success, failure, denied",
            )),
        }
    }
}

/// One line of the audit log: who did what, when, from where, how, and the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The acting user, when known (a failed sign-in for an unknown name has none).
    pub actor_id: Option<UserId>,
    pub actor_name: Option<String>,
    /// `session:<id>`, `api_key:<id>`, `oidc_token:<provider>` (a provider's bearer
    /// JWT), `oidc:<provider>` (an identity provider sign-in), `console` or `system`.
    pub via: Option<String>,
    pub source_ip: Option<String>,
    /// Dotted action name, e.g. `auth.login`, `api_key.create`.
    pub action: String,
    /// What was acted upon, e.g. `user:<id>`.
    pub target: Option<String>,
    /// The user the target belongs to, so owners see events about their things.
    pub target_owner: Option<UserId>,
    pub outcome: Outcome,
    /// A short, secret-free explanation.
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Reader < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().ok(), Some(r));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn user_names_are_strict() {
        assert!(UserName::parse("alice").is_ok());
        assert!(UserName::parse("a.b-c_9").is_ok());
        for bad in [
            "",
            "Alice",
            "9lives",
            "-x",
            "a b",
            "a;rm",
            "é",
            &"a".repeat(65),
        ] {
            assert!(UserName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn emails_need_a_domain() {
        assert!(Email::parse("a@example.com").is_ok());
        for bad in ["", "a", "a@b", "@b.c", "a@.c", "a b@c.d", "a@b.c\n"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn password_policy() {
        assert!(check_password_policy("short").is_err());
        assert!(check_password_policy("long enough pass").is_ok());
    }

    #[test]
    fn key_usability() {
        let now = Utc::now();
        let mut key = ApiKey {
            id: ApiKeyId::new(),
            user_id: UserId::new(),
            name: "ci".into(),
            prefix: "abcd".into(),
            created_at: now,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        };
        assert!(key.is_usable_at(now));
        key.expires_at = Some(now - chrono::Duration::seconds(1));
        assert!(!key.is_usable_at(now));
        key.expires_at = None;
        key.revoked_at = Some(now);
        assert!(!key.is_usable_at(now));
    }
}
