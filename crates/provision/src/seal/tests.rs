use super::*;
use crate::payload::{File, User};
use crate::{GuestIdentity, HostMessage};

struct World {
    cp: ProvisioningKey,
    guest: GuestKey,
    identity: GuestIdentity,
}

fn world() -> World {
    let cp = ProvisioningKey::from_seed(&[7; 32]);
    let identity = GuestIdentity::new(Uuid::new_v4(), DeploymentNonce::generate(), cp.public());
    World {
        cp,
        guest: GuestKey::generate(),
        identity,
    }
}

fn payload() -> Payload {
    Payload {
        hostname: "web-01".into(),
        users: vec![User {
            name: "olga".into(),
            password_hash: Some("$6$salt$hash".into()),
            authorized_keys: vec!["ssh-ed25519 AAAAC3Nza olga@laptop".into()],
            sudo: true,
        }],
        files: vec![File {
            path: "/etc/app/token".into(),
            mode: 0o600,
            content: b"s3cret".to_vec(),
        }],
        network: None,
    }
}

impl World {
    fn seal(&self) -> SealedPayload {
        self.seal_as(
            &self.cp,
            self.identity.vm_uuid,
            self.identity.nonce,
            &self.guest.public(),
        )
    }

    /// Sealed by `cp` for `uuid`, `nonce` and `recipient` instead.
    fn seal_as(
        &self,
        cp: &ProvisioningKey,
        uuid: Uuid,
        nonce: DeploymentNonce,
        recipient: &GuestPublicKey,
    ) -> SealedPayload {
        seal(cp, uuid, nonce, recipient, &payload()).expect("seal")
    }

    /// `plain` sealed as is, without the control plane's checks.
    fn seal_plain(&self, plain: &[u8]) -> SealedPayload {
        seal_bytes(
            &self.cp,
            self.identity.vm_uuid,
            self.identity.nonce,
            &self.guest.public(),
            plain,
        )
        .expect("seal")
    }

    fn open(&self, sealed: &SealedPayload) -> Result<Payload, OpenError> {
        self.open_used(sealed, &[])
    }

    fn open_used(
        &self,
        sealed: &SealedPayload,
        used: &[DeploymentNonce],
    ) -> Result<Payload, OpenError> {
        open(
            sealed,
            &Expectation {
                identity: &self.identity,
                key: &self.guest,
                used_nonces: used,
            },
        )
    }
}

#[test]
fn round_trip_over_the_wire() {
    let w = world();
    let line = HostMessage::Sealed(w.seal()).encode();
    assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
    let HostMessage::Sealed(sealed) = HostMessage::decode(&line).expect("decode");
    let opened = w.open(&sealed).expect("open");
    assert!(opened == payload());
    // Neither the hash nor the file is readable in what travels.
    assert!(!line.contains("$6$salt$hash") && !line.contains("s3cret"));
}

#[test]
fn a_tampered_ciphertext_is_refused() {
    let w = world();
    let mut sealed = w.seal();
    sealed.ciphertext[3] ^= 1;
    assert_eq!(w.open(&sealed), Err(OpenError::Signature));
    let mut sealed = w.seal();
    sealed.enc[0] ^= 1;
    assert_eq!(w.open(&sealed), Err(OpenError::Signature));
}

#[test]
fn a_payload_for_another_vm_is_refused() {
    let w = world();
    let other = Uuid::new_v4();
    let sealed = seal(
        &w.cp,
        other,
        w.identity.nonce,
        &w.guest.public(),
        &payload(),
    )
    .expect("seal");
    assert_eq!(
        w.open(&sealed),
        Err(OpenError::OtherVm {
            expected: w.identity.vm_uuid,
            got: other
        })
    );
    // Rewriting the UUID in transit breaks the signature instead.
    let mut sealed = w.seal();
    sealed.vm_uuid = other;
    assert_eq!(w.open(&sealed), Err(OpenError::Signature));
}

