//! VXLAN (RFC 7348) over UDP/IPv4/Ethernet, as Linux and Cilium put it on the wire.
//!
//! ```text
//! outer Ethernet (14) | outer IPv4 (20, no options) | UDP (8) | VXLAN (8) | inner Ethernet …
//! VXLAN: flags (0x08 = VNI valid) | 3 reserved | VNI (24 bits) | 1 reserved
//! ```
//! Cilium carries the source security identity in the VNI.

use super::{WireError, checksum, ethernet, ipv4};
use abi::MacAddr;

pub const HEADER_LEN: usize = 8;
/// Outer Ethernet + IPv4 + UDP + VXLAN: what encapsulation adds in front of the inner frame.
pub const ENCAP_LEN: usize =
    ethernet::HEADER_LEN + ipv4::HEADER_LEN + super::l4::UDP_HEADER_LEN + HEADER_LEN;
/// What it adds to the IP packet the underlay carries (the overlay MTU is underlay MTU − this).
pub const OVERHEAD: usize = ENCAP_LEN;
/// The "I" flag: the VNI field is valid.
pub const FLAG_VNI: u8 = 0x08;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// A checked VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanHeader {
    pub vni: u32,
}

/// Parse a VXLAN header. Like Linux's `vxlan_rcv`, anything but exactly the I flag with zero
/// reserved fields is refused (`Malformed`): no GBP/GPE extensions are spoken here.
pub fn parse(b: &[u8]) -> Result<VxlanHeader, WireError> {
    if b.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    if b[0] != FLAG_VNI || b[1..4] != [0, 0, 0] || b[7] != 0 {
        return Err(WireError::Malformed);
    }
    Ok(VxlanHeader {
        vni: u32::from_be_bytes([0, b[4], b[5], b[6]]),
    })
}

/// The outer headers of one encapsulated frame.
#[derive(Debug, Clone, Copy)]
pub struct Outer {
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub ip_id: u16,
    pub sport: u16,
    pub dport: u16,
    pub vni: u32,
}

/// Write the 50 outer bytes into `buf[..ENCAP_LEN]`; `inner_len` is the inner Ethernet
/// frame's length. Outer IPv4: TTL 64, DF clear (as the Linux VXLAN default), checksum
/// computed. UDP checksum 0 (allowed for IPv4, the Linux default for VXLAN).
pub fn emit(buf: &mut [u8], o: &Outer, inner_len: usize) {
    let (eth, rest) = buf.split_at_mut(ethernet::HEADER_LEN);
    ethernet::emit(eth, o.dst_mac, o.src_mac, ethernet::EtherType::Ipv4);
    let ip_len = ipv4::HEADER_LEN + super::l4::UDP_HEADER_LEN + HEADER_LEN + inner_len;
    let ip = &mut rest[..ipv4::HEADER_LEN];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&o.ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&[0, 0]);
    ip[8] = 64;
    ip[9] = ipv4::PROTO_UDP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&o.src_ip);
    ip[16..20].copy_from_slice(&o.dst_ip);
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut rest[ipv4::HEADER_LEN..ipv4::HEADER_LEN + 8];
    udp[0..2].copy_from_slice(&o.sport.to_be_bytes());
    udp[2..4].copy_from_slice(&o.dport.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + HEADER_LEN + inner_len) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let vx = &mut rest[ipv4::HEADER_LEN + 8..ipv4::HEADER_LEN + 8 + HEADER_LEN];
    vx[0] = FLAG_VNI;
    vx[1..4].copy_from_slice(&[0, 0, 0]);
    vx[4..7].copy_from_slice(&o.vni.to_be_bytes()[1..]);
    vx[7] = 0;
}

/// The UDP source port for a flow, spread over 32768..61000 like Linux's
/// `udp_flow_src_port` with the default local port range, so ECMP and RSS on the underlay
/// spread flows while one flow keeps one port (no reordering).
#[inline]
pub fn flow_src_port(hash: u32) -> u16 {
    const MIN: u32 = 32768;
    const MAX: u32 = 61000;
    (((hash as u64 * (MAX - MIN) as u64) >> 32) as u32 + MIN) as u16
}

/// A 32-bit hash of an inner flow (addresses, protocol, ports), cheap and well mixed.
#[inline]
pub fn flow_hash(src: [u8; 4], dst: [u8; 4], proto: u8, ports: u32) -> u32 {
    let a = u32::from_be_bytes(src) as u64;
    let b = u32::from_be_bytes(dst) as u64;
    let mut h = (a << 32 | b) ^ ((proto as u64) << 32 | ports as u64).rotate_left(17);
    // murmur3 fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_then_parse() {
        let mut b = [0u8; ENCAP_LEN];
        let o = Outer {
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            src_ip: [192, 168, 50, 1],
            dst_ip: [192, 168, 50, 2],
            ip_id: 7,
            sport: 40000,
            dport: 8472,
            vni: 0x12345,
        };
        emit(&mut b, &o, 98);
        assert_eq!(ENCAP_LEN, 50);
        let ip = ipv4::Ipv4Packet::new_checked(&b[14..34]);
        assert!(
            ip.is_err(),
            "total length counts the inner frame, not in this buffer"
        );
        assert_eq!(u16::from_be_bytes([b[16], b[17]]), 20 + 8 + 8 + 98);
        assert_eq!(checksum(&b[14..34]), 0, "outer IPv4 checksum verifies");
        assert_eq!(u16::from_be_bytes([b[36], b[37]]), 8472);
        assert_eq!(u16::from_be_bytes([b[38], b[39]]), 8 + 8 + 98);
        assert_eq!(parse(&b[42..]).unwrap().vni, 0x12345);
        assert_eq!(&b[42..50], &[0x08, 0, 0, 0, 0x01, 0x23, 0x45, 0]);
    }

    #[test]
    fn parse_is_strict() {
        assert_eq!(parse(&[0x08, 0, 0, 0, 0, 1, 0]), Err(WireError::Truncated));
        assert_eq!(
            parse(&[0x00, 0, 0, 0, 0, 1, 0, 0]),
            Err(WireError::Malformed),
            "I flag missing"
        );
        assert_eq!(
            parse(&[0x88, 0, 0, 0, 0, 1, 0, 0]),
            Err(WireError::Malformed),
            "GBP flag"
        );
        assert_eq!(
            parse(&[0x08, 0, 0, 0, 0, 1, 0, 9]),
            Err(WireError::Malformed),
            "reserved byte"
        );
    }

    #[test]
    fn src_port_range_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for p in 0..1000u32 {
            let h = flow_hash([10, 1, 0, 11], [10, 2, 0, 11], 6, 40000 << 16 | p);
            let sp = flow_src_port(h);
            assert!((32768..61000).contains(&sp));
            seen.insert(sp);
        }
        assert!(
            seen.len() > 950,
            "{} distinct ports for 1000 flows",
            seen.len()
        );
        assert_eq!(
            flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 17, 99),
            flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 17, 99)
        );
    }
}
