//! The pipeline, over byte buffers, in Cilium's stage order.
//!
//! Entry points by the role of the port a frame arrived on ([`process`]):
//! - **lxc** → `from-container` (bpf_lxc `cil_from_container`): validate L2 → ARP responder or
//!   IPv4 → validate L3 (and L4 headers, which conntrack will key on) → source-address check →
//!   `cilium_lxc` lookup of the destination: a local pod gets local delivery; otherwise the
//!   `cilium_ipcache_v2` lookup decides: encapsulate to the tunnel endpoint (tunnel mode) or
//!   route to the owning node (native routing).
//! - **underlay** → `from-overlay` (bpf_overlay `cil_from_overlay`) for VXLAN: validate the
//!   outer headers and the VXLAN header, take the source identity from the VNI, refuse the
//!   host identity and unknown identities, decapsulate, `cilium_lxc` lookup, local delivery;
//!   or `from-netdev` (bpf_host) for natively routed frames to a local pod.
//! - local delivery (`ipv4_local_delivery`, the `to-container` step): conntrack (ingress),
//!   reverse NAT of service replies, TTL−1, MACs.
//!
//! Services ([`lb`]) and conntrack sit where Cilium has them: on `from-container`, after the
//! source check, the frontend lookup (`cilium_lb4_services_v2`) and DNAT (`lb4_local`), then
//! the egress conntrack lookup, then the forwarding decision; on `from-netdev`, NodePort and
//! ExternalIP frontends (`nodeport_lb4`) with SNAT to the node for remote backends; replies
//! are reverse-translated where their conntrack entry says so. Policy slots in after
//! conntrack.
//!
//! A stage reads tables, rewrites headers in place (growing or shrinking the frame at the
//! front inside its headroom) and returns a [`Verdict`]; it never sends or frees a frame. The
//! worker acts on verdicts in one place, where drops are counted (Cilium's single `out:`
//! exit). Nothing here allocates, locks or logs.

mod lb;

use control::config::RoutingMode;
use control::ct::CtState;
use control::identity;
use control::maps::ct::{
    CT_NODE_PORT, CtTuple4, LIFETIME_NONTCP, LIFETIME_TCP_SYN, TUPLE_F_IN, TUPLE_F_OUT,
};
use control::maps::lb::RevNat;
use control::maps::policy::{DIR_EGRESS, DIR_INGRESS};
use control::maps::{DropReason, MetricDir};
use control::policy::table::{
    PolicyVerdict, STAT_ALLOWED_EGRESS, STAT_ALLOWED_INGRESS, STAT_DENIED_EGRESS,
    STAT_DENIED_INGRESS,
};
use control::tables::{EndpointEntry, PortId, PortRole, Tables};

use crate::wire::{
    ArpPacket, Buf, EtherType, EthernetFrame, Ipv4Packet, WireError, arp, ethernet, icmp, ipv4, l4,
    vxlan,
};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Local delivery from a pod to a pod of this node: transmit on `port` (the frame was
    /// rewritten in place).
    Deliver { port: PortId },
    /// Decapsulated (VXLAN from another node) and delivered to the pod behind `port`.
    Decap { port: PortId },
    /// Natively routed from another node and delivered to the pod behind `port`.
    RoutedIn { port: PortId },
    /// Encapsulated (VXLAN) towards another node: transmit on the underlay `port`.
    Encap { port: PortId },
    /// Natively routed towards another node: transmit on the underlay `port`.
    Route { port: PortId },
    /// An ARP reply built in place: transmit back on the port it came from.
    ArpReply { port: PortId },
    /// An ICMP error built in place from the frame (fragmentation needed): transmit back on
    /// `port`; the original counts as dropped for `reason`.
    IcmpReply { port: PortId, reason: DropReason },
    /// Drop, counted under Cilium's reason and metrics direction.
    Drop { reason: DropReason, dir: MetricDir },
}

