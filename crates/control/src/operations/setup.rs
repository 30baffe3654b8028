//! The `setup` step of an installer (Windows) deployment: wait for Setup
//! to finish, seen as the QEMU guest agent (which Autounattend.xml installs
//! from virtio-win) answering `guest-ping`, then detach the Autounattend
//! media from the VM and delete it from the host: it holds the password in
//! clear, and Setup keeps its own copy once it has read it.
//!
//! The wait is bounded by the profile's `setup_minutes`. When it ends with
//! no answer (no virtio-win, hence no agent; or Setup stuck) the media is
//! removed all the same and the job says Setup was not seen to finish: the
//! VM stays, for the operator to look at on its console. A deployment that
//! fails or is cancelled before then loses the media with everything else
//! (the directory `overlay`'s undo removes).
//!
//! First, for the installer's "Press any key to boot from CD or DVD" (a
//! stock Microsoft ISO under UEFI waits for it), space is pressed once a
//! second for half a minute.
//!
//! The step has no undo: `start`'s stops the VM. Resumed (its runner died),
//! it waits afresh; removing media that is gone already is fine.

use std::time::Duration;

use overvisor_hv::libvirt::deploy::VmFiles;
use overvisor_hv::{HvError, LibvirtDriver};
use overvisor_model::operation::{DeploySpec, SetupWait};
use overvisor_model::vm::VmName;
use tokio::time::Instant;

use super::{StepCx, StepResult};
use crate::jobs::JobError;

pub const STEP: &str = "setup";

/// Between two questions to the guest agent.
const POLL: Duration = Duration::from_secs(10);
/// Microsoft's installer ISOs boot under UEFI only after "Press any key to
/// boot from CD or DVD", shown for a few seconds once the firmware has
/// found the blank disk empty. Space is pressed once a second for this
/// long after the start; by the time Setup reboots into the installed
/// system (which boots first from then on) the presses are long over.
const BOOT_PROMPT_PRESSES: u32 = 30;
const BOOT_PROMPT_KEY: &str = "KEY_SPACE";

pub async fn wait_then_remove_media(
    cx: &StepCx<'_>,
    lv: &LibvirtDriver,
    vm: &VmName,
    spec: &DeploySpec,
    wait: SetupWait,
    fail: impl Fn(HvError) -> JobError,
) -> StepResult {
    let started = Instant::now();
    let deadline = started + wait.limit();
    let minutes = wait.minutes;
    if wait.agent_expected {
        cx.info(format!(
            "waiting for Windows Setup to finish (the guest agent answers), at most {minutes} min"
        ))
        .await;
    } else {
        cx.info(format!(
            "the profile has no virtio-win ISO, so Windows gets no guest agent to say when \
             Setup is done: the Autounattend media stays for {minutes} min"
        ))
        .await;
    }
    if !cx.resumed {
        press_for_the_boot_prompt(cx, lv, vm).await;
    }
    let mut why_not = String::from("not asked yet");
    let finished = loop {
        match lv.guest_agent_ping(vm).await {
            Ok(Ok(())) => break true,
            Ok(Err(why)) => why_not = why,
            Err(HvError::NotFound(_)) => {
                return Err(JobError::new(format!("{vm} was deleted while Setup ran")));
            }
            // The host may come back before the wait ends; the removal
            // below needs it.
            Err(e) => why_not = e.to_string(),
        }
        let now = Instant::now();
        if now + POLL > deadline {
            break false;
        }
        cx.progress(super::deploy::percent(
            millis(now - started),
            millis(wait.limit()),
        ))
        .await;
        tokio::time::sleep(POLL).await;
    };
    let waited = started.elapsed().as_secs();
    let files = VmFiles::of(&spec.uuid);
    let held = lv.media_remove(vm, &files.seed).await.map_err(&fail)?;
    let removed = if held {
        "detached and deleted"
    } else {
        "deleted (no drive held it)"
    };
    if finished {
        cx.info(format!(
            "Setup finished: the guest agent answered after {waited} s; the Autounattend media is {removed}"
        ))
        .await;
    } else {
        cx.warn(format!(
            "Setup was not seen to finish within {minutes} min (last: {why_not}); the \
             Autounattend media is {removed} all the same"
        ))
        .await;
    }
    cx.progress(100).await;
    let state = lv.state_by_uuid(spec.uuid).await.map_err(&fail)?;
    Ok(Some(serde_json::json!({
        "state": state,
        "uuid": spec.uuid,
        "setup": if finished { "finished" } else { "unconfirmed" },
        "waited_s": waited,
        "media_removed": true,
    })))
}

/// Presses space for the installer's boot prompt. A press that fails (the
/// VM was stopped) ends the presses; Setup may still start without them
/// (a no-prompt ISO), so the wait goes on.
async fn press_for_the_boot_prompt(cx: &StepCx<'_>, lv: &LibvirtDriver, vm: &VmName) {
    let mut pressed = 0;
    for _ in 0..BOOT_PROMPT_PRESSES {
        if let Err(e) = lv.send_key(vm, BOOT_PROMPT_KEY).await {
            cx.warn(format!("cannot press a key on {vm}: {e}")).await;
            break;
        }
        pressed += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cx.info(format!(
        "pressed space {pressed} times, once a second, for the installer's \"Press any key to \
         boot from CD or DVD\""
    ))
    .await;
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
