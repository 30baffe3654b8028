//! What a remote command can fail with, and the exit code each means to a
//! script (documented in `--help` and docs/cli.md).

/// Exit codes of the remote commands.
pub mod exit {
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const DENIED: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    /// Ctrl-C while waiting (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

/// Never holds the API key: messages are built from the server's error
/// envelope, the URL (which never carries the key) and local facts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("job {id} {status}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    JobFailed {
        id: String,
        status: String,
        reason: Option<String>,
    },
    #[error("job {0} keeps running; follow it with `overvisor job watch {0}`")]
    Interrupted(String),
    /// Something named on the command line does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Api { status: 404, .. } | Self::NotFound(_) => exit::NOT_FOUND,
            Self::Api {
                status: 401 | 403, ..
            } => exit::DENIED,
            Self::Api { .. } | Self::JobFailed { .. } | Self::Failed(_) => exit::FAILED,
            Self::Unreachable { .. } => exit::UNREACHABLE,
            Self::Interrupted(_) => exit::INTERRUPTED,
        }
    }

    /// A local file or terminal problem.
    pub fn io(what: impl std::fmt::Display, err: std::io::Error) -> Self {
        Self::Failed(format!("{what}: {err}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let api = |status| Error::Api {
            status,
            message: String::new(),
        };
        assert_eq!(api(404).exit_code(), 3);
        assert_eq!(api(401).exit_code(), 4);
        assert_eq!(api(403).exit_code(), 4);
        assert_eq!(api(409).exit_code(), 1);
        assert_eq!(Error::Usage(String::new()).exit_code(), 2);
        let unreachable = Error::Unreachable {
            url: String::new(),
            reason: String::new(),
        };
        assert_eq!(unreachable.exit_code(), 5);
        let failed = Error::JobFailed {
            id: "j".into(),
            status: "failed".into(),
            reason: Some("boom".into()),
        };
        assert_eq!(failed.exit_code(), 1);
        assert_eq!(failed.to_string(), "job j failed: boom");
        assert_eq!(Error::Interrupted("j".into()).exit_code(), 130);
    }
}
