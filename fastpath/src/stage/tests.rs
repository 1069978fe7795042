//! Pipeline fixtures: each case is {name, input frame, verdict, expected output bytes}, run
//! over plain Vec buffers (no AF_XDP). Named addresses, as cilium's `bpf/tests/pktgen.h`.

use super::*;
use crate::wire::{self, EtherType, EthernetFrame, Ipv4Packet, arp, ethernet, ipv4, l4, vxlan};
use control::datapath::{Datapath, NoKernel, node_endpoints};
use control::maps::MacAddr;
use control::tables::Port;

mod fixtures;

/// A fixture's YAML (services, policies) as the config reader reads it.
fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, control::yaml::YamlError> {
    control::yaml::parse(text, &control::yaml::CONFIG)
}

/// Headroom the kernel leaves in front of a received frame (XDP_PACKET_HEADROOM).
const HEADROOM: usize = 256;

/// Run `input` through the pipeline as if it arrived on `port`, in a 2 KiB chunk with the
/// kernel's headroom; returns the verdict and the frame afterwards.
fn run(input: &[u8], port: PortId, t: &Tables) -> (Verdict, Vec<u8>) {
    let mut chunk = vec![0u8; 2048];
    chunk[HEADROOM..HEADROOM + input.len()].copy_from_slice(input);
    let mut b = Buf::new(&mut chunk, HEADROOM, input.len());
    let v = process(&mut b, port, t, &mut Scratch::default());
    (v, b.data().to_vec())
}

const CLIENT_IP: [u8; 4] = [10, 200, 1, 11];
const ECHO_IP: [u8; 4] = [10, 200, 1, 12];
const ROUTER_IP: [u8; 4] = [10, 200, 0, 1];
const CLIENT_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xc8, 0x01, 0x0b]);
const ECHO_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xc8, 0x01, 0x0c]);
const LXC_CLIENT_MAC: MacAddr = MacAddr([0x3e, 0, 0, 0, 0, 0x01]);
const LXC_ECHO_MAC: MacAddr = MacAddr([0x3e, 0, 0, 0, 0, 0x02]);
const LXC_WEB_MAC: MacAddr = MacAddr([0x3e, 0, 0, 0, 0, 3]);
const CLIENT_PORT: PortId = 0;
const ECHO_PORT: PortId = 1;

/// The default demo node's endpoints with fixed lxc MACs (no services).
fn demo_datapath() -> Datapath<NoKernel> {
    let cfg = control::config::Config::default_node();
    let macs = [LXC_CLIENT_MAC, LXC_ECHO_MAC, LXC_WEB_MAC];
    let ports = lxc_ports(&cfg, &macs, 1500);
    let eps = node_endpoints(&cfg, &ports).unwrap();
    let mut dp = Datapath::new(ports, 1, NoKernel);
    dp.upsert_endpoints(&eps).unwrap();
    dp
}

/// The default demo node's tables with fixed lxc MACs.
fn tables() -> std::sync::Arc<Tables> {
    demo_datapath().tables()
}

