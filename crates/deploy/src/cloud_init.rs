//! The cloud-init NoCloud seed of a Linux deployment: `user-data` (the
//! account, its SSH keys and password hash, host name, locale, time zone,
//! packages) and `meta-data` (instance id, host name), on an ISO labelled
//! `CIDATA`.
//!
//! Both files are written as JSON by serde_json. JSON is YAML, cloud-init
//! reads `#cloud-config` JSON like any other (its schema test proves it for
//! every kind of request), and it leaves no room for YAML's implicit typing
//! (`no`, `0755`, `1e3`) to reinterpret a value. A YAML serializer would add
//! nothing: serde_yaml is deprecated and its successors are young forks.

use serde::Serialize;
use uuid::Uuid;

use crate::GenerateError;
use crate::request::Deployment;
use crate::secret::GeneratedPassword;

/// The volume id cloud-init's NoCloud data source looks for.
pub const VOLUME_ID: &str = "CIDATA";

/// The two files of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloudSeed {
    pub user_data: String,
    pub meta_data: String,
}

/// `#cloud-config`: only the keys Overvisor sets.
#[derive(Serialize)]
struct CloudConfig<'a> {
    hostname: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fqdn: Option<&'a str>,
    /// Empty when the guest agent makes the accounts: the seed then holds
    /// no hash and no key.
    users: Vec<User<'a>>,
    /// Password log-in over SSH only when there is no key to log in with.
    ssh_pwauth: bool,
    disable_root: bool,
    locale: String,
    timezone: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    packages: &'a [String],
}

#[derive(Serialize)]
struct User<'a> {
    name: &'a str,
    shell: &'a str,
    /// As the distributions' own cloud user: the account is reached with a
    /// key or the generated password, which are the credentials that matter.
    sudo: &'a str,
    lock_passwd: bool,
    hashed_passwd: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    ssh_authorized_keys: &'a [String],
}

#[derive(Serialize)]
struct MetaData<'a> {
    #[serde(rename = "instance-id")]
    instance_id: String,
    #[serde(rename = "local-hostname")]
    local_hostname: &'a str,
}

impl NoCloudSeed {
    /// The seed for `deployment`. `instance_id` is the VM's UUID: cloud-init
    /// runs its first-boot modules once per instance id.
    pub fn new(
        deployment: &Deployment,
        password: &GeneratedPassword,
        instance_id: Uuid,
    ) -> Result<Self, GenerateError> {
        let user = User {
            name: &deployment.username,
            shell: "/bin/bash",
            sudo: "ALL=(ALL) NOPASSWD:ALL",
            lock_passwd: false,
            hashed_passwd: password.sha512_crypt()?,
            ssh_authorized_keys: &deployment.ssh_keys,
        };
        Self::with_users(deployment, vec![user], instance_id)
    }

    /// The seed of an agent-provisioned VM: host name, locale, time zone
    /// and packages, but no account, hash or key (the agent makes those).
    pub fn without_secrets(
        deployment: &Deployment,
        instance_id: Uuid,
    ) -> Result<Self, GenerateError> {
        Self::with_users(deployment, Vec::new(), instance_id)
    }

    fn with_users(
        deployment: &Deployment,
        users: Vec<User<'_>>,
        instance_id: Uuid,
    ) -> Result<Self, GenerateError> {
        let config = CloudConfig {
            hostname: &deployment.hostname,
            fqdn: deployment.fqdn.as_deref(),
            users,
            ssh_pwauth: deployment.ssh_keys.is_empty(),
            disable_root: true,
            locale: deployment.locale.posix(),
            timezone: &deployment.timezone,
            packages: &deployment.profile.packages,
        };
        let meta = MetaData {
            instance_id: format!("iid-{instance_id}"),
            local_hostname: &deployment.hostname,
        };
        Ok(Self {
            user_data: format!(
                "#cloud-config\n{}\n",
                serde_json::to_string_pretty(&config)?
            ),
            meta_data: format!("{}\n", serde_json::to_string_pretty(&meta)?),
        })
    }

    /// The seed ISO: `user-data` and `meta-data` on a `CIDATA` volume.
    pub fn iso(&self) -> Result<Vec<u8>, GenerateError> {
        crate::iso::build(
            VOLUME_ID,
            &[
                ("meta-data", self.meta_data.as_bytes()),
                ("user-data", self.user_data.as_bytes()),
            ],
        )
    }
}

#[cfg(test)]
mod tests;
