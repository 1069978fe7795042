//! `cilium_lxc`: local endpoints (and the node's own addresses, flagged `HOST`).
//!
//! Key `endpoint_key` (20 B) and value `endpoint_info` (48 B), Cilium 1.19 layout, as in
//! cilium `bpf/lib/eps.h`. Addresses are stored in network order (wire bytes); integers in
//! host order; the MACs as their six wire bytes followed by two zero bytes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Kernel object name and size of the map, as Cilium creates it.
pub const MAP_NAME: &str = "cilium_lxc";
pub const MAX_ENTRIES: u32 = 65535;

/// `endpoint_key.family` values.
pub const ENDPOINT_KEY_IPV4: u8 = 1;
pub const ENDPOINT_KEY_IPV6: u8 = 2;

/// `endpoint_info.flags` bits.
pub const ENDPOINT_F_HOST: u32 = 0x1;
pub const ENDPOINT_F_ATHOSTNS: u32 = 0x2;
pub const ENDPOINT_F_NO_SNAT_V4: u32 = 0x4;
pub const ENDPOINT_F_NO_SNAT_V6: u32 = 0x8;

/// A MAC address in wire order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const ZERO: MacAddr = MacAddr([0; 6]);
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    /// Upper-case, colon-separated: the way `cilium-dbg bpf endpoint list` prints MACs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address `{0}`: expected six hex octets separated by `:` (e.g. 0a:58:0a:c8:01:0b)"
)]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(':') {
            if n == 6 || part.len() != 2 {
                return Err(MacParseError(s.into()));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.into()))?;
            n += 1;
        }
        if n != 6 {
            return Err(MacParseError(s.into()));
        }
        Ok(MacAddr(out))
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `struct endpoint_key` (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct EndpointKey {
    /// IPv4 in bytes 0..4 (rest zero) or the IPv6 address; network order.
    pub ip: [u8; 16],
    /// [`ENDPOINT_KEY_IPV4`] or [`ENDPOINT_KEY_IPV6`].
    pub family: u8,
    /// Always 0 in `cilium_lxc`.
    pub key: u8,
    /// ClusterMesh cluster ID (host order); 0 for local endpoints.
    pub cluster_id: u16,
}
const _: () = assert!(size_of::<EndpointKey>() == 20);

impl EndpointKey {
    /// The key for a local IPv4 address.
    pub const fn v4(ip: [u8; 4]) -> Self {
        let mut b = [0u8; 16];
        b[0] = ip[0];
        b[1] = ip[1];
        b[2] = ip[2];
        b[3] = ip[3];
        EndpointKey {
            ip: b,
            family: ENDPOINT_KEY_IPV4,
            key: 0,
            cluster_id: 0,
        }
    }

    /// The key for a local IPv6 address.
    pub const fn v6(ip: [u8; 16]) -> Self {
        EndpointKey {
            ip,
            family: ENDPOINT_KEY_IPV6,
            key: 0,
            cluster_id: 0,
        }
    }

    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        (self.family == ENDPOINT_KEY_IPV4)
            .then(|| Ipv4Addr::new(self.ip[0], self.ip[1], self.ip[2], self.ip[3]))
    }

    pub fn as_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..16].copy_from_slice(&self.ip);
        b[16] = self.family;
        b[17] = self.key;
        b[18..20].copy_from_slice(&self.cluster_id.to_ne_bytes());
        b
    }
}

impl fmt::Display for EndpointKey {
    /// `10.0.1.57:0` / `[fd00::1]:0`, with `@N` after the address for a non-zero cluster.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            ENDPOINT_KEY_IPV4 => write!(
                f,
                "{}",
                Ipv4Addr::new(self.ip[0], self.ip[1], self.ip[2], self.ip[3])
            )?,
            _ => write!(f, "[{}]", std::net::Ipv6Addr::from(self.ip))?,
        }
        if self.cluster_id != 0 {
            write!(f, "@{}", self.cluster_id)?;
        }
        write!(f, ":{}", self.key)
    }
}

/// `struct endpoint_info` (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct EndpointInfo {
    /// ifindex of the host-side device (the lxc veth).
    pub ifindex: u32,
    /// Formerly the security label; written as 0.
    pub unused: u16,
    /// Endpoint ID (shown as `id=`; keys `cilium_call_policy`).
    pub lxc_id: u16,
    /// `ENDPOINT_F_*`.
    pub flags: u32,
    pub pad0: u32,
    /// Pod MAC: six wire bytes, then two zero bytes.
    pub mac: [u8; 8],
    /// lxc (host side) MAC, same encoding; the source MAC when delivering to the pod.
    pub node_mac: [u8; 8],
    /// Security identity of the endpoint (host order).
    pub sec_id: u32,
    pub parent_ifindex: u32,
    pub pad: [u32; 2],
}
const _: () = assert!(size_of::<EndpointInfo>() == 48);

