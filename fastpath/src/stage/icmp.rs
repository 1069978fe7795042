//! ICMP errors the node sends about a packet it cannot forward: fragmentation needed (the
//! overlay MTU), port unreachable (a service without backends). The frame is turned into
//! the error in place; the original counts as dropped, in the direction of the step that
//! refused it.

use abi::{DropReason, MetricDir};
use tables::{PortId, Tables};

use super::flow::Ip;
use super::{Verdict, drop};
use crate::wire::{Buf, EthernetFrame, ethernet, icmp, ipv4};

/// Too big for the underlay: ICMP fragmentation-needed back to the pod when it set DF (the
/// pod lowers its path MTU), else a counted drop — never silent loss. Frames that did not
/// come from a pod (`in_port` `None`: NodePort traffic) are dropped.
#[cold]
pub(super) fn too_big(
    b: &mut Buf<'_>,
    in_port: Option<PortId>,
    ip: &Ip,
    mtu: usize,
    t: &Tables,
    dir: MetricDir,
) -> Verdict {
    let Some(in_port) = in_port.filter(|_| ip.dont_frag) else {
        return drop(DropReason::FragNeeded, dir);
    };
    let Some(port) = t.port(in_port) else {
        return drop(DropReason::UnknownSender, dir);
    };
    icmp_error(
        b,
        ip,
        (in_port, port.mac),
        t.overlay.router_ip,
        (icmp::TYPE_DEST_UNREACH, icmp::CODE_FRAG_NEEDED, mtu as u32),
        DropReason::FragNeeded,
        dir,
    )
}

/// Turn the frame into an ICMP error about it (`kind` = type, code, rest-of-header word) from
/// `from`, addressed back to the sender's MAC from `back.1`, sent on port `back.0`; the
/// original counts as dropped for `reason`. Grows the frame when the error (with its quote)
/// is longer than the original; without room it is a plain drop.
#[cold]
pub(super) fn icmp_error(
    b: &mut Buf<'_>,
    ip: &Ip,
    back: (PortId, abi::MacAddr),
    from: [u8; 4],
    kind: (u8, u8, u32),
    reason: DropReason,
    dir: MetricDir,
) -> Verdict {
    let quote = ip.total_len.min(icmp::MAX_ERROR_LEN - ipv4::HEADER_LEN - 8);
    let need = ethernet::HEADER_LEN + ipv4::HEADER_LEN + 8 + quote;
    if b.len() < need && !b.set_len(need) {
        return drop(reason, dir);
    }
    let frame = b.data_mut();
    if let Some((addr, port)) = ip.orig_dst {
        crate::wire::nat::rewrite(
            &mut frame[ethernet::HEADER_LEN..],
            crate::wire::nat::Side::Dst,
            addr,
            port,
        );
    }
    let n = icmp::make_error(
        &mut frame[ethernet::HEADER_LEN..],
        ip.total_len,
        from,
        kind.0,
        kind.1,
        kind.2,
    );
    let mut eth = EthernetFrame::new_checked(&mut frame[..]).expect("checked");
    let sender = eth.src();
    eth.set_dst(sender);
    eth.set_src(back.1);
    b.set_len(ethernet::HEADER_LEN + n);
    Verdict::IcmpReply {
        port: back.0,
        reason,
        dir,
    }
}
