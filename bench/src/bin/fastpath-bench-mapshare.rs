//! Conntrack and policy for a kernel program (issue #12): what each way of sharing the
//! datapath-written maps with an in-kernel tc fallback costs, measured on this machine.
//!
//! - **A, mirrored maps**: every change copied into real BPF maps with Cilium's layouts by
//!   `bpf(2)`. Timed: `BPF_MAP_UPDATE_ELEM` (new key, then the same key again = a change),
//!   `BPF_MAP_LOOKUP_ELEM`, `BPF_MAP_DELETE_ELEM` on a `BPF_MAP_TYPE_HASH` (preallocated) and
//!   a `BPF_MAP_TYPE_LRU_HASH` (what Cilium creates for `cilium_ct4_global`) with key
//!   `ipv4_ct_tuple` (14 B) and value `ct_entry` (56 B), `max_entries` 524288; the same
//!   inserts through `BPF_MAP_UPDATE_BATCH`; and a policy map (`BPF_MAP_TYPE_LPM_TRIE`, key
//!   `policy_key` 12 B, value `policy_entry` 12 B, 16384, no prealloc) written with a
//!   typical compiled policy.
//! - **B, one table in an mmap-able BPF array**: `control::shared_table::SharedTable` owns its
//!   memory (boxed slices), so it cannot be placed over a foreign mapping without changing
//!   `control/`. Timed instead: the real table on the heap (as today); a replica of its
//!   protocol (same slot layout — tags, keys, values, lifetimes as separate arrays — same
//!   hash, same probe/claim/publish orderings) over heap words and over the words of a
//!   `BPF_MAP_TYPE_ARRAY` created with `BPF_F_MMAPABLE` and mmapped (`MAP_SHARED`); and the raw
//!   cost of 64-bit atomic load / store / load+CAS on random words of both memories. A check
//!   reads entries the replica wrote in the mapping back through `BPF_MAP_LOOKUP_ELEM`: what
//!   a kernel program would see.
//!
//! Every variant runs once per round, all variants in each round (A B A B …); medians of the
//! rounds. Maps are created per round and closed (no pins).
//!
//! `fastpath-bench-mapshare [--n 200000] [--atomics 10000000] [--rounds 7] [--batch 256]
//! [--core 1]` (needs root for `bpf(2)`).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use control::maps::ct::{CT_TCP_MAX, CtEntry, CtTuple4, PROTO_TCP, TUPLE_F_OUT};
use control::maps::policy::{
    DIR_EGRESS, DIR_INGRESS, POLICY_MAP_MAX, PolicyEntry, PolicyKey, port_prefixes,
};
use control::shared_table::{SharedTable, WAYS};
use fastpath_bench::Rng;

#[derive(Parser, Debug)]
struct Args {
    /// Conntrack entries per sample (BPF maps and the shared tables).
    #[arg(long, default_value_t = 200_000)]
    n: usize,
    /// Random atomic operations per sample.
    #[arg(long, default_value_t = 10_000_000)]
    atomics: usize,
    /// Rounds (each runs every variant once).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Elements per BPF_MAP_UPDATE_BATCH call.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Core to pin to.
    #[arg(long, default_value_t = 1)]
    core: usize,
}

// ---------------------------------------------------------------------------------------
// bpf(2): the only unsafe code of this file.
// ---------------------------------------------------------------------------------------

mod bpf {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::AtomicU64;

    use control::maps::ct::{CtEntry, CtTuple4};
    use control::maps::policy::{PolicyEntry, PolicyKey};

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

    pub const MAP_HASH: u32 = 1;
    pub const MAP_ARRAY: u32 = 2;
    pub const MAP_LRU_HASH: u32 = 9;
    pub const MAP_LPM_TRIE: u32 = 11;

    pub const F_NO_PREALLOC: u32 = 1;
    pub const F_MMAPABLE: u32 = 1 << 10;

    pub const ANY: u64 = 0;
    pub const NOEXIST: u64 = 1;
    pub const EXIST: u64 = 2;

