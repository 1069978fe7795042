//! Cross-node pod↔pod through fastpath (tunnel and native routing), and interop with a node
//! that uses the Linux kernel's own VXLAN device: real namespaces, a fabric bridge as the
//! underlay, real XDP + AF_XDP, real clients (ping, socat, iperf3), tshark on the wire.

use std::process::Command;

use control::maps::DropReason;
use fastpath_tests::{KernelNode, Kind, Pods, TestNode, cluster_yaml, require_root, unique};
use lab::in_ns;

/// Start fastpath on two cluster configs (cores 0 and 1) and wait until their next hops
/// resolve.
fn start_pair(y0: &str, y1: &str) -> (TestNode, TestNode) {
    let a = TestNode::start(y0, 1, &["--cores", "0"]);
    let b = TestNode::start(y1, 1, &["--cores", "1"]);
    a.wait_overlay_ready();
    b.wait_overlay_ready();
    (a, b)
}

/// Two fastpath nodes × two pods; `extra` goes into their `datapath:` section.
fn two_nodes(tag: &str, extra: &str) -> (TestNode, TestNode) {
    let y = cluster_yaml(&unique(tag), &[Kind::Fastpath, Kind::Fastpath], 2, extra);
    start_pair(&y[0], &y[1])
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
        fastpath::views::status(&s0)
    );
    assert!(
        s1.encapsulated() > 0 && s1.decapsulated() > 0,
        "{}",
        fastpath::views::status(&s1)
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

    let bps = iperf(&n0, 0, &n1, 0, 5201);
    eprintln!("iperf3 cross-node tunnel: {:.0} Mbit/s", bps / 1e6);
}

/// iperf3 TCP for 2 s from `from` pod `i` to `to` pod `j` (server started and bounded here);
/// asserts it moved data and returns the received bit rate.
fn iperf(from: &TestNode, i: usize, to: &TestNode, j: usize, port: u16) -> f64 {
    let p = port.to_string();
    let _server = to.spawn_in_pod(j, &["iperf3", "-s", "-1", "-p", &p]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = from.pod_cmd(
        i,
        &[
            "timeout",
            "20",
            "iperf3",
            "-c",
            &to.pod_ip(j),
            "-p",
            &p,
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
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(bps > 1e6, "iperf3 moved {bps} bit/s");
    bps
}

/// Capture UDP on the fabric bridge while `f` runs; tshark decodes it as VXLAN on 8472.
/// Returns (VNI, inner source, inner destination) per frame.
fn capture_vxlan(fabric: &str, f: impl FnOnce()) -> Vec<(u32, String, String)> {
    let pcap = std::env::temp_dir().join(format!("{fabric}.pcap"));
    let mut dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            fabric,
            "tcpdump",
            "-i",
            "br0",
            "--immediate-mode",
            "-U",
            "-n",
            "-w",
        ])
        .arg(&pcap)
        .args(["udp", "port", "8472"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(std::time::Duration::from_millis(800));
    f();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(dump.id().to_string())
        .status();
    let _ = dump.wait();
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-d",
            "udp.port==8472,vxlan",
            "-T",
            "fields",
            "-e",
            "vxlan.vni",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-E",
            "occurrence=l",
        ])
        .output()
        .expect("tshark");
    let _ = std::fs::remove_file(&pcap);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.to_string(),
                f.get(2)?.to_string(),
            ))
        })
        .collect()
}

