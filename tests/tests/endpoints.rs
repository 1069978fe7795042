//! Endpoints added and removed on a running node (issue #12): real namespaces and veths
//! made the way a CNI plugin makes them, `fastpath endpoint add|delete|list` and the control
//! socket's requests, real ping and socat traffic, and the kernel's own view of what is left
//! behind (fds, AF_XDP sockets in `/proc/net/protocols`, XDP on the device, map entries).
//!
//! One two-node cluster for the whole suite (each phase below is a named step on it): the
//! refusals, an add with traffic flowing between two other pods, a restart that must restore
//! it, a delete, and 200 add/delete cycles that must leak nothing.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use control::config::PodConfig;
use fastpath::api;
use fastpath_tests::{Kind, Pods, TestNode, cluster_yaml, footprint, require_root, unique};
use lab::{PodNs, in_ns};

/// A pod for node `n` that is not in its config: address .`host` of its pod CIDR.
fn new_pod(n: &TestNode, name: &str, host: u8, lxc: &str, app: &str) -> PodConfig {
    let o = n.cfg.pods[0].ip.octets();
    PodConfig {
        name: name.into(),
        namespace: "default".into(),
        ip: Ipv4Addr::new(o[0], o[1], o[2], host),
        ipv6: None,
        mac: format!("0a:58:0a:{:02x}:{:02x}:{host:02x}", o[1], o[2])
            .parse()
            .unwrap(),
        lxc: lxc.into(),
        id: None,
        labels: [("app".to_string(), app.to_string())].into(),
        netns: Some(format!("{}{name}", n.cfg.node.name)),
        cni: None,
    }
}

/// `fastpath endpoint add` flags for `p`.
fn add_args(p: &PodConfig) -> Vec<String> {
    let mut a = vec![
        "endpoint".into(),
        "add".into(),
        "--name".into(),
        p.name.clone(),
        "--ip".into(),
        p.ip.to_string(),
        "--mac".into(),
        p.mac.to_string(),
        "--lxc".into(),
        p.lxc.clone(),
    ];
    if let Some(v6) = p.ipv6 {
        a.push("--ipv6".into());
        a.push(v6.to_string());
    }
    for (k, v) in &p.labels {
        a.push("--label".into());
        a.push(format!("{k}={v}"));
    }
    a
}

fn cli(n: &TestNode, args: &[String]) -> (bool, String, String) {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = n.cli(&a);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A ping run in the background: `count` echoes every 10 ms from `ns` to `ip` (bounded by
/// count, or stopped early with SIGINT to that ping alone).
struct PingRun(std::process::Child);

impl PingRun {
    fn start(ns: &str, ip: &str, count: u32) -> PingRun {
        // `ip netns exec` execs ping: the child is the ping itself.
        let c = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-n", "-q", "-c"])
            .arg(count.to_string())
            .args(["-i", "0.01", "-W", "1", ip])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        PingRun(c)
    }

    /// Stop it now (SIGINT: ping prints its summary).
    fn stop(self) -> (u32, u32) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        self.finish()
    }

    /// Wait for it: (sent, received).
    fn finish(self) -> (u32, u32) {
        let out = self.0.wait_with_output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        // "N packets transmitted, M received"
        let line = s
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_default()
            .to_string();
        let num = |w: &str| {
            line.split(", ")
                .find(|p| p.contains(w))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("transmitted"), num("received"))
    }
}

/// A server process, killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn endpoints_come_and_go_while_traffic_flows() {
    if !require_root() {
        return;
    }
    let y = cluster_yaml(&unique("ep"), &[Kind::Fastpath, Kind::Fastpath], 2, "");
    // n0 has an IPv6 pod CIDR, so the pod added below is dual stack: its IPv6 address goes
    // into cilium_lxc and the ipcache too (and through the 200 cycles).
    let y0 = y[0].replacen(
        "  pod_cidr: ",
        "  pod_cidr_v6: \"fd00:ee::/64\"\n  pod_cidr: ",
        1,
    );
    let mut n0 = TestNode::start(&y0, 1, &["--cores", "0"]);
    let n1 = TestNode::start(&y[1], 1, &["--cores", "1"]);
    n0.wait_overlay_ready();
    n1.wait_overlay_ready();
    assert!(n0.ping(0, &n0.pod_ip(1), 2), "{}", n0.log());
    let before = footprint(&n0);
    eprintln!("footprint: {before:?}");

    refusals(&n0);
    assert_eq!(
        footprint(&n0),
        before,
        "a refused request changed something"
    );

    // The new pod has the labels of n0p1, so n1 (which knows that identity) accepts its
    // traffic from the tunnel; a pod with labels no other node knows only talks same-node
    // until the identity reaches them (docs/endpoints.md).
    let mut pod = new_pod(&n0, "web", 50, "lxc-web", "n0p1");
    pod.ipv6 = Some("fd00:ee::50".parse().unwrap());
    let pod_ns = PodNs::up(&n0.cfg, &pod, 1).unwrap();
    add_with_traffic(&n0, &n1, &pod);
    restart_restores(&mut n0, &n1, &pod);
    delete_with_traffic(&n0, &pod);
    assert_eq!(footprint(&n0), before, "after one add and delete");

    cycles(&n0, &pod, 200);
    assert_eq!(footprint(&n0), before, "after 200 add/delete cycles");
    drop(pod_ns);

    device_gone_under_a_running_endpoint(&n0);
    assert_eq!(
        footprint(&n0),
        before,
        "after a device went away under an endpoint"
    );
}

