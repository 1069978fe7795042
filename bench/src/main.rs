//! Same-node 64-byte UDP forwarding, side by side, in one run:
//! - `fastpath`: the full pipeline (`fastpath run`);
//! - `bare`: fastpath's bare AF_XDP forwarding (`--bare`: no pipeline), the ceiling on these veths;
//! - `kernel`: Linux's own IPv4 routing between the same pods (ip_forward=1, RPS moves the
//!   forwarding softirq to the forwarder's core so it gets its own core too).
//!
//! Generator: an AF_XDP TX loop on the sender pod's eth0 (64 flows), pinned to `--gen-core`.
//! Receiver: an XDP program on the receiver pod's eth0 that counts and drops. The forwarder
//! (fastpath's worker, or the kernel's softirq via RPS) runs on `--fwd-core`. Each mode runs
//! `--reps` times, interleaved; the table shows min/median/max of received pps.
//! Everything happens in namespaces this program creates and deletes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use control::config::Config;
use control::maps::MacAddr;
use fastpath::wire::{EtherType, ethernet, ipv4};
use fastpath::xsk::{Socket, Umem, sys};
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
    /// Modes to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "fastpath,bare,kernel")]
    modes: Vec<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const FLOWS: u16 = 64;

fn config(name: &str) -> String {
    format!(
        "node:\n  name: {name}\n  netns: {name}-n\n  router_ip: 10.250.0.1\ndatapath:\n  queues: 1\n  poll: busy\npods:\n\
         \x20 - {{ name: gen, ip: 10.250.1.11, mac: \"0a:58:0a:fa:01:0b\", lxc: lxc-gen, netns: {name}-gen }}\n\
         \x20 - {{ name: sink, ip: 10.250.1.12, mac: \"0a:58:0a:fa:01:0c\", lxc: lxc-sink, netns: {name}-sink }}\n"
    )
}

/// Frames of 60 bytes (+ FCS = 64 on a wire): UDP gen → sink, `FLOWS` source ports.
fn frames(dst_mac: MacAddr, src_mac: MacAddr, src: [u8; 4], dst: [u8; 4]) -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            let mut b = vec![0u8; 60];
            ethernet::emit(&mut b, dst_mac, src_mac, EtherType::Ipv4);
            ipv4::emit(&mut b[14..], src, dst, ipv4::PROTO_UDP, 64, 26);
            let sport = 10000 + i;
            b[34..36].copy_from_slice(&sport.to_be_bytes());
            b[36..38].copy_from_slice(&9u16.to_be_bytes());
            b[38..40].copy_from_slice(&26u16.to_be_bytes());
            b
        })
        .collect()
}

/// AF_XDP TX loop in `ns` on eth0 until `stop`; counts frames the kernel completed.
fn generator(
    ns: String,
    core: usize,
    frames: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    sys::enter_netns(&ns)?;
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
    let ifindex = sys::if_index("eth0").context("eth0")?;
    let mut umem = Umem::new(4096, 2048)?;
    let mut sock = Socket::new(&umem.share(), ifindex, 0, 2048, None, true)?;
    let mut i = 0usize;
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            let Some(mut f) = umem.alloc() else { break };
            umem.write(&mut f, &frames[i % frames.len()]);
            i += 1;
            if let Err(f) = sock.send(f) {
                umem.release(f);
                break;
            }
        }
        sock.flush();
        done += sock.complete(&mut umem, 2048) as u64;
        sent.store(done, Ordering::Relaxed);
    }
    Ok(())
}

/// A running fastpath and its (temporary) state directory.
struct Fastpath(Child, std::path::PathBuf);
impl Drop for Fastpath {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn start_fastpath(
    cfg_path: &std::path::Path,
    node: &str,
    core: usize,
    bare: bool,
) -> anyhow::Result<Fastpath> {
    let bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("fastpath");
    let state = std::env::temp_dir().join(format!("fastpath-bench-{node}-state"));
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .arg("--config")
        .arg(cfg_path)
        .arg("--state-dir")
        .arg(&state)
        .args(["--cores", &core.to_string()]);
    if bare {
        cmd.arg("--bare");
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("{}", bin.display()))?;
    let fp = Fastpath(child, state);
    let sock = fastpath::api::socket_path(node);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fastpath::api::status(&sock).is_err() {
        if Instant::now() > deadline {
            bail!("fastpath did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(fp)
}

#[derive(serde::Serialize, Debug, Clone)]
struct Run {
    mode: String,
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
    let yaml = config(&name);
    let cfg = Config::parse(&yaml, "bench")?;
    let _lab = Lab::up(&cfg, 1)?;
    let cfg_path = std::env::temp_dir().join(format!("{name}.yaml"));
    std::fs::write(&cfg_path, &yaml)?;
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

    let mut runs = Vec::new();
    for rep in 0..a.reps {
        for mode in &a.modes {
            let _fp = match mode.as_str() {
                "fastpath" => Some(start_fastpath(
                    &cfg_path,
                    &cfg.node.name,
                    a.fwd_core,
                    false,
                )?),
                "bare" => Some(start_fastpath(&cfg_path, &cfg.node.name, a.fwd_core, true)?),
                "kernel" => {
                    in_ns(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
                    let mask = format!("{:x}", 1u64 << a.fwd_core);
                    in_ns(
                        &node,
                        &[
                            "sh",
                            "-c",
                            &format!("echo {mask} > /sys/class/net/lxc-gen/queues/rx-0/rps_cpus"),
                        ],
                    )?;
                    None
                }
                m => bail!("unknown mode {m}"),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicU64::new(0));
            let g = {
                let (ns, f, s, n) = (
                    gen_ns.clone(),
                    gen_frames.clone(),
                    stop.clone(),
                    sent.clone(),
                );
                let core = a.gen_core;
                std::thread::spawn(move || generator(ns, core, f, s, n))
            };
            std::thread::sleep(Duration::from_secs(1));
            let (s0, r0, t0) = (sent.load(Ordering::Relaxed), sink.count()?, Instant::now());
            std::thread::sleep(Duration::from_secs(a.secs));
            let (s1, r1, dt) = (
                sent.load(Ordering::Relaxed),
                sink.count()?,
                t0.elapsed().as_secs_f64(),
            );
            stop.store(true, Ordering::Relaxed);
            g.join().expect("generator")?;
            if mode == "kernel" {
                in_ns(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
                in_ns(
                    &node,
                    &[
                        "sh",
                        "-c",
                        "echo 0 > /sys/class/net/lxc-gen/queues/rx-0/rps_cpus",
                    ],
                )?;
            }
            let r = Run {
                mode: mode.clone(),
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
    let _ = std::fs::remove_file(&cfg_path);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    println!(
        "\nsame-node 64 B UDP, {} flows, 1 queue, native XDP, AF_XDP copy mode (veth)",
        FLOWS
    );
    println!(
        "machine: {} cores, kernel {kernel}, loadavg {}",
        std::thread::available_parallelism()?.get(),
        load.trim()
    );
    println!(
        "generator core {}, forwarder core {}, {} s x {} reps, medians of received pps\n",
        a.gen_core, a.fwd_core, a.secs, a.reps
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
    if let Some(p) = a.json {
        std::fs::write(&p, serde_json::to_string_pretty(&runs)?)?;
    }
    Ok(())
}
