//! The client key a session logs in with.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::HashAlg;

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
        let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[7; 32]);
        Self(Arc::new(PrivateKey::from(pair)))
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({})", self.fingerprint())
    }
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
}
