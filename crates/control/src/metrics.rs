//! Usage graphs: each connected host is sampled once per step (one round
//! of commands over its kept connection, see `Hypervisor::sample`), the
//! points go into small in-memory rings per host and per VM ([`ring`]),
//! each sample is announced on the event bus (`metrics.sampled`, sent only
//! to streams that ask for it), and Prometheus gets per-host aggregates.
//!
//! Where replicas share hosts, only a host's owner samples it; it passes
//! each sample's points on to the other replicas ([`Sample`]), which keep
//! them in rings of their own and announce them too. So every replica
//! draws every graph and the fleet's totals, and a replica that takes a
//! host over goes on with the history it already holds.
//!
//! Nothing is persisted: a restart starts the graphs afresh, as a
//! monitoring gap rather than a lost record (jobs and audit are the
//! records).

pub mod rates;
pub mod ring;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use overvisor_hv::Hypervisor;
use overvisor_model::account::UserId;
use overvisor_model::host::{Host, HostId};
use overvisor_model::metrics::{CpuReading, HostReading, Point, Range, SERIES, Series as S};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::authz::{Action, Resource, Subject, authorize};
use crate::events::Event;
use crate::{App, AppError};
use rates::VmCounters;
use ring::{Series, Shape};

/// The least age at which `/metrics` leaves a figure out as stale.
const STALE_AFTER_SECS: u64 = 10;

/// How the sampler runs.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// One sample per host this often; `None`: no sampling, no graphs.
    pub step: Option<Duration>,
    /// Export each VM's figures on `/metrics` too (one series per VM and
    /// figure: mind the scraper's cardinality).
    pub per_vm_prometheus: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            step: Some(Duration::from_secs(30)),
            per_vm_prometheus: false,
        }
    }
}

/// The history of every sampled host (lives in [`App`]).
pub struct Metrics {
    shape: Shape,
    hosts: RwLock<HashMap<HostId, Arc<Mutex<HostHistory>>>>,
}

struct HostHistory {
    owner: UserId,
    name: String,
    cpus: Option<u32>,
    memory_total_bytes: Option<u64>,
    series: Series,
    /// The previous reading's time and host CPU counters.
    last_at: Option<Instant>,
    last_cpu: Option<CpuReading>,
    /// The newest point and its slot, for `/metrics`.
    latest: Option<(u64, Point)>,
    vms: HashMap<Uuid, VmHistory>,
}

struct VmHistory {
    series: Series,
    last: Option<VmCounters>,
    vcpus: Option<u32>,
    memory_max_bytes: Option<u64>,
    latest: Option<(u64, Point)>,
}

impl VmHistory {
    fn new(shape: &Shape) -> Self {
        Self {
            series: Series::new(shape),
            last: None,
            vcpus: None,
            memory_max_bytes: None,
            latest: None,
        }
    }
}

/// A host's size and use by its latest sample ([`Metrics::host_now`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNow {
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
}

/// One host's sampling round as points: what its history keeps, what the
/// `metrics.sampled` event announces, and what other replicas are told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub host_id: HostId,
    pub name: String,
    /// Unix seconds at the start of the step it fills.
    pub at: u64,
    pub step_secs: u64,
    pub cpus: Option<u32>,
    pub memory_total_bytes: Option<u64>,
    /// The host's figures, in [`S::ALL`] order.
    pub host: [Option<f64>; SERIES],
    /// Every VM with a history on the host (of this part, when passed on
    /// in parts).
    pub vms: Vec<VmSample>,
    /// The whole sample, or its last part.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSample {
    pub uuid: Uuid,
    pub vcpus: Option<u32>,
    pub values: [Option<f64>; SERIES],
}

impl Sample {
    /// The event announcing it.
    pub fn event(&self) -> Event {
        Event::MetricsSampled {
            host_id: self.host_id,
            at: self.at,
            step_secs: self.step_secs,
            host: Values::of(&Point { values: self.host }),
            vms: self
                .vms
                .iter()
                .map(|vm| VmValues {
                    uuid: vm.uuid,
                    values: Values::of(&Point { values: vm.values }),
                })
                .collect(),
        }
    }

    /// The sample in parts whose JSON takes at most `max_bytes` each (a
    /// host with many VMs is passed on in several announcements); each
    /// part carries the host's figures, the last is `complete`. `None`
    /// when not even one VM fits a part.
    pub fn parts(self, max_bytes: usize) -> Option<Vec<Sample>> {
        if json_len(&self) <= max_bytes {
            return Some(vec![self]);
        }
        let (vms, bare) = (
            self.vms,
            Sample {
                vms: Vec::new(),
                complete: false,
                ..self
            },
        );
        let bare_len = json_len(&bare);
        let mut parts = vec![bare.clone()];
        let mut used = bare_len;
        for vm in vms {
            // The VM's JSON and the comma before it.
            let len = json_len(&vm) + 1;
            if bare_len + len > max_bytes {
                return None;
            }
            if used + len > max_bytes {
                parts.push(bare.clone());
                used = bare_len;
            }
            used += len;
            if let Some(part) = parts.last_mut() {
                part.vms.push(vm);
            }
        }
        if let Some(last) = parts.last_mut() {
            last.complete = true;
        }
        Some(parts)
    }
}

