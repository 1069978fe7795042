//! Scenario-test harness: real namespaces, a real `fastpath run` process, real clients.
//!
//! - [`TestNode::start`] builds a node topology with unique namespace names (via
//!   `fastpath::lab`), writes its config to a temp file and starts the `fastpath` binary on it.
//!   Dropping the node stops fastpath (SIGTERM, then SIGKILL) and deletes the namespaces.
//! - [`require_root`] skips a test with a message when not root (AF_XDP, XDP and netns need it).
//! - Clients are the real tools: `ping`, `socat` (TCP/UDP echo), `python3` raw sockets for
//!   malformed frames.
//!
//! The `fastpath` binary must be built first (`cargo build --bins`, which `scripts/test.sh`
//! does); [`fastpath_bin`] says so if it is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use control::config::Config;
use control::maps::MacAddr;
use fastpath::api::{self, Status};
use fastpath::daemon::link_info_in;
use lab::{Lab, in_ns};

pub mod etcd;
pub mod fakeapi;
pub mod podman;

/// True (and a message) when the test cannot run here.
pub fn require_root() -> bool {
    if fastpath::xsk::sys::euid() != 0 {
        eprintln!("SKIPPED: needs root for namespaces, XDP and AF_XDP");
        return false;
    }
    true
}

/// The built `fastpath` binary next to this test executable.
pub fn fastpath_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("fastpath");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique short prefix for namespace and node names.
pub fn unique(tag: &str) -> String {
    format!(
        "fpt{}{}{}",
        tag,
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Wait up to `limit` for `f`; how long it took, or a panic naming `what` with `diag()`
/// (what the nodes say).
pub fn wait_until(
    limit: Duration,
    what: &str,
    diag: impl Fn() -> String,
    mut f: impl FnMut() -> bool,
) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// The YAML of a node with `pods` pods (10.<net>.1.<11+i>), queues and options.
pub fn node_yaml(name: &str, pods: usize, queues: u32, extra_datapath: &str) -> String {
    let net = 100 + (SEQ.fetch_add(1, Ordering::Relaxed) % 100);
    let mut y = format!(
        "node:\n  name: {name}\n  netns: {name}-n\n  router_ip: 10.{net}.0.1\ndatapath:\n  queues: {queues}\n{extra_datapath}pods:\n"
    );
    for i in 0..pods {
        y += &format!(
            "  - name: p{i}\n    ip: 10.{net}.1.{}\n    mac: 0a:58:0a:{net:02x}:01:{:02x}\n    lxc: lxc-p{i}\n    netns: {name}-p{i}\n    labels: {{ app: p{i} }}\n",
            11 + i,
            11 + i
        );
    }
    y
}

/// What runs a node of a test cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fastpath,
    /// The Linux kernel with its own VXLAN device (the interop peer).
    Kernel,
}

/// Configs for a cluster whose nodes all know each other: node k has pod CIDR
/// 10.<net>.<k+1>.0/24, pods .11, .12, … labelled `app: n<k>p<i>`, and underlay address
/// 192.168.<net>.<k+1>/24 on `eth1`, plugged into the fabric namespace `<tag>f`.
/// `datapath_extra` is appended to each fastpath node's `datapath:` section.
pub fn cluster_yaml(tag: &str, kinds: &[Kind], pods: usize, datapath_extra: &str) -> Vec<String> {
    let net = 100 + (SEQ.fetch_add(1, Ordering::Relaxed) % 100);
    let name = |k: usize| format!("{tag}n{k}");
    let overlay_mac = |k: usize| format!("02:fa:00:00:{net:02x}:{k:02x}");
    let pod_lines = |k: usize, remote: bool| {
        let mut y = String::new();
        for i in 0..pods {
            let ip = format!("10.{net}.{}.{}", k + 1, 11 + i);
            if remote {
                y += &format!(
                    "      - {{ name: n{k}p{i}, ip: {ip}, labels: {{ app: n{k}p{i} }} }}\n"
                );
            } else {
                y += &format!(
                    "  - {{ name: n{k}p{i}, ip: {ip}, mac: \"0a:58:0a:{net:02x}:{:02x}:{:02x}\", lxc: lxc-p{i}, netns: {}p{i}, labels: {{ app: n{k}p{i} }} }}\n",
                    k + 1,
                    11 + i,
                    name(k)
                );
            }
        }
        y
    };
    (0..kinds.len())
        .map(|k| {
            let mut y = format!(
                "node:\n  name: {n}\n  netns: {n}\n  router_ip: 10.{net}.{c}.1\n  pod_cidr: 10.{net}.{c}.0/24\n  underlay: {{ device: eth1, address: 192.168.{net}.{c}/24, fabric_netns: {tag}f{om} }}\n",
                n = name(k),
                c = k + 1,
                om = if kinds[k] == Kind::Kernel {
                    format!(", overlay_mac: \"{}\"", overlay_mac(k))
                } else {
                    String::new()
                }
            );
            y += &format!("datapath:\n  queues: 1\n{datapath_extra}");
            y += "pods:\n";
            y += &pod_lines(k, false);
            y += if kinds.len() == 1 {
                "remote_nodes: []\n"
            } else {
                "remote_nodes:\n"
            };
            for r in (0..kinds.len()).filter(|&r| r != k) {
                y += &format!(
                    "  - name: {}\n    ip: 192.168.{net}.{}\n    pod_cidr: 10.{net}.{}.0/24\n",
                    name(r),
                    r + 1,
                    r + 1
                );
                if kinds[r] == Kind::Kernel {
                    y += &format!("    overlay_mac: \"{}\"\n", overlay_mac(r));
                }
                y += "    pods:\n";
                y += &pod_lines(r, true);
            }
            y
        })
        .collect()
}

/// Two fastpath nodes of one cluster ([`cluster_yaml`], `pods` pods each), started with one
/// worker and their overlay ready.
pub fn two_fastpath_nodes(tag: &str, pods: usize) -> (TestNode, TestNode) {
    let y = cluster_yaml(tag, &[Kind::Fastpath, Kind::Fastpath], pods, "");
    let n0 = TestNode::start(&y[0], 1, &[]);
    let n1 = TestNode::start(&y[1], 1, &[]);
    n0.wait_overlay_ready();
    n1.wait_overlay_ready();
    (n0, n1)
}

/// A node run by the Linux kernel (VXLAN device, routes): the interop peer.
#[derive(Debug)]
pub struct KernelNode {
    pub cfg: Config,
    _lab: Lab,
}

impl KernelNode {
    pub fn start(yaml: &str) -> KernelNode {
        let cfg = Config::parse(yaml, "kernel-node").expect("kernel node config");
        let lab = Lab::up_kernel_vxlan(&cfg).expect("kernel-VXLAN node");
        KernelNode { cfg, _lab: lab }
    }
}

impl Pods for KernelNode {
    fn cfg(&self) -> &Config {
        &self.cfg
    }
}

/// A node topology with fastpath running on it.
#[derive(Debug)]
pub struct TestNode {
    pub cfg: Config,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    /// `--state-dir` of this node (kept across restarts of the process, removed on drop).
    pub state_dir: PathBuf,
    /// `--run-dir` (conntrack and affinity), kept across restarts, removed on drop.
    pub run_dir: PathBuf,
    child: Option<Child>,
    _lab: Lab,
}

impl TestNode {
    /// Build the topology for `yaml` and start fastpath with `args`.
    pub fn start(yaml: &str, queues: u32, args: &[&str]) -> TestNode {
        let mut n = TestNode::prepare(yaml, queues);
        n.launch(args);
        n
    }

    /// Build the topology for `yaml`; fastpath is started later ([`TestNode::launch`]).
    pub fn prepare(yaml: &str, queues: u32) -> TestNode {
        let cfg = Config::parse(yaml, "test").expect("test config");
        let lab = Lab::up(&cfg, queues).expect("lab topology");
        let config_path = std::env::temp_dir().join(format!("{}.yaml", cfg.node.name));
        std::fs::write(&config_path, yaml).unwrap();
        let socket = api::socket_path(&cfg.node.name);
        let state_dir = std::env::temp_dir().join(format!("{}-state", cfg.node.name));
        let _ = std::fs::remove_dir_all(&state_dir);
        // On tmpfs, as /run is on a node (this machine's /tmp is not).
        let run_dir = PathBuf::from(format!("/dev/shm/{}-run", cfg.node.name));
        let _ = std::fs::remove_dir_all(&run_dir);
        TestNode {
            cfg,
            config_path,
            socket,
            state_dir,
            run_dir,
            child: None,
            _lab: lab,
        }
    }

    /// Start (or restart) the fastpath process and wait for its control socket.
    pub fn launch(&mut self, args: &[&str]) {
        if let Err(log) = self.try_launch(args) {
            panic!("{log}");
        }
    }

    /// Start fastpath; `Err(log)` if it exits before serving (or does not come up in 15 s).
    pub fn try_launch(&mut self, args: &[&str]) -> Result<(), String> {
        assert!(self.child.is_none());
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("{}.log", self.cfg.node.name)))
                .unwrap();
        let child = Command::new(fastpath_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fastpath");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if api::status(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("fastpath exited early ({st}): {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("fastpath did not come up: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL fastpath (a crash: no cleanup of its own) and wait for it to be gone.
    /// The running fastpath's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A crashed fastpath leaves its socket file behind; the next one replaces it.
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(std::env::temp_dir().join(format!("{}.log", self.cfg.node.name)))
            .unwrap_or_default()
    }

    /// SIGTERM fastpath and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("fastpath did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The fabric namespace this node's underlay is plugged into.
    pub fn fabric_ns(&self) -> String {
        self.cfg
            .node
            .underlay
            .as_ref()
            .and_then(|u| u.fabric_netns.clone())
            .expect("a node with an underlay in the fabric")
    }

    pub fn status(&self) -> Status {
        api::status(&self.socket).expect("status")
    }

    /// Wait (up to 10 s) until every next hop to another node has a MAC: the moment the
    /// overlay can carry traffic, as an operator would check with `fastpath status`.
    pub fn wait_overlay_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status();
            let o = s.overlay.as_ref().expect("node has an overlay");
            if o.nexthops.iter().all(|n| n.mac.is_some()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "next hops never resolved: {:?}",
                o.nexthops
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The lxc device's MAC of pod `i` (the gateway MAC the pod uses).
    pub fn lxc_mac(&self, i: usize) -> MacAddr {
        self.dev_mac(&self.cfg.pods[i].lxc)
    }

    /// MAC of device `dev` in the node namespace.
    pub fn dev_mac(&self, dev: &str) -> MacAddr {
        link_info_in(self.node_ns(), dev).expect("device").mac
    }

    /// Send raw Ethernet frames (hex) out of `dev` in the node namespace (AF_PACKET).
    pub fn send_raw_on(&self, dev: &str, frames_hex: &[String]) {
        raw_send(self.node_ns(), dev, frames_hex);
    }

    /// Run the fastpath CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(fastpath_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    /// `fastpath <what> apply -f` with `text` (`what`: `service` or `policy`); panics with
    /// the CLI's error if it is refused.
    pub fn apply(&self, what: &str, text: &str) {
        let f = std::env::temp_dir().join(format!("{}-{what}.yaml", self.cfg.node.name));
        std::fs::write(&f, text).unwrap();
        let out = self.cli(&[what, "apply", "-f", f.to_str().unwrap()]);
        let _ = std::fs::remove_file(&f);
        assert!(
            out.status.success(),
            "{what} apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Does `dev` in the node namespace have an XDP program attached?
    pub fn xdp_attached(&self, dev: &str) -> bool {
        let out = in_ns(self.node_ns(), &["ip", "-d", "link", "show", "dev", dev]).unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first so fastpath removes its socket and pins, then make sure.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        // The LB map pins a run keeps for the next one (xdp_redirect::KEPT_PINS).
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/fastpath/{}", self.cfg.node.name));
    }
}

/// Pod-level helpers for any node of a test cluster (fastpath or kernel).
pub trait Pods {
    fn cfg(&self) -> &Config;

    fn node_ns(&self) -> &str {
        self.cfg().node.netns.as_deref().unwrap()
    }

    fn pod_ns(&self, i: usize) -> &str {
        self.cfg().pods[i].netns.as_deref().unwrap()
    }

    fn pod_ip(&self, i: usize) -> String {
        self.cfg().pods[i].ip.to_string()
    }

    /// `ping -c count` from pod `from` to `ip`; true if every reply arrived.
    fn ping(&self, from: usize, ip: &str, count: u32) -> bool {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.pod_ns(from),
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                ip,
            ])
            .output()
            .unwrap();
        out.status.success()
    }

    /// Start a socat echo server (TCP and UDP on `port`) in pod `i`; killed on drop of the
    /// returned guard.
    fn echo_server(&self, i: usize, port: u16) -> Servers {
        let ns = self.pod_ns(i).to_string();
        let spawn = |spec: String| {
            Command::new("ip")
                .args(["netns", "exec", &ns, "socat", "-T", "3", &spec, "PIPE"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let s = Servers(vec![
            spawn(format!("TCP-LISTEN:{port},fork,reuseaddr")),
            spawn(format!("UDP-LISTEN:{port},fork,reuseaddr")),
        ]);
        std::thread::sleep(Duration::from_millis(300));
        s
    }

    /// Send `msg` to an echo server over TCP or UDP from pod `from`; returns what came back.
    fn echo(&self, from: usize, proto: &str, ip: &str, port: u16, msg: &str) -> String {
        let target = format!("{proto}:{ip}:{port}");
        let mut c = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.pod_ns(from),
                "timeout",
                "5",
                "socat",
                "-t",
                "1",
                "-",
                &target,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(msg.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Send raw Ethernet frames (hex) out of pod `i`'s eth0 with an AF_PACKET socket.
    fn send_raw(&self, i: usize, frames_hex: &[String]) {
        raw_send(self.pod_ns(i), "eth0", frames_hex);
    }

    /// MTU of pod `i`'s eth0.
    fn pod_mtu(&self, i: usize) -> u32 {
        link_info_in(self.pod_ns(i), "eth0").expect("pod eth0").mtu
    }

    /// Start a background command in pod `i` (killed on drop of the guard).
    fn spawn_in_pod(&self, i: usize, args: &[&str]) -> Servers {
        let c = Command::new("ip")
            .args(["netns", "exec", self.pod_ns(i)])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Servers(vec![c])
    }

    /// Run a command in pod `i`; its output whatever the exit status.
    fn pod_cmd(&self, i: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.pod_ns(i)])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Pods for TestNode {
    fn cfg(&self) -> &Config {
        &self.cfg
    }
}

/// Send raw Ethernet frames (hex) out of `dev` in namespace `ns` with an AF_PACKET socket.
pub fn raw_send(ns: &str, dev: &str, frames_hex: &[String]) {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(({dev:?},0))\nfor f in {frames_hex:?}:\n    s.send(bytes.fromhex(f))\n"
    );
    in_ns(ns, &["python3", "-c", &script]).expect("raw send");
}

/// Background servers, killed on drop.
#[derive(Debug)]
pub struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client namespace outside the cluster, plugged into the fabric bridge `fabric` (the
/// namespace of `TestNode::fabric_ns`) with the given addresses (/24 each). Removed on drop.
#[derive(Debug)]
pub struct Outside {
    pub ns: String,
    fabric: String,
    port: String,
}

impl Outside {
    pub fn new(fabric: &str, addrs: &[String]) -> Outside {
        let ns = format!("{fabric}x");
        let port = format!("px-{}", &ns[ns.len().saturating_sub(10)..]);
        lab::sh(&["ip", "netns", "add", &ns]).unwrap();
        // Own the namespace from here on: a failure below still removes it.
        let o = Outside {
            ns,
            fabric: fabric.to_string(),
            port,
        };
        lab::sh(&[
            "ip", "-n", fabric, "link", "add", &o.port, "type", "veth", "peer", "name", "eth0",
            "netns", &o.ns,
        ])
        .unwrap();
        lab::sh(&[
            "ip", "-n", fabric, "link", "set", &o.port, "master", "br0", "up",
        ])
        .unwrap();
        let _ = in_ns(fabric, &["ethtool", "-K", &o.port, "tx", "off"]);
        for a in addrs {
            in_ns(
                &o.ns,
                &["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"],
            )
            .unwrap();
        }
        in_ns(&o.ns, &["ip", "link", "set", "eth0", "up"]).unwrap();
        in_ns(&o.ns, &["ip", "link", "set", "lo", "up"]).unwrap();
        let _ = in_ns(&o.ns, &["ethtool", "-K", "eth0", "tx", "off"]);
        o
    }

    /// Route `dst` (a prefix or an address) via `gw`.
    pub fn route(&self, dst: &str, gw: &str) {
        in_ns(&self.ns, &["ip", "route", "replace", dst, "via", gw]).unwrap();
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = lab::sh(&["ip", "-n", &self.fabric, "link", "del", &self.port]);
        let _ = lab::sh(&["ip", "netns", "del", &self.ns]);
    }
}

/// A TCP connection held open by a python client in namespace `ns`: it echoes each line we
/// give it through the server and prints the answer; an answer that does not come within 3 s
/// reads as "". With `greeting`, the server's first line (e.g. the backend's name) is read on
/// open into `greeting`.
#[derive(Debug)]
pub struct LongConn {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    pub greeting: String,
}

impl LongConn {
    pub fn open(ns: &str, ip: &str, port: u16, greeting: bool) -> LongConn {
        let first = if greeting {
            "print(f.readline().strip(),flush=True)\n"
        } else {
            ""
        };
        let script = format!(
            "import socket,sys\ns=socket.create_connection(({ip:?},{port}),timeout=3)\nf=s.makefile('rw')\n{first}for l in sys.stdin:\n    try:\n        f.write(l); f.flush()\n        print(f.readline().strip(),flush=True)\n    except Exception:\n        print('',flush=True)\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-u", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        if greeting {
            use std::io::BufRead;
            out.read_line(&mut line).unwrap();
        }
        LongConn {
            child,
            out,
            greeting: line.trim().to_string(),
        }
    }

    pub fn echo(&mut self, msg: &str) -> String {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for LongConn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a leak would show: counted by the kernel where it can say, by fastpath otherwise.
#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Open fds by kind (`socket`, `anon_inode:bpf-map`, `pipe`, ...): a leak says what leaked.
    pub fds: std::collections::BTreeMap<String, usize>,
    pub xdp_sockets: usize,
    pub xsk_entries: usize,
    pub attached: usize,
    pub worker_sockets: u64,
    /// Per worker: UMEM chunks accounted for (pool + fill/TX rings) when idle.
    pub umem_accounted: Vec<u64>,
    pub cilium_lxc: usize,
    pub ipcache: usize,
    pub policy_maps: usize,
}

pub fn footprint(n: &TestNode) -> Footprint {
    // Idle first: the workers refresh their gauges before they sleep.
    std::thread::sleep(Duration::from_millis(300));
    let pid = n.status().pid;
    // The status connection itself is closed once its answer is written.
    std::thread::sleep(Duration::from_millis(200));
    let mut fds = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue; // closed between the listing and the read
        };
        let t = target.to_string_lossy();
        // `socket:[123]`, `pipe:[45]`, `anon_inode:[eventfd]`, `anon_inode:bpf-map`, a path.
        let kind = match t.split_once(":[") {
            Some((k, _)) => k.to_string(),
            None if t.starts_with('/') => "file".to_string(),
            None => t.to_string(),
        };
        *fds.entry(kind).or_insert(0) += 1;
    }
    let st = n.status();
    // The kernel's count of AF_XDP sockets in the node's namespace (`sockets` column of the
    // XDP row; this kernel has no xsk_diag for `ss --xdp`).
    let p = in_ns(n.node_ns(), &["cat", "/proc/net/protocols"]).unwrap();
    let xdp_sockets = String::from_utf8_lossy(&p.stdout)
        .lines()
        .find(|l| l.starts_with("XDP "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .expect("an XDP row in /proc/net/protocols");
    let lxc = api::endpoint_list(&n.socket).unwrap().len();
    let policy = api::policy_get(&n.socket, None).unwrap().len();
    Footprint {
        fds,
        xdp_sockets,
        xsk_entries: st.endpoints.xsk_entries,
        attached: st.endpoints.attached,
        worker_sockets: st.workers.iter().map(|w| w.sockets).sum(),
        umem_accounted: st
            .workers
            .iter()
            .map(|w| w.umem_free + w.umem_in_rings)
            .collect(),
        cilium_lxc: lxc,
        ipcache: st.overlay.as_ref().map_or(0, |o| o.ipcache_entries),
        policy_maps: policy,
    }
}
