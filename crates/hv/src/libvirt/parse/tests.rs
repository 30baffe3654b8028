//! Parser tests on outputs captured from libvirt 9.0 / QEMU 7.2.

use super::*;

const DUMPXML: &str = r#"<domain type='qemu' id='1'>
  <name>t1</name>
  <uuid>b7702944-95fc-4c09-bfe9-3cbd443f0d19</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://ubuntu.com/ubuntu/24.04"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/tmp/lab/img/vmlinux</kernel>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/t1.qcow2' index='2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' index='0' model='piix3-uhci'/>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/seed &amp; more.iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:25:f6:65'/>
      <source bridge='br0'/>
      <target dev='vnet0'/>
      <model type='e1000'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:00:00:02'/>
      <source network='default'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'/>
    </serial>
    <graphics type='vnc' port='5900' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
  </devices>
</domain>
"#;

#[test]
fn dumpxml_running() {
    let d = domain_xml(DUMPXML).expect("parses");
    assert_eq!(d.name, "t1");
    assert_eq!(
        d.uuid,
        Uuid::try_parse("b7702944-95fc-4c09-bfe9-3cbd443f0d19").ok()
    );
    assert!(d.running);
    assert_eq!(d.vcpus, 2);
    assert_eq!(d.memory_mib, 128);
    assert_eq!(d.os.as_deref(), Some("http://ubuntu.com/ubuntu/24.04"));
    assert_eq!(d.disks.len(), 2);
    assert_eq!(d.disks[0].target, "vda");
    assert_eq!(d.disks[0].bus.as_deref(), Some("virtio"));
    assert_eq!(d.disks[0].format.as_deref(), Some("qcow2"));
    assert_eq!(
        d.disks[0].source.as_deref(),
        Some("/var/lib/libvirt/images/t1.qcow2")
    );
    assert!(!d.disks[0].read_only);
    assert_eq!(d.disks[1].device, "cdrom");
    assert_eq!(d.disks[1].source.as_deref(), Some("/srv/seed & more.iso"));
    assert!(d.disks[1].read_only);
    assert_eq!(d.nics.len(), 2);
    assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:25:f6:65"));
    assert_eq!(d.nics[0].kind, "bridge");
    assert_eq!(d.nics[0].source.as_deref(), Some("br0"));
    assert_eq!(d.nics[0].model.as_deref(), Some("e1000"));
    assert_eq!(d.nics[0].host_device.as_deref(), Some("vnet0"));
    assert_eq!(d.nics[1].source.as_deref(), Some("default"));
    assert_eq!(d.graphics.len(), 1);
    assert_eq!(d.graphics[0].kind, "vnc");
    assert_eq!(d.graphics[0].port, Some(5900));
}

#[test]
fn dumpxml_inactive_and_units() {
    let xml = "<domain type='qemu'><name>a&amp;b</name><memory unit='GiB'>2</memory>\
               <vcpu>1</vcpu><devices><graphics type='vnc' port='-1' autoport='yes'/></devices></domain>";
    let d = domain_xml(xml).expect("parses");
    assert_eq!(d.name, "a&b");
    assert!(!d.running);
    assert_eq!(d.memory_mib, 2048);
    assert_eq!(d.graphics[0].port, None);
    assert_eq!(to_mib(1 << 30, Some("b")), 1024);
    assert_eq!(to_mib(1024, Some("M")), 1024);
}

#[test]
fn dumpxml_hostile() {
    // Custom entities are not expanded (no "billion laughs").
    let xml = r#"<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>
        <domain><name>&b;x</name><memory>1024</memory><vcpu>1</vcpu></domain>"#;
    let d = domain_xml(xml).expect("parses");
    assert_eq!(d.name, "x");
    assert!(domain_xml("<domain><name>x</name><memory>lots</memory></domain>").is_err());
    assert!(domain_xml("<domain><memory>1</memory></domain>").is_err());
    assert!(domain_xml("<domain><name>x</nam></domain>").is_err());
    assert!(domain_xml("").is_err());
}

