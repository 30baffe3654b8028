//! Unit tests of the inventory's bookkeeping and queries (no hosts).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering as AtomicOrdering;

use overvisor_model::host::{Host, HostKind};

use super::writers::INLINE_REBUILD_MICROS;
use super::*;
use crate::events::EventBus;

pub(super) fn host(owner: UserId, name: &str, tags: &[&str]) -> Host {
    Host {
        id: HostId::new(),
        owner,
        name: name.into(),
        kind: HostKind::Libvirt,
        address: "10.0.0.1".into(),
        port: 22,
        ssh_user: "ovdeploy".into(),
        libvirt_uri: "qemu:///system".into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        host_key_fingerprint: None,
        has_credential: false,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

fn vm(name: &str, state: VmState, mem: u64) -> VmSummary {
    VmSummary {
        uuid: Uuid::new_v4(),
        name: name.into(),
        state,
        vcpus: Some(1),
        memory_mib: Some(mem),
    }
}

fn all(query: VmQuery) -> VmQuery {
    VmQuery {
        limit: 100,
        ..query
    }
}

#[test]
fn full_sync_diffs_and_publishes() {
    let inv = Inventory::default();
    let bus = EventBus::new(64);
    let mut rx = bus.receiver();
    let owner = UserId::new();
    let h = host(owner, "h1", &[]);
    inv.host_upsert(&h);
    let a = vm("a", VmState::ShutOff, 64);
    let b = vm("b", VmState::Running, 64);
    inv.apply_full(&bus, h.id, vec![a.clone(), b.clone()]);
    assert_eq!(inv.snapshot().len(), 2);
    // Same list again: nothing published.
    inv.apply_full(&bus, h.id, vec![a.clone(), b.clone()]);
    let mut a2 = a.clone();
    a2.state = VmState::Running;
    inv.apply_full(&bus, h.id, vec![a2]);
    assert!(inv.apply_state(&bus, h.id, "a", VmState::Paused));
    assert!(!inv.apply_state(&bus, h.id, "nope", VmState::Paused));
    inv.apply_removed(&bus, h.id, "a");
    let mut types = Vec::new();
    while let Ok(env) = rx.try_recv() {
        types.push(env.event.type_name());
    }
    assert_eq!(
        types,
        [
            "vm.added",
            "vm.added",
            "vm.changed",
            "vm.removed",
            "vm.changed",
            "vm.removed"
        ]
    );
    assert!(inv.snapshot().is_empty());
    inv.mark_disconnected(&bus, h.id, "boom");
    inv.mark_disconnected(&bus, h.id, "boom again");
    let status = inv.host_status(h.id).unwrap();
    assert_eq!(status.status, Connectivity::Disconnected);
    assert_eq!(status.last_error.as_deref(), Some("boom again"));
    inv.mark_connected(&bus, h.id);
    assert_eq!(
        inv.host_status(h.id).unwrap().status,
        Connectivity::Connected
    );
}

#[test]
fn queries_filter_sort_page_and_hide_other_tenants() {
    let inv = Inventory::default();
    let (me, other) = (UserId::new(), UserId::new());
    let h1 = host(me, "alpha", &["prod"]);
    let h2 = Host {
        kind: HostKind::Hyperv,
        ..host(me, "beta", &[])
    };
    let h3 = host(other, "gamma", &["prod"]);
    inv.load_synthetic(
        &h1,
        vec![
            vm("Web-2", VmState::Running, 512),
            vm("web-1", VmState::ShutOff, 256),
        ],
    );
    inv.load_synthetic(&h2, vec![vm("db", VmState::Running, 1024)]);
    inv.load_synthetic(&h3, vec![vm("web-3", VmState::Running, 128)]);
    let snap = inv.snapshot();
    let mine = |owner: UserId| owner == me;
    let names = |page: VmPage| {
        page.items
            .iter()
            .map(|v| v.name.clone())
            .collect::<Vec<_>>()
    };

    assert_eq!(
        names(snap.page(&all(VmQuery::default()), mine)),
        ["db", "web-1", "Web-2"]
    );
    assert_eq!(
        names(snap.page(&all(VmQuery::default()), |_| true)).len(),
        4
    );
    let web = all(VmQuery {
        name: Some("WEB".into()),
        ..Default::default()
    });
    assert_eq!(names(snap.page(&web, mine)), ["web-1", "Web-2"]);
    let by_mem = all(VmQuery {
        sort: VmSort::Memory,
        descending: true,
        ..Default::default()
    });
    assert_eq!(names(snap.page(&by_mem, mine)), ["db", "Web-2", "web-1"]);
    let running_on_alpha = all(VmQuery {
        host: Some(h1.id),
        state: Some(VmState::Running),
        ..Default::default()
    });
    assert_eq!(names(snap.page(&running_on_alpha, mine)), ["Web-2"]);
    let prod = all(VmQuery {
        tags: vec!["prod".into()],
        ..Default::default()
    });
    assert_eq!(names(snap.page(&prod, mine)), ["web-1", "Web-2"]);
    // One list of both kinds, each VM saying its host's; filtered by kind.
    let hyperv = all(VmQuery {
        kind: Some(HostKind::Hyperv),
        ..Default::default()
    });
    let page = snap.page(&hyperv, mine);
    assert_eq!(page.items[0].host_kind, HostKind::Hyperv);
    assert_eq!(names(page), ["db"]);
    let libvirt = all(VmQuery {
        kind: Some(HostKind::Libvirt),
        ..Default::default()
    });
    assert_eq!(names(snap.page(&libvirt, mine)), ["web-1", "Web-2"]);
    let page2 = VmQuery {
        offset: 1,
        limit: 1,
        ..Default::default()
    };
    let page = snap.page(&page2, mine);
    assert_eq!((page.total, names(page)), (3, vec!["web-1".to_owned()]));
}

#[test]
fn snapshot_is_shared_until_something_changes() {
    let inv = Inventory::default();
    let h = host(UserId::new(), "h", &[]);
    inv.load_synthetic(&h, vec![vm("a", VmState::Running, 1)]);
    let s1 = inv.snapshot();
    let s2 = inv.snapshot();
    assert!(Arc::ptr_eq(&s1, &s2));
    inv.apply_state(&EventBus::new(1), h.id, "a", VmState::Paused);
    let s3 = inv.snapshot();
    assert!(!Arc::ptr_eq(&s1, &s3));
    assert_eq!(s3.vms[0].state, VmState::Paused);
    assert_eq!(
        s1.vms[0].state,
        VmState::Running,
        "old readers keep their view"
    );
}

/// One host with one VM "a" (shut off), its snapshot, and rebuilds
/// pretending to be slow (as at fleet size): the next change waits for a
/// background rebuild.
fn slow_inventory() -> (Inventory, EventBus, Host, Arc<Snapshot>) {
    let inv = Inventory::default();
    let bus = EventBus::new(64);
    let h = host(UserId::new(), "h1", &[]);
    inv.host_upsert(&h);
    inv.apply_full(&bus, h.id, vec![vm("a", VmState::ShutOff, 64)]);
    let before = inv.snapshot();
    assert_eq!(before.len(), 1);
    inv.last_build_micros
        .store(INLINE_REBUILD_MICROS + 1, AtomicOrdering::Relaxed);
    (inv, bus, h, before)
}

#[test]
fn slow_rebuilds_happen_in_the_background_and_reads_never_wait() {
    let (inv, bus, h, before) = slow_inventory();
    inv.apply_full(
        &bus,
        h.id,
        vec![vm("a", VmState::ShutOff, 64), vm("b", VmState::Running, 64)],
    );
    // The read answers at once with the previous picture…
    let stale = inv.snapshot();
    assert!(
        Arc::ptr_eq(&stale, &before),
        "a slow rebuild is not waited for"
    );
    // …and the background rebuild publishes the new one shortly after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while inv.snapshot().len() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "background rebuild never landed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The rebuild was fast, so the next change is applied inline again.
    inv.apply_full(&bus, h.id, vec![vm("a", VmState::Running, 64)]);
    assert_eq!(inv.snapshot().len(), 1);
}

/// The UUIDs of a snapshot in every sort order.
fn orders_of(snapshot: &Snapshot) -> Vec<Vec<Uuid>> {
    snapshot
        .orders
        .iter()
        .map(|order| {
            order
                .iter()
                .map(|&i| snapshot.vms[i as usize].uuid)
                .collect()
        })
        .collect()
}

#[test]
fn a_pushed_state_is_in_the_list_at_once_even_when_rebuilds_are_slow() {
    let inv = Inventory::default();
    let bus = EventBus::new(1024);
    let h = host(UserId::new(), "h1", &[]);
    let states = [
        VmState::Running,
        VmState::ShutOff,
        VmState::Paused,
        VmState::Crashed,
    ];
    let vms: Vec<VmSummary> = (0..200u64)
        .map(|i| {
            vm(
                &format!("vm-{:03}", i * 7 % 200),
                states[i as usize % 4],
                i % 5,
            )
        })
        .collect();
    inv.load_synthetic(&h, vms.clone());
    assert_eq!(inv.snapshot().len(), 200);
    // Pretend the fleet is large: a change would wait for a background rebuild.
    inv.last_build_micros
        .store(INLINE_REBUILD_MICROS + 1, AtomicOrdering::Relaxed);
    for step in 0..300usize {
        let target = &vms[step * 37 % vms.len()];
        let state = states[step % 3 + 1 - usize::from(step % 7 == 0)];
        let before = inv.snapshot();
        let was = before.vms[before.by_uuid[&target.uuid] as usize].state;
        assert!(inv.apply_state(&bus, h.id, &target.name, state));
        let after = inv.snapshot();
        let now = after.vms[after.by_uuid[&target.uuid] as usize].state;
        assert_eq!(now, state, "step {step}: the read saw the pushed state");
        if was != state {
            assert!(
                !Arc::ptr_eq(&before, &after),
                "step {step}: patched, not stale"
            );
        }
        // Every order and the state column equal what a rebuild computes.
        let rebuilt = Snapshot::build(after.generation, after.vms.clone());
        assert_eq!(orders_of(&after), orders_of(&rebuilt), "step {step}");
        assert_eq!(after.states, rebuilt.states, "step {step}");
    }
    // Unchanged orders are shared, not copied.
    let a = inv.snapshot();
    let target = &vms[1];
    let flip = if a.vms[a.by_uuid[&target.uuid] as usize].state == VmState::Running {
        VmState::Paused
    } else {
        VmState::Running
    };
    inv.apply_state(&bus, h.id, &target.name, flip);
    let b = inv.snapshot();
    assert!(Arc::ptr_eq(
        &a.orders[VmSort::Name.index()],
        &b.orders[VmSort::Name.index()]
    ));
    assert!(!Arc::ptr_eq(
        &a.orders[VmSort::State.index()],
        &b.orders[VmSort::State.index()]
    ));
    let query = all(VmQuery {
        state: Some(flip),
        ..VmQuery::default()
    });
    assert!(
        b.page(&query, |_| true)
            .items
            .iter()
            .any(|vm| vm.uuid == target.uuid)
    );
}

#[test]
fn a_pushed_state_behind_a_pending_rebuild_waits_for_it() {
    let (inv, bus, h, before) = slow_inventory();
    // A new VM (needs a rebuild), then a state for the old one: patching
    // the published snapshot would drop the new VM, so it is not patched.
    inv.apply_full(
        &bus,
        h.id,
        vec![vm("a", VmState::ShutOff, 64), vm("b", VmState::Running, 64)],
    );
    assert!(inv.apply_state(&bus, h.id, "a", VmState::Running));
    let s = await_rebuild(&inv, &before, |s| s.len() == 2);
    assert!(s.vms.iter().all(|vm| vm.state == VmState::Running));
}

/// Reads until `landed` holds, asserting that every read before that is
/// exactly `before` (only the old or the full picture); five seconds at most.
fn await_rebuild(
    inv: &Inventory,
    before: &Arc<Snapshot>,
    landed: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = inv.snapshot();
        if landed(&s) {
            return s;
        }
        assert!(Arc::ptr_eq(&s, before), "only the old or the full picture");
        assert!(std::time::Instant::now() < deadline, "rebuild never landed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn pages_match_a_plain_filter_and_sort_of_the_records() {
    let inv = Inventory::default();
    let (me, other) = (UserId::new(), UserId::new());
    let hosts = [
        host(me, "alpha", &["prod", "rack-1"]),
        host(me, "beta", &["rack-1"]),
        host(other, "gamma", &["prod"]),
    ];
    let states = [VmState::Running, VmState::ShutOff, VmState::Paused];
    for (h, host) in hosts.iter().enumerate() {
        let vms = (0..70u64)
            .map(|i| {
                let name = format!("{}-{:02}", ["web", "Db", "cache"][i as usize % 3], i);
                vm(&name, states[(i as usize + h) % 3], i % 4)
            })
            .collect();
        inv.load_synthetic(host, vms);
    }
    let snap = inv.snapshot();
    let mine = |o: UserId| o == me;
    let mut checked = 0;
    for sort in VmSort::ALL {
        for descending in [false, true] {
            for name in [None, Some("WEB"), Some("-1"), Some("zzz")] {
                for state in [None, Some(VmState::Paused)] {
                    for tags in [vec![], vec!["rack-1".to_owned()], vec!["prod".to_owned()]] {
                        for (offset, limit) in [(0, 100), (5, 7), (130, 50), (0, 0)] {
                            let query = VmQuery {
                                host: None,
                                kind: None,
                                state,
                                name: name.map(str::to_owned),
                                tags: tags.clone(),
                                sort,
                                descending,
                                offset,
                                limit,
                            };
                            let needle = name.map(str::to_lowercase);
                            let mut expected: Vec<&Arc<VmRecord>> = snap
                                .vms
                                .iter()
                                .filter(|vm| mine(vm.owner))
                                .filter(|vm| state.is_none_or(|s| vm.state == s))
                                .filter(|vm| {
                                    needle.as_ref().is_none_or(|n| vm.name_key.contains(n))
                                })
                                .filter(|vm| tags.iter().all(|t| vm.tags.contains(t)))
                                .collect();
                            expected.sort_by(|a, b| sort.compare(a, b));
                            if descending {
                                expected.reverse();
                            }
                            let page = snap.page(&query, mine);
                            assert_eq!(page.total, expected.len(), "{query:?}");
                            let want: Vec<Uuid> = expected
                                .iter()
                                .skip(offset)
                                .take(limit)
                                .map(|vm| vm.uuid)
                                .collect();
                            let got: Vec<Uuid> = page.items.iter().map(|vm| vm.uuid).collect();
                            assert_eq!(got, want, "{query:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 5 * 2 * 4 * 2 * 3 * 4);
    // The other tenant's host filter finds nothing of mine.
    let theirs = all(VmQuery {
        host: Some(hosts[2].id),
        ..VmQuery::default()
    });
    assert_eq!(snap.page(&theirs, mine).total, 0);
    assert_eq!(snap.page(&theirs, |_| true).total, 70);
}

#[test]
fn a_name_filter_never_matches_across_two_names() {
    let inv = Inventory::default();
    let h = host(UserId::new(), "h", &[]);
    // End to end the names read "ab" "aba" "xa" "b": "aba" runs from the
    // first into the second, and "ab" from the third into the fourth.
    let vms = ["ab", "aba", "xa", "b"]
        .into_iter()
        .map(|n| vm(n, VmState::Running, 1))
        .collect();
    inv.load_synthetic(&h, vms);
    // Laid out in exactly this order (the inventory's own is a map's).
    let loaded = inv.snapshot();
    let in_order = ["ab", "aba", "xa", "b"]
        .into_iter()
        .map(|n| loaded.vms.iter().find(|vm| vm.name == n).unwrap().clone())
        .collect();
    let snap = Snapshot::build(1, in_order);
    assert_eq!(snap.columns.names, "ababaxab");
    let named = |n: &str| {
        let query = all(VmQuery {
            name: Some(n.into()),
            ..VmQuery::default()
        });
        let page = snap.page(&query, |_| true);
        page.items
            .iter()
            .map(|vm| vm.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(named("aba"), ["aba"]);
    assert_eq!(named("ab"), ["ab", "aba"]);
    assert_eq!(named("bx"), Vec::<String>::new());
    assert_eq!(named("B"), ["ab", "aba", "b"]);
    assert_eq!(named(""), ["ab", "aba", "b", "xa"]);
}

/// What a set of queries answers, to compare two snapshots by behaviour.
fn answers(snapshot: &Snapshot, hosts: &[HostId]) -> Vec<(usize, Vec<Uuid>)> {
    let mut queries = vec![
        all(VmQuery::default()),
        all(VmQuery {
            name: Some("new".into()),
            sort: VmSort::Memory,
            descending: true,
            ..VmQuery::default()
        }),
        all(VmQuery {
            state: Some(VmState::Running),
            sort: VmSort::State,
            ..VmQuery::default()
        }),
        all(VmQuery {
            tags: vec!["edge".into()],
            sort: VmSort::Host,
            offset: 3,
            ..VmQuery::default()
        }),
    ];
    queries.extend(hosts.iter().map(|h| {
        all(VmQuery {
            host: Some(*h),
            name: Some("-1".into()),
            ..VmQuery::default()
        })
    }));
    queries
        .iter()
        .map(|q| {
            let page = snapshot.page(q, |_| true);
            (page.total, page.items.iter().map(|vm| vm.uuid).collect())
        })
        .collect()
}

#[test]
fn new_vms_and_resynced_states_are_in_the_list_at_once_even_when_rebuilds_are_slow() {
    let inv = Inventory::default();
    let bus = EventBus::new(4096);
    let owner = UserId::new();
    let hosts = [host(owner, "h1", &[]), host(owner, "h2", &["edge"])];
    let mut lists: Vec<Vec<VmSummary>> = vec![Vec::new(), Vec::new()];
    for (h, list) in hosts.iter().zip(&mut lists) {
        *list = (0..40u64)
            .map(|i| vm(&format!("{}-{i}", h.name), VmState::ShutOff, i % 3))
            .collect();
        inv.load_synthetic(h, list.clone());
    }
    let ids: Vec<HostId> = hosts.iter().map(|h| h.id).collect();
    assert_eq!(inv.snapshot().len(), 80);
    inv.last_build_micros
        .store(INLINE_REBUILD_MICROS + 1, AtomicOrdering::Relaxed);
    let states = [VmState::Running, VmState::Paused, VmState::ShutOff];
    for step in 0..120usize {
        // Never an inline rebuild: what a read sees at once is the patch.
        inv.last_build_micros
            .store(INLINE_REBUILD_MICROS + 1, AtomicOrdering::Relaxed);
        let h = step % 2;
        match step % 3 {
            // A resync finds new VMs (one to three).
            0 => {
                for k in 0..=step % 3 + step % 2 {
                    lists[h].push(vm(&format!("new-{step}-{k}"), states[k % 3], k as u64));
                }
            }
            // A resync finds other states.
            1 => {
                let n = lists[h].len();
                for k in [step % n, (step * 7) % n] {
                    lists[h][k].state = states[(step + k) % 3];
                }
            }
            // A host pushes a state.
            _ => {
                let n = lists[h].len();
                let vm = &mut lists[h][(step * 11) % n];
                vm.state = states[step % 3];
                assert!(inv.apply_state(&bus, ids[h], &vm.name.clone(), vm.state));
            }
        }
        if step % 3 != 2 {
            inv.apply_full(&bus, ids[h], lists[h].clone());
        }
        let after = inv.snapshot();
        let expected: usize = lists.iter().map(Vec::len).sum();
        assert_eq!(after.len(), expected, "step {step}: read at once");
        for list in &lists {
            for vm in list {
                let at = after.by_uuid[&vm.uuid] as usize;
                assert_eq!(after.vms[at].state, vm.state, "step {step}: {}", vm.name);
            }
        }
        let rebuilt = Snapshot::build(after.generation, after.vms.clone());
        assert_eq!(orders_of(&after), orders_of(&rebuilt), "step {step}");
        assert_eq!(after.states, rebuilt.states, "step {step}");
        assert_eq!(
            answers(&after, &ids),
            answers(&rebuilt, &ids),
            "step {step}"
        );
    }
    // A removal is not patched: the read keeps the last picture until the
    // background rebuild lands, and then the VM is gone.
    let before = inv.snapshot();
    let gone = lists[0].pop().unwrap();
    inv.apply_full(&bus, ids[0], lists[0].clone());
    let s = await_rebuild(&inv, &before, |s| !s.by_uuid.contains_key(&gone.uuid));
    assert_eq!(s.len(), before.len() - 1);
}

#[test]
fn addresses_are_kept_while_a_vm_runs_and_dropped_when_it_stops() {
    let inv = Inventory::default();
    let bus = EventBus::new(64);
    let mut rx = bus.receiver();
    let h = host(UserId::new(), "h1", &[]);
    inv.host_upsert(&h);
    let (a, off) = (
        vm("a", VmState::Running, 64),
        vm("off", VmState::ShutOff, 64),
    );
    inv.apply_full(&bus, h.id, vec![a.clone(), off.clone()]);
    while rx.try_recv().is_ok() {}
    assert_eq!(inv.active_vms(h.id), [a.uuid]);
    let ips = vec!["192.0.2.7".to_owned()];
    // A stopped VM's addresses are not taken; an unknown VM is ignored.
    inv.apply_addresses(
        &bus,
        h.id,
        vec![
            (a.uuid, ips.clone()),
            (off.uuid, ips.clone()),
            (Uuid::new_v4(), ips.clone()),
        ],
    );
    let ips_of = |uuid: Uuid| {
        let snapshot = inv.snapshot();
        snapshot.vms[snapshot.by_uuid[&uuid] as usize].ips.clone()
    };
    assert_eq!(ips_of(a.uuid), ips, "patched into the published list");
    assert!(ips_of(off.uuid).is_empty());
    assert_eq!(rx.try_recv().unwrap().event.type_name(), "vm.changed");
    assert!(rx.try_recv().is_err(), "one change, one event");
    // The same addresses again: nothing to publish.
    inv.apply_addresses(&bus, h.id, vec![(a.uuid, ips.clone())]);
    assert!(rx.try_recv().is_err());
    // A resync that changes something else keeps them; a stop drops them.
    let mut bigger = a.clone();
    bigger.memory_mib = Some(128);
    inv.apply_full(&bus, h.id, vec![bigger, off.clone()]);
    assert_eq!(ips_of(a.uuid), ips);
    assert!(inv.apply_state(&bus, h.id, "a", VmState::ShutOff));
    assert!(ips_of(a.uuid).is_empty());
}
