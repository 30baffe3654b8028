//! The host registry: register, list, show, change and remove hypervisor
//! hosts, confirm their SSH host keys, and let host agents enrol themselves.
//!
//! Hosts belong to their owner; readers may look, operators and admins may
//! change (through [`authorize_owned`]), admins see everyone's. A host is
//! only ever contacted with its host key pinned: either an operator
//! confirmed the fingerprint a probe showed, or explicitly asked for trust
//! on first use (the key presented at registration is then recorded).

use chrono::Utc;
use overvisor_hv::ClientKey;
use overvisor_model::InvalidInput;
use overvisor_model::account::{Outcome, UserId};
use overvisor_model::host::{CredentialChange, HostChanges, HostSecret, NewHost};
use overvisor_model::host::{
    DEFAULT_LIBVIRT_URI, DEFAULT_SSH_USER, Host, HostFacts, HostId, HostKeyFingerprint, HostKind,
    check_host_name, check_libvirt_uri, check_ssh_user, normalize_tags, parse_host_address,
};
use overvisor_model::job::Job;
use overvisor_model::operation::{CredentialEdit, Grant, Operation};

use crate::audit::Target;
use crate::authz::{Action, Authorized, Owned, Resource, Subject, authorize, authorize_owned};
use crate::{App, AppError};

impl Owned for Host {
    fn owner(&self) -> UserId {
        self.owner
    }
}

/// A host change that passed every check, ready to write.
struct PreparedUpdate {
    current: Host,
    host: Host,
    credential: CredentialChange,
}

/// How long recording an already-made change may take to show as finished.
const HOST_JOB_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a host agent reports about its host when it enrols.
#[derive(Debug, Clone, Default)]
pub struct Enrolment {
    /// Default libvirt; a host enrolled again keeps its kind (another one
    /// is a conflict).
    pub kind: Option<HostKind>,
    pub hostname: Option<String>,
    pub ip_address: Option<String>,
    pub port: Option<u16>,
    pub ssh_user: Option<String>,
    /// The host's own key, read by the agent on the host.
    pub host_key_fingerprint: Option<HostKeyFingerprint>,
}

/// The outcome of an enrolment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub host: Host,
    pub created: bool,
    /// The owner's public key, for the automation account's `authorized_keys`.
    pub authorized_key: String,
}

/// The host key a probe saw.
#[derive(Debug, Clone)]
pub struct ProbedKey {
    pub fingerprint: HostKeyFingerprint,
    pub public_key: String,
}

pub(crate) fn host_target(host: &Host) -> Target {
    Target::named(format!("host:{}", host.id), host.owner)
}

fn check_port(port: u16) -> Result<u16, InvalidInput> {
    if port == 0 {
        return Err(InvalidInput::new("port", "must be between 1 and 65535"));
    }
    Ok(port)
}

/// Refuses secrets we could not use, without echoing them.
fn check_secret(secret: &HostSecret) -> Result<(), AppError> {
    match secret {
        HostSecret::PrivateKey(pem) => ClientKey::from_openssh(pem).map(|_| ()).map_err(|_| {
            InvalidInput::new(
                "credential.private_key",
                "must be an OpenSSH private key without a passphrase",
            )
            .into()
        }),
        HostSecret::Password(_) => Err(InvalidInput::new(
            "credential.password",
            "password logins are not supported yet; upload a private key",
        )
        .into()),
    }
}

impl App {
    /// Records the outcome of a change to the audit log and passes the
    /// result on. Error texts are secret-free by construction.
    pub(crate) async fn audited<T>(
        &self,
        subject: &Subject,
        action: &str,
        target: Target,
        detail: Option<String>,
        result: Result<T, AppError>,
    ) -> Result<T, AppError> {
        let (outcome, detail) = match &result {
            Ok(_) => (Outcome::Success, detail),
            Err(AppError::Forbidden(_)) => (Outcome::Denied, detail),
            Err(e) => (
                Outcome::Failure,
                Some(match detail {
                    Some(d) => format!("{d}; {e}"),
                    None => e.to_string(),
                }),
            ),
        };
        self.audit(subject, action, target, outcome, detail).await;
        result
    }

    /// Loads a host and authorizes `action` on it. Another tenant's host is
    /// "host not found"; a reader trying to change one is audited as denied.
    pub async fn host_authorized(
        &self,
        subject: &Subject,
        id: HostId,
        action: Action,
        audit_as: &str,
    ) -> Result<Authorized<Host>, AppError> {
        let host = self.store().host_get(id).await?;
        let target = host_target(&host);
        match authorize_owned(subject, action, host) {
            Ok(h) => Ok(h),
            Err(AppError::NotFound(_)) => Err(AppError::NotFound("host")),
            Err(e @ AppError::Forbidden(_)) => {
                self.audited(subject, audit_as, target, None, Err(e)).await
            }
            Err(e) => Err(e),
        }
    }

