//! fastpath's XDP steering program and its loader.
//!
//! The program (`src/bpf/fp_xdp.c`, built by `build.rs` with clang `-target bpf`, BTF
//! included) is embedded in this crate. [`Steering`] loads it once per fastpath process, attaches
//! it to every owned device (native where the driver can, generic otherwise, as asked), holds
//! the `fp_xsks` XSKMAP that sends frames to the worker sockets, and is the kernel side of
//! `cilium_lxc` (it implements [`control::datapath::KernelMaps`]).
//!
//! Links are bpf_links: they detach when the [`Steering`] is dropped or the process dies, so a
//! crashed fastpath never leaves devices black-holing traffic.
#![deny(unsafe_code)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, HashOfMaps, MapData, PerCpuArray, XskMap};
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId};
use aya::{Ebpf, EbpfLoader};
use control::config::RoutingMode;
use control::config::XdpMode;
use control::kernel::{EndpointMap, IpcacheMap, LbMaps, MapWriteError, OverlayMap, PolicyMaps};
use control::maps::lb::{
    AFFINITY_MATCH_MAP, AffinityMatchKey, BACKENDS_MAP, Lb4Backend, Lb4Key, Lb4Service, REVNAT_MAP,
    RevNat, RevNat4Value, SERVICES_MAP,
};
use control::maps::policy::{PolicyEntry, PolicyKey};
use control::maps::{EndpointInfo, EndpointKey, IpcacheKey, RemoteEndpointInfo};
use control::net::Ipv4Cidr;
use control::tables::Overlay;

/// The compiled program object.
pub static FP_XDP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fp_xdp.o"));

/// The tc datapath object (`src/bpf/fp_tc.c`): every map of it is opened by its pin.
pub static FP_TC_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fp_tc.o"));

/// Must match `FP_MAX_QUEUES` / `FP_MAX_DEVS` in fp_xdp.c.
pub const MAX_QUEUES: u32 = 64;
pub const MAX_DEVS: u32 = 4096;

/// Device roles (`struct fp_dev.role`).
pub const ROLE_LXC: u32 = 1;
pub const ROLE_UNDERLAY: u32 = 2;

/// Counter slots of `fp_xdp_stats`, with the names `fastpath status` prints.
pub const XDP_STAT_NAMES: [&str; 10] = [
    "steered",
    "passed_not_endpoint",
    "passed_arp",
    "passed_other_l3",
    "passed_unknown_device",
    "steered_remote_pod",
    "steered_overlay",
    "passed_underlay",
    "steered_service",
    "passed_no_socket",
];

#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program {prog}: {source}")]
    Program {
        prog: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching XDP to {dev} in {mode} mode: {source}")]
    Attach {
        dev: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning {map} at {path}: {source}")]
    Pin {
        map: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{0}")]
    Limit(String),
}

/// What a device actually got: XDP (native or generic) steering to the workers, or the
/// tc datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
    Tc,
}

impl AttachedMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
            AttachedMode::Tc => "tc",
        }
    }

    /// `xdp` or `tc`: which datapath handles what the device receives.
    pub fn datapath(self) -> Datapath {
        match self {
            AttachedMode::Tc => Datapath::Tc,
            _ => Datapath::Xdp,
        }
    }
}

pub use control::config::DatapathChoice as Datapath;

/// A device's attachment: an XDP link, or a tc (TCX) link of the named program (a link is
/// detached through the program that made it).
#[derive(Debug)]
enum DevLink {
    Xdp(XdpLinkId),
    Tc(&'static str, SchedClassifierLinkId),
}

/// A device to attach: its name, index, port number (`slot`: the workers' port, its XSKMAP
/// slot), role ([`ROLE_LXC`], [`ROLE_UNDERLAY`]) and MAC.
#[derive(Debug, Clone, Copy)]
pub struct PortSpec<'a> {
    pub ifname: &'a str,
    pub ifindex: u32,
    pub slot: u32,
    pub role: u32,
    pub mac: [u8; 6],
}

/// One attached device.
#[derive(Debug, Clone)]
pub struct AttachedDevice {
    pub ifname: String,
    pub ifindex: u32,
    pub slot: u32,
    /// 1 = lxc, 2 = underlay.
    pub role: u32,
    pub mode: AttachedMode,
    /// Why native was not used, when `auto` fell back to generic; why XDP was not used,
    /// when the datapath `auto` fell back to tc.
    pub fallback_reason: Option<String>,
}

/// The loaded steering program with its maps and links.
#[derive(Debug)]
pub struct Steering {
    /// The object, holding the program only: its maps were taken into `maps`.
    ebpf: Ebpf,
    /// The maps: created, pinned and written independently of any attachment.
    pub maps: MapSet,
    devices: Vec<AttachedDevice>,
    links: Vec<DevLink>,
    /// The tc datapath's object, once [`Steering::enable_tc`] loaded it.
    tc: Option<TcPrograms>,
}

/// The maps pinned (all of the set).
pub const PINNED: &[&str] = &[
    "cilium_lxc",
    "cilium_ipcache_v2",
    "cilium_lb4_services_v2",
    "cilium_lb4_backends_v3",
    "cilium_lb4_reverse_nat",
    "fp_lb_backend_addrs",
    "fp_config",
    "fp_devs",
    "fp_xsks",
    "fp_xdp_stats",
    "fp_policy",
    "fp_nexthops",
    "fp_identities",
    "fp_ports",
    "cilium_lb4_maglev",
    "cilium_lb_affinity_match",
    "fp_lb_config",
    "fp_routes",
];

/// The maps whose pins outlive the process: the service and backend IDs a run gave out,
/// which the next run reads ([`read_kept_lb`]) to renumber the conntrack and affinity
/// entries it restores — as Cilium's agent restores its service IDs from its pinned maps.
pub const KEPT_PINS: &[&str] = &[SERVICES_MAP, BACKENDS_MAP];

/// The service and backend IDs a previous run of the node left pinned under `dir` (see
/// [`KEPT_PINS`]); `None` if it left none. Read before [`MapSet::pin`] replaces the pins.
///
/// # Errors
/// A pin exists but cannot be opened or read as the map it names.
pub fn read_kept_lb(dir: &Path) -> Result<Option<control::datapath::LbIds>, SteeringError> {
    let (sp, bp) = (dir.join(SERVICES_MAP), dir.join(BACKENDS_MAP));
    if !sp.exists() || !bp.exists() {
        return Ok(None);
    }
    let svc: BpfHashMap<MapData, Lb4Key, Lb4Service> = pinned_hash(&sp, SERVICES_MAP)?;
    let be: BpfHashMap<MapData, u32, Lb4Backend> = pinned_hash(&bp, BACKENDS_MAP)?;
    let mut ids = control::datapath::LbIds::default();
    for r in svc.iter() {
        let (k, v) = r.map_err(|source| SteeringError::Map {
            map: SERVICES_MAP,
            source,
        })?;
        if k.backend_slot == 0 {
            ids.services.push((k, v.rev_nat().0));
        }
    }
    for r in be.iter() {
        let (id, b) = r.map_err(|source| SteeringError::Map {
            map: BACKENDS_MAP,
            source,
        })?;
        ids.backends.push((id, b));
    }
    Ok(Some(ids))
}