    /// Types whose bytes are handed to the kernel as map keys/values and read back from it.
    ///
    /// # Safety
    /// `repr(C)` (or a primitive) with no padding bytes, and every bit pattern is a valid
    /// value: the kernel reads `size_of::<Self>()` initialized bytes and may write any bytes.
    pub unsafe trait Plain: Copy {}
    // SAFETY: 14 u8 fields/arrays, repr(C), no padding, any bytes valid.
    unsafe impl Plain for CtTuple4 {}
    // SAFETY: repr(C) integers and byte arrays, 56 B with no padding (offsets asserted in
    // abi's layout test), any bytes valid.
    unsafe impl Plain for CtEntry {}
    // SAFETY: repr(C) u32, u32, u8, u8, [u8; 2]: 12 B, no padding, any bytes valid.
    unsafe impl Plain for PolicyKey {}
    // SAFETY: repr(C) [u8; 2], u8, u8, u32, u32: 12 B, no padding, any bytes valid.
    unsafe impl Plain for PolicyEntry {}
    // SAFETY: primitives.
    unsafe impl Plain for u32 {}
    // SAFETY: primitives.
    unsafe impl Plain for u64 {}

    /// `union bpf_attr` for BPF_MAP_CREATE, up to `map_name`.
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }

    /// `union bpf_attr` for the *_ELEM commands.
    #[repr(C)]
    #[derive(Default)]
    struct ElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    /// `union bpf_attr` for the *_BATCH commands.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    /// One bpf(2) call.
    ///
    /// # Safety
    /// `attr` must be the attribute struct of `cmd`, and every pointer in it must point at a
    /// live buffer of the size the kernel will read or write for that command and map.
    unsafe fn sys<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a live repr(C) prefix of `union bpf_attr`; the kernel copies
        // `size_of::<T>()` bytes of it (zero-filling the rest of its own copy), writes back
        // only inside it (batch `count`), and the caller vouches for the pointers inside.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                size_of::<T>() as libc::c_uint,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    /// A BPF map this process created; closed (and freed by the kernel once no mapping holds
    /// it) on drop. Never pinned.
    #[derive(Debug)]
    pub struct Map {
        fd: OwnedFd,
        key_size: usize,
        value_size: usize,
        max_entries: u32,
    }

    impl Map {
        pub fn create(
            map_type: u32,
            key_size: usize,
            value_size: usize,
            max_entries: u32,
            flags: u32,
            name: &str,
        ) -> io::Result<Map> {
            let mut a = CreateAttr {
                map_type,
                key_size: key_size as u32,
                value_size: value_size as u32,
                max_entries,
                map_flags: flags,
                ..Default::default()
            };
            let n = name.len().min(15);
            a.map_name[..n].copy_from_slice(&name.as_bytes()[..n]);
            // SAFETY: BPF_MAP_CREATE's attribute; it holds no pointers.
            let fd = unsafe { sys(BPF_MAP_CREATE, &mut a)? };
            // SAFETY: a new fd the kernel just returned; nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            Ok(Map {
                fd,
                key_size,
                value_size,
                max_entries,
            })
        }

        fn sizes<K, V>(&self) {
            assert_eq!(size_of::<K>(), self.key_size, "key size");
            assert_eq!(size_of::<V>(), self.value_size, "value size");
        }

        pub fn update<K: Plain, V: Plain>(&self, k: &K, v: &V, flags: u64) -> io::Result<()> {
            self.sizes::<K, V>();
            let mut a = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: k as *const K as u64,
                value: v as *const V as u64,
                flags,
                ..Default::default()
            };
            // SAFETY: key and value point at live `K`/`V` whose sizes are the map's (checked
            // above); the kernel only reads them.
            unsafe { sys(BPF_MAP_UPDATE_ELEM, &mut a) }.map(drop)
        }

        /// `Ok(false)` when the key is absent.
        pub fn lookup<K: Plain, V: Plain>(&self, k: &K, v: &mut V) -> io::Result<bool> {
            self.sizes::<K, V>();
            let mut a = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: k as *const K as u64,
                value: v as *mut V as u64,
                ..Default::default()
            };
            // SAFETY: key points at a live `K`, value at a live, exclusively borrowed `V`, both
            // of the map's sizes; the kernel writes `value_size` bytes, and any bytes are a
            // valid `V` (`Plain`).
            match unsafe { sys(BPF_MAP_LOOKUP_ELEM, &mut a) } {
                Ok(_) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
                Err(e) => Err(e),
            }
        }

        /// `Ok(false)` when the key was absent.
        pub fn delete<K: Plain>(&self, k: &K) -> io::Result<bool> {
            assert_eq!(size_of::<K>(), self.key_size, "key size");
            let mut a = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: k as *const K as u64,
                ..Default::default()
            };
            // SAFETY: key points at a live `K` of the map's key size; only read.
            match unsafe { sys(BPF_MAP_DELETE_ELEM, &mut a) } {
                Ok(_) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
                Err(e) => Err(e),
            }
        }

        /// Writes `keys[i] → vals[i]`; returns how many the kernel took.
        pub fn update_batch<K: Plain, V: Plain>(
            &self,
            keys: &[K],
            vals: &[V],
            elem_flags: u64,
        ) -> io::Result<u32> {
            self.sizes::<K, V>();
            assert_eq!(keys.len(), vals.len());
            let mut a = BatchAttr {
                keys: keys.as_ptr() as u64,
                values: vals.as_ptr() as u64,
                count: keys.len() as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                elem_flags,
                ..Default::default()
            };
            // SAFETY: keys/values point at `count` contiguous live elements of the map's key
            // and value sizes (slices of `Plain` types, no padding between elements); only
            // read.
            unsafe { sys(BPF_MAP_UPDATE_BATCH, &mut a) }?;
            Ok(a.count)
        }

        /// The map's memory mapped into this process (`BPF_F_MMAPABLE` arrays only), as
        /// 64-bit words: `max_entries × value_size` bytes.
        pub fn mmap_words(&self) -> io::Result<Mapping> {
            assert_eq!(self.value_size, 8, "one u64 per element");
            let len = self.max_entries as usize * self.value_size;
            // SAFETY: a new shared mapping of the map fd at offset 0, length within the map's
            // size (the kernel refuses more); no existing memory is affected.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.fd.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            Ok(Mapping {
                ptr: p.cast(),
                words: len / 8,
            })
        }
    }

    /// A `MAP_SHARED` mapping of a BPF array; unmapped on drop (which releases the kernel's
    /// reference on the map).
    #[derive(Debug)]
    pub struct Mapping {
        ptr: *mut AtomicU64,
        words: usize,
    }

    impl Mapping {
        pub fn words(&self) -> &[AtomicU64] {
            // SAFETY: `ptr` is page-aligned and `words × 8` bytes are mapped readable and
            // writable until drop, which `&self` outlives; AtomicU64 has u64's size and
            // alignment and any bits are a valid value. Other writers of these bytes (the
            // kernel's syscall copies, a BPF program) are outside Rust's model and are what
            // atomic accesses to shared memory are for.
            unsafe { std::slice::from_raw_parts(self.ptr, self.words) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `mmap_words`, unmapped once; no slice of it outlives
            // `self`.
            unsafe { libc::munmap(self.ptr.cast(), self.words * 8) };
        }
    }

    /// The cheapest syscall, for the floor under every bpf(2) number.
    pub fn getppid() -> i32 {
        // SAFETY: no arguments, no memory touched.
        unsafe { libc::getppid() }
    }
}

