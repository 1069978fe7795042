//! Packet views over byte buffers (smoltcp style).
//!
//! # Contract
//! Each view is `struct X<B> { buf: B }`. `new_checked` validates everything the accessors
//! rely on, so accessors never panic afterwards; getters need `B: AsRef<[u8]>`, setters also
//! `AsMut<[u8]>`. Setters that could break the checked invariants are listed on each type.
//! Checksums are patched incrementally (RFC 1624) when one field changes.

pub mod arp;
pub mod buf;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod l4;
pub mod nat;
pub mod vxlan;

pub use arp::ArpPacket;
pub use buf::Buf;
pub use ethernet::{EtherType, EthernetFrame};
pub use ipv4::Ipv4Packet;

/// Why a buffer is not a valid header of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("buffer shorter than the header")]
    Truncated,
    #[error("malformed header field")]
    Malformed,
}

/// The one's-complement sum of `data` folded to 16 bits (not inverted).
///
/// Summed as 32-bit words into a 64-bit accumulator, folded at the end (RFC 1071 §2: the
/// one's-complement sum of wider words, folded, equals the sum of the 16-bit words; a u64
/// cannot overflow from u32 words below 16 GiB of data).
#[inline]
pub fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        sum += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    match *chunks.remainder() {
        [a, b, c] => sum += (u16::from_be_bytes([a, b]) as u64) + ((c as u64) << 8),
        [a, b] => sum += u16::from_be_bytes([a, b]) as u64,
        [a] => sum += (a as u64) << 8,
        _ => {}
    }
    fold64(sum)
}

/// A 64-bit one's-complement accumulator folded to 16 bits.
#[inline]
pub(crate) fn fold64(sum: u64) -> u16 {
    let s = (sum >> 32) + (sum & 0xffff_ffff);
    let s = (s >> 32) + (s & 0xffff_ffff);
    fold(s as u32)
}

#[inline]
pub(crate) fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    !ones_sum(data)
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word changes from `old` to `new`.
#[inline]
pub fn checksum_update(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example bytes: sum 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_sum(&d), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    /// The wide-word sum equals the plain 16-bit one's-complement sum, for every length and
    /// alignment of the tail.
    #[test]
    fn wide_sum_equals_16_bit_sum() {
        let reference = |d: &[u8]| {
            let mut sum: u32 = 0;
            for c in d.chunks(2) {
                sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
            }
            fold(sum)
        };
        let mut x: u32 = 99;
        for len in 0..200 {
            let d: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert_eq!(ones_sum(&d), reference(&d), "len {len}");
        }
        assert_eq!(ones_sum(&[0xff; 64]), 0xffff);
    }

    #[test]
    fn incremental_equals_full_recompute() {
        let mut x: u32 = 12345;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..10_000 {
            let mut words: Vec<u8> = (0..20).map(|_| rnd() as u8).collect();
            words[10] = 0;
            words[11] = 0;
            let c = checksum(&words);
            words[10..12].copy_from_slice(&c.to_be_bytes());
            let i = (rnd() as usize % 9) * 2;
            let i = if i == 10 { 12 } else { i };
            let old = u16::from_be_bytes([words[i], words[i + 1]]);
            let new = rnd() as u16;
            words[i..i + 2].copy_from_slice(&new.to_be_bytes());
            let inc = checksum_update(c, old, new);
            words[10] = 0;
            words[11] = 0;
            let full = checksum(&words);
            // 0x0000 and 0xffff are the same value in one's complement.
            assert!(
                inc == full || (inc ^ full) == 0xffff && (inc == 0 || full == 0),
                "{inc:#x} vs {full:#x}"
            );
        }
    }
}
