//! Connection tracking: `cilium_ct4_global` (TCP) and `cilium_ct_any4_global` (the rest),
//! written by the workers, swept by the control plane.
//!
//! # Design (docs/services.md, "Conntrack")
//! - **One table for all workers.** Both maps are [`SharedTable`]s that every worker reads
//!   and writes without locks, so a reply that RSS puts on another queue — or that comes back
//!   through another device (the underlay instead of an lxc) — finds the entry its request
//!   created. Per-worker tables would need symmetric steering of both directions, which
//!   neither veth RSS nor DNAT (the reply's tuple differs from the request's) can give.
//! - **One entry per connection and node role**, keyed in Cilium's orientation: the request
//!   direction looks up the key as built from its packet; the reply direction builds the
//!   reversed key. OUT entries are created by `from-container`/NodePort (this node sent or
//!   forwarded the first packet), IN entries by local delivery (`to-container`), SVC entries
//!   by the load balancer (they pin the backend).
//! - **Lifetimes** are absolute seconds of CLOCK_MONOTONIC (Cilium's "bpf mono"), pushed
//!   forward by every packet, with Cilium's defaults per state ([`crate::maps::ct`]).
//! - **GC**: the control thread calls [`Conntrack::sweep`] every few seconds; workers never
//!   delete. An expired entry that is not yet swept is treated as absent.
//!
//! Value words of an entry (fastpath's in-memory form of `ct_entry`; [`CtState::to_entry`]
//! gives the 56-byte Cilium value for dumps):
//! - w0: backend ID (u32) | source identity (u32) << 32
//! - w1: NAT address (wire bytes) | NAT port (host) << 32 | rev_nat index (host) << 48
//! - w2: flags (u16) | tx_flags_seen << 16 | rx_flags_seen << 24 | reply port + 1 << 32
//! - w3: the MAC a NodePort request came from (reply next hop; Cilium keeps it in
//!   `cilium_nodeport_neigh4`)
//! - w4: the cached policy verdict ([`Conntrack::cache_policy`]): bit 63 set when present;
//!   bits 32–62 the policy entry that allowed it; bits 0–31 the table generation it was
//!   decided at XOR the slot's generation (so a store that lands after the slot went to
//!   another connection never validates for that one). Not part of `ct_entry`.
//!
//! Both directions of a connection hash to the same bucket ([`CtHash`]), so the pipeline's
//! "is this a reply?" and "is this connection known?" are one probe
//! ([`Conntrack::lookup_flow`]); with the slot layout of [`SharedTable`] a hit reads two
//! cache lines.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;

use crate::maps::ct::*;
use crate::maps::lb::RevNat;
use crate::maps::{MacAddr, ct::CtEntry};
use crate::shared_table::{BucketHash, SharedTable, SlotRef, expired, mix};

const W: usize = 5;
/// The value word with the cached policy verdict.
const W_POLICY: usize = 4;

/// Conntrack's bucket hash: of the key's direction-free form ([`CtKey::flow_words`]), so a
/// connection's reply key and forward key (and its IN and OUT entries) share a bucket.
#[derive(Debug)]
pub struct CtHash<T>(PhantomData<T>);

impl<T: CtKey<K>, const K: usize> BucketHash<K> for CtHash<T> {
    #[inline]
    fn hash(key: &[u64; K]) -> u64 {
        mix(&T::from_words(*key).flow_words())
    }
}

/// TCP header flag bits (the low byte of the flags field).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The decoded value of a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtState {
    /// Service entries: the backend serving the flow.
    pub backend_id: u32,
    pub src_sec_id: u32,
    /// OUT entries of SNATed flows: the original (pre-SNAT) client address and port.
    pub nat_addr: [u8; 4],
    pub nat_port: u16,
    pub rev_nat: RevNat,
    pub flags: u16,
    pub tx_flags_seen: u8,
    pub rx_flags_seen: u8,
    /// NodePort flows: the device (port ID) replies leave on, and the MAC they go to.
    pub reply_port: Option<u16>,
    pub reply_mac: MacAddr,
}