#[test]
fn list_and_domstats() {
    let list = "b7702944-95fc-4c09-bfe9-3cbd443f0d19 t1\n0e5ad3b2-4a5e-4a0c-9a43-9f1c8f3a2b11 with space\n\n";
    let l = list_uuid_name(list).expect("parses");
    assert_eq!(l.len(), 2);
    assert_eq!(l[1].1, "with space");
    assert!(list_uuid_name("nonsense here").is_err());

    let stats = "Domain: 't1'\n  state.state=1\n  state.reason=1\n  balloon.maximum=131072\n  vcpu.current=1\n\n\
                 Domain: 'off'\n  state.state=5\n  state.reason=0\n";
    let s = domstats(stats);
    assert_eq!(
        stats_summary(&s["t1"]),
        (VmState::Running, Some(1), Some(128))
    );
    assert_eq!(stats_summary(&s["off"]), (VmState::ShutOff, None, None));
}

#[test]
fn facts() {
    let nodeinfo = "CPU model:           x86_64\nCPU(s):              2\nCPU frequency:       2100 MHz\n\
                    CPU socket(s):       1\nCore(s) per socket:  2\nThread(s) per core:  1\n\
                    NUMA cell(s):        1\nMemory size:         7694540 KiB\n";
    let mem = "total  :             24731700 KiB\nfree   :             20136480 KiB\n\
               buffers:                 2048 KiB\ncached :                10240 KiB\n";
    let version = "Compiled against library: libvirt 9.0.0\nUsing library: libvirt 9.0.0\n\
                   Using API: QEMU 9.0.0\nRunning hypervisor: QEMU 7.2.22\n";
    let f = host_facts("ovh1\n", nodeinfo, mem, version).expect("parses");
    assert_eq!(f.hostname, "ovh1");
    assert_eq!(f.cpus, 2);
    assert_eq!(f.cpu_mhz, Some(2100));
    assert_eq!(f.memory_total_mib, 7514);
    // Free counts buffers and page cache, as the usage graph does.
    assert_eq!(f.memory_free_mib, Some(19676));
    assert_eq!(f.hypervisor, "QEMU");
    assert_eq!(f.hypervisor_version, "7.2.22");
    assert_eq!(f.management_version, "9.0.0");
    assert!(host_facts("h", "", mem, version).is_err());
}

#[test]
fn events() {
    let e = event_line("event 'lifecycle' for domain 't1': Started Booted\r").expect("event");
    assert_eq!(
        (e.vm.as_str(), e.kind, e.detail.as_str()),
        ("t1", VmEventKind::Started, "Booted")
    );
    let e = event_line("event 'lifecycle' for domain 'it's': Stopped Destroyed").expect("event");
    assert_eq!((e.vm.as_str(), e.kind), ("it's", VmEventKind::Stopped));
    let e =
        event_line("2024-05-01 10:00:00.000+0000: event 'reboot' for domain 'web'").expect("event");
    assert_eq!((e.vm.as_str(), e.kind), ("web", VmEventKind::Rebooted));
    let e = event_line("event 'lifecycle' for domain 'x': PMSuspended Memory").expect("event");
    assert_eq!(e.kind, VmEventKind::PmSuspended);
    let e = event_line("event 'device-removed' for domain 'x': net0").expect("event");
    assert_eq!(
        (e.kind, e.detail.as_str()),
        (VmEventKind::Other, "device-removed")
    );
    assert!(event_line("").is_none());
    assert!(event_line("event loop timed out").is_none());
    assert!(event_line("event 'lifecycle' for domain 'broken").is_none());
}

#[test]
fn domifaddr_addresses() {
    let out = " Name       MAC address          Protocol     Address
-------------------------------------------------------------------------------
 lo         00:00:00:00:00:00    ipv4         127.0.0.1/8
 -          -                    ipv6         ::1/128
 enp1s0     52:54:00:6b:3c:58    ipv4         10.77.0.142/24
 -          -                    ipv6         fe80::5054:ff:fe6b:3c58/64
 -          -                    ipv6         fd00::5/64
 vnet0      52:54:00:6b:3c:58    ipv4         10.77.0.142/24
 bogus      x                    ipv4         not-an-ip/24
";
    assert_eq!(domifaddr(out), ["10.77.0.142", "fd00::5"]);
    assert!(domifaddr("").is_empty());
}

