//! Services: what the config and the control socket say, compiled into Cilium's LB maps.
//!
//! A [`ServiceConfig`] is a Kubernetes Service plus its EndpointSlice in one: a ClusterIP,
//! ports (with target and node ports), external IPs, session affinity, the LB algorithm and
//! the backends. [`LbState`] turns the set of services into map contents the way Cilium's
//! agent does:
//! - one **frontend** per (address, port, protocol): the ClusterIP; for `NodePort` the
//!   node's address and the `0.0.0.0` surrogate; every external IP. Each frontend gets its
//!   own service ID (`rev_nat_index`), kept while it exists, from a rolling allocator (as
//!   Cilium's: an ID given back is not handed out again until the counter has gone round);
//! - one **backend ID** per (address, port, protocol), shared by every service using it;
//! - a master entry (slot 0, with the count, flags, algorithm and affinity timeout) and
//!   slots 1..=count per frontend, the reverse-NAT entry, and for Maglev services the
//!   lookup table;
//! - a backend that leaves every service is not deleted at once: it stays in the backends
//!   map as *terminating*, without slots, while conntrack still has service entries pointing
//!   at it ([`LbState::plan_release_unused`], run by the GC), so established connections finish
//!   while new ones avoid it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Problem;
use crate::maglev::{self, MaglevBackend, Seeds};
use crate::maps::lb::*;

/// Kubernetes' default NodePort range.
pub const NODEPORT_MIN: u16 = 30000;
pub const NODEPORT_MAX: u16 = 32767;
/// Kubernetes' default (and maximum) ClientIP affinity timeout.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;
/// The most backends one service may list: slots are numbered 1..=count in 16 bits.
pub const MAX_BACKENDS_PER_SERVICE: usize = u16::MAX as usize;
/// Memory all distinct Maglev tables together may take (each is M × 4 bytes).
pub const MAX_MAGLEV_BYTES: usize = 512 << 20;
/// Cilium's default backend weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Maglev table sizes Cilium accepts.
pub const MAGLEV_SIZES: [usize; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::TCP => 6,
            Protocol::UDP => 17,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP,
}

/// Backend selection for new connections (Cilium's `bpf-lb-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LbAlgorithm {
    #[default]
    Random,
    Maglev,
}

impl LbAlgorithm {
    pub fn code(self) -> u8 {
        match self {
            LbAlgorithm::Random => ALG_RANDOM,
            LbAlgorithm::Maglev => ALG_MAGLEV,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    #[default]
    Active,
    Terminating,
    Maintenance,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// The backends' port; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// `type: NodePort` only.
    #[serde(default)]
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub state: BackendState,
}

/// A Service and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    #[serde(default, rename = "type")]
    pub kind: ServiceType,
    pub cluster_ip: Ipv4Addr,
    #[serde(default)]
    pub external_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// Seconds (`sessionAffinityConfig.clientIP.timeoutSeconds`).
    #[serde(default)]
    pub session_affinity_timeout: Option<u32>,
    /// Overrides `datapath.lb_algorithm` (Cilium's `service.cilium.io/lb-algorithm`).
    #[serde(default)]
    pub lb_algorithm: Option<LbAlgorithm>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

fn default_ns() -> String {
    "default".into()
}

/// Parse a service file: one service, or a list of them. Unknown fields are refused with
/// their path and line; the text is bounded ([`crate::yaml::SERVICES`]).
///
/// # Errors
/// The first problem, with its field path.
pub fn parse_services(text: &str) -> Result<Vec<ServiceConfig>, crate::yaml::YamlError> {
    use crate::yaml::{SERVICES, parse};
    // Look at the shape first, then read the text again as that shape, so errors keep
    // their path and line.
    match parse::<serde_json::Value>(text, &SERVICES)? {
        serde_json::Value::Array(_) => parse(text, &SERVICES),
        _ => parse::<ServiceConfig>(text, &SERVICES).map(|s| vec![s]),
    }
}

impl ServiceConfig {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What a node needs to compile services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbSettings {
    /// This node's address (NodePort frontends); `None` on a node without an underlay.
    pub node_ip: Option<Ipv4Addr>,
    pub algorithm: LbAlgorithm,
    pub maglev_m: usize,
    pub seeds: Seeds,
    /// Entries of each LB map (`datapath.lb_map_max`, Cilium's `bpf-lb-map-max`).
    pub map_max: usize,
}

impl Default for LbSettings {
    fn default() -> Self {
        LbSettings {
            node_ip: None,
            algorithm: LbAlgorithm::Random,
            maglev_m: MAGLEV_TABLE_SIZE,
            seeds: Seeds::default(),
            map_max: LB_MAP_MAX as usize,
        }
    }
}

/// Check a set of services; every problem with its field (`services[1].ports[0].node_port`).
/// `prefix` names the list (`services`).
pub fn validate(services: &[ServiceConfig], prefix: &str) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut bad = |field: String, msg: String| p.push(Problem { field, msg });
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut frontends: BTreeMap<(Ipv4Addr, u16, u8), String> = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        let f = |x: &str| format!("{prefix}[{i}].{x}");
        if s.name.is_empty() || s.namespace.is_empty() {
            bad(f("name"), "name and namespace must not be empty".into());
        } else if let Some(j) = names.insert(s.id(), i) {
            bad(
                f("name"),
                format!("`{}` is already used by {prefix}[{j}]", s.id()),
            );
        }
        if !unicast(s.cluster_ip) {
            bad(
                f("cluster_ip"),
                format!("{} is not a usable unicast address", s.cluster_ip),
            );
        }
        for (j, ip) in s.external_ips.iter().enumerate() {
            if !unicast(*ip) {
                bad(
                    f(&format!("external_ips[{j}]")),
                    format!("{ip} is not a usable unicast address"),
                );
            }
        }
        if s.ports.is_empty() {
            bad(f("ports"), "a service needs at least one port".into());
        }
        for (j, port) in s.ports.iter().enumerate() {
            let pf = |x: &str| f(&format!("ports[{j}].{x}"));
            if port.port == 0 {
                bad(pf("port"), "must not be 0".into());
            }
            if port.target_port == Some(0) {
                bad(pf("target_port"), "must not be 0".into());
            }
            match (s.kind, port.node_port) {
                (ServiceType::ClusterIP, Some(_)) => bad(
                    pf("node_port"),
                    "only a `type: NodePort` service has node ports".into(),
                ),
                (ServiceType::NodePort, None) => bad(
                    pf("node_port"),
                    "required for `type: NodePort` (fastpath does not pick one)".into(),
                ),
                (ServiceType::NodePort, Some(np))
                    if !(NODEPORT_MIN..=NODEPORT_MAX).contains(&np) =>
                {
                    bad(
                        pf("node_port"),
                        format!("{np} is outside the NodePort range {NODEPORT_MIN}-{NODEPORT_MAX}"),
                    )
                }
                _ => {}
            }
            let proto = port.protocol.number();
            let mut claim = |addr: Ipv4Addr, pt: u16, what: String| {
                if let Some(other) = frontends.get(&(addr, pt, proto)) {
                    return Some(format!(
                        "frontend {addr}:{pt}/{:?} is already used by {other}",
                        port.protocol
                    ));
                }
                frontends.insert((addr, pt, proto), what);
                None
            };
            if let Some(m) = claim(s.cluster_ip, port.port, s.id()) {
                bad(pf("port"), m);
            }
            for ip in &s.external_ips {
                if let Some(m) = claim(*ip, port.port, s.id()) {
                    bad(pf("port"), m);
                }
            }
            if let Some(np) = port.node_port
                && let Some(m) = claim(Ipv4Addr::UNSPECIFIED, np, s.id())
            {
                bad(pf("node_port"), m);
            }
        }
        let mut seen = BTreeSet::new();
        for (j, port) in s.ports.iter().enumerate() {
            if !seen.insert((port.port, port.protocol.number())) {
                bad(
                    f(&format!("ports[{j}]")),
                    format!("{}/{:?} is listed twice", port.port, port.protocol),
                );
            }
        }
        if let Some(t) = s.session_affinity_timeout {
            if s.session_affinity != SessionAffinity::ClientIP {
                bad(
                    f("session_affinity_timeout"),
                    "only with `session_affinity: ClientIP`".into(),
                );
            } else if t == 0 || t > MAX_AFFINITY_TIMEOUT {
                bad(
                    f("session_affinity_timeout"),
                    format!("{t} must be between 1 and {MAX_AFFINITY_TIMEOUT} seconds"),
                );
            }
        }
        if s.backends.len() > MAX_BACKENDS_PER_SERVICE {
            bad(
                f("backends"),
                format!(
                    "{} backends, at most {MAX_BACKENDS_PER_SERVICE} (lb4_service.count and backend_slot are 16 bits)",
                    s.backends.len()
                ),
            );
        }
        let mut ips = BTreeSet::new();
        for (j, b) in s.backends.iter().enumerate() {
            let bf = |x: &str| f(&format!("backends[{j}].{x}"));
            if !unicast(b.ip) {
                bad(
                    bf("ip"),
                    format!("{} is not a usable unicast address", b.ip),
                );
            } else if !ips.insert(b.ip) {
                bad(bf("ip"), format!("{} is listed twice", b.ip));
            }
            if let Some(w) = b.weight
                && w > 65535
            {
                bad(bf("weight"), format!("{w} must be at most 65535"));
            }
        }
    }
    p
}

/// The backends of `svc` that get slots for new connections: active ones, or the
/// terminating ones when nothing else is left (as Cilium); maintenance never. Weight 0 means
/// "no new connections" under either algorithm, so such a backend gets no slot (and no
/// Maglev turn): a service whose backends all weigh 0 has count 0 and answers new
/// connections as one without backends.
fn slot_backends(svc: &ServiceConfig) -> Vec<&BackendConfig> {
    let weighted = |st: BackendState| {
        svc.backends
            .iter()
            .filter(move |b| b.state == st && b.weight != Some(0))
    };
    let active: Vec<&BackendConfig> = weighted(BackendState::Active).collect();
    if active.is_empty() {
        weighted(BackendState::Terminating).collect()
    } else {
        active
    }
}

fn unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

pub use tables::lb::{LbFamily, LbTables};

/// Why a service change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("service IDs exhausted: {want} frontends, at most 65535 (rev_nat_index is 16 bits)")]
    OutOfIds { want: usize },
    #[error(
        "{map} would need {need} entries and holds {max} (datapath.lb_map_max, Cilium's bpf-lb-map-max); nothing was changed: use fewer frontends, ports or backends, or a larger datapath.lb_map_max"
    )]
    MapFull {
        map: &'static str,
        need: usize,
        max: usize,
    },
    #[error(
        "Maglev tables would need {need_mib} MiB ({tables} distinct tables of M = {m}), more than {max_mib} MiB; nothing was changed: use a smaller datapath.maglev_table_size or fewer Maglev services"
    )]
    MaglevTooLarge {
        tables: usize,
        m: usize,
        need_mib: usize,
        max_mib: usize,
    },
    #[error("no service `{0}`")]
    NotFound(String),
    #[error("{kind} frontends need the node's address (node.underlay) — `{service}`")]
    NoNodeIp { kind: &'static str, service: String },
}

