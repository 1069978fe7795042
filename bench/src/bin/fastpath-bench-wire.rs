//! Packet formats: fastpath's own wire views against etherparse and smoltcp's `wire`, for
//! the per-packet work the pipeline does (no I/O, one pinned core):
//!
//! - **parse**: Ethernet → IPv4 header checked (version, lengths, header checksum) → L4
//!   fields conntrack keys on (ports, TCP flags, ICMP type/code/identifier);
//! - **ttl+mac**: TTL − 1 with the header checksum fixed, destination/source MAC rewritten
//!   (what local delivery does);
//! - **dnat**: destination address and port rewritten, IPv4 and TCP/UDP checksums fixed (what
//!   a service translation does);
//! - **vxlan decap**: outer Ethernet/IPv4 (checksum)/UDP (port, length, checksum when
//!   non-zero)/VXLAN checked, the inner frame parsed as in "parse".
//!
//! Every implementation is first checked to give the same answer (parse) or the same bytes
//! (rewrites) as fastpath's on every fixture, and to refuse the same broken frames; only then
//! is anything timed. Implementations are interleaved A B C … per round; the median of the
//! rounds is reported in ns per operation.
//!
//! `fastpath-bench-wire [--iters 2000000] [--rounds 7] [--core 1] [--only ROW] [--imp NAME]`

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use control::maps::MacAddr;
use fastpath::wire::{
    self, EtherType, EthernetFrame, Ipv4Packet, ethernet, ipv4,
    l4::{self, L4},
    nat, vxlan,
};

#[derive(Parser, Debug)]
struct Args {
    /// Operations per sample.
    #[arg(long, default_value_t = 2_000_000)]
    iters: u64,
    /// Samples per implementation (interleaved).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Core to pin to.
    #[arg(long, default_value_t = 1)]
    core: usize,
    /// Only the rows whose label contains this (e.g. for `valgrind --tool=callgrind`, one
    /// fixture per run so each timing function's count is one row's).
    #[arg(long)]
    only: Option<String>,
    /// Only the implementations whose name contains this (callgrind counts per instance).
    #[arg(long)]
    imp: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

const POD_A: [u8; 4] = [10, 200, 1, 11];
const POD_B: [u8; 4] = [10, 200, 1, 12];
const REMOTE_POD: [u8; 4] = [10, 201, 0, 21];
const BACKEND: [u8; 4] = [10, 200, 2, 31];
const BACKEND_PORT: u16 = 8443;
const NODE_IP: [u8; 4] = [192, 168, 50, 1];
const PEER_NODE_IP: [u8; 4] = [192, 168, 50, 2];
const TUNNEL_PORT: u16 = 8472;
const MAC_A: [u8; 6] = [0x0a, 0x58, 0x0a, 0xc8, 0x01, 0x0b];
const LXC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x0b];
const MAC_B: [u8; 6] = [0x0a, 0x58, 0x0a, 0xc8, 0x01, 0x0c];
const LXC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x0c];
const NIC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
const PEER_NIC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];

/// The TCP/UDP checksum of the IPv4 packet `ip` (header + L4), computed in full.
fn l4_checksum(ip: &[u8], at: usize) -> u16 {
    let hl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let mut seg = ip[hl..total].to_vec();
    seg[at] = 0;
    seg[at + 1] = 0;
    let mut pseudo = Vec::with_capacity(12 + seg.len());
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&seg);
    wire::checksum(&pseudo)
}

fn eth_ip(dst: [u8; 6], src: [u8; 6], s: [u8; 4], d: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN + l4.len()];
    ethernet::emit(&mut f, MacAddr(dst), MacAddr(src), EtherType::Ipv4);
    let ip = &mut f[ethernet::HEADER_LEN..];
    ip[ipv4::HEADER_LEN..].copy_from_slice(l4);
    ipv4::emit(ip, s, d, proto, 64, l4.len());
    ip[4..6].copy_from_slice(&0x4c1du16.to_be_bytes()); // a non-zero IP ID, as Linux sends
    ipv4::Ipv4Packet::new_checked(&mut ip[..])
        .unwrap()
        .fill_checksum();
    f
}

