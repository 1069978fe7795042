//! `to-container`: delivery to a pod of this node (`ipv4_local_delivery` and the
//! destination's ingress policy program Cilium tail-calls). Direction: ingress, whoever sent
//! the packet — a same-node pod, another node, or an outside client of a NodePort.

use abi::MetricDir;
use abi::ct::TUPLE_F_IN;
use abi::policy::DIR_INGRESS;
use tables::ct::CtState;
use tables::{EndpointEntry, PortId, Tables};

use super::ct::{ct_policy_forward, forward_key};
use super::flow::Ip;
use super::forward::l3_forward;
use super::{Scratch, Verdict, lb};
use crate::wire::{Buf, ethernet};

/// The metrics direction of this step.
const DIR: MetricDir = MetricDir::Ingress;

/// Local delivery (`ipv4_local_delivery` + the `to-container` step): the packet `ip` from
/// identity `src.src_sec_id` goes to the pod `ep` behind port `out`. A reply to a connection the pod made skips
/// policy, and if it went through a service gets its source rewritten back to the service
/// (reverse NAT); anything else must pass the pod's ingress policy, and a new connection then
/// gets an IN entry with state `src`. Then TTL−1 and the pod's MACs.
#[inline]
pub(super) fn local_delivery(
    b: &mut Buf<'_>,
    ip: &Ip,
    src: CtState,
    ep: &EndpointEntry,
    out: PortId,
    t: &Tables,
    s: &Scratch,
) -> Verdict {
    // One conntrack probe: the reply of a connection the pod made (an OUT entry), or this
    // connection's IN entry.
    let fwd = ip.tracked.then(|| forward_key(ip, TUPLE_F_IN));
    let (reply_hit, fwd_hit) = match &fwd {
        Some(k) => t.ct.lookup_flow(k, s.now),
        None => (None, None),
    };
    match reply_hit {
        Some(hit) => {
            t.ct.touch(&hit, true, ip.tcp_flags, s.now, false);
            if hit.state.rev_nat.0 != 0
                && let Some(fe) = t.lb.revnat.get(&hit.state.rev_nat.0)
            {
                lb::rev_nat_src(&mut b.data_mut()[ethernet::HEADER_LEN..], fe);
            }
        }
        None => {
            let who = (ep.info.lxc_id, DIR_INGRESS, src.src_sec_id);
            if let Err(v) = ct_policy_forward(fwd.as_ref(), fwd_hit, &src, who, ip, t, s) {
                return v;
            }
        }
    }
    if let Err(v) = l3_forward(b, ip.total_len, ep.info.pod_mac(), ep.info.lxc_mac(), DIR) {
        return v;
    }
    Verdict::Deliver { port: out }
}