/// (address, port, protocol): a frontend's or a backend's identity.
type AddrKey = (Ipv4Addr, u16, u8);
/// A Maglev table with the input it was built from.
type MaglevEntry = (Vec<MaglevBackend>, Arc<[u32]>);

/// One frontend compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frontend {
    key: Lb4Key,
    flags: u8,
    target_port: u16,
    /// Where the service lists it (for conflict messages): `ports[port]`, node port or not.
    port: usize,
    node_port: bool,
}

impl Frontend {
    fn addr_key(&self) -> AddrKey {
        (self.key.addr(), self.key.port(), self.key.proto)
    }
}

/// What one service contributes, derived once when the service is taken.
#[derive(Debug, Clone)]
struct Compiled {
    fronts: Vec<Frontend>,
    /// Its distinct backends (address, target port, protocol) with the state it gives each.
    backends: Vec<(AddrKey, BackendState)>,
    /// `cilium_lb4_services_v2` entries: a master plus one slot per backend, per frontend.
    entries: usize,
    /// Distinct Maglev tables (one per service port with slots, under Maglev).
    maglev_tables: usize,
}

/// How many services reference a backend, by the state each gives it; and its ID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BackendRef {
    id: u32,
    /// Active, terminating, maintenance.
    by_state: [i64; 3],
}

impl BackendRef {
    fn refs(&self) -> i64 {
        self.by_state.iter().sum()
    }
    /// The state the backends map shows when services disagree: active if any service has
    /// it active, else terminating if any says so, else maintenance (slots are chosen per
    /// service from its own list, so this only decides what the map says).
    fn state(&self) -> u8 {
        if self.by_state[0] > 0 {
            BE_STATE_ACTIVE
        } else if self.by_state[1] > 0 {
            BE_STATE_TERMINATING
        } else {
            BE_STATE_MAINTENANCE
        }
    }
}

fn state_index(s: BackendState) -> usize {
    match s {
        BackendState::Active => 0,
        BackendState::Terminating => 1,
        BackendState::Maintenance => 2,
    }
}

/// ID allocation in O(log n), rolling like Cilium's: new IDs come from a counter (`next`),
/// and IDs given back (`free`, all below `next`) are handed out again only once the counter
/// has reached `max`, lowest first. So a service ID or backend ID that was just released is
/// not at once given to another frontend or backend, whose traffic established flows of the
/// old one (their conntrack entries carry the ID) would otherwise be translated to.
#[derive(Debug, Clone)]
struct IdPool {
    next: u32,
    free: BTreeSet<u32>,
    max: u32,
}

impl IdPool {
    fn new(max: u32) -> Self {
        IdPool {
            next: 1,
            free: BTreeSet::new(),
            max,
        }
    }

    /// The `n` IDs [`IdPool::commit`] hands out after `released` are given back (the
    /// counter's first, then the lowest given back), without changing anything; `None` if
    /// there are not that many.
    fn preview(&self, released: &[u32], n: usize) -> Option<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        let mut next = self.next as u64;
        while out.len() < n && next <= self.max as u64 {
            out.push(next as u32);
            next += 1;
        }
        let mut rel: Vec<u32> = released.to_vec();
        rel.sort_unstable();
        let (mut a, mut b) = (
            self.free.iter().copied().peekable(),
            rel.into_iter().peekable(),
        );
        while out.len() < n {
            let pick = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            out.extend(pick);
        }
        Some(out)
    }

    /// Give `released` back and take `taken` (what [`IdPool::preview`] returned).
    fn commit(&mut self, released: &[u32], taken: &[u32]) {
        self.free.extend(released.iter().copied());
        for &t in taken {
            if !self.free.remove(&t) {
                debug_assert!(t >= self.next, "ID {t} handed out twice");
                self.next = t + 1;
            }
        }
    }
}

/// The control plane's LB state: services, their compiled form, ID allocations, backend
/// references, retained backends, and the map contents in force ([`LbState::tables`]).
///
/// Changes are planned ([`LbState::plan_upserts`], …) against the state without changing
/// it — every check, every ID and the exact map delta — then either committed
/// ([`LbState::commit`]) or dropped. A plan costs what it changes, not what is in force: an
/// upsert of one service among 64k touches that service's entries only.
#[derive(Debug, Clone)]
pub struct LbState {
    pub services: BTreeMap<String, ServiceConfig>,
    compiled: HashMap<String, Compiled>,
    /// Frontend → (service ID, owning service).
    frontend_ids: HashMap<AddrKey, (u16, String)>,
    fe_pool: IdPool,
    /// Backends some service lists.
    backend_refs: HashMap<AddrKey, BackendRef>,
    be_pool: IdPool,
    /// Backends no service lists any more, kept (terminating) for established flows.
    retained: BTreeMap<u32, Lb4Backend>,
    retained_keys: HashMap<AddrKey, u32>,
    maglev_cache: HashMap<u16, MaglevEntry>,
    entries: usize,
    maglev_tables: usize,
    /// What the services were compiled with (`None`: nothing compiled yet).
    settings: Option<LbSettings>,
    tables: LbTables,
}

impl Default for LbState {
    fn default() -> Self {
        LbState {
            services: BTreeMap::new(),
            compiled: HashMap::new(),
            frontend_ids: HashMap::new(),
            fe_pool: IdPool::new(u16::MAX as u32),
            backend_refs: HashMap::new(),
            be_pool: IdPool::new(u32::MAX - 1),
            retained: BTreeMap::new(),
            retained_keys: HashMap::new(),
            maglev_cache: HashMap::new(),
            entries: 0,
            maglev_tables: 0,
            settings: None,
            tables: LbTables::default(),
        }
    }
}

/// What a change does to the maps, each entry with its value before (`None`: absent) and
/// after (`None`: removed). Written to the kernel in Cilium's order by the datapath.
#[derive(Debug, Default, Clone)]
pub struct LbDelta {
    pub backends: Vec<(u32, Option<Lb4Backend>, Option<Lb4Backend>)>,
    pub services: Vec<(Lb4Key, Option<Lb4Service>, Option<Lb4Service>)>,
    pub revnat: Vec<(u16, Option<RevNat4Value>, Option<RevNat4Value>)>,
    pub maglev: Vec<(u16, Option<Arc<[u32]>>)>,
    /// The datapath's Maglev hash seed (`Seeds::jhash0`) the new tables go with.
    pub maglev_seed: u32,
    pub affinity_match: Vec<(AffinityMatchKey, bool)>,
}

impl LbDelta {
    /// Entries changed in all maps (what a change costs the kernel).
    pub fn len(&self) -> usize {
        self.backends.len() + self.services.len() + self.revnat.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.maglev.is_empty() && self.affinity_match.is_empty()
    }
}

