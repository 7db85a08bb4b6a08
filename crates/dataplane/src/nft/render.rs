//! nft text: the whole script that replaces kuryr's tables ([`render`]), and the
//! smallest script between two states ([`diff`]), for the changes that are more
//! than elements (chains, group sets, published ports) and for `--dump`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnet::IpNet;

use super::model::*;
use super::*;

pub(super) fn addr_type(fam: EtherType) -> &'static str {
    match fam {
        EtherType::V4 => "ipv4_addr",
        EtherType::V6 => "ipv6_addr",
    }
}

pub(super) fn vmap_type(map: &str) -> &'static str {
    if map.contains('4') {
        "ifname . ipv4_addr"
    } else {
        "ifname . ipv6_addr"
    }
}

pub(super) fn vmap_elem((bridge, net): &(String, IpNet)) -> String {
    format!("\"{bridge}\" . {}", elem(net))
}

pub(super) fn bridged_elem(bridge: &String) -> String {
    format!("\"{bridge}\" . \"{bridge}\"")
}

pub(super) fn join_elems(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(",\n\t\t\t")
}

pub(super) const FORWARD: [&str; 13] = [
    "iifname != \"brq*\" oifname != \"brq*\" return",
    "ct state established,related accept",
    "ct state invalid drop",
    "iifname . oifname != @bridged ct status & dnat == 0 drop",
    "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, \
     mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } accept",
    "iifname . ip saddr vmap @egress4",
    "iifname . ip saddr vmap @egress4_nets",
    "iifname . ip6 saddr vmap @egress6",
    "iifname . ip6 saddr vmap @egress6_nets",
    "oifname . ip daddr vmap @ingress4",
    "oifname . ip daddr vmap @ingress4_nets",
    "oifname . ip6 daddr vmap @ingress6",
    "oifname . ip6 daddr vmap @ingress6_nets",
];

/// The whole script: atomically replaces kuryr's two tables (`add table`, `delete
/// table`, `table {...}` for each family, in one transaction). Deterministic.
pub fn render(rs: &Ruleset) -> String {
    render_model(&Model::build(rs))
}

pub(super) fn render_model(m: &Model) -> String {
    let mut s = String::new();
    for fam in ["bridge", "inet"] {
        let _ = writeln!(s, "add table {fam} {TABLE}");
        let _ = writeln!(s, "delete table {fam} {TABLE}");
    }
    let _ = writeln!(s, "table bridge {TABLE} {{");
    for (name, ty, interval) in BSETS {
        let _ = writeln!(s, "\tset {name} {{\n\t\ttype {ty}");
        if interval {
            s.push_str("\t\tflags interval\n");
        }
        if let Some(elems) = m.bsets.get(name).filter(|e| !e.is_empty()) {
            let _ = writeln!(
                s,
                "\t\telements = {{ {} }}",
                join_elems(elems.iter().map(BElem::text))
            );
        }
        s.push_str("\t}\n");
    }
    s.push_str(
        "\tchain prerouting {\n\t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tiifname @secured jump spoof\n\t}\n",
    );
    write_chain(&mut s, "spoof", &SPOOF);
    s.push_str("}\n");

    let _ = writeln!(s, "table inet {TABLE} {{");
    s.push_str("\tmap zones {\n\t\ttypeof iifname : ct zone\n");
    if !m.zones.is_empty() {
        let _ = writeln!(
            s,
            "\t\telements = {{ {} }}",
            join_elems(m.zones.iter().map(|(b, z)| format!("\"{b}\" : {z}")))
        );
    }
    s.push_str("\t}\n");
    s.push_str("\tset bridged {\n\t\ttype ifname . ifname\n");
    if !m.zones.is_empty() {
        let _ = writeln!(
            s,
            "\t\telements = {{ {} }}",
            join_elems(m.zones.keys().map(bridged_elem))
        );
    }
    s.push_str("\t}\n");
    for (name, (fam, elems)) in &m.sets {
        let _ = writeln!(
            s,
            "\tset {name} {{\n\t\ttype {}\n\t\tflags interval",
            addr_type(*fam)
        );
        if !elems.is_empty() {
            let _ = writeln!(
                s,
                "\t\telements = {{ {} }}",
                join_elems(elems.iter().map(elem))
            );
        }
        s.push_str("\t}\n");
    }
    for (name, entries) in &m.vmaps {
        let _ = writeln!(
            s,
            "\tmap {name} {{\n\t\ttype {} : verdict{}",
            vmap_type(name),
            if holds_ranges(name) {
                "\n\t\tflags interval"
            } else {
                ""
            }
        );
        if !entries.is_empty() {
            let _ = writeln!(
                s,
                "\t\telements = {{ {} }}",
                join_elems(
                    entries
                        .iter()
                        .map(|(k, chain)| format!("{} : jump {chain}", vmap_elem(k)))
                )
            );
        }
        s.push_str("\t}\n");
    }
    for (name, map) in NOTRACK {
        let _ = writeln!(
            s,
            "\tset {name} {{\n\t\ttype {}{}",
            vmap_type(map),
            if holds_ranges(name) {
                "\n\t\tflags interval"
            } else {
                ""
            }
        );
        if let Some(elems) = m.notrack.get(name).filter(|e| !e.is_empty()) {
            let _ = writeln!(
                s,
                "\t\telements = {{ {} }}",
                join_elems(elems.iter().map(vmap_elem))
            );
        }
        s.push_str("\t}\n");
    }
    if let Some(p) = &m.published {
        for (kind, name, ty) in PUB_OBJECTS {
            let _ = writeln!(s, "\t{kind} {name} {{\n\t\t{ty}");
            let elems = p.elements(name);
            if !elems.is_empty() {
                let _ = writeln!(s, "\t\telements = {{ {} }}", join_elems(elems));
            }
            s.push_str("\t}\n");
        }
    }
    s.push_str("\tchain zone {\n\t\ttype filter hook prerouting priority raw; policy accept;\n");
    for r in ZONE {
        let _ = writeln!(s, "\t\t{r}");
    }
    s.push_str("\t}\n");
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    for r in FORWARD {
        let _ = writeln!(s, "\t\t{r}");
    }
    s.push_str("\t}\n");
    if m.published.is_some() {
        for (name, hook, rules) in PUB_CHAINS {
            let _ = writeln!(s, "\tchain {name} {{");
            if let Some(hook) = hook {
                let _ = writeln!(s, "\t\t{hook}");
            }
            for r in rules {
                let _ = writeln!(s, "\t\t{r}");
            }
            s.push_str("\t}\n");
        }
    }
    for (chain, rules) in &m.ichains {
        write_chain(&mut s, chain, rules);
    }
    s.push_str("}\n");
    s
}