/// The hash map pinned at `p` (named `map` in errors).
fn pinned_hash<K: aya::Pod, V: aya::Pod>(
    p: &Path,
    map: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, SteeringError> {
    let d = MapData::from_pin(p).map_err(|source| SteeringError::Map { map, source })?;
    BpfHashMap::try_from(aya::maps::Map::HashMap(d))
        .map_err(|source| SteeringError::Map { map, source })
}

/// The map set: every map of the object (Cilium's `cilium_*` and fastpath's `fp_*`), taken
/// out of the loaded object so they live on their own — created and opened by loading the
/// object, pinned under bpffs ([`MapSet::pin`]), written through the per-family traits of
/// `control::kernel`. Attaching programs is [`Steering`]'s business; a second program (the
/// tc fallback) shares these maps by their pins (docs/decisions.md "Kernel maps").
#[derive(Debug)]
pub struct MapSet {
    maps: std::collections::HashMap<String, aya::maps::Map>,
    pins: Vec<PathBuf>,
    /// `fp_xsks` keys set.
    xsks: std::collections::BTreeSet<u32>,
    /// The per-endpoint policy maps (`cilium_policy_v3_<id>`), by endpoint ID: also in
    /// `fp_policy`, and pinned under `pin_dir` when there is one.
    policy: std::collections::HashMap<u16, PolicyTrie>,
    pin_dir: Option<PathBuf>,
}

/// One endpoint's `cilium_policy_v3_<id>`: aya's LPM key is the prefix length, then the
/// key's other 8 bytes (identity, direction, protocol, port).
type PolicyTrie = LpmTrie<MapData, [u8; 8], PolicyEntry>;

fn policy_lpm_key(k: &PolicyKey) -> LpmKey<[u8; 8]> {
    let mut d = [0u8; 8];
    d[0..4].copy_from_slice(&k.sec_label.to_ne_bytes());
    d[4] = k.egress;
    d[5] = k.protocol;
    d[6..8].copy_from_slice(&k.dport);
    LpmKey::new(k.prefixlen, d)
}

impl MapSet {
    /// Take every map out of a loaded object.
    fn take_from(ebpf: &mut Ebpf) -> MapSet {
        let names: Vec<String> = ebpf.maps().map(|(n, _)| n.to_string()).collect();
        let maps = names
            .into_iter()
            .filter_map(|n| ebpf.take_map(&n).map(|m| (n, m)))
            .collect();
        MapSet {
            maps,
            pins: Vec::new(),
            xsks: Default::default(),
            policy: Default::default(),
            pin_dir: None,
        }
    }

    /// Pin `cilium_lxc` (and every other map of the set) under `dir` (e.g.
    /// `/sys/fs/bpf/fastpath/<node>/tc/globals`, where Cilium pins its own), so
    /// `bpftool map dump pinned …` shows them and another program can open them by path.
    /// The pins are removed when the set is dropped, but for [`KEPT_PINS`].
    pub fn pin(&mut self, dir: &Path) -> Result<(), SteeringError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SteeringError::Limit(format!("creating {}: {e}", dir.display())))?;
        // Per-endpoint policy maps a crashed run left pinned, under this release's name or
        // the one before 1.20's rename (`cilium_policy_v2_`): this run makes its own.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with(control::maps::policy::POLICY_MAP_PREFIX)
                    || n.starts_with("cilium_policy_v2_")
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for name in PINNED {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path); // a stale pin from a crashed run
            let m = self
                .maps
                .get(*name)
                .ok_or(SteeringError::Limit(format!("map {name} missing")))?;
            m.pin(&path).map_err(|source| SteeringError::Pin {
                map: name,
                path: path.clone(),
                source,
            })?;
            self.pins.push(path);
        }
        self.pin_dir = Some(dir.to_path_buf());
        Ok(())
    }

    /// The names of the maps in the set.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.maps.keys().map(|s| s.as_str()).collect();
        v.sort_unstable();
        v
    }
}

impl Drop for MapSet {
    fn drop(&mut self) {
        if let Some(d) = &self.pin_dir {
            for id in self.policy.keys() {
                let _ = std::fs::remove_file(d.join(control::maps::policy::map_name(*id)));
            }
        }
        for p in &self.pins {
            let kept = p
                .file_name()
                .is_some_and(|n| KEPT_PINS.iter().any(|k| n == *k));
            if !kept {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The tc datapath's programs: on a pod's lxc device and on the node NIC.
pub const TC_FROM_CONTAINER: &str = "cil_from_container";
pub const TC_FROM_NETDEV: &str = "cil_from_netdev";

/// Counter slots of `fp_tc_stats` (fp_tc.c `TC_STAT_*`), with the names `fastpath status`
/// prints.
pub const TC_STAT_NAMES: [&str; 7] = [
    "passed",
    "delivered",
    "encapsulated",
    "decapsulated",
    "arp_replies",
    "icmp_errors",
    "routed",
];

/// What the tc datapath counted, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcStats {
    /// (reason code, direction 1 ingress / 2 egress, packets, bytes), non-zero rows only;
    /// reason 0 = forwarded.
    pub metrics: Vec<(u8, u8, u64, u64)>,
    pub counters: [u64; TC_STAT_NAMES.len()],
    /// `cilium_policystats`: what each policy entry decided, summed over CPUs.
    pub policy: Vec<TcPolicyStat>,
}

/// One `cilium_policystats` row (Cilium 1.18's layout): a policy entry of `endpoint` — its
/// identity (0 = any), direction, protocol and port masked to `prefix_len` bits of
/// protocol+port — and the packets and bytes whose verdict it decided in the tc datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcPolicyStat {
    pub endpoint: u16,
    pub prefix_len: u8,
    pub identity: u32,
    /// 1 = egress.
    pub egress: u8,
    pub protocol: u8,
    /// Host order.
    pub dport: u16,
    pub packets: u64,
    pub bytes: u64,
}

/// `struct fp_metric` of fp_tc.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FpMetric {
    packets: u64,
    bytes: u64,
}

#[allow(unsafe_code)]
mod pod_metric {
    // SAFETY: repr(C), two u64: 16 bytes, no padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::FpMetric {}
}

/// The tc datapath's object, loaded over the maps pinned in one directory: the ones the
/// XDP object made ([`MapSet::pin`]) and the shared conntrack tables the control plane
/// made (`control::ct::Conntrack::open_pinned`). A map of the object that is not pinned
/// there yet is made and pinned there (aya's `LIBBPF_PIN_BY_NAME`).
#[derive(Debug)]
pub struct TcPrograms {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

/// The maps only the tc object has (its counters): pinned while it runs, removed with it.
const TC_OWN_MAPS: [&str; 3] = ["cilium_metrics", "fp_tc_stats", "cilium_policystats"];

impl Drop for TcPrograms {
    fn drop(&mut self) {
        for own in TC_OWN_MAPS {
            let _ = std::fs::remove_file(self.pin_dir.join(own));
        }
    }
}

impl TcPrograms {
    /// Load the object over the pins of `pin_dir`; no program is loaded into the kernel
    /// yet ([`TcPrograms::program`]). Its own counters (`cilium_metrics`, `fp_tc_stats`)
    /// start from zero: a last run's pins of them are replaced.
    pub fn open(pin_dir: &Path) -> Result<Self, SteeringError> {
        for own in TC_OWN_MAPS {
            let _ = std::fs::remove_file(pin_dir.join(own));
        }
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(FP_TC_OBJ)?;
        Ok(TcPrograms {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// Its counters, summed over CPUs.
    pub fn stats(&self) -> Result<TcStats, SteeringError> {
        let metrics: aya::maps::PerCpuHashMap<&MapData, [u8; 8], FpMetric> =
            map_ref(&self.ebpf, "cilium_metrics")?;
        let counters: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, "fp_tc_stats")?;
        let read = |map, e| SteeringError::Map { map, source: e };
        let mut out = TcStats::default();
        for row in metrics.iter() {
            let (k, v) = row.map_err(|e| read("cilium_metrics", e))?;
            let (p, b) = v
                .iter()
                .fold((0, 0), |(p, b), x| (p + x.packets, b + x.bytes));
            if p > 0 {
                out.metrics.push((k[0], k[1] & 3, p, b));
            }
        }
        out.metrics.sort_unstable();
        for (i, slot) in out.counters.iter_mut().enumerate() {
            *slot = counters
                .get(&(i as u32), 0)
                .map_err(|e| read("fp_tc_stats", e))?
                .iter()
                .sum();
        }
        let policy: aya::maps::PerCpuHashMap<&MapData, [u8; 12], FpMetric> =
            map_ref(&self.ebpf, "cilium_policystats")?;
        for row in policy.iter() {
            let (k, v) = row.map_err(|e| read("cilium_policystats", e))?;
            let (packets, bytes) = v
                .iter()
                .fold((0, 0), |(p, b), x| (p + x.packets, b + x.bytes));
            out.policy.push(TcPolicyStat {
                endpoint: u16::from_ne_bytes([k[0], k[1]]),
                prefix_len: k[3],
                identity: u32::from_ne_bytes([k[4], k[5], k[6], k[7]]),
                egress: k[8],
                protocol: k[9],
                dport: u16::from_be_bytes([k[10], k[11]]),
                packets,
                bytes,
            });
        }
        Ok(out)
    }

    /// Program `name` of the object (e.g. `fp_ct_probe`), verified and loaded into the
    /// kernel on first use.
    pub fn program(
        &mut self,
        name: &'static str,
    ) -> Result<&mut aya::programs::SchedClassifier, SteeringError> {
        let p: &mut aya::programs::SchedClassifier = program(&mut self.ebpf, name)?;
        if p.fd().is_err() {
            p.load()
                .map_err(|source| SteeringError::Program { prog: name, source })?;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod layouts;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FpDev {
    slot: u32,
    role: u32,
}

// `FpDev` is this crate's own map value, so its Pod marker lives here.
#[allow(unsafe_code)]
mod pod {
    // SAFETY: repr(C), two u32 fields, 8 bytes, no padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::FpDev {}
}
const _: () = assert!(size_of::<FpDev>() == 8);

/// `struct fp_config` of fp_xdp.c: node-wide settings for the steering decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FpConfig {
    /// 0 = tunnel, 1 = native.
    mode: u32,
    /// Network order.
    tunnel_port: [u8; 2],
    pad: u16,
    /// Network order.
    native_net: [u8; 4],
    native_mask: [u8; 4],
    /// The node's underlay address, wire order.
    node_ip: [u8; 4],
    underlay_mtu: u32,
    /// The pods' gateway, wire order: the source of ICMP errors to pods.
    router_ip: [u8; 4],
    pad2: u32,
}
const _: () = assert!(size_of::<FpConfig>() == 32);

/// `struct fp_port`: a port's device and MAC, by port number (fp_dev.slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FpPort {
    ifindex: u32,
    mac: [u8; 6],
    pad: u16,
}
const _: () = assert!(size_of::<FpPort>() == 12);

/// `struct fp_nexthop`: how the tc datapath reaches a node address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FpNextHop {
    ifindex: u32,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    inner_dst_mac: [u8; 6],
    /// 1: `inner_dst_mac` is set.
    flags: u8,
    pad: u8,
}
const _: () = assert!(size_of::<FpNextHop>() == 24);

#[allow(unsafe_code)]
mod pod_nh {
    // SAFETY: repr(C), u32 then [u8; 6] x3, u8, u8: 24 bytes, no implicit padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::FpNextHop {}
}

#[allow(unsafe_code)]
mod pod_port {
    // SAFETY: repr(C), u32, [u8; 6], u16: 12 bytes, no implicit padding; every bit pattern
    // is valid.
    unsafe impl aya::Pod for super::FpPort {}
}

#[allow(unsafe_code)]
mod pod_cfg {
    // SAFETY: repr(C), u32, [u8; 2], u16, [u8; 4] x4, u32 x2: 32 bytes, no implicit padding;
    // every bit pattern is valid.
    unsafe impl aya::Pod for super::FpConfig {}
}

/// `struct fp_backend_addr`: a backend's address, port (network order) and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FpBackendAddr {
    address: [u8; 4],
    port: [u8; 2],
    proto: u8,
    pad: u8,
}
const _: () = assert!(size_of::<FpBackendAddr>() == 8);

#[allow(unsafe_code)]
mod pod_be {
    // SAFETY: repr(C), [u8; 4], [u8; 2], u8, u8: 8 bytes, no padding; every bit pattern is
    // valid.
    unsafe impl aya::Pod for super::FpBackendAddr {}
}

fn backend_addr(v: &Lb4Backend) -> FpBackendAddr {
    FpBackendAddr {
        address: v.address,
        port: v.port,
        proto: v.proto,
        pad: 0,
    }
}

/// The LPM key of `cilium_ipcache_v2` as aya wants it: prefix length, then the 20 bytes.
fn lpm_key(k: &IpcacheKey) -> LpmKey<[u8; 20]> {
    let mut d = [0u8; 20];
    d[0..2].copy_from_slice(&k.cluster_id.to_ne_bytes());
    d[2] = k.pad1;
    d[3] = k.family;
    d[4..].copy_from_slice(&k.ip);
    LpmKey::new(k.prefixlen, d)
}

fn from_lpm_key(k: &LpmKey<[u8; 20]>) -> IpcacheKey {
    let d = k.data();
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&d[4..]);
    IpcacheKey {
        prefixlen: k.prefix_len(),
        cluster_id: u16::from_ne_bytes([d[0], d[1]]),
        pad1: d[2],
        family: d[3],
        ip,
    }
}

impl Steering {
    /// Load the steering program and create its maps (not attached anywhere yet), the LB
    /// maps at their default size ([`control::maps::lb::LB_MAP_MAX`]).
    pub fn load() -> Result<Self, SteeringError> {
        Self::load_sized(control::maps::lb::LB_MAP_MAX)
    }

