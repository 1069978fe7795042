//! Hostile frames on real veths (issue #11): crafted frames from a pod and onto the node NIC,
//! each dropped with the reason docs/security.md gives for it (or handed to the kernel, or
//! forwarded, as it says), counted, while good traffic keeps flowing.
//!
//! One two-node cluster for the whole suite; frames are sent with AF_PACKET from the pod's
//! eth0 and from a namespace on the fabric bridge (the "outside"), one at a time, and the
//! counters of `fastpath status` are compared before and after each.

use control::maps::DropReason;
use fastpath::wire::{self, vxlan};
use fastpath_tests::{Outside, Pods, TestNode, require_root, two_fastpath_nodes, unique};

/// What a frame must do.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Dropped by a worker with this reason (counted once).
    Drop(DropReason),
    /// Handed to the kernel by the XDP program (this counter moves).
    Kernel(&'static str),
    /// Forwarded by a worker to a pod of this node (counted as forwarded ingress).
    Forwarded,
    /// An ARP request answered by a worker.
    Answered,
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20 + l4.len()];
    wire::ipv4::emit(&mut p, src, dst, proto, ttl, l4.len());
    p[20..].copy_from_slice(l4);
    p
}

fn fix(p: &mut [u8]) {
    p[10..12].copy_from_slice(&[0, 0]);
    let ihl = (p[0] & 0x0f) as usize * 4;
    let c = wire::checksum(&p[..ihl.min(p.len())]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// An ICMP message of a type no one answers (99): what is forwarded causes no reply that
/// would move the counters again.
fn echo() -> Vec<u8> {
    let mut m = vec![99u8, 0, 0, 0, 0x77, 0x77, 0, 1, b'h', b'o', b's', b't'];
    let c = wire::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

fn eth(dst: [u8; 6], src: [u8; 6], ty: u16, l3: &[u8]) -> Vec<u8> {
    [&dst[..], &src[..], &ty.to_be_bytes()[..], l3].concat()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The counter a case moves, read from a status.
fn count(s: &fastpath::api::Status, e: Expect) -> u64 {
    match e {
        Expect::Drop(r) => s.drops_with(r.code()),
        Expect::Kernel(name) => s.xdp_counter(name),
        Expect::Forwarded => s.forwarded_ingress(),
        Expect::Answered => s.arp_replies(),
    }
}

/// All drops, whatever the reason.
fn drops(s: &fastpath::api::Status) -> u64 {
    s.workers.iter().map(|w| w.drops()).sum()
}

/// Send each case from `send`, and check it moved its counter on `n` (and, for a drop,
/// only that one).
fn run_cases(n: &TestNode, cases: Vec<Case>, send: impl Fn(&[String])) {
    for c in cases {
        let before = n.status();
        send(&[hex(&c.frame)]);
        let mut after = n.status();
        for _ in 0..20 {
            if count(&after, c.expect) > count(&before, c.expect) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
            after = n.status();
        }
        // A frame passed to the kernel may make the kernel answer (a SYN-ACK, an ICMP
        // error) and the answer's own answer (the sender's RST) is passed too: for those
        // the counter moves by at least one. A drop moves its counter by exactly one, and
        // no worker drop counter moves but its own.
        let moved = count(&after, c.expect) - count(&before, c.expect);
        let ok = match c.expect {
            Expect::Kernel(_) => moved >= 1,
            _ => moved == 1,
        };
        assert!(
            ok,
            "case `{}`: expected {:?}, moved by {moved}\n{}",
            c.name,
            c.expect,
            fastpath::views::status(&after)
        );
        if let Expect::Kernel(_) = c.expect {
            assert_eq!(
                drops(&after),
                drops(&before),
                "case `{}`: passed to the kernel, dropped by nobody\n{}",
                c.name,
                fastpath::views::status(&after)
            );
        }
        if let Expect::Drop(_) = c.expect {
            assert_eq!(
                drops(&after),
                drops(&before) + 1,
                "case `{}`: dropped once, for that reason\n{}",
                c.name,
                fastpath::views::status(&after)
            );
        }
    }
}

#[test]
fn hostile_frames_are_dropped_or_passed_as_documented_and_counted() {
    if !require_root() {
        return;
    }
    let tag = unique("h");
    let (n0, n1) = two_fastpath_nodes(&tag, 2);
    assert!(n0.ping(0, &n0.pod_ip(1), 2), "same node before");
    assert!(n0.ping(0, &n1.pod_ip(0), 2), "cross node before");

    let gw = n0.lxc_mac(0).0;
    let me = n0.cfg.pods[0].mac.0;
    let src = n0.cfg.pods[0].ip.octets();
    let dst = n0.cfg.pods[1].ip.octets();
    let remote = n1.cfg.pods[0].ip.octets();
    let e = |l3: &[u8]| eth(gw, me, 0x0800, l3);
    let good = ipv4(src, dst, 1, 64, &echo());
    let patched = |f: &dyn Fn(&mut Vec<u8>), refix: bool| {
        let mut p = good.clone();
        f(&mut p);
        if refix {
            fix(&mut p);
        }
        e(&p)
    };
    let arp = |op: u16, spa: [u8; 4], tpa: [u8; 4], hlen: u8| {
        let mut a = vec![0u8; 28];
        wire::arp::emit_request(&mut a, control::maps::MacAddr(me), spa, tpa);
        a[6..8].copy_from_slice(&op.to_be_bytes());
        a[4] = hlen;
        eth([0xff; 6], me, 0x0806, &a)
    };
    use DropReason::*;
    use Expect::*;
    let from_pod = vec![
        Case {
            name: "truncated IPv4 (10 bytes)",
            frame: e(&good[..10]),
            expect: Drop(Invalid),
        },
        Case {
            name: "IHL 4",
            frame: patched(&|p| p[0] = 0x44, false),
            expect: Drop(Invalid),
        },
        Case {
            name: "IHL 15 beyond the frame",
            frame: patched(&|p| p[0] = 0x4f, false),
            expect: Drop(Invalid),
        },
        Case {
            name: "total length beyond the frame",
            frame: patched(&|p| p[2..4].copy_from_slice(&1400u16.to_be_bytes()), true),
            expect: Drop(Invalid),
        },
        Case {
            name: "total length below the header",
            frame: patched(&|p| p[2..4].copy_from_slice(&12u16.to_be_bytes()), true),
            expect: Drop(Invalid),
        },
        Case {
            name: "version 6 in an IPv4 frame",
            frame: patched(&|p| p[0] = 0x65, true),
            expect: Drop(Invalid),
        },
        Case {
            name: "header checksum wrong",
            frame: patched(&|p| p[10] ^= 0xff, false),
            expect: Drop(Invalid),
        },
        Case {
            name: "truncated UDP header",
            frame: e(&ipv4(src, dst, 17, 64, &udp(1, 7, &[])[..4])),
            expect: Drop(CtInvalidHdr),
        },
        Case {
            name: "TCP data offset 4",
            frame: e(&ipv4(src, dst, 6, 64, &{
                let mut t = vec![0u8; 20];
                t[12] = 0x40;
                t
            })),
            expect: Drop(CtInvalidHdr),
        },
        Case {
            name: "TTL 1",
            frame: patched(&|p| p[8] = 1, true),
            expect: Drop(TtlExceeded),
        },
        Case {
            name: "TTL 0",
            frame: patched(&|p| p[8] = 0, true),
            expect: Drop(TtlExceeded),
        },
        Case {
            name: "spoofed source (another pod)",
            frame: patched(&|p| p[12..16].copy_from_slice(&dst), true),
            expect: Drop(InvalidSip),
        },
        Case {
            name: "spoofed source (the world)",
            frame: patched(&|p| p[12..16].copy_from_slice(&[8, 8, 8, 8]), true),
            expect: Drop(InvalidSip),
        },
        Case {
            name: "to another MAC than the gateway's",
            frame: eth([0x0a, 0, 0, 0, 0, 9], me, 0x0800, &good),
            expect: Drop(InvalidDmac),
        },
        Case {
            name: "IPv4 to the broadcast MAC",
            frame: eth([0xff; 6], me, 0x0800, &good),
            expect: Drop(InvalidDmac),
        },
        Case {
            name: "from another MAC than the pod's",
            frame: eth(gw, [0x0a, 0, 0, 0, 0, 9], 0x0800, &good),
            expect: Drop(InvalidSmac),
        },
        Case {
            name: "IPv4 options (IHL 6)",
            frame: {
                let mut p = good.clone();
                p.splice(20..20, [1u8, 1, 1, 0]);
                p[0] = 0x46;
                let t = p.len() as u16;
                p[2..4].copy_from_slice(&t.to_be_bytes());
                fix(&mut p);
                e(&p)
            },
            expect: Forwarded,
        },
        Case {
            name: "first fragment (MF)",
            frame: e(&{
                let mut p = ipv4(src, dst, 17, 64, &udp(40000, 7, &[1; 16]));
                p[6] = 0x20;
                fix(&mut p);
                p
            }),
            expect: Forwarded,
        },
        Case {
            name: "later fragment",
            frame: e(&{
                let mut p = ipv4(src, dst, 17, 64, &[2; 16]);
                p[6..8].copy_from_slice(&[0, 4]);
                fix(&mut p);
                p
            }),
            expect: Forwarded,
        },
        Case {
            name: "to a multicast address",
            frame: e(&ipv4(src, [224, 0, 0, 1], 17, 1, &udp(1, 2, b"m"))),
            expect: Kernel("passed_not_endpoint"),
        },
        Case {
            name: "ARP request for the gateway",
            frame: arp(1, src, n0.cfg.node.router_ip.octets(), 6),
            expect: Answered,
        },
        Case {
            name: "ARP probe (DAD, sender 0.0.0.0)",
            frame: arp(1, [0; 4], src, 6),
            expect: Kernel("passed_arp"),
        },
        Case {
            name: "gratuitous ARP",
            frame: arp(1, src, src, 6),
            expect: Kernel("passed_arp"),
        },
        Case {
            name: "ARP reply",
            frame: arp(2, src, dst, 6),
            expect: Kernel("passed_arp"),
        },
        Case {
            name: "ARP with hardware length 16",
            frame: arp(1, src, dst, 16),
            expect: Drop(Invalid),
        },
        Case {
            name: "IPv6",
            frame: eth(gw, me, 0x86dd, &[0x60; 40]),
            expect: Kernel("passed_other_l3"),
        },
    ];
    run_cases(&n0, from_pod, |f| n0.send_raw(0, f));

    // A frame shorter than an Ethernet header cannot even be sent on a veth: the kernel
    // refuses it (EINVAL) before any device sees it. (A worker given one drops it 134: the
    // `truncated ethernet` fixture in fastpath/src/stage/tests.rs.)
    let short = lab::in_ns(
        n0.pod_ns(0),
        &[
            "python3",
            "-c",
            "import socket\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth0',0))\ntry:\n    s.send(b'0123456789')\n    print('sent')\nexcept OSError as e:\n    print(e.errno)\n",
        ],
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&short.stdout).trim(),
        "22",
        "a 10-byte frame"
    );

    // A jumbo frame from the pod never reaches XDP. A 9000-byte MTU is refused outright (a
    // veth whose peer runs native XDP allows at most ~3.5 KB); the largest one the pod may
    // set still exceeds the lxc's MTU, and the veth drops such a frame itself (the kernel
    // counts it), so fastpath sees nothing.
    let ns = n0.pod_ns(0).to_string();
    let nine_k = lab::in_ns(&ns, &["ip", "link", "set", "eth0", "mtu", "9000"]);
    assert!(nine_k.is_err(), "a 9000-byte MTU on a native-XDP veth");
    let info = lab::in_ns(&ns, &["ip", "-j", "-d", "link", "show", "eth0"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let max = v[0]["max_mtu"].as_u64().unwrap_or(1500).min(3500) as usize;
    assert!(max > 1450, "max_mtu {max}");
    lab::in_ns(&ns, &["ip", "link", "set", "eth0", "mtu", &max.to_string()]).unwrap();
    let before = n0.status();
    let mut jumbo = ipv4(src, dst, 17, 64, &udp(40001, 7, &vec![0u8; max - 28]));
    fix(&mut jumbo);
    // The veth refuses it at send time (ENOBUFS) or drops it on the way; either way the
    // kernel accounts for it (the pod's eth0 tx_dropped / the lxc's rx_dropped).
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth0',0))\ntry:\n    s.send(bytes.fromhex('{}'))\nexcept OSError as e:\n    print(e.errno)\n",
        hex(&e(&jumbo))
    );
    let sent = lab::in_ns(&ns, &["python3", "-c", &script]).unwrap();
    let errno = String::from_utf8_lossy(&sent.stdout).trim().to_string();
    assert!(errno.is_empty() || errno == "105", "send: {errno}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = n0.status();
    assert_eq!(
        drops(&after),
        drops(&before),
        "{}",
        fastpath::views::status(&after)
    );
    assert_eq!(after.forwarded_ingress(), before.forwarded_ingress());
    lab::in_ns(&ns, &["ip", "link", "set", "eth0", "mtu", "1450"]).unwrap();

    // Onto the node NIC, from a namespace on the fabric.
    let node_mac = n0.dev_mac("eth1").0;
    let out = Outside::new(&n0.fabric_ns(), &["192.168.250.9".into()]);
    let out_mac = fastpath::daemon::link_info_in(&out.ns, "eth0")
        .unwrap()
        .mac
        .0;
    let n0_ip = n0.cfg.node_ip().unwrap().octets();
    let n1_ip = n1.cfg.node_ip().unwrap().octets();
    let (ids1, _) = n1.cfg.identities();
    let inner = |dst: [u8; 4], l4p: u8, l4: &[u8]| {
        let mut p = ipv4(remote, dst, l4p, 64, l4);
        fix(&mut p);
        eth(gw, [0x0a, 0, 0, 0, 2, 11], 0x0800, &p)
    };
    let ping_in = inner(src, 1, &echo());
    let vx = |vni_bytes: [u8; 8], inner: &[u8]| {
        let mut f = vec![0u8; vxlan::ENCAP_LEN];
        vxlan::emit(
            &mut f,
            &vxlan::Outer {
                dst_mac: control::maps::MacAddr(node_mac),
                src_mac: control::maps::MacAddr(out_mac),
                src_ip: n1_ip,
                dst_ip: n0_ip,
                ip_id: 1,
                sport: 50000,
                dport: 8472,
                vni: 0,
            },
            inner.len(),
        );
        f[42..50].copy_from_slice(&vni_bytes);
        f.extend_from_slice(inner);
        f
    };
    let vni = |id: u32| {
        let b = id.to_be_bytes();
        [0x08, 0, 0, 0, b[1], b[2], b[3], 0]
    };
    let id = ids1[0];
    let outer_fix = |mut f: Vec<u8>| {
        fix(&mut f[14..34]);
        f
    };
    let underlay = vec![
        Case {
            name: "VXLAN from the peer",
            frame: vx(vni(id), &ping_in),
            expect: Forwarded,
        },
        Case {
            name: "VXLAN without the I flag",
            frame: vx([0, 0, 0, 0, 0, 0, 1, 0], &ping_in),
            expect: Drop(NoTunnelKey),
        },
        Case {
            name: "VXLAN reserved bits set",
            frame: vx([0x08, 0, 0, 1, 0, 0, 1, 0], &ping_in),
            expect: Drop(NoTunnelKey),
        },
        Case {
            name: "VXLAN with an unknown VNI",
            frame: vx(vni(54321), &ping_in),
            expect: Drop(InvalidVni),
        },
        Case {
            name: "VXLAN claiming the host identity",
            frame: vx(vni(1), &ping_in),
            expect: Drop(InvalidIdentity),
        },
        Case {
            name: "VXLAN with VNI 0",
            frame: vx(vni(0), &ping_in),
            expect: Drop(InvalidIdentity),
        },
        Case {
            name: "VXLAN in VXLAN (to the node itself)",
            frame: vx(vni(id), &{
                let mut i = vx(vni(id), &ping_in);
                i[0..6].copy_from_slice(&gw);
                i
            }),
            expect: Drop(HostUnreachable),
        },
        Case {
            name: "VXLAN with a truncated inner frame",
            frame: vx(vni(id), &ping_in[..30]),
            expect: Drop(Invalid),
        },
        Case {
            name: "VXLAN with inner ARP",
            frame: vx(vni(id), &eth([0xff; 6], me, 0x0806, &[0u8; 28])),
            expect: Drop(UnknownL3),
        },
        Case {
            name: "VXLAN to a pod this node does not have",
            frame: vx(vni(id), &inner([10, 250, 9, 9], 1, &echo())),
            expect: Drop(Unroutable),
        },
        Case {
            name: "VXLAN with inner TTL 1",
            frame: vx(vni(id), &{
                let mut p = ipv4(remote, src, 1, 1, &echo());
                fix(&mut p);
                eth(gw, me, 0x0800, &p)
            }),
            expect: Drop(TtlExceeded),
        },
        Case {
            name: "outer IPv4 checksum wrong",
            frame: {
                let mut f = vx(vni(id), &ping_in);
                f[24] ^= 0xff;
                f
            },
            expect: Drop(Invalid),
        },
        Case {
            name: "outer UDP checksum wrong",
            frame: {
                let mut f = vx(vni(id), &ping_in);
                f[40..42].copy_from_slice(&[0xde, 0xad]);
                f
            },
            expect: Drop(Invalid),
        },
        Case {
            name: "outer UDP length beyond the packet",
            frame: {
                let mut f = vx(vni(id), &ping_in);
                let l = (f.len() - 33) as u16;
                f[38..40].copy_from_slice(&l.to_be_bytes());
                f
            },
            expect: Drop(Invalid),
        },
        Case {
            name: "outer first fragment",
            frame: outer_fix({
                let mut f = vx(vni(id), &ping_in);
                f[20] = 0x20;
                f
            }),
            expect: Drop(FragNosupport),
        },
        Case {
            name: "outer later fragment",
            frame: outer_fix({
                let mut f = vx(vni(id), &ping_in);
                f[20..22].copy_from_slice(&[0, 8]);
                f
            }),
            expect: Kernel("passed_underlay"),
        },
        Case {
            name: "VXLAN to another node's address",
            frame: outer_fix({
                let mut f = vx(vni(id), &ping_in);
                f[30..34].copy_from_slice(&n1_ip);
                f
            }),
            expect: Drop(UnknownTarget),
        },
        Case {
            name: "VXLAN to another MAC",
            frame: {
                let mut f = vx(vni(id), &ping_in);
                f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
                f
            },
            expect: Drop(InvalidDmac),
        },
        Case {
            name: "SSH to the node",
            frame: eth(node_mac, out_mac, 0x0800, &{
                let mut p = ipv4([192, 168, 250, 9], n0_ip, 6, 64, &{
                    let mut t = vec![0u8; 20];
                    t[2..4].copy_from_slice(&22u16.to_be_bytes());
                    t[12] = 0x50;
                    t[13] = 2;
                    t
                });
                fix(&mut p);
                p
            }),
            expect: Kernel("passed_underlay"),
        },
        Case {
            name: "truncated IPv4 on the NIC",
            frame: eth(node_mac, out_mac, 0x0800, &[0x45; 10]),
            expect: Kernel("passed_underlay"),
        },
    ];
    run_cases(&n0, underlay, |f| {
        fastpath_tests::raw_send(&out.ns, "eth0", f)
    });

    // Good traffic kept flowing, both ways, and the workers never restarted.
    assert!(n0.ping(0, &n0.pod_ip(1), 2), "same node after");
    assert!(n0.ping(0, &n1.pod_ip(0), 2), "cross node after");
    assert!(n1.ping(1, &n0.pod_ip(1), 2), "the other way after");
}
