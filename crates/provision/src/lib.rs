//! Sealed provisioning: how the control plane hands a new guest its secrets
//! (users, password hashes, SSH keys, files) so that only that guest can
//! read them and nobody on the way can forge or alter them.
//!
//! - The guest agent makes an X25519 key pair on first boot and publishes
//!   the public half ([`wire::GuestMessage::Hello`]).
//! - The control plane seals the [`Payload`] to it with HPKE (RFC 9180,
//!   base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305)
//!   and signs the result with its Ed25519 provisioning key
//!   ([`seal::seal`]). The associated data binds the VM's UUID, the
//!   deployment's one-time nonce and the recipient key.
//! - The guest knows the provisioning public key, its UUID and the nonce
//!   from media the deployment wrote ([`GuestIdentity`]: no secret there)
//!   and refuses anything else ([`seal::open`]).
//!
//! No I/O here: the agent (`overvisor-guest`) and the control plane move
//! the bytes; this crate decides what they mean.

mod b64;
pub mod keys;
pub mod kvp;
pub mod payload;
pub mod seal;
pub mod wire;

pub use keys::{DeploymentNonce, GuestKey, GuestPublicKey, ProvisioningKey, ProvisioningPublicKey};
pub use payload::{Payload, PayloadError};
pub use seal::{Expectation, OpenError, SealError, SealedPayload};
pub use wire::{GuestIdentity, GuestMessage, GuestState, HostMessage, Outcome, WireError};

/// The protocol version every message carries.
pub const VERSION: u8 = 1;

/// The largest payload, as JSON before sealing: a few users, keys and
/// configuration files, not disk images.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
