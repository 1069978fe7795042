//! Services through fastpath: ClusterIP from pods, NodePort and ExternalIP from an outside
//! client, Maglev agreement between nodes, session affinity, backend removal under a live
//! connection, and a service without backends. Real namespaces, real XDP + AF_XDP, real
//! clients (curl, socat, python sockets). Every test runs twice: on the AF_XDP workers and
//! on the in-kernel tc datapath (`_on_tc`), which must behave the same.

use std::process::Command;
use std::time::{Duration, Instant};

use control::config::Config;
use control::maps::DropReason;
use fastpath_tests::{
    Kind, LongConn, Outside, Pods, Servers, TestNode, cluster_yaml, require_root, unique,
};

/// Two fastpath nodes × 3 pods: p0 clients, p1 the backends (one per node), p2 spare.
/// Services (the same on both nodes, as kube-proxy would have them):
/// - web   10.96.N.10:80 → 8080, random
/// - mag   10.96.N.11:80 → 8080, Maglev, NodePort 30080, ExternalIP 192.168.N.100
/// - stick 10.96.N.12:80 → 8080, random, ClientIP affinity
/// - empty 10.96.N.13:80, no backends
/// - long  10.96.N.14:9000 → 9000, random
struct Cluster {
    n: [TestNode; 2],
    net: String,
    services: String,
}

fn services_yaml(net: &str, b0: &str, b1: &str) -> String {
    format!(
        "services:
  - name: web
    cluster_ip: 10.96.{net}.10
    ports: [{{ port: 80, target_port: 8080 }}, {{ port: 53, protocol: UDP, target_port: 5353 }}]
    backends: [{{ ip: {b0} }}, {{ ip: {b1} }}]
  - name: mag
    type: NodePort
    cluster_ip: 10.96.{net}.11
    external_ips: [192.168.{net}.100]
    ports: [{{ port: 80, target_port: 8080, node_port: 30080 }}]
    lb_algorithm: maglev
    backends: [{{ ip: {b0} }}, {{ ip: {b1} }}]
  - name: stick
    cluster_ip: 10.96.{net}.12
    ports: [{{ port: 80, target_port: 8080 }}]
    session_affinity: ClientIP
    session_affinity_timeout: 60
    backends: [{{ ip: {b0} }}, {{ ip: {b1} }}]
  - name: empty
    cluster_ip: 10.96.{net}.13
    ports: [{{ port: 80 }}]
  - name: long
    cluster_ip: 10.96.{net}.14
    ports: [{{ port: 9000 }}]
    backends: [{{ ip: {b0} }}, {{ ip: {b1} }}]
"
    )
}

/// The datapaths every test here runs on: the AF_XDP workers (XDP steering), and the
/// in-kernel tc datapath on every device (`--datapath tc`, docs/tc.md) over the same maps.
const WORKERS: &[&str] = &[];
const TC: &[&str] = &["--datapath", "tc"];

/// Two tests running `$body`: `$workers` on the AF_XDP workers, `$tc` on the tc datapath.
macro_rules! on_both_datapaths {
    ($body:ident: $workers:ident, $tc:ident) => {
        #[test]
        fn $workers() {
            if require_root() {
                $body(WORKERS);
            }
        }

        #[test]
        fn $tc() {
            if require_root() {
                $body(TC);
            }
        }
    };
}

on_both_datapaths!(clusterip_http_reaches_backends_on_both_nodes_and_replies_come_from_the_service_on: clusterip_http_reaches_backends_on_both_nodes_and_replies_come_from_the_service, clusterip_http_reaches_backends_on_both_nodes_and_replies_come_from_the_service_on_tc);

on_both_datapaths!(nodeport_and_external_ip_from_an_outside_client_with_maglev_agreement_on: nodeport_and_external_ip_from_an_outside_client_with_maglev_agreement, nodeport_and_external_ip_from_an_outside_client_with_maglev_agreement_on_tc);

on_both_datapaths!(affinity_pins_a_client_and_backend_removal_keeps_established_connections_on: affinity_pins_a_client_and_backend_removal_keeps_established_connections, affinity_pins_a_client_and_backend_removal_keeps_established_connections_on_tc);

on_both_datapaths!(a_service_without_backends_refuses_at_once_and_counts_no_service_on: a_service_without_backends_refuses_at_once_and_counts_no_service, a_service_without_backends_refuses_at_once_and_counts_no_service_on_tc);