/// Per-worker mutable state the pipeline needs (no sharing, no atomics).
#[derive(Debug)]
pub struct Scratch {
    /// IPv4 identification for outer headers.
    pub ip_id: u16,
    /// Seconds of CLOCK_MONOTONIC, read once per batch by the worker (conntrack lifetimes).
    pub now: u32,
    /// xorshift64* state for random backend selection.
    pub rng: u64,
    /// This worker's index: its stripe of the policy counters.
    pub worker: usize,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            ip_id: 0,
            now: 1,
            rng: 0x9e37_79b9_7f4a_7c15,
            worker: 0,
        }
    }
}

impl Scratch {
    /// A seeded scratch (fixtures and benchmarks that want a reproducible sequence).
    pub fn seeded(seed: u64) -> Scratch {
        Scratch {
            rng: seed | 1,
            ..Default::default()
        }
    }

    /// The scratch of worker `worker`, its random state seeded from the kernel's entropy
    /// (getrandom(2)), so "random" backend choices and SNAT ports differ between workers,
    /// restarts and nodes. Should getrandom fail (it does not on Linux ≥ 3.17 once the pool
    /// is ready), the clock, the process ID and the worker index still make the seed
    /// different per process.
    pub fn for_worker(worker: usize) -> Scratch {
        let mut b = [0u8; 8];
        let seed = match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                t ^ (std::process::id() as u64) << 32
            }
        };
        let mut s = Scratch::seeded(seed ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        s.worker = worker;
        s
    }

    /// The next pseudo-random number (xorshift64*).
    #[inline]
    pub fn random(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

#[inline]
fn drop_egress(reason: DropReason) -> Verdict {
    Verdict::Drop {
        reason,
        dir: MetricDir::Egress,
    }
}

#[inline]
fn drop_ingress(reason: DropReason) -> Verdict {
    Verdict::Drop {
        reason,
        dir: MetricDir::Ingress,
    }
}

/// Run a frame that arrived on `in_port` through the pipeline.
#[inline]
pub fn process(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    match t.port(in_port).map(|p| p.role) {
        Some(PortRole::Lxc) => from_container(b, in_port, t, s),
        Some(PortRole::Underlay) => from_netdev(b, in_port, t, s),
        None => drop_egress(DropReason::UnknownSender),
    }
}

/// `from-container`: a frame sent by the pod behind `in_port`.
#[inline]
pub fn from_container(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    let Ok(eth) = EthernetFrame::new_checked(b.data()) else {
        return drop_egress(DropReason::Invalid);
    };
    // A source MAC that is a group address is never a sender's (IEEE 802).
    if eth.src().is_multicast() {
        return drop_egress(DropReason::InvalidSmac);
    }
    match eth.ethertype() {
        EtherType::Ipv4 => {
            // IP is routed by the gateway: a frame not addressed to the lxc (the MAC the pod's
            // ARP got) is not ours to forward, as a router's ip_rcv ignores PACKET_OTHERHOST.
            match t.port(in_port) {
                Some(p) if p.mac == eth.dst() => {}
                Some(_) => return drop_egress(DropReason::InvalidDmac),
                None => return drop_egress(DropReason::UnknownSender),
            }
            ipv4_from_container(b, in_port, t, s)
        }
        EtherType::Arp => arp_respond(b.data_mut(), in_port, t),
        // The XDP program passes everything else to the kernel; seeing it here means the
        // steering and the pipeline disagree, so say which L3 it was.
        _ => drop_egress(DropReason::UnknownL3),
    }
}

/// bpf_lxc's ARP responder: answer a request for any address but the pod's own with the lxc
/// MAC, so the pod sends everything through us.
#[cold]
fn arp_respond(frame: &mut [u8], in_port: PortId, t: &Tables) -> Verdict {
    let Some(port) = t.port(in_port) else {
        return drop_egress(DropReason::UnknownSender);
    };
    let (eth_hdr, payload) = frame.split_at_mut(ethernet::HEADER_LEN);
    let mut pkt = match ArpPacket::new_checked(payload) {
        Ok(p) => p,
        Err(_) => return drop_egress(DropReason::Invalid),
    };
    if pkt.operation() != arp::OP_REQUEST {
        return drop_egress(DropReason::Invalid);
    }
    if pkt.target_ip() == port.endpoint_ip.octets() || pkt.sender_ip() == pkt.target_ip() {
        // Address-conflict probing for its own IP: nobody else owns it, stay silent.
        return drop_egress(DropReason::UnknownTarget);
    }
    let requester = pkt.sender_mac();
    pkt.make_reply(port.mac);
    let mut eth = EthernetFrame::new_checked(eth_hdr).expect("14 bytes");
    eth.set_dst(requester);
    eth.set_src(port.mac);
    Verdict::ArpReply { port: in_port }
}

/// The fields of a checked IPv4 packet the later steps need (the view borrows the frame).
///
/// Only fields read from the packet are stored; everything derived from them (the port
/// policy matches on, the flow-hash ports) is computed from the *current* addresses and
/// ports by a method, so a stage that rewrites the packet (DNAT, SNAT) and updates
/// `dst`/`dport` or `src`/`sport` leaves nothing stale behind: policy after DNAT sees the
/// backend's port, as Cilium's does.
#[derive(Debug, Clone, Copy)]
struct Ip {
    src: [u8; 4],
    dst: [u8; 4],
    total_len: usize,
    dont_frag: bool,
    proto: u8,
    /// Conntrack ports: TCP/UDP ports; for ICMP echo the identifier as the requester's
    /// "source port" (request: sport = id; reply: dport = id).
    sport: u16,
    dport: u16,
    /// ICMP type and echo identifier (0 for other protocols).
    icmp_type: u8,
    icmp_id: u16,
    tcp_flags: u8,
    /// Conntrack and services apply: TCP, UDP or ICMP echo, not a later fragment.
    tracked: bool,
    /// A fragment after the first (no L4 header).
    later_fragment: bool,
    /// The destination (address, port) the sender used, when a service translated it: an
    /// ICMP error about the packet quotes it as sent, so the sender's stack can match it to
    /// its socket (as Linux's NAT translates the packet an ICMP error embeds).
    orig_dst: Option<([u8; 4], u16)>,
}

impl Ip {
    /// Is this TCP or UDP (what services translate)?
    #[inline]
    fn has_ports(&self) -> bool {
        self.tracked && (self.proto == ipv4::PROTO_TCP || self.proto == ipv4::PROTO_UDP)
    }

    /// The port policy matches on: the (translated) TCP/UDP destination port, the ICMP
    /// type, 0 otherwise (and for later fragments, which carry no L4 header).
    #[inline]
    fn policy_port(&self) -> u16 {
        match self.proto {
            _ if self.later_fragment => 0,
            ipv4::PROTO_TCP | ipv4::PROTO_UDP => self.dport,
            ipv4::PROTO_ICMP => self.icmp_type as u16,
            _ => 0,
        }
    }

    /// The L4 word of the flow hash (outer UDP source port): both ports, or the ICMP
    /// identifier.
    #[inline]
    fn flow_ports(&self) -> u32 {
        match self.proto {
            ipv4::PROTO_TCP | ipv4::PROTO_UDP => (self.sport as u32) << 16 | self.dport as u32,
            ipv4::PROTO_ICMP => self.icmp_id as u32,
            _ => 0,
        }
    }
}

/// Validate an IPv4 packet at `off` in the frame, including its L4 header when it has one.
#[inline]
fn check_ipv4(frame: &[u8], off: usize) -> Result<Ip, DropReason> {
    let ip = match Ipv4Packet::new_checked(&frame[off..]) {
        Ok(ip) => ip,
        Err(WireError::Truncated | WireError::Malformed) => return Err(DropReason::Invalid),
    };
    // A router verifies the header checksum (RFC 1812 §5.2.2) before it trusts any field:
    // a corrupted header is a counted drop here, not a packet the next hop drops silently.
    if !ip.verify_checksum() {
        return Err(DropReason::Invalid);
    }
    let mut out = Ip {
        src: ip.src(),
        dst: ip.dst(),
        total_len: ip.total_len(),
        dont_frag: ip.dont_frag(),
        proto: ip.protocol(),
        sport: 0,
        dport: 0,
        icmp_type: 0,
        icmp_id: 0,
        tcp_flags: 0,
        tracked: false,
        later_fragment: ip.frag_offset() != 0,
        orig_dst: None,
    };
    // L4 headers must be complete (conntrack keys on them); later fragments carry none.
    if ip.frag_offset() == 0 {
        match l4::parse(ip.protocol(), ip.payload()) {
            Ok(l4::L4::Tcp {
                sport,
                dport,
                flags,
            }) => {
                (out.sport, out.dport, out.tcp_flags, out.tracked) = (sport, dport, flags, true);
            }
            Ok(l4::L4::Udp { sport, dport }) => {
                (out.sport, out.dport, out.tracked) = (sport, dport, true);
            }
            Ok(l4::L4::Icmp { ty, id, .. }) => {
                (out.icmp_type, out.icmp_id) = (ty, id);
                match ty {
                    icmp::TYPE_ECHO_REQUEST => (out.sport, out.tracked) = (id, true),
                    icmp::TYPE_ECHO_REPLY => (out.dport, out.tracked) = (id, true),
                    _ => {}
                }
            }
            Ok(l4::L4::Other(_)) => {}
            Err(_) => return Err(DropReason::CtInvalidHdr),
        }
    }
    Ok(out)
}

/// What the egress conntrack lookup found.
enum Egress {
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
fn ct_egress(ip: &Ip, t: &Tables, s: &Scratch) -> Egress {
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

/// The policy verdict of endpoint `ep_id` for `ip` with the remote identity `id` in `dir`
/// ([`DIR_INGRESS`]/[`DIR_EGRESS`]), counted per entry and per verdict. A denied packet
/// becomes Cilium's drop: 133 (no allow), 181 (deny rule), or 157 for a later fragment
/// (no ports to judge).
#[inline]
fn policy(t: &Tables, s: &Scratch, ep_id: u16, dir: u8, id: u32, ip: &Ip) -> Result<(), Verdict> {
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

/// Create `key` with `st` and count this packet on it (`service`: an SVC entry).
#[inline]
fn ct_create(key: &CtTuple4, st: &CtState, ip: &Ip, service: bool, t: &Tables, s: &Scratch) {
    if let Some(hit) =
        t.ct.create(key, st, s.now.wrapping_add(new_lifetime(ip)), s.now)
    {
        t.ct.touch(&hit, false, ip.tcp_flags, s.now, service);
    }
}

/// A packet in the original direction of `key`: refresh its entry, or create it with `st`.
#[inline]
fn ct_forward(key: &CtTuple4, st: &CtState, ip: &Ip, t: &Tables, s: &Scratch) {
    match t.ct.lookup(key, s.now) {
        Some(hit) => {
            t.ct.touch(&hit, false, ip.tcp_flags, s.now, false);
        }
        None => ct_create(key, st, ip, false, t, s),
    }
}

/// The lifetime of a just-created entry before its first update.
#[inline]
fn new_lifetime(ip: &Ip) -> u32 {
    if ip.proto == ipv4::PROTO_TCP {
        LIFETIME_TCP_SYN
    } else {
        LIFETIME_NONTCP
    }
}

#[inline]
fn ipv4_from_container(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    let mut ip = match check_ipv4(b.data(), ethernet::HEADER_LEN) {
        Ok(ip) => ip,
        Err(r) => return drop_egress(r),
    };
    // Anti-spoofing: a pod may only send from its own address.
    match t.port(in_port) {
        Some(p) if p.endpoint_ip.octets() == ip.src => {}
        Some(_) => return drop_egress(DropReason::InvalidSip),
        None => return drop_egress(DropReason::UnknownSender),
    }
    let (src_id, src_ep) = match t.endpoint_v4(ip.src) {
        // ... and from its own MAC (the one cilium_lxc has for it).
        Some(e)
            if e.info.pod_mac() != EthernetFrame::new_checked(b.data()).expect("checked").src() =>
        {
            return drop_egress(DropReason::InvalidSmac);
        }
        Some(e) => (e.info.sec_id, e.info.lxc_id),
        None => return drop_egress(DropReason::UnknownSender),
    };
    // Services (lb4_local): a frontend is translated to a backend before anything else
    // looks at the destination.
    let mut rev_nat = RevNat(0);
    if ip.has_ports()
        && let Some((key, master)) = t.lb.frontend(ip.dst, ip.dport, ip.proto)
    {
        match lb::lb4_local(b, &mut ip, key, master, in_port, src_id, t, s) {
            Ok(r) => rev_nat = r,
            Err(v) => return v,
        }
    }
    let reply = if ip.tracked {
        match ct_egress(&ip, t, s) {
            Egress::NodePortReply(st) => return lb::nodeport_reply(b, &st, t),
            Egress::Reply => true,
            Egress::Original => false,
        }
    } else {
        false
    };
    let dst_ep = t.endpoint_v4(ip.dst);
    // Not local: one ipcache lookup serves the policy (identity) and the forwarding (tunnel
    // endpoint).
    let remote = match dst_ep {
        Some(_) => None,
        None => t.ipcache_v4(ip.dst),
    };
    if !reply {
        // Egress policy on the (translated) destination's identity, before encap or
        // delivery; only then does the connection get its OUT entry.
        let dst_id = match (dst_ep, remote) {
            (Some(e), _) => e.info.sec_id,
            (None, Some(i)) => i.sec_identity,
            (None, None) => identity::RESERVED_WORLD,
        };
        if let Err(v) = policy(t, s, src_ep, DIR_EGRESS, dst_id, &ip) {
            return v;
        }
        if ip.tracked {
            let fwd =
                CtTuple4::connection(ip.src, ip.dst, ip.sport, ip.dport, ip.proto, TUPLE_F_OUT);
            let st = CtState {
                rev_nat,
                src_sec_id: src_id,
                ..Default::default()
            };
            ct_forward(&fwd, &st, &ip, t, s);
        }
    }
    if let Some(ep) = dst_ep {
        let st = CtState {
            src_sec_id: src_id,
            ..Default::default()
        };
        return local_delivery(b, &ip, st, ep, MetricDir::Egress, t, s);
    }
    to_remote_node(
        b,
        Some(in_port),
        &ip,
        remote,
        src_id,
        MetricDir::Egress,
        t,
        s,
    )
}

/// Not local: in tunnel mode the ipcache entry of the destination (`remote`, looked up by
/// the caller) names its node (encapsulate, VNI = `src_id`); in native routing mode the
/// routes do. No node: unroutable, counted in `dir`.
#[inline]
#[expect(clippy::too_many_arguments, reason = "one stage's inputs, all needed")]
fn to_remote_node(
    b: &mut Buf<'_>,
    in_port: Option<PortId>,
    ip: &Ip,
    remote: Option<&control::maps::RemoteEndpointInfo>,
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
            Some(tunnel_ep) => encap(b, in_port, ip, tunnel_ep, src_id, t, s),
            None => unroutable,
        },
        RoutingMode::Native => match t.routes.lookup(ip.dst) {
            Some(gw) => route_native(b, in_port, ip, *gw, t),
            None => unroutable,
        },
    }
}

/// Local delivery (`ipv4_local_delivery` + the `to-container` step): the packet `ip` from
/// identity `src.src_sec_id` goes to the pod `ep`. A reply to a connection the pod made skips
/// policy, and if it went through a service gets its source rewritten back to the service
/// (reverse NAT); anything else must pass the pod's ingress policy, and a new connection then
/// gets an IN entry with state `src`. Then TTL−1 and the pod's MACs.
#[inline]
fn local_delivery(
    b: &mut Buf<'_>,
    ip: &Ip,
    src: CtState,
    ep: &EndpointEntry,
    dir: MetricDir,
    t: &Tables,
    s: &Scratch,
) -> Verdict {
    let Some(out) = ep.port else {
        // A host address: the XDP program hands those to the kernel; this frame raced a
        // table change (or arrived through the overlay, which has no path to the host).
        return Verdict::Drop {
            reason: DropReason::HostUnreachable,
            dir,
        };
    };
    let reply_hit = if ip.tracked {
        let reply = CtTuple4::connection(ip.dst, ip.src, ip.dport, ip.sport, ip.proto, TUPLE_F_OUT);
        t.ct.lookup(&reply, s.now)
    } else {
        None
    };
    let frame = b.data_mut();
    match reply_hit {
        Some(hit) => {
            t.ct.touch(&hit, true, ip.tcp_flags, s.now, false);
            if hit.state.rev_nat.0 != 0
                && let Some(fe) = t.lb.revnat.get(&hit.state.rev_nat.0)
            {
                lb::rev_nat_src(&mut frame[ethernet::HEADER_LEN..], fe);
            }
        }
        None => {
            if let Err(v) = policy(t, s, ep.info.lxc_id, DIR_INGRESS, src.src_sec_id, ip) {
                return v;
            }
            if ip.tracked {
                let fwd =
                    CtTuple4::connection(ip.src, ip.dst, ip.sport, ip.dport, ip.proto, TUPLE_F_IN);
                ct_forward(&fwd, &src, ip, t, s);
            }
        }
    }
    let mut p = Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]).expect("checked");
    if p.ttl() <= 1 {
        return drop_ingress(DropReason::TtlExceeded);
    }
    p.decrement_ttl();
    let mut eth = EthernetFrame::new_checked(frame).expect("checked");
    eth.set_dst(ep.info.pod_mac());
    eth.set_src(ep.info.lxc_mac());
    // What follows the IP datagram (Ethernet padding, or anything a sender appended) is not
    // forwarded, as a router's ip_rcv trims it.
    b.set_len(ethernet::HEADER_LEN + ip.total_len);
    Verdict::Deliver { port: out }
}

