//! The pipeline, over byte buffers, in Cilium's stage order.
//!
//! Entry points by the role of the port a frame arrived on ([`process`]):
//! - **lxc** → `from-container` (bpf_lxc `cil_from_container`): validate L2 → ARP responder or
//!   IPv4 → validate L3 (and L4 headers, which conntrack will key on) → source-address check →
//!   `cilium_lxc` lookup of the destination: a local pod gets local delivery; otherwise the
//!   `cilium_ipcache_v2` lookup decides: encapsulate to the tunnel endpoint (tunnel mode) or
//!   route to the owning node (native routing).
//! - **underlay** → `from-overlay` (bpf_overlay `cil_from_overlay`) for VXLAN: validate the
//!   outer headers and the VXLAN header, take the source identity from the VNI, refuse the
//!   host identity and unknown identities, decapsulate, `cilium_lxc` lookup, local delivery;
//!   or `from-netdev` (bpf_host) for natively routed frames to a local pod.
//! - local delivery (`ipv4_local_delivery`, the `to-container` step): TTL−1, MACs.
//!
//! Later stages (conntrack, service DNAT, policy) slot in after the lookups, in that order.
//!
//! A stage reads tables, rewrites headers in place (growing or shrinking the frame at the
//! front inside its headroom) and returns a [`Verdict`]; it never sends or frees a frame. The
//! worker acts on verdicts in one place, where drops are counted (Cilium's single `out:`
//! exit). Nothing here allocates, locks or logs.

use control::config::RoutingMode;
use control::identity;
use control::maps::{DropReason, MetricDir};
use control::tables::{EndpointEntry, PortId, PortRole, Tables};

use crate::wire::{
    ArpPacket, Buf, EtherType, EthernetFrame, Ipv4Packet, WireError, arp, ethernet, icmp, ipv4, l4,
    vxlan,
};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Local delivery from a pod to a pod of this node: transmit on `port` (the frame was
    /// rewritten in place).
    Deliver { port: PortId },
    /// Decapsulated (VXLAN from another node) and delivered to the pod behind `port`.
    Decap { port: PortId },
    /// Natively routed from another node and delivered to the pod behind `port`.
    RoutedIn { port: PortId },
    /// Encapsulated (VXLAN) towards another node: transmit on the underlay `port`.
    Encap { port: PortId },
    /// Natively routed towards another node: transmit on the underlay `port`.
    Route { port: PortId },
    /// An ARP reply built in place: transmit back on the port it came from.
    ArpReply { port: PortId },
    /// An ICMP error built in place from the frame (fragmentation needed): transmit back on
    /// `port`; the original counts as dropped for `reason`.
    IcmpReply { port: PortId, reason: DropReason },
    /// Drop, counted under Cilium's reason and metrics direction.
    Drop { reason: DropReason, dir: MetricDir },
}

/// Per-worker mutable state the pipeline needs (no sharing, no atomics).
#[derive(Debug, Default)]
pub struct Scratch {
    /// IPv4 identification for outer headers.
    pub ip_id: u16,
}

#[inline]
fn drop_egress(reason: DropReason) -> Verdict {
    Verdict::Drop {
        reason,
        dir: MetricDir::Egress,
    }
}

#[inline]
fn drop_ingress(reason: DropReason) -> Verdict {
    Verdict::Drop {
        reason,
        dir: MetricDir::Ingress,
    }
}

/// Run a frame that arrived on `in_port` through the pipeline.
#[inline]
pub fn process(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    match t.port(in_port).map(|p| p.role) {
        Some(PortRole::Lxc) => from_container(b, in_port, t, s),
        Some(PortRole::Underlay) => from_netdev(b, t),
        None => drop_egress(DropReason::UnknownSender),
    }
}

/// `from-container`: a frame sent by the pod behind `in_port`.
#[inline]
pub fn from_container(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    let Ok(eth) = EthernetFrame::new_checked(b.data()) else {
        return drop_egress(DropReason::Invalid);
    };
    match eth.ethertype() {
        EtherType::Ipv4 => ipv4_from_container(b, in_port, t, s),
        EtherType::Arp => arp_respond(b.data_mut(), in_port, t),
        // The XDP program passes everything else to the kernel; seeing it here means the
        // steering and the pipeline disagree, so say which L3 it was.
        _ => drop_egress(DropReason::UnknownL3),
    }
}

