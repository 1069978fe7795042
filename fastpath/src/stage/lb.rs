//! The load balancer: Cilium's `lb4_local` (pods → services), `nodeport_lb4` (outside →
//! NodePort/ExternalIP, SNAT to the node for remote backends) and the reverse translations.
//!
//! Backend choice for a new connection: session affinity first (a live
//! `cilium_lb4_affinity` entry whose backend `cilium_lb_affinity_match` still lists), then
//! the service's algorithm — Maglev (the flow's slot in the service's table) or random (a
//! slot 1..=count). The choice is pinned by the service conntrack entry, so every later
//! packet of the connection goes to the same backend, even after the backend stopped being
//! offered to new connections (terminating), while a new SYN on a closed or terminating
//! entry chooses again.
//!
//! NodePort/ExternalIP from outside and the NodePort replies are in [`super::nodeport`].

use abi::ct::CtTuple4;
use abi::lb::{
    ALG_DEFAULT, ALG_MAGLEV, AffinityMatchKey, Lb4Backend, Lb4Key, Lb4Service, RevNat, RevNat4Value,
};
use abi::{DropReason, MetricDir};
use tables::ct::{CtState, TCP_ACK, TCP_SYN};
use tables::maglev;
use tables::{PortId, Tables};

use super::ct::ct_create;
use super::flow::Ip;
use super::icmp::icmp_error;
use super::{Scratch, Verdict, drop};
use crate::wire::nat::{self, Side};
use crate::wire::{Buf, ethernet, icmp, ipv4};

#[inline]
pub(super) fn is_new_tcp(ip: &Ip) -> bool {
    ip.proto == ipv4::PROTO_TCP && ip.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The backend of a service connection: the one its service entry pins, or a new choice
/// (recorded in a new service entry). Also returns the entry's state (its `nat_port` is the
/// SNAT port of a NodePort connection, 0 until one is chosen).
#[inline]
pub(super) fn svc_backend(
    ip: &Ip,
    key: Lb4Key,
    master: &Lb4Service,
    src_id: u32,
    t: &Tables,
    s: &mut Scratch,
) -> Option<(Lb4Backend, CtState, CtTuple4)> {
    let svc_key = CtTuple4::service(ip.src, ip.dst, ip.sport, ip.dport, ip.proto);
    if let Some(hit) = t.ct.lookup(&svc_key, s.now)
        && let Some(be) = t.lb.backends.get(&hit.state.backend_id)
    {
        // A new SYN on a closed connection, or towards a backend that is going away,
        // starts over; anything else stays with its backend.
        let reselect = is_new_tcp(ip) && (hit.state.closing() || !be.is_active());
        if !reselect {
            t.ct.touch(&hit, false, ip.tcp_flags, s.now, true);
            return Some((*be, hit.state, svc_key));
        }
    }
    let id = select_backend(ip, key, master, t, s)?;
    let be = *t.lb.backends.get(&id)?;
    let st = CtState {
        backend_id: id,
        rev_nat: master.rev_nat(),
        src_sec_id: src_id,
        ..Default::default()
    };
    ct_create(&svc_key, &st, ip, true, t, s);
    Some((be, st, svc_key))
}

/// Choose a backend for a new connection to the frontend `key`.
#[inline]
fn select_backend(
    ip: &Ip,
    key: Lb4Key,
    m: &Lb4Service,
    t: &Tables,
    s: &mut Scratch,
) -> Option<u32> {
    let rev = m.rev_nat();
    let aff_key = m
        .has_affinity()
        .then(|| tables::lb::affinity_words(ip.src, rev));
    let timeout = m.affinity_timeout();
    if let Some(k) = &aff_key
        && let Some(slot) = t.affinity.lookup(k)
        && let Some(([id], life)) = t.affinity.read(slot)
        && !tables::shared_table::expired(life, s.now)
        && t.lb
            .affinity_match
            .contains_key(&AffinityMatchKey::new(id as u32, rev))
    {
        t.affinity.set_lifetime(slot, s.now.wrapping_add(timeout));
        return Some(id as u32);
    }
    let alg = match m.algorithm() {
        ALG_DEFAULT => t.lb.default_alg,
        a => a,
    };
    // Every choice below is robust to an empty selection (no table, an empty table, a count
    // of 0): the answer is "no backend" (158), never a panic on the worker.
    let id = if alg == ALG_MAGLEV {
        let table = t.lb.maglev.get(&rev.0)?;
        let i = maglev::slot_v4(
            ip.src,
            ip.sport,
            ip.dport,
            ip.proto,
            &t.lb.seeds,
            table.len(),
        )?;
        *table.get(i)?
    } else {
        let slot = s.random().checked_rem(m.count as u32)? + 1;
        t.lb.services.get(&key.slot(slot as u16))?.backend_id()
    };
    if let Some(k) = aff_key {
        t.affinity
            .insert(k, [id as u64], s.now.wrapping_add(timeout), s.now);
    }
    Some(id)
}

/// `lb4_local`: a pod's packet to a ClusterIP (or any frontend): pick or find the backend,
/// DNAT to it. Returns the service ID for the OUT conntrack entry, or the verdict for a
/// service that cannot serve (no backend: ICMP port unreachable + drop 158).
#[expect(clippy::too_many_arguments, reason = "one stage's inputs, all needed")]
pub(super) fn lb4_local(
    b: &mut Buf<'_>,
    ip: &mut Ip,
    key: Lb4Key,
    master: &Lb4Service,
    in_port: PortId,
    src_id: u32,
    t: &Tables,
    s: &mut Scratch,
) -> Result<RevNat, Verdict> {
    if master.count == 0 {
        return Err(reject(b, ip, in_port, ip.dst, t, MetricDir::Egress));
    }
    let Some((be, _, _)) = svc_backend(ip, key, master, src_id, t, s) else {
        return Err(drop(DropReason::NoService, MetricDir::Egress));
    };
    dnat(b, ip, &be);
    Ok(master.rev_nat())
}

#[inline]
pub(super) fn dnat(b: &mut Buf<'_>, ip: &mut Ip, be: &Lb4Backend) {
    nat::rewrite(
        &mut b.data_mut()[ethernet::HEADER_LEN..],
        Side::Dst,
        be.address,
        be.port(),
    );
    ip.orig_dst.get_or_insert((ip.dst, ip.dport));
    ip.dst = be.address;
    ip.dport = be.port();
}

/// Rewrite the source of an IPv4 packet back to the frontend `fe` (reverse NAT).
#[inline]
pub(super) fn rev_nat_src(pkt: &mut [u8], fe: &RevNat4Value) {
    nat::rewrite(pkt, Side::Src, fe.address, u16::from_be_bytes(fe.port));
}

/// A service without backends answers a new connection with ICMP port unreachable from
/// the frontend address (Cilium's `service-no-backend-response: reject`), so clients fail at
/// once instead of hanging; the packet counts as dropped with reason 158.
#[cold]
pub(super) fn reject(
    b: &mut Buf<'_>,
    ip: &Ip,
    in_port: PortId,
    from: [u8; 4],
    t: &Tables,
    dir: MetricDir,
) -> Verdict {
    let Some(port) = t.port(in_port) else {
        return drop(DropReason::NoService, dir);
    };
    icmp_error(
        b,
        ip,
        (in_port, port.mac),
        from,
        (icmp::TYPE_DEST_UNREACH, icmp::CODE_PORT_UNREACH, 0),
        DropReason::NoService,
        dir,
    )
}
