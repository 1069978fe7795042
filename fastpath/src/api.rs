//! The control socket: a root-only unix socket at `/run/fastpath/<node>.sock` speaking one
//! JSON request per line and one JSON response per line. The CLI (`fastpath status`,
//! `fastpath bpf endpoint list`) is a client of it; so can any operator tool be.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a node's control socket lives.
pub fn socket_path(node: &str) -> PathBuf {
    PathBuf::from(format!("/run/fastpath/{node}.sock"))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    EndpointList,
    IpcacheList,
    TunnelList,
    /// `cilium_lb4_*` listings (`bpf lb list [--frontends|--backends|--revnat]`).
    LbList {
        view: LbView,
    },
    /// `cilium_ct4_global` + `cilium_ct_any4_global`.
    CtList,
    /// Add or replace services (by namespace/name), all or nothing.
    ServiceApply {
        services: Vec<control::lb::ServiceConfig>,
    },
    /// Delete a service (`namespace/name`).
    ServiceDelete {
        id: String,
    },
    /// Add or replace the policies of a YAML text (parsed and checked by the node), all or
    /// nothing. `file` names the text in errors.
    PolicyApply {
        yaml: String,
        file: String,
    },
    /// Delete a policy (`Kind/ns/name` or `ns/name`).
    PolicyDelete {
        id: String,
    },
    /// Dump `cilium_policy_v3_<endpoint>` (all local endpoints when `None`).
    PolicyGet {
        endpoint: Option<u16>,
    },
    /// The policies in force and whom they select.
    PolicyList,
    /// Every identity the node knows, with its labels (`identity list`).
    IdentityList,
    /// One identity (`identity get <id>`).
    IdentityGet {
        id: u32,
    },
    /// Serve a pod on this node from now on (what a CNI plugin's ADD sends): the
    /// `pods:` fields of the node config. Answered once it is in force on every worker.
    EndpointAdd {
        endpoint: control::config::PodConfig,
    },
    /// Stop serving a pod added at run time (`namespace/name`, or `name` in `default`).
    EndpointDelete {
        id: String,
    },
    /// Every endpoint the node serves (config and runtime).
    Endpoints,
    /// A CNI ADD (`fastpath-cni`): serve a pod whose address host-scope IPAM picks (or the
    /// one it asks for). Answered like `endpoint_add`, once it is in force on every worker.
    CniAdd {
        endpoint: CniEndpoint,
    },
    /// A CNI DEL: stop serving the endpoint of this attachment; `endpoint_absent` when no
    /// endpoint has it (DEL is idempotent).
    CniDelete {
        attachment: control::config::CniAttachment,
    },
    /// What a CNI plugin needs to know of the node before an ADD (and for STATUS).
    NodeInfo,
    /// Move device `device` to the other datapath at run time (`xdp`, `tc`; `auto` is
    /// `xdp`), without a gap and keeping its connections (docs/tc.md).
    DatapathSet {
        device: String,
        datapath: control::config::DatapathChoice,
    },
    /// The answer to `of` rendered as text by the server (`crate::views`): what the CLI
    /// prints. `numeric`: identities as numbers in policy dumps.
    Text {
        of: Box<Request>,
        #[serde(default)]
        numeric: bool,
    },
}

/// A pod as a CNI ADD describes it: the fields of a `pods:` entry without the address
/// (IPAM's), with the attachment that names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CniEndpoint {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub mac: control::maps::MacAddr,
    pub lxc: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub attachment: control::config::CniAttachment,
    /// The address asked for (`runtimeConfig.ips`); IPAM picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Allocate inside this part of the node's pod CIDR (the conflist's `ipam.pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<control::net::Ipv4Cidr>,
}

fn default_namespace() -> String {
    "default".into()
}

