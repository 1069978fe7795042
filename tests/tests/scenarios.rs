//! The scenario suite over a datapath interface: one shared cluster per datapath — two
//! nodes on the datapath under test and one node on the Linux kernel's own VXLAN device, two
//! pods each — and the scenarios a user checks first, run in order against it: same node,
//! cross node, kernel-VXLAN interop, a ClusterIP service, a policy, hostile frames. Each
//! scenario asserts replies received and counters moved, and leaves the cluster as it found
//! it (what it applies it deletes), so the next one starts from the same state.
//!
//! A datapath is a [`Datapath`]: how a node of it is started. The AF_XDP workers with XDP
//! attached natively and in generic (SKB) mode — two kernel paths into the same sockets —
//! and the in-kernel tc datapath (`--datapath tc`, docs/tc.md); the scenarios are the same
//! for all three. (The per-area suites — same_node.rs, cross_node.rs, services.rs, policy.rs,
//! hostile.rs — keep their deeper checks on the default datapath.)

use std::panic::{AssertUnwindSafe, catch_unwind};

use control::maps::DropReason;
use fastpath_tests::{
    KernelNode, Kind, Pods, TestNode, cluster_yaml, raw_send, require_root, unique,
};

/// A datapath the scenarios run on.
trait Datapath {
    fn name(&self) -> &'static str;
    /// Start a node of this datapath from its config on `core`.
    fn start(&self, yaml: &str, core: usize) -> TestNode;
}

/// The AF_XDP workers with the steering program attached in `mode`.
struct AfXdp {
    mode: &'static str,
}

impl Datapath for AfXdp {
    fn name(&self) -> &'static str {
        match self.mode {
            "native" => "af_xdp, native XDP",
            _ => "af_xdp, generic XDP",
        }
    }
    fn start(&self, yaml: &str, core: usize) -> TestNode {
        let core = core.to_string();
        let n = TestNode::start(yaml, 1, &["--cores", &core, "--xdp-mode", self.mode]);
        let st = n.status();
        assert!(
            st.devices.iter().all(|d| d.xdp_mode == self.mode),
            "{}: devices {:?}",
            self.name(),
            st.devices
        );
        n
    }
}

/// The in-kernel tc datapath on every device (`--datapath tc`): the same maps, no workers
/// in the path.
struct Tc;

impl Datapath for Tc {
    fn name(&self) -> &'static str {
        "tc datapath"
    }
    fn start(&self, yaml: &str, core: usize) -> TestNode {
        let core = core.to_string();
        let n = TestNode::start(yaml, 1, &["--cores", &core, "--datapath", "tc"]);
        let st = n.status();
        assert!(
            st.devices.iter().all(|d| d.datapath == "tc") && st.tc.is_some(),
            "{}: devices {:?}",
            self.name(),
            st.devices
        );
        n
    }
}

/// The shared cluster: `n0`, `n1` on the datapath under test, `k` on the kernel's VXLAN.
struct Cluster {
    n0: TestNode,
    n1: TestNode,
    k: KernelNode,
    tag: String,
    /// Second octet of the cluster's addresses (`10.<net>.…`), for the service VIP.
    net: String,
}

impl Cluster {
    fn start(dp: &dyn Datapath) -> Cluster {
        let tag = unique("sc");
        let y = cluster_yaml(&tag, &[Kind::Fastpath, Kind::Fastpath, Kind::Kernel], 2, "");
        let k = KernelNode::start(&y[2]);
        let n0 = dp.start(&y[0], 0);
        let n1 = dp.start(&y[1], 1);
        n0.wait_overlay_ready();
        n1.wait_overlay_ready();
        let net = n0.pod_ip(0).split('.').nth(1).unwrap().to_string();
        Cluster {
            n0,
            n1,
            k,
            tag,
            net,
        }
    }

    /// Apply a file to both datapath nodes with `fastpath <what> apply -f`; the object
    /// (`id`) is deleted again when the guard goes, also when the scenario fails, so a
    /// failed scenario does not fail the next.
    fn apply<'a>(&'a self, what: &'static str, id: &'static str, yaml: &str) -> Applied<'a> {
        let path = std::env::temp_dir().join(format!("{}-{what}.yaml", self.tag));
        std::fs::write(&path, yaml).unwrap();
        for n in [&self.n0, &self.n1] {
            let out = n.cli(&[what, "apply", "-f", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{what} apply: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(&path);
        Applied {
            c: self,
            what,
            id,
            live: true,
        }
    }
}

/// An object applied to the cluster by a scenario.
struct Applied<'a> {
    c: &'a Cluster,
    what: &'static str,
    id: &'static str,
    live: bool,
}

