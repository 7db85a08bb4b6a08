//! CIDR arithmetic for `ipBlock.except`: security groups can only allow, so "this block
//! but those" becomes the smallest set of CIDRs that covers the block minus the excepts.

use ipnet::IpNet;

/// `base` minus every block of `excepts`, as a sorted set of disjoint CIDRs. Excepts of
/// the other address family, or outside `base`, change nothing; an except that covers
/// `base` leaves nothing.
pub fn subtract(base: IpNet, excepts: &[IpNet]) -> Vec<IpNet> {
    let mut out = vec![base.trunc()];
    for e in excepts {
        let e = e.trunc();
        let mut next = Vec::with_capacity(out.len() + 1);
        for n in out {
            if !same_family(&n, &e) {
                next.push(n);
            } else if e.contains(&n) {
                // Wholly excepted.
            } else if n.contains(&e) {
                carve(n, e, &mut next);
            } else {
                next.push(n);
            }
        }
        out = next;
    }
    out.sort();
    out
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// Pushes the halves of `n` that do not hold `e`, halving towards `e` until the half
/// is `e` itself (which is dropped): at most one CIDR per prefix length in between.
fn carve(n: IpNet, e: IpNet, out: &mut Vec<IpNet>) {
    let mut cur = n;
    while cur.prefix_len() < e.prefix_len() {
        let Some((lo, hi)) = halves(&cur) else {
            return;
        };
        if lo.contains(&e) {
            out.push(hi);
            cur = lo;
        } else {
            out.push(lo);
            cur = hi;
        }
    }
}

fn halves(n: &IpNet) -> Option<(IpNet, IpNet)> {
    let mut it = n.subnets(n.prefix_len() + 1).ok()?;
    Some((it.next()?, it.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| net(s)).collect()
    }

    #[test]
    fn no_except_is_the_block() {
        assert_eq!(subtract(net("10.1.2.3/16"), &[]), nets(&["10.1.0.0/16"]));
    }

    #[test]
    fn one_except_in_the_middle() {
        assert_eq!(
            subtract(net("10.0.0.0/24"), &nets(&["10.0.0.64/26"])),
            nets(&["10.0.0.0/26", "10.0.0.128/25"])
        );
        // A single address out of a /29: a /30, a /31 and the other /32.
        assert_eq!(
            subtract(net("192.168.0.0/29"), &nets(&["192.168.0.5/32"])),
            nets(&["192.168.0.0/30", "192.168.0.4/32", "192.168.0.6/31"])
        );
    }

    #[test]
    fn several_and_overlapping_excepts() {
        let got = subtract(
            net("172.16.0.0/16"),
            &nets(&["172.16.1.0/24", "172.16.0.0/23", "172.16.128.0/17"]),
        );
        assert_eq!(
            got,
            nets(&[
                "172.16.2.0/23",
                "172.16.4.0/22",
                "172.16.8.0/21",
                "172.16.16.0/20",
                "172.16.32.0/19",
                "172.16.64.0/18"
            ])
        );
    }

    #[test]
    fn covering_foreign_and_outside_excepts() {
        assert!(subtract(net("10.0.0.0/24"), &nets(&["10.0.0.0/8"])).is_empty());
        assert!(subtract(net("10.0.0.0/24"), &nets(&["10.0.0.0/24"])).is_empty());
        assert_eq!(
            subtract(net("10.0.0.0/24"), &nets(&["10.0.1.0/24", "fd00::/8"])),
            nets(&["10.0.0.0/24"])
        );
        assert_eq!(
            subtract(net("0.0.0.0/0"), &nets(&["128.0.0.0/1"])),
            nets(&["0.0.0.0/1"])
        );
    }

    #[test]
    fn ipv6() {
        assert_eq!(
            subtract(
                net("fd00::/64"),
                &nets(&["fd00::8000:0:0:0/65", "10.0.0.0/8"])
            ),
            nets(&["fd00::/65"])
        );
        assert_eq!(
            subtract(net("fd00::/126"), &nets(&["fd00::1/128"])),
            nets(&["fd00::/128", "fd00::2/127"])
        );
    }

    /// The pieces are disjoint, inside the block, outside every except, and with the
    /// excepts they cover the block exactly (checked address by address on a /24).
    #[test]
    fn exact_cover() {
        let base = net("10.9.8.0/24");
        let ex = nets(&[
            "10.9.8.7/32",
            "10.9.8.32/27",
            "10.9.8.200/29",
            "10.9.8.0/30",
        ]);
        let got = subtract(base, &ex);
        for i in 0u8..=255 {
            let a: std::net::IpAddr = std::net::Ipv4Addr::new(10, 9, 8, i).into();
            let in_got = got.iter().filter(|n| n.contains(&a)).count();
            let in_ex = ex.iter().any(|n| n.contains(&a));
            assert_eq!(in_got, usize::from(!in_ex), "10.9.8.{i}");
        }
    }
}
