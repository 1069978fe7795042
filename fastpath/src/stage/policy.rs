//! The policy verdict (`policy_can_egress4` / `policy_can_access_ingress`): one lookup in the
//! endpoint's `cilium_policy_v3_<id>` contents, counted per entry and per verdict.

use abi::policy::DIR_EGRESS;
use abi::{DropReason, MetricDir};
use tables::Tables;
use tables::policy::{
    PolicyVerdict, STAT_ALLOWED_EGRESS, STAT_ALLOWED_INGRESS, STAT_DENIED_EGRESS,
    STAT_DENIED_INGRESS,
};

use super::flow::Ip;
use super::{Scratch, Verdict};

/// The policy verdict of endpoint `ep_id` for `ip` with the remote identity `id` in `dir`
/// ([`DIR_INGRESS`]/[`DIR_EGRESS`]), counted per entry and per verdict. A denied packet
/// becomes Cilium's drop: 133 (no allow), 181 (deny rule), or 157 for a later fragment
/// (no ports to judge). Allowed: the allowing entry's counter slot (what conntrack caches).
#[inline]
pub(super) fn policy(
    t: &Tables,
    s: &Scratch,
    ep_id: u16,
    dir: u8,
    id: u32,
    ip: &Ip,
) -> Result<u32, Verdict> {
    let (allowed, denied, metric_dir) = if dir == DIR_EGRESS {
        (STAT_ALLOWED_EGRESS, STAT_DENIED_EGRESS, MetricDir::Egress)
    } else {
        (
            STAT_ALLOWED_INGRESS,
            STAT_DENIED_INGRESS,
            MetricDir::Ingress,
        )
    };
    let (stats, len) = (&t.policy_stats, ip.total_len);
    match t.policy.verdict(ep_id, dir, id, ip.proto, ip.policy_port()) {
        PolicyVerdict::Allow { slot } => {
            stats.count(s.worker, slot, len);
            stats.count(s.worker, allowed, len);
            Ok(slot)
        }
        PolicyVerdict::Deny { reason, slot } => {
            stats.count(s.worker, slot, len);
            stats.count(s.worker, denied, len);
            let reason = if ip.later_fragment && reason == DropReason::Policy {
                DropReason::FragNosupport
            } else {
                reason
            };
            Err(Verdict::Drop {
                reason,
                dir: metric_dir,
            })
        }
    }
}

/// A packet of an established connection whose allow verdict its conntrack entry cached at
/// the current table generation: no lookup, but counted as the lookup would have counted it
/// (on the entry that allowed the connection, and as allowed in `dir`).
#[inline]
pub(super) fn policy_cached(t: &Tables, s: &Scratch, dir: u8, slot: u32, ip: &Ip) {
    let allowed = if dir == DIR_EGRESS {
        STAT_ALLOWED_EGRESS
    } else {
        STAT_ALLOWED_INGRESS
    };
    t.policy_stats.count(s.worker, slot, ip.total_len);
    t.policy_stats.count(s.worker, allowed, ip.total_len);
}