/// A checked change, ready to commit: everything [`LbState::commit`] does is decided here.
#[derive(Debug)]
pub struct LbPlan {
    removed: Vec<String>,
    upserted: Vec<(ServiceConfig, Compiled)>,
    fe_released: Vec<(AddrKey, u16)>,
    fe_added: Vec<(AddrKey, u16)>,
    /// Per backend key touched: its reference record after the change.
    be_after: Vec<(AddrKey, BackendRef)>,
    be_taken: Vec<u32>,
    /// Retained backends released for good (no connection uses them).
    be_released: Vec<u32>,
    maglev_cache: Vec<(u16, Option<MaglevEntry>)>,
    entries: usize,
    maglev_tables: usize,
    settings: LbSettings,
    pub delta: LbDelta,
}

/// The frontends and backends of one service under `s`.
fn compile_service(svc: &ServiceConfig, s: &LbSettings) -> Result<Compiled, LbError> {
    let affinity = if svc.session_affinity == SessionAffinity::ClientIP {
        SVC_FLAG_AFFINITY
    } else {
        0
    };
    let mut fronts = Vec::new();
    let mut backends: Vec<(AddrKey, BackendState)> = Vec::new();
    let mut seen: HashSet<AddrKey> = HashSet::new();
    let mut ports: BTreeSet<(u16, u8)> = BTreeSet::new();
    for (pi, port) in svc.ports.iter().enumerate() {
        let proto = port.protocol.number();
        let target = port.target_port.unwrap_or(port.port);
        let mut push = |addr: Ipv4Addr, pt: u16, flags: u8, node_port: bool| {
            fronts.push(Frontend {
                key: Lb4Key::master(addr.octets(), pt, proto),
                flags: flags | affinity,
                target_port: target,
                port: pi,
                node_port,
            })
        };
        push(svc.cluster_ip, port.port, 0, false);
        for ip in &svc.external_ips {
            push(
                *ip,
                port.port,
                SVC_FLAG_EXTERNAL_IP | SVC_FLAG_ROUTABLE,
                false,
            );
        }
        if let Some(np) = port.node_port {
            let Some(node) = s.node_ip else {
                return Err(LbError::NoNodeIp {
                    kind: "NodePort",
                    service: svc.id(),
                });
            };
            push(node, np, SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE, true);
            push(
                Ipv4Addr::UNSPECIFIED,
                np,
                SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE,
                true,
            );
        }
        for b in &svc.backends {
            let k = (b.ip, target, proto);
            if seen.insert(k) {
                backends.push((k, b.state));
            }
        }
        ports.insert((target, proto));
    }
    let n = slot_backends(svc).len();
    let maglev = n > 0 && svc.lb_algorithm.unwrap_or(s.algorithm) == LbAlgorithm::Maglev;
    Ok(Compiled {
        entries: fronts.len() * (1 + n),
        maglev_tables: if maglev { ports.len() } else { 0 },
        fronts,
        backends,
    })
}

/// The change from `old` (the leaving services' entries, as in force in `cur`) to `new`:
/// every new entry that differs from what `cur` holds, with its value before, and every old
/// key no new entry keeps, removed.
fn entry_delta<K: Copy + Eq + std::hash::Hash, V: Copy + PartialEq>(
    cur: &tables::cow_map::CowMap<K, V>,
    old: &HashMap<K, V>,
    new: &HashMap<K, V>,
) -> Vec<(K, Option<V>, Option<V>)> {
    let mut d: Vec<(K, Option<V>, Option<V>)> = new
        .iter()
        .filter_map(|(k, v)| {
            let before = cur.get(k).copied();
            (before != Some(*v)).then_some((*k, before, Some(*v)))
        })
        .collect();
    d.extend(
        old.iter()
            .filter(|(k, _)| !new.contains_key(*k))
            .map(|(k, v)| (*k, Some(*v), None)),
    );
    d
}

/// One frontend's map contents, given the IDs.
struct FrontEntries {
    rev: RevNat,
    master: Lb4Service,
    /// Slot i + 1 → backend ID.
    slots: Vec<u32>,
    revnat: RevNat4Value,
    maglev: Option<Vec<MaglevBackend>>,
}

fn front_entries(
    svc: &ServiceConfig,
    f: &Frontend,
    rev: u16,
    be_id: &dyn Fn(&AddrKey) -> u32,
    s: &LbSettings,
) -> FrontEntries {
    let rev = RevNat(rev);
    let alg = svc.lb_algorithm.unwrap_or(s.algorithm);
    let timeout = if svc.session_affinity == SessionAffinity::ClientIP {
        svc.session_affinity_timeout
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    } else {
        0
    };
    let slot_bes = slot_backends(svc);
    let slots: Vec<u32> = slot_bes
        .iter()
        .map(|b| be_id(&(b.ip, f.target_port, f.key.proto)))
        .collect();
    let maglev = (alg == LbAlgorithm::Maglev && !slots.is_empty()).then(|| {
        slot_bes
            .iter()
            .zip(&slots)
            .map(|(b, id)| MaglevBackend {
                name: Lb4Backend::new(b.ip, f.target_port, f.key.proto, BE_STATE_ACTIVE).name(),
                id: *id,
                weight: b.weight.unwrap_or(DEFAULT_WEIGHT),
            })
            .collect()
    });
    FrontEntries {
        rev,
        master: Lb4Service::master(slots.len() as u16, rev, f.flags, alg.code(), timeout),
        slots,
        revnat: RevNat4Value::new(f.key.address, f.key.port()),
        maglev,
    }
}

impl LbState {
    /// The map contents in force (what the workers run; cheap to clone).
    pub fn tables(&self) -> &LbTables {
        &self.tables
    }

    #[cfg(test)]
    /// A state with these services replacing every other one; `self` is unchanged.
    ///
    /// # Errors
    /// As [`LbState::plan_replace`].
    pub fn with_services(
        &self,
        services: &[ServiceConfig],
        s: &LbSettings,
    ) -> Result<LbState, LbError> {
        let plan = self.plan_replace(services, s)?;
        let mut next = self.clone();
        next.commit(plan);
        Ok(next)
    }

    #[cfg(test)]
    /// A state with `svcs` added or replaced; `self` is unchanged.
    ///
    /// # Errors
    /// As [`LbState::plan_upserts`].
    pub fn with_upserts(&self, svcs: &[ServiceConfig], s: &LbSettings) -> Result<LbState, LbError> {
        let plan = self.plan_upserts(svcs, s)?;
        let mut next = self.clone();
        next.commit(plan);
        Ok(next)
    }

    #[cfg(test)]
    /// A state without service `id`; `self` is unchanged.
    ///
    /// # Errors
    /// [`LbError::NotFound`].
    pub fn with_delete(&self, id: &str, s: &LbSettings) -> Result<LbState, LbError> {
        let plan = self.plan_delete(id, s)?;
        let mut next = self.clone();
        next.commit(plan);
        Ok(next)
    }

    /// Plan: these services replace every other one (config load and reload).
    ///
    /// # Errors
    /// Invalid services (all problems listed), ID exhaustion, a map or the Maglev memory
    /// bound too small.
    pub fn plan_replace(
        &self,
        services: &[ServiceConfig],
        s: &LbSettings,
    ) -> Result<LbPlan, LbError> {
        let problems = validate(services, "services");
        if !problems.is_empty() {
            return Err(LbError::Invalid(problems));
        }
        let ids: HashSet<String> = services.iter().map(|c| c.id()).collect();
        let removed: Vec<String> = self
            .services
            .keys()
            .filter(|k| !ids.contains(*k))
            .cloned()
            .collect();
        self.plan(removed, services, s)
    }

    /// Plan: `svcs` added or replaced (by namespace/name), all together: either every one is
    /// taken or none is. Problems of the batch itself are reported by its own positions
    /// (`services[1].ports`), and so are conflicts with the services already in force.
    ///
    /// # Errors
    /// As [`LbState::plan_replace`].
    pub fn plan_upserts(&self, svcs: &[ServiceConfig], s: &LbSettings) -> Result<LbPlan, LbError> {
        let problems = validate(svcs, "services");
        if !problems.is_empty() {
            return Err(LbError::Invalid(problems));
        }
        self.plan(Vec::new(), svcs, s)
    }

    /// Plan: service `id` (`namespace/name`) removed.
    ///
    /// # Errors
    /// [`LbError::NotFound`].
    pub fn plan_delete(&self, id: &str, s: &LbSettings) -> Result<LbPlan, LbError> {
        if !self.services.contains_key(id) {
            return Err(LbError::NotFound(id.into()));
        }
        self.plan(vec![id.to_string()], &[], s)
    }

    /// Plan: the retained (terminating) backends no connection uses any more are dropped;
    /// `None` if there are none.
    pub fn plan_release_unused(&self, in_use: &hashbrown::HashSet<u32>) -> Option<LbPlan> {
        let gone: Vec<u32> = self
            .retained
            .keys()
            .filter(|id| !in_use.contains(*id))
            .copied()
            .collect();
        if gone.is_empty() {
            return None;
        }
        let mut delta = LbDelta::default();
        for id in &gone {
            delta
                .backends
                .push((*id, self.tables.backends.get(id).copied(), None));
        }
        Some(LbPlan {
            removed: Vec::new(),
            upserted: Vec::new(),
            fe_released: Vec::new(),
            fe_added: Vec::new(),
            be_after: Vec::new(),
            be_taken: Vec::new(),
            be_released: gone,
            maglev_cache: Vec::new(),
            entries: self.entries,
            maglev_tables: self.maglev_tables,
            settings: self.settings.clone().unwrap_or_default(),
            delta,
        })
    }

