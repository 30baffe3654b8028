//! glibc's allocator settings for the long-running service.
//!
//! Under the soak's steady mixed load (docs/benchmarks.md) the service's
//! resident memory rose 55–90 MiB an hour while its live heap stayed at
//! 6–9 MiB: glibc was keeping freed memory. The growth was spread evenly
//! over the arenas of the database pool's connection threads (each of the
//! eight `sqlx-sqlite-worker` threads gets an arena of its own, and those
//! threads allocate what the async threads free, and the other way round),
//! and glibc stops trimming any heap once a large block was freed: freeing
//! a block above the mmap threshold raises the threshold to its size and
//! the trim threshold to twice that, for good, and an Argon2 password hash
//! (the bootstrap password, any password sign-in) frees 19 MiB.
//!
//! Two settings, each measured against the defaults in a soak run beside
//! it: one arena for the whole process, where every thread reuses what any
//! thread freed, and glibc's default mmap threshold made fixed, which keeps
//! the trim threshold at its default.
//!
//! glibc reads them only from the environment, when the process starts,
//! and this workspace has no `unsafe` for `mallopt`: `serve` therefore
//! re-executes itself once, in place, with the missing ones set. A
//! variable the operator set, to anything, is left as it is.

use std::ffi::OsString;

/// The variables and their values.
const SETTINGS: [(&str, &str); 2] = [
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
];

/// The settings missing from `env`.
fn missing(env: impl Fn(&str) -> Option<OsString>) -> Vec<(&'static str, &'static str)> {
    SETTINGS
        .iter()
        .copied()
        .filter(|(name, _)| env(name).is_none())
        .collect()
}

/// Replaces this process with itself, same arguments, with the settings
/// that are missing; returns at once when none is (always so after the
/// re-execution). A failure to re-execute is reported and the service
/// runs on with glibc's defaults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn settle() {
    use std::os::unix::process::CommandExt;

    let missing = missing(|name| std::env::var_os(name));
    if missing.is_empty() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "overvisor".into());
    // The running image itself, even if its file was replaced meanwhile.
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .envs(missing)
        .exec();
    eprintln!(
        "warning: cannot restart with glibc's allocator settings ({err}); running with its defaults"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn settle() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_value_is_kept() {
        assert_eq!(missing(|_| None), SETTINGS.to_vec());
        let set = |name: &str| (name == "MALLOC_ARENA_MAX").then(|| OsString::from("4"));
        assert_eq!(missing(set), vec![SETTINGS[1]]);
        assert!(missing(|_| Some(OsString::new())).is_empty());
    }
}
