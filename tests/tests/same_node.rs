//! Same-node pod↔pod through fastpath: real namespaces, real XDP + AF_XDP, real clients.

use control::maps::DropReason;
use fastpath_tests::{Pods, TestNode, node_yaml, require_root, unique};

/// ping, TCP echo and UDP echo between two pods, with fastpath's counters to prove the path;
/// pod→host still works through the kernel; endpoint list shows cilium_lxc.
#[test]
fn ping_tcp_udp_between_pods_go_through_fastpath() {
    if !require_root() {
        return;
    }
    let name = unique("a");
    let node = TestNode::start(&node_yaml(&name, 3, 1, ""), 1, &[]);
    let before = node.status();
    assert_eq!(before.forwarded(), 0);

    assert!(
        node.ping(0, &node.pod_ip(1), 5),
        "ping pod0 -> pod1 through fastpath"
    );
    let _srv = node.echo_server(1, 7007);
    assert_eq!(
        node.echo(0, "TCP", &node.pod_ip(1), 7007, "hello over tcp\n"),
        "hello over tcp\n"
    );
    assert_eq!(
        node.echo(0, "UDP", &node.pod_ip(1), 7007, "hello over udp\n"),
        "hello over udp\n"
    );
    assert!(node.ping(2, &node.pod_ip(0), 2), "ping pod2 -> pod0");

    let s = node.status();
    // 5 echo requests + 5 replies at least, plus TCP and UDP.
    assert!(s.forwarded() >= 10 + 6, "forwarded {}", s.forwarded());
    assert!(
        s.arp_replies() >= 2,
        "gateway ARP answered in userspace: {}",
        s.arp_replies()
    );
    assert!(
        s.xdp_counter("steered") >= s.forwarded(),
        "XDP steered {}",
        s.xdp_counter("steered")
    );
    let w = &s.workers[0];
    let rx = |i: usize| w.ports[i].rx_packets;
    let tx = |i: usize| w.ports[i].tx_packets;
    assert!(
        rx(0) >= 5 && tx(1) >= 5 && rx(1) >= 5 && tx(0) >= 5,
        "per-port counters: {:?}",
        w.ports
    );
    assert_eq!(s.devices.len(), 3);
    assert!(
        s.devices
            .iter()
            .all(|d| d.xdp_mode == "native" && d.socket_mode == "copy"),
        "{:?}",
        s.devices
    );

    // pod -> host (the router IP on the node) is passed to the kernel and answered there.
    let router = node.cfg.node.router_ip.to_string();
    let passed = s.xdp_counter("passed_not_endpoint");
    assert!(node.ping(0, &router, 2), "pod -> host through the kernel");
    assert!(node.status().xdp_counter("passed_not_endpoint") >= passed + 2);

    // Cilium-format endpoint list, text and JSON.
    let out = node.cli(&["bpf", "endpoint", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("IP ADDRESS"), "{text}");
    assert!(
        text.contains(&format!("{}:0", node.pod_ip(1))) && text.contains("(localhost)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("mac={}", node.cfg.pods[1].mac)),
        "{text}"
    );
    let out = node.cli(&["bpf", "endpoint", "list", "-o", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j[format!("{router}:0")][0], "(localhost)");
    let out = node.cli(&["status", "-o", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["workers"][0]["queue"], 0);
}

/// With fastpath stopped the same ping fails: the kernel is not forwarding for us. The XDP
/// program is gone from the devices, and a restart brings forwarding back.
#[test]
fn without_fastpath_pods_cannot_reach_each_other() {
    if !require_root() {
        return;
    }
    let name = unique("b");
    let mut node = TestNode::start(&node_yaml(&name, 2, 1, ""), 1, &[]);
    assert!(node.ping(0, &node.pod_ip(1), 2));
    assert!(node.xdp_attached("lxc-p0"));
    node.stop();
    assert!(!node.xdp_attached("lxc-p0"), "XDP detached on exit");
    assert!(!node.socket.exists(), "control socket removed on exit");
    assert!(
        !node.ping(0, &node.pod_ip(1), 2),
        "no forwarding without fastpath"
    );
    node.launch(&[]);
    assert!(
        node.ping(0, &node.pod_ip(1), 2),
        "forwarding back after restart"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Malformed frames are dropped with Cilium's reasons, counted, and the worker keeps going.
#[test]
fn malformed_frames_are_counted_drops_and_worker_survives() {
    if !require_root() {
        return;
    }
    let name = unique("c");
    let node = TestNode::start(&node_yaml(&name, 2, 1, ""), 1, &[]);
    let gw = node.lxc_mac(0).0;
    let me = node.cfg.pods[0].mac.0;
    let src = node.cfg.pods[0].ip.octets();
    let dst = node.cfg.pods[1].ip.octets();
    let eth = |t: [u8; 2]| [&gw[..], &me[..], &t[..]].concat();
    let ipv4 = |ver_ihl: u8, total: u16, s: [u8; 4]| {
        let mut h = vec![
            ver_ihl,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ];
        h.extend_from_slice(&s);
        h.extend_from_slice(&dst);
        // A correct header checksum, so each frame is refused for its own defect.
        let c = fastpath::wire::checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    };
    let udp = [0x30, 0x39, 0x1b, 0x5f, 0, 12, 0, 0, b'b', b'a', b'd', b'!'];
    let frames = vec![
        // truncated IPv4: 10 bytes after the Ethernet header
        hex(&[eth([8, 0]), vec![0x45; 10]].concat()),
        // bad IHL (4 words)
        hex(&[eth([8, 0]), ipv4(0x44, 32, src), udp.to_vec()].concat()),
        // total length beyond the frame
        hex(&[eth([8, 0]), ipv4(0x45, 1400, src), udp.to_vec()].concat()),
        // total length shorter than the header
        hex(&[eth([8, 0]), ipv4(0x45, 12, src), udp.to_vec()].concat()),
        // spoofed source address
        hex(&[eth([8, 0]), ipv4(0x45, 32, [10, 9, 9, 9]), udp.to_vec()].concat()),
        // truncated UDP header
        hex(&[eth([8, 0]), ipv4(0x45, 24, src), udp[..4].to_vec()].concat()),
    ];
    node.send_raw(0, &frames);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let s = node.status();
    assert_eq!(
        s.drops_with(DropReason::Invalid.code()),
        4,
        "{}",
        fastpath::views::status(&s)
    );
    assert_eq!(
        s.drops_with(DropReason::InvalidSip.code()),
        1,
        "{}",
        fastpath::views::status(&s)
    );
    assert_eq!(
        s.drops_with(DropReason::CtInvalidHdr.code()),
        1,
        "{}",
        fastpath::views::status(&s)
    );
    assert!(fastpath::views::status(&s).contains("Invalid packet"));
    // The worker is still forwarding.
    assert!(
        node.ping(0, &node.pod_ip(1), 2),
        "worker survives malformed input"
    );
}

/// Two queues, two pinned workers, multi-queue veths: traffic flows and both workers report.
#[test]
fn two_queues_two_workers() {
    if !require_root() {
        return;
    }
    let name = unique("d");
    let node = TestNode::start(
        &node_yaml(&name, 2, 2, ""),
        2,
        &["--queues", "2", "--cores", "0,1"],
    );
    let s = node.status();
    assert_eq!(s.workers.len(), 2);
    assert_eq!(
        s.workers.iter().map(|w| w.core).collect::<Vec<_>>(),
        vec![Some(0), Some(1)]
    );
    assert!(node.ping(0, &node.pod_ip(1), 3));
    let _srv = node.echo_server(1, 7008);
    for i in 0..4 {
        let m = format!("flow {i}\n");
        assert_eq!(node.echo(0, "TCP", &node.pod_ip(1), 7008, &m), m);
    }
    assert!(node.status().forwarded() >= 6);
}

/// Generic XDP is chosen when asked, reported, and forwards the same way.
#[test]
fn generic_mode_is_reported_and_forwards() {
    if !require_root() {
        return;
    }
    let name = unique("e");
    let node = TestNode::start(&node_yaml(&name, 2, 1, ""), 1, &["--xdp-mode", "generic"]);
    let s = node.status();
    assert!(
        s.devices.iter().all(|d| d.xdp_mode == "generic"),
        "{:?}",
        s.devices
    );
    assert!(node.ping(0, &node.pod_ip(1), 2));
    assert!(node.status().forwarded() >= 4);
}

/// (policy, rt_priority) of every thread of `pid` by name, from /proc/<pid>/task/*/stat
/// (fields 41 and 40).
fn thread_sched(pid: u32) -> Vec<(String, u32, u32)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3.
        let (prio, policy) = (f[40 - 3].parse().unwrap(), f[41 - 3].parse().unwrap());
        v.push((comm.trim().to_string(), policy, prio));
    }
    v
}

/// `datapath.rt_priority`: the worker runs under SCHED_FIFO at that priority (so no normal
/// thread on its core preempts it), the control thread stays normal, and pods are served.
#[test]
fn rt_priority_runs_workers_under_sched_fifo() {
    if !require_root() {
        return;
    }
    let name = unique("rt");
    let node = TestNode::start(&node_yaml(&name, 2, 1, "  rt_priority: 7\n"), 1, &[]);
    assert!(node.ping(0, &node.pod_ip(1), 2));
    let threads = thread_sched(node.pid().unwrap());
    let workers: Vec<_> = threads
        .iter()
        .filter(|(n, _, _)| n.starts_with("fp-worker"))
        .collect();
    assert_eq!(workers.len(), 1, "{threads:?}");
    assert_eq!(
        (workers[0].1, workers[0].2),
        (1, 7),
        "SCHED_FIFO 7: {threads:?}"
    );
    assert!(
        threads
            .iter()
            .filter(|(n, _, _)| !n.starts_with("fp-worker"))
            .all(|(_, policy, _)| *policy == 0),
        "only workers are real-time: {threads:?}"
    );
    assert!(node.log().contains("(SCHED_FIFO 7)"), "{}", node.log());
}

/// `datapath.tx_flush_us`: frames for a device are held for more before its TX is kicked, so a
/// trickle of 2000 frames costs a few kicks instead of about one per frame — and every frame
/// still arrives (a held frame is flushed by time, not only by a full batch).
#[test]
fn tx_flush_us_coalesces_kicks_and_delivers_everything() {
    if !require_root() {
        return;
    }
    let run = |flush: u32| -> (u64, u64, u64) {
        let name = unique("tf");
        let node = TestNode::start(
            &node_yaml(&name, 2, 1, &format!("  tx_flush_us: {flush}\n")),
            1,
            &[],
        );
        assert!(node.ping(0, &node.pod_ip(1), 1));
        let gw = node.lxc_mac(0).0;
        let me = node.cfg.pods[0].mac.0;
        let (src, dst) = (node.cfg.pods[0].ip.octets(), node.cfg.pods[1].ip.octets());
        let mut ip = vec![0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let c = fastpath::wire::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        // UDP to port 9 (discard; nothing listens: the kernel of p1 drops it after counting).
        let udp = [0x30, 0x39, 0, 9, 0, 12, 0, 0, b't', b'r', b'a', b'n'];
        let f = hex(&[&gw[..], &me[..], &[8, 0], &ip[..], &udp[..]].concat());
        let lxc1 = "lxc-p1";
        let tx = |s: &fastpath::api::Status| -> (u64, u64) {
            s.workers
                .iter()
                .flat_map(|w| &w.ports)
                .filter(|p| p.ifname == lxc1)
                .fold((0, 0), |(a, b), p| (a + p.tx_packets, b + p.tx_kicks))
        };
        let (p0, k0) = tx(&node.status());
        // One frame, sent 2000 times 20 µs apart (a trickle: without holding, a worker kicks
        // TX for about every frame; 40 ms in all).
        let script = format!(
            "import socket, time\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth0',0))\nf=bytes.fromhex('{f}')\nfor _ in range(2000):\n    t=time.perf_counter()\n    s.send(f)\n    while time.perf_counter()-t < 2e-5: pass\n"
        );
        let ns = node.cfg.pods[0].netns.clone().unwrap();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        let s = node.status();
        let (p1, k1) = tx(&s);
        (p1 - p0, k1 - k0, s.workers.iter().map(|w| w.drops()).sum())
    };
    let (sent0, kicks0, drops0) = run(0);
    let (sent1, kicks1, drops1) = run(500);
    eprintln!("TX kicks for 2000 frames: {kicks0} without holding, {kicks1} holding 500 µs");
    assert_eq!((sent0, drops0), (2000, 0), "all delivered without holding");
    assert_eq!((sent1, drops1), (2000, 0), "all delivered while holding");
    // Holding: a kick per full batch of 32 (≤ 63) or per 500 µs of the ~40 ms train (≈ 80);
    // without it about one per frame (fewer when the sender bunches frames, as a busy
    // machine makes it do).
    assert!(
        kicks1 <= 250 && kicks1 < kicks0,
        "holding for 500 µs should take far fewer kicks: {kicks1} vs {kicks0} without"
    );
}

/// `ethtool -S` counter `name` of device `dev` in namespace `ns`.
fn ethtool_stat(ns: &str, dev: &str, name: &str) -> u64 {
    let out = lab::in_ns(ns, &["ethtool", "-S", dev]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in ethtool -S {dev}"))
}

/// Issue #11 defect 4: with 2-queue veths and `--queues 1`, 0-1 of 16 flows got through —
/// frames on rx queue 1 met an XSKMAP slot without a socket. Every rx queue is served now
/// (worker 0 of 1 serves queues 0 and 1), and a steered frame that finds no socket is
/// counted by the XDP program.
#[test]
fn every_rx_queue_is_served_with_fewer_workers_than_queues() {
    if !require_root() {
        return;
    }
    let name = unique("q");
    let node = TestNode::start(&node_yaml(&name, 2, 1, ""), 2, &["--queues", "1"]);
    let s = node.status();
    assert_eq!(s.workers.len(), 1);
    for p in &s.workers[0].ports {
        assert_eq!(
            p.rx_queues,
            vec![0, 1],
            "{}: {}",
            p.ifname,
            fastpath::views::status(&s)
        );
    }
    // One UDP socket answering every datagram (bounded: 20 s at most).
    let _srv = node.spawn_in_pod(
        1,
        &[
            "timeout",
            "20",
            "python3",
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7009))\nwhile True:\n    d,a=s.recvfrom(64); s.sendto(d,a)\n",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    // 16 UDP flows (16 sockets, 16 source ports): the pod's stack spreads them over its two
    // TX queues, i.e. the lxc's two rx queues.
    let script = format!(
        "import socket\nss=[socket.socket(socket.AF_INET,socket.SOCK_DGRAM) for _ in range(16)]\nfor i,s in enumerate(ss):\n    s.settimeout(3); s.sendto(b'flow %d' % i, ({:?}, 7009))\nok=0\nfor i,s in enumerate(ss):\n    try:\n        ok += s.recv(64) == b'flow %d' % i\n    except Exception:\n        pass\nprint(ok)\n",
        node.pod_ip(1)
    );
    let out = node.pod_cmd(0, &["python3", "-c", &script]);
    let ok = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        ok,
        "16",
        "flows answered\n{}",
        fastpath::views::status(&node.status())
    );
    let ns = node.node_ns().to_string();
    let q1 = ethtool_stat(&ns, "lxc-p0", "rx_queue_1_xdp_redirect")
        + ethtool_stat(&ns, "lxc-p1", "rx_queue_1_xdp_redirect");
    assert!(q1 > 0, "no flow used rx queue 1: the test proves nothing");
    let s = node.status();
    assert_eq!(
        s.xdp_counter("passed_no_socket"),
        0,
        "{}",
        fastpath::views::status(&s)
    );
}
