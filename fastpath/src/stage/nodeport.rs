//! NodePort and ExternalIP (`nodeport_lb4` of Cilium's `lib/nodeport.h`): a client outside
//! the cluster reaches a service through this node's address; a local backend gets the
//! packet DNATed, a remote one DNATed and SNATed to the node (Cilium's default SNAT mode)
//! and sent through the overlay. The replies are translated back here too. Direction:
//! ingress for what comes from outside or from another node, egress for a local backend's
//! reply (it entered at `from-container`).

use abi::ct::{CT_NODE_PORT, CtTuple4, TUPLE_F_OUT};
use abi::identity;
use abi::lb::{Lb4Key, Lb4Service, RevNat4Value};
use abi::{DropReason, MetricDir};
use tables::ct::CtState;
use tables::{PortId, Tables};

use super::ct::{ct_forward, new_lifetime};
use super::flow::Ip;
use super::forward::{l3_forward, to_remote_node};
use super::lb::{dnat, reject, rev_nat_src, svc_backend};
use super::to_container::local_delivery;
use super::{Scratch, Verdict, drop};
use crate::wire::nat::{self, Side};
use crate::wire::{Buf, EthernetFrame, Ipv4Packet, ethernet};

/// The metrics direction of traffic from outside and from other nodes.
const DIR: MetricDir = MetricDir::Ingress;

/// NodePort SNAT source ports: above the NodePort range, like Cilium.
const SNAT_PORT_MIN: u16 = 32768;
const SNAT_RETRIES: usize = 8;

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
        return drop(DropReason::IsClusterIp, DIR);
    }
    if master.count == 0 {
        return reject(b, &ip, in_port, ip.dst, t, DIR);
    }
    let client_mac = EthernetFrame::new_checked(b.data()).expect("checked").src();
    let src_id = t
        .ipcache_v4(ip.src)
        .map_or(identity::RESERVED_WORLD, |i| i.sec_identity);
    let Some((be, svc_state, svc_key)) = svc_backend(&ip, key, master, src_id, t, s) else {
        return drop(DropReason::NoService, DIR);
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
        && let Some(out) = ep.port
    {
        // Local backend: no SNAT. The backend's ingress policy judges the client's
        // identity; the IN entry it then gets says where replies go.
        return match local_delivery(b, &ip, reply_state, ep, out, t, s) {
            Verdict::Deliver { port } => Verdict::RoutedIn { port },
            v => v,
        };
    }
    // Remote backend: SNAT to the node, keeping the client's port when it is free.
    let node = t.overlay.node_ip;
    let Some(port) = snat_port(&ip, node, client, svc_state.nat_port, t, s) else {
        return drop(DropReason::NatNoMapping, DIR);
    };
    let out_key = CtTuple4::connection(node, ip.dst, port, ip.dport, ip.proto, TUPLE_F_OUT);
    if svc_state.nat_port != port {
        // Remember the SNAT port on the service entry: later packets of the flow reuse it.
        let mut st = svc_state;
        st.nat_port = port;
        t.ct.create(&svc_key, &st, s.now.wrapping_add(new_lifetime(&ip)), s.now);
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
        DIR,
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
        return drop(DropReason::NoService, MetricDir::Egress);
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
        return drop(DropReason::HostUnreachable, DIR);
    };
    if hit.state.flags & CT_NODE_PORT == 0 {
        return drop(DropReason::HostUnreachable, DIR);
    }
    t.ct.touch(&hit, true, ip.tcp_flags, s.now, false);
    let Some(fe) = t.lb.revnat.get(&hit.state.rev_nat.0) else {
        return drop(DropReason::NoService, DIR);
    };
    forward_reply(
        b,
        fe,
        Some((hit.state.nat_addr, hit.state.nat_port)),
        &hit.state,
        t,
        DIR,
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
        return drop(DropReason::NoFib, dir);
    };
    let pkt = &mut b.data_mut()[ethernet::HEADER_LEN..];
    if let Some((addr, p)) = client {
        nat::rewrite(pkt, Side::Dst, addr, p);
    }
    rev_nat_src(pkt, fe);
    let total = Ipv4Packet::new_checked(&*pkt).expect("checked").total_len();
    if let Err(v) = l3_forward(b, total, st.reply_mac, port.1, dir) {
        return v;
    }
    Verdict::Route { port: port.0, dir }
}
