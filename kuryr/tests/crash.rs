//! Crash safety: `kill -9` the server in the middle of 600 concurrent port creates,
//! restart it, and prove that every acknowledged port survived, nothing is
//! duplicated, and nothing that failed still holds an address or a MAC.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures::future::join_all;
use serde_json::{Value, json};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 75;
const POOL_SIZE: usize = 1000;
const KILL_AFTER: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_concurrent_port_creates_loses_nothing_acknowledged() {
    let mut s = Server::start(&[]);
    let admin = client();
    let (net, subnet) = network_with_subnet(
        &s,
        &admin,
        "crash",
        json!({"ip_version": 4, "cidr": "10.40.0.0/22",
               "allocation_pools": [{"start": "10.40.0.10", "end": "10.40.3.241"}]}),
    )
    .await;
    let r = admin
        .put(s.net("/quotas/crash"))
        .json(&json!({"quota": {"port": -1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Several independent clients (own connection pools), each with several requests in flight.
    let acked = Arc::new(AtomicUsize::new(0));
    let url = s.net("/ports");
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let c = client();
        for stream in 0..4 {
            let (c, url, net, acked) = (c.clone(), url.clone(), net.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in (stream..PER_CLIENT).step_by(4) {
                    let body =
                        json!({"port": {"network_id": net, "name": format!("c{client_no}-{i}")}});
                    let sent = c
                        .post(&url)
                        .header("X-Project-Id", "crash")
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 201 => {
                            if let Ok(v) = r.json::<Value>().await {
                                acked.fetch_add(1, Ordering::SeqCst);
                                mine.push(Ok(v["port"].clone()));
                            } else {
                                mine.push(Err(()));
                            }
                        }
                        _ => mine.push(Err(())),
                    }
                }
                mine
            }));
        }
    }
    // Kill the server the moment enough creates have been acknowledged.
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    s.kill9();
    let outcomes: Vec<Result<Value, ()>> = join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    assert_eq!(
        outcomes.len(),
        CLIENTS * PER_CLIENT,
        "every create was fired"
    );
    let acked_ports: Vec<&Value> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    let failed = outcomes.len() - acked_ports.len();
    assert!(
        acked_ports.len() >= KILL_AFTER,
        "{} acknowledged",
        acked_ports.len()
    );
    assert!(
        failed > 0,
        "the kill happened while creates were still being fired"
    );
    eprintln!(
        "acknowledged {} port creates, {failed} failed at the kill",
        acked_ports.len()
    );

    s.restart();
    let c = client();

    // 1. Every acknowledged port is there, with the address and MAC it was given.
    for p in &acked_ports {
        let id = p["id"].as_str().unwrap();
        let (st, got) = get(&c, &s.net(&format!("/ports/{id}")), "crash").await;
        assert_eq!(st, 200, "acknowledged port {id} is lost after kill -9");
        assert_eq!(got["port"]["fixed_ips"], p["fixed_ips"]);
        assert_eq!(got["port"]["mac_address"], p["mac_address"]);
    }

    // 2. Fill the pool: exactly POOL_SIZE ports fit, so nothing leaked an address.
    loop {
        let (st, body) = post(
            &c,
            &s.net("/ports"),
            "crash",
            json!({"port": {"network_id": net}}),
        )
        .await;
        if st == 409 {
            assert_eq!(
                body["NeutronError"]["type"], "IpAddressGenerationFailure",
                "{body}"
            );
            break;
        }
        assert_eq!(st, 201, "{body}");
    }
    let (_, all) = get(&c, &s.net(&format!("/ports?network_id={net}")), "crash").await;
    let all = all["ports"].as_array().unwrap().clone();
    assert_eq!(
        all.len(),
        POOL_SIZE,
        "the whole pool is usable after the crash"
    );
    let ips: HashSet<&str> = all
        .iter()
        .map(|p| p["fixed_ips"][0]["ip_address"].as_str().unwrap())
        .collect();
    let macs: HashSet<&str> = all
        .iter()
        .map(|p| p["mac_address"].as_str().unwrap())
        .collect();
    assert_eq!(ips.len(), POOL_SIZE, "no address is duplicated");
    assert_eq!(macs.len(), POOL_SIZE, "no MAC is duplicated");
    let by_id: HashMap<&str, &Value> = all.iter().map(|p| (p["id"].as_str().unwrap(), p)).collect();
    for p in &acked_ports {
        assert!(by_id.contains_key(p["id"].as_str().unwrap()));
    }

    // 3. Delete everything: the subnet and network deletes succeed only if no
    //    address or MAC guard is left behind by a create that failed.
    let deletes = all.iter().map(|p| {
        let c = c.clone();
        let url = s.net(&format!("/ports/{}", p["id"].as_str().unwrap()));
        async move { delete(&c, &url, "crash").await }
    });
    assert!(join_all(deletes).await.into_iter().all(|st| st == 204));
    assert_eq!(
        delete(&c, &s.net(&format!("/subnets/{subnet}")), "crash").await,
        204
    );
    assert_eq!(
        delete(&c, &s.net(&format!("/networks/{net}")), "crash").await,
        204
    );
}
