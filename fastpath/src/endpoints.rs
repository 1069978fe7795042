//! Endpoints added and removed on a running node: the control thread's side of
//! `fastpath endpoint add|delete` (and of the `endpoint_add` / `endpoint_delete` requests a
//! CNI plugin sends).
//!
//! # Rules
//! - One change at a time, in arrival order: a request is queued (at most
//!   [`MAX_QUEUED`]) and answered when its change is complete or undone. Nothing here
//!   waits inside the control loop: every step that waits (for the workers to take or give
//!   back sockets, for a table version to reach them, for the kernel to free an rx queue) is
//!   a phase checked again on the next pass ([`Endpoints::tick`]). What does run inline is
//!   bounded: the device lookup (`ip -j link`, ethtool ioctls) and the socket syscalls of one
//!   add, milliseconds.
//! - Adding: the device is checked (exists, queues, MTU, not served already); the endpoint
//!   ID, identity, port slot and one socket per served rx queue on every worker are
//!   reserved; the sockets are created here (binding is a syscall, and creating a socket
//!   can wait for the kernel) and handed to the workers, which take them at a quiescent
//!   point and fill them from their own UMEM; then the XSKMAP entries, then `cilium_lxc`,
//!   the ipcache `/32` and every policy map in one table switch
//!   ([`control::datapath::Datapath::add_local_endpoint`]), then XDP is attached, then the
//!   state file records it. A failure at any step undoes the ones before it, in reverse.
//! - Removing: XDP is detached and the XSKMAP entries emptied first (the pod's frames go to
//!   the kernel from then on), then the endpoint leaves the tables in one switch; once every
//!   worker runs that version they give the sockets back, this thread closes them (a close
//!   can wait for an RCU grace period: never on a worker) and tells each worker to reclaim
//!   the UMEM chunks the kernel held for them; then its conntrack entries are flushed and
//!   its ID, identity reference and slot are free again.
//! - Workers are never stopped or restarted, and the other endpoints' sockets, rings and
//!   table entries are not touched: their traffic does not notice.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use control::config::{Config, MAX_ENDPOINT_ID, PodConfig, XdpMode};
use control::datapath::Datapath;
use control::tables::{Port, PortId};
use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};
use xdp_redirect::{ROLE_LXC, Steering};

use crate::worker::{Ack, Command, NewSocket, SocketInfo, WorkerControl, queues_of};
use crate::xsk::Socket;

/// Endpoint changes waiting behind the one in progress.
pub const MAX_QUEUED: usize = 256;
/// How long a socket bind may keep failing with EBUSY (the kernel frees an rx queue of a
/// closed socket in deferred work) before the add fails.
pub const BIND_BUSY_FOR: Duration = Duration::from_secs(2);
/// How long one change may take in all before it is answered with an error (the workers
/// take commands within ~10 ms; this only trips if one is wedged).
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Where an endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `pods:` of the node config (changed by editing the config and restarting).
    Config,
    /// Added through the control socket (kept in the state dir across restarts).
    Api,
    /// Added by a CNI ADD (`fastpath-cni`): as `Api`, and named by its attachment.
    Cni,
}

impl Source {
    /// Where a run-time endpoint came from: a CNI ADD if it carries an attachment.
    fn runtime(pod: &PodConfig) -> Source {
        if pod.cni.is_some() {
            Source::Cni
        } else {
            Source::Api
        }
    }
}

/// One endpoint, as `fastpath endpoint list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRow {
    /// Cilium endpoint ID (`cilium_lxc` lxc_id, `cilium_policy_v3_<id>`).
    pub id: u16,
    pub namespace: String,
    pub name: String,
    pub ipv4: String,
    /// The IPv6 address of a dual-stack endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    pub mac: String,
    pub lxc: String,
    pub ifindex: u32,
    /// Security identity.
    pub identity: u32,
    pub labels: Vec<String>,
    pub source: Source,
    /// Port slot (XSKMAP slot).
    pub slot: u16,
    /// Rx queues served (one AF_XDP socket each).
    pub rx_queues: u32,
    /// The CNI attachment that added it (`source: cni`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<control::config::CniAttachment>,
}

/// An endpoint this node serves, with what was reserved for it.
#[derive(Debug, Clone)]
struct Served {
    pod: PodConfig,
    slot: PortId,
    port: Port,
    identity: u32,
    labels: Vec<String>,
    source: Source,
    rx_queues: u32,
}

/// A request waiting for its turn.
#[derive(Debug)]
pub enum Change {
    Add(PodConfig),
    Delete(String),
    /// A CNI ADD: the pod (with its attachment in `cni`) and the address it asks for, if
    /// any (`runtimeConfig.ips`); without one, host-scope IPAM picks it from `pool` (the
    /// node's pod CIDR when `None`) when the change starts — after every change queued
    /// before it, so two adds never get one address.
    CniAdd {
        pod: PodConfig,
        requested: Option<std::net::Ipv4Addr>,
        pool: Option<control::net::Ipv4Cidr>,
    },
    /// A CNI DEL: the endpoint of this attachment, if any (none is a success: DEL is
    /// idempotent).
    CniDelete(control::config::CniAttachment),
}

/// What a finished change answers.
#[derive(Debug)]
pub enum Outcome {
    Added {
        endpoint: EndpointRow,
        generation: u64,
    },
    Deleted {
        endpoint: EndpointRow,
        conntrack_flushed: usize,
    },
    /// A CNI DEL of an attachment no endpoint has (deleted already, or never added).
    Absent,
    Failed(String),
}

#[derive(Debug)]
enum Phase {
    /// Sockets are being created; some binds got EBUSY and are retried until `until`.
    Binding {
        ep: Box<Served>,
        made: Vec<Vec<NewSocket>>,
        until: Instant,
    },
    /// Sockets handed to the workers; `left` acks to go.
    Adopting { ep: Box<Served>, left: usize },
    /// In the tables; answered once every worker runs `generation`.
    Publishing { ep: Box<Served>, generation: u64 },
    /// Out of the tables at `generation`; the workers are asked to give the sockets back
    /// once they all run it.
    Unpublishing {
        ep: Box<Served>,
        generation: u64,
        failed: Option<String>,
    },
    /// The workers are giving the sockets back; `left` acks to go.
    Releasing {
        ep: Box<Served>,
        left: usize,
        failed: Option<String>,
    },
}

#[derive(Debug)]
struct InFlight {
    ticket: u64,
    phase: Phase,
    deadline: Instant,
}

