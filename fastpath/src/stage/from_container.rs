//! `from-container` (`cil_from_container` of Cilium's `bpf_lxc.c`): a frame the pod behind
//! an lxc device sent. Validate L2 → the ARP responder, or IPv4 → validate L3/L4 → source
//! address and MAC checks → services (`lb4_local`) → egress conntrack → egress policy →
//! local delivery ([`super::to_container`]) or off the node ([`super::forward`]).
//! Direction: egress.

use abi::ct::TUPLE_F_OUT;
use abi::identity;
use abi::lb::RevNat;
use abi::policy::DIR_EGRESS;
use abi::{DropReason, MetricDir};
use tables::ct::CtState;
use tables::{PortId, Tables};

use super::ct::{Egress, ct_egress, ct_policy_forward, forward_key};
use super::flow::check_ipv4;
use super::forward::to_remote_node;
use super::to_container::local_delivery;
use super::{Scratch, Verdict, drop, lb, nodeport};
use crate::wire::{ArpPacket, Buf, EtherType, EthernetFrame, arp, ethernet};

/// The metrics direction of this step.
const DIR: MetricDir = MetricDir::Egress;

#[inline]
fn dropd(reason: DropReason) -> Verdict {
    drop(reason, DIR)
}

/// `from-container`: a frame sent by the pod behind `in_port`.
#[inline]
pub fn from_container(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    let Ok(eth) = EthernetFrame::new_checked(b.data()) else {
        return dropd(DropReason::Invalid);
    };
    // A source MAC that is a group address is never a sender's (IEEE 802).
    if eth.src().is_multicast() {
        return dropd(DropReason::InvalidSmac);
    }
    match eth.ethertype() {
        EtherType::Ipv4 => {
            // IP is routed by the gateway: a frame not addressed to the lxc (the MAC the pod's
            // ARP got) is not ours to forward, as a router's ip_rcv ignores PACKET_OTHERHOST.
            match t.port(in_port) {
                Some(p) if p.mac == eth.dst() => {}
                Some(_) => return dropd(DropReason::InvalidDmac),
                None => return dropd(DropReason::UnknownSender),
            }
            ipv4_from_container(b, in_port, t, s)
        }
        EtherType::Arp => arp_respond(b.data_mut(), in_port, t),
        // The XDP program passes everything else to the kernel; seeing it here means the
        // steering and the pipeline disagree, so say which L3 it was.
        _ => dropd(DropReason::UnknownL3),
    }
}

/// bpf_lxc's ARP responder: answer a request for any address but the pod's own with the lxc
/// MAC, so the pod sends everything through us.
#[cold]
fn arp_respond(frame: &mut [u8], in_port: PortId, t: &Tables) -> Verdict {
    let Some(port) = t.port(in_port) else {
        return dropd(DropReason::UnknownSender);
    };
    let (eth_hdr, payload) = frame.split_at_mut(ethernet::HEADER_LEN);
    let mut pkt = match ArpPacket::new_checked(payload) {
        Ok(p) => p,
        Err(_) => return dropd(DropReason::Invalid),
    };
    if pkt.operation() != arp::OP_REQUEST {
        return dropd(DropReason::Invalid);
    }
    if pkt.target_ip() == port.endpoint_ip.octets() || pkt.sender_ip() == pkt.target_ip() {
        // Address-conflict probing for its own IP: nobody else owns it, stay silent.
        return dropd(DropReason::UnknownTarget);
    }
    let requester = pkt.sender_mac();
    pkt.make_reply(port.mac);
    let mut eth = EthernetFrame::new_checked(eth_hdr).expect("14 bytes");
    eth.set_dst(requester);
    eth.set_src(port.mac);
    Verdict::ArpReply { port: in_port }
}

#[inline]
fn ipv4_from_container(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    let mut ip = match check_ipv4(b.data(), ethernet::HEADER_LEN) {
        Ok(ip) => ip,
        Err(r) => return dropd(r),
    };
    // Anti-spoofing: a pod may only send from its own address.
    match t.port(in_port) {
        Some(p) if p.endpoint_ip.octets() == ip.src => {}
        Some(_) => return dropd(DropReason::InvalidSip),
        None => return dropd(DropReason::UnknownSender),
    }
    let (src_id, src_ep) = match t.endpoint_v4(ip.src) {
        // ... and from its own MAC (the one cilium_lxc has for it).
        Some(e)
            if e.info.pod_mac() != EthernetFrame::new_checked(b.data()).expect("checked").src() =>
        {
            return dropd(DropReason::InvalidSmac);
        }
        Some(e) => (e.info.sec_id, e.info.lxc_id),
        None => return dropd(DropReason::UnknownSender),
    };
    // Services (lb4_local): a frontend is translated to a backend before anything else
    // looks at the destination.
    let mut rev_nat = RevNat(0);
    if ip.has_ports()
        && let Some((key, master)) = t.lb.frontend(ip.dst, ip.dport, ip.proto)
    {
        match lb::lb4_local(b, &mut ip, key, master, in_port, src_id, t, s) {
            Ok(r) => rev_nat = r,
            Err(v) => return v,
        }
    }
    // One conntrack probe: a reply to a connection the pod accepted, or the pod's own
    // connection's entry (new: none).
    let fwd = ip.tracked.then(|| forward_key(&ip, TUPLE_F_OUT));
    let (reply, fwd_hit) = match &fwd {
        Some(k) => match ct_egress(k, &ip, t, s) {
            Egress::NodePortReply(st) => return nodeport::nodeport_reply(b, &st, t),
            Egress::Reply => (true, None),
            Egress::Original(h) => (false, h),
        },
        None => (false, None),
    };
    let dst_ep = t.endpoint_v4(ip.dst);
    // Not local: one ipcache lookup serves the policy (identity) and the forwarding (tunnel
    // endpoint).
    let remote = match dst_ep {
        Some(_) => None,
        None => t.ipcache_v4(ip.dst),
    };
    if !reply {
        // Egress policy on the (translated) destination's identity, before encap or
        // delivery; only then does the connection get (or refresh) its OUT entry.
        let dst_id = match (dst_ep, remote) {
            (Some(e), _) => e.info.sec_id,
            (None, Some(i)) => i.sec_identity,
            (None, None) => identity::RESERVED_WORLD,
        };
        let st = CtState {
            rev_nat,
            src_sec_id: src_id,
            ..Default::default()
        };
        let who = (src_ep, DIR_EGRESS, dst_id);
        if let Err(v) = ct_policy_forward(fwd.as_ref(), fwd_hit, &st, who, &ip, t, s) {
            return v;
        }
    }
    if let Some(ep) = dst_ep {
        let Some(out) = ep.port else {
            // A host address: the XDP program hands those to the kernel; this frame raced a
            // table change.
            return dropd(DropReason::HostUnreachable);
        };
        let st = CtState {
            src_sec_id: src_id,
            ..Default::default()
        };
        return local_delivery(b, &ip, st, ep, out, t, s);
    }
    to_remote_node(b, Some(in_port), &ip, remote, src_id, DIR, t, s)
}
