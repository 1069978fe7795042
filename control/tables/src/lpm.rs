//! Longest-prefix match, generic over the address family ([`crate::net::Family`]: [`Lpm4`]
//! for IPv4, `Lpm<V6, _>` for IPv6), for the worker's copy of `cilium_ipcache_v2` and the
//! native-routing table.
//!
//! One hash table per prefix length that is in use, probed from the longest populated length
//! down (the "hash per length" scheme; Waldvogel's binary search over lengths is the next step
//! if a deployment ever uses many distinct lengths). A Kubernetes ipcache is dominated by /32s
//! (pods, nodes) plus a handful of shorter prefixes (pod CIDRs, CIDR policies, 0.0.0.0/0), so a
//! lookup is one probe for a pod address and a few for anything else — and the probe count
//! does not grow with the number of prefixes. `bench/` measures it at 1M prefixes
//! (docs/benchmarks.md).
//!
//! Lookups do not allocate. Updates happen on the control thread on a private copy that is
//! then published (see `tables`). Each length's map is a [`CowMap`]: the copy shares every
//! shard with the published version and an update copies only the shard it changes, so one
//! change to a 1M-prefix table costs microseconds, not a copy of the table.

use crate::cow_map::CowMap;

use crate::net::{Family, V4};

/// The IPv4 table (what the workers use today).
pub type Lpm4<V> = Lpm<V4, V>;

#[derive(Debug, Clone)]
pub struct Lpm<F: Family, V> {
    /// `by_len[l]`: network address (host order) → value, for prefixes of length `l`.
    by_len: Vec<CowMap<F::Bits, V>>,
    /// Populated lengths, longest first.
    lens: Vec<u8>,
    len: usize,
}

impl<F: Family, V> Default for Lpm<F, V> {
    fn default() -> Self {
        Lpm {
            by_len: (0..=F::BITS).map(|_| CowMap::default()).collect(),
            lens: Vec::new(),
            len: 0,
        }
    }
}

