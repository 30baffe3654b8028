//! The parser on fixtures of Windows PowerShell 5.1's documented quirks
//! (each fixture names its source above its `---` line).

use super::*;

/// The raw bytes of a fixture, after its header.
fn fixture(text: &'static str) -> &'static str {
    text.split_once("---\n").map_or(text, |(_, body)| body)
}

#[test]
fn a_lone_object_with_bom_and_crlf_is_a_list_of_one() {
    let out = fixture(include_str!("../fixtures/list_single_object.txt"));
    assert!(out.starts_with('\u{feff}') && out.ends_with("\r\n"));
    let env = envelope("vm.list", out, "").expect("parses");
    assert!(env.ok);
    let vms: Vec<RawVm> = many(env.data)
        .into_iter()
        .map(|v| data("vm.list", v))
        .collect::<HvResult<_>>()
        .expect("vms");
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].name, "web 'one' ü");
    assert_eq!(state(&vms[0].state), VmState::Running);
    assert_eq!(vms[0].memory_bytes, Some(2 << 30));
}

#[test]
fn escapes_and_ms_dates_in_an_event_line() {
    let line = fixture(include_str!("../fixtures/event_date_escapes.txt"));
    let Some(EventLine::Change(ev)) = event_line(line).expect("parses") else {
        panic!("not a change");
    };
    assert_eq!(ev.vm, "it's <mine>");
    assert_eq!(ev.kind, VmEventKind::Stopped);
    assert_eq!(ev.detail, "Off");
    let raw: Value = serde_json::from_str(line.trim()).expect("json");
    let time = raw["data"]["time"].as_str().expect("time");
    assert_eq!(ms_date(time), Some(1_621_357_679_896));
    assert_eq!(
        ms_date("/Date(1621357679896+0100)/"),
        Some(1_621_357_679_896)
    );
    assert_eq!(ms_date("/Date(-5)/"), Some(-5));
    assert_eq!(ms_date("2021-05-18T17:07:59Z"), None);
}

#[test]
fn clixml_on_stderr_explains_empty_output() {
    let err = fixture(include_str!("../fixtures/stderr_clixml.txt"));
    let msgs = clixml_errors(err);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs[0].starts_with("Hyper-V\\Get-VM : The term 'Hyper-V\\Get-VM' is not recognized"));
    assert!(
        !msgs.iter().any(|m| m.contains("Preparing modules")),
        "progress is noise"
    );
    match envelope("vm.list", "", err) {
        Err(HvError::Parse(m)) => assert!(m.contains("is not recognized"), "{m}"),
        other => panic!("{other:?}"),
    }
    match envelope("vm.list", "\r\n", "") {
        Err(HvError::Parse(m)) => assert_eq!(m, "vm.list: no output"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_error_envelope_after_noise() {
    let out = fixture(include_str!("../fixtures/error_envelope.txt"));
    let env = envelope("vm.action", out, "").expect("parses");
    assert!(!env.ok);
    let e = env.error.expect("error");
    assert_eq!(e.code, "invalid_state");
    assert_eq!(e.message, "VM is Running");
    assert!(e.fqid.is_some_and(|f| f.starts_with("InvalidState,")));
}

#[test]
fn envelopes_must_be_one_and_for_the_op_asked() {
    let one = r#"{"ok":true,"op":"vm.state","data":"Off","error":null}"#;
    assert!(envelope("vm.state", one, "").is_ok());
    assert!(matches!(
        envelope("vm.info", one, ""),
        Err(HvError::Parse(_))
    ));
    let two = format!("{one}\n{one}\n");
    assert!(matches!(
        envelope("vm.state", &two, ""),
        Err(HvError::Parse(_))
    ));
    assert!(
        matches!(envelope("vm.state", "garbage", ""), Err(HvError::Parse(m)) if m.contains("no JSON envelope"))
    );
}

#[test]
fn every_hyperv_state_name_maps() {
    for (name, want) in [
        ("Running", VmState::Running),
        ("Starting", VmState::Running),
        ("Off", VmState::ShutOff),
        ("Saved", VmState::ShutOff),
        ("Paused", VmState::Paused),
        ("Stopping", VmState::ShuttingDown),
        ("Saving", VmState::ShuttingDown),
        ("OffCritical", VmState::ShutOff),
        ("Other", VmState::Unknown),
        ("7", VmState::Unknown),
    ] {
        assert_eq!(state(name), want, "{name}");
    }
}

#[test]
fn state_changes_say_what_they_leave_the_vm_in() {
    for (name, want) in [
        ("Running", VmEventKind::Started),
        ("Starting", VmEventKind::Started),
        ("Resuming", VmEventKind::Resumed),
        ("Off", VmEventKind::Stopped),
        ("Saved", VmEventKind::Stopped),
        ("Paused", VmEventKind::Suspended),
        ("Reset", VmEventKind::Rebooted),
        // On the way out: re-read.
        ("Stopping", VmEventKind::Other),
        ("Saving", VmEventKind::Other),
        ("Other", VmEventKind::Other),
    ] {
        assert_eq!(event_kind(name), want, "{name}");
    }
}

#[test]
fn nics_and_disks_convert() {
    let nic: RawNic = serde_json::from_value(serde_json::json!({
        "name": "Network Adapter", "mac": "00155D010203", "switch": "Default Switch", "ips": "10.0.0.5"
    }))
    .expect("nic");
    let (nic, ips) = nic.into_nic();
    assert_eq!(nic.mac.as_deref(), Some("00:15:5d:01:02:03"));
    assert_eq!(ips, ["10.0.0.5"], "a lone address is a list of one");
    let disk: RawDisk = serde_json::from_value(serde_json::json!({
        "controller": "SCSI", "number": 0, "location": 1, "path": "C:\\VMs\\a b.VHDX", "kind": "hard_disk"
    }))
    .expect("disk");
    let d = disk.into_disk();
    assert_eq!(d.target, "SCSI0:1");
    assert_eq!(d.format.as_deref(), Some("vhdx"));
    assert!(!d.read_only);
}

#[test]
fn heartbeats_and_noise_in_the_event_stream() {
    let hb = r#"{"ok":true,"op":"vm.events","data":{"type":"heartbeat","time":"2026-01-01T00:00:00Z"},"error":null}"#;
    assert_eq!(event_line(hb).expect("ok"), Some(EventLine::Heartbeat));
    assert_eq!(event_line("").expect("ok"), None);
    assert_eq!(event_line("#< CLIXML").expect("ok"), None);
    let failed = r#"{"ok":false,"op":"vm.events","data":null,"error":{"code":"host_error","fqid":null,"message":"WMI gone"}}"#;
    assert!(matches!(event_line(failed), Err(HvError::Host(m)) if m.contains("WMI gone")));
}
