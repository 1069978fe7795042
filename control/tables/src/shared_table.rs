//! A fixed-size hash table that every worker reads *and writes* without locks: the home of
//! the datapath-written maps (conntrack, session affinity), which — unlike the RCU tables —
//! change per connection, not per control-plane update.
//!
//! # Design
//! - Set-associative: a key hashes to one bucket of [`WAYS`] slots and lives in one of them;
//!   a lookup reads the bucket's tag words (one cache line), then the key of a slot whose
//!   16-bit fingerprint matches. No chains, no tombstones: deleting empties the slot.
//! - Layout: the tags of a bucket in one cache line; each slot's key, value words and
//!   lifetime together in its own cache-line-aligned slot (one line for an IPv4
//!   conntrack entry). A hit reads two lines, wherever the table is in memory.
//! - The hash is a parameter ([`BucketHash`]): conntrack's puts both directions of a
//!   connection in the same bucket, and [`SharedTable::lookup_pair`] finds the reply and the
//!   forward entry in one pass over it.
//! - Each slot's tag word is a seqlock: `state (2 bits) | generation (30) | fingerprint (16)`.
//!   A writer claims a slot by CAS to BUSY with the next generation, writes key and value
//!   words, and publishes VALID with a Release store. A reader loads the tag (Acquire), reads
//!   the key, fences, and re-reads the tag: the same VALID tag twice means the key it read is
//!   the one published. The generation makes a slot that was emptied and refilled meanwhile
//!   look different (no ABA).
//! - Value words are atomics that a holder of a slot handle updates in place (lifetime,
//!   TCP flags); one flow's fields may be updated by two workers at once (the request on one
//!   queue, the reply on another) and each update is a single atomic operation.
//! - A handle can go stale between its lookup and its update: the GC or an eviction empties
//!   the slot and another key takes it. In-place updates therefore only land on the entry
//!   they were meant for: the lifetime word carries the slot's generation next to the
//!   lifetime, and a *stamped* value word (one the owner wrote with
//!   [`SharedTable::insert_with`], the generation in its upper 32 bits) is changed only by a
//!   CAS that checks it ([`SharedTable::fetch_or_stamped`]). A stale update is refused, not
//!   written into the next key's entry.
//! - Capacity is fixed, like a BPF LRU hash's `max_entries`: a full bucket evicts the entry
//!   closest to expiry (an expired one first), so creation never fails for lack of room.
//! - Expired entries are deleted by [`SharedTable::sweep`], called from the control thread
//!   (the GC), never from a worker; a worker that meets an expired entry treats it as absent.
//!
//! Memory ordering and the lock order: there are no locks. Per slot, writes happen only
//! between a successful CAS to BUSY and the Release store of VALID; in-place value updates
//! touch only value words of a VALID slot.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use crate::shm::{Mapping, PinnedArray, Shareable, Store};

/// Slots per bucket: eight 8-byte tags fill one cache line.
pub const WAYS: usize = 8;

const ST_EMPTY: u64 = 0;
const ST_BUSY: u64 = 1;
const ST_VALID: u64 = 2;
const ST_MASK: u64 = 3;
const GEN_MASK: u64 = 0x3fff_ffff;
const FP_MASK: u64 = 0xffff << 32;

#[inline]
fn state(tag: u64) -> u64 {
    tag & ST_MASK
}
#[inline]
fn generation(tag: u64) -> u64 {
    (tag >> 2) & GEN_MASK
}
#[inline]
fn make_tag(st: u64, generation: u64, fp: u16) -> u64 {
    st | (generation & GEN_MASK) << 2 | (fp as u64) << 32
}

/// Has `lifetime` passed at `now` (seconds, wrapping)?
#[inline]
pub fn expired(lifetime: u32, now: u32) -> bool {
    (now.wrapping_sub(lifetime) as i32) > 0
}

/// How [`SharedTable::open_file`] found its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The table of the last run, with `entries` published entries; `torn` half-written
    /// slots (a writer that died mid-write) were emptied.
    Kept { entries: usize, torn: usize },
    /// A new, empty table: there was no file.
    New,
    /// A new, empty table, and why the file's content was not used.
    Fresh { why: String },
}

/// Bytes before the first bucket of a table file (one page: the slots stay page aligned).
pub const FILE_HEADER_BYTES: usize = 4096;
/// The header bytes compared: magic, version, widths, counts, boot ID, name.
const HEADER_USED: usize = 104;
const FILE_MAGIC: &[u8; 8] = b"FPSHTBL1";
const FILE_VERSION: u32 = 1;

/// This boot's ID (a table from another boot holds connections that are gone, with
/// lifetimes of another clock).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn file_header(name: &str, k: usize, w: usize, slot: usize, buckets: usize) -> Vec<u8> {
    let mut h = vec![0u8; FILE_HEADER_BYTES];
    h[0..8].copy_from_slice(FILE_MAGIC);
    h[8..12].copy_from_slice(&FILE_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(k as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(w as u32).to_le_bytes());
    h[20..24].copy_from_slice(&(slot as u32).to_le_bytes());
    h[24..32].copy_from_slice(&(buckets as u64).to_le_bytes());
    let b = boot_id();
    let b = &b.as_bytes()[..b.len().min(40)];
    h[32..32 + b.len()].copy_from_slice(b);
    let n = &name.as_bytes()[..name.len().min(32)];
    h[72..72 + n.len()].copy_from_slice(n);
    h
}

