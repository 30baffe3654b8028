//! Jobs: every change Overvisor makes is a job with an id, a status that only
//! moves along [`JobStatus::can_become`], progress, timestamped log lines and
//! a result or error. Jobs outlive the process that ran them, so a job that
//! was running when the service died is shown as `interrupted`, never lost
//! and never silently re-run.
//!
//! Job records are shown to their owner as they are: nothing secret may be
//! put into a kind, target, log line, error or result.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::InvalidInput;
use crate::account::{UserId, id_type};

id_type!(
    /// Identifies a job.
    JobId
);

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted, waiting for a slot (e.g. the per-host concurrency limit).
    Queued,
    Running,
    Succeeded,
    Failed,
    /// Stopped on request before it finished.
    Cancelled,
    /// The service stopped (crash, kill, restart) while the job was queued or
    /// running; what it had done on the host is unknown, so it is not re-run.
    Interrupted,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    /// A finished job never changes again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The whole state machine: which status may follow which.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus as S;
        matches!(
            (self, next),
            (
                S::Queued,
                S::Running | S::Cancelled | S::Interrupted | S::Failed
            ) | (
                S::Running,
                S::Succeeded | S::Failed | S::Cancelled | S::Interrupted
            )
        )
    }

    /// Every status from which `self` may be reached (the store guards its
    /// updates with this, so two writers cannot both finish a job).
    pub fn predecessors(self) -> Vec<JobStatus> {
        Self::ALL
            .into_iter()
            .filter(|from| from.can_become(self))
            .collect()
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                InvalidInput::new(
                    "status",
                    "must be one of queued, running, succeeded, failed, cancelled, interrupted",
                )
            })
    }
}

/// A job as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    /// What the job does, dotted: `vm.start`, `host.sync`, ...
    pub kind: String,
    /// Who asked for it.
    pub requester: UserId,
    /// Whose infrastructure it changes (decides who may see it).
    pub owner: UserId,
    /// What it acts on, e.g. `host:<id>/vm:<name>`.
    pub target: Option<String>,
    pub status: JobStatus,
    /// 0..=100.
    pub progress: u8,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, was cancelled or interrupted.
    pub error: Option<String>,
    /// What it produced, when it succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The job that started this one, for child jobs.
    pub parent: Option<JobId>,
}

impl Job {
    /// A job just submitted: queued, nothing run yet.
    pub fn queued(kind: String, requester: UserId, owner: UserId, target: Option<String>) -> Self {
        Self {
            id: JobId::new(),
            kind,
            requester,
            owner,
            target,
            status: JobStatus::Queued,
            progress: 0,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            error: None,
            result: None,
            parent: None,
        }
    }
}

/// Which jobs to list, newest first. The control layer sets `owner` from
/// what the caller may see; the store applies the rest.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only jobs owned by this user (`None`: everyone's, for admins).
    pub owner: Option<UserId>,
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub parent: Option<JobId>,
    /// Only jobs created before this one (keyset pagination).
    pub before: Option<JobId>,
    pub limit: u32,
}

/// Severity of a job log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

impl FromStr for LogLevel {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Self::Info),
            "warn" => Ok(Self::Warn),
            "error" => Ok(Self::Error),
            _ => Err(InvalidInput::new("level", "must be info, warn or error")),
        }
    }
}

/// One timestamped line a job wrote about its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobLogLine {
    pub at: DateTime<Utc>,
    pub level: LogLevel,
    pub message: String,
}

/// Checks a job kind: short, lowercase words joined by dots or underscores.
pub fn check_job_kind(kind: &str) -> Result<(), InvalidInput> {
    let ok = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(
            "kind",
            "must be 1-64 characters of a-z, 0-9, '.' and '_'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        use JobStatus as S;
        assert!(S::Queued.can_become(S::Running));
        assert!(S::Queued.can_become(S::Cancelled));
        assert!(S::Queued.can_become(S::Interrupted));
        assert!(S::Running.can_become(S::Succeeded));
        assert!(S::Running.can_become(S::Failed));
        assert!(S::Running.can_become(S::Cancelled));
        assert!(S::Running.can_become(S::Interrupted));
        assert!(!S::Running.can_become(S::Queued));
        assert!(!S::Queued.can_become(S::Succeeded), "must run first");
        for terminal in [S::Succeeded, S::Failed, S::Cancelled, S::Interrupted] {
            assert!(terminal.is_terminal());
            for next in S::ALL {
                assert!(!terminal.can_become(next), "{terminal} -> {next}");
            }
        }
        assert!(!S::Queued.is_terminal() && !S::Running.is_terminal());
        assert_eq!(S::Running.predecessors(), vec![S::Queued]);
        assert_eq!(S::Succeeded.predecessors(), vec![S::Running]);
        assert_eq!(S::Interrupted.predecessors(), vec![S::Queued, S::Running]);
        assert!(S::Queued.predecessors().is_empty());
    }

    #[test]
    fn status_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).expect("json"), format!("\"{s}\""));
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn kinds() {
        for ok in ["vm.start", "host.sync", "test.sleep", "vm.force_stop"] {
            assert!(check_job_kind(ok).is_ok(), "{ok}");
        }
        for bad in ["", "VM.start", "vm start", "vm;rm", &"a".repeat(65)] {
            assert!(check_job_kind(bad).is_err(), "{bad}");
        }
    }
}
