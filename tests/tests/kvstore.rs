//! `source: kvstore` (issue #16): three fastpath nodes whose configs name no other node,
//! driven only by a real etcd server (Debian's `etcd-server`) that the test starts in the
//! cluster's fabric namespace. One cluster for the whole suite, in named steps:
//! the nodes learn each other's pods and identities (agreeing cluster-wide) and forward
//! pod, service and policy traffic; a pod added on one node is reachable from the others
//! (time measured); a killed agent's entries go with its lease and its identities are
//! garbage-collected; an etcd crash and restart loses nothing; the dead node comes back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use control::config::PodConfig;
use fastpath::api;
use fastpath_tests::etcd::Etcd;
use fastpath_tests::{Kind, Pods, TestNode, cluster_yaml, require_root, unique, wait_until};
use lab::{PodNs, in_ns};

const LEASE_TTL: u64 = 4;

struct Cluster {
    // Dropped first: etcd runs in the fabric namespace node 0's lab made.
    etcd: Etcd,
    n: Vec<TestNode>,
    net: u8,
}

fn kv_yaml(y: &str, url: &str, extra: &str) -> String {
    let head = &y[..y.find("remote_nodes:").expect("cluster yaml")];
    format!(
        "{head}remote_nodes: []\nsource: kvstore\nkvstore: {{ endpoints: [\"{url}\"], lease_ttl: {LEASE_TTL}, connect_timeout: 20, identity_gc_interval: 2 }}\n{extra}"
    )
}

/// [`wait_until`] with what the cluster's nodes say.
fn wait(c: &Cluster, limit: Duration, what: &str, f: impl FnMut() -> bool) -> Duration {
    wait_until(limit, what, || c.diag(), f)
}

impl Cluster {
    fn up(tag: &str) -> Cluster {
        let tag = unique(tag);
        let ys = cluster_yaml(&tag, &[Kind::Fastpath; 3], 2, "");
        let net = control::config::Config::parse(&ys[0], "t")
            .unwrap()
            .node
            .underlay
            .unwrap()
            .address
            .addr
            .octets()[2];
        let url = format!("http://192.168.{net}.250:2379");
        // Only node 0 knows the service: the others learn it from the store. Its
        // backend is node 2's first pod.
        let svc = format!(
            "services:\n  - name: web\n    cluster_ip: 10.96.{net}.10\n    ports: [{{ port: 80, target_port: 7007 }}]\n    backends: [{{ ip: 10.{net}.3.11 }}]\n"
        );
        let mut n = Vec::new();
        n.push(TestNode::prepare(&kv_yaml(&ys[0], &url, &svc), 1));
        let fabric = n[0].fabric_ns();
        in_ns(
            &fabric,
            &[
                "ip",
                "addr",
                "add",
                &format!("192.168.{net}.250/24"),
                "dev",
                lab::FABRIC_BRIDGE,
            ],
        )
        .unwrap();
        let etcd = Etcd::start(&fabric, &format!("192.168.{net}.250"));
        n.push(TestNode::prepare(&kv_yaml(&ys[1], &url, ""), 1));
        n.push(TestNode::prepare(&kv_yaml(&ys[2], &url, ""), 1));
        for (i, node) in n.iter_mut().enumerate() {
            let core = (i % 2).to_string();
            node.launch(&["--cores", &core]);
        }
        Cluster { etcd, n, net }
    }

    /// Every running node's status text and log tail.
    fn diag(&self) -> String {
        let mut s = String::new();
        for n in &self.n {
            if n.pid().is_none() {
                continue;
            }
            if let Ok(st) = api::status(&n.socket) {
                s += &fastpath::views::source_lines(&st.source);
                s += &format!("{:?}\n", st.overlay);
            }
            let log = n.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            s += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            s += "\n---\n";
        }
        s
    }

    fn kv(&self, i: usize) -> fastpath::kvstore::KvStatus {
        self.n[i].status().source.kvstore.expect("kvstore status")
    }