impl EndpointInfo {
    /// A host entry ("(localhost)"): only the flag is set.
    pub fn host() -> Self {
        EndpointInfo {
            flags: ENDPOINT_F_HOST,
            ..Default::default()
        }
    }

    pub fn is_host(&self) -> bool {
        self.flags & ENDPOINT_F_HOST != 0
    }

    pub fn pod_mac(&self) -> MacAddr {
        MacAddr(self.mac[..6].try_into().expect("6 bytes"))
    }

    pub fn lxc_mac(&self) -> MacAddr {
        MacAddr(self.node_mac[..6].try_into().expect("6 bytes"))
    }

    pub fn encode_mac(m: MacAddr) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&m.0);
        b
    }

    pub fn as_bytes(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4..6].copy_from_slice(&self.unused.to_ne_bytes());
        b[6..8].copy_from_slice(&self.lxc_id.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.pad0.to_ne_bytes());
        b[16..24].copy_from_slice(&self.mac);
        b[24..32].copy_from_slice(&self.node_mac);
        b[32..36].copy_from_slice(&self.sec_id.to_ne_bytes());
        b[36..40].copy_from_slice(&self.parent_ifindex.to_ne_bytes());
        b
    }
}

impl fmt::Display for EndpointInfo {
    /// The `LOCAL ENDPOINT INFO` column of `cilium-dbg bpf endpoint list`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            return f.write_str("(localhost)");
        }
        let s = format!(
            "id={:<5} sec_id={:<5} flags=0x{:04X} ifindex={:<3} mac={} nodemac={} parent_ifindex={:<3}",
            self.lxc_id,
            self.sec_id,
            self.flags,
            self.ifindex,
            self.pod_mac(),
            self.lxc_mac(),
            self.parent_ifindex
        );
        f.write_str(s.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn key_layout_matches_cilium() {
        assert_eq!(offset_of!(EndpointKey, ip), 0);
        assert_eq!(offset_of!(EndpointKey, family), 16);
        assert_eq!(offset_of!(EndpointKey, key), 17);
        assert_eq!(offset_of!(EndpointKey, cluster_id), 18);
        let k = EndpointKey::v4([10, 0, 1, 57]);
        let b = k.as_bytes();
        assert_eq!(&b[..4], &[10, 0, 1, 57]);
        assert!(b[4..16].iter().all(|&x| x == 0));
        assert_eq!(b[16], 1);
        assert_eq!(k.to_string(), "10.0.1.57:0");
    }

    #[test]
    fn value_layout_matches_cilium() {
        assert_eq!(offset_of!(EndpointInfo, ifindex), 0);
        assert_eq!(offset_of!(EndpointInfo, unused), 4);
        assert_eq!(offset_of!(EndpointInfo, lxc_id), 6);
        assert_eq!(offset_of!(EndpointInfo, flags), 8);
        assert_eq!(offset_of!(EndpointInfo, mac), 16);
        assert_eq!(offset_of!(EndpointInfo, node_mac), 24);
        assert_eq!(offset_of!(EndpointInfo, sec_id), 32);
        assert_eq!(offset_of!(EndpointInfo, parent_ifindex), 36);
        assert_eq!(offset_of!(EndpointInfo, pad), 40);
        let v = EndpointInfo {
            ifindex: 17,
            lxc_id: 1234,
            mac: EndpointInfo::encode_mac("0a:58:0a:00:01:39".parse().unwrap()),
            node_mac: EndpointInfo::encode_mac("3e:1f:22:aa:10:02".parse().unwrap()),
            sec_id: 48213,
            ..Default::default()
        };
        let b = v.as_bytes();
        assert_eq!(&b[0..4], &17u32.to_le_bytes());
        assert_eq!(&b[6..8], &1234u16.to_le_bytes());
        assert_eq!(&b[16..24], &[0x0a, 0x58, 0x0a, 0, 1, 0x39, 0, 0]);
        assert_eq!(&b[32..36], &48213u32.to_le_bytes());
        assert_eq!(
            v.to_string(),
            "id=1234  sec_id=48213 flags=0x0000 ifindex=17  mac=0A:58:0A:00:01:39 nodemac=3E:1F:22:AA:10:02 parent_ifindex=0"
        );
        assert_eq!(EndpointInfo::host().to_string(), "(localhost)");
    }

    #[test]
    fn mac_parse_rejects_garbage() {
        assert!("0a:58:0a:00:01".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:00:01:zz".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:00:01:39:00".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:00:01:390".parse::<MacAddr>().is_err());
        assert_eq!("0A:58:0a:00:01:39".parse::<MacAddr>().unwrap().0[0], 0x0a);
    }
}
