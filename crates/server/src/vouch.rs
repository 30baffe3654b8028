//! The client's address on a request one replica passes to another (a
//! forwarded live request, a relayed console). The owner would otherwise
//! see the forwarding replica's address in its audit rows. The forwarding
//! replica says who the client was in [`CLIENT`], with an HMAC under a key
//! every replica of one master key derives alike, bound to the method, the
//! path and the time: the owner believes the header only when the MAC
//! holds and it is fresh, so a client cannot name an address of its own
//! choosing.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderName, HeaderValue};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `<address> <unix seconds> <hex HMAC-SHA256>`.
pub const CLIENT: HeaderName = HeaderName::from_static("x-overvisor-client");

/// How far the two replicas' clocks and the forwarding may take.
const FRESH: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Vouch {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Vouch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vouch(<redacted>)")
    }
}

impl Vouch {
    pub fn new(key: &[u8]) -> Self {
        Self {
            // HMAC takes a key of any length.
            mac: Hmac::new_from_slice(key).unwrap_or_else(|_| unreachable!()),
        }
    }

    fn tag(&self, ip: IpAddr, at: u64, method: &str, path: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        for part in [ip.to_string().as_str(), &at.to_string(), method, path] {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        mac
    }

    /// The header's value: `ip` sent `method path` now.
    fn sign(&self, ip: IpAddr, method: &str, path: &str) -> String {
        self.sign_at(ip, method, path, now())
    }

    /// [`CLIENT`]'s value for a request passed on for `client` (an address
    /// as [`crate::auth::client_info`] gives it); `None` without one.
    pub fn header(&self, client: Option<&str>, method: &str, path: &str) -> Option<HeaderValue> {
        let ip: IpAddr = client?.parse().ok()?;
        HeaderValue::from_str(&self.sign(ip, method, path)).ok()
    }

    fn sign_at(&self, ip: IpAddr, method: &str, path: &str, at: u64) -> String {
        let tag = self.tag(ip, at, method, path).finalize().into_bytes();
        format!("{ip} {at} {}", hex::encode(tag))
    }

    /// The address `value` vouches for, if another replica made it for
    /// this `method path` within the last minute.
    pub fn verify(&self, value: &str, method: &str, path: &str) -> Option<IpAddr> {
        self.verify_at(value, method, path, now())
    }

    fn verify_at(&self, value: &str, method: &str, path: &str, now: u64) -> Option<IpAddr> {
        let mut parts = value.split(' ');
        let ip: IpAddr = parts.next()?.parse().ok()?;
        let at: u64 = parts.next()?.parse().ok()?;
        let tag = hex::decode(parts.next()?).ok()?;
        if parts.next().is_some() || now.abs_diff(at) > FRESH.as_secs() {
            return None;
        }
        self.tag(ip, at, method, path)
            .verify_slice(&tag)
            .ok()
            .map(|()| ip)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn a_replica_vouches_and_another_believes_it() {
        let (a, b) = (Vouch::new(b"one master"), Vouch::new(b"one master"));
        let v = a.sign_at(ip("203.0.113.7"), "POST", "/deploy?x=1", T);
        assert_eq!(
            b.verify_at(&v, "POST", "/deploy?x=1", T + 5),
            Some(ip("203.0.113.7"))
        );
        let v6 = a.sign_at(ip("2001:db8::1"), "GET", "/", T);
        assert_eq!(b.verify_at(&v6, "GET", "/", T), Some(ip("2001:db8::1")));
    }

    #[test]
    fn anything_else_is_not_believed() {
        let a = Vouch::new(b"one master");
        let v = a.sign_at(ip("203.0.113.7"), "POST", "/deploy", T);
        // Another master key, method, path or a stale or future time.
        assert_eq!(
            Vouch::new(b"other").verify_at(&v, "POST", "/deploy", T),
            None
        );
        assert_eq!(a.verify_at(&v, "GET", "/deploy", T), None);
        assert_eq!(a.verify_at(&v, "POST", "/deploy/create", T), None);
        assert_eq!(a.verify_at(&v, "POST", "/deploy", T + 61), None);
        assert_eq!(a.verify_at(&v, "POST", "/deploy", T - 61), None);
        // Another address with the same tag, or a mangled value.
        let forged = v.replacen("203.0.113.7", "198.51.100.1", 1);
        assert_eq!(a.verify_at(&forged, "POST", "/deploy", T), None);
        for bad in [
            "",
            "203.0.113.7",
            "203.0.113.7 x y",
            &format!("{v} extra"),
            "a b c",
        ] {
            assert_eq!(a.verify_at(bad, "POST", "/deploy", T), None, "{bad}");
        }
    }
}
