//! `cilium_ipcache_v2`: IP/prefix → security identity and tunnel endpoint (Cilium 1.18+ value).
//!
//! LPM trie keyed by `ipcache_key` (24 B): `prefixlen` counts bits from byte 4, so the fixed
//! cluster-ID/family bytes (32 bits) are always part of the match: IPv4 /32 = 64, /0 = 32.
//! Value `remote_endpoint_info` (24 B): identity (host order), tunnel endpoint (network order,
//! IPv4 in the first four bytes), IPsec key, flags. See docs/maps.md.

use std::fmt;
use std::net::Ipv4Addr;

use crate::net::Ipv4Cidr;

pub const MAP_NAME: &str = "cilium_ipcache_v2";
pub const MAX_ENTRIES: u32 = 512_000;

/// `ipcache_key.family`.
pub const FAMILY_IPV4: u8 = 1;
pub const FAMILY_IPV6: u8 = 2;

/// Bits of the key before the address: cluster_id (16) + pad (8) + family (8).
pub const PREFIX_FIXED_BITS: u32 = 32;

/// `remote_endpoint_info.flags` bits.
pub const FLAG_SKIP_TUNNEL: u8 = 1 << 0;
pub const FLAG_HAS_TUNNEL_EP: u8 = 1 << 1;
pub const FLAG_IPV6_TUNNEL_EP: u8 = 1 << 2;
pub const FLAG_REMOTE_CLUSTER: u8 = 1 << 3;

/// `struct ipcache_key`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct IpcacheKey {
    /// Host order, in bits from byte 4.
    pub prefixlen: u32,
    /// Host order; 0 = local cluster.
    pub cluster_id: u16,
    pub pad1: u8,
    pub family: u8,
    /// Network order; IPv4 in bytes 0-3.
    pub ip: [u8; 16],
}
const _: () = assert!(size_of::<IpcacheKey>() == 24);

impl IpcacheKey {
    /// The key for an IPv4 prefix; host bits are cleared (the agent masks them too).
    pub fn v4(prefix: Ipv4Cidr) -> IpcacheKey {
        let mut ip = [0u8; 16];
        ip[..4].copy_from_slice(&prefix.network().addr.octets());
        IpcacheKey {
            prefixlen: PREFIX_FIXED_BITS + prefix.len as u32,
            cluster_id: 0,
            pad1: 0,
            family: FAMILY_IPV4,
            ip,
        }
    }

    /// The key for an IPv6 prefix; host bits are cleared.
    pub fn v6(prefix: crate::net::Ipv6Cidr) -> IpcacheKey {
        IpcacheKey {
            prefixlen: PREFIX_FIXED_BITS + prefix.len as u32,
            cluster_id: 0,
            pad1: 0,
            family: FAMILY_IPV6,
            ip: prefix.network().addr.octets(),
        }
    }

    /// The IPv6 prefix, if this is a well-formed IPv6 key.
    pub fn prefix_v6(&self) -> Option<crate::net::Ipv6Cidr> {
        let len = self.prefixlen.checked_sub(PREFIX_FIXED_BITS)?;
        (self.family == FAMILY_IPV6 && len <= 128)
            .then(|| crate::net::Ipv6Cidr::new(self.ip.into(), len as u8))
    }

    /// The IPv4 prefix, if this is a well-formed IPv4 key.
    pub fn prefix_v4(&self) -> Option<Ipv4Cidr> {
        let len = self.prefixlen.checked_sub(PREFIX_FIXED_BITS)?;
        (self.family == FAMILY_IPV4 && len <= 32).then(|| {
            Ipv4Cidr::new(
                Ipv4Addr::new(self.ip[0], self.ip[1], self.ip[2], self.ip[3]),
                len as u8,
            )
        })
    }
}

impl fmt::Display for IpcacheKey {
    /// `10.0.1.5/32`, as `cilium-dbg bpf ipcache list` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match (self.prefix_v4(), self.prefix_v6()) {
            (Some(p), _) => p.to_string(),
            (_, Some(p)) => p.to_string(),
            _ => return write!(f, "<family {} prefixlen {}>", self.family, self.prefixlen),
        };
        if self.cluster_id == 0 {
            write!(f, "{p}")
        } else {
            write!(f, "{p}@{}", self.cluster_id)
        }
    }
}

/// `struct remote_endpoint_info` (v2, 24 bytes).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct RemoteEndpointInfo {
    /// Security identity, host order.
    pub sec_identity: u32,
    /// Network order; IPv4 in bytes 0-3 when `FLAG_HAS_TUNNEL_EP` is set.
    pub tunnel_endpoint: [u8; 16],
    pub pad: u16,
    /// IPsec key index, 0 = none.
    pub key: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<RemoteEndpointInfo>() == 24);

impl RemoteEndpointInfo {
    /// An identity reached without a tunnel (local pods, node addresses, world).
    pub fn local(identity: u32) -> Self {
        RemoteEndpointInfo {
            sec_identity: identity,
            ..Default::default()
        }
    }

