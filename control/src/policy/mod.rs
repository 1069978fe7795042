//! Identity-based network policy with Cilium's semantics.
//!
//! - [`parse`] reads CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and Kubernetes
//!   NetworkPolicy YAML into the model below, refusing every field it does not enforce by
//!   name.
//! - The model: a [`Policy`] selects endpoints ([`Selector`] over identity labels) and carries
//!   ingress/egress [`Rule`]s; a rule is a set of peers ([`Peer`]: endpoints, CIDRs,
//!   entities) times a set of L4 ports, allow or deny.
//! - [`PolicyState::compile`] turns the policies into every local endpoint's
//!   `cilium_policy_v3_<id>` contents ([`table::EndpointPolicy`]) and the CIDR identities the
//!   ipcache needs, the way Cilium's agent does: identities are resolved at compile time,
//!   port ranges become aligned prefixes, deny wins over allow, an endpoint selected by no
//!   policy in a direction gets the allow-all entry, and an endpoint with ingress enforced
//!   always admits its own host (`allow-localhost`).

pub mod parse;
/// The compiled per-endpoint policy maps the workers read: the `tables` crate's `policy`.
pub use ::tables::policy as table;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::identity;
use crate::maps::policy::{DIR_EGRESS, DIR_INGRESS, PolicyEntry, PolicyKey, port_prefixes};
use crate::net::Ipv4Cidr;
use table::{EndpointPolicy, FIRST_ENTRY_SLOT, MapEntry, NO_SLOT, PolicyTables};

/// First node-local (CIDR) identity: scope byte 0x01 (reference §4.1). Never on the wire.
pub const LOCAL_IDENTITY_BASE: u32 = 1 << 24;

/// Entries one endpoint's policy map holds (Cilium's default `bpf-policy-map-max`).
pub const POLICY_MAP_MAX: usize = 16384;
/// Keys one policy may resolve to before it is refused: the endpoint map it feeds holds
/// [`POLICY_MAP_MAX`], and deduplication or deny coverage cannot shrink more than this.
pub const MAX_RESOLVED_KEYS: usize = 4 * POLICY_MAP_MAX;
/// Entries of all local endpoints' maps together (memory: ~60 bytes each).
pub const MAX_TOTAL_ENTRIES: usize = 1 << 20;
/// CIDR prefixes (including `except`s) all policies together may name: each becomes a
/// node-local identity and a `cilium_ipcache_v2` entry.
pub const MAX_CIDR_IDENTITIES: usize = 16384;
/// Keys all resolved policies together may hold during one compilation.
pub const MAX_TOTAL_RESOLVED_KEYS: usize = 4 * MAX_TOTAL_ENTRIES;
/// Policies in force on a node at once (config plus everything applied at run time).
pub const MAX_POLICIES: usize = 16384;

/// Why a set of policies cannot be compiled: it would not fit the maps. Checked while
/// compiling, so a hostile policy is refused after at most the bound's worth of work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "{policy} resolves to more than {MAX_RESOLVED_KEYS} map entries (identities × ports); an endpoint's policy map holds {POLICY_MAP_MAX} (Cilium's bpf-policy-map-max)"
    )]
    PolicyTooLarge { policy: String },
    #[error(
        "endpoint {ep} would need {need} policy entries; cilium_policy_v3_{ep:05} holds {POLICY_MAP_MAX} (Cilium's bpf-policy-map-max)"
    )]
    EndpointMapFull { ep: u16, need: usize },
    #[error(
        "the policies need more than {MAX_TOTAL_ENTRIES} policy map entries over all local endpoints"
    )]
    TooManyEntries,
    #[error("{n} policies, at most {MAX_POLICIES} may be in force on a node")]
    TooManyPolicies { n: usize },
    #[error(
        "the policies name {n} CIDR prefixes, at most {MAX_CIDR_IDENTITIES} (each is an identity and a cilium_ipcache_v2 entry)"
    )]
    TooManyCidrs { n: usize },
}

