//! Sealing and opening a [`Payload`].
//!
//! HPKE base mode to the guest's key, then an Ed25519 signature by the
//! control plane over everything the guest will read: the VM's UUID, the
//! deployment nonce, the recipient key, the encapsulated key and the
//! ciphertext. The HPKE associated data carries the same binding, so a
//! ciphertext opened under another UUID, nonce or key fails twice over.
//!
//! The guest checks in an order that gives the clearest reason: version,
//! size, signature (forged or altered), then whose it is (VM, deployment,
//! replay, key), then decryption, then the payload's own rules.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::keys::SuiteKem;
use crate::payload::{Payload, PayloadError};
use crate::{
    DeploymentNonce, GuestIdentity, GuestKey, GuestPublicKey, MAX_PAYLOAD_BYTES, ProvisioningKey,
    VERSION,
};

/// HPKE's `info`: the protocol and its version.
const INFO: &[u8] = b"overvisor-provision/v1";
/// What the signature covers starts with this, so it cannot be taken for
/// a signature of anything else.
const SIGNED: &[u8] = b"overvisor-provision/v1 sealed payload\0";
/// ChaCha20-Poly1305's tag.
const TAG_BYTES: usize = 16;

/// A payload sealed to one guest for one deployment, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedPayload {
    pub v: u8,
    pub vm_uuid: Uuid,
    pub nonce: DeploymentNonce,
    pub recipient: GuestPublicKey,
    #[serde(with = "crate::b64")]
    pub enc: Vec<u8>,
    #[serde(with = "crate::b64")]
    pub ciphertext: Vec<u8>,
    #[serde(with = "crate::b64")]
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the payload is not valid: {0}")]
    Invalid(#[from] PayloadError),
    #[error("the payload is {0} bytes, more than the limit of {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    #[error("the guest's public key is not usable: {0}")]
    Key(#[from] crate::keys::KeyError),
    #[error("cannot serialize the payload: {0}")]
    Json(#[from] serde_json::Error),
    #[error("HPKE sealing failed: {0}")]
    Hpke(String),
}

/// Why a guest refused a sealed payload. Each says what was wrong, never
/// what the payload held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("protocol version {0} is not supported (this agent speaks {VERSION})")]
    Version(u8),
    #[error("the sealed payload is {0} bytes, more than the limit of {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    #[error(
        "the payload is not signed by the control plane's provisioning key \
         (altered on the way, or signed by another key)"
    )]
    Signature,
    #[error("the payload is for VM {got}, this VM is {expected}")]
    OtherVm { expected: Uuid, got: Uuid },
    #[error("the payload is for another deployment (its nonce is not this VM's)")]
    OtherDeployment,
    #[error("the payload's deployment nonce was used already: a replay")]
    Replayed,
    #[error(
        "the payload was sealed to the public key {got}, not this agent's: \
         a key was substituted on the way"
    )]
    OtherKey { got: GuestPublicKey },
    #[error("the payload does not decrypt with this agent's key")]
    Decrypt,
    #[error("the decrypted payload is not a payload: {0}")]
    Malformed(String),
    #[error("the payload is not valid: {0}")]
    Invalid(PayloadError),
}

/// What the guest expects: its identity from the deployment's media, its
/// own key, and the nonces it has taken before.
pub struct Expectation<'a> {
    pub identity: &'a GuestIdentity,
    pub key: &'a GuestKey,
    pub used_nonces: &'a [DeploymentNonce],
}

/// The binding both HPKE's associated data and the signature carry.
fn binding(v: u8, vm_uuid: &Uuid, nonce: &DeploymentNonce, recipient: &GuestPublicKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(INFO.len() + 1 + 16 + 16 + 32);
    aad.extend_from_slice(INFO);
    aad.push(v);
    aad.extend_from_slice(vm_uuid.as_bytes());
    aad.extend_from_slice(nonce.as_bytes());
    aad.extend_from_slice(recipient.as_bytes());
    aad
}

