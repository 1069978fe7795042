//! What the workers read: each local endpoint's compiled policy map (the contents of
//! `cilium_policy_v3_<id>`), with Cilium 1.20's lookup, and the verdict counters.
//!
//! Lookup cost: one hash probe per distinct protocol/port prefix length present in the
//! direction (typically 1-3), for the remote identity and then for identity 0 ("any"), unless
//! the first hit is a deny. A direction holding only the allow-all entry (policy not enforced)
//! costs nothing but a counter update.

use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashMap;

use crate::maps::DropReason;
use crate::maps::policy::{PRECEDENCE_DENY, PolicyEntry, PolicyKey};

/// Verdict-total slots at the start of every stripe of [`PolicyStats`].
pub const STAT_ALLOWED_INGRESS: u32 = 0;
pub const STAT_ALLOWED_EGRESS: u32 = 1;
pub const STAT_DENIED_INGRESS: u32 = 2;
pub const STAT_DENIED_EGRESS: u32 = 3;
/// First slot available to map entries.
pub const FIRST_ENTRY_SLOT: u32 = 4;
/// Per-entry counter slots (`cilium_policystats` has 65536 entries).
pub const POLICY_STATS_MAX: usize = 65536;
/// An entry without a counter slot (all taken): its counts are not kept.
pub const NO_SLOT: u32 = u32::MAX;

/// One entry of an endpoint's map, as dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    pub key: PolicyKey,
    pub entry: PolicyEntry,
    /// Counter slot in [`PolicyStats`].
    pub slot: u32,
}

/// The verdict of a policy lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyVerdict {
    /// Allowed by the entry at counter slot `slot`.
    Allow { slot: u32 },
    /// Dropped: 133 (no allow matched, `slot` = `NO_SLOT`) or 181 (a deny entry matched).
    Deny { reason: DropReason, slot: u32 },
}

/// The compiled policy of one local endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicy {
    pub ep_id: u16,
    /// The endpoint's own identity.
    pub sec_id: u32,
    /// Is default deny on in [ingress, egress]?
    pub enforced: [bool; 2],
    /// Every entry, sorted by key (the map's contents).
    pub entries: Vec<MapEntry>,
    /// Packed key → index in `entries`.
    index: HashMap<u64, u32>,
    /// Distinct protocol/port prefix lengths per direction, longest first.
    lens: [Vec<u8>; 2],
    /// `Some(slots)`: the direction holds nothing but the allow-all entries (under 0, 2 and
    /// 6: any identity and the two aggregates); allow without a lookup and count on the
    /// slot of the entry the lookup would have found (the identity's aggregate's).
    allow_all: [Option<[u32; 3]>; 2],
}

#[inline]
fn packed(id: u32, dir: u8, len: u8, proto: u8, port: u16) -> u64 {
    (id as u64) << 32
        | (len as u64) << 25
        | ((dir & 1) as u64) << 24
        | (proto as u64) << 16
        | port as u64
}

impl EndpointPolicy {
    /// Build from entries (any order; duplicates: the last wins).
    pub fn new(ep_id: u16, sec_id: u32, enforced: [bool; 2], mut entries: Vec<MapEntry>) -> Self {
        entries.sort_by_key(|e| e.key);
        entries.dedup_by(|b, a| {
            if a.key == b.key {
                *a = *b;
                true
            } else {
                false
            }
        });
        let mut index = HashMap::with_capacity(entries.len());
        let mut lens: [Vec<u8>; 2] = Default::default();
        for (i, e) in entries.iter().enumerate() {
            let k = &e.key;
            let dir = k.egress & 1;
            index.insert(
                packed(k.sec_label, dir, k.lpm_len(), k.protocol, k.port()),
                i as u32,
            );
            lens[dir as usize].push(k.lpm_len());
        }
        let mut allow_all = [None; 2];
        for (dir, l) in lens.iter_mut().enumerate() {
            l.sort_unstable_by(|a, b| b.cmp(a));
            l.dedup();
            let mine: Vec<&MapEntry> = entries
                .iter()
                .filter(|e| (e.key.egress & 1) as usize == dir)
                .collect();
            let any = crate::maps::identity::ANY_IDENTITY_KEYS;
            let slot_of = |id: u32| {
                mine.iter()
                    .find(|e| e.key.sec_label == id && e.key.lpm_len() == 0 && !e.entry.is_deny())
                    .map(|e| e.slot)
            };
            if mine.len() == any.len()
                && let (Some(a), Some(w), Some(r)) =
                    (slot_of(any[0]), slot_of(any[1]), slot_of(any[2]))
            {
                allow_all[dir] = Some([a, w, r]);
            }
        }
        EndpointPolicy {
            ep_id,
            sec_id,
            enforced,
            entries,
            index,
            lens,
            allow_all,
        }
    }