impl Metrics {
    pub fn new(settings: &MetricsSettings) -> Self {
        let step = settings.step.map_or(30, |s| s.as_secs().max(1));
        Self {
            shape: Shape::new(step),
            hosts: RwLock::default(),
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Drops a removed host's history.
    pub fn forget(&self, host: HostId) {
        write(&self.hosts).remove(&host);
    }

    /// `host`'s history, made empty if it has none; its owner and name
    /// are set to these.
    fn history(&self, host: HostId, owner: UserId, name: &str) -> Arc<Mutex<HostHistory>> {
        let history = read(&self.hosts).get(&host).cloned();
        let history = history.unwrap_or_else(|| {
            write(&self.hosts)
                .entry(host)
                .or_insert_with(|| self.empty_history(owner, name))
                .clone()
        });
        {
            let mut h = lock(&history);
            h.owner = owner;
            if h.name != name {
                name.clone_into(&mut h.name);
            }
        }
        history
    }

    fn empty_history(&self, owner: UserId, name: &str) -> Arc<Mutex<HostHistory>> {
        Arc::new(Mutex::new(HostHistory {
            owner,
            name: name.to_owned(),
            cpus: None,
            memory_total_bytes: None,
            series: Series::new(&self.shape),
            last_at: None,
            last_cpu: None,
            latest: None,
            vms: HashMap::new(),
        }))
    }

    /// Turns a reading taken at `at` (wall time `unix_secs`) into points,
    /// keeps them, and returns them as a [`Sample`] (for the event that
    /// announces them, and for other replicas).
    pub fn record(&self, host: &Host, unix_secs: u64, at: Instant, reading: HostReading) -> Sample {
        let shape = self.shape;
        let slot = shape.slot(unix_secs);
        let history = self.history(host.id, host.owner, &host.name);
        let mut h = lock(&history);
        // A reading more than two steps after the previous one (the host
        // was away) is a fresh start, not one long interval.
        let elapsed = h
            .last_at
            .map(|t| at.saturating_duration_since(t))
            .filter(|e| e.as_secs() <= shape.step_secs * 2 + 1);
        let fresh = elapsed.is_none();
        let elapsed = elapsed.unwrap_or(Duration::ZERO);
        let mut vms = Vec::with_capacity(reading.vms.len());
        let mut seen = HashMap::with_capacity(reading.vms.len());
        for vm in &reading.vms {
            seen.insert(vm.uuid, ());
            // A VM gets a history once it runs: a fleet's VMs that stay off
            // (templates, spares) cost nothing.
            if !vm.running && !h.vms.contains_key(&vm.uuid) {
                continue;
            }
            let entry = h
                .vms
                .entry(vm.uuid)
                .or_insert_with(|| VmHistory::new(&shape));
            let before = if fresh { None } else { entry.last.as_ref() };
            let point = rates::vm_point(before, vm, elapsed);
            entry.last = vm.running.then(|| VmCounters::of(vm));
            entry.vcpus = vm.vcpus.or(entry.vcpus);
            entry.series.put(&shape, slot, &point);
            entry.latest = Some((slot, point));
            vms.push(VmSample {
                uuid: vm.uuid,
                vcpus: entry.vcpus,
                values: point.values,
            });
        }
        // VMs the host no longer has: their history goes with them.
        h.vms.retain(|uuid, _| seen.contains_key(uuid));
        let points: Vec<Point> = vms.iter().map(|v| Point { values: v.values }).collect();
        let before_cpu = if fresh { None } else { h.last_cpu };
        let host_point = rates::host_point(before_cpu, &reading, &points);
        h.cpus = reading.cpus.or(h.cpus);
        h.memory_total_bytes = reading.memory_total_bytes.or(h.memory_total_bytes);
        h.last_cpu = reading.cpu;
        h.last_at = Some(at);
        h.series.put(&shape, slot, &host_point);
        h.latest = Some((slot, host_point));
        Sample {
            host_id: host.id,
            name: host.name.clone(),
            at: slot * shape.step_secs,
            step_secs: shape.step_secs,
            cpus: h.cpus,
            memory_total_bytes: h.memory_total_bytes,
            host: host_point.values,
            vms,
            complete: true,
        }
    }

    /// Keeps the points of a sample another replica took (of a host it
    /// owns, `owner` being the host's account); `false`, keeping nothing,
    /// when that replica samples at another step than this one.
    pub fn record_relayed(&self, owner: UserId, sample: &Sample) -> bool {
        let shape = self.shape;
        if sample.step_secs != shape.step_secs {
            return false;
        }
        let slot = sample.at / shape.step_secs;
        let history = self.history(sample.host_id, owner, &sample.name);
        let mut h = lock(&history);
        for vm in &sample.vms {
            let point = Point { values: vm.values };
            let entry = h
                .vms
                .entry(vm.uuid)
                .or_insert_with(|| VmHistory::new(&shape));
            entry.vcpus = vm.vcpus.or(entry.vcpus);
            entry.series.put(&shape, slot, &point);
            entry.latest = Some((slot, point));
        }
        h.cpus = sample.cpus.or(h.cpus);
        h.memory_total_bytes = sample.memory_total_bytes.or(h.memory_total_bytes);
        // The host's point travels in every part of a sample; it is kept
        // once, from the last part, which also closes the sample: a VM
        // none of its parts named is gone or has no history on the owner.
        if sample.complete {
            h.vms
                .retain(|_, vm| vm.latest.is_some_and(|(at, _)| at >= slot));
            let point = Point {
                values: sample.host,
            };
            h.series.put(&shape, slot, &point);
            h.latest = Some((slot, point));
        }
        true
    }

    /// Sets a host's logical CPUs, for hosts whose readings do not say.
    pub fn note_host_cpus(&self, host: &Host, cpus: u32) {
        lock(&self.history(host.id, host.owner, &host.name)).cpus = Some(cpus);
    }

    /// Sets what the inventory knows of a VM's size (its memory ceiling
    /// is the graph's top).
    pub fn note_vm_size(&self, host: HostId, uuid: Uuid, memory_mib: Option<u64>) {
        let Some(history) = read(&self.hosts).get(&host).cloned() else {
            return;
        };
        if let Some(vm) = lock(&history).vms.get_mut(&uuid) {
            vm.memory_max_bytes = memory_mib.map(|m| m << 20);
        }
    }

    fn host_window(&self, host: HostId, range: Range, now: u64) -> Option<MetricsWindow> {
        let history = read(&self.hosts).get(&host).cloned()?;
        let h = lock(&history);
        Some(
            self.window(range, now, &[&h.series], |values| values[0])
                .with_capacity(Capacity {
                    cpus: h.cpus,
                    memory_bytes: h.memory_total_bytes,
                }),
        )
    }

    fn vm_window(&self, host: HostId, uuid: Uuid, range: Range, now: u64) -> Option<MetricsWindow> {
        let history = read(&self.hosts).get(&host).cloned()?;
        let h = lock(&history);
        let vm = h.vms.get(&uuid)?;
        Some(
            self.window(range, now, &[&vm.series], |values| values[0])
                .with_capacity(Capacity {
                    cpus: vm.vcpus,
                    memory_bytes: vm.memory_max_bytes,
                }),
        )
    }

    /// Every visible host's figures together: CPU weighted by each host's
    /// CPUs, the rest summed.
    fn fleet_window(
        &self,
        mut visible: impl FnMut(UserId) -> bool,
        range: Range,
        now: u64,
    ) -> MetricsWindow {
        let histories: Vec<_> = read(&self.hosts).values().cloned().collect();
        let guards: Vec<_> = histories.iter().map(|h| lock(h)).collect();
        let hosts: Vec<&HostHistory> = guards
            .iter()
            .map(|g| &**g)
            .filter(|h| visible(h.owner))
            .collect();
        let series: Vec<&Series> = hosts.iter().map(|h| &h.series).collect();
        let weights: Vec<f64> = hosts
            .iter()
            .map(|h| f64::from(h.cpus.unwrap_or(1)))
            .collect();
        let window = self.window(range, now, &series, |points| fleet_point(points, &weights));
        window.with_capacity(Capacity {
            cpus: hosts.iter().map(|h| h.cpus).sum(),
            memory_bytes: hosts.iter().map(|h| h.memory_total_bytes).sum(),
        })
    }

    /// The window of `range` ending now, over `series` combined per slot
    /// by `combine` (given each series' point, `None` where it has none).
    fn window(
        &self,
        range: Range,
        now: u64,
        series: &[&Series],
        combine: impl Fn(&[Option<Point>]) -> Option<Point>,
    ) -> MetricsWindow {
        let shape = &self.shape;
        let step = shape.range_step(range);
        let slots = ring::window_slots(shape, range, now);
        // Leave out the stretch before anything was recorded.
        let first = series
            .iter()
            .filter_map(|s| s.oldest(shape, range))
            .min()
            .map(|o| o.max(*slots.start()));
        let mut w = MetricsWindow {
            range,
            step_secs: step,
            ..MetricsWindow::default()
        };
        let Some(first) = first else { return w };
        let mut points = Vec::with_capacity(series.len());
        for slot in first..=*slots.end() {
            points.clear();
            points.extend(series.iter().map(|s| s.get(range, slot)));
            w.push(slot * step, combine(&points).unwrap_or_default());
        }
        w
    }

    /// The oldest slot whose point is current at `now`: older than two
    /// steps (and than a few seconds, for short steps on a busy service)
    /// is stale, the host stopped answering.
    fn current_slot(&self, now: u64) -> u64 {
        let stale = (2 * self.shape.step_secs).max(STALE_AFTER_SECS);
        self.shape.slot(now.saturating_sub(stale))
    }

    /// A host's size and memory in use by its latest sample, when that is
    /// current: what any replica knows of a host, whoever samples it.
    pub fn host_now(&self, host: HostId, now: u64) -> Option<HostNow> {
        let history = read(&self.hosts).get(&host).cloned()?;
        let h = lock(&history);
        let (_, point) = h
            .latest
            .filter(|(slot, _)| *slot >= self.current_slot(now))?;
        Some(HostNow {
            cpus: h.cpus?,
            memory_total_bytes: h.memory_total_bytes?,
            memory_used_bytes: point.get(S::MemoryUsedBytes)? as u64,
        })
    }

    /// Prometheus text for every host that `sampled_here` accepts (and
    /// with `per_vm`, its VMs) whose latest point is current. Names come
    /// from `vm_name`. (A replica exports what it samples, so a scraper of
    /// every replica counts each host once.)
    pub fn prometheus(
        &self,
        per_vm: bool,
        now: u64,
        sampled_here: impl Fn(HostId) -> bool,
        vm_name: impl Fn(Uuid) -> Option<String>,
    ) -> String {
        let current = self.current_slot(now);
        let histories: Vec<_> = read(&self.hosts)
            .iter()
            .filter(|(id, _)| sampled_here(**id))
            .map(|(id, h)| (*id, h.clone()))
            .collect();
        let mut rows: HashMap<&'static str, Vec<String>> = HashMap::new();
        for (id, history) in histories {
            let h = lock(&history);
            let host_labels = format!("host_id=\"{id}\",host=\"{}\"", escape(&h.name));
            if let Some((slot, p)) = h.latest.filter(|(slot, _)| *slot >= current) {
                let _ = slot;
                for series in S::ALL {
                    if let Some(v) = p.get(series) {
                        rows.entry(series.as_str()).or_default().push(format!(
                            "overvisor_host_{}{{{host_labels}}} {v}",
                            series.as_str()
                        ));
                    }
                }
                if let Some(total) = h.memory_total_bytes {
                    rows.entry("memory_total_bytes").or_default().push(format!(
                        "overvisor_host_memory_total_bytes{{{host_labels}}} {total}"
                    ));
                }
            }
            if !per_vm {
                continue;
            }
            for (uuid, vm) in &h.vms {
                let Some((_, p)) = vm.latest.filter(|(slot, _)| *slot >= current) else {
                    continue;
                };
                let name = vm_name(*uuid).unwrap_or_default();
                let labels = format!("{host_labels},vm_uuid=\"{uuid}\",vm=\"{}\"", escape(&name));
                for series in S::ALL {
                    if let Some(v) = p.get(series) {
                        rows.entry(vm_metric(series))
                            .or_default()
                            .push(format!("overvisor_vm_{}{{{labels}}} {v}", series.as_str()));
                    }
                }
            }
        }
        let mut out = String::new();
        let mut names: Vec<_> = rows.keys().copied().collect();
        names.sort_unstable();
        for name in names {
            let (metric, help) = describe(name);
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
            for row in &rows[name] {
                out.push_str(row);
                out.push('\n');
            }
        }
        out
    }
}

/// The key the per-VM rows of `series` are grouped under (distinct from
/// the host's, so each metric's rows stay together under one HELP).
fn vm_metric(series: S) -> &'static str {
    match series {
        S::CpuPercent => "vm:cpu_percent",
        S::MemoryUsedBytes => "vm:memory_used_bytes",
        S::DiskReadBytesPerSec => "vm:disk_read_bytes_per_sec",
        S::DiskWriteBytesPerSec => "vm:disk_write_bytes_per_sec",
        S::NetRxBytesPerSec => "vm:net_rx_bytes_per_sec",
        S::NetTxBytesPerSec => "vm:net_tx_bytes_per_sec",
    }
}

fn describe(key: &str) -> (String, &'static str) {
    let (prefix, name) = match key.strip_prefix("vm:") {
        Some(name) => ("overvisor_vm_", name),
        None => ("overvisor_host_", key),
    };
    let help = match name {
        "cpu_percent" => {
            "Busy share of the CPUs (a host's logical CPUs, a VM's vCPUs) over the last sampling step, percent."
        }
        "memory_used_bytes" => {
            "Memory in use (a host's without page cache; a VM's as its guest or QEMU reports it)."
        }
        "memory_total_bytes" => "The host's memory.",
        "disk_read_bytes_per_sec" => {
            "Bytes read from virtual disks per second (a host: all its VMs)."
        }
        "disk_write_bytes_per_sec" => {
            "Bytes written to virtual disks per second (a host: all its VMs)."
        }
        "net_rx_bytes_per_sec" => {
            "Bytes received by virtual NICs per second (a host: all its VMs)."
        }
        _ => "Bytes sent by virtual NICs per second (a host: all its VMs).",
    };
    (format!("{prefix}{name}"), help)
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One slot of the fleet: CPU averaged by weight over the hosts that have
/// a figure, everything else summed.
fn fleet_point(points: &[Option<Point>], weights: &[f64]) -> Option<Point> {
    let mut out = Point::default();
    for series in S::ALL {
        let known = points
            .iter()
            .zip(weights)
            .filter_map(|(p, w)| p.and_then(|p| p.get(series)).map(|v| (v, *w)));
        let value = if series == S::CpuPercent {
            let (sum, weight) = known.fold((0.0, 0.0), |(s, t), (v, w)| (s + v * w, t + w));
            (weight > 0.0).then(|| sum / weight)
        } else {
            known.map(|(v, _)| v).reduce(|a, b| a + b)
        };
        out.set(series, value);
    }
    (!out.is_empty()).then_some(out)
}

/// A point's figures as JSON fields (null where unknown).
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct Values {
    pub cpu_percent: Option<f64>,
    pub memory_used_bytes: Option<f64>,
    pub disk_read_bytes_per_sec: Option<f64>,
    pub disk_write_bytes_per_sec: Option<f64>,
    pub net_rx_bytes_per_sec: Option<f64>,
    pub net_tx_bytes_per_sec: Option<f64>,
}

impl Values {
    fn of(p: &Point) -> Self {
        Self {
            cpu_percent: p.get(S::CpuPercent),
            memory_used_bytes: p.get(S::MemoryUsedBytes),
            disk_read_bytes_per_sec: p.get(S::DiskReadBytesPerSec),
            disk_write_bytes_per_sec: p.get(S::DiskWriteBytesPerSec),
            net_rx_bytes_per_sec: p.get(S::NetRxBytesPerSec),
            net_tx_bytes_per_sec: p.get(S::NetTxBytesPerSec),
        }
    }
}

/// One VM's figures in a `metrics.sampled` event.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct VmValues {
    pub uuid: Uuid,
    #[serde(flatten)]
    pub values: Values,
}

/// What the figures are measured against.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct Capacity {
    /// Logical CPUs of the host(s), vCPUs of a VM.
    pub cpus: Option<u32>,
    /// Memory of the host(s); a VM's configured memory.
    pub memory_bytes: Option<u64>,
}

