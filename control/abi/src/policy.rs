//! Per-endpoint policy maps `cilium_policy_v3_<endpoint id>`, Cilium 1.20's (1.20.2): the
//! key and value of 1.19's `cilium_policy_v2_` (reference §7.3), renamed because the
//! semantics changed (cilium#47080): the second lookup is under the remote identity's
//! aggregate ([`crate::identity::policy_aggregate`], cilium#46438), not always 0. An LPM
//! over (remote identity, direction, protocol, destination port).
//!
//! - The identity and the direction byte are always matched in full (40 fixed bits); the
//!   protocol and port are the prefix: 0 bits = any protocol and port, 8 = this protocol,
//!   8 + N = the protocol and the top N bits of the port. Port ranges are written as
//!   power-of-two-aligned prefixes ([`port_prefixes`]).
//! - Identity 0 is "any identity", 2 "any of the world's", 6 "any remote node's": separate
//!   entries, never a prefix; an any-identity rule is written under all three.
//! - `precedence` decides between the identity's hit and the aggregate's hit: a deny is
//!   `0xFFFFFFFF`, a plain allow at the default priority `0xFFFFFF01`.
//! - `dport` is network order; everything else host order.

use std::fmt;

use super::lb::proto_name;

/// Map name prefix (1.20+; `cilium_policy_v2_` in 1.17–1.19); the endpoint ID follows as
/// five zero-padded digits.
pub const POLICY_MAP_PREFIX: &str = "cilium_policy_v3_";
/// `bpf-policy-map-max`.
pub const POLICY_MAP_MAX: usize = 16384;
/// Bits of the key that are always matched: identity (32) + direction byte (8).
pub const FIXED_BITS: u32 = 40;
/// Prefix length of an exact (protocol, port) key.
pub const FULL_BITS: u32 = 64;

/// `policy_entry.precedence` of a deny (necessarily the highest).
pub const PRECEDENCE_DENY: u32 = 0xFFFF_FFFF;
/// A plain allow at the default rule priority: inverted priority 0 (`0xFFFFFF`) in bits 8-31,
/// 1 in bits 0-7.
pub const PRECEDENCE_ALLOW: u32 = 0xFFFF_FF01;

/// `policy_entry.flags` bit 0.
pub const FLAG_DENY: u8 = 0x01;

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// The map name of an endpoint's policy map.
pub fn map_name(ep_id: u16) -> String {
    format!("{POLICY_MAP_PREFIX}{ep_id:05}")
}

/// `struct policy_key` (12 B).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct PolicyKey {
    /// 40 + protocol/port prefix length, host order.
    pub prefixlen: u32,
    /// Remote identity, host order; 0 = any.
    pub sec_label: u32,
    /// Bit 0: 1 = egress.
    pub egress: u8,
    /// 0 = any (then the port is wildcarded too).
    pub protocol: u8,
    /// Destination port (ICMP: the type), network order.
    pub dport: [u8; 2],
}
const _: () = assert!(size_of::<PolicyKey>() == 12);

