//! Operations: every change Overvisor makes, as data. A job stores the
//! operation it runs (what to do, to what), the grant it was authorized
//! with (who, which role, which resource), and one record per step. Because
//! all of that is in the store, any runner of the service can claim a
//! queued job and run it, and a job whose runner died can be resumed from
//! its last finished step or marked interrupted in the step it stopped in.
//!
//! Nothing here performs I/O; the control layer knows how to run each step.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::InvalidInput;
use crate::account::{Role, UserId};
use crate::host::{Host, HostId};
use crate::vm::{VmAction, VmName};

/// What a job does. Serialized into the job's row, so any runner can run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// A lifecycle action on a VM (any [`VmAction`] but delete).
    VmAction {
        host: HostId,
        #[schema(value_type = String)]
        vm: VmName,
        action: VmAction,
    },
    /// Undefines a shut-off VM, with or without its disks.
    VmDelete {
        host: HostId,
        #[schema(value_type = String)]
        vm: VmName,
        with_storage: bool,
    },
    /// Creates a VM from a profile's image (see [`DeploySpec`]). The guest's
    /// user-data (it holds the password hash) travels sealed beside the
    /// operation, never in it.
    VmDeploy {
        host: HostId,
        #[schema(value_type = String)]
        vm: VmName,
        spec: Box<DeploySpec>,
    },
    /// Records a host that passed every check. A credential uploaded with
    /// it travels sealed beside the operation, never in it.
    HostCreate {
        host: Box<Host>,
        /// The key was recorded as presented, not confirmed by a person.
        trust_on_first_use: bool,
    },
    /// Writes a checked change to a host (`host` is the row afterwards).
    HostUpdate {
        host: Box<Host>,
        credential: CredentialEdit,
        /// A secret-free account of the change, for the audit log.
        summary: String,
    },
    /// Removes a host from the registry (its VMs are left alone).
    HostDelete { host: Box<Host> },
    /// Asks hosts for their whole VM list. `single`: the job fails when
    /// that one host cannot answer; over many it succeeds and lists failures.
    InventoryResync { hosts: Vec<HostId>, single: bool },
    /// Test only: sleeps, logging every second (offered with `test_jobs`).
    TestSleep { seconds: u32, fail: bool },
    /// Test only: `steps` steps of `step_millis` each, each with an undo;
    /// step `fail_at` fails and the undo of step `undo_fails` fails (both
    /// 1-based). `resumable` says whether its steps count as idempotent.
    TestSteps {
        steps: u8,
        step_millis: u32,
        fail_at: Option<u8>,
        undo_fails: Option<u8>,
        resumable: bool,
    },
}

/// Everything a deployment job needs besides the sealed user-data, made
/// from a checked request when the job is submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    /// The new VM's UUID: names its files on the host and its seed's
    /// instance id.
    pub uuid: uuid::Uuid,
    pub profile: String,
    /// The base image the disk is an overlay of; `None` for an installer
    /// profile (Windows): its disk starts blank and its seed is the
    /// `Autounattend.xml` media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<DeployImage>,
    /// Files on the host the VM uses besides its own (UEFI firmware, the
    /// installer and driver ISOs): the first step checks each is there and
    /// readable before anything is made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_files: Vec<String>,
    pub disk_gib: u64,
    /// The domain definition, with the paths the job uses.
    pub domain_xml: String,
    /// The NoCloud `meta-data` (no secrets in it); empty for installers.
    pub meta_data: String,
    /// Agent provisioning: the seed carries no secret, and the guest's
    /// agent receives the sealed payload once the VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSeed>,
    /// An installer's last step: wait for Setup to finish, then detach and
    /// delete the Autounattend media (it holds the password in clear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<SetupWait>,
}

/// How an installer deployment waits for Setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupWait {
    /// The longest wait for the guest agent to answer; then the media is
    /// removed anyway and the job says Setup was not seen to finish.
    pub minutes: u32,
    /// Whether the installed system gets a guest agent (from virtio-win):
    /// without one, the wait is only the time limit.
    pub agent_expected: bool,
}