/// A stretch of history, column by column (the shape charts draw).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct MetricsWindow {
    pub range: Range,
    /// Seconds between two points.
    pub step_secs: u64,
    pub capacity: Capacity,
    /// Unix seconds at the start of each point's step, oldest first.
    pub times: Vec<u64>,
    /// Each series, aligned with `times`; `null` where nothing was measured
    /// (host away, VM off, first sample).
    pub cpu_percent: Vec<Option<f64>>,
    pub memory_used_bytes: Vec<Option<f64>>,
    pub disk_read_bytes_per_sec: Vec<Option<f64>>,
    pub disk_write_bytes_per_sec: Vec<Option<f64>>,
    pub net_rx_bytes_per_sec: Vec<Option<f64>>,
    pub net_tx_bytes_per_sec: Vec<Option<f64>>,
}

impl MetricsWindow {
    fn push(&mut self, time: u64, p: Point) {
        self.times.push(time);
        self.cpu_percent.push(p.get(S::CpuPercent));
        self.memory_used_bytes.push(p.get(S::MemoryUsedBytes));
        self.disk_read_bytes_per_sec
            .push(p.get(S::DiskReadBytesPerSec));
        self.disk_write_bytes_per_sec
            .push(p.get(S::DiskWriteBytesPerSec));
        self.net_rx_bytes_per_sec.push(p.get(S::NetRxBytesPerSec));
        self.net_tx_bytes_per_sec.push(p.get(S::NetTxBytesPerSec));
    }