impl CniEndpoint {
    /// The endpoint change it asks for.
    pub fn into_change(self) -> crate::endpoints::Change {
        crate::endpoints::Change::CniAdd {
            pod: control::config::PodConfig {
                name: self.name,
                namespace: self.namespace,
                // Chosen by IPAM when the change starts.
                ip: std::net::Ipv4Addr::UNSPECIFIED,
                ipv6: None,
                mac: self.mac,
                lxc: self.lxc,
                id: None,
                labels: self.labels,
                netns: None,
                cni: Some(self.attachment),
            },
            requested: self.ip,
            pool: self.pool,
        }
    }
}

/// What a CNI plugin needs of a node: where its pods' host ends go, their gateway, MTU,
/// and how much room IPAM has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    /// The network namespace fastpath serves (the lxc devices go there); `None`: the one
    /// it was started in.
    pub netns: Option<String>,
    /// The pods' gateway.
    pub router_ip: std::net::Ipv4Addr,
    /// `node.pod_cidr`: what IPAM allocates from (`None`: no IPAM on this node).
    pub pod_cidr: Option<control::net::Ipv4Cidr>,
    /// The MTU a pod's links get: the underlay's less the VXLAN overhead in tunnel mode,
    /// and at most what the node's UMEM frames hold.
    pub pod_mtu: u32,
    /// Addresses of the pod CIDR that IPAM can still hand out.
    pub ipam_free: u64,
    /// Workers (`--queues`): a pod's veth needs at least this many rx and tx queues.
    pub queues: u32,
    /// Pods served and the most the node takes (`datapath.max_pods`).
    pub pods: usize,
    pub max_pods: u32,
    /// Endpoint changes queued or in progress.
    pub pending: usize,
}

/// Which LB listing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbView {
    /// Services with their backends (the default `bpf lb list`).
    #[default]
    Services,
    /// Raw `cilium_lb4_services_v2` values.
    Frontends,
    /// `cilium_lb4_backends_v3`.
    Backends,
    /// `cilium_lb4_reverse_nat`.
    Revnat,
    /// `cilium_lb4_maglev`: per service, how many slots each backend holds.
    Maglev,
}

/// One conntrack entry: the `bpf ct list global` line and its main fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CtRow {
    pub map: String,
    pub line: String,
    /// `OUT`, `IN` or `SVC`.
    pub kind: String,
    pub proto: u8,
    /// The original sender and receiver, `addr:port`.
    pub from: String,
    pub to: String,
    pub expires: u32,
    pub flags: u16,
    pub rev_nat: u16,
    pub backend_id: u64,
    pub src_sec_id: u32,
    /// SNATed NodePort flows: the client behind the node's address.
    pub nat: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    /// `cilium-dbg bpf endpoint list -o json` shape: key → list of value strings.
    EndpointList {
        entries: Vec<(String, String)>,
    },
    /// `cilium_ipcache_v2` rows: prefix → `identity=… tunnelendpoint=…`.
    IpcacheList {
        entries: Vec<(String, String)>,
    },
    /// Pod CIDRs with their tunnel endpoint, the way `cilium_tunnel_map` showed them.
    TunnelList {
        entries: Vec<(String, String)>,
    },
    /// Rows of an LB listing; a key may repeat (several values, as Cilium prints them).
    LbList {
        entries: Vec<(String, String)>,
    },
    CtList {
        entries: Vec<CtRow>,
        /// Live entries not in `entries` (a listing carries at most 250 000).
        #[serde(default)]
        left_out: u64,
    },
    /// A service change is in force from table generation `generation`.
    Applied {
        generation: u64,
        services: usize,
    },
    /// A policy change reached every worker: `compile_us` to compile and publish,
    /// `applied_us` until the last worker switched to it (the bound on when new packets see
    /// it).
    PolicyApplied {
        generation: u64,
        policies: usize,
        compile_us: u64,
        applied_us: u64,
    },
    PolicyGet {
        endpoints: Vec<PolicyDump>,
    },
    Identities {
        identities: Vec<IdentityRow>,
    },
    PolicyList {
        policies: Vec<PolicySummary>,
    },
    /// An endpoint is served on every worker from table generation `generation`.
    EndpointAdded {
        endpoint: Box<crate::endpoints::EndpointRow>,
        generation: u64,
    },
    /// An endpoint is no longer served; its conntrack entries were flushed.
    EndpointDeleted {
        endpoint: Box<crate::endpoints::EndpointRow>,
        conntrack_flushed: usize,
    },
    Endpoints {
        endpoints: Vec<crate::endpoints::EndpointRow>,
        /// Changes queued or in progress.
        pending: usize,
    },
    /// A CNI DEL named an attachment no endpoint has (deleted already, or never added).
    EndpointAbsent,
    NodeInfo(Box<NodeInfo>),
    /// A device's attachment after a change ([`Request::DatapathSet`]).
    Device(DeviceStatus),
    /// A listing or status as text ([`Request::Text`]).
    Text {
        text: String,
    },
    Error {
        message: String,
    },
}

