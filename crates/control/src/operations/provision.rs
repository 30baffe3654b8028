//! The `provision` step of an agent-provisioned deployment: reach the
//! guest agent's virtio-serial port through the host's SSH connection
//! (`direct-streamlocal` to the socket QEMU listens on: nothing runs on
//! the host), wait for the agent's hello with its public key, seal the
//! payload to that key (`overvisor-provision`), deliver it, and wait for
//! the agent to say `applied` or why it failed.
//!
//! The payload (password hash, SSH keys) is the job's sealed input, opened
//! only here and for the step's life; the job's log says what happened
//! (the guest's public key, the sealed size), never what was sent.

use std::time::Duration;

use overvisor_hv::HvError;
use overvisor_hv::LibvirtDriver;
use overvisor_hv::libvirt::deploy::VmFiles;
use overvisor_model::operation::DeploySpec;
use overvisor_provision::wire::MAX_LINE_BYTES;
use overvisor_provision::{
    GuestIdentity, GuestMessage, GuestPublicKey, GuestState, HostMessage, Outcome, Payload, seal,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::{Instant, timeout_at};
use zeroize::Zeroizing;

use super::StepCx;
use crate::jobs::JobError;

pub const STEP: &str = "provision";

/// A TCG guest's first boot takes minutes; the job's own timeout bounds
/// the whole deployment.
const WAIT_FOR_KEY: Duration = Duration::from_secs(15 * 60);
/// From delivery to the agent's word: applying is quick.
const WAIT_FOR_STATUS: Duration = Duration::from_secs(5 * 60);
/// libvirt makes the port's socket before the VM starts; a little
/// patience for a host that is slow to, then a clear failure (the host
/// refuses the same way whether the socket is missing or not ours).
const REACH: Duration = Duration::from_secs(30);
/// Between attempts to reach the port.
const RETRY: Duration = Duration::from_secs(2);

pub enum Failure {
    /// The host (its SSH connection) failed.
    Host(HvError),
    Job(JobError),
}

impl From<JobError> for Failure {
    fn from(e: JobError) -> Self {
        Self::Job(e)
    }
}

fn job(message: impl Into<String>) -> Failure {
    Failure::Job(JobError::new(message))
}

pub async fn deliver(
    cx: &StepCx<'_>,
    lv: &LibvirtDriver,
    files: &VmFiles,
    spec: &DeploySpec,
    secret: Option<&[u8]>,
) -> Result<Option<serde_json::Value>, Failure> {
    let agent = spec
        .agent
        .as_ref()
        .ok_or_else(|| job("this deployment is not agent-provisioned"))?;
    let identity = GuestIdentity::from_json(agent.identity.as_bytes())
        .map_err(|e| job(format!("the deployment's identity is unreadable: {e}")))?;
    let payload: Payload = serde_json::from_slice(
        secret.ok_or_else(|| job("the job's sealed payload is missing (the job ended before?)"))?,
    )
    .map_err(|_| job("the job's sealed payload is unreadable"))?;

    cx.info("waiting for the guest's key").await;
    let key_deadline = Instant::now() + WAIT_FOR_KEY;
    let reach_deadline = Instant::now() + REACH;
    let tunnel = loop {
        match lv.guest_channel(files).await {
            Ok(t) => break t,
            Err(e) if matches!(&e, HvError::Transport(s) if s.is_connection()) => {
                return Err(Failure::Host(e));
            }
            Err(e) if Instant::now() >= reach_deadline => {
                return Err(job(format!(
                    "cannot reach the guest agent's port {} on the host: {e} \
                     (the automation user must be in QEMU's group to connect to it)",
                    files.guest_socket
                )));
            }
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    };
    let (read, mut write) = tokio::io::split(tunnel);
    let mut lines = BufReader::new(read);

    let key = loop {
        match next_message(&mut lines, key_deadline, "the guest's key").await? {
            GuestMessage::Hello {
                state: GuestState::Waiting,
                public_key: Some(key),
                vm_uuid,
                ..
            } => {
                if vm_uuid != spec.uuid {
                    return Err(job(format!(
                        "the guest says it is VM {vm_uuid}, not {}: its seed is not this deployment's",
                        spec.uuid
                    )));
                }
                break key;
            }
            GuestMessage::Hello {
                state: GuestState::Applied,
                ..
            } if cx.resumed => {
                cx.warn("the guest reports that it applied its payload already (step resumed)")
                    .await;
                return Ok(Some(
                    serde_json::json!({ "applied": true, "resumed": true }),
                ));
            }
            GuestMessage::Hello {
                state: GuestState::Applied,
                ..
            } => {
                return Err(job(
                    "the guest says it was provisioned before: it takes no new payload",
                ));
            }
            // A status of an earlier attempt, or a hello without a key.
            _ => {}
        }
    };
    cx.info(format!("the guest's key: {key}")).await;

    let line = sealed_line(cx, spec, &identity, &key, &payload)?;
    drop(payload);
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| job(format!("cannot deliver the sealed data: {e}")))?;
    write
        .flush()
        .await
        .map_err(|e| job(format!("cannot deliver the sealed data: {e}")))?;
    cx.info(format!("sealed data delivered ({} bytes)", line.len()))
        .await;

    let status_deadline = Instant::now() + WAIT_FOR_STATUS;
    loop {
        match next_message(&mut lines, status_deadline, "the guest's word").await? {
            GuestMessage::Status {
                outcome: Outcome::Applied,
                ..
            } => {
                cx.info("applied").await;
                return Ok(Some(outcome(spec, Some(&key))));
            }
            GuestMessage::Status {
                outcome: Outcome::Failed { reason },
                ..
            } => {
                return Err(job(format!("the guest agent reports: {reason}")));
            }
            // Hellos sent before the payload arrived.
            GuestMessage::Hello { .. } => {}
        }
    }
}

/// The step's output, the deployment's result: what `start` answers
/// (the VM runs, its UUID) and that the guest applied its payload.
fn outcome(spec: &DeploySpec, key: Option<&GuestPublicKey>) -> serde_json::Value {
    serde_json::json!({
        "state": "running",
        "uuid": spec.uuid,
        "provisioned": true,
        "guest_key": key.map(ToString::to_string),
    })
}

/// The payload sealed to `key` for this VM and deployment, as a line.
fn sealed_line(
    cx: &StepCx<'_>,
    spec: &DeploySpec,
    identity: &GuestIdentity,
    key: &GuestPublicKey,
    payload: &Payload,
) -> Result<Zeroizing<String>, Failure> {
    let sealed = seal::seal(
        &cx.app.provisioning_key(),
        spec.uuid,
        identity.nonce,
        key,
        payload,
    )
    .map_err(|e| job(format!("cannot seal the payload: {e}")))?;
    Ok(Zeroizing::new(HostMessage::Sealed(sealed).encode()))
}

/// The next message from the guest, by `deadline`. Lines that are not
/// messages are skipped (the port may hold the end of an earlier line).
async fn next_message<R: AsyncRead + Unpin>(
    lines: &mut BufReader<R>,
    deadline: Instant,
    waiting_for: &str,
) -> Result<GuestMessage, Failure> {
    loop {
        let mut buf = Vec::new();
        let mut limited = (&mut *lines).take(MAX_LINE_BYTES as u64 + 1);
        let n = timeout_at(deadline, limited.read_until(b'\n', &mut buf))
            .await
            .map_err(|_| job(format!("timed out waiting for {waiting_for}")))?
            .map_err(|e| job(format!("the guest's port failed: {e}")))?;
        if n == 0 {
            return Err(job(format!(
                "the guest's port closed while waiting for {waiting_for} (the VM stopped?)"
            )));
        }
        if let Ok(m) = GuestMessage::decode(&String::from_utf8_lossy(&buf)) {
            return Ok(m);
        }
    }
}