    fn with_capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = capacity;
        self
    }
}

fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |json| json.len())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl App {
    /// The usage history of hosts and VMs.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A host's figures over `range`, if `subject` may see the host.
    pub fn metrics_host(
        &self,
        subject: &Subject,
        host: HostId,
        range: Range,
    ) -> Result<MetricsWindow, AppError> {
        self.inventory_host_visible(subject, host)?;
        let now = unix_now();
        Ok(self
            .metrics()
            .host_window(host, range, now)
            .unwrap_or_else(|| MetricsWindow {
                range,
                step_secs: self.metrics().shape().range_step(range),
                ..MetricsWindow::default()
            }))
    }

    /// A VM's figures over `range`, if `subject` may see the VM.
    pub fn metrics_vm(
        &self,
        subject: &Subject,
        uuid: Uuid,
        range: Range,
    ) -> Result<MetricsWindow, AppError> {
        let vm = self.inventory_vm(subject, uuid)?;
        let metrics = self.metrics();
        metrics.note_vm_size(vm.host_id, uuid, vm.memory_mib);
        Ok(metrics
            .vm_window(vm.host_id, uuid, range, unix_now())
            .unwrap_or_else(|| MetricsWindow {
                range,
                step_secs: metrics.shape().range_step(range),
                capacity: Capacity {
                    cpus: vm.vcpus,
                    memory_bytes: vm.memory_mib.map(|m| m << 20),
                },
                ..MetricsWindow::default()
            }))
    }

    /// Every host `subject` may see, together.
    pub fn metrics_fleet(
        &self,
        subject: &Subject,
        range: Range,
    ) -> Result<MetricsWindow, AppError> {
        authorize(subject, Action::Read, Resource::OwnedBy(subject.id()))?;
        let visible = crate::inventory::queries::visibility(subject);
        Ok(self.metrics().fleet_window(visible, range, unix_now()))
    }

    /// The Prometheus text of the graphs' latest figures.
    pub fn metrics_prometheus(&self) -> String {
        if self.config().metrics.step.is_none() {
            return String::new();
        }
        let snapshot = self.inventory().snapshot();
        let replicas = self.replicas();
        self.metrics().prometheus(
            self.config().metrics.per_vm_prometheus,
            unix_now(),
            |host| replicas.owns(host),
            |uuid| snapshot.vm(uuid).map(|vm| vm.name.clone()),
        )
    }

    /// Samples `host` through `driver` once per step until `stop`; each
    /// sample is recorded and announced. A failed sample is a gap: the
    /// reconciler, not this loop, decides that a host is away.
    pub(crate) async fn metrics_sample_host(
        &self,
        host: Host,
        driver: Arc<dyn Hypervisor>,
        stop: CancellationToken,
    ) {
        let Some(step) = self.config().metrics.step else {
            return;
        };
        // Hosts spread over the first half of each step, so a fleet is
        // not asked all at once.
        let offset = spread(host.id, step / 2);
        let mut counted = false;
        loop {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let into = Duration::from_nanos((wall.as_nanos() % step.as_nanos()) as u64);
            let wait = if into < offset {
                offset - into
            } else {
                step - into + offset
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            // The CPU count is the weight of this host in the fleet's CPU.
            // Asked at the first sample, not on connecting: after a restart
            // every host connects at once, and this would add to that.
            if !counted && let Ok(facts) = driver.host_facts().await {
                self.metrics().note_host_cpus(&host, facts.cpus);
                counted = true;
            }
            let at = Instant::now();
            let unix = unix_now();
            let reading = tokio::select! {
                _ = stop.cancelled() => return,
                reading = driver.sample() => reading,
            };
            match reading {
                Ok(reading) => {
                    let sample = self.metrics().record(&host, unix, at, reading);
                    self.events().publish(host.owner, sample.event());
                    if self.replicas().is_shared() {
                        self.replicas_pass_on_sample(host.owner, sample).await;
                    }
                }
                Err(err) => {
                    tracing::debug!(host = %host.name, error = %err, "sampling failed");
                }
            }
        }
    }
}

/// A stable offset in `0..within` for `host`.
fn spread(host: HostId, within: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    host.hash(&mut hasher);
    let ms = within.as_millis().max(1) as u64;
    Duration::from_millis(hasher.finish() % ms)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use overvisor_model::host::HostKind;
    use overvisor_model::metrics::VmReading;

    fn host(owner: UserId) -> Host {
        Host {
            id: HostId(Uuid::new_v4()),
            owner,
            name: "hv1".into(),
            kind: HostKind::Libvirt,
            address: "192.0.2.1".into(),
            port: 22,
            ssh_user: "ov".into(),
            libvirt_uri: "qemu:///system".into(),
            tags: Vec::new(),
            host_key_fingerprint: None,
            has_credential: false,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    fn reading(busy_ns: u64, total_ns: u64, vm_cpu_ns: u64, rx: u64, vms: &[Uuid]) -> HostReading {
        HostReading {
            cpu: Some(CpuReading::Time {
                busy_ns,
                total_ns: Some(total_ns),
            }),
            cpus: Some(2),
            memory_total_bytes: Some(8 << 30),
            memory_used_bytes: Some(2 << 30),
            vms: vms
                .iter()
                .map(|uuid| VmReading {
                    uuid: *uuid,
                    running: true,
                    vcpus: Some(1),
                    cpu: Some(CpuReading::Time {
                        busy_ns: vm_cpu_ns,
                        total_ns: None,
                    }),
                    memory_used_bytes: Some(1 << 30),
                    disk_read_bytes: Some(0),
                    disk_write_bytes: Some(0),
                    net_rx_bytes: Some(rx),
                    net_tx_bytes: Some(0),
                })
                .collect(),
        }
    }

    #[test]
    fn samples_become_windows_and_events() {
        let metrics = Metrics::new(&MetricsSettings::default());
        let owner = UserId(Uuid::new_v4());
        let h = host(owner);
        let vm = Uuid::new_v4();
        let t0 = Instant::now();
        let base = 1_800_000_000; // a multiple of the 30 s step
        metrics.record(&h, base, t0, reading(0, 0, 0, 0, &[vm]));
        // 30 s later: the host 2 CPUs 25 % busy; the VM half a vCPU and
        // 300 bytes/s in.
        let event = metrics
            .record(
                &h,
                base + 30,
                t0 + Duration::from_secs(30),
                reading(15_000_000_000, 60_000_000_000, 15_000_000_000, 9000, &[vm]),
            )
            .event();
        let Event::MetricsSampled {
            at, host: hv, vms, ..
        } = &event
        else {
            panic!("{event:?}")
        };
        assert_eq!(*at, base + 30);
        assert_eq!(hv.cpu_percent, Some(25.0));
        assert_eq!(hv.net_rx_bytes_per_sec, Some(300.0));
        assert_eq!(vms[0].values.cpu_percent, Some(50.0));

        let w = metrics
            .host_window(h.id, Range::Hour, base + 45)
            .expect("host");
        assert_eq!(w.times, [base, base + 30]);
        assert_eq!(w.cpu_percent, [None, Some(25.0)]);
        assert_eq!(w.memory_used_bytes[1], Some((2u64 << 30) as f64));
        assert_eq!(w.capacity.cpus, Some(2));
        assert_eq!(w.capacity.memory_bytes, Some(8 << 30));
        let w = metrics
            .vm_window(h.id, vm, Range::Hour, base + 45)
            .expect("vm");
        assert_eq!(w.cpu_percent, [None, Some(50.0)]);
        let w = metrics
            .vm_window(h.id, vm, Range::Day, base + 45)
            .expect("vm day");
        assert_eq!(w.step_secs, 600);
        assert_eq!(w.times.len(), 1);

        // The fleet of the owner's hosts; another owner's sees none.
        let fleet = metrics.fleet_window(|o| o == owner, Range::Hour, base + 45);
        assert_eq!(fleet.cpu_percent, [None, Some(25.0)]);
        assert!(
            metrics
                .fleet_window(|_| false, Range::Hour, base + 45)
                .times
                .is_empty()
        );

        // The host's size and use now, while the sample is current (two
        // steps), for the deployment wizard.
        let now = HostNow {
            cpus: 2,
            memory_total_bytes: 8 << 30,
            memory_used_bytes: 2 << 30,
        };
        assert_eq!(metrics.host_now(h.id, base + 45), Some(now));
        assert_eq!(metrics.host_now(h.id, base + 119), Some(now));
        assert_eq!(metrics.host_now(h.id, base + 120), None);
        assert_eq!(metrics.host_now(HostId(Uuid::new_v4()), base + 45), None);

        // Prometheus: host aggregates; per-VM only when asked.
        let text = metrics.prometheus(false, base + 45, |_| true, |_| Some("web \"1\"".into()));
        assert!(
            text.contains(&format!(
                "overvisor_host_cpu_percent{{host_id=\"{}\",host=\"hv1\"}} 25",
                h.id
            )),
            "{text}"
        );
        assert!(
            text.contains("# TYPE overvisor_host_memory_total_bytes gauge"),
            "{text}"
        );
        assert!(!text.contains("overvisor_vm_"), "{text}");
        let text = metrics.prometheus(true, base + 45, |_| true, |_| Some("web \"1\"".into()));
        assert!(
            text.contains(&format!("vm_uuid=\"{vm}\",vm=\"web \\\"1\\\"\"}} 50")),
            "{text}"
        );
        // Stale figures (the host stopped answering) are not exported.
        assert!(
            metrics
                .prometheus(true, base + 300, |_| true, |_| None)
                .is_empty()
        );

        // A VM that has never run has no history; one that stops keeps its.
        let off = Uuid::new_v4();
        let mut r = reading(0, 0, 0, 0, &[vm, off]);
        r.vms[0].running = false;
        r.vms[1].running = false;
        metrics.record(&h, base + 60, t0 + Duration::from_secs(60), r);
        assert!(
            metrics
                .vm_window(h.id, off, Range::Hour, base + 75)
                .is_none()
        );
        let w = metrics
            .vm_window(h.id, vm, Range::Hour, base + 75)
            .expect("kept");
        assert_eq!(w.cpu_percent.last(), Some(&None));

        // The VM is gone from the host: its history goes too.
        metrics.record(
            &h,
            base + 90,
            t0 + Duration::from_secs(90),
            reading(0, 0, 0, 0, &[]),
        );
        assert!(
            metrics
                .vm_window(h.id, vm, Range::Hour, base + 105)
                .is_none()
        );
        metrics.forget(h.id);
        assert!(metrics.host_window(h.id, Range::Hour, base + 75).is_none());
    }

    /// Every window of `host` (and its `vms`, and the fleet) as JSON, for
    /// comparing two replicas' histories.
    fn windows(metrics: &Metrics, host: HostId, vms: &[Uuid], now: u64) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for range in [Range::Hour, Range::Day] {
            let json = |w: Option<MetricsWindow>| serde_json::to_value(w).expect("json");
            out.push(json(metrics.host_window(host, range, now)));
            out.extend(
                vms.iter()
                    .map(|vm| json(metrics.vm_window(host, *vm, range, now))),
            );
            out.push(json(Some(metrics.fleet_window(|_| true, range, now))));
        }
        out
    }

    #[test]
    fn samples_passed_on_in_parts_draw_the_same_graphs_on_another_replica() {
        let owner = UserId(Uuid::new_v4());
        let h = host(owner);
        let vms: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let sampler = Metrics::new(&MetricsSettings::default());
        let elsewhere = Metrics::new(&MetricsSettings::default());
        let t0 = Instant::now();
        let base = 1_800_000_000; // a multiple of the 30 s step
        let pass_on = |sample: Sample| {
            let many = sample.vms.len() == 5;
            let parts = sample.parts(450).expect("a VM fits a part");
            assert!(
                !many || parts.len() > 2,
                "five VMs need three parts of 450 bytes"
            );
            for (i, part) in parts.iter().enumerate() {
                let json = serde_json::to_string(part).expect("json");
                assert!(json.len() <= 450, "part {i}: {} bytes", json.len());
                assert_eq!(part.complete, i + 1 == parts.len());
                let read: Sample = serde_json::from_str(&json).expect("read back");
                assert!(elsewhere.record_relayed(owner, &read));
            }
            parts
                .iter()
                .flat_map(|p| p.vms.iter().map(|v| v.uuid))
                .collect::<Vec<_>>()
        };
        for round in 0..4u64 {
            let n = round * 15_000_000_000;
            let sample = sampler.record(
                &h,
                base + round * 30,
                t0 + Duration::from_secs(round * 30),
                reading(n, 4 * n, n / 2, round * 9000, &vms),
            );
            assert_eq!(pass_on(sample), vms, "every VM passed on once, in order");
        }
        let now = base + 100;
        assert_eq!(
            windows(&sampler, h.id, &vms, now),
            windows(&elsewhere, h.id, &vms, now)
        );
        let w = elsewhere.host_window(h.id, Range::Hour, now).expect("host");
        assert_eq!(w.cpu_percent.last(), Some(&Some(25.0)));
        assert_eq!(w.capacity.cpus, Some(2));

        // Two VMs are gone from the host: gone from the other replica too,
        // once the sample's last part has come.
        let sample = sampler.record(
            &h,
            base + 120,
            t0 + Duration::from_secs(120),
            reading(0, 0, 0, 0, &vms[..3]),
        );
        pass_on(sample);
        assert!(
            elsewhere
                .vm_window(h.id, vms[4], Range::Hour, now + 30)
                .is_none()
        );
        assert_eq!(
            windows(&sampler, h.id, &vms, now + 30),
            windows(&elsewhere, h.id, &vms, now + 30)
        );

        // The other replica exports none of it to Prometheus: a scraper of
        // both counts the host once.
        assert!(
            !sampler
                .prometheus(true, now + 30, |_| true, |_| None)
                .is_empty()
        );
        assert!(
            elsewhere
                .prometheus(true, now + 30, |_| false, |_| None)
                .is_empty()
        );

        // A replica sampling at another step keeps nothing of it.
        let other_step = Metrics::new(&MetricsSettings {
            step: Some(Duration::from_secs(10)),
            ..MetricsSettings::default()
        });
        let sample = sampler.record(
            &h,
            base + 150,
            t0 + Duration::from_secs(150),
            reading(0, 0, 0, 0, &vms),
        );
        assert!(!other_step.record_relayed(owner, &sample));
        assert!(
            other_step
                .host_window(h.id, Range::Hour, now + 60)
                .is_none()
        );

        // A part too small for even one VM is refused, not cut short.
        assert!(sample.clone().parts(100).is_none());
        // A small sample is one complete part.
        let parts = Sample {
            vms: Vec::new(),
            ..sample
        }
        .parts(7900)
        .expect("fits");
        assert_eq!(parts.len(), 1);
        assert!(parts[0].complete);
    }

    #[test]
    fn a_long_silence_starts_afresh_instead_of_averaging_over_it() {
        let metrics = Metrics::new(&MetricsSettings::default());
        let h = host(UserId(Uuid::new_v4()));
        let t0 = Instant::now();
        let base = 1_800_000_000; // a multiple of the 30 s step
        metrics.record(&h, base, t0, reading(0, 0, 0, 0, &[]));
        let later = Duration::from_secs(600);
        metrics.record(&h, base + 600, t0 + later, reading(1, 2, 0, 0, &[]));
        let w = metrics
            .host_window(h.id, Range::Hour, base + 600)
            .expect("host");
        assert_eq!(w.cpu_percent.last(), Some(&None));
        assert_eq!(w.cpu_percent.len(), 21);
    }

    #[test]
    fn metrics_events_go_only_to_streams_that_ask() {
        use crate::events::EventFilter;
        let all = EventFilter::parse("").expect("empty");
        assert!(all.matches("vm.changed"));
        assert!(!all.matches("metrics.sampled"));
        assert!(
            EventFilter::parse("metrics")
                .expect("family")
                .matches("metrics.sampled")
        );
        assert!(
            EventFilter::parse("vm,metrics.sampled")
                .expect("type")
                .matches("metrics.sampled")
        );
    }
}