/// The endpoint lifecycle on the control thread.
#[derive(Debug)]
pub struct Endpoints {
    workers: Vec<WorkerControl>,
    acks: Receiver<Ack>,
    /// Per worker: its live sockets (what status reads statistics from; the fds to share
    /// the UMEM with).
    socks: Vec<Vec<SocketInfo>>,
    /// Per worker: the most sockets its UMEM was sized for.
    sock_capacity: Vec<usize>,
    /// Port slots: the endpoint (`namespace/name`) or the underlay on each; `None` free.
    slots: Vec<Option<String>>,
    served: BTreeMap<String, Served>,
    queue: VecDeque<(u64, Change)>,
    current: Option<InFlight>,
    done: Vec<(u64, Outcome)>,
    workers_n: u32,
    ring_size: u32,
    frame_size: u32,
    xdp_mode: XdpMode,
    /// `datapath.attach` / `attach_devices`: XDP or the tc datapath per device.
    attach: control::config::DatapathConfig,
    max_pods: u32,
    netns: Option<String>,
    /// Host addresses of the node (router, host IPs, underlay): never a pod's.
    host_ips: Vec<std::net::Ipv4Addr>,
    /// `node.pod_cidr_v6`: where an endpoint's `ipv6` must be.
    pod_cidr_v6: Option<control::net::Ipv6Cidr>,
    /// `node.pod_cidr`: host-scope IPAM's range.
    pod_cidr: Option<control::net::Ipv4Cidr>,
    /// The address IPAM handed out last: the next search starts after it, so a released
    /// address is not reused at once (as CNI's host-local does).
    ipam_last: Option<std::net::Ipv4Addr>,
    /// [`Shape::pod_mtu`].
    pod_mtu: u32,
    /// [`Shape::run_dir`], and the underlay's device.
    run_dir: std::path::PathBuf,
    underlay: Option<String>,
    /// The guarded prefixes of the config ([`crate::guard::base`]), and the set in force.
    guard_base: std::collections::BTreeSet<crate::guard::Prefix>,
    guards: std::collections::BTreeSet<crate::guard::Prefix>,
    /// Changes finished, for status.
    pub added: u64,
    pub deleted: u64,
    pub failed: u64,
}

/// `namespace/name` of a pod.
pub fn pod_id(p: &PodConfig) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// `namespace/name`, or `name` in namespace `default`.
pub fn normalize_id(id: &str) -> String {
    if id.contains('/') {
        id.to_string()
    } else {
        format!("default/{id}")
    }
}

/// How the node was started, as far as endpoints are concerned.
#[derive(Debug, Clone)]
pub struct Shape {
    pub workers: u32,
    pub ring_size: u32,
    pub frame_size: u32,
    pub xdp_mode: XdpMode,
    /// The datapath settings devices are attached by (`attach`, `attach_devices`).
    pub attach: control::config::DatapathConfig,
    pub max_pods: u32,
    /// Port slots in all: pods (`max_pods`) plus the underlay.
    pub slots: usize,
    /// The MTU a CNI plugin gives a pod's links ([`crate::api::NodeInfo::pod_mtu`]).
    pub pod_mtu: u32,
    /// The run dir: where the port slots' devices are recorded after every change, for the
    /// next run's conntrack (`ports.json`).
    pub run_dir: std::path::PathBuf,
}

