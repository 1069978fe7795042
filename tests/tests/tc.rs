//! The tc datapath beside the AF_XDP workers (issue #15): devices moved between the two at
//! run time keep their connections, and a node with some devices on each serves traffic
//! between them — both because the two datapaths share one conntrack, one set of policy
//! maps and one set of service maps. Real namespaces, real TCP clients; what a user checks:
//! answers received on a connection opened before the move, the datapath `fastpath status`
//! reports per device, and the counters of the path that carried the packets.

use control::maps::DropReason;
use fastpath_tests::{Kind, LongConn, Pods, TestNode, cluster_yaml, require_root, unique};

fn set(n: &TestNode, dev: &str, to: &str) {
    let out = n.cli(&["datapath", "set", dev, to]);
    assert!(
        out.status.success(),
        "datapath set {dev} {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{to} datapath")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        n.status().datapath_of(dev),
        Some(to),
        "status after the move"
    );
}

/// A same-node and a cross-node TCP connection, opened on XDP, keep answering while the
/// client pod's device, then the node NIC, move to tc and back; each phase's packets are
/// counted by the datapath that carried them (tc counters in the tc phase, the XDP
/// program's in the XDP phases). The client's pod has a default-deny ingress policy, so
/// the answers it gets in every phase are admitted only as replies of the connection the
/// other datapath recorded.
#[test]
fn moving_devices_between_xdp_and_tc_keeps_connections() {
    if !require_root() {
        return;
    }
    let tag = unique("tm");
    let y = cluster_yaml(&tag, &[Kind::Fastpath, Kind::Fastpath], 2, "");
    let n0 = TestNode::start(&y[0], 1, &["--datapath", "xdp"]);
    let n1 = TestNode::start(&y[1], 1, &[]);
    n0.wait_overlay_ready();
    n1.wait_overlay_ready();
    assert!(n0.status().devices.iter().all(|d| d.datapath == "xdp"));
    // n0p0 accepts nothing: replies get in only through conntrack.
    n0.apply(
        "policy",
        "kind: CiliumNetworkPolicy\nmetadata: { name: closed }\nspec:\n  endpointSelector: { matchLabels: { app: n0p0 } }\n  ingress: [{}]\n",
    );
    let _local = n0.echo_server(1, 7201);
    let _remote = n1.echo_server(0, 7202);
    let mut same = LongConn::open(n0.pod_ns(0), &n0.pod_ip(1), 7201, false);
    let mut cross = LongConn::open(n0.pod_ns(0), &n1.pod_ip(0), 7202, false);
    let round = |phase: &str, same: &mut LongConn, cross: &mut LongConn| {
        for i in 0..3 {
            let m = format!("{phase} {i}");
            assert_eq!(same.echo(&m), m, "same node, {phase}\n{}", n0.log());
            assert_eq!(cross.echo(&m), m, "cross node, {phase}\n{}", n0.log());
        }
    };
    round("xdp", &mut same, &mut cross);

    let (steered, tc0) = {
        let s = n0.status();
        (s.xdp_counter("steered"), s.tc_counter("delivered"))
    };
    set(&n0, "lxc-p0", "tc");
    round("lxc on tc", &mut same, &mut cross);
    let s = n0.status();
    assert!(
        s.tc_counter("encapsulated") >= 3,
        "the pod's packets to n1 went out through tc: {:?}",
        s.tc
    );
    assert!(
        s.tc_counter("delivered") >= tc0 + 3,
        "and to its neighbour: {:?}",
        s.tc
    );
    set(&n0, "eth1", "tc");
    round("lxc and NIC on tc", &mut same, &mut cross);
    let s = n0.status();
    assert!(
        s.tc_counter("decapsulated") >= 3,
        "n1's answers came in through tc: {:?}",
        s.tc
    );
    set(&n0, "eth1", "xdp");
    set(&n0, "lxc-p0", "xdp");
    // The tc programs are gone from both devices, not only overtaken by XDP: what XDP hands
    // to the kernel (the pod's ping to its gateway, the other node's ping to this node's
    // NIC) no longer meets them.
    let passed = n0.status().tc_counter("passed");
    let router = n0.cfg.node.router_ip.to_string();
    assert!(n0.ping(0, &router, 2), "pod -> host");
    let nic = n0
        .cfg
        .node
        .underlay
        .as_ref()
        .unwrap()
        .address
        .addr
        .to_string();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            n1.node_ns(),
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            &nic,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "n1 -> n0's NIC");
    assert_eq!(
        n0.status().tc_counter("passed"),
        passed,
        "no tc program left on lxc-p0 or eth1"
    );
    round("back on xdp", &mut same, &mut cross);
    assert!(n0.status().xdp_counter("steered") >= steered + 6);
    // The closed pod's policy was in force throughout: a new connection to it is refused.
    let _srv = n0.echo_server(0, 7203);
    let denied = n0.status().drops_with(DropReason::Policy.code());
    assert!(n0.echo(1, "TCP", &n0.pod_ip(0), 7203, "in?\n").is_empty());
    assert!(n0.status().drops_with(DropReason::Policy.code()) > denied);
    // A device fastpath does not own is refused by name.
    let out = n0.cli(&["datapath", "set", "nosuch0", "tc"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("device `nosuch0` is not attached"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One node, one pod on tc and the other on XDP (`datapath.attach_devices`): ping, TCP and
/// UDP between them both ways, and to the other node; the tc pod's default-deny ingress
/// holds, while the answers to its own connections — carried by the workers — get in.
#[test]
fn a_node_with_pods_on_both_datapaths() {
    if !require_root() {
        return;
    }
    let tag = unique("tx");
    let y = cluster_yaml(
        &tag,
        &[Kind::Fastpath, Kind::Fastpath],
        2,
        "  attach_devices: { lxc-p0: tc }\n",
    );
    let n0 = TestNode::start(&y[0], 1, &[]);
    let n1 = TestNode::start(&y[1], 1, &[]);
    n0.wait_overlay_ready();
    n1.wait_overlay_ready();
    let s = n0.status();
    assert_eq!(s.datapath_of("lxc-p0"), Some("tc"), "{:?}", s.devices);
    assert_eq!(s.datapath_of("lxc-p1"), Some("xdp"));
    assert_eq!(s.datapath_of("eth1"), Some("xdp"));
    let text = String::from_utf8_lossy(&n0.cli(&["status"]).stdout).to_string();
    assert!(
        text.contains("lxc-p0") && text.contains("tc datapath:"),
        "{text}"
    );

    assert!(
        n0.ping(0, &n0.pod_ip(1), 3),
        "tc pod -> xdp pod\n{}",
        n0.log()
    );
    assert!(n0.ping(1, &n0.pod_ip(0), 3), "xdp pod -> tc pod");
    let _s1 = n0.echo_server(1, 7301);
    let _s0 = n0.echo_server(0, 7302);
    for proto in ["TCP", "UDP"] {
        assert_eq!(
            n0.echo(0, proto, &n0.pod_ip(1), 7301, "tc to xdp\n"),
            "tc to xdp\n"
        );
        assert_eq!(
            n0.echo(1, proto, &n0.pod_ip(0), 7302, "xdp to tc\n"),
            "xdp to tc\n"
        );
    }
    assert!(n0.ping(0, &n1.pod_ip(0), 3), "tc pod -> other node");
    assert!(n1.ping(1, &n0.pod_ip(0), 3), "other node -> tc pod");
    let s = n0.status();
    assert!(s.tc_counter("delivered") >= 3 && s.tc_counter("encapsulated") >= 3);
    assert!(
        s.workers[0].forwarded("egress") >= 3,
        "the workers carried the xdp pod"
    );

    // The tc pod closes its ingress: the xdp pod cannot open a connection to it any more,
    // but its own connection to the xdp pod is answered (the reply crosses the workers,
    // which find the entry the tc program made).
    n0.apply(
        "policy",
        "kind: CiliumNetworkPolicy\nmetadata: { name: closed }\nspec:\n  endpointSelector: { matchLabels: { app: n0p0 } }\n  ingress: [{}]\n",
    );
    let denied = n0.status().drops_with(DropReason::Policy.code());
    assert!(n0.echo(1, "TCP", &n0.pod_ip(0), 7302, "in?\n").is_empty());
    assert!(n0.status().drops_with(DropReason::Policy.code()) > denied);
    assert_eq!(
        n0.echo(0, "TCP", &n0.pod_ip(1), 7301, "out and back\n"),
        "out and back\n"
    );
}

/// Bad datapath settings are refused before anything is made, naming the field.
#[test]
fn datapath_settings_are_checked() {
    let bad = [
        ("datapath:\n  attach: tcx\n", "datapath.attach"),
        (
            "datapath:\n  attach_devices: { \"a/b\": tc }\n",
            "is not a device name",
        ),
    ];
    for (y, want) in bad {
        let text = format!("node: {{ name: cfgtest, router_ip: 10.9.0.1 }}\n{y}pods: []\n");
        let path = std::env::temp_dir().join(format!("fp-tc-cfg-{}.yaml", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let out = std::process::Command::new(fastpath_tests::fastpath_bin())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{y}: accepted");
        assert!(err.contains(want), "{y}: {err}");
    }
}
