//! Seed frames: real ones captured from the demo cluster (`fuzz/seeds/capture.sh` wrote the
//! pcaps), and built ones for what the capture cannot contain (hostile or rare frames).

use std::sync::OnceLock;

use control::maps::MacAddr;
use fastpath::wire::{self, ethernet, ipv4, vxlan};

use crate::fixture;

/// The frames of a classic pcap file (either byte order, any link type's records).
pub fn pcap_frames(b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if b.len() < 24 {
        return out;
    }
    let le = match b[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return out,
    };
    let word = |x: &[u8]| {
        let a = [x[0], x[1], x[2], x[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut at = 24;
    while at + 16 <= b.len() {
        let incl = word(&b[at + 8..at + 12]) as usize;
        let start = at + 16;
        let Some(end) = start.checked_add(incl).filter(|&e| e <= b.len()) else {
            break;
        };
        out.push(b[start..end].to_vec());
        at = end;
    }
    out
}

/// Frames seen on the pods' eth0 (what pods send and what they receive).
pub fn captured_pod() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| pcap_frames(include_bytes!("../seeds/pod.pcap")))
}

/// Frames seen on the fabric (VXLAN between the nodes, NodePort from outside, ARP).
pub fn captured_underlay() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| pcap_frames(include_bytes!("../seeds/underlay.pcap")))
}

/// An Ethernet frame carrying `l3` with `ethertype`.
pub fn eth(dst: MacAddr, src: MacAddr, ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; ethernet::HEADER_LEN];
    ethernet::emit(&mut f, dst, src, ethernet::EtherType::from(ethertype));
    f.extend_from_slice(l3);
    f
}

/// An IPv4 packet (20-byte header, DF, checksum right) around `l4`.
pub fn ip(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; ipv4::HEADER_LEN + l4.len()];
    ipv4::emit(&mut p, src, dst, proto, ttl, l4.len());
    p[ipv4::HEADER_LEN..].copy_from_slice(l4);
    p
}

/// A TCP header with the given ports and flags, and `payload`.
pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14] = 0xff;
    t.extend_from_slice(payload);
    t
}

/// A UDP datagram (length set, checksum 0).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

/// An ICMP echo request.
pub fn echo(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8u8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(payload);
    let c = wire::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A VXLAN frame from `src` node to `dst` node with `vni` around `inner`.
pub fn vxlan_frame(src: [u8; 4], dst: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; vxlan::ENCAP_LEN];
    vxlan::emit(
        &mut f,
        &vxlan::Outer {
            dst_mac: fixture::NODE_MAC,
            src_mac: fixture::PEER_MAC,
            src_ip: src,
            dst_ip: dst,
            ip_id: 7,
            sport: 49152,
            dport: 8472,
            vni,
        },
        inner.len(),
    );
    f.extend_from_slice(inner);
    crate::mutate::fix_checksums(&mut f);
    f
}