/// Why a kept header is not this table's, in words for the log.
fn header_difference(old: &[u8], new: &[u8]) -> String {
    let field = |r: std::ops::Range<usize>| old.get(r.clone()) != new.get(r);
    if old.len() < HEADER_USED || field(0..24) {
        "it is not a table of this layout (another fastpath version)".into()
    } else if field(32..72) {
        "it is from another boot".into()
    } else if field(72..104) {
        "it holds another table".into()
    } else {
        "its size changed (datapath.ct_tcp_max, ct_any_max or lb_map_max)".into()
    }
}

/// A handle on one published slot: its index and the tag it had when found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRef {
    idx: usize,
    tag: u64,
}

impl SlotRef {
    /// The slot's generation when found: it changes whenever the slot is emptied or given to
    /// another key, so a value tied to it cannot be mistaken for the next owner's.
    #[inline]
    pub fn generation(&self) -> u32 {
        generation(self.tag) as u32
    }
}

/// Counters of the table's rare events.
#[derive(Debug, Default)]
pub struct TableStats {
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
    /// A creation gave up because every slot of its bucket was being written concurrently.
    pub insert_failures: AtomicU64,
    pub swept: AtomicU64,
}

/// How a table spreads keys over buckets: a 64-bit hash of the key words. The bucket index
/// and the 16-bit fingerprint both come from it.
pub trait BucketHash<const K: usize> {
    fn hash(key: &[u64; K]) -> u64;
}

/// The default: every key word counts, in order.
#[derive(Debug)]
pub struct MixHash;

impl<const K: usize> BucketHash<K> for MixHash {
    #[inline]
    fn hash(key: &[u64; K]) -> u64 {
        mix(key)
    }
}

