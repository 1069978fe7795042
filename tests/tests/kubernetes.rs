//! `source: kubernetes` (issue #16): three fastpath nodes whose configs name no other node,
//! driven only by the Kubernetes watch. No API server can run on this machine: the test's
//! fake one (`fastpath_tests::fakeapi`) speaks the real list/watch protocol with objects
//! built as k8s-openapi types and serialized (the Cilium policy CRD as JSON). One cluster for
//! the whole suite, in named steps: the nodes learn each other from Node and Pod objects and
//! agree on identities; pod traffic; a Service with its EndpointSlice; a
//! CiliumNetworkPolicy; an invalid object reported by name while the rest stays; a Pod
//! added and deleted; every watch dropped behind a compaction (410 Gone → relist) losing
//! and doubling nothing; a Node deleted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fastpath::api;
use fastpath_tests::fakeapi::FakeApi;
use fastpath_tests::{Kind, Pods, TestNode, cluster_yaml, require_root, unique, wait_until};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeSpec, NodeStatus, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lab::in_ns;

struct Cluster {
    // Dropped first: it serves in the fabric namespace node 0's lab made.
    api: FakeApi,
    n: Vec<TestNode>,
    net: u8,
}

fn meta(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..Default::default()
    }
}

fn node(name: &str, ip: &str, cidr: Option<&str>) -> Node {
    Node {
        metadata: meta(None, name, &[]),
        spec: Some(NodeSpec {
            pod_cidr: cidr.map(Into::into),
            pod_cidrs: cidr.map(|c| vec![c.into()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            }]),
            ..Default::default()
        }),
    }
}

fn pod(name: &str, on: &str, ip: &str, app: &str) -> Pod {
    labelled_pod(name, on, ip, &[("app", app)])
}

