//! Conntrack layouts, Cilium 1.19: key `ipv4_ct_tuple` (14 B) and value `ct_entry` (56 B) of
//! `cilium_ct4_global` (TCP) and `cilium_ct_any4_global` (everything else).
//!
//! Orientation (reference §6.1): for a connection whose first packet went A:a → B:b, every
//! non-service entry stores `daddr = A, saddr = B, dport = b, sport = a` — the address names
//! are reversed, the port names are not. Service entries store the packet's addresses as they
//! are on the wire (`daddr = VIP`) and its ports swapped. [`CtTuple4::connection`] and
//! [`CtTuple4::service`] build both from a packet's (src, dst, sport, dport) so the rule lives
//! in one place.

use std::net::Ipv4Addr;

use super::lb::proto_name;

pub const CT_TCP_MAP: &str = "cilium_ct4_global";
pub const CT_ANY_MAP: &str = "cilium_ct_any4_global";
/// The IPv6 twins (same value layout, [`CtTuple6`] keys).
pub const CT6_TCP_MAP: &str = "cilium_ct6_global";
pub const CT6_ANY_MAP: &str = "cilium_ct_any6_global";
/// `bpf-ct-global-tcp-max` / `bpf-ct-global-any-max` fixed defaults.
pub const CT_TCP_MAX: u32 = 524_288;
pub const CT_ANY_MAX: u32 = 262_144;

/// IP protocol numbers the conntrack maps are split on.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

/// `ipv4_ct_tuple.flags`.
pub const TUPLE_F_OUT: u8 = 0;
pub const TUPLE_F_IN: u8 = 1;
pub const TUPLE_F_RELATED: u8 = 2;
pub const TUPLE_F_SERVICE: u8 = 4;

/// `ct_entry.flags` bits (1.19).
pub const CT_RX_CLOSING: u16 = 0x0001;
pub const CT_TX_CLOSING: u16 = 0x0002;
pub const CT_LB_LOOPBACK: u16 = 0x0008;
pub const CT_SEEN_NON_SYN: u16 = 0x0010;
pub const CT_NODE_PORT: u16 = 0x0020;
pub const CT_PROXY_REDIRECT: u16 = 0x0040;
pub const CT_DSR_INTERNAL: u16 = 0x0080;
pub const CT_FROM_L7LB: u16 = 0x0100;
pub const CT_FROM_TUNNEL: u16 = 0x0400;

/// Default lifetimes in seconds (Cilium main / 1.19).
pub const LIFETIME_TCP: u32 = 8000;
pub const LIFETIME_TCP_SYN: u32 = 60;
pub const LIFETIME_TCP_CLOSE: u32 = 10;
pub const LIFETIME_NONTCP: u32 = 60;
pub const LIFETIME_SVC_TCP: u32 = 8000;
pub const LIFETIME_SVC_NONTCP: u32 = 60;
pub const LIFETIME_SVC_TCP_GRACE: u32 = 60;

/// A conntrack key of one address family, as the shared table stores it (`K` words): the
/// seam `control::ct::Conntrack` is generic over, so the IPv6
/// maps (`cilium_ct6_global`, `cilium_ct_any6_global`) are the same code with
/// [`CtTuple6`] and `K = 5`.
pub trait CtKey<const K: usize>: Copy + Eq + std::fmt::Debug {
    /// Wire bytes of an address of the family.
    type Addr: Copy + Eq + std::fmt::Debug;
    /// The TCP map or the other one.
    const TCP_MAP: &'static str;
    const ANY_MAP: &'static str;
    fn words(&self) -> [u64; K];
    fn from_words(w: [u64; K]) -> Self;
    /// The L4 protocol (which of the two maps holds the key).
    fn nexthdr(&self) -> u8;
    /// `TUPLE_F_*`.
    fn tuple_flags(&self) -> u8;
    /// Is `a` either address of the key?
    fn has_addr(&self, a: Self::Addr) -> bool;
    /// The key the other direction of the same connection looks up: addresses and ports
    /// swapped and `TUPLE_F_IN` flipped (Cilium's `ipv4_ct_tuple_reverse` plus the direction
    /// bit). A packet's reply key and forward key are each other's `reversed()`.
    fn reversed(&self) -> Self;
    /// The direction-free form of the key: the smaller (as words) of it and its reverse. Both
    /// directions of a connection have the same `flow_words`, so a table hashed on them keeps
    /// a connection's entries in one bucket and finds either direction in one probe.
    #[inline]
    fn flow_words(&self) -> [u64; K] {
        let (a, b) = (self.words(), self.reversed().words());
        if a <= b { a } else { b }
    }
}

