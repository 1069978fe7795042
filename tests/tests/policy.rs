//! Network policy through fastpath, on real traffic: Cilium's connectivity-check scenarios
//! adapted to the testbed (pod-to-a, pod-to-a-allowed-cnp, pod-to-a-l3-denied-cnp,
//! pod-to-b-intra-node, pod-to-b-multi-node, ClusterIP), L4 ports and ranges, deny over allow,
//! default deny on selection, stateful replies, Kubernetes NetworkPolicy, live policy change
//! (established flows included), world and CIDR-with-except from outside the cluster. Each
//! step asserts what a client sees and what the counters say.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use control::config::Config;
use control::maps::DropReason;
use fastpath_tests::{
    Kind, LongConn, Outside, Pods, Servers, TestNode, cluster_yaml, require_root, unique,
};

/// Two fastpath nodes × 3 pods (`app: n<k>p<i>`, namespace default); a ClusterIP service
/// `echo` 10.96.N.20:9000 with the single backend n1p1, and a NodePort service `np`
/// (:30900 on every node) with the single backend n0p1.
struct Cluster {
    n: [TestNode; 2],
    net: String,
    tag: String,
}

fn cluster(tag: &str) -> Cluster {
    let tag = unique(tag);
    let y = cluster_yaml(&tag, &[Kind::Fastpath, Kind::Fastpath], 3, "");
    let c0 = Config::parse(&y[0], "n0").unwrap();
    let net = c0.pods[0]
        .ip
        .to_string()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let b = c0.remote_nodes[0].pods[1].ip.to_string();
    let local = c0.pods[1].ip.to_string();
    let svc = format!(
        "services:\n  - {{ name: echo, cluster_ip: 10.96.{net}.20, ports: [{{ port: 9000 }}], backends: [{{ ip: {b} }}] }}\n  - {{ name: np, type: NodePort, cluster_ip: 10.96.{net}.21, ports: [{{ port: 9000, node_port: 30900 }}], backends: [{{ ip: {local} }}] }}\n"
    );
    let n0 = TestNode::start(&format!("{}{svc}", y[0]), 1, &["--cores", "0"]);
    let n1 = TestNode::start(&format!("{}{svc}", y[1]), 1, &["--cores", "1"]);
    n0.wait_overlay_ready();
    n1.wait_overlay_ready();
    Cluster {
        n: [n0, n1],
        net,
        tag,
    }
}

/// A TCP exchange from namespace `ns` (optionally from source address `src`): connect with a
/// 1 s timeout, send a line, expect it echoed. True if the echo came back.
fn tcp_ok(ns: &str, src: Option<&str>, ip: &str, port: u16) -> bool {
    let bind = src.map_or(String::new(), |s| format!("s.bind(({s:?},0))\n"));
    let script = format!(
        "import socket,sys\ns=socket.socket()\ns.settimeout(1.5)\n{bind}s.connect(({ip:?},{port}))\ns.sendall(b'ping\\n')\nd=s.recv(100)\nsys.exit(0 if d==b'ping\\n' else 1)\n"
    );
    Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .output()
        .unwrap()
        .status
        .success()
}

impl Cluster {
    fn ok(&self, from: (usize, usize), to: (usize, usize), port: u16) -> bool {
        let ip = self.n[to.0].pod_ip(to.1);
        tcp_ok(self.n[from.0].pod_ns(from.1), None, &ip, port)
    }

