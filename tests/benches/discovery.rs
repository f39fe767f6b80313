//! Chef discovery time for 1,000 and 10,000 matching nodes, full search (paged)
//! against partial search (one page), on a real goiardi. Prints figures; asserts
//! nothing.
//!
//! Run with `scripts/bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark that cannot set up should stop loudly.

use std::path::PathBuf;
use std::time::Instant;
use vesemir_core::config::ChefConfig;
use vesemir_tests::chef::{ChefServer, node_json};
use vesemir_worker::discovery::chef::ChefDiscovery;

const NODES: usize = 10_000;
const SMALL: usize = 1_000;
const RUNS: usize = 3;

fn config(chef: &ChefServer, key: &str, partial: bool, page_size: u32) -> ChefConfig {
    ChefConfig {
        server_url: chef.url.clone(),
        client_name: "vesemir".to_owned(),
        client_key: PathBuf::from(key),
        sign_version: "1.3".to_owned(),
        base_query: None,
        address_attribute: "ipaddress".to_owned(),
        partial_search: partial,
        page_size,
        timeout_seconds: 120,
        retries: 0,
        ca_file: None,
    }
}

#[tokio::main]
async fn main() {
    let chef = ChefServer::start().unwrap();
    let key = chef.client("vesemir").unwrap();
    let started = Instant::now();
    let nodes = (0..NODES)
        .map(|i| {
            let roles: &[&str] = if i < SMALL { &["big", "small"] } else { &["big"] };
            node_json(
                &format!("node-{i:05}"),
                "production",
                roles,
                &["blue"],
                Some(&format!("10.{}.{}.{}", i / 65536, i / 256 % 256, i % 256)),
            )
        })
        .collect();
    chef.seed(nodes).await.unwrap();
    chef.wait_searchable("roles:big", NODES).unwrap();
    println!(
        "Chef discovery benchmark (goiardi, debug={}); seeded {NODES} nodes in {:.1} s",
        cfg!(debug_assertions),
        started.elapsed().as_secs_f64()
    );

    for (label, query, count) in [("1,000 nodes", "roles:small", SMALL), ("10,000 nodes", "roles:big", NODES)] {
        let mut line = format!("  {label:<13}");
        for (kind, partial, page) in [("full, pages of 1000", false, 1000), ("partial, one page", true, 20_000)] {
            let discovery = ChefDiscovery::new(&config(&chef, &key, partial, page)).unwrap();
            let mut times = Vec::new();
            for _ in 0..RUNS {
                let t = Instant::now();
                let found = discovery.search(query).await.unwrap();
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(found.len(), count);
            }
            times.sort_by(f64::total_cmp);
            line.push_str(&format!("   {kind}: {:>7.0} ms", times[RUNS / 2]));
        }
        println!("{line}   (median of {RUNS})");
    }
}