    /// The entry stored under exactly this key: identity, direction, protocol/port prefix
    /// length, protocol and (masked) port — what a `cilium_policystats` key names.
    pub fn entry(&self, id: u32, dir: u8, len: u8, proto: u8, port: u16) -> Option<&MapEntry> {
        self.index
            .get(&packed(id, dir & 1, len, proto, port))
            .map(|&i| &self.entries[i as usize])
    }

    /// The LPM hit for `id`.
    #[inline]
    fn lpm(&self, id: u32, dir: u8, proto: u8, port: u16) -> Option<&MapEntry> {
        for &len in &self.lens[dir as usize] {
            let k = if len == 0 {
                packed(id, dir, 0, 0, 0)
            } else {
                let bits = len - 8;
                let mask = if bits == 0 {
                    0
                } else {
                    u16::MAX << (16 - bits)
                };
                packed(id, dir, len, proto, port & mask)
            };
            if let Some(&i) = self.index.get(&k) {
                return Some(&self.entries[i as usize]);
            }
        }
        None
    }

    /// Cilium 1.19's verdict for traffic with the remote identity `id` in direction `dir`
    /// (0 ingress, 1 egress), protocol `proto`, destination port (ICMP: type) `port`.
    #[inline]
    pub fn verdict(&self, dir: u8, id: u32, proto: u8, port: u16) -> PolicyVerdict {
        if let Some([any, world, remote_node]) = self.allow_all[dir as usize] {
            let slot = match crate::maps::identity::policy_aggregate(id) {
                crate::maps::identity::RESERVED_WORLD => world,
                crate::maps::identity::RESERVED_REMOTE_NODE => remote_node,
                _ => any,
            };
            return PolicyVerdict::Allow { slot };
        }
        let exact = self.lpm(id, dir, proto, port);
        let chosen = match exact {
            Some(e) if e.entry.precedence == PRECEDENCE_DENY => Some(e),
            _ => {
                // Cilium 1.20: the second lookup is under the identity's aggregate (0, or
                // world's 2, or remote-node's 6).
                let agg = crate::maps::identity::policy_aggregate(id);
                let any = if id != agg {
                    self.lpm(agg, dir, proto, port)
                } else {
                    None
                };
                match (exact, any) {
                    (Some(e), Some(w)) => {
                        let (pe, pw) = (e.entry.precedence, w.entry.precedence);
                        if pw > pe || (pw == pe && w.entry.lpm_len() > e.entry.lpm_len()) {
                            Some(w)
                        } else {
                            Some(e)
                        }
                    }
                    (e, w) => e.or(w),
                }
            }
        };
        match chosen {
            Some(e) if e.entry.is_deny() => PolicyVerdict::Deny {
                reason: DropReason::PolicyDeny,
                slot: e.slot,
            },
            Some(e) => PolicyVerdict::Allow { slot: e.slot },
            None => PolicyVerdict::Deny {
                reason: DropReason::Policy,
                slot: NO_SLOT,
            },
        }
    }
}

/// Every local endpoint's policy, by endpoint ID.
#[derive(Debug, Clone, Default)]
pub struct PolicyTables {
    pub endpoints: HashMap<u16, EndpointPolicy>,
}

impl PolicyTables {
    /// The verdict for endpoint `ep_id`; an endpoint without a compiled policy (none has
    /// been computed for it) allows everything, as an unselected endpoint does.
    #[inline]
    pub fn verdict(&self, ep_id: u16, dir: u8, id: u32, proto: u8, port: u16) -> PolicyVerdict {
        match self.endpoints.get(&ep_id) {
            Some(p) => p.verdict(dir, id, proto, port),
            None => PolicyVerdict::Allow { slot: NO_SLOT },
        }
    }
}

/// Packet and byte counters per map entry and per verdict, one stripe per worker: each
/// counter has exactly one writer, so an update is a Relaxed load and store (no locked
/// instruction); the control thread sums the stripes. Shared by every table version, like
/// conntrack: slots are assigned by the control plane and stay with their (endpoint, key).
#[derive(Debug)]
pub struct PolicyStats {
    workers: usize,
    slots: usize,
    counters: Box<[AtomicU64]>,
}