    /// Node `i` has `nodes` other nodes with `pods` pods in force, next hops resolved.
    fn sees(&self, i: usize, nodes: usize, pods: usize) -> bool {
        let s = self.n[i].status();
        let k = s.source.kvstore.clone().unwrap();
        s.source.remote_nodes == nodes
            && k.remote_pods == pods
            && s.overlay.as_ref().is_some_and(|o| {
                o.nexthops.len() == nodes && o.nexthops.iter().all(|h| h.mac.is_some())
            })
    }

    fn identities(&self, i: usize) -> BTreeMap<Vec<String>, u32> {
        api::identities(&self.n[i].socket, None)
            .unwrap()
            .into_iter()
            .filter(|r| r.id >= 256 && r.labels.iter().any(|l| l.starts_with("k8s:app=")))
            .map(|r| (r.labels, r.id))
            .collect()
    }

    /// TCP echo from pod `from` of node `a` to `ip:port`.
    fn tcp(&self, a: usize, from: usize, ip: &str, port: u16) -> bool {
        self.n[a].echo(from, "TCP", ip, port, "kv\n") == "kv\n"
    }
}

#[test]
fn three_nodes_driven_by_etcd() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::up("kv");
    let net = c.net;

    // 1. Each node learns the two others and their four pods from the store alone.
    let t = wait(
        &c,
        Duration::from_secs(20),
        "every node sees the others",
        || (0..3).all(|i| c.sees(i, 2, 4)),
    );
    eprintln!("kvstore: three nodes converged {t:?} after the last one served");
    for i in 0..3 {
        let k = c.kv(i);
        assert!(k.connected && k.lease_id != 0, "{k:?}");
        assert!(k.published >= 4, "node record, 2 pods, identities: {k:?}");
        let text = fastpath::views::status(&c.n[i].status());
        assert!(text.contains("Source:    kvstore etcd"), "{text}");
    }
    // The store holds Cilium's keys: three node records, six pod addresses.
    assert_eq!(c.etcd.keys("cilium/state/nodes/v1/default/").len(), 3);
    assert_eq!(c.etcd.keys("cilium/state/ip/v1/default/").len(), 6);

    // 2. Identities agree cluster-wide: every node has the same number for every label
    //    set, and it is the one in the store's master key.
    let ids: Vec<_> = (0..3).map(|i| c.identities(i)).collect();
    assert_eq!(ids[0].len(), 6, "{:?}", ids[0]);
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], ids[2]);
    for (labels, id) in &ids[0] {
        let (ok, out) = c.etcd.ctl(&[
            "get",
            "--print-value-only",
            &format!("cilium/state/identities/v1/id/{id}"),
        ]);
        assert!(ok);
        let want: String = labels.iter().map(|l| format!("{l};")).collect();
        assert_eq!(out.trim(), want);
    }

    // 3. Pod traffic between every pair of nodes (VXLAN, VNI = the agreed identity).
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        assert!(
            c.n[a].ping(0, &c.n[b].pod_ip(1), 3),
            "n{a}p0 -> n{b}p1\n{}",
            c.n[a].log()
        );
    }
    let _srv = c.n[2].echo_server(0, 7007);
    let _srv1 = c.n[2].echo_server(1, 7008);
    assert!(c.tcp(1, 1, &c.n[2].pod_ip(0), 7007), "{}", c.n[1].log());

    // 4. A service only node 0's config defines, reached from node 1 through the store
    //    (once its backend is in node 1's LB map).
    let vip = format!("10.96.{net}.10");
    let backend = format!("10.{net}.3.11:7007");
    wait(
        &c,
        Duration::from_secs(10),
        "the service in force on node 1",
        || String::from_utf8_lossy(&c.n[1].cli(&["bpf", "lb", "list"]).stdout).contains(&backend),
    );
    assert!(
        c.tcp(1, 0, &vip, 80),
        "service from node 1: {}",
        c.n[1].log()
    );
    assert!(c.tcp(0, 0, &vip, 80), "service from node 0");

    // 5. Policy selecting by labels works across nodes: n2p1 admits only n0p0.
    let pol = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: { name: only-n0p0 }\nspec:\n  endpointSelector: { matchLabels: { app: n2p1 } }\n  ingress:\n    - fromEndpoints: [{ matchLabels: { app: n0p0 } }]\n";
    // (`policy apply` answers once the policy is in force on every worker.)
    for n in &c.n {
        n.apply("policy", pol);
    }
    let n2p1 = c.n[2].pod_ip(1);
    assert!(c.tcp(0, 0, &n2p1, 7008), "n0p0 admitted");
    assert!(!c.tcp(1, 0, &n2p1, 7008), "n1p0 denied");
    assert!(!c.tcp(0, 1, &n2p1, 7008), "n0p1 denied");

    // 6. A pod added on node 1 at run time is reachable from nodes 0 and 2; how long it
    //    takes is measured from the add's answer.
    let o = c.n[1].cfg.pods[0].ip.octets();
    let pod = PodConfig {
        name: "late".into(),
        namespace: "default".into(),
        ip: std::net::Ipv4Addr::new(o[0], o[1], o[2], 50),
        ipv6: None,
        mac: format!("0a:58:0a:{:02x}:{:02x}:32", o[1], o[2])
            .parse()
            .unwrap(),
        lxc: "lxc-late".into(),
        id: None,
        labels: [("app".to_string(), "late".to_string())].into(),
        netns: Some(format!("{}late", c.n[1].cfg.node.name)),
        cni: None,
    };
    let pod_ns = PodNs::up(&c.n[1].cfg, &pod, 1).unwrap();
    let out = c.n[1].cli(&[
        "endpoint",
        "add",
        "--name",
        "late",
        "--ip",
        &pod.ip.to_string(),
        "--mac",
        &pod.mac.to_string(),
        "--lxc",
        "lxc-late",
        "--label",
        "app=late",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = Instant::now();
    let t = wait(
        &c,
        Duration::from_secs(10),
        "nodes 0 and 2 learn the new pod",
        || c.sees(0, 2, 5) && c.sees(2, 2, 5),
    );
    eprintln!("kvstore: a new pod was in force on the other nodes {t:?} after its add answered");
    let ip = pod.ip.to_string();
    assert!(c.n[0].ping(0, &ip, 2), "n0 -> late");
    assert!(c.n[2].ping(1, &ip, 2), "n2 -> late");
    eprintln!(
        "kvstore: first ping answered {:?} after the add",
        added.elapsed()
    );
    let late_id = c.identities(0)[&vec![
        "k8s:app=late".to_string(),
        "k8s:io.kubernetes.pod.namespace=default".to_string(),
    ]];
    assert_eq!(
        c.identities(2).values().filter(|&&i| i == late_id).count(),
        1
    );

    // 7. Node 2's agent dies: its entries leave the store with its lease, the others drop
    //    its pods, and its identities (used nowhere else) are garbage-collected.
    let n2_ids: Vec<u32> = ["n2p0", "n2p1"]
        .iter()
        .map(|a| {
            c.identities(0)[&vec![
                format!("k8s:app={a}"),
                "k8s:io.kubernetes.pod.namespace=default".to_string(),
            ]]
        })
        .collect();
    c.n[2].crash();
    let killed = Instant::now();
    let t = wait(
        &c,
        Duration::from_secs(LEASE_TTL * 3 + 10),
        "nodes 0 and 1 drop node 2",
        // Node 0 sees node 1 with `late`; node 1 sees node 0's two pods.
        || c.sees(0, 1, 3) && c.sees(1, 1, 2),
    );
    eprintln!(
        "kvstore: a dead node's pods were gone {t:?} after it was killed (lease {LEASE_TTL} s)"
    );
    // Keep-alives go every third of the TTL: at the kill the lease had 2/3 of it or more.
    assert!(
        t >= Duration::from_millis(LEASE_TTL * 1000 * 2 / 3),
        "not before its lease ran out: {t:?}"
    );
    assert_eq!(c.etcd.keys("cilium/state/nodes/v1/default/").len(), 2);
    assert!(
        !c.n[0].ping(0, &c.n[2].pod_ip(0), 1),
        "no route to a gone node's pod"
    );
    wait(
        &c,
        Duration::from_secs(15),
        "node 2's identities collected",
        || {
            n2_ids.iter().all(|id| {
                c.etcd
                    .keys(&format!("cilium/state/identities/v1/id/{id}"))
                    .is_empty()
            })
        },
    );
    let _ = killed;
    assert!(c.kv(0).identities_collected + c.kv(1).identities_collected >= 2);

    // 8. etcd crashes and restarts on its data: the nodes reconnect, nothing is lost or
    //    doubled, and traffic flows throughout.
    let before: Vec<_> = (0..2).map(|i| c.identities(i)).collect();
    let sessions = c.kv(0).sessions;
    c.etcd.kill();
    // Without the store the nodes keep forwarding with what they have, and say so.
    wait(&c, Duration::from_secs(15), "node 0 notices", || {
        !c.kv(0).connected
    });
    assert!(
        c.n[0].ping(1, &c.n[1].pod_ip(0), 2),
        "n0 -> n1 without etcd"
    );
    assert!(fastpath::views::status(&c.n[0].status()).contains("DISCONNECTED"));
    c.etcd.launch();
    wait(&c, Duration::from_secs(20), "both nodes reconnect", || {
        (0..2).all(|i| {
            let k = c.kv(i);
            k.connected && k.sessions > if i == 0 { sessions } else { 1 }
        })
    });
    assert!(c.sees(0, 1, 3) && c.sees(1, 1, 2), "{}", c.diag());
    assert_eq!(c.identities(0), before[0]);
    assert_eq!(c.identities(1), before[1]);
    assert_eq!(c.etcd.keys("cilium/state/nodes/v1/default/").len(), 2);
    assert_eq!(c.etcd.keys("cilium/state/ip/v1/default/").len(), 5);
    assert!(
        c.n[0].ping(1, &c.n[1].pod_ip(0), 2),
        "n0 -> n1 after the restart"
    );
    assert!(c.n[0].ping(0, &ip, 2), "n0 -> late after the restart");

    // 9. Node 2 comes back: it is learned again, with identities the others agree on.
    c.n[2].launch(&["--cores", "0"]);
    wait(
        &c,
        Duration::from_secs(20),
        "node 2 is back everywhere",
        || c.sees(0, 2, 5) && c.sees(1, 2, 4) && c.sees(2, 2, 5),
    );
    assert_eq!(c.identities(0), c.identities(2));
    assert_eq!(c.identities(1), c.identities(2));
    assert!(c.n[1].ping(0, &c.n[2].pod_ip(0), 2), "n1 -> n2 again");
    drop(pod_ns);
}

/// etcd unreachable at start: the node does not serve (it would serve a cluster it does not
/// know), and says where it looked and for how long.
#[test]
fn no_etcd_at_start_is_a_clear_error() {
    if !require_root() {
        return;
    }
    let tag = unique("kvx");
    let ys = cluster_yaml(&tag, &[Kind::Fastpath], 1, "");
    let y = kv_yaml(&ys[0], "http://127.0.0.1:9", "")
        .replace("connect_timeout: 20", "connect_timeout: 2");
    let mut n = TestNode::prepare(&y, 1);
    let t = Instant::now();
    let err = n
        .try_launch(&[])
        .expect_err("fastpath must not serve without etcd");
    assert!(
        err.contains(
            "kvstore: no etcd reachable at http://127.0.0.1:9 within 2 s (kvstore.connect_timeout)"
        ),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}