/// One endpoint's policy map.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyDump {
    pub endpoint: u16,
    pub map: String,
    /// Default deny in [ingress, egress].
    pub enforced: [bool; 2],
    pub rows: Vec<PolicyRow>,
}

/// One entry, with the columns of `cilium-dbg bpf policy get`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyRow {
    pub policy: String,
    pub direction: String,
    pub labels: Vec<String>,
    pub identity: u32,
    pub port_proto: String,
    pub proxy_port: String,
    pub auth_type: String,
    pub bytes: u64,
    pub packets: u64,
    pub prefix: u8,
    pub cookie: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicySummary {
    pub id: String,
    /// Local endpoints it selects.
    pub selects: Vec<u16>,
    pub ingress_rules: usize,
    pub egress_rules: usize,
    /// Turns default deny on in [ingress, egress].
    pub default_deny: [bool; 2],
}

/// What a policy change cost: `compile_us` to compile and publish, `applied_us` until every
/// worker held it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PolicyChange {
    pub generation: u64,
    pub compile_us: u64,
    pub applied_us: u64,
}

/// The `PolicyApplied` answer of a policy change (`call` already turned errors into `Err`).
fn policy_changed(r: Response) -> Result<PolicyChange, ClientError> {
    match r {
        Response::PolicyApplied {
            generation,
            compile_us,
            applied_us,
            ..
        } => Ok(PolicyChange {
            generation,
            compile_us,
            applied_us,
        }),
        other => Err(ClientError::Protocol(format!(
            "expected policy applied, got {other:?}"
        ))),
    }
}

pub fn policy_apply(path: &Path, yaml: String, file: String) -> Result<PolicyChange, ClientError> {
    policy_changed(call(path, &Request::PolicyApply { yaml, file })?)
}

pub fn policy_delete(path: &Path, id: &str) -> Result<PolicyChange, ClientError> {
    policy_changed(call(path, &Request::PolicyDelete { id: id.into() })?)
}

pub fn policy_get(path: &Path, endpoint: Option<u16>) -> Result<Vec<PolicyDump>, ClientError> {
    match call(path, &Request::PolicyGet { endpoint })? {
        Response::PolicyGet { endpoints } => Ok(endpoints),
        other => Err(ClientError::Protocol(format!("{other:?}"))),
    }
}

/// One security identity and its labels (`cilium-dbg identity list` prints the same).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityRow {
    pub id: u32,
    pub labels: Vec<String>,
}

pub fn identities(path: &Path, id: Option<u32>) -> Result<Vec<IdentityRow>, ClientError> {
    let req = match id {
        Some(id) => Request::IdentityGet { id },
        None => Request::IdentityList,
    };
    match call(path, &req)? {
        Response::Identities { identities } => Ok(identities),
        other => Err(ClientError::Protocol(format!("{other:?}"))),
    }
}