use bpf::Map;

// ---------------------------------------------------------------------------------------
// A replica of shared_table.rs's protocol over borrowed words.
// ---------------------------------------------------------------------------------------

const ST_EMPTY: u64 = 0;
const ST_BUSY: u64 = 1;
const ST_VALID: u64 = 2;
const ST_MASK: u64 = 3;
const GEN_MASK: u64 = 0x3fff_ffff;
const W: usize = 4;

fn make_tag(st: u64, generation: u64, fp: u16) -> u64 {
    st | (generation & GEN_MASK) << 2 | (fp as u64) << 32
}
fn expired(lifetime: u32, now: u32) -> bool {
    (now.wrapping_sub(lifetime) as i32) > 0
}

/// `SharedTable<W>`'s layout and protocol over `8 + …` words per slot carved from one
/// region: tags (1 word), keys (2), values (W), lifetime (1 word; the real table keeps it in
/// a u32). Only what conntrack's lookup and create use.
struct Replica<'a> {
    tags: &'a [AtomicU64],
    keys: &'a [AtomicU64],
    vals: &'a [AtomicU64],
    life: &'a [AtomicU64],
    bucket_mask: usize,
}

const REPLICA_WORDS_PER_SLOT: usize = 1 + 2 + W + 1;

impl<'a> Replica<'a> {
    fn over(words: &'a [AtomicU64], slots: usize) -> Replica<'a> {
        assert!(slots.is_power_of_two() && slots >= WAYS);
        assert!(words.len() >= slots * REPLICA_WORDS_PER_SLOT);
        let (tags, rest) = words.split_at(slots);
        let (keys, rest) = rest.split_at(2 * slots);
        let (vals, rest) = rest.split_at(W * slots);
        let life = &rest[..slots];
        Replica {
            tags,
            keys,
            vals,
            life,
            bucket_mask: slots / WAYS - 1,
        }
    }

    /// shared_table.rs's hash.
    fn hash(key: &[u64; 2]) -> u64 {
        let mut h = key[0].wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key[1];
        h ^= h >> 32;
        h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
        h ^= h >> 32;
        h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
        h ^ (h >> 29)
    }

    fn bucket_fp(&self, key: &[u64; 2]) -> (usize, u16) {
        let h = Self::hash(key);
        (((h as usize) & self.bucket_mask) * WAYS, (h >> 48) as u16)
    }

    #[inline]
    fn lookup(&self, key: &[u64; 2]) -> Option<(usize, u64)> {
        let (base, fp) = self.bucket_fp(key);
        for idx in base..base + WAYS {
            let t1 = self.tags[idx].load(Ordering::Acquire);
            if t1 & ST_MASK != ST_VALID || (t1 >> 32) as u16 != fp {
                continue;
            }
            let k0 = self.keys[2 * idx].load(Ordering::Relaxed);
            let k1 = self.keys[2 * idx + 1].load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let t2 = self.tags[idx].load(Ordering::Relaxed);
            if t1 == t2 && k0 == key[0] && k1 == key[1] {
                return Some((idx, t1));
            }
        }
        None
    }

    #[inline]
    fn read(&self, idx: usize, tag: u64) -> Option<([u64; W], u32)> {
        let v: [u64; W] = std::array::from_fn(|i| self.vals[W * idx + i].load(Ordering::Relaxed));
        let l = self.life[idx].load(Ordering::Relaxed) as u32;
        fence(Ordering::Acquire);
        (self.tags[idx].load(Ordering::Relaxed) == tag).then_some((v, l))
    }

    fn insert(&self, key: [u64; 2], vals: [u64; W], lifetime: u32, now: u32) -> Option<usize> {
        if let Some((idx, _)) = self.lookup(&key) {
            for (i, v) in vals.iter().enumerate() {
                self.vals[W * idx + i].store(*v, Ordering::Relaxed);
            }
            self.life[idx].store(lifetime as u64, Ordering::Relaxed);
            return Some(idx);
        }
        let (base, fp) = self.bucket_fp(&key);
        for _attempt in 0..4 {
            let mut pick: Option<(usize, u64, u8, u32)> = None;
            for idx in base..base + WAYS {
                let t = self.tags[idx].load(Ordering::Acquire);
                let (class, l) = match t & ST_MASK {
                    ST_EMPTY => (0u8, 0u32),
                    ST_VALID => {
                        let l = self.life[idx].load(Ordering::Relaxed) as u32;
                        (if expired(l, now) { 1 } else { 2 }, l)
                    }
                    _ => continue,
                };
                let better = match pick {
                    None => true,
                    Some((_, _, pc, pl)) => {
                        class < pc || (class == pc && class == 2 && (l.wrapping_sub(pl) as i32) < 0)
                    }
                };
                if better {
                    pick = Some((idx, t, class, l));
                }
                if class == 0 {
                    break;
                }
            }
            let Some((idx, t, _, _)) = pick else {
                continue;
            };
            let generation = (t >> 2) & GEN_MASK;
            let busy = make_tag(ST_BUSY, generation + 1, 0);
            if self.tags[idx]
                .compare_exchange(t, busy, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            fence(Ordering::Release);
            self.keys[2 * idx].store(key[0], Ordering::Relaxed);
            self.keys[2 * idx + 1].store(key[1], Ordering::Relaxed);
            for (i, v) in vals.iter().enumerate() {
                self.vals[W * idx + i].store(*v, Ordering::Relaxed);
            }
            self.life[idx].store(lifetime as u64, Ordering::Relaxed);
            self.tags[idx].store(make_tag(ST_VALID, generation + 1, fp), Ordering::Release);
            return Some(idx);
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// `n` distinct TCP connections pod → pod, as OUT conntrack keys.
fn ct_keys(n: usize) -> Vec<CtTuple4> {
    (0..n)
        .map(|i| {
            let src = [10, 200, (i >> 16) as u8, (i >> 8) as u8];
            let dst = [10, 201, (i >> 4) as u8, i as u8];
            let sport = 32768 + (i.wrapping_mul(7919) % 28000) as u16;
            CtTuple4::connection(src, dst, sport, 8080, PROTO_TCP, TUPLE_F_OUT)
        })
        .collect()
}

fn ct_value(i: usize) -> CtEntry {
    CtEntry {
        lifetime: 1000 + i as u32,
        flags: 0x10,
        tx_flags_seen: 0x12,
        rx_flags_seen: 0x12,
        src_sec_id: 48213,
        ..Default::default()
    }
}

fn ct_words(i: usize) -> [u64; W] {
    [i as u64 | 48213 << 32, 0, 0x1212_0010, 0]
}

/// A random permutation of `0..n` (lookup order).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut r = Rng(seed);
    for i in (1..n).rev() {
        v.swap(i, (r.next_u64() % (i as u64 + 1)) as usize);
    }
    v
}

/// The policy map of the endpoint in `fastpath-bench-policy`: 1000 allowed identities on
/// 8000-8100/TCP ingress (4 port prefixes each), a deny of 22/TCP from any identity, egress
/// allow-all.
fn policy_entries() -> Vec<(PolicyKey, PolicyEntry)> {
    let mut out = Vec::new();
    for id in 0..1000u32 {
        for (port, bits) in port_prefixes(8000, 8100) {
            let k = PolicyKey::new(10_000 + id, DIR_INGRESS, PROTO_TCP, port, bits);
            out.push((k, PolicyEntry::new(&k, false, 1)));
        }
    }
    let deny = PolicyKey::new(0, DIR_INGRESS, PROTO_TCP, 22, 16);
    out.push((deny, PolicyEntry::new(&deny, true, 2)));
    let all = PolicyKey::new(0, DIR_EGRESS, 0, 0, 0);
    out.push((all, PolicyEntry::new(&all, false, 0)));
    out
}

// ---------------------------------------------------------------------------------------
// Variants: each returns ns per operation for its rows.
// ---------------------------------------------------------------------------------------

fn ns(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// [update new, update existing, lookup, delete] on a CT-shaped kernel hash map.
fn bpf_ct_map(map_type: u32, keys: &[CtTuple4], order: &[usize]) -> Result<[f64; 4]> {
    let m = Map::create(
        map_type,
        size_of::<CtTuple4>(),
        size_of::<CtEntry>(),
        CT_TCP_MAX,
        0,
        "fp_bench_ct",
    )
    .context("BPF_MAP_CREATE (root needed)")?;
    let vals: Vec<CtEntry> = (0..keys.len()).map(ct_value).collect();
    let t = Instant::now();
    for (k, v) in keys.iter().zip(&vals) {
        m.update(k, v, bpf::NOEXIST)?;
    }
    let insert = ns(t, keys.len());
    let t = Instant::now();
    for (k, v) in keys.iter().zip(&vals) {
        m.update(k, v, bpf::EXIST)?;
    }
    let change = ns(t, keys.len());
    let mut got = CtEntry::default();
    let mut bad = 0usize;
    let t = Instant::now();
    for &i in order {
        if !m.lookup(&keys[i], &mut got)? || got.lifetime != vals[i].lifetime {
            bad += 1;
        }
    }
    let lookup = ns(t, order.len());
    ensure!(bad == 0, "{bad} kernel lookups missed or differed");
    let t = Instant::now();
    for &i in order {
        ensure!(m.delete(&keys[i])?, "delete missed");
    }
    let delete = ns(t, order.len());
    Ok([insert, change, lookup, delete])
}

/// ns per element of the inserts through BPF_MAP_UPDATE_BATCH.
fn bpf_ct_batch(keys: &[CtTuple4], batch: usize) -> Result<f64> {
    let m = Map::create(
        bpf::MAP_HASH,
        size_of::<CtTuple4>(),
        size_of::<CtEntry>(),
        CT_TCP_MAX,
        0,
        "fp_bench_ctb",
    )?;
    let vals: Vec<CtEntry> = (0..keys.len()).map(ct_value).collect();
    let t = Instant::now();
    for (ks, vs) in keys.chunks(batch).zip(vals.chunks(batch)) {
        let n = m.update_batch(ks, vs, bpf::ANY)?;
        ensure!(n as usize == ks.len(), "batch took {n} of {}", ks.len());
    }
    let r = ns(t, keys.len());
    let mut got = CtEntry::default();
    let last = keys.len() - 1;
    ensure!(m.lookup(&keys[last], &mut got)? && got.lifetime == vals[last].lifetime);
    Ok(r)
}

/// [update, lookup, delete] ns per entry of one endpoint's policy map.
fn bpf_policy(entries: &[(PolicyKey, PolicyEntry)]) -> Result<[f64; 3]> {
    let m = Map::create(
        bpf::MAP_LPM_TRIE,
        size_of::<PolicyKey>(),
        size_of::<PolicyEntry>(),
        POLICY_MAP_MAX as u32,
        bpf::F_NO_PREALLOC,
        "fp_bench_pol",
    )?;
    let t = Instant::now();
    for (k, v) in entries {
        m.update(k, v, bpf::ANY)?;
    }
    let update = ns(t, entries.len());
    let mut got = PolicyEntry::default();
    let t = Instant::now();
    for (k, v) in entries {
        ensure!(m.lookup(k, &mut got)? && got == *v, "policy lookup");
    }
    let lookup = ns(t, entries.len());
    let t = Instant::now();
    for (k, _) in entries {
        ensure!(m.delete(k)?, "policy delete");
    }
    let delete = ns(t, entries.len());
    Ok([update, lookup, delete])
}

/// [insert, lookup+read] on the project's table on the heap, and how many keys it still
/// holds (a full bucket evicts: at N = 200k in 65536 buckets of 8, a few hundred).
fn shared_table(keys: &[[u64; 2]], order: &[usize]) -> Result<([f64; 2], usize)> {
    let t: SharedTable<W> = SharedTable::new(CT_TCP_MAX as usize);
    let start = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        t.insert(*k, ct_words(i), 1000 + i as u32, 0);
    }
    let insert = ns(start, keys.len());
    let mut found = 0usize;
    let start = Instant::now();
    for &i in order {
        if let Some(s) = t.lookup(&keys[i])
            && let Some((v, _)) = t.read(s)
        {
            found += usize::from(v[0] as u32 == i as u32);
        }
    }
    let lookup = ns(start, order.len());
    let evicted = t.stats.evictions.load(Ordering::Relaxed) as usize;
    ensure!(
        found + evicted == keys.len(),
        "SharedTable found {found}, evicted {evicted}"
    );
    Ok(([insert, lookup], found))
}

/// [insert, lookup+read, first write per page] on the replica over `words`; it must hold
/// what the real table held (same hash, same eviction choice).
fn replica(
    words: &[AtomicU64],
    slots: usize,
    keys: &[[u64; 2]],
    order: &[usize],
    held: usize,
) -> Result<[f64; 3]> {
    // The steady state of a running table for both memories, timed: the first write to
    // each 4 KiB page of a fresh BPF array mapping costs far more than later ones (no page
    // fault is counted; the heap region was already written when it was zeroed). Then every
    // line read once, so both start in the same cache state (the heap was zeroed by this
    // thread, the array by the kernel at creation).
    let start = Instant::now();
    for w in words.iter().step_by(512) {
        w.store(w.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    let first_write = ns(start, words.len() / 512);
    let mut acc = 0u64;
    for w in words.iter().step_by(8) {
        acc = acc.wrapping_add(w.load(Ordering::Relaxed));
    }
    black_box(acc);
    let r = Replica::over(words, slots);
    let start = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        r.insert(*k, ct_words(i), 1000 + i as u32, 0);
    }
    let insert = ns(start, keys.len());
    let mut found = 0usize;
    let start = Instant::now();
    for &i in order {
        if let Some((idx, tag)) = r.lookup(&keys[i])
            && let Some((v, _)) = r.read(idx, tag)
        {
            found += usize::from(v[0] as u32 == i as u32);
        }
    }
    let lookup = ns(start, order.len());
    ensure!(found == held, "replica found {found}, SharedTable {held}");
    Ok([insert, lookup, first_write])
}

/// [load, store, load+CAS] ns per random word of `words` (independent accesses: the misses
/// overlap, as a worker's batch of 32 frames lets them).
fn raw_atomics(words: &[AtomicU64], ops: usize) -> [f64; 3] {
    let mask = words.len() - 1;
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let mut acc = 0u64;
    let t = Instant::now();
    for _ in 0..ops {
        acc = acc.wrapping_add(words[r.next_u64() as usize & mask].load(Ordering::Acquire));
    }
    let load = ns(t, ops);
    black_box(acc);
    let t = Instant::now();
    for _ in 0..ops {
        let x = r.next_u64();
        words[x as usize & mask].store(x, Ordering::Release);
    }
    let store = ns(t, ops);
    let t = Instant::now();
    for _ in 0..ops {
        let w = &words[r.next_u64() as usize & mask];
        let cur = w.load(Ordering::Acquire);
        let _ = black_box(w.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed));
    }
    let cas = ns(t, ops);
    [load, store, cas]
}

fn syscall_floor(ops: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..ops {
        black_box(bpf::getppid());
    }
    ns(t, ops)
}

// ---------------------------------------------------------------------------------------

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

fn git_head() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::process::Command::new("git")
        .args(["-C", dir, "rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "?".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

fn main() -> Result<()> {
    let a = Args::parse();
    ensure!(a.rounds >= 1 && a.n >= 1 && a.batch >= 1, "empty run");
    ensure!(
        a.n <= CT_TCP_MAX as usize / 2,
        "--n at most half of {CT_TCP_MAX}"
    );
    if !core_affinity::set_for_current(core_affinity::CoreId { id: a.core }) {
        bail!("could not pin to core {}", a.core);
    }
    println!(
        "commit {}  kernel {}",
        git_head(),
        read_trim("/proc/sys/kernel/osrelease")
    );
    println!("loadavg at start: {}", read_trim("/proc/loadavg"));
    println!(
        "THP: {}",
        read_trim("/sys/kernel/mm/transparent_hugepage/enabled")
    );

    let keys = ct_keys(a.n);
    let words: Vec<[u64; 2]> = keys.iter().map(CtTuple4::words).collect();
    let order = shuffled(a.n, 0x9e37_79b9_7f4a_7c15);
    let policy = policy_entries();
    let slots = CT_TCP_MAX as usize;
    let region_words = slots * REPLICA_WORDS_PER_SLOT;
    ensure!(region_words.is_power_of_two());

    // Check before timing: the replica's entries, written through the mapping, are what a
    // kernel reader of the array sees.
    {
        let m = Map::create(
            bpf::MAP_ARRAY,
            4,
            8,
            region_words as u32,
            bpf::F_MMAPABLE,
            "fp_bench_arr",
        )?;
        let map = m.mmap_words()?;
        let r = Replica::over(map.words(), slots);
        for (i, k) in words.iter().enumerate().take(1000) {
            let idx = r
                .insert(*k, ct_words(i), 1000 + i as u32, 0)
                .context("room")?;
            let mut tag = 0u64;
            let mut k0 = 0u64;
            ensure!(m.lookup(&(idx as u32), &mut tag)? && tag & ST_MASK == ST_VALID);
            ensure!(m.lookup(&((slots + 2 * idx) as u32), &mut k0)? && k0 == k[0]);
            let (found, _) = r.lookup(k).context("replica lookup")?;
            ensure!(found == idx);
        }
        println!(
            "check: 1000 replica entries in the mmapped array read back by BPF_MAP_LOOKUP_ELEM"
        );
    }

    type Row = (&'static str, Vec<f64>);
    let names: [&str; 23] = [
        "A  HASH update, new key (per new CT entry)",
        "A  HASH update, existing key (per change)",
        "A  HASH lookup",
        "A  HASH delete",
        "A  LRU_HASH update, new key",
        "A  LRU_HASH update, existing key",
        "A  LRU_HASH lookup",
        "A  LRU_HASH delete",
        "A  HASH UPDATE_BATCH, per element",
        "A  LPM_TRIE policy update, per entry",
        "A  LPM_TRIE policy lookup, per entry",
        "A  LPM_TRIE policy delete, per entry",
        "   syscall floor (getppid)",
        "B  SharedTable heap insert",
        "B  SharedTable heap lookup+read",
        "B  replica heap insert",
        "B  replica heap lookup+read",
        "B  replica mmap-BPF insert",
        "B  replica mmap-BPF lookup+read",
        "B  first write per 4 KiB page, heap",
        "B  first write per 4 KiB page, mmap-BPF",
        "B  raw heap load / store / load+CAS",
        "B  raw mmap-BPF load / store / load+CAS",
    ];
    let mut rows: Vec<Row> = names.iter().map(|n| (*n, Vec::new())).collect();
    let mut raw_heap: Vec<[f64; 3]> = Vec::new();
    let mut raw_mmap: Vec<[f64; 3]> = Vec::new();

    for round in 0..a.rounds {
        let h = bpf_ct_map(bpf::MAP_HASH, &keys, &order)?;
        let l = bpf_ct_map(bpf::MAP_LRU_HASH, &keys, &order)?;
        let b = bpf_ct_batch(&keys, a.batch)?;
        let p = bpf_policy(&policy)?;
        let f = syscall_floor(a.n);
        let (s, held) = shared_table(&words, &order)?;
        let heap: Box<[AtomicU64]> = (0..region_words).map(|_| AtomicU64::new(0)).collect();
        let rh = replica(&heap, slots, &words, &order, held)?;
        let m = Map::create(
            bpf::MAP_ARRAY,
            4,
            8,
            region_words as u32,
            bpf::F_MMAPABLE,
            "fp_bench_arr",
        )?;
        let map = m.mmap_words()?;
        let rm = replica(map.words(), slots, &words, &order, held)?;
        raw_heap.push(raw_atomics(&heap, a.atomics));
        raw_mmap.push(raw_atomics(map.words(), a.atomics));
        drop(map);
        drop(m);
        drop(heap);
        let vals = [
            h[0], h[1], h[2], h[3], l[0], l[1], l[2], l[3], b, p[0], p[1], p[2], f, s[0], s[1],
            rh[0], rh[1], rm[0], rm[1], rh[2], rm[2],
        ];
        for (row, v) in rows.iter_mut().zip(vals) {
            row.1.push(v);
        }
        eprintln!(
            "round {}: HASH new {:.0} ns, SharedTable insert {:.1} ns, replica heap/mmap {:.1}/{:.1} ns",
            round + 1,
            h[0],
            s[0],
            rh[0],
            rm[0]
        );
    }

    println!(
        "\n{} rounds, N = {} CT entries ({} B key, {} B value), {} policy entries, {} random atomics; ns per operation, median (min-max)",
        a.rounds,
        a.n,
        size_of::<CtTuple4>(),
        size_of::<CtEntry>(),
        policy.len(),
        a.atomics
    );
    for (name, v) in rows.iter().take(21) {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        println!("{name:<46} {:>8.1}  ({lo:.1}-{hi:.1})", median(v));
    }
    for (name, raw) in [(names[21], &raw_heap), (names[22], &raw_mmap)] {
        let col = |i: usize| median(&raw.iter().map(|r| r[i]).collect::<Vec<_>>());
        println!("{name:<46} {:>5.1} / {:.1} / {:.1}", col(0), col(1), col(2));
    }
    let pol_us = median(&rows[9].1) * policy.len() as f64 / 1000.0;
    println!(
        "\none policy map of {} entries written by BPF_MAP_UPDATE_ELEM: {pol_us:.0} µs",
        policy.len()
    );
    println!("loadavg at end: {}", read_trim("/proc/loadavg"));
    Ok(())
}
