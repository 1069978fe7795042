//! Conntrack steps (`ct_lookup4` / `ct_create4` of Cilium's `lib/conntrack.h`) over the
//! shared table the workers write in place.

use abi::ct::{CT_NODE_PORT, CtTuple4, LIFETIME_NONTCP, LIFETIME_TCP_SYN, TUPLE_F_IN};
use tables::Tables;
use tables::ct::CtState;

use super::Scratch;
use super::flow::Ip;
use crate::wire::ipv4;

/// What the egress conntrack lookup found.
pub(super) enum Egress {
    /// Not a reply: the pod's own connection (new or established); policy decides.
    Original,
    /// A reply of a connection the pod accepted: no policy.
    Reply,
    /// A reply of a NodePort/ExternalIP connection served by this pod: reverse-translate and
    /// send back to the client.
    NodePortReply(CtState),
}

/// Conntrack on `from-container` (`CT_EGRESS`): is this a reply to a connection the pod
/// accepted (an IN entry)? The pod's own connections get their OUT entry only after policy
/// allowed them ([`ct_forward`]).
#[inline]
pub(super) fn ct_egress(ip: &Ip, t: &Tables, s: &Scratch) -> Egress {
    let reply = CtTuple4::connection(ip.dst, ip.src, ip.dport, ip.sport, ip.proto, TUPLE_F_IN);
    match t.ct.lookup(&reply, s.now) {
        Some(hit) => {
            t.ct.touch(&hit, true, ip.tcp_flags, s.now, false);
            if hit.state.flags & CT_NODE_PORT != 0 {
                Egress::NodePortReply(hit.state)
            } else {
                Egress::Reply
            }
        }
        None => Egress::Original,
    }
}

/// Create `key` with `st` and count this packet on it (`service`: an SVC entry).
#[inline]
pub(super) fn ct_create(
    key: &CtTuple4,
    st: &CtState,
    ip: &Ip,
    service: bool,
    t: &Tables,
    s: &Scratch,
) {
    if let Some(hit) =
        t.ct.create(key, st, s.now.wrapping_add(new_lifetime(ip)), s.now)
    {
        t.ct.touch(&hit, false, ip.tcp_flags, s.now, service);
    }
}

/// A packet in the original direction of `key`: refresh its entry, or create it with `st`.
#[inline]
pub(super) fn ct_forward(key: &CtTuple4, st: &CtState, ip: &Ip, t: &Tables, s: &Scratch) {
    match t.ct.lookup(key, s.now) {
        Some(hit) => {
            t.ct.touch(&hit, false, ip.tcp_flags, s.now, false);
        }
        None => ct_create(key, st, ip, false, t, s),
    }
}

/// The lifetime of a just-created entry before its first update.
#[inline]
pub(super) fn new_lifetime(ip: &Ip) -> u32 {
    if ip.proto == ipv4::PROTO_TCP {
        LIFETIME_TCP_SYN
    } else {
        LIFETIME_NONTCP
    }
}
