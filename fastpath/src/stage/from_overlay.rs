//! `from-overlay` (`cil_from_overlay` of Cilium's `bpf_overlay.c`): a VXLAN frame from
//! another node, its outer headers already checked by [`super::from_netdev`]. The VNI is the
//! source identity (not the host, not unknown, one the cluster knows); the outer headers
//! are stripped and the inner frame delivered to its pod. Direction: ingress.

use abi::identity;
use abi::{DropReason, MetricDir};
use tables::ct::CtState;
use tables::{PortId, Tables};

use super::flow::{Ip, check_ipv4};
use super::to_container::local_delivery;
use super::{Scratch, Verdict, drop, nodeport};
use crate::wire::{Buf, EtherType, EthernetFrame, WireError, ethernet, vxlan};

/// The metrics direction of this step.
const DIR: MetricDir = MetricDir::Ingress;

#[inline]
fn dropd(reason: DropReason) -> Verdict {
    drop(reason, DIR)
}

/// `from-overlay`: the VXLAN header at `vxlan_off` (the outer IPv4 packet ends at `end`):
/// identity from the VNI, strip the outer headers, deliver.
#[inline]
pub(super) fn from_overlay(
    b: &mut Buf<'_>,
    vxlan_off: usize,
    end: usize,
    t: &Tables,
    s: &mut Scratch,
) -> Verdict {
    let vni = match vxlan::parse(&b.data()[vxlan_off..end]) {
        Ok(h) => h.vni,
        Err(WireError::Truncated) => return dropd(DropReason::Invalid),
        Err(WireError::Malformed) => return dropd(DropReason::NoTunnelKey),
    };
    // Receiver rules: the VNI is the source identity; nobody may claim to be this host, and
    // an identity the cluster does not know is refused too.
    if vni == identity::RESERVED_HOST || vni == identity::RESERVED_UNKNOWN {
        return dropd(DropReason::InvalidIdentity);
    }
    if !t.identities.contains(&vni) {
        return dropd(DropReason::InvalidVni);
    }
    // Outer Ethernet padding is not part of the inner frame.
    b.set_len(end);
    b.pull_head(vxlan_off + vxlan::HEADER_LEN);
    let Ok(eth) = EthernetFrame::new_checked(b.data()) else {
        return dropd(DropReason::Invalid);
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return dropd(DropReason::UnknownL3);
    }
    let ip = match check_ipv4(b.data(), ethernet::HEADER_LEN) {
        Ok(ip) => ip,
        Err(r) => return dropd(r),
    };
    to_local_pod(b, &ip, vni, t, s, |port| Verdict::Decap { port })
}

/// The IPv4 frame in `b` came from another node (decapsulated or natively routed) with
/// source identity `src_id`: deliver it to its local pod, or — addressed to this node —
/// reverse-translate it if it is the reply of a SNATed NodePort connection. `arrived` names
/// how it came.
#[inline]
pub(super) fn to_local_pod(
    b: &mut Buf<'_>,
    ip: &Ip,
    src_id: u32,
    t: &Tables,
    s: &mut Scratch,
    arrived: fn(PortId) -> Verdict,
) -> Verdict {
    let Some(ep) = t.endpoint_v4(ip.dst) else {
        return dropd(DropReason::Unroutable);
    };
    match ep.port {
        Some(out) => {
            let st = CtState {
                src_sec_id: src_id,
                ..Default::default()
            };
            match local_delivery(b, ip, st, ep, out, t, s) {
                Verdict::Deliver { port } => arrived(port),
                v => v,
            }
        }
        None if ip.tracked => nodeport::nodeport_snat_reply(b, ip, t, s),
        None => dropd(DropReason::HostUnreachable),
    }
}
