//! Cross-node pod → pod UDP, the sending node's work, side by side in one run: a pod's frames
//! enter the node on its lxc veth and leave VXLAN-encapsulated (VNI = the pod's identity, UDP
//! 8472) on the node NIC. Systems, each its own node on one fabric bridge, interleaved per
//! repetition:
//! - `fastpath`: `fastpath run`, native XDP on lxc and NIC, the full pipeline (endpoint,
//!   ipcache, conntrack, policy with no policy selecting the pod, encap);
//! - `fastpath-policy`: the same with a CiliumNetworkPolicy selecting the sender (egress allowed
//!   to the receiving pod on UDP 9 only): the policy lookup runs, then its cached verdict;
//! - `fastpath-clusterip`: the pod sends to a ClusterIP (10.96.77.10:9) whose one backend is
//!   the remote pod: service lookup, DNAT, conntrack service entry, encap;
//! - `fastpath-generic`: `fastpath` with `xdp_mode: generic`;
//! - `fastpath-txflush`: `fastpath` with `tx_flush_us: 50` (a TX kick for many frames);
//! - `fastpath-rt`: `fastpath` with `rt_priority: 10` (the worker under SCHED_FIFO, so no
//!   normal thread on its core preempts it: what loss below capacity comes from here);
//! - `fastpath-tc`: `fastpath` with the tc datapath on every device (`attach: tc`): the same
//!   pipeline in the kernel at the lxc's tc ingress, in its softirq, which RPS moves to the
//!   forwarder core as for `kernel-vxlan`; `fastpath-tc-clusterip`: the same to the ClusterIP;
//! - `kernel-vxlan`: the plain Linux VXLAN path on a node built as `fastpath lab` builds the
//!   interop peer: IPv4 routing, an `external` VXLAN device with per-pod encap routes (VNI =
//!   identity), RPS moving the softirq to the forwarder core.
//!
//! The receiving node is a namespace whose NIC has an XDP sink: it counts every IPv4 frame that
//! arrives (the encapsulated ones) and drops it, and passes ARP so the senders resolve it. The
//! generator is an AF_XDP TX loop in the sender pod, on `--gen-core`; fastpath's worker (or the
//! kernel's softirq via RPS) is on `--fwd-core`.
//!
//! Two measurements per system and repetition: received packets/s with the generator unpaced
//! (offered vs received), and CPU per delivered packet at a fixed paced rate every system
//! delivers whole (`--cpu-rate`): non-idle jiffies of all cores (user, system, irq, softirq)
//! from /proc/stat over the trial, divided by packets received. The generator sleeps between
//! its batches there, so its own work (AF_XDP TX, and the veth softirq it triggers on its
//! core) is included in every row alike. fastpath runs with its default adaptive poll (it
//! spins only while there is work, and 50 µs after).
//!
//! `--direction receive` measures the other end, the receiving node's work: the remote node
//! (the namespace above, no sink on it now) sends VXLAN-encapsulated frames from its NIC
//! (an AF_XDP TX loop on its `eth1`: VNI = the remote pod's identity, UDP 8472, the outer
//! source port from the inner flow's hash), the system under test decapsulates them and
//! delivers them to its pod, whose `eth0` has the XDP sink. fastpath: from-overlay (VNI
//! check, ipcache, endpoint, conntrack, ingress policy with `fastpath-policy`) and delivery
//! on the lxc; `kernel-vxlan`: the `external` VXLAN device's decap and routing to the lxc,
//! RPS moving the NIC's softirq to the forwarder core. `fastpath-clusterip` has no meaning
//! there and is refused.
//!
//! Everything happens in namespaces this program creates and deletes.
//!
//! `fastpath-bench-xnode [--secs 4] [--reps 3] [--size 64] [--cpu-rate 100000]
//! [--systems fastpath,fastpath-policy,fastpath-clusterip,fastpath-generic,fastpath-rt,
//! fastpath-txflush,fastpath-tc,fastpath-tc-clusterip,kernel-vxlan] [--direction send|receive]
//! [--json FILE]`

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use control::config::Config;
use fastpath::xsk::sys;
use fastpath_bench::{
    Fastpath, clk_tck, cpu_ticks, dev_counter, fastpath_drops, frames, generator, set_rps,
    start_fastpath, vxlan_frames,
};
use lab::Lab;

