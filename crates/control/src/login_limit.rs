//! Sign-in throttling, per account name and per client address: after too
//! many failures inside a sliding window, further attempts are refused
//! (without even checking the password) until the oldest failure ages out.
//! In-memory by design: it protects against guessing, not against restarts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Limits {
    pub window: Duration,
    pub per_account: usize,
    pub per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(15 * 60),
            per_account: 5,
            per_address: 20,
        }
    }
}

#[derive(Debug)]
pub struct LoginLimiter {
    limits: Limits,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(account: &str, address: Option<&str>) -> [(String, bool); 2] {
        [
            (format!("account:{account}"), true),
            (format!("address:{}", address.unwrap_or("-")), false),
        ]
    }

    /// `Err(seconds)` when either the account or the address is locked out.
    pub fn check(&self, account: &str, address: Option<&str>, now: Instant) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = 0u64;
        for (key, is_account) in Self::keys(account, address) {
            let limit = if is_account {
                self.limits.per_account
            } else {
                self.limits.per_address
            };
            if let Some(times) = map.get_mut(&key) {
                prune(times, now, self.limits.window);
                if times.len() >= limit
                    && let Some(oldest) = times.front()
                {
                    let free_at = *oldest + self.limits.window;
                    wait = wait.max(free_at.saturating_duration_since(now).as_secs().max(1));
                }
            }
        }
        if wait > 0 { Err(wait) } else { Ok(()) }
    }

    pub fn record_failure(&self, account: &str, address: Option<&str>, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for (key, _) in Self::keys(account, address) {
            let times = map.entry(key).or_default();
            prune(times, now, self.limits.window);
            times.push_back(now);
        }
        // Bound memory under a spray of distinct names.
        if map.len() > 100_000 {
            let window = self.limits.window;
            map.retain(|_, times| {
                prune(times, now, window);
                !times.is_empty()
            });
        }
    }

    /// A successful sign-in clears the account's failures (not the address's).
    pub fn record_success(&self, account: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("account:{account}"));
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_account_then_frees_it() {
        let limiter = LoginLimiter::new(Limits {
            window: Duration::from_secs(60),
            per_account: 3,
            per_address: 100,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("alice", Some("1.2.3.4"), t0).is_ok());
            limiter.record_failure("alice", Some("1.2.3.4"), t0);
        }
        let wait = limiter
            .check("alice", Some("5.6.7.8"), t0)
            .expect_err("locked");
        assert!(wait > 0 && wait <= 60);
        assert!(
            limiter.check("bob", Some("1.2.3.4"), t0).is_ok(),
            "other accounts unaffected"
        );
        assert!(
            limiter
                .check("alice", None, t0 + Duration::from_secs(61))
                .is_ok()
        );
    }

    #[test]
    fn locks_address_across_accounts() {
        let limiter = LoginLimiter::new(Limits {
            window: Duration::from_secs(60),
            per_account: 100,
            per_address: 2,
        });
        let t0 = Instant::now();
        limiter.record_failure("a", Some("9.9.9.9"), t0);
        limiter.record_failure("b", Some("9.9.9.9"), t0);
        assert!(limiter.check("c", Some("9.9.9.9"), t0).is_err());
        assert!(limiter.check("c", Some("8.8.8.8"), t0).is_ok());
    }

    #[test]
    fn success_resets_account() {
        let limiter = LoginLimiter::new(Limits {
            window: Duration::from_secs(60),
            per_account: 1,
            per_address: 100,
        });
        let t0 = Instant::now();
        limiter.record_failure("a", None, t0);
        assert!(limiter.check("a", Some("x"), t0).is_err());
        limiter.record_success("a");
        assert!(limiter.check("a", Some("x"), t0).is_ok());
    }
}