pub(super) fn write_chain<T: AsRef<str>>(s: &mut String, chain: &str, rules: &[T]) {
    let _ = writeln!(s, "\tchain {chain} {{");
    for r in rules {
        let _ = writeln!(s, "\t\t{}", r.as_ref());
    }
    s.push_str("\t}\n");
}

/// Adds to `out` the commands that turn chains `old` into `new` in table `fam kuryr`:
/// new chains are created and filled, changed ones flushed and refilled. Removed
/// chains are returned for deletion after the map elements that jump to them.
pub(super) fn diff_chains(
    out: &mut String,
    fam: &str,
    old: &BTreeMap<String, Vec<String>>,
    new: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    for (chain, rules) in new {
        match old.get(chain) {
            Some(o) if o == rules => continue,
            Some(_) => {
                let _ = writeln!(out, "flush chain {fam} {TABLE} {chain}");
            }
            None => {
                let _ = writeln!(out, "add chain {fam} {TABLE} {chain}");
            }
        }
        for r in rules {
            let _ = writeln!(out, "add rule {fam} {TABLE} {chain} {r}");
        }
    }
    old.keys()
        .filter(|c| !new.contains_key(*c))
        .cloned()
        .collect()
}

/// `delete element` then `add element` lines for set or map `name` of table `fam
/// kuryr`, each only when it has elements.
fn write_elements(
    out: &mut String,
    fam: &str,
    name: &str,
    dels: &[impl AsRef<str>],
    adds: &[impl AsRef<str>],
) {
    let mut line = |verb: &str, elems: Vec<&str>| {
        if !elems.is_empty() {
            let _ = writeln!(
                out,
                "{verb} element {fam} {TABLE} {name} {{ {} }}",
                elems.join(", ")
            );
        }
    };
    line("delete", dels.iter().map(AsRef::as_ref).collect());
    line("add", adds.iter().map(AsRef::as_ref).collect());
}

/// Deletes then adds the elements of map `name` that differ (a changed value is a
/// delete and an add).
pub(super) fn diff_map<K: Ord, V: PartialEq>(
    out: &mut String,
    fam: &str,
    name: &str,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    key: impl Fn(&K) -> String,
    val: impl Fn(&V) -> String,
) {
    let dels: Vec<String> = old
        .iter()
        .filter(|(k, v)| new.get(k) != Some(v))
        .map(|(k, _)| key(k))
        .collect();
    let adds: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| format!("{} : {}", key(k), val(v)))
        .collect();
    write_elements(out, fam, name, &dels, &adds);
}

/// The smallest script that turns the kernel state of `render(old)` into that of
/// `render(new)`, or `None` when they are the same. Membership changes are set
/// element updates only; a port whose rules or addresses changed gets its chains
/// flushed and refilled; ports coming or going add or delete chains and map
/// elements; zones are map elements; sets come and go with their groups.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Option<String> {
    diff_compiled(&compile(old), &compile(new))
}

