//! ICMPv4 errors the node sends back to a pod.

use super::{checksum, ipv4};

pub const TYPE_ECHO_REPLY: u8 = 0;
pub const TYPE_DEST_UNREACH: u8 = 3;
pub const CODE_PORT_UNREACH: u8 = 3;
pub const TYPE_ECHO_REQUEST: u8 = 8;
pub const CODE_FRAG_NEEDED: u8 = 4;
pub const TYPE_TIME_EXCEEDED: u8 = 11;
/// RFC 1812 §4.3.2.3: an ICMP error should carry as much of the original as fits in 576 bytes.
pub const MAX_ERROR_LEN: usize = 576;

/// Turn `pkt` (an IPv4 packet, header first) into an ICMP error about it, in place, and return
/// the new IP length. The quoted original (its header and as much payload as fits
/// [`MAX_ERROR_LEN`]) moves back by 28 bytes, so `pkt` must have room: callers use a frame
/// that held the (larger) original. `info` is the 32-bit "rest of header" (next-hop MTU for
/// fragmentation-needed). The new packet goes from `src` to the original source, TTL 64.
pub fn make_error(
    pkt: &mut [u8],
    orig_len: usize,
    src: [u8; 4],
    ty: u8,
    code: u8,
    info: u32,
) -> usize {
    let quote = orig_len.min(MAX_ERROR_LEN - ipv4::HEADER_LEN - 8);
    let total = ipv4::HEADER_LEN + 8 + quote;
    assert!(pkt.len() >= total);
    let mut orig_src = [0u8; 4];
    orig_src.copy_from_slice(&pkt[12..16]);
    pkt.copy_within(0..quote, ipv4::HEADER_LEN + 8);
    ipv4::emit(pkt, src, orig_src, ipv4::PROTO_ICMP, 64, 8 + quote);
    let icmp = &mut pkt[ipv4::HEADER_LEN..total];
    icmp[0] = ty;
    icmp[1] = code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&info.to_be_bytes());
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frag_needed_quotes_the_original() {
        let mut p = vec![0u8; 1500];
        ipv4::emit(
            &mut p,
            [10, 1, 0, 11],
            [10, 2, 0, 11],
            ipv4::PROTO_TCP,
            64,
            1480,
        );
        p[20..24].copy_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
        let orig = p.clone();
        let n = make_error(
            &mut p,
            1500,
            [10, 1, 0, 1],
            TYPE_DEST_UNREACH,
            CODE_FRAG_NEEDED,
            1450,
        );
        assert_eq!(n, 576);
        let ip = ipv4::Ipv4Packet::new_checked(&p[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src(), [10, 1, 0, 1]);
        assert_eq!(ip.dst(), [10, 1, 0, 11]);
        assert_eq!(ip.protocol(), ipv4::PROTO_ICMP);
        let icmp = &p[20..n];
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450, "next-hop MTU");
        assert_eq!(checksum(icmp), 0);
        assert_eq!(
            &icmp[8..],
            &orig[..n - 28],
            "original header and payload quoted"
        );
    }
}
