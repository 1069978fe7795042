//! Pipeline fixtures: each case is {name, input frame, verdict, expected output bytes}, run
//! over plain Vec buffers (no AF_XDP). Named addresses, as cilium's `bpf/tests/pktgen.h`.

use super::*;
use crate::wire::{ipv4, l4};
use control::datapath::{Datapath, NoKernel, node_endpoints};
use control::maps::MacAddr;
use control::tables::Port;

const CLIENT_IP: [u8; 4] = [10, 200, 1, 11];
const ECHO_IP: [u8; 4] = [10, 200, 1, 12];
const ROUTER_IP: [u8; 4] = [10, 200, 0, 1];
const CLIENT_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xc8, 0x01, 0x0b]);
const ECHO_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xc8, 0x01, 0x0c]);
const LXC_CLIENT_MAC: MacAddr = MacAddr([0x3e, 0, 0, 0, 0, 0x01]);
const LXC_ECHO_MAC: MacAddr = MacAddr([0x3e, 0, 0, 0, 0, 0x02]);
const CLIENT_PORT: PortId = 0;
const ECHO_PORT: PortId = 1;

/// The default demo node's tables with fixed lxc MACs.
fn tables() -> std::sync::Arc<Tables> {
    let cfg = control::config::Config::default_node();
    let macs = [LXC_CLIENT_MAC, LXC_ECHO_MAC, MacAddr([0x3e, 0, 0, 0, 0, 3])];
    let ports: Vec<Port> = cfg
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| Port {
            ifname: p.lxc.clone(),
            ifindex: 20 + i as u32,
            mac: macs[i],
            endpoint_ip: p.ip,
            endpoint_id: i as u16 + 1,
        })
        .collect();
    let eps = node_endpoints(&cfg, &ports);
    let mut dp = Datapath::new(ports, 1, NoKernel);
    dp.upsert_endpoints(&eps).unwrap();
    dp.tables()
}

/// A chained packet builder (katran's PacketBuilder shape).
#[derive(Clone)]
struct Pkt {
    dst: MacAddr,
    src: MacAddr,
    ethertype: u16,
    l3: Vec<u8>,
}

impl Pkt {
    fn eth(dst: MacAddr, src: MacAddr) -> Self {
        Pkt {
            dst,
            src,
            ethertype: 0x0800,
            l3: Vec::new(),
        }
    }
    fn ipv4(mut self, src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, l4: &[u8]) -> Self {
        let mut b = vec![0u8; 20 + l4.len()];
        ipv4::emit(&mut b, src, dst, proto, ttl, l4.len());
        b[20..].copy_from_slice(l4);
        self.ethertype = 0x0800;
        self.l3 = b;
        self
    }
    fn icmp_echo(self, src: [u8; 4], dst: [u8; 4], ttl: u8) -> Self {
        let mut icmp = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        let c = wire::checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        self.ipv4(src, dst, ipv4::PROTO_ICMP, ttl, &icmp)
    }
    fn arp_request(mut self, spa: [u8; 4], tpa: [u8; 4]) -> Self {
        let mut b = vec![0u8; 28];
        arp::emit_request(&mut b, self.src, spa, tpa);
        self.ethertype = 0x0806;
        self.l3 = b;
        self
    }
    fn patch(mut self, off: usize, bytes: &[u8]) -> Self {
        self.l3[off..off + bytes.len()].copy_from_slice(bytes);
        self
    }
    fn fix_csum(mut self) -> Self {
        Ipv4Packet::new_checked(&mut self.l3[..])
            .unwrap()
            .fill_checksum();
        self
    }
    fn truncate_l3(mut self, len: usize) -> Self {
        self.l3.truncate(len);
        self
    }
    fn ethertype(mut self, t: u16) -> Self {
        self.ethertype = t;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 14];
        ethernet::emit(&mut b, self.dst, self.src, EtherType::from(self.ethertype));
        b.extend_from_slice(&self.l3);
        b
    }
}

fn from_client() -> Pkt {
    Pkt::eth(LXC_CLIENT_MAC, CLIENT_MAC)
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    verdict: Verdict,
    /// Expected frame after the pipeline (for forwarded frames).
    output: Option<Vec<u8>>,
}

