//! The snapshot's filter columns: the facts a filter looks at, by VM
//! index, and the set of VMs a filter selects.

use std::sync::Arc;

use overvisor_model::account::UserId;
use overvisor_model::host::{HostId, HostKind};

use super::VmRecord;

/// The filterable facts of every VM, laid out by VM index so that a filter
/// is one sequential scan: walking 20,000 records in sort order instead
/// means two cache misses each (the record, then its name) and costs
/// milliseconds where this costs a fraction of one.
#[derive(Clone)]
pub(super) struct Columns {
    /// Distinct owners, and each VM's index into them.
    pub(super) owners: Vec<UserId>,
    pub(super) owner_of: Vec<u32>,
    /// Distinct hosts with what a filter asks of them, and each VM's
    /// index into them.
    pub(super) hosts: Vec<HostColumn>,
    pub(super) host_of: Vec<u32>,
    /// Lower-case names end to end: VM `i`'s ends at `name_ends[i]` and
    /// starts where the one before it ends.
    pub(super) names: String,
    name_ends: Vec<u32>,
}

/// A host as the filters see it.
#[derive(Clone)]
pub(super) struct HostColumn {
    pub(super) id: HostId,
    pub(super) kind: HostKind,
    pub(super) tags: Arc<[String]>,
}

impl Columns {
    pub(super) fn build(vms: &[Arc<VmRecord>]) -> Self {
        let mut columns = Self {
            owners: Vec::new(),
            owner_of: Vec::with_capacity(vms.len()),
            hosts: Vec::new(),
            host_of: Vec::with_capacity(vms.len()),
            names: String::with_capacity(vms.iter().map(|vm| vm.name_key.len()).sum()),
            name_ends: Vec::with_capacity(vms.len()),
        };
        for vm in vms {
            columns.append(vm);
        }
        columns
    }

    /// Appends one VM, numbering its owner and host if they are new. The
    /// look-up tries the previous VM's first: the inventory lists VMs host
    /// by host, so that almost always hits; otherwise it is a linear scan
    /// (few owners, hosts in the hundreds).
    pub(super) fn append(&mut self, vm: &VmRecord) {
        let owner = number(&self.owners, self.owner_of.last(), vm.owner, |o| *o);
        let host = number(&self.hosts, self.host_of.last(), vm.host_id, |h| h.id);
        if host as usize == self.hosts.len() {
            self.hosts.push(HostColumn {
                id: vm.host_id,
                kind: vm.host_kind,
                tags: vm.tags.clone(),
            });
        }
        if owner as usize == self.owners.len() {
            self.owners.push(vm.owner);
        }
        self.owner_of.push(owner);
        self.host_of.push(host);
        self.names.push_str(&vm.name_key);
        self.name_ends.push(self.names.len() as u32);
    }
}

/// The number of `key` in `known` (by `key_of`), trying `last` first;
/// `known.len()` when it is new (the caller then pushes it).
fn number<T, K: PartialEq>(
    known: &[T],
    last: Option<&u32>,
    key: K,
    key_of: impl Fn(&T) -> K,
) -> u32 {
    if let Some(&last) = last
        && known.get(last as usize).is_some_and(|k| key_of(k) == key)
    {
        return last;
    }
    known
        .iter()
        .position(|k| key_of(k) == key)
        .unwrap_or(known.len()) as u32
}

impl Columns {
    /// The VMs whose lower-case name contains `needle` (not empty): one
    /// substring search over all names end to end. A hit that runs into
    /// the next name is no hit, and the search goes on at that next name's
    /// start, so no name is skipped.
    pub(super) fn named(&self, needle: &str) -> Matches {
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        let names = self.names.as_bytes();
        let mut matches = Matches::none(self.name_ends.len());
        let mut from = 0;
        while let Some(at) = finder.find(&names[from..]).map(|at| at + from) {
            // The name the hit starts in: the first that ends after `at`.
            let i = self.name_ends.partition_point(|&end| end as usize <= at);
            let Some(&end) = self.name_ends.get(i) else {
                break;
            };
            let end = end as usize;
            if at + needle.len() <= end {
                matches.insert(i);
            }
            from = end;
        }
        matches
    }
}

/// One bit per VM index.
pub(super) struct Matches(Vec<u64>);

impl Matches {
    /// No VM of `len`.
    pub(super) fn none(len: usize) -> Self {
        Self(vec![0u64; len.div_ceil(64)])
    }

    pub(super) fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub(super) fn contains(&self, i: u32) -> bool {
        self.0[i as usize / 64] & (1 << (i % 64)) != 0
    }

    pub(super) fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}
