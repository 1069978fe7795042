//! The tables the workers read, and how a new version reaches them.
//!
//! # Rules (read-copy-update with quiescent points, as OVS `ovs-rcu.h`)
//! - One writer ([`TableWriter`], owned by the control thread); many readers ([`TableReader`],
//!   one per worker). Readers only ever get `&Tables`.
//! - The writer builds a complete new [`Tables`] off to the side and publishes it with one
//!   pointer swap plus a generation bump (Release). It never blocks a reader.
//! - A reader checks the generation (one Acquire load) at its quiescent point — the top of its
//!   poll loop, between batches — and only there switches to the new version. A batch therefore
//!   sees one consistent version from start to end.
//! - The old version is handed back to the writer over a channel and freed on the control
//!   thread once every reader has let go (Arc count), never on a worker. Freeing a large
//!   table on a worker would be a stall.
//! - [`TableWriter::wait_applied`] tells the control plane when every reader runs a given
//!   generation (used to report how long a change takes to reach the datapath).
//!
//! The per-update cost on a reader is an Acquire load per loop, a short mutex hold (pointer
//! copy) only when the generation moved, and a channel send.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hashbrown::HashMap;

use crate::cow_map::CowMap;
use crate::ct::{Conntrack, CtSizes};
use crate::lb::LbTables;
use crate::lpm::{Lpm, Lpm4};
use crate::maps::{EndpointInfo, EndpointKey, IpcacheKey, MacAddr, RemoteEndpointInfo};
use crate::net::{Family, V4, V6};
use crate::policy::{PolicyStats, PolicyTables};
use crate::settings::RoutingMode;
use crate::shared_table::SharedTable;

/// Index of a device in every worker's port array (same order in all workers).
pub type PortId = u16;

/// What a device is to the pipeline: where a frame that arrives on it enters the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortRole {
    /// A pod's host-side veth: frames enter at `from-container`.
    #[default]
    Lxc,
    /// The node NIC towards the other nodes: frames enter at `from-overlay` (VXLAN) or
    /// `from-netdev` (native routing).
    Underlay,
}

/// One device a worker has a socket on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub ifname: String,
    pub ifindex: u32,
    /// The device's own MAC (for an lxc: the gateway MAC the pod talks to).
    pub mac: MacAddr,
    /// For an lxc, the endpoint behind it (its IPv4 and endpoint ID); for the underlay, the
    /// node's address on it and 0.
    pub endpoint_ip: Ipv4Addr,
    pub endpoint_id: u16,
    pub role: PortRole,
    pub mtu: u32,
}

impl Port {
    /// A pod's lxc device: the endpoint behind it is `ip` with endpoint ID `id`.
    pub fn lxc(ifname: &str, ifindex: u32, mac: MacAddr, ip: Ipv4Addr, id: u16, mtu: u32) -> Port {
        Port {
            ifname: ifname.into(),
            ifindex,
            mac,
            endpoint_ip: ip,
            endpoint_id: id,
            role: PortRole::Lxc,
            mtu,
        }
    }

    /// The node NIC, carrying the node's address `ip`.
    pub fn underlay(ifname: &str, ifindex: u32, mac: MacAddr, ip: Ipv4Addr, mtu: u32) -> Port {
        Port {
            ifname: ifname.into(),
            ifindex,
            mac,
            endpoint_ip: ip,
            endpoint_id: 0,
            role: PortRole::Underlay,
            mtu,
        }
    }
}

/// The layer-2 next hop towards a tunnel endpoint or native-routing gateway, resolved from
/// the kernel's neighbour table by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// Device to transmit on.
    pub port: PortId,
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// Inner destination MAC for frames encapsulated to this node (`overlay_mac`); `None`
    /// keeps the inner frame's own addresses, as Cilium does.
    pub inner_dst_mac: Option<MacAddr>,
}

/// Node-wide forwarding settings the pipeline reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlay {
    pub mode: RoutingMode,
    /// VXLAN UDP port, host order.
    pub tunnel_port: u16,
    /// This node's underlay address (source of encapsulated frames), wire order.
    pub node_ip: [u8; 4],
    /// The pods' gateway address: source of ICMP errors the node sends to pods.
    pub router_ip: [u8; 4],
    /// MTU of the underlay device (1500 on a node without one).
    pub underlay_mtu: u32,
}