#[test]
fn a_replayed_or_foreign_nonce_is_refused() {
    let w = world();
    let sealed = w.seal();
    assert_eq!(
        w.open_used(&sealed, &[w.identity.nonce]),
        Err(OpenError::Replayed)
    );
    let earlier = w.seal_as(
        &w.cp,
        w.identity.vm_uuid,
        DeploymentNonce::generate(),
        &w.guest.public(),
    );
    assert_eq!(w.open(&earlier), Err(OpenError::OtherDeployment));
}

#[test]
fn another_signer_is_refused() {
    let w = world();
    let forger = ProvisioningKey::from_seed(&[9; 32]);
    let sealed = w.seal_as(
        &forger,
        w.identity.vm_uuid,
        w.identity.nonce,
        &w.guest.public(),
    );
    assert_eq!(w.open(&sealed), Err(OpenError::Signature));
    let mut sealed = w.seal();
    sealed.signature.truncate(10);
    assert_eq!(w.open(&sealed), Err(OpenError::Signature));
}

/// The host swaps the guest's hello for its own key: it may learn what
/// the control plane sealed to it, but the guest takes none of it.
#[test]
fn a_key_injected_on_the_way_is_refused() {
    let w = world();
    let injected = GuestKey::generate();
    let sealed = w.seal_as(
        &w.cp,
        w.identity.vm_uuid,
        w.identity.nonce,
        &injected.public(),
    );
    assert_eq!(
        w.open(&sealed),
        Err(OpenError::OtherKey {
            got: injected.public()
        })
    );
    // Claiming the guest's key in the message does not help either.
    let mut relabelled = sealed;
    relabelled.recipient = w.guest.public();
    assert_eq!(w.open(&relabelled), Err(OpenError::Signature));
}

#[test]
fn an_oversized_payload_is_refused_both_ways() {
    let w = world();
    let mut big = payload();
    big.files[0].content = vec![b'x'; MAX_PAYLOAD_BYTES];
    let refused = seal(
        &w.cp,
        w.identity.vm_uuid,
        w.identity.nonce,
        &w.guest.public(),
        &big,
    );
    assert!(matches!(refused, Err(SealError::TooLarge(n)) if n > MAX_PAYLOAD_BYTES));
    let plain = vec![b' '; MAX_PAYLOAD_BYTES + 1];
    let sealed = w.seal_plain(&plain);
    assert_eq!(
        w.open(&sealed),
        Err(OpenError::TooLarge(MAX_PAYLOAD_BYTES + 1))
    );
}

#[test]
fn a_signed_payload_that_breaks_the_rules_is_refused() {
    let w = world();
    let mut bad = payload();
    bad.files[0].path = "/etc/../root/.ssh/x".into();
    let plain = serde_json::to_vec(&bad).expect("json");
    let sealed = w.seal_plain(&plain);
    let Err(OpenError::Invalid(e)) = w.open(&sealed) else {
        panic!("accepted a path with ..");
    };
    assert_eq!(e.field, "files[0].path");
    let sealed = w.seal_plain(br#"{"hostname": "x", "secret_field": "hunter2"}"#);
    let Err(OpenError::Malformed(why)) = w.open(&sealed) else {
        panic!("accepted an unknown field");
    };
    assert!(!why.contains("hunter2"), "{why}");
}

#[test]
fn another_version_is_refused() {
    let w = world();
    let mut sealed = w.seal();
    sealed.v = 2;
    assert_eq!(w.open(&sealed), Err(OpenError::Version(2)));
}

#[test]
fn payload_rules() {
    let mut p = payload();
    assert!(p.check().is_ok());
    p.users[0].password_hash = Some("$6$a:b".into());
    assert_eq!(
        p.check().map_err(|e| e.field),
        Err("users[0].password_hash".into())
    );
    let mut p = payload();
    p.users[0].authorized_keys[0].push_str("\nssh-rsa evil");
    assert!(p.check().is_err());
    let mut p = payload();
    p.users[0].name = "root".into();
    assert!(p.check().is_err());
    let mut p = payload();
    p.hostname = "a;b".into();
    assert!(p.check().is_err());
    let mut p = payload();
    p.files[0].mode = 0o10000;
    assert!(p.check().is_err());
    // Secrets stay out of Debug.
    let shown = format!("{:?}", payload());
    assert!(
        !shown.contains("hash") && !shown.contains("s3cret"),
        "{shown}"
    );
}