/// The two tuples have the same fields and differ only in address width: one impl for both.
macro_rules! ct_key {
    ($tuple:ty, $k:literal, $addr:ty, $tcp:expr, $any:expr) => {
        impl CtKey<$k> for $tuple {
            type Addr = $addr;
            const TCP_MAP: &'static str = $tcp;
            const ANY_MAP: &'static str = $any;
            #[inline]
            fn words(&self) -> [u64; $k] {
                <$tuple>::words(self)
            }
            #[inline]
            fn from_words(w: [u64; $k]) -> Self {
                <$tuple>::from_words(w)
            }
            #[inline]
            fn nexthdr(&self) -> u8 {
                self.nexthdr
            }
            #[inline]
            fn tuple_flags(&self) -> u8 {
                self.flags
            }
            #[inline]
            fn has_addr(&self, a: $addr) -> bool {
                self.saddr == a || self.daddr == a
            }
            #[inline]
            fn reversed(&self) -> Self {
                Self {
                    daddr: self.saddr,
                    saddr: self.daddr,
                    dport: self.sport,
                    sport: self.dport,
                    nexthdr: self.nexthdr,
                    flags: self.flags ^ TUPLE_F_IN,
                }
            }
        }
    };
}

ct_key!(CtTuple4, 2, [u8; 4], CT_TCP_MAP, CT_ANY_MAP);
ct_key!(CtTuple6, 5, [u8; 16], CT6_TCP_MAP, CT6_ANY_MAP);

/// `struct ipv4_ct_tuple` (14 B, packed).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct CtTuple4 {
    pub daddr: [u8; 4],
    pub saddr: [u8; 4],
    pub dport: [u8; 2],
    pub sport: [u8; 2],
    pub nexthdr: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<CtTuple4>() == 14);

impl CtTuple4 {
    /// The key of a connection whose first packet went `src:sport → dst:dport`.
    #[inline]
    pub fn connection(
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        proto: u8,
        flags: u8,
    ) -> CtTuple4 {
        CtTuple4 {
            daddr: src,
            saddr: dst,
            dport: dport.to_be_bytes(),
            sport: sport.to_be_bytes(),
            nexthdr: proto,
            flags,
        }
    }

    /// The service entry of a packet `src:sport → vip:vport`.
    #[inline]
    pub fn service(src: [u8; 4], vip: [u8; 4], sport: u16, vport: u16, proto: u8) -> CtTuple4 {
        CtTuple4 {
            daddr: vip,
            saddr: src,
            dport: sport.to_be_bytes(),
            sport: vport.to_be_bytes(),
            nexthdr: proto,
            flags: TUPLE_F_SERVICE,
        }
    }