impl Default for Overlay {
    fn default() -> Self {
        Overlay {
            mode: RoutingMode::Tunnel,
            tunnel_port: 8472,
            node_ip: [0; 4],
            router_ip: [0; 4],
            underlay_mtu: 1500,
        }
    }
}

/// A `cilium_lxc` entry plus what the workers derive from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointEntry {
    /// The Cilium value, byte-for-byte what the kernel map holds.
    pub info: EndpointInfo,
    /// The local port of the endpoint's lxc device; `None` for host entries.
    pub port: Option<PortId>,
}

/// `cilium_lb4_affinity`: (client, service) → backend ID, lifetime = last use + timeout.
pub type AffinityMap = SharedTable<1>;

/// Default size of the affinity map (`bpf-lb-map-max`).
pub const AFFINITY_MAX: usize = 65536;

/// One immutable version of everything the pipeline reads, plus handles on the two
/// datapath-written maps (conntrack, affinity), which are shared by every version: workers
/// write them in place ([`crate::shared_table`]).
#[derive(Debug, Clone)]
pub struct Tables {
    pub generation: u64,
    /// `cilium_lxc` (copy-on-write shards: publishing a change to another table, or to one
    /// endpoint among 64k, does not copy them all).
    pub endpoints: CowMap<EndpointKey, EndpointEntry>,
    /// Devices, indexed by [`PortId`]; `None` is a free slot (an endpoint removed at run
    /// time, or one not added yet).
    pub ports: Vec<Option<Port>>,
    /// `cilium_ipcache_v2` (IPv4 part). Behind an `Arc` so that publishing a change to
    /// another table does not copy it.
    pub ipcache: Arc<Lpm4<RemoteEndpointInfo>>,
    /// `cilium_ipcache_v2` (IPv6 part): the IPv6 arm of [`TableFamily::ipcache`] —
    /// dual-stack pods' `/128`s and remote nodes' IPv6 pod CIDRs. No step reads it yet (IPv6
    /// frames are not forwarded); the lookups already go through the family seam.
    pub ipcache6: Arc<Lpm<V6, RemoteEndpointInfo>>,
    /// Native routing: remote pod CIDR → gateway (the owning node's address), wire order.
    pub routes: Arc<Lpm4<[u8; 4]>>,
    /// Tunnel endpoint / gateway address (wire order) → layer-2 next hop.
    pub nexthops: HashMap<[u8; 4], NextHop>,
    /// Security identities this node accepts as a VXLAN source (VNI).
    pub identities: hashbrown::HashSet<u32>,
    pub overlay: Overlay,
    /// Services, backends, reverse NAT, Maglev tables.
    pub lb: Arc<LbTables>,
    /// `cilium_ct4_global` + `cilium_ct_any4_global`.
    pub ct: Arc<Conntrack>,
    pub affinity: Arc<AffinityMap>,
    /// Every local endpoint's `cilium_policy_v3_<id>` contents.
    pub policy: Arc<PolicyTables>,
    /// Per-entry and per-verdict policy counters (shared by every version, like `ct`).
    pub policy_stats: Arc<PolicyStats>,
}

impl Default for Tables {
    /// Empty tables with small datapath maps (the daemon sizes them from the config).
    fn default() -> Self {
        Tables {
            generation: 0,
            endpoints: CowMap::default(),
            ports: Vec::new(),
            ipcache: Arc::default(),
            ipcache6: Arc::default(),
            routes: Arc::default(),
            nexthops: HashMap::new(),
            identities: hashbrown::HashSet::new(),
            overlay: Overlay::default(),
            lb: Arc::default(),
            // Small: tests build many versions; the daemon sizes the real maps from the config
            // (`Datapath::size_datapath_maps`).
            ct: Arc::new(Conntrack::new(CtSizes { tcp: 256, any: 256 })),
            affinity: Arc::new(SharedTable::new(64)),
            policy: Arc::default(),
            policy_stats: Arc::default(),
        }
    }
}

