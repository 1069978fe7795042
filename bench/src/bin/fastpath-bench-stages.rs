//! The pipeline per fixture: ns per frame for every step of the backend-neutral fixture
//! table (`fastpath::fixtures::table`, the same rows the unit tests check and a second
//! datapath will run), on tiny tables and on large ones.
//!
//! For each fixture the steps are first run once in order on a fresh node and checked
//! against the table (so what is timed is what the table says: a request that created its
//! conntrack entry, then the reply that finds it); then each step is timed on its own,
//! repeated: the frame is copied into a 2 KiB chunk behind the kernel's 256-byte headroom
//! and run through `stage::process`, as a worker does after RX. Established flows are what
//! repeats measure (the first packet's conntrack create happens once). The copy alone is
//! timed too and reported as its own row, so the pipeline's cost is the difference.
//!
//! "large" adds, to every setup's tables, `--ipcache` random remote /32s in 10.128.0.0/9
//! behind the peer node and `--ct` established conntrack entries between random addresses:
//! lookups then miss the caches as a busy node's do.
//!
//! `fastpath-bench-stages [--iters 200000] [--rounds 5] [--core 1] [--only TEXT]
//! [--ipcache 1000000] [--ct 1000000] [--json FILE]`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use control::ct::{CtSizes, CtState};
use control::maps::RemoteEndpointInfo;
use control::maps::ct::{CtTuple4, TUPLE_F_OUT};
use control::net::Ipv4Cidr;
use control::tables::{PortId, Tables};
use fastpath::fixtures::table::{Backend, Fixture, Setup, Userspace, table};
use fastpath::stage::{self, Scratch};
use fastpath::wire::Buf;

#[derive(Parser, Debug)]
struct Args {
    /// Frames per sample.
    #[arg(long, default_value_t = 200_000)]
    iters: u64,
    /// Samples per step and table size (interleaved tiny, large, tiny, …); the median is
    /// reported with the min and max.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Core to pin to.
    #[arg(long, default_value_t = 1)]
    core: usize,
    /// Only the fixtures whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Remote /32s added to the ipcache for the large tables.
    #[arg(long, default_value_t = 1_000_000)]
    ipcache: u32,
    /// Conntrack entries added for the large tables.
    #[arg(long, default_value_t = 1_000_000)]
    ct: u32,
    /// Distinct flows of the "many flows" rows: pod a of the overlay node to random
    /// destinations among the large ipcache's /32s, random source ports; each timed pass
    /// walks all of them, so every lookup (ipcache, conntrack) goes where a cold one goes.
    #[arg(long, default_value_t = 262_144)]
    flows: u32,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Keep the large tables' conntrack in files of this (tmpfs) directory, mapped into
    /// memory as `fastpath run` keeps it (`--run-dir`), instead of on the heap: the A/B of
    /// what the file backing costs (docs/benchmarks.md).
    #[arg(long)]
    ct_dir: Option<std::path::PathBuf>,
    /// Also time every row through the tc programs (`BPF_PROG_TEST_RUN` on the tiny
    /// tables, written into real kernel maps; root and bpffs): the kernel's own run time
    /// per frame, `--tc-iters` fresh frames per sample. Rows the tc datapath answers
    /// differently (tests/tests/tc_fixtures.rs) show "—".
    #[arg(long)]
    tc: bool,
    #[arg(long, default_value_t = 20_000)]
    tc_iters: u32,
}

const HEADROOM: usize = 256;

