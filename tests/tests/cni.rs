//! Pods from a real container runtime: Debian's podman on its CNI backend calls
//! `fastpath-cni`, and the containers get their links, address, routes and MTU, and are
//! served by a running fastpath at once (docs/cni.md). One two-node cluster for the suite.
//!
//! What a user would check: containers ping and fetch over TCP from each other and from a pod
//! on the other node (the worker counters moved), `podman rm` leaves no device, endpoint,
//! address or map entry, 50 create/remove cycles leak nothing, bad configurations are
//! refused with the spec's error codes and change nothing; STATUS, GC, CHECK and VERSION
//! (which podman 4.3's libcni does not send) by running the plugin binary directly.

use std::time::Instant;

use fastpath::api;
use fastpath_tests::podman::{Podman, cni_call, podman_available};
use fastpath_tests::{
    Kind, Pods, TestNode, cluster_yaml, footprint, require_root, two_fastpath_nodes, unique,
};
use lab::in_ns;

/// Frames the workers received on every device of a node.
fn rx_frames(n: &TestNode) -> u64 {
    n.status()
        .workers
        .iter()
        .flat_map(|w| &w.ports)
        .map(|p| p.rx_packets)
        .sum()
}

fn node_info(n: &TestNode) -> api::NodeInfo {
    match api::call(&n.socket, &api::Request::NodeInfo).unwrap() {
        api::Response::NodeInfo(i) => *i,
        other => panic!("{other:?}"),
    }
}

fn veths(n: &TestNode) -> Vec<String> {
    let o = in_ns(n.node_ns(), &["ip", "-o", "link", "show", "type", "veth"]).unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|s| s.split('@').next().unwrap_or(s).to_string())
        .collect()
}

fn cni_rows(n: &TestNode) -> Vec<fastpath::endpoints::EndpointRow> {
    api::endpoints(&n.socket)
        .unwrap()
        .into_iter()
        .filter(|r| r.source == fastpath::endpoints::Source::Cni)
        .collect()
}

