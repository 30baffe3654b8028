//! Parsers for what `virsh` prints. Only machine-oriented outputs are parsed
//! (`list --uuid --name`, `domstats --raw`, `dumpxml`, key/value reports),
//! never the human tables, whose columns shift with names and locales.
//! Pure functions, so they are tested without a host.

use std::collections::HashMap;

use overvisor_model::host::HostFacts;
use overvisor_model::metrics::{CpuReading, VmReading};
use overvisor_model::vm::{VmDisk, VmEvent, VmEventKind, VmGraphics, VmNic, VmState};
use quick_xml::events::{BytesStart, Event};
use uuid::Uuid;

use crate::driver::HvError;

/// `virsh list --all --uuid --name`: one `<uuid> <name>` per line.
pub fn list_uuid_name(out: &str) -> Result<Vec<(Uuid, String)>, HvError> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (uuid, name) = l
                .trim_start()
                .split_once(' ')
                .ok_or_else(|| HvError::Parse(format!("list line without a name: {l:?}")))?;
            let uuid = Uuid::try_parse(uuid)
                .map_err(|_| HvError::Parse(format!("bad UUID in list line: {l:?}")))?;
            Ok((uuid, name.trim().to_owned()))
        })
        .collect()
}

/// The non-blank lines of `out`, trimmed and sorted (names one a line).
pub fn sorted_lines(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// `virsh domstats --raw`: `Domain: 'name'` headers, then `  key=value`.
pub fn domstats(out: &str) -> HashMap<String, HashMap<String, String>> {
    let mut all: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("Domain: ") {
            let name = rest
                .trim()
                .strip_prefix('\'')
                .and_then(|r| r.strip_suffix('\''));
            current = name.map(str::to_owned);
            if let Some(n) = &current {
                all.entry(n.clone()).or_default();
            }
        } else if let (Some(name), Some((k, v))) = (&current, line.trim().split_once('=')) {
            all.entry(name.clone())
                .or_default()
                .insert(k.to_owned(), v.to_owned());
        }
    }
    all
}

/// State, vCPUs and memory out of one domain's `domstats` keys.
pub fn stats_summary(stats: &HashMap<String, String>) -> (VmState, Option<u32>, Option<u64>) {
    let num = |k: &str| stats.get(k).and_then(|v| v.parse::<u64>().ok());
    let state = stats
        .get("state.state")
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(VmState::Unknown, VmState::from_libvirt_code);
    let vcpus = num("vcpu.current")
        .or_else(|| num("vcpu.maximum"))
        .and_then(|v| u32::try_from(v).ok());
    let memory_mib = num("balloon.maximum").map(|kib| kib / 1024);
    (state, vcpus, memory_mib)
}

/// One domain's usage counters out of its `domstats --raw --state
/// --cpu-total --balloon --block --interface --vcpu` keys.
///
/// Memory used is what the guest reports through its balloon driver
/// (available − unused) when it does, else the resident size of the QEMU
/// process on the host: the figure a host operator sees either way.
pub fn vm_reading(uuid: Uuid, stats: &HashMap<String, String>) -> VmReading {
    let num = |k: &str| stats.get(k).and_then(|v| v.parse::<u64>().ok());
    let (state, vcpus, _) = stats_summary(stats);
    let sum = |count: &str, prefix: &str, suffix: &str| -> Option<u64> {
        let n = num(count)?;
        (0..n)
            .map(|i| num(&format!("{prefix}.{i}.{suffix}")))
            .try_fold(0u64, |acc, v| Some(acc.saturating_add(v?)))
    };
    let guest_used = match (num("balloon.available"), num("balloon.unused")) {
        (Some(available), Some(unused)) => Some(available.saturating_sub(unused)),
        _ => None,
    };
    VmReading {
        uuid,
        running: state.is_active(),
        vcpus,
        cpu: num("cpu.time").map(|busy_ns| CpuReading::Time {
            busy_ns,
            total_ns: None,
        }),
        memory_used_bytes: guest_used
            .or_else(|| num("balloon.rss"))
            .map(|kib| kib * 1024),
        disk_read_bytes: sum("block.count", "block", "rd.bytes"),
        disk_write_bytes: sum("block.count", "block", "wr.bytes"),
        net_rx_bytes: sum("net.count", "net", "rx.bytes"),
        net_tx_bytes: sum("net.count", "net", "tx.bytes"),
    }
}