impl CtState {
    /// (A change of this encoding changes what kept tables mean: bump `FILE_VERSION` in
    /// `shared_table.rs` with it, so a restart does not read old entries the new way.)
    ///
    /// The value words of an entry that slot generation `generation` holds: word 2 (flags
    /// and flags seen, the word packets update in place) is stamped with it, so an update
    /// through a stale handle is refused ([`SharedTable::fetch_or_stamped`]).
    fn encode(&self, generation: u32) -> [u64; W] {
        [
            self.backend_id as u64 | (self.src_sec_id as u64) << 32,
            u32::from_le_bytes(self.nat_addr) as u64
                | (self.nat_port as u64) << 32
                | (self.rev_nat.0 as u64) << 48,
            crate::shared_table::stamp(
                generation,
                self.flags as u32
                    | (self.tx_flags_seen as u32) << 16
                    | (self.rx_flags_seen as u32) << 24,
            ),
            mac_to_u64(self.reply_mac) | (self.reply_port.map_or(0, |p| p as u64 + 1)) << 48,
            0,
        ]
    }

    fn decode(w: [u64; W]) -> CtState {
        let rp = (w[3] >> 48) as u16;
        CtState {
            backend_id: w[0] as u32,
            src_sec_id: (w[0] >> 32) as u32,
            nat_addr: (w[1] as u32).to_le_bytes(),
            nat_port: (w[1] >> 32) as u16,
            rev_nat: RevNat((w[1] >> 48) as u16),
            flags: w[2] as u16,
            tx_flags_seen: (w[2] >> 16) as u8,
            rx_flags_seen: (w[2] >> 24) as u8,
            reply_port: (rp != 0).then(|| rp - 1),
            reply_mac: u64_to_mac(w[3]),
        }
    }

    /// The 56-byte Cilium value (accounting off: packets and bytes read 0, as in 1.19's
    /// default).
    pub fn to_entry(&self, service: bool, lifetime: u32) -> CtEntry {
        let mut nat_addr_lo = [0u8; 8];
        if !service {
            nat_addr_lo[..4].copy_from_slice(&self.nat_addr);
        }
        CtEntry {
            nat_addr_lo,
            backend_id: if service { self.backend_id as u64 } else { 0 },
            lifetime,
            flags: self.flags,
            rev_nat_index: self.rev_nat.be(),
            nat_port: if service { 0 } else { self.nat_port.to_be() },
            tx_flags_seen: self.tx_flags_seen,
            rx_flags_seen: self.rx_flags_seen,
            src_sec_id: self.src_sec_id,
            ..Default::default()
        }
    }

    pub fn closing(&self) -> bool {
        self.flags & (CT_RX_CLOSING | CT_TX_CLOSING) == CT_RX_CLOSING | CT_TX_CLOSING
    }
}

fn mac_to_u64(m: MacAddr) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&m.0);
    u64::from_le_bytes(b)
}

fn u64_to_mac(v: u64) -> MacAddr {
    let b = v.to_le_bytes();
    MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// A found entry: where it is, which map, and its value at lookup time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtHit {
    slot: SlotRef,
    tcp: bool,
    pub state: CtState,
    pub lifetime: u32,
    /// The cached policy verdict, if any: (table generation it was decided at, the policy
    /// entry that allowed it). See [`Conntrack::cache_policy`].
    pub policy: Option<(u32, u32)>,
}

impl CtHit {
    /// The allowing policy entry, if the verdict cached in this entry was decided at table
    /// generation `generation` (low 32 bits; any newer table version decides again).
    #[inline]
    pub fn cached_allow(&self, generation: u64) -> Option<u32> {
        match self.policy {
            Some((g, slot)) if g == generation_tag(generation) => Some(slot),
            _ => None,
        }
    }
}

/// The 32-bit form of a table generation kept in an entry (never 0, which means "none").
#[inline]
fn generation_tag(generation: u64) -> u32 {
    (generation as u32).max(1)
}

const POLICY_PRESENT: u64 = 1 << 63;
const POLICY_SLOT_MASK: u64 = 0x7fff_ffff;

#[inline]
fn decode_policy(w: u64, slot: SlotRef) -> Option<(u32, u32)> {
    (w & POLICY_PRESENT != 0).then(|| {
        (
            (w as u32) ^ slot.generation(),
            ((w >> 32) & POLICY_SLOT_MASK) as u32,
        )
    })
}

#[inline]
fn encode_policy(generation: u64, policy_slot: u32, slot: SlotRef) -> u64 {
    POLICY_PRESENT
        | ((policy_slot as u64) & POLICY_SLOT_MASK) << 32
        | (generation_tag(generation) ^ slot.generation()) as u64
}

/// Sizes of the two maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtSizes {
    pub tcp: usize,
    pub any: usize,
}

