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
//! - The shard count is a power of two that grows ×8 when the average shard passes
//!   [`SHARD_MAX`] entries (a rebuild of every shard, amortised over the inserts that caused
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
    /// Never empty; a power of two long.
    shards: Vec<Arc<HashTable<(K, V)>>>,
    len: usize,
}

impl<K, V> std::fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CowMap")
            .field("len", &self.len)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        CowMap {
            hasher: DefaultHashBuilder::default(),
            shards: vec![Arc::new(HashTable::new())],
            len: 0,
        }
    }
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

    /// Number of shards (what a clone copies).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        ((hash >> 32) as usize) & (self.shards.len() - 1)
    }

    #[inline]
    pub fn get(&self, k: &K) -> Option<&V> {
        let h = self.hasher.hash_one(k);
        self.shards[self.shard_of(h)]
            .find(h, |(x, _)| x == k)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    /// Insert or replace. Returns the old value.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let h = self.hasher.hash_one(&k);
        let s = self.shard_of(h);
        let hasher = &self.hasher;
        let shard = Arc::make_mut(&mut self.shards[s]);
        match shard.entry(h, |(x, _)| *x == k, |(x, _)| hasher.hash_one(x)) {
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
        let h = self.hasher.hash_one(k);
        let s = self.shard_of(h);
        // Do not copy a shared shard that does not hold the key.
        self.shards[s].find(h, |(x, _)| x == k)?;
        let shard = Arc::make_mut(&mut self.shards[s]);
        let (_, v) = shard.find_entry(h, |(x, _)| x == k).ok()?.remove().0;
        self.len -= 1;
        Some(v)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Keep the entries `f` accepts (copies only the shards it changes).
    pub fn retain(&mut self, mut f: impl FnMut(&K, &V) -> bool) {
        for s in &mut self.shards {
            if s.iter().all(|(k, v)| f(k, v)) {
                continue;
            }
            let shard = Arc::make_mut(s);
            let before = shard.len();
            shard.retain(|(k, v)| f(k, v));
            self.len -= before - shard.len();
        }
    }

    fn grow_if_needed(&mut self) {
        let n = self.shards.len();
        if self.len <= n * SHARD_MAX || n >= MAX_SHARDS {
            return;
        }
        let want = (n * 8).min(MAX_SHARDS);
        let per = self.len / want + 1;
        let mut shards: Vec<HashTable<(K, V)>> =
            (0..want).map(|_| HashTable::with_capacity(per)).collect();
        for s in &self.shards {
            for (k, v) in s.iter() {
                let h = self.hasher.hash_one(k);
                let i = ((h >> 32) as usize) & (want - 1);
                shards[i]
                    .insert_unique(h, (k.clone(), v.clone()), |(x, _)| self.hasher.hash_one(x));
            }
        }
        self.shards = shards.into_iter().map(Arc::new).collect();
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
        let shared = |a: &CowMap<u32, u64>, b: &CowMap<u32, u64>| {
            a.shards
                .iter()
                .zip(&b.shards)
                .filter(|(x, y)| Arc::ptr_eq(x, y))
                .count()
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
