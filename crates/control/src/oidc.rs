//! Signing in with an OpenID Connect provider, and API requests carrying a
//! provider's bearer JWT. The provider vouches for an identity (issuer +
//! `sub`); this module turns it into an account — made or linked on first
//! sign-in, its role set from the mapped claims every time — and then into
//! a session (browser) or a [`Subject`] (API). Whoever's claims map to no
//! role gets nothing, and the refusal is audited.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use overvisor_model::account::{Credential, Email, Outcome, Role, User, UserId, UserName};
use overvisor_oidc::{Identity, OidcError, Pending, ProviderSettings, RoleDecision};
use overvisor_store::StoreError;
use overvisor_store::audit::NewAuditEvent;

use crate::audit::Target;
use crate::authz::Subject;
use crate::sessions::{ClientInfo, SignedIn};
use crate::{App, AppError};

/// A sign-in attempt may take this long at the provider.
const PENDING_TTL_SECS: i64 = 600;

/// What binds the sealed attempt to its purpose.
const PENDING_BINDING: &str = "oidc-pending";

/// A provider offered on the sign-in page.
#[derive(Debug, Clone)]
pub struct SignInOption {
    pub id: String,
    pub display_name: String,
}

/// Where to send the browser, and the sealed attempt it must bring back
/// (in a cookie): state, nonce and PKCE verifier never leave the service
/// readable.
#[derive(Debug)]
pub struct OidcRedirect {
    pub url: String,
    pub sealed: String,
}

impl App {
    /// The providers offered as "Sign in with …".
    pub fn oidc_sign_in_options(&self) -> Vec<SignInOption> {
        self.config()
            .oidc
            .providers()
            .iter()
            .filter(|p| p.settings().sign_in)
            .map(|p| SignInOption {
                id: p.settings().id.clone(),
                display_name: p.settings().display_name.clone(),
            })
            .collect()
    }

    /// Discovers every provider once (at start, in the background).
    pub async fn oidc_warm_up(&self) {
        self.config().oidc.warm_up().await;
    }

    /// Whether the password form is offered.
    pub fn password_login_enabled(&self) -> bool {
        self.config().password_login
    }

    fn sign_in_provider(&self, id: &str) -> Result<&overvisor_oidc::Provider, AppError> {
        self.config()
            .oidc
            .provider(id)
            .filter(|p| p.settings().sign_in)
            .map(|p| &**p)
            .ok_or(AppError::NotFound("identity provider"))
    }

    /// Starts signing in with provider `id`; the provider sends the browser
    /// back to `redirect_uri`, and then on to `next`.
    pub async fn oidc_begin(
        &self,
        id: &str,
        redirect_uri: &str,
        next: &str,
    ) -> Result<OidcRedirect, AppError> {
        let provider = self.sign_in_provider(id)?;
        let started = provider
            .start(redirect_uri, next, Utc::now().timestamp())
            .await?;
        let json = serde_json::to_vec(&started.pending)
            .map_err(|e| AppError::Internal(format!("encoding a sign-in attempt: {e}")))?;
        let sealed = URL_SAFE_NO_PAD.encode(self.sealer().seal(PENDING_BINDING, &json));
        Ok(OidcRedirect {
            url: started.url,
            sealed,
        })
    }

    /// Where a sealed attempt wanted to go after signing in (for the
    /// redirect once the session is made).
    pub fn oidc_pending_next(&self, sealed: &str) -> Option<String> {
        self.open_pending(sealed).ok().map(|p| p.next)
    }