    /// [`Steering::load`] with the LB maps sized to `lb_map_max` entries each
    /// (`datapath.lb_map_max`, Cilium's `bpf-lb-map-max`); `cilium_lb4_reverse_nat`, keyed
    /// by a 16-bit service ID, to at most 65536.
    pub fn load_sized(lb_map_max: u32) -> Result<Self, SteeringError> {
        let mut loader = EbpfLoader::new();
        for name in [
            control::maps::lb::SERVICES_MAP,
            control::maps::lb::BACKENDS_MAP,
            "fp_lb_backend_addrs",
        ] {
            loader.map_max_entries(name, lb_map_max);
        }
        loader.map_max_entries(control::maps::lb::REVNAT_MAP, lb_map_max.min(1 << 16));
        let mut ebpf = loader.load(FP_XDP_OBJ)?;
        let prog: &mut Xdp = program(&mut ebpf, "fp_steer")?;
        prog.load().map_err(|source| SteeringError::Program {
            prog: "fp_steer",
            source,
        })?;
        let maps = MapSet::take_from(&mut ebpf);
        Ok(Steering {
            ebpf,
            maps,
            devices: Vec::new(),
            links: Vec::new(),
            tc: None,
        })
    }

    /// Load the tc datapath over the maps pinned in `pin_dir` (the set's own pins and the
    /// conntrack tables), so devices can be attached to it ([`Steering::attach`]).
    pub fn enable_tc(&mut self, pin_dir: &Path) -> Result<(), SteeringError> {
        let mut tc = TcPrograms::open(pin_dir)?;
        for p in [TC_FROM_CONTAINER, TC_FROM_NETDEV] {
            tc.program(p)?;
        }
        self.tc = Some(tc);
        Ok(())
    }

    /// Is the tc datapath loaded?
    pub fn tc_enabled(&self) -> bool {
        self.tc.is_some()
    }

    /// The tc datapath's counters: drops and forwards per (reason, direction) as
    /// `cilium_metrics` rows, and its other counters ([`TC_STAT_NAMES`]); `None` when it is
    /// not loaded.
    pub fn tc_stats(&self) -> Option<Result<TcStats, SteeringError>> {
        self.tc.as_ref().map(TcPrograms::stats)
    }

    /// Attach to `port.ifname` (which has `port.ifindex`) and register it as port
    /// `port.slot` ([`Steering::set_port`]: `fp_devs` with its XSKMAP slot and role,
    /// `fp_ports` with its device and MAC). `datapath` chooses what handles the frames it
    /// receives: XDP steering to the workers in `mode` (with [`XdpMode::Auto`], native is
    /// tried first and the reason for falling back to generic is recorded), the tc datapath
    /// (its role's program at tc ingress; [`Steering::enable_tc`] first), or `auto`: XDP,
    /// and the tc datapath when XDP cannot be attached, with the reason recorded.
    pub fn attach(
        &mut self,
        port: PortSpec<'_>,
        mode: XdpMode,
        datapath: Datapath,
    ) -> Result<&AttachedDevice, SteeringError> {
        let PortSpec {
            ifname,
            ifindex,
            slot,
            role,
            mac,
        } = port;
        if slot >= MAX_DEVS {
            return Err(SteeringError::Limit(format!(
                "device slot {slot}: at most {MAX_DEVS} devices can be attached"
            )));
        }
        if let Some(d) = self
            .devices
            .iter()
            .find(|d| d.slot == slot || d.ifindex == ifindex)
        {
            return Err(SteeringError::Limit(format!(
                "{ifname} (slot {slot}): {} already has slot {}",
                d.ifname, d.slot
            )));
        }
        let (link, mode, fallback_reason) = match datapath {
            Datapath::Xdp => self.attach_xdp(ifname, ifindex, mode)?,
            Datapath::Tc => (self.attach_tc(ifname, role)?, AttachedMode::Tc, None),
            Datapath::Auto => match self.attach_xdp(ifname, ifindex, mode) {
                Ok(x) => x,
                Err(e) => {
                    let why = error_chain(&e);
                    let link = self.attach_tc(ifname, role).map_err(|t| {
                        SteeringError::Limit(format!(
                            "{ifname}: XDP cannot be attached ({why}), nor the tc datapath ({})",
                            error_chain(&t)
                        ))
                    })?;
                    (link, AttachedMode::Tc, Some(why))
                }
            },
        };
        if let Err(e) = self.set_port(slot, ifindex, role, mac) {
            let _ = self.unlink(link);
            return Err(e);
        }
        self.devices.push(AttachedDevice {
            ifname: ifname.into(),
            ifindex,
            slot,
            role,
            mode,
            fallback_reason,
        });
        self.links.push(link);
        Ok(self.devices.last().expect("just pushed"))
    }

