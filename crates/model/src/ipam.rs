//! Address arithmetic for subnets, allocation pools and subnet pools.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(ip, self.start)
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }
    pub fn overlaps(&self, other: &IpRange) -> bool {
        same_family(self.start, other.start)
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }
    pub fn size(&self) -> u128 {
        to_u128(self.end)
            .saturating_sub(to_u128(self.start))
            .saturating_add(1)
    }
}

pub fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of the same family as `like` with this numeric value.
pub fn from_u128(like: IpAddr, v: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn first(net: &IpNet) -> u128 {
    to_u128(net.network())
}

fn last(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u32::from(n.broadcast()) as u128,
        IpNet::V6(n) => u128::from(n.broadcast()),
    }
}

/// Neutron's default gateway: the first address after the network address.
pub fn default_gateway(cidr: &IpNet) -> Option<IpAddr> {
    let f = first(cidr);
    if f >= last(cidr) {
        return None;
    }
    Some(from_u128(cidr.network(), f + 1))
}

/// The usable range of a subnet: without the network address, and for IPv4 without
/// the broadcast address (Neutron's rule; /31 and /32 keep every address).
pub fn usable_range(cidr: &IpNet) -> Option<IpRange> {
    let (f, l) = (first(cidr), last(cidr));
    let (start, end) = match cidr {
        IpNet::V4(n) if n.prefix_len() >= 31 => (f, l),
        IpNet::V4(_) => (f + 1, l - 1),
        IpNet::V6(n) if n.prefix_len() == 128 => (f, l),
        IpNet::V6(_) => (f + 1, l),
    };
    (start <= end).then(|| IpRange {
        start: from_u128(cidr.network(), start),
        end: from_u128(cidr.network(), end),
    })
}

/// Default allocation pools: the usable range minus the gateway.
pub fn default_pools(cidr: &IpNet, gateway: Option<IpAddr>) -> Vec<IpRange> {
    let Some(range) = usable_range(cidr) else {
        return Vec::new();
    };
    let Some(gw) = gateway.filter(|g| range.contains(*g)) else {
        return vec![range];
    };
    let (s, e, g) = (to_u128(range.start), to_u128(range.end), to_u128(gw));
    let mut pools = Vec::new();
    if g > s {
        pools.push(IpRange {
            start: range.start,
            end: from_u128(gw, g - 1),
        });
    }
    if g < e {
        pools.push(IpRange {
            start: from_u128(gw, g + 1),
            end: range.end,
        });
    }
    pools
}

/// Finds a free address in `pools`, scanning from just after `hint` and wrapping,
/// so that sequential allocation stays O(1) per address on large subnets.
pub fn next_free(
    pools: &[IpRange],
    hint: Option<IpAddr>,
    is_used: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    if pools.is_empty() {
        return None;
    }
    let hint = hint.map(to_u128);
    // Visit each pool starting with the one holding the hint, from the hint on,
    // then the remaining pools, then the skipped start of the hint's pool.
    let start_idx = hint
        .and_then(|h| {
            pools
                .iter()
                .position(|p| to_u128(p.start) <= h && h <= to_u128(p.end))
        })
        .unwrap_or(0);
    let n = pools.len();
    for step in 0..=n {
        let pool = &pools[(start_idx + step) % n];
        let (s, e) = (to_u128(pool.start), to_u128(pool.end));
        let (from, to) = match (step, hint) {
            (0, Some(h)) if h >= s && h < e => (h + 1, e),
            (0, Some(h)) if h >= s && h == e => continue,
            (x, Some(h)) if x == n && h >= s && h <= e => (s, h),
            (x, _) if x == n => break,
            _ => (s, e),
        };
        let mut v = from;
        while v <= to {
            let ip = from_u128(pool.start, v);
            if !is_used(ip) {
                return Some(ip);
            }
            if v == u128::MAX {
                break;
            }
            v += 1;
        }
    }
    None
}

