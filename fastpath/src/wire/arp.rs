//! ARP for IPv4 over Ethernet (RFC 826): the only kind a pod sends us.

use super::WireError;
use abi::MacAddr;

mod field {
    use std::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

pub const HEADER_LEN: usize = field::TPA.end;
pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

#[derive(Debug)]
pub struct ArpPacket<B> {
    buf: B,
}

impl<B: AsRef<[u8]>> ArpPacket<B> {
    /// A view after checking length and that this is Ethernet/IPv4 ARP (htype 1, ptype
    /// 0x0800, hlen 6, plen 4). Anything else is `Malformed`.
    pub fn new_checked(buf: B) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::HTYPE] != [0, 1]
            || b[field::PTYPE] != [0x08, 0x00]
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(WireError::Malformed);
        }
        Ok(ArpPacket { buf })
    }
    pub fn operation(&self) -> u16 {
        let b = &self.buf.as_ref()[field::OPER];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn sender_mac(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[field::SHA].try_into().expect("checked"))
    }
    pub fn sender_ip(&self) -> [u8; 4] {
        self.buf.as_ref()[field::SPA].try_into().expect("checked")
    }
    pub fn target_mac(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[field::THA].try_into().expect("checked"))
    }
    pub fn target_ip(&self) -> [u8; 4] {
        self.buf.as_ref()[field::TPA].try_into().expect("checked")
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<B> {
    /// Turn this request into the reply "`target_ip` is at `mac`", in place.
    pub fn make_reply(&mut self, mac: MacAddr) {
        let b = self.buf.as_mut();
        let mut sha = [0u8; 6];
        let mut spa = [0u8; 4];
        sha.copy_from_slice(&b[field::SHA]);
        spa.copy_from_slice(&b[field::SPA]);
        let mut tpa = [0u8; 4];
        tpa.copy_from_slice(&b[field::TPA]);
        b[field::OPER].copy_from_slice(&OP_REPLY.to_be_bytes());
        b[field::SHA].copy_from_slice(&mac.0);
        b[field::SPA].copy_from_slice(&tpa);
        b[field::THA].copy_from_slice(&sha);
        b[field::TPA].copy_from_slice(&spa);
    }
}

/// Build a request "who has `tpa`? tell `spa`" (fixtures).
pub fn emit_request(buf: &mut [u8], sha: MacAddr, spa: [u8; 4], tpa: [u8; 4]) {
    buf[field::HTYPE].copy_from_slice(&[0, 1]);
    buf[field::PTYPE].copy_from_slice(&[0x08, 0]);
    buf[field::HLEN] = 6;
    buf[field::PLEN] = 4;
    buf[field::OPER].copy_from_slice(&OP_REQUEST.to_be_bytes());
    buf[field::SHA].copy_from_slice(&sha.0);
    buf[field::SPA].copy_from_slice(&spa);
    buf[field::THA].copy_from_slice(&[0; 6]);
    buf[field::TPA].copy_from_slice(&tpa);
}

#[cfg(test)]
mod tests {
    use super::*;

    // who-has 10.200.0.1 tell 10.200.1.11 (from 0a:58:0a:c8:01:0b)
    static REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, //
        0x0a, 0x58, 0x0a, 0xc8, 0x01, 0x0b, 10, 200, 1, 11, //
        0, 0, 0, 0, 0, 0, 10, 200, 0, 1,
    ];

    #[test]
    fn deconstruct_and_emit() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.operation(), OP_REQUEST);
        assert_eq!(p.sender_ip(), [10, 200, 1, 11]);
        assert_eq!(p.target_ip(), [10, 200, 0, 1]);
        let mut b = [0xffu8; 28];
        emit_request(
            &mut b,
            MacAddr([0x0a, 0x58, 0x0a, 0xc8, 1, 0x0b]),
            [10, 200, 1, 11],
            [10, 200, 0, 1],
        );
        assert_eq!(b, REQUEST);
    }

    #[test]
    fn reply_in_place() {
        let mut b = REQUEST;
        let lxc = MacAddr([0x3e, 0x1f, 0x22, 0xaa, 0x10, 0x02]);
        ArpPacket::new_checked(&mut b[..]).unwrap().make_reply(lxc);
        let r = ArpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(r.operation(), OP_REPLY);
        assert_eq!(r.sender_mac(), lxc);
        assert_eq!(r.sender_ip(), [10, 200, 0, 1]);
        assert_eq!(r.target_mac(), MacAddr([0x0a, 0x58, 0x0a, 0xc8, 1, 0x0b]));
        assert_eq!(r.target_ip(), [10, 200, 1, 11]);
    }

    #[test]
    fn rejects_non_ethernet_ipv4() {
        assert_eq!(
            ArpPacket::new_checked(&REQUEST[..27]).unwrap_err(),
            WireError::Truncated
        );
        let mut b = REQUEST;
        b[5] = 16; // plen of IPv6
        assert_eq!(
            ArpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
