//! ipcache and encap pipeline cost at scale (no I/O): how the worker's `cilium_ipcache_v2`
//! copy behaves at 1M prefixes against a tiny table, and what one cross-node frame costs
//! through `stage::process` (ipcache lookup + VXLAN encap) with each.
//!
//! `fastpath-bench-ipcache [--prefixes 1000000] [--lookups 20000000] [--json FILE]`
//! Pinned to one core; reported per lookup / per frame (median of 5 runs).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use clap::Parser;
use control::config::Config;
use control::datapath::{Datapath, NoKernel};
use control::lpm::Lpm4;
use control::maps::{MacAddr, RemoteEndpointInfo};
use control::net::Ipv4Cidr;
use control::tables::{NextHop, Port, Tables};
use fastpath::stage::{self, Scratch, Verdict};
use fastpath::wire::{Buf, ethernet, ipv4};
use fastpath_bench::{Rng, rss_kib};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    prefixes: usize,
    #[arg(long, default_value_t = 20_000_000)]
    lookups: usize,
    /// Core to pin to.
    #[arg(long, default_value_t = 0)]
    core: usize,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// A Kubernetes-shaped ipcache: `n` entries, nearly all pod /32s under 10.0.0.0/8, 4096 node
/// pod CIDRs (/24), 64 CIDR-policy /16s, 0.0.0.0/0.
fn build(n: usize) -> (Lpm4<RemoteEndpointInfo>, Vec<[u8; 4]>) {
    let mut t = Lpm4::new();
    let node = |i: u32| Ipv4Addr::new(192, 168, (i >> 8) as u8, i as u8);
    t.insert(
        Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0),
        RemoteEndpointInfo::local(2),
    );
    for i in 0..64u32 {
        t.insert(
            Ipv4Cidr::new(Ipv4Addr::new(172, 16 + i as u8, 0, 0), 16),
            RemoteEndpointInfo::local(16_777_216 + i),
        );
    }
    let cidrs = 4096.min(n / 4).max(1) as u32;
    for i in 0..cidrs {
        t.insert(
            Ipv4Cidr::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24),
            RemoteEndpointInfo::tunnelled(2, node(i)),
        );
    }
    let mut pods = Vec::with_capacity(n);
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    while t.len() < n {
        let a = 0x0a00_0000 | (r.next_u64() as u32 & 0x00ff_ffff);
        let ip = Ipv4Addr::from(a);
        if t.insert(
            Ipv4Cidr::host(ip),
            RemoteEndpointInfo::tunnelled(256 + (a & 0xffff), node((a >> 8) & 0xfff)),
        )
        .is_none()
        {
            pods.push(ip.octets());
        }
    }
    (t, pods)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// ns per lookup over `addrs` (cycled), 5 runs.
fn time_lookups(t: &Lpm4<RemoteEndpointInfo>, addrs: &[[u8; 4]], total: usize) -> f64 {
    median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                let mut acc = 0u32;
                for i in 0..total {
                    let a = addrs[i % addrs.len()];
                    acc = acc.wrapping_add(t.lookup(a).map_or(0, |v| v.sec_identity));
                }
                black_box(acc);
                start.elapsed().as_nanos() as f64 / total as f64
            })
            .collect(),
    )
}

/// Tables of a node `n1` (pods a, b) whose peer n2 owns 10.2.0.0/24, plus `extra` ipcache
/// entries; what the daemon would build.
fn node_tables(extra: &Lpm4<RemoteEndpointInfo>) -> std::sync::Arc<Tables> {
    let cfg = Config::parse(
        r#"
node: { name: n1, router_ip: 10.1.0.1, pod_cidr: 10.1.0.0/24,
        underlay: { device: eth1, address: 192.168.50.1/24 } }
pods:
  - { name: a, ip: 10.1.0.11, mac: "0a:00:00:00:01:0b", lxc: lxc-a, labels: { app: a } }
remote_nodes:
  - name: n2
    ip: 192.168.50.2
    pod_cidr: 10.2.0.0/24
    pods: [ { name: c, ip: 10.2.0.11, labels: { app: c } } ]
"#,
        "bench",
    )
    .unwrap();
    let ports = vec![
        Port::lxc(
            "lxc-a",
            2,
            MacAddr([0x3e, 0, 0, 0, 0, 1]),
            cfg.pods[0].ip,
            1,
            1450,
        ),
        Port::underlay(
            "eth1",
            3,
            MacAddr([2, 0, 0, 0, 0, 1]),
            cfg.node_ip().unwrap(),
            1500,
        ),
    ];
    let mut dp = Datapath::new(ports, 1, NoKernel);
    dp.load_node(&cfg).unwrap();
    // The big table, then the config's own entries again so they win where the synthetic
    // prefixes overlap them (10.1.0.0/24 and 10.2.0.0/24 are among the 4096 node CIDRs).
    let mut batch: Vec<_> = extra.iter().map(|(p, v)| (p, *v)).collect();
    batch.extend(control::datapath::node_ipcache(&cfg));
    dp.upsert_ipcache(&batch).unwrap();
    dp.set_nexthops(&[(
        [192, 168, 50, 2],
        Some(NextHop {
            port: 1,
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            inner_dst_mac: None,
        }),
    )]);
    dp.tables()
}