impl PolicyStats {
    pub fn new(workers: usize, slots: usize) -> Self {
        let workers = workers.max(1);
        PolicyStats {
            workers,
            slots,
            counters: (0..workers * slots * 2)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    #[inline]
    fn bump(&self, i: usize, n: u64) {
        let c = &self.counters[i];
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Count one packet of `bytes` on `slot` for `worker`. Only that worker calls this.
    #[inline]
    pub fn count(&self, worker: usize, slot: u32, bytes: usize) {
        let (w, s) = (worker, slot as usize);
        if w < self.workers && s < self.slots {
            let i = (w * self.slots + s) * 2;
            self.bump(i, 1);
            self.bump(i + 1, bytes as u64);
        }
    }

    /// (packets, bytes) of `slot`, summed over workers.
    pub fn get(&self, slot: u32) -> (u64, u64) {
        let s = slot as usize;
        if s >= self.slots {
            return (0, 0);
        }
        (0..self.workers).fold((0, 0), |(p, b), w| {
            let i = (w * self.slots + s) * 2;
            (
                p + self.counters[i].load(Ordering::Relaxed),
                b + self.counters[i + 1].load(Ordering::Relaxed),
            )
        })
    }

    /// Zero `slot` before it is given to a new entry (control thread; a worker still on an
    /// older table version may add a last packet to it).
    pub fn reset(&self, slot: u32) {
        let s = slot as usize;
        if s < self.slots {
            for w in 0..self.workers {
                let i = (w * self.slots + s) * 2;
                self.counters[i].store(0, Ordering::Relaxed);
                self.counters[i + 1].store(0, Ordering::Relaxed);
            }
        }
    }
}

impl Default for PolicyStats {
    fn default() -> Self {
        PolicyStats::new(1, 256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::policy::{DIR_EGRESS, DIR_INGRESS};

    fn e(id: u32, dir: u8, proto: u8, port: u16, bits: u8, deny: bool, slot: u32) -> MapEntry {
        let key = PolicyKey::new(id, dir, proto, port, bits);
        MapEntry {
            key,
            entry: PolicyEntry::new(&key, deny, 0),
            slot,
        }
    }

    #[test]
    fn cilium_lookup_order() {
        let p = EndpointPolicy::new(
            1,
            300,
            [true, false],
            vec![
                e(500, DIR_INGRESS, 6, 80, 16, false, 10), // 500 → 80/TCP
                e(0, DIR_INGRESS, 6, 8080, 16, false, 11), // any → 8080/TCP
                e(600, DIR_INGRESS, 0, 0, 0, false, 12),   // 600 → ANY
                e(0, DIR_INGRESS, 6, 9000, 16, true, 13),  // deny any → 9000/TCP
                e(600, DIR_INGRESS, 6, 22, 16, true, 14),  // deny 600 → 22/TCP
                e(0, DIR_EGRESS, 0, 0, 0, false, 15),      // egress not enforced
            ],
        );
        use PolicyVerdict::*;
        assert_eq!(p.verdict(0, 500, 6, 80), Allow { slot: 10 });
        assert_eq!(
            p.verdict(0, 500, 6, 81),
            Deny {
                reason: DropReason::Policy,
                slot: NO_SLOT
            }
        );
        assert_eq!(
            p.verdict(0, 500, 17, 80),
            Deny {
                reason: DropReason::Policy,
                slot: NO_SLOT
            }
        );
        assert_eq!(
            p.verdict(0, 777, 6, 8080),
            Allow { slot: 11 },
            "L4-only wildcard"
        );
        assert_eq!(p.verdict(0, 600, 17, 53), Allow { slot: 12 }, "L3-only");
        // The identity's allow (ANY) loses to the wildcard deny on a specific port.
        assert_eq!(
            p.verdict(0, 600, 6, 9000),
            Deny {
                reason: DropReason::PolicyDeny,
                slot: 13
            }
        );
        // A deny for the identity is taken at once.
        assert_eq!(
            p.verdict(0, 600, 6, 22),
            Deny {
                reason: DropReason::PolicyDeny,
                slot: 14
            }
        );
        assert_eq!(
            p.verdict(1, 12345, 1, 8),
            Allow { slot: 15 },
            "allow-all fast path"
        );
    }

    #[test]
    fn stats_sum_stripes() {
        let s = PolicyStats::new(2, 8);
        s.count(0, 5, 100);
        s.count(1, 5, 50);
        s.count(1, 9, 50); // out of range: ignored
        assert_eq!(s.get(5), (2, 150));
        s.reset(5);
        assert_eq!(s.get(5), (0, 0));
    }
}