/// bpf_lxc's ARP responder: answer a request for any address but the pod's own with the lxc
/// MAC, so the pod sends everything through us.
#[cold]
fn arp_respond(frame: &mut [u8], in_port: PortId, t: &Tables) -> Verdict {
    let Some(port) = t.port(in_port) else {
        return drop_egress(DropReason::UnknownSender);
    };
    let (eth_hdr, payload) = frame.split_at_mut(ethernet::HEADER_LEN);
    let mut pkt = match ArpPacket::new_checked(payload) {
        Ok(p) => p,
        Err(_) => return drop_egress(DropReason::Invalid),
    };
    if pkt.operation() != arp::OP_REQUEST {
        return drop_egress(DropReason::Invalid);
    }
    if pkt.target_ip() == port.endpoint_ip.octets() || pkt.sender_ip() == pkt.target_ip() {
        // Address-conflict probing for its own IP: nobody else owns it, stay silent.
        return drop_egress(DropReason::UnknownTarget);
    }
    let requester = pkt.sender_mac();
    pkt.make_reply(port.mac);
    let mut eth = EthernetFrame::new_checked(eth_hdr).expect("14 bytes");
    eth.set_dst(requester);
    eth.set_src(port.mac);
    Verdict::ArpReply { port: in_port }
}

/// The fields of a checked IPv4 packet the later steps need (the view borrows the frame).
struct Ip {
    src: [u8; 4],
    dst: [u8; 4],
    total_len: usize,
    dont_frag: bool,
    proto: u8,
    /// Ports (TCP/UDP) or ICMP identifier, for the flow hash.
    ports: u32,
}

/// Validate an IPv4 packet at `off` in the frame, including its L4 header when it has one.
#[inline]
fn check_ipv4(frame: &[u8], off: usize) -> Result<Ip, DropReason> {
    let ip = match Ipv4Packet::new_checked(&frame[off..]) {
        Ok(ip) => ip,
        Err(WireError::Truncated | WireError::Malformed) => return Err(DropReason::Invalid),
    };
    // L4 headers must be complete (conntrack keys on them); later fragments carry none.
    let ports = if ip.frag_offset() == 0 {
        match l4::parse(ip.protocol(), ip.payload()) {
            Ok(l4::L4::Tcp { sport, dport, .. } | l4::L4::Udp { sport, dport }) => {
                (sport as u32) << 16 | dport as u32
            }
            Ok(l4::L4::Icmp { id, .. }) => id as u32,
            Ok(l4::L4::Other(_)) => 0,
            Err(_) => return Err(DropReason::CtInvalidHdr),
        }
    } else {
        0
    };
    Ok(Ip {
        src: ip.src(),
        dst: ip.dst(),
        total_len: ip.total_len(),
        dont_frag: ip.dont_frag(),
        proto: ip.protocol(),
        ports,
    })
}

#[inline]
fn ipv4_from_container(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    let ip = match check_ipv4(b.data(), ethernet::HEADER_LEN) {
        Ok(ip) => ip,
        Err(r) => return drop_egress(r),
    };
    // Anti-spoofing: a pod may only send from its own address.
    match t.port(in_port) {
        Some(p) if p.endpoint_ip.octets() == ip.src => {}
        Some(_) => return drop_egress(DropReason::InvalidSip),
        None => return drop_egress(DropReason::UnknownSender),
    }
    if let Some(ep) = t.endpoint_v4(ip.dst) {
        return local_delivery(b.data_mut(), ep, MetricDir::Egress);
    }
    // Not local: in tunnel mode the ipcache names the destination's node.
    match t.overlay.mode {
        RoutingMode::Tunnel => match t.ipcache_v4(ip.dst).and_then(|i| i.tunnel_v4()) {
            Some(tunnel_ep) => encap(b, in_port, &ip, tunnel_ep, t, s),
            None => drop_egress(DropReason::Unroutable),
        },
        RoutingMode::Native => match t.routes.lookup(ip.dst) {
            Some(gw) => route_native(b, in_port, &ip, *gw, t),
            None => drop_egress(DropReason::Unroutable),
        },
    }
}

/// Local delivery (`ipv4_local_delivery`): TTL−1 and the pod's MACs.
#[inline]
fn local_delivery(frame: &mut [u8], ep: &EndpointEntry, dir: MetricDir) -> Verdict {
    let Some(out) = ep.port else {
        // A host address: the XDP program hands those to the kernel; this frame raced a
        // table change (or arrived through the overlay, which has no path to the host).
        return Verdict::Drop {
            reason: DropReason::HostUnreachable,
            dir,
        };
    };
    let mut ip = Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]).expect("checked");
    if ip.ttl() <= 1 {
        return drop_ingress(DropReason::TtlExceeded);
    }
    ip.decrement_ttl();
    let mut eth = EthernetFrame::new_checked(frame).expect("checked");
    eth.set_dst(ep.info.pod_mac());
    eth.set_src(ep.info.lxc_mac());
    Verdict::Deliver { port: out }
}