#[derive(Parser, Debug)]
#[command(
    about = "fastpath cross-node benchmark: the sending node, fastpath vs the Linux VXLAN path"
)]
struct Args {
    /// Seconds of measurement per throughput run (after 1 s of warm-up), and of the CPU trial.
    #[arg(long, default_value_t = 4)]
    secs: u64,
    /// Repetitions per system (interleaved).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long, default_value_t = 1)]
    gen_core: usize,
    #[arg(long, default_value_t = 0)]
    fwd_core: usize,
    /// Frame size the pod sends, FCS included (64–1468: the pod MTU is the underlay's 1500 less
    /// the 50 bytes of VXLAN headers).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(64..=1468))]
    size: u16,
    /// Paced rate (packets/s) of the CPU-per-packet trial; 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    cpu_rate: u64,
    /// Systems to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fastpath,fastpath-policy,fastpath-clusterip,fastpath-generic,fastpath-rt,fastpath-txflush,kernel-vxlan"
    )]
    systems: Vec<String>,
    /// `send`: the sending node's work (encap); `receive`: the receiving node's (decap).
    #[arg(long, default_value = "send", value_parser = ["send", "receive"])]
    direction: String,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const SINK_IP: &str = "10.77.2.12";
const VIP: &str = "10.96.77.10";

/// The receiving node: an underlay address, no pods; its NIC gets the sink.
fn receiver_yaml(tag: &str) -> String {
    format!(
        "node:\n  name: {tag}b\n  netns: {tag}b\n  router_ip: 10.77.2.1\n  pod_cidr: 10.77.2.0/24\n  underlay: {{ device: eth1, address: 192.168.77.2/24, fabric_netns: {tag}f }}\npods: []\n"
    )
}

/// The MAC of the kernel node's VXLAN device: the inner destination MAC the receiving-node
/// frames carry (fastpath does not check it; Linux delivers only frames addressed to it).
const KERNEL_OVERLAY_MAC: &str = "02:00:00:77:00:03";

/// A node `n` under test (`a` for fastpath, `k` for the kernel) with pod `gen` at
/// 10.77.<c>.11 (the sender, or with `--direction receive` the receiver).
fn sender_yaml(tag: &str, n: &str, c: u8, datapath: &str, extra: &str) -> String {
    format!(
        "node:\n  name: {tag}{n}\n  netns: {tag}{n}\n  router_ip: 10.77.{c}.1\n  pod_cidr: 10.77.{c}.0/24\n  underlay: {{ device: eth1, address: 192.168.77.{c}/24, fabric_netns: {tag}f, overlay_mac: \"{KERNEL_OVERLAY_MAC}\" }}\n\
         datapath:\n  queues: 1\n{datapath}\
         pods:\n  - {{ name: gen, ip: 10.77.{c}.11, mac: \"0a:58:0a:4d:{c:02x}:0b\", lxc: lxc-gen, netns: {tag}{n}-gen, labels: {{ app: gen }} }}\n\
         remote_nodes:\n  - name: {tag}b\n    ip: 192.168.77.2\n    pod_cidr: 10.77.2.0/24\n    pods:\n      - {{ name: sink, ip: {SINK_IP}, labels: {{ app: sink }} }}\n{extra}"
    )
}