#[test]
fn podman_containers_are_served_through_fastpath() {
    if !require_root() || !podman_available() {
        return;
    }
    let tag = unique("cn");
    let (n0, n1) = two_fastpath_nodes(&tag, 1);
    let cidr = n0.cfg.node.pod_cidr.unwrap();
    let mut pm = Podman::new(&tag);
    std::fs::write(
        pm.rootfs.join("www/index.html"),
        "served through fastpath\n",
    )
    .unwrap();
    // The label set of n0's config pod: n1 knows its identity (remote_nodes), so it
    // accepts the containers' VXLAN traffic.
    let net = format!("{tag}a");
    pm.network(
        &net,
        "1.0.0",
        &format!(
            "\"node\":\"{}\",\"labels\":{{\"app\":\"n0p0\"}}",
            n0.cfg.node.name
        ),
    );
    let before = footprint(&n0);
    let free_before = node_info(&n0).ipam_free;
    let veths_before = veths(&n0);

    // Two containers on node 0.
    let t = Instant::now();
    pm.run("c1", &net);
    eprintln!("podman run c1: {:?}", t.elapsed());
    pm.run("c2", &net);
    let (ip1, ip2) = (pm.ip("c1"), pm.ip("c2"));
    assert_ne!(ip1, ip2);
    for ip in [&ip1, &ip2] {
        assert!(cidr.contains(ip.parse().unwrap()), "{ip} outside {cidr}");
    }
    let rows = cni_rows(&n0);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let r1 = rows
        .iter()
        .find(|r| r.name == "c1")
        .expect("c1 is an endpoint");
    assert_eq!(r1.ipv4, ip1);
    let att = r1.cni.as_ref().unwrap();
    assert_eq!(
        (
            att.network.as_str(),
            att.container_id.as_str(),
            att.ifname.as_str()
        ),
        (net.as_str(), pm.id("c1").as_str(), "eth0")
    );
    assert!(r1.labels.contains(&"k8s:app=n0p0".to_string()), "{r1:?}");
    assert_eq!(node_info(&n0).ipam_free, free_before - 2);
    // The links as a CNI plugin for Cilium makes them: MTU of the overlay, TX checksum
    // offload off, the default route via the gateway.
    let ns1 = pm.netns("c1");
    let link = in_ns(&ns1, &["ip", "-o", "link", "show", "dev", "eth0"]).unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("mtu 1450"),
        "{}",
        String::from_utf8_lossy(&link.stdout)
    );
    let k = in_ns(&ns1, &["ethtool", "-k", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&k.stdout).contains("tx-checksumming: off"));
    let rt = in_ns(&ns1, &["ip", "route", "show", "default"]).unwrap();
    assert!(
        String::from_utf8_lossy(&rt.stdout).contains(&format!("via {}", n0.cfg.node.router_ip)),
        "{}",
        String::from_utf8_lossy(&rt.stdout)
    );

    // Container to container: ICMP both ways and TCP (HTTP), through the workers.
    let rx = rx_frames(&n0);
    assert!(pm.ping("c1", &ip2, 3), "c1 -> c2");
    assert!(pm.ping("c2", &ip1, 3), "c2 -> c1");
    assert!(rx_frames(&n0) >= rx + 12, "the workers carried the pings");
    let d = pm.exec("c2", &["sh", "-c", "httpd -p 8080 -h /www"]);
    assert!(d.status.success(), "{d:?}");
    // (busybox's static wget crashes in its resolver; nc speaks the HTTP request.)
    let w = pm.exec(
        "c1",
        &[
            "sh",
            "-c",
            &format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip2} 8080"),
        ],
    );
    let page = String::from_utf8_lossy(&w.stdout);
    assert!(
        page.starts_with("HTTP/1.") && page.ends_with("served through fastpath\n"),
        "{w:?}"
    );

    // Across the tunnel: a container to a pod on node 1, and that pod back to it.
    let remote = n1.pod_ip(0);
    assert!(pm.ping("c1", &remote, 3), "c1 -> {remote} on node 1");
    assert!(n1.ping(0, &ip1, 3), "{remote} -> c1 through the tunnel");
    assert!(n0.status().workers[0].encapsulated > 0);

    // podman rm: the DEL takes everything back.
    let lxc2 = cni_rows(&n0)
        .into_iter()
        .find(|r| r.name == "c2")
        .unwrap()
        .lxc;
    assert!(pm.rm("c2"));
    assert!(!veths(&n0).contains(&lxc2), "{lxc2} is gone");
    assert!(cni_rows(&n0).iter().all(|r| r.name != "c2"));
    let lxc_map = api::endpoint_list(&n0.socket).unwrap();
    assert!(
        lxc_map
            .iter()
            .all(|(k, _)| !k.starts_with(&format!("{ip2}:"))),
        "{lxc_map:?}"
    );
    let ipc = api::list(&n0.socket, api::Request::IpcacheList).unwrap();
    assert!(
        ipc.iter().all(|(k, _)| k != &format!("{ip2}/32")),
        "{ipc:?}"
    );
    let state = std::fs::read_to_string(n0.state_dir.join("runtime.json")).unwrap();
    assert!(!state.contains(&ip2), "{state}");
    assert!(pm.rm("c1"));
    assert_eq!(node_info(&n0).ipam_free, free_before);
    assert_eq!(veths(&n0), veths_before);
    assert_eq!(footprint(&n0), before, "after two containers came and went");

    // 50 create/remove cycles leak nothing.
    let t = Instant::now();
    for i in 0..50 {
        let name = format!("cy{i}");
        pm.run(&name, &net);
        if i % 10 == 0 {
            assert!(pm.ping(&name, &n0.pod_ip(0), 1), "cycle {i}: {name} -> pod");
        }
        assert!(pm.rm(&name), "cycle {i}");
    }
    eprintln!("50 podman run/rm cycles: {:?}", t.elapsed());
    assert_eq!(cni_rows(&n0).len(), 0);
    assert_eq!(veths(&n0), veths_before);
    assert_eq!(node_info(&n0).ipam_free, free_before);
    assert_eq!(footprint(&n0), before, "after 50 podman run/rm cycles");

    // Bad configurations: refused, nothing made.
    let bad = [
        (
            format!("{tag}b1"),
            "\"node\":\"nosuchnode\"".to_string(),
            "not serving",
        ),
        (format!("{tag}b2"), String::new(), "node: missing"),
        (
            format!("{tag}b3"),
            format!(
                "\"node\":\"{}\",\"ipam\":{{\"type\":\"host-local\"}}",
                n0.cfg.node.name
            ),
            "ipam.type",
        ),
        (
            format!("{tag}b4"),
            format!("\"node\":\"{}\",\"mtu\":9000", n0.cfg.node.name),
            "mtu: 9000",
        ),
    ];
    for (name, fields, why) in &bad {
        pm.network(name, "1.0.0", fields);
        let o = pm.try_run(&format!("x{name}"), name);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{name}: {err}");
    }
    // A small pool: three addresses (the CIDR's broadcast address is never given), then
    // a clean refusal.
    let small = format!("{tag}s");
    let last = u32::from(cidr.network().addr) + 255;
    let pool = format!("{}/30", std::net::Ipv4Addr::from(last - 3));
    pm.network(
        &small,
        "1.0.0",
        &format!(
            "\"node\":\"{}\",\"ipam\":{{\"type\":\"fastpath\",\"pool\":\"{pool}\"}}",
            n0.cfg.node.name
        ),
    );
    for i in 0..3 {
        pm.run(&format!("sp{i}"), &small);
    }
    let o = pm.try_run("sp3", &small);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no free address"),
        "{err}"
    );
    assert_eq!(cni_rows(&n0).len(), 3);
    for i in 0..4 {
        pm.rm(&format!("sp{i}"));
    }
    assert_eq!(veths(&n0), veths_before, "no link left by a refused ADD");
    assert_eq!(cni_rows(&n0).len(), 0);
    assert_eq!(footprint(&n0), before, "after the refused configurations");
}