fn labelled_pod(name: &str, on: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: meta(Some("default"), name, labels),
        spec: Some(PodSpec {
            node_name: Some(on.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

/// [`wait_until`] with what the cluster's nodes say.
fn wait(c: &Cluster, limit: Duration, what: &str, f: impl FnMut() -> bool) -> Duration {
    wait_until(limit, what, || c.diag(), f)
}

impl Cluster {
    fn up(tag: &str) -> Cluster {
        let tag = unique(tag);
        let ys = cluster_yaml(&tag, &[Kind::Fastpath; 3], 2, "");
        let cfgs: Vec<control::config::Config> = ys
            .iter()
            .map(|y| control::config::Config::parse(y, "t").unwrap())
            .collect();
        let net = cfgs[0]
            .node
            .underlay
            .as_ref()
            .unwrap()
            .address
            .addr
            .octets()[2];
        let url = format!("http://192.168.{net}.250:8001");
        let kyaml = |y: &str| {
            let head = &y[..y.find("remote_nodes:").unwrap()];
            format!(
                "{head}remote_nodes: []\nsource: kubernetes\nkubernetes: {{ api_server: \"{url}\", connect_timeout: 20 }}\n"
            )
        };
        let mut n = vec![TestNode::prepare(&kyaml(&ys[0]), 1)];
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
        let api = FakeApi::start(&fabric, &format!("192.168.{net}.250"), 8001);
        // What kubelets and the control plane would have made: the Nodes and every pod.
        // Node 2's pod CIDR is only in its CiliumNode (Cilium's cluster-pool IPAM), and its
        // pod p1 has a label its node's config does not give it (`role: guarded`).
        for (k, c) in cfgs.iter().enumerate() {
            let cidr = c.node.pod_cidr.unwrap().to_string();
            let ip = c.node.underlay.as_ref().unwrap().address.addr.to_string();
            api.put(node(&c.node.name, &ip, (k != 2).then_some(cidr.as_str())));
            if k == 2 {
                api.put(serde_json::json!({
                    "apiVersion": "cilium.io/v2", "kind": "CiliumNode",
                    "metadata": {"name": c.node.name},
                    "spec": {"addresses": [{"type": "InternalIP", "ip": ip}],
                             "ipam": {"podCIDRs": [cidr]}}
                }));
            }
            for (i, p) in c.pods.iter().enumerate() {
                let app = format!("n{k}p{i}");
                let mut labels = vec![("app", app.as_str())];
                if (k, i) == (2, 1) {
                    labels.push(("role", "guarded"));
                }
                api.put(labelled_pod(
                    &p.name,
                    &c.node.name,
                    &p.ip.to_string(),
                    &labels,
                ));
            }
        }
        n.push(TestNode::prepare(&kyaml(&ys[1]), 1));
        n.push(TestNode::prepare(&kyaml(&ys[2]), 1));
        for (i, node) in n.iter_mut().enumerate() {
            let core = (i % 2).to_string();
            node.launch(&["--cores", &core]);
        }
        Cluster { api, n, net }
    }

    fn diag(&self) -> String {
        let mut s = format!(
            "fake API (lists, watches, 410s, bookmarks): {:?}\n",
            self.api.counts()
        );
        for n in &self.n {
            if let Ok(st) = api::status(&n.socket) {
                s += &fastpath::views::source_lines(&st.source);
            }
            let log = n.log();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            s += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            s += "\n---\n";
        }
        s
    }

    /// Node `i` has `nodes` other nodes with `pods` pods in force, next hops resolved.
    fn sees(&self, i: usize, nodes: usize, pods: usize) -> bool {
        let s = self.n[i].status();
        let k = s.source.kubernetes.clone().unwrap();
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

    /// `fastpath bpf lb list` of node `i`.
    fn lb_list(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.n[i].cli(&["bpf", "lb", "list"]).stdout).into_owned()
    }

    /// `fastpath policy list` of node `i`.
    fn policy_list(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.n[i].cli(&["policy", "list"]).stdout).into_owned()
    }

    fn tcp(&self, a: usize, from: usize, ip: &str, port: u16) -> bool {
        self.n[a].echo(from, "TCP", ip, port, "k8s\n") == "k8s\n"
    }
}

#[test]
fn three_nodes_driven_by_the_kubernetes_watch() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::up("k8");
    let net = c.net;

    // 1. Every node learns the two others and their four pods from Node and Pod objects.
    let t = wait(
        &c,
        Duration::from_secs(20),
        "every node sees the others",
        || (0..3).all(|i| c.sees(i, 2, 4)),
    );
    eprintln!("kubernetes: three nodes converged {t:?} after the last one served");
    let text = fastpath::views::status(&c.n[0].status());
    assert!(text.contains("Source:    kubernetes http://"), "{text}");
    assert!(text.contains("CiliumNetworkPolicy 0"), "{text}");

    // 2. Identities agree on every node — node 2's own pod p1 with the labels of its Pod
    //    object, not its config's.
    let ids: Vec<_> = (0..3).map(|i| c.identities(i)).collect();
    assert_eq!(ids[0].len(), 6, "{:?}", ids[0]);
    assert!(
        ids[2]
            .keys()
            .any(|l| l.contains(&"k8s:role=guarded".to_string())),
        "{:?}",
        ids[2]
    );
    assert!(c.n[2].log().contains("takes the labels of its Pod object"));
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], ids[2]);

    // 3. Pod traffic across every pair of nodes.
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        assert!(
            c.n[a].ping(0, &c.n[b].pod_ip(1), 3),
            "n{a}p0 -> n{b}p1\n{}",
            c.diag()
        );
    }
    let _srv = c.n[2].echo_server(0, 7007);
    let _srv1 = c.n[2].echo_server(1, 7008);

    // 4. A Service with its EndpointSlice (a named target port): balanced on every node.
    let vip = format!("10.96.{net}.20");
    c.api.put(Service {
        metadata: meta(Some("default"), "echo", &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(vip.clone()),
            ports: Some(vec![ServicePort {
                name: Some("tcp".into()),
                port: 80,
                target_port: Some(IntOrString::String("echo".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    });
    c.api.put(EndpointSlice {
        metadata: meta(
            Some("default"),
            "echo-abc",
            &[("kubernetes.io/service-name", "echo")],
        ),
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![c.n[2].pod_ip(0)],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(c.n[2].cfg.node.name.clone()),
            ..Default::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("tcp".into()),
            port: Some(7007),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    });
    // In force: the backend (the slice's, on its named port) in every node's LB map.
    let backend = format!("{}:7007", c.n[2].pod_ip(0));
    wait(
        &c,
        Duration::from_secs(10),
        "the service on every node",
        || (0..3).all(|i| c.lb_list(i).contains(&backend)),
    );
    assert!(c.tcp(0, 0, &vip, 80), "service from node 0\n{}", c.diag());
    assert!(c.tcp(1, 1, &vip, 80), "service from node 1");

    // 5. A CiliumNetworkPolicy from the API: the pods labelled `role: guarded` (n2p1, by
    //    its Pod object alone) admit only n0p0.
    c.api.put(serde_json::json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "only-n0p0", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"role": "guarded"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "n0p0"}}]}]}
    }));
    wait(
        &c,
        Duration::from_secs(10),
        "the policy in force on node 2",
        || {
            c.policy_list(2)
                .contains("CiliumNetworkPolicy/default/only-n0p0")
        },
    );
    let n2p1 = c.n[2].pod_ip(1);
    assert!(c.tcp(0, 0, &n2p1, 7008), "n0p0 admitted");
    assert!(!c.tcp(1, 0, &n2p1, 7008), "n1p0 denied");

    // 6. An invalid object is reported by name and skipped; the rest stays in force.
    c.api.put(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {"clusterIP": format!("10.96.{net}.21"), "ports": [{"port": "eighty"}]}
    }));
    wait(
        &c,
        Duration::from_secs(10),
        "the invalid service reported",
        || {
            c.n[1]
                .status()
                .source
                .kubernetes
                .unwrap()
                .problems
                .iter()
                .any(|p| p.starts_with("Service/default/broken: "))
        },
    );
    assert!(c.n[1].log().contains("skipped Service/default/broken"));
    assert!(c.tcp(1, 0, &vip, 80), "the valid service still works");

    // 7. A Pod added on node 1 and deleted again: learned and forgotten by the others.
    let o = c.n[1].cfg.pods[0].ip.octets();
    let late_ip = format!("{}.{}.{}.77", o[0], o[1], o[2]);
    c.api
        .put(pod("late", &c.n[1].cfg.node.name, &late_ip, "late"));
    let t = wait(
        &c,
        Duration::from_secs(10),
        "the new pod everywhere",
        || c.sees(0, 2, 5) && c.sees(2, 2, 5),
    );
    eprintln!("kubernetes: a new Pod was in force on the other nodes {t:?} after it was created");
    let (lists0, _, _, _) = c.api.counts();

    // 8. Every watch dropped behind a compaction: each resumes, gets 410 Gone, relists;
    //    nothing lost, nothing doubled. A change made meanwhile is seen.
    c.api.compact_and_drop_watches();
    // Every watcher of the 3 nodes gets 410 and lists again.
    wait(
        &c,
        Duration::from_secs(20),
        "every watcher relisted",
        || {
            let (lists, _, gone, _) = c.api.counts();
            gone >= 24
                && lists >= lists0 + 24
                && (0..3).all(|i| {
                    let k = c.n[i].status().source.kubernetes.unwrap();
                    k.connected && k.kinds.iter().all(|w| w.relists >= 1)
                })
        },
    );
    let (_, _, _, bookmarks) = c.api.counts();
    c.api.delete("Pod", "default/late");
    wait(
        &c,
        Duration::from_secs(10),
        "the deletion seen after the relist",
        || c.sees(0, 2, 4) && c.sees(2, 2, 4),
    );
    assert!(bookmarks > 0, "bookmarks were sent and taken");
    assert_eq!(c.identities(0), ids[0], "nothing renumbered");
    assert!(c.tcp(1, 0, &vip, 80), "the service after the relist");
    assert!(!c.tcp(1, 0, &n2p1, 7008), "the policy after the relist");

    // 9. The API server goes away and comes back over the same store; a Pod created while
    //    it was away is seen when the watches resume, nothing else changes.
    c.api.stop();
    wait(&c, Duration::from_secs(15), "node 0 notices", || {
        c.n[0]
            .status()
            .source
            .kubernetes
            .unwrap()
            .last_error
            .is_some_and(|e| e.contains("error") || e.contains("Connect") || e.contains("connect"))
            && !c.n[0].status().source.kubernetes.unwrap().connected
    });
    assert!(
        c.n[0].ping(1, &c.n[1].pod_ip(0), 2),
        "n0 -> n1 without the API"
    );
    assert!(fastpath::views::status(&c.n[0].status()).contains("RETRYING since an error"));
    c.api
        .put(pod("while-away", &c.n[1].cfg.node.name, &late_ip, "late"));
    c.api.resume();
    wait(
        &c,
        Duration::from_secs(30),
        "the Pod made while away, everywhere",
        || c.sees(0, 2, 5) && c.sees(2, 2, 5),
    );
    // (Nodes 0 and 2 see it as a remote pod; node 1 serves no endpoint for it.)
    assert_eq!(c.identities(0), c.identities(2));
    c.api.delete("Pod", "default/while-away");
    wait(&c, Duration::from_secs(10), "and its deletion", || {
        c.sees(0, 2, 4) && c.sees(2, 2, 4)
    });

    // 10. Node 2's Node object is deleted: the others drop it and its pods.
    // (With its CiliumNode, as Cilium's operator deletes it with the Node.)
    c.api.delete("Node", &c.n[2].cfg.node.name);
    c.api.delete("CiliumNode", &c.n[2].cfg.node.name);
    wait(&c, Duration::from_secs(10), "node 2 dropped", || {
        c.sees(0, 1, 2) && c.sees(1, 1, 2)
    });
    assert!(
        !c.n[0].ping(0, &c.n[2].pod_ip(0), 1),
        "a gone node's pod is unreachable"
    );
}

/// No API server at start: the node does not serve, and says what it could not list.
#[test]
fn no_api_server_at_start_is_a_clear_error() {
    if !require_root() {
        return;
    }
    let ys = cluster_yaml(&unique("k8x"), &[Kind::Fastpath], 1, "");
    let head = &ys[0][..ys[0].find("remote_nodes:").unwrap()];
    let y = format!(
        "{head}remote_nodes: []\nsource: kubernetes\nkubernetes: {{ api_server: \"http://127.0.0.1:9\", connect_timeout: 2 }}\n"
    );
    let mut n = TestNode::prepare(&y, 1);
    let t = Instant::now();
    let err = n
        .try_launch(&[])
        .expect_err("fastpath must not serve without the API");
    assert!(
        err.contains("kubernetes: Node, CiliumNode, Pod, Service, EndpointSlice, NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy not listed from http://127.0.0.1:9 within 2 s (kubernetes.connect_timeout)"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}
