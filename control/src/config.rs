//! Node configuration (YAML): the node, its datapath settings and its pods.
//!
//! Parsing rejects unknown fields and wrong types with the field path (`pods[1].mac`); the
//! semantic check ([`Config::validate`]) then reports every problem it finds, each with its
//! field. Nothing is attached or written before a config has passed both. Facts that need
//! the running system (does `lxc-web` exist? how many rx queues?) are checked by the daemon,
//! still before anything is attached.
//!
//! The reference is `docs/config.md`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
pub use tables::settings::{PollMode, RoutingMode};

use crate::identity;
use crate::maps::MacAddr;
use crate::net::{Ipv4Cidr, Ipv6Cidr};

/// The embedded default: the demo node served when `fastpath run` gets no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("default-node.yaml");
/// The other nodes of the embedded demo cluster, by name (`fastpath config default --node`).
pub const DEMO_CLUSTER: [(&str, &str); 3] = [
    ("demo", DEFAULT_CONFIG),
    ("demo2", include_str!("default-node2.yaml")),
    ("demo-kernel", include_str!("default-kernel.yaml")),
];
/// The name used for the embedded default in error messages.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default>";

/// Linux IFNAMSIZ - 1.
const MAX_IFNAME: usize = 15;
/// Cilium's endpoint ID range.
pub const MAX_ENDPOINT_ID: u16 = 4095;
/// Further node addresses (`node.host_ips`).
pub const MAX_HOST_IPS: usize = 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub datapath: DatapathConfig,
    #[serde(default)]
    pub pods: Vec<PodConfig>,
    /// The other nodes of the cluster and their pods: what Cilium's agent learns from the
    /// kvstore / CiliumNode objects. Fills `cilium_ipcache_v2`.
    #[serde(default)]
    pub remote_nodes: Vec<RemoteNodeConfig>,
    /// Kubernetes Services with their endpoints (see `docs/services.md`): compiled into
    /// `cilium_lb4_services_v2` and friends. Also changeable at run time over the control
    /// socket (`fastpath service apply`).
    #[serde(default)]
    pub services: Vec<crate::lb::ServiceConfig>,
    /// Network policies (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy
    /// objects as Kubernetes would hold them; see `docs/policy.md`). Also changeable at run
    /// time (`fastpath policy apply`).
    #[serde(default)]
    pub policies: Vec<serde_json::Value>,
    /// Where the rest of the cluster comes from: this file (`file`, the default) or the
    /// etcd kvstore (`kvstore`, see `docs/kvstore.md`). Fixed while the node runs.
    #[serde(default)]
    pub source: SourceMode,
    /// The etcd kvstore (`source: kvstore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvstore: Option<KvstoreConfig>,
    /// Identities fixed by a cluster-wide allocator (the kvstore's), by label set: these
    /// label sets get these numbers, every other one its label hash probed around them.
    /// Never read from the file.
    #[serde(skip)]
    pub allocated: BTreeMap<Vec<String>, u32>,
    /// The Kubernetes API server (`source: kubernetes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
    /// Policy objects from the cluster's source (the Kubernetes API), in force after the
    /// file's (an object of the same kind, namespace and name replaces the file's). Never
    /// read from the file.
    #[serde(skip)]
    pub cluster_policies: Vec<serde_json::Value>,
}

/// The Kubernetes API server a `source: kubernetes` node lists and watches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The API server's URL, `http://host:port` (no TLS; a `kubectl proxy` or a local
    /// API endpoint).
    pub api_server: String,
    /// A file holding a bearer token sent with every request (a service account's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
    /// Seconds the agent waits at start for every list to complete.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: u32,
}

/// Where a node learns the rest of its cluster (`source:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceMode {
    /// `remote_nodes:` of this file; identities from label hashes.
    #[default]
    File,
    /// The etcd kvstore: nodes, pods and services published by every node, identities
    /// allocated cluster-wide (`kvstore:`).
    Kvstore,
    /// The Kubernetes API: Nodes, Pods, Services and EndpointSlices, NetworkPolicies and
    /// Cilium's policies, listed and watched (`kubernetes:`).
    Kubernetes,
}

impl SourceMode {
    pub fn name(self) -> &'static str {
        match self {
            SourceMode::File => "file",
            SourceMode::Kvstore => "kvstore",
            SourceMode::Kubernetes => "kubernetes",
        }
    }
}

/// The etcd cluster a `source: kvstore` node publishes to and watches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KvstoreConfig {
    /// etcd client URLs, `http://host:port` (no TLS): tried in turn.
    pub endpoints: Vec<String>,
    /// The cluster name in every key (`cilium/state/nodes/v1/<cluster>/<node>`).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Seconds: the TTL of this node's lease. Its keys outlive a dead agent by at most this
    /// long (plus etcd's own check period).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: u32,
    /// Seconds the agent waits at start for etcd (and for its pods' identities).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: u32,
    /// Seconds between identity garbage collections (unused master keys deleted).
    #[serde(default = "default_identity_gc")]
    pub identity_gc_interval: u32,
}

fn default_cluster() -> String {
    "default".into()
}
fn default_lease_ttl() -> u32 {
    15
}
fn default_connect_timeout() -> u32 {
    30
}
fn default_identity_gc() -> u32 {
    60
}

/// The longest accepted `kvstore.lease_ttl` (seconds, one day).
pub const MAX_LEASE_TTL: u32 = 86_400;

/// Another node: where its pods live and how to reach it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteNodeConfig {
    pub name: String,
    /// The node's underlay address: tunnel endpoint (tunnel mode) or next hop for its pod CIDR
    /// (native routing).
    pub ip: Ipv4Addr,
    /// The node's pod CIDR (Cilium's CiliumNode `spec.ipam.podCIDRs`).
    pub pod_cidr: Ipv4Cidr,
    /// The node's IPv6 pod CIDR (dual stack); required when one of its pods has an `ipv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<Ipv6Cidr>,
    /// Inner destination MAC for frames encapsulated to this node. Needed only when the peer
    /// is a Linux VXLAN device (it drops frames not addressed to its MAC); fastpath and Cilium
    /// peers ignore the inner MACs.
    #[serde(default)]
    pub overlay_mac: Option<MacAddr>,
    #[serde(default)]
    pub pods: Vec<RemotePodConfig>,
}

/// A pod on another node: its address and labels (its identity follows from the labels).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemotePodConfig {
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address (dual stack), inside its node's `pod_cidr_v6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The device that reaches the other nodes (the node NIC).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayConfig {
    /// Device name in the node's network namespace.
    pub device: String,
    /// The node's address on it, with its prefix length (`192.168.50.1/24`): the source of
    /// encapsulated frames and the address other nodes tunnel to.
    pub address: Ipv4Cidr,
    /// For `fastpath lab` only: the network namespace holding the bridge the nodes' underlay
    /// devices plug into (the "top-of-rack switch").
    #[serde(default)]
    pub fabric_netns: Option<String>,
    /// For `fastpath lab --kernel-vxlan` only: the MAC of this node's Linux VXLAN device
    /// (other nodes list it as their `remote_nodes[].overlay_mac`).
    #[serde(default)]
    pub overlay_mac: Option<MacAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name: names the control socket and the bpffs pin directory.
    pub name: String,
    /// Network namespace to run in (fastpath enters it); none = the current one.
    #[serde(default)]
    pub netns: Option<String>,
    /// The pods' gateway address (Cilium's `cilium_host` IP). ARP for it is answered with the
    /// lxc MAC; traffic to it goes to the kernel.
    pub router_ip: Ipv4Addr,
    /// Further addresses of this node: `(localhost)` entries in `cilium_lxc`.
    #[serde(default)]
    pub host_ips: Vec<Ipv4Addr>,
    /// This node's pod CIDR; local pods must be inside it. Optional for a single node.
    #[serde(default)]
    pub pod_cidr: Option<Ipv4Cidr>,
    /// This node's IPv6 pod CIDR (dual stack: the IPv6 entry of CiliumNode
    /// `spec.ipam.podCIDRs`); required when a pod has an `ipv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<Ipv6Cidr>,
    /// The node NIC towards the other nodes; required when `remote_nodes` is not empty.
    #[serde(default)]
    pub underlay: Option<UnderlayConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver (native) mode; fail if the driver cannot do it.
    Native,
    /// Generic (skb) mode.
    Generic,
    /// Native where the driver supports it, generic otherwise.
    #[default]
    Auto,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Auto => "auto",
        })
    }
}