    fn attach_xdp(
        &mut self,
        ifname: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<(DevLink, AttachedMode, Option<String>), SteeringError> {
        let prog: &mut Xdp = program(&mut self.ebpf, "fp_steer")?;
        let (link, mode, why) = match mode {
            XdpMode::Native => (
                attach_one(prog, ifname, ifindex, AttachedMode::Native)?,
                AttachedMode::Native,
                None,
            ),
            XdpMode::Generic => (
                attach_one(prog, ifname, ifindex, AttachedMode::Generic)?,
                AttachedMode::Generic,
                None,
            ),
            XdpMode::Auto => match attach_one(prog, ifname, ifindex, AttachedMode::Native) {
                Ok(l) => (l, AttachedMode::Native, None),
                Err(e) => {
                    let why = error_chain(&e);
                    (
                        attach_one(prog, ifname, ifindex, AttachedMode::Generic)?,
                        AttachedMode::Generic,
                        Some(why),
                    )
                }
            },
        };
        Ok((DevLink::Xdp(link), mode, why))
    }

    /// The tc datapath at `ifname`'s tc ingress: `cil_from_container` on a pod's device,
    /// `cil_from_netdev` on the node NIC (a TCX link, which goes with the process).
    fn attach_tc(&mut self, ifname: &str, role: u32) -> Result<DevLink, SteeringError> {
        let tc = self.tc.as_mut().ok_or_else(|| {
            SteeringError::Limit(
                "the tc datapath is not loaded: bpffs is not mounted at /sys/fs/bpf (the tc programs open the maps by their pins), or the kernel refused the programs (the start log says why)".into(),
            )
        })?;
        let name = if role == ROLE_UNDERLAY {
            TC_FROM_NETDEV
        } else {
            TC_FROM_CONTAINER
        };
        let prog = tc.program(name)?;
        let link = prog
            .attach(ifname, aya::programs::TcAttachType::Ingress)
            .map_err(|source| SteeringError::Attach {
                dev: ifname.into(),
                mode: "tc",
                source,
            })?;
        Ok(DevLink::Tc(name, link))
    }

    fn unlink(&mut self, link: DevLink) -> Result<(), SteeringError> {
        match link {
            DevLink::Xdp(l) => program::<Xdp>(&mut self.ebpf, "fp_steer")?
                .detach(l)
                .map_err(|source| SteeringError::Program {
                    prog: "fp_steer",
                    source,
                }),
            DevLink::Tc(prog, l) => {
                let tc = self
                    .tc
                    .as_mut()
                    .ok_or_else(|| SteeringError::Limit("the tc datapath is not loaded".into()))?;
                tc.program(prog)?
                    .detach(l)
                    .map_err(|source| SteeringError::Program { prog, source })
            }
        }
    }

    pub fn devices(&self) -> &[AttachedDevice] {
        &self.devices
    }

    /// Move an attached device to the other datapath at run time, without a gap: the new
    /// attachment goes in before the old one goes (XDP runs before tc ingress, so from
    /// tc to XDP the XDP program takes the frames the moment it is attached; from XDP to
    /// tc, tc sees them the moment XDP is gone). Connections carry on: both datapaths use
    /// the same conntrack, policy and service maps. Returns the device as it is now.
    pub fn switch_datapath(
        &mut self,
        ifindex: u32,
        to: Datapath,
        mode: XdpMode,
    ) -> Result<&AttachedDevice, SteeringError> {
        let Some(i) = self.devices.iter().position(|d| d.ifindex == ifindex) else {
            return Err(SteeringError::Limit(format!(
                "ifindex {ifindex} is not attached"
            )));
        };
        let (ifname, role, cur) = {
            let d = &self.devices[i];
            (d.ifname.clone(), d.role, d.mode.datapath())
        };
        let want = match to {
            Datapath::Auto => Datapath::Xdp,
            d => d,
        };
        if want == cur {
            return Ok(&self.devices[i]);
        }
        let (link, new_mode, why) = match want {
            Datapath::Tc => (self.attach_tc(&ifname, role)?, AttachedMode::Tc, None),
            _ => self.attach_xdp(&ifname, ifindex, mode)?,
        };
        let old = std::mem::replace(&mut self.links[i], link);
        let d = &mut self.devices[i];
        d.mode = new_mode;
        d.fallback_reason = why;
        self.unlink(old)?;
        Ok(&self.devices[i])
    }

    /// Record port `slot` (device `ifindex`, `role`, `mac`): its `fp_devs` entry (what the
    /// XDP program steers by) and its `fp_ports` entry, where the tc datapath finds the
    /// device a conntrack entry names by port (a NodePort client's, for its replies).
    /// [`Steering::attach`] calls it for every port it attaches; the fixture runner, which
    /// attaches nothing, for every port of its node.
    pub fn set_port(
        &mut self,
        slot: u32,
        ifindex: u32,
        role: u32,
        mac: [u8; 6],
    ) -> Result<(), SteeringError> {
        let mut devs: BpfHashMap<&mut MapData, u32, FpDev> = map(&mut self.maps, "fp_devs")?;
        devs.insert(ifindex, FpDev { slot, role }, 0)
            .map_err(|source| SteeringError::Map {
                map: "fp_devs",
                source,
            })?;
        let mut ports: Array<&mut MapData, FpPort> = map(&mut self.maps, "fp_ports")?;
        ports
            .set(
                slot,
                FpPort {
                    ifindex,
                    mac,
                    pad: 0,
                },
                0,
            )
            .map_err(|source| SteeringError::Map {
                map: "fp_ports",
                source,
            })
    }

    /// Detach from one device (by ifindex) and forget its `fp_devs` entry. Frames it
    /// receives from then on go to the kernel stack as if fastpath were not there.
    pub fn detach(&mut self, ifindex: u32) -> Result<(), SteeringError> {
        let Some(i) = self.devices.iter().position(|d| d.ifindex == ifindex) else {
            return Err(SteeringError::Limit(format!(
                "ifindex {ifindex} is not attached"
            )));
        };
        let link = self.links.remove(i);
        self.devices.remove(i);
        let detached = self.unlink(link);
        let mut devs: BpfHashMap<&mut MapData, u32, FpDev> = map(&mut self.maps, "fp_devs")?;
        let _ = devs.remove(&ifindex);
        detached
    }

    /// Register a bound AF_XDP socket for (device slot, rx queue).
    pub fn register_xsk(
        &mut self,
        slot: u32,
        queue: u32,
        fd: &impl AsRawFd,
    ) -> Result<(), SteeringError> {
        if queue >= MAX_QUEUES {
            return Err(SteeringError::Limit(format!(
                "rx queue {queue} is beyond the {MAX_QUEUES} queues a device can have"
            )));
        }
        let mut xsks: XskMap<&mut MapData> = map(&mut self.maps, "fp_xsks")?;
        xsks.set(slot * MAX_QUEUES + queue, fd.as_raw_fd(), 0)
            .map_err(|source| SteeringError::Map {
                map: "fp_xsks",
                source,
            })?;
        self.maps.xsks.insert(slot * MAX_QUEUES + queue);
        Ok(())
    }

    /// Empty the XSKMAP entry of (device slot, rx queue): frames steered to it from then on
    /// are passed to the kernel and counted (`passed_no_socket`).
    pub fn unregister_xsk(&mut self, slot: u32, queue: u32) -> Result<(), SteeringError> {
        let key = slot * MAX_QUEUES + queue;
        let mut xsks: XskMap<&mut MapData> = map(&mut self.maps, "fp_xsks")?;
        xsks.unset(key).map_err(|source| SteeringError::Map {
            map: "fp_xsks",
            source,
        })?;
        self.maps.xsks.remove(&key);
        Ok(())
    }

    /// XSKMAP entries in use (the kernel does not let userspace read an XSKMAP back, so
    /// this is the loader's record of every set and delete that succeeded).
    pub fn xsk_entries(&self) -> usize {
        self.maps.xsks.len()
    }

    /// The program's counters, summed over CPUs, in [`XDP_STAT_NAMES`] order.
    pub fn stats(&self) -> Result<[u64; XDP_STAT_NAMES.len()], SteeringError> {
        let mut out = [0u64; XDP_STAT_NAMES.len()];
        for (i, o) in out.iter_mut().enumerate() {
            *o = percpu_counter(&self.maps, i as u32)?;
        }
        Ok(out)
    }

    /// Pin the map set under `dir` ([`MapSet::pin`]).
    pub fn pin_maps(&mut self, dir: &Path) -> Result<(), SteeringError> {
        self.maps.pin(dir)
    }

    /// Detach from every device now (also happens on drop).
    pub fn detach_all(&mut self) {
        for link in std::mem::take(&mut self.links) {
            let _ = self.unlink(link);
        }
        self.devices.clear();
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        // Links first; the map set (and its pins) goes after, with the field.
        self.detach_all();
    }
}

impl EndpointMap for MapSet {
    fn upsert_endpoint(&mut self, k: &EndpointKey, v: &EndpointInfo) -> Result<(), MapWriteError> {
        let mut m: BpfHashMap<&mut MapData, EndpointKey, EndpointInfo> =
            map(self, "cilium_lxc").map_err(|e| write_err("update", k, e.to_string()))?;
        m.insert(*k, *v, 0)
            .map_err(|e| write_err("update", k, error_chain(&e)))
    }
    fn remove_endpoint(&mut self, k: &EndpointKey) -> Result<(), MapWriteError> {
        let mut m: BpfHashMap<&mut MapData, EndpointKey, EndpointInfo> =
            map(self, "cilium_lxc").map_err(|e| write_err("delete", k, e.to_string()))?;
        m.remove(k)
            .map_err(|e| write_err("delete", k, error_chain(&e)))
    }
}

impl EndpointMap for Steering {
    fn upsert_endpoint(&mut self, k: &EndpointKey, v: &EndpointInfo) -> Result<(), MapWriteError> {
        self.maps.upsert_endpoint(k, v)
    }
    fn remove_endpoint(&mut self, k: &EndpointKey) -> Result<(), MapWriteError> {
        self.maps.remove_endpoint(k)
    }
}

impl IpcacheMap for MapSet {
    fn upsert_ipcache(
        &mut self,
        k: &IpcacheKey,
        v: &RemoteEndpointInfo,
    ) -> Result<(), MapWriteError> {
        let err = |e: String| MapWriteError {
            map: "cilium_ipcache_v2",
            op: "update",
            key: k.to_string(),
            msg: e,
        };
        let mut m: LpmTrie<&mut MapData, [u8; 20], RemoteEndpointInfo> =
            map(self, "cilium_ipcache_v2").map_err(|e| err(e.to_string()))?;
        m.insert(&lpm_key(k), *v, 0)
            .map_err(|e| err(error_chain(&e)))
    }
    fn remove_ipcache(&mut self, k: &IpcacheKey) -> Result<(), MapWriteError> {
        let err = |e: String| MapWriteError {
            map: "cilium_ipcache_v2",
            op: "delete",
            key: k.to_string(),
            msg: e,
        };
        let mut m: LpmTrie<&mut MapData, [u8; 20], RemoteEndpointInfo> =
            map(self, "cilium_ipcache_v2").map_err(|e| err(e.to_string()))?;
        m.remove(&lpm_key(k)).map_err(|e| err(error_chain(&e)))
    }
}

impl IpcacheMap for Steering {
    fn upsert_ipcache(
        &mut self,
        k: &IpcacheKey,
        v: &RemoteEndpointInfo,
    ) -> Result<(), MapWriteError> {
        self.maps.upsert_ipcache(k, v)
    }
    fn remove_ipcache(&mut self, k: &IpcacheKey) -> Result<(), MapWriteError> {
        self.maps.remove_ipcache(k)
    }
}

impl MapSet {
    /// `fp_routes`: `prefix` via `gw`, or no route.
    fn write_route(&mut self, p: Ipv4Cidr, gw: Option<[u8; 4]>) -> Result<(), MapWriteError> {
        let err = lb_err(
            "fp_routes",
            if gw.is_some() { "update" } else { "delete" },
            p.to_string(),
        );
        let mut m: LpmTrie<&mut MapData, [u8; 4], [u8; 4]> =
            map(self, "fp_routes").map_err(|e| err(e.to_string()))?;
        let key = LpmKey::new(u32::from(p.len), p.network().addr.octets());
        match gw {
            Some(g) => m.insert(&key, g, 0).map_err(|e| err(error_chain(&e))),
            None => match m.remove(&key) {
                Err(e) if absent(&e) => Ok(()),
                r => r.map_err(|e| err(error_chain(&e))),
            },
        }
    }
}

impl OverlayMap for MapSet {
    fn set_overlay(&mut self, o: &Overlay, native: Option<Ipv4Cidr>) -> Result<(), MapWriteError> {
        let err = |e: String| MapWriteError {
            map: "fp_config",
            op: "update",
            key: "0".into(),
            msg: e,
        };
        let (net, mask) = native.map_or(([0; 4], [0; 4]), |c| {
            (c.network().addr.octets(), c.mask().to_be_bytes())
        });
        let cfg = FpConfig {
            mode: match o.mode {
                RoutingMode::Tunnel => 0,
                RoutingMode::Native => 1,
            },
            tunnel_port: o.tunnel_port.to_be_bytes(),
            pad: 0,
            native_net: net,
            native_mask: mask,
            node_ip: o.node_ip,
            underlay_mtu: o.underlay_mtu,
            router_ip: o.router_ip,
            pad2: 0,
        };
        let mut m: Array<&mut MapData, FpConfig> =
            map(self, "fp_config").map_err(|e| err(e.to_string()))?;
        m.set(0, cfg, 0).map_err(|e| err(error_chain(&e)))
    }
    fn set_nexthop(
        &mut self,
        ip: [u8; 4],
        nh: Option<(u32, &control::tables::NextHop)>,
    ) -> Result<(), MapWriteError> {
        let err = |op: &'static str, e: String| MapWriteError {
            map: "fp_nexthops",
            op,
            key: std::net::Ipv4Addr::from(ip).to_string(),
            msg: e,
        };
        let mut m: BpfHashMap<&mut MapData, [u8; 4], FpNextHop> =
            map(self, "fp_nexthops").map_err(|e| err("update", e.to_string()))?;
        match nh {
            Some((ifindex, n)) => {
                let v = FpNextHop {
                    ifindex,
                    dst_mac: n.dst_mac.0,
                    src_mac: n.src_mac.0,
                    inner_dst_mac: n.inner_dst_mac.map_or([0; 6], |m| m.0),
                    flags: u8::from(n.inner_dst_mac.is_some()),
                    pad: 0,
                };
                m.insert(ip, v, 0)
                    .map_err(|e| err("update", error_chain(&e)))
            }
            None => match m.remove(&ip) {
                Err(e) if absent(&e) => Ok(()),
                r => r.map_err(|e| err("delete", error_chain(&e))),
            },
        }
    }
    fn set_route(&mut self, p: Ipv4Cidr, gw: Option<[u8; 4]>) -> Result<(), MapWriteError> {
        self.write_route(p, gw)
    }
    fn set_identity(&mut self, id: u32, known: bool) -> Result<(), MapWriteError> {
        let err = |op: &'static str, e: String| MapWriteError {
            map: "fp_identities",
            op,
            key: id.to_string(),
            msg: e,
        };
        let mut m: BpfHashMap<&mut MapData, u32, u8> =
            map(self, "fp_identities").map_err(|e| err("update", e.to_string()))?;
        if known {
            m.insert(id, 1, 0)
                .map_err(|e| err("update", error_chain(&e)))
        } else {
            match m.remove(&id) {
                Err(e) if absent(&e) => Ok(()),
                r => r.map_err(|e| err("delete", error_chain(&e))),
            }
        }
    }
}

impl OverlayMap for Steering {
    fn set_overlay(&mut self, o: &Overlay, native: Option<Ipv4Cidr>) -> Result<(), MapWriteError> {
        self.maps.set_overlay(o, native)
    }
    fn set_nexthop(
        &mut self,
        ip: [u8; 4],
        nh: Option<(u32, &control::tables::NextHop)>,
    ) -> Result<(), MapWriteError> {
        self.maps.set_nexthop(ip, nh)
    }
    fn set_identity(&mut self, id: u32, known: bool) -> Result<(), MapWriteError> {
        self.maps.set_identity(id, known)
    }
    fn set_route(&mut self, p: Ipv4Cidr, gw: Option<[u8; 4]>) -> Result<(), MapWriteError> {
        self.maps.set_route(p, gw)
    }
}

impl PolicyMaps for MapSet {
    fn create_policy_map(
        &mut self,
        ep_id: u16,
        entries: &[(PolicyKey, PolicyEntry)],
    ) -> Result<(), MapWriteError> {
        let name = control::maps::policy::map_name(ep_id);
        let err = |op: &'static str, msg: String| MapWriteError {
            map: "fp_policy",
            op,
            key: name.clone(),
            msg,
        };
        // Cilium's inner map: LPM trie, 12-byte key and value, bpf-policy-map-max entries.
        let obj = aya_obj::Map::new_from_params(
            11, // BPF_MAP_TYPE_LPM_TRIE
            12,
            12,
            control::maps::policy::POLICY_MAP_MAX as u32,
            1, // BPF_F_NO_PREALLOC
        );
        let data = MapData::create(obj, &name, None).map_err(|e| err("create", error_chain(&e)))?;
        // Pinned as Cilium names it, so `bpftool map dump pinned …/cilium_policy_v3_<id>`
        // shows it; unpinned again if anything below fails.
        let pin = self.pin_dir.as_ref().map(|d| d.join(&name));
        if let Some(p) = &pin {
            let _ = std::fs::remove_file(p);
            data.pin(p).map_err(|e| err("pin", error_chain(&e)))?;
        }
        let unpin = || {
            if let Some(p) = &pin {
                let _ = std::fs::remove_file(p);
            }
        };
        let filled = (|| {
            let mut trie: PolicyTrie = LpmTrie::try_from(aya::maps::Map::LpmTrie(data))
                .map_err(|e| err("create", error_chain(&e)))?;
            for (k, v) in entries {
                trie.insert(&policy_lpm_key(k), *v, 0)
                    .map_err(|e| err("update", format!("{k}: {}", error_chain(&e))))?;
            }
            let mut outer: HashOfMaps<&mut MapData, u32, PolicyTrie> =
                map(self, "fp_policy").map_err(|e| err("update", e.to_string()))?;
            outer
                .insert(u32::from(ep_id), &trie, 0)
                .map_err(|e| err("update", error_chain(&e)))?;
            Ok(trie)
        })();
        let trie = filled.inspect_err(|_| unpin())?;
        self.policy.insert(ep_id, trie);
        Ok(())
    }
    fn remove_policy_map(&mut self, ep_id: u16) -> Result<(), MapWriteError> {
        let name = control::maps::policy::map_name(ep_id);
        let mut outer: HashOfMaps<&mut MapData, u32, PolicyTrie> =
            map(self, "fp_policy").map_err(|e| MapWriteError {
                map: "fp_policy",
                op: "delete",
                key: name.clone(),
                msg: e.to_string(),
            })?;
        outer.remove(&u32::from(ep_id)).map_err(|e| MapWriteError {
            map: "fp_policy",
            op: "delete",
            key: name.clone(),
            msg: error_chain(&e),
        })?;
        self.policy.remove(&ep_id);
        if let Some(d) = &self.pin_dir {
            let _ = std::fs::remove_file(d.join(&name));
        }
        Ok(())
    }
    fn upsert_policy(
        &mut self,
        ep_id: u16,
        k: &PolicyKey,
        v: &PolicyEntry,
    ) -> Result<(), MapWriteError> {
        self.policy_write(ep_id, k, "update", |t, key| t.insert(key, *v, 0))
    }
    fn remove_policy(&mut self, ep_id: u16, k: &PolicyKey) -> Result<(), MapWriteError> {
        self.policy_write(ep_id, k, "delete", |t, key| t.remove(key))
    }
}