/// The modified EUI-64 address of `mac` in a /64 (SLAAC).
pub fn eui64(prefix: &IpNet, mac: [u8; 6]) -> Option<IpAddr> {
    let IpNet::V6(p) = prefix else { return None };
    if p.prefix_len() != 64 {
        return None;
    }
    let iid = [
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    let mut bytes = p.network().octets();
    bytes[8..].copy_from_slice(&iid);
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

pub fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Carves the first free block of `prefixlen` out of `pool_prefixes` that overlaps
/// none of `used`.
pub fn allocate_prefix(pool_prefixes: &[IpNet], used: &[IpNet], prefixlen: u8) -> Option<IpNet> {
    for pool in pool_prefixes {
        if prefixlen < pool.prefix_len() || prefixlen > pool.max_prefix_len() {
            continue;
        }
        let bits = pool.max_prefix_len() - prefixlen;
        let block: u128 = if bits >= 128 {
            u128::MAX
        } else {
            1u128 << bits
        };
        let (mut cur, end) = (first(pool), last(pool));
        loop {
            let cand = IpNet::new(from_u128(pool.network(), cur), prefixlen).ok()?;
            match used
                .iter()
                .filter(|u| nets_overlap(u, &cand))
                .map(last)
                .max()
            {
                None => return Some(cand),
                // Jump past the overlapping block, realigned to our block size.
                Some(u_end) => {
                    let next = u_end.checked_add(1).map(|n| n.div_ceil(block) * block);
                    match next {
                        Some(n) if n <= end && n > cur => cur = n,
                        _ => break,
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_defaults_match_neutron() {
        let c = net("10.77.0.0/29");
        let gw = default_gateway(&c);
        assert_eq!(gw, Some(ip("10.77.0.1")));
        assert_eq!(
            default_pools(&c, gw),
            vec![IpRange {
                start: ip("10.77.0.2"),
                end: ip("10.77.0.6")
            }]
        );
        // Gateway in the middle splits the pool.
        let pools = default_pools(&net("10.0.0.0/24"), Some(ip("10.0.0.100")));
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].end, ip("10.0.0.99"));
        assert_eq!(pools[1].start, ip("10.0.0.101"));
    }

    #[test]
    fn v6_pool_keeps_last_address() {
        let c = net("fd00:1::/64");
        let pools = default_pools(&c, default_gateway(&c));
        assert_eq!(pools[0].start, ip("fd00:1::2"));
        assert_eq!(pools[0].end, ip("fd00:1::ffff:ffff:ffff:ffff"));
    }

    #[test]
    fn next_free_wraps_after_hint() {
        let pools = [IpRange {
            start: ip("10.0.0.2"),
            end: ip("10.0.0.5"),
        }];
        let used = |a: IpAddr| a == ip("10.0.0.2") || a == ip("10.0.0.5");
        assert_eq!(
            next_free(&pools, Some(ip("10.0.0.4")), used),
            Some(ip("10.0.0.3"))
        );
        assert_eq!(next_free(&pools, None, used), Some(ip("10.0.0.3")));
        assert_eq!(next_free(&pools, None, |_| true), None);
    }

    #[test]
    fn slaac_address_from_mac() {
        let a = eui64(&net("fd00::/64"), [0xfa, 0x16, 0x3e, 0x14, 0x00, 0xc0]).unwrap();
        assert_eq!(a, ip("fd00::f816:3eff:fe14:c0"));
    }

    #[test]
    fn prefixes_are_carved_without_overlap() {
        let pool = [net("10.100.0.0/16")];
        let a = allocate_prefix(&pool, &[], 24).unwrap();
        assert_eq!(a, net("10.100.0.0/24"));
        let b = allocate_prefix(&pool, &[a, net("10.100.1.0/25")], 24).unwrap();
        assert_eq!(b, net("10.100.2.0/24"));
        let c = allocate_prefix(&pool, &[net("10.100.0.0/17")], 26).unwrap();
        assert_eq!(c, net("10.100.128.0/26"));
        assert!(allocate_prefix(&pool, &[net("10.100.0.0/16")], 24).is_none());
    }
}