fn cluster(tag: &str, dp: &[&str]) -> Cluster {
    let y = cluster_yaml(&unique(tag), &[Kind::Fastpath, Kind::Fastpath], 3, "");
    let c0 = Config::parse(&y[0], "n0").unwrap();
    let b0 = c0.pods[1].ip.to_string();
    let b1 = c0.remote_nodes[0].pods[1].ip.to_string();
    let net = b0.split('.').nth(1).unwrap().to_string();
    let services = services_yaml(&net, &b0, &b1);
    let n0 = TestNode::start(
        &format!("{}{services}", y[0]),
        1,
        &[&["--cores", "0"], dp].concat(),
    );
    let n1 = TestNode::start(
        &format!("{}{services}", y[1]),
        1,
        &[&["--cores", "1"], dp].concat(),
    );
    n0.wait_overlay_ready();
    n1.wait_overlay_ready();
    if dp == TC {
        for n in [&n0, &n1] {
            let st = n.status();
            assert!(
                st.devices.iter().all(|d| d.datapath == "tc") && st.tc.is_some(),
                "every device on the tc datapath: {:?}",
                st.devices
            );
        }
    }
    Cluster {
        n: [n0, n1],
        net,
        services,
    }
}

impl Cluster {
    fn vip(&self, last: u8) -> String {
        format!("10.96.{}.{last}", self.net)
    }

    /// HTTP servers on :8080 answering with their pod name, UDP name servers on :5353, and
    /// name-then-echo servers on :9000, in both backends (p1 of each node).
    fn backends(&self) -> Vec<Servers> {
        let mut v = Vec::new();
        for (k, node) in self.n.iter().enumerate() {
            let name = format!("n{k}p1");
            let dir = std::env::temp_dir().join(format!("{}-www", node.pod_ns(1)));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("index.html"), &name).unwrap();
            v.push(node.spawn_in_pod(
                1,
                &[
                    "python3",
                    "-m",
                    "http.server",
                    "8080",
                    "--directory",
                    dir.to_str().unwrap(),
                ],
            ));
            v.push(node.spawn_in_pod(
                1,
                &[
                    "socat",
                    "UDP-LISTEN:5353,fork,reuseaddr",
                    &format!("SYSTEM:printf {name}"),
                ],
            ));
            v.push(node.spawn_in_pod(
                1,
                &[
                    "socat",
                    "TCP-LISTEN:9000,fork,reuseaddr",
                    &format!("SYSTEM:echo {name}; cat"),
                ],
            ));
        }
        std::thread::sleep(Duration::from_millis(800));
        v
    }
}