impl MapSet {
    /// One write (`op`) of key `k` into endpoint `ep_id`'s policy map.
    fn policy_write(
        &mut self,
        ep_id: u16,
        k: &PolicyKey,
        op: &'static str,
        write: impl FnOnce(&mut PolicyTrie, &LpmKey<[u8; 8]>) -> Result<(), aya::maps::MapError>,
    ) -> Result<(), MapWriteError> {
        let err = |msg: String| MapWriteError {
            map: "cilium_policy_v3",
            op,
            key: format!("{} {k}", control::maps::policy::map_name(ep_id)),
            msg,
        };
        let t = self
            .policy
            .get_mut(&ep_id)
            .ok_or_else(|| err("no map for the endpoint".into()))?;
        write(t, &policy_lpm_key(k)).map_err(|e| err(error_chain(&e)))
    }
}

impl PolicyMaps for Steering {
    fn create_policy_map(
        &mut self,
        ep_id: u16,
        entries: &[(PolicyKey, PolicyEntry)],
    ) -> Result<(), MapWriteError> {
        self.maps.create_policy_map(ep_id, entries)
    }
    fn remove_policy_map(&mut self, ep_id: u16) -> Result<(), MapWriteError> {
        self.maps.remove_policy_map(ep_id)
    }
    fn upsert_policy(
        &mut self,
        ep_id: u16,
        k: &PolicyKey,
        v: &PolicyEntry,
    ) -> Result<(), MapWriteError> {
        self.maps.upsert_policy(ep_id, k, v)
    }
    fn remove_policy(&mut self, ep_id: u16, k: &PolicyKey) -> Result<(), MapWriteError> {
        self.maps.remove_policy(ep_id, k)
    }
}

