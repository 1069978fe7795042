//! Control-plane churn: how many updates per second the control plane applies and publishes
//! to the workers, at scale, and the longest pause a worker sees meanwhile.
//!
//! In one process, with the real control plane (`control::datapath::Datapath`, no kernel
//! maps) and a reader that does what a worker does between batches: at the top of each loop
//! it passes its quiescent point (`TableReader::quiesce`, which switches to a newly published
//! version), then looks 32 destinations up in the ipcache and the service map of the version
//! it runs. Its loop time is timed; the longest loop and the loops over 100 µs and 1 ms are
//! what a worker would lose to a publication. Writer and reader are pinned to different
//! cores (`--writer-core`, `--reader-core`), as the control thread and a worker are.
//!
//! Phases, each timed over its own updates:
//! 0. a baseline: `--secs` with no update at all, twice (first with an empty table, then with
//!    the ipcache full): the pauses the machine itself causes (steal, interrupts, other
//!    tenants), to read the others against;
//! 1. the ipcache filled to `--prefixes` (1M) pod /32s in one batch;
//! 2. ipcache updates at that size in batches of 1, 100, 10 000 and 100 000 entries
//!    (`Datapath::upsert_ipcache`: one publication per batch), for `--secs` each; each
//!    update gives a prefix already there a new identity and node, so the table stays at
//!    its size;
//! 3. `--endpoints` (64 000) `cilium_lxc` entries added in batches of 1024, then changed
//!    one at a time for `--secs` (`Datapath::upsert_endpoints`);
//! 4. `--services` (1984) services with `--backends` (32) backends each, applied in batches
//!    of 1024 (`Datapath::upsert_services`), then the same services again (a change of every
//!    backend address: each service's backends are replaced), then single-service changes
//!    (batch 1) for `--secs`. `cilium_lb4_services_v2` needs one entry per frontend plus one
//!    per backend slot: 1984 × 33 fills Cilium's default `bpf-lb-map-max` (65 536); the LB
//!    maps are sized to fit `--services` × (1 + `--backends`) (`datapath.lb_map_max`), or to
//!    `--lb-map-max` when given. `--services 64000` is the 64k × 32 (2.1M entries).
//!
//! Updates/s counts entries changed (an ipcache prefix; a service with its backends counts
//! 1 + backends). Memory is the process RSS after each phase.
//!
//! `--reader-rt N` runs the reader under SCHED_FIFO N, as `datapath.rt_priority` does a
//! worker: it separates pauses the publication causes from preemption by other threads.
//!
//! `fastpath-bench-churn [--prefixes 1000000] [--services 1984] [--backends 32] [--secs 2]
//! [--endpoints 64000] [--lb-map-max N] [--reader-rt 0] [--json FILE]`

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use control::datapath::{Datapath, NoKernel};
use control::lb::ServiceConfig;
use control::maps::RemoteEndpointInfo;
use control::net::Ipv4Cidr;
use control::tables::TableReader;
use fastpath_bench::{Rng, rss_kib};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    prefixes: usize,
    #[arg(long, default_value_t = 1984)]
    services: usize,
    #[arg(long, default_value_t = 32)]
    backends: usize,
    /// `cilium_lxc` entries for the endpoints phase (Cilium's map holds 65535).
    #[arg(long, default_value_t = 64_000)]
    endpoints: usize,
    /// LB map size (`datapath.lb_map_max`); default: 65536, or what the services need.
    #[arg(long)]
    lb_map_max: Option<usize>,
    /// Seconds per ipcache batch size.
    #[arg(long, default_value_t = 2)]
    secs: u64,
    #[arg(long, default_value_t = 0)]
    writer_core: usize,
    #[arg(long, default_value_t = 1)]
    reader_core: usize,
    /// The reader under SCHED_FIFO at this priority (0: normal scheduling).
    #[arg(long, default_value_t = 0)]
    reader_rt: u8,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn rss_mib() -> f64 {
    rss_kib() as f64 / 1024.0
}

/// The reader's loop-time record, reset per phase by the writer.
#[derive(Default)]
struct Pauses {
    longest_ns: AtomicU64,
    over_100us: AtomicU64,
    over_1ms: AtomicU64,
    loops: AtomicU64,
    switches: AtomicU64,
}

