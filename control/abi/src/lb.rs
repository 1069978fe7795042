//! Load-balancing maps, Cilium 1.19 layouts: `cilium_lb4_services_v2`, `cilium_lb4_backends_v3`,
//! `cilium_lb4_reverse_nat`, `cilium_lb4_maglev` (values), `cilium_lb4_affinity` and
//! `cilium_lb_affinity_match`.
//!
//! Byte-order traps (reference §5), kept in the types so callers cannot get them wrong:
//! - addresses and ports are wire order (`[u8; 4]`, `[u8; 2]`);
//! - `backend_slot`, backend IDs, `count`, `qcount` and the affinity timeout are host order;
//! - `rev_nat_index` is **network** order everywhere it is stored (service value, reverse-NAT
//!   key, Maglev outer key, CT entry, affinity keys): [`RevNat`] holds the host number and
//!   converts at the edge.

use std::fmt;
use std::net::Ipv4Addr;

pub const SERVICES_MAP: &str = "cilium_lb4_services_v2";
pub const BACKENDS_MAP: &str = "cilium_lb4_backends_v3";
pub const REVNAT_MAP: &str = "cilium_lb4_reverse_nat";
pub const MAGLEV_MAP: &str = "cilium_lb4_maglev";
pub const AFFINITY_MAP: &str = "cilium_lb4_affinity";
pub const AFFINITY_MATCH_MAP: &str = "cilium_lb_affinity_match";
/// `bpf-lb-map-max`.
pub const LB_MAP_MAX: u32 = 65536;

/// `lb4_key.scope`.
pub const SCOPE_EXTERNAL: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

/// `lb4_service.flags` (SVC_FLAG_*).
pub const SVC_FLAG_EXTERNAL_IP: u8 = 0x01;
pub const SVC_FLAG_NODEPORT: u8 = 0x02;
pub const SVC_FLAG_EXT_LOCAL_SCOPE: u8 = 0x04;
pub const SVC_FLAG_HOSTPORT: u8 = 0x08;
pub const SVC_FLAG_AFFINITY: u8 = 0x10;
pub const SVC_FLAG_LOADBALANCER: u8 = 0x20;
pub const SVC_FLAG_ROUTABLE: u8 = 0x40;
pub const SVC_FLAG_SOURCE_RANGE: u8 = 0x80;
/// `lb4_service.flags2`, slot entries: the slot is quarantined.
pub const SVC_FLAG2_QUARANTINED: u8 = 0x40;

/// `lb4_backend.flags`: backend state.
pub const BE_STATE_ACTIVE: u8 = 0;
pub const BE_STATE_TERMINATING: u8 = 1;
pub const BE_STATE_QUARANTINED: u8 = 2;
pub const BE_STATE_MAINTENANCE: u8 = 3;

/// Bits 24-31 of the master entry's first word: the service's LB algorithm.
pub const ALG_DEFAULT: u8 = 0;
pub const ALG_RANDOM: u8 = 1;
pub const ALG_MAGLEV: u8 = 2;

/// Cilium's default Maglev table size (a prime; `bpf-lb-maglev-table-size`).
pub const MAGLEV_TABLE_SIZE: usize = 16381;

/// A service (frontend) ID: the `rev_nat_index`. Holds the host-order number; [`RevNat::be`]
/// gives the stored (network-order) form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RevNat(pub u16);

impl RevNat {
    /// As stored in the maps: network order.
    #[inline]
    pub const fn be(self) -> u16 {
        self.0.to_be()
    }
    /// From the stored (network-order) form.
    #[inline]
    pub const fn from_be(v: u16) -> RevNat {
        RevNat(u16::from_be(v))
    }
}

/// IP protocol names as `cilium-dbg` prints them.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        0 => "ANY",
        1 => "ICMP",
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "UNKNOWN",
    }
}

/// `struct lb4_key` (12 B).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Lb4Key {
    /// Frontend address, wire order.
    pub address: [u8; 4],
    /// Frontend port, wire order.
    pub dport: [u8; 2],
    /// Host order: 0 = the master (service) entry, 1..=count the backend slots.
    pub backend_slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<Lb4Key>() == 12);