    /// Shows the key `address:port` presents, for the operator to confirm.
    pub async fn host_probe(
        &self,
        subject: &Subject,
        address: &str,
        port: u16,
    ) -> Result<ProbedKey, AppError> {
        // Probing opens connections from the control plane: operators only.
        authorize(subject, Action::Operate, Resource::OwnedBy(subject.id()))?;
        let address = parse_host_address(address)?;
        let key = self.probe_key(&address, check_port(port)?).await?;
        Ok(ProbedKey {
            fingerprint: key.fingerprint,
            public_key: key.public_key,
        })
    }

    /// Registers a host: checks it now (400/403/409, a probe for trust on
    /// first use), then records it in a `host.create` job and answers once
    /// that job has finished, so the caller learns the host's id.
    pub async fn host_create(
        &self,
        subject: &Subject,
        new: NewHost,
    ) -> Result<(Host, Job), AppError> {
        self.host_register(subject, new, false).await
    }

    /// Waits for a quick host job and answers with the host it wrote.
    async fn host_job_outcome(&self, subject: &Subject, job: Job) -> Result<(Host, Job), AppError> {
        let job = self
            .job_follow(subject, &job, HOST_JOB_WAIT)
            .await
            .map_err(|e| match e {
                // The one write fails for a clash that appeared since the check.
                AppError::HostFailed(message) => AppError::Conflict(message),
                e => e,
            })?;
        let host = job
            .result
            .as_ref()
            .and_then(|r| r.get("host"))
            .and_then(|h| serde_json::from_value::<Host>(h.clone()).ok())
            .ok_or_else(|| {
                AppError::Internal(format!("job {} has not recorded the host yet", job.id))
            })?;
        Ok((host, job))
    }

    /// Registers a host. Without a fingerprint it probes for one under
    /// trust on first use; else, with `allow_unconfirmed` (enrolment), the
    /// host is recorded unconfirmed — never contacted until an operator
    /// sets a fingerprint; else the request is refused.
    async fn host_register(
        &self,
        subject: &Subject,
        new: NewHost,
        allow_unconfirmed: bool,
    ) -> Result<(Host, Job), AppError> {
        let grant = crate::authz::grant(subject, Action::Operate, subject.id())?;
        let address = parse_host_address(&new.address)?;
        let name = new.name.unwrap_or_else(|| address.clone());
        check_host_name(&name)?;
        let port = check_port(new.port.unwrap_or(22))?;
        let ssh_user = new.ssh_user.unwrap_or_else(|| DEFAULT_SSH_USER.to_owned());
        check_ssh_user(&ssh_user)?;
        let libvirt_uri = new
            .libvirt_uri
            .unwrap_or_else(|| DEFAULT_LIBVIRT_URI.to_owned());
        check_libvirt_uri(&libvirt_uri)?;
        let tags = normalize_tags(new.tags)?;
        if let Some(secret) = &new.credential {
            check_secret(secret)?;
        }
        let now = Utc::now();
        let mut host = Host {
            id: HostId::new(),
            owner: subject.id(),
            name,
            kind: new.kind,
            address,
            port,
            ssh_user,
            libvirt_uri,
            tags,
            host_key_fingerprint: new.host_key_fingerprint,
            has_credential: new.credential.is_some(),
            created_at: now,
            updated_at: now,
        };
        let target = host_target(&host);
        let checked = async {
            self.host_check_unique(&host).await?;
            match (&host.host_key_fingerprint, new.trust_on_first_use) {
                (Some(_), _) => {}
                (None, true) => {
                    let key = self.probe_key(&host.address, host.port).await?;
                    host.host_key_fingerprint = Some(key.fingerprint);
                }
                (None, false) if allow_unconfirmed => {}
                (None, false) => {
                    return Err(InvalidInput::new(
                        "host_key_fingerprint",
                        "is required: probe the host (POST /api/v1/hosts/probe), confirm the \
                         fingerprint and send it, or set trust_on_first_use",
                    )
                    .into());
                }
            }
            Ok(())
        }
        .await;
        if let Err(refused) = checked {
            let detail = format!("address={} port={}", host.address, host.port);
            return self
                .audited(subject, "host.create", target, Some(detail), Err(refused))
                .await;
        }
        let secret = new.credential.as_ref().map(HostSecret::to_sealable);
        let op = Operation::HostCreate {
            host: Box::new(host),
            trust_on_first_use: new.trust_on_first_use,
        };
        let job = self.job_submit(grant, op, secret, &[]).await?;
        self.host_job_outcome(subject, job).await
    }

