//! The messages on the channel, one JSON object a line, each with the
//! protocol version, and the identity the deployment writes on the guest's
//! out-of-band media.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::seal::json_error;
use crate::{
    DeploymentNonce, GuestPublicKey, MAX_PAYLOAD_BYTES, ProvisioningPublicKey, SealedPayload,
    VERSION,
};

/// The longest line either side accepts: a sealed payload of the largest
/// size in base64, with room for its other fields.
pub const MAX_LINE_BYTES: usize = MAX_PAYLOAD_BYTES * 4 / 3 + 4096;

/// The name of the identity file on the seed media.
pub const IDENTITY_FILE: &str = "overvisor-identity.json";

/// What the guest knows before anything is said on the channel: who it is
/// and whose signature to trust. Public values only; the deployment puts
/// it on the seed media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestIdentity {
    pub v: u8,
    pub vm_uuid: Uuid,
    pub nonce: DeploymentNonce,
    pub provisioning_key: ProvisioningPublicKey,
}

impl GuestIdentity {
    pub fn new(
        vm_uuid: Uuid,
        nonce: DeploymentNonce,
        provisioning_key: ProvisioningPublicKey,
    ) -> Self {
        Self {
            v: VERSION,
            vm_uuid,
            nonce,
            provisioning_key,
        }
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and a number always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    pub fn from_json(text: &[u8]) -> Result<Self, WireError> {
        let id: Self = serde_json::from_slice(text).map_err(|e| WireError::Json(json_error(&e)))?;
        if id.v != VERSION {
            return Err(WireError::Version(id.v));
        }
        Ok(id)
    }
}

/// Where the agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    /// Has a key, waits for its payload.
    Waiting,
    /// Applied a payload before; takes no other.
    Applied,
}

/// How applying a payload went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Failed { reason: String },
}

/// Guest to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    Hello {
        v: u8,
        /// Absent once applied: there is nothing left to seal to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        public_key: Option<GuestPublicKey>,
        state: GuestState,
        vm_uuid: Uuid,
    },
    Status {
        v: u8,
        #[serde(flatten)]
        outcome: Outcome,
    },
}

/// Host to guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    Sealed(SealedPayload),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a message of {0} bytes is longer than the limit of {MAX_LINE_BYTES}")]
    TooLong(usize),
    #[error("not a message: {0}")]
    Json(String),
    #[error("protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(u8),
}

fn encode<T: Serialize>(message: &T) -> String {
    // Enums of strings, numbers and byte strings always serialize.
    serde_json::to_string(message).unwrap_or_default() + "\n"
}

fn decode<'a, T: Deserialize<'a>>(line: &'a str) -> Result<T, WireError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(WireError::TooLong(line.len()));
    }
    serde_json::from_str(line.trim_end()).map_err(|e| WireError::Json(json_error(&e)))
}

impl GuestMessage {
    pub fn hello(public_key: Option<GuestPublicKey>, state: GuestState, vm_uuid: Uuid) -> Self {
        Self::Hello {
            v: VERSION,
            public_key,
            state,
            vm_uuid,
        }
    }

    pub fn status(outcome: Outcome) -> Self {
        Self::Status {
            v: VERSION,
            outcome,
        }
    }

    /// One line, newline included.
    pub fn encode(&self) -> String {
        encode(self)
    }

    pub fn decode(line: &str) -> Result<Self, WireError> {
        let m: Self = decode(line)?;
        let v = match &m {
            Self::Hello { v, .. } | Self::Status { v, .. } => *v,
        };
        if v != VERSION {
            return Err(WireError::Version(v));
        }
        Ok(m)
    }
}

impl HostMessage {
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// The version of a sealed payload is the agent's to refuse, with the
    /// reason it reports.
    pub fn decode(line: &str) -> Result<Self, WireError> {
        decode(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GuestKey, ProvisioningKey};

    #[test]
    fn messages_round_trip_as_lines() {
        let key = GuestKey::generate().public();
        let uuid = Uuid::new_v4();
        for m in [
            GuestMessage::hello(Some(key), GuestState::Waiting, uuid),
            GuestMessage::hello(None, GuestState::Applied, uuid),
            GuestMessage::status(Outcome::Applied),
            GuestMessage::status(Outcome::Failed {
                reason: "useradd failed".into(),
            }),
        ] {
            let line = m.encode();
            assert_eq!(GuestMessage::decode(&line), Ok(m), "{line}");
        }
        let line = GuestMessage::status(Outcome::Applied).encode();
        assert_eq!(
            line,
            "{\"type\":\"status\",\"v\":1,\"status\":\"applied\"}\n"
        );
        assert_eq!(
            GuestMessage::decode(&line.replace("\"v\":1", "\"v\":9")),
            Err(WireError::Version(9))
        );
        assert!(matches!(
            GuestMessage::decode(&"x".repeat(MAX_LINE_BYTES + 1)),
            Err(WireError::TooLong(_))
        ));
    }

    #[test]
    fn the_identity_holds_no_secret() {
        let cp = ProvisioningKey::from_seed(&[1; 32]);
        let id = GuestIdentity::new(Uuid::new_v4(), DeploymentNonce::generate(), cp.public());
        let json = id.to_json();
        assert_eq!(GuestIdentity::from_json(json.as_bytes()), Ok(id));
        let keys: Vec<String> = serde_json::from_str::<serde_json::Value>(&json)
            .expect("json")
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["nonce", "provisioning_key", "v", "vm_uuid"]);
    }
}
