//! Bulk TCP pod → pod on one node with iperf3 (Debian's), side by side in one run:
//! - `fastpath`: the full pipeline (adaptive poll), one worker on `--fwd-core`; the pods'
//!   eth0 have TX checksum offload off, as AF_XDP needs (the frames reach the socket with
//!   their checksums finished), so the pods' TCP sends MSS-sized segments (no TSO, and GSO
//!   segments in the sender's stack before the veth);
//! - `kernel`: Linux's IPv4 routing between the same pods with the same offloads (TX
//!   checksum off on eth0): what the kernel does with the setting fastpath needs;
//! - `kernel-gso`: the same kernel routing with the pods' default offloads (TX checksum on:
//!   TSO/GSO super-packets of up to 64 KB cross the veths and the router whole). This is
//!   how the kernel is usually run, and where it is expected to win: fastpath forwards every
//!   1500-byte frame on its own.
//!
//! Each run: `iperf3 -c` in the client pod for `--secs` (1 stream unless `--streams`),
//! pinned to `--app-core` with the server; the result is iperf3's receiver-side bits/s
//! (`-J`, `end.sum_received`) and its retransmits. Modes are interleaved per repetition; the
//! table gives median, min and max. Everything happens in namespaces this program creates
//! and deletes; iperf3 runs are bounded by `--secs` (and a 30 s timeout).
//!
//! `fastpath-bench-tcp [--secs 5] [--reps 3] [--streams 1] [--modes fastpath,kernel,kernel-gso]
//! [--json FILE]`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use control::config::Config;
use fastpath::xsk::sys;
use fastpath_bench::{Fastpath, single_node_yaml, start_fastpath};
use lab::{Lab, in_ns};

#[derive(Parser, Debug)]
#[command(
    about = "fastpath TCP throughput (iperf3): fastpath vs kernel routing, with and without GSO/TSO"
)]
struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Repetitions per mode (interleaved).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Parallel TCP streams (`iperf3 -P`).
    #[arg(long, default_value_t = 1)]
    streams: u32,
    /// Modes, in order: fastpath, kernel, kernel-gso.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fastpath,kernel,kernel-gso"
    )]
    modes: Vec<String>,
    #[arg(long, default_value_t = 0)]
    fwd_core: usize,
    /// Core of iperf3's client and server.
    #[arg(long, default_value_t = 1)]
    app_core: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

const SERVER_IP: &str = "10.252.1.12";

fn config(name: &str) -> String {
    single_node_yaml(name, 252, "  queues: 1\n", &[("cli", 11), ("srv", 12)])
}

/// The iperf3 server, stopped on drop.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(serde::Serialize, Debug, Clone)]
struct Run {
    mode: String,
    rep: usize,
    gbit_s: f64,
    retransmits: u64,
}

fn offloads(pods: &[String], on: bool) -> anyhow::Result<()> {
    for ns in pods {
        in_ns(
            ns,
            &["ethtool", "-K", "eth0", "tx", if on { "on" } else { "off" }],
        )?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if sys::euid() != 0 {
        bail!("needs root (namespaces, XDP, AF_XDP)");
    }
    for m in &a.modes {
        if !["fastpath", "kernel", "kernel-gso"].contains(&m.as_str()) {
            bail!("unknown mode `{m}` (fastpath, kernel, kernel-gso)");
        }
    }
    let name = format!("fpt{}", std::process::id() % 100000);
    let yaml = config(&name);
    let cfg = Config::parse(&yaml, "bench")?;
    let _lab = Lab::up(&cfg, 1)?;
    let cfg_path = std::env::temp_dir().join(format!("{name}.yaml"));
    std::fs::write(&cfg_path, &yaml)?;
    let node = cfg.node.netns.clone().unwrap();
    let pods: Vec<String> = cfg.pods.iter().map(|p| p.netns.clone().unwrap()).collect();
    let app = a.app_core.to_string();
    let _server = Server(
        Command::new("ip")
            .args(["netns", "exec", &pods[1], "taskset", "-c", &app])
            .args(["iperf3", "-s", "-B", SERVER_IP])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 -s (scripts/setup.sh installs iperf3)")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut runs = Vec::new();
    for rep in 0..a.reps {
        for mode in &a.modes {
            let fp: Option<Fastpath> = if mode == "fastpath" {
                Some(start_fastpath(
                    &cfg_path,
                    &cfg.node.name,
                    &[a.fwd_core],
                    false,
                    Vec::new(),
                )?)
            } else {
                fastpath_bench::kernel_forwarding(&node)?;
                if mode == "kernel-gso" {
                    offloads(&pods, true)?;
                }
                None
            };
            let t0 = Instant::now();
            let out = Command::new("timeout")
                .args(["30", "ip", "netns", "exec", &pods[0], "taskset", "-c", &app])
                .args(["iperf3", "-J", "-c", SERVER_IP, "-t"])
                .arg(a.secs.to_string())
                .args(["-P", &a.streams.to_string()])
                .output()?;
            drop(fp);
            if mode != "fastpath" {
                in_ns(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
                if mode == "kernel-gso" {
                    offloads(&pods, false)?;
                }
            }
            let j: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
                format!(
                    "iperf3 output ({mode}): {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
            if let Some(e) = j["error"].as_str() {
                bail!("iperf3 ({mode}): {e}");
            }
            let bps = j["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("end.sum_received.bits_per_second")?;
            let r = Run {
                mode: mode.clone(),
                rep,
                gbit_s: bps / 1e9,
                retransmits: j["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            };
            eprintln!(
                "{:<10} rep {} {:.2} Gbit/s, {} retransmits ({:.1} s)",
                r.mode,
                rep,
                r.gbit_s,
                r.retransmits,
                t0.elapsed().as_secs_f64()
            );
            runs.push(r);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let _ = std::fs::remove_file(&cfg_path);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nsame-node TCP pod → pod, iperf3 {} s, {} stream(s); forwarder core {}, iperf3 on core {}; loadavg {}\n",
        a.secs,
        a.streams,
        a.fwd_core,
        a.app_core,
        load.trim()
    );
    println!("| mode | Gbit/s median | min | max | retransmits (sum) |");
    println!("|---|---|---|---|---|");
    for m in &a.modes {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|r| &r.mode == m)
            .map(|r| r.gbit_s)
            .collect();
        v.sort_by(f64::total_cmp);
        let rt: u64 = runs
            .iter()
            .filter(|r| &r.mode == m)
            .map(|r| r.retransmits)
            .sum();
        println!(
            "| {m} | {:.2} | {:.2} | {:.2} | {rt} |",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
    if let Some(p) = a.json {
        std::fs::write(&p, serde_json::to_string_pretty(&runs)?)?;
    }
    Ok(())
}
