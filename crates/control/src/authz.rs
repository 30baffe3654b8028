//! The single authorization point: `authorize(subject, action, resource)`.
//!
//! Every application function calls it before reading or changing anything,
//! and gets back an [`Authorized`] proof that store calls are made with. A
//! resource owned by someone the subject may not see is reported as
//! `NotFound`, never `Forbidden`, so ids of other tenants leak nothing.

use overvisor_model::account::{Credential, Role, User, UserId};
use overvisor_model::operation::Grant;

use crate::AppError;

/// Who is making a request, as established by authentication.
#[derive(Debug, Clone)]
pub struct Subject {
    pub user: User,
    pub credential: Credential,
    pub source_ip: Option<String>,
}

impl Subject {
    pub fn id(&self) -> UserId {
        self.user.id
    }

    pub fn role(&self) -> Role {
        self.user.role
    }
}

/// What a subject wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look at something.
    Read,
    /// Change an account's own credentials (API keys, sessions, password).
    ManageCredentials,
    /// Create, change or disable user accounts.
    AdministerUsers,
    /// Change infrastructure (hosts, VMs).
    Operate,
}

/// What an action is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A user's account and what hangs off it (keys, sessions, SSH key).
    Account(UserId),
    /// The set of all user accounts.
    UserDirectory,
    /// Audit events concerning one user.
    AuditOf(UserId),
    /// The whole audit log.
    AuditAll,
    /// Infrastructure owned by a user (hosts and their VMs).
    OwnedBy(UserId),
    /// Every user's infrastructure and jobs at once (admin listings).
    Everyone,
}

/// Proof that `authorize` allowed an action on a value. Only this module can
/// make one, so a function taking `Authorized<T>` cannot be reached with an
/// unchecked id.
#[derive(Debug, Clone, Copy)]
pub struct Authorized<T>(T);