/// The plugin as the spec describes it, run directly (podman 4.3 sends neither STATUS nor
/// GC): VERSION, STATUS, ADD / CHECK / DEL (twice) / GC, and the error codes.
#[test]
fn plugin_binary_speaks_cni_1_1() {
    if !require_root() {
        return;
    }
    let tag = unique("cb");
    let yamls = cluster_yaml(&tag, &[Kind::Fastpath], 1, "");
    let n0 = TestNode::start(&yamls[0], 1, &[]);
    let node = n0.cfg.node.name.clone();
    let cidr = n0.cfg.node.pod_cidr.unwrap();
    let conf = |v: &str| {
        format!(
            "{{\"cniVersion\":\"{v}\",\"name\":\"{tag}\",\"type\":\"fastpath-cni\",\"node\":\"{node}\",\"labels\":{{\"app\":\"direct\"}}}}"
        )
    };

    let v = cni_call(&[("CNI_COMMAND", "VERSION")], &conf("1.1.0"));
    assert_eq!(v.code, 0, "{v:?}");
    let sv: Vec<&str> = v.json["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    assert!(sv.contains(&"1.1.0") && sv.contains(&"0.4.0"), "{sv:?}");

    // STATUS: ready while fastpath serves the node; not for a node that is not there;
    // not before spec 1.1.
    let st = cni_call(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0"));
    assert_eq!(
        (st.code, st.json.clone()),
        (0, serde_json::Value::Null),
        "{st:?}"
    );
    let gone = conf("1.1.0").replace(&node, "nosuchnode");
    assert_eq!(
        cni_call(&[("CNI_COMMAND", "STATUS")], &gone).error_code(),
        50
    );
    assert_eq!(
        cni_call(&[("CNI_COMMAND", "STATUS")], &conf("1.0.0")).error_code(),
        1
    );

    // Two containers' namespaces, made here as a runtime would.
    let mut nss = Vec::new();
    for i in 0..2 {
        let ns = format!("{tag}x{i}");
        lab::sh(&["ip", "netns", "add", &ns]).unwrap();
        nss.push(NsGuard(ns));
    }
    let env = |cmd: &'static str, i: usize| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", format!("ctr{i}")),
            ("CNI_NETNS", format!("/run/netns/{}", nss[i].0)),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=team;K8S_POD_NAME=Web_{i}"),
            ),
        ]
    };
    let call = |e: &[(&'static str, String)], stdin: &str| {
        let v: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cni_call(&v, stdin)
    };
    let add0 = call(&env("ADD", 0), &conf("1.1.0"));
    assert_eq!(add0.code, 0, "{add0:?}");
    let r = &add0.json;
    assert_eq!(r["cniVersion"], "1.1.0");
    let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(addr.ends_with("/32"), "{r}");
    assert_eq!(r["ips"][0]["gateway"], n0.cfg.node.router_ip.to_string());
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r["interfaces"][1]["sandbox"],
        format!("/run/netns/{}", nss[0].0)
    );
    assert_eq!(r["interfaces"][1]["mtu"], 1450);
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    let rows = cni_rows(&n0);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].namespace.as_str(), rows[0].name.as_str()),
        ("team", "web-0")
    );
    // The pod is served: it pings the config pod.
    let ip0 = addr.trim_end_matches("/32").to_string();
    let p = in_ns(&nss[0].0, &["ping", "-c", "2", "-W", "1", &n0.pod_ip(0)]).unwrap();
    assert!(p.status.success(), "{ip0} -> pod");
    // A second ADD for the same attachment is refused and changes nothing.
    let again = call(&env("ADD", 0), &conf("1.1.0"));
    assert_eq!(again.error_code(), 7, "{again:?}");
    assert!(again.details().contains("exists already"), "{again:?}");
    assert_eq!(cni_rows(&n0).len(), 1);

    // Chained after another plugin: its result (prevResult) is kept and ours is added to it,
    // the address pointing at our container interface.
    let prev = serde_json::json!({"cniVersion": "1.1.0", "interfaces": [{"name": "host-side0"}],
        "ips": [{"address": "192.0.2.1/24"}], "dns": {"nameservers": ["192.0.2.53"]}});
    let mut chained: serde_json::Value = serde_json::from_str(&conf("1.1.0")).unwrap();
    chained["prevResult"] = prev;
    let ns_c = NsGuard(format!("{tag}xc"));
    lab::sh(&["ip", "netns", "add", &ns_c.0]).unwrap();
    let mut e = env("ADD", 0);
    e[1].1 = "chained".into();
    e[2].1 = format!("/run/netns/{}", ns_c.0);
    e[5].1 = "K8S_POD_NAME=chained".into();
    let ch = call(&e, &chained.to_string());
    assert_eq!(ch.code, 0, "{ch:?}");
    let j = &ch.json;
    assert_eq!(j["interfaces"][0]["name"], "host-side0");
    assert_eq!(j["interfaces"][2]["name"], "eth0");
    assert_eq!(j["ips"][0]["address"], "192.0.2.1/24");
    assert_eq!(j["ips"][1]["interface"], 2, "{j}");
    assert_eq!(j["dns"]["nameservers"][0], "192.0.2.53");
    e[0].1 = "DEL".into();
    assert_eq!(call(&e, &conf("1.1.0")).code, 0);
    // A legacy config version gets the 0.4.0 result layout.
    let mut e = env("ADD", 0);
    e[1].1 = "legacy".into();
    e[2].1 = format!("/run/netns/{}", ns_c.0);
    e[5].1 = "K8S_POD_NAME=legacy".into();
    let lg = call(&e, &conf("0.4.0"));
    assert_eq!(lg.code, 0, "{lg:?}");
    assert_eq!(lg.json["cniVersion"], "0.4.0");
    assert_eq!(lg.json["ips"][0]["version"], "4", "{}", lg.json);
    e[0].1 = "DEL".into();
    assert_eq!(call(&e, &conf("0.4.0")).code, 0);
    // An address asked for in the pod CIDR is the one given.
    let mut e = env("ADD", 0);
    e[1].1 = "pinned".into();
    e[2].1 = format!("/run/netns/{}", ns_c.0);
    e[5].1 = format!(
        "K8S_POD_NAME=pinned;IP={}",
        std::net::Ipv4Addr::from(u32::from(cidr.network().addr) + 200)
    );
    let pinned = call(&e, &conf("1.1.0"));
    assert_eq!(pinned.code, 0, "{pinned:?}");
    assert_eq!(
        pinned.json["ips"][0]["address"],
        format!(
            "{}/32",
            std::net::Ipv4Addr::from(u32::from(cidr.network().addr) + 200)
        )
    );
    e[0].1 = "DEL".into();
    assert_eq!(call(&e, &conf("1.1.0")).code, 0);

    // CHECK with the ADD's result: fine; with the address taken off the interface: code 103.
    let with_prev = |c: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&conf(c)).unwrap();
        v["prevResult"] = r.clone();
        v.to_string()
    };
    let ck = call(&env("CHECK", 0), &with_prev("1.1.0"));
    assert_eq!(ck.code, 0, "{ck:?}");
    in_ns(&nss[0].0, &["ip", "addr", "del", &addr, "dev", "eth0"]).unwrap();
    let ck = call(&env("CHECK", 0), &with_prev("1.1.0"));
    assert_eq!(ck.error_code(), 103);
    assert!(ck.details().contains("does not have"), "{ck:?}");
    assert_eq!(
        call(&env("CHECK", 0), &conf("1.1.0")).error_code(),
        7,
        "no prevResult"
    );

    // GC keeps what the runtime lists and removes the rest, devices included.
    let add1 = call(&env("ADD", 1), &conf("1.1.0"));
    assert_eq!(add1.code, 0, "{add1:?}");
    assert_eq!(cni_rows(&n0).len(), 2);
    let lxc1 = cni_rows(&n0)
        .into_iter()
        .find(|r| r.name == "web-1")
        .unwrap()
        .lxc;
    let mut gc: serde_json::Value = serde_json::from_str(&conf("1.1.0")).unwrap();
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "ctr0", "ifname": "eth0"}]);
    let g = cni_call(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &gc.to_string(),
    );
    assert_eq!(g.code, 0, "{g:?}");
    let rows = cni_rows(&n0);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].name, "web-0");
    assert!(!veths(&n0).contains(&lxc1), "GC removed {lxc1}");

    // DEL: twice, and for a container never added — all succeed.
    for _ in 0..2 {
        let d = call(&env("DEL", 0), &conf("1.1.0"));
        assert_eq!(
            (d.code, d.json.clone()),
            (0, serde_json::Value::Null),
            "{d:?}"
        );
    }
    assert!(cni_rows(&n0).is_empty());
    let o = in_ns(&nss[0].0, &["ip", "link", "show", "eth0"]);
    assert!(o.is_err(), "the container's eth0 went with the DEL");
    let mut e = env("DEL", 0);
    e[1].1 = "never-added".into();
    assert_eq!(call(&e, &conf("1.1.0")).code, 0);

    // Errors, each with the spec's code, none leaving anything behind.
    let veths_before = veths(&n0);
    let mut missing = env("ADD", 0);
    missing.retain(|(k, _)| *k != "CNI_CONTAINERID");
    assert_eq!(call(&missing, &conf("1.1.0")).error_code(), 4);
    assert_eq!(call(&env("ADD", 0), &conf("9.9.9")).error_code(), 1);
    assert_eq!(
        call(
            &env("ADD", 0),
            &conf("1.1.0").replace("fastpath-cni", "bridge")
        )
        .error_code(),
        7
    );
    assert_eq!(
        call(
            &env("ADD", 0),
            &conf("1.1.0").replace("\"labels\"", "\"bridge\":1,\"labels\"")
        )
        .error_code(),
        2
    );
    assert_eq!(call(&env("ADD", 0), "{not json").error_code(), 6);
    let mut badns = env("ADD", 0);
    badns[2].1 = "/run/netns/nosuchns".into();
    assert_eq!(call(&badns, &conf("1.1.0")).error_code(), 8);
    let mut badargs = env("ADD", 0);
    badargs[5].1 = "FOO=bar".into();
    assert_eq!(call(&badargs, &conf("1.1.0")).error_code(), 4);
    // An address outside the node's pod CIDR, asked for: refused by fastpath (100).
    let mut ipargs = env("ADD", 0);
    ipargs[5].1 = "IP=192.0.2.7".into();
    let o = call(&ipargs, &conf("1.1.0"));
    assert_eq!(o.error_code(), 100, "{o:?}");
    assert!(o.details().contains("192.0.2.7"), "{o:?}");
    assert_eq!(veths(&n0), veths_before);
    assert!(cni_rows(&n0).is_empty());
}

