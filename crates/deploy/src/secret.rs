//! The one credential each deployment generates (no default passwords): a
//! random password, shown once to the requester, and the SHA-512-crypt hash
//! of it that Linux seeds carry instead of the password itself.

use std::fmt;

use rand::Rng;
use rand::rngs::OsRng;
use sha_crypt::{PasswordHasher, ShaCrypt};
use zeroize::Zeroizing;

use overvisor_model::InvalidInput;
use serde::{Deserialize, Serialize};

use crate::GenerateError;

/// Letters and digits without look-alikes (0/O, 1/l/I), so the password
/// can be typed from the screen into a console.
const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
/// 20 characters of a 57-letter alphabet: about 116 bits.
const LENGTH: usize = 20;
/// SHA-crypt salts are at most 16 characters: 12 random bytes in base64.
const SALT_BYTES: usize = 12;

/// A generated password; wiped from memory when dropped, never printed by
/// `Debug`.
pub struct GeneratedPassword(Zeroizing<String>);

impl GeneratedPassword {
    /// A new random password with upper- and lower-case letters and digits,
    /// which also meets Windows' complexity rule (three of four classes).
    pub fn generate() -> Self {
        loop {
            let candidate: Zeroizing<String> = Zeroizing::new(
                (0..LENGTH)
                    .map(|_| char::from(ALPHABET[OsRng.gen_range(0..ALPHABET.len())]))
                    .collect(),
            );
            let has = |f: fn(&char) -> bool| candidate.chars().any(|c| f(&c));
            if has(char::is_ascii_uppercase)
                && has(char::is_ascii_lowercase)
                && has(char::is_ascii_digit)
            {
                return Self(candidate);
            }
        }
    }

    /// The plaintext, for the one response that shows it (and for
    /// Autounattend.xml, which has no hashed form).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `$6$rounds=5000$<salt>$<hash>`, as `/etc/shadow` and cloud-init's
    /// `hashed_passwd` take it.
    pub fn sha512_crypt(&self) -> Result<String, GenerateError> {
        let mut salt = [0u8; SALT_BYTES];
        OsRng.fill(&mut salt);
        ShaCrypt::SHA512
            .hash_password_with_salt(self.0.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| GenerateError::Password(e.to_string()))
    }
}

#[cfg(test)]
impl GeneratedPassword {
    /// A fixed password, for golden files.
    pub(crate) fn for_tests(password: &str) -> Self {
        Self(Zeroizing::new(password.to_owned()))
    }
}

impl fmt::Debug for GeneratedPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GeneratedPassword(<redacted>)")
    }
}

/// Secret text as a request carries it (a Windows product key): as typed,
/// never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestSecret(String);

impl RequestSecret {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RequestSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestSecret(<redacted>)")
    }
}

/// Five groups of five letters and digits.
const PRODUCT_KEY_GROUPS: usize = 5;

/// A checked Windows product key (`XXXXX-XXXXX-XXXXX-XXXXX-XXXXX`, upper
/// case): it reaches only the Autounattend.xml sealed to the job; wiped
/// from memory when dropped, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProductKey(Zeroizing<String>);

impl ProductKey {
    /// `text` (either case) as a product key; the error names `field` and
    /// never repeats the text.
    pub fn parse(field: &str, text: &str) -> Result<Self, InvalidInput> {
        let groups: Vec<&str> = text.split('-').collect();
        let well_formed = groups.len() == PRODUCT_KEY_GROUPS
            && groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !well_formed {
            return Err(InvalidInput::new(
                field,
                "must look like XXXXX-XXXXX-XXXXX-XXXXX-XXXXX (five groups of five letters \
                 and digits)",
            ));
        }
        Ok(Self(Zeroizing::new(text.to_ascii_uppercase())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProductKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProductKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha_crypt::PasswordVerifier;

    #[test]
    fn product_keys_are_checked_and_never_printed() {
        let key = ProductKey::parse("product_key", "vdyby-n7kwh-9gxr3-xbqx3-cvhd8").expect("ok");
        assert_eq!(key.expose(), "VDYBY-N7KWH-9GXR3-XBQX3-CVHD8");
        assert_eq!(format!("{key:?}"), "ProductKey(<redacted>)");
        let typed = RequestSecret::new("VDYBY-N7KWH-9GXR3-XBQX3-CVHD8");
        assert_eq!(format!("{typed:?}"), "RequestSecret(<redacted>)");
        for bad in [
            "",
            "VDYBY-N7KWH-9GXR3-XBQX3",
            "VDYBY-N7KWH-9GXR3-XBQX3-CVHD8-AAAAA",
            "VDYBYN7KWH9GXR3XBQX3CVHD8",
            "VDYBY-N7KWH-9GXR3-XBQX3-CVHD",
            "VDYBY-N7KWH-9GXR3-XBQX3-CVH<8",
            "VDYBY-N7KWH-9GXR3-XBQX3-CVHD8\n",
            " VDYBY-N7KWH-9GXR3-XBQX3-CVHD8",
            "VDYBY-N7KWH-9GXR3-XBQX3-CVHDÄ",
        ] {
            let refused = ProductKey::parse("product_key", bad).expect_err(bad);
            assert_eq!(refused.field, "product_key");
            assert!(
                bad.is_empty() || !refused.message.contains(bad.trim()),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn passwords_are_random_and_complex() {
        let a = GeneratedPassword::generate();
        let b = GeneratedPassword::generate();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), LENGTH);
        assert!(a.expose().bytes().all(|c| ALPHABET.contains(&c)));
        assert_eq!(format!("{a:?}"), "GeneratedPassword(<redacted>)");
    }

    #[test]
    fn the_hash_verifies_and_is_salted() {
        let p = GeneratedPassword::generate();
        let h1 = p.sha512_crypt().expect("hash");
        let h2 = p.sha512_crypt().expect("hash");
        assert!(h1.starts_with("$6$"), "{h1}");
        assert_ne!(h1, h2, "each hash has its own salt");
        assert!(!h1.contains(p.expose()));
        ShaCrypt::SHA512
            .verify_password(p.expose().as_bytes(), h1.as_str())
            .expect("verifies");
    }

    /// The hash must be what glibc's crypt(3) computes, since that is what
    /// checks it in the guest; Python's crypt module calls crypt(3).
    #[test]
    fn glibc_agrees() {
        let p = GeneratedPassword::generate();
        let hash = p.sha512_crypt().expect("hash");
        let out = std::process::Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-c",
                "import crypt, sys; sys.exit(crypt.crypt(sys.argv[1], sys.argv[2]) != sys.argv[2])",
                p.expose(),
                &hash,
            ])
            .status()
            .expect("python3 runs (scripts/install-deps installs it)");
        assert!(out.success(), "crypt(3) disagrees with {hash}");
    }
}
