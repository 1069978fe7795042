//! What the benchmark binaries share: starting a `fastpath run` next to them and stopping
//! it, the UDP frames and the AF_XDP generator that sends them, and reading /proc/stat.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use control::maps::MacAddr;
use fastpath::wire::{EtherType, ethernet, ipv4, vxlan};
use fastpath::xsk::{Socket, Umem, sys};

/// UDP flows (source ports) the generator cycles through.
pub const FLOWS: u16 = 64;

/// A running `fastpath run`, stopped (SIGTERM, waited for) on drop, which then removes its
/// state directory and the other files given to [`start_fastpath`].
#[derive(Debug)]
pub struct Fastpath {
    child: Child,
    cleanup: Vec<PathBuf>,
}

impl Fastpath {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Fastpath {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        for p in &self.cleanup {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

/// Start the `fastpath` binary beside the running one on `cfg` with one worker per core of
/// `cores` (`--bare`: no pipeline), and wait (at most 10 s) until node `node`'s control
/// socket answers. `cleanup` is removed when it stops, with its state directory.
pub fn start_fastpath(
    cfg: &Path,
    node: &str,
    cores: &[usize],
    bare: bool,
    mut cleanup: Vec<PathBuf>,
) -> anyhow::Result<Fastpath> {
    let bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("fastpath");
    let state = std::env::temp_dir().join(format!("fastpath-bench-{node}-state"));
    // Conntrack of its own: a table a previous run kept would start the bench non-empty.
    let run = PathBuf::from(format!("/dev/shm/fastpath-bench-{node}-run"));
    let _ = std::fs::remove_dir_all(&run);
    let cores: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .arg("--config")
        .arg(cfg)
        .arg("--state-dir")
        .arg(&state)
        .arg("--run-dir")
        .arg(&run)
        .args(["--queues", &cores.len().to_string()])
        .args(["--cores", &cores.join(",")]);
    if bare {
        cmd.arg("--bare");
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("{}", bin.display()))?;
    cleanup.push(state);
    cleanup.push(run);
    cleanup.push(PathBuf::from(format!("/sys/fs/bpf/fastpath/{node}")));
    let fp = Fastpath { child, cleanup };
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

/// fastpath's drop counters by stage, cumulative over its workers and ports: RX_FULL and
/// XSK_DROP (the kernel's XDP_STATISTICS), TX_FULL, and the pipeline's drops (every reason).
pub fn fastpath_drops(node: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let st = fastpath::api::status(&fastpath::api::socket_path(node))?;
    let (mut tx_full, mut rx_full, mut xsk_drop, mut pipeline) = (0, 0, 0, 0);
    // The tc datapath's drops are the pipeline's too.
    pipeline += st
        .tc
        .iter()
        .flat_map(|t| &t.metrics)
        .filter(|m| m.reason_code != 0)
        .map(|m| m.packets)
        .sum::<u64>();
    for w in &st.workers {
        pipeline += w.drops();
        for p in &w.ports {
            tx_full += p.tx_ring_full;
            rx_full += p.xsk.rx_ring_full;
            xsk_drop += p.xsk.rx_dropped;
        }
    }
    Ok(vec![
        ("RX_FULL".into(), rx_full),
        ("XSK_DROP".into(), xsk_drop),
        ("TX_FULL".into(), tx_full),
        ("pipeline".into(), pipeline),
    ])
}

/// The config of a one-node testbed `name` (namespace `<name>-n`) on network 10.`net`.0.0/16
/// (router 10.`net`.0.1): `datapath` lines (each `  key: value\n`) and one pod per `(name,
/// host)` at 10.`net`.1.`host`, MAC 0a:58:0a:`net`:01:`host`, lxc `lxc-<pod>`, namespace
/// `<name>-<pod>`.
pub fn single_node_yaml(name: &str, net: u8, datapath: &str, pods: &[(&str, u8)]) -> String {
    let mut y = format!(
        "node:\n  name: {name}\n  netns: {name}-n\n  router_ip: 10.{net}.0.1\ndatapath:\n{datapath}pods:\n"
    );
    for (p, h) in pods {
        y += &format!(
            "  - {{ name: {p}, ip: 10.{net}.1.{h}, mac: \"0a:58:0a:{net:02x}:01:{h:02x}\", lxc: lxc-{p}, netns: {name}-{p} }}\n"
        );
    }
    y
}

/// Let the kernel route between the pods of node namespace `ns` (the `kernel` rows):
/// fastpath's guard rules go first — it leaves them when it stops, so that pods stay
/// unreachable through the kernel while it is down (docs/operations.md), which is the
/// opposite of what a kernel row measures — then `ip_forward=1`.
pub fn kernel_forwarding(ns: &str) -> anyhow::Result<()> {
    lab::in_ns(ns, &["ip", "rule", "flush", "protocol", "251"])?;
    lab::in_ns(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

/// RPS on the first `queues` rx queues of `dev` in namespace `ns`: their receive softirq on
/// the cores of `mask` (0: where the frame arrived). How the benches give the kernel's
/// forwarding a core of its own, as fastpath's worker has.
pub fn set_rps(ns: &str, dev: &str, queues: u32, mask: u64) -> anyhow::Result<()> {
    for q in 0..queues {
        lab::in_ns(
            ns,
            &[
                "sh",
                "-c",
                &format!("echo {mask:x} > /sys/class/net/{dev}/queues/rx-{q}/rps_cpus"),
            ],
        )?;
    }
    Ok(())
}

/// A device's counter from /sys/class/net/<dev>/statistics (`rx_dropped`, `tx_dropped`, …)
/// inside namespace `ns`; 0 if it cannot be read.
pub fn dev_counter(ns: &str, dev: &str, counter: &str) -> anyhow::Result<u64> {
    let out = lab::in_ns(
        ns,
        &["cat", &format!("/sys/class/net/{dev}/statistics/{counter}")],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

/// This process's resident memory, KiB (/proc/self/statm).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// xorshift64: the benches' reproducible source of keys (not for anything secret).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The jiffy counters of the /proc/stat line `name` (`cpu` for all CPUs, `cpu0`, …): user,
/// nice, system, idle, iowait, irq, softirq, steal, …; `None` if there is no such line.
pub fn cpu_ticks(name: &str) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let l = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?;
    Some(
        l.split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect(),
    )
}

/// Jiffies per second (`_SC_CLK_TCK`).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Frames of `size` bytes on a wire (FCS included: the frame is 4 bytes shorter), UDP gen →
/// sink, `FLOWS` source ports.
pub fn frames(
    size: usize,
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: [u8; 4],
    dst: [u8; 4],
) -> Vec<Vec<u8>> {
    let len = size - 4;
    let ip_len = (len - 14) as u16;
    (0..FLOWS)
        .map(|i| {
            let mut b = vec![0u8; len];
            ethernet::emit(&mut b, dst_mac, src_mac, EtherType::Ipv4);
            ipv4::emit(
                &mut b[14..],
                src,
                dst,
                ipv4::PROTO_UDP,
                64,
                ip_len as usize - 20,
            );
            let sport = 10000 + i;
            b[34..36].copy_from_slice(&sport.to_be_bytes());
            b[36..38].copy_from_slice(&9u16.to_be_bytes());
            b[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
            b
        })
        .collect()
}

/// `inner` frames (from [`frames`]) as a remote node puts them on the wire: VXLAN over UDP
/// 8472 with `outer`'s addresses and VNI, the outer UDP source port from the inner flow's
/// hash (as Linux and fastpath choose it), so each inner flow keeps one outer flow.
pub fn vxlan_frames(inner: &[Vec<u8>], outer: vxlan::Outer) -> Vec<Vec<u8>> {
    inner
        .iter()
        .map(|f| {
            let mut b = vec![0u8; vxlan::ENCAP_LEN + f.len()];
            let ports = u32::from_be_bytes([f[34], f[35], f[36], f[37]]);
            let mut src = [0u8; 4];
            src.copy_from_slice(&f[26..30]);
            let mut dst = [0u8; 4];
            dst.copy_from_slice(&f[30..34]);
            let o = vxlan::Outer {
                sport: vxlan::flow_src_port(vxlan::flow_hash(src, dst, f[23], ports)),
                ..outer
            };
            vxlan::emit(&mut b, &o, f.len());
            b[vxlan::ENCAP_LEN..].copy_from_slice(f);
            b
        })
        .collect()
}

/// AF_XDP TX loop in `ns` on `dev`'s first `queues` TX queues (a pod's `eth0`; a node's
/// `eth1` to send what a remote node sends) until `stop`, at `rate` frames/s
/// in all (0: as fast as it can);
/// counts frames the kernel completed. `sleep`: when ahead of a paced rate, sleep until the
/// next batch is due instead of spinning (the generator's core then shows only the work of
/// sending, so CPU per packet over all cores means something; batches of up to 64 frames). After `stop` it waits (at most 200 ms) for what it
/// queued to complete, so a trial's count is exact.
#[allow(clippy::too_many_arguments)]
pub fn generator(
    ns: String,
    dev: &str,
    core: usize,
    frames: Vec<Vec<u8>>,
    queues: u32,
    rate: f64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sleep: bool,
) -> anyhow::Result<()> {
    sys::enter_netns(&ns)?;
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
    let ifindex = sys::if_index(dev).context(dev.to_string())?;
    // One socket per TX queue, each with its own UMEM: the veth hands a frame sent on queue
    // q to rx queue q of its peer, so the frames spread over the forwarder's queues.
    let mut socks = Vec::new();
    for q in 0..queues {
        let umem = Umem::new(4096, 2048)?;
        let sock = Socket::new(&umem.share(), ifindex, q, 2048, None, true)?;
        socks.push((umem, sock));
    }
    let mut i = 0usize;
    let (mut done, mut queued) = (0u64, 0u64);
    let t0 = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for (umem, sock) in socks.iter_mut() {
            let allowed = if rate > 0.0 {
                ((t0.elapsed().as_secs_f64() * rate) as u64).saturating_sub(queued)
            } else {
                u64::MAX
            };
            for _ in 0..allowed.min(64) {
                let Some(mut f) = umem.alloc() else { break };
                umem.write(&mut f, &frames[i % frames.len()]);
                if let Err(f) = sock.send(f) {
                    umem.release(f);
                    break;
                }
                i += 1;
                queued += 1;
            }
            sock.flush();
            done += sock.complete(umem, 2048) as u64;
        }
        sent.store(done, Ordering::Relaxed);
        if sleep && rate > 0.0 {
            let due = (queued + 64) as f64 / rate;
            let ahead = due - t0.elapsed().as_secs_f64();
            if ahead > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(ahead.min(0.002)));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_millis(200);
    while done < queued && Instant::now() < deadline {
        for (umem, sock) in socks.iter_mut() {
            sock.flush();
            done += sock.complete(umem, 2048) as u64;
        }
    }
    sent.store(done, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    /// What the receiving-node bench sends: each frame is the inner frame behind 50 bytes of
    /// VXLAN that fastpath's parser takes (I flag, the VNI), to UDP 8472, with a valid outer
    /// IPv4 checksum; flows get different outer source ports, a flow always the same one.
    #[test]
    fn vxlan_frames_wrap_the_inner_frames_as_a_remote_node_does() {
        use fastpath::wire::vxlan;
        let mac = |b| control::maps::MacAddr([2, 0, 0, 0, 0, b]);
        let inner = super::frames(64, mac(1), mac(2), [10, 77, 2, 9], [10, 77, 1, 11]);
        let outer = vxlan::Outer {
            dst_mac: mac(3),
            src_mac: mac(4),
            src_ip: [192, 168, 77, 2],
            dst_ip: [192, 168, 77, 1],
            ip_id: 0,
            sport: 0,
            dport: 8472,
            vni: 48123,
        };
        let v = super::vxlan_frames(&inner, outer);
        assert_eq!(v.len(), inner.len());
        let mut sports = std::collections::BTreeSet::new();
        for (o, i) in v.iter().zip(&inner) {
            assert_eq!(o.len(), i.len() + vxlan::ENCAP_LEN);
            assert_eq!(&o[vxlan::ENCAP_LEN..], &i[..]);
            assert_eq!(&o[36..38], &8472u16.to_be_bytes());
            assert_eq!(vxlan::parse(&o[42..50]).unwrap().vni, 48123);
            assert_eq!(
                fastpath::wire::checksum(&o[14..34]),
                0,
                "outer IPv4 checksum"
            );
            sports.insert([o[34], o[35]]);
        }
        assert!(sports.len() > inner.len() / 2, "{} ports", sports.len());
        assert_eq!(
            super::vxlan_frames(&inner, outer),
            v,
            "a flow keeps its port"
        );
    }

    /// The helper writes what the benches wrote by hand before it (the same-node bench's
    /// node), and the node config accepts it.
    #[test]
    fn single_node_yaml_is_the_hand_written_config() {
        let y = super::single_node_yaml("b", 250, "  queues: 1\n", &[("gen", 11), ("sink", 12)]);
        assert_eq!(
            y,
            "node:\n  name: b\n  netns: b-n\n  router_ip: 10.250.0.1\ndatapath:\n  queues: 1\npods:\n\
             \x20 - { name: gen, ip: 10.250.1.11, mac: \"0a:58:0a:fa:01:0b\", lxc: lxc-gen, netns: b-gen }\n\
             \x20 - { name: sink, ip: 10.250.1.12, mac: \"0a:58:0a:fa:01:0c\", lxc: lxc-sink, netns: b-sink }\n"
        );
        let c = control::config::Config::parse(&y, "test").expect("valid");
        assert_eq!(
            c.pods[1].mac.to_string().to_lowercase(),
            "0a:58:0a:fa:01:0c"
        );
    }
}