    /// The connection's original sender and receiver as (addr, port) pairs: what the CLI
    /// prints as `A:a -> B:b`.
    pub fn endpoints(&self) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
        if self.flags & TUPLE_F_SERVICE != 0 {
            (
                (Ipv4Addr::from(self.saddr), u16::from_be_bytes(self.dport)),
                (Ipv4Addr::from(self.daddr), u16::from_be_bytes(self.sport)),
            )
        } else {
            (
                (Ipv4Addr::from(self.daddr), u16::from_be_bytes(self.sport)),
                (Ipv4Addr::from(self.saddr), u16::from_be_bytes(self.dport)),
            )
        }
    }

    /// The 14 key bytes in two words (the concurrent table's key form).
    #[inline]
    pub fn words(&self) -> [u64; 2] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.daddr);
        b[4..8].copy_from_slice(&self.saddr);
        b[8..10].copy_from_slice(&self.dport);
        b[10..12].copy_from_slice(&self.sport);
        b[12] = self.nexthdr;
        b[13] = self.flags;
        [
            u64::from_le_bytes(b[..8].try_into().expect("8")),
            u64::from_le_bytes(b[8..].try_into().expect("8")),
        ]
    }

    pub fn from_words(w: [u64; 2]) -> CtTuple4 {
        let a = w[0].to_le_bytes();
        let b = w[1].to_le_bytes();
        CtTuple4 {
            daddr: [a[0], a[1], a[2], a[3]],
            saddr: [a[4], a[5], a[6], a[7]],
            dport: [b[0], b[1]],
            sport: [b[2], b[3]],
            nexthdr: b[4],
            flags: b[5],
        }
    }

    /// `OUT`, `IN` or `SVC` as the CLI prints the direction.
    pub fn kind(&self) -> &'static str {
        if self.flags & TUPLE_F_SERVICE != 0 {
            "SVC"
        } else if self.flags & TUPLE_F_IN != 0 {
            "IN"
        } else {
            "OUT"
        }
    }
}

/// `struct ct_entry` (56 B), 1.19 layout.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct CtEntry {
    /// Egress entries: the NAT address (IPv4 in bytes 0-3, wire order); service entries:
    /// reserved (0).
    pub nat_addr_lo: [u8; 8],
    /// Egress entries: second half of `nat_addr`; service entries: backend ID (u64, host).
    pub backend_id: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Absolute expiry, seconds of CLOCK_MONOTONIC.
    pub lifetime: u32,
    pub flags: u16,
    /// Network order.
    pub rev_nat_index: u16,
    /// Network order (egress entries).
    pub nat_port: u16,
    pub tx_flags_seen: u8,
    pub rx_flags_seen: u8,
    pub src_sec_id: u32,
    pub last_tx_report: u32,
    pub last_rx_report: u32,
}
const _: () = assert!(size_of::<CtEntry>() == 56);

const FLAG_NAMES: [(u16, &str); 10] = [
    (CT_RX_CLOSING, "RxClosing"),
    (CT_TX_CLOSING, "TxClosing"),
    (CT_LB_LOOPBACK, "LBLoopback"),
    (CT_SEEN_NON_SYN, "SeenNonSyn"),
    (CT_NODE_PORT, "NodePort"),
    (CT_PROXY_REDIRECT, "ProxyRedirect"),
    (CT_DSR_INTERNAL, "DSR"),
    (CT_FROM_L7LB, "FromL7LB"),
    (0x0200, "AuthRequired"),
    (CT_FROM_TUNNEL, "FromTunnel"),
];