    /// An identity behind the node at `tunnel_endpoint`.
    pub fn tunnelled(identity: u32, tunnel_endpoint: Ipv4Addr) -> Self {
        let mut ep = [0u8; 16];
        ep[..4].copy_from_slice(&tunnel_endpoint.octets());
        RemoteEndpointInfo {
            sec_identity: identity,
            tunnel_endpoint: ep,
            flags: FLAG_HAS_TUNNEL_EP,
            ..Default::default()
        }
    }

    /// The IPv4 tunnel endpoint to encapsulate to, if any (and not `skip_tunnel`).
    #[inline]
    pub fn tunnel_v4(&self) -> Option<[u8; 4]> {
        (self.flags & (FLAG_HAS_TUNNEL_EP | FLAG_SKIP_TUNNEL | FLAG_IPV6_TUNNEL_EP)
            == FLAG_HAS_TUNNEL_EP)
            .then(|| {
                [
                    self.tunnel_endpoint[0],
                    self.tunnel_endpoint[1],
                    self.tunnel_endpoint[2],
                    self.tunnel_endpoint[3],
                ]
            })
    }

    pub fn tunnel_endpoint_v4(&self) -> Ipv4Addr {
        let t = &self.tunnel_endpoint;
        Ipv4Addr::new(t[0], t[1], t[2], t[3])
    }

    /// Flag names as the Cilium CLI prints them (`hastunnel`, `skiptunnel`, …) or `<none>`.
    pub fn flag_names(&self) -> String {
        let names = [
            (FLAG_SKIP_TUNNEL, "skiptunnel"),
            (FLAG_HAS_TUNNEL_EP, "hastunnel"),
            (FLAG_IPV6_TUNNEL_EP, "ipv6tunnel"),
            (FLAG_REMOTE_CLUSTER, "remotecluster"),
        ];
        let v: Vec<&str> = names
            .iter()
            .filter(|(b, _)| self.flags & b != 0)
            .map(|(_, n)| *n)
            .collect();
        if v.is_empty() {
            "<none>".into()
        } else {
            v.join(",")
        }
    }
}

impl fmt::Display for RemoteEndpointInfo {
    /// `identity=… encryptkey=… tunnelendpoint=… flags=…`, as `cilium-dbg bpf ipcache list`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "identity={} encryptkey={} tunnelendpoint={} flags={}",
            self.sec_identity,
            self.key,
            self.tunnel_endpoint_v4(),
            self.flag_names()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn key_layout_matches_cilium() {
        assert_eq!(offset_of!(IpcacheKey, prefixlen), 0);
        assert_eq!(offset_of!(IpcacheKey, cluster_id), 4);
        assert_eq!(offset_of!(IpcacheKey, pad1), 6);
        assert_eq!(offset_of!(IpcacheKey, family), 7);
        assert_eq!(offset_of!(IpcacheKey, ip), 8);
        let k = IpcacheKey::v4("10.1.2.77/24".parse().unwrap());
        assert_eq!(k.prefixlen, 56, "32 fixed bits + /24");
        assert_eq!(&k.ip[..4], &[10, 1, 2, 0], "host bits masked");
        assert_eq!(k.to_string(), "10.1.2.0/24");
        assert_eq!(IpcacheKey::v4("0.0.0.0/0".parse().unwrap()).prefixlen, 32);
    }

    #[test]
    fn value_layout_matches_cilium() {
        assert_eq!(offset_of!(RemoteEndpointInfo, sec_identity), 0);
        assert_eq!(offset_of!(RemoteEndpointInfo, tunnel_endpoint), 4);
        assert_eq!(offset_of!(RemoteEndpointInfo, pad), 20);
        assert_eq!(offset_of!(RemoteEndpointInfo, key), 22);
        assert_eq!(offset_of!(RemoteEndpointInfo, flags), 23);
        let v = RemoteEndpointInfo::tunnelled(4242, "192.168.50.2".parse().unwrap());
        assert_eq!(v.tunnel_v4(), Some([192, 168, 50, 2]));
        assert_eq!(
            v.to_string(),
            "identity=4242 encryptkey=0 tunnelendpoint=192.168.50.2 flags=hastunnel"
        );
        let mut skip = v;
        skip.flags |= FLAG_SKIP_TUNNEL;
        assert_eq!(
            skip.tunnel_v4(),
            None,
            "skip_tunnel wins over has_tunnel_ep"
        );
        assert_eq!(
            RemoteEndpointInfo::local(1).to_string(),
            "identity=1 encryptkey=0 tunnelendpoint=0.0.0.0 flags=<none>"
        );
    }

    /// The IPv6 key: family 2, the full address, prefixlen counted from byte 4 as for v4.
    #[test]
    fn ipv6_keys_as_cilium_writes_them() {
        let p: crate::net::Ipv6Cidr = "fd00:10:1::11/128".parse().unwrap();
        let k = IpcacheKey::v6(p);
        assert_eq!((k.family, k.prefixlen), (FAMILY_IPV6, 32 + 128));
        assert_eq!(
            k.ip,
            "fd00:10:1::11"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(k.prefix_v6(), Some(p));
        assert_eq!(k.prefix_v4(), None);
        assert_eq!(k.to_string(), "fd00:10:1::11/128");
        let net = IpcacheKey::v6("fd00:10:1::5/64".parse().unwrap());
        assert_eq!(net.to_string(), "fd00:10:1::/64", "host bits cleared");
    }
}