/// Which API object a policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    Cilium,
    CiliumClusterwide,
    Kubernetes,
}

impl PolicyKind {
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Cilium => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwide => "CiliumClusterwideNetworkPolicy",
            PolicyKind::Kubernetes => "NetworkPolicy",
        }
    }
}

/// `Kind/namespace/name` (clusterwide: `Kind/name`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
}

impl PolicyId {
    /// The id of the API object this policy came from: a CiliumNetworkPolicy with `specs`
    /// makes one policy per spec (`name`, `name#1`, …), all parts of one object.
    pub fn object(&self) -> PolicyId {
        let name = match self.name.split_once('#') {
            Some((base, n)) if n.parse::<u32>().is_ok() => base.to_string(),
            _ => self.name.clone(),
        };
        PolicyId {
            name,
            ..self.clone()
        }
    }

    /// Does `id` name this policy's object: `Kind/ns/name` (`Kind/name` clusterwide) or
    /// `ns/name` (`name` clusterwide)? What `policy delete` accepts; deleting an object
    /// deletes every policy it made.
    pub fn matches(&self, id: &str) -> bool {
        let o = self.object();
        let short = if o.namespace.is_empty() {
            o.name.clone()
        } else {
            format!("{}/{}", o.namespace, o.name)
        };
        o.to_string() == id || short == id
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind.name(), self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind.name(), self.namespace, self.name)
        }
    }
}

/// A label as identities carry it: `source:key=value` (`reserved:host` has no value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub source: String,
    pub key: String,
    pub value: String,
}

impl Label {
    /// Parse `source:key=value`, `source:key` or `key=value` (source `unspec`).
    pub fn parse(s: &str) -> Label {
        let (kv, source) = match s.split_once(':') {
            Some((src, rest)) => (rest, src),
            None => (s, "unspec"),
        };
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        Label {
            source: source.into(),
            key: key.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.key)?;
        if !self.value.is_empty() {
            write!(f, "={}", self.value)?;
        }
        Ok(())
    }
}

/// A label-selector requirement operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// One requirement: a key (with an optional source; `None` or `any` = every source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    pub source: Option<String>,
    pub key: String,
    pub op: Op,
}

impl Req {
    /// `source:key` or `key` (selector syntax, as in `matchLabels`).
    pub fn new(key: &str, op: Op) -> Req {
        let (source, key) = match key.split_once(':') {
            Some(("any", k)) => (None, k),
            Some((s, k)) => (Some(s.to_string()), k),
            None => (None, key),
        };
        Req {
            source,
            key: key.into(),
            op,
        }
    }

    fn matches(&self, labels: &[Label]) -> bool {
        let mut values = labels
            .iter()
            .filter(|l| l.key == self.key && self.source.as_ref().is_none_or(|s| *s == l.source))
            .map(|l| l.value.as_str());
        match &self.op {
            Op::In(vs) => values.any(|v| vs.iter().any(|x| x == v)),
            Op::NotIn(vs) => !values.any(|v| vs.iter().any(|x| x == v)),
            Op::Exists => values.next().is_some(),
            Op::DoesNotExist => values.next().is_none(),
        }
    }
}

/// A label selector: all requirements must hold. Empty selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub reqs: Vec<Req>,
}

impl Selector {
    pub fn matches(&self, labels: &[Label]) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// Does any requirement name a `reserved:` label?
    pub fn has_reserved(&self) -> bool {
        self.reqs
            .iter()
            .any(|r| r.source.as_deref() == Some("reserved"))
    }

    /// Does any requirement constrain the pod namespace?
    pub fn has_namespace(&self) -> bool {
        self.reqs.iter().any(|r| r.key == NAMESPACE_LABEL)
    }