    fn open_pending(&self, sealed: &str) -> Result<Pending, AppError> {
        let refused = || AppError::SignIn(OidcError::StateMismatch);
        let bytes = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| refused())?;
        let json = self
            .sealer()
            .open(PENDING_BINDING, &bytes)
            .map_err(|_| refused())?;
        let pending: Pending = serde_json::from_slice(&json).map_err(|_| refused())?;
        let age = Utc::now().timestamp() - pending.started_at;
        if !(0..=PENDING_TTL_SECS).contains(&age) {
            return Err(refused());
        }
        Ok(pending)
    }

    /// Completes a sign-in: the provider came back with `state` and `code`;
    /// `sealed` is the attempt this browser started. Makes a session, or
    /// refuses (`NoRole` when the claims map to no role).
    pub async fn oidc_complete(
        &self,
        id: &str,
        sealed: &str,
        state: &str,
        code: &str,
        client: ClientInfo,
    ) -> Result<SignedIn, AppError> {
        let provider = self.sign_in_provider(id)?;
        let pending = self.open_pending(sealed)?;
        let identity = match provider.finish(pending, state, code).await {
            Ok(identity) => identity,
            Err(err) => {
                metrics::counter!("overvisor_logins_total", "outcome" => "failure").increment(1);
                self.audit_oidc(id, None, &client, Outcome::Failure, err.to_string())
                    .await;
                return Err(err.into());
            }
        };
        let settings = provider.settings();
        let decision = settings.roles.decide(&identity.claims);
        let user = self
            .oidc_account(settings, &identity, &decision, &client)
            .await?;
        if user.disabled {
            metrics::counter!("overvisor_logins_total", "outcome" => "failure").increment(1);
            self.audit_oidc(
                id,
                Some(&user),
                &client,
                Outcome::Failure,
                "account disabled".into(),
            )
            .await;
            return Err(AppError::BadCredentials);
        }
        metrics::counter!("overvisor_logins_total", "outcome" => "success").increment(1);
        let detail = format!("oidc provider={id} {decision}");
        self.session_start(user, client, Some(detail)).await
    }

    /// Resolves `Authorization: Bearer <JWT>` from a configured provider.
    pub async fn oidc_token_authenticate(
        &self,
        token: &str,
        source_ip: Option<String>,
    ) -> Result<Subject, AppError> {
        let (provider, identity) = match self.config().oidc.verify_bearer(token).await {
            Ok(found) => found,
            Err(err) if err.is_unavailable() => return Err(AppError::Unavailable(err.to_string())),
            Err(err) => return Err(err.into()),
        };
        let settings = provider.settings();
        let decision = settings.roles.decide(&identity.claims);
        let client = ClientInfo {
            ip: source_ip.clone(),
            user_agent: None,
        };
        let user = self
            .oidc_account(settings, &identity, &decision, &client)
            .await?;
        if user.disabled {
            return Err(AppError::Unauthenticated);
        }
        let expires_at = identity
            .claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .and_then(|exp| DateTime::<Utc>::from_timestamp(exp, 0))
            .unwrap_or_else(Utc::now);
        Ok(Subject {
            user,
            credential: Credential::OidcToken {
                provider: settings.id.clone(),
                expires_at,
            },
            source_ip,
        })
    }

    /// Re-checks a bearer JWT's subject for an open event stream: the
    /// token's expiry, and the account's standing now.
    pub(crate) async fn oidc_token_recheck(
        &self,
        user: UserId,
        provider: &str,
        expires_at: DateTime<Utc>,
        source_ip: Option<String>,
    ) -> Result<Subject, AppError> {
        if Utc::now() >= expires_at {
            return Err(AppError::Unauthenticated);
        }
        let user = self.store().user_get(user).await?;
        if user.disabled {
            return Err(AppError::Unauthenticated);
        }
        Ok(Subject {
            user,
            credential: Credential::OidcToken {
                provider: provider.to_owned(),
                expires_at,
            },
            source_ip,
        })
    }

    /// The account of `identity`: found by issuer + subject, else linked by
    /// verified e-mail (when the provider allows), else made. Its role is
    /// the one `decision` gives, changed (and audited) when it differs.
    async fn oidc_account(
        &self,
        settings: &ProviderSettings,
        identity: &Identity,
        decision: &RoleDecision,
        client: &ClientInfo,
    ) -> Result<User, AppError> {
        let linked = self
            .store()
            .oidc_identity_user(&identity.issuer, &identity.subject)
            .await?;
        let Some(role) = decision.role() else {
            let known = match linked {
                Some(id) => self.store().user_get(id).await.ok(),
                None => None,
            };
            metrics::counter!("overvisor_logins_total", "outcome" => "no_role").increment(1);
            self.audit_oidc(
                &settings.id,
                known.as_ref(),
                client,
                Outcome::Denied,
                format!("sub={:?}: no role mapped", identity.subject),
            )
            .await;
            return Err(AppError::NoRole(settings.display_name.clone()));
        };
        let user = match linked {
            Some(id) => self.store().user_get(id).await?,
            None => match self.oidc_link_by_email(settings, identity).await? {
                Some(user) => user,
                None => self.oidc_user_create(settings, identity, role).await?,
            },
        };
        if user.role == role {
            return Ok(user);
        }
        let changes = overvisor_model::account::UserChanges {
            role: Some(role),
            ..Default::default()
        };
        let updated = self
            .store()
            .user_update(user.id, &changes, Utc::now())
            .await?;
        self.events().credentials_changed(user.id);
        self.audit_oidc(
            &settings.id,
            Some(&updated),
            client,
            Outcome::Success,
            format!("role {} -> {} ({decision})", user.role, role),
        )
        .await;
        Ok(updated)
    }

    async fn oidc_link_by_email(
        &self,
        settings: &ProviderSettings,
        identity: &Identity,
    ) -> Result<Option<User>, AppError> {
        let Some(email) = identity
            .verified_email()
            .filter(|_| settings.link_verified_email)
        else {
            return Ok(None);
        };
        let [id] = self.store().users_with_email(email).await?[..] else {
            return Ok(None);
        };
        self.store()
            .oidc_identity_link(id, &identity.issuer, &identity.subject, Utc::now())
            .await?;
        let user = self.store().user_get(id).await?;
        let system = system_subject(&user);
        self.audit(
            &system,
            "user.link_oidc",
            Target::user(id),
            Outcome::Success,
            Some(format!("provider={} by verified e-mail", settings.id)),
        )
        .await;
        Ok(Some(user))
    }

    /// Makes the account of a first sign-in, named after what the provider
    /// calls the person (made unique with a suffix when taken).
    async fn oidc_user_create(
        &self,
        settings: &ProviderSettings,
        identity: &Identity,
        role: Role,
    ) -> Result<User, AppError> {
        let base = account_name(identity.preferred_name().unwrap_or(&identity.subject));
        let now = Utc::now();
        for attempt in 0..10u32 {
            let name = match attempt {
                0 => base.clone(),
                n if n < 9 => format!("{base}-{}", n + 1),
                _ => format!(
                    "{base}-{}",
                    crate::credentials::random_token(4).to_lowercase()
                ),
            };
            let name = UserName::parse(&name).or_else(|_| UserName::parse("oidc-user"))?;
            let email = identity
                .email()
                .and_then(|e| Email::parse(e).ok())
                .map_or_else(|| Email::parse(&format!("{name}@oidc.invalid")), Ok)?;
            let user = User {
                id: UserId::new(),
                name,
                email,
                role,
                disabled: false,
                created_at: now,
                updated_at: now,
            };
            match self
                .store()
                .oidc_user_insert(&user, &identity.issuer, &identity.subject)
                .await
            {
                Ok(()) => {
                    self.ssh_identity_create(&user).await?;
                    self.audit(
                        &system_subject(&user),
                        "user.create",
                        Target::user(user.id),
                        Outcome::Success,
                        Some(format!("role={role} via oidc provider={}", settings.id)),
                    )
                    .await;
                    return Ok(user);
                }
                Err(StoreError::Conflict(_)) => {
                    // Another request made this identity's account first.
                    if let Some(id) = self
                        .store()
                        .oidc_identity_user(&identity.issuer, &identity.subject)
                        .await?
                    {
                        return Ok(self.store().user_get(id).await?);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Conflict(
            "no free account name for this identity; ask an administrator".into(),
        ))
    }

    async fn audit_oidc(
        &self,
        provider: &str,
        user: Option<&User>,
        client: &ClientInfo,
        outcome: Outcome,
        detail: String,
    ) {
        self.audit_raw(NewAuditEvent {
            actor_id: user.map(|u| u.id),
            actor_name: user.map(|u| u.name.to_string()),
            via: Some(format!("oidc:{provider}")),
            source_ip: client.ip.clone(),
            action: "auth.login".into(),
            target: user.map(|u| format!("user:{}", u.id)),
            target_owner: user.map(|u| u.id),
            outcome,
            detail: Some(format!("oidc provider={provider} {detail}")),
        })
        .await;
    }
}

/// The service acting for an identity provider on the account it vouches
/// for (creating or linking it), as the audit log names it.
fn system_subject(user: &User) -> Subject {
    Subject {
        user: user.clone(),
        credential: Credential::System,
        source_ip: None,
    }
}

/// An account name from what a provider calls someone: the part before an
/// '@', lowercased, other characters turned into '-', starting with a
/// letter.
fn account_name(raw: &str) -> String {
    let local = raw.split('@').next().unwrap_or(raw);
    let mut name: String = local
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(UserName::MAX_LEN - 8)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "u-");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_fit_the_rules() {
        for (raw, want) in [
            ("alice", "alice"),
            ("Alice.Smith@corp.example", "alice.smith"),
            ("3f2a-uuid", "u-3f2a-uuid"),
            ("Jürgen Groß", "j-rgen-gro-"),
            ("", "u-"),
        ] {
            let got = account_name(raw);
            assert_eq!(got, want);
            assert!(UserName::parse(&got).is_ok(), "{got}");
        }
        assert!(account_name(&"x".repeat(200)).len() <= UserName::MAX_LEN - 8);
    }
}