impl Endpoints {
    /// Start from what `fastpath run` set up: the workers' control handles and sockets,
    /// the ports (config pods in order, the underlay, then restored runtime endpoints).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &Config,
        shape: &Shape,
        workers: Vec<WorkerControl>,
        acks: Receiver<Ack>,
        socks: Vec<Vec<SocketInfo>>,
        sock_capacity: Vec<usize>,
        ports: &[Port],
        rx_queues: &[u32],
        restored: &[(PodConfig, u32, Vec<String>)],
    ) -> Endpoints {
        let mut slots = vec![None; shape.slots.max(ports.len())];
        let mut served = BTreeMap::new();
        let (ids, _) = cfg.identities();
        // Slots in the daemon's port order: config pods, the underlay, restored pods.
        let config = cfg.pods.iter().zip(&ids).map(|(p, id)| {
            let labels = control::identity::pod_labels(&p.namespace, &p.labels);
            (p, *id, labels, Source::Config)
        });
        let runtime = restored
            .iter()
            .map(|(p, id, labels)| (p, *id, labels.clone(), Source::runtime(p)));
        let mut slot = 0usize;
        for (n, (pod, identity, labels, source)) in config.chain(runtime).enumerate() {
            if n == cfg.pods.len() && cfg.node.underlay.is_some() {
                slots[slot] = Some("(underlay)".into());
                slot += 1;
            }
            let id = pod_id(pod);
            slots[slot] = Some(id.clone());
            served.insert(
                id,
                Served {
                    pod: pod.clone(),
                    slot: slot as PortId,
                    port: ports[slot].clone(),
                    identity,
                    labels,
                    source,
                    rx_queues: rx_queues[slot],
                },
            );
            slot += 1;
        }
        // No restored pod after it: the underlay was not placed in the loop.
        if restored.is_empty() && cfg.node.underlay.is_some() {
            slots[slot] = Some("(underlay)".into());
        }
        let host_ips = std::iter::once(cfg.node.router_ip)
            .chain(cfg.node.host_ips.iter().copied())
            .chain(cfg.node.underlay.as_ref().map(|u| u.address.addr))
            .collect();
        let mut e = Endpoints {
            workers,
            acks,
            socks,
            sock_capacity,
            slots,
            served,
            queue: VecDeque::new(),
            current: None,
            done: Vec::new(),
            workers_n: shape.workers,
            ring_size: shape.ring_size,
            frame_size: shape.frame_size,
            xdp_mode: shape.xdp_mode,
            attach: shape.attach.clone(),
            max_pods: shape.max_pods,
            netns: cfg.node.netns.clone(),
            host_ips,
            pod_cidr_v6: cfg.node.pod_cidr_v6,
            pod_cidr: cfg.node.pod_cidr,
            pod_mtu: shape.pod_mtu,
            run_dir: shape.run_dir.clone(),
            underlay: cfg.node.underlay.as_ref().map(|u| u.device.clone()),
            guard_base: crate::guard::base(cfg),
            guards: Default::default(),
            // After a restart: past the highest address a restored CNI endpoint has.
            ipam_last: restored
                .iter()
                .filter(|(p, _, _)| p.cni.is_some())
                .map(|(p, _, _)| p.ip)
                .max(),
            added: 0,
            deleted: 0,
            failed: 0,
        };
        // What the daemon put in force before XDP (the same prefixes).
        e.guards = e.wanted_guards(None);
        e
    }

    /// The prefixes the kernel must not forward to: the config's, and the addresses of the
    /// served pods (and `adding`) outside the pod CIDRs.
    fn wanted_guards(
        &self,
        adding: Option<&PodConfig>,
    ) -> std::collections::BTreeSet<crate::guard::Prefix> {
        crate::guard::with_pods(
            &self.guard_base,
            self.pod_cidr,
            self.pod_cidr_v6,
            self.served.values().map(|s| &s.pod).chain(adding),
        )
    }

    /// Record every port slot's device (`<run dir>/ports.json`) after a change.
    fn record_ports(&self) {
        let names: Vec<(u16, &str)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_deref()?;
                let dev = if s == "(underlay)" {
                    self.underlay.as_deref()?
                } else {
                    self.served.get(s)?.pod.lxc.as_str()
                };
                Some((i as u16, dev))
            })
            .collect();
        if let Err(e) = crate::daemon::write_port_names(&self.run_dir, names.into_iter()) {
            eprintln!(
                "fastpath: recording the port slots in {}: {e}",
                self.run_dir.display()
            );
        }
    }

    /// Bring the guard rules to what the served pods (and `adding`) need.
    fn sync_guards(&mut self, adding: Option<&PodConfig>) -> anyhow::Result<()> {
        let want = self.wanted_guards(adding);
        if want != self.guards {
            crate::guard::sync(&want).context("lxc")?;
            self.guards = want;
        }
        Ok(())
    }

    /// Worker `w`'s live sockets.
    pub fn sockets(&self, w: usize) -> &[SocketInfo] {
        self.socks.get(w).map_or(&[], |s| s.as_slice())
    }

    /// What a CNI plugin asks of the node before an ADD, and for STATUS.
    pub fn node_info(&self, cfg: &Config) -> crate::api::NodeInfo {
        let ipam_free = self.pod_cidr.map_or(0, |c| {
            let size = 1u64 << (32 - c.len);
            let reserved = if c.len >= 31 { 0 } else { 2 };
            // The addresses of the CIDR that `allocate` skips for the node and its pods
            // (a remote pod's `/32` inside this node's pod CIDR, a misconfiguration, is
            // not counted here; `allocate` still skips it).
            let taken: std::collections::HashSet<std::net::Ipv4Addr> = self
                .host_ips
                .iter()
                .copied()
                .chain(self.served.values().map(|s| s.pod.ip))
                .filter(|ip| c.contains(*ip))
                .collect();
            size.saturating_sub(reserved + taken.len() as u64)
        });
        crate::api::NodeInfo {
            node: cfg.node.name.clone(),
            netns: self.netns.clone(),
            router_ip: cfg.node.router_ip,
            pod_cidr: self.pod_cidr,
            pod_mtu: self.pod_mtu,
            ipam_free,
            queues: self.workers_n,
            pods: self.served.len(),
            max_pods: self.max_pods,
            pending: self.pending(),
        }
    }

    /// Changes queued or in progress.
    pub fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.current.is_some())
    }

    /// Every endpoint, by endpoint ID.
    pub fn list(&self) -> Vec<EndpointRow> {
        let mut v: Vec<EndpointRow> = self.served.values().map(row).collect();
        v.sort_by_key(|r| r.id);
        v
    }

    /// The runtime endpoints, for the state file: the pod with its endpoint ID, and its
    /// security identity.
    pub fn runtime(&self) -> Vec<(PodConfig, u32)> {
        self.served
            .values()
            .filter(|s| s.source != Source::Config)
            .map(|s| (s.pod.clone(), s.identity))
            .collect()
    }

    /// Queue a change under `ticket`; false if the queue is full.
    pub fn submit(&mut self, ticket: u64, c: Change) -> bool {
        if self.queue.len() >= MAX_QUEUED {
            return false;
        }
        self.queue.push_back((ticket, c));
        true
    }

    /// Changes finished since the last call: (ticket, outcome).
    pub fn finished(&mut self) -> Vec<(u64, Outcome)> {
        std::mem::take(&mut self.done)
    }

    /// Advance: take acks, move the change in progress on, start the next one. `persist`
    /// saves the runtime endpoints (after an add or delete took effect); an error from it
    /// undoes an add.
    pub fn tick(
        &mut self,
        dp: &mut Datapath<Steering>,
        persist: &mut dyn FnMut(Vec<(PodConfig, u32)>) -> anyhow::Result<()>,
    ) {
        let mut acks = Vec::new();
        while let Ok(a) = self.acks.try_recv() {
            acks.push(a);
        }
        for a in acks {
            self.on_ack(a, dp);
        }
        // A phase may finish and the next change start in one pass.
        for _ in 0..4 {
            if self.current.is_none() {
                let Some((ticket, change)) = self.queue.pop_front() else {
                    break;
                };
                self.start(ticket, change, dp);
                continue;
            }
            if !self.step(dp, persist) {
                break;
            }
        }
    }

    fn finish(&mut self, ticket: u64, o: Outcome) {
        if matches!(o, Outcome::Added { .. } | Outcome::Deleted { .. }) {
            self.record_ports();
        }
        match &o {
            Outcome::Added { .. } => self.added += 1,
            Outcome::Deleted { .. } => self.deleted += 1,
            Outcome::Absent => {}
            Outcome::Failed(_) => self.failed += 1,
        }
        self.done.push((ticket, o));
    }

    fn start(&mut self, ticket: u64, change: Change, dp: &mut Datapath<Steering>) {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        let change = match change {
            Change::CniAdd {
                mut pod,
                requested,
                pool,
            } => match self.allocate(requested, pool, dp) {
                Ok(ip) => {
                    pod.ip = ip;
                    if requested.is_none() {
                        self.ipam_last = Some(ip);
                    }
                    Change::Add(pod)
                }
                Err(e) => return self.finish(ticket, Outcome::Failed(format!("{e:#}"))),
            },
            Change::CniDelete(att) => {
                match self
                    .served
                    .values()
                    .find(|s| s.pod.cni.as_ref() == Some(&att))
                {
                    Some(s) => Change::Delete(pod_id(&s.pod)),
                    None => return self.finish(ticket, Outcome::Absent),
                }
            }
            c => c,
        };
        match change {
            Change::CniAdd { .. } | Change::CniDelete(_) => unreachable!("resolved above"),
            Change::Add(pod) => match self.check_add(pod, dp) {
                Ok(ep) => {
                    let mut made = Vec::new();
                    made.resize_with(self.workers.len(), Vec::new);
                    self.current = Some(InFlight {
                        ticket,
                        phase: Phase::Binding {
                            ep: Box::new(ep),
                            made,
                            until: Instant::now() + BIND_BUSY_FOR,
                        },
                        deadline,
                    });
                }
                Err(e) => self.finish(ticket, Outcome::Failed(format!("{e:#}"))),
            },
            Change::Delete(id) => {
                let id = normalize_id(&id);
                let Some(ep) = self.served.get(&id).cloned() else {
                    let msg = format!("endpoint {id} not found (fastpath endpoint list)");
                    self.finish(ticket, Outcome::Failed(msg));
                    return;
                };
                if ep.source == Source::Config {
                    let msg = format!(
                        "endpoint {id} is defined in the node config (pods:); remove it there and restart, only endpoints added at run time can be deleted"
                    );
                    self.finish(ticket, Outcome::Failed(msg));
                    return;
                }
                match self.unpublish(&ep, dp) {
                    Ok(generation) => {
                        self.current = Some(InFlight {
                            ticket,
                            phase: Phase::Unpublishing {
                                ep: Box::new(ep),
                                generation,
                                failed: None,
                            },
                            deadline,
                        });
                    }
                    Err(e) => self.finish(ticket, Outcome::Failed(format!("{e:#}"))),
                }
            }
        }
    }

    /// Host-scope IPAM: `requested` if it is inside the pod CIDR and free, else the first
    /// free address of `pool` (or the node's pod CIDR) after the one handed out last,
    /// wrapping around. Never the network or broadcast address of the pod CIDR, the gateway
    /// (`router_ip`) or another node address, an endpoint's address (served, config or run
    /// time) or one the ipcache has as a `/32` (a remote pod). Allocation is by the
    /// endpoints themselves: an address is in use exactly while an endpoint has it, and
    /// the endpoints are in the state dir — so no restart can hand one out twice.
    fn allocate(
        &self,
        requested: Option<std::net::Ipv4Addr>,
        pool: Option<control::net::Ipv4Cidr>,
        dp: &Datapath<Steering>,
    ) -> anyhow::Result<std::net::Ipv4Addr> {
        let Some(cidr) = self.pod_cidr else {
            bail!(
                "ipam: the node has no pod CIDR (node.pod_cidr in its config): addresses cannot be allocated"
            );
        };
        let range = match pool {
            None => cidr,
            Some(p) if p.len < cidr.len || !cidr.contains(p.addr) => {
                bail!("ipam.pool: {p} is not inside the node's pod CIDR {cidr}")
            }
            Some(p) => p.network(),
        };
        let base = u32::from(range.network().addr);
        let size = 1u64 << (32 - range.len);
        let net = u32::from(cidr.network().addr);
        let bcast = net | u32::MAX.checked_shr(cidr.len.into()).unwrap_or(0);
        let t = dp.tables();
        let free = |a: u32| {
            let ip = std::net::Ipv4Addr::from(a);
            (cidr.len >= 31 || (a != net && a != bcast))
                && !self.host_ips.contains(&ip)
                && !self.served.values().any(|s| s.pod.ip == ip)
                && t.endpoint_v4(ip.octets()).is_none()
                && t.ipcache.get(control::net::Ipv4Cidr::host(ip)).is_none()
        };
        let start = match self.ipam_last {
            Some(l) if range.contains(l) => (u32::from(l) - base) as u64 + 1,
            _ => 0,
        };
        if let Some(ip) = requested {
            if !range.contains(ip) {
                bail!("ips: {ip} is outside {range}, the range this network allocates from");
            }
            if !free(u32::from(ip)) {
                bail!(
                    "ips: {ip} is taken (an endpoint, a node address, or the network or broadcast address of {cidr})"
                );
            }
            return Ok(ip);
        }
        let mut in_use = 0u64;
        for i in 0..size {
            let a = base.wrapping_add(((start + i) % size) as u32);
            if free(a) {
                return Ok(std::net::Ipv4Addr::from(a));
            }
            in_use += 1;
        }
        bail!(
            "ipam: no free address in {range}: all {in_use} are taken (endpoints, the gateway and node addresses, the pod CIDR's network and broadcast addresses)"
        )
    }

    /// A CNI attachment is one endpoint at most.
    fn check_attachment_free(&self, pod: &PodConfig) -> anyhow::Result<()> {
        if let Some(c) = &pod.cni
            && let Some(s) = self.served.values().find(|s| s.pod.cni.as_ref() == Some(c))
        {
            bail!(
                "cni: container {} interface {} on network {} is endpoint {} already",
                c.container_id,
                c.ifname,
                c.network,
                pod_id(&s.pod)
            );
        }
        Ok(())
    }

    /// Everything about an add that can be checked before anything is made.
    fn check_add(
        &mut self,
        mut pod: PodConfig,
        dp: &mut Datapath<Steering>,
    ) -> anyhow::Result<Served> {
        let id = pod_id(&pod);
        check_pod_fields(&pod)?;
        self.check_attachment_free(&pod)?;
        if self.served.contains_key(&id) {
            bail!("endpoint {id} exists already (fastpath endpoint delete {id} first)");
        }
        let pods = self.served.len() as u32;
        if pods >= self.max_pods {
            bail!(
                "datapath.max_pods: the node serves {pods} pods, its most (set at start; raise datapath.max_pods and restart)"
            );
        }
        if self.host_ips.contains(&pod.ip) {
            bail!("ip: {} is an address of the node itself", pod.ip);
        }
        let t = dp.tables();
        if t.endpoint_v4(pod.ip.octets()).is_some()
            || self.served.values().any(|s| s.pod.ip == pod.ip)
        {
            bail!("ip: {} is already an endpoint of this node", pod.ip);
        }
        if let Some(r) = t.ipcache.get(control::net::Ipv4Cidr::host(pod.ip)) {
            bail!(
                "ip: {} is in cilium_ipcache_v2 already (identity {}, {}): an address of another node or pod",
                pod.ip,
                r.sec_identity,
                r.tunnel_endpoint_v4()
            );
        }
        if let Some(v6) = pod.ipv6 {
            match self.pod_cidr_v6 {
                None => bail!(
                    "ipv6: {v6}: the node has no pod_cidr_v6 (node.pod_cidr_v6 in its config)"
                ),
                Some(c) if !c.contains(v6) => bail!("ipv6: {v6} is outside node.pod_cidr_v6 {c}"),
                Some(c) if v6 == c.addr => bail!("ipv6: {v6} is the network address of {c}"),
                Some(_) => {}
            }
            if t.endpoint::<control::net::V6>(v6.octets()).is_some()
                || self.served.values().any(|s| s.pod.ipv6 == Some(v6))
            {
                bail!("ipv6: {v6} is already an endpoint of this node");
            }
            if let Some(r) = t.ipcache6.get(control::net::Ipv6Cidr::host(v6)) {
                bail!(
                    "ipv6: {v6} is in cilium_ipcache_v2 already (identity {}): an address of another node or pod",
                    r.sec_identity
                );
            }
        }
        let in_ns = || {
            format!(
                "lxc: in netns {}",
                self.netns.as_deref().unwrap_or("(current)")
            )
        };
        let li = crate::daemon::link_info(&pod.lxc).with_context(in_ns)?;
        if let Some(s) = self.served.values().find(|s| s.port.ifindex == li.ifindex) {
            bail!(
                "lxc: `{}` already serves endpoint {}",
                pod.lxc,
                pod_id(&s.pod)
            );
        }
        if dp
            .kernel_ref()
            .devices()
            .iter()
            .any(|d| d.ifindex == li.ifindex)
        {
            bail!("lxc: `{}` is a device fastpath already serves", pod.lxc);
        }
        let q = crate::daemon::check_queues("lxc", &pod.lxc, &li, self.workers_n)?;
        crate::daemon::check_mtu("lxc", &pod.lxc, li.mtu)?;
        let max = crate::daemon::frame_mtu(self.frame_size);
        if li.mtu > max {
            bail!(
                "lxc: device `{}` has MTU {}; this node's UMEM frames ({} bytes, sized at start for the largest MTU then) hold at most MTU {max}: lower it (ip link set dev {} mtu {max})",
                pod.lxc,
                li.mtu,
                self.frame_size,
                pod.lxc
            );
        }
        for w in 0..self.workers_n {
            let need = queues_of(w, self.workers_n, q.rx).count();
            let have = self.socks[w as usize].len();
            let cap = self.sock_capacity[w as usize];
            if have + need > cap {
                bail!(
                    "lxc: `{}` has {} rx queues in use, {need} more sockets for worker {w}, which has {have} of the {cap} its UMEM was sized for at start (datapath.max_pods, one rx queue per worker per pod): lower its queues (ethtool -L {} rx {})",
                    pod.lxc,
                    q.rx,
                    pod.lxc,
                    self.workers_n
                );
            }
        }
        let ep_id = match pod.id {
            Some(i) if (1..=MAX_ENDPOINT_ID).contains(&i) => {
                if self.served.values().any(|s| s.port.endpoint_id == i) {
                    bail!("id: endpoint ID {i} is taken");
                }
                i
            }
            Some(i) => bail!("id: {i} must be between 1 and {MAX_ENDPOINT_ID}"),
            None => (1..=MAX_ENDPOINT_ID)
                .find(|i| !self.served.values().any(|s| s.port.endpoint_id == *i))
                .context("no endpoint ID left: all of 1-4095 are taken")?,
        };
        pod.id = Some(ep_id);
        // The cluster's labels for this pod (its Pod object) win over the request's.
        if let Some(l) = dp.cluster_pod_labels(&pod.namespace, &pod.name) {
            pod.labels = l;
        }
        let labels = control::identity::pod_labels(&pod.namespace, &pod.labels);
        let identity = dp
            .allocate_identity(&labels)
            .map_err(|e| anyhow::anyhow!("labels: {e}"))?;
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .context("no port slot left (datapath.max_pods)")? as PortId;
        let port = Port::lxc(&pod.lxc, li.ifindex, li.mac, pod.ip, ep_id, li.mtu);
        let source = Source::runtime(&pod);
        Ok(Served {
            pod,
            slot,
            port,
            identity,
            labels,
            source,
            rx_queues: q.rx,
        })
    }

    /// One pass of the change in progress. True if it moved (so the next may start).
    fn step(
        &mut self,
        dp: &mut Datapath<Steering>,
        persist: &mut dyn FnMut(Vec<(PodConfig, u32)>) -> anyhow::Result<()>,
    ) -> bool {
        let Some(cur) = self.current.take() else {
            return false;
        };
        let InFlight {
            ticket,
            phase,
            deadline,
        } = cur;
        let late = Instant::now() > deadline;
        match phase {
            Phase::Binding {
                ep,
                mut made,
                until,
            } => match self.bind(&ep, &mut made) {
                Ok(true) => {
                    let mut left = 0;
                    for (w, socks) in made.into_iter().enumerate() {
                        for s in &socks {
                            self.socks[w].push(SocketInfo {
                                port: ep.slot,
                                queue: s.queue,
                                fd: s.socket.fd(),
                                home: s.home,
                                id: s.id,
                            });
                        }
                        if self.workers[w]
                            .commands
                            .send(Command::Adopt {
                                port: ep.slot,
                                sockets: socks,
                            })
                            .is_ok()
                        {
                            left += 1;
                        }
                    }
                    self.slots[ep.slot as usize] = Some(pod_id(&ep.pod));
                    self.current = Some(InFlight {
                        ticket,
                        phase: Phase::Adopting { ep, left },
                        deadline,
                    });
                    true
                }
                Ok(false) if Instant::now() < until && !late => {
                    self.current = Some(InFlight {
                        ticket,
                        phase: Phase::Binding { ep, made, until },
                        deadline,
                    });
                    false
                }
                Ok(false) => {
                    drop(made);
                    let msg = format!(
                        "lxc: binding an AF_XDP socket to `{}` stayed busy for {} s (another AF_XDP program uses its queues, or the kernel has not freed them yet): try again",
                        ep.pod.lxc,
                        BIND_BUSY_FOR.as_secs()
                    );
                    self.finish(ticket, Outcome::Failed(msg));
                    true
                }
                Err(e) => {
                    drop(made);
                    self.finish(ticket, Outcome::Failed(format!("{e:#}")));
                    true
                }
            },
            Phase::Adopting { ep, left: 0 } => {
                match self.publish(&ep, dp).and_then(|g| {
                    self.served.insert(pod_id(&ep.pod), (*ep).clone());
                    match persist(self.runtime()) {
                        Ok(()) => Ok(g),
                        Err(e) => {
                            self.served.remove(&pod_id(&ep.pod));
                            Err(e.context("recording it in the state dir"))
                        }
                    }
                }) {
                    Ok(generation) => {
                        self.current = Some(InFlight {
                            ticket,
                            phase: Phase::Publishing { ep, generation },
                            deadline,
                        });
                    }
                    Err(e) => {
                        // Undo: out of the tables and kernel (what publish did), then the
                        // sockets back from the workers.
                        let why = format!("{e:#}");
                        match self.unpublish(&ep, dp) {
                            Ok(g) => {
                                self.current = Some(InFlight {
                                    ticket,
                                    phase: Phase::Unpublishing {
                                        ep,
                                        generation: g,
                                        failed: Some(why),
                                    },
                                    deadline,
                                });
                            }
                            Err(undo) => {
                                // Cannot take it out of the tables: it stays served (and
                                // listed), so a delete can finish the job later.
                                self.served.insert(pod_id(&ep.pod), (*ep).clone());
                                self.finish(
                                    ticket,
                                    Outcome::Failed(format!(
                                        "{why}; undoing it failed too ({undo:#}): endpoint {} stays served, delete it",
                                        pod_id(&ep.pod)
                                    )),
                                );
                            }
                        }
                    }
                }
                true
            }
            Phase::Publishing { ep, generation } => {
                // Served from here whatever happens (in the tables, the kernel maps and the
                // state file); the answer waits for the workers, up to the change's time.
                if dp.writer().is_applied(generation) || late {
                    self.finish(
                        ticket,
                        Outcome::Added {
                            endpoint: row(&ep),
                            generation,
                        },
                    );
                    true
                } else {
                    self.current = Some(InFlight {
                        ticket,
                        phase: Phase::Publishing { ep, generation },
                        deadline,
                    });
                    false
                }
            }
            Phase::Unpublishing {
                ep,
                generation,
                failed,
            } => {
                if dp.writer().is_applied(generation) || late {
                    let mut left = 0;
                    for w in &self.workers {
                        if w.commands.send(Command::Release { port: ep.slot }).is_ok() {
                            left += 1;
                        }
                    }
                    self.current = Some(InFlight {
                        ticket,
                        phase: Phase::Releasing { ep, left, failed },
                        deadline,
                    });
                    true
                } else {
                    self.current = Some(InFlight {
                        ticket,
                        phase: Phase::Unpublishing {
                            ep,
                            generation,
                            failed,
                        },
                        deadline,
                    });
                    false
                }
            }
            Phase::Releasing {
                ep,
                left: 0,
                failed,
            } => {
                let flushed = dp.flush_conntrack(ep.pod.ip);
                self.slots[ep.slot as usize] = None;
                match failed {
                    Some(why) => self.finish(ticket, Outcome::Failed(why)),
                    None => {
                        self.served.remove(&pod_id(&ep.pod));
                        if let Err(e) = self.sync_guards(None) {
                            eprintln!(
                                "fastpath: guard rules after deleting {}: {e:#}",
                                pod_id(&ep.pod)
                            );
                        }
                        let out = match persist(self.runtime()) {
                            Ok(()) => Outcome::Deleted {
                                endpoint: row(&ep),
                                conntrack_flushed: flushed,
                            },
                            Err(e) => Outcome::Failed(format!(
                                "endpoint {} is deleted, but recording that in the state dir failed (a restart would bring it back): {e:#}",
                                pod_id(&ep.pod)
                            )),
                        };
                        self.finish(ticket, out);
                    }
                }
                true
            }
            Phase::Adopting { ep, left } if late => {
                // A worker did not take its sockets in time (a wedged worker: the node stops
                // if one dies). Undo: every worker gives back what it took; a late Adopted
                // is ignored, a late Released is closed and reclaimed (`on_ack`).
                let mut n = 0;
                for w in &self.workers {
                    if w.commands.send(Command::Release { port: ep.slot }).is_ok() {
                        n += 1;
                    }
                }
                let _ = left;
                self.current = Some(InFlight {
                    ticket,
                    phase: Phase::Releasing {
                        ep,
                        left: n,
                        failed: Some(format!(
                            "a worker did not take the new sockets within {} s; the add is undone",
                            CHANGE_TIMEOUT.as_secs()
                        )),
                    },
                    deadline: Instant::now() + CHANGE_TIMEOUT,
                });
                true
            }
            Phase::Releasing { ep, left, failed } if late => {
                // Give up waiting: the slot stays reserved (its sockets are still with a
                // worker; a late Released closes them), the queue moves on.
                let _ = left;
                self.served.remove(&pod_id(&ep.pod));
                self.finish(
                    ticket,
                    Outcome::Failed(format!(
                        "{}a worker did not give back the sockets of {} within {} s: its port slot stays reserved until it does",
                        failed.map(|f| format!("{f}; ")).unwrap_or_default(),
                        pod_id(&ep.pod),
                        CHANGE_TIMEOUT.as_secs()
                    )),
                );
                true
            }
            phase => {
                self.current = Some(InFlight {
                    ticket,
                    phase,
                    deadline,
                });
                false
            }
        }
    }

    fn on_ack(&mut self, a: Ack, _dp: &mut Datapath<Steering>) {
        match a {
            Ack::Adopted { port, .. } => {
                if let Some(InFlight {
                    phase: Phase::Adopting { ep, left },
                    ..
                }) = &mut self.current
                    && ep.slot == port
                {
                    *left = left.saturating_sub(1);
                }
            }
            Ack::Released {
                worker,
                port,
                sockets,
            } => {
                // Close them here (never on a worker), then let the worker take back what
                // the kernel held for them.
                let w = worker as usize;
                let fds: Vec<i32> = sockets.iter().map(Socket::fd).collect();
                drop(sockets);
                let mut ids = Vec::new();
                if let Some(list) = self.socks.get_mut(w) {
                    list.retain(|s| {
                        if s.port == port && fds.contains(&s.fd) {
                            ids.push(s.id);
                            false
                        } else {
                            true
                        }
                    });
                }
                if let Some(wc) = self.workers.get(w) {
                    let _ = wc.commands.send(Command::Reclaim { ids });
                }
                // A late give-back (its change timed out): once no worker holds a socket on
                // the slot and no endpoint is on it, the slot is free again.
                let busy = matches!(&self.current, Some(c) if match &c.phase {
                    Phase::Binding { ep, .. }
                    | Phase::Adopting { ep, .. }
                    | Phase::Publishing { ep, .. }
                    | Phase::Unpublishing { ep, .. }
                    | Phase::Releasing { ep, .. } => ep.slot == port,
                });
                if !busy
                    && !self.served.values().any(|e| e.slot == port)
                    && !self.socks.iter().flatten().any(|s| s.port == port)
                    && let Some(sl) = self.slots.get_mut(port as usize)
                {
                    *sl = None;
                }
                if let Some(InFlight {
                    phase: Phase::Releasing { ep, left, .. },
                    ..
                }) = &mut self.current
                    && ep.slot == port
                {
                    *left = left.saturating_sub(1);
                }
            }
        }
    }

    /// Create the sockets still missing. Ok(true) when all exist, Ok(false) when some bind
    /// was busy (retried on the next pass).
    fn bind(&mut self, ep: &Served, made: &mut [Vec<NewSocket>]) -> anyhow::Result<bool> {
        let n = self.workers_n;
        for w in 0..n as usize {
            let want: Vec<u32> = queues_of(w as u32, n, ep.rx_queues).collect();
            while made[w].len() < want.len() {
                let q = want[made[w].len()];
                let home = q == w as u32;
                // Share the UMEM with a bound socket of this worker: the first that the kernel
                // accepts (a socket whose device went away is unbound: EBADF), else register
                // it anew (a worker without sockets).
                let mut candidates: Vec<Option<i32>> = self.socks[w]
                    .iter()
                    .map(|s| Some(s.fd))
                    .chain(made[w].iter().map(|s| Some(s.socket.fd())))
                    .collect();
                if candidates.is_empty() {
                    candidates.push(None);
                }
                let mut res = Err(std::io::Error::from_raw_os_error(libc::EBADF));
                for share in candidates {
                    res = Socket::new(
                        &self.workers[w].umem,
                        ep.port.ifindex,
                        q,
                        self.ring_size,
                        share,
                        home,
                    );
                    if !matches!(&res, Err(e) if crate::xsk::errno_is(e, libc::EBADF, "Bad file descriptor"))
                    {
                        break;
                    }
                }
                match res {
                    Ok(socket) => {
                        let id = self.free_id(w, &made[w]);
                        made[w].push(NewSocket {
                            socket,
                            id,
                            queue: q,
                            home,
                        });
                    }
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            || e.to_string().contains("busy") =>
                    {
                        return Ok(false);
                    }
                    Err(e) => {
                        return Err(anyhow::anyhow!(
                            "lxc: AF_XDP socket on `{}` queue {q} for worker {w}: {e}",
                            ep.pod.lxc
                        ));
                    }
                }
            }
        }
        Ok(true)
    }

    /// The lowest socket id worker `w` does not use (ids of closed sockets are free again:
    /// the worker reclaims their chunks before it takes any later command).
    fn free_id(&self, w: usize, made: &[NewSocket]) -> u16 {
        (0..u16::MAX)
            .find(|i| !self.socks[w].iter().any(|s| s.id == *i) && !made.iter().any(|s| s.id == *i))
            .unwrap_or(u16::MAX - 1)
    }

    /// XSKMAP entries, tables, XDP: the endpoint goes live. On failure whatever of it was
    /// done is undone here (the sockets stay with the workers: the caller releases them).
    fn publish(&mut self, ep: &Served, dp: &mut Datapath<Steering>) -> anyhow::Result<u64> {
        let mine: Vec<SocketInfo> = self
            .socks
            .iter()
            .flatten()
            .filter(|s| s.port == ep.slot)
            .copied()
            .collect();
        let mut registered = Vec::new();
        for s in &mine {
            if let Err(e) =
                dp.kernel()
                    .register_xsk(ep.slot as u32, s.queue, &crate::daemon::RawFdRef(s.fd))
            {
                for q in registered {
                    let _ = dp.kernel().unregister_xsk(ep.slot as u32, q);
                }
                return Err(anyhow::anyhow!(
                    "registering the socket of {} queue {} in fp_xsks: {e}",
                    ep.pod.lxc,
                    s.queue
                ));
            }
            registered.push(s.queue);
        }
        let undo_xsks = |dp: &mut Datapath<Steering>| {
            for q in &registered {
                let _ = dp.kernel().unregister_xsk(ep.slot as u32, *q);
            }
        };
        let g = match dp.add_local_endpoint(
            ep.slot,
            ep.port.clone(),
            ep.pod.mac,
            ep.pod.ipv6,
            ep.identity,
            ep.labels.clone(),
        ) {
            Ok(g) => g,
            Err(e) => {
                undo_xsks(dp);
                return Err(anyhow::anyhow!("{e}"));
            }
        };
        if let Err(e) = self.sync_guards(Some(&ep.pod)) {
            let _ = dp.remove_local_endpoint(ep.pod.ip);
            undo_xsks(dp);
            return Err(e);
        }
        if let Err(e) = dp.kernel().attach(
            xdp_redirect::PortSpec {
                ifname: &ep.pod.lxc,
                ifindex: ep.port.ifindex,
                slot: ep.slot as u32,
                role: ROLE_LXC,
                mac: ep.port.mac.0,
            },
            self.xdp_mode,
            self.attach.attach_for(&ep.pod.lxc),
        ) {
            let _ = dp.remove_local_endpoint(ep.pod.ip);
            undo_xsks(dp);
            return Err(anyhow::anyhow!(
                "lxc: attaching the datapath to `{}`: {}",
                ep.pod.lxc,
                xdp_redirect::error_chain(&e)
            ));
        }
        Ok(g)
    }

    /// XDP off, XSKMAP entries out, out of the tables: returns the generation after which
    /// no worker uses the endpoint. Steps that find their part already gone (the device was
    /// deleted with the pod) go on.
    fn unpublish(&mut self, ep: &Served, dp: &mut Datapath<Steering>) -> anyhow::Result<u64> {
        // The table switch first: it is the one step that can fail (a kernel map write, a
        // policy compile), and when it does nothing has changed. Only the entry on this
        // endpoint's own slot is removed.
        let ours = dp
            .tables()
            .endpoint_v4(ep.pod.ip.octets())
            .is_some_and(|e| e.port == Some(ep.slot));
        let g = if ours {
            dp.remove_local_endpoint(ep.pod.ip)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .0
        } else {
            // Not in the tables (an add undone before it got there): nothing to switch.
            dp.tables().generation
        };
        // Then steering: frames the pod sends from here on go to the kernel. Errors are
        // expected when the device went away with the pod (the kernel dropped its link).
        let _ = dp.kernel().detach(ep.port.ifindex);
        let queues: Vec<u32> = self
            .socks
            .iter()
            .flatten()
            .filter(|s| s.port == ep.slot)
            .map(|s| s.queue)
            .collect();
        for q in queues {
            let _ = dp.kernel().unregister_xsk(ep.slot as u32, q);
        }
        Ok(g)
    }
}

