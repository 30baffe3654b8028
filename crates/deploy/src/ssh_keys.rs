//! SSH public keys from outside (a deployment request, an account's guest
//! keys): the one check every key passes before it can reach a guest's
//! `authorized_keys`. A key is parsed and re-encoded, so no input byte
//! reaches a seed unparsed; weak and unknown types are refused.

use overvisor_model::InvalidInput;
use ssh_key::{Algorithm, HashAlg, PublicKey};

use crate::text::check_chars;

/// RSA keys shorter than this are refused (OpenSSH refuses them too).
const MIN_RSA_BITS: u32 = 2048;
/// Longer than any public key of an accepted type (RSA 16384 is ~2.8 KiB).
const MAX_KEY_CHARS: usize = 16 * 1024;

/// A checked public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyLine {
    /// The key as the parser re-encodes it: `<type> <base64> [comment]`.
    pub openssh: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// Checks one OpenSSH public key line: printable ASCII on one line, no
/// options, a known algorithm (Ed25519, ECDSA, their security-key forms,
/// RSA of at least 2048 bits; not DSA). A private key is refused without
/// echoing any of it.
pub fn check_public_key(field: &str, key: &str) -> Result<PublicKeyLine, InvalidInput> {
    if key.contains("PRIVATE KEY") {
        return Err(InvalidInput::new(
            field,
            "is a private key: give the public key (the .pub file), and keep the private key to yourself",
        ));
    }
    check_chars(
        field,
        key,
        MAX_KEY_CHARS,
        // ASCII only: a comment with U+2028 would be a line break to YAML
        // readers such as cloud-init's.
        |c| c == ' ' || c.is_ascii_graphic(),
        "one public key per entry, printable ASCII, without line breaks",
    )?;
    let parsed = PublicKey::from_openssh(key.trim()).map_err(|e| {
        InvalidInput::new(
            field,
            format!("is not an OpenSSH public key (\"ssh-ed25519 AAAA… comment\"): {e}"),
        )
    })?;
    match parsed.algorithm() {
        Algorithm::Ed25519
        | Algorithm::Ecdsa { .. }
        | Algorithm::SkEd25519
        | Algorithm::SkEcdsaSha2NistP256 => {}
        Algorithm::Rsa { .. } => {
            let bits = parsed.key_data().rsa().map_or(0, |k| k.key_size());
            if bits < MIN_RSA_BITS {
                return Err(InvalidInput::new(
                    field,
                    format!("RSA key has {bits} bits; at least {MIN_RSA_BITS} needed"),
                ));
            }
        }
        other => {
            return Err(InvalidInput::new(
                field,
                format!("key type {} is not accepted", other.as_str()),
            ));
        }
    }
    let openssh = parsed
        .to_openssh()
        .map_err(|e| InvalidInput::new(field, format!("cannot be re-encoded: {e}")))?;
    Ok(PublicKeyLine {
        openssh,
        fingerprint: parsed.fingerprint(HashAlg::Sha256).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = include_str!("../tests/data/ed25519.pub");
    const RSA1024: &str = include_str!("../tests/data/rsa1024.pub");
    const DSA: &str = include_str!("../tests/data/dsa.pub");

    #[test]
    fn a_good_key_is_reencoded_with_its_fingerprint() {
        let key = check_public_key("public_key", &format!("  {}  ", ED25519.trim())).expect("ok");
        assert_eq!(key.openssh, ED25519.trim());
        assert!(key.fingerprint.starts_with("SHA256:"), "{key:?}");
    }

    #[test]
    fn bad_keys_are_refused_naming_the_field() {
        let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
        let cases = [
            (private, "private key"),
            ("ssh-ed25519 AAAA!!!notbase64", "not an OpenSSH public key"),
            ("", "must not be empty"),
            ("ssh-ed25519 AAAA\nssh-ed25519 AAAA", "line breaks"),
            (RSA1024.trim(), "at least 2048"),
            (DSA.trim(), "not accepted"),
        ];
        for (key, why) in cases {
            let err = check_public_key("public_key", key).expect_err(key);
            assert_eq!(err.field, "public_key");
            assert!(err.message.contains(why), "{key:?}: {err:?}");
            assert!(!err.message.contains("b3BlbnNzaC1rZXkt"), "echoed: {err:?}");
        }
    }
}