/// The pod's namespace (and so its veth) is deleted before its delete request: the worker
/// does not spin on the dead socket, other pods keep working, and the delete still cleans up.
fn device_gone_under_a_running_endpoint(n0: &TestNode) {
    let pod = new_pod(n0, "gone", 51, "lxc-gone", "n0p1");
    let ns = PodNs::up(&n0.cfg, &pod, 1).unwrap();
    let (ok, _, err) = cli(n0, &add_args(&pod));
    assert!(ok, "{err}");
    let ip = pod.ip.to_string();
    assert!(n0.ping(0, &ip, 1));
    drop(ns); // the veth pair goes with the namespace
    // Frames routed to it now go nowhere; the worker must still sleep when idle.
    let _ = n0.ping(0, &ip, 3);
    let sleeps = |n: &TestNode| n.status().workers.iter().map(|w| w.sleeps).sum::<u64>();
    let s0 = sleeps(n0);
    std::thread::sleep(Duration::from_millis(1000));
    let slept = sleeps(n0) - s0;
    assert!(
        slept > 20,
        "the worker spins on a dead socket: {slept} sleeps in 1 s"
    );
    assert!(
        n0.ping(0, &n0.pod_ip(1), 3),
        "other pods unaffected\n{}",
        n0.log()
    );
    let (ok, out, err) = cli(
        n0,
        &["endpoint".into(), "delete".into(), "default/gone".into()],
    );
    assert!(ok && out.contains("deleted"), "{err}");
}

/// Bad requests are refused with an error that names the field; nothing changes.
fn refusals(n0: &TestNode) {
    let missing = new_pod(n0, "ghost", 60, "lxc-ghost", "x");
    let (ok, _, err) = cli(n0, &add_args(&missing));
    assert!(
        !ok && err.contains("lxc:") && err.contains("lxc-ghost"),
        "{err}"
    );

    let mut dup = new_pod(n0, "dup", 61, n0.cfg.pods[0].lxc.as_str(), "x");
    let (ok, _, err) = cli(n0, &add_args(&dup));
    assert!(!ok && err.contains("already serves"), "{err}");
    dup.ip = n0.cfg.pods[1].ip;
    dup.lxc = "lxc-dup".into();
    let (ok, _, err) = cli(n0, &add_args(&dup));
    assert!(
        !ok && err.contains("ip:") && err.contains("already an endpoint"),
        "{err}"
    );

    let mut bad = new_pod(n0, "Bad_Name", 62, "lxc-bad", "x");
    let (ok, _, err) = cli(n0, &add_args(&bad));
    assert!(!ok && err.contains("name:"), "{err}");
    bad.name = "bad".into();
    bad.ip = "224.0.0.1".parse().unwrap();
    let (ok, _, err) = cli(n0, &add_args(&bad));
    assert!(!ok && err.contains("ip:"), "{err}");
    // Dual stack: the IPv6 address must be in the node's pod_cidr_v6, and usable.
    let mut v6 = new_pod(n0, "six", 63, "lxc-six", "x");
    v6.ipv6 = Some("fd00:99::63".parse().unwrap());
    let (ok, _, err) = cli(n0, &add_args(&v6));
    assert!(
        !ok && err.contains("ipv6: fd00:99::63 is outside node.pod_cidr_v6 fd00:ee::/64"),
        "{err}"
    );
    v6.ipv6 = Some("fe80::63".parse().unwrap());
    let (ok, _, err) = cli(n0, &add_args(&v6));
    assert!(
        !ok && err.contains("ipv6: fe80::63 cannot be a pod address"),
        "{err}"
    );

    let cfg_pod = format!("default/{}", n0.cfg.pods[0].name);
    let (ok, _, err) = cli(n0, &["endpoint".into(), "delete".into(), cfg_pod]);
    assert!(!ok && err.contains("defined in the node config"), "{err}");
    let (ok, _, err) = cli(n0, &["endpoint".into(), "delete".into(), "nope".into()]);
    assert!(!ok && err.contains("not found"), "{err}");
}