impl Lb4Key {
    /// The master entry of a frontend.
    pub fn master(addr: [u8; 4], port: u16, proto: u8) -> Lb4Key {
        Lb4Key {
            address: addr,
            dport: port.to_be_bytes(),
            backend_slot: 0,
            proto,
            scope: SCOPE_EXTERNAL,
            pad: [0; 2],
        }
    }

    /// Slot `slot` of the same frontend.
    pub fn slot(self, slot: u16) -> Lb4Key {
        Lb4Key {
            backend_slot: slot,
            ..self
        }
    }

    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }

    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.address)
    }
}

impl fmt::Display for Lb4Key {
    /// `10.96.0.10:53/UDP (1)` (`/i` after the protocol for the internal scope).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.addr(),
            self.port(),
            proto_name(self.proto)
        )?;
        if self.scope == SCOPE_INTERNAL {
            f.write_str("/i")?;
        }
        write!(f, " ({})", self.backend_slot)
    }
}

/// `struct lb6_key` (24 B): the IPv6 frontend key of `cilium_lb6_services_v2`, the fields of
/// [`Lb4Key`] with a 16-byte address. Its value, `struct lb6_service`, has
/// [`Lb4Service`]'s layout ([`Lb6Service`]).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Lb6Key {
    /// Frontend address, wire order.
    pub address: [u8; 16],
    /// Frontend port, wire order.
    pub dport: [u8; 2],
    /// Host order: 0 = the master (service) entry, 1..=count the backend slots.
    pub backend_slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<Lb6Key>() == 24);

impl Lb6Key {
    /// The master entry of a frontend.
    pub fn master(addr: [u8; 16], port: u16, proto: u8) -> Lb6Key {
        Lb6Key {
            address: addr,
            dport: port.to_be_bytes(),
            backend_slot: 0,
            proto,
            scope: SCOPE_EXTERNAL,
            pad: [0; 2],
        }
    }
}

/// `struct lb6_service`: byte for byte [`Lb4Service`].
pub type Lb6Service = Lb4Service;

/// `cilium_lb6_services_v2`.
pub const SERVICES6_MAP: &str = "cilium_lb6_services_v2";

/// `struct lb4_service` (12 B).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Lb4Service {
    /// Master: affinity timeout (s, low 24 bits) | algorithm << 24. Slot: backend ID. Host order.
    pub word: u32,
    /// Master: number of active slots. Host order.
    pub count: u16,
    /// Network order.
    pub rev_nat_index: u16,
    pub flags: u8,
    pub flags2: u8,
    /// Master: quarantined slots after the active ones. Host order.
    pub qcount: u16,
}
const _: () = assert!(size_of::<Lb4Service>() == 12);

impl Lb4Service {
    /// The master entry of a service.
    pub fn master(
        count: u16,
        rev_nat: RevNat,
        flags: u8,
        algorithm: u8,
        affinity_timeout: u32,
    ) -> Lb4Service {
        Lb4Service {
            word: (affinity_timeout & 0x00ff_ffff) | (algorithm as u32) << 24,
            count,
            rev_nat_index: rev_nat.be(),
            flags,
            flags2: 0,
            qcount: 0,
        }
    }

    /// A backend slot entry.
    pub fn slot(backend_id: u32, rev_nat: RevNat, flags: u8) -> Lb4Service {
        Lb4Service {
            word: backend_id,
            count: 0,
            rev_nat_index: rev_nat.be(),
            flags,
            flags2: 0,
            qcount: 0,
        }
    }

    pub fn rev_nat(&self) -> RevNat {
        RevNat::from_be(self.rev_nat_index)
    }
    pub fn backend_id(&self) -> u32 {
        self.word
    }
    pub fn affinity_timeout(&self) -> u32 {
        self.word & 0x00ff_ffff
    }
    pub fn algorithm(&self) -> u8 {
        (self.word >> 24) as u8
    }
    pub fn has_affinity(&self) -> bool {
        self.flags & SVC_FLAG_AFFINITY != 0
    }
    /// Reachable from outside the cluster (NodePort, ExternalIP, LoadBalancer).
    pub fn routable(&self) -> bool {
        self.flags & SVC_FLAG_ROUTABLE != 0
    }