/// xorshift64*: reproducible filler addresses.
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// `t` with `ipcache` random /32s (behind the peer's tunnel endpoint when it has one) and
/// `ct` established entries added; the rows' own entries are kept (they are inserted after
/// the filler is, as the table's first run).
fn enlarge(
    t: &Tables,
    ipcache: u32,
    ct: u32,
    ct_dir: Option<&std::path::Path>,
) -> (Tables, Vec<u32>) {
    let mut big = t.clone();
    let mut ic = (*t.ipcache).clone();
    let peer = t
        .ipcache
        .iter()
        .find_map(|(_, v)| v.tunnel_v4())
        .map(std::net::Ipv4Addr::from);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut addrs = Vec::with_capacity(ipcache as usize);
    for _ in 0..ipcache {
        let a = 0x0a80_0000u32 | (next(&mut x) as u32 & 0x007f_ffff);
        addrs.push(a);
        let v = match peer {
            Some(p) => RemoteEndpointInfo::tunnelled(300 + (a & 0xfff), p),
            None => RemoteEndpointInfo::local(300 + (a & 0xfff)),
        };
        ic.insert(Ipv4Cidr::host(a.into()), v);
    }
    big.ipcache = Arc::new(ic);
    // Room for the filler and the many-flows rows' own entries.
    let sizes = CtSizes {
        tcp: (ct as usize * 2).max(1024),
        any: (ct as usize * 2).max(1 << 20),
    };
    let table = match ct_dir {
        None => control::ct::Conntrack::new(sizes),
        Some(d) => {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).expect("--ct-dir");
            control::ct::Conntrack::open_files(d, "bench", sizes)
                .expect("conntrack files in --ct-dir")
                .0
        }
    };
    let now = Scratch::default().now;
    for i in 0..ct {
        let r = next(&mut x);
        let proto = if i % 3 == 0 { 17 } else { 6 };
        let k = CtTuple4::connection(
            (r as u32).to_be_bytes(),
            ((r >> 32) as u32).to_be_bytes(),
            (r >> 16) as u16,
            80,
            proto,
            TUPLE_F_OUT,
        );
        let _ = table.create(&k, &CtState::default(), now + 100_000, now);
    }
    big.ct = Arc::new(table);
    (big, addrs)
}

/// The many-flows frames: UDP from pod a of the overlay node to `addrs[i]` (random
/// remote /32s), random source ports, valid checksums.
fn many_flows(addrs: &[u32], n: u32) -> Vec<Vec<u8>> {
    use fastpath::fixtures::overlay::{A_IP, A_MAC, LXC};
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..n)
        .map(|_| {
            let r = next(&mut x);
            let dst = addrs[(r as usize) % addrs.len()].to_be_bytes();
            let sport = 1024 + ((r >> 40) as u16 % 60000);
            let mut out = Vec::with_capacity(64);
            etherparse::PacketBuilder::ethernet2(A_MAC.0, LXC[0].0)
                .ipv4(A_IP, dst, 64)
                .udp(sport, 7)
                .write(&mut out, b"many flows")
                .expect("a frame");
            out
        })
        .collect()
}