/// Add the pod while n0p0 pings n0p1 every 10 ms: no echo of theirs is lost; the new pod
/// answers ping and TCP from the same node and from the other node.
fn add_with_traffic(n0: &TestNode, n1: &TestNode, pod: &PodConfig) {
    let run = PingRun::start(n0.pod_ns(0), &n0.pod_ip(1), 300);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let (ok, out, err) = cli(n0, &add_args(pod));
    assert!(ok, "endpoint add: {err}\n{}", n0.log());
    let took = t.elapsed();
    assert!(out.contains("added"), "{out}");
    let (sent, got) = run.finish();
    assert!(sent >= 290, "the ping ran: {sent}");
    assert_eq!(sent, got, "n0p0 -> n0p1 lost echoes while a pod was added");
    eprintln!("endpoint add took {took:?}");

    // The listing, text and JSON.
    let (ok, out, _) = cli(n0, &["endpoint".into(), "list".into()]);
    assert!(
        ok && out.contains("default/web") && out.contains("api"),
        "{out}"
    );
    let rows = api::endpoints(&n0.socket).unwrap();
    let web = rows.iter().find(|r| r.name == "web").expect("listed");
    let p1 = rows.iter().find(|r| r.name == n0.cfg.pods[1].name).unwrap();
    assert_eq!(web.identity, p1.identity, "same labels, same identity");
    assert_eq!(web.source, fastpath::endpoints::Source::Api);
    assert!(n0.xdp_attached(&pod.lxc), "XDP on its lxc");
    let lxc = api::endpoint_list(&n0.socket).unwrap();
    assert!(
        lxc.iter().any(|(k, _)| k.contains(&pod.ip.to_string())),
        "cilium_lxc has it: {lxc:?}"
    );
    assert_eq!(web.ipv6.as_deref(), Some("fd00:ee::50"));
    assert!(
        lxc.iter().any(|(k, _)| k == "[fd00:ee::50]:0"),
        "cilium_lxc has its IPv6 key too: {lxc:?}"
    );
    let ipc = n0.cli(&["bpf", "ipcache", "list"]);
    let ipc = String::from_utf8_lossy(&ipc.stdout);
    assert!(ipc.contains("fd00:ee::50/128"), "{ipc}");

    let ip = pod.ip.to_string();
    let ns = pod.netns.clone().unwrap();
    assert!(n0.ping(0, &ip, 3), "same node\n{}", n0.log());
    assert!(n1.ping(0, &ip, 3), "from the other node\n{}", n0.log());
    let _srv = echo_in(&ns, 7100);
    assert_eq!(n0.echo(1, "TCP", &ip, 7100, "hi web\n"), "hi web\n");
    assert_eq!(n1.echo(1, "TCP", &ip, 7100, "hi from n1\n"), "hi from n1\n");
    // And the pod itself reaches out (its own egress path).
    let out = in_ns(&ns, &["ping", "-n", "-c", "2", "-W", "1", &n1.pod_ip(0)]).unwrap();
    assert!(out.status.success(), "web -> n1p0");
}

/// A restart serves the runtime endpoint again, from the state dir, before traffic.
fn restart_restores(n0: &mut TestNode, n1: &TestNode, pod: &PodConfig) {
    n0.stop();
    assert!(!n0.xdp_attached(&pod.lxc), "XDP goes with the process");
    n0.launch(&["--cores", "0"]);
    n0.wait_overlay_ready();
    assert!(n0.log().contains("1 endpoint(s)"), "{}", n0.log());
    let rows = api::endpoints(&n0.socket).unwrap();
    assert!(
        rows.iter()
            .any(|r| r.name == pod.name && r.source == fastpath::endpoints::Source::Api),
        "{rows:?}"
    );
    if let Some(v6) = pod.ipv6 {
        let r = rows.iter().find(|r| r.name == pod.name).unwrap();
        assert_eq!(
            r.ipv6,
            Some(v6.to_string()),
            "its IPv6 address came back too"
        );
        let lxc = api::endpoint_list(&n0.socket).unwrap();
        assert!(
            lxc.iter().any(|(k, _)| *k == format!("[{v6}]:0")),
            "and its IPv6 cilium_lxc key: {lxc:?}"
        );
    }
    assert!(n0.ping(0, &pod.ip.to_string(), 3), "{}", n0.log());
    assert!(n1.ping(0, &pod.ip.to_string(), 3), "{}", n0.log());
}

