//! `from-netdev` (`cil_from_netdev` of Cilium's `bpf_host.c`): a frame from the node NIC.
//! VXLAN to this node's tunnel port, with outer headers Linux would accept, goes on to
//! [`super::from_overlay`]; anything else is NodePort/ExternalIP traffic from outside
//! ([`super::nodeport`]), natively routed traffic for a local pod, or the reply of a SNATed
//! NodePort connection. Direction: ingress.

use abi::identity;
use abi::{DropReason, MetricDir};
use tables::{PortId, Tables};

use super::flow::check_ipv4;
use super::{Scratch, Verdict, drop, from_overlay, nodeport};
use crate::wire::{Buf, EtherType, EthernetFrame, Ipv4Packet, ethernet, ipv4, l4};

/// The metrics direction of this step.
const DIR: MetricDir = MetricDir::Ingress;

#[inline]
fn dropd(reason: DropReason) -> Verdict {
    drop(reason, DIR)
}

/// A frame from the node NIC: VXLAN to `from-overlay`; anything else is native-routed
/// traffic for a local pod, NodePort/ExternalIP traffic, or a reply of a SNATed NodePort
/// connection (`from-netdev`).
#[inline]
pub fn from_netdev(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    let Ok(eth) = EthernetFrame::new_checked(b.data()) else {
        return dropd(DropReason::Invalid);
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return dropd(DropReason::UnknownL3);
    }
    // Not addressed to this NIC (a flooded frame meant for another host): not ours, as
    // ip_rcv ignores PACKET_OTHERHOST; delivering it would duplicate the intended hop's copy.
    match t.port(in_port) {
        Some(p) if p.mac == eth.dst() => {}
        _ => return dropd(DropReason::InvalidDmac),
    }
    // One look at the outer IPv4 header: is it VXLAN for us, and where does its header sit?
    // What Linux's ip_rcv/udp_rcv check before a VXLAN socket sees a datagram is checked
    // here too (docs/overlay.md "Outer headers"): header checksum, a UDP length that fits
    // the IP payload (a shorter one trims it), a non-zero UDP checksum that verifies.
    let vxlan_at = {
        let ip = match Ipv4Packet::new_checked(&b.data()[ethernet::HEADER_LEN..]) {
            Ok(ip) => ip,
            Err(_) => return dropd(DropReason::Invalid),
        };
        let udp = ip.payload();
        let to_tunnel_port = ip.protocol() == ipv4::PROTO_UDP
            && ip.frag_offset() == 0
            && udp.len() >= 4
            && u16::from_be_bytes([udp[2], udp[3]]) == t.overlay.tunnel_port;
        if to_tunnel_port {
            if ip.is_fragment() {
                // Reassembling the underlay is not ours to do.
                return dropd(DropReason::FragNosupport);
            }
            if ip.dst() != t.overlay.node_ip {
                return dropd(DropReason::UnknownTarget);
            }
            if !ip.verify_checksum() {
                return dropd(DropReason::Invalid);
            }
            let Some(ulen) = l4::udp_length(udp) else {
                return dropd(DropReason::Invalid);
            };
            if !l4::udp_checksum_ok(ip.src(), ip.dst(), &udp[..ulen]) {
                return dropd(DropReason::Invalid);
            }
            let udp_off = ethernet::HEADER_LEN + ip.header_len();
            Some((udp_off + l4::UDP_HEADER_LEN, udp_off + ulen))
        } else {
            None
        }
    };
    match vxlan_at {
        Some((vxlan_off, end)) => from_overlay::from_overlay(b, vxlan_off, end, t, s),
        None => {
            let ip = match check_ipv4(b.data(), ethernet::HEADER_LEN) {
                Ok(ip) => ip,
                Err(r) => return dropd(r),
            };
            // NodePort / ExternalIP from outside the cluster (nodeport_lb4).
            if ip.has_ports()
                && let Some((key, master)) = t.lb.frontend(ip.dst, ip.dport, ip.proto)
            {
                return nodeport::nodeport_lb4(b, ip, key, master, in_port, t, s);
            }
            // Native routing ingress: the source's identity comes from the ipcache.
            let src_id = t
                .ipcache_v4(ip.src)
                .map_or(identity::RESERVED_WORLD, |i| i.sec_identity);
            from_overlay::to_local_pod(b, &ip, src_id, t, s, |port| Verdict::RoutedIn { port })
        }
    }
}
