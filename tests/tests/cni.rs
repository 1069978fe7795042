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
use fastpath_tests::{Kind, Pods, TestNode, cluster_yaml, footprint, require_root, unique};
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
    let yamls = cluster_yaml(&tag, &[Kind::Fastpath, Kind::Fastpath], 1, "");
    let n0 = TestNode::start(&yamls[0], 1, &[]);
    let n1 = TestNode::start(&yamls[1], 1, &[]);
    n0.wait_overlay_ready();
    n1.wait_overlay_ready();
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