    /// Refuses a name or address another host of the same owner has, now
    /// rather than in the job (the store's unique keys still catch a race).
    async fn host_check_unique(&self, host: &Host) -> Result<(), AppError> {
        for other in self.store().hosts_list(Some(host.owner)).await? {
            if other.id == host.id {
                continue;
            }
            if other.name == host.name {
                return Err(AppError::Conflict(format!(
                    "a host with this name already exists ({})",
                    host.name
                )));
            }
            if other.address == host.address {
                return Err(AppError::Conflict(format!(
                    "a host with this address already exists ({})",
                    host.address
                )));
            }
        }
        Ok(())
    }

    /// The caller's hosts; an administrator sees everyone's.
    pub async fn hosts_list(&self, subject: &Subject) -> Result<Vec<Host>, AppError> {
        authorize(subject, Action::Read, Resource::OwnedBy(subject.id()))?;
        let owner = match authorize(subject, Action::Read, Resource::Everyone) {
            Ok(_) => None,
            Err(_) => Some(subject.id()),
        };
        Ok(self.store().hosts_list(owner).await?)
    }

    pub async fn host_get(&self, subject: &Subject, id: HostId) -> Result<Host, AppError> {
        let host = self
            .host_authorized(subject, id, Action::Read, "host.read")
            .await?;
        Ok(host.into_inner())
    }

    /// Checks a change now (400/403/404/409: nothing changes, no job
    /// exists), then writes it in a `host.update` job.
    pub async fn host_update_job(
        &self,
        subject: &Subject,
        id: HostId,
        changes: HostChanges,
    ) -> Result<Job, AppError> {
        let (grant, prepared) = self.host_update_prepare(subject, id, changes).await?;
        let PreparedUpdate {
            current,
            host,
            credential,
        } = prepared;
        let summary = change_summary(&current, &host, &credential);
        let (edit, secret) = match credential {
            CredentialChange::Keep => (CredentialEdit::Keep, None),
            CredentialChange::Set(secret) => (CredentialEdit::Set, Some(secret.to_sealable())),
            CredentialChange::Remove => (CredentialEdit::Remove, None),
        };
        let op = Operation::HostUpdate {
            host: Box::new(host),
            credential: edit,
            summary,
        };
        self.job_submit(grant, op, secret, &[]).await
    }

    async fn host_update_prepare(
        &self,
        subject: &Subject,
        id: HostId,
        changes: HostChanges,
    ) -> Result<(Grant, PreparedUpdate), AppError> {
        let current = self
            .host_authorized(subject, id, Action::Operate, "host.update")
            .await?;
        let grant = current.grant(subject, Action::Operate);
        let current = current.into_inner();
        let mut host = current.clone();
        if let Some(name) = changes.name {
            check_host_name(&name)?;
            host.name = name;
        }
        if let Some(address) = changes.address {
            host.address = parse_host_address(&address)?;
        }
        if let Some(port) = changes.port {
            host.port = check_port(port)?;
        }
        if let Some(user) = changes.ssh_user {
            check_ssh_user(&user)?;
            host.ssh_user = user;
        }
        if let Some(uri) = changes.libvirt_uri {
            check_libvirt_uri(&uri)?;
            host.libvirt_uri = uri;
        }
        if let Some(tags) = changes.tags {
            host.tags = normalize_tags(tags)?;
        }
        if let Some(f) = changes.host_key_fingerprint {
            host.host_key_fingerprint = Some(f);
        }
        let credential = match (changes.credential, changes.remove_credential) {
            (Some(_), true) => {
                return Err(InvalidInput::new(
                    "credential",
                    "give a credential or remove_credential, not both",
                )
                .into());
            }
            (Some(secret), false) => {
                check_secret(&secret)?;
                CredentialChange::Set(secret)
            }
            (None, true) => CredentialChange::Remove,
            (None, false) => CredentialChange::Keep,
        };
        self.host_check_unique(&host).await?;
        host.updated_at = Utc::now();
        Ok((
            grant,
            PreparedUpdate {
                current,
                host,
                credential,
            },
        ))
    }

    /// Checks access now (403/404, no job), then removes the host in a
    /// `host.delete` job.
    pub async fn host_delete_job(&self, subject: &Subject, id: HostId) -> Result<Job, AppError> {
        let host = self
            .host_authorized(subject, id, Action::Operate, "host.delete")
            .await?;
        let grant = host.grant(subject, Action::Operate);
        let op = Operation::HostDelete {
            host: Box::new(host.into_inner()),
        };
        self.job_submit(grant, op, None, &[]).await
    }