impl SetupWait {
    pub fn limit(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.minutes) * 60)
    }
}

/// What the seed of an agent-provisioned VM carries: public values only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSeed {
    /// `#cloud-config` without accounts, hashes or keys.
    pub user_data: String,
    /// The guest's identity file: its UUID, the deployment's one-time
    /// nonce and the control plane's provisioning public key.
    pub identity: String,
}

/// The base image of a deployment, cached on the host by its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployImage {
    pub url: String,
    /// The SHA-256 the profile pins (lower-case hex); `None` when
    /// `checksums` names the published list the job reads the digest from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksums: Option<ChecksumList>,
    /// A CA certificate on the host that the downloads trust (a mirror
    /// with a private CA), instead of the host's own trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// `qcow2` or `raw`: the overlay's backing format.
    pub format: String,
    /// How the image reaches the host (jobs from before this existed
    /// fetched on the host).
    #[serde(default)]
    pub transfer: ImageTransfer,
}

/// How a deployment's image reaches the host's cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageTransfer {
    /// The host downloads it itself (`curl`, resumable): it needs a route
    /// to the image's server.
    #[default]
    Host,
    /// The control plane downloads it into its own cache and streams it
    /// to the host over the host's SSH connection: for hosts with no
    /// route out.
    Stream,
}

impl ImageTransfer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Stream => "stream",
        }
    }
}

/// A distribution's published checksum list (`SHA256SUMS`, `SHA512SUMS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChecksumList {
    pub url: String,
    pub algorithm: DigestAlgorithm,
}

/// The hash an image is verified with, and its host cache is keyed by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DigestAlgorithm {
    #[default]
    Sha256,
    Sha512,
}

impl DigestAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Length of a digest in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

/// An image's digest: what the host's cache file is named after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageDigest {
    pub algorithm: DigestAlgorithm,
    /// Lower-case hex.
    pub hex: String,
}

/// What a host update does to the host's own credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialEdit {
    Keep,
    /// Replace it with the secret sealed beside the operation.
    Set,
    Remove,
}

impl Operation {
    /// The job kind: `vm.start`, `host.update`, `inventory.resync`, ...
    pub fn kind(&self) -> String {
        match self {
            Self::VmAction { action, .. } => format!("vm.{}", action.as_str()),
            Self::VmDelete { .. } => "vm.delete".into(),
            Self::VmDeploy { .. } => "vm.deploy".into(),
            Self::HostCreate { .. } => "host.create".into(),
            Self::HostUpdate { .. } => "host.update".into(),
            Self::HostDelete { .. } => "host.delete".into(),
            Self::InventoryResync { .. } => "inventory.resync".into(),
            Self::TestSleep { .. } => "test.sleep".into(),
            Self::TestSteps { .. } => "test.steps".into(),
        }
    }

    /// What it acts on, as jobs and audit events name it: `vm:<host id>/<name>`,
    /// `host:<host id>`, `inventory`, `test:<what>`.
    pub fn target(&self) -> String {
        match self {
            Self::VmAction { host, vm, .. }
            | Self::VmDelete { host, vm, .. }
            | Self::VmDeploy { host, vm, .. } => vm_target(*host, vm),
            Self::HostCreate { host, .. }
            | Self::HostUpdate { host, .. }
            | Self::HostDelete { host } => {
                format!("host:{}", host.id)
            }
            Self::InventoryResync { hosts, single } => match (single, hosts.as_slice()) {
                (true, [one]) => format!("host:{one}"),
                _ => "inventory".into(),
            },
            Self::TestSleep { seconds, .. } => format!("sleep:{seconds}s"),
            Self::TestSteps { steps, .. } => format!("steps:{steps}"),
        }
    }

    /// The host whose concurrency limit the job counts against, if any.
    pub fn host(&self) -> Option<HostId> {
        match self {
            Self::VmAction { host, .. }
            | Self::VmDelete { host, .. }
            | Self::VmDeploy { host, .. } => Some(*host),
            Self::HostCreate { .. }
            | Self::HostUpdate { .. }
            | Self::HostDelete { .. }
            | Self::InventoryResync { .. }
            | Self::TestSleep { .. }
            | Self::TestSteps { .. } => None,
        }
    }
}