/// Frames a pod sends: captured ones, plus built ones aimed at every table the fixture
/// holds (pods, remote pods, every service frontend, the world) and the shapes a capture
/// does not have (options, fragments, TTL 1, ARP probes, jumbo frames).
pub fn pod_seeds() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        use fixture::*;
        let mut v: Vec<Vec<u8>> = captured_pod().to_vec();
        let from =
            |src_pod: usize, l3: Vec<u8>| eth(LXC_MACS[src_pod], POD_MACS[src_pod], 0x0800, &l3);
        let a = POD_IPS[0];
        for dst in [
            POD_IPS[1],
            POD_IPS[2],
            REMOTE_POD,
            [10, 201, 1, 99],
            [8, 8, 8, 8],
            ROUTER,
        ] {
            v.push(from(0, ip(a, dst, 1, 64, &echo(0x1234, b"ping"))));
            v.push(from(0, ip(a, dst, 6, 64, &tcp(40000, 80, 0x02, b""))));
            v.push(from(0, ip(a, dst, 17, 64, &udp(40001, 53, b"q"))));
        }
        for (vip, port, proto) in FRONTENDS {
            let l4 = if *proto == 6 {
                tcp(41000, *port, 0x02, b"")
            } else {
                udp(41000, *port, b"x")
            };
            v.push(from(0, ip(a, *vip, *proto, 64, &l4)));
            v.push(from(1, ip(POD_IPS[1], *vip, *proto, 64, &l4)));
        }
        // A backend's reply (reverse NAT path).
        v.push(from(
            2,
            ip(POD_IPS[2], a, 6, 64, &tcp(8080, 41000, 0x12, b"")),
        ));
        // ARP: request for the gateway, for another pod, a DAD probe, a reply.
        let arp = |op: u16, spa: [u8; 4], tpa: [u8; 4]| {
            let mut b = vec![0u8; 28];
            wire::arp::emit_request(&mut b, POD_MACS[0], spa, tpa);
            b[6..8].copy_from_slice(&op.to_be_bytes());
            eth(MacAddr::BROADCAST, POD_MACS[0], 0x0806, &b)
        };
        v.push(arp(1, a, ROUTER));
        v.push(arp(1, a, POD_IPS[1]));
        v.push(arp(1, [0; 4], a));
        v.push(arp(2, a, ROUTER));
        // IPv4 options (a 24-byte header), a first and a later fragment, TTL 1, jumbo.
        let mut opt = ip(a, POD_IPS[1], 17, 64, &[0u8; 4]);
        opt.splice(20..20, [1u8, 1, 1, 0]);
        opt[0] = 0x46;
        v.push(from(0, opt));
        let mut first = ip(a, POD_IPS[1], 17, 64, &udp(40002, 7, &[7u8; 64]));
        first[6] = 0x20;
        v.push(from(0, first));
        let mut later = ip(a, POD_IPS[1], 17, 64, &[9u8; 32]);
        later[6..8].copy_from_slice(&[0x00, 0x08]);
        v.push(from(0, later));
        v.push(from(0, ip(a, POD_IPS[1], 1, 1, &echo(1, b"ttl"))));
        v.push(from(
            0,
            ip(a, REMOTE_POD, 17, 64, &udp(40003, 7, &vec![0xab; 1500])),
        ));
        v.push(from(
            0,
            ip(a, POD_IPS[1], 17, 64, &udp(40004, 7, &vec![0xcd; 3700])),
        ));
        v.push(eth(LXC_MACS[0], POD_MACS[0], 0x86dd, &[0x60; 40]));
        for f in &mut v {
            crate::mutate::fix_checksums(f);
        }
        v
    })
}

/// Frames on the node NIC: captured ones, plus VXLAN from the peer with every kind of VNI and
/// inner frame, natively routed frames, NodePort/ExternalIP from outside, and replies of
/// SNATed NodePort connections.
pub fn underlay_seeds() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        use fixture::*;
        let mut v: Vec<Vec<u8>> = captured_underlay().to_vec();
        let inner_to = |dst: [u8; 4], l4p: u8, l4: Vec<u8>| {
            eth(
                LXC_MACS[0],
                REMOTE_POD_MAC,
                0x0800,
                &ip(REMOTE_POD, dst, l4p, 64, &l4),
            )
        };
        for vni in [remote_id(), 1, 0, 2, 6, 54321] {
            v.push(vxlan_frame(
                PEER_IP,
                NODE_IP,
                vni,
                &inner_to(POD_IPS[0], 1, echo(7, b"x")),
            ));
        }
        v.push(vxlan_frame(
            PEER_IP,
            NODE_IP,
            remote_id(),
            &inner_to(POD_IPS[1], 6, tcp(42000, 8080, 0x02, b"")),
        ));
        v.push(vxlan_frame(
            PEER_IP,
            NODE_IP,
            6,
            &inner_to(NODE_IP, 6, tcp(8080, 32768, 0x12, b"")),
        ));
        // Natively routed from the peer, and from outside to the NodePort / external IP.
        let out = |src: [u8; 4], dst: [u8; 4], l4p: u8, l4: Vec<u8>| {
            eth(NODE_MAC, PEER_MAC, 0x0800, &ip(src, dst, l4p, 64, &l4))
        };
        v.push(out(REMOTE_POD, POD_IPS[0], 1, echo(9, b"native")));
        v.push(out(OUTSIDE, NODE_IP, 6, tcp(45000, NODE_PORT, 0x02, b"")));
        v.push(out(OUTSIDE, NODE_IP, 17, udp(45001, NODE_PORT_UDP, b"u")));
        v.push(out(OUTSIDE, EXTERNAL_IP, 6, tcp(45002, 80, 0x02, b"")));
        v.push(out(OUTSIDE, [10, 96, 0, 10], 6, tcp(45003, 80, 0x02, b"")));
        v.push(out(REMOTE_POD, NODE_IP, 6, tcp(8080, 45000, 0x12, b"")));
        v.push(out(OUTSIDE, NODE_IP, 6, tcp(45004, 22, 0x02, b"")));
        for f in &mut v {
            crate::mutate::fix_checksums(f);
        }
        v
    })
}