/// A network namespace made by the test, deleted on drop.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = lab::sh(&["ip", "netns", "del", &self.0]);
    }
}

/// A TCP client for a restart: connects, then only reads the numbered lines the server
/// pushes every 10 ms, for `secs` seconds (it sends nothing but ACKs, so after a restart
/// the first packet of the connection is the server's: without the conntrack entry of the
/// last run, the client's ingress policy would drop it, and a ClusterIP's reply would not
/// be reverse-NATed). Prints `received last max_gap_ms error`.
const STREAM_CLIENT: &str = r#"
import socket, sys, time
ip, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((ip, port), timeout=5)
s.settimeout(30)
f = s.makefile('r')
got = 0
gap = 0.0
err = '-'
last = time.monotonic()
end = last + secs
try:
    while time.monotonic() < end:
        line = f.readline()
        if line.strip() != str(got):
            err = 'bad-line:%r' % line
            break
        got += 1
        now = time.monotonic()
        gap = max(gap, now - last)
        last = now
except Exception as e:
    err = type(e).__name__
print(got, got - 1, int(gap * 1000), err, flush=True)
"#;

/// For `secs` seconds: a TCP server that pushes a numbered line every 10 ms to each client,
/// and a UDP counter (port+1); prints the datagrams received per source address at the end.
const SERVERS: &str = r#"
import socket, sys, threading, time, collections
port, secs = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + secs
def push(c):
    i = 0
    try:
        while time.monotonic() < end:
            c.sendall(b'%d\n' % i); i += 1
            time.sleep(0.01)
    except Exception:
        pass
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(('0.0.0.0', port)); t.listen(16); t.settimeout(0.2)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', port + 1)); u.settimeout(0.01)
seen = collections.Counter()
print('ready', flush=True)
while time.monotonic() < end:
    try:
        c, _ = t.accept(); threading.Thread(target=push, args=(c,), daemon=True).start()
    except socket.timeout:
        pass
    for _ in range(200):
        try:
            _, a = u.recvfrom(2048); seen[a[0]] += 1
        except socket.timeout:
            break
