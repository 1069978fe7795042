//! Policy cost (no I/O): the per-packet verdict lookup in a compiled `cilium_policy_v3`
//! map, and the control-plane time to compile and publish a policy change, at growing sizes.
//!
//! `fastpath-bench-policy [--identities 2000] [--lookups 10000000] [--json FILE]`
//! Pinned to one core. The cluster has `identities` pod identities (`app: a<i>`); the
//! endpoint under test is selected by one policy whose ingress allows every identity with an
//! even index on a port range (8 prefixes) plus a deny, so a lookup probes real LPM lengths.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use control::policy::parse::parse_policies;
use control::policy::table::PolicyVerdict;
use control::policy::{LocalEndpoint, PolicyState};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    identities: u32,
    #[arg(long, default_value_t = 10_000_000)]
    lookups: usize,
    #[arg(long, default_value_t = 0)]
    core: usize,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn universe(n: u32) -> BTreeMap<u32, Vec<String>> {
    (0..n)
        .map(|i| {
            (
                1000 + i,
                vec![
                    format!("k8s:app=a{i}"),
                    "k8s:io.kubernetes.pod.namespace=default".to_string(),
                ],
            )
        })
        .collect()
}

/// One CNP on `app: a0` admitting `allowed` selectors (even identities) on 8000-8100/TCP,
/// denying a3 on 22, plus `extra` unrelated policies (to size the compile).
fn policies(allowed: u32, extra: u32) -> String {
    let mut sel = String::new();
    for i in (0..allowed).step_by(2) {
        sel += &format!("{{ matchLabels: {{ app: a{i} }} }}, ");
    }
    let mut y = format!(
        "kind: CiliumNetworkPolicy
metadata: {{ name: target }}
spec:
  endpointSelector: {{ matchLabels: {{ app: a0 }} }}
  ingress:
    - fromEndpoints: [{sel}]
      toPorts: [{{ ports: [{{ port: \"8000\", endPort: 8100, protocol: TCP }}] }}]
  ingressDeny:
    - fromEndpoints: [{{ matchLabels: {{ app: a3 }} }}]
      toPorts: [{{ ports: [{{ port: \"22\" }}] }}]
"
    );
    for k in 0..extra {
        y += &format!(
            "---
kind: CiliumNetworkPolicy
metadata: {{ name: extra{k} }}
spec:
  endpointSelector: {{ matchLabels: {{ app: a{} }} }}
  egress: [{{ toEndpoints: [{{ matchLabels: {{ app: a{} }} }}] }}]
",
            k + 1,
            k + 2
        );
    }
    y
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: a.core });
    let pods = universe(a.identities);
    // Every identity is a local endpoint (the worst case for compile time).
    let eps: Vec<LocalEndpoint> = (0..a.identities.min(100))
        .map(|i| LocalEndpoint {
            ep_id: i as u16 + 1,
            sec_id: 1000 + i,
        })
        .collect();

    // Lookup cost.
    let ps = parse_policies(&policies(a.identities, 0), "bench")?;
    let mut st = PolicyState::default().with_policies(&ps);
    let c = st.compile(&eps, &pods, 65536).expect("compiles");
    let ep = &c.tables.endpoints[&1];
    let entries = ep.entries.len();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let keys: Vec<(u32, u16)> = (0..4096)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (
                1000 + (rng % a.identities as u64) as u32,
                7990 + (rng >> 32) as u16 % 120,
            )
        })
        .collect();
    let mut runs = Vec::new();
    let mut allowed = 0usize;
    for _ in 0..5 {
        let t0 = Instant::now();
        allowed = 0;
        for i in 0..a.lookups {
            let (id, port) = keys[i & 4095];
            if let PolicyVerdict::Allow { .. } = black_box(ep.verdict(0, id, 6, port)) {
                allowed += 1;
            }
        }
        runs.push(t0.elapsed().as_nanos() as f64 / a.lookups as f64);
    }
    let lookup_ns = median(runs);
    let unenforced = &c.tables.endpoints[&2];
    let t0 = Instant::now();
    for i in 0..a.lookups {
        let (id, port) = keys[i & 4095];
        black_box(unenforced.verdict(0, id, 6, port));
    }
    let unenforced_ns = t0.elapsed().as_nanos() as f64 / a.lookups as f64;
    println!(
        "verdict lookup: {entries} entries on the endpoint, {:.1} ns/lookup enforced ({:.0}% allowed), {unenforced_ns:.1} ns unenforced",
        lookup_ns,
        100.0 * allowed as f64 / a.lookups as f64
    );

    // Compile + publish cost of a change, by number of policies.
    let mut compile = Vec::new();
    for extra in [0u32, 10, 100, 1000] {
        let ps = parse_policies(&policies(a.identities, extra), "bench")?;
        let mut dp = control::datapath::Datapath::new(Vec::new(), 1, control::datapath::NoKernel);
        dp.set_identity_labels(pods.clone());
        let t0 = Instant::now();
        dp.set_policies(&ps)?;
        let us = t0.elapsed().as_micros();
        let t0 = Instant::now();
        let mut st = PolicyState::default().with_policies(&ps);
        let c = st.compile(&eps, &pods, 65536).expect("compiles");
        let compile_us = t0.elapsed().as_micros();
        let total: usize = c.tables.endpoints.values().map(|e| e.entries.len()).sum();
        println!(
            "compile {} policies for {} endpoints over {} identities: {compile_us} µs ({total} map entries); Datapath::set_policies incl. publish (no endpoints): {us} µs",
            ps.len(),
            eps.len(),
            a.identities
        );
        compile.push(serde_json::json!({"policies": ps.len(), "endpoints": eps.len(), "compile_us": compile_us, "entries": total}));
    }
    // The same policy selecting every local endpoint: its rules are resolved once, not once
    // per endpoint.
    let all = policies(a.identities, 0).replacen("{ matchLabels: { app: a0 } }", "{}", 1);
    let ps = parse_policies(&all, "bench")?;
    let t0 = Instant::now();
    let mut st = PolicyState::default().with_policies(&ps);
    let c = st.compile(&eps, &pods, 65536).expect("compiles");
    let all_us = t0.elapsed().as_micros();
    let total: usize = c.tables.endpoints.values().map(|e| e.entries.len()).sum();
    println!(
        "compile 1 policy selecting all {} endpoints: {all_us} µs ({total} map entries)",
        eps.len()
    );
    compile.push(serde_json::json!({"policies": 1, "selects_all": true, "endpoints": eps.len(), "compile_us": all_us, "entries": total}));
    if let Some(p) = a.json {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&serde_json::json!({
                "identities": a.identities,
                "entries_on_endpoint": entries,
                "lookup_ns_enforced": lookup_ns,
                "lookup_ns_unenforced": unenforced_ns,
                "compile": compile,
            }))?,
        )?;
    }
    Ok(())
}