impl Default for CtSizes {
    fn default() -> Self {
        CtSizes {
            tcp: CT_TCP_MAX as usize,
            any: CT_ANY_MAX as usize,
        }
    }
}

/// Both conntrack maps of one address family: generic over the key ([`CtKey`]) and its
/// width in words, so the IPv6 pair is [`Conntrack6`], the same code. The value (`W` words,
/// [`CtState`]) is the IPv4 one: an IPv6 NAT address needs two more words, added with the
/// IPv6 datapath.
#[derive(Debug)]
pub struct Conntrack<T = CtTuple4, const K: usize = 2> {
    pub tcp: SharedTable<W, K, CtHash<T>>,
    pub any: SharedTable<W, K, CtHash<T>>,
    key: PhantomData<T>,
}

/// `cilium_ct4_global` + `cilium_ct_any4_global`.
pub type Conntrack4 = Conntrack<CtTuple4, 2>;
/// `cilium_ct6_global` + `cilium_ct_any6_global`.
pub type Conntrack6 = Conntrack<CtTuple6, 5>;

impl<T: CtKey<K>, const K: usize> Conntrack<T, K> {
    pub fn new(sizes: CtSizes) -> Self {
        Conntrack {
            tcp: SharedTable::new(sizes.tcp),
            any: SharedTable::new(sizes.any),
            key: PhantomData,
        }
    }

    /// Both maps kept in files of `dir` (`<name>_tcp.table`, `<name>_any.table`), so a
    /// restarted process finds the connections of the last one
    /// ([`SharedTable::open_file`]); call [`Conntrack::restore`] before any worker reads it.
    ///
    /// # Errors
    /// A file cannot be opened, locked, sized or mapped.
    pub fn open_files(
        dir: &std::path::Path,
        name: &str,
        sizes: CtSizes,
    ) -> std::io::Result<(Self, [crate::shared_table::Opened; 2])> {
        Self::open_both(sizes, |tcp, size| {
            let t = format!("{name}_{}", if tcp { "tcp" } else { "any" });
            SharedTable::open_file(&dir.join(format!("{t}.table")), &t, size)
        })
    }

    /// Both maps, each opened by `one(tcp, size)`.
    fn open_both(
        sizes: CtSizes,
        mut one: impl FnMut(
            bool,
            usize,
        ) -> std::io::Result<(
            SharedTable<W, K, CtHash<T>>,
            crate::shared_table::Opened,
        )>,
    ) -> std::io::Result<(Self, [crate::shared_table::Opened; 2])> {
        let (tcp, o1) = one(true, sizes.tcp)?;
        let (any, o2) = one(false, sizes.any)?;
        Ok((
            Conntrack {
                tcp,
                any,
                key: PhantomData,
            },
            [o1, o2],
        ))
    }

    /// Both maps as pinned BPF arrays under `pin_dir` (bpffs), named as Cilium's
    /// (`cilium_ct4_global`, `cilium_ct_any4_global`), the memory the tc datapath shares
    /// (`xdp-redirect/src/bpf/fp_ct.h`) and that outlives the process as
    /// [`Conntrack::open_files`]' files do; `lock_dir` holds a lock file per map
    /// (`<map>.lock`). Call [`Conntrack::restore`] before any worker reads them.
    ///
    /// # Errors
    /// A map cannot be made, pinned, opened or mapped; a lock file cannot be made or is
    /// held by another process.
    pub fn open_pinned(
        pin_dir: &std::path::Path,
        lock_dir: &std::path::Path,
        sizes: CtSizes,
    ) -> std::io::Result<(Self, [crate::shared_table::Opened; 2])> {
        use crate::shared_table::Keep;
        Self::open_both(sizes, |tcp, size| {
            let map = if tcp { T::TCP_MAP } else { T::ANY_MAP };
            SharedTable::open_kept(
                Keep::Pinned {
                    pin: &pin_dir.join(map),
                    lock: &lock_dir.join(format!("{map}.lock")),
                },
                map,
                size,
            )
        })
    }