impl PolicyKey {
    /// A key for `identity` in direction `dir` ([`DIR_INGRESS`]/[`DIR_EGRESS`]) matching
    /// `proto` (0 = any) and the top `port_bits` bits of `port` (0 = any port). The port's
    /// bits beyond the prefix are cleared, so equal prefixes give equal keys.
    pub fn new(identity: u32, dir: u8, proto: u8, port: u16, port_bits: u8) -> PolicyKey {
        let (proto, port_bits) = if proto == 0 {
            (0, 0)
        } else {
            (proto, port_bits.min(16))
        };
        let mask = if port_bits == 0 {
            0
        } else {
            u16::MAX << (16 - port_bits)
        };
        let plen = if proto == 0 { 0 } else { 8 + port_bits as u32 };
        PolicyKey {
            prefixlen: FIXED_BITS + plen,
            sec_label: identity,
            egress: dir & 1,
            protocol: proto,
            dport: (port & mask).to_be_bytes(),
        }
    }

    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }

    /// The protocol+port prefix length (0..=24): what `lpm_prefix_length` and the PREFIX
    /// column hold.
    pub fn lpm_len(&self) -> u8 {
        self.prefixlen.saturating_sub(FIXED_BITS) as u8
    }

    /// Bits of the port in the prefix (0..=16).
    pub fn port_bits(&self) -> u8 {
        self.lpm_len().saturating_sub(8)
    }

    pub fn is_egress(&self) -> bool {
        self.egress & 1 == 1
    }

    /// Does this key's protocol/port prefix cover `other`'s (same identity and direction not
    /// checked)?
    pub fn covers(&self, other: &PolicyKey) -> bool {
        if self.lpm_len() > other.lpm_len() {
            return false;
        }
        if self.protocol == 0 {
            return true;
        }
        if self.protocol != other.protocol {
            return false;
        }
        let bits = self.port_bits();
        let mask = if bits == 0 {
            0
        } else {
            u16::MAX << (16 - bits)
        };
        other.port() & mask == self.port()
    }

    /// The PORT/PROTO column: `ANY`, `TCP`, `80/TCP`, `8000-8063/TCP`.
    pub fn port_proto(&self) -> String {
        if self.protocol == 0 {
            return "ANY".into();
        }
        let name = proto_name(self.protocol);
        match self.port_bits() {
            0 => name.into(),
            16 => format!("{}/{name}", self.port()),
            b => {
                let span = (1u32 << (16 - b)) - 1;
                format!("{}-{}/{name}", self.port(), self.port() as u32 + span)
            }
        }
    }

    /// The DIRECTION column.
    pub fn direction(&self) -> &'static str {
        if self.is_egress() {
            "Egress"
        } else {
            "Ingress"
        }
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.direction(),
            if self.sec_label == 0 {
                "ANY".to_string()
            } else {
                self.sec_label.to_string()
            },
            self.port_proto()
        )
    }
}

/// `struct policy_entry` (12 B, 1.19).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct PolicyEntry {
    /// L7 proxy port, network order; 0 = none (fastpath has no proxy: always 0).
    pub proxy_port: [u8; 2],
    /// Bit 0 deny; bits 3-7 this entry's protocol+port prefix length.
    pub flags: u8,
    /// Bits 0-6 auth type, bit 7 explicit (always 0 here).
    pub auth: u8,
    /// Host order; higher wins.
    pub precedence: u32,
    /// Policy-log cookie (the rule's index in `bpf policy get`'s provenance; 0 = none).
    pub cookie: u32,
}
const _: () = assert!(size_of::<PolicyEntry>() == 12);

impl PolicyEntry {
    /// The entry for `key`: an allow or a deny at the default priority.
    pub fn new(key: &PolicyKey, deny: bool, cookie: u32) -> PolicyEntry {
        PolicyEntry {
            proxy_port: [0; 2],
            flags: (key.lpm_len() << 3) | if deny { FLAG_DENY } else { 0 },
            auth: 0,
            precedence: if deny {
                PRECEDENCE_DENY
            } else {
                PRECEDENCE_ALLOW
            },
            cookie,
        }
    }

    pub fn is_deny(&self) -> bool {
        self.flags & FLAG_DENY != 0
    }

    pub fn lpm_len(&self) -> u8 {
        self.flags >> 3
    }
}

