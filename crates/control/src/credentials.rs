//! Making and checking secrets: passwords (argon2id), API key and session
//! tokens (256 random bits, stored as SHA-256), and SSH identities (Ed25519).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rand::RngCore;
use rand::rngs::OsRng;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppError;

/// API tokens look like `ovk_<prefix>_<secret>`; the prefix finds the row.
pub const API_KEY_MARKER: &str = "ovk_";
const PREFIX_LEN: usize = 12;

pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    B64URL.encode(buf)
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A freshly minted API token and what is stored about it.
pub struct NewApiToken {
    pub token: String,
    pub prefix: String,
    pub hash: Vec<u8>,
}

pub fn new_api_token() -> NewApiToken {
    let mut raw = [0u8; PREFIX_LEN / 2];
    OsRng.fill_bytes(&mut raw);
    let prefix = hex::encode(raw);
    let token = format!("{API_KEY_MARKER}{prefix}_{}", random_token(32));
    let hash = sha256(token.as_bytes());
    NewApiToken {
        token,
        prefix,
        hash,
    }
}

/// Extracts the lookup prefix of a presented token, or `None` if it is not shaped like ours.
pub fn api_token_prefix(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(API_KEY_MARKER)?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == PREFIX_LEN
        && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        && secret.len() == 43)
        .then_some(prefix)
}

/// Hashing is CPU-bound (~tens of ms), so it runs off the async workers.
pub async fn hash_password(password: String) -> Result<String, AppError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AppError::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| AppError::Internal(format!("hashing task failed: {e}")))?
}

/// Verifies a password; with no stored hash, still spends the same time so
/// that response timing does not reveal which account names exist.
pub async fn verify_password(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let dummy;
        let encoded = match &stored {
            Some(s) => s.as_str(),
            None => {
                dummy = dummy_hash();
                dummy.as_str()
            }
        };
        let ok = PasswordHash::new(encoded)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && stored.is_some()
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(b"overvisor-timing-equalizer", &salt)
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
        .clone()
}

/// A generated password for bootstrap and resets: 20 characters from a
/// 56-symbol alphabet without look-alikes (~116 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(20);
    while out.len() < 20 {
        let mut byte = [0u8; 1];
        OsRng.fill_bytes(&mut byte);
        // Rejection sampling keeps the distribution uniform.
        let idx = usize::from(byte[0]);
        if idx < ALPHABET.len() * (256 / ALPHABET.len()) {
            out.push(char::from(ALPHABET[idx % ALPHABET.len()]));
        }
    }
    out
}

/// A new Ed25519 identity: (OpenSSH public key line, OpenSSH private key PEM).
pub fn generate_ssh_identity(comment: &str) -> Result<(String, Vec<u8>), AppError> {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| AppError::Internal(format!("encoding SSH public key: {e}")))?;
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| AppError::Internal(format!("encoding SSH private key: {e}")))?;
    Ok((public, private.as_bytes().to_vec()))
}

/// `SHA256:…` fingerprint of an OpenSSH public key line.
pub fn ssh_fingerprint(public_line: &str) -> Option<String> {
    russh::keys::ssh_key::PublicKey::from_openssh(public_line)
        .ok()
        .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_tokens_have_a_checkable_shape() {
        let t = new_api_token();
        assert_eq!(api_token_prefix(&t.token), Some(t.prefix.as_str()));
        assert_eq!(t.hash, sha256(t.token.as_bytes()));
        assert!(api_token_prefix("ovk_short_x").is_none());
        assert!(api_token_prefix("Bearer xyz").is_none());
        assert_ne!(new_api_token().token, t.token);
    }

    #[tokio::test]
    async fn passwords_round_trip() {
        let hash = hash_password("correct horse battery".into())
            .await
            .expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong".into(), Some(hash)).await);
        assert!(!verify_password("anything".into(), None).await);
    }

    #[test]
    fn generated_passwords_pass_policy() {
        let p = generate_password();
        assert_eq!(p.len(), 20);
        assert!(overvisor_model::account::check_password_policy(&p).is_ok());
    }

    #[test]
    fn ssh_identity_is_ed25519() {
        let (public, private) = generate_ssh_identity("overvisor:alice").expect("gen");
        assert!(public.starts_with("ssh-ed25519 "));
        assert!(public.ends_with("overvisor:alice"));
        assert!(String::from_utf8_lossy(&private).contains("BEGIN OPENSSH PRIVATE KEY"));
        assert!(ssh_fingerprint(&public).is_some_and(|f| f.starts_with("SHA256:")));
    }
}