    /// Restrict to the namespace `ns` (the implicit label of namespaced policies).
    pub fn in_namespace(mut self, ns: &str) -> Selector {
        self.reqs.push(Req {
            source: Some("k8s".into()),
            key: NAMESPACE_LABEL.into(),
            op: Op::In(vec![ns.into()]),
        });
        self
    }
}

/// The pod label carrying its namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// Cilium's entities (`fromEntities`/`toEntities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    All,
    World,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Health,
    Init,
    Ingress,
    Unmanaged,
}

impl Entity {
    pub fn parse(s: &str) -> Option<Entity> {
        Some(match s {
            "all" => Entity::All,
            "world" | "world-ipv4" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "kube-apiserver" => Entity::KubeApiserver,
            "health" => Entity::Health,
            "init" => Entity::Init,
            "ingress" => Entity::Ingress,
            "unmanaged" => Entity::Unmanaged,
            _ => return None,
        })
    }
}

/// Who a rule talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Identities whose labels match.
    Endpoints(Selector),
    /// Addresses in `prefix` but not in any of `except` (CIDR identities, and world for /0).
    Cidr {
        prefix: Ipv4Cidr,
        except: Vec<Ipv4Cidr>,
    },
    Entity(Entity),
    /// Any identity (the wildcard entry, identity 0).
    Any,
}

/// An L4 match: protocol (0 = any) and destination ports `port..=end` (`port` 0 = any port;
/// for ICMP the type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRule {
    pub proto: u8,
    pub port: u16,
    pub end: u16,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub deny: bool,
    /// Empty: any identity if `ports` is not empty, nothing at all otherwise (Cilium's
    /// `ingress: [{}]` turns on default deny and allows nothing).
    pub peers: Vec<Peer>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortRule>,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub id: PolicyId,
    /// The endpoints it applies to.
    pub subject: Selector,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Does selecting an endpoint turn on default deny in [ingress, egress]?
    pub default_deny: [bool; 2],
}

/// A local endpoint as policy sees it.
#[derive(Debug, Clone)]
pub struct LocalEndpoint {
    pub ep_id: u16,
    pub sec_id: u32,
}

/// Every identity the node knows with its labels: reserved ones, pods of the cluster (all
/// nodes), and the CIDR identities of the policies.
#[derive(Debug, Clone, Default)]
pub struct Universe {
    pub ids: BTreeMap<u32, Vec<Label>>,
    /// CIDR identities and their prefixes.
    pub cidrs: BTreeMap<u32, Ipv4Cidr>,
    /// The same by (network address, length): the prefixes inside a CIDR are one range scan.
    by_prefix: BTreeMap<(u32, u8), u32>,
}

/// Reserved identities with their labels.
pub const RESERVED: [(u32, &str); 8] = [
    (identity::RESERVED_HOST, "host"),
    (identity::RESERVED_WORLD, "world"),
    (identity::RESERVED_UNMANAGED, "unmanaged"),
    (identity::RESERVED_HEALTH, "health"),
    (identity::RESERVED_INIT, "init"),
    (identity::RESERVED_REMOTE_NODE, "remote-node"),
    (identity::RESERVED_KUBE_APISERVER, "kube-apiserver"),
    (identity::RESERVED_INGRESS, "ingress"),
];

impl Universe {
    /// The reserved identities plus `pods` (identity → `source:key=value` strings).
    pub fn new(pods: &BTreeMap<u32, Vec<String>>) -> Universe {
        let mut ids = BTreeMap::new();
        for (id, name) in RESERVED {
            ids.insert(id, vec![Label::parse(&format!("reserved:{name}"))]);
        }
        for (id, ls) in pods {
            ids.insert(*id, ls.iter().map(|l| Label::parse(l)).collect());
        }
        Universe {
            ids,
            cidrs: BTreeMap::new(),
            by_prefix: BTreeMap::new(),
        }
    }

