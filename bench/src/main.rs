//! Same-node UDP forwarding (`--size`, 64 B by default), side by side, in one run:
//! - `fastpath`: the full pipeline (`fastpath run`), native XDP;
//! - `fastpath-generic`: the same with `xdp_mode: generic` (the skb path devices without
//!   native XDP get);
//! - `fastpath-rt`: the same with `rt_priority: 10` (the worker under SCHED_FIFO: no normal
//!   thread on its core preempts it);
//! - `tc`: fastpath's in-kernel tc datapath on every device (`datapath.attach: tc`): the same
//!   pipeline in C at the lxc's tc ingress, its softirq moved to the forwarder's core by RPS
//!   as for `kernel`;
//! - `bare`: fastpath's bare AF_XDP forwarding (`--bare`: no pipeline), the ceiling on these veths;
//! - `kernel`: Linux's own IPv4 routing between the same pods (ip_forward=1, RPS moves the
//!   forwarding softirq to the forwarder's core so it gets its own core too);
//! - `xdp-redirect`: an in-kernel XDP program on the sender's lxc that only rewrites (TTL − 1,
//!   MACs) and redirects to the receiver's lxc (`xdp_redirect::KernelForward`): no lookups,
//!   no conntrack, no policy — what the kernel's fastest path costs on these veths, reported
//!   beside fastpath, not instead of it.
//!
//! Generator: an AF_XDP TX loop on the sender pod's eth0 (64 flows), pinned to `--gen-core`.
//! Receiver: an XDP program on the receiver pod's eth0 that counts and drops. The forwarder
//! (fastpath's worker, or the kernel's softirq via RPS) runs on `--fwd-core`. Each mode runs
//! `--reps` times, interleaved; the table shows min/median/max of received pps.
//! `--ndr` then searches each mode's no-drop rate and checks it (see `Ctx::ndr`): offered,
//! received and every lost frame's stage.
//! Everything happens in namespaces this program creates and deletes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use control::config::Config;
use control::maps::MacAddr;
use fastpath::xsk::sys;
use fastpath_bench::{
    FLOWS, Fastpath, cpu_ticks, dev_counter, fastpath_drops, frames, generator, kernel_forwarding,
    set_rps, single_node_yaml, start_fastpath,
};
use lab::{Lab, in_ns};