/// A Linux-like TCP SYN pod A → pod B, 66 bytes: a 32-byte TCP header (MSS 1460, NOP,
/// window scale 7, NOP, NOP, SACK permitted).
fn tcp_syn(s: [u8; 4], d: [u8; 4], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut t = [0u8; 32];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&8080u16.to_be_bytes());
    t[4..8].copy_from_slice(&0x1a2b_3c4du32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..32].copy_from_slice(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7, 1, 1, 4, 2]);
    let mut f = eth_ip(dst, src, s, d, ipv4::PROTO_TCP, &t);
    let c = l4_checksum(&f[14..], 16);
    f[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// A full-size TCP data segment pod A → pod B as the demo's pods send it (pod MTU 1450):
/// a 1464-byte frame, 32-byte TCP header (NOP, NOP, timestamps), 1398 bytes of data.
fn tcp_data() -> Vec<u8> {
    let mut t = vec![0u8; 1450 - 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&8080u16.to_be_bytes());
    t[4..8].copy_from_slice(&0x1a2b_3c4eu32.to_be_bytes());
    t[8..12].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = 0x18; // PSH, ACK
    t[14..16].copy_from_slice(&502u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 1, 0x86, 0xa0, 0, 0, 0x30, 0x39]);
    for (i, b) in t[32..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let mut f = eth_ip(LXC_A, MAC_A, POD_A, POD_B, ipv4::PROTO_TCP, &t);
    let c = l4_checksum(&f[14..], 16);
    f[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// A 60-byte UDP frame pod A:12345 → pod B:53 (18 bytes of payload), checksum set.
fn udp() -> Vec<u8> {
    let mut u = [0u8; 26];
    u[0..2].copy_from_slice(&12345u16.to_be_bytes());
    u[2..4].copy_from_slice(&53u16.to_be_bytes());
    u[4..6].copy_from_slice(&26u16.to_be_bytes());
    u[8..]
        .copy_from_slice(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00");
    let mut f = eth_ip(LXC_A, MAC_A, POD_A, POD_B, ipv4::PROTO_UDP, &u);
    let c = l4_checksum(&f[14..], 6);
    assert_ne!(c, 0);
    f[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&c.to_be_bytes());
    f
}

/// A `ping` echo request pod A → pod B: 98 bytes (56 bytes of data).
fn icmp_echo() -> Vec<u8> {
    let mut m = [0u8; 64];
    m[0] = 8;
    m[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    m[6..8].copy_from_slice(&1u16.to_be_bytes());
    for (i, b) in m[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = wire::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    eth_ip(LXC_A, MAC_A, POD_A, POD_B, ipv4::PROTO_ICMP, &m)
}

/// The TCP SYN of a remote pod to pod B, VXLAN-encapsulated by the peer node as Linux and
/// Cilium do (UDP checksum 0, DF clear): 50 + 66 = 116 bytes.
fn vxlan_frame() -> Vec<u8> {
    let inner = tcp_syn(REMOTE_POD, POD_B, LXC_B, [0x02, 0, 0, 0, 0x09, 0x09]);
    let mut f = vec![0u8; vxlan::ENCAP_LEN + inner.len()];
    vxlan::emit(
        &mut f,
        &vxlan::Outer {
            dst_mac: MacAddr(NIC),
            src_mac: MacAddr(PEER_NIC),
            src_ip: PEER_NODE_IP,
            dst_ip: NODE_IP,
            ip_id: 0x77,
            sport: 51234,
            dport: TUNNEL_PORT,
            vni: 12345,
        },
        inner.len(),
    );
    f[vxlan::ENCAP_LEN..].copy_from_slice(&inner);
    f
}

// ---------------------------------------------------------------------------------------
// The common answer of a parse
// ---------------------------------------------------------------------------------------

/// What the pipeline keeps of a checked IPv4 frame (stage::check_ipv4's fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ttl: u8,
    total_len: u16,
    /// TCP/UDP: source port; ICMP: type << 8 | code.
    a: u16,
    /// TCP/UDP: destination port; ICMP echo: identifier.
    b: u16,
    /// TCP flags.
    flags: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decap {
    vni: u32,
    /// Offset of the inner frame in the outer one, and its length.
    inner_at: usize,
    inner_len: usize,
    inner: Parsed,
}

// ---------------------------------------------------------------------------------------
// fastpath: the wire views, called as stage::check_ipv4 / from_netdev / local_delivery /
// lb4_local call them
// ---------------------------------------------------------------------------------------

mod fp {
    use super::*;

    #[inline]
    pub fn parse(frame: &[u8]) -> Option<Parsed> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EtherType::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(&frame[ethernet::HEADER_LEN..]).ok()?;
        if !ip.verify_checksum() {
            return None;
        }
        let mut p = Parsed {
            src: ip.src(),
            dst: ip.dst(),
            proto: ip.protocol(),
            ttl: ip.ttl(),
            total_len: ip.total_len() as u16,
            a: 0,
            b: 0,
            flags: 0,
        };
        if ip.frag_offset() == 0 {
            match l4::parse(ip.protocol(), ip.payload()).ok()? {
                L4::Tcp {
                    sport,
                    dport,
                    flags,
                } => (p.a, p.b, p.flags) = (sport, dport, flags),
                L4::Udp { sport, dport } => (p.a, p.b) = (sport, dport),
                L4::Icmp { ty, code, id } => (p.a, p.b) = ((ty as u16) << 8 | code as u16, id),
                L4::Other(_) => {}
            }
        }
        Some(p)
    }

    /// local_delivery: TTL − 1 (incremental checksum), the pod's MACs.
    #[inline]
    pub fn ttl_mac(frame: &mut [u8]) -> bool {
        let mut p = Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]).expect("checked");
        if p.ttl() <= 1 {
            return false;
        }
        p.decrement_ttl();
        let mut eth = EthernetFrame::new_checked(frame).expect("checked");
        eth.set_dst(MacAddr(MAC_B));
        eth.set_src(MacAddr(LXC_B));
        true
    }

    /// lb4_local: DNAT with incremental IPv4 and L4 checksum updates.
    #[inline]
    pub fn dnat(frame: &mut [u8]) -> bool {
        nat::rewrite(
            &mut frame[ethernet::HEADER_LEN..],
            nat::Side::Dst,
            BACKEND,
            BACKEND_PORT,
        );
        true
    }

    /// from_netdev + from_overlay, without the table lookups.
    #[inline]
    pub fn decap(frame: &[u8]) -> Option<Decap> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EtherType::Ipv4 {
            return None;
        }
        let (vxlan_off, end) = {
            let ip = Ipv4Packet::new_checked(&frame[ethernet::HEADER_LEN..]).ok()?;
            let udp = ip.payload();
            let to_tunnel_port = ip.protocol() == ipv4::PROTO_UDP
                && ip.frag_offset() == 0
                && udp.len() >= 4
                && u16::from_be_bytes([udp[2], udp[3]]) == TUNNEL_PORT;
            if !to_tunnel_port || ip.is_fragment() || ip.dst() != NODE_IP {
                return None;
            }
            if !ip.verify_checksum() {
                return None;
            }
            let ulen = l4::udp_length(udp)?;
            if !l4::udp_checksum_ok(ip.src(), ip.dst(), &udp[..ulen]) {
                return None;
            }
            let udp_off = ethernet::HEADER_LEN + ip.header_len();
            (udp_off + l4::UDP_HEADER_LEN, udp_off + ulen)
        };
        let vni = vxlan::parse(&frame[vxlan_off..end]).ok()?.vni;
        let inner_at = vxlan_off + vxlan::HEADER_LEN;
        let inner = parse(&frame[inner_at..end])?;
        Some(Decap {
            vni,
            inner_at,
            inner_len: end - inner_at,
            inner,
        })
    }
}

// ---------------------------------------------------------------------------------------
// etherparse 0.21: read-only slices; rewrites go through its owned header structs
// ---------------------------------------------------------------------------------------

mod ep {
    use super::*;
    use etherparse::{
        Ethernet2Header, Ethernet2HeaderSlice, IpNumber, Ipv4Header, Ipv4HeaderSlice, NetSlice,
        SlicedPacket, TcpHeader, TransportSlice, UdpHeader, checksum::Sum16BitWords,
    };

    /// The header checksum over the raw bytes, by etherparse's checksum code (as the fuzz
    /// oracle does: etherparse's slices do not verify it).
    #[inline]
    fn header_ok(h: &Ipv4HeaderSlice) -> bool {
        Sum16BitWords::new().add_slice(h.slice()).ones_complement() == 0
    }

    fn flags(f: [bool; 8]) -> u8 {
        f.iter()
            .enumerate()
            .fold(0, |acc, (i, &b)| acc | (b as u8) << i)
    }

    /// `SlicedPacket::from_ethernet`: the whole stack in one call.
    #[inline]
    pub fn parse_sliced(frame: &[u8]) -> Option<Parsed> {
        let s = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            return None;
        };
        let h = ip.header();
        if !header_ok(&h) {
            return None;
        }
        let mut p = Parsed {
            src: h.source(),
            dst: h.destination(),
            proto: h.protocol().0,
            ttl: h.ttl(),
            total_len: h.total_len(),
            a: 0,
            b: 0,
            flags: 0,
        };
        match &s.transport {
            Some(TransportSlice::Tcp(t)) => {
                (p.a, p.b) = (t.source_port(), t.destination_port());
                p.flags = flags([
                    t.fin(),
                    t.syn(),
                    t.rst(),
                    t.psh(),
                    t.ack(),
                    t.urg(),
                    t.ece(),
                    t.cwr(),
                ]);
            }
            Some(TransportSlice::Udp(u)) => (p.a, p.b) = (u.source_port(), u.destination_port()),
            Some(TransportSlice::Icmpv4(m)) => {
                let (ty, code) = (m.type_u8(), m.code_u8());
                let b5 = m.bytes5to8();
                p.a = (ty as u16) << 8 | code as u16;
                p.b = if ty == 0 || ty == 8 {
                    u16::from_be_bytes([b5[0], b5[1]])
                } else {
                    0
                };
            }
            _ => {}
        }
        Some(p)
    }

    /// The header slices one by one (`Ethernet2HeaderSlice`, `Ipv4HeaderSlice`,
    /// `TcpHeaderSlice`/`UdpHeaderSlice`/`Icmpv4Slice`), payload bounded by total length.
    #[inline]
    pub fn parse_headers(frame: &[u8]) -> Option<Parsed> {
        let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
        if eth.ether_type() != etherparse::EtherType::IPV4 {
            return None;
        }
        let b = &frame[ethernet::HEADER_LEN..];
        let h = Ipv4HeaderSlice::from_slice(b).ok()?;
        let (hl, total) = (h.slice().len(), h.total_len() as usize);
        if total < hl || total > b.len() || !header_ok(&h) {
            return None;
        }
        let payload = &b[hl..total];
        let mut p = Parsed {
            src: h.source(),
            dst: h.destination(),
            proto: h.protocol().0,
            ttl: h.ttl(),
            total_len: h.total_len(),
            a: 0,
            b: 0,
            flags: 0,
        };
        if u16::from(h.fragments_offset()) != 0 {
            return Some(p);
        }
        match h.protocol() {
            IpNumber::TCP => {
                let t = etherparse::TcpHeaderSlice::from_slice(payload).ok()?;
                (p.a, p.b) = (t.source_port(), t.destination_port());
                p.flags = flags([
                    t.fin(),
                    t.syn(),
                    t.rst(),
                    t.psh(),
                    t.ack(),
                    t.urg(),
                    t.ece(),
                    t.cwr(),
                ]);
            }
            IpNumber::UDP => {
                let u = etherparse::UdpHeaderSlice::from_slice(payload).ok()?;
                (p.a, p.b) = (u.source_port(), u.destination_port());
            }
            IpNumber::ICMP => {
                let m = etherparse::Icmpv4Slice::from_slice(payload).ok()?;
                let (ty, code) = (m.type_u8(), m.code_u8());
                let b5 = m.bytes5to8();
                p.a = (ty as u16) << 8 | code as u16;
                p.b = if ty == 0 || ty == 8 {
                    u16::from_be_bytes([b5[0], b5[1]])
                } else {
                    0
                };
            }
            _ => {}
        }
        Some(p)
    }

    /// TTL − 1: read the header into an `Ipv4Header`, recompute its checksum in full,
    /// serialize it back; the MACs through an `Ethernet2Header`.
    #[inline]
    pub fn ttl_mac(frame: &mut [u8]) -> bool {
        let Ok((mut h, _)) = Ipv4Header::from_slice(&frame[ethernet::HEADER_LEN..]) else {
            return false;
        };
        if h.time_to_live <= 1 {
            return false;
        }
        h.time_to_live -= 1;
        h.header_checksum = h.calc_header_checksum();
        let hl = h.header_len();
        frame[ethernet::HEADER_LEN..ethernet::HEADER_LEN + hl].copy_from_slice(&h.to_bytes());
        let Ok((mut e, _)) = Ethernet2Header::from_slice(frame) else {
            return false;
        };
        e.destination = MAC_B;
        e.source = LXC_B;
        e.write_to_slice(frame).is_ok()
    }

    /// DNAT: both headers into owned structs, fields set, IPv4 and L4 checksums recomputed
    /// in full (etherparse has no incremental update), both serialized back.
    #[inline]
    pub fn dnat(frame: &mut [u8]) -> bool {
        let pkt = &mut frame[ethernet::HEADER_LEN..];
        let Ok((mut h, _)) = Ipv4Header::from_slice(pkt) else {
            return false;
        };
        let (hl, total) = (h.header_len(), h.total_len as usize);
        h.destination = BACKEND;
        h.header_checksum = h.calc_header_checksum();
        match h.protocol {
            IpNumber::TCP => {
                let Ok((mut t, _)) = TcpHeader::from_slice(&pkt[hl..total]) else {
                    return false;
                };
                t.destination_port = BACKEND_PORT;
                let thl = t.header_len();
                let Ok(c) = t.calc_checksum_ipv4(&h, &pkt[hl + thl..total]) else {
                    return false;
                };
                t.checksum = c;
                pkt[hl..hl + thl].copy_from_slice(&t.to_bytes());
            }
            IpNumber::UDP => {
                let Ok((mut u, _)) = UdpHeader::from_slice(&pkt[hl..total]) else {
                    return false;
                };
                u.destination_port = BACKEND_PORT;
                if u.checksum != 0 {
                    let Ok(c) = u.calc_checksum_ipv4(&h, &pkt[hl + 8..hl + u.length as usize])
                    else {
                        return false;
                    };
                    u.checksum = c;
                }
                pkt[hl..hl + 8].copy_from_slice(&u.to_bytes());
            }
            _ => {}
        }
        pkt[..hl].copy_from_slice(&h.to_bytes());
        true
    }

    /// VXLAN: `SlicedPacket` on the outer frame (UDP checksum by etherparse when non-zero),
    /// the 8 VXLAN bytes by hand (etherparse has no VXLAN type), `SlicedPacket` again on
    /// the inner frame.
    #[inline]
    pub fn decap(frame: &[u8]) -> Option<Decap> {
        let s = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            return None;
        };
        let h = ip.header();
        if h.protocol() != IpNumber::UDP
            || h.is_fragmenting_payload()
            || h.destination() != NODE_IP
            || !header_ok(&h)
        {
            return None;
        }
        let Some(TransportSlice::Udp(u)) = &s.transport else {
            return None;
        };
        if u.destination_port() != TUNNEL_PORT || (u.length() as usize) < 8 {
            return None;
        }
        if u.checksum() != 0 {
            let c = u
                .to_header()
                .calc_checksum_ipv4_raw(h.source(), h.destination(), u.payload())
                .ok()?;
            if c != u.checksum() {
                return None;
            }
        }
        let v = u.payload();
        if v.len() < 8 || v[0] != vxlan::FLAG_VNI || v[1..4] != [0, 0, 0] || v[7] != 0 {
            return None;
        }
        let vni = u32::from_be_bytes([0, v[4], v[5], v[6]]);
        let inner = &v[8..];
        let inner_at = inner.as_ptr() as usize - frame.as_ptr() as usize;
        Some(Decap {
            vni,
            inner_at,
            inner_len: inner.len(),
            inner: parse_sliced(inner)?,
        })
    }

    /// VXLAN with the header slices (`Ethernet2HeaderSlice`, `Ipv4HeaderSlice`,
    /// `UdpHeaderSlice`), the inner frame as in `parse_headers`.
    #[inline]
    pub fn decap_headers(frame: &[u8]) -> Option<Decap> {
        let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
        if eth.ether_type() != etherparse::EtherType::IPV4 {
            return None;
        }
        let b = &frame[ethernet::HEADER_LEN..];
        let h = Ipv4HeaderSlice::from_slice(b).ok()?;
        let (hl, total) = (h.slice().len(), h.total_len() as usize);
        if total < hl
            || total > b.len()
            || h.protocol() != IpNumber::UDP
            || h.is_fragmenting_payload()
            || h.destination() != NODE_IP
            || !header_ok(&h)
        {
            return None;
        }
        let payload = &b[hl..total];
        let u = etherparse::UdpHeaderSlice::from_slice(payload).ok()?;
        let ulen = u.length() as usize;
        if u.destination_port() != TUNNEL_PORT || ulen < 8 || ulen > payload.len() {
            return None;
        }
        if u.checksum() != 0 {
            let c = u
                .to_header()
                .calc_checksum_ipv4_raw(h.source(), h.destination(), &payload[8..ulen])
                .ok()?;
            if c != u.checksum() {
                return None;
            }
        }
        let v = &payload[8..ulen];
        if v.len() < 8 || v[0] != vxlan::FLAG_VNI || v[1..4] != [0, 0, 0] || v[7] != 0 {
            return None;
        }
        let vni = u32::from_be_bytes([0, v[4], v[5], v[6]]);
        let inner_at = ethernet::HEADER_LEN + hl + 16;
        Some(Decap {
            vni,
            inner_at,
            inner_len: ulen - 16,
            inner: parse_headers(&v[8..])?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// smoltcp 0.14 `wire`: checked views with setters; checksums only recomputed in full
// ---------------------------------------------------------------------------------------

mod sm {
    use super::*;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, IpAddress, IpProtocol,
        Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket,
    };

    fn flags(t: &TcpPacket<&[u8]>) -> u8 {
        [
            t.fin(),
            t.syn(),
            t.rst(),
            t.psh(),
            t.ack(),
            t.urg(),
            t.ece(),
            t.cwr(),
        ]
        .iter()
        .enumerate()
        .fold(0, |acc, (i, &b)| acc | (b as u8) << i)
    }

    #[inline]
    pub fn parse(frame: &[u8]) -> Option<Parsed> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        // smoltcp's check_len does not look at the version (its Repr::parse does).
        if ip.version() != 4 || !ip.verify_checksum() {
            return None;
        }
        let mut p = Parsed {
            src: ip.src_addr().octets(),
            dst: ip.dst_addr().octets(),
            proto: u8::from(ip.next_header()),
            ttl: ip.hop_limit(),
            total_len: ip.total_len(),
            a: 0,
            b: 0,
            flags: 0,
        };
        if ip.frag_offset() != 0 {
            return Some(p);
        }
        match ip.next_header() {
            IpProtocol::Tcp => {
                let t = TcpPacket::new_checked(ip.payload()).ok()?;
                (p.a, p.b, p.flags) = (t.src_port(), t.dst_port(), flags(&t));
            }
            IpProtocol::Udp => {
                // UdpPacket::new_checked also wants the UDP length to fit; the pipeline reads
                // only the 8-byte header here, so view just that.
                let u = UdpPacket::new_unchecked(ip.payload());
                if ip.payload().len() < 8 {
                    return None;
                }
                (p.a, p.b) = (u.src_port(), u.dst_port());
            }
            IpProtocol::Icmp => {
                let m = Icmpv4Packet::new_checked(ip.payload()).ok()?;
                let ty = u8::from(m.msg_type());
                p.a = (ty as u16) << 8 | m.msg_code() as u16;
                p.b = if ty == 0 || ty == 8 {
                    m.echo_ident()
                } else {
                    0
                };
            }
            _ => {}
        }
        Some(p)
    }

    /// TTL − 1 through the setter, `fill_checksum` (full recompute), MACs by setters.
    #[inline]
    pub fn ttl_mac(frame: &mut [u8]) -> bool {
        let Ok(mut eth) = EthernetFrame::new_checked(&mut frame[..]) else {
            return false;
        };
        {
            let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
                return false;
            };
            let ttl = ip.hop_limit();
            if ttl <= 1 {
                return false;
            }
            ip.set_hop_limit(ttl - 1);
            ip.fill_checksum();
        }
        eth.set_dst_addr(EthernetAddress(MAC_B));
        eth.set_src_addr(EthernetAddress(LXC_B));
        true
    }

    /// DNAT through the setters; `fill_checksum` on the IPv4 header and on the TCP/UDP
    /// segment (full recomputes over the whole segment: smoltcp has no incremental update).
    #[inline]
    pub fn dnat(frame: &mut [u8]) -> bool {
        let Ok(mut ip) = Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]) else {
            return false;
        };
        let dst = Ipv4Address::from_octets(BACKEND);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        let (s, d) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(dst));
        match ip.next_header() {
            IpProtocol::Tcp => {
                let Ok(mut t) = TcpPacket::new_checked(ip.payload_mut()) else {
                    return false;
                };
                t.set_dst_port(BACKEND_PORT);
                t.fill_checksum(&s, &d);
            }
            IpProtocol::Udp => {
                let Ok(mut u) = UdpPacket::new_checked(ip.payload_mut()) else {
                    return false;
                };
                u.set_dst_port(BACKEND_PORT);
                if u.checksum() != 0 {
                    u.fill_checksum(&s, &d);
                }
            }
            _ => {}
        }
        true
    }

    /// VXLAN: the outer views checked (UdpPacket::verify_checksum skips 0), the 8 VXLAN
    /// bytes by hand (smoltcp has no VXLAN type), the inner frame as in `parse`.
    #[inline]
    pub fn decap(frame: &[u8]) -> Option<Decap> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.version() != 4
            || ip.next_header() != IpProtocol::Udp
            || ip.more_frags()
            || ip.frag_offset() != 0
            || ip.dst_addr().octets() != NODE_IP
            || !ip.verify_checksum()
        {
            return None;
        }
        let u = UdpPacket::new_checked(ip.payload()).ok()?;
        let (s, d) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        if u.dst_port() != TUNNEL_PORT || !u.verify_checksum(&s, &d) {
            return None;
        }
        let v = u.payload();
        if v.len() < 8 || v[0] != vxlan::FLAG_VNI || v[1..4] != [0, 0, 0] || v[7] != 0 {
            return None;
        }
        let vni = u32::from_be_bytes([0, v[4], v[5], v[6]]);
        let inner = &v[8..];
        let inner_at = inner.as_ptr() as usize - frame.as_ptr() as usize;
        Some(Decap {
            vni,
            inner_at,
            inner_len: inner.len(),
            inner: parse(inner)?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Equivalence checks (before any timing)
// ---------------------------------------------------------------------------------------

type ParseFn = fn(&[u8]) -> Option<Parsed>;
type RewriteFn = fn(&mut [u8]) -> bool;
type DecapFn = fn(&[u8]) -> Option<Decap>;

const PARSERS: [(&str, ParseFn); 4] = [
    ("fastpath", fp::parse),
    ("etherparse SlicedPacket", ep::parse_sliced),
    ("etherparse header slices", ep::parse_headers),
    ("smoltcp", sm::parse),
];

const TTL_MAC: [(&str, RewriteFn); 3] = [
    ("fastpath", fp::ttl_mac),
    ("etherparse", ep::ttl_mac),
    ("smoltcp", sm::ttl_mac),
];

const DNAT: [(&str, RewriteFn); 3] = [
    ("fastpath", fp::dnat),
    ("etherparse", ep::dnat),
    ("smoltcp", sm::dnat),
];

const DECAP: [(&str, DecapFn); 4] = [
    ("fastpath", fp::decap),
    ("etherparse SlicedPacket", ep::decap),
    ("etherparse header slices", ep::decap_headers),
    ("smoltcp", sm::decap),
];

/// Broken variants of `f` every parser must refuse.
fn broken(f: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut b = f.to_vec();
    b[14 + 10] ^= 0x01;
    out.push(("bad IPv4 checksum", b));
    let mut b = f.to_vec();
    b[14] = 0x65;
    out.push(("IP version 6 in an IPv4 ethertype", b));
    let mut b = f.to_vec();
    b[14] = 0x44;
    out.push(("IHL 4", b));
    let mut b = f.to_vec();
    b[14 + 3] = b[14 + 3].wrapping_add(1);
    out.push(("total length past the frame", b));
    out.push(("truncated to 33 bytes", f[..33].to_vec()));
    let mut b = f.to_vec();
    b[12] = 0x86;
    b[13] = 0xdd;
    out.push(("ethertype IPv6", b));
    out
}

fn check_parsers(name: &str, f: &[u8], want: Parsed) {
    for (imp, p) in PARSERS {
        assert_eq!(p(f), Some(want), "{imp} parses {name}");
        for (what, b) in broken(f) {
            assert_eq!(p(&b), None, "{imp} refuses {name}: {what}");
        }
    }
    if want.proto == ipv4::PROTO_TCP {
        // A TCP header that claims more bytes than the packet has.
        let mut b = f.to_vec();
        b[14 + 20 + 12] = 0xf0;
        let c = {
            let mut ip = Ipv4Packet::new_checked(&mut b[14..]).unwrap();
            ip.fill_checksum();
            ip.checksum()
        };
        assert_ne!(c, 0);
        for (imp, p) in PARSERS {
            assert_eq!(
                p(&b),
                None,
                "{imp} refuses {name}: TCP data offset past the end"
            );
        }
    }
}

/// Every rewrite gives the same bytes as fastpath's, and the result is a correct packet
/// (both checksums recomputed in full by an independent loop equal the ones written).
fn check_rewrites(name: &str, f: &[u8], impls: &[(&str, RewriteFn)]) -> Vec<u8> {
    let mut want = f.to_vec();
    assert!((impls[0].1)(&mut want));
    assert_ne!(want, f, "{name}: the rewrite changed something");
    for (imp, r) in &impls[1..] {
        let mut b = f.to_vec();
        assert!(r(&mut b));
        assert_eq!(b, want, "{imp}: {name} gives fastpath's bytes");
    }
    let ip = &want[14..];
    assert_eq!(wire::checksum(&ip[..20]), 0, "{name}: IPv4 checksum");
    match ip[9] {
        ipv4::PROTO_TCP => assert_eq!(
            l4_checksum(ip, 16),
            u16::from_be_bytes([ip[36], ip[37]]),
            "{name}: TCP checksum"
        ),
        // 0: "no checksum" (RFC 768), kept as sent.
        ipv4::PROTO_UDP if ip[26..28] != [0, 0] => assert_eq!(
            l4_checksum(ip, 6),
            u16::from_be_bytes([ip[26], ip[27]]),
            "{name}: UDP checksum"
        ),
        _ => {}
    }
    want
}

// ---------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------

// Generic over the implementation (each gets its own loop with its function inlined, as the
// pipeline inlines the views), never inlined into the driver.
#[inline(never)]
fn time_parse<T>(p: impl Fn(&[u8]) -> Option<T>, f: &[u8], iters: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        black_box(p(black_box(f)));
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// Bytes of frames per batch: 32 KiB, so a batch stays in L1 as a worker's batch of
/// just-received frames would (256 small frames, 16 full-size ones).
const BATCH_BYTES: usize = 32 * 1024;

/// Room for one batch of frames at `stride`, each frame 64-byte aligned as in a UMEM chunk.
struct Pool {
    mem: Vec<u8>,
    off: usize,
    stride: usize,
}

impl Pool {
    fn new(stride: usize) -> Pool {
        let mem = vec![0u8; BATCH_BYTES + 64];
        let off = mem.as_ptr().align_offset(64);
        Pool { mem, off, stride }
    }
    fn frames(&mut self) -> std::slice::ChunksExactMut<'_, u8> {
        self.mem[self.off..self.off + BATCH_BYTES].chunks_exact_mut(self.stride)
    }
}

/// The timed part of [`time_rewrite`], on its own so `valgrind --tool=callgrind` counts the
/// rewrites without the re-arm copies.
#[inline(never)]
fn rewrite_batch(r: &impl Fn(&mut [u8]) -> bool, pool: &mut Pool, len: usize) {
    for c in pool.frames() {
        black_box(r(black_box(&mut c[..len])));
    }
}

/// Rewrites time one batch of frames at a time, each re-armed with a copy of the fixture
/// *before* the clock starts (the copy is not in the figure).
#[inline(never)]
fn time_rewrite(r: impl Fn(&mut [u8]) -> bool, f: &[u8], pool: &mut Pool, iters: u64) -> f64 {
    let n = (BATCH_BYTES / pool.stride) as u64;
    let batches = iters.div_ceil(n);
    let mut total = std::time::Duration::ZERO;
    for _ in 0..batches {
        for c in pool.frames() {
            c[..f.len()].copy_from_slice(black_box(f));
        }
        let t = Instant::now();
        rewrite_batch(&r, pool, f.len());
        total += t.elapsed();
        black_box(&pool.mem);
    }
    total.as_nanos() as f64 / (batches * n) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    op: String,
    cols: Vec<(String, f64, f64, f64)>,
}

/// Run the implementations `rounds` times each, interleaved (A B C A B C …), after one
/// warm-up pass; `pick` selects which of `names` run at all.
fn interleaved(
    rounds: usize,
    names: &[&str],
    pick: &dyn Fn(&str) -> bool,
    mut run: impl FnMut(usize) -> f64,
) -> Row {
    let chosen: Vec<usize> = (0..names.len()).filter(|&i| pick(names[i])).collect();
    let mut samples = vec![Vec::new(); chosen.len()];
    for &i in &chosen {
        run(i);
    }
    for _ in 0..rounds {
        for (s, &i) in samples.iter_mut().zip(&chosen) {
            s.push(run(i));
        }
    }
    Row {
        op: String::new(),
        cols: chosen
            .iter()
            .zip(samples)
            .map(|(&i, s)| {
                let lo = s.iter().cloned().fold(f64::MAX, f64::min);
                let hi = s.iter().cloned().fold(0.0, f64::max);
                (names[i].to_string(), median(s), lo, hi)
            })
            .collect(),
    }
}

/// The steal time of `core` so far, in USER_HZ ticks (/proc/stat: what the hypervisor took).
fn steal_ticks(core: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{core}");
    stat.lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .and_then(|l| l.split_whitespace().nth(8)?.parse().ok())
        .unwrap_or(0)
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let a = Args::parse();
    let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: a.core });

    let tcp = tcp_syn(POD_A, POD_B, LXC_A, MAC_A);
    let tcp_big = tcp_data();
    let udp = udp();
    let icmp = icmp_echo();
    let vx = vxlan_frame();
    assert_eq!(
        (tcp.len(), udp.len(), icmp.len(), vx.len()),
        (66, 60, 98, 116)
    );

    // Parse: every implementation gives the same answer and refuses the same broken frames.
    let base = Parsed {
        src: POD_A,
        dst: POD_B,
        proto: 0,
        ttl: 64,
        total_len: 0,
        a: 0,
        b: 0,
        flags: 0,
    };
    let want_tcp = Parsed {
        proto: ipv4::PROTO_TCP,
        total_len: 52,
        a: 40000,
        b: 8080,
        flags: 0x02,
        ..base
    };
    check_parsers("TCP SYN", &tcp, want_tcp);
    check_parsers(
        "UDP",
        &udp,
        Parsed {
            proto: ipv4::PROTO_UDP,
            total_len: 46,
            a: 12345,
            b: 53,
            ..base
        },
    );
    check_parsers(
        "ICMP echo",
        &icmp,
        Parsed {
            proto: ipv4::PROTO_ICMP,
            total_len: 84,
            a: 8 << 8,
            b: 0x1234,
            ..base
        },
    );
    // Decap: same VNI, same inner frame, same inner answer; same refusals.
    let want_decap = Decap {
        vni: 12345,
        inner_at: 50,
        inner_len: 66,
        inner: Parsed {
            src: REMOTE_POD,
            ..want_tcp
        },
    };
    for (imp, d) in DECAP {
        assert_eq!(d(&vx), Some(want_decap), "{imp} decapsulates");
        let mut bad = Vec::new();
        let mut b = vx.clone();
        b[14 + 10] ^= 1;
        bad.push(("bad outer IPv4 checksum", b));
        let mut b = vx.clone();
        b[42] = 0x88;
        bad.push(("VXLAN GBP flag", b));
        let mut b = vx.clone();
        b[36..38].copy_from_slice(&4789u16.to_be_bytes());
        bad.push(("another UDP port", b));
        let mut b = vx.clone();
        b[40..42].copy_from_slice(&0x1234u16.to_be_bytes());
        bad.push(("wrong non-zero UDP checksum", b));
        let mut b = vx.clone();
        b[50 + 14 + 10] ^= 1;
        bad.push(("bad inner IPv4 checksum", b));
        for (what, b) in bad {
            assert_eq!(d(&b), None, "{imp} refuses VXLAN: {what}");
        }
    }
    // A correct non-zero outer UDP checksum is accepted by all.
    let mut vx_csum = vx.clone();
    let c = l4_checksum(&vx_csum[14..], 6);
    vx_csum[40..42].copy_from_slice(&c.to_be_bytes());
    for (imp, d) in DECAP {
        assert_eq!(d(&vx_csum), Some(want_decap), "{imp}: outer UDP checksum");
    }
    // Rewrites: same bytes, correct checksums.
    check_rewrites("TTL+MAC TCP", &tcp, &TTL_MAC);
    check_rewrites("TTL+MAC UDP", &udp, &TTL_MAC);
    check_rewrites("DNAT TCP", &tcp, &DNAT);
    check_rewrites("DNAT UDP", &udp, &DNAT);
    check_rewrites("DNAT TCP data", &tcp_big, &DNAT);
    for (imp, p) in PARSERS {
        assert_eq!(
            p(&tcp_big),
            Some(Parsed {
                total_len: 1450,
                flags: 0x18,
                ..want_tcp
            }),
            "{imp} parses the full-size segment"
        );
    }
    let mut udp0 = udp.clone();
    udp0[40..42].copy_from_slice(&[0, 0]);
    let r = check_rewrites("DNAT UDP without checksum", &udp0, &DNAT);
    assert_eq!(&r[40..42], &[0, 0], "UDP checksum 0 stays 0");
    eprintln!("equivalence: all implementations agree on every fixture and broken frame");

    let iters = a.iters;
    let want = |label: &str| a.only.as_deref().is_none_or(|o| label.contains(o));
    let pick = |name: &str| a.imp.as_deref().is_none_or(|o| name.contains(o));
    let load0 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (steal0, t0) = (steal_ticks(a.core), Instant::now());
    let mut rows = Vec::new();
    let pnames: Vec<&str> = PARSERS.iter().map(|p| p.0).collect();
    for (label, f) in [
        ("parse, TCP SYN 66 B", &tcp),
        ("parse, UDP 60 B", &udp),
        ("parse, ICMP echo 98 B", &icmp),
    ] {
        if !want(label) {
            continue;
        }
        let mut r = interleaved(a.rounds, &pnames, &pick, |i| match i {
            0 => time_parse(fp::parse, f, iters),
            1 => time_parse(ep::parse_sliced, f, iters),
            2 => time_parse(ep::parse_headers, f, iters),
            _ => time_parse(sm::parse, f, iters),
        });
        r.op = label.into();
        rows.push(r);
    }
    let mut small = Pool::new(128);
    let mut big = Pool::new(2048);
    let names = ["fastpath", "etherparse", "smoltcp"];
    for (label, dnat, f) in [
        ("TTL−1 + MACs, TCP SYN", false, &tcp),
        ("TTL−1 + MACs, UDP", false, &udp),
        ("DNAT addr+port, TCP SYN", true, &tcp),
        ("DNAT addr+port, UDP", true, &udp),
        ("DNAT addr+port, TCP data 1464 B", true, &tcp_big),
    ] {
        if !want(label) {
            continue;
        }
        let b = if f.len() > 128 { &mut big } else { &mut small };
        let mut r = interleaved(a.rounds, &names, &pick, |i| match (dnat, i) {
            (false, 0) => time_rewrite(fp::ttl_mac, f, b, iters),
            (false, 1) => time_rewrite(ep::ttl_mac, f, b, iters),
            (false, 2) => time_rewrite(sm::ttl_mac, f, b, iters),
            (true, 0) => time_rewrite(fp::dnat, f, b, iters),
            (true, 1) => time_rewrite(ep::dnat, f, b, iters),
            _ => time_rewrite(sm::dnat, f, b, iters),
        });
        r.op = label.into();
        rows.push(r);
    }
    let dnames: Vec<&str> = DECAP.iter().map(|p| p.0).collect();
    let label = "VXLAN decap parse, 116 B";
    if want(label) {
        let mut r = interleaved(a.rounds, &dnames, &pick, |i| match i {
            0 => time_parse(fp::decap, &vx, iters),
            1 => time_parse(ep::decap, &vx, iters),
            2 => time_parse(ep::decap_headers, &vx, iters),
            _ => time_parse(sm::decap, &vx, iters),
        });
        r.op = label.into();
        rows.push(r);
    }

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "commit {}  loadavg {} -> {}  pinned to core {} ({})  {} iters x {} rounds, interleaved",
        cmd_out("git", &["rev-parse", "--short", "HEAD"]),
        load0
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        a.core,
        if pinned { "ok" } else { "failed" },
        iters,
        a.rounds
    );
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "kernel {}  {:.1} s  steal on core {}: {:.1} %",
        cmd_out("uname", &["-r"]),
        secs,
        a.core,
        (steal_ticks(a.core) - steal0) as f64 / 100.0 / secs * 100.0
    );
    println!();
    println!(
        "median ns/op (min–max over the rounds); rewrites in 32 KiB batches of frames, re-armed outside the clock"
    );
    println!();
    for r in &rows {
        println!("{}", r.op);
        for (n, med, lo, hi) in &r.cols {
            println!("  {n:<26} {med:7.2}   ({lo:.2}–{hi:.2})");
        }
    }
}
