//! Parse once: the IPv4 header checked (version, lengths, header checksum) and the L4
//! header the later steps key on, summarised in an [`Ip`] every step reads. The one place a
//! frame's L3/L4 fields are read; steps that rewrite the packet (DNAT, SNAT) update the
//! summary with it.

use abi::DropReason;
use abi::net::{Family, V4};

use crate::wire::{Ipv4Packet, WireError, icmp, ipv4, l4};

/// The fields of a checked IPv4 packet the later steps need (the view borrows the frame).
///
/// Only fields read from the packet are stored; everything derived from them (the port
/// policy matches on, the flow-hash ports) is computed from the *current* addresses and
/// ports by a method, so a stage that rewrites the packet (DNAT, SNAT) and updates
/// `dst`/`dport` or `src`/`sport` leaves nothing stale behind: policy after DNAT sees the
/// backend's port, as Cilium's does.
///
/// Generic over the address family (`Ip` is `Ip<V4>`): the IPv6 parse fills an `Ip<V6>` and
/// every accessor below serves both.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ip<F: Family = V4> {
    pub(super) src: F::Addr,
    pub(super) dst: F::Addr,
    pub(super) total_len: usize,
    pub(super) dont_frag: bool,
    pub(super) proto: u8,
    /// Conntrack ports: TCP/UDP ports; for ICMP echo the identifier as the requester's
    /// "source port" (request: sport = id; reply: dport = id).
    pub(super) sport: u16,
    pub(super) dport: u16,
    /// ICMP type and echo identifier (0 for other protocols).
    pub(super) icmp_type: u8,
    pub(super) icmp_id: u16,
    pub(super) tcp_flags: u8,
    /// Conntrack and services apply: TCP, UDP or ICMP echo, not a later fragment.
    pub(super) tracked: bool,
    /// A fragment after the first (no L4 header).
    pub(super) later_fragment: bool,
    /// The destination (address, port) the sender used, when a service translated it: an
    /// ICMP error about the packet quotes it as sent, so the sender's stack can match it to
    /// its socket (as Linux's NAT translates the packet an ICMP error embeds).
    pub(super) orig_dst: Option<(F::Addr, u16)>,
}

impl<F: Family> Ip<F> {
    /// Is this TCP or UDP (what services translate)?
    #[inline]
    pub(super) fn has_ports(&self) -> bool {
        self.tracked && (self.proto == ipv4::PROTO_TCP || self.proto == ipv4::PROTO_UDP)
    }

    /// The port policy matches on: the (translated) TCP/UDP destination port, the ICMP
    /// type, 0 otherwise (and for later fragments, which carry no L4 header).
    #[inline]
    pub(super) fn policy_port(&self) -> u16 {
        match self.proto {
            _ if self.later_fragment => 0,
            ipv4::PROTO_TCP | ipv4::PROTO_UDP => self.dport,
            p if p == F::ICMP => self.icmp_type as u16,
            _ => 0,
        }
    }

    /// The L4 word of the flow hash (outer UDP source port): both ports, or the ICMP
    /// identifier.
    #[inline]
    pub(super) fn flow_ports(&self) -> u32 {
        match self.proto {
            ipv4::PROTO_TCP | ipv4::PROTO_UDP => (self.sport as u32) << 16 | self.dport as u32,
            p if p == F::ICMP => self.icmp_id as u32,
            _ => 0,
        }
    }
}

/// Validate an IPv4 packet at `off` in the frame, including its L4 header when it has one.
#[inline]
pub(super) fn check_ipv4(frame: &[u8], off: usize) -> Result<Ip, DropReason> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use abi::net::V6;

    /// The parsed flow is generic over the family: an `Ip<V6>` derives the same policy
    /// port and flow-hash word as an `Ip<V4>` of the same L4 fields, ICMPv6 (58) playing
    /// ICMP's part, and a rewritten destination leaves nothing stale.
    #[test]
    fn the_parsed_flow_takes_an_address_family() {
        let v4 = Ip::<V4> {
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
            total_len: 60,
            dont_frag: true,
            proto: ipv4::PROTO_TCP,
            sport: 40000,
            dport: 80,
            icmp_type: 0,
            icmp_id: 0,
            tcp_flags: 0x02,
            tracked: true,
            later_fragment: false,
            orig_dst: None,
        };
        let mut v6 = Ip::<V6> {
            src: [0xfd; 16],
            dst: [0xfe; 16],
            total_len: v4.total_len,
            dont_frag: v4.dont_frag,
            proto: v4.proto,
            sport: v4.sport,
            dport: v4.dport,
            icmp_type: 0,
            icmp_id: 0,
            tcp_flags: v4.tcp_flags,
            tracked: true,
            later_fragment: false,
            orig_dst: None,
        };
        assert!(v6.has_ports() && v4.has_ports());
        assert_eq!(v6.policy_port(), v4.policy_port());
        assert_eq!(v6.flow_ports(), v4.flow_ports());
        // DNAT rewrites the destination port: policy sees the new one.
        v6.orig_dst = Some((v6.dst, v6.dport));
        v6.dport = 8080;
        assert_eq!(v6.policy_port(), 8080);
        // ICMPv6 echo request (type 128): the type is the policy port, the identifier the
        // flow word; protocol 1 means nothing in IPv6.
        let echo6 = Ip::<V6> {
            proto: 58,
            icmp_type: 128,
            icmp_id: 0x1234,
            sport: 0x1234,
            dport: 0,
            ..v6
        };
        assert_eq!((echo6.policy_port(), echo6.flow_ports()), (128, 0x1234));
        assert!(!echo6.has_ports());
        let not_icmp6 = Ip::<V6> { proto: 1, ..echo6 };
        assert_eq!((not_icmp6.policy_port(), not_icmp6.flow_ports()), (0, 0));
        let echo4 = Ip::<V4> {
            proto: ipv4::PROTO_ICMP,
            icmp_type: 8,
            icmp_id: 0x1234,
            ..v4
        };
        assert_eq!((echo4.policy_port(), echo4.flow_ports()), (8, 0x1234));
    }
}
