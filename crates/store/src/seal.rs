//! Sealed secrets: private keys and host credentials are encrypted at rest
//! with XChaCha20-Poly1305 under a master key that lives outside the
//! database (a file or an environment variable). The associated data binds
//! each ciphertext to its row, so a sealed value copied into another row
//! (or column) fails to open instead of being used for the wrong account.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key is invalid: {0}")]
    BadMasterKey(String),
    #[error("cannot read or write the master key file: {0}")]
    Io(#[from] std::io::Error),
    #[error("sealed value could not be opened (wrong master key, or bound to another row)")]
    Open,
}

/// 32 bytes of key material. Never printed: `Debug` is redacted.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses the base64 form used in files and `OVERVISOR_MASTER_KEY`.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| SealError::BadMasterKey("not base64".into()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SealError::BadMasterKey("must decode to exactly 32 bytes".into()))?;
        Ok(Self(bytes))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Loads the key from `path`, creating it (mode 0600) when it does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), SealError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::from_base64(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_private_file(path, key.to_base64().as_bytes())?;
                Ok((key, true))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Seals and opens values under the master key, and derives keys of
/// their own for other purposes from it.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    /// The master key, for [`Sealer::derive_key`] only.
    master: std::sync::Arc<zeroize::Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    pub fn new(key: &MasterKey) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new((&key.0).into()),
            master: std::sync::Arc::new(zeroize::Zeroizing::new(key.0)),
        }
    }

    /// A key for `purpose` (e.g. the provisioning signing key), the same
    /// for every replica with this master key, and nothing to store:
    /// SHA-256 over a fixed label, the purpose and the master key.
    pub fn derive_key(&self, purpose: &str) -> zeroize::Zeroizing<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"overvisor derived key v1\0");
        h.update(purpose.as_bytes());
        h.update(b"\0");
        h.update(self.master.as_slice());
        zeroize::Zeroizing::new(h.finalize().into())
    }

    /// Returns `nonce || ciphertext`; `binding` names the row and column
    /// (e.g. `ssh_identities.private:<user id>`).
    pub fn seal(&self, binding: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: binding.as_bytes(),
        };
        // Encryption of an in-memory buffer with a valid key cannot fail.
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, binding: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: binding.as_bytes(),
        };
        self.cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let sealer = Sealer::new(&MasterKey::generate());
        let sealed = sealer.seal("row:1", b"secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(sealer.open("row:1", &sealed).expect("opens"), b"secret");
        assert!(sealer.open("row:2", &sealed).is_err(), "bound to its row");
        let other = Sealer::new(&MasterKey::generate());
        assert!(other.open("row:1", &sealed).is_err(), "bound to its key");
        assert!(sealer.open("row:1", &sealed[..10]).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let (k1, created) = MasterKey::load_or_create(&path).expect("create");
        assert!(created);
        let (k2, created) = MasterKey::load_or_create(&path).expect("load");
        assert!(!created);
        assert_eq!(k1.to_base64(), k2.to_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(format!("{k1:?}").contains("redacted"));
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
    }
}