/// With `--direction receive`: an ingress policy selecting the receiving pod.
const POLICY_IN: &str = "policies:\n  - kind: CiliumNetworkPolicy\n    metadata: { name: sink-to-gen, namespace: default }\n    spec:\n      endpointSelector: { matchLabels: { app: gen } }\n      ingress:\n        - fromEndpoints: [{ matchLabels: { app: sink } }]\n          toPorts: [{ ports: [{ port: \"9\", protocol: UDP }] }]\n";

const POLICY: &str = "policies:\n  - kind: CiliumNetworkPolicy\n    metadata: { name: gen-to-sink, namespace: default }\n    spec:\n      endpointSelector: { matchLabels: { app: gen } }\n      egress:\n        - toEndpoints: [{ matchLabels: { app: sink } }]\n          toPorts: [{ ports: [{ port: \"9\", protocol: UDP }] }]\n";

fn service() -> String {
    format!(
        "services:\n  - name: sink\n    type: ClusterIP\n    cluster_ip: {VIP}\n    ports: [{{ port: 9, protocol: UDP }}]\n    backends: [{{ ip: {SINK_IP} }}]\n"
    )
}

/// One system under test: its node, and what the generator sends there.
struct System {
    name: String,
    /// Its forwarding runs in a device's softirq (the kernel, or fastpath's tc datapath):
    /// RPS moves that to the forwarder core.
    softirq: bool,
    /// fastpath: its config; kernel: none.
    cfg: Option<PathBuf>,
    node_name: String,
    node_ns: String,
    gen_ns: String,
    /// The generator's device in `gen_ns`.
    gen_dev: &'static str,
    frames: Vec<Vec<u8>>,
    /// Receiving-node runs: the sink on this system's pod (else the remote node's); systems
    /// on one node share it.
    sink: Option<Arc<xdp_redirect::Sink>>,
    receive: bool,
}

impl System {
    fn count(&self, bed: &Bed) -> anyhow::Result<u64> {
        Ok(self.sink.as_deref().unwrap_or(&bed.sink).count()?)
    }
}

#[derive(serde::Serialize, Debug, Clone)]
struct Run {
    system: String,
    rep: usize,
    offered_pps: f64,
    received_pps: f64,
    /// Frames the unpaced run lost (sent − received, exact, warm-up included), and the drops
    /// each stage counted meanwhile.
    lost: u64,
    drops: Vec<(String, u64)>,
    /// The paced trial: rate, sent, received, CPU µs per received packet over all cores, and
    /// per core.
    cpu: Option<CpuTrial>,
}

#[derive(serde::Serialize, Debug, Clone)]
struct CpuTrial {
    rate_pps: u64,
    sent: u64,
    received: u64,
    us_per_packet: f64,
    /// Non-idle share of each core during the trial, %.
    busy_pct: Vec<f64>,
    drops: Vec<(String, u64)>,
}

/// Non-idle and total jiffies of every core (`cpu0`, `cpu1`, …).
fn per_core() -> Vec<(u64, u64)> {
    (0..)
        .map_while(|c| cpu_ticks(&format!("cpu{c}")))
        .map(|f| {
            let total: u64 = f.iter().take(8).sum();
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            let steal = f.get(7).copied().unwrap_or(0);
            (total - idle - steal, total)
        })
        .collect()
}

/// One send: rates over its measured window (after the warm-up); exact counts of the whole
/// send (warm-up included, until everything sent landed) and the drops each stage counted
/// over the same span; (busy, total) jiffies per core over the measured window.
struct Window {
    offered_pps: f64,
    received_pps: f64,
    sent: u64,
    received: u64,
    drops: Vec<(String, u64)>,
    busy: Vec<(u64, u64)>,
}

struct Bed {
    /// The remote node's NIC sink (sending-node runs).
    sink: xdp_redirect::Sink,
    gen_core: usize,
    fwd_core: usize,
}

impl Bed {
    fn start(&self, s: &System) -> anyhow::Result<Option<Fastpath>> {
        if s.softirq {
            self.rps(s, 1 << self.fwd_core)?;
        }
        if let Some(cfg) = &s.cfg {
            return Ok(Some(start_fastpath(
                cfg,
                &s.node_name,
                &[self.fwd_core],
                false,
                Vec::new(),
            )?));
        }
        Ok(None)
    }