/// Delete it while n0p0 pings n0p1: none of theirs lost, the pod's traffic stops, its
/// conntrack entries, map entries and XDP are gone.
fn delete_with_traffic(n0: &TestNode, pod: &PodConfig) {
    let ip = pod.ip.to_string();
    // A conntrack entry of the pod's, to see it flushed.
    assert!(n0.ping(0, &ip, 1));
    let ct = api::ct_list(&n0.socket).unwrap().0;
    assert!(ct.iter().any(|r| r.line.contains(&ip)), "{ct:?}");
    let run = PingRun::start(n0.pod_ns(0), &n0.pod_ip(1), 300);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out, err) = cli(
        n0,
        &["endpoint".into(), "delete".into(), "default/web".into()],
    );
    assert!(ok, "endpoint delete: {err}\n{}", n0.log());
    assert!(
        out.contains("deleted") && out.contains("conntrack"),
        "{out}"
    );
    let (sent, got) = run.finish();
    assert!(sent >= 290);
    assert_eq!(
        sent, got,
        "n0p0 -> n0p1 lost echoes while a pod was deleted"
    );

    assert!(!n0.ping(0, &ip, 2), "the deleted pod still answers");
    assert!(!n0.xdp_attached(&pod.lxc));
    let ct = api::ct_list(&n0.socket).unwrap().0;
    assert!(
        !ct.iter().any(|r| r.line.contains(&format!("{ip}:"))),
        "flushed: {ct:?}"
    );
    let lxc = api::endpoint_list(&n0.socket).unwrap();
    assert!(!lxc.iter().any(|(k, _)| k.contains(&ip)), "{lxc:?}");
    if let Some(v6) = pod.ipv6 {
        let v6 = v6.to_string();
        assert!(!lxc.iter().any(|(k, _)| k.contains(&v6)), "{lxc:?}");
        let ipc = n0.cli(&["bpf", "ipcache", "list"]);
        let ipc = String::from_utf8_lossy(&ipc.stdout);
        assert!(!ipc.contains(&v6), "its /128 is gone: {ipc}");
    }
    let rows = api::endpoints(&n0.socket).unwrap();
    assert!(!rows.iter().any(|r| r.name == pod.name));
    // The state dir forgot it too: a restart would not bring it back.
    let st = std::fs::read_to_string(n0.state_dir.join("runtime.json")).unwrap();
    assert!(!st.contains("lxc-web"), "{st}");
}

/// Add and delete the same pod `n` times while n0p0 pings n0p1 in the background; the pod
/// answers one ping in every cycle (so its rings carry frames when it goes).
fn cycles(n0: &TestNode, pod: &PodConfig, n: usize) {
    let run = PingRun::start(n0.pod_ns(0), &n0.pod_ip(1), 100_000);
    let ip = pod.ip.to_string();
    let t = Instant::now();
    for i in 0..n {
        let mut p = pod.clone();
        p.netns = None;
        api::endpoint_add(&n0.socket, p).unwrap_or_else(|e| panic!("cycle {i} add: {e}"));
        let out = in_ns(n0.pod_ns(0), &["ping", "-n", "-c", "1", "-W", "1", &ip]).unwrap();
        assert!(out.status.success(), "cycle {i}: the pod does not answer");
        api::endpoint_delete(&n0.socket, "web").unwrap_or_else(|e| panic!("cycle {i} delete: {e}"));
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "cycle {i}: too slow"
        );
    }
    eprintln!("{n} add/delete cycles in {:?}", t.elapsed());
    // Stop the background ping (bounded by count, stopped here) and check it lost nothing.
    let (sent, got) = run.stop();
    assert!(sent > 100, "{sent}");
    assert!(
        sent - got <= 1,
        "n0p0 -> n0p1 lost {} of {sent} echoes during the cycles (the last may be cut off by the stop)",
        sent - got
    );
    let st = n0.status();
    // Counted since the restart: the n cycles and the delete before them.
    assert_eq!(st.endpoints.added as usize, n, "{:?}", st.endpoints);
    assert_eq!(st.endpoints.deleted as usize, n + 1);
    assert_eq!(st.endpoints.failed, 0);
    assert!(st.workers.iter().map(|w| w.frames_reclaimed).sum::<u64>() > 0);
}

fn echo_in(ns: &str, port: u16) -> Killed {
    let c = Command::new("ip")
        .args(["netns", "exec", ns, "socat", "-T", "3"])
        .arg(format!("TCP-LISTEN:{port},fork,reuseaddr"))
        .arg("PIPE")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    Killed(c)
}
