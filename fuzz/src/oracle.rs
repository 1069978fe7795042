//! Output oracles: what a frame the pipeline lets out must be, checked with an independent
//! parser (etherparse) rather than fastpath's own views.

use control::tables::{PortRole, Tables};
use etherparse::{
    ArpPacketSlice, Ethernet2HeaderSlice, Icmpv4Slice, Ipv4HeaderSlice, TcpHeaderSlice,
    UdpHeaderSlice,
};
use fastpath::stage::Verdict;

/// A failed expectation, with what was seen.
pub type Check = Result<(), String>;

macro_rules! ensure {
    ($c:expr, $($arg:tt)*) => {
        if !$c {
            return Err(format!($($arg)*));
        }
    };
}

/// An IPv4 packet as etherparse reads its header, with the payload its total length gives
/// (no extension-header interpretation: an AH protocol number is just a number here, as it
/// is to fastpath).
#[derive(Debug, Clone, Copy)]
pub struct Ip<'a> {
    h: Ipv4HeaderSlice<'a>,
    payload: &'a [u8],
}

impl<'a> Ip<'a> {
    pub fn header(&self) -> Ipv4HeaderSlice<'a> {
        self.h
    }
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// The IPv4 packet of an Ethernet frame, if it has one etherparse accepts (header valid,
/// total length between header and frame length).
pub fn ipv4_of(frame: &[u8]) -> Option<Ip<'_>> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
    if eth.ether_type() != etherparse::EtherType::IPV4 {
        return None;
    }
    let b = &frame[14..];
    let h = Ipv4HeaderSlice::from_slice(b).ok()?;
    let (hl, total) = (h.slice().len(), h.total_len() as usize);
    (hl <= total && total <= b.len()).then(|| Ip {
        h,
        payload: &b[hl..total],
    })
}

/// The one's complement sum of `parts` by etherparse's checksum code, complemented: 0 when
/// the checksum inside them is right. Computed over the raw bytes, so that bits etherparse's
/// header structs do not keep (the IPv4 reserved flag, TCP's reserved bits) still count.
fn sum_is_right(parts: &[&[u8]]) -> bool {
    let mut s = etherparse::checksum::Sum16BitWords::new();
    for p in parts {
        s = s.add_slice(p);
    }
    s.ones_complement() == 0
}

/// Is the IPv4 header checksum right?
pub fn header_checksum_ok(h: &Ipv4HeaderSlice) -> bool {
    sum_is_right(&[h.slice()])
}

/// For an unfragmented TCP, UDP or ICMP packet: is its checksum right (UDP: or 0 = none)?
/// `None` when there is no complete L4 header to judge.
pub fn l4_checksum_ok(ip: &Ip) -> Option<bool> {
    let h = ip.header();
    if h.more_fragments() || u16::from(h.fragments_offset()) != 0 {
        return None;
    }
    let p = ip.payload();
    let pseudo = |len: usize, proto: u8| {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&h.source());
        b[4..8].copy_from_slice(&h.destination());
        b[9] = proto;
        b[10..12].copy_from_slice(&(len as u16).to_be_bytes());
        b
    };
    match h.protocol() {
        etherparse::IpNumber::TCP => {
            TcpHeaderSlice::from_slice(p).ok()?;
            Some(sum_is_right(&[&pseudo(p.len(), 6), p]))
        }
        etherparse::IpNumber::UDP => {
            let u = UdpHeaderSlice::from_slice(p).ok()?;
            let len = u.length() as usize;
            if len < 8 || len > p.len() {
                return None;
            }
            Some(u.checksum() == 0 || sum_is_right(&[&pseudo(len, 17), &p[..len]]))
        }
        etherparse::IpNumber::ICMP => {
            Icmpv4Slice::from_slice(p).ok()?;
            Some(sum_is_right(&[p]))
        }
        _ => None,
    }
}

/// Where the inner frame of a VXLAN frame starts (outer Ethernet, IPv4 with options, UDP,
/// VXLAN), by etherparse.
pub fn vxlan_inner(frame: &[u8]) -> Option<usize> {
    let ip = ipv4_of(frame)?;
    (ip.header().protocol() == etherparse::IpNumber::UDP).then_some(())?;
    let u = UdpHeaderSlice::from_slice(ip.payload()).ok()?;
    (u.destination_port() == 8472).then_some(())?;
    Some(14 + ip.header().slice().len() + 8 + 8)
}

/// The frame the pipeline judged at the IP layer: the inner one of a VXLAN frame that was
/// decapsulated (delivered to a pod, or the reply of a SNATed NodePort connection routed
/// back to its client).
fn judged_input(input: &[u8], v: &Verdict, from_underlay: bool) -> Option<usize> {
    match v {
        Verdict::Decap { .. } => vxlan_inner(input),
        Verdict::Route { .. } if from_underlay => Some(vxlan_inner(input).unwrap_or(0)),
        _ => Some(0),
    }
}

