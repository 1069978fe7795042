//! Services: what the config and the control socket say, compiled into Cilium's LB maps.
//!
//! A [`ServiceConfig`] is a Kubernetes Service plus its EndpointSlice in one: a ClusterIP,
//! ports (with target and node ports), external IPs, session affinity, the LB algorithm and
//! the backends. [`LbState`] turns the set of services into map contents the way Cilium's
//! agent does:
//! - one **frontend** per (address, port, protocol): the ClusterIP; for `NodePort` the
//!   node's address and the `0.0.0.0` surrogate; every external IP. Each frontend gets its
//!   own service ID (`rev_nat_index`), allocated lowest-free and kept while it exists;
//! - one **backend ID** per (address, port, protocol), shared by every service using it;
//! - a master entry (slot 0, with the count, flags, algorithm and affinity timeout) and
//!   slots 1..=count per frontend, the reverse-NAT entry, and for Maglev services the
//!   lookup table;
//! - a backend that leaves every service is not deleted at once: it stays in the backends
//!   map as *terminating*, without slots, while conntrack still has service entries pointing
//!   at it ([`LbState::release_unused`], run by the GC), so established connections finish
//!   while new ones avoid it.

use std::collections::{BTreeMap, BTreeSet};
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
}

impl Default for LbSettings {
    fn default() -> Self {
        LbSettings {
            node_ip: None,
            algorithm: LbAlgorithm::Random,
            maglev_m: MAGLEV_TABLE_SIZE,
            seeds: Seeds::default(),
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

/// One frontend compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frontend {
    key: Lb4Key,
    flags: u8,
    target_port: u16,
    service: usize,
}

/// The control plane's LB state: services, ID allocations, retained backends.
#[derive(Debug, Clone, Default)]
pub struct LbState {
    pub services: BTreeMap<String, ServiceConfig>,
    frontend_ids: BTreeMap<(Ipv4Addr, u16, u8), u16>,
    backend_ids: BTreeMap<(Ipv4Addr, u16, u8), u32>,
    /// Backends no service lists any more, kept (terminating) for established flows.
    retained: BTreeMap<u32, Lb4Backend>,
    maglev_cache: BTreeMap<u16, (Vec<MaglevBackend>, Arc<[u32]>)>,
    /// The frontends of `services`, derived once per change by `allocate`.
    fronts: Vec<Frontend>,
}

/// Why a service change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("service IDs exhausted: {want} frontends, at most 65535 (rev_nat_index is 16 bits)")]
    OutOfIds { want: usize },
    #[error(
        "{map} would need {need} entries and holds {max} (Cilium's bpf-lb-map-max); nothing was changed: use fewer frontends, ports or backends"
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

impl LbState {
    /// A state with these services replacing every other one; `self` is unchanged on error.
    ///
    /// # Errors
    /// Invalid services (all problems listed) or ID exhaustion.
    pub fn with_services(
        &self,
        services: &[ServiceConfig],
        s: &LbSettings,
    ) -> Result<LbState, LbError> {
        let problems = validate(services, "services");
        if !problems.is_empty() {
            return Err(LbError::Invalid(problems));
        }
        let mut next = self.clone();
        next.services = services.iter().map(|c| (c.id(), c.clone())).collect();
        next.allocate(s)?;
        Ok(next)
    }

    /// A state with `svcs` added or replaced (by namespace/name), all together: either every
    /// one is taken or none is. Problems of the batch itself are reported by its own
    /// positions (`services[1].ports`), before conflicts with the services already in force.
    ///
    /// # Errors
    /// As [`LbState::with_services`].
    pub fn with_upserts(&self, svcs: &[ServiceConfig], s: &LbSettings) -> Result<LbState, LbError> {
        let problems = validate(svcs, "services");
        if !problems.is_empty() {
            return Err(LbError::Invalid(problems));
        }
        let ids: BTreeSet<String> = svcs.iter().map(|c| c.id()).collect();
        let mut all: Vec<ServiceConfig> = self
            .services
            .values()
            .filter(|c| !ids.contains(&c.id()))
            .cloned()
            .collect();
        all.extend_from_slice(svcs);
        self.with_services(&all, s)
    }

    /// A state without service `id` (`namespace/name`).
    ///
    /// # Errors
    /// [`LbError::NotFound`].
    pub fn with_delete(&self, id: &str, s: &LbSettings) -> Result<LbState, LbError> {
        if !self.services.contains_key(id) {
            return Err(LbError::NotFound(id.into()));
        }
        let all: Vec<ServiceConfig> = self
            .services
            .values()
            .filter(|c| c.id() != id)
            .cloned()
            .collect();
        self.with_services(&all, s)
    }

    fn frontends(&self, s: &LbSettings) -> Result<Vec<Frontend>, LbError> {
        let mut out = Vec::new();
        for (i, svc) in self.services.values().enumerate() {
            let affinity = if svc.session_affinity == SessionAffinity::ClientIP {
                SVC_FLAG_AFFINITY
            } else {
                0
            };
            for port in &svc.ports {
                let proto = port.protocol.number();
                let target = port.target_port.unwrap_or(port.port);
                let mut push = |addr: Ipv4Addr, pt: u16, flags: u8| {
                    out.push(Frontend {
                        key: Lb4Key::master(addr.octets(), pt, proto),
                        flags: flags | affinity,
                        target_port: target,
                        service: i,
                    })
                };
                push(svc.cluster_ip, port.port, 0);
                for ip in &svc.external_ips {
                    push(*ip, port.port, SVC_FLAG_EXTERNAL_IP | SVC_FLAG_ROUTABLE);
                }
                if let Some(np) = port.node_port {
                    let Some(node) = s.node_ip else {
                        return Err(LbError::NoNodeIp {
                            kind: "NodePort",
                            service: svc.id(),
                        });
                    };
                    push(node, np, SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE);
                    push(
                        Ipv4Addr::UNSPECIFIED,
                        np,
                        SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE,
                    );
                }
            }
        }
        Ok(out)
    }

    /// Give every frontend and backend an ID (keeping existing ones), retire backends that
    /// left every service, and check the result fits the maps. Linear in the number of
    /// frontends and backends (IDs come from one forward scan over the free ones).
    fn allocate(&mut self, s: &LbSettings) -> Result<(), LbError> {
        let fronts = self.frontends(s)?;
        let want: BTreeSet<(Ipv4Addr, u16, u8)> = fronts
            .iter()
            .map(|f| (f.key.addr(), f.key.port(), f.key.proto))
            .collect();
        if want.len() > u16::MAX as usize {
            return Err(LbError::OutOfIds { want: want.len() });
        }
        self.frontend_ids.retain(|k, _| want.contains(k));
        let used: BTreeSet<u16> = self.frontend_ids.values().copied().collect();
        let mut free = (1..=u16::MAX).filter(|i| !used.contains(i));
        for k in &want {
            if !self.frontend_ids.contains_key(k) {
                let id = free.next().ok_or(LbError::OutOfIds { want: want.len() })?;
                self.frontend_ids.insert(*k, id);
            }
        }
        let svcs: Vec<&ServiceConfig> = self.services.values().collect();
        let mut want_be: BTreeSet<(Ipv4Addr, u16, u8)> = BTreeSet::new();
        for f in &fronts {
            for b in &svcs[f.service].backends {
                want_be.insert((b.ip, f.target_port, f.key.proto));
            }
        }
        let gone: Vec<((Ipv4Addr, u16, u8), u32)> = self
            .backend_ids
            .iter()
            .filter(|(k, _)| !want_be.contains(*k))
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, id) in gone {
            self.backend_ids.remove(&k);
            self.retained
                .insert(id, Lb4Backend::new(k.0, k.1, k.2, BE_STATE_TERMINATING));
        }
        // A backend that comes back before its connections ended gets its old ID.
        let mut retained_by_key: hashbrown::HashMap<(Ipv4Addr, u16, u8), u32> = self
            .retained
            .iter()
            .map(|(id, b)| ((b.addr(), b.port(), b.proto), *id))
            .collect();
        let used: BTreeSet<u32> = self
            .backend_ids
            .values()
            .chain(self.retained.keys())
            .copied()
            .collect();
        let mut free = (1..u32::MAX).filter(|i| !used.contains(i));
        for k in &want_be {
            if self.backend_ids.contains_key(k) {
                continue;
            }
            let id = match retained_by_key.remove(k) {
                Some(id) => {
                    self.retained.remove(&id);
                    id
                }
                None => free.next().ok_or(LbError::MapFull {
                    map: BACKENDS_MAP,
                    need: want_be.len(),
                    max: LB_MAP_MAX as usize,
                })?,
            };
            self.backend_ids.insert(*k, id);
        }
        self.fronts = fronts;
        self.check_capacity(s)
    }

    /// Would the compiled state fit the kernel maps (and the Maglev memory bound)? Checked
    /// before anything is written, so a change that does not fit is refused whole.
    fn check_capacity(&self, s: &LbSettings) -> Result<(), LbError> {
        let max = LB_MAP_MAX as usize;
        let backends = self.backend_ids.len() + self.retained.len();
        if backends > max {
            return Err(LbError::MapFull {
                map: BACKENDS_MAP,
                need: backends,
                max,
            });
        }
        let svcs: Vec<&ServiceConfig> = self.services.values().collect();
        let mut entries = 0usize;
        let mut maglev_inputs: BTreeSet<(usize, u16, u8)> = BTreeSet::new();
        for f in &self.fronts {
            let svc = svcs[f.service];
            let n = slot_backends(svc).len();
            entries += 1 + n;
            if n > 0 && svc.lb_algorithm.unwrap_or(s.algorithm) == LbAlgorithm::Maglev {
                // Frontends of one service port share one table (same backends).
                maglev_inputs.insert((f.service, f.target_port, f.key.proto));
            }
        }
        if entries > max {
            return Err(LbError::MapFull {
                map: SERVICES_MAP,
                need: entries,
                max,
            });
        }
        let need = maglev_inputs.len() * s.maglev_m * 4;
        if need > MAX_MAGLEV_BYTES {
            return Err(LbError::MaglevTooLarge {
                tables: maglev_inputs.len(),
                m: s.maglev_m,
                need_mib: need.div_ceil(1 << 20),
                max_mib: MAX_MAGLEV_BYTES >> 20,
            });
        }
        Ok(())
    }

    /// Drop retained (terminating) backends no connection uses any more; true if any went.
    pub fn release_unused(&mut self, in_use: &hashbrown::HashSet<u32>) -> bool {
        let before = self.retained.len();
        self.retained.retain(|id, _| in_use.contains(id));
        before != self.retained.len()
    }

    /// IDs of retained backends (for status and tests).
    pub fn retained_backends(&self) -> Vec<u32> {
        self.retained.keys().copied().collect()
    }

    /// Compile the map contents of the frontends `allocate` derived (with the same settings).
    pub fn compile(&mut self, s: &LbSettings) -> LbTables {
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
        let mut maglev_cache = BTreeMap::new();
        let mut shared: hashbrown::HashMap<Vec<MaglevBackend>, Arc<[u32]>> =
            hashbrown::HashMap::new();
        let svcs: Vec<&ServiceConfig> = self.services.values().collect();
        for f in &self.fronts {
            let svc = svcs[f.service];
            let rev = RevNat(self.frontend_ids[&(f.key.addr(), f.key.port(), f.key.proto)]);
            let alg = svc.lb_algorithm.unwrap_or(s.algorithm);
            let timeout = if svc.session_affinity == SessionAffinity::ClientIP {
                svc.session_affinity_timeout
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
            } else {
                0
            };
            let mut slots: Vec<(u32, &BackendConfig)> = Vec::new();
            for b in &svc.backends {
                let id = self.backend_ids[&(b.ip, f.target_port, f.key.proto)];
                let state = match b.state {
                    BackendState::Active => BE_STATE_ACTIVE,
                    BackendState::Terminating => BE_STATE_TERMINATING,
                    BackendState::Maintenance => BE_STATE_MAINTENANCE,
                };
                t.backends
                    .insert(id, Lb4Backend::new(b.ip, f.target_port, f.key.proto, state));
            }
            for b in slot_backends(svc) {
                slots.push((self.backend_ids[&(b.ip, f.target_port, f.key.proto)], b));
            }
            for (i, (id, _)) in slots.iter().enumerate() {
                t.services.insert(
                    f.key.slot(i as u16 + 1),
                    Lb4Service::slot(*id, rev, f.flags),
                );
                if f.flags & SVC_FLAG_AFFINITY != 0 {
                    t.affinity_match.insert(AffinityMatchKey::new(*id, rev));
                }
            }
            t.services.insert(
                f.key,
                Lb4Service::master(slots.len() as u16, rev, f.flags, alg.code(), timeout),
            );
            t.revnat
                .insert(rev.0, RevNat4Value::new(f.key.address, f.key.port()));
            if alg == LbAlgorithm::Maglev && !slots.is_empty() {
                let input: Vec<MaglevBackend> = slots
                    .iter()
                    .map(|(id, b)| MaglevBackend {
                        name: t.backends[id].name(),
                        id: *id,
                        weight: b.weight.unwrap_or(DEFAULT_WEIGHT),
                    })
                    .collect();
                // The same backends make the same table: the frontends of one service port
                // (ClusterIP, external IPs, NodePort) share one, and an unchanged service
                // keeps the one it had.
                let table = match self.maglev_cache.get(&rev.0) {
                    Some((inp, table)) if *inp == input && table.len() == s.maglev_m => {
                        table.clone()
                    }
                    _ => match shared.get(&input) {
                        Some(table) => Arc::clone(table),
                        None => Arc::from(maglev::lookup_table(&input, s.maglev_m, &s.seeds)),
                    },
                };
                shared.insert(input.clone(), table.clone());
                maglev_cache.insert(rev.0, (input, table.clone()));
                t.maglev.insert(rev.0, table);
            }
        }
        self.maglev_cache = maglev_cache;
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
        let mut st = LbState::default().with_services(&[svc(WEB)], &s).unwrap();
        let t = st.compile(&s);
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
        let mut st = LbState::default().with_services(&[svc(WEB)], &s).unwrap();
        let t1 = st.compile(&s);
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
        let t2 = st2.compile(&s);
        let (_, m) = t2.frontend([10, 96, 0, 10], 80, 6).unwrap();
        assert_eq!(m.rev_nat(), rev1, "service IDs are kept");
        assert_eq!(m.count, 1);
        assert_eq!(t2.backends[&gone_id].flags, BE_STATE_TERMINATING);
        assert!(!t2.maglev[&m.rev_nat().0].contains(&gone_id));
        // Released once no connection uses it.
        assert!(st2.release_unused(&hashbrown::HashSet::new()));
        assert!(!st2.compile(&s).backends.contains_key(&gone_id));
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
        let mut st = LbState::default().with_services(&[all_zero], &s).unwrap();
        let t = st.compile(&s);
        let (_, m) = t.frontend([10, 96, 0, 10], 80, 6).unwrap();
        assert_eq!(m.count, 0, "answered as a service without backends");
        assert!(t.maglev.is_empty(), "no (empty) Maglev table");
        assert!(t.maglev.values().all(|tab| !tab.is_empty()));
        // One of two at weight 0: the other takes every slot and every Maglev turn.
        let mut one_zero = svc(WEB);
        one_zero.backends[0].weight = Some(0);
        let mut st = LbState::default().with_services(&[one_zero], &s).unwrap();
        let t = st.compile(&s);
        let (_, m) = t.frontend([10, 96, 0, 10], 80, 6).unwrap();
        assert_eq!(m.count, 1);
        let tab = &t.maglev[&m.rev_nat().0];
        let only = t.services[&Lb4Key::master([10, 96, 0, 10], 80, 6).slot(1)].backend_id();
        assert!(tab.iter().all(|id| *id == only));
        assert_eq!(t.backends[&only].addr(), Ipv4Addr::new(10, 201, 1, 11));
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
        let mut st = LbState::default().with_services(&[one], &s).unwrap();
        let t = st.compile(&s);
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
        let web = svc(WEB);
        let svcs: Vec<ServiceConfig> = (0..20_000u32)
            .map(|i| {
                let mut x = web.clone();
                x.name = format!("s{i}");
                x.cluster_ip = Ipv4Addr::from(0x0a60_0000 + i);
                x.kind = ServiceType::ClusterIP;
                x.external_ips.clear();
                x.ports[0].node_port = None;
                x.lb_algorithm = Some(LbAlgorithm::Random);
                x.backends.truncate(1);
                x
            })
            .collect();
        let t0 = std::time::Instant::now();
        let mut st = LbState::default().with_services(&svcs, &s).unwrap();
        let t = st.compile(&s);
        assert_eq!(t.revnat.len(), 20_000);
        let ids: BTreeSet<u16> = t.revnat.keys().copied().collect();
        assert_eq!(ids.last(), Some(&20_000), "lowest free IDs, dense");
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
        let mut st = LbState::default().with_services(&[e], &s).unwrap();
        let t = st.compile(&s);
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
}