pub fn policy_list(path: &Path) -> Result<Vec<PolicySummary>, ClientError> {
    match call(path, &Request::PolicyList)? {
        Response::PolicyList { policies } => Ok(policies),
        other => Err(ClientError::Protocol(format!("{other:?}"))),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub netns: Option<String>,
    pub pid: u32,
    pub uptime_secs: u64,
    pub xdp_mode_requested: String,
    pub poll: String,
    pub bare: bool,
    pub devices: Vec<DeviceStatus>,
    pub workers: Vec<WorkerStatus>,
    /// The XDP program's counters (all devices, all CPUs).
    pub xdp: Vec<(String, u64)>,
    /// The tc datapath, when it is loaded: its counters and its `cilium_metrics` rows.
    #[serde(default)]
    pub tc: Option<TcStatus>,
    pub table_generation: u64,
    /// Cross-node forwarding, when the node has an underlay.
    #[serde(default)]
    pub overlay: Option<OverlayStatus>,
    #[serde(default)]
    pub policy: PolicyStatus,
    /// The control socket's own counters.
    #[serde(default)]
    pub control_socket: crate::server::ServerStats,
    #[serde(default)]
    pub endpoints: EndpointsStatus,
    /// Where the rest of the cluster comes from (`source:`), and the kvstore's state.
    #[serde(default)]
    pub source: SourceStatus,
}

/// `source:` in force and, with `source: kvstore`, the agent and the views applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceStatus {
    /// `file` or `kvstore`.
    pub mode: String,
    pub kvstore: Option<crate::kvstore::KvStatus>,
    #[serde(default)]
    pub kubernetes: Option<crate::k8s::K8sStatus>,
    /// Views of the cluster applied, and those that failed (retried every second).
    pub views_applied: u64,
    pub views_failed: u64,
    pub last_error: Option<String>,
    /// Other nodes in force.
    pub remote_nodes: usize,
    /// Nodes of the last view left out, each with why.
    pub skipped: Vec<String>,
}

/// Endpoints served, and the run-time changes seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointsStatus {
    /// Endpoints served now, from the config and added at run time.
    pub served: usize,
    pub runtime: usize,
    /// `datapath.max_pods`.
    pub max_pods: u32,
    /// Changes queued or in progress.
    pub pending: usize,
    pub added: u64,
    pub deleted: u64,
    pub failed: u64,
    /// `fp_xsks` entries in use (one per served device and rx queue).
    pub xsk_entries: usize,
    /// Devices with XDP attached.
    pub attached: usize,
}

/// Policy verdict totals (packets) and what is in force.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyStatus {
    pub policies: usize,
    /// Local endpoints with default deny on in ingress / egress.
    pub enforced_ingress: usize,
    pub enforced_egress: usize,
    pub allowed_ingress: u64,
    pub allowed_egress: u64,
    pub denied_ingress: u64,
    pub denied_egress: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverlayStatus {
    /// `tunnel` or `native`.
    pub mode: String,
    pub underlay: String,
    pub node_ip: String,
    pub mtu: u32,
    pub tunnel_port: u16,
    pub ipcache_entries: usize,
    pub nexthops: Vec<NextHopStatus>,
}

/// A tunnel endpoint / gateway and what the kernel neighbour table says about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextHopStatus {
    pub ip: String,
    /// The address the neighbour entry is for (a router, or `ip` itself when on-link).
    pub via: String,
    pub mac: Option<String>,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub ifname: String,
    pub ifindex: u32,
    /// What handles the frames it receives: `xdp` (steered to the workers) or `tc` (the
    /// in-kernel tc datapath).
    #[serde(default = "xdp_name")]
    pub datapath: String,
    /// `native` or `generic` for XDP; `tc` for the tc datapath.
    pub xdp_mode: String,
    /// Why native XDP (or, for `tc` under `auto`, why XDP) was not used.
    pub fallback_reason: Option<String>,
    pub socket_mode: String,
}