/// Check `out` (the frame after the pipeline) against `input` and the verdict `v`, for a
/// frame that arrived on `in_port` of tables `t`.
pub fn check(input: &[u8], in_port: u16, v: &Verdict, out: &[u8], t: &Tables) -> Check {
    let Some(port) = v.tx_port() else {
        return Ok(());
    };
    let p = t
        .port(port)
        .ok_or_else(|| format!("{v:?} names port {port}, which does not exist"))?;
    ensure!(out.len() >= 14, "{v:?}: a {}-byte frame", out.len());
    let from_underlay = t
        .port(in_port)
        .is_some_and(|p| p.role == PortRole::Underlay);
    let eth = Ethernet2HeaderSlice::from_slice(out).map_err(|e| format!("{v:?}: {e}"))?;
    match *v {
        Verdict::Deliver { .. } | Verdict::Decap { .. } | Verdict::RoutedIn { .. } => {
            ensure!(p.role == PortRole::Lxc, "{v:?} to a non-pod port");
            let ip = ipv4_of(out).ok_or_else(|| format!("{v:?}: output is not IPv4"))?;
            let h = ip.header();
            ensure!(header_checksum_ok(&h), "{v:?}: IPv4 header checksum wrong");
            ensure!(
                h.destination() == p.endpoint_ip.octets(),
                "{v:?}: delivered to {:?}, the port's pod is {}",
                h.destination(),
                p.endpoint_ip
            );
            let ep = t
                .endpoint_v4(p.endpoint_ip.octets())
                .ok_or("delivered to a port without endpoint")?;
            ensure!(
                eth.destination() == ep.info.pod_mac().0 && eth.source() == p.mac.0,
                "{v:?}: MACs {:?} <- {:?}",
                eth.destination(),
                eth.source()
            );
            ensure!(
                out.len() == 14 + h.total_len() as usize,
                "{v:?}: {} bytes for a {}-byte packet",
                out.len(),
                h.total_len()
            );
            same_l4_validity(input, v, &ip, from_underlay)?;
            ttl_one_less(input, v, &h, from_underlay)?;
        }
        Verdict::Encap { .. } => {
            ensure!(p.role == PortRole::Underlay, "Encap to a pod port");
            let ip = ipv4_of(out).ok_or("Encap: outer is not IPv4")?;
            let h = ip.header();
            ensure!(header_checksum_ok(&h), "Encap: outer IPv4 checksum wrong");
            ensure!(
                h.total_len() as usize == out.len() - 14,
                "Encap: outer total length {} for {} bytes",
                h.total_len(),
                out.len()
            );
            ensure!(h.source() == t.overlay.node_ip, "Encap: outer source");
            ensure!(h.ttl() == 64 && !h.dont_fragment(), "Encap: outer TTL/DF");
            let u = UdpHeaderSlice::from_slice(ip.payload()).map_err(|e| format!("Encap: {e}"))?;
            ensure!(
                u.destination_port() == t.overlay.tunnel_port,
                "Encap: UDP to {}",
                u.destination_port()
            );
            ensure!(
                u.length() as usize == h.total_len() as usize - h.slice().len(),
                "Encap: UDP length {} in a {}-byte packet",
                u.length(),
                h.total_len()
            );
            ensure!(u.checksum() == 0, "Encap: outer UDP checksum is not 0");
            let vx = &ip.payload()[8..];
            ensure!(
                vx.len() >= 8 && vx[0] == 0x08 && vx[1..4] == [0, 0, 0] && vx[7] == 0,
                "Encap: VXLAN header {:02x?}",
                &vx[..vx.len().min(8)]
            );
            let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
            ensure!(
                vni != 0 && vni != control::identity::RESERVED_HOST,
                "Encap: VNI {vni} (the host goes out as remote-node)"
            );
            let inner = &out[50..];
            let iip = ipv4_of(inner).ok_or("Encap: inner is not IPv4")?;
            let ih = iip.header();
            ensure!(header_checksum_ok(&ih), "Encap: inner IPv4 checksum wrong");
            ensure!(
                inner.len() == 14 + ih.total_len() as usize,
                "Encap: inner frame {} bytes for a {}-byte packet",
                inner.len(),
                ih.total_len()
            );
            ensure!(
                out.len() - 14 <= t.overlay.underlay_mtu as usize,
                "Encap: {} bytes on a {}-byte MTU underlay",
                out.len() - 14,
                t.overlay.underlay_mtu
            );
            if let Some(in_ip) = ipv4_of(input)
                && l4_checksum_ok(&in_ip) == Some(true)
            {
                ensure!(
                    l4_checksum_ok(&iip) != Some(false),
                    "Encap: inner L4 checksum broken on the way"
                );
            }
        }
        Verdict::Route { .. } => {
            ensure!(p.role == PortRole::Underlay, "Route to a pod port");
            let ip = ipv4_of(out).ok_or("Route: not IPv4")?;
            let h = ip.header();
            ensure!(header_checksum_ok(&h), "Route: IPv4 checksum wrong");
            same_l4_validity(input, v, &ip, from_underlay)?;
            ttl_one_less(input, v, &h, from_underlay)?;
        }
        Verdict::ArpReply { .. } => {
            ensure!(port == in_port, "ARP reply on another port");
            let a = ArpPacketSlice::from_slice(&out[14..]).map_err(|e| format!("ARP: {e}"))?;
            let q = ArpPacketSlice::from_slice(&input[14..]).map_err(|e| format!("ARP in: {e}"))?;
            ensure!(
                a.operation() == etherparse::ArpOperation::REPLY,
                "ARP reply with op {:?}",
                a.operation()
            );
            ensure!(
                a.sender_hw_addr() == p.mac.0 && a.target_hw_addr() == q.sender_hw_addr(),
                "ARP reply hardware addresses"
            );
            ensure!(
                a.sender_protocol_addr() == q.target_protocol_addr()
                    && a.target_protocol_addr() == q.sender_protocol_addr(),
                "ARP reply protocol addresses"
            );
            ensure!(
                eth.destination() == q.sender_hw_addr() && eth.source() == p.mac.0,
                "ARP reply MACs"
            );
        }
        Verdict::IcmpReply { reason, .. } => {
            ensure!(port == in_port, "ICMP error on another port");
            let ip = ipv4_of(out).ok_or("ICMP error: not IPv4")?;
            let h = ip.header();
            ensure!(header_checksum_ok(&h), "ICMP error: IPv4 checksum wrong");
            ensure!(
                h.protocol() == etherparse::IpNumber::ICMP,
                "ICMP error: protocol"
            );
            let m =
                Icmpv4Slice::from_slice(ip.payload()).map_err(|e| format!("ICMP error: {e}"))?;
            ensure!(
                sum_is_right(&[ip.payload()]),
                "ICMP error: ICMP checksum wrong"
            );
            let want = match reason {
                control::maps::DropReason::FragNeeded => (3, 4),
                control::maps::DropReason::NoService => (3, 3),
                r => return Err(format!("ICMP error for drop reason {r:?}")),
            };
            ensure!(
                (m.type_u8(), m.code_u8()) == want,
                "ICMP error {}/{} for {reason:?}",
                m.type_u8(),
                m.code_u8()
            );
            let orig = ipv4_of(input).ok_or("ICMP error about a non-IPv4 frame")?;
            let oh = orig.header();
            ensure!(
                h.destination() == oh.source(),
                "ICMP error not addressed to the sender"
            );
            let orig_bytes = &input[14..14 + oh.total_len() as usize];
            let quote = m.payload();
            ensure!(
                !quote.is_empty() && orig_bytes.starts_with(quote),
                "ICMP error does not quote the original"
            );
            ensure!(out.len() - 14 <= 576, "ICMP error longer than 576 bytes");
        }
        Verdict::Drop { .. } => {}
    }
    Ok(())
}

/// If the packet the pipeline judged had a valid L4 checksum, the one it let out has too
/// (NAT and TTL rewrites patch checksums; they must never break one).
fn same_l4_validity(input: &[u8], v: &Verdict, out: &Ip, from_underlay: bool) -> Check {
    let Some(at) = judged_input(input, v, from_underlay) else {
        return Ok(());
    };
    let Some(in_ip) = ipv4_of(&input[at..]) else {
        return Ok(());
    };
    if l4_checksum_ok(&in_ip) == Some(true) {
        ensure!(
            l4_checksum_ok(out) != Some(false),
            "{v:?}: L4 checksum broken on the way"
        );
    }
    Ok(())
}

fn ttl_one_less(input: &[u8], v: &Verdict, out: &Ipv4HeaderSlice, from_underlay: bool) -> Check {
    let Some(at) = judged_input(input, v, from_underlay) else {
        return Ok(());
    };
    if let Some(in_ip) = ipv4_of(&input[at..]) {
        ensure!(
            out.ttl() + 1 == in_ip.header().ttl(),
            "{v:?}: TTL {} after {}",
            out.ttl(),
            in_ip.header().ttl()
        );
    }
    Ok(())
}