/// Too big for the underlay: ICMP fragmentation-needed back to the pod when it set DF (the
/// pod lowers its path MTU), else a counted drop — never silent loss. Frames that did not
/// come from a pod (`in_port` `None`: NodePort traffic) are dropped.
#[cold]
fn too_big(b: &mut Buf<'_>, in_port: Option<PortId>, ip: &Ip, mtu: usize, t: &Tables) -> Verdict {
    let Some(in_port) = in_port.filter(|_| ip.dont_frag) else {
        return drop_egress(DropReason::FragNeeded);
    };
    let Some(port) = t.port(in_port) else {
        return drop_egress(DropReason::UnknownSender);
    };
    icmp_error(
        b,
        ip,
        (in_port, port.mac),
        t.overlay.router_ip,
        (icmp::TYPE_DEST_UNREACH, icmp::CODE_FRAG_NEEDED, mtu as u32),
        DropReason::FragNeeded,
    )
}

/// Turn the frame into an ICMP error about it (`kind` = type, code, rest-of-header word) from
/// `from`, addressed back to the sender's MAC from `back.1`, sent on port `back.0`; the
/// original counts as dropped for `reason`. Grows the frame when the error (with its quote)
/// is longer than the original; without room it is a plain drop.
#[cold]
fn icmp_error(
    b: &mut Buf<'_>,
    ip: &Ip,
    back: (PortId, control::maps::MacAddr),
    from: [u8; 4],
    kind: (u8, u8, u32),
    reason: DropReason,
) -> Verdict {
    let quote = ip.total_len.min(icmp::MAX_ERROR_LEN - ipv4::HEADER_LEN - 8);
    let need = ethernet::HEADER_LEN + ipv4::HEADER_LEN + 8 + quote;
    if b.len() < need && !b.set_len(need) {
        return drop_egress(reason);
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
    }
}