fn xdp_name() -> String {
    "xdp".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub queue: u32,
    pub core: Option<usize>,
    pub ports: Vec<PortStatus>,
    pub metrics: Vec<Metric>,
    pub arp_replies: u64,
    pub loops: u64,
    pub idle_loops: u64,
    pub sleeps: u64,
    pub batch_hist: Vec<u64>,
    /// Loops by duration, top to top (sleeps excluded): < 10 µs, 10–100 µs, 100 µs–1 ms, 1–10 ms, ≥ 10 ms.
    #[serde(default)]
    pub loop_hist: Vec<u64>,
    /// The longest loop, ns (a stall: the worker preempted or a slow kick).
    #[serde(default)]
    pub longest_loop_ns: u64,
    pub table_switches: u64,
    #[serde(default)]
    pub encapsulated: u64,
    #[serde(default)]
    pub decapsulated: u64,
    #[serde(default)]
    pub routed: u64,
    #[serde(default)]
    pub icmp_errors: u64,
    /// AF_XDP sockets served, and the UMEM: chunks in all, in the pool, on fill/TX rings
    /// (idle, `umem_free + umem_in_rings` is every chunk but the few the kernel holds
    /// between a fill ring and an RX ring), and taken back from closed sockets.
    #[serde(default)]
    pub sockets: u64,
    #[serde(default)]
    pub umem_frames: u64,
    #[serde(default)]
    pub umem_free: u64,
    #[serde(default)]
    pub umem_in_rings: u64,
    #[serde(default)]
    pub frames_reclaimed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortStatus {
    pub ifname: String,
    /// The device's rx queues this worker serves (its home queue first).
    #[serde(default)]
    pub rx_queues: Vec<u32>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_ring_full: u64,
    pub tx_kicks: u64,
    pub xsk: crate::xsk::XskStats,
}

/// The tc datapath's counters (all devices on it, all CPUs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TcStatus {
    /// passed (to the kernel, untouched), delivered, encapsulated, decapsulated,
    /// arp_replies.
    pub counters: Vec<(String, u64)>,
    /// Drops and forwards per reason and direction, as the workers' `metrics`.
    pub metrics: Vec<Metric>,
}

/// One `cilium_metrics`-style row: reason 0 is "forwarded".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Metric {
    pub reason_code: u8,
    pub reason: String,
    pub direction: String,
    pub packets: u64,
    pub bytes: u64,
}

impl WorkerStatus {
    /// Pipeline drops of this worker (all reasons, all directions).
    pub fn drops(&self) -> u64 {
        self.metrics
            .iter()
            .filter(|m| m.reason_code != 0)
            .map(|m| m.packets)
            .sum()
    }
    pub fn forwarded(&self, direction: &str) -> u64 {
        self.metrics
            .iter()
            .filter(|m| m.reason_code == 0 && m.direction == direction)
            .map(|m| m.packets)
            .sum()
    }
}

impl Status {
    /// Packets dropped with `code` over all workers and directions, and by the tc
    /// datapath.
    pub fn drops_with(&self, code: u8) -> u64 {
        self.workers
            .iter()
            .flat_map(|w| &w.metrics)
            .chain(self.tc.iter().flat_map(|t| &t.metrics))
            .filter(|m| m.reason_code == code)
            .map(|m| m.packets)
            .sum()
    }

    /// The tc datapath's counter `name` (0 when it is not loaded).
    pub fn tc_counter(&self, name: &str) -> u64 {
        self.tc
            .iter()
            .flat_map(|t| &t.counters)
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .sum()
    }

