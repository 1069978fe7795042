//! A hash map that is cheap to copy and then change: the incremental publication behind the
//! big worker tables (the ipcache's per-length maps).
//!
//! The RCU snapshot ([`crate::Tables`]) publishes a whole new version for every change. With a
//! plain `HashMap` that means copying the table: 47 ms for a 1M-prefix ipcache, so single
//! updates ran at ~21/s (docs/benchmarks.md, churn). A [`CowMap`] is split into shards, each
//! behind an `Arc`; cloning the map copies only the shard pointers, and a write copies only the
//! shard it touches, if a published version still shares it (`Arc::make_mut`). A change to a
//! 1M-entry map therefore copies one shard (≤ [`SHARD_MAX`] entries) and bumps one reference
//! count per shard, instead of copying a million entries. Old versions share every untouched
//! shard with the new one.
//!
//! Rules:
//! - Lookups hash the key once: the shard is chosen from bits 32..48 of the hash, and the
//!   same hash probes the shard's `hashbrown::HashTable` (whose own bucket index uses the low
//!   bits and whose tag the top seven, so neither is starved by the shard choice).
//! - Up to [`SHARD_MAX`] entries the map is one plain table (no indirection on lookups; a
//!   clone copies it whole, a few microseconds). Beyond, it is sharded: the shard count is a
//!   power of two that grows ×8 when the average shard passes [`SHARD_MAX`] entries (a rebuild of every shard, amortised over the inserts that caused
//!   it); it never shrinks, so a map that once held 1M entries keeps ~1k shard pointers.
//! - Lookups do not allocate; writes happen on the control thread only.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

/// The average shard size that triggers growth (×8 shards, so ~[`SHARD_MAX`]/8 after).
pub const SHARD_MAX: usize = 2048;
/// The most shards a map grows to (then shards grow instead).
pub const MAX_SHARDS: usize = 1 << 16;

#[derive(Clone)]
pub struct CowMap<K, V> {
    hasher: DefaultHashBuilder,
    repr: Repr<K, V>,
    len: usize,
}

/// Up to [`SHARD_MAX`] entries the map is one plain table, copied whole by a clone (a few
/// microseconds) and probed without any indirection: the small tables of the hot path
/// (endpoints, a small cluster's services, short prefix lengths) cost what a `HashMap` costs.
/// Beyond, it is sharded.
#[derive(Clone)]
enum Repr<K, V> {
    Small(HashTable<(K, V)>),
    /// A power of two long.
    Sharded(Vec<Arc<HashTable<(K, V)>>>),
}

impl<K, V> std::fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shards = match &self.repr {
            Repr::Small(_) => 1,
            Repr::Sharded(s) => s.len(),
        };
        f.debug_struct("CowMap")
            .field("len", &self.len)
            .field("shards", &shards)
            .finish_non_exhaustive()
    }
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        CowMap {
            hasher: DefaultHashBuilder::default(),
            repr: Repr::Small(HashTable::new()),
            len: 0,
        }
    }
}

#[inline(always)]
fn shard_of(hash: u64, shards: usize) -> usize {
    ((hash >> 32) as usize) & (shards - 1)
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shards behind `Arc`s (what a clone shares); 0 while the map is one plain table
    /// (which a clone copies whole).
    pub fn shards(&self) -> usize {
        match &self.repr {
            Repr::Small(_) => 0,
            Repr::Sharded(s) => s.len(),
        }
    }

    /// Always inlined: it is on every packet's path (ipcache, endpoints, services), and
    /// out of line it cost the encap pipeline ~40 ns/frame (measured, docs/decisions.md).
    #[inline(always)]
    pub fn get(&self, k: &K) -> Option<&V> {
        // An empty map is not hashed into (as hashbrown's `HashMap::get`): the pipeline
        // asks empty tables (no services, no IPv6) on every packet.
        if self.len == 0 {
            return None;
        }
        let h = self.hasher.hash_one(k);
        let t = match &self.repr {
            Repr::Small(t) => t,
            Repr::Sharded(s) => &s[shard_of(h, s.len())],
        };
        t.find(h, |(x, _)| x == k).map(|(_, v)| v)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    /// The table holding `h`, made private to this version (copied if a clone shares it).
    fn table_mut(&mut self, h: u64) -> &mut HashTable<(K, V)> {
        match &mut self.repr {
            Repr::Small(t) => t,
            Repr::Sharded(s) => {
                let n = s.len();
                Arc::make_mut(&mut s[shard_of(h, n)])
            }
        }
    }

    /// Insert or replace. Returns the old value.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let h = self.hasher.hash_one(&k);
        let hasher = self.hasher;
        let t = self.table_mut(h);
        match t.entry(h, |(x, _)| *x == k, |(x, _)| hasher.hash_one(x)) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(&mut e.get_mut().1, v))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((k, v));
                self.len += 1;
                self.grow_if_needed();
                None
            }
        }
    }

    /// Remove a key. Returns its value.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        // Do not copy a shared shard that does not hold the key.
        self.get(k)?;
        let h = self.hasher.hash_one(k);
        let (_, v) = self
            .table_mut(h)
            .find_entry(h, |(x, _)| x == k)
            .ok()?
            .remove()
            .0;
        self.len -= 1;
        Some(v)
    }

    fn tables(&self) -> impl Iterator<Item = &HashTable<(K, V)>> {
        let (small, sharded) = match &self.repr {
            Repr::Small(t) => (Some(t), None),
            Repr::Sharded(s) => (None, Some(s.iter().map(|a| &**a))),
        };
        small.into_iter().chain(sharded.into_iter().flatten())
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.tables().flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Keep the entries `f` accepts (copies only the shards it changes). `f` may be asked
    /// twice about an entry of a shard it changes (once to see whether it does): it must be
    /// a pure test.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &V) -> bool) {
        let mut removed = 0;
        match &mut self.repr {
            Repr::Small(t) => {
                let before = t.len();
                t.retain(|(k, v)| f(k, v));
                removed = before - t.len();
            }
            Repr::Sharded(shards) => {
                for s in shards {
                    if s.iter().all(|(k, v)| f(k, v)) {
                        continue;
                    }
                    let shard = Arc::make_mut(s);
                    let before = shard.len();
                    shard.retain(|(k, v)| f(k, v));
                    removed += before - shard.len();
                }
            }
        }
        self.len -= removed;
    }

    fn grow_if_needed(&mut self) {
        let n = self.shards().max(1);
        if self.len <= n * SHARD_MAX || n >= MAX_SHARDS {
            return;
        }
        let want = (n * 8).min(MAX_SHARDS);
        let per = self.len / want + 1;
        let mut shards: Vec<HashTable<(K, V)>> =
            (0..want).map(|_| HashTable::with_capacity(per)).collect();
        for (k, v) in self.iter() {
            let h = self.hasher.hash_one(k);
            shards[shard_of(h, want)]
                .insert_unique(h, (k.clone(), v.clone()), |(x, _)| self.hasher.hash_one(x));
        }
        self.repr = Repr::Sharded(shards.into_iter().map(Arc::new).collect());
    }
}