/// Too big for the underlay: ICMP fragmentation-needed back to the pod when it set DF (the
/// pod lowers its path MTU), else a counted drop — never silent loss.
#[cold]
fn too_big(b: &mut Buf<'_>, in_port: PortId, ip: &Ip, mtu: usize, t: &Tables) -> Verdict {
    if !ip.dont_frag {
        return drop_egress(DropReason::FragNeeded);
    }
    let Some(port) = t.port(in_port) else {
        return drop_egress(DropReason::UnknownSender);
    };
    let frame = b.data_mut();
    let n = icmp::make_error(
        &mut frame[ethernet::HEADER_LEN..],
        ip.total_len,
        t.overlay.router_ip,
        icmp::TYPE_DEST_UNREACH,
        icmp::CODE_FRAG_NEEDED,
        mtu as u32,
    );
    let mut eth = EthernetFrame::new_checked(&mut frame[..]).expect("checked");
    let pod = eth.src();
    eth.set_dst(pod);
    eth.set_src(port.mac);
    b.set_len(ethernet::HEADER_LEN + n);
    Verdict::IcmpReply {
        port: in_port,
        reason: DropReason::FragNeeded,
    }
}

/// Tunnel mode: wrap the frame in Ethernet/IPv4/UDP/VXLAN to `tunnel_ep`, VNI = the source
/// pod's security identity.
#[inline]
fn encap(
    b: &mut Buf<'_>,
    in_port: PortId,
    ip: &Ip,
    tunnel_ep: [u8; 4],
    t: &Tables,
    s: &mut Scratch,
) -> Verdict {
    let o = &t.overlay;
    let Some(nh) = t.nexthops.get(&tunnel_ep) else {
        // The control plane has not resolved the endpoint's MAC (yet).
        return drop_egress(DropReason::NoFib);
    };
    let mtu = o.underlay_mtu as usize - vxlan::OVERHEAD;
    if ip.total_len > mtu {
        return too_big(b, in_port, ip, mtu, t);
    }
    let src_identity = match t.endpoint_v4(ip.src) {
        // Sender rule: the host identity goes out as remote-node.
        Some(e) if e.info.sec_id == identity::RESERVED_HOST => identity::RESERVED_REMOTE_NODE,
        Some(e) => e.info.sec_id,
        None => return drop_egress(DropReason::UnknownSender),
    };
    // Strip Ethernet padding: the inner frame is exactly header + IP packet.
    let inner_len = ethernet::HEADER_LEN + ip.total_len;
    b.set_len(inner_len);
    if let Some(inner_dst) = nh.inner_dst_mac {
        let lxc = t.port(in_port).map(|p| p.mac).unwrap_or_default();
        let mut eth = EthernetFrame::new_checked(b.data_mut()).expect("checked");
        eth.set_dst(inner_dst);
        eth.set_src(lxc);
    }
    if !b.push_head(vxlan::ENCAP_LEN) {
        return drop_egress(DropReason::WriteError);
    }
    s.ip_id = s.ip_id.wrapping_add(1);
    let hash = vxlan::flow_hash(ip.src, ip.dst, ip.proto, ip.ports);
    vxlan::emit(
        b.data_mut(),
        &vxlan::Outer {
            dst_mac: nh.dst_mac,
            src_mac: nh.src_mac,
            src_ip: o.node_ip,
            dst_ip: tunnel_ep,
            ip_id: s.ip_id,
            sport: vxlan::flow_src_port(hash),
            dport: o.tunnel_port,
            vni: src_identity & vxlan::MAX_VNI,
        },
        inner_len,
    );
    Verdict::Encap { port: nh.port }
}

/// Native routing: forward unencapsulated to the owning node (`gw`), TTL−1.
#[inline]
fn route_native(b: &mut Buf<'_>, in_port: PortId, ip: &Ip, gw: [u8; 4], t: &Tables) -> Verdict {
    let Some(nh) = t.nexthops.get(&gw) else {
        return drop_egress(DropReason::NoFib);
    };
    let mtu = t.overlay.underlay_mtu as usize;
    if ip.total_len > mtu {
        return too_big(b, in_port, ip, mtu, t);
    }
    let frame = b.data_mut();
    let mut p = Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]).expect("checked");
    if p.ttl() <= 1 {
        return drop_egress(DropReason::TtlExceeded);
    }
    p.decrement_ttl();
    let mut eth = EthernetFrame::new_checked(frame).expect("checked");
    eth.set_dst(nh.dst_mac);
    eth.set_src(nh.src_mac);
    Verdict::Route { port: nh.port }
}

