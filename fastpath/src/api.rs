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
    /// Dump `cilium_policy_v2_<endpoint>` (all local endpoints when `None`).
    PolicyGet {
        endpoint: Option<u16>,
    },
    /// The policies in force and whom they select.
    PolicyList,
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
    PolicyList {
        policies: Vec<PolicySummary>,
    },
    /// An endpoint is served on every worker from table generation `generation`.
    EndpointAdded {
        endpoint: crate::endpoints::EndpointRow,
        generation: u64,
    },
    /// An endpoint is no longer served; its conntrack entries were flushed.
    EndpointDeleted {
        endpoint: crate::endpoints::EndpointRow,
        conntrack_flushed: usize,
    },
    Endpoints {
        endpoints: Vec<crate::endpoints::EndpointRow>,
        /// Changes queued or in progress.
        pending: usize,
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

/// `cilium-dbg bpf policy get` text: a padded table; an entry's further labels continue on
/// the following lines under LABELS. `numeric` prints the IDENTITY column instead.
pub fn render_policy(d: &PolicyDump, numeric: bool) -> String {
    let third = if numeric {
        "IDENTITY"
    } else {
        "LABELS (source:key[=value])"
    };
    let head = [
        "POLICY",
        "DIRECTION",
        third,
        "PORT/PROTO",
        "PROXY PORT",
        "AUTH TYPE",
        "BYTES",
        "PACKETS",
        "PREFIX",
        "COOKIE",
    ];
    let mut lines: Vec<[String; 10]> = vec![head.map(String::from)];
    for r in &d.rows {
        let labels: Vec<String> = if numeric {
            vec![if r.identity == 0 {
                "ANY".into()
            } else {
                r.identity.to_string()
            }]
        } else {
            r.labels.clone()
        };
        let mut it = labels.into_iter();
        lines.push([
            r.policy.clone(),
            r.direction.clone(),
            it.next().unwrap_or_default(),
            r.port_proto.clone(),
            r.proxy_port.clone(),
            r.auth_type.clone(),
            r.bytes.to_string(),
            r.packets.to_string(),
            r.prefix.to_string(),
            r.cookie.to_string(),
        ]);
        for more in it {
            let mut l: [String; 10] = Default::default();
            l[2] = more;
            lines.push(l);
        }
    }
    let mut w = [0usize; 10];
    for l in &lines {
        for (i, c) in l.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let mut line = String::new();
        for (i, c) in l.iter().enumerate() {
            if i == 9 {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
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
    pub xdp_mode: String,
    pub fallback_reason: Option<String>,
    pub socket_mode: String,
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
    /// Packets dropped with `code` over all workers and directions.
    pub fn drops_with(&self, code: u8) -> u64 {
        self.workers
            .iter()
            .flat_map(|w| &w.metrics)
            .filter(|m| m.reason_code == code)
            .map(|m| m.packets)
            .sum()
    }
    pub fn forwarded(&self) -> u64 {
        self.workers.iter().map(|w| w.forwarded("egress")).sum()
    }
    /// Frames delivered to local pods (from this node's pods or from other nodes).
    pub fn forwarded_ingress(&self) -> u64 {
        self.workers.iter().map(|w| w.forwarded("ingress")).sum()
    }
    pub fn arp_replies(&self) -> u64 {
        self.workers.iter().map(|w| w.arp_replies).sum()
    }
    pub fn encapsulated(&self) -> u64 {
        self.workers.iter().map(|w| w.encapsulated).sum()
    }
    pub fn decapsulated(&self) -> u64 {
        self.workers.iter().map(|w| w.decapsulated).sum()
    }
    pub fn routed(&self) -> u64 {
        self.workers.iter().map(|w| w.routed).sum()
    }
    pub fn icmp_errors(&self) -> u64 {
        self.workers.iter().map(|w| w.icmp_errors).sum()
    }
    pub fn xdp_counter(&self, name: &str) -> u64 {
        self.xdp
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }

    /// Human-readable status (`fastpath status`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let ns = self
            .netns
            .as_deref()
            .map(|n| format!(" (netns {n})"))
            .unwrap_or_default();
        s += &format!(
            "Node:      {}{ns}, pid {}, up {}s\n",
            self.node, self.pid, self.uptime_secs
        );
        s += &format!(
            "Workers:   {} (poll {}{}), tables generation {}\n",
            self.workers.len(),
            self.poll,
            if self.bare {
                ", BARE forwarding: pipeline skipped"
            } else {
                ""
            },
            self.table_generation
        );
        s += &format!("XDP:       requested {}\n", self.xdp_mode_requested);
        for d in &self.devices {
            s += &format!(
                "  {:<15} ifindex {:<4} xdp {:<8} af_xdp {}",
                d.ifname, d.ifindex, d.xdp_mode, d.socket_mode
            );
            if let Some(r) = &d.fallback_reason {
                s += &format!("  (native failed: {r})");
            }
            s.push('\n');
        }
        let p = &self.policy;
        s += &format!(
            "Policy:    {} policies, default deny on {} endpoints (ingress) / {} (egress); verdicts: allowed {} in / {} out, denied {} in / {} out\n",
            p.policies,
            p.enforced_ingress,
            p.enforced_egress,
            p.allowed_ingress,
            p.allowed_egress,
            p.denied_ingress,
            p.denied_egress
        );
        let c = &self.control_socket;
        s += &format!(
            "Control:   {} clients now, {} answered; refused {} busy / {} not root; {} too large, {} timed out, {} answers over the pending bound\n",
            c.clients,
            c.answered,
            c.refused_busy,
            c.refused_not_root,
            c.too_large,
            c.timed_out,
            c.answers_too_large
        );
        let e = &self.endpoints;
        s += &format!(
            "Endpoints: {} served ({} added at run time) of at most {}; {} added, {} deleted, {} failed, {} pending; {} devices attached, {} fp_xsks entries\n",
            e.served,
            e.runtime,
            e.max_pods,
            e.added,
            e.deleted,
            e.failed,
            e.pending,
            e.attached,
            e.xsk_entries
        );
        for w in &self.workers {
            s += &format!(
                "  worker {}: {} sockets; UMEM {} chunks, {} free, {} on fill/TX rings, {} reclaimed from closed sockets\n",
                w.queue, w.sockets, w.umem_frames, w.umem_free, w.umem_in_rings, w.frames_reclaimed
            );
        }
        if let Some(o) = &self.overlay {
            s += &format!(
                "Overlay:   {} via {} ({}, mtu {}), tunnel port {}, {} ipcache entries\n",
                o.mode, o.underlay, o.node_ip, o.mtu, o.tunnel_port, o.ipcache_entries
            );
            for n in &o.nexthops {
                s += &format!(
                    "  next hop {:<15} via {:<15} {} ({})\n",
                    n.ip,
                    n.via,
                    n.mac.as_deref().unwrap_or("-"),
                    n.state
                );
            }
        }
        s += "XDP program: ";
        s += &self
            .xdp
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        s += "\n\n";
        s += &format!(
            "{:<6}{:<6}{:<16}{:<8}{:>12}{:>14}{:>12}{:>14}{:>10}{:>12}\n",
            "QUEUE",
            "CORE",
            "DEVICE",
            "RXQS",
            "RX_PKTS",
            "RX_BYTES",
            "TX_PKTS",
            "TX_BYTES",
            "TX_FULL",
            "XSK_RXDROP"
        );
        for w in &self.workers {
            let core = w.core.map_or("-".into(), |c| c.to_string());
            for p in &w.ports {
                let rxqs: Vec<String> = p.rx_queues.iter().map(|q| q.to_string()).collect();
                s += &format!(
                    "{:<6}{:<6}{:<16}{:<8}{:>12}{:>14}{:>12}{:>14}{:>10}{:>12}\n",
                    w.queue,
                    core,
                    p.ifname,
                    rxqs.join(","),
                    p.rx_packets,
                    p.rx_bytes,
                    p.tx_packets,
                    p.tx_bytes,
                    p.tx_ring_full,
                    p.xsk.rx_dropped + p.xsk.rx_ring_full
                );
            }
        }
        s += &format!(
            "\n{:<6}{:>12}{:>12}{:>10}{:>10}{:>10}{:>10}{:>12}{:>8}{:>12}{:>10}  {}\n",
            "QUEUE",
            "FWD_EGRESS",
            "FWD_INGRESS",
            "ENCAP",
            "DECAP",
            "ROUTED",
            "ICMP_ERR",
            "DROPS",
            "ARP",
            "LOOPS",
            "SLEEPS",
            "RX BATCH (1,2-3,4-7,..,64+)"
        );
        for w in &self.workers {
            s += &format!(
                "{:<6}{:>12}{:>12}{:>10}{:>10}{:>10}{:>10}{:>12}{:>8}{:>12}{:>10}  {:?}\n",
                w.queue,
                w.forwarded("egress"),
                w.forwarded("ingress"),
                w.encapsulated,
                w.decapsulated,
                w.routed,
                w.icmp_errors,
                w.drops(),
                w.arp_replies,
                w.loops,
                w.sleeps,
                w.batch_hist
            );
        }
        let drops: Vec<(&WorkerStatus, &Metric)> = self
            .workers
            .iter()
            .flat_map(|w| {
                w.metrics
                    .iter()
                    .filter(|m| m.reason_code != 0)
                    .map(move |m| (w, m))
            })
            .collect();
        if !drops.is_empty() {
            s += &format!(
                "\n{:<6}{:<9}{:<6}{:<45}{:>10}{:>12}\n",
                "QUEUE", "DIR", "CODE", "DROP REASON", "PACKETS", "BYTES"
            );
            for (w, m) in drops {
                s += &format!(
                    "{:<6}{:<9}{:<6}{:<45}{:>10}{:>12}\n",
                    w.queue, m.direction, m.reason_code, m.reason, m.packets, m.bytes
                );
            }
        }
        s
    }
}

/// `cilium-dbg bpf endpoint list` text: a two-column tab-aligned table.
pub fn render_endpoint_list(entries: &[(String, String)]) -> String {
    render_table("IP ADDRESS", "LOCAL ENDPOINT INFO", entries)
}

/// A two-column table with Cilium's headers: `bpf ipcache list` is
/// `IP PREFIX/ADDRESS   IDENTITY`, `bpf tunnel list` is `TUNNEL   VALUE`. A key's further
/// values go on the following rows with an empty first column, as Cilium's tabwriter does.
pub fn render_table(h1: &str, h2: &str, entries: &[(String, String)]) -> String {
    let w = entries
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0)
        .max(h1.len())
        + 3;
    let mut s = format!("{h1:<w$}{h2}\n");
    let mut last: Option<&str> = None;
    for (k, v) in entries {
        let shown = if last == Some(k.as_str()) {
            ""
        } else {
            k.as_str()
        };
        s += &format!("{shown:<w$}{v}\n");
        last = Some(k);
    }
    s
}

/// `-o json` for the listings: Cilium prints `map[string][]string` (a key that repeats
/// collects its values in order).
pub fn endpoint_list_json(entries: &[(String, String)]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in entries {
        match m.entry(k.clone()).or_insert_with(|| serde_json::json!([])) {
            serde_json::Value::Array(a) => a.push(serde_json::json!(v)),
            _ => unreachable!("only arrays are inserted"),
        }
    }
    serde_json::Value::Object(m)
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

/// Add an endpoint (`fastpath endpoint add`).
pub fn endpoint_add(
    path: &Path,
    endpoint: control::config::PodConfig,
) -> Result<(crate::endpoints::EndpointRow, u64), ClientError> {
    match call(path, &Request::EndpointAdd { endpoint })? {
        Response::EndpointAdded {
            endpoint,
            generation,
        } => Ok((endpoint, generation)),
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
        } => Ok((endpoint, conntrack_flushed)),
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

/// `fastpath endpoint list` as text: one row per endpoint, like `cilium-dbg endpoint list`.
pub fn render_endpoints(rows: &[crate::endpoints::EndpointRow]) -> String {
    let mut s = format!(
        "{:<10}{:<10}{:<40}{:<16}{:<18}{:<16}{:<8}{}\n",
        "ENDPOINT", "IDENTITY", "POD", "IPv4", "MAC", "LXC", "SOURCE", "LABELS"
    );
    for r in rows {
        s += &format!(
            "{:<10}{:<10}{:<40}{:<16}{:<18}{:<16}{:<8}{}\n",
            r.id,
            r.identity,
            format!("{}/{}", r.namespace, r.name),
            r.ipv4,
            r.mac,
            r.lxc,
            match r.source {
                crate::endpoints::Source::Config => "config",
                crate::endpoints::Source::Api => "api",
            },
            r.labels.join(",")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
