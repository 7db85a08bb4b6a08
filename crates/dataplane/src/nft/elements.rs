//! Element-only changes as typed nf_tables element batches, sent in-process by
//! [`crate::nfnl::Elements`]: the agent's hot path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::model::*;
use crate::nfnl;

/// `name` as the kernel keys an `ifname`: 16 bytes, zero-padded.
pub(super) fn ifname_key(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.resize(16, 0);
    k
}

pub(super) fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The address after the last of `net`, if there is one (the exclusive end of a
/// range in a set of single values).
pub(super) fn after(net: &IpNet) -> Option<IpAddr> {
    match net.broadcast() {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(1)
            .map(|v| IpAddr::from(v.to_be_bytes())),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(1)
            .map(|v| IpAddr::from(v.to_be_bytes())),
    }
}

/// `ifname . addr` over the range of `net`, for concatenations with intervals.
pub(super) fn concat_range(name: &str, net: &IpNet) -> nfnl::Element {
    let mut key = ifname_key(name);
    key.extend(addr_bytes(net.network()));
    let mut end = ifname_key(name);
    end.extend(addr_bytes(net.broadcast()));
    nfnl::Element {
        key,
        key_end: Some(end),
        interval_end: false,
        data: None,
    }
}

/// `ifname . addr` exactly, for the hash sets and maps of single addresses.
pub(super) fn concat_exact(name: &str, net: &IpNet) -> nfnl::Element {
    let mut key = ifname_key(name);
    key.extend(addr_bytes(net.addr()));
    nfnl::Element {
        key,
        key_end: None,
        interval_end: false,
        data: None,
    }
}

/// `ifname . addr` in a set that holds ranges (`ranges`) or single addresses.
pub(super) fn concat(ranges: bool, name: &str, net: &IpNet) -> nfnl::Element {
    if ranges {
        concat_range(name, net)
    } else {
        concat_exact(name, net)
    }
}

pub(super) fn belem(ranges: bool, e: &BElem) -> nfnl::Element {
    let plain = |key: Vec<u8>| nfnl::Element {
        key,
        key_end: None,
        interval_end: false,
        data: None,
    };
    match e {
        BElem::Tap(t) => plain(ifname_key(t)),
        BElem::Mac(t, m) => {
            let mut k = ifname_key(t);
            k.extend_from_slice(&m.0);
            k.extend_from_slice(&[0, 0]);
            plain(k)
        }
        BElem::Net(t, n) => concat(ranges, t, n),
    }
}

/// A single-value interval set's elements for `net`: its start, and its
/// exclusive end flagged as such (none when the range ends the address space).
pub(super) fn interval(net: &IpNet) -> Vec<nfnl::Element> {
    let mut v = vec![nfnl::Element {
        key: addr_bytes(net.network()),
        key_end: None,
        interval_end: false,
        data: None,
    }];
    if let Some(end) = after(net) {
        v.push(nfnl::Element {
            key: addr_bytes(end),
            key_end: None,
            interval_end: true,
            data: None,
        });
    }
    v
}

/// Collects the element changes of one set or map.
pub(super) struct Changes(pub(super) Vec<nfnl::Change>, pub(super) Vec<nfnl::Change>);

impl Changes {
    pub(super) fn push(
        &mut self,
        family: nfnl::Family,
        set: &str,
        dels: Vec<nfnl::Element>,
        adds: Vec<nfnl::Element>,
    ) {
        for (add, elements) in [(false, dels), (true, adds)] {
            if !elements.is_empty() {
                let c = nfnl::Change {
                    family,
                    set: set.to_string(),
                    add,
                    elements,
                };
                if add { self.1.push(c) } else { self.0.push(c) }
            }
        }
    }

    pub(super) fn map<K: Ord, V: PartialEq>(
        &mut self,
        family: nfnl::Family,
        set: &str,
        old: &BTreeMap<K, V>,
        new: &BTreeMap<K, V>,
        elem: impl Fn(&K, &V) -> nfnl::Element,
    ) {
        let dels = old
            .iter()
            .filter(|(k, v)| new.get(k) != Some(v))
            .map(|(k, v)| nfnl::Element {
                data: None,
                ..elem(k, v)
            })
            .collect();
        let adds = new
            .iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .map(|(k, v)| elem(k, v))
            .collect();
        self.push(family, set, dels, adds);
    }

    pub(super) fn set<T: Ord>(
        &mut self,
        family: nfnl::Family,
        set: &str,
        old: &BTreeSet<T>,
        new: &BTreeSet<T>,
        elem: impl Fn(&T) -> Vec<nfnl::Element>,
    ) {
        let dels = old.difference(new).flat_map(&elem).collect();
        let adds = new.difference(old).flat_map(&elem).collect();
        self.push(family, set, dels, adds);
    }
}

/// The change from `old` to `new` as set and map element updates only, for
/// [`nfnl::Elements::apply`] (deletes first, one atomic batch), or `None` when the
/// change needs more: chains created, refilled or deleted, group sets created or
/// deleted, published ports changed (those go through [`super::diff_compiled`]). A port
/// bound with rules another port on the host already has, a port going away while
/// another keeps its chain, a group member joining or leaving: all elements.
pub fn element_changes(old: &Compiled, new: &Compiled) -> Option<Vec<nfnl::Change>> {
    use nfnl::Family::{Bridge, Inet};
    let (o, n) = (&old.0, &new.0);
    if o.ichains != n.ichains || o.published != n.published || !o.sets.keys().eq(n.sets.keys()) {
        return None;
    }
    let mut c = Changes(Vec::new(), Vec::new());
    let none = BTreeSet::new();
    for (name, _, ranges) in BSETS {
        let (old_e, new_e) = (
            o.bsets.get(name).unwrap_or(&none),
            n.bsets.get(name).unwrap_or(&none),
        );
        c.set(Bridge, name, old_e, new_e, |e| vec![belem(ranges, e)]);
    }
    c.map(Inet, "zones", &o.zones, &n.zones, |b, z| nfnl::Element {
        key: ifname_key(b),
        key_end: None,
        interval_end: false,
        data: Some(nfnl::Data::Value(z.to_ne_bytes().to_vec())),
    });
    let bridges = |m: &Model| m.zones.keys().cloned().collect::<BTreeSet<String>>();
    c.set(Inet, "bridged", &bridges(o), &bridges(n), |b| {
        let mut key = ifname_key(b);
        key.extend(ifname_key(b));
        vec![nfnl::Element {
            key,
            key_end: None,
            interval_end: false,
            data: None,
        }]
    });
    for (name, (_, elems)) in &n.sets {
        let old_e: BTreeSet<IpNet> = o
            .sets
            .get(name)
            .map(|(_, e)| e.iter().copied().collect())
            .unwrap_or_default();
        let new_e: BTreeSet<IpNet> = elems.iter().copied().collect();
        c.set(Inet, name, &old_e, &new_e, interval);
    }
    let empty = BTreeMap::new();
    for name in VMAPS {
        c.map(
            Inet,
            name,
            o.vmaps.get(name).unwrap_or(&empty),
            n.vmaps.get(name).unwrap_or(&empty),
            |(bridge, net), chain| nfnl::Element {
                data: Some(nfnl::Data::Jump(chain.clone())),
                ..concat(holds_ranges(name), bridge, net)
            },
        );
    }
    let no_addrs = BTreeSet::new();
    for (name, _) in NOTRACK {
        c.set(
            Inet,
            name,
            o.notrack.get(name).unwrap_or(&no_addrs),
            n.notrack.get(name).unwrap_or(&no_addrs),
            |(bridge, net)| vec![concat(holds_ranges(name), bridge, net)],
        );
    }
    let Changes(mut dels, adds) = c;
    dels.extend(adds);
    Some(dels)
}
