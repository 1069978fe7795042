//! IPv4 prefixes (`10.0.1.0/24`) as the config and the LPM tables use them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 address with a prefix length. As a *prefix* (routes, ipcache, pod CIDRs) the host
/// bits must be zero ([`Ipv4Cidr::is_network`]); as an *interface address* (`192.168.50.1/24`)
/// they carry the address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Cidr {
    /// A prefix; panics if `len > 32` (use `parse` for untrusted input).
    pub const fn new(addr: Ipv4Addr, len: u8) -> Ipv4Cidr {
        assert!(len <= 32);
        Ipv4Cidr { addr, len }
    }

    /// The host route for one address.
    pub const fn host(addr: Ipv4Addr) -> Ipv4Cidr {
        Ipv4Cidr { addr, len: 32 }
    }

    /// The netmask as a host-order integer.
    #[inline]
    pub const fn mask(&self) -> u32 {
        mask(self.len)
    }

    /// The prefix with the host bits cleared.
    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            len: self.len,
        }
    }

    /// Are the host bits zero?
    pub fn is_network(&self) -> bool {
        u32::from(self.addr) & !self.mask() == 0
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) ^ u32::from(self.addr)) & self.mask() == 0
    }

    /// Do the two prefixes share any address?
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let m = mask(self.len.min(other.len));
        (u32::from(self.addr) ^ u32::from(other.addr)) & m == 0
    }
}

/// Netmask of a prefix length, host order.
#[inline]
pub const fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 prefix `{0}`: expected ADDRESS/LENGTH with LENGTH 0-32 (e.g. 10.0.1.0/24)")]
pub struct CidrParseError(pub String);

impl FromStr for Ipv4Cidr {
    type Err = CidrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrParseError(s.into());
        let (a, l) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let len: u8 = l.parse().map_err(|_| err())?;
        if len > 32 {
            return Err(err());
        }
        Ok(Ipv4Cidr { addr, len })
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let c: Ipv4Cidr = "10.1.2.0/24".parse().unwrap();
        assert!(c.is_network());
        assert!(c.contains("10.1.2.200".parse().unwrap()));
        assert!(!c.contains("10.1.3.1".parse().unwrap()));
        let a: Ipv4Cidr = "192.168.50.1/24".parse().unwrap();
        assert!(!a.is_network());
        assert_eq!(a.network().to_string(), "192.168.50.0/24");
        assert!(
            "0.0.0.0/0"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/1"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        let b: Ipv4Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(b.overlaps(&c) && c.overlaps(&b));
        assert!(!c.overlaps(&"10.1.3.0/24".parse().unwrap()));
    }
}

/// An IPv6 prefix (what the IPv6 arm of the ipcache and routes will hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Cidr {
    pub addr: std::net::Ipv6Addr,
    pub len: u8,
}

impl Ipv6Cidr {
    /// A prefix; panics if `len > 128`.
    pub fn new(addr: std::net::Ipv6Addr, len: u8) -> Self {
        assert!(len <= 128, "IPv6 prefix length {len} > 128");
        Ipv6Cidr { addr, len }
    }

    /// The host route for one address.
    pub const fn host(addr: std::net::Ipv6Addr) -> Ipv6Cidr {
        Ipv6Cidr { addr, len: 128 }
    }

    /// The prefix with the host bits cleared.
    pub fn network(&self) -> Ipv6Cidr {
        Ipv6Cidr {
            addr: (u128::from(self.addr) & mask6(self.len)).into(),
            len: self.len,
        }
    }

    /// Are the host bits zero?
    pub fn is_network(&self) -> bool {
        u128::from(self.addr) & !mask6(self.len) == 0
    }

    pub fn contains(&self, ip: std::net::Ipv6Addr) -> bool {
        (u128::from(ip) ^ u128::from(self.addr)) & mask6(self.len) == 0
    }

    /// Do the two prefixes share any address?
    pub fn overlaps(&self, other: &Ipv6Cidr) -> bool {
        let m = mask6(self.len.min(other.len));
        (u128::from(self.addr) ^ u128::from(other.addr)) & m == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid IPv6 prefix `{0}`: expected ADDRESS/LENGTH with LENGTH 0-128 (e.g. fd00:10:1::/64)"
)]
pub struct Cidr6ParseError(pub String);