impl LbMaps for MapSet {
    fn upsert_service(&mut self, k: &Lb4Key, v: &Lb4Service) -> Result<(), MapWriteError> {
        let err = lb_err(SERVICES_MAP, "update", k.to_string());
        let mut m: BpfHashMap<&mut MapData, Lb4Key, Lb4Service> =
            map(self, SERVICES_MAP).map_err(|e| err(e.to_string()))?;
        m.insert(*k, *v, 0).map_err(|e| err(error_chain(&e)))
    }
    fn remove_service(&mut self, k: &Lb4Key) -> Result<(), MapWriteError> {
        let err = lb_err(SERVICES_MAP, "delete", k.to_string());
        let mut m: BpfHashMap<&mut MapData, Lb4Key, Lb4Service> =
            map(self, SERVICES_MAP).map_err(|e| err(e.to_string()))?;
        m.remove(k).map_err(|e| err(error_chain(&e)))
    }
    fn upsert_backend(&mut self, id: u32, v: &Lb4Backend) -> Result<(), MapWriteError> {
        let err = lb_err(BACKENDS_MAP, "update", id.to_string());
        let mut m: BpfHashMap<&mut MapData, u32, Lb4Backend> =
            map(self, BACKENDS_MAP).map_err(|e| err(e.to_string()))?;
        m.insert(id, *v, 0).map_err(|e| err(error_chain(&e)))?;
        let err = lb_err("fp_lb_backend_addrs", "update", v.name());
        let mut a: BpfHashMap<&mut MapData, FpBackendAddr, u32> =
            map(self, "fp_lb_backend_addrs").map_err(|e| err(e.to_string()))?;
        a.insert(backend_addr(v), id, 0)
            .map_err(|e| err(error_chain(&e)))
    }
    fn remove_backend(&mut self, id: u32, v: &Lb4Backend) -> Result<(), MapWriteError> {
        let err = lb_err(BACKENDS_MAP, "delete", id.to_string());
        let mut m: BpfHashMap<&mut MapData, u32, Lb4Backend> =
            map(self, BACKENDS_MAP).map_err(|e| err(e.to_string()))?;
        m.remove(&id).map_err(|e| err(error_chain(&e)))?;
        let err = lb_err("fp_lb_backend_addrs", "delete", v.name());
        let mut a: BpfHashMap<&mut MapData, FpBackendAddr, u32> =
            map(self, "fp_lb_backend_addrs").map_err(|e| err(e.to_string()))?;
        a.remove(&backend_addr(v)).map_err(|e| err(error_chain(&e)))
    }
    fn upsert_revnat(&mut self, id: RevNat, v: &RevNat4Value) -> Result<(), MapWriteError> {
        let err = lb_err(REVNAT_MAP, "update", id.0.to_string());
        let mut m: BpfHashMap<&mut MapData, u16, RevNat4Value> =
            map(self, REVNAT_MAP).map_err(|e| err(e.to_string()))?;
        m.insert(id.be(), *v, 0).map_err(|e| err(error_chain(&e)))
    }
    fn remove_revnat(&mut self, id: RevNat) -> Result<(), MapWriteError> {
        let err = lb_err(REVNAT_MAP, "delete", id.0.to_string());
        let mut m: BpfHashMap<&mut MapData, u16, RevNat4Value> =
            map(self, REVNAT_MAP).map_err(|e| err(e.to_string()))?;
        m.remove(&id.be()).map_err(|e| err(error_chain(&e)))
    }
    fn set_maglev(
        &mut self,
        id: RevNat,
        table: Option<(&[u32], u32)>,
    ) -> Result<(), MapWriteError> {
        let op = if table.is_some() { "update" } else { "delete" };
        let err = lb_err(MAGLEV_MAP, op, id.0.to_string());
        let mut outer: HashOfMaps<&mut MapData, u16, Array<MapData, u32>> =
            map(self, MAGLEV_MAP).map_err(|e| err(e.to_string()))?;
        let Some((table, seed)) = table else {
            return match outer.remove(&id.be()) {
                Err(e) if absent(&e) => Ok(()),
                r => r.map_err(|e| err(error_chain(&e))),
            };
        };
        // A new inner map per change, filled, then swapped in with one update of the outer
        // map: a reader sees the old table or the new one, never a mix. Entry 0 holds the
        // table's size M, entry 1 the hash seed it goes with, entries 2.. the M slots: a
        // reader never pairs one table with another's size or seed, even while a change of
        // `maglev_table_size` or the seed rewrites the tables one by one. The outer map
        // holds the only reference once this fd is closed.
        let obj = aya_obj::Map::new_from_params(
            2, // BPF_MAP_TYPE_ARRAY
            4,
            4,
            table.len() as u32 + MAGLEV_HEADER,
            BPF_F_INNER_MAP,
        );
        let data = MapData::create(obj, &format!("fp_maglev_{}", id.0), None)
            .map_err(|e| err(format!("creating its table: {}", error_chain(&e))))?;
        let mut inner: Array<MapData, u32> =
            Array::try_from(aya::maps::Map::Array(data)).map_err(|e| err(error_chain(&e)))?;
        let header = [table.len() as u32, seed];
        for (i, v) in header.iter().chain(table).enumerate() {
            inner
                .set(i as u32, *v, 0)
                .map_err(|e| err(format!("entry {i}: {}", error_chain(&e))))?;
        }
        outer
            .insert(id.be(), &inner, 0)
            .map_err(|e| err(error_chain(&e)))
    }
    fn set_affinity_match(&mut self, k: &AffinityMatchKey, on: bool) -> Result<(), MapWriteError> {
        let key = format!("{}/{}", k.backend_id, u16::from_be(k.rev_nat_id));
        let err = lb_err(
            AFFINITY_MATCH_MAP,
            if on { "update" } else { "delete" },
            key,
        );
        let mut m: BpfHashMap<&mut MapData, AffinityMatchKey, u8> =
            map(self, AFFINITY_MATCH_MAP).map_err(|e| err(e.to_string()))?;
        if on {
            m.insert(*k, 0, 0).map_err(|e| err(error_chain(&e)))
        } else {
            match m.remove(k) {
                Err(e) if absent(&e) => Ok(()),
                r => r.map_err(|e| err(error_chain(&e))),
            }
        }
    }
    fn set_lb_config(&mut self, default_alg: u8) -> Result<(), MapWriteError> {
        let err = lb_err("fp_lb_config", "update", "0".into());
        let mut m: Array<&mut MapData, FpLbConfig> =
            map(self, "fp_lb_config").map_err(|e| err(e.to_string()))?;
        let v = FpLbConfig {
            default_alg: u32::from(default_alg),
        };
        m.set(0, v, 0).map_err(|e| err(error_chain(&e)))
    }
}