/// What the control plane signs: the binding, then the encapsulated key
/// and the ciphertext, each with its length.
fn signed_message(aad: &[u8], enc: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED.len() + aad.len() + 16 + enc.len() + ciphertext.len());
    m.extend_from_slice(SIGNED);
    m.extend_from_slice(aad);
    for part in [enc, ciphertext] {
        m.extend_from_slice(&(part.len() as u64).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// Seals `payload` for the guest whose key is `recipient`, as VM `vm_uuid`
/// of the deployment `nonce`.
pub fn seal(
    key: &ProvisioningKey,
    vm_uuid: Uuid,
    nonce: DeploymentNonce,
    recipient: &GuestPublicKey,
    payload: &Payload,
) -> Result<SealedPayload, SealError> {
    payload.check()?;
    let plaintext = Zeroizing::new(serde_json::to_vec(payload)?);
    if plaintext.len() > MAX_PAYLOAD_BYTES {
        return Err(SealError::TooLarge(plaintext.len()));
    }
    seal_bytes(key, vm_uuid, nonce, recipient, &plaintext)
}

/// [`seal`] without the payload's checks (tests seal what a control plane
/// never would, to see the guest refuse it).
pub(crate) fn seal_bytes(
    key: &ProvisioningKey,
    vm_uuid: Uuid,
    nonce: DeploymentNonce,
    recipient: &GuestPublicKey,
    plaintext: &[u8],
) -> Result<SealedPayload, SealError> {
    let aad = binding(VERSION, &vm_uuid, &nonce, recipient);
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, SuiteKem>(
        &OpModeS::Base,
        &recipient.hpke()?,
        INFO,
        plaintext,
        &aad,
    )
    .map_err(|e| SealError::Hpke(e.to_string()))?;
    let enc = enc.to_bytes().to_vec();
    let signature = key.sign(&signed_message(&aad, &enc, &ciphertext)).to_vec();
    Ok(SealedPayload {
        v: VERSION,
        vm_uuid,
        nonce,
        recipient: *recipient,
        enc,
        ciphertext,
        signature,
    })
}

/// Verifies and opens `sealed` as the guest `expect` describes.
pub fn open(sealed: &SealedPayload, expect: &Expectation<'_>) -> Result<Payload, OpenError> {
    if sealed.v != VERSION {
        return Err(OpenError::Version(sealed.v));
    }
    let len = sealed.ciphertext.len().saturating_sub(TAG_BYTES);
    if len > MAX_PAYLOAD_BYTES {
        return Err(OpenError::TooLarge(len));
    }
    let aad = binding(sealed.v, &sealed.vm_uuid, &sealed.nonce, &sealed.recipient);
    let signed = signed_message(&aad, &sealed.enc, &sealed.ciphertext);
    if !expect
        .identity
        .provisioning_key
        .verifies(&signed, &sealed.signature)
    {
        return Err(OpenError::Signature);
    }
    if sealed.vm_uuid != expect.identity.vm_uuid {
        return Err(OpenError::OtherVm {
            expected: expect.identity.vm_uuid,
            got: sealed.vm_uuid,
        });
    }
    if expect.used_nonces.contains(&sealed.nonce) {
        return Err(OpenError::Replayed);
    }
    if sealed.nonce != expect.identity.nonce {
        return Err(OpenError::OtherDeployment);
    }
    if sealed.recipient != expect.key.public() {
        return Err(OpenError::OtherKey {
            got: sealed.recipient,
        });
    }
    let enc = <SuiteKem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc)
        .map_err(|_| OpenError::Decrypt)?;
    let plaintext = Zeroizing::new(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, SuiteKem>(
            &OpModeR::Base,
            expect.key.secret(),
            &enc,
            INFO,
            &sealed.ciphertext,
            &aad,
        )
        .map_err(|_| OpenError::Decrypt)?,
    );
    let payload: Payload =
        serde_json::from_slice(&plaintext).map_err(|e| OpenError::Malformed(json_error(&e)))?;
    payload.check().map_err(OpenError::Invalid)?;
    Ok(payload)
}

/// Where and what kind, never the text serde quotes (it may be a secret).
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests;
