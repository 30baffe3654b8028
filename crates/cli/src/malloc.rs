//! glibc's allocator setting for the long-running service.
//!
//! glibc serves a request above its mmap threshold (128 KiB at first)
//! with a mapping of its own, and when such a block is freed it raises the
//! threshold to that block's size and its trim threshold (how much free
//! memory at the top of a heap it keeps rather than give back) to twice
//! that, for the rest of the process. Argon2 works in 19 MiB, so the
//! bootstrap password at start-up, or any password sign-in, leaves the
//! service with a 38 MiB trim threshold: from then on no heap is ever
//! trimmed, and under steady mixed load resident memory rose 55–90 MiB an
//! hour while the live heap stayed at 6–9 MiB (the soak in
//! docs/benchmarks.md). A fixed threshold turns that adjustment off, and
//! the heaps are trimmed as they were before the first sign-in.
//!
//! glibc reads the setting only from the environment, when the process
//! starts, and this workspace has no `unsafe` for `mallopt`: `serve`
//! therefore re-executes itself once with it set. An operator's own value
//! is left as it is.

use std::ffi::OsString;

/// The variable and its value: glibc's default threshold, made fixed.
const MMAP_THRESHOLD: (&str, &str) = ("MALLOC_MMAP_THRESHOLD_", "131072");

/// Whether the setting is missing from `env` (a variable that is set, to
/// anything, is the operator's choice).
fn missing(env: impl Fn(&str) -> Option<OsString>) -> bool {
    env(MMAP_THRESHOLD.0).is_none()
}

/// Replaces this process with itself, same arguments, with the setting
/// when it is missing; returns at once when it is not (always so after the
/// re-execution). A failure to re-execute is reported and the service
/// runs on with glibc's defaults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn settle() {
    use std::os::unix::process::CommandExt;

    if !missing(|name| std::env::var_os(name)) {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "overvisor".into());
    // The running image itself, even if its file was replaced meanwhile.
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(MMAP_THRESHOLD.0, MMAP_THRESHOLD.1)
        .exec();
    eprintln!(
        "warning: cannot restart with a fixed malloc mmap threshold ({err}); running with glibc's defaults"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn settle() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_value_is_kept() {
        assert!(missing(|_| None));
        assert!(!missing(|_| Some(OsString::from("262144"))));
        assert!(!missing(|_| Some(OsString::new())));
    }
}
