//! The pipeline, over byte buffers, in Cilium's stage order.
//!
//! `from-container` (bpf_lxc `cil_from_container`): validate L2 → ARP responder or IPv4 →
//! validate L3 (and L4 headers, which conntrack will key on) → source-address check →
//! endpoint lookup in `cilium_lxc` → local delivery (`ipv4_local_delivery`: TTL−1, MACs).
//! Later stages (ipcache, conntrack, service DNAT, policy, encap) slot in between the lookup
//! and delivery in that order.
//!
//! A stage reads tables, rewrites headers in place and returns a [`Verdict`]; it never sends
//! or frees a frame. The worker acts on verdicts in one place, where drops are counted
//! (Cilium's single `out:` exit). Nothing here allocates, locks or logs.

use control::maps::{DropReason, MetricDir};
use control::tables::{PortId, Tables};

use crate::wire::{
    self, ArpPacket, EtherType, EthernetFrame, Ipv4Packet, WireError, arp, ethernet,
};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward to a pod: transmit on `port` (the frame was rewritten in place).
    Deliver { port: PortId },
    /// An ARP reply built in place: transmit back on the port it came from.
    ArpReply { port: PortId },
    /// Drop, counted under Cilium's reason and metrics direction.
    Drop { reason: DropReason, dir: MetricDir },
}

#[inline]
fn drop_egress(reason: DropReason) -> Verdict {
    Verdict::Drop {
        reason,
        dir: MetricDir::Egress,
    }
}

/// Run a frame that arrived from the pod behind `in_port` through the pipeline.
#[inline]
pub fn from_container(frame: &mut [u8], in_port: PortId, t: &Tables) -> Verdict {
    let Ok(eth) = EthernetFrame::new_checked(&mut *frame) else {
        return drop_egress(DropReason::Invalid);
    };
    match eth.ethertype() {
        EtherType::Ipv4 => ipv4_from_container(frame, in_port, t),
        EtherType::Arp => arp_respond(frame, in_port, t),
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

#[inline]
fn ipv4_from_container(frame: &mut [u8], in_port: PortId, t: &Tables) -> Verdict {
    let mut ip = match Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]) {
        Ok(ip) => ip,
        Err(WireError::Truncated | WireError::Malformed) => {
            return drop_egress(DropReason::Invalid);
        }
    };
    // Anti-spoofing: a pod may only send from its own address.
    match t.port(in_port) {
        Some(p) if p.endpoint_ip.octets() == ip.src() => {}
        Some(_) => return drop_egress(DropReason::InvalidSip),
        None => return drop_egress(DropReason::UnknownSender),
    }
    // L4 headers must be complete (conntrack keys on them); later fragments carry none.
    if ip.frag_offset() == 0 && wire::l4::parse(ip.protocol(), ip.payload()).is_err() {
        return drop_egress(DropReason::CtInvalidHdr);
    }
    let Some(ep) = t.endpoint_v4(ip.dst()) else {
        return drop_egress(DropReason::Unroutable);
    };
    let Some(out) = ep.port else {
        // A host address: the XDP program hands those to the kernel; this frame raced a
        // table change.
        return drop_egress(DropReason::HostUnreachable);
    };
    // to-container / local delivery.
    if ip.ttl() <= 1 {
        return Verdict::Drop {
            reason: DropReason::TtlExceeded,
            dir: MetricDir::Ingress,
        };
    }
    ip.decrement_ttl();
    let mut eth = EthernetFrame::new_checked(&mut frame[..]).expect("checked above");
    eth.set_dst(ep.info.pod_mac());
    eth.set_src(ep.info.lxc_mac());
    Verdict::Deliver { port: out }
}

#[cfg(test)]
mod tests;