impl Pauses {
    fn take(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.longest_ns.swap(0, Ordering::Relaxed),
            self.over_100us.swap(0, Ordering::Relaxed),
            self.over_1ms.swap(0, Ordering::Relaxed),
            self.loops.swap(0, Ordering::Relaxed),
            self.switches.swap(0, Ordering::Relaxed),
        )
    }
}

/// A worker's loop without I/O: quiesce, then 32 ipcache and service lookups.
fn reader(mut r: TableReader, core: usize, rt: u8, stop: Arc<AtomicBool>, p: Arc<Pauses>) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
    if rt > 0 {
        fastpath::xsk::sys::set_fifo(rt).expect("SCHED_FIFO for the reader (root?)");
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut acc = 0u64;
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if r.quiesce() {
            p.switches.fetch_add(1, Ordering::Relaxed);
        }
        let t = r.get();
        for _ in 0..32 {
            let a = 0x0a00_0000 | (rng.next_u64() as u32 & 0x00ff_ffff);
            acc += t
                .ipcache_v4(a.to_be_bytes())
                .map_or(0, |v| v.sec_identity as u64);
            acc += t.lb.services.len() as u64 & 1;
        }
        let now = Instant::now();
        let ns = now.duration_since(last).as_nanos() as u64;
        last = now;
        p.loops.fetch_add(1, Ordering::Relaxed);
        if ns >= 100_000 {
            p.over_100us.fetch_add(1, Ordering::Relaxed);
        }
        if ns >= 1_000_000 {
            p.over_1ms.fetch_add(1, Ordering::Relaxed);
        }
        if ns > p.longest_ns.load(Ordering::Relaxed) {
            p.longest_ns.store(ns, Ordering::Relaxed);
        }
    }
    std::hint::black_box(acc);
}

/// How a phase is recorded: name, batch, calls, updates, seconds, call latencies (µs).
type Record<'a> = dyn FnMut(&mut Datapath<NoKernel>, &str, usize, u64, u64, f64, Vec<f64>) + 'a;

#[derive(serde::Serialize, Debug)]
struct Phase {
    phase: String,
    batch: usize,
    calls: u64,
    updates: u64,
    secs: f64,
    updates_per_s: f64,
    /// Median time of one call (apply + publish), µs.
    call_us_median: f64,
    reader_longest_us: f64,
    reader_loops_over_100us: u64,
    reader_loops_over_1ms: u64,
    reader_loops: u64,
    reader_switches: u64,
    rss_mib: f64,
}

/// One apply-and-publish call (publication frees the versions readers let go of), its time
/// in µs pushed to `lat`.
fn timed<T, E>(lat: &mut Vec<f64>, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let c = Instant::now();
    let r = f();
    lat.push(c.elapsed().as_secs_f64() * 1e6);
    r
}

