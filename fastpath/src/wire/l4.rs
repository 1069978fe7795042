//! Transport headers: just what the pipeline reads (ports, ICMP type and identifier).
//! `parse` checks the header is complete; conntrack uses the result.

use super::WireError;
use super::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

pub const UDP_HEADER_LEN: usize = 8;
pub const TCP_MIN_HEADER_LEN: usize = 20;
pub const ICMP_HEADER_LEN: usize = 8;

/// The fields of an L4 header the datapath keys on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP: the echo identifier stands in for ports (0 for other types).
    Icmp {
        ty: u8,
        code: u8,
        id: u16,
    },
    /// Another protocol: nothing to parse.
    Other(u8),
}

/// Parse the L4 header of an unfragmented packet or first fragment.
pub fn parse(proto: u8, b: &[u8]) -> Result<L4, WireError> {
    let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    match proto {
        PROTO_TCP => {
            if b.len() < TCP_MIN_HEADER_LEN {
                return Err(WireError::Truncated);
            }
            let doff = (b[12] >> 4) as usize * 4;
            if doff < TCP_MIN_HEADER_LEN {
                return Err(WireError::Malformed);
            }
            if doff > b.len() {
                return Err(WireError::Truncated);
            }
            Ok(L4::Tcp {
                sport: be16(0),
                dport: be16(2),
                flags: b[13],
            })
        }
        PROTO_UDP => {
            if b.len() < UDP_HEADER_LEN {
                return Err(WireError::Truncated);
            }
            Ok(L4::Udp {
                sport: be16(0),
                dport: be16(2),
            })
        }
        PROTO_ICMP => {
            if b.len() < ICMP_HEADER_LEN {
                return Err(WireError::Truncated);
            }
            let (ty, code) = (b[0], b[1]);
            let id = if ty == 0 || ty == 8 { be16(4) } else { 0 };
            Ok(L4::Icmp { ty, code, id })
        }
        p => Ok(L4::Other(p)),
    }
}

/// The length a UDP header claims, if it is a usable one for the datagram `b` (the IP
/// payload): at least the 8-byte header and no more than `b` holds. As Linux's `udp_rcv`:
/// a longer claim is a short packet (dropped), a shorter one trims the payload.
pub fn udp_length(b: &[u8]) -> Option<usize> {
    if b.len() < UDP_HEADER_LEN {
        return None;
    }
    let ulen = u16::from_be_bytes([b[4], b[5]]) as usize;
    (UDP_HEADER_LEN..=b.len()).contains(&ulen).then_some(ulen)
}

/// Is the checksum of the UDP datagram `udp` (header and payload, exactly its UDP length)
/// from `src` to `dst` right? 0 means "no checksum", which IPv4 allows (RFC 768).
pub fn udp_checksum_ok(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> bool {
    if udp.len() < UDP_HEADER_LEN || udp[6..8] == [0, 0] {
        return udp.len() >= UDP_HEADER_LEN;
    }
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = PROTO_UDP;
    pseudo[10..12].copy_from_slice(&(udp.len() as u16).to_be_bytes());
    let sum = super::ones_sum(&pseudo) as u32 + super::ones_sum(udp) as u32;
    super::fold(sum) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds() {
        let udp = [
            0x30, 0x39, 0x00, 0x07, 0x00, 0x0c, 0, 0, b'h', b'i', b'!', b'\n',
        ];
        assert_eq!(
            parse(PROTO_UDP, &udp).unwrap(),
            L4::Udp {
                sport: 12345,
                dport: 7
            }
        );
        assert_eq!(
            parse(PROTO_UDP, &udp[..7]).unwrap_err(),
            WireError::Truncated
        );
        let mut tcp = [0u8; 20];
        tcp[0..4].copy_from_slice(&[0x9c, 0x40, 0x00, 0x07]);
        tcp[12] = 0x50;
        tcp[13] = 0x02; // SYN
        assert_eq!(
            parse(PROTO_TCP, &tcp).unwrap(),
            L4::Tcp {
                sport: 40000,
                dport: 7,
                flags: 2
            }
        );
        tcp[12] = 0x40;
        assert_eq!(parse(PROTO_TCP, &tcp).unwrap_err(), WireError::Malformed);
        tcp[12] = 0x60;
        assert_eq!(parse(PROTO_TCP, &tcp).unwrap_err(), WireError::Truncated);
        let echo = [8, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(
            parse(PROTO_ICMP, &echo).unwrap(),
            L4::Icmp {
                ty: 8,
                code: 0,
                id: 0x1234
            }
        );
        assert_eq!(parse(47, &[]).unwrap(), L4::Other(47));
    }

    #[test]
    fn udp_length_and_checksum() {
        // RFC 768 datagram 10.0.0.1:12345 -> 10.0.0.2:7 "hi!\n", checksum by hand below.
        let (src, dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let mut udp = [
            0x30, 0x39, 0x00, 0x07, 0x00, 0x0c, 0, 0, b'h', b'i', b'!', b'\n',
        ];
        assert!(udp_checksum_ok(src, dst, &udp), "0 = no checksum");
        let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 12];
        pseudo.extend_from_slice(&udp);
        let c = crate::wire::checksum(&pseudo);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        assert!(udp_checksum_ok(src, dst, &udp));
        assert!(
            !udp_checksum_ok(src, [10, 0, 0, 3], &udp),
            "pseudo header counts"
        );
        udp[11] ^= 1;
        assert!(!udp_checksum_ok(src, dst, &udp));
        assert_eq!(udp_length(&udp), Some(12));
        assert_eq!(udp_length(&[&udp[..], &[0, 0]].concat()), Some(12), "trims");
        assert_eq!(udp_length(&udp[..11]), None, "claims more than it has");
        let mut short = udp;
        short[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(udp_length(&short), None, "shorter than its header");
        assert_eq!(udp_length(&udp[..7]), None);
    }
}