    fn add_cidr(&mut self, id: u32, prefix: Ipv4Cidr) {
        self.ids.insert(
            id,
            vec![
                Label::parse(&format!("cidr:{prefix}")),
                Label::parse("reserved:world"),
            ],
        );
        self.cidrs.insert(id, prefix);
        self.by_prefix
            .insert((u32::from(prefix.addr), prefix.len), id);
    }

    fn is_pod(id: u32) -> bool {
        (identity::MIN_ALLOCATED..LOCAL_IDENTITY_BASE).contains(&id)
    }

    /// The labels of `id` as `cilium bpf policy get` prints them.
    pub fn labels(&self, id: u32) -> Vec<String> {
        match self.ids.get(&id) {
            Some(ls) => ls.iter().map(|l| l.to_string()).collect(),
            None if id == 0 => vec!["ANY".into()],
            None => vec![format!("unknown identity {id}")],
        }
    }

    /// The identities `peer` selects; `None` = any identity.
    fn select(&self, peer: &Peer) -> Option<BTreeSet<u32>> {
        let reserved = |ids: &[u32]| Some(ids.iter().copied().collect());
        match peer {
            Peer::Any | Peer::Entity(Entity::All) => None,
            Peer::Endpoints(sel) if sel.reqs.is_empty() => None,
            Peer::Endpoints(sel) => Some(
                self.ids
                    .iter()
                    .filter(|(id, ls)| !self.cidrs.contains_key(id) && sel.matches(ls))
                    .map(|(id, _)| *id)
                    .collect(),
            ),
            // The world's aggregate covers every CIDR identity (Cilium 1.20).
            Peer::Entity(Entity::World) => reserved(&[identity::RESERVED_WORLD]),
            Peer::Entity(Entity::Cluster) => Some(
                self.ids
                    .keys()
                    .copied()
                    .filter(|&id| {
                        Universe::is_pod(id)
                            || (id != identity::RESERVED_WORLD && id < identity::MIN_ALLOCATED)
                    })
                    .collect(),
            ),
            Peer::Entity(Entity::Host) => reserved(&[identity::RESERVED_HOST]),
            Peer::Entity(Entity::RemoteNode) => reserved(&[identity::RESERVED_REMOTE_NODE]),
            Peer::Entity(Entity::KubeApiserver) => reserved(&[identity::RESERVED_KUBE_APISERVER]),
            Peer::Entity(Entity::Health) => reserved(&[identity::RESERVED_HEALTH]),
            Peer::Entity(Entity::Init) => reserved(&[identity::RESERVED_INIT]),
            Peer::Entity(Entity::Ingress) => reserved(&[identity::RESERVED_INGRESS]),
            Peer::Entity(Entity::Unmanaged) => reserved(&[identity::RESERVED_UNMANAGED]),
            Peer::Cidr { prefix, except } => {
                // The CIDR identities inside `prefix` (one range scan over the prefixes by
                // address), less those inside an exception.
                let lo = u32::from(prefix.network().addr);
                let hi = lo | (u32::MAX.checked_shr(prefix.len as u32).unwrap_or(0));
                let mut set: BTreeSet<u32> = self
                    .by_prefix
                    .range((lo, 0)..=(hi, 32))
                    .filter(|((addr, len), _)| {
                        *len >= prefix.len
                            && !except
                                .iter()
                                .any(|x| *len >= x.len && x.contains((*addr).into()))
                    })
                    .map(|(_, id)| *id)
                    .collect();
                if prefix.len == 0 {
                    set.insert(identity::RESERVED_WORLD);
                }
                Some(set)
            }
        }
    }
}

/// The policies of the node, the CIDR identities they need, and the counter slots of the
/// compiled entries. Changed as a whole: a `with_*` method returns the next state, which is
/// committed only once it has reached the kernel and the workers.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    pub policies: BTreeMap<PolicyId, Policy>,
    /// CIDR prefix → its node-local identity.
    pub cidr_ids: BTreeMap<Ipv4Cidr, u32>,
    slots: BTreeMap<(u16, PolicyKey), u32>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

