//! The client keys a session logs in with, and making new ones.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rand::RngCore;
use rand::rngs::OsRng;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding};

use super::SshError;

/// The private key we log in with. Its `Debug` shows the public
/// fingerprint only, so it cannot leak into logs or error messages.
#[derive(Clone)]
pub struct ClientKey(Arc<PrivateKey>);

impl ClientKey {
    /// Parses an OpenSSH (or PuTTY) private key without a passphrase.
    pub fn from_openssh(text: &str) -> Result<Self, SshError> {
        russh::keys::decode_secret_key(text, None)
            .map(|k| Self(Arc::new(k)))
            .map_err(|e| SshError::Key(e.to_string()))
    }

    pub fn load(path: &Path) -> Result<Self, SshError> {
        russh::keys::load_secret_key(path, None)
            .map(|k| Self(Arc::new(k)))
            .map_err(|e| SshError::Key(format!("{}: {e}", path.display())))
    }

    /// The public half in `authorized_keys` form.
    pub fn public_key_openssh(&self) -> String {
        self.0.public_key().to_openssh().unwrap_or_default()
    }

    pub fn fingerprint(&self) -> String {
        self.0.public_key().fingerprint(HashAlg::Sha256).to_string()
    }

    /// For authenticating with it; never leaves the SSH module.
    pub(super) fn private_key(&self) -> &Arc<PrivateKey> {
        &self.0
    }

    /// A fixed key from a seed, not a key file: nothing secret-looking in
    /// the tree.
    #[cfg(test)]
    pub(crate) fn from_seed_for_tests() -> Self {
        let pair = Ed25519Keypair::from_seed(&[7; 32]);
        Self(Arc::new(PrivateKey::from(pair)))
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({})", self.fingerprint())
    }
}

/// A new Ed25519 identity: (OpenSSH public key line, OpenSSH private key PEM).
pub fn generate_ed25519_identity(comment: &str) -> Result<(String, Vec<u8>), SshError> {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| SshError::Key(format!("encoding SSH public key: {e}")))?;
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| SshError::Key(format!("encoding SSH private key: {e}")))?;
    Ok((public, private.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_key_debug_hides_the_secret() {
        let key = ClientKey::from_seed_for_tests();
        let shown = format!("{key:?}");
        assert!(shown.starts_with("ClientKey(SHA256:"), "{shown}");
        assert!(!shown.contains("0707"));
        assert!(key.public_key_openssh().starts_with("ssh-ed25519 "));
        assert!(ClientKey::from_openssh("not a key").is_err());
    }

    #[test]
    fn generated_identity_is_ed25519_and_reads_back_as_a_client_key() {
        let (public, private) = generate_ed25519_identity("overvisor:alice").expect("gen");
        assert!(public.starts_with("ssh-ed25519 "));
        assert!(public.ends_with("overvisor:alice"));
        let pem = String::from_utf8(private).expect("PEM is text");
        assert!(pem.contains("BEGIN OPENSSH PRIVATE KEY"));
        let key = ClientKey::from_openssh(&pem).expect("parses");
        assert!(public.starts_with(&key.public_key_openssh()));
    }
}