#[derive(Parser, Debug)]
#[command(about = "fastpath same-node benchmark: fastpath vs bare AF_XDP vs kernel routing")]
struct Args {
    /// Seconds of measurement per run (after 1 s of warm-up).
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Repetitions per mode (interleaved).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long, default_value_t = 1)]
    gen_core: usize,
    #[arg(long, default_value_t = 0)]
    fwd_core: usize,
    /// Modes to run, in order: fastpath, fastpath-generic, fastpath-rt, tc, bare, kernel,
    /// xdp-redirect.
    #[arg(long, value_delimiter = ',', default_value = "fastpath,bare,kernel")]
    modes: Vec<String>,
    /// Also search each mode's no-drop rate (RFC 2544-style: binary search on the offered
    /// rate for the highest one with zero loss), then check it: a run at 90 % of it must lose
    /// nothing, and a run at 120 % has every loss attributed to a stage.
    #[arg(long)]
    ndr: bool,
    /// Frame size on a wire, FCS included (64–1518): 64, 512 and 1518 are the usual rows.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(64..=1518))]
    size: u16,
    /// Queues of every veth and fastpath workers (`--queues`), on cores `fwd_core`,
    /// `fwd_core + 1`, … (wrapping over the machine's cores); the generator sends on as many
    /// TX queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    queues: u32,
    /// fastpath's `datapath.ring_size` (the bursts a stalled worker absorbs: ring / rate).
    #[arg(long, default_value_t = 2048)]
    ring_size: u32,
    /// Seconds per search trial.
    #[arg(long, default_value_t = 2)]
    ndr_secs: u64,
    /// Search steps (each halves the interval).
    #[arg(long, default_value_t = 7)]
    ndr_steps: u32,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A SCHED_FIFO worker (`rt` > 0) polls adaptively (a busy one would be throttled by the
/// kernel: `datapath.rt_priority` refuses it); the others busy-poll.
fn config(name: &str, ring: u32, xdp_mode: &str, queues: u32, rt: u8) -> String {
    let poll = if rt > 0 { "adaptive" } else { "busy" };
    // `xdp_mode: tc`: the tc datapath on every device (its workers only transmit, and idle).
    let (xdp_mode, attach, poll) = match xdp_mode {
        "tc" => ("auto", "tc", "adaptive"),
        m => (m, "xdp", poll),
    };
    single_node_yaml(
        name,
        250,
        &format!(
            "  queues: {queues}\n  poll: {poll}\n  ring_size: {ring}\n  xdp_mode: {xdp_mode}\n  attach: {attach}\n  rt_priority: {rt}\n"
        ),
        &[("gen", 11), ("sink", 12)],
    )
}

/// The testbed, as one trial needs it.
struct Ctx {
    cfg_path: PathBuf,
    cfg_generic: PathBuf,
    cfg_tc: PathBuf,
    cfg_rt: PathBuf,
    node_name: String,
    node: String,
    gen_ns: String,
    frames: Vec<Vec<u8>>,
    sink: xdp_redirect::Sink,
    gen_core: usize,
    /// The forwarder's cores: one per queue from `--fwd-core` on, wrapping (the first one's
    /// steal is what a trial records).
    fwd_cores: Vec<usize>,
    queues: u32,
    /// `xdp-redirect`: lxc-sink's ifindex, the sink pod's MAC, lxc-sink's MAC.
    kfwd: (u32, MacAddr, MacAddr),
}

/// What runs a mode while it is measured; stopped when dropped.
enum Running {
    Fastpath(#[allow(dead_code)] Fastpath),
    Kfwd(#[allow(dead_code)] xdp_redirect::KernelForward),
    Kernel,
}

/// Modes whose drops fastpath's status counts.
fn is_fastpath(mode: &str) -> bool {
    mode.starts_with("fastpath") || mode == "bare"
}

/// One bounded trial: frames the generator sent, the sink received, and the drops each
/// stage counted meanwhile.
#[derive(serde::Serialize, Debug, Clone, Default)]
struct Trial {
    rate_pps: f64,
    sent: u64,
    received: u64,
    /// (stage, frames) with a count > 0.
    stages: Vec<(String, u64)>,
    /// fastpath: worker loops that took ≥ 100 µs and ≥ 1 ms during the trial (not drops:
    /// stalls, which explain RX_FULL / XSK_DROP below capacity).
    stalls: (u64, u64),
    /// Steal share of the forwarder's core during the trial, % (other tenants of the host).
    steal_pct: f64,
}

impl Trial {
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
    fn attributed(&self) -> u64 {
        self.stages.iter().map(|(_, n)| n).sum()
    }
    fn by_stage(&self) -> String {
        if self.stages.is_empty() {
            return "none".into();
        }
        self.stages
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(serde::Serialize, Debug, Clone)]
struct Ndr {
    mode: String,
    size: u16,
    ndr_pps: f64,
    steps: Vec<Trial>,
    below: Trial,
    above: Trial,
}

/// Worker loops ≥ 100 µs and ≥ 1 ms so far (fastpath).
fn stall_counters(ctx: &Ctx) -> anyhow::Result<(u64, u64)> {
    let st = fastpath::api::status(&fastpath::api::socket_path(&ctx.node_name))?;
    let (mut a, mut b) = (0, 0);
    for w in &st.workers {
        a += w.loop_hist.iter().skip(2).sum::<u64>();
        b += w.loop_hist.iter().skip(3).sum::<u64>();
    }
    Ok((a, b))
}

/// (steal, total) jiffies of `core` (/proc/stat).
fn core_ticks(core: usize) -> (u64, u64) {
    let f = cpu_ticks(&format!("cpu{core}")).unwrap_or_default();
    (f.get(7).copied().unwrap_or(0), f.iter().take(8).sum())
}

/// Drop counters of every stage, cumulative: fastpath's (when it runs) and the veths'.
fn stage_counters(ctx: &Ctx, fastpath: bool) -> anyhow::Result<Vec<(String, u64)>> {
    let mut v = Vec::new();
    if fastpath {
        v.extend(fastpath_drops(&ctx.node_name)?);
    }
    // The veth to the sink: frames the node's side could not hand over. (lxc-gen's
    // rx_dropped is not a stage of its own: it counts the same frames as RX_FULL + XSK_DROP,
    // the XDP redirect into a socket that had no room, and kernel routing's drops.)
    for (ns, dev, c) in [(ctx.node.as_str(), "lxc-sink", "tx_dropped")]
        .into_iter()
        .chain((!fastpath).then_some((ctx.node.as_str(), "lxc-gen", "rx_dropped")))
    {
        v.push((format!("{dev} {c}"), dev_counter(ns, dev, c)?));
    }
    Ok(v)
}

impl Ctx {
    fn start(&self, mode: &str) -> anyhow::Result<Running> {
        Ok(match mode {
            "xdp-redirect" => {
                let (node, (out, dmac, smac)) = (self.node.clone(), self.kfwd);
                let f =
                    std::thread::spawn(move || -> anyhow::Result<xdp_redirect::KernelForward> {
                        sys::enter_netns(&node)?;
                        Ok(xdp_redirect::KernelForward::attach(
                            "lxc-gen",
                            out,
                            dmac.0,
                            smac.0,
                            xdp_redirect::AttachedMode::Native,
                        )?)
                    })
                    .join()
                    .expect("attach thread")?;
                Running::Kfwd(f)
            }
            "fastpath" => Running::Fastpath(start_fastpath(
                &self.cfg_path,
                &self.node_name,
                &self.fwd_cores,
                false,
                Vec::new(),
            )?),
            "fastpath-rt" => Running::Fastpath(start_fastpath(
                &self.cfg_rt,
                &self.node_name,
                &self.fwd_cores,
                false,
                Vec::new(),
            )?),
            "fastpath-generic" => Running::Fastpath(start_fastpath(
                &self.cfg_generic,
                &self.node_name,
                &self.fwd_cores,
                false,
                Vec::new(),
            )?),
            "tc" => {
                // The tc program runs in the softirq of the pod's veth: RPS moves it to the
                // forwarder's core(s), as for `kernel`.
                let mask = self.fwd_cores.iter().fold(0u64, |m, c| m | 1 << c);
                set_rps(&self.node, "lxc-gen", self.queues, mask)?;
                Running::Fastpath(start_fastpath(
                    &self.cfg_tc,
                    &self.node_name,
                    &self.fwd_cores,
                    false,
                    Vec::new(),
                )?)
            }
            "bare" => Running::Fastpath(start_fastpath(
                &self.cfg_path,
                &self.node_name,
                &self.fwd_cores,
                true,
                Vec::new(),
            )?),
            "kernel" => {
                kernel_forwarding(&self.node)?;
                // RPS moves each rx queue's forwarding to the forwarder's core(s), as
                // fastpath's workers have theirs.
                let mask = self.fwd_cores.iter().fold(0u64, |m, c| m | 1 << c);
                set_rps(&self.node, "lxc-gen", self.queues, mask)?;
                Running::Kernel
            }
            m => bail!(
                "unknown mode {m} (fastpath, fastpath-generic, fastpath-rt, tc, bare, kernel, xdp-redirect)"
            ),
        })
    }

    fn stop(&self, mode: &str) -> anyhow::Result<()> {
        if mode == "kernel" {
            in_ns(&self.node, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
        }
        if mode == "kernel" || mode == "tc" {
            set_rps(&self.node, "lxc-gen", self.queues, 0)?;
        }
        Ok(())
    }

    fn spawn_generator(
        &self,
        rate: f64,
        stop: &Arc<AtomicBool>,
        sent: &Arc<AtomicU64>,
    ) -> std::thread::JoinHandle<anyhow::Result<()>> {
        let (ns, f, s, n, core, q) = (
            self.gen_ns.clone(),
            self.frames.clone(),
            stop.clone(),
            sent.clone(),
            self.gen_core,
            self.queues,
        );
        std::thread::spawn(move || generator(ns, "eth0", core, f, q, rate, s, n, false))
    }

    /// `secs` at `rate`, then the generator stops, what it queued completes, and 200 ms
    /// let frames in flight land before the sink is read: loss is exact, not a window edge.
    fn trial(&self, mode: &str, rate: f64, secs: f64) -> anyhow::Result<Trial> {
        let fastpath = is_fastpath(mode);
        let c0 = stage_counters(self, fastpath)?;
        let s0 = if fastpath {
            stall_counters(self)?
        } else {
            (0, 0)
        };
        let k0 = core_ticks(self.fwd_cores[0]);
        let r0 = self.sink.count()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let g = self.spawn_generator(rate, &stop, &sent);
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        g.join().expect("generator")?;
        std::thread::sleep(Duration::from_millis(200));
        let r1 = self.sink.count()?;
        let c1 = stage_counters(self, fastpath)?;
        let s1 = if fastpath {
            stall_counters(self)?
        } else {
            (0, 0)
        };
        let k1 = core_ticks(self.fwd_cores[0]);
        let stages = c1
            .iter()
            .zip(&c0)
            .map(|((n, b), (_, a))| (n.clone(), b.saturating_sub(*a)))
            .filter(|(_, d)| *d > 0)
            .collect();
        Ok(Trial {
            rate_pps: rate,
            sent: sent.load(Ordering::Relaxed),
            received: r1 - r0,
            stages,
            stalls: (s1.0 - s0.0, s1.1 - s0.1),
            steal_pct: (k1.0 - k0.0) as f64 / (k1.1 - k0.1).max(1) as f64 * 100.0,
        })
    }

    /// Binary search between 0 and `top` (the unpaced offered rate) for the highest rate
    /// with zero loss, then the checks at 90 % and 120 % of it.
    fn ndr(&self, mode: &str, top: f64, a: &Args) -> anyhow::Result<Ndr> {
        let fp = self.start(mode)?;
        // Warm-up: ARP, the first conntrack entries, page faults.
        self.trial(mode, top / 10.0, 0.5)?;
        let (mut lo, mut hi) = (0.0f64, top);
        let mut steps = Vec::new();
        for _ in 0..a.ndr_steps {
            let mid = (lo + hi) / 2.0;
            let t = self.trial(mode, mid, a.ndr_secs as f64)?;
            if t.lost() == 0 {
                lo = mid;
            } else {
                hi = mid;
            }
            steps.push(t);
        }
        let below = self.trial(mode, lo * 0.9, a.secs as f64)?;
        let above = self.trial(mode, lo * 1.2, a.secs as f64)?;
        drop(fp);
        self.stop(mode)?;
        Ok(Ndr {
            mode: mode.to_string(),
            size: a.size,
            ndr_pps: lo,
            steps,
            below,
            above,
        })
    }
}

#[derive(serde::Serialize, Debug, Clone)]
struct Run {
    mode: String,
    size: u16,
    queues: u32,
    rep: usize,
    offered_pps: f64,
    received_pps: f64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if sys::euid() != 0 {
        bail!("needs root (namespaces, XDP, AF_XDP)");
    }
    let name = format!("fpb{}", std::process::id() % 100000);
    let yaml = config(&name, a.ring_size, "native", a.queues, 0);
    let cfg = Config::parse(&yaml, "bench")?;
    let _lab = Lab::up(&cfg, a.queues)?;
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg_path = std::env::temp_dir().join(format!("{name}.yaml"));
    std::fs::write(&cfg_path, &yaml)?;
    let cfg_generic = std::env::temp_dir().join(format!("{name}-generic.yaml"));
    std::fs::write(
        &cfg_generic,
        config(&name, a.ring_size, "generic", a.queues, 0),
    )?;
    let cfg_tc = std::env::temp_dir().join(format!("{name}-tc.yaml"));
    std::fs::write(&cfg_tc, config(&name, a.ring_size, "tc", a.queues, 0))?;
    let cfg_rt = std::env::temp_dir().join(format!("{name}-rt.yaml"));
    std::fs::write(&cfg_rt, config(&name, a.ring_size, "native", a.queues, 10))?;
    let node = cfg.node.netns.clone().unwrap();
    let (gen_ns, sink_ns) = (
        cfg.pods[0].netns.clone().unwrap(),
        cfg.pods[1].netns.clone().unwrap(),
    );
    // Receiver: count-and-drop XDP program on the sink pod's eth0 (attached from its netns).
    let sink = std::thread::spawn(move || -> anyhow::Result<xdp_redirect::Sink> {
        sys::enter_netns(&sink_ns)?;
        Ok(xdp_redirect::Sink::attach("eth0")?)
    })
    .join()
    .expect("sink thread")?;
    let lxc_gen: MacAddr = fastpath::daemon::link_info_in(&node, "lxc-gen")?.mac;
    let gen_frames = frames(
        a.size as usize,
        lxc_gen,
        cfg.pods[0].mac,
        cfg.pods[0].ip.octets(),
        cfg.pods[1].ip.octets(),
    );
    // Kernel mode: the node needs the sink's neighbour entry (the sink drops ARP in XDP).
    in_ns(
        &node,
        &[
            "ip",
            "neigh",
            "replace",
            &cfg.pods[1].ip.to_string(),
            "lladdr",
            &cfg.pods[1].mac.to_string().to_lowercase(),
            "dev",
            "lxc-sink",
            "nud",
            "permanent",
        ],
    )?;

    let kfwd = {
        let l = fastpath::daemon::link_info_in(&node, "lxc-sink")?;
        (l.ifindex, cfg.pods[1].mac, l.mac)
    };
    let ctx = Ctx {
        cfg_path: cfg_path.clone(),
        cfg_generic: cfg_generic.clone(),
        cfg_tc: cfg_tc.clone(),
        cfg_rt: cfg_rt.clone(),
        node_name: cfg.node.name.clone(),
        node,
        gen_ns,
        frames: gen_frames,
        sink,
        gen_core: a.gen_core,
        fwd_cores: (0..a.queues as usize)
            .map(|i| (a.fwd_core + i) % online)
            .collect(),
        queues: a.queues,
        kfwd,
    };
    let mut runs = Vec::new();
    for rep in 0..a.reps {
        for mode in &a.modes {
            let fp = ctx.start(mode)?;
            let stop = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicU64::new(0));
            let g = ctx.spawn_generator(0.0, &stop, &sent);
            std::thread::sleep(Duration::from_secs(1));
            let (s0, r0, t0) = (
                sent.load(Ordering::Relaxed),
                ctx.sink.count()?,
                Instant::now(),
            );
            std::thread::sleep(Duration::from_secs(a.secs));
            let (s1, r1, dt) = (
                sent.load(Ordering::Relaxed),
                ctx.sink.count()?,
                t0.elapsed().as_secs_f64(),
            );
            stop.store(true, Ordering::Relaxed);
            g.join().expect("generator")?;
            drop(fp);
            ctx.stop(mode)?;
            let r = Run {
                mode: mode.clone(),
                size: a.size,
                queues: a.queues,
                rep,
                offered_pps: (s1 - s0) as f64 / dt,
                received_pps: (r1 - r0) as f64 / dt,
            };
            eprintln!(
                "{:<9} rep {} offered {:>10.0} pps  received {:>10.0} pps",
                r.mode, rep, r.offered_pps, r.received_pps
            );
            runs.push(r);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let mut ndrs = Vec::new();
    if a.ndr {
        for mode in &a.modes {
            let top = runs
                .iter()
                .filter(|r| &r.mode == mode)
                .map(|r| r.offered_pps)
                .fold(0.0, f64::max);
            let n = ctx.ndr(mode, top, &a)?;
            eprintln!(
                "{mode:<9} no-drop rate {:.0} pps; at 90 %: {} of {} lost ({}; stalls ≥100µs {} ≥1ms {}, steal {:.1} %); at 120 %: {} lost, {} attributed ({})",
                n.ndr_pps,
                n.below.lost(),
                n.below.sent,
                n.below.by_stage(),
                n.below.stalls.0,
                n.below.stalls.1,
                n.below.steal_pct,
                n.above.lost(),
                n.above.attributed(),
                n.above.by_stage()
            );
            ndrs.push(n);
        }
    }
    let _ = std::fs::remove_file(&cfg_path);
    let _ = std::fs::remove_file(&cfg_generic);
    let _ = std::fs::remove_file(&cfg_rt);
    let _ = std::fs::remove_file(&cfg_tc);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    println!(
        "\nsame-node {} B UDP, {} flows, {} queue(s), AF_XDP copy mode (veth); XDP native unless the mode says generic",
        a.size, FLOWS, a.queues
    );
    println!(
        "machine: {} cores, kernel {kernel}, loadavg {}",
        std::thread::available_parallelism()?.get(),
        load.trim()
    );
    println!(
        "generator core {}, forwarder core(s) {:?}, {} s x {} reps, medians of received pps\n",
        a.gen_core, ctx.fwd_cores, a.secs, a.reps
    );
    println!("| mode | received pps min | median | max | offered pps median |");
    println!("|---|---|---|---|---|");
    let mut med = std::collections::BTreeMap::new();
    for mode in &a.modes {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|r| &r.mode == mode)
            .map(|r| r.received_pps)
            .collect();
        let mut o: Vec<f64> = runs
            .iter()
            .filter(|r| &r.mode == mode)
            .map(|r| r.offered_pps)
            .collect();
        v.sort_by(f64::total_cmp);
        o.sort_by(f64::total_cmp);
        let m = v[v.len() / 2];
        med.insert(mode.clone(), m);
        println!(
            "| {mode} | {:.0} | {:.0} | {:.0} | {:.0} |",
            v[0],
            m,
            v[v.len() - 1],
            o[o.len() / 2]
        );
    }
    if let (Some(f), Some(b)) = (med.get("fastpath"), med.get("bare")) {
        println!("\nfastpath / bare AF_XDP ceiling = {:.2}", f / b);
    }
    if let (Some(f), Some(k)) = (med.get("fastpath"), med.get("kernel")) {
        println!("fastpath / kernel routing      = {:.2}", f / k);
    }
    if !ndrs.is_empty() {
        println!(
            "\nno-drop rate (zero loss over {} s trials, {} halvings), then 90 % and 120 % of it for {} s\n",
            a.ndr_secs, a.ndr_steps, a.secs
        );
        println!(
            "| mode | no-drop rate pps | at 90 %: sent | lost | lost by stage | worker loops ≥100 µs / ≥1 ms | steal % | at 120 %: sent | lost | attributed | by stage |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for n in &ndrs {
            println!(
                "| {} | {:.0} | {} | {} | {} | {} / {} | {:.1} | {} | {} | {} | {} |",
                n.mode,
                n.ndr_pps,
                n.below.sent,
                n.below.lost(),
                n.below.by_stage(),
                n.below.stalls.0,
                n.below.stalls.1,
                n.below.steal_pct,
                n.above.sent,
                n.above.lost(),
                n.above.attributed(),
                n.above.by_stage()
            );
        }
    }
    if let Some(p) = a.json {
        let out = serde_json::json!({ "runs": runs, "ndr": ndrs });
        std::fs::write(&p, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