    /// The datapath device `ifname` is on (`xdp`, `tc`), if it is attached.
    pub fn datapath_of(&self, ifname: &str) -> Option<&str> {
        self.devices
            .iter()
            .find(|d| d.ifname == ifname)
            .map(|d| d.datapath.as_str())
    }
    /// Packets forwarded from this node's pods (workers and tc datapath).
    pub fn forwarded(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.forwarded("egress"))
            .sum::<u64>()
            + self.tc_forwarded("egress")
    }
    /// Frames delivered to local pods (from this node's pods or from other nodes).
    pub fn forwarded_ingress(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.forwarded("ingress"))
            .sum::<u64>()
            + self.tc_forwarded("ingress")
    }
    fn tc_forwarded(&self, direction: &str) -> u64 {
        self.tc
            .iter()
            .flat_map(|t| &t.metrics)
            .filter(|m| m.reason_code == 0 && m.direction == direction)
            .map(|m| m.packets)
            .sum()
    }
    pub fn arp_replies(&self) -> u64 {
        self.workers.iter().map(|w| w.arp_replies).sum::<u64>() + self.tc_counter("arp_replies")
    }
    pub fn encapsulated(&self) -> u64 {
        self.workers.iter().map(|w| w.encapsulated).sum::<u64>() + self.tc_counter("encapsulated")
    }
    pub fn decapsulated(&self) -> u64 {
        self.workers.iter().map(|w| w.decapsulated).sum::<u64>() + self.tc_counter("decapsulated")
    }
    pub fn routed(&self) -> u64 {
        self.workers.iter().map(|w| w.routed).sum::<u64>() + self.tc_counter("routed")
    }
    pub fn icmp_errors(&self) -> u64 {
        self.workers.iter().map(|w| w.icmp_errors).sum::<u64>() + self.tc_counter("icmp_errors")
    }
    pub fn xdp_counter(&self, name: &str) -> u64 {
        self.xdp
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
}

/// Fetch the conntrack entries, and how many live ones the listing left out.
pub fn ct_list(path: &Path) -> Result<(Vec<CtRow>, u64), ClientError> {
    match call(path, &Request::CtList)? {
        Response::CtList { entries, left_out } => Ok((entries, left_out)),
        other => Err(ClientError::Protocol(format!(
            "expected a CT listing, got {other:?}"
        ))),
    }
}

/// Add or replace services; returns the generation that carries them.
pub fn service_apply(
    path: &Path,
    services: Vec<control::lb::ServiceConfig>,
) -> Result<u64, ClientError> {
    applied(call(path, &Request::ServiceApply { services })?)
}

/// Delete a service (`namespace/name`).
pub fn service_delete(path: &Path, id: &str) -> Result<u64, ClientError> {
    applied(call(path, &Request::ServiceDelete { id: id.into() })?)
}

/// The generation of an `Applied` answer.
fn applied(r: Response) -> Result<u64, ClientError> {
    match r {
        Response::Applied { generation, .. } => Ok(generation),
        other => Err(ClientError::Protocol(format!(
            "expected applied, got {other:?}"
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach fastpath at {path}: {source} (is `fastpath run` serving this node? are you root?)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fastpath answered with something that is not a response: {0}")]
    Protocol(String),
    #[error("fastpath: {0}")]
    Remote(String),
    #[error(
        "the request is {0} bytes; the control socket takes at most {max} per request",
        max = crate::server::MAX_REQUEST_BYTES
    )]
    TooLarge(usize),
}

/// Send one request and read one response.
pub fn call(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        path: path.into(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.into(),
        source,
    })?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    if line.len() > crate::server::MAX_REQUEST_BYTES {
        return Err(ClientError::TooLarge(line.len()));
    }
    line.push('\n');
    // The whole exchange within 30 s (a large listing on a loaded node): a stuck node never
    // hangs the CLI.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left())).map_err(io)?;
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut resp = Vec::new();
    let mut r = BufReader::new(&s);
    loop {
        if std::time::Instant::now() >= deadline {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no whole answer within 30 s",
            )));
        }
        s.set_read_timeout(Some(left())).map_err(io)?;
        let buf = r.fill_buf().map_err(io)?;
        if buf.is_empty() {
            break;
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                resp.extend_from_slice(&buf[..i]);
                break;
            }
            None => {
                let n = buf.len();
                resp.extend_from_slice(buf);
                r.consume(n);
            }
        }
    }
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let r: Response = serde_json::from_str(&resp)
        .map_err(|e| ClientError::Protocol(format!("{e}: {resp:.200}")))?;
    if let Response::Error { message } = r {
        return Err(ClientError::Remote(message));
    }
    Ok(r)
}

/// Fetch a node's status.
pub fn status(path: &Path) -> Result<Status, ClientError> {
    match call(path, &Request::Status)? {
        Response::Status(s) => Ok(*s),
        other => Err(ClientError::Protocol(format!(
            "expected status, got {other:?}"
        ))),
    }
}