    #[cfg(test)]
    /// Drop retained backends no connection uses any more; true if any went.
    pub fn release_unused(&mut self, in_use: &hashbrown::HashSet<u32>) -> bool {
        match self.plan_release_unused(in_use) {
            Some(p) => {
                self.commit(p);
                true
            }
            None => false,
        }
    }

    /// IDs of retained backends (for status and tests).
    pub fn retained_backends(&self) -> Vec<u32> {
        self.retained.keys().copied().collect()
    }

    /// The core of every plan: services `removed` go, `upserted` are added or replaced.
    /// Under new settings every service is recompiled.
    fn plan(
        &self,
        removed: Vec<String>,
        upserted: &[ServiceConfig],
        s: &LbSettings,
    ) -> Result<LbPlan, LbError> {
        Ok(self
            .plan_core(removed, upserted, s, true)?
            .expect("a plan with its delta"))
    }

    /// Would `services` (already through [`validate`]) be taken by an empty state under `s`?
    /// Everything a plan checks — frontend clashes `validate` cannot see, IDs, map sizes, the
    /// Maglev memory bound — without building the map delta (no Maglev table is computed):
    /// what `config check` asks.
    ///
    /// # Errors
    /// As [`LbState::plan_replace`].
    pub fn check_services(services: &[ServiceConfig], s: &LbSettings) -> Result<(), LbError> {
        LbState::default()
            .plan_core(Vec::new(), services, s, false)
            .map(|_| ())
    }

