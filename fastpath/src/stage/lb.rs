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

use control::ct::{CtState, TCP_ACK, TCP_SYN};
use control::identity;
use control::maglev;
use control::maps::ct::{CT_NODE_PORT, CtTuple4, TUPLE_F_OUT};
use control::maps::lb::{
    ALG_DEFAULT, ALG_MAGLEV, AffinityKey, AffinityMatchKey, Lb4Backend, Lb4Key, Lb4Service, RevNat,
    RevNat4Value,
};
use control::maps::{DropReason, MetricDir};
use control::tables::{PortId, Tables};

use super::{
    Ip, Scratch, Verdict, ct_create, ct_forward, drop_egress, drop_ingress, icmp_error,
    local_delivery, to_remote_node,
};
use crate::wire::nat::{self, Side};
use crate::wire::{Buf, EthernetFrame, Ipv4Packet, ethernet, icmp, ipv4};

/// NodePort SNAT source ports: above the NodePort range, like Cilium.
const SNAT_PORT_MIN: u16 = 32768;
const SNAT_RETRIES: usize = 8;

#[inline]
fn is_new_tcp(ip: &Ip) -> bool {
    ip.proto == ipv4::PROTO_TCP && ip.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The backend of a service connection: the one its service entry pins, or a new choice
/// (recorded in a new service entry). Also returns the entry's state (its `nat_port` is the
/// SNAT port of a NodePort connection, 0 until one is chosen).
#[inline]
fn svc_backend(
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
    let aff_key = m.has_affinity().then(|| affinity_words(ip.src, rev));
    let timeout = m.affinity_timeout();
    if let Some(k) = &aff_key
        && let Some(slot) = t.affinity.lookup(k)
        && let Some(([id], life)) = t.affinity.read(slot)
        && !control::shared_table::expired(life, s.now)
        && t.lb
            .affinity_match
            .contains(&AffinityMatchKey::new(id as u32, rev))
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

/// `cilium_lb4_affinity` key words for a client and service.
#[inline]
fn affinity_words(client: [u8; 4], rev: RevNat) -> [u64; 2] {
    let k = AffinityKey::v4(client, rev);
    let mut hi = [0u8; 8];
    hi[..2].copy_from_slice(&k.rev_nat_id.to_ne_bytes());
    hi[2] = k.netns_cookie;
    [u64::from_le_bytes(k.client_id), u64::from_le_bytes(hi)]
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
        return Err(reject(b, ip, in_port, ip.dst, t));
    }
    let Some((be, _, _)) = svc_backend(ip, key, master, src_id, t, s) else {
        return Err(drop_egress(DropReason::NoService));
    };
    dnat(b, ip, &be);
    Ok(master.rev_nat())
}

#[inline]
fn dnat(b: &mut Buf<'_>, ip: &mut Ip, be: &Lb4Backend) {
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
fn reject(b: &mut Buf<'_>, ip: &Ip, in_port: PortId, from: [u8; 4], t: &Tables) -> Verdict {
    let Some(port) = t.port(in_port) else {
        return drop_egress(DropReason::NoService);
    };
    icmp_error(
        b,
        ip,
        (in_port, port.mac),
        from,
        (icmp::TYPE_DEST_UNREACH, icmp::CODE_PORT_UNREACH, 0),
        DropReason::NoService,
    )
}

/// `nodeport_lb4`: a packet from outside the cluster (arrived on the underlay `in_port`) to
/// a NodePort or ExternalIP frontend. A local backend gets it DNATed; a remote one DNATed and
/// SNATed to this node's address (Cilium's default SNAT mode) and sent through the overlay.
/// The conntrack entry remembers the client's MAC and port for the replies.
pub(super) fn nodeport_lb4(
    b: &mut Buf<'_>,
    mut ip: Ip,
    key: Lb4Key,
    master: &Lb4Service,
    in_port: PortId,
    t: &Tables,
    s: &mut Scratch,
) -> Verdict {
    if !master.routable() {
        return drop_ingress(DropReason::IsClusterIp);
    }
    if master.count == 0 {
        return reject(b, &ip, in_port, ip.dst, t);
    }
    let client_mac = EthernetFrame::new_checked(b.data()).expect("checked").src();
    let src_id = t
        .ipcache_v4(ip.src)
        .map_or(identity::RESERVED_WORLD, |i| i.sec_identity);
    let Some((be, svc_state, svc_key)) = svc_backend(&ip, key, master, src_id, t, s) else {
        return drop_ingress(DropReason::NoService);
    };
    let client = (ip.src, ip.sport);
    dnat(b, &mut ip, &be);
    let reply_state = CtState {
        rev_nat: master.rev_nat(),
        flags: CT_NODE_PORT,
        src_sec_id: src_id,
        reply_port: Some(in_port),
        reply_mac: client_mac,
        ..Default::default()
    };
    if let Some(ep) = t.endpoint_v4(be.address)
        && ep.port.is_some()
    {
        // Local backend: no SNAT. The backend's ingress policy judges the client's
        // identity; the IN entry it then gets says where replies go.
        return match local_delivery(b, &ip, reply_state, ep, MetricDir::Ingress, t, s) {
            Verdict::Deliver { port } => Verdict::RoutedIn { port },
            v => v,
        };
    }
    // Remote backend: SNAT to the node, keeping the client's port when it is free.
    let node = t.overlay.node_ip;
    let Some(port) = snat_port(&ip, node, client, svc_state.nat_port, t, s) else {
        return drop_ingress(DropReason::NatNoMapping);
    };
    let out_key = CtTuple4::connection(node, ip.dst, port, ip.dport, ip.proto, TUPLE_F_OUT);
    if svc_state.nat_port != port {
        // Remember the SNAT port on the service entry: later packets of the flow reuse it.
        let mut st = svc_state;
        st.nat_port = port;
        t.ct.create(
            &svc_key,
            &st,
            s.now.wrapping_add(super::new_lifetime(&ip)),
            s.now,
        );
    }
    let st = CtState {
        nat_addr: client.0,
        nat_port: client.1,
        ..reply_state
    };
    ct_forward(&out_key, &st, &ip, t, s);
    nat::rewrite(
        &mut b.data_mut()[ethernet::HEADER_LEN..],
        Side::Src,
        node,
        port,
    );
    ip.src = node;
    ip.sport = port;
    to_remote_node(
        b,
        None,
        &ip,
        t.ipcache_v4(ip.dst),
        identity::RESERVED_HOST,
        MetricDir::Ingress,
        t,
        s,
    )
}

/// The node's source port for a SNATed NodePort flow from `client`: the one the flow already
/// has, else the client's own port if it is in the SNAT range and free towards this backend,
/// else a random free one.
fn snat_port(
    ip: &Ip,
    node: [u8; 4],
    client: ([u8; 4], u16),
    have: u16,
    t: &Tables,
    s: &mut Scratch,
) -> Option<u16> {
    if have != 0 {
        return Some(have);
    }
    let now = s.now;
    let free = |p: u16| {
        let k = CtTuple4::connection(node, ip.dst, p, ip.dport, ip.proto, TUPLE_F_OUT);
        match t.ct.lookup(&k, now) {
            None => true,
            Some(h) => h.state.nat_addr == client.0 && h.state.nat_port == client.1,
        }
    };
    if client.1 >= SNAT_PORT_MIN && free(client.1) {
        return Some(client.1);
    }
    (0..SNAT_RETRIES)
        .map(|_| SNAT_PORT_MIN + (s.random() % (65536 - SNAT_PORT_MIN as u32)) as u16)
        .find(|p| free(*p))
}

/// A local backend's reply to a NodePort/ExternalIP client (found by `ct_egress` on an IN
/// entry with the NodePort flag): source back to the frontend, out of the device the request
/// came in on, to the MAC it came from.
pub(super) fn nodeport_reply(b: &mut Buf<'_>, st: &CtState, t: &Tables) -> Verdict {
    let Some(fe) = t.lb.revnat.get(&st.rev_nat.0) else {
        return drop_egress(DropReason::NoService);
    };
    forward_reply(b, fe, None, st, t, MetricDir::Egress)
}

/// A packet addressed to this node from another node: the reply of a SNATed NodePort
/// connection (an OUT entry with the NodePort flag) is translated back — destination to the
/// client, source to the frontend — and sent to the client; anything else has no way into
/// the host from here (164).
pub(super) fn nodeport_snat_reply(b: &mut Buf<'_>, ip: &Ip, t: &Tables, s: &Scratch) -> Verdict {
    let k = CtTuple4::connection(ip.dst, ip.src, ip.dport, ip.sport, ip.proto, TUPLE_F_OUT);
    let Some(hit) = t.ct.lookup(&k, s.now) else {
        return drop_ingress(DropReason::HostUnreachable);
    };
    if hit.state.flags & CT_NODE_PORT == 0 {
        return drop_ingress(DropReason::HostUnreachable);
    }
    t.ct.touch(&hit, true, ip.tcp_flags, s.now, false);
    let Some(fe) = t.lb.revnat.get(&hit.state.rev_nat.0) else {
        return drop_ingress(DropReason::NoService);
    };
    forward_reply(
        b,
        fe,
        Some((hit.state.nat_addr, hit.state.nat_port)),
        &hit.state,
        t,
        MetricDir::Ingress,
    )
}

/// Rewrite a NodePort reply (source → frontend, and destination → the original client when
/// the request was SNATed) and address it to the client's MAC on the reply device.
fn forward_reply(
    b: &mut Buf<'_>,
    fe: &RevNat4Value,
    client: Option<([u8; 4], u16)>,
    st: &CtState,
    t: &Tables,
    dir: MetricDir,
) -> Verdict {
    let Some(port) = st.reply_port.and_then(|p| t.port(p).map(|d| (p, d.mac))) else {
        return Verdict::Drop {
            reason: DropReason::NoFib,
            dir,
        };
    };
    let frame = b.data_mut();
    let pkt = &mut frame[ethernet::HEADER_LEN..];
    if let Some((addr, p)) = client {
        nat::rewrite(pkt, Side::Dst, addr, p);
    }
    rev_nat_src(pkt, fe);
    let mut ipv = Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]).expect("checked");
    if ipv.ttl() <= 1 {
        return Verdict::Drop {
            reason: DropReason::TtlExceeded,
            dir,
        };
    }
    ipv.decrement_ttl();
    let total = ipv.total_len();
    let mut eth = EthernetFrame::new_checked(frame).expect("checked");
    eth.set_dst(st.reply_mac);
    eth.set_src(port.1);
    b.set_len(ethernet::HEADER_LEN + total);
    Verdict::Route { port: port.0 }
}