print(' '.join('%s=%d' % kv for kv in seen.items()), flush=True)
"#;

/// Sends a UDP datagram to ip:port every 5 ms for `secs` seconds.
const UDP_SENDER: &str = r#"
import socket, sys, time
ip, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + secs
while time.monotonic() < end:
    try:
        u.sendto(b'x', (ip, port))
    except OSError:
        pass
    time.sleep(0.005)
"#;

fn py(ns: &str, script: &str, args: &[&str]) -> std::process::Child {
    let mut a = vec!["netns", "exec", ns, "python3", "-u", "-c", script];
    a.extend_from_slice(args);
    std::process::Command::new("ip")
        .args(&a)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: std::process::Child) -> String {
    let o = c.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// fastpath stopped (SIGTERM) and killed (SIGKILL) under containers: everything it knew
/// comes back before it serves again — the CNI endpoints with their addresses, endpoint
/// IDs and identities, runtime services and policies, conntrack — so established TCP
/// connections (direct, and through a ClusterIP, whose replies need conntrack's reverse
/// NAT and the client's ingress policy needs conntrack to admit) survive; a container
/// denied by policy never gets a frame through, even with the node forwarding IPv4; and a
/// container created while fastpath is down is refused cleanly.
#[test]
fn restarts_keep_containers_connections_and_policy() {
    if !require_root() || !podman_available() {
        return;
    }
    let tag = unique("cr");
    let yamls = cluster_yaml(&tag, &[Kind::Fastpath], 1, "");
    let mut n = TestNode::start(&yamls[0], 1, &[]);
    let node = n.cfg.node.name.clone();
    let mut pm = Podman::new(&tag);
    for app in ["web", "client", "bad"] {
        pm.network(
            &format!("{tag}{app}"),
            "1.0.0",
            &format!("\"node\":\"{node}\",\"labels\":{{\"app\":\"{app}\"}}"),
        );
    }
    pm.run("web", &format!("{tag}web"));
    pm.run("client", &format!("{tag}client"));
    pm.run("bad", &format!("{tag}bad"));
    let (web, client, bad) = (pm.ip("web"), pm.ip("client"), pm.ip("bad"));
    let (web_ns, client_ns, bad_ns) = (pm.netns("web"), pm.netns("client"), pm.netns("bad"));
    // The node forwards IPv4, as a podman host does: only fastpath's routing guard keeps the
    // kernel from routing to pods while fastpath is away.
    in_ns(n.node_ns(), &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    let cidr = n.cfg.node.pod_cidr.unwrap().to_string();
    let rules =
        String::from_utf8_lossy(&in_ns(n.node_ns(), &["ip", "rule", "show"]).unwrap().stdout)
            .to_string();
    assert!(
        rules.contains(&format!("40:\tfrom all to {cidr} blackhole proto 251")),
        "{rules}"
    );
    // web admits only client (TCP 7000, UDP 7001); client admits nobody (replies to its own
    // connections come in through conntrack); a ClusterIP in front of web.
    n.apply(
        "policy",
        "kind: CiliumNetworkPolicy\nmetadata: { name: web }\nspec:\n  endpointSelector: { matchLabels: { app: web } }\n  ingress: [{ fromEndpoints: [{ matchLabels: { app: client } }] }]\n---\nkind: CiliumNetworkPolicy\nmetadata: { name: client }\nspec:\n  endpointSelector: { matchLabels: { app: client } }\n  ingress: [{ fromEndpoints: [{ matchLabels: { app: nobody } }] }]\n",
    );
    n.apply(
        "service",
        &format!(
            "{{ name: web, cluster_ip: 10.96.50.5, ports: [{{ port: 80, target_port: 7000 }}], backends: [{{ ip: {web} }}] }}\n"
        ),
    );
    let secs = "14";
    let mut servers = py(&web_ns, SERVERS, &["7000", "22"]);
    {
        use std::io::BufRead;
        let mut l = String::new();
        std::io::BufReader::new(servers.stdout.as_mut().unwrap())
            .read_line(&mut l)
            .unwrap();
        assert_eq!(l.trim(), "ready");
    }
    assert!(!pm.ping("bad", &web, 1), "bad is denied before anything");
    let before_rows = api::endpoints(&n.socket).unwrap();
    let before_free = node_info(&n).ipam_free;
    let direct = py(&client_ns, STREAM_CLIENT, &[&web, "7000", secs]);
    let via_vip = py(&client_ns, STREAM_CLIENT, &["10.96.50.5", "80", secs]);
    let leak = py(&bad_ns, UDP_SENDER, &[&web, "7001", secs]);
    let control = py(&client_ns, UDP_SENDER, &[&web, "7001", secs]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let ct_before = stdout_of(n.cli(&["bpf", "ct", "list", "global"]));
    assert!(ct_before.contains("10.96.50.5:80"), "{ct_before}");

    // SIGTERM, then start again.
    let t = Instant::now();
    n.stop();
    // Down: a new container is refused cleanly (try again later), leaving nothing.
    let veths_down = veths(&n);
    let o = pm.try_run("late", &format!("{tag}client"));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("not serving"), "{err}");
    assert_eq!(veths(&n), veths_down, "a refused ADD leaves no link");
    // podman keeps the container it could not network (created, not running).
    pm.rm("late");
    n.launch(&[]);
    eprintln!("SIGTERM -> serving again: {:?}", t.elapsed());
    let log = n.log();
    assert!(
        log.contains("restored 1 service(s), 2 policy object(s) and 3 endpoint(s)"),
        "{log}"
    );
    assert!(
        log.contains("conntrack and") && log.contains("(0 conntrack entries dropped"),
        "conntrack restored whole: {log}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));

    // SIGKILL (nothing cleaned up), then start again.
    let t = Instant::now();
    n.crash();
    n.launch(&[]);
    eprintln!("SIGKILL -> serving again: {:?}", t.elapsed());
    assert!(n.log().contains("conntrack and"), "{}", n.log());

    let d = finish(direct);
    let v = finish(via_vip);
    let _ = finish(leak);
    let _ = finish(control);
    let counts = finish(servers);
    eprintln!("direct: {d}via ClusterIP: {v}UDP received by web: {counts}");
    for (what, out) in [("direct", &d), ("ClusterIP", &v)] {
        let f: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(f.get(3), Some(&"-"), "{what} connection broke: {out}");
        assert!(f[0].parse::<u32>().unwrap() > 200, "{what}: {out}");
    }
    assert!(
        counts.contains(&format!("{client}=")),
        "control datagrams arrive: {counts}"
    );
    assert!(
        !counts.contains(&format!("{bad}=")),
        "a frame of the denied container got through: {counts}"
    );
    // Everything as it was: endpoints (IDs, identities, addresses), IPAM, services, policy.
    let key = |r: &fastpath::endpoints::EndpointRow| {
        (
            r.id,
            r.identity,
            r.ipv4.clone(),
            r.lxc.clone(),
            r.name.clone(),
        )
    };
    let mut a: Vec<_> = before_rows.iter().map(key).collect();
    let mut b: Vec<_> = api::endpoints(&n.socket).unwrap().iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(node_info(&n).ipam_free, before_free);
    assert!(stdout_of(n.cli(&["bpf", "lb", "list"])).contains("10.96.50.5:80"));
    assert!(stdout_of(n.cli(&["policy", "list"])).contains("CiliumNetworkPolicy/default/web"));
    assert!(!pm.ping("bad", &web, 1), "bad is still denied");
    // After the restarts a new container is served.
    pm.run("late", &format!("{tag}client"));
    assert!(pm.ping("late", &client, 2) || pm.ping("late", &n.pod_ip(0), 2));
}

fn stdout_of(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}
