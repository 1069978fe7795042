//! Security identities.
//!
//! Reserved identities use Cilium's numbers. Endpoint identities are derived from the
//! security-relevant labels deterministically, so the same label set gets the same identity on
//! every node without an allocator service: FNV-1a over the sorted `source:key=value` list,
//! folded into the cluster-local range 256..=65535. Collisions inside one node's config are
//! resolved by linear probing in label order and reported by [`allocate`]'s caller in the
//! endpoint list. (Identity-based policy arrives with the policy work; this module gives
//! endpoints their `sec_id` now.)

use std::collections::BTreeMap;

pub use abi::identity::*;

/// A cluster-wide identity allocator (the kvstore's): the number of a label set, the same on
/// every node. Called on the control loop when a pod arrives; bounded in time by the
/// implementation.
pub trait Allocator: Send + std::fmt::Debug {
    /// The identity for `labels` (sorted `source:key=value` strings), allocating one when
    /// the cluster has none.
    ///
    /// # Errors
    /// Why none could be had (the store unreachable, the range full), for the caller's error.
    fn allocate(&mut self, labels: &[String]) -> Result<u32, String>;

    /// The labels the cluster's source has for this node's pod `namespace/name` (the
    /// Kubernetes API's Pod object), which win over those it is added with; `None` when the
    /// source has no such pod (or keeps no labels).
    fn pod_labels(&self, _namespace: &str, _name: &str) -> Option<BTreeMap<String, String>> {
        None
    }
}

/// The label strings Cilium would show for a pod: `k8s:key=value` plus the namespace label.
pub fn pod_labels(namespace: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect();
    out.push(format!("k8s:io.kubernetes.pod.namespace={namespace}"));
    out.sort();
    out
}

/// The deterministic identity of a label set (before collision probing).
pub fn identity_of(labels: &[String]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for l in labels {
        for b in l.bytes().chain(std::iter::once(0)) {
            h ^= b as u32;
            h = h.wrapping_mul(0x01000193);
        }
    }
    MIN_ALLOCATED + h % (MAX_ALLOCATED - MIN_ALLOCATED + 1)
}

/// The numbers a label set may get, in the order they are tried: its label hash, then
/// upward through the cluster-local range, wrapping once around it. Every allocator
/// (label hash, kvstore, Kubernetes) probes this one sequence, so a set gets the same
/// number from each whenever nothing collides.
pub fn candidates(labels: &[String]) -> impl Iterator<Item = u32> {
    let first = identity_of(labels);
    (0..CAPACITY as u32).map(move |i| {
        MIN_ALLOCATED + (first - MIN_ALLOCATED + i) % (MAX_ALLOCATED - MIN_ALLOCATED + 1)
    })
}

/// How many distinct label sets the cluster-local range holds.
pub const CAPACITY: usize = (MAX_ALLOCATED - MIN_ALLOCATED + 1) as usize;

/// Identities for several label sets; equal sets share one, different sets never collide.
/// The result does not depend on the order of `sets` (collisions are probed in label-set
/// order), so nodes that know the same set of pods agree on every number. At most
/// [`CAPACITY`] distinct sets get one (`Config::validate` refuses more); any beyond get
/// [`RESERVED_UNKNOWN`] instead of probing forever.
pub fn allocate(sets: &[Vec<String>]) -> Vec<u32> {
    allocate_with(sets, &BTreeMap::new())
}