/// The host's own figures from `virsh nodecpustats` (cumulative
/// nanoseconds of all CPUs) and `nodememstats` (KiB). Busy is everything
/// but idle and I/O wait; used memory leaves out buffers and page cache,
/// which the kernel gives back on demand.
pub fn host_usage(
    cpustats: &str,
    memstats: &str,
) -> (Option<CpuReading>, Option<u64>, Option<u64>) {
    let cpu = key_values(cpustats);
    let mem = key_values(memstats);
    let ns = |k: &str| cpu.get(k).and_then(|v| leading_number(v));
    let kib = |k: &str| mem.get(k).and_then(|v| leading_number(v));
    let reading = match (ns("user"), ns("system"), ns("idle")) {
        (Some(user), Some(system), Some(idle)) => {
            let iowait = ns("iowait").unwrap_or(0);
            let busy_ns = user.saturating_add(system);
            Some(CpuReading::Time {
                busy_ns,
                total_ns: Some(busy_ns.saturating_add(idle).saturating_add(iowait)),
            })
        }
        _ => None,
    };
    let total = kib("total");
    let used = total.map(|t| t.saturating_sub(spare_kib(&mem).unwrap_or(0)));
    (reading, total.map(|k| k * 1024), used.map(|k| k * 1024))
}

/// Memory the kernel can hand out, from `nodememstats` (KiB): free, plus
/// buffers and page cache, which it gives back on demand. The facts' free
/// memory and the usage graph's used memory (the rest) both count it so,
/// so the deployment wizard says the same whichever it reads. `None`
/// without a `free` line.
fn spare_kib(mem: &HashMap<String, String>) -> Option<u64> {
    let kib = |k: &str| mem.get(k).and_then(|v| leading_number(v));
    let free = kib("free")?;
    Some(
        ["buffers", "cached"]
            .iter()
            .filter_map(|k| kib(k))
            .fold(free, u64::saturating_add),
    )
}

/// The parts of a domain's XML we show.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DomainXml {
    pub name: String,
    pub uuid: Option<Uuid>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<VmNic>,
    pub graphics: Vec<VmGraphics>,
    pub os: Option<String>,
    /// `<domain id=…>` is only present while the domain runs.
    pub running: bool,
}

fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.try_get_attribute(name)
        .ok()
        .flatten()
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

fn to_mib(value: u64, unit: Option<&str>) -> u64 {
    // libvirt's units: b, k/KiB (default), M/MiB, G/GiB, T/TiB, and SI ones.
    match unit.unwrap_or("KiB") {
        "b" | "bytes" => value >> 20,
        "KB" => value * 1000 / (1 << 20),
        "k" | "KiB" => value >> 10,
        "MB" => value * 1_000_000 / (1 << 20),
        "M" | "MiB" => value,
        "GB" => value * 1_000_000_000 / (1 << 20),
        "G" | "GiB" => value << 10,
        "T" | "TiB" => value << 20,
        _ => value >> 10,
    }
}