/// The tables of one address family: the seam the pipeline's lookups are generic over
/// ([`Tables::endpoint`], [`Tables::ipcache`]), so an IPv6 step is the IPv4 one with `V6`.
/// `cilium_lxc` holds both families in one map (the key says which); the ipcache has one
/// LPM per family, as Cilium's LPM trie keys carry the family in their prefix.
pub trait TableFamily: Family {
    /// The `cilium_lxc` key of a local address.
    fn endpoint_key(ip: Self::Addr) -> EndpointKey;
    /// This family's part of `cilium_ipcache_v2`.
    fn ipcache(t: &Tables) -> &Lpm<Self, RemoteEndpointInfo>;
    /// The same, to replace in a version being built.
    fn ipcache_mut(t: &mut Tables) -> &mut Arc<Lpm<Self, RemoteEndpointInfo>>;
    /// The kernel map's key of a prefix of this family.
    fn ipcache_key(p: Self::Prefix) -> IpcacheKey;
}

impl TableFamily for V4 {
    #[inline]
    fn endpoint_key(ip: [u8; 4]) -> EndpointKey {
        EndpointKey::v4(ip)
    }
    #[inline]
    fn ipcache(t: &Tables) -> &Lpm<V4, RemoteEndpointInfo> {
        &t.ipcache
    }
    fn ipcache_mut(t: &mut Tables) -> &mut Arc<Lpm<V4, RemoteEndpointInfo>> {
        &mut t.ipcache
    }
    fn ipcache_key(p: crate::net::Ipv4Cidr) -> IpcacheKey {
        IpcacheKey::v4(p)
    }
}

impl TableFamily for V6 {
    #[inline]
    fn endpoint_key(ip: [u8; 16]) -> EndpointKey {
        EndpointKey::v6(ip)
    }
    #[inline]
    fn ipcache(t: &Tables) -> &Lpm<V6, RemoteEndpointInfo> {
        &t.ipcache6
    }
    fn ipcache_mut(t: &mut Tables) -> &mut Arc<Lpm<V6, RemoteEndpointInfo>> {
        &mut t.ipcache6
    }
    fn ipcache_key(p: crate::net::Ipv6Cidr) -> IpcacheKey {
        IpcacheKey::v6(p)
    }
}

impl Tables {
    /// `cilium_lxc` lookup by address (wire bytes) of family `F`.
    #[inline]
    pub fn endpoint<F: TableFamily>(&self, ip: F::Addr) -> Option<&EndpointEntry> {
        self.endpoints.get(&F::endpoint_key(ip))
    }

    /// `cilium_ipcache_v2` longest-prefix lookup by address (wire bytes) of family `F`.
    #[inline]
    pub fn ipcache<F: TableFamily>(&self, ip: F::Addr) -> Option<&RemoteEndpointInfo> {
        F::ipcache(self).lookup(ip)
    }

    /// The IPv4 arm of [`Tables::endpoint`].
    #[inline]
    pub fn endpoint_v4(&self, ip: [u8; 4]) -> Option<&EndpointEntry> {
        self.endpoint::<V4>(ip)
    }

    #[inline]
    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id as usize).and_then(Option::as_ref)
    }

    /// The IPv4 arm of [`Tables::ipcache`].
    #[inline]
    pub fn ipcache_v4(&self, ip: [u8; 4]) -> Option<&RemoteEndpointInfo> {
        self.ipcache::<V4>(ip)
    }
}

struct Cell {
    generation: AtomicU64,
    current: Mutex<Arc<Tables>>,
    /// Generation each reader runs, by reader index.
    seen: Vec<AtomicU64>,
}

/// The control thread's handle: publishes versions and frees retired ones.
#[derive(Debug)]
pub struct TableWriter {
    cell: Arc<Cell>,
    retired: Receiver<Arc<Tables>>,
    retire_tx: Sender<Arc<Tables>>,
    next_reader: usize,
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A worker's handle: `get()` is free; `quiesce()` at the top of each loop.
#[derive(Debug)]
pub struct TableReader {
    cell: Arc<Cell>,
    cur: Arc<Tables>,
    seen: u64,
    index: usize,
    retire: Sender<Arc<Tables>>,
}

impl TableWriter {
    /// A writer for up to `readers` readers, starting with `initial`.
    pub fn new(mut initial: Tables, readers: usize) -> Self {
        initial.generation = 1;
        let (retire_tx, retired) = crossbeam_channel::unbounded();
        TableWriter {
            cell: Arc::new(Cell {
                generation: AtomicU64::new(1),
                current: Mutex::new(Arc::new(initial)),
                seen: (0..readers).map(|_| AtomicU64::new(1)).collect(),
            }),
            retired,
            retire_tx,
            next_reader: 0,
        }
    }