#[test]
fn usage_counters_of_a_running_domain() {
    // A lab guest: no disks, one NIC, no balloon device (so QEMU's RSS).
    let out = "Domain: 'probe1'\n  state.state=1\n  state.reason=1\n  cpu.time=3920000000\n  \
               cpu.user=3450000000\n  cpu.system=470000000\n  balloon.current=131072\n  \
               balloon.maximum=131072\n  balloon.rss=247528\n  vcpu.current=1\n  vcpu.maximum=1\n  \
               vcpu.0.state=1\n  vcpu.0.time=3440000000\n  net.count=1\n  net.0.name=vnet0\n  \
               net.0.rx.bytes=90\n  net.0.tx.bytes=0\n  block.count=0\n";
    let uuid = Uuid::nil();
    let r = vm_reading(uuid, &domstats(out)["probe1"]);
    assert!(r.running);
    assert_eq!(r.vcpus, Some(1));
    assert_eq!(
        r.cpu,
        Some(CpuReading::Time {
            busy_ns: 3_920_000_000,
            total_ns: None
        })
    );
    assert_eq!(r.memory_used_bytes, Some(247_528 * 1024));
    assert_eq!((r.net_rx_bytes, r.net_tx_bytes), (Some(90), Some(0)));
    assert_eq!((r.disk_read_bytes, r.disk_write_bytes), (Some(0), Some(0)));

    // Two disks summed; the guest's own balloon figures preferred.
    let out = "Domain: 'g'\n  state.state=1\n  balloon.available=1000\n  balloon.unused=400\n  \
               balloon.rss=5000\n  block.count=2\n  block.0.rd.bytes=10\n  block.0.wr.bytes=1\n  \
               block.1.rd.bytes=5\n  block.1.wr.bytes=2\n";
    let r = vm_reading(uuid, &domstats(out)["g"]);
    assert_eq!(r.memory_used_bytes, Some(600 * 1024));
    assert_eq!((r.disk_read_bytes, r.disk_write_bytes), (Some(15), Some(3)));
    // A disk without its counter makes the sum unknown, not smaller.
    let out = "Domain: 'h'\n  block.count=2\n  block.0.rd.bytes=10\n";
    assert_eq!(vm_reading(uuid, &domstats(out)["h"]).disk_read_bytes, None);

    // A domain that is off reports its state only.
    let r = vm_reading(uuid, &domstats("Domain: 'off'\n  state.state=5\n")["off"]);
    assert!(!r.running);
    assert_eq!(
        (r.cpu, r.memory_used_bytes, r.net_rx_bytes),
        (None, None, None)
    );
}

#[test]
fn host_usage_from_node_stats() {
    let cpu = "user:                 20540480000000\nsystem:                4719730000000\n\
               idle:                 52152440000000\niowait:                 321260000000\n";
    let mem = "total  :             24683792 KiB\nfree   :             21928020 KiB\n\
               buffers:                21036 KiB\ncached :              1983140 KiB\n";
    let (reading, total, used) = host_usage(cpu, mem);
    assert_eq!(
        reading,
        Some(CpuReading::Time {
            busy_ns: 25_260_210_000_000,
            total_ns: Some(77_733_910_000_000)
        })
    );
    assert_eq!(total, Some(24_683_792 * 1024));
    assert_eq!(
        used,
        Some((24_683_792 - 21_928_020 - 21_036 - 1_983_140) * 1024)
    );
    // The facts call the rest free: the two add up to the total.
    let nodeinfo = "CPU(s): 2\nMemory size: 24683792 KiB\n";
    let facts = host_facts("h", nodeinfo, mem, "").expect("parses");
    assert_eq!(
        facts.memory_free_mib,
        Some((24_683_792 * 1024 - used.expect("used")) >> 20)
    );
    assert_eq!(host_usage("", ""), (None, None, None));
}

#[test]
fn drives_holding_a_file_are_found_by_source() {
    let out = "file   disk    vda   /var/lib/libvirt/overvisor/vms/u/disk.qcow2\n\
               file   cdrom   sda   /isos/win.iso\n\
               file   cdrom   sdb   /var/lib/libvirt/overvisor/vms/u/seed.iso\n\
               file   cdrom   sdc   -\n";
    let seed = "/var/lib/libvirt/overvisor/vms/u/seed.iso";
    assert_eq!(drives_holding(out, seed), vec!["sdb".to_owned()]);
    // Ejected already: no drive holds it.
    assert!(drives_holding(&out.replace(seed, "-"), seed).is_empty());
    assert!(drives_holding("", seed).is_empty());
    // Not a prefix match.
    assert!(drives_holding(out, "/isos/win").is_empty());
}