fn row(s: &Served) -> EndpointRow {
    EndpointRow {
        id: s.port.endpoint_id,
        namespace: s.pod.namespace.clone(),
        name: s.pod.name.clone(),
        ipv4: s.pod.ip.to_string(),
        ipv6: s.pod.ipv6.map(|a| a.to_string()),
        mac: s.pod.mac.to_string(),
        lxc: s.pod.lxc.clone(),
        ifindex: s.port.ifindex,
        identity: s.identity,
        labels: s.labels.clone(),
        source: s.source,
        slot: s.slot,
        rx_queues: s.rx_queues,
        cni: s.pod.cni.clone(),
    }
}

/// Field checks of an endpoint request that need nothing but the request (the bounds a
/// CNI plugin's input must meet).
pub fn check_pod_fields(p: &PodConfig) -> anyhow::Result<()> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !name_ok(&p.name) {
        bail!(
            "name: `{}` must be 1-253 characters of a-z, 0-9, '-' and '.' (a Kubernetes object name)",
            p.name
        );
    }
    if !name_ok(&p.namespace) || p.namespace.len() > 63 {
        bail!(
            "namespace: `{}` must be 1-63 characters of a-z, 0-9, '-' and '.'",
            p.namespace
        );
    }
    if p.lxc.is_empty() || p.lxc.len() > 15 || p.lxc.contains('/') || p.lxc.contains(' ') {
        bail!(
            "lxc: `{}` is not a device name (1-15 characters, no '/' or space)",
            p.lxc
        );
    }
    let o = p.ip.octets();
    if p.ip.is_unspecified()
        || p.ip.is_broadcast()
        || p.ip.is_multicast()
        || p.ip.is_loopback()
        || o[0] == 0
    {
        bail!("ip: {} cannot be a pod address", p.ip);
    }
    if let Some(v6) = p.ipv6
        && (v6.is_unspecified()
            || v6.is_loopback()
            || v6.is_multicast()
            || v6.is_unicast_link_local()
            || v6.to_ipv4_mapped().is_some())
    {
        bail!("ipv6: {v6} cannot be a pod address");
    }
    if p.mac.is_multicast() || p.mac.is_zero() {
        bail!("mac: {} is not a unicast Ethernet address", p.mac);
    }
    if p.labels.len() > 64 {
        bail!("labels: {} labels, at most 64", p.labels.len());
    }
    for (k, v) in &p.labels {
        if k.is_empty() || k.len() > 317 || v.len() > 63 {
            bail!("labels: `{k}`: keys are 1-317 characters, values at most 63");
        }
    }
    if p.netns.is_some() {
        bail!("netns: only `fastpath lab` reads it; leave it out of an endpoint request");
    }
    if let Some(c) = &p.cni {
        check_attachment(c)?;
    }
    Ok(())
}

