//! Deployment profiles: what the service offers to deploy. The catalog is
//! read once at start-up (a bad operator profile stops it there) and is the
//! same for every user; listing it needs only a valid account.

use overvisor_deploy::Profile;

use crate::authz::{Action, Resource, Subject, authorize};
use crate::{App, AppError};

impl App {
    /// Every profile, by name.
    pub fn profiles_list(&self, subject: &Subject) -> Result<Vec<Profile>, AppError> {
        authorize(subject, Action::Read, Resource::OwnedBy(subject.id()))?;
        Ok(self.config().profiles.profiles().cloned().collect())
    }
}