impl<T> Authorized<T> {
    pub fn get(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

/// Decides whether `subject` may do `action` to `resource`.
pub fn authorize(
    subject: &Subject,
    action: Action,
    resource: Resource,
) -> Result<Authorized<Resource>, AppError> {
    decide(
        subject.id(),
        subject.role(),
        subject.user.disabled,
        action,
        resource,
    )
    .map(|()| Authorized(resource))
}

/// Authorizes `action` on `owner`'s infrastructure and returns the proof as
/// data, for a job to carry: its runner acts on the grant without asking
/// again.
pub fn grant(subject: &Subject, action: Action, owner: UserId) -> Result<Grant, AppError> {
    authorize(subject, action, Resource::OwnedBy(owner))?;
    Ok(grant_of(subject, action, owner))
}

fn grant_of(subject: &Subject, action: Action, owner: UserId) -> Grant {
    Grant {
        subject: subject.id(),
        subject_name: subject.user.name.to_string(),
        via: subject.credential.to_string(),
        source_ip: subject.source_ip.clone(),
        role: crate::jobs::role_for(action),
        owner,
    }
}

impl<T: Owned> Authorized<T> {
    /// The grant this proof stands for, for a job to carry.
    pub fn grant(&self, subject: &Subject, action: Action) -> Grant {
        grant_of(subject, action, self.0.owner())
    }
}

/// A value a job may act on under `grant`: the grant covers the owner's
/// infrastructure, so the value must still belong to that owner.
pub(crate) fn granted<T: Owned>(grant: &Grant, value: T) -> Result<Authorized<T>, AppError> {
    if value.owner() == grant.owner {
        Ok(Authorized(value))
    } else {
        Err(AppError::NotFound("resource"))
    }
}

/// Something that belongs to a user (a host, and what hangs off it).
pub trait Owned {
    fn owner(&self) -> UserId;
}

/// Authorizes `action` on a value owned by someone and hands the value back
/// as the proof (`Authorized<Host>`), so functions that reach a host can
/// require it.
pub fn authorize_owned<T: Owned>(
    subject: &Subject,
    action: Action,
    value: T,
) -> Result<Authorized<T>, AppError> {
    authorize(subject, action, Resource::OwnedBy(value.owner()))?;
    Ok(Authorized(value))
}

/// The proof for the service acting on its own behalf (the inventory's
/// background reconcilers): there is no subject to check, so only code of
/// this crate may claim it.
pub(crate) fn authorize_system<T>(value: T) -> Authorized<T> {
    Authorized(value)
}

/// The whole policy as one pure function, so it can be tested as a table.
fn decide(
    me: UserId,
    role: Role,
    disabled: bool,
    action: Action,
    resource: Resource,
) -> Result<(), AppError> {
    if disabled {
        return Err(AppError::Unauthenticated);
    }
    let admin = role == Role::Admin;
    match (resource, action) {
        (
            Resource::Account(owner) | Resource::AuditOf(owner),
            Action::Read | Action::ManageCredentials,
        ) => {
            if owner == me || admin {
                Ok(())
            } else {
                Err(AppError::NotFound(resource_name(resource)))
            }
        }
        (Resource::Account(owner), Action::AdministerUsers) => {
            if admin {
                Ok(())
            } else if owner == me {
                Err(AppError::Forbidden("administer user accounts"))
            } else {
                Err(AppError::NotFound("user"))
            }
        }
        (Resource::UserDirectory, Action::Read | Action::AdministerUsers) => {
            if admin {
                Ok(())
            } else {
                Err(AppError::Forbidden("administer user accounts"))
            }
        }
        (Resource::Everyone, Action::Read) => {
            if admin {
                Ok(())
            } else {
                Err(AppError::Forbidden("see every user's infrastructure"))
            }
        }
        (Resource::AuditAll, Action::Read) => {
            if admin {
                Ok(())
            } else {
                Err(AppError::Forbidden("read the whole audit log"))
            }
        }
        (Resource::OwnedBy(owner), Action::Read) => {
            if owner == me || admin {
                Ok(())
            } else {
                Err(AppError::NotFound(resource_name(resource)))
            }
        }
        (Resource::OwnedBy(owner), Action::Operate) => {
            if owner != me && !admin {
                Err(AppError::NotFound(resource_name(resource)))
            } else if role >= Role::Operator {
                Ok(())
            } else {
                Err(AppError::Forbidden(
                    "change infrastructure (operator role required)",
                ))
            }
        }
        _ => Err(AppError::Forbidden("do this")),
    }
}

fn resource_name(resource: Resource) -> &'static str {
    match resource {
        Resource::Account(_) | Resource::UserDirectory => "user",
        Resource::AuditOf(_) | Resource::AuditAll => "audit log",
        Resource::OwnedBy(_) | Resource::Everyone => "resource",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole role × action × ownership matrix.
    #[test]
    fn policy_matrix() {
        let me = UserId::new();
        let other = UserId::new();
        use Action::*;
        // (resource, action, [reader, operator, admin]) where 'y' = allowed,
        // 'n' = not found, 'f' = forbidden.
        let table: &[(Resource, Action, &str)] = &[
            (Resource::Account(me), Read, "yyy"),
            (Resource::Account(me), ManageCredentials, "yyy"),
            (Resource::Account(me), AdministerUsers, "ffy"),
            (Resource::Account(other), Read, "nny"),
            (Resource::Account(other), ManageCredentials, "nny"),
            (Resource::Account(other), AdministerUsers, "nny"),
            (Resource::Account(me), Operate, "fff"),
            (Resource::UserDirectory, Read, "ffy"),
            (Resource::UserDirectory, AdministerUsers, "ffy"),
            (Resource::AuditOf(me), Read, "yyy"),
            (Resource::AuditOf(other), Read, "nny"),
            (Resource::AuditAll, Read, "ffy"),
            (Resource::OwnedBy(me), Read, "yyy"),
            (Resource::OwnedBy(me), Operate, "fyy"),
            (Resource::OwnedBy(other), Read, "nny"),
            (Resource::OwnedBy(other), Operate, "nny"),
            (Resource::Everyone, Read, "ffy"),
            (Resource::Everyone, Operate, "fff"),
        ];
        for (resource, action, expect) in table {
            for (role, want) in Role::ALL.iter().zip(expect.chars()) {
                let got = match decide(me, *role, false, *action, *resource) {
                    Ok(()) => 'y',
                    Err(AppError::NotFound(_)) => 'n',
                    Err(AppError::Forbidden(_)) => 'f',
                    Err(e) => panic!("unexpected {e:?}"),
                };
                assert_eq!(got, want, "{role:?} {action:?} {resource:?}");
            }
        }
    }

    #[test]
    fn disabled_accounts_can_do_nothing() {
        let me = UserId::new();
        assert!(matches!(
            decide(me, Role::Admin, true, Action::Read, Resource::Account(me)),
            Err(AppError::Unauthenticated)
        ));
    }
}