/// Tunnel mode: wrap the frame in Ethernet/IPv4/UDP/VXLAN to `tunnel_ep`, VNI = the source's
/// security identity `src_id` (the host goes out as remote-node).
#[inline]
fn encap(
    b: &mut Buf<'_>,
    in_port: Option<PortId>,
    ip: &Ip,
    tunnel_ep: [u8; 4],
    src_id: u32,
    t: &Tables,
    s: &mut Scratch,
) -> Verdict {
    let o = &t.overlay;
    let Some(nh) = t.nexthops.get(&tunnel_ep) else {
        // The control plane has not resolved the endpoint's MAC (yet).
        return drop_egress(DropReason::NoFib);
    };
    let mtu = o.underlay_mtu as usize - vxlan::OVERHEAD;
    if ip.total_len > mtu {
        return too_big(b, in_port, ip, mtu, t);
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
        return drop_egress(DropReason::WriteError);
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
    Verdict::Encap { port: nh.port }
}

/// Native routing: forward unencapsulated to the owning node (`gw`), TTL−1.
#[inline]
fn route_native(
    b: &mut Buf<'_>,
    in_port: Option<PortId>,
    ip: &Ip,
    gw: [u8; 4],
    t: &Tables,
) -> Verdict {
    let Some(nh) = t.nexthops.get(&gw) else {
        return drop_egress(DropReason::NoFib);
    };
    let mtu = t.overlay.underlay_mtu as usize;
    if ip.total_len > mtu {
        return too_big(b, in_port, ip, mtu, t);
    }
    let frame = b.data_mut();
    let mut p = Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]).expect("checked");
    if p.ttl() <= 1 {
        return drop_egress(DropReason::TtlExceeded);
    }
    p.decrement_ttl();
    let mut eth = EthernetFrame::new_checked(frame).expect("checked");
    eth.set_dst(nh.dst_mac);
    eth.set_src(nh.src_mac);
    b.set_len(ethernet::HEADER_LEN + ip.total_len);
    Verdict::Route { port: nh.port }
}

