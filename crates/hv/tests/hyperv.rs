//! The Hyper-V driver against the lab's scripted Hyper-V host (the first of
//! `scripts/lab up --hyperv N`): every operation and its failures, over SSH,
//! through the same stand-in that refuses any script text or parameter the
//! driver's scripts would not send.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use futures::StreamExt;
use overvisor_hv::hyperv::{KvpItem, KvpPool, script};
use overvisor_hv::{CommandLine, HvError, HypervDriver, Hypervisor, SshSession};
use overvisor_model::host::HostKeyFingerprint;
use overvisor_model::vm::{VmAction, VmEventKind, VmName, VmState};
use overvisor_testkit::{HypervLabHost, Lab};

use common::eventually;

const WAIT: Duration = Duration::from_secs(20);

fn ssh(lab: &Lab, host: &HypervLabHost, command_timeout: Duration) -> SshSession {
    let pinned = HostKeyFingerprint::parse(&host.host_key_fingerprint).unwrap();
    let mut cfg = common::config_for(
        lab,
        &host.address,
        host.port,
        &host.user,
        overvisor_hv::HostKeyPolicy::Pinned(pinned),
    );
    cfg.command_timeout = command_timeout;
    SshSession::new(cfg)
}

fn driver(lab: &Lab, host: &HypervLabHost) -> HypervDriver {
    HypervDriver::new(ssh(lab, host, Duration::from_secs(20)))
}