/// The words folded by multiply-xor (for two words: k0·φ ⊕ k1), then two rounds of
/// multiply-xorshift (a fast, well-mixing 64K→64 bit hash).
#[inline]
pub fn mix<const K: usize>(key: &[u64; K]) -> u64 {
    let mut h = key[0].wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for (i, w) in key.iter().enumerate().skip(1) {
        h ^= *w;
        if i + 1 < K {
            h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    h ^= h >> 32;
    h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^= h >> 32;
    h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 29)
}

/// The entry count, alone in its cache line (every insertion and removal of every worker
/// and of the tc datapath writes it).
#[repr(C, align(64))]
#[derive(Debug)]
struct Count(AtomicU64);

// SAFETY: one AtomicU64 (every bit pattern valid, mutated only atomically), align 64.
#[allow(unsafe_code)]
unsafe impl Shareable for Count {}

/// Byte offset of the count in kept memory: line 2 of the header (`FPT_COUNT_LINE` of
/// fp_table.h), past the bytes the header compares.
const COUNT_AT: usize = 128;
const _: () = assert!(COUNT_AT >= HEADER_USED && COUNT_AT.is_multiple_of(64));

/// Where a kept table lives ([`SharedTable::open_kept`]).
#[derive(Debug, Clone, Copy)]
pub enum Keep<'a> {
    /// A file (on tmpfs), mapped shared and locked while mapped.
    File(&'a Path),
    /// A `BPF_F_MMAPABLE` array of 64-byte lines pinned at `pin` (bpffs), which the tc
    /// datapath opens by its pin; `lock` is a file locked while it is mapped (one process
    /// at a time, as for a file).
    Pinned { pin: &'a Path, lock: &'a Path },
}

/// One bucket's tags: eight 8-byte seqlock words in one cache line, so a probe reads one
/// line to find the way.
#[repr(C, align(64))]
#[derive(Debug)]
struct Bucket([AtomicU64; WAYS]);

// SAFETY: eight AtomicU64s (every bit pattern valid, mutated only atomically), align 64.
#[allow(unsafe_code)]
unsafe impl Shareable for Bucket {}

/// One slot's key, value words and lifetime, together and cache-line aligned: a probe that
/// matched a fingerprint reads one more line (for the IPv4 conntrack entry, 16 + 40 + 8 =
/// 64 bytes: exactly one; the IPv6 key makes it two).
#[repr(C, align(64))]
#[derive(Debug)]
struct Slot<const W: usize, const K: usize> {
    key: [AtomicU64; K],
    val: [AtomicU64; W],
    /// `generation << 32 | lifetime`: see [`stamp`].
    life: AtomicU64,
}

/// A word stamped with a slot generation: `generation << 32 | low` (the generation is 30
/// bits). An update through a handle of another generation is refused.
#[inline]
pub fn stamp(generation: u32, low: u32) -> u64 {
    (generation as u64) << 32 | low as u64
}

#[inline]
fn stamp_of(w: u64) -> u32 {
    (w >> 32) as u32
}

// SAFETY: AtomicU64s only (every bit pattern valid, mutated only atomically), align 64.
#[allow(unsafe_code)]
unsafe impl<const W: usize, const K: usize> Shareable for Slot<W, K> {}

impl<const W: usize, const K: usize> Slot<W, K> {
    fn empty() -> Self {
        Slot {
            key: std::array::from_fn(|_| AtomicU64::new(0)),
            val: std::array::from_fn(|_| AtomicU64::new(0)),
            life: AtomicU64::new(0),
        }
    }
}

/// The table: `K` key words (2 by default: an IPv4 conntrack tuple or an affinity key; an
/// IPv6 tuple needs 5) and `W` value words per entry, plus a lifetime (seconds of
/// CLOCK_MONOTONIC). The key width is the address-family seam of the shared tables; `H`
/// chooses the bucket of a key (conntrack hashes both directions of a connection alike).
#[derive(Debug)]
pub struct SharedTable<const W: usize, const K: usize = 2, H = MixHash> {
    buckets: Store<Bucket>,
    slots: Store<Slot<W, K>>,
    /// The entry count: in the kept memory (line 2 of the header), where the tc datapath
    /// counts its insertions too.
    count: Store<Count>,
    bucket_mask: usize,
    pub stats: TableStats,
    hash: PhantomData<fn() -> H>,
}

impl<const W: usize, const K: usize, H: BucketHash<K>> SharedTable<W, K, H> {
    /// A table for at least `max_entries` entries (rounded up to a power-of-two number of
    /// buckets).
    pub fn new(max_entries: usize) -> Self {
        let buckets = max_entries.div_ceil(WAYS).next_power_of_two().max(1);
        let n = buckets * WAYS;
        SharedTable {
            buckets: Store::heap(
                (0..buckets)
                    .map(|_| Bucket(std::array::from_fn(|_| AtomicU64::new(0))))
                    .collect(),
            ),
            slots: Store::heap((0..n).map(|_| Slot::empty()).collect()),
            count: Store::heap(Box::new([Count(AtomicU64::new(0))])),
            bucket_mask: buckets - 1,
            stats: TableStats::default(),
            hash: PhantomData,
        }
    }

    /// A table for at least `max_entries` entries kept in the file `path` (on tmpfs), so a
    /// restarted process finds what the last one left ([`crate::shm`]): [`SharedTable::open_kept`]
    /// with [`Keep::File`].
    ///
    /// # Errors
    /// The file cannot be opened, locked (another process has it), sized or mapped.
    pub fn open_file(
        path: &Path,
        name: &str,
        max_entries: usize,
    ) -> std::io::Result<(Self, Opened)> {
        Self::open_kept(Keep::File(path), name, max_entries)
    }

    /// A table for at least `max_entries` entries kept outside the process (`keep`: a file
    /// on tmpfs, or a pinned BPF array the tc datapath shares), so a restarted process finds
    /// what the last one left. The memory is used again when its header matches — same
    /// layout version, key and value widths, slot and bucket counts, table `name`, and
    /// boot — and started afresh otherwise (the reason is in [`Opened::Fresh`]). A slot a
    /// writer left half-written (a crash) is emptied; the entries are otherwise as they
    /// were, for the caller to check ([`SharedTable::retain_mut`]) before any reader sees
    /// them.
    ///
    /// # Errors
    /// The file (or the lock file) cannot be opened, locked (another process has it),
    /// sized or mapped; the BPF array cannot be made, pinned or opened.
    pub fn open_kept(
        keep: Keep<'_>,
        name: &str,
        max_entries: usize,
    ) -> std::io::Result<(Self, Opened)> {
        let buckets = max_entries.div_ceil(WAYS).next_power_of_two().max(1);
        let n = buckets * WAYS;
        let head = file_header(name, K, W, size_of::<Slot<W, K>>(), buckets);
        let slots_at = FILE_HEADER_BYTES + buckets * size_of::<Bucket>();
        let total = slots_at + n * size_of::<Slot<W, K>>();
        let boot_known = !boot_id().is_empty();
        let why_not = |old: &[u8], size: u64| -> Option<String> {
            if size == 0 {
                Some(String::new())
            } else if !boot_known {
                Some("this boot's ID cannot be read (/proc/sys/kernel/random/boot_id)".into())
            } else if old.get(..HEADER_USED) != Some(&head[..HEADER_USED]) {
                Some(header_difference(old, &head))
            } else if size != total as u64 {
                Some(format!("its size is {size} bytes, not {total}"))
            } else {
                None
            }
        };
        let (map, why_not) = match keep {
            Keep::File(path) => {
                let (file, old, size) = crate::shm::open_locked(path, FILE_HEADER_BYTES)?;
                let why = why_not(&old, size);
                if why.is_some() {
                    // Afresh: zero the file (every slot empty), then the header.
                    use std::os::unix::fs::FileExt;
                    file.set_len(0)?;
                    file.set_len(total as u64)?;
                    file.write_all_at(&head, 0)?;
                }
                (Arc::new(Mapping::new(file, total)?), why)
            }
            Keep::Pinned { pin, lock } => {
                let (lock, _, _) = crate::shm::open_locked(lock, 0)?;
                let lines = u32::try_from(total / crate::shm::LINE)
                    .map_err(|_| std::io::Error::other("the table is too large for a BPF array"))?;
                let (fd, made) = match crate::shm::pinned_array(pin, name, lines)? {
                    PinnedArray::Kept(fd) => (fd, None),
                    PinnedArray::Made { fd, why } => (fd, Some(why.unwrap_or_default())),
                };
                let map = Arc::new(Mapping::of_map(fd, lock, total)?);
                let words: Store<AtomicU64> = Store::mapped(&map, 0, total / 8);
                let why = made.or_else(|| {
                    let old: Vec<u8> = words[..FILE_HEADER_BYTES / 8]
                        .iter()
                        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
                        .collect();
                    why_not(&old, total as u64)
                });
                if let Some(w) = &why {
                    if !w.is_empty() {
                        // A kept array of this shape holding something else: zero it.
                        words.iter().for_each(|w| w.store(0, Ordering::Relaxed));
                    }
                    for (w, b) in words.iter().zip(head.chunks(8)) {
                        w.store(
                            u64::from_le_bytes(b.try_into().expect("8")),
                            Ordering::Relaxed,
                        );
                    }
                }
                (map, why)
            }
        };
        let t = SharedTable {
            buckets: Store::mapped(&map, FILE_HEADER_BYTES, buckets),
            slots: Store::mapped(&map, slots_at, n),
            count: Store::mapped(&map, COUNT_AT, 1),
            bucket_mask: buckets - 1,
            stats: TableStats::default(),
            hash: PhantomData,
        };
        match why_not {
            Some(why) if why.is_empty() => return Ok((t, Opened::New)),
            Some(why) => return Ok((t, Opened::Fresh { why })),
            None => {}
        }
        // What a crashed writer left: a slot claimed (BUSY) but never published is emptied.
        let (mut entries, mut torn) = (0, 0);
        for idx in 0..n {
            let tag = t.tag(idx);
            let v = tag.load(Ordering::Relaxed);
            match state(v) {
                ST_VALID => entries += 1,
                ST_EMPTY => {}
                _ => {
                    tag.store(make_tag(ST_EMPTY, generation(v) + 1, 0), Ordering::Relaxed);
                    torn += 1;
                }
            }
        }
        t.set_len(entries);
        Ok((t, Opened::Kept { entries, torn }))
    }

    /// Is the table kept in a file (it outlives the process)?
    pub fn is_persistent(&self) -> bool {
        self.slots.is_mapped()
    }

    /// Before any reader has the table (a restart): visit every published entry with its
    /// key, value words and lifetime, which `f` may change in place; entries for which it
    /// returns `false` are deleted. Returns (kept, deleted).
    pub fn retain_mut(
        &mut self,
        mut f: impl FnMut(&[u64; K], &mut [u64; W], &mut u32) -> bool,
    ) -> (usize, usize) {
        let (mut kept, mut gone) = (0, 0);
        for idx in 0..self.slots.len() {
            let t = self.tag(idx).load(Ordering::Relaxed);
            if state(t) != ST_VALID {
                continue;
            }
            let s = &self.slots[idx];
            let key: [u64; K] = std::array::from_fn(|i| s.key[i].load(Ordering::Relaxed));
            let mut vals: [u64; W] = std::array::from_fn(|i| s.val[i].load(Ordering::Relaxed));
            let life_word = s.life.load(Ordering::Relaxed);
            let mut life = life_word as u32;
            if f(&key, &mut vals, &mut life) {
                for (i, v) in vals.iter().enumerate() {
                    s.val[i].store(*v, Ordering::Relaxed);
                }
                s.life
                    .store(stamp(stamp_of(life_word), life), Ordering::Relaxed);
                kept += 1;
            } else {
                self.tag(idx)
                    .store(make_tag(ST_EMPTY, generation(t) + 1, 0), Ordering::Relaxed);
                gone += 1;
            }
        }
        self.set_len(kept);
        (kept, gone)
    }

    /// Number of slots (the effective `max_entries`).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of memory the table holds (tags, slots).
    pub fn memory_bytes(&self) -> usize {
        size_of_val(&*self.buckets) + size_of_val(&*self.slots)
    }

    /// Entries currently published (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.count[0].0.load(Ordering::Relaxed) as usize
    }

    fn set_len(&self, n: usize) {
        self.count[0].0.store(n as u64, Ordering::Relaxed);
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn tag(&self, idx: usize) -> &AtomicU64 {
        &self.buckets[idx / WAYS].0[idx % WAYS]
    }

    #[inline]
    fn bucket_fp(&self, key: &[u64; K]) -> (usize, u16) {
        let h = H::hash(key);
        (((h as usize) & self.bucket_mask) * WAYS, (h >> 48) as u16)
    }

    /// A bucket's tags and slots, and the tag bits a valid entry with fingerprint `fp` has.
    #[inline]
    fn bucket(&self, base: usize, fp: u16) -> (&[AtomicU64; WAYS], &[Slot<W, K>], u64) {
        let want = ST_VALID | (fp as u64) << 32;
        (
            &self.buckets[base / WAYS].0,
            &self.slots[base..base + WAYS],
            want,
        )
    }

    /// Slot `s`'s key if its tag is still `t1` afterwards (the seqlock read).
    #[inline]
    fn key_if(tag: &AtomicU64, s: &Slot<W, K>, t1: u64) -> Option<[u64; K]> {
        let k: [u64; K] = std::array::from_fn(|i| s.key[i].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        (tag.load(Ordering::Relaxed) == t1).then_some(k)
    }

    /// Find `a` and `b`, two keys that `H` puts in the same bucket (the two directions of a
    /// connection), in one pass over that bucket.
    #[inline]
    pub fn lookup_pair(&self, a: &[u64; K], b: &[u64; K]) -> (Option<SlotRef>, Option<SlotRef>) {
        let (base, fp) = self.bucket_fp(a);
        debug_assert_eq!(
            self.bucket_fp(b),
            (base, fp),
            "the pair must share a bucket"
        );
        let (tags, slots, want) = self.bucket(base, fp);
        let (mut ra, mut rb) = (None, None);
        for (w, (tag, slot)) in tags.iter().zip(slots).enumerate() {
            let t1 = tag.load(Ordering::Acquire);
            if t1 & (ST_MASK | FP_MASK) != want {
                continue;
            }
            let Some(k) = Self::key_if(tag, slot, t1) else {
                continue;
            };
            let r = Some(SlotRef {
                idx: base + w,
                tag: t1,
            });
            if k == *a {
                ra = r;
            } else if k == *b {
                rb = r;
            }
            if ra.is_some() && rb.is_some() {
                break;
            }
        }
        (ra, rb)
    }

    /// Find `key`; `None` if absent.
    #[inline]
    pub fn lookup(&self, key: &[u64; K]) -> Option<SlotRef> {
        let (base, fp) = self.bucket_fp(key);
        let (tags, slots, want) = self.bucket(base, fp);
        for (w, (tag, slot)) in tags.iter().zip(slots).enumerate() {
            let t1 = tag.load(Ordering::Acquire);
            if t1 & (ST_MASK | FP_MASK) == want && Self::key_if(tag, slot, t1) == Some(*key) {
                return Some(SlotRef {
                    idx: base + w,
                    tag: t1,
                });
            }
        }
        None
    }

    /// The value words and lifetime of a found slot, or `None` if the slot changed hands
    /// since it was found.
    #[inline]
    pub fn read(&self, s: SlotRef) -> Option<([u64; W], u32)> {
        let v: [u64; W] = std::array::from_fn(|i| self.slots[s.idx].val[i].load(Ordering::Relaxed));
        let l = self.slots[s.idx].life.load(Ordering::Relaxed) as u32;
        fence(Ordering::Acquire);
        (self.tag(s.idx).load(Ordering::Relaxed) == s.tag).then_some((v, l))
    }

    /// Value word `i` of a slot, for in-place atomic updates of a word whose every value is
    /// safe for any owner to see (the caller ties it to the handle otherwise, as conntrack's
    /// cached policy verdict is XOR-tied to [`SlotRef::generation`]).
    #[inline]
    pub fn word(&self, s: SlotRef, i: usize) -> &AtomicU64 {
        &self.slots[s.idx].val[i]
    }

    /// OR `bits` (below bit 32) into value word `i`, a word stamped with the slot's generation
    /// at insertion ([`SharedTable::insert_with`]), if the slot still belongs to the entry `s`
    /// found. Returns the word after the update, or `None` if the slot changed hands (then
    /// nothing is written). A store only when a bit is new.
    #[inline]
    pub fn fetch_or_stamped(&self, s: SlotRef, i: usize, bits: u32) -> Option<u64> {
        let w = &self.slots[s.idx].val[i];
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            if stamp_of(cur) != s.generation() {
                return None;
            }
            let next = cur | bits as u64;
            if next == cur {
                return Some(cur);
            }
            match w.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(next),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Push a slot's lifetime to `lifetime` if the slot still belongs to the entry `s` found
    /// (a stale handle changes nothing and gets `false`). A write only when it changes, so a
    /// flow's cache line is written about once a second, not per packet.
    #[inline]
    pub fn set_lifetime(&self, s: SlotRef, lifetime: u32) -> bool {
        let l = &self.slots[s.idx].life;
        let want = stamp(s.generation(), lifetime);
        let mut cur = l.load(Ordering::Relaxed);
        loop {
            if stamp_of(cur) != s.generation() {
                return false;
            }
            if cur == want {
                return true;
            }
            match l.compare_exchange_weak(cur, want, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Create `key` (or replace its entry if present). Evicts the entry of the bucket closest
    /// to expiry when the bucket is full. `None` only when every slot of the bucket is being
    /// written by other threads at this instant.
    pub fn insert(
        &self,
        key: [u64; K],
        vals: [u64; W],
        lifetime: u32,
        now: u32,
    ) -> Option<SlotRef> {
        self.insert_with(key, |_| vals, lifetime, now)
    }

    /// [`SharedTable::insert`], with the value words made from the generation the entry gets
    /// (what [`SlotRef::generation`] of the returned handle says), so a word can be stamped
    /// with it for [`SharedTable::fetch_or_stamped`].
    pub fn insert_with(
        &self,
        key: [u64; K],
        vals: impl Fn(u32) -> [u64; W],
        lifetime: u32,
        now: u32,
    ) -> Option<SlotRef> {
        let (base, fp) = self.bucket_fp(&key);
        for attempt in 0..=4 {
            let Some(s) = self.lookup(&key) else {
                break;
            };
            if attempt == 4 {
                // Still there and still contended: fail as a full bucket does, rather
                // than write a second entry for the key.
                self.stats.insert_failures.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            // Replace under the seqlock, as a new entry is written: the slot may have been
            // emptied and given to another key since the lookup, and writing its words
            // unclaimed would give that key our values. A lost race looks again.
            let busy = make_tag(ST_BUSY, generation(s.tag) + 1, 0);
            if self
                .tag(s.idx)
                .compare_exchange(s.tag, busy, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            fence(Ordering::Release);
            let g = (generation(s.tag) + 1) & GEN_MASK;
            for (i, v) in vals(g as u32).iter().enumerate() {
                self.slots[s.idx].val[i].store(*v, Ordering::Relaxed);
            }
            self.slots[s.idx]
                .life
                .store(stamp(g as u32, lifetime), Ordering::Relaxed);
            let tag = make_tag(ST_VALID, g, fp);
            self.tag(s.idx).store(tag, Ordering::Release);
            self.stats.inserts.fetch_add(1, Ordering::Relaxed);
            return Some(SlotRef { idx: s.idx, tag });
        }
        for _attempt in 0..4 {
            // Prefer an empty slot, then an expired one, then the one expiring first.
            let mut pick: Option<(usize, u64, u8, u32)> = None; // idx, tag, class, lifetime
            for idx in base..base + WAYS {
                let t = self.tag(idx).load(Ordering::Acquire);
                let (class, l) = match state(t) {
                    ST_EMPTY => (0u8, 0u32),
                    ST_VALID => {
                        let l = self.slots[idx].life.load(Ordering::Relaxed) as u32;
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
            let Some((idx, t, class, _)) = pick else {
                continue;
            };
            let busy = make_tag(ST_BUSY, generation(t) + 1, 0);
            if self
                .tag(idx)
                .compare_exchange(t, busy, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // Readers that saw the old tag must not pair it with the new words.
            fence(Ordering::Release);
            for (i, w) in key.iter().enumerate() {
                self.slots[idx].key[i].store(*w, Ordering::Relaxed);
            }
            let g = (generation(t) + 1) & GEN_MASK;
            for (i, v) in vals(g as u32).iter().enumerate() {
                self.slots[idx].val[i].store(*v, Ordering::Relaxed);
            }
            self.slots[idx]
                .life
                .store(stamp(g as u32, lifetime), Ordering::Relaxed);
            let tag = make_tag(ST_VALID, g, fp);
            self.tag(idx).store(tag, Ordering::Release);
            self.stats.inserts.fetch_add(1, Ordering::Relaxed);
            if class == 0 {
                self.count[0].0.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats
                    .evictions
                    .fetch_add(u64::from(class == 2), Ordering::Relaxed);
            }
            return Some(SlotRef { idx, tag });
        }
        self.stats.insert_failures.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Delete a found slot (if it still holds what was found).
    pub fn remove(&self, s: SlotRef) -> bool {
        let empty = make_tag(ST_EMPTY, generation(s.tag) + 1, 0);
        let ok = self
            .tag(s.idx)
            .compare_exchange(s.tag, empty, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if ok {
            self.count[0].0.fetch_sub(1, Ordering::Relaxed);
        }
        ok
    }

    /// Delete `key` if present.
    pub fn remove_key(&self, key: &[u64; K]) -> bool {
        self.lookup(key).is_some_and(|s| self.remove(s))
    }

    /// GC: delete every entry whose lifetime has passed at `now`; returns how many. Runs on
    /// the control thread; workers keep going while it does.
    pub fn sweep(&self, now: u32) -> usize {
        let mut n = 0;
        for idx in 0..self.slots.len() {
            let t = self.tag(idx).load(Ordering::Acquire);
            if state(t) != ST_VALID
                || !expired(self.slots[idx].life.load(Ordering::Relaxed) as u32, now)
            {
                continue;
            }
            if self.remove(SlotRef { idx, tag: t }) {
                n += 1;
            }
        }
        self.stats.swept.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Visit a consistent snapshot of every published entry: `(key, values, lifetime)`.
    pub fn for_each(&self, mut f: impl FnMut([u64; K], [u64; W], u32)) {
        for idx in 0..self.slots.len() {
            let t = self.tag(idx).load(Ordering::Acquire);
            if state(t) != ST_VALID {
                continue;
            }
            let k: [u64; K] =
                std::array::from_fn(|i| self.slots[idx].key[i].load(Ordering::Relaxed));
            if let Some((v, l)) = self.read(SlotRef { idx, tag: t }) {
                f(k, v, l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("fp-shtbl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    /// What one process left in the file, the next finds: keys, values, lifetimes; a table
    /// of another size or name starts empty and says why; a second opener is refused.
    #[test]
    fn a_file_table_outlives_its_process_and_refuses_what_is_not_its_own() {
        let p = tmp("keep");
        {
            let (t, o): (SharedTable<2>, _) = SharedTable::open_file(&p, "t", 64).unwrap();
            assert_eq!(o, Opened::New);
            assert!(t.is_persistent());
            for i in 0..20u64 {
                t.insert([i, i + 1], [i * 10, i * 100], 1000 + i as u32, 0)
                    .unwrap();
            }
            let again = SharedTable::<2>::open_file(&p, "t", 64);
            assert!(again.is_err(), "the file is locked while mapped");
        }
        let (t, o): (SharedTable<2>, _) = SharedTable::open_file(&p, "t", 64).unwrap();
        assert_eq!(
            o,
            Opened::Kept {
                entries: 20,
                torn: 0
            }
        );
        assert_eq!(t.len(), 20);
        for i in 0..20u64 {
            let s = t.lookup(&[i, i + 1]).expect("kept");
            assert_eq!(t.read(s), Some(([i * 10, i * 100], 1000 + i as u32)));
        }
        drop(t);
        let (t, o): (SharedTable<2>, _) = SharedTable::open_file(&p, "t", 1024).unwrap();
        assert!(
            matches!(&o, Opened::Fresh { why } if why.contains("size changed")),
            "{o:?}"
        );
        assert!(t.is_empty());
        drop(t);
        let (_, o): (SharedTable<2>, _) = SharedTable::open_file(&p, "other", 1024).unwrap();
        assert!(
            matches!(&o, Opened::Fresh { why } if why.contains("another table")),
            "{o:?}"
        );
        let (_, o): (SharedTable<3>, _) = SharedTable::open_file(&p, "other", 1024).unwrap();
        assert!(
            matches!(&o, Opened::Fresh { why } if why.contains("layout")),
            "{o:?}"
        );
        let _ = std::fs::remove_file(&p);
    }

    /// The same for a pinned BPF array (bpffs, as root): what one opener left the next
    /// finds; a size the pinned map cannot hold gets a new map (the reason says what the
    /// old one was); a name mismatch zeroes it; the lock refuses a second opener.
    #[test]
    fn a_pinned_table_outlives_its_process_and_refuses_what_is_not_its_own() {
        let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/fp-shtbl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bpffs at /sys/fs/bpf (run as root)");
        let (pin, lock) = (dir.join("t"), tmp("pinned.lock"));
        let keep = Keep::Pinned {
            pin: &pin,
            lock: &lock,
        };
        {
            let (t, o): (SharedTable<2>, _) = SharedTable::open_kept(keep, "t", 64).unwrap();
            assert_eq!(o, Opened::New);
            for i in 0..20u64 {
                t.insert([i, i + 1], [i * 10, i * 100], 1000 + i as u32, 0)
                    .unwrap();
            }
            assert!(
                SharedTable::<2>::open_kept(keep, "t", 64).is_err(),
                "locked"
            );
        }
        assert!(pin.exists(), "the pin outlives the table");
        let (t, o): (SharedTable<2>, _) = SharedTable::open_kept(keep, "t", 64).unwrap();
        assert_eq!(
            o,
            Opened::Kept {
                entries: 20,
                torn: 0
            }
        );
        assert_eq!(t.len(), 20);
        for i in 0..20u64 {
            let s = t.lookup(&[i, i + 1]).expect("kept");
            assert_eq!(t.read(s), Some(([i * 10, i * 100], 1000 + i as u32)));
        }
        drop(t);
        let (t, o): (SharedTable<2>, _) = SharedTable::open_kept(keep, "t", 1024).unwrap();
        assert!(
            matches!(&o, Opened::Fresh { why } if why.contains("entries of 64 bytes")),
            "{o:?}"
        );
        assert!(t.is_empty() && t.lookup(&[1, 2]).is_none());
        t.insert([7, 8], [1, 2], 5, 0).unwrap();
        drop(t);
        let (t, o): (SharedTable<2>, _) = SharedTable::open_kept(keep, "other", 1024).unwrap();
        assert!(
            matches!(&o, Opened::Fresh { why } if why.contains("another table")),
            "{o:?}"
        );
        assert!(t.lookup(&[7, 8]).is_none(), "zeroed, not reused");
        drop(t);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&lock);
    }

    /// A slot a crashed writer claimed but never published is emptied on reopen, and the
    /// rest is as it was.
    #[test]
    fn a_half_written_slot_of_a_crash_is_emptied() {
        use std::os::unix::fs::FileExt;
        let p = tmp("torn");
        {
            let (t, _): (SharedTable<1>, _) = SharedTable::open_file(&p, "t", 8).unwrap();
            t.insert([1, 1], [7], 50, 0).unwrap();
            t.insert([2, 2], [8], 50, 0).unwrap();
        }
        // Mark way 7 of the one bucket BUSY, as a writer dying after its CAS leaves it.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(
            &make_tag(ST_BUSY, 5, 0).to_le_bytes(),
            (FILE_HEADER_BYTES + 7 * 8) as u64,
        )
        .unwrap();
        drop(f);
        let (t, o): (SharedTable<1>, _) = SharedTable::open_file(&p, "t", 8).unwrap();
        assert_eq!(
            o,
            Opened::Kept {
                entries: 2,
                torn: 1
            }
        );
        assert!(t.lookup(&[1, 1]).is_some() && t.lookup(&[2, 2]).is_some());
        // The emptied slot takes new entries again.
        for i in 3..9 {
            assert!(t.insert([i, i], [i], 50, 0).is_some(), "slot for {i}");
        }
        assert_eq!(t.len(), 8);
        drop(t);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn retain_mut_rewrites_and_deletes_before_readers_come() {
        let mut t: SharedTable<1> = SharedTable::new(64);
        for i in 0..10u64 {
            t.insert([i, 0], [i], 100, 0).unwrap();
        }
        let (kept, gone) = t.retain_mut(|k, v, life| {
            v[0] += 1000;
            *life = 200;
            k[0] % 2 == 0
        });
        assert_eq!((kept, gone, t.len()), (5, 5, 5));
        assert_eq!(t.read(t.lookup(&[4, 0]).unwrap()), Some(([1004], 200)));
        assert!(t.lookup(&[3, 0]).is_none());
        // A stamped lifetime update still finds its entry.
        let s = t.lookup(&[4, 0]).unwrap();
        assert!(t.set_lifetime(s, 300));
    }

    #[test]
    fn insert_lookup_remove() {
        let t: SharedTable<2> = SharedTable::new(64);
        assert_eq!(t.capacity(), 64);
        let s = t.insert([1, 2], [10, 20], 100, 0).expect("room");
        assert_eq!(t.lookup(&[1, 2]), Some(s));
        assert_eq!(t.read(s), Some(([10, 20], 100)));
        assert_eq!(t.lookup(&[2, 1]), None);
        // Replace keeps one entry.
        t.insert([1, 2], [11, 21], 200, 0).expect("room");
        assert_eq!(t.len(), 1);
        assert_eq!(t.read(t.lookup(&[1, 2]).unwrap()).unwrap().0, [11, 21]);
        assert!(t.remove_key(&[1, 2]));
        assert_eq!(t.lookup(&[1, 2]), None);
        // A stale handle reads nothing.
        assert_eq!(t.read(s), None);
        assert!(t.is_empty());
    }

    #[test]
    fn full_bucket_evicts_the_soonest_to_expire() {
        let t: SharedTable<1> = SharedTable::new(WAYS); // one bucket
        for i in 0..WAYS as u64 {
            t.insert([i, 0], [i], 1000 + i as u32, 0).unwrap();
        }
        t.insert([99, 0], [99], 5000, 0).unwrap();
        assert_eq!(t.lookup(&[0, 0]), None, "lifetime 1000 was the soonest");
        assert!(t.lookup(&[1, 0]).is_some());
        assert!(t.lookup(&[99, 0]).is_some());
        assert_eq!(t.stats.evictions.load(Ordering::Relaxed), 1);
        assert_eq!(t.len(), WAYS);
    }

    #[test]
    fn sweep_deletes_only_expired() {
        let t: SharedTable<1> = SharedTable::new(1024);
        for i in 0..100u64 {
            t.insert([i, 7], [i], if i % 2 == 0 { 50 } else { 500 }, 0)
                .unwrap();
        }
        assert!(
            t.lookup(&[0, 7]).is_some(),
            "expired entries stay until swept"
        );
        assert_eq!(t.sweep(100), 50);
        assert_eq!(t.len(), 50);
        let mut seen = 0;
        t.for_each(|k, v, l| {
            assert_eq!(k[0], v[0]);
            assert_eq!(l, 500);
            seen += 1;
        });
        assert_eq!(seen, 50);
    }

    #[test]
    fn concurrent_writers_and_readers_never_see_torn_entries() {
        let t: Arc<SharedTable<2>> = Arc::new(SharedTable::new(4096));
        let mut hs = Vec::new();
        for w in 0..4u64 {
            let t = t.clone();
            hs.push(std::thread::spawn(move || {
                for round in 0..20_000u64 {
                    let k = [round % 3000, w];
                    // Every entry's values are derived from its key: a torn read would show.
                    t.insert(k, [k[0] * 3, k[1] * 5], round as u32, 0);
                    if let Some(s) = t.lookup(&[(round * 7) % 3000, (w + 1) % 4])
                        && let Some((v, _)) = t.read(s)
                    {
                        assert_eq!(v, [((round * 7) % 3000) * 3, ((w + 1) % 4) * 5]);
                    }
                    if round % 5 == 0 {
                        t.remove_key(&[(round / 2) % 3000, w]);
                    }
                }
            }));
        }
        let sweeper = {
            let t = t.clone();
            std::thread::spawn(move || {
                for now in 0..200u32 {
                    t.sweep(now * 100);
                }
            })
        };
        for h in hs {
            h.join().unwrap();
        }
        sweeper.join().unwrap();
        let mut n = 0;
        t.for_each(|k, v, _| {
            assert_eq!(v, [k[0] * 3, k[1] * 5]);
            n += 1;
        });
        assert_eq!(n, t.len());
    }

    /// One pass over a bucket finds both keys of a pair the hash puts together, either
    /// alone, or neither; a slot is one cache line for the IPv4 conntrack entry.
    #[test]
    fn lookup_pair_finds_either_direction_in_one_bucket() {
        /// Buckets by the first word only: [x, 1] and [x, 2] share one.
        #[derive(Debug)]
        struct First;
        impl BucketHash<2> for First {
            fn hash(k: &[u64; 2]) -> u64 {
                mix(&[k[0], 0])
            }
        }
        let t: SharedTable<5, 2, First> = SharedTable::new(1024);
        let (a, b) = ([7, 1], [7, 2]);
        assert_eq!(t.lookup_pair(&a, &b), (None, None));
        let sa = t.insert(a, [1; 5], 100, 0).unwrap();
        assert_eq!(t.lookup_pair(&a, &b), (Some(sa), None));
        assert_eq!(t.lookup_pair(&b, &a), (None, Some(sa)));
        let sb = t.insert(b, [2; 5], 100, 0).unwrap();
        assert_eq!(t.lookup_pair(&a, &b), (Some(sa), Some(sb)));
        assert!(t.remove(sa));
        assert_eq!(t.lookup_pair(&a, &b), (None, Some(sb)));
        assert_eq!(size_of::<Slot<5, 2>>(), 64);
        assert_eq!(size_of::<Bucket>(), 64);
        assert_eq!(t.memory_bytes(), 1024 * 64 + 128 * 64);
    }

    /// The address-family seam: the same table with the 5 key words an IPv6 conntrack tuple
    /// needs (2 × 16 address bytes, ports, protocol, flags). Keys that differ only in their
    /// last words are different entries.
    #[test]
    fn wide_keys_for_ipv6_tuples() {
        let t: SharedTable<2, 5> = SharedTable::new(64);
        let a = [1u64, 2, 3, 4, 5];
        let b = [1u64, 2, 3, 4, 6];
        assert!(t.insert(a, [10, 11], 100, 1).is_some());
        assert!(t.lookup(&b).is_none(), "the fifth word counts");
        assert!(t.insert(b, [20, 21], 100, 1).is_some());
        assert_eq!(t.read(t.lookup(&a).unwrap()).unwrap().0, [10, 11]);
        assert_eq!(t.read(t.lookup(&b).unwrap()).unwrap().0, [20, 21]);
        let mut seen = Vec::new();
        t.for_each(|k, v, _| seen.push((k, v)));
        seen.sort_unstable();
        assert_eq!(seen, vec![(a, [10, 11]), (b, [20, 21])]);
        assert!(t.remove_key(&a));
        assert!(t.lookup(&a).is_none() && t.lookup(&b).is_some());
        assert_eq!(t.sweep(200), 1);
    }
}
