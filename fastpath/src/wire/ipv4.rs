//! IPv4 headers (RFC 791).

use super::{WireError, checksum, checksum_update};

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::DST.end;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An IPv4 packet. `new_checked` guarantees: buffer ≥ 20 bytes, version 4, IHL ≥ 5,
/// header length ≤ total length ≤ buffer length. The buffer may be longer than the total
/// length (Ethernet padding); [`Ipv4Packet::payload`] stops at the total length.
#[derive(Debug)]
pub struct Ipv4Packet<B> {
    buf: B,
}

impl<B: AsRef<[u8]>> Ipv4Packet<B> {
    pub fn new_checked(buf: B) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let ihl = (b[field::VER_IHL] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([b[2], b[3]]) as usize;
        if b[field::VER_IHL] >> 4 != 4 || ihl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if ihl > b.len() || total > b.len() {
            return Err(WireError::Truncated);
        }
        if total < ihl {
            return Err(WireError::Malformed);
        }
        Ok(Ipv4Packet { buf })
    }
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    pub fn header_len(&self) -> usize {
        (self.b()[field::VER_IHL] & 0x0f) as usize * 4
    }
    pub fn dscp_ecn(&self) -> u8 {
        self.b()[field::TOS]
    }
    pub fn total_len(&self) -> usize {
        u16::from_be_bytes([self.b()[2], self.b()[3]]) as usize
    }
    pub fn ident(&self) -> u16 {
        let b = &self.b()[field::IDENT];
        u16::from_be_bytes([b[0], b[1]])
    }
    /// More-fragments flag.
    /// The DF (don't fragment) flag.
    pub fn dont_frag(&self) -> bool {
        self.b()[field::FLG_OFF.start] & 0x40 != 0
    }
    pub fn more_frags(&self) -> bool {
        self.b()[field::FLG_OFF.start] & 0x20 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        let b = &self.b()[field::FLG_OFF];
        (u16::from_be_bytes([b[0], b[1]]) & 0x1fff) as usize * 8
    }
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }
    pub fn checksum(&self) -> u16 {
        let b = &self.b()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn src(&self) -> [u8; 4] {
        self.b()[field::SRC].try_into().expect("checked")
    }
    pub fn dst(&self) -> [u8; 4] {
        self.b()[field::DST].try_into().expect("checked")
    }
    /// Is the header checksum right? (Every frame a worker judges pays this: a header without
    /// options, the usual case, is five word loads and adds.)
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let b = self.b();
        if self.header_len() == HEADER_LEN {
            let h: &[u8; HEADER_LEN] = b[..HEADER_LEN].try_into().expect("checked");
            let w = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
            return super::fold64(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff;
        }
        super::ones_sum(&b[..self.header_len()]) == 0xffff
    }
    /// L4 bytes: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<B> {
    /// TTL − 1 with the checksum patched incrementally (the TTL/protocol word changes by
    /// 0x0100). Returns the new TTL. The caller checks `ttl() > 1` first.
    #[inline]
    pub fn decrement_ttl(&mut self) -> u8 {
        let b = self.buf.as_mut();
        let old = u16::from_be_bytes([b[field::TTL], b[field::PROTOCOL]]);
        b[field::TTL] -= 1;
        let new = u16::from_be_bytes([b[field::TTL], b[field::PROTOCOL]]);
        let c = u16::from_be_bytes([b[10], b[11]]);
        b[field::CHECKSUM].copy_from_slice(&checksum_update(c, old, new).to_be_bytes());
        b[field::TTL]
    }
    /// Recompute the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buf.as_mut();
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let c = checksum(&b[..hl]);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), self.total_len());
        &mut self.buf.as_mut()[hl..tl]
    }
}

/// Build a 20-byte header with a correct checksum (fixtures, generators).
pub fn emit(buf: &mut [u8], src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, payload_len: usize) {
    buf[field::VER_IHL] = 0x45;
    buf[field::TOS] = 0;
    buf[field::LENGTH].copy_from_slice(&((HEADER_LEN + payload_len) as u16).to_be_bytes());
    buf[field::IDENT].copy_from_slice(&[0, 0]);
    buf[field::FLG_OFF].copy_from_slice(&[0x40, 0]); // DF
    buf[field::TTL] = ttl;
    buf[field::PROTOCOL] = proto;
    buf[field::SRC].copy_from_slice(&src);
    buf[field::DST].copy_from_slice(&dst);
    buf[field::CHECKSUM].copy_from_slice(&[0, 0]);
    let c = checksum(&buf[..HEADER_LEN]);
    buf[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    // 10.200.1.11 -> 10.200.1.12, ICMP, TTL 64, total 28 (as captured from `ping -s 0`).
    static PACKET: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 200, 1, 11, 10,
        200, 1, 12, //
        0x08, 0x00, 0xf7, 0xff, 0x00, 0x00, 0x00, 0x00,
    ];

    fn packet() -> [u8; 28] {
        let mut p = PACKET;
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn deconstruct() {
        let b = packet();
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), PROTO_ICMP);
        assert_eq!(p.src(), [10, 200, 1, 11]);
        assert_eq!(p.dst(), [10, 200, 1, 12]);
        assert!(!p.is_fragment());
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn emit_matches_fixture() {
        let mut b = [0u8; 28];
        emit(
            &mut b,
            [10, 200, 1, 11],
            [10, 200, 1, 12],
            PROTO_ICMP,
            64,
            8,
        );
        assert_eq!(&b[..4], &[0x45, 0, 0, 0x1c]);
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().verify_checksum());
    }

    #[test]
    fn ttl_decrement_checksum_matches_reference_for_every_ttl() {
        for ttl in 2..=255u8 {
            let mut b = packet();
            b[8] = ttl;
            Ipv4Packet::new_checked(&mut b[..]).unwrap().fill_checksum();
            let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
            assert_eq!(p.decrement_ttl(), ttl - 1);
            let inc = p.checksum();
            p.fill_checksum();
            assert_eq!(inc, p.checksum(), "ttl {ttl}");
            assert!(p.verify_checksum());
        }
    }

    #[test]
    fn checked_rejects_bad_headers() {
        let b = packet();
        assert_eq!(
            Ipv4Packet::new_checked(&b[..19]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad_ihl = b;
        bad_ihl[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bad_ihl[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut long_ihl = b;
        long_ihl[0] = 0x4f; // 60-byte header in a 28-byte buffer
        assert_eq!(
            Ipv4Packet::new_checked(&long_ihl[..]).unwrap_err(),
            WireError::Truncated
        );
        let mut v6 = b;
        v6[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&v6[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut too_long = b;
        too_long[3] = 29;
        assert_eq!(
            Ipv4Packet::new_checked(&too_long[..]).unwrap_err(),
            WireError::Truncated
        );
        let mut too_short = b;
        too_short[3] = 19;
        assert_eq!(
            Ipv4Packet::new_checked(&too_short[..]).unwrap_err(),
            WireError::Malformed
        );
        // Ethernet padding after the datagram is fine and excluded from the payload.
        let mut padded = [0u8; 46];
        padded[..28].copy_from_slice(&b);
        assert_eq!(
            Ipv4Packet::new_checked(&padded[..])
                .unwrap()
                .payload()
                .len(),
            8
        );
    }
}