    /// [`LbState::plan`]; with `with_delta` false it stops after the checks (`None`).
    fn plan_core(
        &self,
        removed: Vec<String>,
        upserted: &[ServiceConfig],
        s: &LbSettings,
        with_delta: bool,
    ) -> Result<Option<LbPlan>, LbError> {
        let resettle = self.settings.as_ref().is_some_and(|old| old != s);
        let batch: HashMap<String, usize> = upserted
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id(), i))
            .collect();
        let removed_set: HashSet<&str> = removed.iter().map(String::as_str).collect();
        // What changes: the batch's services that differ from what is in force, plus every
        // other one under new settings.
        let mut changed: Vec<(Option<usize>, &ServiceConfig)> = Vec::new();
        for (i, c) in upserted.iter().enumerate() {
            if resettle || self.services.get(&c.id()) != Some(c) {
                changed.push((Some(i), c));
            }
        }
        if resettle {
            for (id, c) in &self.services {
                if !batch.contains_key(id) && !removed_set.contains(id.as_str()) {
                    changed.push((None, c));
                }
            }
        }
        let mut upserts: Vec<(Option<usize>, ServiceConfig, Compiled)> = Vec::new();
        for (i, c) in changed {
            upserts.push((i, c.clone(), compile_service(c, s)?));
        }
        // Services whose old entries go: removed ones and replaced ones.
        let mut leaving: Vec<&str> = removed.iter().map(String::as_str).collect();
        for (_, c, _) in &upserts {
            if let Some((k, _)) = self.services.get_key_value(&c.id()) {
                leaving.push(k.as_str());
            }
        }

        // Frontends: conflicts with services that keep theirs, then IDs. Services whose old
        // entries go (removed, replaced, recompiled) give up their frontends.
        let yielding: HashSet<&str> = leaving
            .iter()
            .copied()
            .chain(batch.keys().map(String::as_str))
            .collect();
        let mut problems = Vec::new();
        // Frontend → the upsert that claims it. `validate` cannot see every clash: a NodePort
        // on the node's address against another service's external IP or ClusterIP equal to
        // that address (or the same service's), and services recompiled under new settings.
        let mut new_fronts: HashMap<AddrKey, usize> = HashMap::new();
        for (j, (i, c, comp)) in upserts.iter().enumerate() {
            for f in &comp.fronts {
                let k = f.addr_key();
                let other = match new_fronts.get(&k) {
                    Some(&o) if o == j => Some("this same service (twice)".to_string()),
                    Some(&o) => Some(upserts[o].1.id()),
                    None => match self.frontend_ids.get(&k) {
                        Some((_, owner)) if !yielding.contains(owner.as_str()) => {
                            Some(owner.clone())
                        }
                        _ => None,
                    },
                };
                new_fronts.entry(k).or_insert(j);
                let Some(other) = other else { continue };
                let field = match i {
                    Some(i) => format!(
                        "services[{i}].ports[{}].{}",
                        f.port,
                        if f.node_port { "node_port" } else { "port" }
                    ),
                    None => format!("service {} (recompiled under new settings)", c.id()),
                };
                problems.push(Problem {
                    field,
                    msg: format!(
                        "frontend {}:{}/{:?} is already used by {other}",
                        k.0, k.1, c.ports[f.port].protocol
                    ),
                });
            }
        }
        if !problems.is_empty() {
            return Err(LbError::Invalid(problems));
        }
        let mut old_fronts: BTreeSet<AddrKey> = BTreeSet::new();
        for id in &leaving {
            for f in &self.compiled[*id].fronts {
                old_fronts.insert(f.addr_key());
            }
        }
        let fe_released: Vec<(AddrKey, u16)> = old_fronts
            .iter()
            .filter(|k| !new_fronts.contains_key(*k))
            .map(|k| (*k, self.frontend_ids[k].0))
            .collect();
        let mut added: Vec<AddrKey> = new_fronts
            .keys()
            .filter(|k| !old_fronts.contains(*k))
            .copied()
            .collect();
        added.sort_unstable();
        let want = self.frontend_ids.len() - fe_released.len() + added.len();
        if want > u16::MAX as usize {
            return Err(LbError::OutOfIds { want });
        }
        let rel: Vec<u32> = fe_released.iter().map(|(_, id)| *id as u32).collect();
        let ids = self
            .fe_pool
            .preview(&rel, added.len())
            .ok_or(LbError::OutOfIds { want })?;
        let fe_added: Vec<(AddrKey, u16)> = added
            .into_iter()
            .zip(ids.iter().map(|i| *i as u16))
            .collect();
        let fe_new_id: HashMap<AddrKey, u16> = fe_added.iter().copied().collect();
        let fe_id = |k: &AddrKey| -> u16 {
            fe_new_id
                .get(k)
                .copied()
                .unwrap_or_else(|| self.frontend_ids[k].0)
        };

        // Backends: references before and after.
        let mut refs: HashMap<AddrKey, BackendRef> = HashMap::new();
        let get_ref = |k: &AddrKey| self.backend_refs.get(k).copied();
        for id in &leaving {
            for (k, st) in &self.compiled[*id].backends {
                let r = refs
                    .entry(*k)
                    .or_insert_with(|| get_ref(k).unwrap_or_default());
                r.by_state[state_index(*st)] -= 1;
            }
        }
        for (_, _, comp) in &upserts {
            for (k, st) in &comp.backends {
                let r = refs
                    .entry(*k)
                    .or_insert_with(|| get_ref(k).unwrap_or_default());
                r.by_state[state_index(*st)] += 1;
            }
        }
        let mut fresh: Vec<AddrKey> = refs
            .iter()
            .filter(|(k, r)| {
                r.refs() > 0
                    && !self.backend_refs.contains_key(*k)
                    && !self.retained_keys.contains_key(*k)
            })
            .map(|(k, _)| *k)
            .collect();
        fresh.sort_unstable();
        let backends_after = self.backend_refs.len() + self.retained.len() + fresh.len();
        if backends_after > s.map_max {
            return Err(LbError::MapFull {
                map: BACKENDS_MAP,
                need: backends_after,
                max: s.map_max,
            });
        }
        let taken = self
            .be_pool
            .preview(&[], fresh.len())
            .ok_or(LbError::MapFull {
                map: BACKENDS_MAP,
                need: backends_after,
                max: s.map_max,
            })?;
        for (k, id) in fresh.iter().zip(&taken) {
            refs.get_mut(k).expect("fresh key").id = *id;
        }
        for (k, r) in refs.iter_mut() {
            if r.id == 0 {
                r.id = self
                    .backend_refs
                    .get(k)
                    .map(|b| b.id)
                    .or_else(|| self.retained_keys.get(k).copied())
                    .expect("a known backend has an ID");
            }
        }
        let be_id = |k: &AddrKey| refs[k].id;

        // Capacity of the services map and of the Maglev memory.
        let mut entries = self.entries;
        let mut maglev_tables = self.maglev_tables;
        for id in &leaving {
            entries -= self.compiled[*id].entries;
            maglev_tables -= self.compiled[*id].maglev_tables;
        }
        for (_, _, comp) in &upserts {
            entries += comp.entries;
            maglev_tables += comp.maglev_tables;
        }
        if entries > s.map_max {
            return Err(LbError::MapFull {
                map: SERVICES_MAP,
                need: entries,
                max: s.map_max,
            });
        }
        let need = maglev_tables * s.maglev_m * 4;
        if need > MAX_MAGLEV_BYTES {
            return Err(LbError::MaglevTooLarge {
                tables: maglev_tables,
                m: s.maglev_m,
                need_mib: need.div_ceil(1 << 20),
                max_mib: MAX_MAGLEV_BYTES >> 20,
            });
        }

        if !with_delta {
            return Ok(None);
        }
        // The map delta: entries of the leaving services' frontends against the new ones.
        let mut old_svc: HashMap<Lb4Key, Lb4Service> = HashMap::new();
        let mut old_rev: HashMap<u16, RevNat4Value> = HashMap::new();
        let mut old_mag: HashSet<u16> = HashSet::new();
        let mut old_aff: HashSet<AffinityMatchKey> = HashSet::new();
        for id in &leaving {
            for f in &self.compiled[*id].fronts {
                let Some(m) = self.tables.services.get(&f.key) else {
                    continue;
                };
                old_svc.insert(f.key, *m);
                for slot in 1..=m.count {
                    if let Some(v) = self.tables.services.get(&f.key.slot(slot)) {
                        old_svc.insert(f.key.slot(slot), *v);
                        if m.flags & SVC_FLAG_AFFINITY != 0 {
                            old_aff.insert(AffinityMatchKey::new(v.backend_id(), m.rev_nat()));
                        }
                    }
                }
                let rev = m.rev_nat().0;
                if let Some(v) = self.tables.revnat.get(&rev) {
                    old_rev.insert(rev, *v);
                }
                if self.tables.maglev.contains_key(&rev) {
                    old_mag.insert(rev);
                }
            }
        }
        let mut new_svc: HashMap<Lb4Key, Lb4Service> = HashMap::new();
        let mut new_rev: HashMap<u16, RevNat4Value> = HashMap::new();
        let mut new_aff: HashSet<AffinityMatchKey> = HashSet::new();
        let mut maglev_cache: Vec<(u16, Option<MaglevEntry>)> = Vec::new();
        let mut delta = LbDelta {
            maglev_seed: s.seeds.jhash0,
            ..Default::default()
        };
        // A cached Maglev table is the same table only under the same seeds.
        let same_seeds = self.settings.as_ref().is_none_or(|o| o.seeds == s.seeds);
        for (_, c, comp) in &upserts {
            // The frontends of one service port share one table.
            let mut shared: HashMap<Vec<MaglevBackend>, Arc<[u32]>> = HashMap::new();
            for f in &comp.fronts {
                let e = front_entries(c, f, fe_id(&f.addr_key()), &be_id, s);
                for (i, id) in e.slots.iter().enumerate() {
                    new_svc.insert(
                        f.key.slot(i as u16 + 1),
                        Lb4Service::slot(*id, e.rev, f.flags),
                    );
                    if f.flags & SVC_FLAG_AFFINITY != 0 {
                        new_aff.insert(AffinityMatchKey::new(*id, e.rev));
                    }
                }
                new_svc.insert(f.key, e.master);
                new_rev.insert(e.rev.0, e.revnat);
                if let Some(input) = e.maglev {
                    let table = match self.maglev_cache.get(&e.rev.0) {
                        Some((inp, table))
                            if same_seeds && *inp == input && table.len() == s.maglev_m =>
                        {
                            table.clone()
                        }
                        _ => match shared.get(&input) {
                            Some(t) => t.clone(),
                            None => Arc::from(maglev::lookup_table(&input, s.maglev_m, &s.seeds)),
                        },
                    };
                    shared.insert(input.clone(), table.clone());
                    let unchanged = self
                        .tables
                        .maglev
                        .get(&e.rev.0)
                        .is_some_and(|t| Arc::ptr_eq(t, &table));
                    if !unchanged {
                        delta.maglev.push((e.rev.0, Some(table.clone())));
                    }
                    old_mag.remove(&e.rev.0);
                    maglev_cache.push((e.rev.0, Some((input, table))));
                }
            }
        }
        for rev in old_mag {
            delta.maglev.push((rev, None));
            maglev_cache.push((rev, None));
        }
        for rev in old_rev.keys() {
            if !new_rev.contains_key(rev) {
                maglev_cache.push((*rev, None));
            }
        }
        delta.services = entry_delta(&self.tables.services, &old_svc, &new_svc);
        delta.revnat = entry_delta(&self.tables.revnat, &old_rev, &new_rev);
        for k in &new_aff {
            if !self.tables.affinity_match.contains_key(k) {
                delta.affinity_match.push((*k, true));
            }
        }
        for k in &old_aff {
            if !new_aff.contains(k) {
                delta.affinity_match.push((*k, false));
            }
        }
        let mut be_after: Vec<(AddrKey, BackendRef)> = refs.into_iter().collect();
        be_after.sort_unstable_by_key(|(k, _)| *k);
        for (k, r) in &be_after {
            let v = Lb4Backend::new(
                k.0,
                k.1,
                k.2,
                if r.refs() > 0 {
                    r.state()
                } else {
                    BE_STATE_TERMINATING
                },
            );
            let old = self.tables.backends.get(&r.id).copied();
            if old != Some(v) {
                delta.backends.push((r.id, old, Some(v)));
            }
        }
        Ok(Some(LbPlan {
            removed,
            upserted: upserts.into_iter().map(|(_, c, comp)| (c, comp)).collect(),
            fe_released,
            fe_added,
            be_after,
            be_taken: taken,
            be_released: Vec::new(),
            maglev_cache,
            entries,
            maglev_tables,
            settings: s.clone(),
            delta,
        }))
    }

    /// Put a plan in force: the state and [`LbState::tables`] (the caller has written
    /// `plan.delta` to the kernel maps).
    pub fn commit(&mut self, plan: LbPlan) {
        for id in &plan.removed {
            self.services.remove(id);
            self.compiled.remove(id);
        }
        for (k, _) in &plan.fe_released {
            self.frontend_ids.remove(k);
        }
        let rel: Vec<u32> = plan.fe_released.iter().map(|(_, i)| *i as u32).collect();
        let taken: Vec<u32> = plan.fe_added.iter().map(|(_, i)| *i as u32).collect();
        self.fe_pool.commit(&rel, &taken);
        for (k, id) in &plan.fe_added {
            self.frontend_ids.insert(*k, (*id, String::new()));
        }
        for (c, comp) in plan.upserted {
            let id = c.id();
            for f in &comp.fronts {
                if let Some(e) = self.frontend_ids.get_mut(&f.addr_key()) {
                    e.1.clone_from(&id);
                }
            }
            self.compiled.insert(id.clone(), comp);
            self.services.insert(id, c);
        }
        for (k, r) in plan.be_after {
            if r.refs() > 0 {
                if let Some(id) = self.retained_keys.remove(&k) {
                    self.retained.remove(&id);
                }
                self.backend_refs.insert(k, r);
            } else if self.backend_refs.remove(&k).is_some() {
                self.retained
                    .insert(r.id, Lb4Backend::new(k.0, k.1, k.2, BE_STATE_TERMINATING));
                self.retained_keys.insert(k, r.id);
            }
        }
        self.be_pool.commit(&plan.be_released, &plan.be_taken);
        for id in &plan.be_released {
            if let Some(b) = self.retained.remove(id) {
                self.retained_keys.remove(&(b.addr(), b.port(), b.proto));
            }
        }
        for (rev, e) in plan.maglev_cache {
            match e {
                Some(e) => {
                    self.maglev_cache.insert(rev, e);
                }
                None => {
                    self.maglev_cache.remove(&rev);
                }
            }
        }
        self.entries = plan.entries;
        self.maglev_tables = plan.maglev_tables;
        let s = plan.settings;
        let t = &mut self.tables;
        t.seeds = s.seeds;
        t.maglev_m = s.maglev_m;
        t.default_alg = s.algorithm.code();
        t.node_ip = s.node_ip.map_or([0; 4], |ip| ip.octets());
        self.settings = Some(s);
        let d = plan.delta;
        for (id, _, v) in d.backends {
            match v {
                Some(v) => t.backends.insert(id, v),
                None => t.backends.remove(&id),
            };
        }
        for (k, _, v) in d.services {
            match v {
                Some(v) => t.services.insert(k, v),
                None => t.services.remove(&k),
            };
        }
        for (k, _, v) in d.revnat {
            match v {
                Some(v) => t.revnat.insert(k, v),
                None => t.revnat.remove(&k),
            };
        }
        for (k, v) in d.maglev {
            match v {
                Some(v) => t.maglev.insert(k, v),
                None => t.maglev.remove(&k),
            };
        }
        for (k, add) in d.affinity_match {
            if add {
                t.affinity_match.insert(k, ());
            } else {
                t.affinity_match.remove(&k);
            }
        }
    }
}