/// One `cilium-dbg bpf ct list global` line.
pub fn format_line(k: &CtTuple4, v: &CtEntry) -> String {
    let ((a, ap), (b, bp)) = k.endpoints();
    let related = if k.flags & TUPLE_F_RELATED != 0 {
        " related"
    } else {
        ""
    };
    let mut names: Vec<&str> = FLAG_NAMES
        .iter()
        .filter(|(bit, _)| v.flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        names.push("");
    }
    let nat = Ipv4Addr::new(
        v.nat_addr_lo[0],
        v.nat_addr_lo[1],
        v.nat_addr_lo[2],
        v.nat_addr_lo[3],
    );
    let backend = if k.flags & TUPLE_F_SERVICE != 0 {
        v.backend_id
    } else {
        0
    };
    let mut s = format!(
        "{} {} {a}:{ap} -> {b}:{bp}{related} expires={} Packets={} Bytes={} RxFlagsSeen={:#04x} LastRxReport={} TxFlagsSeen={:#04x} LastTxReport={} Flags={:#06x} [ {} ] RevNAT={} SourceSecurityID={} BackendID={} NatPort={}",
        proto_name(k.nexthdr),
        k.kind(),
        v.lifetime,
        v.packets,
        v.bytes,
        v.rx_flags_seen,
        v.last_rx_report,
        v.tx_flags_seen,
        v.last_tx_report,
        v.flags,
        names.join(" "),
        u16::from_be(v.rev_nat_index),
        v.src_sec_id,
        backend,
        u16::from_be(v.nat_port),
    );
    if k.flags & TUPLE_F_SERVICE == 0 && !nat.is_unspecified() {
        s.push_str(&format!(" NatAddr={nat}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// The reply key the pipeline builds for a packet is the reverse of the forward key of
    /// the same packet (so one symmetric-hashed probe finds either), and reversing twice is
    /// the identity; different connections keep different flow words.
    #[test]
    fn reply_and_forward_keys_are_each_others_reverse() {
        let (a, b) = ([10, 0, 1, 5], [10, 0, 2, 9]);
        let fwd = CtTuple4::connection(a, b, 40000, 53, 17, TUPLE_F_OUT);
        let reply = CtTuple4::connection(b, a, 53, 40000, 17, TUPLE_F_IN);
        assert_eq!(fwd.reversed(), reply);
        assert_eq!(reply.reversed(), fwd);
        assert_eq!(fwd.flow_words(), reply.flow_words());
        // The to-container pair (IN forward, OUT reply) too.
        let fwd_in = CtTuple4::connection(a, b, 40000, 53, 17, TUPLE_F_IN);
        let reply_out = CtTuple4::connection(b, a, 53, 40000, 17, TUPLE_F_OUT);
        assert_eq!(fwd_in.reversed(), reply_out);
        assert_eq!(fwd_in.flow_words(), reply_out.flow_words());
        // Another source port, another protocol, or the service flag: another flow.
        for other in [
            CtTuple4::connection(a, b, 40001, 53, 17, TUPLE_F_OUT),
            CtTuple4::connection(a, b, 40000, 53, 6, TUPLE_F_OUT),
            CtTuple4::service(a, b, 40000, 53, 17),
        ] {
            assert_ne!(other.flow_words(), fwd.flow_words(), "{other:?}");
        }
        let v6 = CtTuple6 {
            daddr: [1; 16],
            saddr: [2; 16],
            dport: [0, 80],
            sport: [0x9c, 0x40],
            nexthdr: 6,
            flags: TUPLE_F_OUT,
        };
        assert_eq!(v6.reversed().reversed(), v6);
        assert_eq!(v6.reversed().saddr, [1; 16]);
        assert_eq!(v6.reversed().flags, TUPLE_F_IN);
        assert_eq!(v6.flow_words(), v6.reversed().flow_words());
    }

    #[test]
    fn layouts_match_cilium() {
        assert_eq!(offset_of!(CtTuple4, saddr), 4);
        assert_eq!(offset_of!(CtTuple4, dport), 8);
        assert_eq!(offset_of!(CtTuple4, sport), 10);
        assert_eq!(offset_of!(CtTuple4, nexthdr), 12);
        assert_eq!(offset_of!(CtTuple4, flags), 13);
        assert_eq!(offset_of!(CtEntry, backend_id), 8);
        assert_eq!(offset_of!(CtEntry, packets), 16);
        assert_eq!(offset_of!(CtEntry, bytes), 24);
        assert_eq!(offset_of!(CtEntry, lifetime), 32);
        assert_eq!(offset_of!(CtEntry, flags), 36);
        assert_eq!(offset_of!(CtEntry, rev_nat_index), 38);
        assert_eq!(offset_of!(CtEntry, nat_port), 40);
        assert_eq!(offset_of!(CtEntry, tx_flags_seen), 42);
        assert_eq!(offset_of!(CtEntry, rx_flags_seen), 43);
        assert_eq!(offset_of!(CtEntry, src_sec_id), 44);
        assert_eq!(offset_of!(CtEntry, last_tx_report), 48);
        assert_eq!(offset_of!(CtEntry, last_rx_report), 52);
    }

    #[test]
    fn orientation_and_cli_line() {
        // A = 10.0.1.23:43512 connects to B = 10.0.2.7:8080.
        let t = CtTuple4::connection([10, 0, 1, 23], [10, 0, 2, 7], 43512, 8080, 6, TUPLE_F_OUT);
        assert_eq!(t.daddr, [10, 0, 1, 23]);
        assert_eq!(t.saddr, [10, 0, 2, 7]);
        assert_eq!(t.dport, 8080u16.to_be_bytes());
        assert_eq!(t.sport, 43512u16.to_be_bytes());
        assert_eq!(CtTuple4::from_words(t.words()), t);
        let v = CtEntry {
            lifetime: 16523,
            flags: CT_SEEN_NON_SYN,
            tx_flags_seen: 0x1a,
            rx_flags_seen: 0x1a,
            src_sec_id: 48213,
            ..Default::default()
        };
        assert_eq!(
            format_line(&t, &v),
            "TCP OUT 10.0.1.23:43512 -> 10.0.2.7:8080 expires=16523 Packets=0 Bytes=0 \
             RxFlagsSeen=0x1a LastRxReport=0 TxFlagsSeen=0x1a LastTxReport=0 Flags=0x0010 \
             [ SeenNonSyn ] RevNAT=0 SourceSecurityID=48213 BackendID=0 NatPort=0"
        );
        // The service entry of the same client towards 10.96.0.10:53.
        let s = CtTuple4::service([10, 0, 1, 23], [10, 96, 0, 10], 43512, 53, 17);
        assert_eq!(s.dport, 43512u16.to_be_bytes());
        assert_eq!(s.sport, 53u16.to_be_bytes());
        let sv = CtEntry {
            backend_id: 7,
            rev_nat_index: 4u16.to_be(),
            ..Default::default()
        };
        let line = format_line(&s, &sv);
        assert!(
            line.starts_with("UDP SVC 10.0.1.23:43512 -> 10.96.0.10:53 expires=0"),
            "{line}"
        );
        assert!(
            line.contains("RevNAT=4 SourceSecurityID=0 BackendID=7"),
            "{line}"
        );
    }
}

/// `struct ipv6_ct_tuple` (38 B, packed): the IPv6 conntrack key, the same fields as
/// [`CtTuple4`] with 16-byte addresses. Its five-word form is the key of the shared table's
/// wide variant (`SharedTable<W, 5>`), the address-family seam conntrack will use.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct CtTuple6 {
    pub daddr: [u8; 16],
    pub saddr: [u8; 16],
    pub dport: [u8; 2],
    pub sport: [u8; 2],
    pub nexthdr: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<CtTuple6>() == 38);

impl CtTuple6 {
    /// The 38 key bytes in five words (the last two bytes zero).
    #[inline]
    pub fn words(&self) -> [u64; 5] {
        let mut b = [0u8; 40];
        b[0..16].copy_from_slice(&self.daddr);
        b[16..32].copy_from_slice(&self.saddr);
        b[32..34].copy_from_slice(&self.dport);
        b[34..36].copy_from_slice(&self.sport);
        b[36] = self.nexthdr;
        b[37] = self.flags;
        std::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8")))
    }

    pub fn from_words(w: [u64; 5]) -> CtTuple6 {
        let mut b = [0u8; 40];
        for (i, x) in w.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&x.to_le_bytes());
        }
        CtTuple6 {
            daddr: b[0..16].try_into().expect("16"),
            saddr: b[16..32].try_into().expect("16"),
            dport: [b[32], b[33]],
            sport: [b[34], b[35]],
            nexthdr: b[36],
            flags: b[37],
        }
    }
}

#[cfg(test)]
mod v6_tests {
    use super::*;

    #[test]
    fn ipv6_tuple_round_trips_through_its_words() {
        let t = CtTuple6 {
            daddr: std::array::from_fn(|i| i as u8 + 1),
            saddr: std::array::from_fn(|i| 0xf0 - i as u8),
            dport: 443u16.to_be_bytes(),
            sport: 40000u16.to_be_bytes(),
            nexthdr: PROTO_TCP,
            flags: TUPLE_F_IN,
        };
        assert_eq!(CtTuple6::from_words(t.words()), t);
        let mut u = t;
        u.flags = TUPLE_F_OUT;
        assert_ne!(u.words(), t.words(), "the flags are part of the key");
    }
}