impl<F: Family, V: Clone> Lpm<F, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinct prefix lengths in use (the worst-case probe count).
    pub fn lengths(&self) -> &[u8] {
        &self.lens
    }

    /// Insert or replace; the host bits of `prefix` are ignored. Returns the old value.
    pub fn insert(&mut self, prefix: F::Prefix, v: V) -> Option<V> {
        let (net, plen) = F::split(prefix);
        let l = plen as usize;
        let old = self.by_len[l].insert(net, v);
        if old.is_none() {
            self.len += 1;
            if self.by_len[l].len() == 1 {
                self.lens.push(plen);
                self.lens.sort_unstable_by(|a, b| b.cmp(a));
            }
        }
        old
    }

    /// Remove an exact prefix. Returns its value.
    pub fn remove(&mut self, prefix: F::Prefix) -> Option<V> {
        let (net, plen) = F::split(prefix);
        let l = plen as usize;
        let old = self.by_len[l].remove(&net);
        if old.is_some() {
            self.len -= 1;
            if self.by_len[l].is_empty() {
                self.lens.retain(|&x| x != plen);
            }
        }
        old
    }

    /// Exact-prefix lookup.
    pub fn get(&self, prefix: F::Prefix) -> Option<&V> {
        let (net, plen) = F::split(prefix);
        self.by_len[plen as usize].get(&net)
    }

    /// Longest-prefix match for an address in wire order.
    #[inline]
    pub fn lookup(&self, ip: F::Addr) -> Option<&V> {
        self.lookup_prefix(ip).map(|(_, v)| v)
    }

    /// Longest-prefix match, with the prefix length that matched.
    #[inline]
    pub fn lookup_prefix(&self, ip: F::Addr) -> Option<(u8, &V)> {
        for &l in &self.lens {
            if let Some(v) = self.by_len[l as usize].get(&F::masked(ip, l)) {
                return Some((l, v));
            }
        }
        None
    }

    /// Every prefix with its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (F::Prefix, &V)> {
        self.by_len
            .iter()
            .enumerate()
            .flat_map(|(l, m)| m.iter().map(move |(a, v)| (F::join(*a, l as u8), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Ipv4Cidr, Ipv6Cidr, V6, mask};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The IPv6 arm: the same table over 128-bit addresses (a pod /128, a node /64, a
    /// cluster /48, the default route).
    #[test]
    fn ipv6_longest_match_wins() {
        let p6 = |a: &str, l| Ipv6Cidr::new(a.parse::<Ipv6Addr>().unwrap(), l);
        let mut t: Lpm<V6, &str> = Lpm::new();
        t.insert(p6("::", 0), "world");
        t.insert(p6("fd00:10::", 48), "cluster");
        t.insert(p6("fd00:10:0:2::", 64), "node2");
        t.insert(p6("fd00:10:0:2::7", 128), "pod");
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(t.lookup(a("fd00:10:0:2::7")), Some(&"pod"));
        assert_eq!(t.lookup(a("fd00:10:0:2::8")), Some(&"node2"));
        assert_eq!(t.lookup(a("fd00:10:0:3::1")), Some(&"cluster"));
        assert_eq!(t.lookup_prefix(a("2001:db8::1")), Some((0, &"world")));
        assert_eq!(t.lengths(), &[128, 64, 48, 0]);
        assert_eq!(
            t.get(p6("fd00:10:0:2:ffff::", 64)),
            Some(&"node2"),
            "host bits ignored"
        );
        assert_eq!(t.remove(p6("fd00:10:0:2::", 64)), Some("node2"));
        assert_eq!(t.lookup(a("fd00:10:0:2::8")), Some(&"cluster"));
        let mut all: Vec<String> = t.iter().map(|(p, _)| p.to_string()).collect();
        all.sort();
        assert_eq!(all, ["::/0", "fd00:10:0:2::7/128", "fd00:10::/48"]);
    }

    fn p(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_match_wins() {
        let mut t = Lpm4::new();
        t.insert(p("0.0.0.0/0"), "world");
        t.insert(p("10.2.0.0/16"), "cluster");
        t.insert(p("10.2.1.0/24"), "node2");
        t.insert(p("10.2.1.7/32"), "pod");
        assert_eq!(t.lookup([10, 2, 1, 7]), Some(&"pod"));
        assert_eq!(t.lookup([10, 2, 1, 8]), Some(&"node2"));
        assert_eq!(t.lookup([10, 2, 9, 8]), Some(&"cluster"));
        assert_eq!(t.lookup_prefix([8, 8, 8, 8]), Some((0, &"world")));
        assert_eq!(t.lengths(), &[32, 24, 16, 0]);
        assert_eq!(t.len(), 4);
        assert_eq!(t.remove(p("10.2.1.0/24")), Some("node2"));
        assert_eq!(t.lookup([10, 2, 1, 8]), Some(&"cluster"));
        assert_eq!(t.lengths(), &[32, 16, 0]);
        assert_eq!(t.remove(p("10.2.1.0/24")), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn host_bits_are_ignored_and_replace_counts_once() {
        let mut t = Lpm4::new();
        assert_eq!(t.insert(p("10.0.0.77/8"), 1), None);
        assert_eq!(t.insert(p("10.0.0.0/8"), 2), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(p("10.9.9.9/8")), Some(&2));
        let all: Vec<_> = t.iter().collect();
        assert_eq!(all, vec![(p("10.0.0.0/8"), &2)]);
    }

    /// Against a brute-force scan over random prefixes and addresses.
    #[test]
    fn matches_brute_force() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut t = Lpm4::new();
        let mut all: Vec<(u32, u8, u32)> = Vec::new();
        for i in 0..3000u32 {
            let len = [8u8, 16, 20, 24, 28, 32][(rnd() % 6) as usize];
            // Cluster the addresses so prefixes nest.
            let a = (0x0a00_0000 | (rnd() as u32 & 0x00ff_ffff)) & mask(len);
            t.insert(Ipv4Cidr::new(Ipv4Addr::from(a), len), i);
            all.retain(|(x, l, _)| !(*x == a && *l == len));
            all.push((a, len, i));
        }
        for _ in 0..20_000 {
            let ip = 0x0a00_0000 | (rnd() as u32 & 0x00ff_ffff);
            let want = all
                .iter()
                .filter(|(a, l, _)| ip & mask(*l) == *a)
                .max_by_key(|(_, l, _)| *l)
                .map(|(_, _, v)| v);
            assert_eq!(t.lookup(ip.to_be_bytes()), want, "{}", Ipv4Addr::from(ip));
        }
    }
}
