//! Address and port rewrites for DNAT, SNAT and reverse NAT, with incremental checksum
//! fixes (RFC 1624): the IPv4 header checksum for the address, the TCP/UDP checksum for the
//! address (pseudo header) and the port. A UDP checksum of 0 ("none") stays 0.
//!
//! The caller has validated the IPv4 header and, for first fragments, the L4 header
//! (`stage::check_ipv4`); later fragments carry no L4 header, so only the address changes.

use super::checksum_update;
use super::ipv4::{PROTO_TCP, PROTO_UDP};

/// Which end of the packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

#[inline]
fn word(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Set the `side` address of the IPv4 packet `pkt` to `addr` and (TCP/UDP first fragments)
/// its port to `port`.
pub fn rewrite(pkt: &mut [u8], side: Side, addr: [u8; 4], port: u16) {
    let ihl = (pkt[0] & 0x0f) as usize * 4;
    let proto = pkt[9];
    let first_frag = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff == 0;
    let a_off = if side == Side::Src { 12 } else { 16 };
    let p_off = ihl + if side == Side::Src { 0 } else { 2 };
    let old_a = [word(pkt, a_off), word(pkt, a_off + 2)];
    let new_a = [
        u16::from_be_bytes([addr[0], addr[1]]),
        u16::from_be_bytes([addr[2], addr[3]]),
    ];
    let mut ipc = word(pkt, 10);
    for i in 0..2 {
        ipc = checksum_update(ipc, old_a[i], new_a[i]);
    }
    pkt[10..12].copy_from_slice(&ipc.to_be_bytes());
    pkt[a_off..a_off + 4].copy_from_slice(&addr);
    if !first_frag {
        return;
    }
    let csum_off = match proto {
        PROTO_TCP => ihl + 16,
        PROTO_UDP => ihl + 6,
        _ => return,
    };
    let old_p = word(pkt, p_off);
    pkt[p_off..p_off + 2].copy_from_slice(&port.to_be_bytes());
    let mut c = word(pkt, csum_off);
    if proto == PROTO_UDP && c == 0 {
        return;
    }
    for i in 0..2 {
        c = checksum_update(c, old_a[i], new_a[i]);
    }
    c = checksum_update(c, old_p, port);
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    pkt[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ipv4, ones_sum};

    /// A TCP or UDP packet with a correct checksum.
    fn packet(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let l4_len = if proto == PROTO_TCP { 20 } else { 8 } + 5;
        let mut p = vec![0u8; 20 + l4_len];
        ipv4::emit(&mut p, src, dst, proto, 64, l4_len);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        if proto == PROTO_TCP {
            p[32] = 5 << 4;
            p[33] = 0x02;
        } else {
            p[24..26].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        p[20 + l4_len - 5..].copy_from_slice(b"hello");
        let c = l4_checksum(&p);
        let at = if proto == PROTO_TCP { 36 } else { 26 };
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn l4_checksum(p: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, p[9]]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        let mut seg = p[20..].to_vec();
        let at = if p[9] == PROTO_TCP { 16 } else { 6 };
        seg[at] = 0;
        seg[at + 1] = 0;
        pseudo.extend_from_slice(&seg);
        !ones_sum(&pseudo)
    }

    #[test]
    fn dnat_then_reverse_keeps_checksums_right() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            let orig = packet(proto, [10, 200, 1, 11], [10, 96, 0, 10], 40000, 80);
            let mut p = orig.clone();
            rewrite(&mut p, Side::Dst, [10, 201, 1, 11], 8080);
            let want = packet(proto, [10, 200, 1, 11], [10, 201, 1, 11], 40000, 8080);
            assert_eq!(
                p, want,
                "proto {proto}: DNAT equals a packet built for the backend"
            );
            assert!(
                ipv4::Ipv4Packet::new_checked(&p[..])
                    .unwrap()
                    .verify_checksum()
            );
            rewrite(&mut p, Side::Dst, [10, 96, 0, 10], 80);
            assert_eq!(p, orig);
            rewrite(&mut p, Side::Src, [192, 168, 200, 1], 40001);
            assert_eq!(
                p,
                packet(proto, [192, 168, 200, 1], [10, 96, 0, 10], 40001, 80)
            );
        }
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut p = packet(PROTO_UDP, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        p[26] = 0;
        p[27] = 0;
        rewrite(&mut p, Side::Dst, [10, 0, 0, 3], 4);
        assert_eq!(&p[26..28], &[0, 0]);
        assert_eq!(&p[16..20], &[10, 0, 0, 3]);
        assert_eq!(&p[22..24], &4u16.to_be_bytes());
    }
}