impl Applied<'_> {
    /// Delete it from both nodes, asserting each delete succeeds.
    fn delete(mut self) {
        self.live = false;
        for n in [&self.c.n0, &self.c.n1] {
            let out = n.cli(&[self.what, "delete", self.id]);
            assert!(
                out.status.success(),
                "{} delete {}: {}",
                self.what,
                self.id,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        if self.live {
            for n in [&self.c.n0, &self.c.n1] {
                let _ = n.cli(&[self.what, "delete", self.id]);
            }
        }
    }
}

struct Scenario {
    name: &'static str,
    run: fn(&Cluster),
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "same node: ping, TCP and UDP between two pods",
        run: same_node,
    },
    Scenario {
        name: "cross node: ping and TCP through the tunnel",
        run: cross_node,
    },
    Scenario {
        name: "interop: pods of the kernel-VXLAN node and of the datapath nodes reach each other",
        run: kernel_interop,
    },
    Scenario {
        name: "service: a ClusterIP with a local and a remote backend",
        run: cluster_ip,
    },
    Scenario {
        name: "policy: ingress admitted by label and port, the rest denied and counted",
        run: policy,
    },
    Scenario {
        name: "hostile: a malformed frame from a pod is a counted drop, the node keeps serving",
        run: hostile,
    },
];

/// Run every scenario on `dp`'s cluster; a failure names its scenario, and the others run.
fn suite(dp: &dyn Datapath) {
    let c = Cluster::start(dp);
    let mut failed = Vec::new();
    for s in SCENARIOS {
        eprintln!("[{}] {}", dp.name(), s.name);
        if catch_unwind(AssertUnwindSafe(|| (s.run)(&c))).is_err() {
            failed.push(s.name);
        }
    }
    assert!(
        failed.is_empty(),
        "[{}] failed: {failed:#?}\n{}",
        dp.name(),
        c.n0.log()
    );
}

#[test]
fn scenarios_on_af_xdp_native() {
    if require_root() {
        suite(&AfXdp { mode: "native" });
    }
}

#[test]
fn scenarios_on_tc() {
    if require_root() {
        suite(&Tc);
    }
}

#[test]
fn scenarios_on_af_xdp_generic() {
    if require_root() {
        suite(&AfXdp { mode: "generic" });
    }
}

fn same_node(c: &Cluster) {
    let n = &c.n0;
    let before = n.status();
    assert!(n.ping(0, &n.pod_ip(1), 3), "{}", n.log());
    let _srv = n.echo_server(1, 7101);
    assert_eq!(
        n.echo(0, "TCP", &n.pod_ip(1), 7101, "same node tcp\n"),
        "same node tcp\n"
    );
    assert_eq!(
        n.echo(0, "UDP", &n.pod_ip(1), 7101, "same node udp\n"),
        "same node udp\n"
    );
    let after = n.status();
    // Three echo requests and replies at least, each forwarded out of one lxc into another.
    assert!(
        after.forwarded() >= before.forwarded() + 6,
        "forwarded {} -> {}: {:?}",
        before.forwarded(),
        after.forwarded(),
        after.tc
    );
    assert!(after.forwarded_ingress() >= before.forwarded_ingress() + 6);
    assert_eq!(
        after.encapsulated(),
        before.encapsulated(),
        "nothing left the node"
    );
}

fn cross_node(c: &Cluster) {
    let (n0, n1) = (&c.n0, &c.n1);
    let (e0, d1) = (n0.status().encapsulated(), n1.status().decapsulated());
    assert!(n0.ping(0, &n1.pod_ip(1), 3), "{}", n0.log());
    assert!(n1.ping(1, &n0.pod_ip(0), 3), "{}", n1.log());
    let _srv = n1.echo_server(0, 7102);
    assert_eq!(
        n0.echo(1, "TCP", &n1.pod_ip(0), 7102, "over the tunnel\n"),
        "over the tunnel\n"
    );
    assert!(n0.status().encapsulated() >= e0 + 3);
    assert!(n1.status().decapsulated() >= d1 + 3);
}

fn kernel_interop(c: &Cluster) {
    let (n0, n1, k) = (&c.n0, &c.n1, &c.k);
    for i in 0..2 {
        assert!(
            n0.ping(i, &k.pod_ip(i), 3),
            "n0p{i} -> kernel pod\n{}",
            n0.log()
        );
        assert!(
            k.ping(i, &n1.pod_ip(i), 3),
            "kernel pod {i} -> n1p{i}\n{}",
            n1.log()
        );
    }
    let _srv = k.echo_server(1, 7103);
    assert_eq!(
        n1.echo(0, "TCP", &k.pod_ip(1), 7103, "to the kernel\n"),
        "to the kernel\n"
    );
}

