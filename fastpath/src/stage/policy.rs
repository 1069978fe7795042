//! The policy verdict (`policy_can_egress4` / `policy_can_access_ingress`): one lookup in the
//! endpoint's `cilium_policy_v2_<id>` contents, counted per entry and per verdict.

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
/// (no ports to judge).
#[inline]
pub(super) fn policy(
    t: &Tables,
    s: &Scratch,
    ep_id: u16,
    dir: u8,
    id: u32,
    ip: &Ip,
) -> Result<(), Verdict> {
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
            Ok(())
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