    fn stop(&self, s: &System) -> anyhow::Result<()> {
        if s.softirq {
            self.rps(s, 0)?;
        }
        Ok(())
    }

    /// RPS on the node's receiving device (the lxc when sending, the NIC when receiving):
    /// its forwarding softirq (the kernel's, or the tc datapath's) on the forwarder's core.
    fn rps(&self, s: &System, mask: u64) -> anyhow::Result<()> {
        set_rps(
            &s.node_ns,
            if s.receive { "eth1" } else { "lxc-gen" },
            1,
            mask,
        )
    }

    /// Send at `rate` (0: unpaced) for `secs` after `warm` seconds.
    fn send(
        &self,
        s: &System,
        rate: f64,
        warm: f64,
        secs: f64,
        sleep: bool,
    ) -> anyhow::Result<Window> {
        let (d0, r_start) = (self.drops(s)?, s.count(self)?);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let g = {
            let (ns, dev, f, st, n, core) = (
                s.gen_ns.clone(),
                s.gen_dev,
                s.frames.clone(),
                stop.clone(),
                sent.clone(),
                self.gen_core,
            );
            std::thread::spawn(move || generator(ns, dev, core, f, 1, rate, st, n, sleep))
        };
        std::thread::sleep(Duration::from_secs_f64(warm));
        let (s0, r0, c0, t0) = (
            sent.load(Ordering::Relaxed),
            s.count(self)?,
            per_core(),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (s1, r1, c1, dt) = (
            sent.load(Ordering::Relaxed),
            s.count(self)?,
            per_core(),
            t0.elapsed(),
        );
        stop.store(true, Ordering::Relaxed);
        g.join().expect("generator")?;
        // What was sent is in flight for a few microseconds: let it land.
        std::thread::sleep(Duration::from_millis(100));
        let (s2, r2) = (sent.load(Ordering::Relaxed), s.count(self)?);
        let d1 = self.drops(s)?;
        Ok(Window {
            offered_pps: (s1 - s0) as f64 / dt.as_secs_f64(),
            received_pps: (r1 - r0) as f64 / dt.as_secs_f64(),
            sent: s2,
            received: r2 - r_start,
            drops: d1
                .iter()
                .zip(&d0)
                .map(|((n, b), (_, a))| (n.clone(), b.saturating_sub(*a)))
                .filter(|(_, d)| *d > 0)
                .collect(),
            busy: c1
                .iter()
                .zip(&c0)
                .map(|(b, a)| (b.0 - a.0, b.1 - a.1))
                .collect(),
        })
    }

    /// Drops by stage so far: fastpath's, and the kernel node's lxc and NIC counters.
    fn drops(&self, s: &System) -> anyhow::Result<Vec<(String, u64)>> {
        let mut v = if s.cfg.is_some() {
            fastpath_drops(&s.node_name)?
        } else {
            Vec::new()
        };
        // lxc-gen's rx_dropped under fastpath counts the frames RX_FULL + XSK_DROP count (the
        // redirect into a socket without room): a stage of its own only for the kernel.
        let devs: &[(&str, &str)] = match (s.cfg.is_some(), s.receive) {
            (true, false) => &[("eth1", "tx_dropped")],
            (false, false) => &[("lxc-gen", "rx_dropped"), ("eth1", "tx_dropped")],
            // Receiving: eth1's rx_dropped under fastpath is RX_FULL + XSK_DROP again.
            (true, true) => &[("lxc-gen", "tx_dropped")],
            (false, true) => &[("eth1", "rx_dropped"), ("lxc-gen", "tx_dropped")],
        };
        for (dev, c) in devs {
            v.push((format!("{dev} {c}"), dev_counter(&s.node_ns, dev, c)?));
        }
        Ok(v)
    }
}

fn by_stage(d: &[(String, u64)]) -> String {
    if d.is_empty() {
        return "no drop counted".into();
    }
    d.iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if sys::euid() != 0 {
        bail!("needs root (namespaces, XDP, AF_XDP)");
    }
    for s in &a.systems {
        if ![
            "fastpath",
            "fastpath-policy",
            "fastpath-clusterip",
            "fastpath-generic",
            "fastpath-rt",
            "fastpath-txflush",
            "fastpath-tc",
            "fastpath-tc-clusterip",
            "kernel-vxlan",
        ]
        .contains(&s.as_str())
        {
            bail!(
                "unknown system `{s}` (fastpath, fastpath-policy, fastpath-clusterip, fastpath-generic, fastpath-rt, fastpath-txflush, fastpath-tc, fastpath-tc-clusterip, kernel-vxlan)"
            );
        }
    }
    let receive = a.direction == "receive";
    if receive && a.systems.iter().any(|s| s.ends_with("clusterip")) {
        bail!(
            "fastpath-clusterip measures the sending node only (drop it with --direction receive)"
        );
    }
    let tag = format!("fpx{}", std::process::id() % 100000);
    // The receiver first: it creates the fabric, which goes last.
    let rcfg = Config::parse(&receiver_yaml(&tag), "receiver")?;
    let _rlab = Lab::up(&rcfg, 1)?;
    let rns = rcfg.node.netns.clone().unwrap();
    let sink = std::thread::spawn(move || -> anyhow::Result<xdp_redirect::Sink> {
        sys::enter_netns(&rns)?;
        Ok(xdp_redirect::Sink::attach("eth1")?)
    })
    .join()
    .expect("sink thread")?;

    let fp_base = sender_yaml(&tag, "a", 1, "", "");
    let fcfg = Config::parse(&fp_base, "fastpath node")?;
    let _flab = Lab::up(&fcfg, 1)?;
    let kcfg = Config::parse(&sender_yaml(&tag, "k", 3, "", ""), "kernel node")?;
    let _klab = Lab::up_kernel_vxlan(&kcfg)?;

    let tmp = std::env::temp_dir();
    let mut files = Vec::new();
    let mut systems = Vec::new();
    let mut pod_sinks: std::collections::HashMap<String, Arc<xdp_redirect::Sink>> =
        std::collections::HashMap::new();
    for name in &a.systems {
        let (cfg, yaml) = match name.as_str() {
            "kernel-vxlan" => (&kcfg, None),
            "fastpath" => (&fcfg, Some(fp_base.clone())),
            "fastpath-policy" => (
                &fcfg,
                Some(sender_yaml(
                    &tag,
                    "a",
                    1,
                    "",
                    if receive { POLICY_IN } else { POLICY },
                )),
            ),
            "fastpath-clusterip" => (&fcfg, Some(sender_yaml(&tag, "a", 1, "", &service()))),
            "fastpath-generic" => (
                &fcfg,
                Some(sender_yaml(&tag, "a", 1, "  xdp_mode: generic\n", "")),
            ),
            "fastpath-rt" => (
                &fcfg,
                Some(sender_yaml(&tag, "a", 1, "  rt_priority: 10\n", "")),
            ),
            "fastpath-txflush" => (
                &fcfg,
                Some(sender_yaml(&tag, "a", 1, "  tx_flush_us: 50\n", "")),
            ),
            "fastpath-tc" => (&fcfg, Some(sender_yaml(&tag, "a", 1, "  attach: tc\n", ""))),
            "fastpath-tc-clusterip" => (
                &fcfg,
                Some(sender_yaml(&tag, "a", 1, "  attach: tc\n", &service())),
            ),
            _ => unreachable!("checked"),
        };
        let path = match yaml {
            Some(y) => {
                Config::parse(&y, name).with_context(|| format!("{name} config"))?;
                let p = tmp.join(format!("{tag}-{name}.yaml"));
                std::fs::write(&p, y)?;
                files.push(p.clone());
                Some(p)
            }
            None => None,
        };
        let node_ns = cfg.node.netns.clone().unwrap();
        let pod_ns = cfg.pods[0].netns.clone().unwrap();
        let lxc = fastpath::daemon::link_info_in(&node_ns, "lxc-gen")?.mac;
        let dst: std::net::Ipv4Addr = if name.ends_with("clusterip") {
            VIP.parse()?
        } else {
            SINK_IP.parse()?
        };
        if receive {
            // The remote pod's identity, as the node under test knows it: the VNI.
            let sink_ip: std::net::Ipv4Addr = SINK_IP.parse()?;
            let vni = control::datapath::node_ipcache(&fcfg)
                .iter()
                .find(|(p, _)| p.addr == sink_ip && p.len == 32)
                .map(|(_, v)| v.sec_identity)
                .context("the remote pod in the node's ipcache")?;
            let remote_ns = rcfg.node.netns.clone().unwrap();
            let inner = frames(
                a.size as usize,
                KERNEL_OVERLAY_MAC.parse()?,
                "0a:58:0a:4d:02:0c".parse()?,
                sink_ip.octets(),
                cfg.pods[0].ip.octets(),
            );
            let outer = fastpath::wire::vxlan::Outer {
                dst_mac: fastpath::daemon::link_info_in(&node_ns, "eth1")?.mac,
                src_mac: fastpath::daemon::link_info_in(&remote_ns, "eth1")?.mac,
                src_ip: [192, 168, 77, 2],
                dst_ip: cfg.node.underlay.as_ref().unwrap().address.addr.octets(),
                ip_id: 0,
                sport: 0,
                dport: 8472,
                vni,
            };
            let sink = match pod_sinks.get(&pod_ns) {
                Some(s) => Arc::clone(s),
                None => {
                    let ns = pod_ns.clone();
                    let s = std::thread::spawn(move || -> anyhow::Result<xdp_redirect::Sink> {
                        sys::enter_netns(&ns)?;
                        Ok(xdp_redirect::Sink::attach("eth0")?)
                    })
                    .join()
                    .expect("sink thread")
                    .with_context(|| format!("the sink on eth0 in {pod_ns}"))?;
                    let s = Arc::new(s);
                    pod_sinks.insert(pod_ns.clone(), Arc::clone(&s));
                    s
                }
            };
            systems.push(System {
                name: name.clone(),
                softirq: path.is_none() || name.starts_with("fastpath-tc"),
                cfg: path,
                node_name: cfg.node.name.clone(),
                node_ns,
                gen_ns: remote_ns,
                gen_dev: "eth1",
                frames: vxlan_frames(&inner, outer),
                sink: Some(sink),
                receive,
            });
            continue;
        }
        systems.push(System {
            name: name.clone(),
            softirq: path.is_none() || name.starts_with("fastpath-tc"),
            cfg: path,
            node_name: cfg.node.name.clone(),
            node_ns,
            gen_ns: pod_ns,
            gen_dev: "eth0",
            frames: frames(
                a.size as usize,
                lxc,
                cfg.pods[0].mac,
                cfg.pods[0].ip.octets(),
                dst.octets(),
            ),
            sink: None,
            receive,
        });
    }
    let bed = Bed {
        sink,
        gen_core: a.gen_core,
        fwd_core: a.fwd_core,
    };

    let mut runs = Vec::new();
    for rep in 0..a.reps {
        for s in &systems {
            let fp = bed.start(s)?;
            // A few paced frames first: ARP for the receiver, the first conntrack entries.
            bed.send(s, 1000.0, 0.3, 0.2, false)?;
            let w = bed.send(s, 0.0, 1.0, a.secs as f64, false)?;
            let cpu = if a.cpu_rate > 0 {
                let c = bed.send(s, a.cpu_rate as f64, 0.5, a.secs as f64, true)?;
                let busy: u64 = c.busy.iter().map(|b| b.0).sum();
                Some(CpuTrial {
                    rate_pps: a.cpu_rate,
                    sent: c.sent,
                    received: c.received,
                    us_per_packet: busy as f64 / clk_tck() / c.received.max(1) as f64 * 1e6,
                    busy_pct: c
                        .busy
                        .iter()
                        .map(|b| b.0 as f64 / b.1.max(1) as f64 * 100.0)
                        .collect(),
                    drops: c.drops,
                })
            } else {
                None
            };
            drop(fp);
            bed.stop(s)?;
            let r = Run {
                system: s.name.clone(),
                rep,
                offered_pps: w.offered_pps,
                received_pps: w.received_pps,
                lost: w.sent.saturating_sub(w.received),
                drops: w.drops,
                cpu,
            };
            eprintln!(
                "{:<18} rep {} offered {:>9.0} pps received {:>9.0} pps, lost {} ({}){}",
                r.system,
                rep,
                r.offered_pps,
                r.received_pps,
                r.lost,
                by_stage(&r.drops),
                r.cpu.as_ref().map_or(String::new(), |c| format!(
                    "; at {} pps: {} of {} received, {:.2} µs CPU per packet, cores busy {:?} %",
                    c.rate_pps,
                    c.received,
                    c.sent,
                    c.us_per_packet,
                    c.busy_pct.iter().map(|p| p.round()).collect::<Vec<_>>()
                ))
            );
            runs.push(r);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    for f in &files {
        let _ = std::fs::remove_file(f);
    }

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    println!(
        "\ncross-node ({} node) {} B UDP pod → remote pod, VXLAN, 1 queue, AF_XDP copy mode (veth); XDP native unless generic",
        if receive { "receiving" } else { "sending" },
        a.size
    );
    println!(
        "machine: {} cores, kernel {kernel}, loadavg {}",
        std::thread::available_parallelism()?.get(),
        load.trim()
    );
    println!(
        "generator core {}, forwarder core {}, {} s x {} reps, interleaved; CPU trial at {} pps (all cores, softirq and the generator included)\n",
        a.gen_core, a.fwd_core, a.secs, a.reps, a.cpu_rate
    );
    println!(
        "| system | received pps min | median | max | offered pps median | drops by stage (last rep) | CPU µs/packet median | delivered in CPU trial |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    };
    let mut meds = std::collections::BTreeMap::new();
    for s in &systems {
        let of = |f: &dyn Fn(&Run) -> Option<f64>| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.system == s.name)
                .filter_map(f)
                .collect()
        };
        let mut rx = of(&|r| Some(r.received_pps));
        let mut off = of(&|r| Some(r.offered_pps));
        let mut cpu = of(&|r| r.cpu.as_ref().map(|c| c.us_per_packet));
        let (sent, got) = runs
            .iter()
            .filter(|r| r.system == s.name)
            .filter_map(|r| r.cpu.as_ref())
            .fold((0, 0), |(a, b), c| (a + c.sent, b + c.received));
        let m = med(&mut rx);
        meds.insert(s.name.clone(), m);
        let last = runs.iter().rev().find(|r| r.system == s.name);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {got} of {sent} |",
            s.name,
            rx[0],
            m,
            rx[rx.len() - 1],
            med(&mut off),
            last.map_or(String::new(), |r| format!(
                "lost {}: {}",
                r.lost,
                by_stage(&r.drops)
            )),
            med(&mut cpu),
        );
    }
    if let (Some(f), Some(k)) = (meds.get("fastpath"), meds.get("kernel-vxlan")) {
        println!("\nfastpath / kernel VXLAN path = {:.2}", f / k);
    }
    if let Some(p) = a.json {
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))?,
        )?;
    }
    Ok(())
}
