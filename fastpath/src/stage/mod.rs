//! The pipeline, over byte buffers, in Cilium's stage order.
//!
//! Entry points by the role of the port a frame arrived on ([`process`]):
//! - **lxc** → `from-container` (bpf_lxc `cil_from_container`): validate L2 → ARP responder or
//!   IPv4 → validate L3 (and L4 headers, which conntrack will key on) → source-address check →
//!   `cilium_lxc` lookup of the destination: a local pod gets local delivery; otherwise the
//!   `cilium_ipcache_v2` lookup decides: encapsulate to the tunnel endpoint (tunnel mode) or
//!   route to the owning node (native routing).
//! - **underlay** → `from-overlay` (bpf_overlay `cil_from_overlay`) for VXLAN: validate the
//!   outer headers and the VXLAN header, take the source identity from the VNI, refuse the
//!   host identity and unknown identities, decapsulate, `cilium_lxc` lookup, local delivery;
//!   or `from-netdev` (bpf_host) for natively routed frames to a local pod.
//! - local delivery (`ipv4_local_delivery`, the `to-container` step): conntrack (ingress),
//!   reverse NAT of service replies, TTL−1, MACs.
//!
//! Services ([`lb`]) and conntrack sit where Cilium has them: on `from-container`, after the
//! source check, the frontend lookup (`cilium_lb4_services_v2`) and DNAT (`lb4_local`), then
//! the egress conntrack lookup, then the forwarding decision; on `from-netdev`, NodePort and
//! ExternalIP frontends (`nodeport_lb4`) with SNAT to the node for remote backends; replies
//! are reverse-translated where their conntrack entry says so. Policy slots in after
//! conntrack.
//!
//! One Cilium step per file, called in one direction only (no cycles):
//!
//! | file | step | direction |
//! |---|---|---|
//! | [`flow`] | parse once: IPv4 + L4 header checked, summarised in [`flow::Ip`] | — |
//! | [`from_container`] | `cil_from_container`: ARP responder, source checks, then the walk | egress |
//! | [`from_netdev`] | `cil_from_netdev`: outer header checks, NodePort, native routing in | ingress |
//! | [`from_overlay`] | `cil_from_overlay`: VNI identity, decap, to the pod | ingress |
//! | [`to_container`] | `ipv4_local_delivery` + the destination's ingress policy | ingress |
//! | [`forward`] | encap / native route, and the one TTL+MAC rewrite (`l3_forward`) | the caller's |
//! | [`ct`] | conntrack lookups and creation | — |
//! | [`policy`] | the policy verdict | the policy direction |
//! | [`lb`] | `lb4_local`: frontend → backend, DNAT, reverse NAT | egress |
//! | [`nodeport`] | `nodeport_lb4`, SNAT, NodePort replies | ingress (a local backend's reply: egress) |
//! | [`icmp`] | ICMP errors (fragmentation needed, port unreachable) | the caller's |
//!
//! Calls go down the table: entry points (`from_*`) → `to_container` / `forward` /
//! `nodeport` / `lb` → `ct` / `policy` / `icmp` / `flow`. The direction a drop or a
//! forwarded frame is counted in is fixed by the entry point that took the frame (a step
//! file's `DIR`) and passed down to the shared steps, never guessed at the bottom.
//!
//! A stage reads tables, rewrites headers in place (growing or shrinking the frame at the
//! front inside its headroom) and returns a [`Verdict`]; it never sends or frees a frame. The
//! worker acts on verdicts in one place, where drops are counted (Cilium's single `out:`
//! exit). Nothing here allocates, locks or logs.

pub mod ct;
pub mod flow;
pub mod forward;
pub mod from_container;
pub mod from_netdev;
pub mod from_overlay;
pub mod icmp;
pub mod lb;
pub mod nodeport;
pub mod policy;
pub mod to_container;

use abi::{DropReason, MetricDir};
use tables::{PortId, PortRole, Tables};

use crate::wire::Buf;