impl<K: Hash + Eq + Clone, V: Clone> std::ops::Index<&K> for CowMap<K, V> {
    type Output = V;
    /// # Panics
    /// The key is absent (as `HashMap`'s index).
    fn index(&self, k: &K) -> &V {
        self.get(k).expect("key in CowMap")
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Extend<(K, V)> for CowMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> FromIterator<(K, V)> for CowMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = CowMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Against std's HashMap through growth, replacement and removal.
    #[test]
    fn behaves_like_a_hash_map_through_growth() {
        let mut m: CowMap<u32, u32> = CowMap::new();
        let mut want: HashMap<u32, u32> = HashMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..40_000u32 {
            let k = (rnd() % 30_000) as u32;
            if rnd() % 5 == 0 {
                assert_eq!(m.remove(&k), want.remove(&k), "remove {k}");
            } else {
                assert_eq!(m.insert(k, i), want.insert(k, i), "insert {k}");
            }
            assert_eq!(m.len(), want.len());
        }
        assert!(m.shards() > 1, "grew past one shard: {}", m.shards());
        for k in 0..30_000u32 {
            assert_eq!(m.get(&k), want.get(&k), "get {k}");
        }
        let mut all: Vec<(u32, u32)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_unstable();
        let mut w: Vec<(u32, u32)> = want.into_iter().collect();
        w.sort_unstable();
        assert_eq!(all, w);
        m.retain(|k, _| k % 2 == 0);
        assert!(m.iter().all(|(k, _)| k % 2 == 0));
        assert_eq!(m.len(), m.iter().count());
    }

    /// The point of the type: a clone shares every shard, a write copies only the one it
    /// touches, and the old version is unchanged.
    #[test]
    fn a_write_after_clone_copies_one_shard_and_leaves_the_old_version_alone() {
        let m: CowMap<u32, u64> = (0..100_000u32).map(|k| (k, k as u64)).collect();
        let shards = m.shards();
        assert!(shards >= 8, "{shards}");
        let mut next = m.clone();
        let shared = |a: &CowMap<u32, u64>, b: &CowMap<u32, u64>| match (&a.repr, &b.repr) {
            (Repr::Sharded(a), Repr::Sharded(b)) => {
                a.iter().zip(b).filter(|(x, y)| Arc::ptr_eq(x, y)).count()
            }
            _ => 0,
        };
        assert_eq!(shared(&m, &next), shards);
        next.insert(7, 700);
        next.insert(100_001, 1);
        next.remove(&8);
        assert!(shared(&m, &next) >= shards - 3, "{}", shared(&m, &next));
        // Removing an absent key copies nothing.
        let before = shared(&m, &next);
        next.remove(&5_000_000);
        assert_eq!(shared(&m, &next), before);
        assert_eq!(m.get(&7), Some(&7));
        assert_eq!(m.get(&8), Some(&8));
        assert_eq!(m.get(&100_001), None);
        assert_eq!(m.len(), 100_000);
        assert_eq!(next.get(&7), Some(&700));
        assert_eq!(next.get(&8), None);
        assert_eq!(next.get(&100_001), Some(&1));
        assert_eq!(next.len(), 100_000);
    }
}
