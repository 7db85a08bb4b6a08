//! IPAM under concurrency, IPv6 and dual stack, against a real `kuryr server` process.

mod common;

use std::collections::HashSet;

use common::*;
use futures::future::join_all;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_parallel_creates_on_a_150_address_pool() {
    let s = Server::start(&[]);
    let c = client();
    let (net, _) = network_with_subnet(
        &s,
        &c,
        "p1",
        json!({"ip_version": 4, "cidr": "10.20.0.0/24",
               "allocation_pools": [{"start": "10.20.0.10", "end": "10.20.0.159"}]}),
    )
    .await;
    // Let the project create that many ports.
    let r = c
        .put(s.net("/quotas/p1"))
        .json(&json!({"quota": {"port": 1000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let creates = (0..200).map(|i| {
        let c = c.clone();
        let url = s.net("/ports");
        let net = net.clone();
        async move {
            post(
                &c,
                &url,
                "p1",
                json!({"port": {"network_id": net, "name": format!("p{i}")}}),
            )
            .await
        }
    });
    let results = join_all(creates).await;
    let ok: Vec<&Value> = results
        .iter()
        .filter(|(st, _)| *st == 201)
        .map(|(_, b)| b)
        .collect();
    let failed: Vec<&(u16, Value)> = results.iter().filter(|(st, _)| *st != 201).collect();
    assert_eq!(
        ok.len(),
        150,
        "exactly the pool size succeeds; failures: {:?}",
        failed.first()
    );
    for (st, body) in &failed {
        assert_eq!(*st, 409, "{body}");
        assert_eq!(
            body["NeutronError"]["type"], "IpAddressGenerationFailure",
            "{body}"
        );
    }
    let ips: HashSet<String> = ok
        .iter()
        .map(|b| {
            b["port"]["fixed_ips"][0]["ip_address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let macs: HashSet<String> = ok
        .iter()
        .map(|b| b["port"]["mac_address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 150, "addresses are distinct");
    assert_eq!(macs.len(), 150, "MACs are distinct");
    for ip in &ips {
        let last: u32 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            (10..=159).contains(&last),
            "{ip} is inside the allocation pool"
        );
    }
    // What the API lists agrees with what the creates returned.
    let (_, list) = get(
        &c,
        &s.net(&format!("/ports?network_id={net}&fields=id")),
        "p1",
    )
    .await;
    assert_eq!(list["ports"].as_array().unwrap().len(), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_subnets_and_dual_stack_ports() {
    let s = Server::start(&[]);
    let c = client();
    let (net, v4) = network_with_subnet(
        &s,
        &c,
        "p1",
        json!({"ip_version": 4, "cidr": "10.30.0.0/24"}),
    )
    .await;
    let (st, stateful) = post(
        &c,
        &s.net("/subnets"),
        "p1",
        json!({"subnet": {"network_id": net, "ip_version": 6, "cidr": "fd00:30::/64",
                          "ipv6_address_mode": "dhcpv6-stateful", "ipv6_ra_mode": "dhcpv6-stateful"}}),
    )
    .await;
    assert_eq!(st, 201, "{stateful}");
    assert_eq!(stateful["subnet"]["gateway_ip"], "fd00:30::1");
    assert_eq!(
        stateful["subnet"]["allocation_pools"][0]["start"],
        "fd00:30::2"
    );
    assert_eq!(
        stateful["subnet"]["allocation_pools"][0]["end"],
        "fd00:30::ffff:ffff:ffff:ffff"
    );
    let (st, slaac) = post(
        &c,
        &s.net("/subnets"),
        "p1",
        json!({"subnet": {"network_id": net, "ip_version": 6, "cidr": "fd00:31::/64", "ipv6_address_mode": "slaac"}}),
    )
    .await;
    assert_eq!(st, 201, "{slaac}");

    let (st, port) = post(
        &c,
        &s.net("/ports"),
        "p1",
        json!({"port": {"network_id": net}}),
    )
    .await;
    assert_eq!(st, 201, "{port}");
    let fixed = port["port"]["fixed_ips"].as_array().unwrap();
    let by_subnet = |id: &Value| {
        fixed
            .iter()
            .find(|f| f["subnet_id"] == *id)
            .map(|f| f["ip_address"].as_str().unwrap().to_string())
    };
    assert!(
        by_subnet(&json!(v4)).unwrap().starts_with("10.30.0."),
        "{port}"
    );
    assert!(
        by_subnet(&stateful["subnet"]["id"])
            .unwrap()
            .starts_with("fd00:30::"),
        "{port}"
    );
    // SLAAC: modified EUI-64 of the port's MAC.
    let mac = port["port"]["mac_address"].as_str().unwrap();
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    let eui = format!(
        "fd00:31::{:x}:{:x}:{:x}:{:x}",
        u16::from(b[0] ^ 2) << 8 | u16::from(b[1]),
        u16::from(b[2]) << 8 | 0xff,
        0xfe00 | u16::from(b[3]),
        u16::from(b[4]) << 8 | u16::from(b[5])
    );
    let got: std::net::Ipv6Addr = by_subnet(&slaac["subnet"]["id"]).unwrap().parse().unwrap();
    assert_eq!(got, eui.parse::<std::net::Ipv6Addr>().unwrap());

    // A fixed IPv6 address on the stateful subnet, and the same address again.
    let (st, p2) = post(
        &c,
        &s.net("/ports"),
        "p1",
        json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "fd00:30::99"}]}}),
    )
    .await;
    assert_eq!(st, 201, "{p2}");
    let (st, dup) = post(
        &c,
        &s.net("/ports"),
        "p1",
        json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "fd00:30::99"}]}}),
    )
    .await;
    assert_eq!(st, 409);
    assert_eq!(dup["NeutronError"]["type"], "IpAddressAlreadyAllocated");
    // Directly assigning an address on a SLAAC subnet is refused.
    let (st, bad) = post(
        &c,
        &s.net("/ports"),
        "p1",
        json!({"port": {"network_id": net, "fixed_ips": [{"subnet_id": slaac["subnet"]["id"], "ip_address": "fd00:31::5"}]}}),
    )
    .await;
    assert_eq!(st, 400, "{bad}");
    // Filter by address finds the port.
    let (_, found) = get(
        &c,
        &s.net("/ports?fixed_ips=ip_address%3Dfd00:30::99"),
        "p1",
    )
    .await;
    assert_eq!(found["ports"].as_array().unwrap().len(), 1, "{found}");
}
