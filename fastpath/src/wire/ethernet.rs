//! Ethernet II frames.

use super::WireError;
use abi::MacAddr;

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = ETHERTYPE.end;
}

pub const HEADER_LEN: usize = field::PAYLOAD;

/// EtherType values; unknown ones are kept as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    Ipv4,
    Arp,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            x => EtherType::Unknown(x),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> u16 {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(x) => x,
        }
    }
}

#[derive(Debug)]
pub struct EthernetFrame<B> {
    buf: B,
}

impl<B: AsRef<[u8]>> EthernetFrame<B> {
    /// A view after checking the buffer holds the 14-byte header.
    pub fn new_checked(buf: B) -> Result<Self, WireError> {
        if buf.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetFrame { buf })
    }
    pub fn dst(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[field::DST].try_into().expect("checked"))
    }
    pub fn src(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[field::SRC].try_into().expect("checked"))
    }
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buf.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]]).into()
    }
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[field::PAYLOAD..]
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<B> {
    pub fn set_dst(&mut self, m: MacAddr) {
        self.buf.as_mut()[field::DST].copy_from_slice(&m.0);
    }
    pub fn set_src(&mut self, m: MacAddr) {
        self.buf.as_mut()[field::SRC].copy_from_slice(&m.0);
    }
    pub fn set_ethertype(&mut self, t: EtherType) {
        self.buf.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(t).to_be_bytes());
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[field::PAYLOAD..]
    }
}

impl<'a> EthernetFrame<&'a mut [u8]> {
    /// The payload with the buffer's own lifetime, so inner views chain without copies.
    pub fn into_payload_mut(self) -> &'a mut [u8] {
        &mut self.buf[field::PAYLOAD..]
    }
}

/// Build an Ethernet header (fixtures, generators).
pub fn emit(buf: &mut [u8], dst: MacAddr, src: MacAddr, t: EtherType) {
    buf[field::DST].copy_from_slice(&dst.0);
    buf[field::SRC].copy_from_slice(&src.0);
    buf[field::ETHERTYPE].copy_from_slice(&u16::from(t).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    static FRAME: [u8; 16] = [
        0x0a, 0x58, 0x0a, 0xc8, 0x01, 0x0c, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src
        0x08, 0x06, // ARP
        0xaa, 0xbb,
    ];

    #[test]
    fn deconstruct() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst().to_string(), "0A:58:0A:C8:01:0C");
        assert_eq!(f.src(), MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 16];
        emit(
            &mut b,
            MacAddr([0x0a, 0x58, 0x0a, 0xc8, 1, 0x0c]),
            MacAddr([2, 0, 0, 0, 0, 1]),
            EtherType::Arp,
        );
        b[14..].copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(b, FRAME);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            EthernetFrame::new_checked(&FRAME[..13]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            EthernetFrame::new_checked(&FRAME[..14])
                .unwrap()
                .ethertype(),
            EtherType::Arp
        );
        let mut b = FRAME;
        b[12..14].copy_from_slice(&[0x88, 0xcc]);
        assert_eq!(
            EthernetFrame::new_checked(&b[..]).unwrap().ethertype(),
            EtherType::Unknown(0x88cc)
        );
    }
}