    /// The bracketed type list `cilium-dbg bpf lb list` prints after a master entry.
    pub fn type_string(&self) -> String {
        let mut v: Vec<&str> = Vec::new();
        let f = self.flags;
        if f & SVC_FLAG_EXTERNAL_IP != 0 {
            v.push("ExternalIPs");
        } else if f & SVC_FLAG_NODEPORT != 0 {
            v.push("NodePort");
        } else if f & SVC_FLAG_LOADBALANCER != 0 {
            v.push("LoadBalancer");
        } else if f & SVC_FLAG_HOSTPORT != 0 {
            v.push("HostPort");
        } else {
            v.push("ClusterIP");
        }
        if f & SVC_FLAG_EXT_LOCAL_SCOPE != 0 {
            v.push("Local");
        }
        if f & SVC_FLAG_AFFINITY != 0 {
            v.push("sessionAffinity");
        }
        if f & SVC_FLAG_ROUTABLE == 0 {
            v.push("non-routable");
        }
        match self.algorithm() {
            ALG_RANDOM => v.push("algorithm=random"),
            ALG_MAGLEV => v.push("algorithm=maglev"),
            _ => {}
        }
        v.join(", ")
    }
}

/// `struct lb4_backend` (v3, 12 B), keyed by a host-order u32 backend ID.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Lb4Backend {
    pub address: [u8; 4],
    pub port: [u8; 2],
    pub proto: u8,
    /// Backend state (`BE_STATE_*`).
    pub flags: u8,
    pub cluster_id: u16,
    pub zone: u8,
    pub pad: u8,
}
const _: () = assert!(size_of::<Lb4Backend>() == 12);

impl Lb4Backend {
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8, state: u8) -> Lb4Backend {
        Lb4Backend {
            address: addr.octets(),
            port: port.to_be_bytes(),
            proto,
            flags: state,
            ..Default::default()
        }
    }
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.address)
    }
    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
    pub fn is_active(&self) -> bool {
        self.flags == BE_STATE_ACTIVE
    }
    /// `10.0.1.23:80/TCP`: also the name the Maglev permutation hashes (sorted by it), so
    /// every node builds the same table whatever IDs it allocated.
    pub fn name(&self) -> String {
        format!("{}:{}/{}", self.addr(), self.port(), proto_name(self.proto))
    }
    pub fn state_name(&self) -> &'static str {
        match self.flags {
            BE_STATE_ACTIVE => "active",
            BE_STATE_TERMINATING => "terminating",
            BE_STATE_QUARANTINED => "quarantined",
            BE_STATE_MAINTENANCE => "maintenance",
            _ => "unknown",
        }
    }
}

/// `cilium_lb4_reverse_nat` value (6 B packed): the frontend a reply is rewritten back to.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct RevNat4Value {
    pub address: [u8; 4],
    pub port: [u8; 2],
}
const _: () = assert!(size_of::<RevNat4Value>() == 6);

impl RevNat4Value {
    pub fn new(addr: [u8; 4], port: u16) -> RevNat4Value {
        RevNat4Value {
            address: addr,
            port: port.to_be_bytes(),
        }
    }
}

impl fmt::Display for RevNat4Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            Ipv4Addr::from(self.address),
            u16::from_be_bytes(self.port)
        )
    }
}

/// `struct lb4_affinity_key` (16 B packed).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct AffinityKey {
    /// The client's IPv4 address in the first four bytes (or a netns cookie).
    pub client_id: [u8; 8],
    /// Network order.
    pub rev_nat_id: u16,
    /// Bit 0: the client ID is a netns cookie.
    pub netns_cookie: u8,
    pub pad1: u8,
    pub pad2: u32,
}
const _: () = assert!(size_of::<AffinityKey>() == 16);