/// A frame from the node NIC: VXLAN to `from-overlay`; anything else is native-routed
/// traffic for a local pod, NodePort/ExternalIP traffic, or a reply of a SNATed NodePort
/// connection (`from-netdev`).
#[inline]
pub fn from_netdev(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    let Ok(eth) = EthernetFrame::new_checked(b.data()) else {
        return drop_ingress(DropReason::Invalid);
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return drop_ingress(DropReason::UnknownL3);
    }
    // Not addressed to this NIC (a flooded frame meant for another host): not ours, as
    // ip_rcv ignores PACKET_OTHERHOST; delivering it would duplicate the intended hop's copy.
    match t.port(in_port) {
        Some(p) if p.mac == eth.dst() => {}
        _ => return drop_ingress(DropReason::InvalidDmac),
    }
    // One look at the outer IPv4 header: is it VXLAN for us, and where does its header sit?
    // What Linux's ip_rcv/udp_rcv check before a VXLAN socket sees a datagram is checked
    // here too (docs/overlay.md "Outer headers"): header checksum, a UDP length that fits
    // the IP payload (a shorter one trims it), a non-zero UDP checksum that verifies.
    let vxlan_at = {
        let ip = match Ipv4Packet::new_checked(&b.data()[ethernet::HEADER_LEN..]) {
            Ok(ip) => ip,
            Err(_) => return drop_ingress(DropReason::Invalid),
        };
        let udp = ip.payload();
        let to_tunnel_port = ip.protocol() == ipv4::PROTO_UDP
            && ip.frag_offset() == 0
            && udp.len() >= 4
            && u16::from_be_bytes([udp[2], udp[3]]) == t.overlay.tunnel_port;
        if to_tunnel_port {
            if ip.is_fragment() {
                // Reassembling the underlay is not ours to do.
                return drop_ingress(DropReason::FragNosupport);
            }
            if ip.dst() != t.overlay.node_ip {
                return drop_ingress(DropReason::UnknownTarget);
            }
            if !ip.verify_checksum() {
                return drop_ingress(DropReason::Invalid);
            }
            let Some(ulen) = l4::udp_length(udp) else {
                return drop_ingress(DropReason::Invalid);
            };
            if !l4::udp_checksum_ok(ip.src(), ip.dst(), &udp[..ulen]) {
                return drop_ingress(DropReason::Invalid);
            }
            let udp_off = ethernet::HEADER_LEN + ip.header_len();
            Some((udp_off + l4::UDP_HEADER_LEN, udp_off + ulen))
        } else {
            None
        }
    };
    match vxlan_at {
        Some((vxlan_off, end)) => from_overlay(b, vxlan_off, end, t, s),
        None => {
            let ip = match check_ipv4(b.data(), ethernet::HEADER_LEN) {
                Ok(ip) => ip,
                Err(r) => return drop_ingress(r),
            };
            // NodePort / ExternalIP from outside the cluster (nodeport_lb4).
            if ip.has_ports()
                && let Some((key, master)) = t.lb.frontend(ip.dst, ip.dport, ip.proto)
            {
                return lb::nodeport_lb4(b, ip, key, master, in_port, t, s);
            }
            // Native routing ingress: the source's identity comes from the ipcache.
            let src_id = t
                .ipcache_v4(ip.src)
                .map_or(identity::RESERVED_WORLD, |i| i.sec_identity);
            to_local_pod(b, &ip, src_id, t, s, |port| Verdict::RoutedIn { port })
        }
    }
}