/// ns per frame through `stage::process` (a → c, 64-byte UDP, encapsulated), batches of 32
/// frames re-armed from a template each batch (the copy is included in the figure).
fn time_encap(t: &Tables, frames: usize) -> f64 {
    let mut tpl = vec![0u8; 14 + 20 + 8 + 22];
    ethernet::emit(
        &mut tpl,
        MacAddr([0x3e, 0, 0, 0, 0, 1]),
        MacAddr([0x0a, 0, 0, 0, 1, 0x0b]),
        ethernet::EtherType::Ipv4,
    );
    ipv4::emit(
        &mut tpl[14..],
        [10, 1, 0, 11],
        [10, 2, 0, 11],
        ipv4::PROTO_UDP,
        64,
        30,
    );
    tpl[34..36].copy_from_slice(&40000u16.to_be_bytes());
    tpl[36..38].copy_from_slice(&7u16.to_be_bytes());
    tpl[38..40].copy_from_slice(&30u16.to_be_bytes());
    let mut chunks = vec![vec![0u8; 2048]; 32];
    let mut s = Scratch::default();
    median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                let mut n = 0;
                let mut enc = 0u64;
                while n < frames {
                    for c in chunks.iter_mut() {
                        c[256..256 + tpl.len()].copy_from_slice(&tpl);
                        let mut b = Buf::new(c, 256, tpl.len());
                        if let Verdict::Encap { .. } = stage::process(&mut b, 0, t, &mut s) {
                            enc += 1;
                        }
                    }
                    n += 32;
                }
                assert_eq!(enc as usize, n, "every frame encapsulated");
                start.elapsed().as_nanos() as f64 / n as f64
            })
            .collect(),
    )
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    core_affinity::set_for_current(core_affinity::CoreId { id: a.core });
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let (big, pods) = build(a.prefixes);
    let build_s = t0.elapsed().as_secs_f64();
    let rss_mib = (rss_kib().saturating_sub(rss0)) as f64 / 1024.0;
    let t1 = Instant::now();
    let copy = big.clone();
    let clone_ms = t1.elapsed().as_secs_f64() * 1e3;
    drop(copy);
    let (tiny, tiny_pods) = build(100);

    let mut r = Rng(42);
    let mut shuffled: Vec<[u8; 4]> = (0..1_000_000)
        .map(|_| pods[r.next_u64() as usize % pods.len()])
        .collect();
    shuffled.dedup();
    // /24 hits: addresses in node CIDRs that are not pods; misses fall to 0.0.0.0/0.
    let cidr_hits: Vec<[u8; 4]> = (0..1_000_000u32)
        .map(|i| (0x0a00_0000 | ((i % 4096) << 8) | 1).to_be_bytes())
        .filter(|a| big.lookup_prefix(*a).map(|(l, _)| l) == Some(24))
        .collect();
    let misses: Vec<[u8; 4]> = (0..1_000_000u32)
        .map(|i| (0x0b00_0000 | (r.next_u64() as u32 & 0xffffff) ^ i).to_be_bytes())
        .collect();

    let rows = [
        (
            "1M: pod /32 hits, random",
            time_lookups(&big, &shuffled, a.lookups),
        ),
        (
            "1M: /24 hits (2 probes)",
            time_lookups(&big, &cidr_hits, a.lookups),
        ),
        (
            "1M: misses to 0.0.0.0/0 (4 probes)",
            time_lookups(&big, &misses, a.lookups),
        ),
        (
            "1M: one hot pod",
            time_lookups(&big, &shuffled[..1], a.lookups),
        ),
        (
            "tiny (100): pod /32 hits",
            time_lookups(&tiny, &tiny_pods, a.lookups),
        ),
    ];
    let small_t = node_tables(&Lpm4::new());
    let big_t = node_tables(&big);
    let enc_small = time_encap(&small_t, 4_000_000);
    let enc_big = time_encap(&big_t, 4_000_000);

    println!(
        "ipcache: {} prefixes ({} distinct lengths), built in {:.2} s, ~{:.0} MiB, clone (RCU publish of a changed ipcache) {:.1} ms",
        big.len(),
        big.lengths().len(),
        build_s,
        rss_mib,
        clone_ms
    );
    println!("{:<40}{:>10}", "lookup", "ns/op");
    for (n, v) in &rows {
        println!("{n:<40}{v:>10.1}");
    }
    println!(
        "{:<40}{:>10.1}\n{:<40}{:>10.1}  ({:+.0}% vs tiny)",
        "encap pipeline, tiny ipcache (ns/frame)",
        enc_small,
        "encap pipeline, 1M ipcache (ns/frame)",
        enc_big,
        (enc_big / enc_small - 1.0) * 100.0
    );
    if let Some(p) = a.json {
        let j = serde_json::json!({
            "machine": std::fs::read_to_string("/proc/cpuinfo").ok()
                .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())),
            "prefixes": big.len(), "lengths": big.lengths(), "build_s": build_s,
            "rss_mib": rss_mib, "clone_ms": clone_ms,
            "lookup_ns": rows.iter().map(|(n, v)| (n.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
            "encap_ns_tiny": enc_small, "encap_ns_1m": enc_big,
        });
        std::fs::write(&p, serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}