#[cfg(test)]
impl LbState {
    /// The map contents computed from nothing but the services and the IDs in force, the
    /// way the agent compiled them before plans existed: the oracle the incremental path is
    /// checked against.
    fn tables_from_scratch(&self) -> LbTables {
        let s = self.settings.clone().unwrap_or_default();
        let mut t = LbTables {
            seeds: s.seeds,
            maglev_m: s.maglev_m,
            default_alg: s.algorithm.code(),
            node_ip: s.node_ip.map_or([0; 4], |ip| ip.octets()),
            ..Default::default()
        };
        for (id, b) in &self.retained {
            t.backends.insert(*id, *b);
        }
        let mut by: BTreeMap<AddrKey, [i64; 3]> = BTreeMap::new();
        let compiled: Vec<(&ServiceConfig, Compiled)> = self
            .services
            .values()
            .map(|c| (c, compile_service(c, &s).expect("compiles")))
            .collect();
        for (_, comp) in &compiled {
            for (k, st) in &comp.backends {
                by.entry(*k).or_default()[state_index(*st)] += 1;
            }
        }
        for (k, by_state) in by {
            let id = self.backend_refs[&k].id;
            let r = BackendRef { id, by_state };
            t.backends
                .insert(id, Lb4Backend::new(k.0, k.1, k.2, r.state()));
        }
        let be_id = |k: &AddrKey| self.backend_refs[k].id;
        for (c, comp) in &compiled {
            for f in &comp.fronts {
                let e = front_entries(c, f, self.frontend_ids[&f.addr_key()].0, &be_id, &s);
                for (i, id) in e.slots.iter().enumerate() {
                    t.services.insert(
                        f.key.slot(i as u16 + 1),
                        Lb4Service::slot(*id, e.rev, f.flags),
                    );
                    if f.flags & SVC_FLAG_AFFINITY != 0 {
                        t.affinity_match
                            .insert(AffinityMatchKey::new(*id, e.rev), ());
                    }
                }
                t.services.insert(f.key, e.master);
                t.revnat.insert(e.rev.0, e.revnat);
                if let Some(input) = e.maglev {
                    t.maglev.insert(
                        e.rev.0,
                        Arc::from(maglev::lookup_table(&input, s.maglev_m, &s.seeds)),
                    );
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> ServiceConfig {
        crate::yaml::parse(yaml, &crate::yaml::SERVICES).unwrap()
    }

    fn settings() -> LbSettings {
        LbSettings {
            node_ip: Some(Ipv4Addr::new(192, 168, 200, 1)),
            maglev_m: 251,
            ..Default::default()
        }
    }

    const WEB: &str = "
name: web
type: NodePort
cluster_ip: 10.96.0.10
external_ips: [192.168.200.100]
ports: [{ port: 80, target_port: 8080, node_port: 30080 }]
lb_algorithm: maglev
backends: [{ ip: 10.200.1.12 }, { ip: 10.201.1.11 }]
";

    #[test]
    fn frontends_slots_and_revnat_like_the_agent() {
        let s = settings();
        let st = LbState::default().with_services(&[svc(WEB)], &s).unwrap();
        let t = st.tables().clone();
        // ClusterIP + external IP + node IP + surrogate, each a master and two slots.
        assert_eq!(t.services.len(), 4 * 3);
        let (k, m) = t.frontend([10, 96, 0, 10], 80, 6).unwrap();
        assert_eq!(k.backend_slot, 0);
        assert_eq!(m.count, 2);
        assert!(!m.routable());
        assert_eq!(m.algorithm(), ALG_MAGLEV);
        assert_eq!(
            t.revnat[&m.rev_nat().0],
            RevNat4Value::new([10, 96, 0, 10], 80)
        );
        let (_, np) = t.frontend([192, 168, 200, 1], 30080, 6).unwrap();
        assert_eq!(np.flags, SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE);
        assert!(t.services.contains_key(&Lb4Key::master([0; 4], 30080, 6)));
        let (_, ext) = t.frontend([192, 168, 200, 100], 80, 6).unwrap();
        assert_eq!(ext.flags, SVC_FLAG_EXTERNAL_IP | SVC_FLAG_ROUTABLE);
        // Backends are shared by all four frontends: two IDs.
        assert_eq!(t.backends.len(), 2);
        assert!(
            t.backends
                .values()
                .all(|b| b.port() == 8080 && b.is_active())
        );
        // Every frontend has its own Maglev table over the same two backends.
        assert_eq!(t.maglev.len(), 4);
        let tab = &t.maglev[&m.rev_nat().0];
        assert_eq!(tab.len(), 251);
        assert!(tab.iter().all(|id| t.backends.contains_key(id)));
    }

    #[test]
    fn ids_are_stable_and_removed_backends_are_retained_terminating() {
        let s = settings();
        let st = LbState::default().with_services(&[svc(WEB)], &s).unwrap();
        let t1 = st.tables().clone();
        let rev1 = t1.frontend([10, 96, 0, 10], 80, 6).unwrap().1.rev_nat();
        let gone_id = *t1
            .backends
            .iter()
            .find(|(_, b)| b.addr() == Ipv4Addr::new(10, 201, 1, 11))
            .unwrap()
            .0;
        let mut one = svc(WEB);
        one.backends.truncate(1);
        let mut st2 = st.with_upserts(&[one], &s).unwrap();
        let t2 = st2.tables().clone();
        let (_, m) = t2.frontend([10, 96, 0, 10], 80, 6).unwrap();
        assert_eq!(m.rev_nat(), rev1, "service IDs are kept");
        assert_eq!(m.count, 1);
        assert_eq!(t2.backends[&gone_id].flags, BE_STATE_TERMINATING);
        assert!(!t2.maglev[&m.rev_nat().0].contains(&gone_id));
        // Released once no connection uses it.
        assert!(st2.release_unused(&hashbrown::HashSet::new()));
        assert!(!st2.tables().clone().backends.contains_key(&gone_id));
    }

    #[test]
    fn a_batch_is_taken_whole_or_not_at_all() {
        let s = settings();
        let mut dp = crate::datapath::Datapath::new(Vec::new(), 1, crate::datapath::NoKernel);
        dp.set_services(&[svc(WEB)], &s).unwrap();
        let mut good = svc(WEB);
        good.name = "other".into();
        good.cluster_ip = Ipv4Addr::new(10, 96, 0, 20);
        good.external_ips.clear();
        good.ports[0].node_port = Some(30081);
        let mut bad = svc(WEB);
        bad.name = "bad".into();
        bad.ports.clear();
        let err = dp
            .upsert_services(&[good.clone(), bad])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("services[1].ports: a service needs at least one port"),
            "{err}"
        );
        assert_eq!(dp.services().len(), 1, "nothing of the batch was taken");
        dp.upsert_services(&[good]).unwrap();
        assert_eq!(dp.services().len(), 2);
    }

    /// Issue #11 defect 2: a Maglev service whose backends all weigh 0 used to get an empty
    /// lookup table (and a worker dividing by its length). Weight 0 now means no slot.
    #[test]
    fn backends_of_weight_zero_get_no_slot_and_no_maglev_turn() {
        let s = settings();
        let mut all_zero = svc(WEB);
        for b in &mut all_zero.backends {
            b.weight = Some(0);
        }
        let st = LbState::default().with_services(&[all_zero], &s).unwrap();
        let t = st.tables().clone();
        let (_, m) = t.frontend([10, 96, 0, 10], 80, 6).unwrap();
        assert_eq!(m.count, 0, "answered as a service without backends");
        assert!(t.maglev.is_empty(), "no (empty) Maglev table");
        assert!(t.maglev.values().all(|tab| !tab.is_empty()));
        // One of two at weight 0: the other takes every slot and every Maglev turn.
        let mut one_zero = svc(WEB);
        one_zero.backends[0].weight = Some(0);
        let st = LbState::default().with_services(&[one_zero], &s).unwrap();
        let t = st.tables().clone();
        let (_, m) = t.frontend([10, 96, 0, 10], 80, 6).unwrap();
        assert_eq!(m.count, 1);
        let tab = &t.maglev[&m.rev_nat().0];
        let only = t.services[&Lb4Key::master([10, 96, 0, 10], 80, 6).slot(1)].backend_id();
        assert!(tab.iter().all(|id| *id == only));
        assert_eq!(t.backends[&only].addr(), Ipv4Addr::new(10, 201, 1, 11));
    }

    /// `WEB` as service `s<i>`: ClusterIP 10.96.x.y (i after 10.96.0.0), random selection.
    fn clusterip(i: u32) -> ServiceConfig {
        let mut x = svc(WEB);
        x.name = format!("s{i}");
        x.cluster_ip = Ipv4Addr::from(0x0a60_0000 + i);
        x.kind = ServiceType::ClusterIP;
        x.external_ips.clear();
        x.ports[0].node_port = None;
        x.lb_algorithm = Some(LbAlgorithm::Random);
        x
    }

    fn many_backends(n: usize) -> Vec<BackendConfig> {
        (0..n)
            .map(|i| BackendConfig {
                ip: Ipv4Addr::from(0x0a80_0000u32 + i as u32),
                weight: None,
                state: BackendState::Active,
            })
            .collect()
    }

    /// Issue #11 defects 3 and 8: 65 536 backends wrapped the 16-bit count and slots, and
    /// allocating 65 535 of them took 228 s (a lowest-free scan per backend).
    #[test]
    fn backend_counts_beyond_the_layout_are_refused_and_allocation_is_linear() {
        let s = settings();
        let mut one = svc(WEB);
        one.kind = ServiceType::ClusterIP;
        one.external_ips.clear();
        one.ports[0].node_port = None;
        one.lb_algorithm = Some(LbAlgorithm::Random);
        one.backends = many_backends(65_536);
        let e = LbState::default()
            .with_services(std::slice::from_ref(&one), &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("services[0].backends: 65536 backends, at most 65535"),
            "{e}"
        );
        one.backends.pop();
        let t0 = std::time::Instant::now();
        let st = LbState::default().with_services(&[one], &s).unwrap();
        let t = st.tables().clone();
        assert_eq!(t.frontend([10, 96, 0, 10], 80, 6).unwrap().1.count, 65_535);
        assert_eq!(
            t.services.len(),
            65_536,
            "master + 65535 slots: the map is full"
        );
        assert_eq!(t.backends.len(), 65_535);
        let ids: BTreeSet<u32> = t.backends.keys().copied().collect();
        assert_eq!(
            (ids.first(), ids.last()),
            (Some(&1), Some(&65_535)),
            "dense IDs"
        );
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn services_that_overflow_a_map_are_refused_whole() {
        let s = settings();
        let mut dp = crate::datapath::Datapath::new(Vec::new(), 1, crate::datapath::NoKernel);
        let web = svc(WEB);
        let mk = |name: &str, vip: [u8; 4], n: usize| {
            let mut x = web.clone();
            x.name = name.into();
            x.cluster_ip = vip.into();
            x.kind = ServiceType::ClusterIP;
            x.external_ips.clear();
            x.ports[0].node_port = None;
            x.backends = many_backends(n);
            x
        };
        dp.set_services(&[mk("a", [10, 96, 1, 1], 40_000)], &s)
            .unwrap();
        let g = dp.tables().generation;
        let e = dp
            .upsert_services(&[mk("b", [10, 96, 1, 2], 30_000)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cilium_lb4_services_v2 would need 70002 entries and holds 65536"),
            "{e}"
        );
        assert_eq!(dp.tables().generation, g, "nothing published");
        assert_eq!(dp.services().len(), 1);
        // A larger `datapath.lb_map_max` takes the same change; a smaller one refuses a
        // service the default takes.
        let mut dp2 = crate::datapath::Datapath::new(Vec::new(), 1, crate::datapath::NoKernel);
        let wide = LbSettings {
            map_max: 131_072,
            ..settings()
        };
        dp2.set_services(
            &[
                mk("a", [10, 96, 1, 1], 40_000),
                mk("b", [10, 96, 1, 2], 30_000),
            ],
            &wide,
        )
        .unwrap();
        assert_eq!(dp2.tables().lb.services.len(), 70_002);
        // many_backends(n) are the first n of one list: the two services share 30 000.
        assert_eq!(dp2.tables().lb.backends.len(), 40_000);
        let narrow = LbSettings {
            map_max: 1024,
            ..settings()
        };
        let mut dp3 = crate::datapath::Datapath::new(Vec::new(), 1, crate::datapath::NoKernel);
        let e = dp3
            .set_services(&[mk("c", [10, 96, 1, 3], 1024)], &narrow)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "cilium_lb4_services_v2 would need 1025 entries and holds 1024 (datapath.lb_map_max"
            ),
            "{e}"
        );
        assert!(dp3.services().is_empty(), "nothing taken");
        dp3.set_services(&[mk("c", [10, 96, 1, 3], 1023)], &narrow)
            .unwrap();
        // Maglev memory: 65 521-slot tables for 2 200 services is more than 512 MiB.
        let big = LbSettings {
            maglev_m: 65_521,
            algorithm: LbAlgorithm::Maglev,
            ..settings()
        };
        let svcs: Vec<ServiceConfig> = (0..2200u32)
            .map(|i| mk(&format!("m{i}"), (0x0a60_0000 + i).to_be_bytes(), 1))
            .collect();
        let e = LbState::default()
            .with_services(&svcs, &big)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Maglev tables would need 550 MiB"), "{e}");
    }

    /// Issue #11 defect 8: 20 000 services took 17.5 s (a lowest-free scan per frontend).
    #[test]
    fn twenty_thousand_services_allocate_in_linear_time() {
        let s = settings();
        let svcs: Vec<ServiceConfig> = (0..20_000u32)
            .map(|i| {
                let mut x = clusterip(i);
                x.backends.truncate(1);
                x
            })
            .collect();
        let t0 = std::time::Instant::now();
        let st = LbState::default().with_services(&svcs, &s).unwrap();
        let t = st.tables().clone();
        assert_eq!(t.revnat.len(), 20_000);
        let ids: BTreeSet<u16> = t.revnat.keys().copied().collect();
        assert_eq!(ids.last(), Some(&20_000), "dense IDs from the counter");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn no_backends_means_count_zero() {
        let s = settings();
        let mut e = svc(WEB);
        e.backends.clear();
        let st = LbState::default().with_services(&[e], &s).unwrap();
        let t = st.tables().clone();
        assert_eq!(t.frontend([10, 96, 0, 10], 80, 6).unwrap().1.count, 0);
        assert!(t.maglev.is_empty());
    }

    #[test]
    fn bad_services_are_refused_with_fields() {
        let s = settings();
        let mut a = svc(WEB);
        a.ports[0].node_port = Some(80);
        a.session_affinity_timeout = Some(5);
        let mut b = svc(WEB);
        b.name = "web2".into();
        let err = LbState::default()
            .with_services(&[a, b], &s)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("services[0].ports[0].node_port: 80 is outside the NodePort range"),
            "{err}"
        );
        assert!(
            err.contains("services[0].session_affinity_timeout: only with"),
            "{err}"
        );
        assert!(err.contains("services[1].ports[0].port: frontend 10.96.0.10:80/TCP is already used by default/web"), "{err}");
        let no_node = LbSettings {
            node_ip: None,
            ..settings()
        };
        assert!(matches!(
            LbState::default().with_services(&[svc(WEB)], &no_node),
            Err(LbError::NoNodeIp { .. })
        ));
    }

    /// Every map of two table versions, as sorted lists.
    fn dump(t: &LbTables) -> String {
        fn sorted<K: Ord + Copy, V: std::fmt::Debug>(
            it: impl Iterator<Item = (K, V)>,
        ) -> Vec<(K, String)> {
            let mut v: Vec<(K, String)> = it.map(|(k, v)| (k, format!("{v:?}"))).collect();
            v.sort_by_key(|(k, _)| *k);
            v
        }
        let svcs = sorted(
            t.services
                .iter()
                .map(|(k, v)| ((k.address, k.dport, k.backend_slot, k.proto), *v)),
        );
        format!(
            "services {svcs:?}\nbackends {:?}\nrevnat {:?}\nmaglev {:?}\naffinity {:?}\n{:?} {} {} {:?}",
            sorted(t.backends.iter().map(|(k, v)| (*k, *v))),
            sorted(t.revnat.iter().map(|(k, v)| (*k, *v))),
            sorted(t.maglev.iter().map(|(k, v)| (*k, v.clone()))),
            sorted(
                t.affinity_match
                    .keys()
                    .map(|k| ((k.backend_id, k.rev_nat_id), ()))
            ),
            t.seeds,
            t.maglev_m,
            t.default_alg,
            t.node_ip,
        )
    }

    /// The incremental path against the from-scratch oracle: random upserts (new services,
    /// changed backends, states, weights, algorithms, affinity, moved VIPs), deletes,
    /// replaces, setting changes and backend releases, each checked entry by entry; service
    /// IDs of frontends that stay never change.
    #[test]
    fn incremental_changes_match_a_compile_from_scratch() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let base = settings();
        let mut s = base.clone();
        let mut st = LbState::default();
        let mk = |i: u64, rnd: &mut dyn FnMut(u64) -> u64| -> ServiceConfig {
            let mut x = svc(WEB);
            x.name = format!("s{i}");
            // Services sometimes swap VIPs within a batch-free step: 12 names over 16 VIPs.
            x.cluster_ip = Ipv4Addr::new(10, 96, 1, rnd(16) as u8 + 1);
            // Sometimes the node's own address as an external IP, and ports that meet node
            // ports: frontends `validate` cannot see clash (node address:port).
            x.external_ips = match rnd(4) {
                0 => vec![Ipv4Addr::new(192, 168, 200, 100 + i as u8)],
                1 => vec![Ipv4Addr::new(192, 168, 200, 1)],
                _ => vec![],
            };
            x.ports[0].port = [80, 30001][rnd(2) as usize];
            if rnd(2) == 0 {
                x.kind = ServiceType::ClusterIP;
                x.ports[0].node_port = None;
            } else {
                x.ports[0].node_port = Some(30000 + rnd(3) as u16);
            }
            x.ports[0].target_port = Some([8080, 9090][rnd(2) as usize]);
            x.lb_algorithm = Some([LbAlgorithm::Random, LbAlgorithm::Maglev][rnd(2) as usize]);
            x.session_affinity = if rnd(2) == 0 {
                SessionAffinity::ClientIP
            } else {
                SessionAffinity::None
            };
            let n = rnd(6);
            let mut ips: Vec<u8> = (1..=20).collect();
            x.backends = (0..n)
                .map(|_| {
                    let j = rnd(ips.len() as u64) as usize;
                    BackendConfig {
                        ip: Ipv4Addr::new(10, 200, 0, ips.remove(j)),
                        weight: [None, Some(0), Some(7)][rnd(3) as usize],
                        state: [
                            BackendState::Active,
                            BackendState::Active,
                            BackendState::Terminating,
                            BackendState::Maintenance,
                        ][rnd(4) as usize],
                    }
                })
                .collect();
            x
        };
        let (mut accepted, mut refused) = (0, 0);
        for step in 0..400 {
            let ids_before: HashMap<AddrKey, u16> = st
                .frontend_ids
                .iter()
                .map(|(k, (id, _))| (*k, *id))
                .collect();
            let r = match rnd(10) {
                0..=5 => {
                    let batch: Vec<ServiceConfig> =
                        (0..1 + rnd(3)).map(|_| mk(rnd(12), &mut rnd)).collect();
                    st.plan_upserts(&batch, &s)
                }
                6 => {
                    let names: Vec<String> = st.services.keys().cloned().collect();
                    if names.is_empty() {
                        continue;
                    }
                    st.plan_delete(&names[rnd(names.len() as u64) as usize], &s)
                }
                7 => {
                    let in_use: hashbrown::HashSet<u32> = st
                        .retained
                        .keys()
                        .filter(|_| rnd(2) == 0)
                        .copied()
                        .collect();
                    match st.plan_release_unused(&in_use) {
                        Some(p) => Ok(p),
                        None => continue,
                    }
                }
                8 => {
                    let all: Vec<ServiceConfig> =
                        (0..rnd(6)).map(|_| mk(rnd(12), &mut rnd)).collect();
                    st.plan_replace(&all, &s)
                }
                _ => {
                    // New settings: everything is recompiled under them.
                    s = LbSettings {
                        maglev_m: [251, 509][rnd(2) as usize],
                        algorithm: [LbAlgorithm::Random, LbAlgorithm::Maglev][rnd(2) as usize],
                        ..base.clone()
                    };
                    let all: Vec<ServiceConfig> = st.services.values().cloned().collect();
                    st.plan_replace(&all, &s)
                }
            };
            let plan = match r {
                Ok(p) => p,
                Err(e) => {
                    // Only clashes of frontends may refuse a random step.
                    let e = e.to_string();
                    assert!(e.contains("is already used by"), "step {step}: {e}");
                    refused += 1;
                    continue;
                }
            };
            accepted += 1;
            st.commit(plan);
            assert_eq!(
                dump(&st.tables),
                dump(&st.tables_from_scratch()),
                "step {step}: incremental tables differ from a compile from scratch"
            );
            for (k, (id, _)) in &st.frontend_ids {
                if let Some(old) = ids_before.get(k) {
                    assert_eq!(old, id, "step {step}: frontend {k:?} changed its ID");
                }
            }
            let used: usize = st.compiled.values().map(|c| c.entries).sum();
            assert_eq!(used, st.entries);
            assert_eq!(st.tables.services.len(), st.entries, "step {step}");
            assert_eq!(
                st.tables.backends.len(),
                st.backend_refs.len() + st.retained.len(),
                "step {step}"
            );
        }
        assert!(accepted > 150, "{accepted} of 400 steps taken");
        assert!(
            refused > 10,
            "{refused} clashes refused: the generator makes them"
        );
        // Every frontend in force has one owner: the compiled frontends and the IDs agree.
        let fronts: usize = st.compiled.values().map(|c| c.fronts.len()).sum();
        assert_eq!(fronts, st.frontend_ids.len());
    }

    /// IDs roll: one given back is not handed out again until the counter reaches the top,
    /// then the lowest given back comes first; preview and commit agree.
    #[test]
    fn released_ids_are_reused_only_after_the_counter_went_round() {
        let mut p = IdPool::new(5);
        let t = p.preview(&[], 3).unwrap();
        assert_eq!(t, [1, 2, 3]);
        p.commit(&[], &t);
        let t = p.preview(&[2], 1).unwrap();
        assert_eq!(t, [4], "2 was just given back: the counter's next one");
        p.commit(&[2], &t);
        let t = p.preview(&[1], 3).unwrap();
        assert_eq!(t, [5, 1, 2], "top reached: then the lowest given back");
        p.commit(&[1], &t);
        assert_eq!(p.preview(&[], 1), None, "all five in use");
        assert_eq!(p.preview(&[3], 1), Some(vec![3]));
        // Through the LB state: a deleted service's ID is not the next service's.
        let s = settings();
        let st = LbState::default()
            .with_upserts(&[clusterip(1), clusterip(2)], &s)
            .unwrap();
        let id = |st: &LbState, i: u32| {
            st.tables()
                .frontend(Ipv4Addr::from(0x0a60_0000 + i).octets(), 80, 6)
                .unwrap()
                .1
                .rev_nat()
                .0
        };
        let gone = id(&st, 1);
        let st = st.with_delete("default/s1", &s).unwrap();
        let st = st.with_upserts(&[clusterip(3)], &s).unwrap();
        assert_ne!(id(&st, 3), gone, "the released ID is not reused at once");
    }

    /// A NodePort on the node's address and an external IP equal to that address on the same
    /// port are one frontend: refused in one batch, across batches, and within one service,
    /// naming the owner (before, both were taken, shared one ID, and a later delete of either
    /// panicked on the missing frontend).
    #[test]
    fn a_frontend_on_the_node_address_cannot_be_claimed_twice() {
        let s = settings();
        let np = |name: &str| {
            let mut x = clusterip(1);
            x.name = name.into();
            x.kind = ServiceType::NodePort;
            x.ports[0].node_port = Some(30080);
            x
        };
        let ext = |name: &str| {
            let mut x = clusterip(2);
            x.name = name.into();
            x.external_ips = vec![Ipv4Addr::new(192, 168, 200, 1)];
            x.ports[0].port = 30080;
            x
        };
        let e = LbState::default()
            .plan_upserts(&[np("a"), ext("b")], &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("services[1].ports[0].port: frontend 192.168.200.1:30080/TCP is already used by default/a"),
            "{e}"
        );
        let st = LbState::default().with_upserts(&[np("a")], &s).unwrap();
        let e = st.plan_upserts(&[ext("b")], &s).unwrap_err().to_string();
        assert!(
            e.contains("services[0].ports[0].port: frontend 192.168.200.1:30080/TCP is already used by default/a"),
            "{e}"
        );
        let mut both = np("c");
        both.external_ips = vec![Ipv4Addr::new(192, 168, 200, 1)];
        both.ports[0].port = 30080;
        let e = LbState::default()
            .plan_upserts(&[both], &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is already used by this same service"), "{e}");
        // The owner can hand it over: one batch drops a's node port and gives b the address.
        let mut a2 = np("a");
        a2.kind = ServiceType::ClusterIP;
        a2.ports[0].node_port = None;
        let st2 = st.with_upserts(&[a2, ext("b")], &s).unwrap();
        assert_eq!(dump(&st2.tables), dump(&st2.tables_from_scratch()));
        st2.with_delete("default/a", &s).unwrap();
        st2.with_delete("default/b", &s).unwrap();
    }

    /// What makes churn at scale cheap: one service changed among 1900 plans a delta of its
    /// own entries only, and the published tables share everything else.
    #[test]
    fn one_service_changed_among_many_touches_only_its_entries() {
        let s = settings();
        let svcs: Vec<ServiceConfig> = (0..1900u32)
            .map(|i| {
                let mut x = clusterip(i);
                x.backends = (0..32)
                    .map(|b| BackendConfig {
                        ip: Ipv4Addr::from(0x0a80_0000 + i * 32 + b),
                        weight: None,
                        state: BackendState::Active,
                    })
                    .collect();
                x
            })
            .collect();
        let st = LbState::default().with_services(&svcs, &s).unwrap();
        assert_eq!(st.tables.services.len(), 1900 * 33);
        let mut one = svcs[7].clone();
        one.backends[3].ip = Ipv4Addr::new(10, 250, 0, 1);
        let plan = st.plan_upserts(&[one.clone()], &s).unwrap();
        // The new backend and the old one (now terminating), one slot changed.
        assert_eq!(plan.delta.backends.len(), 2, "{:?}", plan.delta.backends);
        assert_eq!(plan.delta.services.len(), 1, "{:?}", plan.delta.services);
        assert!(plan.delta.revnat.is_empty());
        // The same service again is no change at all.
        let same = st.plan_upserts(&[svcs[7].clone()], &s).unwrap();
        assert!(same.delta.is_empty(), "{:?}", same.delta);
        let mut st2 = st.clone();
        st2.commit(plan);
        assert_eq!(dump(&st2.tables), dump(&st2.tables_from_scratch()));
        // A conflict with a service in force names the batch position and the owner.
        let mut clash = svcs[9].clone();
        clash.name = "new".into();
        let e = st.plan_upserts(&[one, clash], &s).unwrap_err().to_string();
        assert!(
            e.contains(
                "services[1].ports[0].port: frontend 10.96.0.9:80/TCP is already used by default/s9"
            ),
            "{e}"
        );
    }
}