/// What handles the frames a device receives (`datapath.attach`, `--datapath`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatapathChoice {
    /// XDP steering into the AF_XDP workers; fail if XDP cannot be attached.
    Xdp,
    /// The in-kernel tc datapath (clsact ingress), over the same maps.
    Tc,
    /// XDP, and the tc datapath on a device where XDP cannot be attached.
    #[default]
    Auto,
}

impl fmt::Display for DatapathChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatapathChoice::Xdp => "xdp",
            DatapathChoice::Tc => "tc",
            DatapathChoice::Auto => "auto",
        })
    }
}

impl std::str::FromStr for DatapathChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xdp" => Ok(DatapathChoice::Xdp),
            "tc" => Ok(DatapathChoice::Tc),
            "auto" => Ok(DatapathChoice::Auto),
            _ => Err(format!("{s:?}: expected xdp, tc or auto")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatapathConfig {
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// What handles each device's frames: `xdp`, `tc` or `auto` (docs/tc.md).
    #[serde(default)]
    pub attach: DatapathChoice,
    /// Per device name, overriding `attach` for that device.
    #[serde(default)]
    pub attach_devices: std::collections::BTreeMap<String, DatapathChoice>,
    /// Number of rx queues served, one pinned worker each (`--queues`).
    #[serde(default = "one")]
    pub queues: u32,
    /// Cores to pin worker i to (`--cores`); default 0..queues.
    #[serde(default)]
    pub cores: Vec<usize>,
    #[serde(default)]
    pub poll: PollMode,
    /// Adaptive poll: microseconds an idle worker keeps spinning after its last frame before
    /// it sleeps in poll(2) (docs/benchmarks.md "Choosing the spin budget").
    #[serde(default = "default_spin_us")]
    pub poll_spin_us: u32,
    /// Hold frames queued for a device up to this many microseconds (or until a batch is
    /// full) before kicking its TX: one kick for many frames (OVS `tx-flush-interval`); 0:
    /// kick at the end of every loop that queued something.
    #[serde(default)]
    pub tx_flush_us: u32,
    /// Workers under SCHED_FIFO at this priority (1–99), so that no normal thread on their
    /// cores preempts them; 0 (the default): normal scheduling.
    #[serde(default)]
    pub rt_priority: u8,
    /// Frames per RX poll and per TX burst.
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// AF_XDP ring size (fill, completion, rx, tx), a power of two.
    #[serde(default = "default_ring")]
    pub ring_size: u32,
    /// Cross-node forwarding: `tunnel` (VXLAN) or `native`.
    #[serde(default)]
    pub routing: RoutingMode,
    /// VXLAN UDP port (Cilium's `tunnel-port`; 8472 is the Linux and Cilium default).
    #[serde(default = "default_tunnel_port")]
    pub tunnel_port: u16,
    /// Native routing: the range routed without encapsulation (Cilium's
    /// `ipv4-native-routing-cidr`); every remote pod CIDR must be inside it.
    #[serde(default)]
    pub native_routing_cidr: Option<Ipv4Cidr>,
    /// Backend selection for services that do not choose (Cilium's `bpf-lb-algorithm`).
    #[serde(default)]
    pub lb_algorithm: crate::lb::LbAlgorithm,
    /// Maglev lookup table size M, a prime Cilium accepts (`bpf-lb-maglev-table-size`).
    #[serde(default = "default_maglev_m")]
    pub maglev_table_size: usize,
    /// Base64 of 12 bytes (`bpf-lb-maglev-hash-seed`); nodes must agree on it.
    #[serde(default = "default_seed")]
    pub maglev_hash_seed: String,
    /// `bpf-ct-global-tcp-max` / `bpf-ct-global-any-max`.
    #[serde(default = "default_ct_tcp")]
    pub ct_tcp_max: u32,
    #[serde(default = "default_ct_any")]
    pub ct_any_max: u32,
    /// Entries of each LB map (Cilium's `bpf-lb-map-max`): `cilium_lb4_services_v2` needs
    /// one per frontend plus one per backend slot, `cilium_lb4_backends_v3` one per backend;
    /// the affinity map is sized with it too. `cilium_lb4_reverse_nat` is keyed by a 16-bit
    /// service ID and holds at most 65536 whatever this says.
    #[serde(default = "default_lb_map_max")]
    pub lb_map_max: u32,
    /// The most pods the node serves at once, from the config and added at run time
    /// (`fastpath endpoint add`) together. The workers' UMEM and port table are sized for it
    /// at start. Default: the config's pods plus [`SPARE_PODS`].
    #[serde(default)]
    pub max_pods: Option<u32>,
}

/// Pods a node can take at run time beyond its config's when `datapath.max_pods` is not set.
pub const SPARE_PODS: u32 = 16;

fn one() -> u32 {
    1
}
fn default_batch() -> u32 {
    32
}
fn default_ring() -> u32 {
    2048
}
fn default_tunnel_port() -> u16 {
    8472
}
fn default_maglev_m() -> usize {
    crate::maps::lb::MAGLEV_TABLE_SIZE
}
fn default_seed() -> String {
    crate::maglev::DEFAULT_HASH_SEED.into()
}
fn default_lb_map_max() -> u32 {
    crate::maps::lb::LB_MAP_MAX
}
/// The largest `datapath.lb_map_max` accepted (16M entries).
pub const MAX_LB_MAP_MAX: u32 = 16 << 20;
fn default_ct_tcp() -> u32 {
    crate::maps::ct::CT_TCP_MAX
}
/// The adaptive poll's spin budget, µs (chosen by measurement: docs/benchmarks.md).
pub const DEFAULT_SPIN_US: u32 = 50;
/// The longest spin budget accepted, µs.
pub const MAX_SPIN_US: u32 = 10_000;
/// The most `datapath.tx_flush_us` accepts.
pub const MAX_TX_FLUSH_US: u32 = 1000;
fn default_spin_us() -> u32 {
    DEFAULT_SPIN_US
}
fn default_ct_any() -> u32 {
    crate::maps::ct::CT_ANY_MAX
}

impl DatapathConfig {
    /// The datapath device `ifname` is to get.
    pub fn attach_for(&self, ifname: &str) -> DatapathChoice {
        self.attach_devices
            .get(ifname)
            .copied()
            .unwrap_or(self.attach)
    }

    /// Does a device have to run the tc datapath (`attach` or an `attach_devices` entry is
    /// `tc`)?
    pub fn needs_tc(&self) -> bool {
        self.attach == DatapathChoice::Tc
            || self
                .attach_devices
                .values()
                .any(|c| *c == DatapathChoice::Tc)
    }
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            xdp_mode: XdpMode::Auto,
            attach: DatapathChoice::Auto,
            attach_devices: Default::default(),
            queues: 1,
            cores: Vec::new(),
            poll: PollMode::Adaptive,
            poll_spin_us: default_spin_us(),
            rt_priority: 0,
            tx_flush_us: 0,
            batch_size: default_batch(),
            ring_size: default_ring(),
            routing: RoutingMode::Tunnel,
            tunnel_port: default_tunnel_port(),
            native_routing_cidr: None,
            lb_algorithm: Default::default(),
            maglev_table_size: default_maglev_m(),
            maglev_hash_seed: default_seed(),
            ct_tcp_max: default_ct_tcp(),
            ct_any_max: default_ct_any(),
            lb_map_max: default_lb_map_max(),
            max_pods: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PodConfig {
    pub name: String,
    /// Kubernetes namespace (used in labels, like Cilium's `k8s:io.kubernetes.pod.namespace`).
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address (dual stack), inside `node.pod_cidr_v6`: written to
    /// `cilium_lxc` and the ipcache beside the IPv4 one (docs/config.md, "IPv6").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// MAC of the pod's eth0.
    pub mac: MacAddr,
    /// Host-side veth (`lxc…`) of the pod.
    pub lxc: String,
    /// Endpoint ID; allocated (lowest free from 1) when absent.
    #[serde(default)]
    pub id: Option<u16>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network namespace of the pod, for `fastpath lab`; the datapath does not use it.
    #[serde(default)]
    pub netns: Option<String>,
    /// The CNI attachment that made this endpoint (`fastpath-cni`): what a CNI DEL or GC
    /// names it by. Only for endpoints added at run time; refused in `pods:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniAttachment>,
}

/// A CNI attachment: the network (conflist `name`), container ID and interface name that
/// identify one ADD (CNI spec 1.1, "attachment").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CniAttachment {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// An etcd client URL: `http://host:port` (a name or an IPv4 address, a port).
///
/// # Errors
/// What is wrong with it.
pub fn check_etcd_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err(format!(
            "`{url}`: TLS is not supported; use http:// (on loopback or a trusted network)"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("`{url}`: expected http://host:port"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!(
            "`{url}`: no port (etcd's client port is usually 2379)"
        ));
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !host_ok {
        return Err(format!(
            "`{url}`: `{host}` is not a host name or IPv4 address"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{url}`: `{port}` is not a port")),
    }
}

/// A node name: 1-63 characters of a-z, 0-9 and '-' (it names the control socket
/// `/run/fastpath/<node>.sock`, the state, run and pin directories).
///
/// # Errors
/// The name and the rule, for the field's message.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1-63 characters of a-z, 0-9 and '-' (it names the control socket)"
        ))
    }
}

fn default_ns() -> String {
    "default".into()
}

/// A rejected config: which file, which field, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {field}: {msg}")]
    Parse {
        file: String,
        field: String,
        msg: String,
    },
    #[error("{file}: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

/// One semantic problem in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub msg: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.msg)
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = crate::yaml::read_file(path, &crate::yaml::CONFIG).map_err(|source| {
            ConfigError::Io {
                file: file.clone(),
                source,
            }
        })?;
        Config::parse(&text, &file)
    }

    /// The embedded default config.
    pub fn default_node() -> Config {
        Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
            .expect("embedded default config is valid")
    }

    /// Parse and validate YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config =
            crate::yaml::parse(text, &crate::yaml::CONFIG).map_err(|e| ConfigError::Parse {
                file: file.into(),
                field: e.path,
                msg: format!(
                    "{}{}",
                    e.msg,
                    e.at.map(|(l, c)| format!(" (line {l}, column {c})"))
                        .unwrap_or_default()
                ),
            })?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                file: file.into(),
                problems,
            })
        }
    }

    /// Every semantic problem, each with its field path. Empty means valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |field: String, msg: String| p.push(Problem { field, msg });

        self.validate_source(&mut bad);

        let n = &self.node;
        if let Err(msg) = check_node_name(&n.name) {
            bad("node.name".into(), msg);
        }
        if let Some(ns) = n
            .netns
            .as_ref()
            .filter(|ns| ns.is_empty() || ns.contains('/'))
        {
            bad(
                "node.netns".into(),
                format!("`{ns}` is not a network namespace name"),
            );
        }
        if !usable_unicast(n.router_ip) {
            bad(
                "node.router_ip".into(),
                format!("{} is not a usable unicast address", n.router_ip),
            );
        }
        if n.host_ips.len() > MAX_HOST_IPS {
            bad(
                "node.host_ips".into(),
                format!(
                    "{} addresses, at most {MAX_HOST_IPS} (each is a cilium_lxc entry)",
                    n.host_ips.len()
                ),
            );
        }
        for (i, ip) in n.host_ips.iter().enumerate() {
            if !usable_unicast(*ip) {
                bad(
                    format!("node.host_ips[{i}]"),
                    format!("{ip} is not a usable unicast address"),
                );
            }
        }

        let d = &self.datapath;
        if d.queues == 0 || d.queues > 64 {
            bad(
                "datapath.queues".into(),
                format!("{} must be between 1 and 64", d.queues),
            );
        }
        if !d.cores.is_empty() && d.cores.len() != d.queues as usize {
            bad(
                "datapath.cores".into(),
                format!(
                    "{} cores listed for {} queues; give one core per queue",
                    d.cores.len(),
                    d.queues
                ),
            );
        }
        if d.poll_spin_us > MAX_SPIN_US {
            bad(
                "datapath.poll_spin_us".into(),
                format!(
                    "{} µs is more than {MAX_SPIN_US} (use poll: busy to never sleep)",
                    d.poll_spin_us
                ),
            );
        }
        if d.tx_flush_us > MAX_TX_FLUSH_US {
            bad(
                "datapath.tx_flush_us".into(),
                format!(
                    "{} µs is more than {MAX_TX_FLUSH_US}: every frame may wait that long at each hop",
                    d.tx_flush_us
                ),
            );
        }
        if d.rt_priority > 99 {
            bad(
                "datapath.rt_priority".into(),
                format!(
                    "{} is not a SCHED_FIFO priority: 0 (normal scheduling) or 1 to 99",
                    d.rt_priority
                ),
            );
        }
        if d.rt_priority > 0 && d.poll == PollMode::Busy {
            bad(
                "datapath.rt_priority".into(),
                format!(
                    "{} needs poll: adaptive: a busy-polling SCHED_FIFO worker never sleeps, and the kernel throttles real-time threads for 50 ms of every second (kernel.sched_rt_runtime_us), losing every frame meanwhile",
                    d.rt_priority
                ),
            );
        }
        for dev in d.attach_devices.keys() {
            if dev.is_empty() || dev.len() > 15 || dev.contains(['/', ' ']) {
                bad(
                    format!("datapath.attach_devices.{dev}"),
                    format!("`{dev}` is not a device name (1 to 15 characters, no `/` or space)"),
                );
            }
        }
        if d.batch_size == 0 || d.batch_size > 64 {
            bad(
                "datapath.batch_size".into(),
                format!("{} must be between 1 and 64", d.batch_size),
            );
        }
        if !d.ring_size.is_power_of_two() || !(64..=16384).contains(&d.ring_size) {
            bad(
                "datapath.ring_size".into(),
                format!("{} must be a power of two in 64..=16384", d.ring_size),
            );
        }

        let mut ips: HashMap<Ipv4Addr, String> = HashMap::new();
        ips.insert(n.router_ip, "node.router_ip".into());
        for (i, ip) in n.host_ips.iter().enumerate() {
            ips.entry(*ip)
                .or_insert_with(|| format!("node.host_ips[{i}]"));
        }
        if let Some(m) = self.datapath.max_pods
            && (m as usize) < self.pods.len()
        {
            bad(
                "datapath.max_pods".into(),
                format!(
                    "{m} is fewer than the {} pods of the config",
                    self.pods.len()
                ),
            );
        }
        if self.max_pods() > MAX_ENDPOINT_ID as u32 {
            bad(
                "datapath.max_pods".into(),
                format!(
                    "{}; a node has at most {MAX_ENDPOINT_ID} endpoints (Cilium's endpoint ID range 1-{MAX_ENDPOINT_ID})",
                    self.max_pods()
                ),
            );
        }
        if self.pods.len() > MAX_ENDPOINT_ID as usize {
            bad(
                "pods".into(),
                format!(
                    "{} pods; a node has at most {MAX_ENDPOINT_ID} endpoints (Cilium's endpoint ID range 1-{MAX_ENDPOINT_ID})",
                    self.pods.len()
                ),
            );
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut macs: HashMap<MacAddr, usize> = HashMap::new();
        let mut lxcs: HashMap<&str, usize> = HashMap::new();
        let mut ids: HashMap<u16, usize> = HashMap::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let f = |s: &str| format!("pods[{i}].{s}");
            if pod.cni.is_some() {
                bad(
                    f("cni"),
                    "only endpoints a CNI plugin added at run time carry an attachment".into(),
                );
            }
            if pod.name.is_empty() {
                bad(f("name"), "must not be empty".into());
            } else if let Some(j) = names.insert(&pod.name, i) {
                bad(
                    f("name"),
                    format!("`{}` is already used by pods[{j}]", pod.name),
                );
            }
            if !usable_unicast(pod.ip) {
                bad(
                    f("ip"),
                    format!("{} is not a usable unicast address", pod.ip),
                );
            } else if let Some(other) = ips.get(&pod.ip) {
                bad(f("ip"), format!("{} is already used by {other}", pod.ip));
            } else {
                ips.insert(pod.ip, f("ip"));
            }
            if pod.mac.is_multicast() || pod.mac.is_zero() {
                bad(f("mac"), format!("{} is not a unicast MAC", pod.mac));
            } else if let Some(j) = macs.insert(pod.mac, i) {
                bad(
                    f("mac"),
                    format!("{} is already used by pods[{j}]", pod.mac),
                );
            }
            if !valid_ifname(&pod.lxc) {
                bad(
                    f("lxc"),
                    format!(
                        "`{}` is not a valid interface name (1-15 characters, no '/', ':' or space)",
                        pod.lxc
                    ),
                );
            } else if let Some(j) = lxcs.insert(&pod.lxc, i) {
                bad(
                    f("lxc"),
                    format!("`{}` is already used by pods[{j}]", pod.lxc),
                );
            }
            if let Some(id) = pod.id {
                if id == 0 || id > MAX_ENDPOINT_ID {
                    bad(
                        f("id"),
                        format!("{id} must be between 1 and {MAX_ENDPOINT_ID}"),
                    );
                } else if let Some(j) = ids.insert(id, i) {
                    bad(f("id"), format!("{id} is already used by pods[{j}]"));
                }
            }
            for k in pod.labels.keys() {
                if k.is_empty() || k.contains(char::is_whitespace) {
                    bad(
                        f("labels"),
                        format!("label key `{k}` must be non-empty without spaces"),
                    );
                }
            }
            if let Some(c) = n.pod_cidr
                && !c.contains(pod.ip)
            {
                bad(f("ip"), format!("{} is outside node.pod_cidr {c}", pod.ip));
            }
        }

        if let Some(c) = n.pod_cidr
            && !c.is_network()
        {
            bad(
                "node.pod_cidr".into(),
                format!("{c} has host bits set (did you mean {}?)", c.network()),
            );
        }
        if let Some(u) = &n.underlay {
            if !valid_ifname(&u.device) {
                bad(
                    "node.underlay.device".into(),
                    format!("`{}` is not a valid interface name", u.device),
                );
            }
            if !usable_unicast(u.address.addr) || u.address.len == 32 || u.address.len < 8 {
                bad(
                    "node.underlay.address".into(),
                    format!(
                        "{} must be a unicast address with a prefix length of 8-31",
                        u.address
                    ),
                );
            } else if let Some(other) = ips.get(&u.address.addr) {
                bad(
                    "node.underlay.address".into(),
                    format!("{} is already used by {other}", u.address.addr),
                );
            } else {
                ips.insert(u.address.addr, "node.underlay.address".into());
            }
        }
        if d.tunnel_port == 0 {
            bad("datapath.tunnel_port".into(), "must not be 0".into());
        }
        match (d.routing, d.native_routing_cidr) {
            (RoutingMode::Native, None) => bad(
                "datapath.native_routing_cidr".into(),
                "required with routing: native (the range forwarded without encapsulation)".into(),
            ),
            (_, Some(c)) if !c.is_network() => bad(
                "datapath.native_routing_cidr".into(),
                format!("{c} has host bits set (did you mean {}?)", c.network()),
            ),
            _ => {}
        }
        if !self.remote_nodes.is_empty() && n.underlay.is_none() {
            bad(
                "node.underlay".into(),
                "required when remote_nodes are listed (the device that reaches them)".into(),
            );
        }
        let mut node_names: HashMap<&str, usize> = HashMap::new();
        let mut cidrs: Vec<(Ipv4Cidr, String)> = n
            .pod_cidr
            .map(|c| (c, "node.pod_cidr".to_string()))
            .into_iter()
            .collect();
        for (i, r) in self.remote_nodes.iter().enumerate() {
            let f = |s: &str| format!("remote_nodes[{i}].{s}");
            if r.name.is_empty() || r.name == n.name {
                bad(
                    f("name"),
                    format!("`{}` must be non-empty and not this node's name", r.name),
                );
            } else if let Some(j) = node_names.insert(&r.name, i) {
                bad(
                    f("name"),
                    format!("`{}` is already used by remote_nodes[{j}]", r.name),
                );
            }
            if !usable_unicast(r.ip) {
                bad(f("ip"), format!("{} is not a usable unicast address", r.ip));
            } else if let Some(other) = ips.get(&r.ip) {
                bad(f("ip"), format!("{} is already used by {other}", r.ip));
            } else {
                ips.insert(r.ip, f("ip"));
            }
            if !r.pod_cidr.is_network() {
                bad(
                    f("pod_cidr"),
                    format!(
                        "{} has host bits set (did you mean {}?)",
                        r.pod_cidr,
                        r.pod_cidr.network()
                    ),
                );
            } else if let Some((c, who)) = cidrs.iter().find(|(c, _)| c.overlaps(&r.pod_cidr)) {
                bad(
                    f("pod_cidr"),
                    format!("{} overlaps {c} of {who}", r.pod_cidr),
                );
            } else {
                cidrs.push((r.pod_cidr, f("pod_cidr")));
            }
            if let Some(nc) = d.native_routing_cidr
                && d.routing == RoutingMode::Native
                && !(nc.contains(r.pod_cidr.addr) && nc.len <= r.pod_cidr.len)
            {
                bad(
                    f("pod_cidr"),
                    format!(
                        "{} is outside datapath.native_routing_cidr {nc}",
                        r.pod_cidr
                    ),
                );
            }
            if let Some(m) = r.overlay_mac
                && (m.is_multicast() || m.is_zero())
            {
                bad(f("overlay_mac"), format!("{m} is not a unicast MAC"));
            }
            for (j, pod) in r.pods.iter().enumerate() {
                let f = |s: &str| format!("remote_nodes[{i}].pods[{j}].{s}");
                if !r.pod_cidr.contains(pod.ip) {
                    bad(
                        f("ip"),
                        format!("{} is outside the node's pod_cidr {}", pod.ip, r.pod_cidr),
                    );
                } else if let Some(other) = ips.get(&pod.ip) {
                    bad(f("ip"), format!("{} is already used by {other}", pod.ip));
                } else {
                    ips.insert(pod.ip, f("ip"));
                }
            }
        }
        if !crate::lb::MAGLEV_SIZES.contains(&d.maglev_table_size) {
            bad(
                "datapath.maglev_table_size".into(),
                format!(
                    "{} is not one of Cilium's Maglev sizes {:?}",
                    d.maglev_table_size,
                    crate::lb::MAGLEV_SIZES
                ),
            );
        }
        if let Err(e) = crate::maglev::Seeds::parse(&d.maglev_hash_seed) {
            bad("datapath.maglev_hash_seed".into(), e);
        }
        for (f, v) in [
            ("ct_tcp_max", d.ct_tcp_max),
            ("ct_any_max", d.ct_any_max),
            ("lb_map_max", d.lb_map_max),
        ] {
            if !(1024..=16 << 20).contains(&v) {
                bad(
                    format!("datapath.{f}"),
                    format!("{v} must be between 1024 and {}", 16 << 20),
                );
            }
        }
        let lb_problems = crate::lb::validate(&self.services, "services");
        if lb_problems.is_empty()
            && (n.underlay.is_some()
                || self
                    .services
                    .iter()
                    .all(|s| s.kind != crate::lb::ServiceType::NodePort))
        {
            // What only compiling them shows: frontends on the node's address claimed twice,
            // the LB maps' sizes, the Maglev memory bound (`config check` says it, not the
            // start).
            match crate::lb::LbState::check_services(&self.services, &self.lb_settings()) {
                Ok(()) => {}
                Err(crate::lb::LbError::Invalid(ps)) => {
                    for p in ps {
                        bad(p.field, p.msg);
                    }
                }
                Err(e) => bad("services".into(), e.to_string()),
            }
        }
        for problem in lb_problems {
            bad(problem.field, problem.msg);
        }
        for (i, svc) in self.services.iter().enumerate() {
            if svc.kind == crate::lb::ServiceType::NodePort && n.underlay.is_none() {
                bad(
                    format!("services[{i}].type"),
                    "NodePort needs node.underlay (the address NodePort listens on)".into(),
                );
            }
            if let Some(other) = ips.get(&svc.cluster_ip) {
                bad(
                    format!("services[{i}].cluster_ip"),
                    format!("{} is already used by {other}", svc.cluster_ip),
                );
            }
        }
        if let Err(e) = self.policies() {
            bad("policies".into(), e.to_string());
        }
        let label_sets: std::collections::BTreeSet<Vec<String>> = self
            .pods
            .iter()
            .map(|p| (&p.namespace, &p.labels))
            .chain(
                self.remote_nodes
                    .iter()
                    .flat_map(|r| r.pods.iter().map(|p| (&p.namespace, &p.labels))),
            )
            .map(|(ns, l)| identity::pod_labels(ns, l))
            .collect();
        if label_sets.len() > identity::CAPACITY {
            bad(
                "remote_nodes".into(),
                format!(
                    "the cluster's pods have {} distinct label sets; security identities {}-{} hold {}",
                    label_sets.len(),
                    identity::MIN_ALLOCATED,
                    identity::MAX_ALLOCATED,
                    identity::CAPACITY
                ),
            );
        }
        p.extend(self.validate_v6());
        p
    }

    /// The IPv6 arm of [`Config::validate`]: dual-stack pod addresses and pod CIDRs,
    /// checked as their IPv4 twins are (a network prefix, inside the node's CIDR, unique,
    /// CIDRs not overlapping).
    fn validate_v6(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |field: String, msg: String| p.push(Problem { field, msg });
        let usable = |ip: &Ipv6Addr| {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_unicast_link_local()
                || ip.to_ipv4_mapped().is_some())
        };
        let mut ips: HashMap<Ipv6Addr, String> = HashMap::new();
        let mut cidrs: Vec<(Ipv6Cidr, String)> = Vec::new();
        let mut cidr = |c: Ipv6Cidr, field: String, bad: &mut dyn FnMut(String, String)| {
            if !c.is_network() {
                bad(
                    field,
                    format!("{c} has host bits set (did you mean {}?)", c.network()),
                );
            } else if let Some((o, who)) = cidrs.iter().find(|(o, _)| o.overlaps(&c)) {
                bad(field, format!("{c} overlaps {o} of {who}"));
            } else {
                cidrs.push((c, field));
            }
        };
        if let Some(c) = self.node.pod_cidr_v6 {
            cidr(c, "node.pod_cidr_v6".into(), &mut bad);
        }
        let mut addr = |ip: Ipv6Addr,
                        within: Option<(Ipv6Cidr, &str)>,
                        field: String,
                        bad: &mut dyn FnMut(String, String)| {
            match within {
                None => bad(
                    field,
                    "an IPv6 address needs its node's pod_cidr_v6 (none is set)".into(),
                ),
                Some(_) if !usable(&ip) => {
                    bad(field, format!("{ip} is not a usable unicast address"))
                }
                Some((c, what)) if !c.contains(ip) => {
                    bad(field, format!("{ip} is outside {what} {c}"))
                }
                Some((c, _)) if u128::from(ip) == u128::from(c.addr) => {
                    bad(field, format!("{ip} is the network address of {c}"))
                }
                Some(_) => match ips.get(&ip) {
                    Some(other) => bad(field, format!("{ip} is already used by {other}")),
                    None => {
                        ips.insert(ip, field);
                    }
                },
            }
        };
        for (i, pod) in self.pods.iter().enumerate() {
            if let Some(ip) = pod.ipv6 {
                let within = self.node.pod_cidr_v6.map(|c| (c, "node.pod_cidr_v6"));
                addr(ip, within, format!("pods[{i}].ipv6"), &mut bad);
            }
        }
        for (i, r) in self.remote_nodes.iter().enumerate() {
            if let Some(c) = r.pod_cidr_v6 {
                cidr(c, format!("remote_nodes[{i}].pod_cidr_v6"), &mut bad);
            }
            for (j, pod) in r.pods.iter().enumerate() {
                if let Some(ip) = pod.ipv6 {
                    let within = r.pod_cidr_v6.map(|c| (c, "the node's pod_cidr_v6"));
                    addr(
                        ip,
                        within,
                        format!("remote_nodes[{i}].pods[{j}].ipv6"),
                        &mut bad,
                    );
                }
            }
        }
        p
    }

    /// Security identities for every pod of the cluster this config knows: `(local, remote)`,
    /// local in pod order, remote per node in pod order. Computed over the whole cluster so
    /// that every node, given the same cluster description, derives the same numbers.
    pub fn identities(&self) -> (Vec<u32>, Vec<Vec<u32>>) {
        let local: Vec<Vec<String>> = self
            .pods
            .iter()
            .map(|p| identity::pod_labels(&p.namespace, &p.labels))
            .collect();
        let remote: Vec<Vec<Vec<String>>> = self
            .remote_nodes
            .iter()
            .map(|r| {
                r.pods
                    .iter()
                    .map(|p| identity::pod_labels(&p.namespace, &p.labels))
                    .collect()
            })
            .collect();
        let all: Vec<Vec<String>> = local
            .iter()
            .chain(remote.iter().flatten())
            .cloned()
            .collect();
        let ids = identity::allocate_with(&all, &self.allocated);
        let (l, mut rest) = ids.split_at(local.len());
        let mut out = Vec::new();
        for r in &remote {
            let (a, b) = rest.split_at(r.len());
            out.push(a.to_vec());
            rest = b;
        }
        (l.to_vec(), out)
    }

    /// `source:` and `kvstore:`.
    fn validate_source(&self, bad: &mut impl FnMut(String, String)) {
        match (self.source, &self.kvstore) {
            (SourceMode::Kvstore, None) => bad(
                "kvstore".into(),
                "`source: kvstore` needs a `kvstore:` section with `endpoints`".into(),
            ),
            (SourceMode::File | SourceMode::Kubernetes, Some(_)) => bad(
                "kvstore".into(),
                format!(
                    "only read with `source: kvstore` (this config has `source: {}`)",
                    self.source.name()
                ),
            ),
            _ => {}
        }
        match (self.source, &self.kubernetes) {
            (SourceMode::Kubernetes, None) => bad(
                "kubernetes".into(),
                "`source: kubernetes` needs a `kubernetes:` section with `api_server`".into(),
            ),
            (SourceMode::File | SourceMode::Kvstore, Some(_)) => bad(
                "kubernetes".into(),
                format!(
                    "only read with `source: kubernetes` (this config has `source: {}`)",
                    self.source.name()
                ),
            ),
            (_, Some(k)) => {
                if let Err(msg) = check_etcd_url(&k.api_server) {
                    bad(
                        "kubernetes.api_server".into(),
                        msg.replace(
                            "etcd's client port is usually 2379",
                            "e.g. 8001 for kubectl proxy",
                        ),
                    );
                }
                if !(1..=3600).contains(&k.connect_timeout) {
                    bad(
                        "kubernetes.connect_timeout".into(),
                        format!("{} s: between 1 and 3600", k.connect_timeout),
                    );
                }
            }
            _ => {}
        }
        if self.source != SourceMode::File {
            let s = self.source.name();
            if !self.remote_nodes.is_empty() {
                bad(
                    "remote_nodes".into(),
                    format!(
                        "with `source: {s}` the other nodes come from the {s} source: leave it empty"
                    ),
                );
            }
            if self.node.underlay.is_none() {
                bad(
                    "node.underlay".into(),
                    format!("`source: {s}` is for a node of a cluster: it needs an underlay"),
                );
            }
            if self.node.pod_cidr.is_none() {
                bad(
                    "node.pod_cidr".into(),
                    format!("`source: {s}` needs the node's pod CIDR: set it"),
                );
            }
        }
        let Some(k) = &self.kvstore else { return };
        if k.endpoints.is_empty() {
            bad("kvstore.endpoints".into(), "at least one etcd URL".into());
        }
        for (i, e) in k.endpoints.iter().enumerate() {
            if let Err(msg) = check_etcd_url(e) {
                bad(format!("kvstore.endpoints[{i}]"), msg);
            }
        }
        if k.endpoints.len() > 16 {
            bad("kvstore.endpoints".into(), "at most 16 URLs".into());
        }
        let name_ok = |c: &str| {
            !c.is_empty()
                && c.len() <= 32
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !name_ok(&k.cluster) {
            bad(
                "kvstore.cluster".into(),
                format!(
                    "`{}`: 1-32 characters of a-z, 0-9 and '-' (it is part of every key)",
                    k.cluster
                ),
            );
        }
        if !(2..=MAX_LEASE_TTL).contains(&k.lease_ttl) {
            bad(
                "kvstore.lease_ttl".into(),
                format!("{} s: between 2 and {MAX_LEASE_TTL}", k.lease_ttl),
            );
        }
        if !(1..=3600).contains(&k.connect_timeout) {
            bad(
                "kvstore.connect_timeout".into(),
                format!("{} s: between 1 and 3600", k.connect_timeout),
            );
        }
        if !(1..=86_400).contains(&k.identity_gc_interval) {
            bad(
                "kvstore.identity_gc_interval".into(),
                format!("{} s: between 1 and 86400", k.identity_gc_interval),
            );
        }
    }

    /// The policies of the config, parsed.
    pub fn policies(
        &self,
    ) -> Result<Vec<crate::policy::Policy>, crate::policy::parse::PolicyError> {
        let mut out = crate::policy::parse::parse_values(&self.policies, "config")?;
        if !self.cluster_policies.is_empty() {
            let cluster = crate::policy::parse::parse_values(&self.cluster_policies, "cluster")?;
            let ids: std::collections::BTreeSet<String> =
                cluster.iter().map(|p| p.id.object().to_string()).collect();
            out.retain(|p| !ids.contains(&p.id.object().to_string()));
            out.extend(cluster);
        }
        Ok(out)
    }

    /// Every pod identity of the cluster with its labels (what policy selectors match).
    pub fn identity_labels(&self) -> BTreeMap<u32, Vec<String>> {
        let (local, remote) = self.identities();
        let mut out = BTreeMap::new();
        for (p, id) in self.pods.iter().zip(local) {
            out.insert(id, identity::pod_labels(&p.namespace, &p.labels));
        }
        for (node, ids) in self.remote_nodes.iter().zip(remote) {
            for (p, id) in node.pods.iter().zip(ids) {
                out.insert(id, identity::pod_labels(&p.namespace, &p.labels));
            }
        }
        out
    }

    /// The load-balancer settings of this node.
    pub fn lb_settings(&self) -> crate::lb::LbSettings {
        crate::lb::LbSettings {
            node_ip: self.node_ip(),
            algorithm: self.datapath.lb_algorithm,
            maglev_m: self.datapath.maglev_table_size,
            seeds: crate::maglev::Seeds::parse(&self.datapath.maglev_hash_seed).unwrap_or_default(),
            map_max: self.datapath.lb_map_max as usize,
        }
    }

    /// The most pods the node serves at once (`datapath.max_pods`, else the config's pods
    /// plus [`SPARE_PODS`], capped at the endpoint ID range).
    pub fn max_pods(&self) -> u32 {
        self.datapath
            .max_pods
            .unwrap_or_else(|| (self.pods.len() as u32 + SPARE_PODS).min(MAX_ENDPOINT_ID as u32))
    }

    /// This node's underlay address, if it has an underlay.
    pub fn node_ip(&self) -> Option<Ipv4Addr> {
        self.node.underlay.as_ref().map(|u| u.address.addr)
    }

    /// Endpoint IDs for the pods, in pod order: the configured one, or the lowest free ID
    /// in Cilium's range 1..=4095 (one forward scan: linear in the pods).
    ///
    /// # Errors
    /// A pod whose ID is out of range, or for which no ID is left (more than 4095 pods) —
    /// what [`Config::validate`] reports first.
    pub fn endpoint_ids(&self) -> Result<Vec<u16>, Problem> {
        let max = MAX_ENDPOINT_ID as usize;
        let mut taken = vec![false; max + 1];
        for id in self.pods.iter().filter_map(|p| p.id) {
            if let Some(t) = taken.get_mut(id as usize) {
                *t = true;
            }
        }
        let mut next = 1usize;
        let mut out = Vec::with_capacity(self.pods.len());
        for (i, p) in self.pods.iter().enumerate() {
            let id = match p.id {
                Some(id) if (1..=MAX_ENDPOINT_ID).contains(&id) => id,
                Some(id) => {
                    return Err(Problem {
                        field: format!("pods[{i}].id"),
                        msg: format!("{id} must be between 1 and {MAX_ENDPOINT_ID}"),
                    });
                }
                None => {
                    while next <= max && taken[next] {
                        next += 1;
                    }
                    if next > max {
                        return Err(Problem {
                            field: format!("pods[{i}]"),
                            msg: format!(
                                "no endpoint ID left: all of 1-{MAX_ENDPOINT_ID} are taken"
                            ),
                        });
                    }
                    next += 1;
                    (next - 1) as u16
                }
            };
            out.push(id);
        }
        Ok(out)
    }

    /// Cores to pin worker i to: `datapath.cores`, else 0..queues wrapped over the online CPUs.
    pub fn worker_cores(&self, online: usize) -> Vec<usize> {
        if !self.datapath.cores.is_empty() {
            return self.datapath.cores.clone();
        }
        (0..self.datapath.queues as usize)
            .map(|q| q % online.max(1))
            .collect()
    }
}

fn valid_ifname(s: &str) -> bool {
    !(s.is_empty() || s.len() > MAX_IFNAME || s.contains(['/', ' ', ':']))
}

fn usable_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node: { name: n1, router_ip: 10.1.0.1 }
pods:
  - { name: a, ip: 10.1.1.2, mac: "0a:00:00:00:00:02", lxc: lxc-a }
  - { name: b, ip: 10.1.1.3, mac: "0a:00:00:00:00:03", lxc: lxc-b, id: 1 }
"#;

    #[test]
    fn default_config_is_valid() {
        let c = Config::default_node();
        assert_eq!(c.node.name, "demo");
        assert_eq!(c.pods.len(), 3);
        assert_eq!(c.datapath.queues, 1);
    }

    /// Every node of the demo cluster parses, and they agree on every pod's identity.
    #[test]
    fn demo_cluster_is_consistent() {
        let nodes: Vec<Config> = DEMO_CLUSTER
            .iter()
            .map(|(n, y)| Config::parse(y, n).unwrap())
            .collect();
        let mut ids: HashMap<Ipv4Addr, u32> = HashMap::new();
        for c in &nodes {
            let (local, remote) = c.identities();
            let pods = c.pods.iter().map(|p| p.ip).zip(local);
            let rpods = c
                .remote_nodes
                .iter()
                .zip(remote)
                .flat_map(|(r, ids)| r.pods.iter().map(|p| p.ip).zip(ids).collect::<Vec<_>>());
            for (ip, id) in pods.chain(rpods) {
                assert_eq!(*ids.entry(ip).or_insert(id), id, "{ip} in {}", c.node.name);
            }
        }
        assert_eq!(ids.len(), 6);
    }

    /// Issue #11 defect 3: 65 535 pods overflowed the allocator (duplicate ID 0) and IDs
    /// above 4095 were handed out.
    #[test]
    fn endpoint_ids_stay_in_ciliums_range() {
        let base = Config::parse(GOOD, "t.yaml").unwrap();
        let pods = |n: usize| -> Vec<PodConfig> {
            (0..n)
                .map(|i| PodConfig {
                    name: format!("p{i}"),
                    namespace: "default".into(),
                    ip: Ipv4Addr::from(0x0a01_0000u32 + 10 + i as u32),
                    ipv6: None,
                    mac: MacAddr([0x0a, 0, 0, 0, (i >> 8) as u8, i as u8]),
                    lxc: format!("lxc{i}"),
                    id: None,
                    labels: Default::default(),
                    netns: None,
                    cni: None,
                })
                .collect()
        };
        let mut c = base.clone();
        c.pods = pods(4095);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let ids = c.endpoint_ids().unwrap();
        let distinct: std::collections::HashSet<u16> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), 4095);
        assert!(ids.iter().all(|&i| (1..=4095).contains(&i)));
        c.pods = pods(4096);
        let p = c.validate();
        assert!(
            p.iter().any(|p| p.to_string()
                == "pods: 4096 pods; a node has at most 4095 endpoints (Cilium's endpoint ID range 1-4095)"),
            "{p:?}"
        );
        assert_eq!(
            c.endpoint_ids().unwrap_err().to_string(),
            "pods[4095]: no endpoint ID left: all of 1-4095 are taken"
        );
        c.pods = pods(2);
        c.pods[0].id = Some(5000);
        assert!(c.endpoint_ids().is_err());
    }

    #[test]
    fn more_label_sets_than_identities_are_refused() {
        let mut c = Config::parse(CLUSTER, "c.yaml").unwrap();
        c.remote_nodes[0].pods = (0..identity::CAPACITY as u32)
            .map(|i| RemotePodConfig {
                name: format!("r{i}"),
                namespace: "default".into(),
                ip: Ipv4Addr::new(10, 2, 0, 0),
                ipv6: None,
                labels: BTreeMap::from([("n".to_string(), i.to_string())]),
            })
            .collect();
        let p = c.validate();
        assert!(
            p.iter().any(|p| p.to_string().starts_with(
                "remote_nodes: the cluster's pods have 65281 distinct label sets; security identities 256-65535 hold 65280"
            )),
            "{:?}",
            &p[p.len().saturating_sub(1)..]
        );
    }

    #[test]
    fn ids_allocated_around_explicit_ones() {
        let c = Config::parse(GOOD, "t.yaml").unwrap();
        assert_eq!(c.endpoint_ids().unwrap(), vec![2, 1]);
    }

    fn err(text: &str) -> String {
        Config::parse(text, "bad.yaml").unwrap_err().to_string()
    }

    /// `source:` and `kvstore:` are checked with the rest: every problem named.
    #[test]
    fn kvstore_settings_are_checked() {
        let node = "node: { name: n, router_ip: 10.1.1.1, pod_cidr: 10.1.1.0/24, underlay: { device: eth1, address: 192.168.0.1/24 } }\n";
        let ok = format!(
            "{node}source: kvstore\nkvstore: {{ endpoints: ['http://192.168.0.250:2379'] }}\n"
        );
        let c = Config::parse(&ok, "t").unwrap();
        let k = c.kvstore.unwrap();
        assert_eq!(
            (k.cluster.as_str(), k.lease_ttl, k.connect_timeout),
            ("default", 15, 30)
        );
        let e = err(&format!(
            "{node}source: kvstore\nkvstore: {{ endpoints: ['https://e:2379', 'http://e', 'http://e:99999', 'e:2379'], cluster: Big, lease_ttl: 1, connect_timeout: 0, identity_gc_interval: 0 }}\nremote_nodes: [{{ name: m, ip: 192.168.0.2, pod_cidr: 10.1.2.0/24 }}]\n"
        ));
        for want in [
            "kvstore.endpoints[0]: `https://e:2379`: TLS is not supported",
            "kvstore.endpoints[1]: `http://e`: no port",
            "kvstore.endpoints[2]: `http://e:99999`: `99999` is not a port",
            "kvstore.endpoints[3]: `e:2379`: expected http://host:port",
            "kvstore.cluster: `Big`",
            "kvstore.lease_ttl: 1 s: between 2 and 86400",
            "kvstore.connect_timeout: 0 s",
            "kvstore.identity_gc_interval: 0 s",
            "remote_nodes: with `source: kvstore` the other nodes come from the kvstore source",
        ] {
            assert!(e.contains(want), "{want}\n{e}");
        }
        let e = err(&format!("{node}source: kvstore\n"));
        assert!(
            e.contains("kvstore: `source: kvstore` needs a `kvstore:` section"),
            "{e}"
        );
        let e = err(&format!("{node}source: kubernetes\n"));
        assert!(
            e.contains("kubernetes: `source: kubernetes` needs a `kubernetes:` section"),
            "{e}"
        );
        let e = err(&format!(
            "{node}source: kubernetes\nkubernetes: {{ api_server: 'https://k:6443' }}\nkvstore: {{ endpoints: ['http://e:2379'] }}\n"
        ));
        assert!(
            e.contains("kubernetes.api_server: `https://k:6443`: TLS is not supported"),
            "{e}"
        );
        assert!(
            e.contains(
                "kvstore: only read with `source: kvstore` (this config has `source: kubernetes`)"
            ),
            "{e}"
        );
        let e = err(&format!(
            "{node}kvstore: {{ endpoints: ['http://e:2379'] }}\n"
        ));
        assert!(
            e.contains("kvstore: only read with `source: kvstore`"),
            "{e}"
        );
        let e = err(
            "node: { name: n, router_ip: 10.1.1.1 }\nsource: kvstore\nkvstore: { endpoints: ['http://e:2379'] }\n",
        );
        assert!(
            e.contains("node.underlay: `source: kvstore` is for a node of a cluster"),
            "{e}"
        );
        assert!(
            e.contains("node.pod_cidr: `source: kvstore` needs the node's pod CIDR"),
            "{e}"
        );
    }

    #[test]
    fn parse_errors_name_file_and_field() {
        let e = err(&GOOD.replace("10.1.1.3", "10.1.1.300"));
        assert!(e.starts_with("bad.yaml: pods[1].ip: "), "{e}");
        let e = err(&GOOD.replace("\"0a:00:00:00:00:02\"", "\"0a:00:00:00:02\""));
        assert!(
            e.starts_with("bad.yaml: pods[0].mac: invalid MAC address"),
            "{e}"
        );
        let e = err(&GOOD.replace("lxc: lxc-b", "lxc: lxc-b, colour: red"));
        assert!(
            e.contains("pods[1]") && e.contains("unknown field `colour`"),
            "{e}"
        );
        let e = err("node: { name: n1 }\n");
        assert!(e.contains("missing field `router_ip`"), "{e}");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let text = GOOD
            .replace("10.1.1.3", "10.1.1.2")
            .replace("0a:00:00:00:00:03", "01:00:00:00:00:03")
            .replace("lxc: lxc-b", "lxc: lxc-a")
            .replace("id: 1", "id: 5000");
        let e = err(&text);
        assert!(
            e.contains("pods[1].ip: 10.1.1.2 is already used by pods[0].ip"),
            "{e}"
        );
        assert!(
            e.contains("pods[1].mac: 01:00:00:00:00:03 is not a unicast MAC"),
            "{e}"
        );
        assert!(
            e.contains("pods[1].lxc: `lxc-a` is already used by pods[0]"),
            "{e}"
        );
        assert!(
            e.contains("pods[1].id: 5000 must be between 1 and 4095"),
            "{e}"
        );
    }

    /// What only compiling the services shows is refused by the config check, with the
    /// field: a node-address frontend claimed twice, and services beyond `lb_map_max`.
    #[test]
    fn services_that_do_not_compile_are_config_errors() {
        let node = GOOD.replace(
            "node: { name: n1, router_ip: 10.1.0.1 }",
            "node: { name: n1, router_ip: 10.1.0.1, underlay: { device: eth1, address: 192.168.9.1/24 } }",
        );
        let t = format!(
            "{node}services:\n  - {{ name: np, type: NodePort, cluster_ip: 10.96.0.1, ports: [{{ port: 80, node_port: 30080 }}] }}\n  - {{ name: ext, cluster_ip: 10.96.0.2, external_ips: [192.168.9.1], ports: [{{ port: 30080 }}] }}\n"
        );
        let e = err(&t);
        assert!(
            e.contains("services[1].ports[0].port: frontend 192.168.9.1:30080/TCP is already used by default/np"),
            "{e}"
        );
        let backends: Vec<String> = (0..1100)
            .map(|i| format!("{{ ip: 10.200.{}.{} }}", i / 200, 1 + i % 200))
            .collect();
        let t = format!(
            "{GOOD}datapath: {{ lb_map_max: 1024 }}\nservices:\n  - {{ name: big, cluster_ip: 10.96.0.3, ports: [{{ port: 80 }}], backends: [{}] }}\n",
            backends.join(", ")
        );
        let e = err(&t);
        assert!(
            e.contains("services: cilium_lb4_backends_v3 would need 1100 entries and holds 1024"),
            "{e}"
        );
        Config::parse(
            &t.replace("lb_map_max: 1024", "lb_map_max: 2048"),
            "ok.yaml",
        )
        .unwrap();
    }

    #[test]
    fn datapath_limits() {
        let t = format!(
            "{GOOD}datapath: {{ queues: 2, cores: [0], ring_size: 1000, poll_spin_us: 20000, rt_priority: 100 }}\n"
        );
        let e = err(&t);
        assert!(
            e.contains("datapath.rt_priority: 100 is not a SCHED_FIFO priority: 0 (normal scheduling) or 1 to 99"),
            "{e}"
        );
        assert!(
            e.contains("datapath.poll_spin_us: 20000 µs is more than 10000"),
            "{e}"
        );
        assert!(
            e.contains("datapath.cores: 1 cores listed for 2 queues"),
            "{e}"
        );
        assert!(
            e.contains("datapath.ring_size: 1000 must be a power of two"),
            "{e}"
        );
        let e = err(&format!("{GOOD}datapath: {{ tx_flush_us: 5000 }}\n"));
        assert!(
            e.contains("datapath.tx_flush_us: 5000 µs is more than 1000"),
            "{e}"
        );
        let e = err(&format!(
            "{GOOD}datapath: {{ lb_map_max: 100, ct_tcp_max: 33554432 }}\n"
        ));
        assert!(
            e.contains("datapath.lb_map_max: 100 must be between 1024 and 16777216"),
            "{e}"
        );
        assert!(
            e.contains("datapath.ct_tcp_max: 33554432 must be between 1024 and 16777216"),
            "{e}"
        );
        let c = Config::parse(
            &format!("{GOOD}datapath: {{ lb_map_max: 2228224 }}\n"),
            "ok.yaml",
        )
        .unwrap();
        assert_eq!(c.lb_settings().map_max, 2_228_224);
        let e = err(&format!(
            "{GOOD}datapath: {{ poll: busy, rt_priority: 5 }}\n"
        ));
        assert!(
            e.contains("datapath.rt_priority: 5 needs poll: adaptive"),
            "{e}"
        );
        let e = err(&GOOD.replace("10.1.0.1", "10.1.1.2"));
        assert!(
            e.contains("pods[0].ip: 10.1.1.2 is already used by node.router_ip"),
            "{e}"
        );
        let e = err(&GOOD.replace("name: n1", "name: N_1"));
        assert!(e.contains("node.name: `N_1` must be"), "{e}");
    }

    const CLUSTER: &str = r#"
node:
  name: n1
  router_ip: 10.1.0.1
  pod_cidr: 10.1.0.0/24
  underlay: { device: eth1, address: 192.168.50.1/24 }
pods:
  - { name: a, ip: 10.1.0.11, mac: "0a:00:00:00:00:02", lxc: lxc-a }
remote_nodes:
  - name: n2
    ip: 192.168.50.2
    pod_cidr: 10.2.0.0/24
    pods: [ { name: b, ip: 10.2.0.11 } ]
"#;

    /// The IPv6 arm of validation: dual-stack addresses and CIDRs are checked as their IPv4
    /// twins are, each problem naming its field.
    #[test]
    fn dual_stack_addresses_are_checked() {
        let dual = CLUSTER
            .replace(
                "  pod_cidr: 10.1.0.0/24\n",
                "  pod_cidr: 10.1.0.0/24\n  pod_cidr_v6: \"fd00:10:1::/64\"\n",
            )
            .replace("lxc: lxc-a }", "lxc: lxc-a, ipv6: \"fd00:10:1::11\" }")
            .replace(
                "    pod_cidr: 10.2.0.0/24\n",
                "    pod_cidr: 10.2.0.0/24\n    pod_cidr_v6: \"fd00:10:2::/64\"\n",
            )
            .replace(
                "{ name: b, ip: 10.2.0.11 }",
                "{ name: b, ip: 10.2.0.11, ipv6: \"fd00:10:2::11\" }",
            );
        let c = Config::parse(&dual, "d.yaml").unwrap();
        assert_eq!(c.pods[0].ipv6, Some("fd00:10:1::11".parse().unwrap()));
        let cases = [
            (
                dual.replace("  pod_cidr_v6: \"fd00:10:1::/64\"\n", ""),
                "pods[0].ipv6: an IPv6 address needs its node's pod_cidr_v6 (none is set)",
            ),
            (
                dual.replace("ipv6: \"fd00:10:1::11\"", "ipv6: \"fd00:10:9::11\""),
                "pods[0].ipv6: fd00:10:9::11 is outside node.pod_cidr_v6 fd00:10:1::/64",
            ),
            (
                dual.replace("ipv6: \"fd00:10:1::11\"", "ipv6: \"fd00:10:1::\""),
                "pods[0].ipv6: fd00:10:1:: is the network address of fd00:10:1::/64",
            ),
            (
                dual.replace("ipv6: \"fd00:10:1::11\"", "ipv6: \"fe80::1\""),
                "pods[0].ipv6: fe80::1 is not a usable unicast address",
            ),
            (
                dual.replace("fd00:10:2::/64", "fd00:10:1::/48"),
                "remote_nodes[0].pod_cidr_v6: fd00:10:1::/48 overlaps fd00:10:1::/64 of node.pod_cidr_v6",
            ),
            (
                dual.replace("fd00:10:1::/64", "fd00:10:1::5/64"),
                "node.pod_cidr_v6: fd00:10:1::5/64 has host bits set (did you mean fd00:10:1::/64?)",
            ),
            (
                dual.replace("ipv6: \"fd00:10:2::11\"", "ipv6: \"fd00:10:1::11\""),
                "remote_nodes[0].pods[0].ipv6: fd00:10:1::11 is outside the node's pod_cidr_v6 fd00:10:2::/64",
            ),
            (
                dual.replace("fd00:10:2::/64", "fd00:10:2::/129"),
                "remote_nodes[0].pod_cidr_v6: invalid IPv6 prefix `fd00:10:2::/129`",
            ),
            (
                dual.replace("ipv6: \"fd00:10:1::11\"", "ipv6: 10.1.0.11"),
                "pods[0].ipv6: invalid IPv6 address syntax",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "want `{want}` in:\n{e}");
        }
        // Two pods on one IPv6 address.
        let mut two = Config::parse(&dual, "d.yaml").unwrap();
        let mut p = two.pods[0].clone();
        p.name = "a2".into();
        p.ip = "10.1.0.12".parse().unwrap();
        p.mac = "0a:00:00:00:00:03".parse().unwrap();
        p.lxc = "lxc-a2".into();
        two.pods.push(p);
        let e: Vec<String> = two.validate().iter().map(|p| p.to_string()).collect();
        assert!(
            e.iter()
                .any(|m| m.contains("pods[1].ipv6: fd00:10:1::11 is already used by pods[0].ipv6")),
            "{e:?}"
        );
    }

    #[test]
    fn cluster_config_is_checked() {
        let c = Config::parse(CLUSTER, "c.yaml").unwrap();
        assert_eq!(c.datapath.routing, RoutingMode::Tunnel);
        assert_eq!(c.datapath.tunnel_port, 8472);
        assert_eq!(c.node_ip(), Some("192.168.50.1".parse().unwrap()));
        let e = err(&CLUSTER.replace("10.2.0.0/24", "10.1.0.0/16"));
        assert!(
            e.contains(
                "remote_nodes[0].pod_cidr: 10.1.0.0/16 overlaps 10.1.0.0/24 of node.pod_cidr"
            ),
            "{e}"
        );
        let e = err(&CLUSTER.replace("ip: 10.2.0.11", "ip: 10.3.0.11"));
        assert!(
            e.contains(
                "remote_nodes[0].pods[0].ip: 10.3.0.11 is outside the node's pod_cidr 10.2.0.0/24"
            ),
            "{e}"
        );
        let e = err(&CLUSTER.replace("ip: 192.168.50.2", "ip: 192.168.50.1"));
        assert!(
            e.contains("remote_nodes[0].ip: 192.168.50.1 is already used by node.underlay.address"),
            "{e}"
        );
        let e = err(&CLUSTER.replace(
            "  underlay: { device: eth1, address: 192.168.50.1/24 }\n",
            "",
        ));
        assert!(
            e.contains("node.underlay: required when remote_nodes are listed"),
            "{e}"
        );
        let e = err(&format!("{CLUSTER}datapath: {{ routing: native }}\n"));
        assert!(
            e.contains("datapath.native_routing_cidr: required with routing: native"),
            "{e}"
        );
        let e = err(&format!(
            "{CLUSTER}datapath: {{ routing: native, native_routing_cidr: 10.1.0.0/16 }}\n"
        ));
        assert!(e.contains("remote_nodes[0].pod_cidr: 10.2.0.0/24 is outside datapath.native_routing_cidr 10.1.0.0/16"), "{e}");
        let e = err(&CLUSTER.replace("pod_cidr: 10.2.0.0/24", "pod_cidr: 10.2.0.1/24"));
        assert!(
            e.contains("has host bits set (did you mean 10.2.0.0/24?)"),
            "{e}"
        );
        let e = err(&CLUSTER.replace("10.2.0.0/24", "10.2.0.0/33"));
        assert!(
            e.contains("remote_nodes[0].pod_cidr: invalid IPv4 prefix"),
            "{e}"
        );
        let e = err(&CLUSTER.replace("ip: 10.1.0.11", "ip: 10.1.9.11"));
        assert!(
            e.contains("pods[0].ip: 10.1.9.11 is outside node.pod_cidr 10.1.0.0/24"),
            "{e}"
        );
    }
}
