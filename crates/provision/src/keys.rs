//! The keys of the protocol: the control plane's Ed25519 provisioning key
//! (it signs every sealed payload), the guest's X25519 key pair (made on
//! first boot, the private half only in the agent's memory), and the
//! deployment's one-time nonce.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, Serializable};
use rand::RngCore;

use crate::b64;

/// The KEM of the protocol's HPKE suite.
pub(crate) type SuiteKem = X25519HkdfSha256;

/// Fixed-size public values as base64 in text and JSON.
macro_rules! base64_bytes {
    ($name:ident, $len:expr, $what:expr) => {
        impl $name {
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parses the base64 form.
            pub fn parse(text: &str) -> Result<Self, KeyError> {
                let bytes =
                    b64::array::<$len>(text.trim()).map_err(|why| KeyError { what: $what, why })?;
                Self::from_bytes(bytes)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&b64::encode(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A key or nonce that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct KeyError {
    pub what: &'static str,
    pub why: String,
}

/// The control plane's signing key. Derived from its master key, so every
/// replica signs with the same one and nothing new is stored.
pub struct ProvisioningKey(SigningKey);

impl fmt::Debug for ProvisioningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProvisioningKey(public {})", self.public())
    }
}

impl ProvisioningKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    pub fn public(&self) -> ProvisioningPublicKey {
        ProvisioningPublicKey(self.0.verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// The public half of [`ProvisioningKey`]: reaches the guest out of band.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProvisioningPublicKey([u8; 32]);

base64_bytes!(ProvisioningPublicKey, 32, "provisioning public key");

impl ProvisioningPublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError {
            what: "provisioning public key",
            why: "not an Ed25519 public key".into(),
        })?;
        Ok(Self(bytes))
    }

    /// Whether `signature` is this key's over `message` (strict: no
    /// malleable or small-order forms).
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        key.verify_strict(message, &signature).is_ok()
    }
}

/// The guest's key pair for one provisioning. The private key is zeroed
/// when dropped (the HPKE crate's X25519 secret does it) and never leaves
/// the process.
pub struct GuestKey {
    secret: <SuiteKem as Kem>::PrivateKey,
    public: GuestPublicKey,
}

impl fmt::Debug for GuestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestKey(public {})", self.public)
    }
}

impl GuestKey {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Self {
        let (secret, public) = SuiteKem::gen_keypair();
        let public = GuestPublicKey(array32(&public.to_bytes()));
        Self { secret, public }
    }

    pub fn public(&self) -> GuestPublicKey {
        self.public
    }

    pub(crate) fn secret(&self) -> &<SuiteKem as Kem>::PrivateKey {
        &self.secret
    }
}

fn array32(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes[..32]);
    out
}

/// The public half of [`GuestKey`], as the guest publishes it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GuestPublicKey([u8; 32]);

base64_bytes!(GuestPublicKey, 32, "guest public key");

impl GuestPublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        Ok(Self(bytes))
    }

    pub(crate) fn hpke(&self) -> Result<<SuiteKem as Kem>::PublicKey, KeyError> {
        <SuiteKem as Kem>::PublicKey::from_bytes(&self.0).map_err(|_| KeyError {
            what: "guest public key",
            why: "not an X25519 public key".into(),
        })
    }
}

/// One deployment's one-time value: the payload is bound to it, and an
/// agent takes each nonce once.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeploymentNonce([u8; 16]);

base64_bytes!(DeploymentNonce, 16, "deployment nonce");

impl DeploymentNonce {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Result<Self, KeyError> {
        Ok(Self(bytes))
    }
}
