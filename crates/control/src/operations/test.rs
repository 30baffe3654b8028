//! Operations that touch nothing, offered only with the `test_jobs` setting:
//! tests use them to cancel, fail, kill and resume jobs deterministically.

use std::time::Duration;

use super::{StepCx, StepResult};
use crate::jobs::JobError;

/// Most steps a `test.steps` job may have.
pub const MAX_STEPS: usize = 8;
pub const STEP_NAMES: [&str; MAX_STEPS] = [
    "step 1", "step 2", "step 3", "step 4", "step 5", "step 6", "step 7", "step 8",
];

/// Sleeps `seconds`, logging and reporting progress every second.
pub async fn sleep(cx: &StepCx<'_>, seconds: u32, fail: bool) -> StepResult {
    for second in 0..seconds {
        cx.info(format!("slept {second} of {seconds} s")).await;
        let percent = u8::try_from(second * 100 / seconds.max(1)).unwrap_or(100);
        cx.progress(percent).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if fail {
        return Err(JobError::new("failed on purpose"));
    }
    Ok(Some(serde_json::json!({ "slept_seconds": seconds })))
}

/// One step of `test.steps`: logs that it ran (the log is how tests count
/// runs), waits, and fails if it is step `fail_at`.
pub async fn step(cx: &StepCx<'_>, millis: u32, fail_at: Option<u8>) -> StepResult {
    let number = cx.index + 1;
    cx.info(format!("step {number} ran")).await;
    tokio::time::sleep(Duration::from_millis(u64::from(millis))).await;
    if fail_at.map(u16::from) == Some(number) {
        return Err(JobError::new(format!("step {number} failed on purpose")));
    }
    Ok(Some(serde_json::json!({ "step": number })))
}

pub async fn undo(cx: &StepCx<'_>, undo_fails: Option<u8>) -> Result<(), JobError> {
    let number = cx.index + 1;
    if undo_fails.map(u16::from) == Some(number) {
        return Err(JobError::new(format!(
            "undo of step {number} failed on purpose"
        )));
    }
    cx.info(format!("step {number} undone")).await;
    Ok(())
}
