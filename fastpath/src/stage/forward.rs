//! Forwarding off the node (`encap_and_redirect` / the native-routing FIB path): to another
//! node through the overlay (VXLAN, VNI = source identity) or natively routed, and the one
//! L3 rewrite (TTL, MACs) every forwarded frame gets. The metrics direction is the caller's:
//! egress for a pod's packet, ingress for NodePort traffic from outside.

use abi::identity;
use abi::{DropReason, MacAddr, MetricDir};
use tables::RoutingMode;
use tables::{PortId, Tables};

use super::flow::Ip;
use super::icmp::too_big;
use super::{Scratch, Verdict, drop};
use crate::wire::{Buf, EthernetFrame, Ipv4Packet, ethernet, vxlan};

/// Not local: in tunnel mode the ipcache entry of the destination (`remote`, looked up by
/// the caller) names its node (encapsulate, VNI = `src_id`); in native routing mode the
/// routes do. No node: unroutable, counted in `dir`.
#[inline]
#[expect(clippy::too_many_arguments, reason = "one stage's inputs, all needed")]
pub(super) fn to_remote_node(
    b: &mut Buf<'_>,
    in_port: Option<PortId>,
    ip: &Ip,
    remote: Option<&abi::RemoteEndpointInfo>,
    src_id: u32,
    dir: MetricDir,
    t: &Tables,
    s: &mut Scratch,
) -> Verdict {
    let unroutable = Verdict::Drop {
        reason: DropReason::Unroutable,
        dir,
    };
    match t.overlay.mode {
        RoutingMode::Tunnel => match remote.and_then(|i| i.tunnel_v4()) {
            Some(tunnel_ep) => encap(b, in_port, ip, tunnel_ep, src_id, dir, t, s),
            None => unroutable,
        },
        RoutingMode::Native => match t.routes.lookup(ip.dst) {
            Some(gw) => route_native(b, in_port, ip, *gw, dir, t),
            None => unroutable,
        },
    }
}

/// Tunnel mode: wrap the frame in Ethernet/IPv4/UDP/VXLAN to `tunnel_ep`, VNI = the source's
/// security identity `src_id` (the host goes out as remote-node).
#[inline]
#[expect(clippy::too_many_arguments, reason = "one stage's inputs, all needed")]
fn encap(
    b: &mut Buf<'_>,
    in_port: Option<PortId>,
    ip: &Ip,
    tunnel_ep: [u8; 4],
    src_id: u32,
    dir: MetricDir,
    t: &Tables,
    s: &mut Scratch,
) -> Verdict {
    let o = &t.overlay;
    let Some(nh) = t.nexthops.get(&tunnel_ep) else {
        // The control plane has not resolved the endpoint's MAC (yet).
        return drop(DropReason::NoFib, dir);
    };
    let mtu = o.underlay_mtu as usize - vxlan::OVERHEAD;
    if ip.total_len > mtu {
        return too_big(b, in_port, ip, mtu, t, dir);
    }
    // Sender rule: the host identity goes out as remote-node.
    let vni = if src_id == identity::RESERVED_HOST {
        identity::RESERVED_REMOTE_NODE
    } else {
        src_id
    };
    // Strip Ethernet padding: the inner frame is exactly header + IP packet.
    let inner_len = ethernet::HEADER_LEN + ip.total_len;
    b.set_len(inner_len);
    if let Some(inner_dst) = nh.inner_dst_mac {
        let src_mac = in_port
            .and_then(|p| t.port(p))
            .map(|p| p.mac)
            .unwrap_or(nh.src_mac);
        let mut eth = EthernetFrame::new_checked(b.data_mut()).expect("checked");
        eth.set_dst(inner_dst);
        eth.set_src(src_mac);
    }
    if !b.push_head(vxlan::ENCAP_LEN) {
        return drop(DropReason::WriteError, dir);
    }
    s.ip_id = s.ip_id.wrapping_add(1);
    let hash = vxlan::flow_hash(ip.src, ip.dst, ip.proto, ip.flow_ports());
    vxlan::emit(
        b.data_mut(),
        &vxlan::Outer {
            dst_mac: nh.dst_mac,
            src_mac: nh.src_mac,
            src_ip: o.node_ip,
            dst_ip: tunnel_ep,
            ip_id: s.ip_id,
            sport: vxlan::flow_src_port(hash),
            dport: o.tunnel_port,
            vni: vni & vxlan::MAX_VNI,
        },
        inner_len,
    );
    Verdict::Encap { port: nh.port, dir }
}

/// Native routing: forward unencapsulated to the owning node (`gw`), TTL−1.
#[inline]
fn route_native(
    b: &mut Buf<'_>,
    in_port: Option<PortId>,
    ip: &Ip,
    gw: [u8; 4],
    dir: MetricDir,
    t: &Tables,
) -> Verdict {
    let Some(nh) = t.nexthops.get(&gw) else {
        return drop(DropReason::NoFib, dir);
    };
    let mtu = t.overlay.underlay_mtu as usize;
    if ip.total_len > mtu {
        return too_big(b, in_port, ip, mtu, t, dir);
    }
    if let Err(v) = l3_forward(b, ip.total_len, nh.dst_mac, nh.src_mac, dir) {
        return v;
    }
    Verdict::Route { port: nh.port, dir }
}

/// The one TTL and MAC rewrite of a forwarded IPv4 frame (`ipv4_l3` in Cilium's
/// `lib/l3.h`): TTL−1 with the incremental checksum (a TTL of 1 or 0 is 196 *TTL exceeded*,
/// counted in `dir`), the next hop's MACs, and the frame trimmed to the datagram — what
/// follows it (Ethernet padding, or anything a sender appended) is not forwarded, as a
/// router's ip_rcv trims it. Local delivery, native routing and NodePort replies all go
/// through here.
#[inline]
pub(super) fn l3_forward(
    b: &mut Buf<'_>,
    total_len: usize,
    dst_mac: MacAddr,
    src_mac: MacAddr,
    dir: MetricDir,
) -> Result<(), Verdict> {
    let frame = b.data_mut();
    let mut p = Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]).expect("checked");
    if p.ttl() <= 1 {
        return Err(drop(DropReason::TtlExceeded, dir));
    }
    p.decrement_ttl();
    let mut eth = EthernetFrame::new_checked(frame).expect("checked");
    eth.set_dst(dst_mac);
    eth.set_src(src_mac);
    b.set_len(ethernet::HEADER_LEN + total_len);
    Ok(())
}