/// `virsh dumpxml`. Entities other than XML's five predefined ones and
/// character references are dropped, never expanded, so hostile XML cannot
/// blow up.
pub fn domain_xml(xml: &str) -> Result<DomainXml, HvError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut p = DomainParser::default();
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| HvError::Parse(format!("domain XML: {e}")))?;
        match ev {
            Event::Start(e) => {
                p.open(&e);
                p.path
                    .push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                p.text.clear();
            }
            Event::Empty(e) => {
                p.open(&e);
            }
            Event::Text(t) => {
                let t = t
                    .decode()
                    .map_err(|e| HvError::Parse(format!("domain XML: {e}")))?;
                p.text.push_str(&t);
            }
            Event::GeneralRef(r) => {
                let c = match r.as_ref() {
                    b"amp" => Some('&'),
                    b"lt" => Some('<'),
                    b"gt" => Some('>'),
                    b"quot" => Some('"'),
                    b"apos" => Some('\''),
                    _ => r.resolve_char_ref().ok().flatten(),
                };
                p.text.extend(c);
            }
            Event::End(_) => {
                p.close()?;
                p.path.pop();
                p.text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if p.dom.name.is_empty() {
        return Err(HvError::Parse("domain XML without a <name>".into()));
    }
    if let Some(c) = p.current_vcpus {
        p.dom.vcpus = c;
    }
    Ok(p.dom)
}

#[derive(Default)]
struct DomainParser {
    dom: DomainXml,
    /// Open elements above the one being read, outermost first.
    path: Vec<String>,
    text: String,
    memory_unit: Option<String>,
    current_vcpus: Option<u32>,
}

impl DomainParser {
    fn at(&self, want: &[&str]) -> bool {
        self.path.len() == want.len() && self.path.iter().zip(want).all(|(a, b)| a == b)
    }

    /// An element starts (or is empty); `self.path` holds its parents.
    fn open(&mut self, e: &BytesStart<'_>) {
        let name = e.local_name();
        let name = name.as_ref();
        let dev = ["domain", "devices"];
        match name {
            b"domain" if self.path.is_empty() => self.dom.running = attr(e, "id").is_some(),
            b"memory" if self.at(&["domain"]) => self.memory_unit = attr(e, "unit"),
            b"vcpu" if self.at(&["domain"]) => {
                self.current_vcpus = attr(e, "current").and_then(|c| c.parse().ok());
            }
            b"disk" if self.at(&dev) => self.dom.disks.push(VmDisk {
                target: String::new(),
                device: attr(e, "device").unwrap_or_else(|| "disk".into()),
                bus: None,
                source: None,
                format: None,
                read_only: false,
            }),
            b"interface" if self.at(&dev) => self.dom.nics.push(VmNic {
                mac: None,
                kind: attr(e, "type").unwrap_or_default(),
                source: None,
                model: None,
                host_device: None,
            }),
            b"graphics" if self.at(&dev) => self.dom.graphics.push(VmGraphics {
                kind: attr(e, "type").unwrap_or_default(),
                // -1 means "not assigned yet" (autoport, domain off).
                port: attr(e, "port").and_then(|p| p.parse::<u16>().ok()),
                listen: attr(e, "listen"),
            }),
            _ if self.at(&["domain", "devices", "disk"]) => {
                if let Some(d) = self.dom.disks.last_mut() {
                    match name {
                        b"target" => {
                            d.target = attr(e, "dev").unwrap_or_default();
                            d.bus = attr(e, "bus");
                        }
                        b"source" => {
                            d.source = attr(e, "file")
                                .or_else(|| attr(e, "dev"))
                                .or_else(|| attr(e, "name"))
                                .or_else(|| {
                                    let vol = attr(e, "volume")?;
                                    Some(match attr(e, "pool") {
                                        Some(pool) => format!("{pool}/{vol}"),
                                        None => vol,
                                    })
                                });
                        }
                        b"driver" => d.format = attr(e, "type"),
                        b"readonly" => d.read_only = true,
                        _ => {}
                    }
                }
            }
            _ if self.at(&["domain", "devices", "interface"]) => {
                if let Some(n) = self.dom.nics.last_mut() {
                    match name {
                        b"mac" => n.mac = attr(e, "address"),
                        b"source" => {
                            n.source = attr(e, "bridge")
                                .or_else(|| attr(e, "network"))
                                .or_else(|| attr(e, "dev"));
                        }
                        b"model" => n.model = attr(e, "type"),
                        b"target" => n.host_device = attr(e, "dev"),
                        _ => {}
                    }
                }
            }
            // <metadata><libosinfo:libosinfo><libosinfo:os id="…"/>
            b"os" if self.path.len() == 3 && self.path[1] == "metadata" => {
                self.dom.os = attr(e, "id")
            }
            _ => {}
        }
    }

    /// The element on top of `self.path` ends; `self.text` is its text.
    fn close(&mut self) -> Result<(), HvError> {
        let text = self.text.trim();
        let bad = |what: &str| HvError::Parse(format!("domain XML: bad <{what}> {text:?}"));
        if self.at(&["domain", "name"]) {
            self.dom.name = text.to_owned();
        } else if self.at(&["domain", "uuid"]) {
            self.dom.uuid = Some(Uuid::try_parse(text).map_err(|_| bad("uuid"))?);
        } else if self.at(&["domain", "memory"]) {
            let v = text.parse::<u64>().map_err(|_| bad("memory"))?;
            self.dom.memory_mib = to_mib(v, self.memory_unit.as_deref());
        } else if self.at(&["domain", "vcpu"]) {
            self.dom.vcpus = text.parse().map_err(|_| bad("vcpu"))?;
        }
        Ok(())
    }
}

/// `Key:   value` reports (`nodeinfo`, `nodememstats`, `version`).
fn key_values(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The leading number of `7694540 KiB` or `2100 MHz`.
fn leading_number(v: &str) -> Option<u64> {
    v.split_whitespace().next()?.parse().ok()
}

/// Host facts from `virsh hostname`, `nodeinfo`, `nodememstats`, `version`.
pub fn host_facts(
    hostname: &str,
    nodeinfo: &str,
    memstats: &str,
    version: &str,
) -> Result<HostFacts, HvError> {
    let info = key_values(nodeinfo);
    let mem = key_values(memstats);
    let ver = key_values(version);
    let num = |k: &str| info.get(k).and_then(|v| leading_number(v));
    let small = |k: &str| num(k).and_then(|v| u32::try_from(v).ok());
    let cpus = small("CPU(s)").ok_or_else(|| HvError::Parse("nodeinfo without CPU(s)".into()))?;
    let memory_kib =
        num("Memory size").ok_or_else(|| HvError::Parse("nodeinfo without Memory size".into()))?;
    let (hypervisor, hypervisor_version) = ver
        .get("Running hypervisor")
        .and_then(|v| v.rsplit_once(' '))
        .map(|(h, v)| (h.to_owned(), v.to_owned()))
        .unwrap_or_default();
    let management_version = ver
        .get("Using library")
        .and_then(|v| v.rsplit_once(' '))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    Ok(HostFacts {
        hostname: hostname.trim().to_owned(),
        cpu_model: info.get("CPU model").cloned().unwrap_or_default(),
        cpus,
        cpu_mhz: small("CPU frequency"),
        sockets: small("CPU socket(s)"),
        cores_per_socket: small("Core(s) per socket"),
        threads_per_core: small("Thread(s) per core"),
        memory_total_mib: memory_kib / 1024,
        memory_free_mib: spare_kib(&mem).map(|k| k / 1024),
        hypervisor,
        hypervisor_version,
        management_version,
        // Filled by the driver, which asks for them separately.
        networks: Vec::new(),
        bridges: Vec::new(),
    })
}

/// Addresses in `virsh domifaddr` output (`Name MAC Protocol Address/prefix`
/// rows), without loopback and link-local ones, which say nothing about
/// where the guest can be reached.
pub fn domifaddr(out: &str) -> Vec<String> {
    let mut ips = Vec::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [_, _, proto, addr] = cols.as_slice() else {
            continue;
        };
        if !matches!(*proto, "ipv4" | "ipv6") {
            continue;
        }
        let ip = addr.split('/').next().unwrap_or_default();
        if crate::driver::reachable_address(ip) && !ips.iter().any(|i| i == ip) {
            ips.push(ip.to_owned());
        }
    }
    ips
}

/// The targets (`sdb`) of the drives whose source is `path`, in `virsh
/// domblklist --details` output (`Type Device Target Source` rows; a
/// source may hold spaces, an empty drive shows `-`).
pub fn drives_holding(out: &str, path: &str) -> Vec<String> {
    out.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let (_kind, _device, target) = (cols.next()?, cols.next()?, cols.next()?);
            let source = cols.collect::<Vec<_>>().join(" ");
            (source == path).then(|| target.to_owned())
        })
        .collect()
}