/// The lxc ports of a config's pods (ifindex 20 + i, endpoint ID i + 1, the given MACs).
fn lxc_ports(cfg: &control::config::Config, macs: &[MacAddr], mtu: u32) -> Vec<Port> {
    cfg.pods
        .iter()
        .enumerate()
        .map(|(i, p)| Port::lxc(&p.lxc, 20 + i as u32, macs[i], p.ip, i as u16 + 1, mtu))
        .collect()
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

/// A 20-byte TCP header (no checksum: the pipeline does not verify L4 checksums).
fn tcp(sport: u16, dport: u16, flags: u8) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t
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

/// A drop counted in egress (what a frame from a pod that stops at `from-container` is).
fn drop_egress(reason: DropReason) -> Verdict {
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
            verdict: drop_egress(DropReason::UnknownTarget),
            output: None,
        },
        Case {
            name: "arp reply from a pod",
            input: arp_req.clone().patch(7, &[2]).bytes(),
            verdict: drop_egress(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "arp truncated",
            input: arp_req.clone().truncate_l3(20).bytes(),
            verdict: drop_egress(DropReason::Invalid),
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
            verdict: drop_egress(DropReason::InvalidSip),
            output: None,
        },
        Case {
            name: "unknown destination",
            input: from_client()
                .icmp_echo(CLIENT_IP, [10, 200, 9, 9], 64)
                .bytes(),
            verdict: drop_egress(DropReason::Unroutable),
            output: None,
        },
        Case {
            name: "host destination raced the steering",
            input: from_client().icmp_echo(CLIENT_IP, ROUTER_IP, 64).bytes(),
            verdict: drop_egress(DropReason::HostUnreachable),
            output: None,
        },
        Case {
            name: "truncated ethernet",
            input: ping.bytes()[..13].to_vec(),
            verdict: drop_egress(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "truncated ipv4",
            input: ping.clone().truncate_l3(10).bytes(),
            verdict: drop_egress(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "bad ihl (4)",
            input: ping.clone().patch(0, &[0x44]).bytes(),
            verdict: drop_egress(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "ihl beyond the frame",
            input: ping.clone().patch(0, &[0x4f]).truncate_l3(40).bytes(),
            verdict: drop_egress(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "total length beyond the frame",
            input: ping.clone().patch(2, &[0x05, 0xdc]).bytes(),
            verdict: drop_egress(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "total length shorter than the header",
            input: ping.clone().patch(2, &[0, 12]).bytes(),
            verdict: drop_egress(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "ipv4 to another mac than the gateway's",
            input: Pkt::eth(ECHO_MAC, CLIENT_MAC)
                .icmp_echo(CLIENT_IP, ECHO_IP, 64)
                .bytes(),
            verdict: drop_egress(DropReason::InvalidDmac),
            output: None,
        },
        Case {
            name: "ipv4 to the broadcast mac",
            input: Pkt::eth(MacAddr::BROADCAST, CLIENT_MAC)
                .icmp_echo(CLIENT_IP, ECHO_IP, 64)
                .bytes(),
            verdict: drop_egress(DropReason::InvalidDmac),
            output: None,
        },
        Case {
            name: "source mac not the pod's",
            input: Pkt::eth(LXC_CLIENT_MAC, ECHO_MAC)
                .icmp_echo(CLIENT_IP, ECHO_IP, 64)
                .bytes(),
            verdict: drop_egress(DropReason::InvalidSmac),
            output: None,
        },
        Case {
            name: "multicast source mac",
            input: Pkt::eth(MacAddr::BROADCAST, MacAddr([0x01, 0, 0x5e, 0, 0, 1]))
                .arp_request(CLIENT_IP, ROUTER_IP)
                .bytes(),
            verdict: drop_egress(DropReason::InvalidSmac),
            output: None,
        },
        Case {
            name: "ipv4 header checksum wrong",
            input: ping.clone().patch(10, &[0xde, 0xad]).bytes(),
            verdict: drop_egress(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "ip version 6 in an ipv4 ethertype",
            input: ping.clone().patch(0, &[0x65]).bytes(),
            verdict: drop_egress(DropReason::Invalid),
            output: None,
        },
        Case {
            name: "truncated udp header",
            input: from_client()
                .ipv4(CLIENT_IP, ECHO_IP, ipv4::PROTO_UDP, 64, &[0x30, 0x39, 0, 7])
                .bytes(),
            verdict: drop_egress(DropReason::CtInvalidHdr),
            output: None,
        },
        Case {
            name: "tcp data offset below 5",
            input: from_client()
                .ipv4(CLIENT_IP, ECHO_IP, ipv4::PROTO_TCP, 64, &[0u8; 20])
                .bytes(),
            verdict: drop_egress(DropReason::CtInvalidHdr),
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
            verdict: drop_egress(DropReason::UnknownL3),
            output: None,
        },
    ]
}

/// The Cilium metric rows a verdict must move, as Cilium counts them: a same-node delivery
/// is forwarded egress (from the sender's lxc) and ingress (to the receiver's); a drop is
/// its reason in its direction; an ARP reply moves none.
fn expected_metrics(v: &Verdict) -> Vec<(u8, MetricDir, u64)> {
    match *v {
        Verdict::Deliver { .. } => vec![(0, MetricDir::Ingress, 1), (0, MetricDir::Egress, 1)],
        Verdict::Drop { reason, dir } => vec![(reason.code(), dir, 1)],
        Verdict::ArpReply { .. } => vec![],
        _ => unreachable!("not a same-node verdict"),
    }
}

/// The userspace verdicts of the same-node cases, exactly (the backend-neutral table in
/// [`fixtures`] checks what leaves and what is counted; a verdict is this pipeline's own).
#[test]
fn same_node_verdicts() {
    let t = tables();
    for c in cases() {
        let (v, out) = run(&c.input, CLIENT_PORT, &t);
        assert_eq!(v, c.verdict, "case `{}`", c.name);
        if v.tx_port().is_none() {
            assert_eq!(
                out, c.input,
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
    let input = from_client()
        .ipv4(CLIENT_IP, ECHO_IP, ipv4::PROTO_TCP, 64, &tcp)
        .bytes();
    let (v, buf) = run(&input, CLIENT_PORT, &t);
    assert_eq!(v, Verdict::Deliver { port: ECHO_PORT });
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

/// Cross-node fixtures: node n1 (pods a, b; underlay 192.168.50.1) and node n2 (pod c;
/// 192.168.50.2), as their two configs describe them.
mod overlay {
    use super::*;
    use control::config::Config;
    use control::tables::NextHop;

    pub(super) const A_IP: [u8; 4] = [10, 1, 0, 11];
    pub(super) const B_IP: [u8; 4] = [10, 1, 0, 12];
    pub(super) const C_IP: [u8; 4] = [10, 2, 0, 11];
    pub(super) const N1: [u8; 4] = [192, 168, 50, 1];
    pub(super) const N2: [u8; 4] = [192, 168, 50, 2];
    pub(super) const A_MAC: MacAddr = MacAddr([0x0a, 0, 0, 0, 1, 11]);
    pub(super) const B_MAC: MacAddr = MacAddr([0x0a, 0, 0, 0, 1, 12]);
    pub(super) const C_MAC: MacAddr = MacAddr([0x0a, 0, 0, 0, 2, 11]);
    pub(super) const LXC: [MacAddr; 2] = [
        MacAddr([0x3e, 1, 0, 0, 0, 1]),
        MacAddr([0x3e, 1, 0, 0, 0, 2]),
    ];
    pub(super) const N1_MAC: MacAddr = MacAddr([0x02, 0x50, 0, 0, 0, 1]);
    pub(super) const N2_MAC: MacAddr = MacAddr([0x02, 0x50, 0, 0, 0, 2]);
    pub(super) const A_PORT: PortId = 0;
    pub(super) const B_PORT: PortId = 1;
    pub(super) const UL: PortId = 2;

    pub(super) fn n1_cfg(native: bool, overlay_mac: bool) -> Config {
        let mut y = String::from(
            r#"
node: { name: n1, router_ip: 10.1.0.1, pod_cidr: 10.1.0.0/24,
        underlay: { device: eth1, address: 192.168.50.1/24 } }
pods:
  - { name: a, ip: 10.1.0.11, mac: "0a:00:00:00:01:0b", lxc: lxc-a, labels: { app: a } }
  - { name: b, ip: 10.1.0.12, mac: "0a:00:00:00:01:0c", lxc: lxc-b, labels: { app: b } }
remote_nodes:
  - name: n2
    ip: 192.168.50.2
    pod_cidr: 10.2.0.0/24
    pods: [ { name: c, ip: 10.2.0.11, labels: { app: c } } ]
"#,
        );
        if overlay_mac {
            y = y.replace(
                "pod_cidr: 10.2.0.0/24",
                "pod_cidr: 10.2.0.0/24\n    overlay_mac: \"02:aa:00:00:00:02\"",
            );
        }
        if native {
            y += "datapath: { routing: native, native_routing_cidr: 10.0.0.0/8 }\n";
        }
        Config::parse(&y, "n1.yaml").unwrap()
    }

    pub(super) fn n2_cfg() -> Config {
        Config::parse(
            r#"
node: { name: n2, router_ip: 10.2.0.1, pod_cidr: 10.2.0.0/24,
        underlay: { device: eth1, address: 192.168.50.2/24 } }
pods:
  - { name: c, ip: 10.2.0.11, mac: "0a:00:00:00:02:0b", lxc: lxc-c, labels: { app: c } }
remote_nodes:
  - name: n1
    ip: 192.168.50.1
    pod_cidr: 10.1.0.0/24
    pods:
      - { name: a, ip: 10.1.0.11, labels: { app: a } }
      - { name: b, ip: 10.1.0.12, labels: { app: b } }
"#,
            "n2.yaml",
        )
        .unwrap()
    }

    /// A node's tables as the daemon builds them, with the peer's MAC resolved.
    fn node(
        cfg: &Config,
        own_mac: MacAddr,
        peer: [u8; 4],
        peer_mac: MacAddr,
    ) -> std::sync::Arc<Tables> {
        let mut ports = lxc_ports(cfg, &LXC, 1450);
        let ul = ports.len() as PortId;
        ports.push(Port::underlay(
            "eth1",
            30,
            own_mac,
            cfg.node_ip().unwrap(),
            1500,
        ));
        let mut dp = Datapath::new(ports, 1, NoKernel);
        dp.load_node(cfg).unwrap();
        dp.set_nexthops(&[(
            peer,
            Some(NextHop {
                port: ul,
                src_mac: own_mac,
                dst_mac: peer_mac,
                inner_dst_mac: cfg.remote_nodes[0].overlay_mac,
            }),
        )]);
        dp.tables()
    }

    pub(super) fn n1() -> std::sync::Arc<Tables> {
        node(&n1_cfg(false, false), N1_MAC, N2, N2_MAC)
    }

    pub(super) fn identity(cfg: &Config, pod: usize) -> u32 {
        cfg.identities().0[pod]
    }

    pub(super) fn a_to_c_udp(len: usize) -> Vec<u8> {
        let mut udp = vec![0u8; 8 + len];
        udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&7u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        Pkt::eth(LXC[0], A_MAC)
            .ipv4(A_IP, C_IP, ipv4::PROTO_UDP, 64, &udp)
            .bytes()
    }

    /// An encapsulated frame as a peer would send it.
    pub(super) fn vxlan_frame(
        src: [u8; 4],
        dst: [u8; 4],
        dport: u16,
        vni_bytes: [u8; 8],
        inner: &[u8],
    ) -> Vec<u8> {
        let mut out = vec![0u8; vxlan::ENCAP_LEN];
        vxlan::emit(
            &mut out,
            &vxlan::Outer {
                dst_mac: N1_MAC,
                src_mac: N2_MAC,
                src_ip: src,
                dst_ip: dst,
                ip_id: 1,
                sport: 50000,
                dport,
                vni: 0,
            },
            inner.len(),
        );
        out[42..50].copy_from_slice(&vni_bytes);
        out.extend_from_slice(inner);
        out
    }

    pub(super) fn vni(id: u32) -> [u8; 8] {
        let b = id.to_be_bytes();
        [0x08, 0, 0, 0, b[1], b[2], b[3], 0]
    }

    /// n1 with a policy on pod a (from the config's `policies:`): egress only to b, ingress
    /// only from c on UDP 7.
    pub(super) fn n1_with_policy() -> std::sync::Arc<Tables> {
        let mut cfg = n1_cfg(false, false);
        cfg.policies = yaml(
            r#"
- kind: CiliumNetworkPolicy
  metadata: { name: a }
  spec:
    endpointSelector: { matchLabels: { app: a } }
    egress: [{ toEndpoints: [{ matchLabels: { app: b } }] }]
    ingress:
      - fromEndpoints: [{ matchLabels: { app: c } }]
        toPorts: [{ ports: [{ port: "7", protocol: UDP }] }]
"#,
        )
        .unwrap();
        node(&cfg, N1_MAC, N2, N2_MAC)
    }

    #[test]
    fn egress_policy_before_encap_ingress_after_decap_on_the_vni() {
        let t = n1_with_policy();
        // a → c: egress allows only b, so nothing is encapsulated.
        assert_eq!(
            run(&a_to_c_udp(20), A_PORT, &t).0,
            drop(DropReason::Policy, MetricDir::Egress)
        );
        // c → a on UDP 7 from the VNI of c: allowed after decap; from b's identity (a VNI
        // the node accepts) the same packet is denied.
        let c_id = n2_cfg().identities().0[0];
        let b_id = identity(&n1_cfg(false, false), 1);
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&50000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&7u16.to_be_bytes());
        udp[4..6].copy_from_slice(&8u16.to_be_bytes());
        let inner = Pkt::eth(LXC[0], C_MAC)
            .ipv4(C_IP, A_IP, ipv4::PROTO_UDP, 64, &udp)
            .bytes();
        let f = vxlan_frame(N2, N1, 8472, vni(c_id), &inner);
        assert_eq!(run(&f, UL, &t).0, Verdict::Decap { port: A_PORT });
        let f = vxlan_frame(N2, N1, 8472, vni(b_id), &inner);
        assert_eq!(
            run(&f, UL, &t).0,
            drop(DropReason::Policy, MetricDir::Ingress)
        );
        // a's answer to c is a reply (conntrack), although egress to c is not allowed.
        let mut back = vec![0u8; 8];
        back[0..2].copy_from_slice(&7u16.to_be_bytes());
        back[2..4].copy_from_slice(&50000u16.to_be_bytes());
        back[4..6].copy_from_slice(&8u16.to_be_bytes());
        let reply = Pkt::eth(LXC[0], A_MAC)
            .ipv4(A_IP, C_IP, ipv4::PROTO_UDP, 64, &back)
            .bytes();
        assert_eq!(
            run(&reply, A_PORT, &t).0,
            Verdict::Encap {
                port: UL,
                dir: MetricDir::Egress
            }
        );
    }

    #[test]
    fn encap_to_remote_pod() {
        let t = n1();
        let input = a_to_c_udp(20);
        let (v, out) = run(&input, A_PORT, &t);
        assert_eq!(
            v,
            Verdict::Encap {
                port: UL,
                dir: MetricDir::Egress
            }
        );
        assert_eq!(out.len(), input.len() + 50);
        let eth = EthernetFrame::new_checked(&out[..]).unwrap();
        assert_eq!((eth.dst(), eth.src()), (N2_MAC, N1_MAC));
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert!(ip.verify_checksum(), "outer IPv4 checksum");
        assert_eq!((ip.src(), ip.dst(), ip.ttl()), (N1, N2, 64));
        assert_eq!(ip.total_len(), input.len() + 36);
        let sport = u16::from_be_bytes([out[34], out[35]]);
        assert!((32768..61000).contains(&sport));
        assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8472);
        let vx = vxlan::parse(&out[42..]).unwrap();
        assert_eq!(
            vx.vni,
            identity(&n1_cfg(false, false), 0),
            "VNI = source identity"
        );
        assert_eq!(
            &out[50..],
            &input[..],
            "inner frame untouched (Cilium keeps its MACs)"
        );
        // Same flow, same source port; another flow may differ.
        let (_, again) = run(&input, A_PORT, &t);
        assert_eq!(again[34..36], out[34..36]);
    }

    #[test]
    fn encap_sets_inner_mac_for_a_kernel_peer() {
        let cfg = n1_cfg(false, true);
        let t = node(&cfg, N1_MAC, N2, N2_MAC);
        let input = a_to_c_udp(4);
        let (v, out) = run(&input, A_PORT, &t);
        assert_eq!(
            v,
            Verdict::Encap {
                port: UL,
                dir: MetricDir::Egress
            }
        );
        let inner = EthernetFrame::new_checked(&out[50..]).unwrap();
        assert_eq!(inner.dst(), "02:aa:00:00:00:02".parse().unwrap());
        assert_eq!(inner.src(), LXC[0]);
        assert_eq!(&out[64..], &input[14..], "inner IP packet untouched");
    }

    #[test]
    fn unknown_pod_in_remote_cidr_still_tunnels_to_its_node() {
        let t = n1();
        let input = Pkt::eth(LXC[0], A_MAC)
            .icmp_echo(A_IP, [10, 2, 0, 99], 64)
            .bytes();
        let (v, out) = run(&input, A_PORT, &t);
        assert_eq!(
            v,
            Verdict::Encap {
                port: UL,
                dir: MetricDir::Egress
            }
        );
        assert_eq!(&out[30..34], &N2);
    }

    #[test]
    fn encap_without_next_hop_is_a_counted_drop() {
        let cfg = n1_cfg(false, false);
        let t = node(&cfg, N1_MAC, [192, 168, 50, 9], N2_MAC);
        let (v, _) = run(&a_to_c_udp(4), A_PORT, &t);
        assert_eq!(v, drop_egress(DropReason::NoFib));
    }

    #[test]
    fn too_big_for_the_overlay() {
        let t = n1();
        // 1451-byte IP packet: one over the overlay MTU (1500 - 50).
        let input = a_to_c_udp(1451 - 28);
        let (v, out) = run(&input, A_PORT, &t);
        assert_eq!(
            v,
            Verdict::IcmpReply {
                port: A_PORT,
                reason: DropReason::FragNeeded,
                dir: MetricDir::Egress
            }
        );
        let eth = EthernetFrame::new_checked(&out[..]).unwrap();
        assert_eq!((eth.dst(), eth.src()), (A_MAC, LXC[0]));
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src(), ip.dst()), ([10, 1, 0, 1], A_IP));
        let icmp = ip.payload();
        assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450, "next-hop MTU");
        assert_eq!(wire::checksum(icmp), 0);
        assert_eq!(&icmp[8..28], &input[14..34], "quotes the original header");
        // Exactly the overlay MTU still goes.
        let (v, _) = run(&a_to_c_udp(1450 - 28), A_PORT, &t);
        assert_eq!(
            v,
            Verdict::Encap {
                port: UL,
                dir: MetricDir::Egress
            }
        );
        // Without DF: a counted drop.
        let mut no_df = a_to_c_udp(1451 - 28);
        no_df[20] = 0;
        let no_df = {
            let mut p = no_df;
            Ipv4Packet::new_checked(&mut p[14..])
                .unwrap()
                .fill_checksum();
            p
        };
        let (v, _) = run(&no_df, A_PORT, &t);
        assert_eq!(v, drop_egress(DropReason::FragNeeded));
    }

    #[test]
    fn decap_delivers_with_identity_from_the_vni() {
        let t = n1();
        let c_id = n2_cfg().identities().0[0];
        let inner = Pkt::eth(MacAddr([0x3e, 2, 0, 0, 0, 1]), C_MAC)
            .icmp_echo(C_IP, B_IP, 64)
            .bytes();
        let (v, out) = run(&vxlan_frame(N2, N1, 8472, vni(c_id), &inner), UL, &t);
        assert_eq!(v, Verdict::Decap { port: B_PORT });
        let want = Pkt::eth(B_MAC, LXC[1]).icmp_echo(C_IP, B_IP, 63).bytes();
        assert_eq!(out, want, "outer headers gone, TTL-1, pod MACs");
    }

    #[test]
    fn encap_then_decap_round_trip() {
        let n2 = node(&n2_cfg(), N2_MAC, N1, N1_MAC);
        // c on n2 → a on n1.
        let input = Pkt::eth(LXC[0], C_MAC).icmp_echo(C_IP, A_IP, 64).bytes();
        let (v, wire_frame) = run(&input, 0, &n2);
        assert_eq!(
            v,
            Verdict::Encap {
                port: 1,
                dir: MetricDir::Egress
            }
        );
        let (v, out) = run(&wire_frame, UL, &n1());
        assert_eq!(v, Verdict::Decap { port: A_PORT });
        assert_eq!(
            out,
            Pkt::eth(A_MAC, LXC[0]).icmp_echo(C_IP, A_IP, 63).bytes()
        );
    }

    #[test]
    fn bad_overlay_frames_are_dropped_with_reasons() {
        let t = n1();
        let c_id = n2_cfg().identities().0[0];
        let inner = Pkt::eth(LXC[0], C_MAC).icmp_echo(C_IP, B_IP, 64).bytes();
        let ingress = |reason| Verdict::Drop {
            reason,
            dir: MetricDir::Ingress,
        };
        let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
            (
                "host identity in the VNI",
                vxlan_frame(N2, N1, 8472, vni(1), &inner),
                DropReason::InvalidIdentity,
            ),
            (
                "identity 0",
                vxlan_frame(N2, N1, 8472, vni(0), &inner),
                DropReason::InvalidIdentity,
            ),
            (
                "identity nobody has",
                vxlan_frame(N2, N1, 8472, vni(54321), &inner),
                DropReason::InvalidVni,
            ),
            (
                "I flag missing",
                vxlan_frame(N2, N1, 8472, [0, 0, 0, 0, 0, 1, 0, 0], &inner),
                DropReason::NoTunnelKey,
            ),
            (
                "reserved bits set",
                vxlan_frame(N2, N1, 8472, [0x08, 0, 0, 0, 0, 1, 0, 0xff], &inner),
                DropReason::NoTunnelKey,
            ),
            (
                "VXLAN header cut short",
                {
                    let mut f = vxlan_frame(N2, N1, 8472, vni(c_id), &[]);
                    f.truncate(46);
                    let ip_len = (f.len() - 14) as u16;
                    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
                    Ipv4Packet::new_checked(&mut f[14..])
                        .unwrap()
                        .fill_checksum();
                    f
                },
                DropReason::Invalid,
            ),
            (
                "not addressed to this node",
                vxlan_frame(N2, [192, 168, 50, 7], 8472, vni(c_id), &inner),
                DropReason::UnknownTarget,
            ),
            (
                "inner destination not local",
                vxlan_frame(
                    N2,
                    N1,
                    8472,
                    vni(c_id),
                    &Pkt::eth(LXC[0], C_MAC)
                        .icmp_echo(C_IP, [10, 1, 0, 77], 64)
                        .bytes(),
                ),
                DropReason::Unroutable,
            ),
            (
                "inner ARP",
                vxlan_frame(
                    N2,
                    N1,
                    8472,
                    vni(c_id),
                    &Pkt::eth(MacAddr::BROADCAST, C_MAC)
                        .arp_request(C_IP, B_IP)
                        .bytes(),
                ),
                DropReason::UnknownL3,
            ),
            (
                "inner IPv4 truncated",
                vxlan_frame(N2, N1, 8472, vni(c_id), &inner[..30]),
                DropReason::Invalid,
            ),
            (
                "outer IPv4 header checksum wrong",
                {
                    let mut f = vxlan_frame(N2, N1, 8472, vni(c_id), &inner);
                    f[24] ^= 0x5a;
                    f
                },
                DropReason::Invalid,
            ),
            (
                "outer UDP checksum non-zero and wrong",
                {
                    let mut f = vxlan_frame(N2, N1, 8472, vni(c_id), &inner);
                    f[40..42].copy_from_slice(&[0x12, 0x34]);
                    f
                },
                DropReason::Invalid,
            ),
            (
                "outer UDP length beyond the IP payload",
                {
                    let mut f = vxlan_frame(N2, N1, 8472, vni(c_id), &inner);
                    let ulen = (f.len() - 34 + 1) as u16;
                    f[38..40].copy_from_slice(&ulen.to_be_bytes());
                    f
                },
                DropReason::Invalid,
            ),
            (
                "outer UDP length shorter than its header",
                {
                    let mut f = vxlan_frame(N2, N1, 8472, vni(c_id), &inner);
                    f[38..40].copy_from_slice(&7u16.to_be_bytes());
                    f
                },
                DropReason::Invalid,
            ),
            (
                "not addressed to this NIC's MAC",
                {
                    let mut f = vxlan_frame(N2, N1, 8472, vni(c_id), &inner);
                    f[0..6].copy_from_slice(&[0x02, 0x50, 0, 0, 0, 9]);
                    f
                },
                DropReason::InvalidDmac,
            ),
            (
                "outer first fragment",
                {
                    let mut f = vxlan_frame(N2, N1, 8472, vni(c_id), &inner);
                    f[20] = 0x20; // MF
                    Ipv4Packet::new_checked(&mut f[14..])
                        .unwrap()
                        .fill_checksum();
                    f
                },
                DropReason::FragNosupport,
            ),
        ];
        for (name, frame, reason) in cases {
            let (v, out) = run(&frame, UL, &t);
            assert_eq!(v, ingress(reason), "case `{name}`");
            let _ = out;
        }
    }

    /// NodePort 30080 (port 80 → targetPort 8080) with pod a as its only backend, and an
    /// ingress policy on a admitting the world on `port`.
    fn n1_nodeport_with_policy(port: u16) -> std::sync::Arc<Tables> {
        let mut cfg = n1_cfg(false, false);
        cfg.services = yaml(
            "- { name: web, type: NodePort, cluster_ip: 10.96.0.10, ports: [{ port: 80, target_port: 8080, node_port: 30080 }], backends: [{ ip: 10.1.0.11 }] }",
        )
        .unwrap();
        cfg.policies = yaml(&format!(
            "- kind: CiliumNetworkPolicy\n  metadata: {{ name: a }}\n  spec:\n    endpointSelector: {{ matchLabels: {{ app: a }} }}\n    ingress:\n      - fromEntities: [world]\n        toPorts: [{{ ports: [{{ port: \"{port}\", protocol: TCP }}] }}]\n"
        ))
        .unwrap();
        node(&cfg, N1_MAC, N2, N2_MAC)
    }

    #[test]
    fn nodeport_to_a_local_backend_is_judged_on_the_target_port() {
        let client = [192, 168, 50, 9];
        let syn = Pkt::eth(N1_MAC, MacAddr([2, 0, 0, 0, 0, 9]))
            .ipv4(client, N1, ipv4::PROTO_TCP, 64, &tcp(45000, 30080, 0x02))
            .bytes();
        let t = n1_nodeport_with_policy(8080);
        let (v, out) = run(&syn, UL, &t);
        assert_eq!(v, Verdict::RoutedIn { port: A_PORT });
        assert_eq!(&out[30..34], &A_IP, "DNAT to the backend");
        assert_eq!(&out[36..38], &8080u16.to_be_bytes());
        for port in [80, 30080] {
            let t = n1_nodeport_with_policy(port);
            assert_eq!(
                run(&syn, UL, &t).0,
                drop(DropReason::Policy, MetricDir::Ingress),
                "a policy on port {port} must not admit what the pod receives on 8080"
            );
        }
    }

    /// n1 with NodePort `remote` (30081 → pod c on n2) and `empty` (30082, no backends).
    pub(super) fn n1_nodeport() -> std::sync::Arc<Tables> {
        let mut cfg = n1_cfg(false, false);
        cfg.services = yaml(
            "- { name: remote, type: NodePort, cluster_ip: 10.96.0.20, ports: [{ port: 80, node_port: 30081 }], backends: [{ ip: 10.2.0.11 }] }\n- { name: empty, type: NodePort, cluster_ip: 10.96.0.21, ports: [{ port: 80, node_port: 30082 }], backends: [] }",
        )
        .unwrap();
        node(&cfg, N1_MAC, N2, N2_MAC)
    }

    /// Issue #12: a frame is counted in the direction of the step that took it. NodePort
    /// traffic from outside is ingress wherever it goes — SNATed and encapsulated to a
    /// remote backend, or refused with an ICMP error when the service has no backend (the
    /// error used to count its original as egress); the same refusal for a pod is egress.
    #[test]
    fn nodeport_traffic_from_outside_counts_as_ingress() {
        let t = n1_nodeport();
        let syn = |port: u16| {
            Pkt::eth(N1_MAC, MacAddr([2, 0, 0, 0, 0, 9]))
                .ipv4(
                    [192, 168, 50, 9],
                    N1,
                    ipv4::PROTO_TCP,
                    64,
                    &tcp(45000, port, 0x02),
                )
                .bytes()
        };
        assert_eq!(
            run(&syn(30081), UL, &t).0,
            Verdict::Encap {
                port: UL,
                dir: MetricDir::Ingress
            }
        );
        assert_eq!(
            run(&syn(30082), UL, &t).0,
            Verdict::IcmpReply {
                port: UL,
                reason: DropReason::NoService,
                dir: MetricDir::Ingress
            }
        );
        let from_a = Pkt::eth(LXC[0], A_MAC)
            .ipv4(
                A_IP,
                [10, 96, 0, 21],
                ipv4::PROTO_TCP,
                64,
                &tcp(45001, 80, 0x02),
            )
            .bytes();
        assert_eq!(
            run(&from_a, A_PORT, &t).0,
            Verdict::IcmpReply {
                port: A_PORT,
                reason: DropReason::NoService,
                dir: MetricDir::Egress
            }
        );
    }

    /// A peer that fills in the outer UDP checksum is accepted when it is right, and a UDP
    /// length shorter than the IP payload trims what follows it (as Linux's `udp_rcv`).
    #[test]
    fn outer_udp_checksum_and_length_as_linux_reads_them() {
        let t = n1();
        let c_id = n2_cfg().identities().0[0];
        let inner = Pkt::eth(LXC[1], C_MAC).icmp_echo(C_IP, B_IP, 64).bytes();
        let want = Pkt::eth(B_MAC, LXC[1]).icmp_echo(C_IP, B_IP, 63).bytes();
        let mut f = vxlan_frame(N2, N1, 8472, vni(c_id), &inner);
        let mut pseudo = vec![];
        pseudo.extend_from_slice(&N2);
        pseudo.extend_from_slice(&N1);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&((f.len() - 34) as u16).to_be_bytes());
        pseudo.extend_from_slice(&f[34..]);
        let c = wire::checksum(&pseudo);
        f[40..42].copy_from_slice(&c.to_be_bytes());
        let (v, out) = run(&f, UL, &t);
        assert_eq!(v, Verdict::Decap { port: B_PORT });
        assert_eq!(out, want);
        // 6 bytes of junk inside the IP payload, after the UDP datagram.
        let mut f = vxlan_frame(N2, N1, 8472, vni(c_id), &inner);
        f.extend_from_slice(&[0xee; 6]);
        let ip_len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        Ipv4Packet::new_checked(&mut f[14..])
            .unwrap()
            .fill_checksum();
        let (v, out) = run(&f, UL, &t);
        assert_eq!(v, Verdict::Decap { port: B_PORT });
        assert_eq!(out, want, "trimmed at the UDP length");
    }

    /// Found by the pipeline fuzz target: frag-needed for a packet a service translated
    /// quoted the translated packet; the pod's stack matches the quote to its socket, so it
    /// must be the packet as the pod sent it (to the ClusterIP and the service port).
    #[test]
    fn frag_needed_after_dnat_quotes_what_the_pod_sent() {
        let mut cfg = n1_cfg(false, false);
        cfg.services = yaml(
            "- { name: remote, cluster_ip: 10.96.0.77, ports: [{ port: 53, protocol: UDP, target_port: 5353 }], backends: [{ ip: 10.2.0.11 }] }",
        )
        .unwrap();
        let t = node(&cfg, N1_MAC, N2, N2_MAC);
        let mut udp = vec![0u8; 8 + 1451 - 28];
        udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&53u16.to_be_bytes());
        let ulen = udp.len() as u16;
        udp[4..6].copy_from_slice(&ulen.to_be_bytes());
        let input = Pkt::eth(LXC[0], A_MAC)
            .ipv4(A_IP, [10, 96, 0, 77], ipv4::PROTO_UDP, 64, &udp)
            .bytes();
        let (v, out) = run(&input, A_PORT, &t);
        assert_eq!(
            v,
            Verdict::IcmpReply {
                port: A_PORT,
                reason: DropReason::FragNeeded,
                dir: MetricDir::Egress
            }
        );
        let quote = &out[14 + 28..];
        assert_eq!(
            &quote[16..20],
            &[10, 96, 0, 77],
            "quoted destination: the VIP"
        );
        assert_eq!(
            &quote[22..24],
            &53u16.to_be_bytes(),
            "quoted port: the service port"
        );
        assert_eq!(quote, &input[14..14 + quote.len()], "the packet as sent");
    }

    #[test]
    fn native_routing_forwards_without_encap() {
        let cfg = n1_cfg(true, false);
        let t = node(&cfg, N1_MAC, N2, N2_MAC);
        let input = a_to_c_udp(10);
        let (v, out) = run(&input, A_PORT, &t);
        assert_eq!(
            v,
            Verdict::Route {
                port: UL,
                dir: MetricDir::Egress
            }
        );
        assert_eq!(out.len(), input.len(), "no encapsulation");
        let eth = EthernetFrame::new_checked(&out[..]).unwrap();
        assert_eq!((eth.dst(), eth.src()), (N2_MAC, N1_MAC));
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert_eq!(ip.ttl(), 63);
        assert!(ip.verify_checksum());
        // The ipcache still names c's identity (for policy), without a tunnel.
        let c_id = n2_cfg().identities().0[0];
        assert_eq!(t.ipcache_v4(C_IP).unwrap().sec_identity, c_id);
        // Native ingress: from the underlay straight to a local pod.
        let from_n2 = Pkt::eth(N1_MAC, N2_MAC).icmp_echo(C_IP, B_IP, 63).bytes();
        let (v, out) = run(&from_n2, UL, &t);
        assert_eq!(v, Verdict::RoutedIn { port: B_PORT });
        assert_eq!(
            out,
            Pkt::eth(B_MAC, LXC[1]).icmp_echo(C_IP, B_IP, 62).bytes()
        );
        // A destination outside every remote pod CIDR is not ours to route.
        let (v, _) = run(
            &Pkt::eth(LXC[0], A_MAC)
                .icmp_echo(A_IP, [10, 9, 0, 1], 64)
                .bytes(),
            A_PORT,
            &t,
        );
        assert_eq!(v, drop_egress(DropReason::Unroutable));
    }
}

/// Service fixtures on the demo node: ClusterIP 10.96.9.9:80 → echo:8080 (same node), and
/// 10.96.9.10:80 without backends.
mod services {
    use super::*;
    use control::lb::ServiceConfig;

    pub(super) const VIP: [u8; 4] = [10, 96, 9, 9];

    pub(super) fn svc_tables() -> std::sync::Arc<Tables> {
        let cfg = control::config::Config::default_node();
        let mut dp = demo_datapath();
        let svcs: Vec<ServiceConfig> = yaml(
            "- { name: echo, cluster_ip: 10.96.9.9, ports: [{ port: 80, target_port: 8080 }], backends: [{ ip: 10.200.1.12 }] }
- { name: none, cluster_ip: 10.96.9.10, ports: [{ port: 80 }] }",
        )
        .unwrap();
        dp.set_services(&svcs, &cfg.lb_settings()).unwrap();
        dp.tables()
    }

    fn ports_of(frame: &[u8]) -> (u16, u16) {
        match l4::parse(6, &frame[34..]).unwrap() {
            l4::L4::Tcp { sport, dport, .. } => (sport, dport),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clusterip_dnat_then_reply_reverse_nat_on_one_node() {
        let t = svc_tables();
        let syn = from_client()
            .ipv4(CLIENT_IP, VIP, ipv4::PROTO_TCP, 64, &tcp(40000, 80, 0x02))
            .bytes();
        let (v, out) = run(&syn, CLIENT_PORT, &t);
        assert_eq!(v, Verdict::Deliver { port: ECHO_PORT });
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert_eq!(
            (ip.src(), ip.dst()),
            (CLIENT_IP, ECHO_IP),
            "DNAT to the backend"
        );
        assert!(ip.verify_checksum());
        assert_eq!(ports_of(&out), (40000, 8080));
        // The backend's SYN-ACK comes back with the service as its source.
        let synack = Pkt::eth(LXC_ECHO_MAC, ECHO_MAC)
            .ipv4(
                ECHO_IP,
                CLIENT_IP,
                ipv4::PROTO_TCP,
                64,
                &tcp(8080, 40000, 0x12),
            )
            .bytes();
        let (v, out) = run(&synack, ECHO_PORT, &t);
        assert_eq!(v, Verdict::Deliver { port: CLIENT_PORT });
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert_eq!(
            (ip.src(), ip.dst()),
            (VIP, CLIENT_IP),
            "reverse NAT to the VIP"
        );
        assert!(ip.verify_checksum());
        assert_eq!(ports_of(&out), (80, 40000));
        // Conntrack: the service entry pins the backend, the OUT entry carries the service ID,
        // the IN entry is the backend's side.
        let now = Scratch::default().now;
        let tcp_entries = t.ct.entries(true, now);
        let kinds: Vec<&str> = tcp_entries.iter().map(|(k, _)| k.kind()).collect();
        assert_eq!(tcp_entries.len(), 3, "{kinds:?}");
        let (_, svc) = tcp_entries.iter().find(|(k, _)| k.kind() == "SVC").unwrap();
        let (_, out_e) = tcp_entries.iter().find(|(k, _)| k.kind() == "OUT").unwrap();
        assert_ne!(svc.backend_id, 0);
        assert_eq!(out_e.rev_nat_index, svc.rev_nat_index);
        assert_eq!(out_e.tx_flags_seen, 0x02, "the client's SYN");
        assert_eq!(
            out_e.rx_flags_seen, 0x12,
            "the backend's SYN-ACK, as a reply"
        );
    }

    /// Issue #11 defect 2: the first packet to a Maglev service whose backends all weigh 0
    /// divided by zero on the worker. It is answered like a service without backends.
    #[test]
    fn maglev_service_with_all_weights_zero_rejects_instead_of_crashing() {
        let cfg = control::config::Config::default_node();
        let mut dp = demo_datapath();
        let svcs: Vec<ServiceConfig> = yaml(
            "- { name: m, cluster_ip: 10.96.9.11, lb_algorithm: maglev, ports: [{ port: 80 }], backends: [{ ip: 10.200.1.12, weight: 0 }, { ip: 10.200.1.13, weight: 0 }] }",
        )
        .unwrap();
        dp.set_services(&svcs, &cfg.lb_settings()).unwrap();
        let t = dp.tables();
        let syn = from_client()
            .ipv4(
                CLIENT_IP,
                [10, 96, 9, 11],
                ipv4::PROTO_TCP,
                64,
                &tcp(40005, 80, 0x02),
            )
            .bytes();
        assert_eq!(
            run(&syn, CLIENT_PORT, &t).0,
            Verdict::IcmpReply {
                port: CLIENT_PORT,
                reason: DropReason::NoService,
                dir: MetricDir::Egress
            }
        );
    }

    /// The stage itself never trusts the tables to be consistent: a master that counts
    /// slots while its Maglev table is empty or missing, or whose slots are missing, is
    /// "no backend" (158), not a panic.
    #[test]
    fn inconsistent_lb_tables_are_no_backend_not_a_panic() {
        use control::maps::lb::{ALG_MAGLEV, ALG_RANDOM, Lb4Key, Lb4Service, RevNat};
        let base = demo_datapath().tables();
        let key = Lb4Key::master([10, 96, 9, 12], 80, 6);
        let syn = from_client()
            .ipv4(
                CLIENT_IP,
                [10, 96, 9, 12],
                ipv4::PROTO_TCP,
                64,
                &tcp(40006, 80, 0x02),
            )
            .bytes();
        for (alg, table) in [
            (ALG_MAGLEV, Some(Vec::new())),
            (ALG_MAGLEV, None),
            (ALG_RANDOM, None),
        ] {
            let mut t = (*base).clone();
            let mut lb = (*t.lb).clone();
            lb.services
                .insert(key, Lb4Service::master(3, RevNat(7), 0, alg, 0));
            if let Some(tab) = table {
                lb.maglev.insert(7, std::sync::Arc::from(tab));
            }
            t.lb = std::sync::Arc::new(lb);
            assert_eq!(
                run(&syn, CLIENT_PORT, &t).0,
                drop_egress(DropReason::NoService),
                "algorithm {alg}"
            );
        }
    }

    #[test]
    fn service_without_backends_answers_port_unreachable() {
        let t = svc_tables();
        let syn = from_client()
            .ipv4(
                CLIENT_IP,
                [10, 96, 9, 10],
                ipv4::PROTO_TCP,
                64,
                &tcp(40001, 80, 0x02),
            )
            .bytes();
        let (v, out) = run(&syn, CLIENT_PORT, &t);
        assert_eq!(
            v,
            Verdict::IcmpReply {
                port: CLIENT_PORT,
                reason: DropReason::NoService,
                dir: MetricDir::Egress
            }
        );
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert_eq!((ip.src(), ip.dst()), ([10, 96, 9, 10], CLIENT_IP));
        assert_eq!(ip.protocol(), ipv4::PROTO_ICMP);
        assert_eq!((out[34], out[35]), (3, 3), "port unreachable");
        assert_eq!(&out[0..6], &CLIENT_MAC.0, "back to the pod");
        assert!(t.ct.entries(true, 1).is_empty(), "nothing tracked");
    }
}

mod policy {
    use super::*;
    use control::policy::parse::parse_policies;
    use control::policy::table::{STAT_ALLOWED_INGRESS, STAT_DENIED_EGRESS, STAT_DENIED_INGRESS};

    pub(super) const WEB_IP: [u8; 4] = [10, 200, 1, 13];
    pub(super) const WEB_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xc8, 0x01, 0x0d]);
    pub(super) const WEB_PORT: PortId = 2;

    pub(super) fn with_policy(yaml: &str) -> std::sync::Arc<Tables> {
        let cfg = control::config::Config::default_node();
        let mut dp = demo_datapath();
        dp.set_identity_labels(cfg.identity_labels());
        dp.set_policies(&parse_policies(yaml, "t.yaml").unwrap())
            .unwrap();
        dp.tables()
    }

    pub(super) const ECHO_POLICY: &str = r#"
kind: CiliumNetworkPolicy
metadata: { name: echo }
spec:
  endpointSelector: { matchLabels: { app: echo } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: client } }]
      toPorts: [{ ports: [{ port: "8080", protocol: TCP }] }]
  egress: [{}]
"#;

    #[test]
    fn same_node_ingress_allow_deny_and_stateful_reply() {
        let t = with_policy(ECHO_POLICY);
        let syn = from_client()
            .ipv4(
                CLIENT_IP,
                ECHO_IP,
                ipv4::PROTO_TCP,
                64,
                &tcp(40000, 8080, 0x02),
            )
            .bytes();
        let (v, _) = run(&syn, CLIENT_PORT, &t);
        assert_eq!(v, Verdict::Deliver { port: ECHO_PORT });
        // echo's egress is default deny ({}), yet its SYN-ACK is a reply: conntrack lets it by.
        let synack = Pkt::eth(LXC_ECHO_MAC, ECHO_MAC)
            .ipv4(
                ECHO_IP,
                CLIENT_IP,
                ipv4::PROTO_TCP,
                64,
                &tcp(8080, 40000, 0x12),
            )
            .bytes();
        let (v, _) = run(&synack, ECHO_PORT, &t);
        assert_eq!(v, Verdict::Deliver { port: CLIENT_PORT });
        // A new connection from echo is not a reply: denied on egress.
        let out = Pkt::eth(LXC_ECHO_MAC, ECHO_MAC)
            .ipv4(
                ECHO_IP,
                CLIENT_IP,
                ipv4::PROTO_TCP,
                64,
                &tcp(41000, 22, 0x02),
            )
            .bytes();
        assert_eq!(
            run(&out, ECHO_PORT, &t).0,
            drop(DropReason::Policy, MetricDir::Egress)
        );
        // Wrong port from client, and any port from web: ingress denied, no conntrack entry.
        let before = t.ct.entries(true, 1).len();
        let p81 = from_client()
            .ipv4(
                CLIENT_IP,
                ECHO_IP,
                ipv4::PROTO_TCP,
                64,
                &tcp(40001, 81, 0x02),
            )
            .bytes();
        assert_eq!(
            run(&p81, CLIENT_PORT, &t).0,
            drop(DropReason::Policy, MetricDir::Ingress)
        );
        let from_web = Pkt::eth(LXC_WEB_MAC, WEB_MAC)
            .ipv4(
                WEB_IP,
                ECHO_IP,
                ipv4::PROTO_TCP,
                64,
                &tcp(40002, 8080, 0x02),
            )
            .bytes();
        assert_eq!(
            run(&from_web, WEB_PORT, &t).0,
            drop(DropReason::Policy, MetricDir::Ingress)
        );
        // The sender's OUT entry exists (egress allowed it), the receiver's IN entry does not.
        let after: Vec<String> =
            t.ct.entries(true, 1)
                .iter()
                .map(|(k, _)| k.kind().to_string())
                .collect();
        assert_eq!(after.len(), before + 2, "{after:?}");
        let st = &t.policy_stats;
        assert_eq!(st.get(STAT_ALLOWED_INGRESS).0, 1);
        assert_eq!(st.get(STAT_DENIED_INGRESS).0, 2);
        assert_eq!(st.get(STAT_DENIED_EGRESS).0, 1);
        // The allow entry counted the SYN.
        let ep = &t.policy.endpoints[&2];
        let allow = ep
            .entries
            .iter()
            .find(|e| e.key.port_proto() == "8080/TCP")
            .unwrap();
        assert_eq!(st.get(allow.slot), (1, syn.len() as u64 - 14));
    }

    #[test]
    fn deny_rule_is_181_and_icmp_follows_l3_rules() {
        let t = with_policy(
            r#"
kind: CiliumNetworkPolicy
metadata: { name: echo }
spec:
  endpointSelector: { matchLabels: { app: echo } }
  ingress: [{ fromEntities: [cluster] }]
  ingressDeny: [{ fromEndpoints: [{ matchLabels: { app: web } }] }]
"#,
        );
        let ping = from_client().icmp_echo(CLIENT_IP, ECHO_IP, 64).bytes();
        assert_eq!(
            run(&ping, CLIENT_PORT, &t).0,
            Verdict::Deliver { port: ECHO_PORT }
        );
        let ping = Pkt::eth(LXC_WEB_MAC, WEB_MAC)
            .icmp_echo(WEB_IP, ECHO_IP, 64)
            .bytes();
        assert_eq!(
            run(&ping, WEB_PORT, &t).0,
            drop(DropReason::PolicyDeny, MetricDir::Ingress)
        );
    }

    #[test]
    fn clusterip_is_judged_on_the_backend_identity() {
        let cfg = control::config::Config::default_node();
        let mut dp = demo_datapath();
        dp.set_identity_labels(cfg.identity_labels());
        let svcs: Vec<control::lb::ServiceConfig> = yaml(
            "- { name: echo, cluster_ip: 10.96.9.9, ports: [{ port: 80, target_port: 8080 }], backends: [{ ip: 10.200.1.12 }] }",
        )
        .unwrap();
        dp.set_services(&svcs, &cfg.lb_settings()).unwrap();
        // client may only talk to web: the ClusterIP of echo is denied after DNAT.
        dp.set_policies(
            &parse_policies(
                r#"
kind: CiliumNetworkPolicy
metadata: { name: client }
spec:
  endpointSelector: { matchLabels: { app: client } }
  egress: [{ toEndpoints: [{ matchLabels: { app: web } }] }]
"#,
                "t.yaml",
            )
            .unwrap(),
        )
        .unwrap();
        let t = dp.tables();
        let syn = from_client()
            .ipv4(
                CLIENT_IP,
                [10, 96, 9, 9],
                ipv4::PROTO_TCP,
                64,
                &tcp(40000, 80, 0x02),
            )
            .bytes();
        assert_eq!(
            run(&syn, CLIENT_PORT, &t).0,
            drop(DropReason::Policy, MetricDir::Egress)
        );
        let to_web = from_client()
            .ipv4(
                CLIENT_IP,
                WEB_IP,
                ipv4::PROTO_TCP,
                64,
                &tcp(40000, 80, 0x02),
            )
            .bytes();
        assert_eq!(
            run(&to_web, CLIENT_PORT, &t).0,
            Verdict::Deliver { port: WEB_PORT }
        );
    }
}

/// Policy after service translation: the ports a policy names are the backend's ports (the
/// Service's `targetPort`), never the frontend's, in both directions and for every frontend
/// kind (issue #11, defect 1).
mod policy_after_dnat {
    use super::*;
    use control::policy::parse::parse_policies;

    const VIP: [u8; 4] = [10, 96, 9, 9];

    /// The demo node with ClusterIP 10.96.9.9:80 → echo:8080 and the given policy.
    fn tables(policy: &str) -> std::sync::Arc<Tables> {
        let cfg = control::config::Config::default_node();
        let mut dp = demo_datapath();
        dp.set_identity_labels(cfg.identity_labels());
        let svcs: Vec<control::lb::ServiceConfig> = yaml(
            "- { name: echo, cluster_ip: 10.96.9.9, ports: [{ port: 80, target_port: 8080 }], backends: [{ ip: 10.200.1.12 }] }",
        )
        .unwrap();
        dp.set_services(&svcs, &cfg.lb_settings()).unwrap();
        dp.set_policies(&parse_policies(policy, "t.yaml").unwrap())
            .unwrap();
        dp.tables()
    }

    fn syn_to_vip(sport: u16) -> Vec<u8> {
        from_client()
            .ipv4(CLIENT_IP, VIP, ipv4::PROTO_TCP, 64, &tcp(sport, 80, 0x02))
            .bytes()
    }

    fn ingress_on_echo(port: u16) -> String {
        format!(
            "kind: CiliumNetworkPolicy\nmetadata: {{ name: echo }}\nspec:\n  endpointSelector: {{ matchLabels: {{ app: echo }} }}\n  ingress:\n    - fromEndpoints: [{{ matchLabels: {{ app: client }} }}]\n      toPorts: [{{ ports: [{{ port: \"{port}\", protocol: TCP }}] }}]\n"
        )
    }

    fn egress_of_client(port: u16) -> String {
        format!(
            "kind: CiliumNetworkPolicy\nmetadata: {{ name: client }}\nspec:\n  endpointSelector: {{ matchLabels: {{ app: client }} }}\n  egress:\n    - toEndpoints: [{{ matchLabels: {{ app: echo }} }}]\n      toPorts: [{{ ports: [{{ port: \"{port}\", protocol: TCP }}] }}]\n"
        )
    }

    #[test]
    fn ingress_policy_on_the_target_port_admits_clusterip_traffic() {
        let t = tables(&ingress_on_echo(8080));
        let (v, out) = run(&syn_to_vip(40000), CLIENT_PORT, &t);
        assert_eq!(v, Verdict::Deliver { port: ECHO_PORT });
        assert_eq!(&out[36..38], &8080u16.to_be_bytes(), "delivered on 8080");
    }

    #[test]
    fn ingress_policy_on_the_service_port_does_not_admit_what_arrives_on_8080() {
        let t = tables(&ingress_on_echo(80));
        assert_eq!(
            run(&syn_to_vip(40001), CLIENT_PORT, &t).0,
            drop(DropReason::Policy, MetricDir::Ingress)
        );
    }

    #[test]
    fn egress_policy_is_judged_on_the_backend_port() {
        let t = tables(&egress_of_client(8080));
        assert_eq!(
            run(&syn_to_vip(40002), CLIENT_PORT, &t).0,
            Verdict::Deliver { port: ECHO_PORT }
        );
        let t = tables(&egress_of_client(80));
        assert_eq!(
            run(&syn_to_vip(40003), CLIENT_PORT, &t).0,
            drop(DropReason::Policy, MetricDir::Egress)
        );
    }
}

/// Issue #11 defect 6: the random backend choice was seeded from the queue number only, so
/// every restart and every node picked the same sequence.
#[test]
fn worker_randomness_differs_between_workers_made_alike() {
    let seq = |s: &mut Scratch| (0..8).map(|_| s.random()).collect::<Vec<u32>>();
    let (mut a, mut b) = (Scratch::for_worker(0), Scratch::for_worker(0));
    assert_ne!(
        seq(&mut a),
        seq(&mut b),
        "two workers 0 (two restarts) agree"
    );
    assert_eq!(Scratch::for_worker(3).worker, 3, "the counter stripe");
    // seeded() stays reproducible for fixtures.
    assert_eq!(seq(&mut Scratch::seeded(7)), seq(&mut Scratch::seeded(7)));
}