/// [`diff`] of two compiled rulesets.
pub fn diff_compiled(old: &Compiled, new: &Compiled) -> Option<String> {
    let (o, n) = (&old.0, &new.0);
    if o == n {
        return None;
    }
    let mut s = String::new();
    // 1. New sets, so that new rules can refer to them.
    for (name, (fam, elems)) in &n.sets {
        if !o.sets.contains_key(name) {
            let _ = writeln!(
                s,
                "add set inet {TABLE} {name} {{ type {}; flags interval; }}",
                addr_type(*fam)
            );
            if !elems.is_empty() {
                let _ = writeln!(
                    s,
                    "add element inet {TABLE} {name} {{ {} }}",
                    elems.iter().map(elem).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    if let (None, Some(p)) = (&o.published, &n.published) {
        for (kind, name, ty) in PUB_OBJECTS {
            let _ = writeln!(s, "add {kind} inet {TABLE} {name} {{ {ty}; }}");
            let elems = p.elements(name);
            if !elems.is_empty() {
                let _ = writeln!(
                    s,
                    "add element inet {TABLE} {name} {{ {} }}",
                    elems.join(", ")
                );
            }
        }
    }
    // 2. Chains: new ones created, changed ones refilled.
    let gone_i = diff_chains(&mut s, "inet", &o.ichains, &n.ichains);
    if o.published.is_none() && n.published.is_some() {
        for (name, hook, rules) in PUB_CHAINS {
            match hook {
                Some(hook) => {
                    let _ = writeln!(s, "add chain inet {TABLE} {name} {{ {hook} }}");
                }
                None => {
                    let _ = writeln!(s, "add chain inet {TABLE} {name}");
                }
            }
            for r in rules {
                let _ = writeln!(s, "add rule inet {TABLE} {name} {r}");
            }
        }
    }
    // 3. Members of sets that stay.
    for (name, (_, elems)) in &n.sets {
        let Some((_, old_elems)) = o.sets.get(name) else {
            continue;
        };
        let dels: Vec<String> = old_elems
            .iter()
            .filter(|e| !elems.contains(e))
            .map(elem)
            .collect();
        let adds: Vec<String> = elems
            .iter()
            .filter(|e| !old_elems.contains(e))
            .map(elem)
            .collect();
        write_elements(&mut s, "inet", name, &dels, &adds);
    }
    // 4. Map elements.
    diff_map(
        &mut s,
        "inet",
        "zones",
        &o.zones,
        &n.zones,
        |b| format!("\"{b}\""),
        |z| z.to_string(),
    );
    let dels: Vec<String> = o
        .zones
        .keys()
        .filter(|b| !n.zones.contains_key(*b))
        .map(bridged_elem)
        .collect();
    let adds: Vec<String> = n
        .zones
        .keys()
        .filter(|b| !o.zones.contains_key(*b))
        .map(bridged_elem)
        .collect();
    write_elements(&mut s, "inet", "bridged", &dels, &adds);
    if let (Some(op), Some(np)) = (&o.published, &n.published) {
        for (_, name, _) in PUB_OBJECTS {
            let (old_e, new_e) = (op.projection(name), np.projection(name));
            let dels: Vec<&str> = old_e
                .iter()
                .filter(|(k, v)| new_e.get(*k) != Some(v))
                .map(|(k, _)| k.as_str())
                .collect();
            let adds: Vec<String> = new_e
                .iter()
                .filter(|(k, v)| old_e.get(*k) != Some(v))
                .map(|(k, v)| pub_elem(k, v))
                .collect();
            write_elements(&mut s, "inet", name, &dels, &adds);
        }
    }
    let none = BTreeSet::new();
    for (name, _, _) in BSETS {
        let (old_e, new_e) = (
            o.bsets.get(name).unwrap_or(&none),
            n.bsets.get(name).unwrap_or(&none),
        );
        let dels: Vec<String> = old_e.difference(new_e).map(BElem::text).collect();
        let adds: Vec<String> = new_e.difference(old_e).map(BElem::text).collect();
        write_elements(&mut s, "bridge", name, &dels, &adds);
    }
    let empty = BTreeMap::new();
    for name in VMAPS {
        diff_map(
            &mut s,
            "inet",
            name,
            o.vmaps.get(name).unwrap_or(&empty),
            n.vmaps.get(name).unwrap_or(&empty),
            vmap_elem,
            |c| format!("jump {c}"),
        );
    }
    let no_addrs = BTreeSet::new();
    for (name, _) in NOTRACK {
        let (old_e, new_e) = (
            o.notrack.get(name).unwrap_or(&no_addrs),
            n.notrack.get(name).unwrap_or(&no_addrs),
        );
        let dels: Vec<String> = old_e.difference(new_e).map(vmap_elem).collect();
        let adds: Vec<String> = new_e.difference(old_e).map(vmap_elem).collect();
        write_elements(&mut s, "inet", name, &dels, &adds);
    }
    // 5. Chains nothing jumps to any more, then sets no rule refers to any more.
    for chain in gone_i {
        let _ = writeln!(s, "delete chain inet {TABLE} {chain}");
    }
    for name in o.sets.keys() {
        if !n.sets.contains_key(name) {
            let _ = writeln!(s, "delete set inet {TABLE} {name}");
        }
    }
    if o.published.is_some() && n.published.is_none() {
        for (name, _, _) in PUB_CHAINS.iter().rev() {
            let _ = writeln!(s, "delete chain inet {TABLE} {name}");
        }
        for (kind, name, _) in PUB_OBJECTS {
            let _ = writeln!(s, "delete {kind} inet {TABLE} {name}");
        }
    }
    if s.is_empty() { None } else { Some(s) }
}
