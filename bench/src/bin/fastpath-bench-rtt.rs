//! Request/response latency, same node, side by side in one run: a UDP client pod sends one
//! datagram at a time to an echo pod and waits for the answer, through
//! - `kernel`: Linux's own IPv4 routing between the two pods (ip_forward=1);
//! - `fastpath`: the full pipeline, adaptive poll with the default spin budget;
//! - `spin=N`: the same with `datapath.poll_spin_us: N` (the budget sweep that chose the
//!   default, docs/benchmarks.md "Choosing the spin budget");
//! - `busy`: `poll: busy` (never sleeps; a full core whatever the load);
//! - `flush=N`: adaptive with `datapath.tx_flush_us: N` (TX kicks held up to N µs);
//! - `tc`: fastpath's tc datapath on every device (`datapath.attach: tc`): the pipeline runs
//!   in the kernel, in the sending pod's softirq, no worker in the path.
//!
//! Each request crosses the forwarder twice (request and answer). RTTs go into an
//! hdrhistogram (ns); the table gives p50/p99/p99.9 and the CPU the forwarder used during the
//! run (fastpath: its process, /proc/<pid>/stat; kernel: softirq of the whole machine,
//! /proc/stat; tc: both), plus, for fastpath, its CPU over `--idle-secs` with no traffic at all (an
//! idle worker must stay under 1 % of a core). Modes are interleaved A B C … per repetition;
//! medians over repetitions are reported with min and max. Every loop is bounded: `--count`
//! requests per run, each waiting at most 200 ms (a lost one is counted).
//!
//! Under load (`--load-pps N`): two more pods, and an AF_XDP generator in one of them sends N
//! UDP frames/s of 64 B (paced, in batches of up to 64, sleeping between them, on the
//! client's core) through the same forwarder to the other, whose XDP program counts and drops
//! them, while the requests run; the table adds the load's delivered share.
//!
//! `fastpath-bench-rtt [--count 20000] [--reps 3] [--modes kernel,fastpath,busy]
//! [--load-pps 0] [--json F]`

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use control::config::Config;
use fastpath::xsk::sys;
use fastpath_bench::{Fastpath, clk_tck, cpu_ticks, single_node_yaml, start_fastpath};
use hdrhistogram::Histogram;
use lab::{Lab, in_ns};

#[derive(Parser, Debug)]
#[command(about = "fastpath request/response latency: kernel routing vs fastpath poll modes")]
struct Args {
    /// Requests per run (after 500 of warm-up).
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Repetitions per mode (interleaved).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Modes, in order: kernel, fastpath, busy, tc, spin=<µs> (`poll_spin_us`), flush=<µs>
    /// (`tx_flush_us`).
    #[arg(long, value_delimiter = ',', default_value = "kernel,fastpath,busy")]
    modes: Vec<String>,
    /// Core of the forwarder (fastpath's worker; the kernel's softirq runs where the pods'
    /// threads send from).
    #[arg(long, default_value_t = 0)]
    fwd_core: usize,
    /// Core of the client and the echo server threads.
    #[arg(long, default_value_t = 1)]
    app_core: usize,
    /// The client and the echo server poll non-blocking sockets (yielding to each other on
    /// their shared core) instead of sleeping in recv: their core never idles, which
    /// separates the forwarder's latency from the cost of waking a thread on an idle vCPU.
    #[arg(long)]
    app_busy: bool,
    /// Seconds of no traffic over which fastpath's idle CPU is measured (0: skip).
    #[arg(long, default_value_t = 2)]
    idle_secs: u64,
    /// Background load through the same forwarder while requests run, frames/s (0: none).
    #[arg(long, default_value_t = 0)]
    load_pps: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const CLIENT_IP: &str = "10.251.1.11";
const SERVER_IP: &str = "10.251.1.12";
const PORT: u16 = 7;
/// UDP payload: 18 bytes make a 60-byte frame (64 with FCS).
const PAYLOAD: usize = 18;

fn config(name: &str, poll: &str, spin: &str, load: bool) -> String {
    let pods: &[(&str, u8)] = if load {
        &[("cli", 11), ("srv", 12), ("gen", 13), ("sink", 14)]
    } else {
        &[("cli", 11), ("srv", 12)]
    };
    single_node_yaml(
        name,
        251,
        &format!("  queues: 1\n  poll: {poll}\n{spin}"),
        pods,
    )
}

/// The background load: where it is sent from and counted.
struct Load {
    gen_ns: String,
    frames: Vec<Vec<u8>>,
    sink: xdp_redirect::Sink,
}

/// `fastpath run` on `yaml` (written to a file removed when it stops), one worker on `core`.
fn start(yaml: &str, node: &str, core: usize) -> anyhow::Result<Fastpath> {
    let cfg = std::env::temp_dir().join(format!("fastpath-bench-rtt-{node}.yaml"));
    std::fs::write(&cfg, yaml)?;
    start_fastpath(&cfg.clone(), node, &[core], false, vec![cfg])
}

/// CPU seconds of process `pid` so far, all its threads: the sum of their schedstat run
/// times (ns, exact — not the 10 ms ticks of /proc/<pid>/stat, too coarse for an idle
/// worker).
fn proc_cpu(pid: u32) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let p = t?.path().join("schedstat");
        // A thread that ended meanwhile has no schedstat: its time is gone with it.
        if let Ok(s) = std::fs::read_to_string(p) {
            ns += s.split_whitespace().next().unwrap_or("0").parse::<u64>()?;
        }
    }
    Ok(ns as f64 / 1e9)
}