/// `count` fresh VMs of this test's own (Off), so tests do not meet.
fn fresh_vms(host: &HypervLabHost, tag: &str, count: usize) -> Vec<VmName> {
    let prefix = format!("{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    host.add_vms(&prefix, count);
    (1..=count)
        .map(|i| VmName::parse(&format!("{prefix}-{i:03}")).unwrap())
        .collect()
}

async fn wait_state(d: &HypervDriver, vm: &VmName, want: VmState) {
    eventually(WAIT, &format!("{vm} {want}"), || async move {
        (d.vm_state(vm).await.unwrap() == want).then_some(())
    })
    .await;
}

/// Until the guest runs and reports its addresses: Hyper-V's Starting
/// already counts as running, but refuses a shutdown.
async fn wait_booted(d: &HypervDriver, vm: &VmName) {
    eventually(WAIT, &format!("{vm} booted"), || async move {
        (!d.vm_info(vm).await.unwrap().ips.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn facts_list_and_info_with_odd_names() {
    let lab = Lab::load();
    let host = lab.hyperv_host(0);
    let _lock = host.shared();
    let d = driver(&lab, host);
    let facts = d.host_facts().await.unwrap();
    assert_eq!(facts.hypervisor, "Hyper-V");
    assert_eq!(facts.hostname, host.name.to_uppercase());
    assert_eq!(facts.cpus, 16);
    assert!(facts.management_version.contains("PowerShell 5.1"));

    let list = d.list_vms().await.unwrap();
    let odd = "odd name ü 'x' [1]";
    let vm = list
        .iter()
        .find(|v| v.name == odd)
        .expect("odd name listed");
    assert_eq!(vm.memory_mib, Some(1024));
    // By name (wildcard characters and quotes included) and by Id.
    for r in [VmName::parse(odd).unwrap(), VmName::from_uuid(vm.uuid)] {
        let info = d.vm_info(&r).await.unwrap();
        assert_eq!(info.name, odd);
        assert_eq!(info.uuid, vm.uuid);
        assert_eq!(info.disks.iter().filter(|d| d.device == "disk").count(), 1);
        assert_eq!(info.disks.iter().filter(|d| d.device == "cdrom").count(), 1);
        assert_eq!(info.nics.len(), 1);
    }
    let missing = VmName::parse("no such vm ✓").unwrap();
    assert!(matches!(
        d.vm_info(&missing).await,
        Err(HvError::NotFound(_))
    ));
    assert!(matches!(d.start(&missing).await, Err(HvError::NotFound(_))));
}

#[tokio::test]
async fn every_lifecycle_action_and_invalid_transitions() {
    let lab = Lab::load();
    let host = lab.hyperv_host(0);
    let _lock = host.shared();
    let d = driver(&lab, host);
    let vm = &fresh_vms(host, "life", 1)[0];

    let off = d.vm_info(vm).await.unwrap();
    assert!(off.ips.is_empty(), "no addresses while off");
    for a in [
        VmAction::Shutdown,
        VmAction::Suspend,
        VmAction::Resume,
        VmAction::Reset,
    ] {
        assert!(
            matches!(d.act(vm, a).await, Err(HvError::InvalidState { action, .. }) if action == a),
            "{a} on an off VM"
        );
    }
    d.start(vm).await.unwrap();
    assert_eq!(d.vm_state(vm).await.unwrap(), VmState::Running, "Starting");
    assert!(matches!(
        d.start(vm).await,
        Err(HvError::InvalidState { .. })
    ));
    wait_booted(&d, vm).await;
    // The addresses the inventory keeps: every VM asked for, in one script;
    // the guest's link-local address left out, as vm_info leaves it out.
    let uuid = d.vm_info(vm).await.unwrap().uuid;
    let other = uuid::Uuid::new_v4();
    let found = d.vm_addresses(&[uuid, other]).await.unwrap();
    assert_eq!(
        found,
        [(uuid, vec!["172.20.0.3".to_owned()]), (other, Vec::new())]
    );
    assert_eq!(d.vm_info(vm).await.unwrap().ips, ["172.20.0.3"]);

    d.suspend(vm).await.unwrap();
    assert_eq!(d.vm_state(vm).await.unwrap(), VmState::Paused);
    d.resume(vm).await.unwrap();
    d.reboot(vm).await.unwrap();
    d.reset(vm).await.unwrap();
    assert_eq!(d.vm_state(vm).await.unwrap(), VmState::Running);

    d.save(vm).await.unwrap();
    wait_state(&d, vm, VmState::ShutOff).await;
    d.start(vm).await.unwrap();
    wait_booted(&d, vm).await;

    d.shutdown(vm).await.unwrap();
    wait_state(&d, vm, VmState::ShutOff).await;
    d.start(vm).await.unwrap();
    wait_booted(&d, vm).await;
    assert!(matches!(
        d.act(vm, VmAction::Delete).await,
        Err(HvError::InvalidState { .. })
    ));
    d.force_stop(vm).await.unwrap();
    assert_eq!(d.vm_state(vm).await.unwrap(), VmState::ShutOff);
    d.act(vm, VmAction::Delete).await.unwrap();
    assert!(matches!(d.vm_state(vm).await, Err(HvError::NotFound(_))));
}

#[tokio::test]
async fn graceful_stop_needs_the_shutdown_service() {
    let lab = Lab::load();
    let host = lab.hyperv_host(0);
    let _lock = host.exclusive(); // "no-ic" is shared by the lab
    let d = driver(&lab, host);
    let vm = VmName::parse("no-ic").unwrap();
    if d.vm_state(&vm).await.unwrap() != VmState::ShutOff {
        d.force_stop(&vm).await.unwrap();
    }
    d.start(&vm).await.unwrap();
    wait_booted(&d, &vm).await;
    for a in [VmAction::Shutdown, VmAction::Reboot] {
        match d.act(&vm, a).await {
            Err(HvError::InvalidState { message, .. }) => {
                assert!(
                    message.contains("shutdown integration service"),
                    "{message}"
                )
            }
            other => panic!("{a}: {other:?}"),
        }
    }
    d.force_stop(&vm).await.unwrap();
}

#[tokio::test]
async fn delete_keeps_disks_unless_asked_and_refuses_shared_ones() {
    let lab = Lab::load();
    let host = lab.hyperv_host(0);
    let _lock = host.shared();
    let d = driver(&lab, host);
    match d.undefine(&VmName::parse("shared-a").unwrap(), true).await {
        Err(HvError::Host(m)) => assert!(m.contains("shared-data.vhdx"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(
        d.vm_state(&VmName::parse("shared-a").unwrap())
            .await
            .is_ok()
    );

    let vms = fresh_vms(host, "del", 2);
    let files = |path: String| {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(host.home.join("state.json")).unwrap())
                .unwrap();
        state["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str() == Some(path.as_str()))
    };
    let disk = |vm: &VmName| format!("C:\\Hyper-V\\Disks\\{vm}.vhdx");
    d.undefine(&vms[0], false).await.unwrap();
    assert!(files(disk(&vms[0])), "the disk stays");
    d.undefine(&vms[1], true).await.unwrap();
    assert!(!files(disk(&vms[1])), "the disk went with the VM");
}

#[tokio::test]
async fn kvp_items_both_ways() {
    let lab = Lab::load();
    let host = lab.hyperv_host(0);
    let _lock = host.shared();
    let d = driver(&lab, host);
    let vm = &fresh_vms(host, "kvp", 1)[0];
    let item = |n: &str, v: &str| KvpItem {
        name: n.into(),
        value: v.into(),
    };
    // More than one call's worth of items, and a value over the limit.
    let mut items: Vec<KvpItem> = (0..140).map(|i| item(&format!("k{i}"), "v")).collect();
    let long = "ünïcode ".repeat(400);
    items.push(item("long", &long));
    d.kvp_set(vm, &items).await.unwrap();
    let got = d.kvp_get(vm, KvpPool::HostToGuest).await.unwrap();
    assert_eq!(got.len(), items.len());
    assert!(got.contains(&item("long", &long)));
    // Setting an existing key replaces it (the host refuses a duplicate add).
    d.kvp_set(vm, &[item("k1", "new"), item("long", "short now")])
        .await
        .unwrap();
    let got = d.kvp_get(vm, KvpPool::HostToGuest).await.unwrap();
    assert!(got.contains(&item("k1", "new")) && got.contains(&item("long", "short now")));
    assert_eq!(
        got.len(),
        items.len(),
        "the chunks went with the long value"
    );
    d.kvp_remove(vm, &["k1".into(), "long".into()])
        .await
        .unwrap();
    assert_eq!(
        d.kvp_get(vm, KvpPool::HostToGuest).await.unwrap().len(),
        items.len() - 2
    );

    assert!(
        d.kvp_get(vm, KvpPool::GuestToHost)
            .await
            .unwrap()
            .is_empty()
    );
    d.start(vm).await.unwrap();
    wait_booted(&d, vm).await;
    let guest = d.kvp_get(vm, KvpPool::GuestToHost).await.unwrap();
    assert!(
        guest.iter().any(|i| i.name == "NetworkAddressIPv4"),
        "{guest:?}"
    );
    d.force_stop(vm).await.unwrap();
}

#[tokio::test]
async fn events_report_state_changes() {
    let lab = Lab::load();
    let host = lab.hyperv_host(0);
    let _lock = host.shared();
    let d = driver(&lab, host);
    let vm = &fresh_vms(host, "ev", 1)[0];
    let mut events = d.events().await.unwrap();
    d.start(vm).await.unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|(_, detail)| detail == "Running") {
        let ev = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .unwrap();
        if ev.vm == vm.as_str() {
            seen.push((ev.kind, ev.detail));
        }
    }
    // Starting comes first; it already counts as running, so it says
    // Started and the inventory needs no re-read.
    assert_eq!(
        seen.first(),
        Some(&(VmEventKind::Started, "Starting".to_owned()))
    );
    d.force_stop(vm).await.unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .unwrap();
        if ev.vm == vm.as_str() {
            assert_eq!(ev.kind, VmEventKind::Stopped);
            assert_eq!(ev.detail, "Off");
            break;
        }
    }
}

#[tokio::test]
async fn quirks_stalls_and_drops() {
    let lab = Lab::load();
    let host = lab.hyperv_host(0);
    let _lock = host.exclusive();
    let d = driver(&lab, host);
    let normal = d.list_vms().await.unwrap();

    host.set_mode("quirks", 0.5);
    let quirky = d.list_vms().await;
    let info = d
        .vm_info(&VmName::parse("odd name ü 'x' [1]").unwrap())
        .await;
    host.set_mode("normal", 0.5);
    assert_eq!(quirky.unwrap().len(), normal.len());
    assert_eq!(info.unwrap().name, "odd name ü 'x' [1]");

    let short = HypervDriver::new(ssh(&lab, host, Duration::from_secs(2)));
    short.list_vms().await.unwrap();
    host.set_mode("stall", 0.5);
    let stalled = short.list_vms().await;
    host.set_mode("drop", 0.5);
    let dropped = short.list_vms().await;
    host.set_mode("normal", 0.5);
    assert!(matches!(stalled, Err(HvError::Timeout(_))), "{stalled:?}");
    assert!(matches!(dropped, Err(HvError::Transport(_))), "{dropped:?}");
    // The kept connection comes back by itself.
    eventually(WAIT, "a list after the drop", || async {
        short.list_vms().await.ok()
    })
    .await;
}

#[tokio::test]
async fn the_host_refuses_what_the_scripts_would_not_send() {
    let lab = Lab::load();
    let host = lab.hyperv_host(0);
    let _lock = host.shared();
    let s = ssh(&lab, host, Duration::from_secs(20));
    let run = |text: String| {
        let s = s.clone();
        async move {
            let cmd = CommandLine::new("powershell.exe")
                .args(["-NoProfile", "-NonInteractive", "-EncodedCommand"])
                .arg(script::encode_command(&text));
            s.exec(&cmd).await.unwrap()
        }
    };
    let good = script::VM_STATE.text(&serde_json::json!({ "vm": "win-01" }));
    assert!(run(good.clone()).await.success());
    let cases = [
        good.replace("v1", "v9"),
        good.replace("$ErrorActionPreference = 'Stop'", ""),
        script::VM_STATE.text(&serde_json::json!({ "vm": "win-01", "extra": 1 })),
        script::VM_STATE.text(&serde_json::json!({ "vm": 7 })),
        format!("{good}\nRemove-Item C:\\ -Recurse"),
    ];
    for text in cases {
        let out = run(text).await;
        assert!(!out.success());
        assert!(out.stdout.is_empty(), "no envelope for a refused script");
    }
    let piped = CommandLine::new("powershell.exe").args(["-NoProfile", "-Command", "-"]);
    assert!(!s.exec(&piped).await.unwrap().success());
}