/// A third node runs the Linux kernel's VXLAN device on 8472. Its pods and fastpath's pods
/// ping and talk TCP both ways; on the wire tshark decodes VXLAN with VNI = the sending pod's
/// identity in both directions.
#[test]
fn kernel_vxlan_node_interoperates_both_ways() {
    if !require_root() {
        return;
    }
    let tag = unique("k");
    let y = cluster_yaml(&tag, &[Kind::Fastpath, Kind::Fastpath, Kind::Kernel], 2, "");
    let k = KernelNode::start(&y[2]);
    let (n0, n1) = start_pair(&y[0], &y[1]);
    let (n0_ids, _) = n0.cfg.identities();
    let (k_ids, _) = k.cfg.identities();

    let k_node_ip = k.cfg.node_ip().unwrap().to_string();
    let flows = capture_vxlan(&format!("{tag}f"), || {
        // The kernel node's host reaches a fastpath pod as remote-node (VNI 6) from its
        // underlay address, although it also has its pods' gateway address (the `src` on
        // its main-table route).
        let host_ping = lab::in_ns(
            k.node_ns(),
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                &n0.pod_ip(0),
            ],
        )
        .unwrap();
        assert!(host_ping.status.success(), "kernel host -> fastpath pod");
        for i in 0..2 {
            assert!(
                n0.ping(i, &k.pod_ip(i), 3),
                "fastpath n0p{i} -> kernel pod\n{}",
                n0.log()
            );
            assert!(
                k.ping(i, &n1.pod_ip(i), 3),
                "kernel pod -> fastpath n1p{i}\n{}",
                n1.log()
            );
        }
    });
    assert!(
        flows.contains(&(6, k_node_ip.clone(), n0.pod_ip(0))),
        "kernel host -> fastpath pod as remote-node from {k_node_ip}: {flows:?}"
    );
    for i in 0..2 {
        assert!(
            flows.contains(&(n0_ids[i], n0.pod_ip(i), k.pod_ip(i))),
            "fastpath -> kernel frame with VNI {} for n0p{i}: {flows:?}",
            n0_ids[i]
        );
        assert!(
            flows.contains(&(k_ids[i], k.pod_ip(i), n0.pod_ip(i))),
            "kernel -> fastpath reply with VNI {} (kernel pod {i}): {flows:?}",
            k_ids[i]
        );
        assert!(
            flows.contains(&(k_ids[i], k.pod_ip(i), n1.pod_ip(i))),
            "kernel -> fastpath request with VNI {}: {flows:?}",
            k_ids[i]
        );
    }

    // TCP both ways.
    let _a = n0.echo_server(1, 7100);
    let _b = k.echo_server(0, 7101);
    assert_eq!(
        k.echo(1, "TCP", &n0.pod_ip(1), 7100, "kernel to fastpath\n"),
        "kernel to fastpath\n"
    );
    assert_eq!(
        n1.echo(0, "TCP", &k.pod_ip(0), 7101, "fastpath to kernel\n"),
        "fastpath to kernel\n"
    );
    let s = n0.status();
    assert!(
        s.decapsulated() > 0 && s.encapsulated() > 0,
        "{}",
        fastpath::views::status(&s)
    );
    assert_eq!(
        s.drops_with(DropReason::InvalidVni.code()),
        0,
        "{}",
        fastpath::views::status(&s)
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A VXLAN frame from `from`'s underlay to `to`'s, carrying a ping from `from` pod 0 to `to`
/// pod 0, with the 8 VXLAN header bytes given.
fn raw_vxlan(from: &TestNode, to: &TestNode, vx: [u8; 8]) -> Vec<u8> {
    use fastpath::wire::{ethernet, ipv4, vxlan};
    let ip = |n: &TestNode| n.cfg.node_ip().unwrap().octets();
    let mut inner = vec![0u8; 14 + 20 + 8];
    ethernet::emit(
        &mut inner,
        to.dev_mac("eth1"),
        from.dev_mac("eth1"),
        ethernet::EtherType::Ipv4,
    );
    ipv4::emit(
        &mut inner[14..],
        from.cfg.pods[0].ip.octets(),
        to.cfg.pods[0].ip.octets(),
        ipv4::PROTO_ICMP,
        64,
        8,
    );
    inner[34..42].copy_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    let mut f = vec![0u8; vxlan::ENCAP_LEN];
    vxlan::emit(
        &mut f,
        &vxlan::Outer {
            dst_mac: to.dev_mac("eth1"),
            src_mac: from.dev_mac("eth1"),
            src_ip: ip(from),
            dst_ip: ip(to),
            ip_id: 9,
            sport: 40000,
            dport: 8472,
            vni: 0,
        },
        inner.len(),
    );
    f[42..50].copy_from_slice(&vx);
    f.extend_from_slice(&inner);
    f
}

/// Frames that claim the host identity, an identity nobody has, or carry a broken VXLAN
/// header are dropped by the receiving node with Cilium's reasons; a good one is delivered.
#[test]
fn spoofed_and_malformed_vxlan_dropped_with_reasons() {
    if !require_root() {
        return;
    }
    let (n0, n1) = two_nodes("v", "");
    let (_, remote) = n0.cfg.identities();
    let good_id = remote[0][0].to_be_bytes();
    let vni = |b: [u8; 4]| [0x08, 0, 0, 0, b[1], b[2], b[3], 0];
    let before = n0.status();
    let frames = [
        raw_vxlan(&n1, &n0, vni(1u32.to_be_bytes())), // host identity
        raw_vxlan(&n1, &n0, vni(0xabcdeu32.to_be_bytes())), // unknown identity
        raw_vxlan(&n1, &n0, [0x00, 0, 0, 0, 0, 1, 0, 0]), // I flag missing
        raw_vxlan(
            &n1,
            &n0,
            [0x08, 0, 0, 0, good_id[1], good_id[2], good_id[3], 0x5a],
        ), // reserved
        {
            let mut f = raw_vxlan(&n1, &n0, vni(good_id));
            f.truncate(46); // VXLAN header cut in half; lengths say so
            f[16..18].copy_from_slice(&32u16.to_be_bytes());
            fastpath::wire::Ipv4Packet::new_checked(&mut f[14..])
                .unwrap()
                .fill_checksum();
            f
        },
        raw_vxlan(&n1, &n0, vni(good_id)), // well-formed: delivered
    ];
    n1.send_raw_on("eth1", &frames.iter().map(|f| hex(f)).collect::<Vec<_>>());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = n0.status();
    let delta = |r: DropReason| after.drops_with(r.code()) - before.drops_with(r.code());
    assert_eq!(
        delta(DropReason::InvalidIdentity),
        1,
        "{}",
        fastpath::views::status(&after)
    );
    assert_eq!(
        delta(DropReason::InvalidVni),
        1,
        "{}",
        fastpath::views::status(&after)
    );
    assert_eq!(
        delta(DropReason::NoTunnelKey),
        2,
        "{}",
        fastpath::views::status(&after)
    );
    assert_eq!(
        delta(DropReason::Invalid),
        1,
        "{}",
        fastpath::views::status(&after)
    );
    assert_eq!(after.decapsulated() - before.decapsulated(), 1);
    // The text status names them the way Cilium does.
    let text = String::from_utf8_lossy(&n0.cli(&["status"]).stdout).into_owned();
    for name in [
        "Invalid identity",
        "Incorrect VNI from VTEP",
        "Error retrieving tunnel key",
    ] {
        assert!(text.contains(name), "{name} in\n{text}");
    }
}

/// Pods get the overlay MTU; a bigger DF packet gets ICMP fragmentation-needed from the
/// router address (ping shows it), and the pod's path MTU then works.
#[test]
fn too_big_for_the_tunnel_gets_icmp_frag_needed() {
    if !require_root() {
        return;
    }
    let (n0, n1) = two_nodes("m", "");
    assert_eq!(n0.pod_mtu(0), 1450, "pod MTU set for the overlay");
    // A pod whose MTU ignores the overlay (both veth ends at 1500) sends a full-size frame.
    n0.pod_cmd(0, &["ip", "link", "set", "eth0", "mtu", "1500"]);
    in_ns(
        n0.node_ns(),
        &["ip", "link", "set", "lxc-p0", "mtu", "1500"],
    )
    .unwrap();
    let before = n0.status().icmp_errors();
    let out = n0.pod_cmd(
        0,
        &[
            "ping",
            "-n",
            "-c",
            "2",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "1472",
            &n1.pod_ip(0),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("Frag needed") && text.contains("mtu = 1450"),
        "ping output: {text}"
    );
    assert!(
        text.contains(&format!("From {}", n0.cfg.node.router_ip)),
        "{text}"
    );
    let s = n0.status();
    assert!(s.icmp_errors() > before);
    assert!(s.drops_with(DropReason::FragNeeded.code()) > 0);
    // A full-size packet at the overlay MTU passes.
    assert!(
        n0.pod_cmd(
            0,
            &[
                "ping",
                "-n",
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1422",
                &n1.pod_ip(0)
            ]
        )
        .status
        .success()
    );
}

/// `fastpath bpf ipcache list` / `bpf tunnel list`, text and JSON.
#[test]
fn ipcache_and_tunnel_lists() {
    if !require_root() {
        return;
    }
    let (n0, n1) = two_nodes("c", "");
    let (_, remote) = n0.cfg.identities();
    let n1_ip = n1.cfg.node_ip().unwrap().to_string();
    let out = n0.cli(&["bpf", "ipcache", "list"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("IP PREFIX/ADDRESS"), "{text}");
    let want = format!("{}/32", n1.pod_ip(1));
    let line = text
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("{want} in {text}"));
    assert!(
        line.ends_with(&format!(
            "identity={} encryptkey=0 tunnelendpoint={n1_ip} flags=hastunnel",
            remote[0][1]
        )),
        "{line}"
    );
    assert!(text.contains("0.0.0.0/0"), "world entry: {text}");
    let j: serde_json::Value =
        serde_json::from_slice(&n0.cli(&["bpf", "ipcache", "list", "-o", "json"]).stdout).unwrap();
    assert!(j[&want][0].as_str().unwrap().contains("hastunnel"));
    let t = String::from_utf8_lossy(&n0.cli(&["bpf", "tunnel", "list"]).stdout).into_owned();
    let cidr = n1.cfg.node.pod_cidr.unwrap();
    assert!(t.starts_with("TUNNEL"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with(&format!("{}:0", cidr.addr))
                && l.ends_with(&format!("{n1_ip}:0"))),
        "{t}"
    );
    assert_eq!(t.lines().count(), 2, "one remote pod CIDR: {t}");
}

/// Native routing: same scenario without encapsulation; the wire carries plain pod IPs.
#[test]
fn native_routing_between_nodes() {
    if require_root() {
        native_routing("");
    }
}

/// The same on the in-kernel tc datapath (every device `attach: tc`, docs/tc.md).
#[test]
fn native_routing_between_nodes_on_tc() {
    if require_root() {
        native_routing("  attach: tc\n");
    }
}

fn native_routing(attach: &str) {
    let (n0, n1) = two_nodes(
        "n",
        &format!("  routing: native\n  native_routing_cidr: 10.0.0.0/8\n{attach}"),
    );
    if !attach.is_empty() {
        for n in [&n0, &n1] {
            let st = n.status();
            assert!(
                st.devices.iter().all(|d| d.datapath == "tc"),
                "{:?}",
                st.devices
            );
        }
    }
    assert_eq!(n0.pod_mtu(0), 1500, "no encapsulation overhead");
    let vx = capture_vxlan(&n0.fabric_ns(), || {
        for i in 0..2 {
            assert!(n0.ping(i, &n1.pod_ip(1 - i), 3), "n0p{i}\n{}", n0.log());
        }
    });
    assert!(vx.is_empty(), "no VXLAN on the wire: {vx:?}");
    let _srv = n1.echo_server(0, 7200);
    assert_eq!(
        n0.echo(1, "TCP", &n1.pod_ip(0), 7200, "native tcp\n"),
        "native tcp\n"
    );
    assert_eq!(
        n0.echo(0, "UDP", &n1.pod_ip(0), 7200, "native udp\n"),
        "native udp\n"
    );
    let bps = iperf(&n0, 1, &n1, 1, 5202);
    eprintln!("iperf3 cross-node native: {:.0} Mbit/s", bps / 1e6);
    let s0 = n0.status();
    assert!(s0.routed() > 0, "{}", fastpath::views::status(&s0));
    if !attach.is_empty() {
        assert!(s0.tc_counter("routed") > 0, "routed by the tc programs");
    }
    assert_eq!(s0.encapsulated(), 0);
    let s1 = n1.status();
    assert_eq!(s1.decapsulated(), 0, "native ingress is not decapsulation");
    assert!(
        s1.forwarded_ingress() > 0,
        "{}",
        fastpath::views::status(&s1)
    );
    assert_eq!(s0.overlay.as_ref().unwrap().mode, "native");
    // The kernel got the same routes (auto-direct-node-routes) for host traffic.
    let r = in_ns(
        n0.node_ns(),
        &[
            "ip",
            "route",
            "show",
            &n1.cfg.node.pod_cidr.unwrap().to_string(),
        ],
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&r.stdout).contains(&format!("via {}", n1.cfg.node_ip().unwrap()))
    );
}

/// The next hop follows the kernel's neighbour table (re-read every second over netlink):
/// an entry replaced with a wrong MAC shows in status and breaks the tunnel, the right MAC
/// put back heals it, and a flushed entry is asked for again and resolves by itself.
#[test]
fn next_hops_follow_the_kernel_neighbour_table() {
    if !require_root() {
        return;
    }
    let (n0, n1) = two_nodes("nh", "");
    assert!(n0.ping(0, &n1.pod_ip(0), 3), "{}", n0.log());
    let hop = |n: &TestNode| n.status().overlay.expect("overlay").nexthops[0].clone();
    let first = hop(&n0);
    let right = first.mac.clone().expect("resolved");
    let via = first.via.clone();
    let ns = n0.cfg.node.netns.clone().expect("node netns");
    let wait_for = |want: &dyn Fn(&fastpath::api::NextHopStatus) -> bool| {
        let t = std::time::Instant::now();
        loop {
            let h = hop(&n0);
            if want(&h) {
                return h;
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "next hop stuck at {h:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let wrong = "02:00:00:be:ef:01";
    let set = |mac: &str| {
        let out = in_ns(
            &ns,
            &[
                "ip",
                "neigh",
                "replace",
                &via,
                "lladdr",
                mac,
                "dev",
                "eth1",
                "nud",
                "permanent",
            ],
        )
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    set(wrong);
    let is = |h: &fastpath::api::NextHopStatus, mac: &str| {
        h.mac
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case(mac))
    };
    let h = wait_for(&|h| is(h, wrong));
    assert_eq!(h.state, "PERMANENT");
    assert!(
        !n0.ping(0, &n1.pod_ip(0), 1),
        "frames go to a MAC nobody has"
    );
    set(&right);
    wait_for(&|h| is(h, &right));
    assert!(n0.ping(0, &n1.pod_ip(0), 3), "healed\n{}", n0.log());
    // Flushed: fastpath asks the kernel to resolve it again (a managed entry).
    let out = in_ns(&ns, &["ip", "neigh", "del", &via, "dev", "eth1"]).unwrap();
    assert!(out.status.success());
    wait_for(&|h| is(h, &right) && h.state != "PERMANENT");
    assert!(n0.ping(0, &n1.pod_ip(0), 3), "resolved again\n{}", n0.log());
    drop(n1);
}
