//! Maglev consistent hashing as Cilium computes it (`pkg/maglev`, `bpf/lib/hash.h`).
//!
//! Control plane: each backend's permutation comes from MurmurHash3 x64-128 of its name
//! (`addr:port/PROTO`) seeded with the first four bytes of the base64 hash seed; offset =
//! h1 mod M, skip = h2 mod (M−1) + 1. Backends are sorted by name (IDs are node-local, names
//! are not) and take turns filling the table, a backend's weight changing how often its turn
//! comes. Datapath: the slot of a flow is `jhash_3words(saddr, dport << 16 | sport, proto,
//! seed) mod M` over the service CT tuple, with the destination address deliberately left out
//! so the same client flow picks the same backend through any VIP or node.
//!
//! Same seed + same backend set ⇒ the same table on every node ⇒ the same backend for a flow
//! whichever node receives it.

use crate::maps::lb::MAGLEV_TABLE_SIZE;

/// Cilium's default `bpf-lb-maglev-hash-seed`.
pub const DEFAULT_HASH_SEED: &str = "JLfvgnHc2kaSUFaI";

/// The seeds derived from the 12-byte (base64) hash seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeds {
    /// MurmurHash3 seed for the permutations.
    pub murmur: u32,
    /// `hash_init4_seed`: the datapath's jhash seed for IPv4 flows.
    pub jhash0: u32,
    /// `hash_init6_seed`.
    pub jhash1: u32,
}

impl Seeds {
    /// Decode a base64 seed that must hold exactly 12 bytes.
    ///
    /// # Errors
    /// A message naming what is wrong with the seed.
    pub fn parse(seed: &str) -> Result<Seeds, String> {
        let d = base64_decode(seed).ok_or_else(|| format!("`{seed}` is not valid base64"))?;
        if d.len() != 12 {
            return Err(format!("`{seed}` decodes to {} bytes, not 12", d.len()));
        }
        let w = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        Ok(Seeds {
            murmur: w(0),
            jhash0: w(4),
            jhash1: w(8),
        })
    }
}

