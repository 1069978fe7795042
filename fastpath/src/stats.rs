//! Per-worker counters.
//!
//! Each counter has exactly one writer (its worker), so an increment is a Relaxed load and
//! store — a plain `mov` on x86, no locked instruction — and readers (the control thread)
//! see a value at most a few nanoseconds old. Layout follows `cilium_metrics`: (reason,
//! direction) → packets, bytes; reason 0 is "forwarded".

use std::sync::atomic::{AtomicU64, Ordering};

use abi::{DropReason, MetricDir};

/// A single-writer counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Only the owning worker calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// Set a gauge. Only the owning worker calls this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one device as seen by one worker (one rx queue).
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Frames dropped because the device's TX ring was full.
    pub tx_ring_full: Counter,
    /// TX kicks (sendto) issued.
    pub tx_kicks: Counter,
}

impl PortCounters {
    /// Zero them (the worker, when a port slot is given to a new device).
    pub fn reset(&self) {
        for c in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.tx_packets,
            &self.tx_bytes,
            &self.tx_ring_full,
            &self.tx_kicks,
        ] {
            c.set(0);
        }
    }
}

const REASONS: usize = 256;
const DIRS: usize = 3;

/// All counters of one worker.
#[derive(Debug)]
pub struct WorkerCounters {
    pub ports: Vec<PortCounters>,
    /// `[reason][dir]` packets and bytes; reason 0 = forwarded.
    metrics_pkts: Box<[Counter]>,
    metrics_bytes: Box<[Counter]>,
    pub arp_replies: Counter,
    /// ICMP errors sent back to pods (fragmentation needed).
    pub icmp_errors: Counter,
    /// Frames encapsulated towards / decapsulated from other nodes, and natively routed.
    pub encapsulated: Counter,
    pub decapsulated: Counter,
    pub routed: Counter,
    /// Loop iterations, and how many of them received nothing.
    pub loops: Counter,
    pub idle_loops: Counter,
    /// Times the worker slept in poll(2).
    pub sleeps: Counter,
    /// RX batch sizes, log2 buckets: [1], [2-3], [4-7], [8-15], [16-31], [32-63], [64+].
    pub batch_hist: [Counter; 7],
    /// Loop iterations by the time from the previous one's start (a stall shows here: the
    /// worker preempted, or a slow kick): < 10 µs, 10–100 µs, 100 µs–1 ms, 1–10 ms, ≥ 10 ms.
    /// A loop that follows a sleep in poll(2) is not counted.
    pub loop_hist: [Counter; 5],
    /// The longest such loop so far, ns.
    pub longest_loop_ns: Counter,
    /// Descriptors the kernel gave us that failed the bounds check.
    pub invalid_descs: Counter,
    /// Table versions this worker switched to.
    pub table_switches: Counter,
    /// Gauges, refreshed at quiescent points: sockets served, UMEM chunks in all, in the
    /// pool, and on the sockets' fill and TX rings. When nothing is in flight,
    /// `umem_free + umem_in_rings = umem_frames`; anything less is chunks the kernel holds
    /// (taken from a fill ring, not yet received) — or leaked.
    pub sockets: Counter,
    pub umem_frames: Counter,
    pub umem_free: Counter,
    pub umem_in_rings: Counter,
    /// Chunks taken back from sockets closed at run time (`Umem::reclaim`).
    pub frames_reclaimed: Counter,
}

impl WorkerCounters {
    pub fn new(ports: usize) -> Self {
        WorkerCounters {
            ports: (0..ports).map(|_| PortCounters::default()).collect(),
            metrics_pkts: (0..REASONS * DIRS).map(|_| Counter::default()).collect(),
            metrics_bytes: (0..REASONS * DIRS).map(|_| Counter::default()).collect(),
            arp_replies: Counter::default(),
            icmp_errors: Counter::default(),
            encapsulated: Counter::default(),
            decapsulated: Counter::default(),
            routed: Counter::default(),
            loops: Counter::default(),
            idle_loops: Counter::default(),
            sleeps: Counter::default(),
            batch_hist: Default::default(),
            loop_hist: Default::default(),
            longest_loop_ns: Counter::default(),
            invalid_descs: Counter::default(),
            table_switches: Counter::default(),
            sockets: Counter::default(),
            umem_frames: Counter::default(),
            umem_free: Counter::default(),
            umem_in_rings: Counter::default(),
            frames_reclaimed: Counter::default(),
        }
    }