impl FromStr for Ipv6Cidr {
    type Err = Cidr6ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || Cidr6ParseError(s.into());
        let (a, l) = s.split_once('/').ok_or_else(err)?;
        let addr: std::net::Ipv6Addr = a.parse().map_err(|_| err())?;
        let len: u8 = l.parse().map_err(|_| err())?;
        if len > 128 {
            return Err(err());
        }
        Ok(Ipv6Cidr { addr, len })
    }
}

impl Serialize for Ipv6Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv6Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod v6_tests {
    use super::*;

    #[test]
    fn ipv6_prefixes_parse_contain_and_overlap() {
        let c: Ipv6Cidr = "fd00:10:1::/64".parse().unwrap();
        assert!(c.is_network());
        assert!(c.contains("fd00:10:1::11".parse().unwrap()));
        assert!(!c.contains("fd00:10:2::11".parse().unwrap()));
        let a: Ipv6Cidr = "fd00:10:1::5/64".parse().unwrap();
        assert!(!a.is_network());
        assert_eq!(a.network(), c);
        assert!(c.overlaps(&"fd00::/16".parse().unwrap()));
        assert!(!c.overlaps(&"fd00:10:2::/64".parse().unwrap()));
        assert_eq!(
            Ipv6Cidr::host("fd00::1".parse().unwrap()).to_string(),
            "fd00::1/128"
        );
        for bad in ["fd00::", "fd00::/129", "10.0.0.0/8", "x/1"] {
            let e = bad.parse::<Ipv6Cidr>().unwrap_err().to_string();
            assert!(e.contains("IPv6 prefix"), "{bad}: {e}");
        }
    }
}

/// An address family: the seam the tables are generic over, so IPv6 is an added arm, not
/// a rewrite. An address is handled as an unsigned integer of the family's width (`Bits`,
/// host order) for masking; `Addr` is its wire form.
pub trait Family: Copy + fmt::Debug + 'static {
    /// Wire bytes of an address (`[u8; 4]` / `[u8; 16]`).
    type Addr: Copy + Eq + fmt::Debug;
    /// A prefix type (`Ipv4Cidr` / `Ipv6Cidr`).
    type Prefix: Copy + Eq + fmt::Debug + fmt::Display;
    /// The address as an integer, host order.
    type Bits: Copy + Eq + std::hash::Hash + fmt::Debug;
    /// Address width in bits (the longest prefix).
    const BITS: u8;
    /// The family's ICMP protocol number (1 / 58): what policy keys on by type and
    /// conntrack tracks echo by identifier.
    const ICMP: u8;
    /// The prefix's network (host bits cleared) and length.
    fn split(p: Self::Prefix) -> (Self::Bits, u8);
    /// The prefix of a network and length.
    fn join(bits: Self::Bits, len: u8) -> Self::Prefix;
    /// `a` with everything after the first `len` bits cleared.
    fn masked(a: Self::Addr, len: u8) -> Self::Bits;
}

/// IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4;
/// IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6;

impl Family for V4 {
    type Addr = [u8; 4];
    type Prefix = Ipv4Cidr;
    type Bits = u32;
    const BITS: u8 = 32;
    const ICMP: u8 = 1;
    #[inline]
    fn split(p: Ipv4Cidr) -> (u32, u8) {
        (u32::from(p.addr) & mask(p.len), p.len)
    }
    #[inline]
    fn join(bits: u32, len: u8) -> Ipv4Cidr {
        Ipv4Cidr::new(Ipv4Addr::from(bits), len)
    }
    #[inline]
    fn masked(a: [u8; 4], len: u8) -> u32 {
        u32::from_be_bytes(a) & mask(len)
    }
}

/// The IPv6 netmask of a prefix length, host order.
#[inline]
pub fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

impl Family for V6 {
    type Addr = [u8; 16];
    type Prefix = Ipv6Cidr;
    type Bits = u128;
    const BITS: u8 = 128;
    const ICMP: u8 = 58;
    #[inline]
    fn split(p: Ipv6Cidr) -> (u128, u8) {
        (u128::from(p.addr) & mask6(p.len), p.len)
    }
    #[inline]
    fn join(bits: u128, len: u8) -> Ipv6Cidr {
        Ipv6Cidr::new(std::net::Ipv6Addr::from(bits), len)
    }
    #[inline]
    fn masked(a: [u8; 16], len: u8) -> u128 {
        u128::from_be_bytes(a) & mask6(len)
    }
}