impl AffinityKey {
    pub fn v4(client: [u8; 4], rev_nat: RevNat) -> AffinityKey {
        let mut client_id = [0u8; 8];
        client_id[..4].copy_from_slice(&client);
        AffinityKey {
            client_id,
            rev_nat_id: rev_nat.be(),
            ..Default::default()
        }
    }
}

/// `struct lb_affinity_val` (16 B).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct AffinityValue {
    /// Same clock as CT lifetimes (seconds of CLOCK_MONOTONIC).
    pub last_used: u64,
    pub backend_id: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

/// `struct lb_affinity_match` (8 B): present ⇒ the backend is still valid for the service's
/// affinity.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct AffinityMatchKey {
    /// Host order.
    pub backend_id: u32,
    /// Network order.
    pub rev_nat_id: u16,
    pub pad: u16,
}
const _: () = assert!(size_of::<AffinityMatchKey>() == 8);

impl AffinityMatchKey {
    pub fn new(backend_id: u32, rev_nat: RevNat) -> AffinityMatchKey {
        AffinityMatchKey {
            backend_id,
            rev_nat_id: rev_nat.be(),
            pad: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn layouts_match_cilium() {
        assert_eq!(offset_of!(Lb4Key, dport), 4);
        assert_eq!(offset_of!(Lb4Key, backend_slot), 6);
        assert_eq!(offset_of!(Lb4Key, proto), 8);
        assert_eq!(offset_of!(Lb4Key, scope), 9);
        assert_eq!(offset_of!(Lb4Service, count), 4);
        assert_eq!(offset_of!(Lb4Service, rev_nat_index), 6);
        assert_eq!(offset_of!(Lb4Service, flags), 8);
        assert_eq!(offset_of!(Lb4Service, flags2), 9);
        assert_eq!(offset_of!(Lb4Service, qcount), 10);
        assert_eq!(offset_of!(Lb4Backend, port), 4);
        assert_eq!(offset_of!(Lb4Backend, proto), 6);
        assert_eq!(offset_of!(Lb4Backend, flags), 7);
        assert_eq!(offset_of!(Lb4Backend, cluster_id), 8);
        assert_eq!(offset_of!(Lb4Backend, zone), 10);
        assert_eq!(offset_of!(AffinityKey, rev_nat_id), 8);
        assert_eq!(offset_of!(AffinityKey, netns_cookie), 10);
        assert_eq!(offset_of!(AffinityValue, backend_id), 8);
        assert_eq!(offset_of!(AffinityMatchKey, rev_nat_id), 4);
        assert_eq!(offset_of!(Lb6Key, dport), 16);
        assert_eq!(offset_of!(Lb6Key, backend_slot), 18);
        assert_eq!(offset_of!(Lb6Key, proto), 20);
        assert_eq!(offset_of!(Lb6Key, scope), 21);
    }

    #[test]
    fn byte_orders_are_cilium_ones() {
        // 10.96.0.10:53/UDP slot 1 → backend 7 of rev_nat 4: memory images on a
        // little-endian host (what the kernel map holds).
        let k = Lb4Key::master([10, 96, 0, 10], 53, 17).slot(1);
        assert_eq!(k.address, [10, 96, 0, 10]);
        assert_eq!(k.dport, [0, 53]);
        assert_eq!(k.backend_slot.to_ne_bytes(), [1, 0]);
        let v = Lb4Service::slot(7, RevNat(4), 0);
        assert_eq!(v.word.to_ne_bytes(), [7, 0, 0, 0]);
        assert_eq!(v.rev_nat_index.to_ne_bytes(), [0, 4]);
        let m = Lb4Service::master(2, RevNat(4), SVC_FLAG_AFFINITY, ALG_MAGLEV, 10800);
        assert_eq!(m.affinity_timeout(), 10800);
        assert_eq!(m.algorithm(), ALG_MAGLEV);
        assert_eq!(m.rev_nat(), RevNat(4));
        assert_eq!(
            AffinityKey::v4([10, 0, 0, 1], RevNat(4))
                .rev_nat_id
                .to_ne_bytes(),
            [0, 4]
        );
        assert_eq!(k.to_string(), "10.96.0.10:53/UDP (1)");
    }
}