impl Default for Seeds {
    fn default() -> Self {
        Seeds::parse(DEFAULT_HASH_SEED).expect("default seed is valid")
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// MurmurHash3 x64 128 (the reference algorithm, little-endian block reads).
pub fn murmur3_128(data: &[u8], seed: u32) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mut h1 = seed as u64;
    let mut h2 = seed as u64;
    let nblocks = data.len() / 16;
    for i in 0..nblocks {
        let b = &data[i * 16..i * 16 + 16];
        let mut k1 = u64::from_le_bytes(b[..8].try_into().expect("8"));
        let mut k2 = u64::from_le_bytes(b[8..].try_into().expect("8"));
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = &data[nblocks * 16..];
    let mut k1 = 0u64;
    let mut k2 = 0u64;
    for (i, &b) in tail.iter().enumerate() {
        if i < 8 {
            k1 ^= (b as u64) << (8 * i);
        } else {
            k2 ^= (b as u64) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
    }
    if !tail.is_empty() {
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
    }
    h1 ^= data.len() as u64;
    h2 ^= data.len() as u64;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// One backend as the table builder sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// `addr:port/PROTO`: what is hashed, and the sort key.
    pub name: String,
    /// The node-local backend ID the table stores.
    pub id: u32,
    /// Kubernetes-style weight (Cilium's default 100); 0 is not given a turn.
    pub weight: u32,
}

/// Build the lookup table of size `m` (a prime) for `backends`: `m` backend IDs. Empty when
/// there are no backends with a weight.
pub fn lookup_table(backends: &[MaglevBackend], m: usize, seeds: &Seeds) -> Vec<u32> {
    let mut bs: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if bs.is_empty() {
        return Vec::new();
    }
    bs.sort_by(|a, b| a.name.cmp(&b.name));
    let l = bs.len();
    let m64 = m as u64;
    // Permutation of backend i at turn j: (offset + j·skip) mod m, computed as we go.
    let params: Vec<(u64, u64)> = bs
        .iter()
        .map(|b| {
            let (h1, h2) = murmur3_128(b.name.as_bytes(), seeds.murmur);
            (h1 % m64, h2 % (m64 - 1) + 1)
        })
        .collect();
    let weight_sum: u64 = bs.iter().map(|b| b.weight as u64).sum();
    let weighted = weight_sum / l as u64 > 1;
    let mut weight_cntr: Vec<f64> = bs.iter().map(|b| b.weight as f64 / l as f64).collect();
    let mut next = vec![0u64; l];
    let mut entry: Vec<i64> = vec![-1; m];
    let perm = |i: usize, j: u64| -> usize { ((params[i].0 + j * params[i].1) % m64) as usize };
    for n in 0..m64 {
        let mut i = (n % l as u64) as usize;
        loop {
            if weighted {
                if (n + 1) * (bs[i].weight as u64) < weight_cntr[i] as u64 {
                    i = (i + 1) % l;
                    continue;
                }
                weight_cntr[i] += weight_sum as f64;
            }
            let mut c = perm(i, next[i]);
            while entry[c] >= 0 {
                next[i] += 1;
                c = perm(i, next[i]);
            }
            entry[c] = bs[i].id as i64;
            next[i] += 1;
            break;
        }
    }
    entry.into_iter().map(|e| e as u32).collect()
}

/// The Linux/Cilium `jhash_3words`.
#[inline]
pub fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    const JHASH_INITVAL: u32 = 0xdead_beef;
    let iv = initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    let (mut a, mut b, mut c) = (a.wrapping_add(iv), b.wrapping_add(iv), c.wrapping_add(iv));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// `hash_from_tuple_v4` for a packet `saddr:sport → *:dport`: the words are the tuple's
/// bytes as a little-endian host loads them (the service tuple's `dport` field holds the
/// packet's source port).
#[inline]
pub fn flow_hash_v4(saddr: [u8; 4], sport: u16, dport: u16, proto: u8, seed: u32) -> u32 {
    let a = u32::from_le_bytes(saddr);
    let tuple_dport = u16::from_le_bytes(sport.to_be_bytes()) as u32;
    let tuple_sport = u16::from_le_bytes(dport.to_be_bytes()) as u32;
    jhash_3words(a, tuple_dport << 16 | tuple_sport, proto as u32, seed)
}

/// The Maglev slot of a flow in a table of size `m`; `None` for an empty table (a service
/// whose backends all have weight 0 has none; the datapath then treats it as having no
/// backend instead of dividing by zero).
#[inline]
pub fn slot_v4(
    saddr: [u8; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    seeds: &Seeds,
    m: usize,
) -> Option<usize> {
    (flow_hash_v4(saddr, sport, dport, proto, seeds.jhash0) as usize).checked_rem(m)
}

/// Cilium's default table size.
pub const DEFAULT_M: usize = MAGLEV_TABLE_SIZE;

#[cfg(test)]
mod tests {
    use super::*;

    fn be(name: &str, id: u32, weight: u32) -> MaglevBackend {
        MaglevBackend {
            name: name.into(),
            id,
            weight,
        }
    }

    #[test]
    fn default_seed_decodes() {
        let s = Seeds::default();
        assert_ne!(s.murmur, 0);
        assert!(Seeds::parse("short").is_err());
        assert!(Seeds::parse("JLfvgnHc2kaSUFaIAAAA").is_err());
    }

    #[test]
    fn murmur3_reference_vectors() {
        // Published MurmurHash3_x64_128 results (seed 0).
        assert_eq!(murmur3_128(b"", 0), (0, 0));
        let (h1, h2) = murmur3_128(b"The quick brown fox jumps over the lazy dog", 0);
        assert_eq!((h1, h2), (0xe34b_bc7b_bc07_1b6c, 0x7a43_3ca9_c49a_9347));
    }

    /// Cilium's `TestWeightedBackendWithRemoval` numbers (pkg/maglev/maglev_test.go): with
    /// the default seed and M = 1021 each backend appears exactly this often. Matching them
    /// checks the hash, the permutation and the weighted turn order together.
    #[test]
    fn weighted_table_matches_cilium() {
        let seeds = Seeds::default();
        let backends = [
            be("one", 0, 2),
            be("three", 1, 13),
            be("two", 2, 111),
            be("tzwe", 3, 10),
        ];
        let before = lookup_table(&backends, 1021, &seeds);
        let count = |t: &[u32], id: u32| t.iter().filter(|&&x| x == id).count();
        assert_eq!(count(&before, 0), 16);
        assert_eq!(count(&before, 1), 98);
        assert_eq!(count(&before, 2), 832);
        assert_eq!(count(&before, 3), 75);
        // Removing "one" moves less than 1 % of the other backends' slots.
        let after = lookup_table(&backends[1..], 1021, &seeds);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 0 && a != b)
            .count();
        assert!(moved * 100 < 1021, "{moved} slots moved");
        assert!(!after.contains(&0));
    }

    #[test]
    fn table_is_order_independent_and_balanced() {
        let seeds = Seeds::default();
        let a = [be("10.0.1.5:80/TCP", 7, 100), be("10.0.2.5:80/TCP", 9, 100)];
        let b = [be("10.0.2.5:80/TCP", 9, 100), be("10.0.1.5:80/TCP", 7, 100)];
        let ta = lookup_table(&a, DEFAULT_M, &seeds);
        assert_eq!(ta, lookup_table(&b, DEFAULT_M, &seeds));
        let sevens = ta.iter().filter(|&&x| x == 7).count();
        assert!(sevens.abs_diff(DEFAULT_M / 2) < 2, "{sevens}");
        assert!(lookup_table(&[], DEFAULT_M, &seeds).is_empty());
    }

    #[test]
    fn flow_hash_ignores_destination_and_spreads() {
        let s = Seeds::default();
        let h = |sp| slot_v4([192, 168, 7, 2], sp, 80, 6, &s, DEFAULT_M).unwrap();
        assert_eq!(
            slot_v4([192, 168, 7, 2], 1, 80, 6, &s, 0),
            None,
            "empty table"
        );
        assert_eq!(h(40000), h(40000));
        let distinct: std::collections::HashSet<usize> = (40000..40100).map(h).collect();
        assert!(distinct.len() > 95);
    }
}