/// `from-overlay`: the VXLAN header at `vxlan_off` (the outer IPv4 packet ends at `end`):
/// identity from the VNI, strip the outer headers, deliver.
#[inline]
fn from_overlay(
    b: &mut Buf<'_>,
    vxlan_off: usize,
    end: usize,
    t: &Tables,
    s: &mut Scratch,
) -> Verdict {
    let vni = match vxlan::parse(&b.data()[vxlan_off..end]) {
        Ok(h) => h.vni,
        Err(WireError::Truncated) => return drop_ingress(DropReason::Invalid),
        Err(WireError::Malformed) => return drop_ingress(DropReason::NoTunnelKey),
    };
    // Receiver rules: the VNI is the source identity; nobody may claim to be this host, and
    // an identity the cluster does not know is refused too.
    if vni == identity::RESERVED_HOST || vni == identity::RESERVED_UNKNOWN {
        return drop_ingress(DropReason::InvalidIdentity);
    }
    if !t.identities.contains(&vni) {
        return drop_ingress(DropReason::InvalidVni);
    }
    // Outer Ethernet padding is not part of the inner frame.
    b.set_len(end);
    b.pull_head(vxlan_off + vxlan::HEADER_LEN);
    let Ok(eth) = EthernetFrame::new_checked(b.data()) else {
        return drop_ingress(DropReason::Invalid);
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return drop_ingress(DropReason::UnknownL3);
    }
    let ip = match check_ipv4(b.data(), ethernet::HEADER_LEN) {
        Ok(ip) => ip,
        Err(r) => return drop_ingress(r),
    };
    to_local_pod(b, &ip, vni, t, s, |port| Verdict::Decap { port })
}

/// The IPv4 frame in `b` came from another node (decapsulated or natively routed) with
/// source identity `src_id`: deliver it to its local pod, or — addressed to this node —
/// reverse-translate it if it is the reply of a SNATed NodePort connection. `arrived` names
/// how it came.
#[inline]
fn to_local_pod(
    b: &mut Buf<'_>,
    ip: &Ip,
    src_id: u32,
    t: &Tables,
    s: &mut Scratch,
    arrived: fn(PortId) -> Verdict,
) -> Verdict {
    match t.endpoint_v4(ip.dst) {
        Some(ep) if ep.port.is_some() => {
            let st = CtState {
                src_sec_id: src_id,
                ..Default::default()
            };
            match local_delivery(b, ip, st, ep, MetricDir::Ingress, t, s) {
                Verdict::Deliver { port } => arrived(port),
                v => v,
            }
        }
        Some(_) if ip.tracked => lb::nodeport_snat_reply(b, ip, t, s),
        Some(_) => drop_ingress(DropReason::HostUnreachable),
        None => drop_ingress(DropReason::Unroutable),
    }
}

#[cfg(test)]
mod tests;