fn cluster_ip(c: &Cluster) {
    let vip = format!("10.96.{}.30", c.net);
    let svc = c.apply(
        "service",
        "default/sc-echo",
        &format!(
            "name: sc-echo\ncluster_ip: {vip}\nports: [{{ port: 9100, target_port: 7104 }}]\nbackends: [{{ ip: {} }}, {{ ip: {} }}]\n",
            c.n0.pod_ip(1),
            c.n1.pod_ip(1)
        ),
    );
    // Each backend answers with its own name, so the client sees which one it reached. It
    // reads the request line first: closing with unread data would reset the connection.
    let named = |n: &TestNode, who: &str| {
        let answer = format!("SYSTEM:read line; echo {who}");
        let s = n.spawn_in_pod(
            1,
            &[
                "socat",
                "-T",
                "3",
                "TCP-LISTEN:7104,fork,reuseaddr",
                &answer,
            ],
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        s
    };
    let _s0 = named(&c.n0, "local");
    let _s1 = named(&c.n1, "remote");
    // From a pod of n0, 16 connections (new source ports: a backend is chosen per flow): every
    // one answered through the VIP, and both backends reached (the chance that 16 flows
    // all pick one of two is 2^-15). From n1's pod too.
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..16 {
        let got = c.n0.echo(0, "TCP", &vip, 9100, &format!("vip {round}\n"));
        assert!(
            got == "local\n" || got == "remote\n",
            "round {round}: {got:?}\n{}",
            c.n0.log()
        );
        seen.insert(got);
    }
    assert_eq!(seen.len(), 2, "both backends answered: {seen:?}");
    for round in 0..4 {
        let got = c.n1.echo(0, "TCP", &vip, 9100, &format!("vip {round}\n"));
        assert!(
            got == "local\n" || got == "remote\n",
            "{got:?}\n{}",
            c.n1.log()
        );
    }
    svc.delete();
    assert!(
        c.n0.echo(0, "TCP", &vip, 9100, "gone\n").is_empty(),
        "the service is gone"
    );
}

fn policy(c: &Cluster) {
    let (n0, n1) = (&c.n0, &c.n1);
    let allow = "n0p0";
    let pol = c.apply(
        "policy",
        "default/sc-guard",
        &format!(
            r#"kind: CiliumNetworkPolicy
metadata: {{ name: sc-guard }}
spec:
  endpointSelector: {{ matchLabels: {{ app: n0p1 }} }}
  ingress:
    - fromEndpoints: [{{ matchLabels: {{ app: {allow} }} }}]
      toPorts: [{{ ports: [{{ port: "7105", protocol: TCP }}] }}]
"#
        ),
    );
    let _srv = n0.echo_server(1, 7105);
    let denied0 = n0.status().drops_with(DropReason::Policy.code());
    let allowed0 = n0.status().policy.allowed_ingress;
    assert_eq!(
        n0.echo(0, "TCP", &n0.pod_ip(1), 7105, "allowed\n"),
        "allowed\n"
    );
    // The entry that admitted it counted it (`bpf policy get`: PACKETS), and so did the
    // status line's verdicts, on either datapath.
    let dump = fastpath::api::policy_get(&n0.socket, Some(2)).unwrap();
    let row = dump[0]
        .rows
        .iter()
        .find(|r| r.direction == "Ingress" && r.port_proto == "7105/TCP")
        .unwrap_or_else(|| panic!("the 7105/TCP ingress entry: {dump:#?}"));
    assert!(row.packets >= 2 && row.bytes > 0, "{row:?}");
    assert!(n0.status().policy.allowed_ingress >= allowed0 + 2);
    assert!(!n1.ping(0, &n0.pod_ip(1), 1), "n1p0 is not admitted");
    assert!(
        !n0.ping(0, &n0.pod_ip(1), 1),
        "ICMP is not the admitted port"
    );
    let denied = n0.status().drops_with(DropReason::Policy.code()) - denied0;
    assert!(denied >= 2, "{denied} policy drops counted");
    pol.delete();
    assert!(
        n1.ping(0, &n0.pod_ip(1), 3),
        "admitted again once the policy is gone"
    );
}

fn hostile(c: &Cluster) {
    let n = &c.n0;
    let pod = &n.cfg.pods[0];
    let mut ip = vec![
        0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0xde, 0xad, // checksum deliberately wrong
    ];
    ip.extend_from_slice(&pod.ip.octets());
    ip.extend_from_slice(&n.cfg.pods[1].ip.octets());
    ip.extend_from_slice(&[8, 0, 0xf7, 0xfe, 0, 1, 0, 0]);
    let frame = [&n.lxc_mac(0).0[..], &pod.mac.0[..], &[0x08, 0x00][..], &ip].concat();
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let before = n.status().drops_with(DropReason::Invalid.code());
    raw_send(pod.netns.as_deref().unwrap(), "eth0", &[hex.clone(), hex]);
    let t = std::time::Instant::now();
    while n.status().drops_with(DropReason::Invalid.code()) < before + 2 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "two invalid frames not counted: {} → {}",
            before,
            n.status().drops_with(DropReason::Invalid.code())
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(n.ping(0, &n.pod_ip(1), 2), "still serving\n{}", n.log());
}