fn drop(reason: DropReason) -> Verdict {
    Verdict::Drop {
        reason,
        dir: MetricDir::Egress,
    }
}

fn cases() -> Vec<Case> {
    let ping = from_client().icmp_echo(CLIENT_IP, ECHO_IP, 64);
    // Reference output: built independently with TTL 63 and a full checksum.
    let ping_out = Pkt::eth(ECHO_MAC, LXC_ECHO_MAC).icmp_echo(CLIENT_IP, ECHO_IP, 63);
    let udp = {
        let payload = [
            0x30, 0x39, 0x00, 0x07, 0x00, 0x0c, 0, 0, b'h', b'i', b'!', b'\n',
        ];
        from_client().ipv4(CLIENT_IP, ECHO_IP, ipv4::PROTO_UDP, 64, &payload)
    };
    let udp_out = {
        let payload = [
            0x30, 0x39, 0x00, 0x07, 0x00, 0x0c, 0, 0, b'h', b'i', b'!', b'\n',
        ];
        Pkt::eth(ECHO_MAC, LXC_ECHO_MAC).ipv4(CLIENT_IP, ECHO_IP, ipv4::PROTO_UDP, 63, &payload)
    };
    let arp_req = Pkt::eth(MacAddr::BROADCAST, CLIENT_MAC).arp_request(CLIENT_IP, ROUTER_IP);
    let arp_reply = {
        let mut b = vec![0u8; 14 + 28];
        ethernet::emit(&mut b, CLIENT_MAC, LXC_CLIENT_MAC, EtherType::Arp);
        // Reference: op 2, sha = lxc MAC, spa = router, tha = client MAC, tpa = client.
        b[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        b[22..28].copy_from_slice(&LXC_CLIENT_MAC.0);
        b[28..32].copy_from_slice(&ROUTER_IP);
        b[32..38].copy_from_slice(&CLIENT_MAC.0);
        b[38..42].copy_from_slice(&CLIENT_IP);
        b
    };
    let arp_other_pod = Pkt::eth(MacAddr::BROADCAST, CLIENT_MAC).arp_request(CLIENT_IP, ECHO_IP);
    vec![
        Case {
            name: "ping to a local pod is delivered",
            input: ping.bytes(),
            verdict: Verdict::Deliver { port: ECHO_PORT },
            output: Some(ping_out.bytes()),
        },
        Case {
            name: "udp to a local pod is delivered",
            input: udp.bytes(),
            verdict: Verdict::Deliver { port: ECHO_PORT },
            output: Some(udp_out.bytes()),
        },
        Case {
            name: "arp for the gateway answered with the lxc mac",
            input: arp_req.bytes(),
            verdict: Verdict::ArpReply { port: CLIENT_PORT },
            output: Some(arp_reply),
        },
        Case {
            name: "arp for another pod answered too",
            input: arp_other_pod.bytes(),
            verdict: Verdict::ArpReply { port: CLIENT_PORT },
            output: None,
        },
        Case {
            name: "arp for the pod's own ip is not answered",
            input: Pkt::eth(MacAddr::BROADCAST, CLIENT_MAC)
                .arp_request([0; 4], CLIENT_IP)
                .bytes(),
            verdict: drop(DropReason::UnknownTarget),
            output: None,
        },
        Case {
            name: "arp reply from a pod",
            input: arp_req.clone().patch(7, &[2]).bytes(),
            verdict: drop(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "arp truncated",
            input: arp_req.clone().truncate_l3(20).bytes(),
            verdict: drop(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "ttl 1 is not forwarded",
            input: from_client().icmp_echo(CLIENT_IP, ECHO_IP, 1).bytes(),
            verdict: Verdict::Drop {
                reason: DropReason::TtlExceeded,
                dir: MetricDir::Ingress,
            },
            output: None,
        },
        Case {
            name: "spoofed source address",
            input: from_client().icmp_echo(ECHO_IP, ECHO_IP, 64).bytes(),
            verdict: drop(DropReason::InvalidSip),
            output: None,
        },
        Case {
            name: "unknown destination",
            input: from_client()
                .icmp_echo(CLIENT_IP, [10, 200, 9, 9], 64)
                .bytes(),
            verdict: drop(DropReason::Unroutable),
            output: None,
        },
        Case {
            name: "host destination raced the steering",
            input: from_client().icmp_echo(CLIENT_IP, ROUTER_IP, 64).bytes(),
            verdict: drop(DropReason::HostUnreachable),
            output: None,
        },
        Case {
            name: "truncated ethernet",
            input: ping.bytes()[..13].to_vec(),
            verdict: drop(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "truncated ipv4",
            input: ping.clone().truncate_l3(10).bytes(),
            verdict: drop(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "bad ihl (4)",
            input: ping.clone().patch(0, &[0x44]).bytes(),
            verdict: drop(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "ihl beyond the frame",
            input: ping.clone().patch(0, &[0x4f]).truncate_l3(40).bytes(),
            verdict: drop(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "total length beyond the frame",
            input: ping.clone().patch(2, &[0x05, 0xdc]).bytes(),
            verdict: drop(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "total length shorter than the header",
            input: ping.clone().patch(2, &[0, 12]).bytes(),
            verdict: drop(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "ip version 6 in an ipv4 ethertype",
            input: ping.clone().patch(0, &[0x65]).bytes(),
            verdict: drop(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "truncated udp header",
            input: from_client()
                .ipv4(CLIENT_IP, ECHO_IP, ipv4::PROTO_UDP, 64, &[0x30, 0x39, 0, 7])
                .bytes(),
            verdict: drop(DropReason::CtInvalidHdr),
            output: None,
        },
        Case {
            name: "tcp data offset below 5",
            input: from_client()
                .ipv4(CLIENT_IP, ECHO_IP, ipv4::PROTO_TCP, 64, &[0u8; 20])
                .bytes(),
            verdict: drop(DropReason::CtInvalidHdr),
            output: None,
        },
        Case {
            name: "later fragment without l4 header is forwarded",
            input: from_client()
                .ipv4(CLIENT_IP, ECHO_IP, ipv4::PROTO_UDP, 64, &[1, 2, 3])
                .patch(6, &[0x00, 0x10])
                .fix_csum()
                .bytes(),
            verdict: Verdict::Deliver { port: ECHO_PORT },
            output: None,
        },
        Case {
            name: "ipv6 ethertype",
            input: ping.clone().ethertype(0x86dd).bytes(),
            verdict: drop(DropReason::UnknownL3),
            output: None,
        },
    ]
}

#[test]
fn fixtures() {
    let t = tables();
    for c in cases() {
        let mut buf = c.input.clone();
        let v = from_container(&mut buf, CLIENT_PORT, &t);
        assert_eq!(v, c.verdict, "case `{}`", c.name);
        if let Some(out) = &c.output {
            assert_eq!(&buf, out, "case `{}`: output bytes", c.name);
        }
        if matches!(v, Verdict::Deliver { .. }) {
            let ip = Ipv4Packet::new_checked(&buf[14..]).unwrap();
            assert!(
                ip.verify_checksum(),
                "case `{}`: ip checksum after ttl",
                c.name
            );
        }
        if matches!(v, Verdict::Drop { .. }) {
            assert_eq!(
                buf, c.input,
                "case `{}`: dropped frames are not modified",
                c.name
            );
        }
    }
}

#[test]
fn l4_of_delivered_tcp_is_untouched() {
    let t = tables();
    let mut tcp = [0u8; 20];
    tcp[0..4].copy_from_slice(&[0x9c, 0x40, 0x00, 0x07]);
    tcp[12] = 0x50;
    tcp[13] = 0x02;
    let mut buf = from_client()
        .ipv4(CLIENT_IP, ECHO_IP, ipv4::PROTO_TCP, 64, &tcp)
        .bytes();
    assert_eq!(
        from_container(&mut buf, CLIENT_PORT, &t),
        Verdict::Deliver { port: ECHO_PORT }
    );
    assert_eq!(
        l4::parse(6, &buf[34..]).unwrap(),
        l4::L4::Tcp {
            sport: 40000,
            dport: 7,
            flags: 2
        }
    );
    assert_eq!(&buf[34..], &tcp);
}