    /// After a restart, before any worker reads the maps: drop expired entries, forget
    /// every cached policy verdict (they name table generations of the last run), and let
    /// `fix` rewrite what the last run numbered differently (service and backend IDs) or
    /// refuse the entry (`false`: it is deleted). Returns (kept, deleted).
    pub fn restore(
        &mut self,
        now: u32,
        mut fix: impl FnMut(&T, &mut CtState) -> bool,
    ) -> (usize, usize) {
        let mut one = |m: &mut SharedTable<W, K, CtHash<T>>| {
            m.retain_mut(|k, w, life| {
                if expired(*life, now) {
                    return false;
                }
                let g = (w[2] >> 32) as u32;
                let mut st = CtState::decode(*w);
                if !fix(&T::from_words(*k), &mut st) {
                    return false;
                }
                *w = st.encode(g);
                true
            })
        };
        let (a, b) = one(&mut self.tcp);
        let (c, d) = one(&mut self.any);
        (a + c, b + d)
    }

    #[inline]
    fn map(&self, tcp: bool) -> &SharedTable<W, K, CtHash<T>> {
        if tcp { &self.tcp } else { &self.any }
    }

    /// Look `key` up; an entry whose lifetime passed is absent.
    #[inline]
    pub fn lookup(&self, key: &T, now: u32) -> Option<CtHit> {
        let tcp = key.nexthdr() == crate::maps::ct::PROTO_TCP;
        let m = self.map(tcp);
        let slot = m.lookup(&key.words())?;
        let (w, lifetime) = m.read(slot)?;
        if expired(lifetime, now) {
            return None;
        }
        Some(Self::hit(slot, tcp, w, lifetime))
    }

    #[inline]
    fn hit(slot: SlotRef, tcp: bool, w: [u64; W], lifetime: u32) -> CtHit {
        CtHit {
            slot,
            tcp,
            state: CtState::decode(w),
            lifetime,
            policy: decode_policy(w[W_POLICY], slot),
        }
    }

    /// One probe for both directions of the packet whose forward key is `fwd`: its reply
    /// entry (`fwd.reversed()`) and its own, as `(reply, forward)`. Expired entries are
    /// absent.
    #[inline]
    pub fn lookup_flow(&self, fwd: &T, now: u32) -> (Option<CtHit>, Option<CtHit>) {
        let tcp = fwd.nexthdr() == crate::maps::ct::PROTO_TCP;
        let m = self.map(tcp);
        let (r, f) = m.lookup_pair(&fwd.reversed().words(), &fwd.words());
        let get = |s: Option<SlotRef>| {
            let s = s?;
            let (w, lifetime) = m.read(s)?;
            (!expired(lifetime, now)).then(|| Self::hit(s, tcp, w, lifetime))
        };
        (get(r), get(f))
    }

    /// Remember in a found entry that the policy allowed its connection at table generation
    /// `generation` by entry `slot`: later packets of the connection skip the policy lookup
    /// until the tables change ([`CtHit::cached_allow`]).
    #[inline]
    pub fn cache_policy(&self, hit: &CtHit, generation: u64, slot: u32) {
        let v = encode_policy(generation, slot, hit.slot);
        let w = self.map(hit.tcp).word(hit.slot, W_POLICY);
        if w.load(Ordering::Relaxed) != v {
            w.store(v, Ordering::Relaxed);
        }
    }

    /// Create (or replace) `key` with `state`; `None` only if the map could not take it.
    pub fn create(&self, key: &T, state: &CtState, lifetime: u32, now: u32) -> Option<CtHit> {
        let tcp = key.nexthdr() == crate::maps::ct::PROTO_TCP;
        let slot = self
            .map(tcp)
            .insert_with(key.words(), |g| state.encode(g), lifetime, now)?;
        Some(CtHit {
            slot,
            tcp,
            state: *state,
            lifetime,
            policy: None,
        })
    }