fn service(i: usize, backends: usize, round: usize) -> ServiceConfig {
    let vip = Ipv4Addr::from(0x0a60_0000u32 + i as u32);
    let be: Vec<_> = (0..backends)
        .map(|b| {
            let ip =
                Ipv4Addr::from(0x0a80_0000u32 + ((i * backends + b + round) as u32 & 0x3f_ffff));
            serde_json::json!({ "ip": ip.to_string() })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "name": format!("svc-{i}"),
        "namespace": "bench",
        "type": "ClusterIP",
        "cluster_ip": vip.to_string(),
        "ports": [{ "port": 80, "protocol": "TCP" }],
        "backends": be,
    }))
    .expect("a valid service")
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    core_affinity::set_for_current(core_affinity::CoreId { id: a.writer_core });
    // One lxc port: the `--endpoints` phase's entries sit behind it (cilium_lxc is checked
    // against the ports, not against one endpoint per port).
    let port = control::tables::Port::lxc(
        "lxc-bench",
        7,
        control::maps::MacAddr([2, 0, 0, 0, 0, 7]),
        Ipv4Addr::new(10, 250, 0, 1),
        1,
        1500,
    );
    let mut dp = Datapath::new(vec![port], 1, NoKernel);
    let stop = Arc::new(AtomicBool::new(false));
    let pauses = Arc::new(Pauses::default());
    let r = dp.reader();
    let rt = {
        let (s, p, c, rt) = (stop.clone(), pauses.clone(), a.reader_core, a.reader_rt);
        std::thread::spawn(move || reader(r, c, rt, s, p))
    };
    let mut phases = Vec::new();
    let mut record = |dp: &mut Datapath<NoKernel>,
                      name: &str,
                      batch: usize,
                      calls: u64,
                      updates: u64,
                      secs: f64,
                      mut lat: Vec<f64>| {
        // Let the reader switch to the last version and the writer free the old ones.
        std::thread::sleep(Duration::from_millis(20));
        dp.writer().reclaim();
        let (longest, o100, o1m, loops, sw) = pauses.take();
        lat.sort_by(f64::total_cmp);
        let p = Phase {
            phase: name.into(),
            batch,
            calls,
            updates,
            secs,
            updates_per_s: updates as f64 / secs,
            call_us_median: lat.get(lat.len() / 2).copied().unwrap_or(0.0),
            reader_longest_us: longest as f64 / 1e3,
            reader_loops_over_100us: o100,
            reader_loops_over_1ms: o1m,
            reader_loops: loops,
            reader_switches: sw,
            rss_mib: rss_mib(),
        };
        eprintln!("{p:?}");
        phases.push(p);
    };
    let node = |i: u64| Ipv4Addr::new(192, 168, (i >> 8) as u8, i as u8);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let entry = |rng: &mut Rng| {
        let x = rng.next_u64();
        let a = 0x0a00_0000 | (x as u32 & 0x00ff_ffff);
        (
            Ipv4Cidr::host(Ipv4Addr::from(a)),
            RemoteEndpointInfo::tunnelled(256 + (x >> 32) as u32 % 60000, node((x >> 40) & 0xfff)),
        )
    };

    // 0. Baseline: nothing changes.
    let idle = |dp: &mut Datapath<NoKernel>, record: &mut Record, name: &str| {
        pauses.take();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(a.secs));
        record(dp, name, 0, 0, 0, t0.elapsed().as_secs_f64(), Vec::new());
    };
    idle(&mut dp, &mut record, "baseline, no updates (empty)");
    // 1. Fill.
    pauses.take();
    let fill: Vec<_> = (0..a.prefixes).map(|_| entry(&mut rng)).collect();
    let t0 = Instant::now();
    dp.upsert_ipcache(&fill)?;
    let dt = t0.elapsed().as_secs_f64();
    // Updates change prefixes that are there (a pod's identity or node), so the table stays
    // at its size.
    let keys: Vec<Ipv4Cidr> = fill.iter().map(|(p, _)| *p).collect();
    drop(fill);
    record(
        &mut dp,
        "ipcache fill",
        a.prefixes,
        1,
        a.prefixes as u64,
        dt,
        vec![dt * 1e6],
    );
    idle(&mut dp, &mut record, "baseline, no updates (1M ipcache)");

    // 2. Updates at size, by batch.
    for batch in [1usize, 100, 10_000, 100_000] {
        pauses.take();
        let (mut calls, mut lat) = (0u64, Vec::new());
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(a.secs) {
            let b: Vec<_> = (0..batch)
                .map(|_| {
                    let k = keys[rng.next_u64() as usize % keys.len()];
                    (k, entry(&mut rng).1)
                })
                .collect();
            timed(&mut lat, || dp.upsert_ipcache(&b))?;
            calls += 1;
        }
        let dt = t0.elapsed().as_secs_f64();
        record(
            &mut dp,
            "ipcache update",
            batch,
            calls,
            calls * batch as u64,
            dt,
            lat,
        );
    }

    // 3. Endpoints: cilium_lxc filled to `--endpoints` in batches of 1024, then changed one
    // at a time (a pod's identity).
    let ep = |i: usize, sec: u32| {
        let ip = Ipv4Addr::from(0x0b00_0000u32 + i as u32);
        (
            control::maps::EndpointKey::v4(ip.octets()),
            control::tables::EndpointEntry {
                info: control::maps::EndpointInfo {
                    ifindex: 7,
                    lxc_id: 1 + (i % 4000) as u16,
                    sec_id: sec,
                    ..Default::default()
                },
                port: Some(0),
            },
        )
    };
    pauses.take();
    let (mut calls, mut lat) = (0u64, Vec::new());
    let t0 = Instant::now();
    for start in (0..a.endpoints).step_by(1024) {
        let b: Vec<_> = (start..(start + 1024).min(a.endpoints))
            .map(|i| ep(i, 1000))
            .collect();
        timed(&mut lat, || dp.upsert_endpoints(&b))?;
        calls += 1;
    }
    let dt = t0.elapsed().as_secs_f64();
    record(
        &mut dp,
        "endpoints add",
        1024,
        calls,
        a.endpoints as u64,
        dt,
        lat,
    );
    pauses.take();
    let (mut calls, mut lat) = (0u64, Vec::new());
    let t0 = Instant::now();
    while a.endpoints > 0 && t0.elapsed() < Duration::from_secs(a.secs) {
        let i = rng.next_u64() as usize % a.endpoints;
        let b = [ep(i, 1001 + calls as u32 % 1000)];
        timed(&mut lat, || dp.upsert_endpoints(&b))?;
        calls += 1;
    }
    let dt = t0.elapsed().as_secs_f64();
    record(&mut dp, "endpoint change", 1, calls, calls, dt, lat);

    // 4. Services, into LB maps sized for them.
    let map_max = a.lb_map_max.unwrap_or_else(|| {
        (a.services * (1 + a.backends)).max(control::maps::lb::LB_MAP_MAX as usize)
    });
    dp.set_services(
        &[],
        &control::lb::LbSettings {
            map_max,
            ..Default::default()
        },
    )?;
    for (round, name) in [(0, "services add"), (1, "services change backends")] {
        pauses.take();
        let (mut calls, mut lat) = (0u64, Vec::new());
        let t0 = Instant::now();
        for start in (0..a.services).step_by(1024) {
            let b: Vec<_> = (start..(start + 1024).min(a.services))
                .map(|i| service(i, a.backends, round))
                .collect();
            timed(&mut lat, || dp.upsert_services(&b))?;
            calls += 1;
        }
        let dt = t0.elapsed().as_secs_f64();
        record(
            &mut dp,
            name,
            1024,
            calls,
            (a.services * (1 + a.backends)) as u64,
            dt,
            lat,
        );
    }
    // One service at a time, at that size (at least one call).
    pauses.take();
    let (mut calls, mut lat) = (0u64, Vec::new());
    let t0 = Instant::now();
    while calls == 0 || t0.elapsed() < Duration::from_secs(a.secs) {
        let i = (rng.next_u64() as usize) % a.services.max(1);
        let round = 2 + calls as usize;
        timed(&mut lat, || {
            dp.upsert_services(&[service(i, a.backends, round)])
        })?;
        calls += 1;
    }
    let dt = t0.elapsed().as_secs_f64();
    record(
        &mut dp,
        "service change",
        1,
        calls,
        calls * (1 + a.backends) as u64,
        dt,
        lat,
    );
    stop.store(true, Ordering::Relaxed);
    rt.join().expect("reader");

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "control-plane churn: {} ipcache prefixes, {} endpoints, {} services x {} backends (lb_map_max {}); writer core {}, reader core {}{}; loadavg {}\n",
        a.prefixes,
        a.endpoints,
        a.services,
        a.backends,
        map_max,
        a.writer_core,
        a.reader_core,
        if a.reader_rt > 0 {
            format!(" (SCHED_FIFO {})", a.reader_rt)
        } else {
            String::new()
        },
        load.trim()
    );
    println!(
        "| phase | batch | calls | updates/s | call median µs | reader longest loop µs | loops ≥100 µs / ≥1 ms (of) | RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for p in &phases {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {} / {} ({}) | {:.0} |",
            p.phase,
            p.batch,
            p.calls,
            p.updates_per_s,
            p.call_us_median,
            p.reader_longest_us,
            p.reader_loops_over_100us,
            p.reader_loops_over_1ms,
            p.reader_loops,
            p.rss_mib
        );
    }
    if let Some(p) = a.json {
        std::fs::write(&p, serde_json::to_string_pretty(&phases)?)?;
    }
    Ok(())
}