/// Softirq seconds of all CPUs so far (/proc/stat), and the steal seconds.
fn softirq_and_steal() -> anyhow::Result<(f64, f64)> {
    let f = cpu_ticks("cpu").context("/proc/stat")?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / clk_tck();
    Ok((at(6), at(7)))
}

/// The echo server in `ns`, until `stop`.
fn echo(
    ns: String,
    core: usize,
    busy: bool,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
    sys::enter_netns(&ns)?;
    let s = UdpSocket::bind((SERVER_IP, PORT))?;
    if busy {
        s.set_nonblocking(true)?;
    } else {
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
    }
    ready.store(true, Ordering::Release);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                s.send_to(&buf[..n], from)?;
            }
            Err(_) if busy => std::thread::yield_now(),
            Err(_) => {}
        }
    }
    Ok(())
}

/// `count` requests from `ns`, one at a time: (histogram of RTT ns, lost).
fn client(
    ns: String,
    core: usize,
    busy: bool,
    count: u64,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
    sys::enter_netns(&ns)?;
    let s = UdpSocket::bind((CLIENT_IP, 0))?;
    s.connect((SERVER_IP, PORT))?;
    if busy {
        s.set_nonblocking(true)?;
    } else {
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
    let (mut lost, mut buf) = (0u64, [0u8; 2048]);
    let mut req = [0u8; PAYLOAD];
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..count + 500 {
        if Instant::now() > deadline {
            bail!("run took more than 120 s");
        }
        req[..8].copy_from_slice(&i.to_le_bytes());
        let t0 = Instant::now();
        s.send(&req)?;
        // Answers of earlier timed-out requests are skipped, not counted as this one's.
        let ok = loop {
            match s.recv(&mut buf) {
                Ok(n) if n == PAYLOAD && buf[..8] == req[..8] => break true,
                Ok(_) => continue,
                Err(e) if busy && e.kind() == std::io::ErrorKind::WouldBlock => {
                    if t0.elapsed() > Duration::from_millis(200) {
                        break false;
                    }
                    // Yield, not spin: the echo server shares this core.
                    std::thread::yield_now();
                }
                Err(_) => break false,
            }
        };
        if i < 500 {
            continue;
        }
        if ok {
            h.record(t0.elapsed().as_nanos() as u64)?;
        } else {
            lost += 1;
        }
    }
    Ok((h, lost))
}

#[derive(serde::Serialize, Debug, Clone)]
struct Run {
    mode: String,
    rep: usize,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    lost: u64,
    /// Requests per second the run achieved (one in flight at a time).
    rps: f64,
    /// CPU of the forwarder during the run, in cores (fastpath process, or softirq).
    fwd_cores: f64,
    /// fastpath only: its CPU with no traffic, in % of a core.
    idle_pct: Option<f64>,
    steal_pct: f64,
    /// Under `--load-pps`: (frames the generator sent, frames the sink received).
    load: Option<(u64, u64)>,
}

/// A mode's poll and the extra `datapath:` lines of its config (`None`: kernel routing).
fn mode_poll(mode: &str) -> anyhow::Result<Option<(&'static str, String)>> {
    Ok(match mode {
        "kernel" => None,
        "fastpath" => Some(("adaptive", String::new())),
        "busy" => Some(("busy", String::new())),
        "tc" => Some(("adaptive", "  attach: tc\n".to_string())),
        m if m.starts_with("spin=") => Some((
            "adaptive",
            format!("  poll_spin_us: {}\n", m[5..].parse::<u32>()?),
        )),
        m if m.starts_with("flush=") => Some((
            "adaptive",
            format!("  tx_flush_us: {}\n", m[6..].parse::<u32>()?),
        )),
        m => bail!("unknown mode {m} (kernel, fastpath, busy, tc, spin=<µs>, flush=<µs>)"),
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if sys::euid() != 0 {
        bail!("needs root (namespaces, XDP, AF_XDP)");
    }
    for m in &a.modes {
        mode_poll(m)?;
    }
    let name = format!("fpr{}", std::process::id() % 100000);
    let loaded = a.load_pps > 0;
    let cfg = Config::parse(&config(&name, "adaptive", "", loaded), "bench")?;
    let _lab = Lab::up(&cfg, 1)?;
    let load = if loaded {
        let sink_ns = cfg.pods[3].netns.clone().unwrap();
        let sink = std::thread::spawn(move || -> anyhow::Result<xdp_redirect::Sink> {
            sys::enter_netns(&sink_ns)?;
            Ok(xdp_redirect::Sink::attach("eth0")?)
        })
        .join()
        .expect("sink thread")?;
        let lxc = fastpath::daemon::link_info_in(cfg.node.netns.as_ref().unwrap(), "lxc-gen")?;
        Some(Load {
            gen_ns: cfg.pods[2].netns.clone().unwrap(),
            frames: fastpath_bench::frames(
                64,
                lxc.mac,
                cfg.pods[2].mac,
                cfg.pods[2].ip.octets(),
                cfg.pods[3].ip.octets(),
            ),
            sink,
        })
    } else {
        None
    };
    let node = cfg.node.netns.clone().unwrap();
    let (cli_ns, srv_ns) = (
        cfg.pods[0].netns.clone().unwrap(),
        cfg.pods[1].netns.clone().unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let server = {
        let (ns, st, r, core, busy) = (
            srv_ns.clone(),
            stop.clone(),
            ready.clone(),
            a.app_core,
            a.app_busy,
        );
        std::thread::spawn(move || echo(ns, core, busy, st, r))
    };
    while !ready.load(Ordering::Acquire) {
        if server.is_finished() {
            server.join().expect("echo")?;
            bail!("echo server ended");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut runs = Vec::new();
    for rep in 0..a.reps {
        for mode in &a.modes {
            let poll = mode_poll(mode)?;
            let fp = match &poll {
                Some((p, spin)) => Some(start(
                    &config(&name, p, spin, loaded),
                    &cfg.node.name,
                    a.fwd_core,
                )?),
                None => {
                    fastpath_bench::kernel_forwarding(&node)?;
                    None
                }
            };
            let idle_pct = match &fp {
                Some(f) if a.idle_secs > 0 => {
                    // Let start-up settle, then measure a quiet node.
                    std::thread::sleep(Duration::from_millis(500));
                    let c0 = proc_cpu(f.pid())?;
                    std::thread::sleep(Duration::from_secs(a.idle_secs));
                    Some((proc_cpu(f.pid())? - c0) / a.idle_secs as f64 * 100.0)
                }
                _ => None,
            };
            // The tc datapath works in softirq, as the kernel does; its process only
            // serves the control socket.
            let in_softirq = mode == "tc";
            let cpu = |fp: &Option<Fastpath>| -> anyhow::Result<f64> {
                Ok(match fp {
                    Some(f) if !in_softirq => proc_cpu(f.pid())?,
                    Some(f) => proc_cpu(f.pid())? + softirq_and_steal()?.0,
                    None => softirq_and_steal()?.0,
                })
            };
            // The load starts first and stops after the requests.
            let bg = match &load {
                Some(l) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let r0 = l.sink.count()?;
                    let (ns, f, st, n, core, rate) = (
                        l.gen_ns.clone(),
                        l.frames.clone(),
                        stop.clone(),
                        sent.clone(),
                        a.app_core,
                        a.load_pps as f64,
                    );
                    let g = std::thread::spawn(move || {
                        fastpath_bench::generator(ns, "eth0", core, f, 1, rate, st, n, true)
                    });
                    std::thread::sleep(Duration::from_millis(200));
                    Some((stop, sent, r0, g))
                }
                None => None,
            };
            let (c0, st0, t0) = (cpu(&fp)?, softirq_and_steal()?.1, Instant::now());
            let (h, lost) = {
                let (ns, core, busy, count) = (cli_ns.clone(), a.app_core, a.app_busy, a.count);
                std::thread::spawn(move || client(ns, core, busy, count))
                    .join()
                    .expect("client")?
            };
            let load_counts = match (bg, &load) {
                (Some((stop, sent, r0, g)), Some(l)) => {
                    stop.store(true, Ordering::Relaxed);
                    g.join().expect("generator")?;
                    std::thread::sleep(Duration::from_millis(100));
                    Some((sent.load(Ordering::Relaxed), l.sink.count()? - r0))
                }
                _ => None,
            };
            let dt = t0.elapsed().as_secs_f64();
            let (c1, st1) = (cpu(&fp)?, softirq_and_steal()?.1);
            drop(fp);
            if poll.is_none() {
                in_ns(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
            }
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let r = Run {
                mode: mode.clone(),
                rep,
                p50_us: us(0.5),
                p99_us: us(0.99),
                p999_us: us(0.999),
                lost,
                rps: (a.count as f64) / dt,
                fwd_cores: (c1 - c0) / dt,
                idle_pct,
                steal_pct: (st1 - st0) / dt / cores() as f64 * 100.0,
                load: load_counts,
            };
            eprintln!(
                "{:<10} rep {} p50 {:>7.1} µs p99 {:>7.1} p99.9 {:>7.1} lost {} {:>7.0} req/s fwd {:.2} cores idle {}",
                r.mode,
                rep,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.lost,
                r.rps,
                r.fwd_cores,
                r.idle_pct.map_or("-".into(), |p| format!("{p:.2} %"))
            );
            runs.push(r);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    stop.store(true, Ordering::Relaxed);
    server.join().expect("echo")?;
    report(&a, &runs)?;
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&runs)?)?;
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Median, min and max of `f` over the runs of `mode`.
fn stat(runs: &[Run], mode: &str, f: impl Fn(&Run) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = runs.iter().filter(|r| r.mode == mode).map(f).collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn report(a: &Args, runs: &[Run]) -> anyhow::Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    let commit = String::from_utf8_lossy(
        &Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .trim()
    .to_string();
    println!(
        "\nsame-node UDP request/response, 64 B frames, 1 queue, native XDP, AF_XDP copy mode (veth){}",
        if a.load_pps > 0 {
            format!(
                "; under a load of {} frames/s of 64 B UDP through the same forwarder",
                a.load_pps
            )
        } else {
            String::new()
        }
    );
    println!(
        "machine: {} cores, kernel {kernel}, commit {commit}, loadavg {}",
        cores(),
        load.trim()
    );
    println!(
        "forwarder core {}, client/server core {}{}, {} requests x {} reps; median (min–max)\n",
        a.fwd_core,
        a.app_core,
        if a.app_busy {
            " (spinning on non-blocking sockets)"
        } else {
            " (blocking recv)"
        },
        a.count,
        a.reps
    );
    if a.load_pps > 0 {
        println!(
            "| mode | RTT p50 µs | p99 µs | p99.9 µs | lost | forwarder CPU (cores) | idle CPU % | load delivered | steal % |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
    } else {
        println!(
            "| mode | RTT p50 µs | p99 µs | p99.9 µs | lost | forwarder CPU (cores) | idle CPU % | steal % |"
        );
        println!("|---|---|---|---|---|---|---|---|");
    }
    let f = |(m, lo, hi): (f64, f64, f64)| format!("{m:.1} ({lo:.1}–{hi:.1})");
    for mode in &a.modes {
        let idle = if runs.iter().any(|r| &r.mode == mode && r.idle_pct.is_some()) {
            let (m, lo, hi) = stat(runs, mode, |r| r.idle_pct.unwrap_or(0.0));
            format!("{m:.2} ({lo:.2}–{hi:.2})")
        } else {
            "—".into()
        };
        let (ls, lr) = runs
            .iter()
            .filter(|r| &r.mode == mode)
            .filter_map(|r| r.load)
            .fold((0, 0), |(a, b), (s, r)| (a + s, b + r));
        let idle = if a.load_pps > 0 {
            format!("{idle} | {lr} of {ls}")
        } else {
            idle
        };
        println!(
            "| {mode} | {} | {} | {} | {} | {:.2} | {idle} | {:.1} |",
            f(stat(runs, mode, |r| r.p50_us)),
            f(stat(runs, mode, |r| r.p99_us)),
            f(stat(runs, mode, |r| r.p999_us)),
            runs.iter()
                .filter(|r| &r.mode == mode)
                .map(|r| r.lost)
                .sum::<u64>(),
            stat(runs, mode, |r| r.fwd_cores).0,
            stat(runs, mode, |r| r.steal_pct).0,
        );
    }
    let k = runs.iter().any(|r| r.mode == "kernel");
    if k {
        let kp = stat(runs, "kernel", |r| r.p50_us).0;
        for mode in a.modes.iter().filter(|m| *m != "kernel") {
            println!(
                "\n{mode} p50 / kernel p50 = {:.2}",
                stat(runs, mode, |r| r.p50_us).0 / kp
            );
        }
    }
    Ok(())
}