/// Fetch one of the map listings (`EndpointList`, `IpcacheList`, `TunnelList`).
pub fn list(path: &Path, req: Request) -> Result<Vec<(String, String)>, ClientError> {
    match call(path, &req)? {
        Response::EndpointList { entries }
        | Response::IpcacheList { entries }
        | Response::TunnelList { entries }
        | Response::LbList { entries } => Ok(entries),
        other => Err(ClientError::Protocol(format!(
            "expected a map listing, got {other:?}"
        ))),
    }
}

/// Fetch a node's endpoint list.
pub fn endpoint_list(path: &Path) -> Result<Vec<(String, String)>, ClientError> {
    match call(path, &Request::EndpointList)? {
        Response::EndpointList { entries } => Ok(entries),
        other => Err(ClientError::Protocol(format!(
            "expected endpoint list, got {other:?}"
        ))),
    }
}

/// The server's text of the answer to `req` (what the CLI prints).
pub fn text(path: &Path, req: Request, numeric: bool) -> Result<String, ClientError> {
    match call(
        path,
        &Request::Text {
            of: Box::new(req),
            numeric,
        },
    )? {
        Response::Text { text } => Ok(text),
        Response::Error { message } => Err(ClientError::Remote(message)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Add an endpoint (`fastpath endpoint add`).
pub fn endpoint_add(
    path: &Path,
    endpoint: control::config::PodConfig,
) -> Result<(crate::endpoints::EndpointRow, u64), ClientError> {
    match call(path, &Request::EndpointAdd { endpoint })? {
        Response::EndpointAdded {
            endpoint,
            generation,
        } => Ok((*endpoint, generation)),
        Response::Error { message } => Err(ClientError::Remote(message)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Delete an endpoint added at run time (`fastpath endpoint delete`).
pub fn endpoint_delete(
    path: &Path,
    id: &str,
) -> Result<(crate::endpoints::EndpointRow, usize), ClientError> {
    match call(path, &Request::EndpointDelete { id: id.into() })? {
        Response::EndpointDeleted {
            endpoint,
            conntrack_flushed,
        } => Ok((*endpoint, conntrack_flushed)),
        Response::Error { message } => Err(ClientError::Remote(message)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Move a device to the other datapath (`fastpath datapath set`).
pub fn datapath_set(
    path: &Path,
    device: &str,
    datapath: control::config::DatapathChoice,
) -> Result<DeviceStatus, ClientError> {
    match call(
        path,
        &Request::DatapathSet {
            device: device.into(),
            datapath,
        },
    )? {
        Response::Device(d) => Ok(d),
        Response::Error { message } => Err(ClientError::Remote(message)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Every endpoint (`fastpath endpoint list`).
pub fn endpoints(path: &Path) -> Result<Vec<crate::endpoints::EndpointRow>, ClientError> {
    match call(path, &Request::Endpoints)? {
        Response::Endpoints { endpoints, .. } => Ok(endpoints),
        Response::Error { message } => Err(ClientError::Remote(message)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::{endpoint_list_json, render_endpoint_list};

    #[test]
    fn request_wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"endpoint_list"}"#).unwrap(),
            Request::EndpointList
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn endpoint_list_rendering() {
        let e = vec![
            ("10.200.1.11:0".to_string(), "id=1     sec_id=300   flags=0x0000 ifindex=5   mac=0A:58:0A:C8:01:0B nodemac=3E:00:00:00:00:01 parent_ifindex=0".to_string()),
            ("10.200.0.1:0".to_string(), "(localhost)".to_string()),
        ];
        let t = render_endpoint_list(&e);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "IP ADDRESS      LOCAL ENDPOINT INFO");
        assert!(lines[1].starts_with("10.200.1.11:0   id=1 "));
        assert_eq!(lines[2], "10.200.0.1:0    (localhost)");
        let j = endpoint_list_json(&e);
        assert_eq!(j["10.200.0.1:0"][0], "(localhost)");
    }
}