    /// A reader for one worker. Panics if more readers are asked for than were sized.
    pub fn reader(&mut self) -> TableReader {
        let index = self.next_reader;
        assert!(
            index < self.cell.seen.len(),
            "more table readers than workers"
        );
        self.next_reader += 1;
        let cur = self.current();
        TableReader {
            seen: cur.generation,
            cur,
            cell: self.cell.clone(),
            index,
            retire: self.retire_tx.clone(),
        }
    }

    /// The version readers will pick up next.
    pub fn current(&self) -> Arc<Tables> {
        self.cell.current.lock().expect("table lock").clone()
    }

    /// Publish a new version; returns its generation. Never waits for readers.
    pub fn publish(&mut self, mut t: Tables) -> u64 {
        let generation = self.cell.generation.load(Ordering::Relaxed) + 1;
        t.generation = generation;
        let old = std::mem::replace(
            &mut *self.cell.current.lock().expect("table lock"),
            Arc::new(t),
        );
        // Release pairs with the reader's Acquire load in `quiesce`: a reader that sees the new
        // generation also sees the new pointer (and the tables it points to).
        self.cell.generation.store(generation, Ordering::Release);
        drop(old); // the writer's reference; readers still holding it return theirs later
        self.reclaim();
        generation
    }

    /// Free versions readers have let go of.
    pub fn reclaim(&mut self) {
        while let Ok(old) = self.retired.try_recv() {
            drop(old);
        }
    }

    /// Does every reader run `generation` or newer? Never waits (the control loop polls it
    /// for answers it holds back until a change is in force).
    pub fn is_applied(&mut self, generation: u64) -> bool {
        self.reclaim();
        self.cell.seen[..self.next_reader]
            .iter()
            .all(|s| s.load(Ordering::Acquire) >= generation)
    }