/// One timed sample: each frame of `frames` arriving on `port` (copied into a chunk, then
/// through the pipeline unless `pipeline` is false); ns per frame.
fn time_frames<'a>(
    t: &Tables,
    port: PortId,
    frames: impl Iterator<Item = &'a [u8]>,
    pipeline: bool,
) -> f64 {
    let mut chunk = vec![0u8; 2048];
    let mut s = Scratch::default();
    let mut n = 0u64;
    let start = Instant::now();
    for f in frames {
        chunk[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
        if pipeline {
            let mut b = Buf::new(&mut chunk, HEADROOM, f.len());
            black_box(stage::process(&mut b, port, t, &mut s));
        } else {
            black_box(&mut chunk);
        }
        n += 1;
    }
    start.elapsed().as_nanos() as f64 / n.max(1) as f64
}

/// `iters` frames of `input` (one hot flow).
fn sample(t: &Tables, port: PortId, input: &[u8], iters: u64, pipeline: bool) -> f64 {
    time_frames(
        t,
        port,
        std::iter::repeat_n(input, iters as usize),
        pipeline,
    )
}

/// One pass over every frame of `frames` (many flows).
fn sample_many(t: &Tables, port: PortId, frames: &[Vec<u8>], pipeline: bool) -> f64 {
    time_frames(t, port, frames.iter().map(Vec::as_slice), pipeline)
}

#[derive(serde::Serialize)]
struct Row {
    fixture: String,
    step: usize,
    tiny_ns: [f64; 3],
    large_ns: [f64; 3],
    /// The same step through the tc programs (tiny tables), if asked and if it agrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    tc_ns: Option<[f64; 3]>,
}

fn stats(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    [v[v.len() / 2], v[0], v[v.len() - 1]]
}

/// A fresh node for `f`, with its steps run once and checked: returns the tables as they
/// are after the steps (conntrack entries made), or why the row failed.
fn prepared(f: &Fixture) -> Result<Tables, String> {
    let mut u = Userspace::new();
    u.load(f.setup);
    for (i, s) in f.steps.iter().enumerate() {
        let r = u.run(s.port, &s.input);
        if r.tx != s.expect.tx {
            return Err(format!(
                "step {i}: left on {:?}, the table says {:?}",
                r.tx, s.expect.tx
            ));
        }
    }
    Ok((*u.tables()).clone())
}

/// The tc column: each fixture on the tc programs, its steps run once and compared with
/// the table (a row the tc datapath answers differently gets no figure), then each step
/// timed, `--rounds` samples of `--tc-iters` fresh frames.
fn tc_column(a: &Args, fixtures: &[Fixture], rows: &mut [Row]) -> anyhow::Result<()> {
    use fastpath::fixtures::tc::Tc;
    let mut b = Tc::new(&format!("fpst{}", std::process::id() % 100000));
    for f in fixtures {
        b.load(f.setup);
        let rows_of = |m: &[(u8, control::maps::MetricDir, u64)]| {
            let mut v: Vec<_> = m.iter().map(|m| (m.0, m.1.index(), m.2)).collect();
            v.sort_unstable();
            v
        };
        let agrees = f.steps.iter().all(|s| {
            let r = b.run(s.port, &s.input);
            r.tx == s.expect.tx && rows_of(&r.metrics) == rows_of(&s.expect.metrics)
        });
        if !agrees {
            eprintln!("tc: {}: answered differently, not timed", f.name);
            continue;
        }
        for (i, st) in f.steps.iter().enumerate() {
            let v: Vec<f64> = (0..a.rounds)
                .map(|_| b.time(st.port, &st.input, a.tc_iters))
                .collect();
            if let Some(r) = rows.iter_mut().find(|r| r.fixture == f.name && r.step == i) {
                r.tc_ns = Some(stats(v));
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(c) = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.id == a.core)
    {
        core_affinity::set_for_current(c);
    }
    let fixtures: Vec<Fixture> = table()
        .into_iter()
        .filter(|f| a.only.as_ref().is_none_or(|o| f.name.contains(o.as_str())))
        .collect();
    eprintln!(
        "{} fixtures; large tables: +{} ipcache /32s, +{} conntrack entries",
        fixtures.len(),
        a.ipcache,
        a.ct
    );
    let mut large_base = std::collections::HashMap::new();
    let mut filler = Vec::new();
    for (i, s) in Setup::ALL.into_iter().enumerate() {
        let t = s.tables();
        let dir = a.ct_dir.as_ref().map(|d| d.join(i.to_string()));
        let (big, addrs) = enlarge(&t, a.ipcache, a.ct, dir.as_deref());
        large_base.insert(s, big);
        filler = addrs;
    }
    let mut rows = Vec::new();
    // The copy alone, on the first fixture's frame.
    if let Some(f) = fixtures.first() {
        let t = f.setup.tables();
        let v: Vec<f64> = (0..a.rounds)
            .map(|_| sample(&t, f.steps[0].port, &f.steps[0].input, a.iters, false))
            .collect();
        let s = stats(v);
        rows.push(Row {
            fixture: "(frame copy into the chunk only)".into(),
            step: 0,
            tiny_ns: s,
            large_ns: s,
            tc_ns: None,
        });
    }
    for f in &fixtures {
        let tiny = match prepared(f) {
            Ok(t) => t,
            Err(e) => anyhow::bail!("{}: {e}", f.name),
        };
        // The large node: the filler first, then the fixture's own steps once (its
        // conntrack entries among a million others).
        let large = large_base[&f.setup].clone();
        for st in &f.steps {
            let (v, _) = fastpath::fixtures::run(&st.input, st.port, &large);
            if v.tx_port() != st.expect.tx {
                anyhow::bail!("{}: on the large tables the verdict is {v:?}", f.name);
            }
        }
        for (i, st) in f.steps.iter().enumerate() {
            let (mut tv, mut lv) = (Vec::new(), Vec::new());
            for _ in 0..a.rounds {
                tv.push(sample(&tiny, st.port, &st.input, a.iters, true));
                lv.push(sample(&large, st.port, &st.input, a.iters, true));
            }
            rows.push(Row {
                fixture: f.name.clone(),
                step: i,
                tiny_ns: stats(tv),
                large_ns: stats(lv),
                tc_ns: None,
            });
        }
    }
    // Many flows: the same encap step as the overlay fixture, over `flows` distinct flows
    // on the large tables (first pass creates their conntrack entries, untimed).
    if a.flows > 0 && !filler.is_empty() {
        use fastpath::fixtures::overlay::A_PORT;
        let frames = many_flows(&filler, a.flows);
        let big = large_base[&Setup::Overlay].clone();
        let encapsulated = frames
            .iter()
            .filter(|f| {
                matches!(
                    fastpath::fixtures::run(f, A_PORT, &big).0,
                    stage::Verdict::Encap { .. }
                )
            })
            .count() as u32;
        anyhow::ensure!(
            encapsulated == a.flows,
            "many flows: {encapsulated} of {} encapsulated",
            a.flows
        );
        // The tiny-table column: the one hot flow of the overlay fixture, for comparison.
        let hot = fixtures
            .iter()
            .find(|f| f.setup == Setup::Overlay && f.name.contains("encapsulated"))
            .map(|f| f.steps[0].clone());
        let (mut tv, mut lv, mut cv) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..a.rounds {
            if let Some(h) = &hot {
                tv.push(sample(
                    &Setup::Overlay.tables(),
                    h.port,
                    &h.input,
                    a.iters,
                    true,
                ));
            }
            lv.push(sample_many(&big, A_PORT, &frames, true));
            cv.push(sample_many(&big, A_PORT, &frames, false));
        }
        let c = stats(cv);
        rows.push(Row {
            fixture: format!("(many flows: copying {} frames from memory only)", a.flows),
            step: 0,
            tiny_ns: c,
            large_ns: c,
            tc_ns: None,
        });
        rows.push(Row {
            fixture: format!(
                "many flows: pod a to {} random remote /32s of the large ipcache, encapsulated (tiny = one hot flow)",
                a.flows
            ),
            step: 0,
            tiny_ns: if tv.is_empty() { [0.0; 3] } else { stats(tv) },
            large_ns: stats(lv),
            tc_ns: None,
        });
    }
    if a.tc {
        tc_column(&a, &fixtures, &mut rows)?;
    }
    println!(
        "| fixture | step | tiny ns/frame (min–max) | large ns/frame (min–max) | tc programs ns/frame, tiny (min–max) |"
    );
    println!("|---|---|---|---|---|");
    for r in &rows {
        let tc = r.tc_ns.map_or("—".to_string(), |t| {
            format!("{:.1} ({:.1}–{:.1})", t[0], t[1], t[2])
        });
        println!(
            "| {} | {} | {:.1} ({:.1}–{:.1}) | {:.1} ({:.1}–{:.1}) | {tc} |",
            r.fixture,
            r.step,
            r.tiny_ns[0],
            r.tiny_ns[1],
            r.tiny_ns[2],
            r.large_ns[0],
            r.large_ns[1],
            r.large_ns[2]
        );
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}
