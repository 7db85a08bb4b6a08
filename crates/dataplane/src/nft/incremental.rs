//! A changed ruleset applied to the compiled model in place: the cost follows the
//! ports and group members that changed, not the number of ports on the host (a
//! whole build at 1,000 ports costs milliseconds per pass; this, microseconds).
//!
//! Only changes that are elements of existing sets and maps are done here. Anything
//! else (a chain created or left unused, a group set created or deleted, networks or
//! published ports changed, a model whose build left something out) is answered
//! `None`, and the caller compiles the new ruleset whole.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::elements::{Changes, belem, concat, interval};
use super::model::*;
use super::*;
use crate::nfnl;

/// What one port contributes to the model, on its own.
struct Part<'a> {
    port: &'a PortFilter,
    spoof: BTreeMap<&'static str, BTreeSet<BElem>>,
    nets: BTreeSet<IpNet>,
    /// (ingress, egress) chain names.
    chains: (String, String),
    groups: BTreeSet<(String, EtherType)>,
}

impl<'a> Part<'a> {
    fn of(port: &'a PortFilter) -> Part<'a> {
        let mut spoof = BTreeMap::new();
        spoof_elements(port, &mut spoof);
        let (ins, outs) = port_chains(port);
        let mut groups = BTreeSet::new();
        referenced_groups(port, &mut groups);
        Part {
            port,
            spoof,
            nets: candidate_nets(port),
            chains: (rules_chain("in", &ins), rules_chain("out", &outs)),
            groups,
        }
    }

    /// (vmap, chain) of each direction for `net`.
    fn maps(&self, net: &IpNet) -> [(&'static str, &String); 2] {
        let (e, i) = match net {
            IpNet::V4(_) => ("egress4", "ingress4"),
            IpNet::V6(_) => ("egress6", "ingress6"),
        };
        [
            (map_for(e, net), &self.chains.1),
            (map_for(i, net), &self.chains.0),
        ]
    }
}

/// The notrack set that follows the egress map holding `net`.
fn notrack_set(net: &IpNet) -> &'static str {
    let egress = match net {
        IpNet::V4(_) => map_for("egress4", net),
        IpNet::V6(_) => map_for("egress6", net),
    };
    NOTRACK
        .iter()
        .find(|(_, map)| *map == egress)
        .map_or("notrack4", |(set, _)| *set)
}

/// The ports (with port security: the others contribute nothing) that differ
/// between two rulesets sorted by id: (the old versions, the new versions). `None`
/// when a list is not strictly sorted by id.
fn changed_ports<'a>(
    old: &'a [Arc<PortFilter>],
    new: &'a [Arc<PortFilter>],
) -> Option<(Vec<&'a PortFilter>, Vec<&'a PortFilter>)> {
    let sorted = |l: &[Arc<PortFilter>]| l.windows(2).all(|w| w[0].id < w[1].id);
    if !sorted(old) || !sorted(new) {
        return None;
    }
    let (mut gone, mut came) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            // Same allocation (the common case) or same content.
            (Some(a), Some(b)) if a.id == b.id => {
                if a != b {
                    gone.push(&**a);
                    came.push(&**b);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.id < b.id => {
                gone.push(&**a);
                i += 1;
            }
            (Some(a), None) => {
                gone.push(&**a);
                i += 1;
            }
            (_, Some(b)) => {
                came.push(&**b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    gone.retain(|p| p.port_security);
    came.retain(|p| p.port_security);
    Some((gone, came))
}

/// Whether `net` overlaps an address of `taken` on `bridge` that is not `freed`.
/// Taken addresses never overlap each other and CIDRs nest or are disjoint, so the
/// candidates are those starting inside `net` and the last one starting before it.
fn overlaps(
    taken: &BTreeMap<(String, IpAddr), IpNet>,
    bridge: &str,
    net: &IpNet,
    freed: &BTreeSet<(&str, IpNet)>,
) -> bool {
    let lo = (bridge.to_string(), net.network());
    let hi = (bridge.to_string(), net.broadcast());
    let live =
        |(b, n): (&(String, IpAddr), &IpNet)| b.0 == bridge && !freed.contains(&(bridge, *n));
    if taken.range(lo.clone()..=hi).any(live) {
        return true;
    }
    taken
        .range(..lo)
        .rev()
        .take_while(|((b, _), _)| b == bridge)
        .find(|e| live(*e))
        .is_some_and(|(_, n)| n.contains(net))
}

/// Elements removed and added in one set or map (removed, added), to diff at the
/// end (an element removed and added again in one change cancels out).
type Both<T> = (T, T);
type Entries = BTreeMap<(String, IpNet), String>;

#[derive(Default)]
struct Touched {
    bsets: BTreeMap<&'static str, Both<BTreeSet<BElem>>>,
    vmaps: BTreeMap<&'static str, Both<Entries>>,
    notrack: BTreeMap<&'static str, Both<BTreeSet<(String, IpNet)>>>,
}

impl Model {
    /// See [`Compiled::update`].
    pub(super) fn update(&mut self, old: &Ruleset, new: &Ruleset) -> Option<Vec<nfnl::Change>> {
        if !self.clean
            || old.networks != new.networks
            || old.published != new.published
            || !old.groups.keys().eq(new.groups.keys())
        {
            return None;
        }
        let (gone, came) = changed_ports(&old.ports, &new.ports)?;
        let gone: Vec<Part> = gone.into_iter().map(Part::of).collect();
        let came: Vec<Part> = came.into_iter().map(Part::of).collect();

        // First every check, then every change: a change refused leaves the model
        // as it was (the caller diffs it against the whole build).
        let mut chains: BTreeMap<&str, isize> = BTreeMap::new();
        let mut groups: BTreeMap<&(String, EtherType), isize> = BTreeMap::new();
        for (parts, d) in [(&gone, -1), (&came, 1)] {
            for p in parts {
                *chains.entry(&p.chains.0).or_default() += d;
                *chains.entry(&p.chains.1).or_default() += d;
                for g in &p.groups {
                    *groups.entry(g).or_default() += d;
                }
            }
        }
        for (chain, d) in chains {
            let now = self.chain_refs.get(chain).copied().unwrap_or(0) as isize;
            // A chain to create, or one no port uses any more (to delete).
            if now == 0 || now + d <= 0 {
                return None;
            }
        }
        for (g, d) in groups {
            let now = self.group_refs.get(g).copied().unwrap_or(0) as isize;
            // A group set to create or delete (sets of the ruleset's groups stay).
            if (now == 0) != (now + d == 0) && !new.groups.contains_key(&g.0) {
                return None;
            }
        }
        let freed_taps: BTreeSet<&str> = gone.iter().map(|p| p.port.tap.as_str()).collect();
        let freed: BTreeSet<(&str, IpNet)> = gone
            .iter()
            .flat_map(|p| p.nets.iter().map(|n| (p.port.bridge.as_str(), *n)))
            .collect();
        let secured = self.bsets.get("secured");
        let mut new_taps = BTreeSet::new();
        let mut claimed: BTreeMap<(String, IpAddr), IpNet> = BTreeMap::new();
        for p in &came {
            let (tap, bridge) = (&p.port.tap, &p.port.bridge);
            let tap_held = secured.is_some_and(|s| s.contains(&BElem::Tap(tap.clone())))
                && !freed_taps.contains(tap.as_str());
            if !valid_ifname(tap) || !valid_ifname(bridge) || tap_held || !new_taps.insert(tap) {
                return None;
            }
            for net in &p.nets {
                if overlaps(&self.taken, bridge, net, &freed)
                    || overlaps(&claimed, bridge, net, &BTreeSet::new())
                {
                    return None;
                }
                claimed.insert((bridge.clone(), net.network()), *net);
            }
        }

        let mut t = Touched::default();
        for p in &gone {
            self.remove_part(p, &mut t);
        }
        for p in &came {
            self.add_part(p, &mut t);
        }

        use nfnl::Family::{Bridge, Inet};
        let mut c = Changes(Vec::new(), Vec::new());
        for (name, _, ranges) in BSETS {
            if let Some((removed, added)) = t.bsets.get(name) {
                c.set(Bridge, name, removed, added, |e| vec![belem(ranges, e)]);
            }
        }
        for ((name, old_g), new_g) in old.groups.iter().zip(new.groups.values()) {
            if old_g == new_g {
                continue;
            }
            for (fam, members) in [(EtherType::V4, &new_g.v4), (EtherType::V6, &new_g.v6)] {
                let set = group_set(name, fam);
                let now = aggregate(members.iter().copied(), fam);
                let Some((_, held)) = self.sets.get_mut(&set) else {
                    continue;
                };
                if *held != now {
                    let before: BTreeSet<IpNet> = held.iter().copied().collect();
                    let after: BTreeSet<IpNet> = now.iter().copied().collect();
                    c.set(Inet, &set, &before, &after, interval);
                    *held = now;
                }
            }
        }
        for name in VMAPS {
            if let Some((removed, added)) = t.vmaps.get(name) {
                c.map(Inet, name, removed, added, |(bridge, net), chain| {
                    nfnl::Element {
                        data: Some(nfnl::Data::Jump(chain.clone())),
                        ..concat(holds_ranges(name), bridge, net)
                    }
                });
            }
        }
        for (name, _) in NOTRACK {
            if let Some((removed, added)) = t.notrack.get(name) {
                c.set(Inet, name, removed, added, |(bridge, net)| {
                    vec![concat(holds_ranges(name), bridge, net)]
                });
            }
        }
        let Changes(mut dels, adds) = c;
        dels.extend(adds);
        Some(dels)
    }

    fn remove_part(&mut self, p: &Part, t: &mut Touched) {
        for (set, elems) in &p.spoof {
            for e in elems {
                if let Some(s) = self.bsets.get_mut(set) {
                    s.remove(e);
                }
                t.bsets.entry(set).or_default().0.insert(e.clone());
            }
        }
        let bridge = &p.port.bridge;
        for net in &p.nets {
            for (map, _) in p.maps(net) {
                let key = (bridge.clone(), *net);
                if let Some(chain) = self.vmaps.get_mut(map).and_then(|m| m.remove(&key)) {
                    t.vmaps.entry(map).or_default().0.insert(key, chain);
                }
            }
            self.taken.remove(&(bridge.clone(), net.network()));
            if p.port.stateless {
                let set = notrack_set(net);
                let key = (bridge.clone(), *net);
                if let Some(s) = self.notrack.get_mut(set) {
                    s.remove(&key);
                }
                t.notrack.entry(set).or_default().0.insert(key);
            }
        }
        for chain in [&p.chains.0, &p.chains.1] {
            if let Some(n) = self.chain_refs.get_mut(chain) {
                *n -= 1;
            }
        }
        for g in &p.groups {
            if let Some(n) = self.group_refs.get_mut(g) {
                *n -= 1;
                if *n == 0 {
                    self.group_refs.remove(g);
                }
            }
        }
    }

    fn add_part(&mut self, p: &Part, t: &mut Touched) {
        for (set, elems) in &p.spoof {
            for e in elems {
                self.bsets.entry(set).or_default().insert(e.clone());
                t.bsets.entry(set).or_default().1.insert(e.clone());
            }
        }
        let bridge = &p.port.bridge;
        for net in &p.nets {
            for (map, chain) in p.maps(net) {
                let key = (bridge.clone(), *net);
                self.vmaps
                    .entry(map)
                    .or_default()
                    .insert(key.clone(), chain.clone());
                t.vmaps.entry(map).or_default().1.insert(key, chain.clone());
            }
            self.taken.insert((bridge.clone(), net.network()), *net);
            if p.port.stateless {
                let set = notrack_set(net);
                let key = (bridge.clone(), *net);
                self.notrack.entry(set).or_default().insert(key.clone());
                t.notrack.entry(set).or_default().1.insert(key);
            }
        }
        for chain in [&p.chains.0, &p.chains.1] {
            *self.chain_refs.entry(chain.clone()).or_default() += 1;
        }
        for g in &p.groups {
            *self.group_refs.entry(g.clone()).or_default() += 1;
        }
    }
}

impl Compiled {
    /// Brings this model, compiled from `old`, to `new` in place, touching only
    /// what the ports and group members that changed touch, and returns the element
    /// changes that take the kernel along: the same ones as
    /// [`element_changes`]`(self before, compile(new))`. `None`, with the model left
    /// as it was, when the change needs more than elements or the model cannot be
    /// changed in place: then compile `new` whole.
    pub fn update(&mut self, old: &Ruleset, new: &Ruleset) -> Option<Vec<nfnl::Change>> {
        self.0.update(old, new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{compile, element_changes};

    /// xorshift64: reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn rule(direction: Direction, ethertype: EtherType, remote: Remote) -> Rule {
        Rule {
            direction,
            ethertype,
            protocol: None,
            port_range_min: None,
            port_range_max: None,
            remote,
        }
    }

    /// Three rule lists, two naming a remote group: ports share chains or not.
    fn rules(k: u64) -> Vec<Rule> {
        let mut v = vec![rule(Direction::Egress, EtherType::V4, Remote::Any)];
        match k {
            0 => v.push(rule(
                Direction::Ingress,
                EtherType::V4,
                Remote::Group("sg1".into()),
            )),
            1 => v.push(rule(
                Direction::Ingress,
                EtherType::V6,
                Remote::Group("sg2".into()),
            )),
            _ => v.push(rule(Direction::Ingress, EtherType::V4, Remote::Any)),
        }
        v
    }

    fn port(r: &mut Rng, n: u64) -> PortFilter {
        let bridge = r.below(2);
        // Its own address, now and then one that may be another port's.
        let host = if r.below(40) == 0 { r.below(60) } else { n };
        let mut ips = vec![IpAddr::from([10, 0, bridge as u8, 1 + host as u8])];
        if r.below(3) == 0 {
            ips.push(
                format!("fd00::{bridge}:{:x}", 1 + host)
                    .parse()
                    .expect("v6"),
            );
        }
        let allowed_address_pairs = match r.below(16) {
            // A range (which may overlap another port's addresses), or one address.
            0 => vec![AddressPair {
                ip: format!("10.0.{bridge}.{}/28", 128 + 16 * r.below(8))
                    .parse()
                    .expect("net"),
                mac: None,
            }],
            1 => vec![AddressPair {
                ip: format!("10.0.{bridge}.{}/32", 100 + r.below(20))
                    .parse()
                    .expect("net"),
                mac: Some(crate::MacAddr([0xfa, 0x16, 0x3e, 1, 2, r.below(200) as u8])),
            }],
            _ => vec![],
        };
        PortFilter {
            id: format!("p{n:02}"),
            tap: format!("tap{n:02}"),
            bridge: format!("brq{bridge}"),
            mac: crate::MacAddr([0xfa, 0x16, 0x3e, 0, 0, n as u8]),
            ips,
            allowed_address_pairs,
            port_security: r.below(10) != 0,
            stateless: r.below(5) == 0,
            rules: rules(r.below(3)),
        }
    }

    fn members(r: &mut Rng) -> GroupMembers {
        let mut g = GroupMembers::default();
        for _ in 0..r.below(6) {
            g.v4.insert(IpNet::from(IpAddr::from([10, 0, 0, 1 + r.below(60) as u8])));
        }
        if r.below(2) == 0 {
            g.v6.insert("fd00::1:0/112".parse().expect("net"));
        }
        g
    }

    fn mutate(r: &mut Rng, rs: &mut Ruleset) {
        match r.below(10) {
            0..=3 => {
                let n = r.below(40);
                if !rs.ports.iter().any(|p| p.id == format!("p{n:02}")) {
                    rs.ports.push(Arc::new(port(r, n)));
                    rs.ports.sort_by(|a, b| a.id.cmp(&b.id));
                }
            }
            4..=5 if !rs.ports.is_empty() => {
                let i = r.below(rs.ports.len() as u64) as usize;
                rs.ports.remove(i);
            }
            6..=7 if !rs.ports.is_empty() => {
                let i = r.below(rs.ports.len() as u64) as usize;
                let n = rs.ports[i].id[1..].parse().expect("number");
                rs.ports[i] = Arc::new(port(r, n));
            }
            8 => {
                let g = if r.below(2) == 0 { "sg1" } else { "sg2" };
                rs.groups.insert(g.into(), members(r));
            }
            // A group added or dropped: never in place.
            _ if r.below(3) == 0 && rs.groups.remove("sg3").is_none() => {
                rs.groups.insert("sg3".into(), members(r));
            }
            _ => {}
        }
    }

    fn normalized(changes: &[nfnl::Change]) -> Vec<String> {
        let mut v: Vec<String> = changes.iter().map(|c| format!("{c:?}")).collect();
        v.sort();
        v
    }

    /// Against the whole build, over thousands of random changes: an update done
    /// in place leaves exactly the model the build makes and sends exactly the
    /// elements the diff of the two builds sends (deletes first); one refused
    /// leaves the model untouched. Both outcomes must occur.
    #[test]
    fn update_in_place_equals_the_whole_build() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut in_place, mut refused) = (0, 0);
        for _round in 0..40 {
            let mut rs = Ruleset {
                networks: vec![
                    NetworkZone {
                        bridge: "brq0".into(),
                        zone: 1,
                    },
                    NetworkZone {
                        bridge: "brq1".into(),
                        zone: 2,
                    },
                ],
                ..Ruleset::default()
            };
            rs.groups.insert("sg1".into(), members(&mut r));
            rs.groups.insert("sg2".into(), members(&mut r));
            for _ in 0..100 {
                let mut next = rs.clone();
                for _ in 0..1 + r.below(3) {
                    mutate(&mut r, &mut next);
                }
                let before = compile(&rs);
                let after = compile(&next);
                let mut model = before.clone();
                match model.update(&rs, &next) {
                    Some(changes) => {
                        in_place += 1;
                        assert_eq!(model, after, "model after {rs:#?}\n->\n{next:#?}");
                        let want = element_changes(&before, &after)
                            .expect("the whole build needs more than elements");
                        assert_eq!(normalized(&changes), normalized(&want));
                        let first_add = changes.iter().position(|c| c.add).unwrap_or(changes.len());
                        assert!(changes[first_add..].iter().all(|c| c.add), "deletes first");
                    }
                    None => {
                        refused += 1;
                        assert_eq!(model, before, "a refused update changed the model");
                    }
                }
                rs = next;
            }
        }
        assert!(in_place > 1000, "in place: {in_place}, refused: {refused}");
        assert!(refused > 100, "in place: {in_place}, refused: {refused}");
    }
}