/// A frame from the node NIC: VXLAN to `from-overlay`, anything else is native-routed
/// traffic for a local pod (`from-netdev`).
#[inline]
pub fn from_netdev(b: &mut Buf<'_>, t: &Tables) -> Verdict {
    let Ok(eth) = EthernetFrame::new_checked(b.data()) else {
        return drop_ingress(DropReason::Invalid);
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return drop_ingress(DropReason::UnknownL3);
    }
    // One look at the outer IPv4 header: is it VXLAN for us, and where does its header sit?
    let vxlan_at = {
        let ip = match Ipv4Packet::new_checked(&b.data()[ethernet::HEADER_LEN..]) {
            Ok(ip) => ip,
            Err(_) => return drop_ingress(DropReason::Invalid),
        };
        let udp = ip.payload();
        let to_tunnel_port = ip.protocol() == ipv4::PROTO_UDP
            && ip.frag_offset() == 0
            && udp.len() >= 4
            && u16::from_be_bytes([udp[2], udp[3]]) == t.overlay.tunnel_port;
        if to_tunnel_port {
            if ip.is_fragment() {
                // Reassembling the underlay is not ours to do.
                return drop_ingress(DropReason::FragNosupport);
            }
            if ip.dst() != t.overlay.node_ip {
                return drop_ingress(DropReason::UnknownTarget);
            }
            if udp.len() < l4::UDP_HEADER_LEN {
                return drop_ingress(DropReason::Invalid);
            }
            let vxlan_off = ethernet::HEADER_LEN + ip.header_len() + l4::UDP_HEADER_LEN;
            Some((vxlan_off, ethernet::HEADER_LEN + ip.total_len()))
        } else {
            None
        }
    };
    match vxlan_at {
        Some((vxlan_off, end)) => from_overlay(b, vxlan_off, end, t),
        // Native routing ingress: a local pod.
        None => to_local_pod(b, t, |port| Verdict::RoutedIn { port }),
    }
}

/// `from-overlay`: the VXLAN header at `vxlan_off` (the outer IPv4 packet ends at `end`):
/// identity from the VNI, strip the outer headers, deliver.
#[inline]
fn from_overlay(b: &mut Buf<'_>, vxlan_off: usize, end: usize, t: &Tables) -> Verdict {
    let vni = match vxlan::parse(&b.data()[vxlan_off..end]) {
        Ok(h) => h.vni,
        Err(WireError::Truncated) => return drop_ingress(DropReason::Invalid),
        Err(WireError::Malformed) => return drop_ingress(DropReason::NoTunnelKey),
    };
    // Receiver rules: the VNI is the source identity; nobody may claim to be this host, and
    // an identity the cluster does not know is refused too.
    if vni == identity::RESERVED_HOST || vni == identity::RESERVED_UNKNOWN {
        return drop_ingress(DropReason::InvalidIdentity);
    }
    if !t.identities.contains(&vni) {
        return drop_ingress(DropReason::InvalidVni);
    }
    // Outer Ethernet padding is not part of the inner frame.
    b.set_len(end);
    b.pull_head(vxlan_off + vxlan::HEADER_LEN);
    let Ok(eth) = EthernetFrame::new_checked(b.data()) else {
        return drop_ingress(DropReason::Invalid);
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return drop_ingress(DropReason::UnknownL3);
    }
    to_local_pod(b, t, |port| Verdict::Decap { port })
}

/// The IPv4 frame in `b` came from another node (decapsulated or natively routed): validate
/// it and deliver it to its local pod; `arrived` names how it came.
#[inline]
fn to_local_pod(b: &mut Buf<'_>, t: &Tables, arrived: fn(PortId) -> Verdict) -> Verdict {
    let ip = match check_ipv4(b.data(), ethernet::HEADER_LEN) {
        Ok(ip) => ip,
        Err(r) => return drop_ingress(r),
    };
    match t.endpoint_v4(ip.dst) {
        Some(ep) => match local_delivery(b.data_mut(), ep, MetricDir::Ingress) {
            Verdict::Deliver { port } => arrived(port),
            v => v,
        },
        None => drop_ingress(DropReason::Unroutable),
    }
}

#[cfg(test)]
mod tests;