    /// Apply a policy file on both nodes (as the operator would apply one object to the
    /// cluster); returns node 0's answer line.
    fn apply(&self, yaml: &str) -> String {
        let path = std::env::temp_dir().join(format!("{}-policy.yaml", self.tag));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let mut first = String::new();
        for n in &self.n {
            let out = n.cli(&["policy", "apply", "-f", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "policy apply: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if first.is_empty() {
                first = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
        }
        first
    }

    fn delete(&self, id: &str) {
        for n in &self.n {
            let out = n.cli(&["policy", "delete", id]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn drops(&self, k: usize, r: DropReason) -> u64 {
        self.n[k].status().drops_with(r.code())
    }

    /// `bpf policy get <id>` of node k's pod i.
    fn policy_get(&self, k: usize, i: usize) -> String {
        let id = (i + 1).to_string();
        let out = self.n[k].cli(&["bpf", "policy", "get", &id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn echo_servers(&self) -> Vec<Servers> {
        let mut v = Vec::new();
        for n in &self.n {
            for i in 0..3 {
                v.push(n.echo_server(i, 9000));
                v.push(n.echo_server(i, 9011));
            }
        }
        v
    }
}

fn cnp(name: &str, body: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{ name: {name} }}\nspec:\n{body}"
    )
}

#[test]
fn connectivity_check_scenarios_with_policy() {
    if !require_root() {
        return;
    }
    let c = cluster("pol");
    let _servers = c.echo_servers();

    // pod-to-a, pod-to-b-intra-node, pod-to-b-multi-node: no policy, everything flows.
    assert!(c.ok((0, 0), (0, 1), 9000), "intra-node without policy");
    assert!(c.ok((0, 0), (1, 1), 9000), "multi-node without policy");
    assert!(
        c.ok((1, 2), (0, 1), 9011),
        "multi-node reverse without policy"
    );

    // pod-to-a-allowed-cnp: n0p1 admits n0p0 and n1p0 on 9000-9010/TCP only.
    let answer = c.apply(&cnp(
        "a-allowed",
        "  endpointSelector: { matchLabels: { app: n0p1 } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: n0p0 } }, { matchLabels: { app: n1p0 } }]
      toPorts: [{ ports: [{ port: \"9000\", endPort: 9010, protocol: TCP }] }]
",
    ));
    assert!(
        answer.contains("in force on every worker after"),
        "{answer}"
    );
    let d133 = c.drops(0, DropReason::Policy);
    assert!(c.ok((0, 0), (0, 1), 9000), "allowed, same node");
    assert!(
        c.ok((1, 0), (0, 1), 9000),
        "allowed from the other node (identity from the VNI)"
    );
    assert!(!c.ok((0, 0), (0, 1), 9011), "outside the port range");
    assert!(
        !c.ok((0, 2), (0, 1), 9000),
        "default deny once selected: other pod"
    );
    assert!(
        !c.ok((1, 2), (0, 1), 9000),
        "default deny: other node's other pod"
    );
    assert!(
        c.drops(0, DropReason::Policy) >= d133 + 3,
        "133 counted on the receiving node"
    );
    // Stateful: n0p1 has no egress allow at all here (egress not selected), so make it
    // default-deny on egress too and check the replies still flow.
    c.apply(&cnp(
        "a-no-egress",
        "  endpointSelector: { matchLabels: { app: n0p1 } }
  egress: [{}]
",
    ));
    assert!(c.ok((0, 0), (0, 1), 9000), "replies pass through conntrack");
    assert!(
        !c.ok((0, 1), (0, 0), 9000),
        "but n0p1 cannot open connections"
    );
    let get = c.policy_get(0, 1);
    assert!(get.starts_with("POLICY"), "{get}");
    let allow_line = get
        .lines()
        .find(|l| l.contains("k8s:app=n0p0"))
        .unwrap_or_else(|| panic!("{get}"));
    assert!(
        allow_line.contains("Allow") && allow_line.contains("Ingress"),
        "{get}"
    );
    assert!(
        allow_line.contains("9000-9007/TCP"),
        "range as aligned prefixes: {get}"
    );
    assert!(get.contains("reserved:host"), "allow-localhost: {get}");
    let pkts: u64 = allow_line
        .split_whitespace()
        .nth(7)
        .unwrap()
        .parse()
        .unwrap();
    assert!(pkts > 0, "the entry counted packets: {get}");
    c.delete("default/a-no-egress");

    // pod-to-a-l3-denied-cnp: n0p0 may only talk to n0p2; dropped before encap.
    let enc = c.n[0].status().encapsulated();
    c.apply(&cnp(
        "l3-denied",
        "  endpointSelector: { matchLabels: { app: n0p0 } }
  egress: [{ toEndpoints: [{ matchLabels: { app: n0p2 } }] }]
",
    ));
    let e133 = c.drops(0, DropReason::Policy);
    assert!(!c.ok((0, 0), (1, 1), 9000), "multi-node denied by egress");
    assert!(c.drops(0, DropReason::Policy) > e133);
    assert_eq!(c.n[0].status().encapsulated(), enc, "nothing left the node");
    assert!(c.ok((0, 0), (0, 2), 9000), "the allowed peer");
    // ClusterIP: the service's backend is n1p1, so the egress policy denies it after DNAT.
    let vip = format!("10.96.{}.20", c.net);
    assert!(
        !tcp_ok(c.n[0].pod_ns(0), None, &vip, 9000),
        "ClusterIP to a denied backend"
    );
    assert!(
        tcp_ok(c.n[0].pod_ns(2), None, &vip, 9000),
        "ClusterIP from an unselected pod"
    );

    // Deny over allow: n0p2 admits everyone except n0p0 on 9011.
    c.apply(&cnp(
        "deny-wins",
        "  endpointSelector: { matchLabels: { app: n0p2 } }
  ingress: [{ fromEntities: [cluster] }]
  ingressDeny:
    - fromEndpoints: [{ matchLabels: { app: n0p0 } }]
      toPorts: [{ ports: [{ port: \"9011\" }] }]
",
    ));
    let d181 = c.drops(0, DropReason::PolicyDeny);
    assert!(c.ok((0, 0), (0, 2), 9000));
    assert!(!c.ok((0, 0), (0, 2), 9011), "deny rule");
    assert!(c.ok((0, 1), (0, 2), 9011), "other identities still allowed");
    assert!(c.drops(0, DropReason::PolicyDeny) > d181, "181 counted");

    // Kubernetes NetworkPolicy on node 1: n1p2 admits only n1p0.
    c.apply(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: only-p0, namespace: default }
spec:
  podSelector: { matchLabels: { app: n1p2 } }
  ingress: [{ from: [{ podSelector: { matchLabels: { app: n1p0 } } }], ports: [{ port: 9000 }] }]
",
    );
    assert!(c.ok((1, 0), (1, 2), 9000));
    assert!(!c.ok((1, 1), (1, 2), 9000));

    // Live change on an established connection: Cilium judges every non-reply packet, so
    // removing the allow stops the client's next message (replies alone would still pass).
    c.delete("default/l3-denied");
    let mut conn = LongConn::open(c.n[0].pod_ns(0), &c.n[0].pod_ip(1), 9000, false);
    assert_eq!(conn.echo("one"), "one");
    let answer = c.apply(&cnp(
        "a-allowed",
        "  endpointSelector: { matchLabels: { app: n0p1 } }
  ingress: [{ fromEndpoints: [{ matchLabels: { app: n1p0 } }] }]
",
    ));
    let us: u64 = answer
        .rsplit("after ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(us < 2_000_000, "applied within the bound: {answer}");
    assert_eq!(
        conn.echo("two"),
        "",
        "established flow cut by the new policy"
    );
    assert!(!c.ok((0, 0), (0, 1), 9000), "new connections too");

    // A bad policy is refused by name and changes nothing.
    let bad = std::env::temp_dir().join(format!("{}-bad.yaml", c.tag));
    std::fs::write(
        &bad,
        cnp(
            "l7",
            "  endpointSelector: {}\n  ingress: [{ toPorts: [{ ports: [{ port: \"80\" }], rules: { http: [{}] } }] }]\n",
        ),
    )
    .unwrap();
    let out = c.n[0].cli(&["policy", "apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.ingress[0].toPorts[0].rules"), "{err}");
    assert!(c.ok((1, 0), (0, 1), 9000), "old policy still in force");
    let list = c.n[0].cli(&["policy", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("CiliumNetworkPolicy/default/a-allowed"),
        "{list}"
    );
    assert!(!list.contains("l7"), "{list}");
    let s = c.n[0].status();
    assert!(
        s.policy.denied_ingress > 0 && s.policy.allowed_ingress > 0,
        "{:?}",
        s.policy
    );
}

#[test]
fn world_and_cidr_with_except_from_outside_the_cluster() {
    if !require_root() {
        return;
    }
    let c = cluster("polw");
    let _servers = c.echo_servers();
    let a = format!("192.168.{}.50", c.net);
    let b = format!("192.168.{}.60", c.net);
    let ext = Outside::new(&c.n[0].fabric_ns(), &[a.clone(), b.clone()]);
    // Outside clients reach n0p1 through the NodePort of node 0 (local backend: no SNAT, so
    // the backend's policy sees the client's own identity, judged as the frame comes off the
    // NIC).
    let pod = format!("192.168.{}.1", c.net);
    let port = 30900;
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        tcp_ok(&ext.ns, Some(&a), &pod, port),
        "no policy: world reaches the pod"
    );

    // The cluster only: world is denied.
    c.apply(&cnp(
        "cluster-only",
        "  endpointSelector: { matchLabels: { app: n0p1 } }
  ingress: [{ fromEntities: [cluster] }]
",
    ));
    let d = c.drops(0, DropReason::Policy);
    assert!(!tcp_ok(&ext.ns, Some(&a), &pod, port), "world denied");
    assert!(
        c.drops(0, DropReason::Policy) > d,
        "judged at NIC receive, counted"
    );
    assert!(c.ok((1, 0), (0, 1), 9000), "the cluster still is allowed");

    // fromEntities world.
    c.apply(&cnp(
        "cluster-only",
        "  endpointSelector: { matchLabels: { app: n0p1 } }
  ingress: [{ fromEntities: [world] }]
",
    ));
    assert!(tcp_ok(&ext.ns, Some(&a), &pod, port), "world allowed");
    // Through node 1's NodePort the backend n0p1 is remote: node 1 SNATs to itself and the
    // frame arrives in the tunnel with VNI remote-node (6), so world does not cover it...
    let n1 = format!("192.168.{}.2", c.net);
    assert!(
        !tcp_ok(&ext.ns, Some(&a), &n1, port),
        "SNATed NodePort is remote-node, not world"
    );
    // ...and fromEntities remote-node does (while direct world traffic is then denied).
    c.apply(&cnp(
        "cluster-only",
        "  endpointSelector: { matchLabels: { app: n0p1 } }
  ingress: [{ fromEntities: [remote-node] }]
",
    ));
    assert!(tcp_ok(&ext.ns, Some(&a), &n1, port), "remote-node allowed");
    assert!(!tcp_ok(&ext.ns, Some(&a), &pod, port), "world now denied");

    // CIDR with except: the /24 minus .60.
    c.apply(&cnp(
        "cluster-only",
        &format!(
            "  endpointSelector: {{ matchLabels: {{ app: n0p1 }} }}
  ingress: [{{ fromCIDRSet: [{{ cidr: 192.168.{0}.0/24, except: [192.168.{0}.60/32] }}] }}]
",
            c.net
        ),
    ));
    assert!(tcp_ok(&ext.ns, Some(&a), &pod, port), "inside the CIDR");
    assert!(!tcp_ok(&ext.ns, Some(&b), &pod, port), "in the except");
    // The CIDR identities are in the ipcache.
    let out = c.n[0].cli(&["bpf", "ipcache", "list"]);
    let ipc = String::from_utf8_lossy(&out.stdout);
    assert!(ipc.contains(&format!("192.168.{}.60/32", c.net)), "{ipc}");
    let get = c.policy_get(0, 1);
    assert!(
        get.contains(&format!("cidr:192.168.{}.0/24", c.net)),
        "{get}"
    );
    assert!(
        !get.contains(&format!("cidr:192.168.{}.60/32", c.net)),
        "{get}"
    );
    // `fastpath identity list|get`, as cilium-dbg prints them: the reserved identities, the
    // pods', and the CIDR identities this policy made (in the local scope, 0x01000000+).
    let out = c.n[0].cli(&["identity", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list}");
    assert!(list.starts_with("ID "), "{list}");
    assert!(list.contains("reserved:world"), "{list}");
    assert!(list.contains("k8s:app=n0p1"), "{list}");
    let rows = fastpath::api::identities(&c.n[0].socket, None).unwrap();
    let cidr = rows
        .iter()
        .find(|r| r.labels.contains(&format!("cidr:192.168.{}.0/24", c.net)))
        .unwrap_or_else(|| panic!("the CIDR identity: {rows:?}"));
    assert_eq!(cidr.id >> 24, 1, "local scope: {}", cidr.id);
    let one = fastpath::api::identities(&c.n[0].socket, Some(cidr.id)).unwrap();
    assert_eq!(one, vec![cidr.clone()]);
    let out = c.n[0].cli(&["identity", "get", "999999"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("identity 999999 is not known on this node"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
