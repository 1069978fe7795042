//! The load balancer's lookup side: one immutable version of `cilium_lb4_*` (and the
//! IPv6 frontend map) the workers read, published with the other tables. The control
//! plane compiles it (`control::lb`); nothing here allocates or changes it.

use std::sync::Arc;

use crate::cow_map::CowMap;
use crate::maglev::Seeds;
use crate::maps::lb::*;
use crate::net::{Family, V4, V6};

/// The worker-facing LB tables: one immutable version, published with the other tables.
/// Every map is a [`CowMap`]: a new version shares what a change did not touch, so a
/// service change at 64k services × 32 backends copies a few shards, not 2M entries.
#[derive(Debug, Clone, Default)]
pub struct LbTables {
    /// `cilium_lb4_services_v2`: master entries and slots.
    pub services: CowMap<Lb4Key, Lb4Service>,
    /// `cilium_lb4_backends_v3`.
    pub backends: CowMap<u32, Lb4Backend>,
    /// `cilium_lb4_reverse_nat`, keyed by the host-order service ID.
    pub revnat: CowMap<u16, RevNat4Value>,
    /// `cilium_lb4_maglev`: service ID (host order) → M backend IDs.
    pub maglev: CowMap<u16, Arc<[u32]>>,
    /// `cilium_lb_affinity_match` (the value is unused, as in the BPF map).
    pub affinity_match: CowMap<AffinityMatchKey, ()>,
    pub seeds: Seeds,
    pub maglev_m: usize,
    /// Node default algorithm (`ALG_*`), for masters that say 0.
    pub default_alg: u8,
    /// This node's address: NodePort traffic to it also matches the `0.0.0.0` surrogate.
    pub node_ip: [u8; 4],
    /// `cilium_lb6_services_v2`: the IPv6 arm of [`LbTables::frontend`] (empty until the
    /// IPv6 datapath compiles services into it).
    pub services6: CowMap<Lb6Key, Lb6Service>,
    /// This node's IPv6 address (the `::` NodePort surrogate matches it).
    pub node_ip6: [u8; 16],
}

/// The service frontends of one address family: the seam [`LbTables::frontend`] is generic
/// over (Cilium's `lb4_lookup_service` / `lb6_lookup_service`).
pub trait LbFamily: Family {
    type Key: Copy + Eq + std::hash::Hash + std::fmt::Debug;
    /// The master key of `addr:port/proto`.
    fn master(addr: Self::Addr, port: u16, proto: u8) -> Self::Key;
    fn services(t: &LbTables) -> &CowMap<Self::Key, Lb4Service>;
    /// This node's address and the any-address of the family (the NodePort surrogate).
    fn node_ip(t: &LbTables) -> Self::Addr;
    const ANY: Self::Addr;
}

impl LbFamily for V4 {
    type Key = Lb4Key;
    #[inline]
    fn master(addr: [u8; 4], port: u16, proto: u8) -> Lb4Key {
        Lb4Key::master(addr, port, proto)
    }
    #[inline]
    fn services(t: &LbTables) -> &CowMap<Lb4Key, Lb4Service> {
        &t.services
    }
    #[inline]
    fn node_ip(t: &LbTables) -> [u8; 4] {
        t.node_ip
    }
    const ANY: [u8; 4] = [0; 4];
}

impl LbFamily for V6 {
    type Key = Lb6Key;
    #[inline]
    fn master(addr: [u8; 16], port: u16, proto: u8) -> Lb6Key {
        Lb6Key::master(addr, port, proto)
    }
    #[inline]
    fn services(t: &LbTables) -> &CowMap<Lb6Key, Lb6Service> {
        &t.services6
    }
    #[inline]
    fn node_ip(t: &LbTables) -> [u8; 16] {
        t.node_ip6
    }
    const ANY: [u8; 16] = [0; 16];
}

impl LbTables {
    /// The master entry of `addr:port/proto` (family `F`), or the NodePort surrogate when
    /// `addr` is this node's address.
    #[inline]
    pub fn frontend_of<F: LbFamily>(
        &self,
        addr: F::Addr,
        port: u16,
        proto: u8,
    ) -> Option<(F::Key, &Lb4Service)> {
        let services = F::services(self);
        let k = F::master(addr, port, proto);
        if let Some(s) = services.get(&k) {
            return Some((k, s));
        }
        if addr == F::node_ip(self) && addr != F::ANY {
            let k = F::master(F::ANY, port, proto);
            return services.get(&k).map(|s| (k, s));
        }
        None
    }

    /// The IPv4 arm of [`LbTables::frontend_of`].
    #[inline]
    pub fn frontend(&self, addr: [u8; 4], port: u16, proto: u8) -> Option<(Lb4Key, &Lb4Service)> {
        self.frontend_of::<V4>(addr, port, proto)
    }
}

/// `cilium_lb4_affinity` key words of a client and a service, as the affinity shared table
/// keys them: the client ID, then the service ID (network order, as in `AffinityKey`) and
/// the netns-cookie flag.
#[inline]
pub fn affinity_words(client: [u8; 4], rev: RevNat) -> [u64; 2] {
    let k = AffinityKey::v4(client, rev);
    let mut hi = [0u8; 8];
    hi[..2].copy_from_slice(&k.rev_nat_id.to_ne_bytes());
    hi[2] = k.netns_cookie;
    [u64::from_le_bytes(k.client_id), u64::from_le_bytes(hi)]
}

/// The service ID in affinity key words ([`affinity_words`]).
pub fn affinity_rev_nat(words: &[u64; 2]) -> RevNat {
    let hi = words[1].to_le_bytes();
    RevNat(u16::from_be(u16::from_ne_bytes([hi[0], hi[1]])))
}

/// The same affinity key for service `rev`.
pub fn affinity_with_rev_nat(words: [u64; 2], rev: RevNat) -> [u64; 2] {
    let mut hi = words[1].to_le_bytes();
    hi[..2].copy_from_slice(&rev.be().to_ne_bytes());
    [words[0], u64::from_le_bytes(hi)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frontend lookup is generic over the family: an IPv6 master is found by its own
    /// key, and the `::` NodePort surrogate answers for this node's IPv6 address only.
    #[test]
    fn frontend_lookup_takes_an_address_family() {
        let mut t = LbTables::default();
        let vip: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
        let node: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let svc = |id: u16| Lb4Service {
            count: 1,
            rev_nat_index: id.to_be(),
            ..Default::default()
        };
        t.services6.insert(Lb6Key::master(vip, 80, 6), svc(1));
        t.services6
            .insert(Lb6Key::master([0; 16], 30080, 6), svc(2));
        t.node_ip6 = node;
        let found = |a, p, proto| {
            t.frontend_of::<V6>(a, p, proto)
                .map(|(_, s)| u16::from_be(s.rev_nat_index))
        };
        assert_eq!(found(vip, 80, 6), Some(1));
        assert_eq!(found(vip, 80, 17), None, "the protocol is part of the key");
        assert_eq!(found(node, 30080, 6), Some(2), "NodePort via the surrogate");
        assert_eq!(
            found(vip, 30080, 6),
            None,
            "the surrogate is for the node only"
        );
        assert!(
            t.frontend([0xfd, 0, 0, 0], 80, 6).is_none(),
            "v4 has its own map"
        );
    }
}