    /// Wait until every reader runs `generation` or newer; false on timeout.
    pub fn wait_applied(&mut self, generation: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.reclaim();
            let all = self.cell.seen[..self.next_reader]
                .iter()
                .all(|s| s.load(Ordering::Acquire) >= generation);
            if all {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl TableReader {
    /// The version this reader runs. Stable until the next `quiesce()`.
    #[inline]
    pub fn get(&self) -> &Tables {
        &self.cur
    }

    /// Quiescent point: switch to the newest version if there is one. Returns true if it did.
    #[inline]
    pub fn quiesce(&mut self) -> bool {
        // Acquire pairs with the writer's Release store in `publish`.
        let g = self.cell.generation.load(Ordering::Acquire);
        if g == self.seen {
            return false;
        }
        self.switch(g);
        true
    }

    #[cold]
    fn switch(&mut self, g: u64) {
        let new = self.cell.current.lock().expect("table lock").clone();
        let old = std::mem::replace(&mut self.cur, new);
        self.seen = g.max(self.cur.generation);
        // If the channel is gone the writer has exited and dropping here is fine.
        let _ = self.retire.send(old);
        self.cell.seen[self.index].store(self.seen, Ordering::Release);
    }

    /// Tell the writer this reader is idle at its quiescent point (so `wait_applied` does not
    /// wait for a worker that sleeps in poll(2)); the next `quiesce` still switches.
    pub fn idle(&mut self) {
        self.quiesce();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_endpoint(ip: [u8; 4], id: u16) -> Tables {
        let mut t = Tables::default();
        t.endpoints.insert(
            EndpointKey::v4(ip),
            EndpointEntry {
                info: EndpointInfo {
                    lxc_id: id,
                    ..Default::default()
                },
                port: Some(0),
            },
        );
        t
    }

    #[test]
    fn readers_switch_only_at_quiescent_points() {
        let mut w = TableWriter::new(with_endpoint([10, 0, 0, 1], 1), 2);
        let mut r1 = w.reader();
        let mut r2 = w.reader();
        let g = w.publish(with_endpoint([10, 0, 0, 2], 2));
        // Not yet: readers keep their version until they quiesce.
        assert!(r1.get().endpoint_v4([10, 0, 0, 1]).is_some());
        assert!(!w.wait_applied(g, Duration::from_millis(1)));
        assert!(r1.quiesce());
        assert!(r1.get().endpoint_v4([10, 0, 0, 2]).is_some());
        assert!(r1.get().endpoint_v4([10, 0, 0, 1]).is_none());
        assert!(!r1.quiesce());
        assert!(r2.quiesce());
        assert!(w.wait_applied(g, Duration::from_millis(100)));
    }

    #[test]
    fn old_versions_are_freed_on_the_writer() {
        let mut w = TableWriter::new(Tables::default(), 1);
        let mut r = w.reader();
        let first = Arc::downgrade(&w.current());
        w.publish(Tables::default());
        assert!(
            first.upgrade().is_some(),
            "reader still holds the first version"
        );
        r.quiesce();
        w.reclaim();
        assert!(
            first.upgrade().is_none(),
            "retired version freed by the writer"
        );
    }

    #[test]
    fn concurrent_reader_sees_whole_versions() {
        // A reader thread checks that every version it sees is internally consistent
        // (two endpoints with the same ID) while the writer publishes 2000 versions.
        let mut w = TableWriter::new(Tables::default(), 1);
        let mut r = w.reader();
        let h = std::thread::spawn(move || {
            let mut switches = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if r.quiesce() {
                    switches += 1;
                    let t = r.get();
                    let a = t.endpoint_v4([10, 0, 0, 1]).map(|e| e.info.lxc_id);
                    let b = t.endpoint_v4([10, 0, 0, 2]).map(|e| e.info.lxc_id);
                    assert_eq!(a, b, "torn version");
                    if a == Some(2000) {
                        return switches;
                    }
                }
            }
            panic!("reader never saw the last version");
        });
        for id in 1..=2000u16 {
            let mut t = with_endpoint([10, 0, 0, 1], id);
            t.endpoints.extend(
                with_endpoint([10, 0, 0, 2], id)
                    .endpoints
                    .iter()
                    .map(|(k, v)| (*k, *v)),
            );
            w.publish(t);
        }
        let switches = h.join().unwrap();
        assert!(switches >= 1);
    }

    /// The family seam: the same lookups answer for either family from its own arm, and
    /// an IPv4 address never matches an IPv6 entry that shares its first bytes.
    #[test]
    fn lookups_take_an_address_family() {
        let mut t = Tables::default();
        let v6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
        let v4 = [0xfd, 0, 0, 0];
        let entry = |id| EndpointEntry {
            info: EndpointInfo {
                lxc_id: id,
                ..Default::default()
            },
            port: Some(0),
        };
        t.endpoints.insert(EndpointKey::v6(v6), entry(6));
        assert_eq!(t.endpoint::<V6>(v6).map(|e| e.info.lxc_id), Some(6));
        assert!(t.endpoint::<V4>(v4).is_none(), "the key carries the family");
        t.endpoints.insert(EndpointKey::v4(v4), entry(4));
        assert_eq!(t.endpoint_v4(v4).map(|e| e.info.lxc_id), Some(4));

        let mut lpm6 = Lpm::<V6, RemoteEndpointInfo>::new();
        let net = crate::net::Ipv6Cidr::new("fd00::".parse().unwrap(), 64);
        lpm6.insert(net, RemoteEndpointInfo::local(7777));
        t.ipcache6 = Arc::new(lpm6);
        assert_eq!(t.ipcache::<V6>(v6).map(|r| r.sec_identity), Some(7777));
        assert!(t.ipcache::<V4>(v4).is_none());
        let mut other = v6;
        other[8] = 1;
        other[12] = 9;
        assert_eq!(t.ipcache::<V6>(other).map(|r| r.sec_identity), Some(7777));
        other[7] = 1;
        assert!(t.ipcache::<V6>(other).is_none(), "outside the /64");
    }
}