/// Split the inclusive port range `lo..=hi` into power-of-two-aligned prefixes
/// `(port, bits)`, fewest first-to-last (what Cilium writes for `port` + `endPort`).
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size_log = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while lo + (1 << size_log) - 1 > hi {
            size_log -= 1;
        }
        out.push((lo as u16, 16 - size_log as u8));
        lo += 1 << size_log;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_cilium() {
        // policy_key: prefixlen u32 @0, sec_label u32 @4, egress @8, protocol @9, dport @10.
        let k = PolicyKey::new(0x0102_0304, DIR_EGRESS, 6, 80, 16);
        let b: [u8; 12] = unsafe_free_bytes_key(&k);
        assert_eq!(&b[0..4], &64u32.to_ne_bytes());
        assert_eq!(&b[4..8], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(b[8], 1);
        assert_eq!(b[9], 6);
        assert_eq!(&b[10..12], &[0, 80], "dport is network order");
        let e = PolicyEntry::new(&k, true, 7);
        assert_eq!(e.flags, (24 << 3) | 1, "deny bit and lpm_prefix_length 24");
        assert_eq!(e.precedence, 0xFFFF_FFFF);
        assert_eq!(PolicyEntry::new(&k, false, 0).precedence, 0xFFFF_FF01);
    }

    fn unsafe_free_bytes_key(k: &PolicyKey) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&k.prefixlen.to_ne_bytes());
        b[4..8].copy_from_slice(&k.sec_label.to_ne_bytes());
        b[8] = k.egress;
        b[9] = k.protocol;
        b[10..12].copy_from_slice(&k.dport);
        // Field offsets as the C struct has them.
        assert_eq!(std::mem::offset_of!(PolicyKey, sec_label), 4);
        assert_eq!(std::mem::offset_of!(PolicyKey, egress), 8);
        assert_eq!(std::mem::offset_of!(PolicyKey, protocol), 9);
        assert_eq!(std::mem::offset_of!(PolicyKey, dport), 10);
        assert_eq!(std::mem::offset_of!(PolicyEntry, flags), 2);
        assert_eq!(std::mem::offset_of!(PolicyEntry, auth), 3);
        assert_eq!(std::mem::offset_of!(PolicyEntry, precedence), 4);
        assert_eq!(std::mem::offset_of!(PolicyEntry, cookie), 8);
        b
    }

    #[test]
    fn keys_and_columns() {
        assert_eq!(
            PolicyKey::new(5, 0, 0, 80, 16).prefixlen,
            40,
            "any proto wipes port"
        );
        assert_eq!(PolicyKey::new(5, 0, 6, 0, 0).port_proto(), "TCP");
        assert_eq!(PolicyKey::new(5, 0, 17, 53, 16).port_proto(), "53/UDP");
        assert_eq!(
            PolicyKey::new(5, 0, 6, 8000, 10).port_proto(),
            "8000-8063/TCP"
        );
        assert_eq!(PolicyKey::new(5, 0, 0, 0, 0).port_proto(), "ANY");
        let tcp = PolicyKey::new(5, 0, 6, 0, 0);
        let p80 = PolicyKey::new(5, 0, 6, 80, 16);
        let r = PolicyKey::new(5, 0, 6, 64, 10);
        assert!(tcp.covers(&p80) && r.covers(&p80) && !p80.covers(&r));
        assert!(!PolicyKey::new(5, 0, 17, 0, 0).covers(&p80));
        assert_eq!(map_name(42), "cilium_policy_v3_00042");
    }

    #[test]
    fn port_ranges_become_aligned_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(8000, 8063), vec![(8000, 10)]);
        assert_eq!(
            port_prefixes(8000, 8100),
            vec![(8000, 10), (8064, 11), (8096, 14), (8100, 16)]
        );
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        // Brute force: the prefixes cover exactly the range, without overlap.
        for (lo, hi) in [
            (1u16, 1023u16),
            (7, 9),
            (1000, 2000),
            (65530, 65535),
            (0, 5),
        ] {
            let ps = port_prefixes(lo, hi);
            let mut n = 0u32;
            for p in 0..=65535u32 {
                let hits = ps
                    .iter()
                    .filter(|(b, bits)| {
                        let m = if *bits == 0 {
                            0
                        } else {
                            u16::MAX << (16 - bits)
                        };
                        (p as u16) & m == *b
                    })
                    .count();
                let inside = (lo as u32..=hi as u32).contains(&p);
                assert_eq!(hits, inside as usize, "{lo}-{hi} port {p}");
                n += hits as u32;
            }
            assert_eq!(n, hi as u32 - lo as u32 + 1);
        }
    }
}