/// `curl` from a namespace; the body, or `None` on failure. With a fixed local port, a
/// python client does the GET instead and closes with an RST (SO_LINGER 0), so the port is
/// free again at once (curl's FIN close leaves it in TIME_WAIT for 60 s).
fn curl(ns: &str, url: &str, local_port: Option<u16>) -> Option<String> {
    if let Some(lp) = local_port {
        let hostport = url.trim_start_matches("http://").trim_end_matches('/');
        let (host, port) = hostport.split_once(':').unwrap_or((hostport, "80"));
        let script = format!(
            "import socket,struct\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.settimeout(3)\ns.bind(('',{lp}))\ns.connect(({host:?},{port}))\ns.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nd=b''\nwhile True:\n    c=s.recv(4096)\n    if not c: break\n    d+=c\ns.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))\ns.close()\nprint(d.split(b'\\r\\n\\r\\n',1)[1].decode())\n"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &script])
            .output()
            .unwrap();
        return out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let mut args = vec![
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-s",
        "--max-time",
        "3",
        "-o",
        "-",
    ];
    let lp;
    if let Some(p) = local_port {
        lp = p.to_string();
        args.extend_from_slice(&["--local-port", &lp]);
    }
    args.push(url);
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn lb_list(n: &TestNode, flag: &str) -> String {
    let mut args = vec!["bpf", "lb", "list"];
    if !flag.is_empty() {
        args.push(flag);
    }
    let out = n.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ct_rows(n: &TestNode) -> Vec<fastpath::api::CtRow> {
    fastpath::api::ct_list(&n.socket).expect("ct list").0
}

fn clusterip_http_reaches_backends_on_both_nodes_and_replies_come_from_the_service_on(dp: &[&str]) {
    let c = cluster("s", dp);
    let _srv = c.backends();
    let url = format!("http://{}/", c.vip(10));
    for (k, node) in c.n.iter().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..24 {
            let body = curl(node.pod_ns(0), &url, None)
                .unwrap_or_else(|| panic!("n{k}p0 -> {url} failed\n{}", node.log()));
            seen.insert(body);
        }
        assert_eq!(
            seen,
            ["n0p1".to_string(), "n1p1".to_string()].into(),
            "random selection over 24 connections from n{k} reaches both backends"
        );
        // UDP: socat's connected socket only accepts the reply if it comes from VIP:53.
        let udp = node.echo(0, "UDP", &c.vip(10), 53, "q");
        assert!(
            udp == "n0p1" || udp == "n1p1",
            "UDP via the VIP got {udp:?}"
        );
    }
    // The maps, as an operator reads them.
    let lb = lb_list(&c.n[0], "");
    assert!(lb.starts_with("SERVICE ADDRESS"), "{lb}");
    let vip = c.vip(10);
    assert!(
        lb.contains(&format!("{vip}:80/TCP (0)")) && lb.contains("[ClusterIP, non-routable"),
        "{lb}"
    );
    let b0 = c.n[0].pod_ip(1);
    assert!(lb.contains(&format!("{b0}:8080/TCP (")), "{lb}");
    let rows = ct_rows(&c.n[0]);
    let svc: Vec<_> = rows
        .iter()
        .filter(|r| r.kind == "SVC" && r.to == format!("{vip}:80"))
        .collect();
    assert!(
        svc.len() >= 24,
        "one SVC entry per connection: {}",
        svc.len()
    );
    assert!(svc.iter().all(|r| r.backend_id != 0 && r.rev_nat != 0));
    assert!(
        rows.iter()
            .any(|r| r.kind == "OUT" && r.rev_nat != 0 && r.to.ends_with(":8080")),
        "OUT entries towards backends carry the service ID for reverse NAT"
    );
    let out = c.n[0].cli(&["bpf", "ct", "list", "global"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!(" -> {vip}:80 expires=")), "{text}");
    assert!(text.contains("TCP SVC "), "{text}");
}

fn nodeport_and_external_ip_from_an_outside_client_with_maglev_agreement_on(dp: &[&str]) {
    let c = cluster("np", dp);
    let _srv = c.backends();
    let ext = outside(&c);
    let n0ip = format!("192.168.{}.1", c.net);
    let n1ip = format!("192.168.{}.2", c.net);
    // NodePort on either node reaches both backends (one local, one through the tunnel with
    // SNAT to the node).
    for ip in [&n0ip, &n1ip] {
        let mut seen = std::collections::BTreeSet::new();
        for p in 0..16u16 {
            let url = format!("http://{ip}:30080/");
            let b = curl(&ext.ns, &url, Some(41000 + p)).unwrap_or_else(|| {
                if std::env::var_os("FP_PAUSE").is_some() {
                    eprintln!("PAUSED {url} port {}", 41000 + p);
                    std::thread::sleep(Duration::from_secs(150));
                }
                panic!(
                    "{url} failed\n{}\n{}",
                    fastpath::views::status(&c.n[0].status()),
                    fastpath::views::status(&c.n[1].status())
                )
            });
            seen.insert(b);
        }
        assert_eq!(
            seen.len(),
            2,
            "NodePort via {ip} reaches both backends: {seen:?}"
        );
    }
    // On the tc datapath, the kernel programs carried it: NodePort replies routed back to
    // the client, SYNs encapsulated to the remote backend.
    if dp == TC {
        let st = c.n[0].status();
        assert!(
            st.tc_counter("routed") > 0 && st.tc_counter("encapsulated") > 0,
            "{}",
            fastpath::views::status(&st)
        );
    }
    // The SNATed flows are in conntrack with the client behind the node address.
    let rows = ct_rows(&c.n[0]);
    assert!(
        rows.iter().any(|r| r.kind == "OUT"
            && r.flags & 0x20 != 0
            && r.nat
                .as_deref()
                .is_some_and(|n| n.starts_with(&format!("192.168.{}.50", c.net)))),
        "a NodePort OUT entry with the client as NAT address: {rows:#?}"
    );
    // ExternalIP through n0, then through n1: the same client flow gets the same backend.
    let url = format!("http://192.168.{}.100/", c.net);
    let mut via = Vec::new();
    for node_ip in [&n0ip, &n1ip] {
        ext.route(&format!("192.168.{}.100/32", c.net), node_ip);
        let got: Vec<String> = (0..8u16)
            .map(|p| {
                curl(&ext.ns, &url, Some(42000 + p)).unwrap_or_else(|| {
                    if std::env::var_os("FP_PAUSE").is_some() {
                        eprintln!("PAUSED port {}", 42000 + p);
                        std::thread::sleep(Duration::from_secs(90));
                    }
                    panic!(
                        "{url} via {node_ip} failed\n{}\n{}",
                        fastpath::views::status(&c.n[0].status()),
                        fastpath::views::status(&c.n[1].status())
                    )
                })
            })
            .collect();
        via.push(got);
    }
    assert_eq!(
        via[0], via[1],
        "Maglev picks the same backend for a flow on every node"
    );
    assert!(
        via[0]
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 2,
        "and spreads flows over both: {:?}",
        via[0]
    );
    let digests = |n: &TestNode| -> std::collections::BTreeSet<String> {
        lb_list(n, "--maglev")
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("digest=")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        digests(&c.n[0]),
        digests(&c.n[1]),
        "identical Maglev tables"
    );
    // A ClusterIP is not reachable from outside: counted, not forwarded.
    let before = c.n[0].status().drops_with(DropReason::IsClusterIp.code());
    ext.route(&format!("{}/32", c.vip(11)), &n0ip);
    assert!(curl(&ext.ns, &format!("http://{}/", c.vip(11)), None).is_none());
    assert!(c.n[0].status().drops_with(DropReason::IsClusterIp.code()) > before);
}

fn affinity_pins_a_client_and_backend_removal_keeps_established_connections_on(dp: &[&str]) {
    let c = cluster("af", dp);
    let _srv = c.backends();
    let n0 = &c.n[0];
    // Affinity: every connection of a client goes to one backend.
    let url = format!("http://{}/", c.vip(12));
    let picks: std::collections::BTreeSet<String> = (0..12)
        .map(|_| curl(n0.pod_ns(0), &url, None).expect("sticky service"))
        .collect();
    assert_eq!(picks.len(), 1, "ClientIP affinity: {picks:?}");

    // A long-lived TCP connection through the `long` service.
    let mut conn = LongConn::open(n0.pod_ns(0), &c.vip(14), 9000, true);
    let serving = conn.greeting.clone();
    assert!(serving == "n0p1" || serving == "n1p1", "{serving}");
    assert_eq!(conn.echo("before"), "before");
    // Remove that backend from the service on both nodes.
    let keep_ip = if serving == "n0p1" {
        c.n[1].pod_ip(1)
    } else {
        n0.pod_ip(1)
    };
    let gone_ip = if serving == "n0p1" {
        n0.pod_ip(1)
    } else {
        c.n[1].pod_ip(1)
    };
    let file = std::env::temp_dir().join(format!("{}-long.yaml", n0.cfg.node.name));
    std::fs::write(
        &file,
        format!(
            "name: long\ncluster_ip: {}\nports: [{{ port: 9000 }}]\nbackends: [{{ ip: {keep_ip} }}]\n",
            c.vip(14)
        ),
    )
    .unwrap();
    for n in &c.n {
        let out = n.cli(&["service", "apply", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A bad change is refused and changes nothing.
    std::fs::write(&file, "name: long\ncluster_ip: 0.0.0.0\nports: []\n").unwrap();
    let out = n0.cli(&["service", "apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster_ip") && err.contains("at least one port"),
        "{err}"
    );
    let _ = std::fs::remove_file(&file);
    let backends = lb_list(n0, "--backends");
    assert!(
        backends.contains(&format!("{gone_ip}:9000 state=terminating")),
        "the removed backend stays, terminating, for its connection:\n{backends}"
    );
    // New connections avoid it; the old one keeps working.
    for _ in 0..8 {
        let mut fresh = LongConn::open(n0.pod_ns(0), &c.vip(14), 9000, true);
        assert_ne!(
            fresh.greeting, serving,
            "new connections avoid the removed backend"
        );
        assert_eq!(fresh.echo("x"), "x");
    }
    for i in 0..5 {
        let m = format!("still-{i}");
        assert_eq!(conn.echo(&m), m, "the established connection survives");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(conn);
    // Once its connections are closed (10 s closing lifetime) and swept, it is released.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let b = lb_list(n0, "--backends");
        if !b.contains(&format!("{gone_ip}:9000")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "terminating backend never released:\n{b}\n{}",
            String::from_utf8_lossy(&n0.cli(&["bpf", "ct", "list", "global"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn a_service_without_backends_refuses_at_once_and_counts_no_service_on(dp: &[&str]) {
    let c = cluster("nb", dp);
    let n0 = &c.n[0];
    let t = Instant::now();
    let out = n0.pod_cmd(
        0,
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://{}/", c.vip(13)),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl: connection refused (ICMP port unreachable), not a timeout"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let s = n0.status();
    assert!(
        s.drops_with(DropReason::NoService.code()) >= 1,
        "{}",
        fastpath::views::status(&s)
    );
    let lb = lb_list(n0, "");
    assert!(lb.contains(&format!("{}:80/TCP (0)", c.vip(13))), "{lb}");
    let _ = &c.services;
}

/// A client outside the cluster at 192.168.N.50, with the ExternalIP 192.168.N.100 routed
/// via node 0.
fn outside(c: &Cluster) -> Outside {
    let o = Outside::new(&c.n[0].fabric_ns(), &[format!("192.168.{}.50", c.net)]);
    o.route(
        &format!("192.168.{}.100/32", c.net),
        &format!("192.168.{}.1", c.net),
    );
    o
}