/// The bounds of a CNI attachment (CNI spec 1.1: a network name and a container ID are
/// alphanumerics, `_`, `.` and `-`, starting with an alphanumeric; an interface name is a
/// Linux device name).
pub fn check_attachment(c: &control::config::CniAttachment) -> anyhow::Result<()> {
    let id_ok = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    if !id_ok(&c.network, 128) {
        bail!(
            "cni.network: `{}` must be 1-128 characters of a-z, A-Z, 0-9, '_', '.', '-', starting with a letter or digit",
            c.network
        );
    }
    if !id_ok(&c.container_id, 256) {
        bail!(
            "cni.container_id: `{}` must be 1-256 characters of a-z, A-Z, 0-9, '_', '.', '-', starting with a letter or digit",
            c.container_id
        );
    }
    if c.ifname.is_empty()
        || c.ifname.len() > 15
        || c.ifname == "."
        || c.ifname == ".."
        || c.ifname
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        bail!(
            "cni.ifname: `{}` is not an interface name (1-15 characters, no '/', ':' or space, not . or ..)",
            c.ifname
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodConfig {
        PodConfig {
            name: "web-1".into(),
            namespace: "default".into(),
            ip: "10.1.1.9".parse().unwrap(),
            ipv6: None,
            mac: "0a:58:0a:01:01:09".parse().unwrap(),
            lxc: "lxc-web".into(),
            id: None,
            labels: [("app".to_string(), "web".to_string())].into(),
            netns: None,
            cni: None,
        }
    }

    /// What a CNI plugin might send wrong is refused naming the field.
    #[test]
    fn request_fields_are_checked_before_anything_else() {
        assert!(check_pod_fields(&pod()).is_ok());
        type Edit = Box<dyn Fn(&mut PodConfig)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|p| p.name = "Web".into()), "name:"),
            (Box::new(|p| p.name = String::new()), "name:"),
            (Box::new(|p| p.name = "x".repeat(254)), "name:"),
            (Box::new(|p| p.namespace = "a/b".into()), "namespace:"),
            (
                Box::new(|p| p.lxc = "a-very-long-device-name".into()),
                "lxc:",
            ),
            (Box::new(|p| p.lxc = "../x".into()), "lxc:"),
            (Box::new(|p| p.ip = "0.0.0.0".parse().unwrap()), "ip:"),
            (Box::new(|p| p.ip = "127.0.0.1".parse().unwrap()), "ip:"),
            (Box::new(|p| p.ip = "239.1.1.1".parse().unwrap()), "ip:"),
            (
                Box::new(|p| p.mac = "01:00:5e:00:00:01".parse().unwrap()),
                "mac:",
            ),
            (
                Box::new(|p| p.mac = "00:00:00:00:00:00".parse().unwrap()),
                "mac:",
            ),
            (
                Box::new(|p| p.labels = (0..65).map(|i| (format!("k{i}"), "v".into())).collect()),
                "labels:",
            ),
            (
                Box::new(|p| {
                    p.labels.insert("k".into(), "v".repeat(64));
                }),
                "labels:",
            ),
            (Box::new(|p| p.netns = Some("x".into())), "netns:"),
        ];
        for (f, field) in cases {
            let mut p = pod();
            f(&mut p);
            let e = check_pod_fields(&p).unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn ids_default_to_the_default_namespace() {
        assert_eq!(normalize_id("web"), "default/web");
        assert_eq!(normalize_id("prod/web"), "prod/web");
        assert_eq!(pod_id(&pod()), "default/web-1");
    }
}