    #[inline]
    fn idx(reason: u8, dir: MetricDir) -> usize {
        reason as usize * DIRS + dir.index()
    }

    #[inline]
    pub fn forwarded(&self, dir: MetricDir, bytes: usize) {
        self.metrics_pkts[Self::idx(0, dir)].add(1);
        self.metrics_bytes[Self::idx(0, dir)].add(bytes as u64);
    }

    #[inline]
    pub fn dropped(&self, reason: DropReason, dir: MetricDir, bytes: usize) {
        self.metrics_pkts[Self::idx(reason.code(), dir)].add(1);
        self.metrics_bytes[Self::idx(reason.code(), dir)].add(bytes as u64);
    }

    /// Count a frame of `bytes` by what the pipeline decided: every verdict's counters in one
    /// place. Forwarded frames count in the direction their verdict carries (a same-node
    /// delivery is egress from one pod and ingress to the other: both); an ICMP error sent
    /// back counts its original as dropped; a drop under its reason and direction.
    #[inline]
    pub fn account(&self, v: &crate::stage::Verdict, bytes: usize) {
        use crate::stage::Verdict;
        match *v {
            Verdict::Deliver { .. } => {
                self.forwarded(MetricDir::Egress, bytes);
                self.forwarded(MetricDir::Ingress, bytes);
            }
            Verdict::Decap { .. } => {
                self.decapsulated.add(1);
                self.forwarded(MetricDir::Ingress, bytes);
            }
            Verdict::RoutedIn { .. } => self.forwarded(MetricDir::Ingress, bytes),
            Verdict::Encap { dir, .. } => {
                self.encapsulated.add(1);
                self.forwarded(dir, bytes);
            }
            Verdict::Route { dir, .. } => {
                self.routed.add(1);
                self.forwarded(dir, bytes);
            }
            Verdict::ArpReply { .. } => self.arp_replies.add(1),
            Verdict::IcmpReply { reason, dir, .. } => {
                self.icmp_errors.add(1);
                self.dropped(reason, dir, bytes);
            }
            Verdict::Drop { reason, dir } => self.dropped(reason, dir, bytes),
        }
    }

    #[inline]
    pub fn batch(&self, n: usize) {
        if n > 0 {
            let b = (usize::BITS - 1 - n.leading_zeros()).min(6) as usize;
            self.batch_hist[b].add(1);
        }
    }

    /// A loop took `ns` (top to top).
    #[inline]
    pub fn loop_time(&self, ns: u64) {
        let b = match ns {
            0..10_000 => 0,
            10_000..100_000 => 1,
            100_000..1_000_000 => 2,
            1_000_000..10_000_000 => 3,
            _ => 4,
        };
        self.loop_hist[b].add(1);
        if ns > self.longest_loop_ns.get() {
            self.longest_loop_ns.set(ns);
        }
    }

    /// (reason code, dir, packets, bytes) for every non-zero metric; reason 0 = forwarded.
    pub fn metrics(&self) -> Vec<(u8, MetricDir, u64, u64)> {
        let mut out = Vec::new();
        for r in 0..REASONS {
            for d in MetricDir::ALL {
                let i = Self::idx(r as u8, d);
                let p = self.metrics_pkts[i].get();
                if p > 0 {
                    out.push((r as u8, d, p, self.metrics_bytes[i].get()));
                }
            }
        }
        out
    }

    pub fn drop_count(&self, reason: DropReason, dir: MetricDir) -> u64 {
        self.metrics_pkts[Self::idx(reason.code(), dir)].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_and_hist() {
        let c = WorkerCounters::new(1);
        c.forwarded(MetricDir::Egress, 60);
        c.dropped(DropReason::Invalid, MetricDir::Egress, 20);
        c.dropped(DropReason::Invalid, MetricDir::Egress, 20);
        assert_eq!(
            c.metrics(),
            vec![
                (0, MetricDir::Egress, 1, 60),
                (134, MetricDir::Egress, 2, 40)
            ]
        );
        c.batch(1);
        c.batch(32);
        c.batch(33);
        assert_eq!(c.batch_hist[0].get(), 1);
        assert_eq!(c.batch_hist[5].get(), 2);
        for ns in [500, 9_999, 10_000, 250_000, 5_000_000, 40_000_000] {
            c.loop_time(ns);
        }
        let h: Vec<u64> = c.loop_hist.iter().map(|b| b.get()).collect();
        assert_eq!(h, [2, 1, 1, 1, 1]);
        assert_eq!(c.longest_loop_ns.get(), 40_000_000);
    }
}
