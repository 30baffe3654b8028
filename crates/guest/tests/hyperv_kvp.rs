//! The agent over Hyper-V KVP against the lab's scripted Hyper-V host: the
//! driver sets host items (`vm.kvp`), the stand-in keeps them as the VM's
//! pool 0 file as a Linux KVP daemon would, the agent binary reads them
//! (its identity too: no seed media on Hyper-V), writes its hello and
//! status to pool 1, and the driver reads those back as guest items.
//! Real Hyper-V and a real KVP daemon are not involved (docs/provisioning.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Guest, assert_root, exited};
use overvisor_hv::hyperv::{KvpItem, KvpPool};
use overvisor_hv::{HostKeyPolicy, HypervDriver, Hypervisor, SshConfig, SshSession};
use overvisor_model::host::HostKeyFingerprint;
use overvisor_model::vm::{VmName, VmState};
use overvisor_provision::{GuestMessage, HostMessage, Outcome, kvp};
use overvisor_testkit::Lab;

const WAIT: Duration = Duration::from_secs(60);

fn items(prefix: &str, message: &str) -> Vec<KvpItem> {
    kvp::chunk(prefix, message)
        .into_iter()
        .map(|(name, value)| KvpItem { name, value })
        .collect()
}

/// The guest's message `prefix` as the host reads it, once whole.
async fn guest_says(d: &HypervDriver, vm: &VmName, prefix: &str) -> GuestMessage {
    let until = Instant::now() + WAIT;
    loop {
        let got: Vec<(String, String)> = d
            .kvp_get(vm, KvpPool::GuestToHost)
            .await
            .unwrap()
            .into_iter()
            .map(|i| (i.name, i.value))
            .collect();
        if let Some(line) = kvp::unchunk(prefix, &got) {
            return GuestMessage::decode(&line).unwrap();
        }
        assert!(
            Instant::now() < until,
            "no {prefix} among the guest's items"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_agent_takes_its_identity_and_payload_over_kvp_from_the_scripted_host() {
    assert_root();
    let lab = Lab::load();
    let host = lab.hyperv_host(0);
    let _lock = host.shared();
    let key = overvisor_hv::ClientKey::from_openssh(&lab.client_key_pem()).unwrap();
    let pinned = HostKeyFingerprint::parse(&host.host_key_fingerprint).unwrap();
    let cfg = SshConfig::new(
        host.address.clone(),
        host.port,
        host.user.clone(),
        key,
        HostKeyPolicy::Pinned(pinned),
    );
    let d = HypervDriver::new(SshSession::new(cfg));
    let prefix = format!("sealed-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    host.add_vms(&prefix, 1);
    let vm = VmName::parse(&format!("{prefix}-001")).unwrap();
    d.start(&vm).await.unwrap();
    let until = Instant::now() + WAIT;
    while d.vm_state(&vm).await.unwrap() != VmState::Running {
        assert!(Instant::now() < until, "{vm} did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let g = Guest::new();
    d.kvp_set(&vm, &items(kvp::IDENTITY, &g.identity.to_json()))
        .await
        .unwrap();
    let pools = host.home.join("kvp").join(vm.as_str());
    let mut agent = g.agent_with(&["--channel", "kvp", "--kvp-dir", pools.to_str().unwrap()]);

    let GuestMessage::Hello {
        public_key: Some(guest_key),
        vm_uuid,
        ..
    } = guest_says(&d, &vm, kvp::HELLO).await
    else {
        panic!("no key in the hello");
    };
    assert_eq!(vm_uuid, g.identity.vm_uuid, "the identity came over KVP");

    // Another VM's payload first: refused, nothing applied.
    let other = g.seal_for(&g.cp, uuid::Uuid::new_v4(), &guest_key);
    d.kvp_set(
        &vm,
        &items(kvp::SEALED, &HostMessage::Sealed(other).encode()),
    )
    .await
    .unwrap();
    match guest_says(&d, &vm, kvp::STATUS).await {
        GuestMessage::Status {
            outcome: Outcome::Failed { reason },
            ..
        } => assert!(reason.contains("is for VM"), "{reason}"),
        m => panic!("{m:?}"),
    }
    g.assert_nothing_applied();

    let sealed = g.seal_for(&g.cp, g.identity.vm_uuid, &guest_key);
    let line = HostMessage::Sealed(sealed).encode();
    let sent = items(kvp::SEALED, &line);
    assert!(sent.len() > 2, "the payload takes several items");
    d.kvp_set(&vm, &sent).await.unwrap();
    assert_eq!(exited(&mut agent), 0);
    assert!(matches!(
        guest_says(&d, &vm, kvp::STATUS).await,
        GuestMessage::Status {
            outcome: Outcome::Applied,
            ..
        }
    ));
    g.assert_applied();
    let _ = d.force_stop(&vm).await;
}