    /// What the host says about itself, live.
    pub async fn host_facts(&self, subject: &Subject, id: HostId) -> Result<HostFacts, AppError> {
        let host = self
            .host_authorized(subject, id, Action::Read, "host.read")
            .await?;
        let driver = self.host_driver(&host).await?;
        driver
            .host_facts()
            .await
            .map_err(|e| self.host_error(host.get(), e))
    }

    /// `POST /v1/servers/connect`: a host agent, with its owner's API key,
    /// creates or updates the owner's host at its address (never a second
    /// one) and learns which public key to authorize.
    pub async fn host_enrol(
        &self,
        subject: &Subject,
        enrolment: Enrolment,
    ) -> Result<Enrolled, AppError> {
        authorize(subject, Action::Operate, Resource::OwnedBy(subject.id()))?;
        let ip = enrolment
            .ip_address
            .as_deref()
            .map(|raw| {
                raw.parse::<std::net::IpAddr>()
                    .map(|ip| ip.to_string())
                    .map_err(|_| InvalidInput::new("ip_address", "is not an IP address"))
            })
            .transpose()?;
        let hostname = enrolment
            .hostname
            .as_deref()
            .map(|h| {
                parse_host_address(h)
                    .map_err(|_| InvalidInput::new("hostname", "is not a valid hostname"))
            })
            .transpose()?;
        let address = ip.clone().or_else(|| hostname.clone()).ok_or_else(|| {
            InvalidInput::new("hostname", "give hostname or ip_address (or both)")
        })?;
        if let Some(port) = enrolment.port {
            check_port(port)?;
        }
        if let Some(user) = &enrolment.ssh_user {
            check_ssh_user(user)?;
        }
        let owner = subject.id();
        let mut existing = self.store().host_by_address(owner, &address).await?;
        if existing.is_none()
            && let (Some(_), Some(name)) = (&ip, &hostname)
        {
            // Enrolled by name before, by address now: the same host.
            existing = self.store().host_by_address(owner, name).await?;
        }
        let authorized_key = self.store().ssh_public_key(owner).await?;
        let (host, created) = match existing {
            Some(current) if enrolment.kind.is_some_and(|k| k != current.kind) => {
                return Err(AppError::Conflict(format!(
                    "host {} at {} is enrolled as a {} host; remove it first to enrol it as {}",
                    current.name,
                    current.address,
                    current.kind.label(),
                    enrolment.kind.unwrap_or(current.kind).label()
                )));
            }
            Some(current) => {
                let changes = HostChanges {
                    address: Some(address),
                    port: enrolment.port,
                    ssh_user: enrolment.ssh_user,
                    host_key_fingerprint: enrolment.host_key_fingerprint,
                    ..HostChanges::default()
                };
                let job = self.host_update_job(subject, current.id, changes).await?;
                (self.host_job_outcome(subject, job).await?.0, false)
            }
            None => {
                let new = NewHost {
                    name: hostname.filter(|h| *h != address),
                    kind: enrolment.kind.unwrap_or(HostKind::Libvirt),
                    address,
                    port: enrolment.port,
                    ssh_user: enrolment.ssh_user,
                    libvirt_uri: None,
                    tags: Vec::new(),
                    host_key_fingerprint: enrolment.host_key_fingerprint,
                    // The agent did not say: leave the key for an operator to confirm.
                    trust_on_first_use: false,
                    credential: None,
                };
                (self.host_register(subject, new, true).await?.0, true)
            }
        };
        Ok(Enrolled {
            host,
            created,
            authorized_key,
        })
    }
}

/// A secret-free account of what an update changed, for the audit log.
fn change_summary(old: &Host, new: &Host, credential: &CredentialChange) -> String {
    let mut parts = Vec::new();
    if old.name != new.name {
        parts.push(format!("name={}", new.name));
    }
    if old.address != new.address {
        parts.push(format!("address={}", new.address));
    }
    if old.port != new.port {
        parts.push(format!("port={}", new.port));
    }
    if old.ssh_user != new.ssh_user {
        parts.push(format!("ssh_user={}", new.ssh_user));
    }
    if old.libvirt_uri != new.libvirt_uri {
        parts.push(format!("libvirt_uri={}", new.libvirt_uri));
    }
    if old.tags != new.tags {
        parts.push(format!("tags={}", new.tags.join(",")));
    }
    if old.host_key_fingerprint != new.host_key_fingerprint
        && let Some(f) = &new.host_key_fingerprint
    {
        parts.push(format!("host_key={f}"));
    }
    match credential {
        CredentialChange::Keep => {}
        CredentialChange::Set(_) => parts.push("credential replaced".into()),
        CredentialChange::Remove => parts.push("credential removed".into()),
    }
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
#[path = "hosts_tests.rs"]
mod tests;