/// One line of `virsh event --all --loop`, e.g.
/// `event 'lifecycle' for domain 'web': Started Booted`. Other lines
/// (blank, "event loop timed out") give `None`.
pub fn event_line(line: &str) -> Option<VmEvent> {
    let line = line.trim();
    // With --timestamp, a "2024-05-01 10:00:00.000+0000: " prefix comes first.
    let line = &line[line.find("event '")?..];
    let rest = line.strip_prefix("event '")?;
    let (event_type, rest) = rest.split_once("' for domain '")?;
    // The name may itself contain "'", so cut at the last "'" that ends it.
    let (vm, detail) = match rest.rsplit_once("': ") {
        Some((vm, detail)) => (vm, detail.trim()),
        None => (rest.strip_suffix('\'')?, ""),
    };
    let (kind, detail) = match event_type {
        "lifecycle" => {
            let (kind, why) = detail.split_once(' ').unwrap_or((detail, ""));
            (VmEventKind::from_libvirt(kind), why.to_owned())
        }
        "reboot" => (VmEventKind::Rebooted, String::new()),
        other => (VmEventKind::Other, other.to_owned()),
    };
    Some(VmEvent {
        vm: vm.to_owned(),
        kind,
        detail,
    })
}

#[cfg(test)]
mod tests;