/// [`allocate`], with the label sets of `fixed` given their numbers there (a cluster-wide
/// allocator's, e.g. the kvstore's): the others are probed around them.
pub fn allocate_with(sets: &[Vec<String>], fixed: &BTreeMap<Vec<String>, u32>) -> Vec<u32> {
    let unique: std::collections::BTreeSet<&[String]> = sets.iter().map(|s| s.as_slice()).collect();
    let mut by_set: BTreeMap<&[String], u32> = BTreeMap::new();
    let mut used = vec![false; MAX_ALLOCATED as usize + 1];
    let mut taken = 0usize;
    for id in fixed.values() {
        if let Some(u) = used.get_mut(*id as usize)
            && !*u
        {
            *u = true;
            taken += 1;
        }
    }
    for s in unique {
        if let Some(id) = fixed.get(s) {
            by_set.insert(s, *id);
            continue;
        }
        if taken == CAPACITY {
            by_set.insert(s, RESERVED_UNKNOWN);
            continue;
        }
        let id = candidates(s)
            .find(|id| !used[*id as usize])
            .expect("fewer than CAPACITY numbers are taken");
        used[id as usize] = true;
        taken += 1;
        by_set.insert(s, id);
    }
    sets.iter().map(|s| by_set[s.as_slice()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sibling of issue #11 defect 3: more distinct label sets than the identity range
    /// holds made the probe loop forever. Every set up to the range gets a distinct number;
    /// the ones past it get 0, at once.
    #[test]
    fn allocation_ends_when_the_range_is_full() {
        let sets: Vec<Vec<String>> = (0..CAPACITY + 3)
            .map(|i| vec![format!("k8s:n={i}")])
            .collect();
        let t = std::time::Instant::now();
        let ids = allocate(&sets);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            t.elapsed()
        );
        let given: std::collections::BTreeSet<u32> =
            ids.iter().copied().filter(|&i| i != 0).collect();
        assert_eq!(given.len(), CAPACITY, "every number of the range used once");
        assert_eq!(ids.iter().filter(|&&i| i == 0).count(), 3);
    }

    /// The probe sequence starts at the label hash, covers the range once and wraps.
    #[test]
    fn candidates_cover_the_range_once_from_the_hash() {
        let l = vec!["k8s:app=web".to_string()];
        let c: Vec<u32> = candidates(&l).collect();
        assert_eq!(c.len(), CAPACITY);
        assert_eq!(c[0], identity_of(&l));
        let at = c.iter().position(|&i| i == MAX_ALLOCATED).unwrap();
        if at + 1 < c.len() {
            assert_eq!(c[at + 1], MIN_ALLOCATED, "wraps");
        }
        let set: std::collections::BTreeSet<u32> = c.into_iter().collect();
        assert_eq!(set.len(), CAPACITY);
    }

    /// Label sets a cluster-wide allocator numbered keep those numbers; the others are
    /// probed past them.
    #[test]
    fn fixed_identities_are_kept_and_avoided() {
        let a = vec!["k8s:app=a".to_string()];
        let b = vec!["k8s:app=b".to_string()];
        let hb = identity_of(&b);
        let fixed = BTreeMap::from([
            (a.clone(), 70_000u32.min(MAX_ALLOCATED)),
            (vec!["k8s:x=y".into()], hb),
        ]);
        let ids = allocate_with(&[a.clone(), b.clone()], &fixed);
        assert_eq!(ids[0], MAX_ALLOCATED);
        assert_ne!(
            ids[1], hb,
            "b's hash is taken by a fixed set: probed past it"
        );
        assert_eq!(
            ids[1],
            if hb == MAX_ALLOCATED {
                MIN_ALLOCATED
            } else {
                hb + 1
            }
        );
    }

    #[test]
    fn same_labels_same_identity_everywhere() {
        let a = pod_labels("default", &BTreeMap::from([("app".into(), "web".into())]));
        let b = pod_labels("default", &BTreeMap::from([("app".into(), "web".into())]));
        let c = pod_labels("prod", &BTreeMap::from([("app".into(), "web".into())]));
        assert_eq!(identity_of(&a), identity_of(&b));
        assert_ne!(identity_of(&a), identity_of(&c));
        let ids = allocate(&[a.clone(), c.clone(), b.clone()]);
        assert_eq!(ids[0], ids[2]);
        let rev = allocate(&[c.clone(), b, a.clone()]);
        assert_eq!((rev[0], rev[2]), (ids[1], ids[0]), "order-independent");
        assert_ne!(ids[0], ids[1]);
        assert!(
            ids.iter()
                .all(|&i| (MIN_ALLOCATED..=MAX_ALLOCATED).contains(&i))
        );
    }
}