    /// A packet of the connection passed: update TCP state (`reply` = the packet goes in the
    /// reply direction, `tcp_flags` its flag byte; 0 for non-TCP) and push the lifetime.
    /// `service`: a service entry (it only ever sees the client's direction, so a FIN or RST
    /// from the client closes it).
    /// Returns the entry's flags after the update.
    #[inline]
    pub fn touch(&self, hit: &CtHit, reply: bool, tcp_flags: u8, now: u32, service: bool) -> u16 {
        let m = self.map(hit.tcp);
        if !hit.tcp {
            let life = if service {
                LIFETIME_SVC_NONTCP
            } else {
                LIFETIME_NONTCP
            };
            m.set_lifetime(hit.slot, now.wrapping_add(life));
            return hit.state.flags;
        }
        let cur = m.word(hit.slot, 2).load(Ordering::Relaxed);
        let mut flags = cur as u16;
        let (seen_shift, closing_bit) = if reply {
            (24, CT_RX_CLOSING)
        } else {
            (16, CT_TX_CLOSING)
        };
        let mut add: u32 = (tcp_flags as u32) << seen_shift;
        if service && tcp_flags & (TCP_RST | TCP_FIN) != 0 {
            // A service entry sees only the client's direction: the client closing is all
            // it will learn, so it closes (a new SYN on the tuple chooses again).
            flags |= CT_RX_CLOSING | CT_TX_CLOSING;
        } else if tcp_flags & TCP_RST != 0 {
            // An RST before the handshake completed closes both directions.
            flags |= if flags & CT_SEEN_NON_SYN == 0 {
                CT_RX_CLOSING | CT_TX_CLOSING
            } else {
                closing_bit
            };
        } else if tcp_flags & TCP_FIN != 0 {
            flags |= closing_bit;
        }
        if tcp_flags & TCP_SYN == 0 {
            flags |= CT_SEEN_NON_SYN;
        }
        add |= flags as u32;
        if (cur as u32) & add != add && m.fetch_or_stamped(hit.slot, 2, add).is_none() {
            // The slot was emptied and taken by another connection since the lookup: this
            // packet's entry is gone, and nothing of it lands in the new one's.
            return flags;
        }
        let closing = flags & (CT_RX_CLOSING | CT_TX_CLOSING) == CT_RX_CLOSING | CT_TX_CLOSING;
        let life = if closing {
            LIFETIME_TCP_CLOSE
        } else if flags & CT_SEEN_NON_SYN == 0 {
            LIFETIME_TCP_SYN
        } else if service {
            LIFETIME_SVC_TCP
        } else {
            LIFETIME_TCP
        };
        m.set_lifetime(hit.slot, now.wrapping_add(life));
        flags
    }

    /// Delete a found entry.
    pub fn remove(&self, hit: &CtHit) -> bool {
        self.map(hit.tcp).remove(hit.slot)
    }

    /// Delete every entry, of both maps, with `ip` (wire order) as its source or
    /// destination: the entries of an endpoint that is gone. Returns how many.
    pub fn flush_addr(&self, ip: T::Addr) -> usize {
        let mut n = 0;
        for m in [&self.tcp, &self.any] {
            let mut keys = Vec::new();
            m.for_each(|k, _, _| {
                if T::from_words(k).has_addr(ip) {
                    keys.push(k);
                }
            });
            n += keys.iter().filter(|k| m.remove_key(k)).count();
        }
        n
    }

    /// GC: delete every expired entry of both maps; returns (tcp, any) counts.
    pub fn sweep(&self, now: u32) -> (usize, usize) {
        (self.tcp.sweep(now), self.any.sweep(now))
    }

    /// Every live entry of one map (`tcp`), as Cilium key and 56-byte value.
    pub fn entries(&self, tcp: bool, now: u32) -> Vec<(T, CtEntry)> {
        self.entries_at_most(tcp, now, usize::MAX).0
    }

    /// At most `max` live entries of one map, and how many live ones there are in all (a
    /// listing of a 16M-entry table stays bounded in memory).
    pub fn entries_at_most(&self, tcp: bool, now: u32, max: usize) -> (Vec<(T, CtEntry)>, usize) {
        let mut out = Vec::new();
        let mut live = 0usize;
        self.map(tcp).for_each(|k, v, l| {
            if expired(l, now) {
                return;
            }
            live += 1;
            if out.len() < max {
                let key = T::from_words(k);
                let service = key.tuple_flags() & TUPLE_F_SERVICE != 0;
                out.push((key, CtState::decode(v).to_entry(service, l)));
            }
        });
        (out, live)
    }

