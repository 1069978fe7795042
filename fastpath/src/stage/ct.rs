//! Conntrack steps (`ct_lookup4` / `ct_create4` of Cilium's `lib/conntrack.h`) over the
//! shared table the workers write in place.

use abi::ct::{CT_NODE_PORT, CtTuple4, LIFETIME_NONTCP, LIFETIME_TCP_SYN};
use tables::Tables;
use tables::ct::{CtHit, CtState};

use super::flow::Ip;
use super::policy::{policy, policy_cached};
use super::{Scratch, Verdict};
use crate::wire::ipv4;

/// What the egress conntrack lookup found.
pub(super) enum Egress {
    /// Not a reply: the pod's own connection, new (`None`) or established (its OUT entry);
    /// policy decides ([`ct_policy_forward`]).
    Original(Option<CtHit>),
    /// A reply of a connection the pod accepted: no policy.
    Reply,
    /// A reply of a NodePort/ExternalIP connection served by this pod: reverse-translate and
    /// send back to the client.
    NodePortReply(CtState),
}

/// Conntrack on `from-container` (`CT_EGRESS`), one probe for both directions: is this a
/// reply to a connection the pod accepted (an IN entry)? If not, the pod's own connection's
/// OUT entry (`fwd`) if it has one; it is created or refreshed only after policy allowed the
/// packet ([`ct_policy_forward`]).
#[inline]
pub(super) fn ct_egress(fwd: &CtTuple4, ip: &Ip, t: &Tables, s: &Scratch) -> Egress {
    match t.ct.lookup_flow(fwd, s.now) {
        (Some(hit), _) => {
            t.ct.touch(&hit, true, ip.tcp_flags, s.now, false);
            if hit.state.flags & CT_NODE_PORT != 0 {
                Egress::NodePortReply(hit.state)
            } else {
                Egress::Reply
            }
        }
        (None, f) => Egress::Original(f),
    }
}

/// The forward key of `ip` with direction `flags` (`TUPLE_F_OUT` from a pod, `TUPLE_F_IN`
/// into one).
#[inline]
pub(super) fn forward_key(ip: &Ip, flags: u8) -> CtTuple4 {
    CtTuple4::connection(ip.src, ip.dst, ip.sport, ip.dport, ip.proto, flags)
}

/// Policy for a packet in the original direction, then its conntrack entry. An established
/// connection (`hit`) whose entry cached an allow verdict skips the policy lookup (counted as
/// if it had looked) when nothing the verdict depends on can have changed:
/// - the tables are the version it was decided at (endpoints, identities, ipcache and
///   policy maps all come from them);
/// - the entry records the identity the verdict was for (`st.src_sec_id`: the pod's own on
///   egress — the remote one comes from the tables; the sender's on ingress — it comes from
///   the packet, e.g. a VNI, and may differ per packet);
/// - the protocol keeps the policy's port in the key (TCP, UDP; an ICMP entry's packets may
///   have different types).
///
/// Otherwise the lookup decides, and an allowed packet creates or refreshes `key` (untracked
/// packets have no entry: `key` None) and caches the verdict in it.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn ct_policy_forward(
    key: Option<&CtTuple4>,
    hit: Option<CtHit>,
    st: &CtState,
    (ep_id, dir, remote_id): (u16, u8, u32),
    ip: &Ip,
    t: &Tables,
    s: &Scratch,
) -> Result<(), Verdict> {
    let cacheable = matches!(ip.proto, ipv4::PROTO_TCP | ipv4::PROTO_UDP);
    let same_identity = |h: &CtHit| cacheable && h.state.src_sec_id == st.src_sec_id;
    if let Some(h) = &hit
        && same_identity(h)
        && let Some(slot) = h.cached_allow(t.generation)
    {
        policy_cached(t, s, dir, slot, ip);
        t.ct.touch(h, false, ip.tcp_flags, s.now, false);
        return Ok(());
    }
    let slot = policy(t, s, ep_id, dir, remote_id, ip)?;
    let Some(key) = key else {
        return Ok(());
    };
    let hit = match hit {
        Some(h) => {
            t.ct.touch(&h, false, ip.tcp_flags, s.now, false);
            Some(h)
        }
        None => ct_create(key, st, ip, false, t, s),
    };
    if let Some(h) = hit
        && same_identity(&h)
    {
        t.ct.cache_policy(&h, t.generation, slot);
    }
    Ok(())
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
) -> Option<CtHit> {
    let hit =
        t.ct.create(key, st, s.now.wrapping_add(new_lifetime(ip)), s.now)?;
    t.ct.touch(&hit, false, ip.tcp_flags, s.now, service);
    Some(hit)
}

/// A packet in the original direction of `key`: refresh its entry, or create it with `st`.
#[inline]
pub(super) fn ct_forward(key: &CtTuple4, st: &CtState, ip: &Ip, t: &Tables, s: &Scratch) {
    match t.ct.lookup(key, s.now) {
        Some(hit) => {
            t.ct.touch(&hit, false, ip.tcp_flags, s.now, false);
        }
        None => {
            ct_create(key, st, ip, false, t, s);
        }
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
