//! Cross-node pod↔pod through fastpath (tunnel and native routing), and interop with a node
//! that uses the Linux kernel's own VXLAN device: real namespaces, a fabric bridge as the
//! underlay, real XDP + AF_XDP, real clients (ping, socat, iperf3), tshark on the wire.

use std::process::Command;

use control::maps::DropReason;
use fastpath::lab::in_ns;
use fastpath_tests::{KernelNode, Kind, Pods, TestNode, cluster_yaml, require_root, unique};

/// Two fastpath nodes × two pods, tunnel mode.
fn two_nodes(tag: &str, extra: &str) -> (TestNode, TestNode) {
    let y = cluster_yaml(&unique(tag), &[Kind::Fastpath, Kind::Fastpath], 2, extra);
    let a = TestNode::start(&y[0], 1, &["--cores", "0"]);
    let b = TestNode::start(&y[1], 1, &["--cores", "1"]);
    a.wait_overlay_ready();
    b.wait_overlay_ready();
    (a, b)
}

#[test]
fn tunnel_ping_tcp_udp_iperf_between_nodes() {
    if !require_root() {
        return;
    }
    let (n0, n1) = two_nodes("t", "");
    // Every pod of n0 reaches every pod of n1 and back.
    for i in 0..2 {
        for j in 0..2 {
            assert!(
                n0.ping(i, &n1.pod_ip(j), 3),
                "n0p{i} -> n1p{j}\n{}",
                n0.log()
            );
            assert!(
                n1.ping(j, &n0.pod_ip(i), 3),
                "n1p{j} -> n0p{i}\n{}",
                n1.log()
            );
        }
    }
    let _srv = n1.echo_server(1, 7007);
    assert_eq!(
        n0.echo(0, "TCP", &n1.pod_ip(1), 7007, "over the tunnel\n"),
        "over the tunnel\n"
    );
    assert_eq!(
        n0.echo(1, "UDP", &n1.pod_ip(1), 7007, "udp across nodes\n"),
        "udp across nodes\n"
    );
    let s0 = n0.status();
    let s1 = n1.status();
    assert!(
        s0.encapsulated() > 0 && s0.decapsulated() > 0,
        "{}",
        s0.render()
    );
    assert!(
        s1.encapsulated() > 0 && s1.decapsulated() > 0,
        "{}",
        s1.render()
    );
    assert!(s1.xdp_counter("steered_overlay") > 0);
    assert!(s0.xdp_counter("steered_remote_pod") > 0);
    let o = s0.overlay.as_ref().expect("overlay status");
    assert_eq!(o.mode, "tunnel");
    assert_eq!(o.nexthops.len(), 1);
    assert!(
        o.nexthops[0].mac.is_some(),
        "next hop resolved: {:?}",
        o.nexthops
    );

    // iperf3 TCP, bounded: 2 s.
    let _iperf = n1.spawn_in_pod(0, &["iperf3", "-s", "-1", "-p", "5201"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = n0.pod_cmd(
        0,
        &[
            "timeout",
            "20",
            "iperf3",
            "-c",
            &n1.pod_ip(0),
            "-p",
            "5201",
            "-t",
            "2",
            "-J",
        ],
    );
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bps = j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    eprintln!("iperf3 cross-node tunnel: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 1e6, "iperf3 moved {bps} bit/s");
}