/// How jobs and audit events name a VM.
pub fn vm_target(host: HostId, vm: &VmName) -> String {
    format!("vm:{host}/{vm}")
}

/// What authorization proved when the job was submitted: the runner acts on
/// it without authorizing again, and audits the outcome in its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    /// Who asked.
    pub subject: UserId,
    pub subject_name: String,
    /// The credential the request came with (`api_key:<id>`, `session:<id>`).
    pub via: String,
    pub source_ip: Option<String>,
    /// The least role the operation needed, which the subject had.
    pub role: Role,
    /// Whose infrastructure the operation may touch.
    pub owner: UserId,
}

/// Where one step of a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
    /// Stopped by a cancel while it ran.
    Cancelled,
    /// Never started: an earlier step failed or the job was cancelled.
    Skipped,
    Undoing,
    Undone,
    /// Its undo failed: what it did is still there (the error says what).
    UndoFailed,
}

impl StepStatus {
    pub const ALL: [StepStatus; 9] = [
        Self::Pending,
        Self::Running,
        Self::Done,
        Self::Failed,
        Self::Cancelled,
        Self::Skipped,
        Self::Undoing,
        Self::Undone,
        Self::UndoFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
            Self::Undoing => "undoing",
            Self::Undone => "undone",
            Self::UndoFailed => "undo_failed",
        }
    }

    /// Whether the step began, so an undo may have something to reverse.
    pub fn started(self) -> bool {
        matches!(
            self,
            Self::Running | Self::Done | Self::Failed | Self::Cancelled
        )
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepStatus {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| InvalidInput::new("step status", format!("unknown: {s}")))
    }
}

/// One step of a job, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobStep {
    /// 0-based position in the job.
    pub index: u16,
    pub name: String,
    pub status: StepStatus,
    /// Whether the step can be undone when a later one fails.
    pub has_undo: bool,
    /// 0..=100 within the step.
    pub progress: u8,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, or why its undo failed.
    pub error: Option<String>,
    /// What the step found or made (e.g. the state a VM was in), kept for
    /// the steps after it, for a resumed job, and for people.
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_as_data() {
        let host = HostId::new();
        let ops = [
            Operation::VmAction {
                host,
                vm: VmName::parse("web-01").expect("name"),
                action: VmAction::ForceStop,
            },
            Operation::VmDelete {
                host,
                vm: VmName::parse("web-01").expect("name"),
                with_storage: true,
            },
            Operation::InventoryResync {
                hosts: vec![host],
                single: true,
            },
            Operation::TestSteps {
                steps: 3,
                step_millis: 10,
                fail_at: Some(3),
                undo_fails: None,
                resumable: true,
            },
        ];
        for op in ops {
            let json = serde_json::to_string(&op).expect("json");
            let back: Operation = serde_json::from_str(&json).expect("back");
            assert_eq!(back, op, "{json}");
        }
        let start = Operation::VmAction {
            host,
            vm: VmName::parse("web-01").expect("name"),
            action: VmAction::ForceStop,
        };
        assert_eq!(start.kind(), "vm.force_stop");
        assert_eq!(start.target(), format!("vm:{host}/web-01"));
        assert_eq!(start.host(), Some(host));
        let resync = Operation::InventoryResync {
            hosts: vec![host, HostId::new()],
            single: false,
        };
        assert_eq!(resync.target(), "inventory");
    }

    #[test]
    fn unknown_operations_are_refused() {
        assert!(serde_json::from_str::<Operation>(r#"{"op":"vm_explode"}"#).is_err());
        assert!(
            serde_json::from_str::<Operation>(
                r#"{"op":"test_sleep","seconds":1,"fail":false,"x":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn step_status_round_trip() {
        for s in StepStatus::ALL {
            assert_eq!(s.as_str().parse::<StepStatus>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).expect("json"), format!("\"{s}\""));
        }
        assert!(StepStatus::Failed.started() && !StepStatus::Skipped.started());
    }
}