pub use from_container::from_container;
pub use from_netdev::from_netdev;

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Local delivery from a pod to a pod of this node: transmit on `port` (the frame was
    /// rewritten in place).
    Deliver { port: PortId },
    /// Decapsulated (VXLAN from another node) and delivered to the pod behind `port`.
    Decap { port: PortId },
    /// Natively routed from another node and delivered to the pod behind `port`.
    RoutedIn { port: PortId },
    /// Encapsulated (VXLAN) towards another node: transmit on the underlay `port`; counted
    /// as forwarded in `dir` (egress for a pod's packet, ingress for NodePort traffic from
    /// outside to a remote backend).
    Encap { port: PortId, dir: MetricDir },
    /// Routed out of the underlay `port` unencapsulated (native routing, or a NodePort reply
    /// to its client); forwarded in `dir`.
    Route { port: PortId, dir: MetricDir },
    /// An ARP reply built in place: transmit back on the port it came from.
    ArpReply { port: PortId },
    /// An ICMP error built in place from the frame (fragmentation needed): transmit back on
    /// `port`; the original counts as dropped for `reason` in `dir` (egress when a pod sent
    /// it, ingress when it came from outside).
    IcmpReply {
        port: PortId,
        reason: DropReason,
        dir: MetricDir,
    },
    /// Drop, counted under Cilium's reason and metrics direction.
    Drop { reason: DropReason, dir: MetricDir },
}

impl Verdict {
    /// The port to transmit on, or `None` for a drop.
    #[inline]
    pub fn tx_port(&self) -> Option<PortId> {
        match *self {
            Verdict::Deliver { port }
            | Verdict::Decap { port }
            | Verdict::RoutedIn { port }
            | Verdict::Encap { port, .. }
            | Verdict::Route { port, .. }
            | Verdict::ArpReply { port }
            | Verdict::IcmpReply { port, .. } => Some(port),
            Verdict::Drop { .. } => None,
        }
    }
}

/// Per-worker mutable state the pipeline needs (no sharing, no atomics).
#[derive(Debug)]
pub struct Scratch {
    /// IPv4 identification for outer headers.
    pub ip_id: u16,
    /// Seconds of CLOCK_MONOTONIC, read once per batch by the worker (conntrack lifetimes).
    pub now: u32,
    /// xorshift64* state for random backend selection.
    pub rng: u64,
    /// This worker's index: its stripe of the policy counters.
    pub worker: usize,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            ip_id: 0,
            now: 1,
            rng: 0x9e37_79b9_7f4a_7c15,
            worker: 0,
        }
    }
}

impl Scratch {
    /// A seeded scratch (fixtures and benchmarks that want a reproducible sequence).
    pub fn seeded(seed: u64) -> Scratch {
        Scratch {
            rng: seed | 1,
            ..Default::default()
        }
    }

    /// The scratch of worker `worker`, its random state seeded from the kernel's entropy
    /// (getrandom(2)), so "random" backend choices and SNAT ports differ between workers,
    /// restarts and nodes. Should getrandom fail (it does not on Linux ≥ 3.17 once the pool
    /// is ready), the clock, the process ID and the worker index still make the seed
    /// different per process.
    pub fn for_worker(worker: usize) -> Scratch {
        let mut b = [0u8; 8];
        let seed = match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                t ^ (std::process::id() as u64) << 32
            }
        };
        let mut s = Scratch::seeded(seed ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        s.worker = worker;
        s
    }

    /// The next pseudo-random number (xorshift64*).
    #[inline]
    pub fn random(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// A drop for `reason`, counted in `dir`: the direction of the step that refused the frame
/// (each step file names its own, as each Cilium program has its own `METRIC_*`).
#[inline]
pub(crate) fn drop(reason: DropReason, dir: MetricDir) -> Verdict {
    Verdict::Drop { reason, dir }
}

/// Run a frame that arrived on `in_port` through the pipeline.
#[inline]
pub fn process(b: &mut Buf<'_>, in_port: PortId, t: &Tables, s: &mut Scratch) -> Verdict {
    match t.port(in_port).map(|p| p.role) {
        Some(PortRole::Lxc) => from_container::from_container(b, in_port, t, s),
        Some(PortRole::Underlay) => from_netdev::from_netdev(b, in_port, t, s),
        None => drop(DropReason::UnknownSender, MetricDir::Egress),
    }
}

#[cfg(test)]
mod tests;
