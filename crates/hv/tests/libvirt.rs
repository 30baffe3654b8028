//! The libvirt driver against real libvirtd + QEMU hosts of the lab, with
//! real (tiny) guests booting under TCG. Changes made behind the driver's
//! back go through the testkit (root virsh inside the host).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use futures::StreamExt;
use overvisor_hv::{CommandLine, HvError, Hypervisor, LibvirtDriver};
use overvisor_model::vm::{VmAction, VmEvent, VmEventKind, VmName, VmState, VmSummary};
use overvisor_testkit::{Lab, unique_name};
use tokio::io::AsyncReadExt;

const BOOT: Duration = Duration::from_secs(60);

fn name(s: &str) -> VmName {
    VmName::parse(s).unwrap()
}

async fn state(d: &LibvirtDriver, vm: &VmName) -> VmState {
    d.vm_state(vm).await.unwrap()
}

async fn wait_state(d: &LibvirtDriver, vm: &VmName, want: VmState, timeout: Duration) {
    common::eventually(timeout, &format!("{vm} to be {want}"), || async {
        (state(d, vm).await == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_list_their_own_domains_and_facts() {
    let lab = Lab::load();
    let [h1, h2] = lab.hosts(2) else {
        unreachable!()
    };
    let (d1, d2) = (
        common::driver(&lab, h1).await,
        common::driver(&lab, h2).await,
    );
    let only_on_h1 = lab.define_guest(h1, &unique_name("list"));

    let (l1, l2) = futures::join!(d1.list_vms(), d2.list_vms());
    let (l1, l2) = (l1.unwrap(), l2.unwrap());
    let mine = l1
        .iter()
        .find(|v| v.name == only_on_h1.name)
        .expect("listed on h1");
    assert_eq!(mine.state, VmState::ShutOff);
    assert_eq!(mine.memory_mib, Some(128));
    assert!(!l2.iter().any(|v| v.name == only_on_h1.name));
    // The UUID addresses the VM as well as the name does.
    let by_uuid = d1.vm_info(&VmName::from_uuid(mine.uuid)).await.unwrap();
    assert_eq!(by_uuid.name, only_on_h1.name);

    let (f1, f2) = futures::join!(d1.host_facts(), d2.host_facts());
    let (f1, f2) = (f1.unwrap(), f2.unwrap());
    assert_eq!(f1.hostname, h1.name);
    assert_eq!(f2.hostname, h2.name);
    assert_eq!(f1.hypervisor, "QEMU");
    assert!(f1.cpus >= 1 && f1.memory_total_mib > 0 && f1.memory_free_mib.is_some());
    assert!(!f1.management_version.is_empty() && !f1.hypervisor_version.is_empty());

    let missing = name(&unique_name("missing"));
    assert!(matches!(
        d1.vm_info(&missing).await,
        Err(HvError::NotFound(_))
    ));
    assert!(matches!(
        d1.start(&missing).await,
        Err(HvError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_lifecycle_action_on_a_real_guest() {
    let lab = Lab::load();
    let host = &lab.hosts[0];
    let d = common::driver(&lab, host).await;
    let guest = lab.define_guest(host, &unique_name("life"));
    let vm = name(&guest.name);
    assert_eq!(state(&d, &vm).await, VmState::ShutOff);

    d.start(&vm).await.unwrap();
    assert_eq!(host.domstate(&guest.name), "running");
    guest.wait_ready(1, BOOT);

    let info = d.vm_info(&vm).await.unwrap();
    assert_eq!(info.state, VmState::Running);
    assert_eq!((info.vcpus, info.memory_mib), (1, 128));
    assert_eq!(info.nics.len(), 1);
    assert_eq!(info.nics[0].source.as_deref(), Some("br0"));
    assert!(
        info.nics[0]
            .mac
            .as_deref()
            .unwrap()
            .starts_with("52:54:00:")
    );
    // The lab's guests have no network stack (no agent, no lease; and
    // libvirt 9.0 here cannot read the ARP table): the batch answers each
    // VM asked for with no address, and the kept virsh carries on.
    let found = d.vm_addresses(&[info.uuid, info.uuid]).await.unwrap();
    assert_eq!(found, [(info.uuid, Vec::new()), (info.uuid, Vec::new())]);
    assert!(
        d.list_vms()
            .await
            .unwrap()
            .iter()
            .any(|v| v.uuid == info.uuid)
    );
    let vnc_port = info.graphics[0].port.expect("VNC port while running");
    assert!(vnc_port >= 5900);

    // The VNC server answers through the SSH connection.
    let mut tunnel = d.vnc_tunnel(&vm).await.unwrap();
    let mut banner = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner[..4], b"RFB ");
    drop(tunnel);

    // Transitions the host refuses are typed, for a 409.
    assert!(matches!(
        d.start(&vm).await,
        Err(HvError::InvalidState {
            action: VmAction::Start,
            ..
        })
    ));
    assert!(matches!(
        d.resume(&vm).await,
        Err(HvError::InvalidState { .. })
    ));

    d.suspend(&vm).await.unwrap();
    assert_eq!(host.domstate(&guest.name), "paused");
    assert_eq!(state(&d, &vm).await, VmState::Paused);
    d.resume(&vm).await.unwrap();
    assert_eq!(host.domstate(&guest.name), "running");

    // Reboot goes through the guest (ACPI), reset does not; both boot again.
    d.reboot(&vm).await.unwrap();
    guest.wait_ready(2, BOOT);
    assert_eq!(guest.boots(), 2);
    d.reset(&vm).await.unwrap();
    guest.wait_ready(3, BOOT);
    assert_eq!(state(&d, &vm).await, VmState::Running);

    d.shutdown(&vm).await.unwrap();
    wait_state(&d, &vm, VmState::ShutOff, Duration::from_secs(30)).await;
    assert!(
        host.serial_log(&guest.name)
            .contains("LAB-ACPI-POWERBUTTON")
    );
    assert!(matches!(
        d.shutdown(&vm).await,
        Err(HvError::InvalidState { .. })
    ));

    d.start(&vm).await.unwrap();
    assert_eq!(host.domstate(&guest.name), "running");
    d.force_stop(&vm).await.unwrap();
    assert_eq!(host.domstate(&guest.name), "shut off");
    assert!(matches!(
        d.force_stop(&vm).await,
        Err(HvError::InvalidState { .. })
    ));

    d.undefine(&vm, true).await.unwrap();
    assert!(host.try_virsh(&["domstate", &guest.name]).is_err());
    assert!(matches!(d.vm_info(&vm).await, Err(HvError::NotFound(_))));
    guest.disarm();
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_console_on_a_pty() {
    let lab = Lab::load();
    let host = &lab.hosts[1];
    let d = common::driver(&lab, host).await;
    let guest = lab.define_guest(host, &unique_name("cons"));
    let vm = name(&guest.name);
    d.start(&vm).await.unwrap();
    guest.wait_ready(1, BOOT);

    let mut console = d.console(&vm, 80, 24).await.unwrap();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        let mut sent = false;
        loop {
            if !sent {
                // Give virsh a moment to attach before typing.
                tokio::time::sleep(Duration::from_millis(500)).await;
                console.write(b"echo CONSOLE-$((6*7))\r").await.unwrap();
                sent = true;
            }
            match console.read().await.unwrap() {
                overvisor_hv::PtyOutput::Data(d) => seen.push_str(&String::from_utf8_lossy(&d)),
                overvisor_hv::PtyOutput::Exit(_) => break false,
            }
            if seen.contains("CONSOLE-42") {
                break true;
            }
        }
    })
    .await;
    assert_eq!(found, Ok(true), "console said: {seen:?}");
    console.write(&[0x1d]).await.unwrap(); // ^] leaves virsh console
    console.close().await;
}

/// The next event of `kind` for `vm`; other events on the way are skipped
/// (QEMU starts paused, so libvirt may report Resumed before Started).
async fn wait_event(
    events: &mut futures::stream::BoxStream<'static, Result<VmEvent, HvError>>,
    vm: &str,
    kind: VmEventKind,
) -> VmEvent {
    let mut skipped = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .unwrap_or_else(|_| {
                panic!("no {kind:?} event for {vm} within 20 s; skipped {skipped:?}")
            })
            .expect("stream open")
            .unwrap();
        if ev.vm == vm && ev.kind == kind {
            return ev;
        }
        skipped.push(ev);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_report_out_of_band_changes() {
    let lab = Lab::load();
    let host = &lab.hosts[1];
    let d = common::driver(&lab, host).await;
    let mut events = d.events().await.unwrap();
    // virsh registers its callback a moment after it starts; a consumer
    // resyncs after subscribing, a test just waits.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let guest = lab.define_guest(host, &unique_name("evt"));
    wait_event(&mut events, &guest.name, VmEventKind::Defined).await;
    host.virsh(&["start", &guest.name]);
    let ev = wait_event(&mut events, &guest.name, VmEventKind::Started).await;
    assert_eq!(ev.detail, "Booted");
    host.virsh(&["destroy", &guest.name]);
    let ev = wait_event(&mut events, &guest.name, VmEventKind::Stopped).await;
    assert_eq!(ev.detail, "Destroyed");
    host.virsh(&["undefine", &guest.name]);
    wait_event(&mut events, &guest.name, VmEventKind::Undefined).await;
    guest.disarm();
    // Other tests (and services under test) run their own `virsh event` on
    // this host, so look only for the one under *this* SSH connection.
    assert_eq!(
        our_processes(&d, EVENT_LOOP).await.len(),
        1,
        "the stream's remote virsh is running"
    );
    drop(events);

    // Dropping the stream ends the remote virsh (it ran on a PTY).
    common::eventually(
        Duration::from_secs(10),
        "remote virsh event to exit",
        || async { our_processes(&d, EVENT_LOOP).await.is_empty().then_some(()) },
    )
    .await;
}

/// The remote command line of an event stream (`env` execs virsh).
const EVENT_LOOP: &str = "virsh -q -c qemu:///system event --all --loop";
/// The remote command line of the kept interactive virsh.
const KEPT_VIRSH: &str = "virsh -q -c qemu:///system";

/// Pids of the host's processes whose whole command line is `cmdline` and
/// that descend from this connection's sshd process (other tests and
/// services run the same commands on the same host).
async fn our_processes(d: &LibvirtDriver, cmdline: &str) -> Vec<u32> {
    // `pgrep -x -f`: the whole command line must match, so the script's
    // own (which holds the pattern) never does.
    const SCRIPT: &str = r#"
P=$$
while [ "$(ps -o comm= -p "$P")" != sshd ]; do
  P=$(ps -o ppid= -p "$P" | tr -d ' '); [ "${P:-0}" -gt 1 ] || exit 2
done
for v in $(pgrep -x -f "$1"); do
  a=$v
  while [ "${a:-0}" -gt 1 ]; do
    if [ "$a" = "$P" ]; then echo "$v"; break; fi
    a=$(ps -o ppid= -p "$a" | tr -d ' ')
  done
done"#;
    let out = d
        .ssh()
        .exec(&CommandLine::new("sh").args(["-c", SCRIPT, "sh", cmdline]))
        .await
        .unwrap();
    assert!(
        out.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout_text()
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_samples_and_facts_run_on_the_same_kept_virsh() {
    let lab = Lab::load();
    let d = common::driver(&lab, lab.host("ovh2")).await;
    d.list_vms().await.unwrap();
    let kept = our_processes(&d, KEPT_VIRSH).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    for _ in 0..3 {
        let reading = d.sample().await.unwrap();
        assert!(reading.memory_total_bytes.is_some_and(|b| b > 0));
        let facts = d.host_facts().await.unwrap();
        assert!(facts.cpus > 0);
    }
    // The usage command is the longest the kept virsh runs: once readline
    // redrew it (an 80-column line), the framing failed and every sample
    // replaced the kept virsh.
    assert_eq!(
        our_processes(&d, KEPT_VIRSH).await,
        kept,
        "samples and facts ran on the kept virsh without replacing it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_lists_share_one_kept_virsh_replaced_when_it_dies() {
    let lab = Lab::load();
    let host = lab.host("ovh2");
    let d = common::driver(&lab, host).await;
    let guest = lab.define_guest(host, &unique_name("kept"));
    let listed = |list: &[VmSummary]| {
        list.iter().any(|v| {
            v.name == guest.name && v.state == VmState::ShutOff && v.memory_mib == Some(128)
        })
    };

    for _ in 0..5 {
        assert!(listed(&d.list_vms().await.unwrap()));
    }
    let kept = our_processes(&d, KEPT_VIRSH).await;
    assert_eq!(kept.len(), 1, "one kept virsh serves every list: {kept:?}");
    assert_eq!(d.ssh().open_channels(), 1, "and holds one channel");

    // Killed behind the driver's back: lists keep answering (a virsh per
    // command meanwhile) and a new kept virsh takes its place.
    let kill = CommandLine::new("kill")
        .args(["-KILL"])
        .arg(kept[0].to_string());
    assert!(d.ssh().exec(&kill).await.unwrap().success());
    let replaced = common::eventually(Duration::from_secs(10), "a new kept virsh", || async {
        assert!(listed(&d.list_vms().await.unwrap()));
        let now = our_processes(&d, KEPT_VIRSH).await;
        (now.len() == 1 && now[0] != kept[0]).then(|| now[0])
    })
    .await;
    assert_ne!(replaced, kept[0]);
    assert_eq!(d.ssh().open_channels(), 1);

    // The kept virsh reports failures as virsh would: a host whose libvirt
    // URI is wrong fails the list with the host's message.
    let wrong = LibvirtDriver::new(d.ssh().clone(), "qemu:///nosuch");
    let err = wrong.list_vms().await.unwrap_err();
    assert!(
        matches!(err, HvError::Host(ref m) if m.contains("nosuch") || m.contains("connect")),
        "{err}"
    );
    assert_eq!(
        wrong.ssh().open_channels(),
        1,
        "only the first driver's kept virsh stays open"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn injection_attempts_never_reach_a_host() {
    let lab = Lab::load();
    let host = &lab.hosts[0];
    let d = common::driver(&lab, host).await;
    let marker = format!("/tmp/{}", unique_name("ov-pwned"));
    let hostile = [
        format!("x;touch {marker}"),
        format!("$(touch {marker})"),
        format!("`touch {marker}`"),
        format!("-x;touch {marker}"),
        format!("' ; touch {marker} ; '"),
        "--help".to_owned(),
    ];
    for name in &hostile {
        assert!(VmName::new_strict(name).is_err(), "{name:?} accepted");
        // A host could hold a VM of that name, so it is addressable: it
        // reaches virsh as one word, the value of --domain, and no further.
        let vm = VmName::parse(name).expect("a name a host may give");
        assert!(
            matches!(d.vm_info(&vm).await, Err(HvError::NotFound(_))),
            "{name:?}"
        );
    }
    for refused in [
        format!("x\ntouch {marker}"),
        String::new(),
        "a".repeat(1025),
    ] {
        assert!(VmName::parse(&refused).is_err(), "{refused:?} accepted");
    }
    assert!(matches!(
        d.vm_info(&name("x.y_z-1")).await,
        Err(HvError::NotFound(_))
    ));
    assert!(!host.path_exists(std::path::Path::new(&marker)));
    assert!(!std::path::Path::new(&marker).exists());
}