/// `cilium_lb4_maglev`: service ID -> its Maglev table (a map of maps).
const MAGLEV_MAP: &str = "cilium_lb4_maglev";
/// Lets inner maps of one outer map differ in max_entries (the Maglev table size).
const BPF_F_INNER_MAP: u32 = 1 << 12;
/// Entries in front of a Maglev table's slots in its inner map: M, then the seed.
const MAGLEV_HEADER: u32 = 2;

/// `struct fp_lb_config`: the node's default algorithm, for backend selection in the
/// kernel programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FpLbConfig {
    default_alg: u32,
}
const _: () = assert!(size_of::<FpLbConfig>() == 4);

#[allow(unsafe_code)]
mod pod_lb {
    // SAFETY: repr(C), one u32: 4 bytes, no padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::FpLbConfig {}
}

impl LbMaps for Steering {
    fn upsert_service(&mut self, k: &Lb4Key, v: &Lb4Service) -> Result<(), MapWriteError> {
        self.maps.upsert_service(k, v)
    }
    fn remove_service(&mut self, k: &Lb4Key) -> Result<(), MapWriteError> {
        self.maps.remove_service(k)
    }
    fn upsert_backend(&mut self, id: u32, v: &Lb4Backend) -> Result<(), MapWriteError> {
        self.maps.upsert_backend(id, v)
    }
    fn remove_backend(&mut self, id: u32, v: &Lb4Backend) -> Result<(), MapWriteError> {
        self.maps.remove_backend(id, v)
    }
    fn set_maglev(
        &mut self,
        id: RevNat,
        table: Option<(&[u32], u32)>,
    ) -> Result<(), MapWriteError> {
        self.maps.set_maglev(id, table)
    }
    fn set_affinity_match(&mut self, k: &AffinityMatchKey, on: bool) -> Result<(), MapWriteError> {
        self.maps.set_affinity_match(k, on)
    }
    fn set_lb_config(&mut self, alg: u8) -> Result<(), MapWriteError> {
        self.maps.set_lb_config(alg)
    }
    fn upsert_revnat(&mut self, id: RevNat, v: &RevNat4Value) -> Result<(), MapWriteError> {
        self.maps.upsert_revnat(id, v)
    }
    fn remove_revnat(&mut self, id: RevNat) -> Result<(), MapWriteError> {
        self.maps.remove_revnat(id)
    }
}

/// Did a delete fail only because the key was not there (ENOENT from
/// `bpf_map_delete_elem`, which aya reports as a syscall error)? Deleting what is already
/// gone is success: a kernel map that drifted from the tables must not make every later
/// change that deletes the key fail and roll back.
fn absent(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn lb_err(map: &'static str, op: &'static str, key: String) -> impl Fn(String) -> MapWriteError {
    move |msg| MapWriteError {
        map,
        op,
        key: key.clone(),
        msg,
    }
}

impl Steering {
    /// Read `cilium_lb4_services_v2` back from the kernel.
    pub fn kernel_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>, SteeringError> {
        let m: BpfHashMap<&MapData, Lb4Key, Lb4Service> = map_ref(&self.maps, SERVICES_MAP)?;
        m.iter()
            .map(|r| {
                r.map_err(|source| SteeringError::Map {
                    map: SERVICES_MAP,
                    source,
                })
            })
            .collect()
    }
}

impl Steering {
    /// Read service `id`'s Maglev table back from `cilium_lb4_maglev`: (M, seed, slots).
    pub fn kernel_maglev(&self, id: RevNat) -> Result<Option<(u32, u32, Vec<u32>)>, SteeringError> {
        let outer: HashOfMaps<&MapData, u16, Array<MapData, u32>> =
            map_ref(&self.maps, MAGLEV_MAP)?;
        let read = |source| SteeringError::Map {
            map: MAGLEV_MAP,
            source,
        };
        let inner = match outer.get(&id.be(), 0) {
            Ok(m) => m,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(read(e)),
        };
        let n = inner.len();
        let v: Vec<u32> = (0..n)
            .map(|i| inner.get(&i, 0))
            .collect::<Result<_, _>>()
            .map_err(read)?;
        Ok(Some((v[0], v[1], v[2..].to_vec())))
    }

    /// Read `cilium_lxc` back from the kernel (what `bpftool map dump` would show).
    pub fn kernel_endpoints(&self) -> Result<Vec<(EndpointKey, EndpointInfo)>, SteeringError> {
        let m: BpfHashMap<&MapData, EndpointKey, EndpointInfo> = map_ref(&self.maps, "cilium_lxc")?;
        m.iter()
            .map(|r| {
                r.map_err(|source| SteeringError::Map {
                    map: "cilium_lxc",
                    source,
                })
            })
            .collect()
    }
}

impl Steering {
    /// Read `cilium_ipcache_v2` back from the kernel.
    pub fn kernel_ipcache(&self) -> Result<Vec<(IpcacheKey, RemoteEndpointInfo)>, SteeringError> {
        let m: LpmTrie<&MapData, [u8; 20], RemoteEndpointInfo> =
            map_ref(&self.maps, "cilium_ipcache_v2")?;
        m.iter()
            .map(|r| {
                r.map(|(k, v)| (from_lpm_key(&k), v))
                    .map_err(|source| SteeringError::Map {
                        map: "cilium_ipcache_v2",
                        source,
                    })
            })
            .collect()
    }
}

fn write_err(op: &'static str, k: &EndpointKey, msg: String) -> MapWriteError {
    MapWriteError {
        map: "cilium_lxc",
        op,
        key: k.to_string(),
        msg,
    }
}

/// A read-only typed view of map `name`.
fn map_ref<'a, T>(ebpf: &'a impl MapSource, name: &'static str) -> Result<T, SteeringError>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf
        .get(name)
        .ok_or_else(|| SteeringError::Limit(format!("map {name} missing from the object")))?;
    T::try_from(m).map_err(|source| SteeringError::Map { map: name, source })
}

/// Slot `i` of `fp_xdp_stats`, summed over CPUs.
fn percpu_counter(ebpf: &impl MapSource, i: u32) -> Result<u64, SteeringError> {
    let arr: PerCpuArray<&MapData, u64> = map_ref(ebpf, "fp_xdp_stats")?;
    let v = arr.get(&i, 0).map_err(|source| SteeringError::Map {
        map: "fp_xdp_stats",
        source,
    })?;
    Ok(v.iter().sum())
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, SteeringError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| SteeringError::Limit(format!("program {name} missing from the object")))?;
    p.try_into()
        .map_err(|source| SteeringError::Program { prog: name, source })
}

/// Where maps are looked up by name: a loaded object, or a [`MapSet`] taken out of one.
trait MapSource {
    fn get(&self, name: &str) -> Option<&aya::maps::Map>;
    fn get_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map>;
}

impl MapSource for Ebpf {
    fn get(&self, name: &str) -> Option<&aya::maps::Map> {
        self.map(name)
    }
    fn get_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.map_mut(name)
    }
}

impl MapSource for MapSet {
    fn get(&self, name: &str) -> Option<&aya::maps::Map> {
        self.maps.get(name)
    }
    fn get_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.maps.get_mut(name)
    }
}

fn map<'a, T>(ebpf: &'a mut impl MapSource, name: &'static str) -> Result<T, SteeringError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf
        .get_mut(name)
        .ok_or_else(|| SteeringError::Limit(format!("map {name} missing from the object")))?;
    T::try_from(m).map_err(|source| SteeringError::Map { map: name, source })
}

fn attach_one(
    prog: &mut Xdp,
    ifname: &str,
    ifindex: u32,
    mode: AttachedMode,
) -> Result<XdpLinkId, SteeringError> {
    let flags = match mode {
        AttachedMode::Native => AyaXdpMode::Driver,
        AttachedMode::Generic | AttachedMode::Tc => AyaXdpMode::Skb,
    };
    prog.attach_to_if_index(ifindex, flags)
        .map_err(|source| SteeringError::Attach {
            dev: ifname.into(),
            mode: mode.name(),
            source,
        })
}

