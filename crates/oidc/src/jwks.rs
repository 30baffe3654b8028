//! The provider's signing keys for bearer tokens, cached. A token naming a
//! key id the cache lacks makes the set be fetched again — the provider
//! rotated its keys — but at most once per `jwks_refresh_min_secs`, so a
//! stream of tokens with made-up key ids cannot make us hammer the provider.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;

#[derive(Default)]
pub(crate) struct JwksCache {
    keys: Vec<Jwk>,
    fetched_at: Option<Instant>,
    /// The last fetch that failed: a provider that is down is asked again
    /// no more often than a rotation would be.
    failed_at: Option<Instant>,
}

/// What to do about a key id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found(Box<Jwk>),
    /// Not cached, and a fetch is allowed now.
    Fetch,
    /// Not cached, and the last fetch was too recent to fetch again.
    Unknown,
    /// No usable key set, and the last attempt failed too recently to try again.
    Unavailable,
}

impl JwksCache {
    pub(crate) fn lookup(
        &self,
        kid: Option<&str>,
        now: Instant,
        min_interval: Duration,
        max_age: Duration,
    ) -> Lookup {
        let age = self.fetched_at.map(|t| now.saturating_duration_since(t));
        let failed_recently = self
            .failed_at
            .is_some_and(|t| now.saturating_duration_since(t) < min_interval);
        if age.is_none_or(|a| a > max_age) {
            return if failed_recently {
                Lookup::Unavailable
            } else {
                Lookup::Fetch
            };
        }
        if let Some(jwk) = find(&self.keys, kid) {
            return Lookup::Found(Box::new(jwk.clone()));
        }
        if age.is_some_and(|a| a >= min_interval) && !failed_recently {
            Lookup::Fetch
        } else {
            Lookup::Unknown
        }
    }

    pub(crate) fn replace(&mut self, keys: Vec<Jwk>, now: Instant) {
        self.keys = keys;
        self.fetched_at = Some(now);
        self.failed_at = None;
    }

    pub(crate) fn fetch_failed(&mut self, now: Instant) {
        self.failed_at = Some(now);
    }

    pub(crate) fn find(&self, kid: Option<&str>) -> Option<Jwk> {
        find(&self.keys, kid).cloned()
    }
}

/// The key with this id; without an id, the only signing key there is.
fn find<'a>(keys: &'a [Jwk], kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        None => match keys {
            [only] => Some(only),
            _ => None,
        },
    }
}

/// Keys from a JWKS document; keys of a type this library cannot use (or
/// meant for encryption) are skipped rather than failing the whole set.
pub(crate) fn parse_keys(document: &serde_json::Value) -> Vec<Jwk> {
    document
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter(|k| {
                    k.get("use")
                        .and_then(|u| u.as_str())
                        .is_none_or(|u| u == "sig")
                })
                .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> Jwk {
        let doc = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }, {"kty": "oct", "k": "c2VjcmV0", "use": "enc"}]});
        parse_keys(&doc).remove(0)
    }

    #[test]
    fn unknown_kid_refetches_at_most_once_per_interval() {
        let min = Duration::from_secs(30);
        let max = Duration::from_secs(3600);
        let t0 = Instant::now();
        let mut cache = JwksCache::default();
        assert_eq!(
            cache.lookup(Some("a"), t0, min, max),
            Lookup::Fetch,
            "empty cache"
        );
        cache.replace(vec![key("a")], t0);
        assert!(matches!(
            cache.lookup(Some("a"), t0, min, max),
            Lookup::Found(_)
        ));
        let soon = t0 + Duration::from_secs(5);
        assert_eq!(cache.lookup(Some("b"), soon, min, max), Lookup::Unknown);
        let later = t0 + Duration::from_secs(31);
        assert_eq!(cache.lookup(Some("b"), later, min, max), Lookup::Fetch);
        assert!(matches!(
            cache.lookup(Some("a"), later, min, max),
            Lookup::Found(_)
        ));
        let old = t0 + Duration::from_secs(3601);
        assert_eq!(
            cache.lookup(Some("a"), old, min, max),
            Lookup::Fetch,
            "stale set"
        );
    }

    #[test]
    fn a_failed_fetch_is_not_retried_before_the_interval() {
        let min = Duration::from_secs(30);
        let max = Duration::from_secs(3600);
        let t0 = Instant::now();
        let mut cache = JwksCache::default();
        cache.fetch_failed(t0);
        let soon = t0 + Duration::from_secs(5);
        assert_eq!(cache.lookup(Some("a"), soon, min, max), Lookup::Unavailable);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(cache.lookup(Some("a"), later, min, max), Lookup::Fetch);
        cache.replace(vec![key("a")], later);
        cache.fetch_failed(later + Duration::from_secs(40));
        let after = later + Duration::from_secs(45);
        assert!(matches!(
            cache.lookup(Some("a"), after, min, max),
            Lookup::Found(_)
        ));
        assert_eq!(cache.lookup(Some("b"), after, min, max), Lookup::Unknown);
    }

    #[test]
    fn encryption_keys_are_skipped_and_a_lone_key_needs_no_kid() {
        let mut cache = JwksCache::default();
        cache.replace(vec![key("a")], Instant::now());
        assert!(cache.find(None).is_some());
        cache.replace(vec![key("a"), key("b")], Instant::now());
        assert!(cache.find(None).is_none(), "ambiguous without a kid");
    }
}