/// The output of a compilation.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub tables: PolicyTables,
    pub universe: Universe,
    /// Slots handed to new entries (to be zeroed before publishing).
    pub new_slots: Vec<u32>,
}

impl PolicyState {
    /// Add or replace policies (by kind/namespace/name).
    /// Add or replace policies, object by object: an object applied again replaces every
    /// policy it made before (a CNP whose `specs` shrank does not keep its old `#n` parts),
    /// as applying a Kubernetes object replaces it whole.
    pub fn with_upserts(&self, ps: &[Policy]) -> PolicyState {
        let mut next = self.clone();
        let objects: std::collections::BTreeSet<PolicyId> =
            ps.iter().map(|p| p.id.object()).collect();
        next.policies.retain(|k, _| !objects.contains(&k.object()));
        for p in ps {
            next.policies.insert(p.id.clone(), p.clone());
        }
        next
    }

    /// Replace every policy.
    pub fn with_policies(&self, ps: &[Policy]) -> PolicyState {
        let mut next = self.clone();
        next.policies = ps.iter().map(|p| (p.id.clone(), p.clone())).collect();
        next
    }

    /// Delete the policies whose `Kind/ns/name` or `ns/name` is `id`; none matching is an
    /// error naming what exists.
    pub fn with_delete(&self, id: &str) -> Result<PolicyState, String> {
        let mut next = self.clone();
        let before = next.policies.len();
        next.policies.retain(|k, _| !k.matches(id));
        if next.policies.len() == before {
            let known: Vec<String> = self.policies.keys().map(|k| k.to_string()).collect();
            return Err(format!(
                "no policy {id} (known: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
        Ok(next)
    }

    /// Compile for the local `endpoints`, given the cluster's pod identities (identity →
    /// labels). Allocates CIDR identities for new prefixes, releases unused ones, and gives
    /// every map entry a counter slot (kept across compilations for the same endpoint and
    /// key; `stats_slots` is the counter capacity).
    ///
    /// # Errors
    /// The policies would not fit the maps ([`CompileError`]); `self` is then half-updated
    /// and must be dropped (callers compile a `with_*` copy).
    pub fn compile(
        &mut self,
        endpoints: &[LocalEndpoint],
        pods: &BTreeMap<u32, Vec<String>>,
        stats_slots: usize,
    ) -> Result<Compiled, CompileError> {
        // CIDR identities: every prefix and exception the policies name (0.0.0.0/0 is world).
        let mut wanted: BTreeSet<Ipv4Cidr> = BTreeSet::new();
        for p in self.policies.values() {
            for r in p.ingress.iter().chain(&p.egress) {
                for peer in &r.peers {
                    if let Peer::Cidr { prefix, except } = peer {
                        wanted.extend(std::iter::once(prefix).chain(except).filter(|c| c.len > 0));
                    }
                }
            }
        }
        if self.policies.len() > MAX_POLICIES {
            return Err(CompileError::TooManyPolicies {
                n: self.policies.len(),
            });
        }
        if wanted.len() > MAX_CIDR_IDENTITIES {
            return Err(CompileError::TooManyCidrs { n: wanted.len() });
        }
        self.cidr_ids.retain(|c, _| wanted.contains(c));
        let used: BTreeSet<u32> = self.cidr_ids.values().copied().collect();
        let mut free = (LOCAL_IDENTITY_BASE + 1..).filter(|id| !used.contains(id));
        for c in &wanted {
            if !self.cidr_ids.contains_key(c) {
                self.cidr_ids.insert(*c, free.next().expect("24-bit space"));
            }
        }
        let mut universe = Universe::new(pods);
        for (c, id) in &self.cidr_ids {
            universe.add_cidr(*id, *c);
        }

        let mut tables = PolicyTables::default();
        let mut keep: BTreeSet<(u16, PolicyKey)> = BTreeSet::new();
        let mut new_slots = Vec::new();
        let policies: Vec<&Policy> = self.policies.values().collect();
        let mut resolved: Vec<Option<Resolved>> = policies.iter().map(|_| None).collect();
        let (mut total, mut resolved_keys) = (0usize, 0usize);
        for ep in endpoints {
            let labels = universe.ids.get(&ep.sec_id).cloned().unwrap_or_default();
            let selecting: Vec<usize> = (0..policies.len())
                .filter(|&i| policies[i].subject.matches(&labels))
                .collect();
            for &i in &selecting {
                if resolved[i].is_none() {
                    let r = resolve(policies[i], &universe)?;
                    resolved_keys += r.keys.len();
                    if resolved_keys > MAX_TOTAL_RESOLVED_KEYS {
                        return Err(CompileError::TooManyEntries);
                    }
                    resolved[i] = Some(r);
                }
            }
            let selecting: Vec<&Resolved> = selecting
                .iter()
                .filter_map(|&i| resolved[i].as_ref())
                .collect();
            let (enforced, entries) = endpoint_entries(&selecting);
            if entries.len() > POLICY_MAP_MAX {
                return Err(CompileError::EndpointMapFull {
                    ep: ep.ep_id,
                    need: entries.len(),
                });
            }
            total += entries.len();
            if total > MAX_TOTAL_ENTRIES {
                return Err(CompileError::TooManyEntries);
            }
            let mut out = Vec::with_capacity(entries.len());
            for (key, entry) in entries {
                let k = (ep.ep_id, key);
                let slot = match self.slots.get(&k) {
                    Some(s) => *s,
                    None => {
                        let s = self.free_slots.pop().or_else(|| {
                            let n = FIRST_ENTRY_SLOT + self.next_slot;
                            ((n as usize) < stats_slots).then(|| {
                                self.next_slot += 1;
                                n
                            })
                        });
                        match s {
                            Some(s) => {
                                self.slots.insert(k, s);
                                new_slots.push(s);
                                s
                            }
                            None => NO_SLOT,
                        }
                    }
                };
                keep.insert(k);
                out.push(MapEntry { key, entry, slot });
            }
            tables.endpoints.insert(
                ep.ep_id,
                EndpointPolicy::new(ep.ep_id, ep.sec_id, enforced, out),
            );
        }
        let gone: Vec<(u16, PolicyKey)> = self
            .slots
            .keys()
            .filter(|k| !keep.contains(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(s) = self.slots.remove(&k) {
                self.free_slots.push(s);
            }
        }
        Ok(Compiled {
            tables,
            universe,
            new_slots,
        })
    }
}

/// A policy with its rules resolved to map keys: the keys do not depend on the endpoint, so
/// they are computed once per compilation (for policies that select a local endpoint), not
/// once per selected endpoint.
#[derive(Debug)]
pub struct Resolved {
    pub default_deny: [bool; 2],
    /// (key, deny).
    pub keys: Vec<(PolicyKey, bool)>,
}

/// Resolve `p`'s peers to identities of `universe` and its ports to protocol/port prefixes.
///
/// # Errors
/// More than [`MAX_RESOLVED_KEYS`] keys (checked before each rule's keys are made).
pub fn resolve(p: &Policy, universe: &Universe) -> Result<Resolved, CompileError> {
    let mut keys = Vec::new();
    for (dir, rules) in [(DIR_INGRESS, &p.ingress), (DIR_EGRESS, &p.egress)] {
        for r in rules {
            if r.peers.is_empty() && r.ports.is_empty() {
                continue;
            }
            let ids: Option<BTreeSet<u32>> = if r.peers.is_empty() {
                None
            } else {
                let mut acc = Some(BTreeSet::new());
                for peer in &r.peers {
                    match (universe.select(peer), acc.as_mut()) {
                        (None, _) => acc = None,
                        (Some(s), Some(a)) => a.extend(s),
                        (Some(_), None) => {}
                    }
                }
                acc
            };
            let ids: Vec<u32> = match ids {
                // Any identity: 0 and the aggregates (Cilium 1.20).
                None => identity::ANY_IDENTITY_KEYS.to_vec(),
                Some(s) => s.into_iter().collect(),
            };
            let l4: Vec<(u8, u16, u8)> = if r.ports.is_empty() {
                vec![(0, 0, 0)]
            } else {
                r.ports
                    .iter()
                    .flat_map(|pr| {
                        let protos: &[u8] = if pr.proto == 0 && pr.port != 0 {
                            // ANY with a port: TCP, UDP and SCTP, as Cilium expands it.
                            &[6, 17, 132]
                        } else {
                            std::slice::from_ref(&pr.proto)
                        };
                        protos.iter().flat_map(move |&proto| {
                            if pr.port == 0 {
                                vec![(proto, 0, 0)]
                            } else {
                                port_prefixes(pr.port, pr.end.max(pr.port))
                                    .into_iter()
                                    .map(|(port, bits)| (proto, port, bits))
                                    .collect()
                            }
                        })
                    })
                    .collect()
            };
            if keys.len() + ids.len().saturating_mul(l4.len()) > MAX_RESOLVED_KEYS {
                return Err(CompileError::PolicyTooLarge {
                    policy: p.id.to_string(),
                });
            }
            for &id in &ids {
                for &(proto, port, bits) in &l4 {
                    keys.push((PolicyKey::new(id, dir, proto, port, bits), r.deny));
                }
            }
        }
    }
    Ok(Resolved {
        default_deny: p.default_deny,
        keys,
    })
}

/// The map entries of one endpoint from the policies that select it:
/// ([ingress, egress] enforced, entries).
pub fn endpoint_entries(selecting: &[&Resolved]) -> ([bool; 2], Vec<(PolicyKey, PolicyEntry)>) {
    let mut enforced = [false; 2];
    let mut map: BTreeMap<PolicyKey, PolicyEntry> = BTreeMap::new();
    let mut put = |key: PolicyKey, deny: bool| {
        let e = PolicyEntry::new(&key, deny, 0);
        match map.get(&key) {
            Some(old) if old.is_deny() => {}
            _ => {
                map.insert(key, e);
            }
        }
    };
    for p in selecting {
        enforced[0] |= p.default_deny[0];
        enforced[1] |= p.default_deny[1];
        for &(key, deny) in &p.keys {
            put(key, deny);
        }
    }
    // allow-localhost: an endpoint with ingress enforced still admits its node.
    if enforced[DIR_INGRESS as usize] {
        put(
            PolicyKey::new(identity::RESERVED_HOST, DIR_INGRESS, 0, 0, 0),
            false,
        );
    }
    // Not enforced: the allow-all entries (deny entries still win over them): any identity,
    // under 0 and the aggregates.
    for dir in [DIR_INGRESS, DIR_EGRESS] {
        if !enforced[dir as usize] {
            for id in identity::ANY_IDENTITY_KEYS {
                put(PolicyKey::new(id, dir, 0, 0, 0), false);
            }
        }
    }
    // A deny covers the narrower allows of the same identity: the LPM would find the allow
    // first, so drop it (Cilium's MapState does the same).
    // Denies indexed by (identity, direction): each allow is checked against its own
    // identity's denies only.
    let mut denies: hashbrown::HashMap<(u32, u8), Vec<PolicyKey>> = hashbrown::HashMap::new();
    for (k, _) in map.iter().filter(|(_, e)| e.is_deny()) {
        denies.entry((k.sec_label, k.egress)).or_default().push(*k);
    }
    if !denies.is_empty() {
        map.retain(|k, e| {
            e.is_deny()
                || !denies
                    .get(&(k.sec_label, k.egress))
                    .is_some_and(|ds| ds.iter().any(|d| d.covers(k)))
        });
    }
    (enforced, map.into_iter().collect())
}

#[cfg(test)]
mod tests;