    /// Backend IDs that live service entries point at (the control plane keeps those
    /// backends in `cilium_lb4_backends_v3` while connections use them).
    pub fn backends_in_use(&self, now: u32) -> hashbrown::HashSet<u32> {
        let mut ids = hashbrown::HashSet::new();
        for m in [&self.tcp, &self.any] {
            m.for_each(|k, v, l| {
                if !expired(l, now) && T::from_words(k).tuple_flags() & TUPLE_F_SERVICE != 0 {
                    ids.insert(v[0] as u32);
                }
            });
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Conntrack {
        Conntrack::new(CtSizes {
            tcp: 1024,
            any: 1024,
        })
    }

    /// One probe answers both questions: the reply entry and the forward entry of a packet,
    /// whichever exist; expired ones are absent.
    #[test]
    fn lookup_flow_finds_reply_and_forward_in_one_probe() {
        let ct = small();
        let now = 1000;
        let fwd = CtTuple4::connection([10, 0, 0, 1], [10, 0, 0, 2], 40000, 53, 17, TUPLE_F_OUT);
        let (r, f) = ct.lookup_flow(&fwd, now);
        assert!(r.is_none() && f.is_none());
        ct.create(&fwd, &CtState::default(), now + 60, now).unwrap();
        let (r, f) = ct.lookup_flow(&fwd, now);
        assert!(r.is_none());
        assert_eq!(f.unwrap().lifetime, now + 60);
        // The other side's packet: its forward key is our reply key; it finds our entry as
        // its reply.
        let (r, f) = ct.lookup_flow(&fwd.reversed(), now);
        assert!(f.is_none());
        assert_eq!(r.unwrap().lifetime, now + 60);
        // Both present.
        ct.create(&fwd.reversed(), &CtState::default(), now + 30, now)
            .unwrap();
        let (r, f) = ct.lookup_flow(&fwd, now);
        assert_eq!(
            (r.unwrap().lifetime, f.unwrap().lifetime),
            (now + 30, now + 60)
        );
        // Expired entries are absent.
        let (r, f) = ct.lookup_flow(&fwd, now + 45);
        assert!(r.is_none() && f.is_some());
    }

    /// A verdict cached at one table generation is used only at that generation, survives
    /// touches, is gone when the entry is replaced, and a store through a handle whose slot
    /// went to another connection never validates for that one.
    #[test]
    fn cached_policy_verdict_is_tied_to_generation_and_slot_owner() {
        let ct = small();
        let now = 1000;
        let k = CtTuple4::connection([10, 0, 0, 1], [10, 0, 0, 2], 40000, 53, 17, TUPLE_F_OUT);
        let hit = ct.create(&k, &CtState::default(), now + 60, now).unwrap();
        assert_eq!(hit.cached_allow(7), None);
        ct.cache_policy(&hit, 7, 12345);
        let hit = ct.lookup(&k, now).unwrap();
        assert_eq!(hit.cached_allow(7), Some(12345));
        assert_eq!(
            hit.cached_allow(8),
            None,
            "a newer table version decides again"
        );
        ct.touch(&hit, false, 0, now + 1, false);
        assert_eq!(ct.lookup(&k, now).unwrap().cached_allow(7), Some(12345));
        ct.create(&k, &CtState::default(), now + 60, now).unwrap();
        assert_eq!(
            ct.lookup(&k, now).unwrap().cached_allow(7),
            None,
            "replaced"
        );
        // A stale handle: the slot is emptied and taken by another connection, then the old
        // holder caches its verdict into it.
        let stale = ct.lookup(&k, now).unwrap();
        assert!(ct.remove(&stale));
        let other = ct.create(&k, &CtState::default(), now + 60, now).unwrap();
        ct.cache_policy(&stale, 7, 1);
        let found = ct.lookup(&k, now).unwrap();
        assert_eq!(found.cached_allow(7), None, "{found:?} {other:?}");
    }

    /// A packet whose handle went stale (its entry was deleted and the slot given to another
    /// connection between lookup and touch) changes neither the new entry's TCP flags nor
    /// its lifetime: a FIN of a dead flow must not close a live one.
    #[test]
    fn touch_through_a_stale_handle_leaves_the_new_owner_alone() {
        // One bucket per map: an emptied bucket's next entry takes its first slot again.
        let ct: Conntrack = Conntrack::new(CtSizes { tcp: 8, any: 8 });
        let now = 1000;
        for proto in [6u8, 17] {
            let old = CtTuple4::connection([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80, proto, 0);
            let new = CtTuple4::connection([10, 0, 0, 3], [10, 0, 0, 4], 40001, 80, proto, 0);
            let stale = ct.create(&old, &CtState::default(), now + 60, now).unwrap();
            assert!(ct.remove(&stale));
            let owner = ct.create(&new, &CtState::default(), now + 60, now).unwrap();
            assert_eq!(ct.map(proto == 6).len(), 1);
            let flags = ct.touch(&stale, false, TCP_FIN | TCP_ACK, now + 5, false);
            if proto == 6 {
                assert_eq!(
                    flags & CT_TX_CLOSING,
                    CT_TX_CLOSING,
                    "the caller learns its flags"
                );
            }
            let after = ct.lookup(&new, now).unwrap();
            assert_eq!(after.state, owner.state, "no flag of the dead flow lands");
            assert_eq!(after.lifetime, now + 60, "nor its lifetime");
            // Through its own handle the owner is updated as before.
            ct.touch(&after, false, TCP_FIN | TCP_ACK, now + 5, false);
            let touched = ct.lookup(&new, now).unwrap();
            if proto == 6 {
                assert_eq!(touched.state.flags & CT_TX_CLOSING, CT_TX_CLOSING);
                assert_eq!(touched.lifetime, now + 5 + LIFETIME_TCP);
            } else {
                assert_eq!(touched.lifetime, now + 5 + LIFETIME_NONTCP);
            }
            assert!(ct.remove(&touched));
        }
    }

    #[test]
    fn state_round_trips() {
        let s = CtState {
            backend_id: 7,
            src_sec_id: 48213,
            nat_addr: [192, 168, 7, 2],
            nat_port: 40000,
            rev_nat: RevNat(4),
            flags: CT_NODE_PORT,
            tx_flags_seen: 0x12,
            rx_flags_seen: 0x02,
            reply_port: Some(0),
            reply_mac: MacAddr([2, 0, 0, 0, 0, 9]),
        };
        assert_eq!(CtState::decode(s.encode(5)), s);
        let e = s.to_entry(false, 99);
        assert_eq!(e.rev_nat_index, 4u16.to_be());
        assert_eq!(e.nat_port, 40000u16.to_be());
        assert_eq!(&e.nat_addr_lo[..4], &[192, 168, 7, 2]);
        assert_eq!(s.to_entry(true, 99).backend_id, 7);
    }

    #[test]
    fn tcp_lifetimes_follow_the_handshake_and_close() {
        let ct = small();
        let k = CtTuple4::connection([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80, 6, TUPLE_F_OUT);
        let now = 1000;
        let hit = ct
            .create(&k, &CtState::default(), now + LIFETIME_TCP_SYN, now)
            .unwrap();
        ct.touch(&hit, false, TCP_SYN, now, false);
        assert_eq!(ct.lookup(&k, now).unwrap().lifetime, now + LIFETIME_TCP_SYN);
        ct.touch(&hit, true, TCP_SYN | TCP_ACK, now, false);
        ct.touch(&hit, false, TCP_ACK, now + 1, false);
        let h = ct.lookup(&k, now + 1).unwrap();
        assert_eq!(h.lifetime, now + 1 + LIFETIME_TCP);
        assert_ne!(h.state.flags & CT_SEEN_NON_SYN, 0);
        assert_eq!(h.state.tx_flags_seen, TCP_SYN | TCP_ACK);
        assert_eq!(h.state.rx_flags_seen, TCP_SYN | TCP_ACK);
        // FIN one way: still open; FIN the other way: closing lifetime.
        ct.touch(&h, false, TCP_FIN | TCP_ACK, now + 2, false);
        assert_eq!(
            ct.lookup(&k, now + 2).unwrap().lifetime,
            now + 2 + LIFETIME_TCP
        );
        ct.touch(&h, true, TCP_FIN | TCP_ACK, now + 3, false);
        let h = ct.lookup(&k, now + 3).unwrap();
        assert!(h.state.closing());
        assert_eq!(h.lifetime, now + 3 + LIFETIME_TCP_CLOSE);
        // Expired entries are absent, then swept.
        assert!(ct.lookup(&k, now + 3 + LIFETIME_TCP_CLOSE + 1).is_none());
        assert_eq!(ct.sweep(now + 3 + LIFETIME_TCP_CLOSE + 1), (1, 0));
    }

    #[test]
    fn rst_before_handshake_closes_both_ways_and_udp_uses_any_map() {
        let ct = small();
        let k = CtTuple4::connection([10, 0, 0, 1], [10, 0, 0, 2], 40001, 81, 6, TUPLE_F_OUT);
        let hit = ct.create(&k, &CtState::default(), 60, 0).unwrap();
        ct.touch(&hit, true, TCP_RST | TCP_ACK, 0, false);
        assert!(ct.lookup(&k, 0).unwrap().state.closing());
        let u = CtTuple4::connection([10, 0, 0, 1], [10, 0, 0, 2], 5000, 53, 17, TUPLE_F_OUT);
        let hu = ct.create(&u, &CtState::default(), 60, 0).unwrap();
        ct.touch(&hu, true, 0, 30, false);
        assert_eq!(ct.lookup(&u, 30).unwrap().lifetime, 30 + LIFETIME_NONTCP);
        assert_eq!(ct.entries(false, 30).len(), 1);
        assert_eq!(ct.entries(true, 5).len(), 1, "closing lifetime is 10 s");
        assert!(ct.entries(true, 30).is_empty());
    }

    #[test]
    fn backends_in_use_come_from_service_entries() {
        let ct = small();
        let s = CtTuple4::service([10, 0, 0, 1], [10, 96, 0, 1], 40000, 80, 6);
        let st = CtState {
            backend_id: 42,
            ..Default::default()
        };
        ct.create(&s, &st, 100, 0).unwrap();
        let o = CtTuple4::connection([10, 0, 0, 1], [10, 0, 0, 9], 40000, 80, 6, TUPLE_F_OUT);
        ct.create(
            &o,
            &CtState {
                backend_id: 43,
                ..Default::default()
            },
            100,
            0,
        )
        .unwrap();
        let ids = ct.backends_in_use(50);
        assert!(ids.contains(&42) && !ids.contains(&43));
        assert!(ct.backends_in_use(200).is_empty());
    }

    /// An endpoint that goes takes its conntrack entries with it, and only its own.
    #[test]
    fn flush_addr_deletes_both_directions_of_one_address_only() {
        let ct = Conntrack::new(CtSizes { tcp: 64, any: 64 });
        let now = 100;
        let t = |s: [u8; 4], d: [u8; 4], proto: u8| CtTuple4 {
            saddr: s,
            daddr: d,
            sport: 1000u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            nexthdr: proto,
            flags: 0,
        };
        let gone = [10, 0, 0, 9];
        let keys = [
            t([10, 0, 0, 1], gone, crate::maps::ct::PROTO_TCP),
            t(gone, [10, 0, 0, 2], 17),
            t([10, 0, 0, 1], [10, 0, 0, 2], crate::maps::ct::PROTO_TCP),
        ];
        for k in &keys {
            ct.create(k, &CtState::default(), now + 60, now).unwrap();
        }
        assert_eq!(ct.flush_addr(gone), 2);
        assert!(ct.lookup(&keys[0], now).is_none());
        assert!(ct.lookup(&keys[1], now).is_none());
        assert!(ct.lookup(&keys[2], now).is_some(), "others stay");
        assert_eq!(ct.flush_addr(gone), 0);
    }

    /// The IPv6 pair is the same code over the five-word key: create, find (the reversed
    /// key is another entry), touch, flush by address, sweep, and list as Cilium keys.
    #[test]
    fn ipv6_conntrack_is_the_same_table_over_wider_keys() {
        let ct = Conntrack6::new(CtSizes { tcp: 64, any: 64 });
        let a: [u8; 16] = std::array::from_fn(|i| if i == 0 { 0xfd } else { i as u8 });
        let mut b = a;
        b[15] = 0xee;
        let k = CtTuple6 {
            daddr: a,
            saddr: b,
            dport: 443u16.to_be_bytes(),
            sport: 40000u16.to_be_bytes(),
            nexthdr: crate::maps::ct::PROTO_TCP,
            flags: TUPLE_F_OUT,
        };
        let now = 500;
        let hit = ct
            .create(&k, &CtState::default(), now + LIFETIME_TCP_SYN, now)
            .unwrap();
        ct.touch(&hit, false, TCP_ACK, now, false);
        let h = ct.lookup(&k, now).unwrap();
        assert_ne!(h.state.flags & CT_SEEN_NON_SYN, 0);
        assert_eq!(h.lifetime, now + LIFETIME_TCP);
        let mut rev = k;
        rev.flags = TUPLE_F_IN;
        assert!(
            ct.lookup(&rev, now).is_none(),
            "the flags are part of the key"
        );
        let (list, live) = ct.entries_at_most(true, now, 10);
        assert_eq!((list.len(), live), (1, 1));
        assert_eq!(list[0].0, k);
        let u = CtTuple6 { nexthdr: 17, ..k };
        ct.create(&u, &CtState::default(), now + 60, now).unwrap();
        assert_eq!(ct.any.len(), 1, "UDP goes to the any map");
        let mut other = a;
        other[1] ^= 0xff;
        assert_eq!(ct.flush_addr(other), 0);
        assert_eq!(ct.flush_addr(b), 2);
        assert_eq!(ct.sweep(now + 100_000), (0, 0));
        assert_eq!(<CtTuple6 as CtKey<5>>::TCP_MAP, "cilium_ct6_global");
    }
}