/// An error with its sources, one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The bench sink program (counts and drops everything but ARP), loaded separately by bench/.
#[derive(Debug)]
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    /// Load `fp_sink` and attach it natively to `ifname` (generic if native fails), and
    /// `fp_sink_tc` at its tc ingress for the frames that reach it without passing XDP (the
    /// tc datapath's `bpf_redirect_peer`): both count on one counter.
    pub fn attach(ifname: &str) -> Result<Self, SteeringError> {
        let mut ebpf = EbpfLoader::new().load(FP_XDP_OBJ)?;
        let prog: &mut Xdp = program(&mut ebpf, "fp_sink")?;
        prog.load().map_err(|source| SteeringError::Program {
            prog: "fp_sink",
            source,
        })?;
        let ifindex =
            if_index(ifname).ok_or_else(|| SteeringError::Limit(format!("no device {ifname}")))?;
        if attach_one(prog, ifname, ifindex, AttachedMode::Native).is_err() {
            attach_one(prog, ifname, ifindex, AttachedMode::Generic)?;
        }
        let tc: &mut aya::programs::SchedClassifier = program(&mut ebpf, "fp_sink_tc")?;
        tc.load().map_err(|source| SteeringError::Program {
            prog: "fp_sink_tc",
            source,
        })?;
        tc.attach(ifname, aya::programs::TcAttachType::Ingress)
            .map_err(|source| SteeringError::Attach {
                dev: ifname.into(),
                mode: "tc",
                source,
            })?;
        Ok(Sink { ebpf })
    }

    /// Frames dropped so far (all CPUs).
    pub fn count(&self) -> Result<u64, SteeringError> {
        percpu_counter(&self.ebpf, 0)
    }
}

/// `struct fp_kfwd_cfg` of fp_xdp.c: where the bench's in-kernel forwarder sends frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct KfwdConfig {
    ifindex: u32,
    dmac: [u8; 6],
    smac: [u8; 6],
}
const _: () = assert!(size_of::<KfwdConfig>() == 16);

#[allow(unsafe_code)]
mod pod_kfwd {
    // SAFETY: repr(C), u32, [u8; 6] x2: 16 bytes, no implicit padding; every bit pattern is
    // valid.
    unsafe impl aya::Pod for super::KfwdConfig {}
}

/// The bench's in-kernel XDP forwarder (`fp_kfwd_prog`): on `ifname`, every IPv4 frame gets
/// TTL − 1, MACs `smac` → `dmac`, and is redirected to `out_ifindex` — the ceiling of an XDP
/// program that does no lookups. Detached when dropped.
#[derive(Debug)]
pub struct KernelForward {
    ebpf: Ebpf,
}

impl KernelForward {
    pub fn attach(
        ifname: &str,
        out_ifindex: u32,
        dmac: [u8; 6],
        smac: [u8; 6],
        mode: AttachedMode,
    ) -> Result<Self, SteeringError> {
        let mut ebpf = EbpfLoader::new().load(FP_XDP_OBJ)?;
        {
            let mut m: Array<&mut MapData, KfwdConfig> = map(&mut ebpf, "fp_kfwd")?;
            m.set(
                0,
                KfwdConfig {
                    ifindex: out_ifindex,
                    dmac,
                    smac,
                },
                0,
            )
            .map_err(|source| SteeringError::Map {
                map: "fp_kfwd",
                source,
            })?;
        }
        let prog: &mut Xdp = program(&mut ebpf, "fp_kfwd_prog")?;
        prog.load().map_err(|source| SteeringError::Program {
            prog: "fp_kfwd_prog",
            source,
        })?;
        let ifindex =
            if_index(ifname).ok_or_else(|| SteeringError::Limit(format!("no device {ifname}")))?;
        attach_one(prog, ifname, ifindex, mode)?;
        Ok(KernelForward { ebpf })
    }

    /// Frames redirected so far (all CPUs).
    pub fn count(&self) -> Result<u64, SteeringError> {
        percpu_counter(&self.ebpf, 0)
    }
}

/// Running as root (what loading BPF needs)?
#[cfg(test)]
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `if_nametoindex(3)` in the calling thread's network namespace.
fn if_index(ifname: &str) -> Option<u32> {
    let c = std::ffi::CString::new(ifname).ok()?;
    #[allow(unsafe_code)]
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

#[cfg(test)]
mod tests {
    /// The counter names here and the slots of the C enum are one table: same count, and
    /// every `FP_STAT_*` slot where the names put it.
    #[test]
    fn stat_names_match_the_c_enum() {
        let c = include_str!("bpf/fp_xdp.c");
        let max: usize = c
            .lines()
            .find_map(|l| l.trim().strip_prefix("FP_STAT_MAX = "))
            .and_then(|v| v.trim_end_matches(',').parse().ok())
            .expect("FP_STAT_MAX in fp_xdp.c");
        assert_eq!(max, super::XDP_STAT_NAMES.len());
        for (slot, name) in [(9, "passed_no_socket"), (6, "steered_overlay")] {
            assert_eq!(super::XDP_STAT_NAMES[slot], name);
        }
        assert!(c.contains("FP_STAT_PASSED_NO_SOCKET = 9,"));
    }

    #[test]
    fn object_has_btf_and_programs() {
        let obj = aya_obj_sections(super::FP_XDP_OBJ);
        assert!(obj.contains(&".BTF".to_string()), "{obj:?}");
        assert!(obj.contains(&"xdp".to_string()), "{obj:?}");
    }

    /// Section names of an ELF object (just enough parsing for the check above).
    fn aya_obj_sections(b: &[u8]) -> Vec<String> {
        let shoff = u64::from_le_bytes(b[0x28..0x30].try_into().unwrap()) as usize;
        let shentsize = u16::from_le_bytes(b[0x3a..0x3c].try_into().unwrap()) as usize;
        let shnum = u16::from_le_bytes(b[0x3c..0x3e].try_into().unwrap()) as usize;
        let shstrndx = u16::from_le_bytes(b[0x3e..0x40].try_into().unwrap()) as usize;
        let sh = |i: usize| &b[shoff + i * shentsize..shoff + (i + 1) * shentsize];
        let stroff = u64::from_le_bytes(sh(shstrndx)[0x18..0x20].try_into().unwrap()) as usize;
        (0..shnum)
            .map(|i| {
                let name = u32::from_le_bytes(sh(i)[0..4].try_into().unwrap()) as usize;
                let s = &b[stroff + name..];
                String::from_utf8_lossy(&s[..s.iter().position(|&c| c == 0).unwrap()]).into_owned()
            })
            .collect()
    }

    /// `datapath.lb_map_max` sizes the kernel's LB maps: a map sized 1024 takes 1024 backends
    /// and refuses the next one; the default takes it; a size above 65536 loads (the
    /// reverse-NAT map stays at its 16-bit key's 65536).
    #[test]
    fn lb_map_max_sizes_the_kernel_lb_maps() {
        if !crate::is_root() {
            return;
        }
        use control::kernel::LbMaps;
        use control::maps::lb::{BE_STATE_ACTIVE, Lb4Backend};
        let fill = |st: &mut crate::Steering, n: u32| -> Result<(), String> {
            for id in 1..=n {
                let b = Lb4Backend::new(
                    std::net::Ipv4Addr::from(0x0a00_0000 + id),
                    8080,
                    6,
                    BE_STATE_ACTIVE,
                );
                st.maps
                    .upsert_backend(id, &b)
                    .map_err(|e| format!("backend {id}: {e}"))?;
            }
            Ok(())
        };
        let mut small = crate::Steering::load_sized(1024).unwrap();
        fill(&mut small, 1024).unwrap();
        let e = fill(&mut small, 1025).unwrap_err();
        assert!(e.starts_with("backend 1025"), "{e}");
        let mut dflt = crate::Steering::load().unwrap();
        fill(&mut dflt, 1025).unwrap();
        crate::Steering::load_sized(1 << 21).unwrap();
    }

    /// The map set lives apart from the program: every map the steering program uses is in
    /// it after loading (the object keeps only the program), and the set can be written
    /// through the per-family traits without anything attached.
    #[test]
    fn map_set_holds_every_map_apart_from_the_program() {
        if crate::is_root() {
            use control::kernel::EndpointMap;
            let mut st = crate::Steering::load().unwrap();
            for name in crate::PINNED {
                assert!(
                    st.maps.names().contains(name),
                    "{name} in {:?}",
                    st.maps.names()
                );
            }
            assert_eq!(st.ebpf.maps().count(), 0, "the object kept no map");
            let k = control::maps::EndpointKey::v4([10, 9, 9, 9]);
            st.maps
                .upsert_endpoint(&k, &control::maps::EndpointInfo::host())
                .unwrap();
            assert_eq!(st.kernel_endpoints().unwrap().len(), 1);
            st.maps.remove_endpoint(&k).unwrap();
            assert!(st.kernel_endpoints().unwrap().is_empty());
        }
    }
}
