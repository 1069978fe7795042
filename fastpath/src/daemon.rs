//! `fastpath run`: bring a node up, serve it, tear it down.
//!
//! Order, so that nothing is touched before the config is known to be good:
//! 1. validate the config (with command-line overrides applied);
//! 2. enter the node's network namespace (before any thread exists, so all inherit it);
//! 3. check every device: exists, enough rx/tx queues, MTU fits a UMEM frame;
//! 4. claim the control socket (refuse if another fastpath serves this node);
//! 5. load the XDP program, create the maps, write `cilium_lxc`, create the AF_XDP sockets and
//!    register them in the XSKMAP, then attach XDP to the devices;
//! 6. start the pinned workers, serve the control socket until SIGINT/SIGTERM;
//! 7. stop workers, detach XDP (bpf_link drop), remove socket and pins.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use std::collections::BTreeMap;

use control::config::{Config, XdpMode};
use control::datapath::{Datapath, node_routes};
use control::maps::{IpcacheKey, MacAddr};
use control::tables::{NextHop, Port, PortId, PortRole};
use xdp_redirect::{ROLE_LXC, ROLE_UNDERLAY, Steering};

use crate::api::{self, CtRow, LbView, NextHopStatus, Request, Response, Status};
use crate::neigh;
use crate::server::{self, Reply, Server, ServerStats};
use crate::stats::WorkerCounters;
use crate::worker::{Worker, WorkerConfig, WorkerDevice};
use crate::xsk;

/// What `fastpath run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: Config,
    /// The file `config` came from: re-read on SIGHUP (services and policies). `None` for
    /// the embedded demo config.
    pub config_path: Option<PathBuf>,
    /// Override `datapath.queues`.
    pub queues: Option<u32>,
    /// Override `datapath.cores`.
    pub cores: Option<Vec<usize>>,
    /// Override `datapath.xdp_mode`.
    pub xdp_mode: Option<XdpMode>,
    /// Override `datapath.attach` (and `attach_devices`: every device gets this).
    pub datapath: Option<control::config::DatapathChoice>,
    /// Skip the pipeline (port i → port i^1): the bench's bare AF_XDP ceiling.
    pub bare: bool,
    /// Control socket path (default `/run/fastpath/<node>.sock`).
    pub socket: Option<PathBuf>,
    /// Pin maps under this bpffs directory (default `/sys/fs/bpf/fastpath/<node>`; none if
    /// bpffs is not mounted).
    pub pin_dir: Option<PathBuf>,
    /// Where services and policies applied at run time are kept across restarts (default
    /// `/var/lib/fastpath/<node>`; see [`crate::state`]).
    pub state_dir: Option<PathBuf>,
    /// Where conntrack and affinity are kept, mapped into memory, across restarts (default
    /// `/run/fastpath/<node>`).
    pub run_dir: Option<PathBuf>,
}

/// A device as the kernel reports it.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub mac: MacAddr,
    pub mtu: u32,
    pub rx_queues: u32,
    pub tx_queues: u32,
}

/// Look a device up in the current network namespace (`ip -j -d link show`).
pub fn link_info(name: &str) -> anyhow::Result<LinkInfo> {
    link_info_args(name, &[])
}

/// Look a device up in network namespace `ns`.
pub fn link_info_in(ns: &str, name: &str) -> anyhow::Result<LinkInfo> {
    link_info_args(name, &["-n", ns])
}

fn link_info_args(name: &str, pre: &[&str]) -> anyhow::Result<LinkInfo> {
    let out = std::process::Command::new("ip")
        .args(pre)
        .args(["-j", "-d", "link", "show", "dev", name])
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "device `{name}` not found ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `ip -j link` output")?;
    let l = &v[0];
    let num = |k: &str| l[k].as_u64().map(|x| x as u32);
    Ok(LinkInfo {
        ifindex: num("ifindex").context("no ifindex")?,
        mac: l["address"]
            .as_str()
            .unwrap_or("")
            .parse()
            .with_context(|| format!("device `{name}` has no Ethernet address"))?,
        mtu: num("mtu").unwrap_or(1500),
        rx_queues: num("num_rx_queues").unwrap_or(1),
        tx_queues: num("num_tx_queues").unwrap_or(1),
    })
}

/// The rx/tx queues of a device that sockets can bind to, checked against `--queues`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuesInUse {
    pub rx: u32,
    pub tx: u32,
}

/// Check that `dev` (config field `field`) has a queue for every worker, and read how many
/// rx queues it has in use: those are all served (worker `q mod N` serves rx queue `q`).
/// The counts are the ones in use (`ethtool -l`, "Current hardware settings"), not the ones
/// allocated (`ip -d link`'s `num_rx_queues`): a plain veth has 2 allocated and 1 in use,
/// and AF_XDP binds only to queues in use.
pub(crate) fn check_queues(
    field: &str,
    dev: &str,
    li: &LinkInfo,
    workers: u32,
) -> anyhow::Result<QueuesInUse> {
    let (q, how) = match xsk::sys::channels(dev) {
        Ok(c) => (
            QueuesInUse { rx: c.rx, tx: c.tx },
            format!(
                "`ethtool -l {dev}`: {} rx / {} tx in use, at most {} / {}",
                c.rx, c.tx, c.max_rx, c.max_tx
            ),
        ),
        // No channel counts from this driver: what it allocated is all it has.
        Err(_) => (
            QueuesInUse {
                rx: li.rx_queues,
                tx: li.tx_queues,
            },
            format!(
                "`ip -d link show {dev}`: num_rx_queues {} / num_tx_queues {}",
                li.rx_queues, li.tx_queues
            ),
        ),
    };
    if q.rx < workers || q.tx < workers {
        bail!(
            "{field}: device `{dev}` has {} rx / {} tx queues in use ({how}); --queues {workers} needs at least {workers} of each, one per worker: \
             raise them (`ethtool -L {dev} rx {workers} tx {workers}`, or create the veth with numrxqueues/numtxqueues {workers}) or lower --queues",
            q.rx,
            q.tx
        );
    }
    if q.rx > xdp_redirect::MAX_QUEUES {
        bail!(
            "{field}: device `{dev}` has {} rx queues in use ({how}); fastpath serves at most {} per device: lower them (`ethtool -L {dev} rx {}`)",
            q.rx,
            xdp_redirect::MAX_QUEUES,
            xdp_redirect::MAX_QUEUES
        );
    }
    Ok(q)
}

/// UMEM frame size for an MTU: the kernel puts 256 bytes of XDP headroom in front of the frame.
fn frame_size_for(mtu: u32) -> Option<u32> {
    let need = mtu.checked_add(14 + 256)?;
    [2048u32, 4096].into_iter().find(|&f| need <= f)
}

/// The MTU for a pod's links that a CNI plugin gives them: the underlay's less the VXLAN
/// overhead (50) in tunnel mode, the underlay's with native routing, 1500 without an
/// underlay; never more than the node's UMEM frames hold.
fn pod_mtu(cfg: &Config, devs: &Devices) -> u32 {
    let underlay = cfg.node.underlay.as_ref().and_then(|u| {
        devs.ports
            .iter()
            .find(|p| p.ifname == u.device)
            .map(|p| p.mtu)
    });
    let mtu = match underlay {
        Some(m) if cfg.datapath.routing == control::config::RoutingMode::Tunnel => {
            m.saturating_sub(50)
        }
        Some(m) => m,
        None => 1500,
    };
    mtu.min(frame_mtu(devs.frame_size))
}

/// The largest MTU a UMEM chunk of `frame_size` bytes holds.
pub(crate) fn frame_mtu(frame_size: u32) -> u32 {
    frame_size - 256 - 14
}

/// The largest MTU a device may have: a frame (MTU + 14) behind the kernel's 256 bytes of
/// XDP headroom must fit the largest UMEM chunk (4096).
pub const MAX_MTU: u32 = 4096 - 256 - 14;

/// Refuse a device whose MTU no UMEM frame can hold, naming the config field and device.
pub(crate) fn check_mtu(field: &str, dev: &str, mtu: u32) -> anyhow::Result<()> {
    if frame_size_for(mtu).is_none() {
        bail!(
            "{field}: device `{dev}` has MTU {mtu}; fastpath's AF_XDP frames hold at most MTU {MAX_MTU} \
             (4096-byte chunks less 256 bytes of XDP headroom and the 14-byte Ethernet header): \
             lower it (ip link set dev {dev} mtu 1500)"
        );
    }
    Ok(())
}

struct WorkerHandle {
    queue: u32,
    core: Option<usize>,
    counters: Arc<WorkerCounters>,
    thread: std::thread::JoinHandle<()>,
}

/// The devices of a node as checked at start, in port order: the config's pods, the
/// underlay, then the endpoints restored from the state dir.
struct Devices {
    ports: Vec<Port>,
    /// Per port: rx queues in use (all are served).
    rx_in_use: Vec<u32>,
    frame_size: u32,
    nexthops: NextHops,
    /// Restored runtime endpoints: (pod, port slot).
    restored: Vec<(control::config::PodConfig, PortId)>,
    /// Addresses of the runtime endpoints not restored: their conntrack entries go.
    dropped_ips: Vec<std::net::Ipv4Addr>,
}

/// What every worker's UMEM is sized for.
struct Sizing {
    /// Per worker: sockets it has at start, and the most it may have.
    initial: Vec<u32>,
    capacity: Vec<u32>,
    /// Per worker: UMEM chunks.
    frames: Vec<u32>,
    /// Port slots in all (`max_pods` plus the underlay).
    slots: usize,
}

/// Run a node until SIGINT/SIGTERM: the steps below, in order.
pub fn run(mut opts: RunOptions) -> anyhow::Result<()> {
    // 1. The settings, with the command line applied, valid before anything is touched.
    let mut cfg = settle_config(&mut opts)?;
    // 2. Root, cores, the node's network namespace (before any thread exists).
    let cores = enter_node(&cfg)?;
    check_rt_priority(cfg.datapath.rt_priority)?;
    // Sources of intent: the config file (SIGHUP) and, with `source: kvstore`, the kvstore,
    // whose view of the cluster (other nodes, identities) is waited for here: it is part
    // of what the node serves from its first packet.
    let (intent_tx, intents) = crate::sources::channel();
    let kvstore = start_kvstore(&mut cfg, &intent_tx)?;
    let k8s = start_kubernetes(&mut cfg, &intent_tx)?;
    // The runtime state: services, policies and endpoints applied at run time.
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| crate::state::default_dir(&cfg.node.name));
    let mut state = crate::state::StateFile::open(&state_dir, &cfg.node.name)?;
    // 3. Devices (config pods, underlay, restored endpoints) and the UMEM they need.
    let mut devs = check_devices(&cfg, &mut state)?;
    let sizing = size_workers(&cfg, &devs)?;
    // 4. The control socket (refused if another fastpath serves this node).
    let (listener, sock_path) = claim_socket(&opts, &cfg)?;
    let _sock_guard = RemoveOnDrop(sock_path.clone());
    // 5. The program, the maps and their contents: the config, then what was applied at
    //    run time (nothing is served without the policies it had).
    let mut dp = load_maps(
        &opts,
        &cfg,
        &devs,
        &mut state,
        match (&kvstore, &k8s) {
            (Some(k), _) => Some(Box::new(crate::kvstore::KvAllocator(k.clone())) as _),
            (_, Some(k)) => Some(Box::new(crate::k8s::K8sAllocator(k.clone())) as _),
            _ => None,
        },
    )?;
    // Native routing: the kernel gets the same routes (Cilium's auto-direct-node-routes), so
    // host-originated traffic to remote pods takes the same path.
    let mut kernel_routes = KernelRoutes::install(
        &node_routes(&cfg),
        cfg.node.underlay.as_ref().map(|u| u.device.as_str()),
    )?;
    devs.nexthops.start(&mut dp)?;
    // 6. Workers with their sockets, every socket in the XSKMAP, then XDP on every device.
    let stop = Arc::new(AtomicBool::new(false));
    let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
    let workers = make_workers(&cfg, &opts, &devs, &sizing, &cores, &mut dp, &stop, &ack_tx)?;
    let socket_mode = workers
        .first()
        .map_or("none", |w| w.socket_mode())
        .to_string();
    // Before XDP: the kernel must never route to pods around the workers (crate::guard).
    let guards = crate::guard::wanted(
        &cfg,
        cfg.pods.iter().chain(devs.restored.iter().map(|(p, _)| p)),
    );
    crate::guard::sync(&guards)?;
    attach_devices(&cfg, &devs.ports, &mut dp, &socket_mode)?;
    let mut endpoints = crate::endpoints::Endpoints::new(
        &cfg,
        &crate::endpoints::Shape {
            workers: cfg.datapath.queues,
            ring_size: cfg.datapath.ring_size,
            frame_size: devs.frame_size,
            xdp_mode: cfg.datapath.xdp_mode,
            attach: cfg.datapath.clone(),
            max_pods: cfg.max_pods(),
            slots: sizing.slots,
            pod_mtu: pod_mtu(&cfg, &devs),
            run_dir: run_dir(&opts, &cfg),
        },
        workers.iter().map(|w| w.control()).collect(),
        ack_rx,
        workers.iter().map(|w| w.sockets()).collect(),
        sizing.capacity.iter().map(|&c| c as usize).collect(),
        &devs.ports,
        &devs.rx_in_use,
        &devs
            .restored
            .iter()
            .map(|(p, _)| {
                let labels = control::identity::pod_labels(&p.namespace, &p.labels);
                let id = dp
                    .tables()
                    .endpoint_v4(p.ip.octets())
                    .map_or(0, |e| e.info.sec_id);
                (p.clone(), id, labels)
            })
            .collect::<Vec<_>>(),
    );
    // 7. Start the workers and serve until SIGINT/SIGTERM.
    let handles = start_workers(workers, &cores)?;
    // The control thread (GC sweeps, neighbour dumps, table builds) keeps off the workers'
    // cores when there are others: sharing one, it would take time slices from a busy
    // worker, whose RX ring then overflows (docs/benchmarks.md "No loss below capacity").
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let control_cores: Vec<usize> = (0..online).filter(|c| !cores.contains(c)).collect();
    let control_on = if control_cores.is_empty() {
        "any core (every core has a worker)".to_string()
    } else {
        match xsk::sys::set_thread_affinity(&control_cores) {
            Ok(()) => format!("cores {control_cores:?}"),
            Err(e) => format!("any core (pinning to {control_cores:?} failed: {e})"),
        }
    };
    eprintln!(
        "fastpath: node {} serving {} pods with {} worker(s) on cores {:?}{}, control thread on {control_on}; control socket {}",
        cfg.node.name,
        cfg.pods.len() + devs.restored.len(),
        cfg.datapath.queues,
        cores,
        match cfg.datapath.rt_priority {
            0 => String::new(),
            p => format!(" (SCHED_FIFO {p})"),
        },
        sock_path.display()
    );
    let res = serve(
        &cfg,
        &opts,
        listener,
        &mut dp,
        &handles,
        &mut devs,
        &socket_mode,
        &mut state,
        &mut endpoints,
        Intake {
            tx: intent_tx,
            rx: intents,
            kvstore: kvstore.as_ref(),
            k8s: k8s.as_ref(),
            routes: &mut kernel_routes,
        },
    );

    // 8. Teardown: workers first, then XDP (bpf_link drop) and the pins.
    eprintln!("fastpath: stopping");
    stop.store(true, Ordering::Release);
    for h in handles {
        let _ = h.thread.join();
    }
    drop(endpoints); // the sockets the workers gave back and never got to close
    drop(dp);
    res
}

/// Step 1: command-line overrides applied, then every check of the config.
fn settle_config(opts: &mut RunOptions) -> anyhow::Result<Config> {
    let mut cfg = opts.config.clone();
    overrides(opts, &mut cfg);
    check(&cfg)?;
    opts.config = cfg.clone();
    Ok(cfg)
}

/// Every check of a config, as one error.
fn check(cfg: &Config) -> anyhow::Result<()> {
    let problems = cfg.validate();
    if !problems.is_empty() {
        bail!(
            "invalid settings: {}",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// The command line's overrides (`--queues`, `--cores`, `--xdp-mode`) applied to `cfg`.
fn overrides(opts: &RunOptions, cfg: &mut Config) {
    if let Some(q) = opts.queues {
        cfg.datapath.queues = q;
        if opts.cores.is_none() && cfg.datapath.cores.len() != q as usize {
            cfg.datapath.cores.clear();
        }
    }
    if let Some(c) = opts.cores.clone() {
        cfg.datapath.cores = c;
    }
    if let Some(m) = opts.xdp_mode {
        cfg.datapath.xdp_mode = m;
    }
    if let Some(d) = opts.datapath {
        cfg.datapath.attach = d;
        cfg.datapath.attach_devices.clear();
    }
}

/// Step 2: root, the worker cores exist, the node's netns entered. Returns the cores.
fn enter_node(cfg: &Config) -> anyhow::Result<Vec<usize>> {
    if xsk::sys::euid() != 0 {
        bail!("fastpath run needs root (CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW, CAP_IPC_LOCK)");
    }
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = cfg.worker_cores(online);
    if let Some(bad) = cores.iter().find(|&&c| c >= online) {
        bail!(
            "core {bad} does not exist: this machine has cores 0..{}",
            online - 1
        );
    }
    if let Some(ns) = &cfg.node.netns {
        xsk::sys::enter_netns(ns)
            .with_context(|| format!("node.netns: entering network namespace `{ns}`"))?;
    }
    Ok(cores)
}

/// Step 3: every device exists, has a queue per worker, an MTU a UMEM chunk holds; every
/// remote node is reached through the underlay. Endpoints restored from the state dir whose
/// device is gone (the pod was deleted while fastpath was down) are dropped from it, with a
/// line saying so.
fn check_devices(cfg: &Config, state: &mut crate::state::StateFile) -> anyhow::Result<Devices> {
    let queues = cfg.datapath.queues;
    let ns = || cfg.node.netns.as_deref().unwrap_or("(current)").to_string();
    let mut ports = Vec::new();
    let mut rx_in_use: Vec<u32> = Vec::new();
    let mut max_mtu = 0;
    for (i, pod) in cfg.pods.iter().enumerate() {
        let li =
            link_info(&pod.lxc).with_context(|| format!("pods[{i}].lxc: in netns {}", ns()))?;
        let field = format!("pods[{i}].lxc");
        rx_in_use.push(check_queues(&field, &pod.lxc, &li, queues)?.rx);
        check_mtu(&field, &pod.lxc, li.mtu)?;
        max_mtu = max_mtu.max(li.mtu);
        ports.push(Port::lxc(&pod.lxc, li.ifindex, li.mac, pod.ip, 0, li.mtu));
    }
    let ids = cfg
        .endpoint_ids()
        .map_err(|p| anyhow::anyhow!("invalid settings: {p}"))?;
    for (p, id) in ports.iter_mut().zip(&ids) {
        p.endpoint_id = *id;
    }
    let mut underlay_port: Option<PortId> = None;
    if let Some(u) = &cfg.node.underlay {
        let li = link_info(&u.device)
            .with_context(|| format!("node.underlay.device: in netns {}", ns()))?;
        rx_in_use.push(check_queues("node.underlay.device", &u.device, &li, queues)?.rx);
        if !neigh::has_address(&u.device, u.address.addr)? {
            bail!(
                "node.underlay.address: {} is not configured on `{}` (ip addr add {} dev {})",
                u.address.addr,
                u.device,
                u.address,
                u.device
            );
        }
        check_mtu("node.underlay.device", &u.device, li.mtu)?;
        max_mtu = max_mtu.max(li.mtu);
        underlay_port = Some(ports.len() as PortId);
        ports.push(Port::underlay(
            &u.device,
            li.ifindex,
            li.mac,
            u.address.addr,
            li.mtu,
        ));
    }
    // Endpoints added at run time before a restart: served again if their device is still
    // there and still fits; dropped (and said so) otherwise.
    let mut restored = Vec::new();
    let mut dropped = Vec::new();
    let mut dropped_ips = Vec::new();
    let mut taken_ids: Vec<u16> = ids.clone();
    let restored_pods: Vec<(String, control::config::PodConfig)> = state
        .state
        .endpoints
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // What the config puts in the ipcache, computed once (it hashes every pod's labels).
    let config_ipcache = control::datapath::node_ipcache(cfg);
    let config_ipcache6 = control::datapath::node_ipcache6(cfg);
    for (key, pod) in restored_pods {
        let why =
            (|| -> anyhow::Result<(Port, u32)> {
                crate::endpoints::check_pod_fields(&pod)?;
                if cfg.pods.len() + restored.len() >= cfg.max_pods() as usize {
                    bail!("datapath.max_pods ({}) is reached", cfg.max_pods());
                }
                if cfg.pods.iter().any(|p| {
                    crate::endpoints::pod_id(p) == key || p.ip == pod.ip || p.lxc == pod.lxc
                }) {
                    bail!("the config now has a pod with its name, address or device");
                }
                let mut host = std::iter::once(cfg.node.router_ip)
                    .chain(cfg.node.host_ips.iter().copied())
                    .chain(cfg.node.underlay.as_ref().map(|u| u.address.addr));
                if host.any(|h| h == pod.ip) {
                    bail!("{} is now an address of the node itself", pod.ip);
                }
                if cfg
                    .node
                    .underlay
                    .as_ref()
                    .is_some_and(|u| u.device == pod.lxc)
                {
                    bail!("`{}` is now the node's underlay device", pod.lxc);
                }
                let me = control::net::Ipv4Cidr::host(pod.ip);
                if config_ipcache.iter().any(|(p, _)| *p == me) {
                    bail!(
                        "the config now has {} in its ipcache (a remote node or pod)",
                        pod.ip
                    );
                }
                if let Some(v6) = pod.ipv6 {
                    // The checks `endpoint add` made, against the config as it is now.
                    match cfg.node.pod_cidr_v6 {
                        None => bail!("its ipv6 {v6}: the config has no node.pod_cidr_v6 now"),
                        Some(c) if !c.contains(v6) => {
                            bail!("its ipv6 {v6} is outside node.pod_cidr_v6 {c} now")
                        }
                        Some(_) => {}
                    }
                    let me6 = control::net::Ipv6Cidr::host(v6);
                    if cfg.pods.iter().any(|p| p.ipv6 == Some(v6))
                        || config_ipcache6.iter().any(|(p, _)| *p == me6)
                    {
                        bail!("the config now has {v6} (a pod, remote node or pod)");
                    }
                }
                let id = pod.id.context("no endpoint ID recorded")?;
                if taken_ids.contains(&id) {
                    bail!("its endpoint ID {id} is taken");
                }
                let li = link_info(&pod.lxc)?;
                let q = check_queues("lxc", &pod.lxc, &li, queues)?;
                check_mtu("lxc", &pod.lxc, li.mtu)?;
                Ok((
                    Port::lxc(&pod.lxc, li.ifindex, li.mac, pod.ip, id, li.mtu),
                    q.rx,
                ))
            })();
        match why {
            Ok((port, rx)) => {
                max_mtu = max_mtu.max(port.mtu);
                taken_ids.push(port.endpoint_id);
                restored.push((pod, ports.len() as PortId));
                ports.push(port);
                rx_in_use.push(rx);
            }
            Err(e) => {
                eprintln!(
                    "fastpath: not restoring endpoint {key} from {}: {e:#}",
                    state.path().display()
                );
                dropped.push(key);
                dropped_ips.push(pod.ip);
            }
        }
    }
    if !dropped.is_empty() {
        let mut next = state.state.clone();
        for k in &dropped {
            next.endpoints.remove(k);
            next.identities.remove(k);
        }
        state.save(next)?;
    }
    // Every remote node must be reached through the underlay: check before touching anything.
    let mut nexthops = NextHops::new(underlay_port.map(|p| (p, &ports[p as usize])));
    if let Some(u) = &cfg.node.underlay {
        for (i, r) in cfg.remote_nodes.iter().enumerate() {
            let route = neigh::route_get(r.ip)
                .with_context(|| format!("remote_nodes[{i}].ip: {}", r.ip))?;
            if route.dev != u.device {
                bail!(
                    "remote_nodes[{i}].ip: {} is routed via `{}`, not the underlay `{}`",
                    r.ip,
                    route.dev,
                    u.device
                );
            }
            nexthops.add(r.ip, route.neighbour(r.ip), r.overlay_mac);
        }
    }
    let frame_size = frame_size_for(max_mtu).context("every device's MTU was checked above")?;
    Ok(Devices {
        ports,
        rx_in_use,
        frame_size,
        nexthops,
        restored,
        dropped_ips,
    })
}

/// The UMEM every worker needs: one socket per device and rx queue it serves now, plus
/// one per pod the node may still take (`datapath.max_pods`); refused past
/// [`crate::worker::MAX_UMEM_BYTES`] before anything is made.
fn size_workers(cfg: &Config, devs: &Devices) -> anyhow::Result<Sizing> {
    let queues = cfg.datapath.queues;
    let pods_now = cfg.pods.len() + devs.restored.len();
    let spare = (cfg.max_pods() as usize).saturating_sub(pods_now) as u32;
    let initial: Vec<u32> = (0..queues)
        .map(|w| {
            devs.rx_in_use
                .iter()
                .map(|&rx| crate::worker::queues_of(w, queues, rx).count() as u32)
                .sum()
        })
        .collect();
    let capacity: Vec<u32> = initial.iter().map(|&i| i + spare).collect();
    let frames: Vec<u32> = capacity
        .iter()
        .map(|&s| crate::worker::umem_frames(s, cfg.datapath.ring_size, cfg.datapath.batch_size))
        .collect();
    let socks: u32 = capacity.iter().sum();
    let umem: u64 = frames
        .iter()
        .map(|&f| f as u64 * devs.frame_size as u64)
        .sum();
    if umem > crate::worker::MAX_UMEM_BYTES {
        bail!(
            "datapath.ring_size: the workers would map {} MiB of UMEM ({socks} sockets, counting one per worker for each of the {spare} pods datapath.max_pods leaves room for, × {} entries × 2 rings × {}-byte frames), more than {} MiB: lower datapath.ring_size or datapath.max_pods, or serve fewer devices or rx queues per node",
            umem >> 20,
            cfg.datapath.ring_size,
            devs.frame_size,
            crate::worker::MAX_UMEM_BYTES >> 20
        );
    }
    let slots = cfg.max_pods() as usize + usize::from(cfg.node.underlay.is_some());
    if slots > xdp_redirect::MAX_DEVS as usize {
        bail!(
            "datapath.max_pods: {} devices, the XDP program's fp_devs holds {}",
            slots,
            xdp_redirect::MAX_DEVS
        );
    }
    Ok(Sizing {
        initial,
        capacity,
        frames,
        slots: slots.max(devs.ports.len()),
    })
}

/// Step 4: bind the control socket (mode 0600).
fn claim_socket(opts: &RunOptions, cfg: &Config) -> anyhow::Result<(UnixListener, PathBuf)> {
    let sock_path = opts
        .socket
        .clone()
        .unwrap_or_else(|| api::socket_path(&cfg.node.name));
    if let Some(dir) = sock_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(&sock_path).is_ok() {
        bail!(
            "another fastpath already serves node `{}` ({})",
            cfg.node.name,
            sock_path.display()
        );
    }
    let _ = std::fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path)
        .with_context(|| format!("binding {}", sock_path.display()))?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, sock_path))
}

/// Step 5: load the XDP program and its maps (pinned when bpffs is mounted), write the
/// config's contents, then replay the runtime state: services, policies, endpoints.
fn load_maps(
    opts: &RunOptions,
    cfg: &Config,
    devs: &Devices,
    state: &mut crate::state::StateFile,
    allocator: Option<Box<dyn control::identity::Allocator>>,
) -> anyhow::Result<Datapath<Steering>> {
    let mut steering = Steering::load_sized(cfg.datapath.lb_map_max)
        .context("loading the XDP steering program")?;
    let pin_dir = opts.pin_dir.clone().or_else(|| {
        mount_bpffs()
            .then(|| PathBuf::from(format!("/sys/fs/bpf/fastpath/{}/tc/globals", cfg.node.name)))
    });
    // The service and backend IDs the last run left pinned, read before the pins are
    // replaced: the conntrack entries kept from it are renumbered with them (below).
    let kept_lb = pin_dir.as_ref().and_then(|d| match xdp_redirect::read_kept_lb(d) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!(
                "fastpath: the LB maps pinned under {} by the last run cannot be read ({}): conntrack entries of services are not restored",
                d.display(),
                xdp_redirect::error_chain(&e)
            );
            None
        }
    });
    if let Some(dir) = &pin_dir {
        steering
            .pin_maps(dir)
            .with_context(|| format!("pinning maps under {}", dir.display()))?;
    }
    // The config's ports only: restored endpoints join through the same path as a runtime
    // add (below), so both are written alike.
    let first_restored = devs
        .restored
        .first()
        .map_or(devs.ports.len(), |(_, s)| *s as usize);
    let mut dp = Datapath::new(
        devs.ports[..first_restored].to_vec(),
        cfg.datapath.queues as usize,
        steering,
    );
    if let Some(a) = allocator {
        dp.set_allocator(a);
    }
    let ct_sizes = control::ct::CtSizes {
        tcp: cfg.datapath.ct_tcp_max as usize,
        any: cfg.datapath.ct_any_max as usize,
    };
    // Conntrack and affinity: kept in files of the run dir, opened (and checked against
    // the services now in force) once those are restored, below.
    let run_dir = run_dir(opts, cfg);
    let (ct, affinity) = open_kept_maps(
        &run_dir,
        pin_dir.as_deref(),
        ct_sizes,
        cfg.datapath.lb_map_max as usize,
    )?;
    // The tc datapath over the pinned maps (docs/tc.md): loaded whenever it can be, so a
    // device can be moved to it at run time; a failure is fatal only where a device needs it.
    let needs_tc = cfg.datapath.needs_tc();
    match &pin_dir {
        Some(d) => {
            if let Err(e) = dp.kernel().enable_tc(d) {
                if needs_tc {
                    return Err(anyhow::anyhow!(
                        "loading the tc datapath (datapath.attach: tc): {}",
                        xdp_redirect::error_chain(&e)
                    ));
                }
                eprintln!(
                    "fastpath: the tc datapath cannot be loaded ({}): devices get XDP only",
                    xdp_redirect::error_chain(&e)
                );
            }
        }
        None if needs_tc => {
            anyhow::bail!(
                "datapath.attach: tc needs bpffs at /sys/fs/bpf (the tc programs open the maps by their pins), and it is not mounted"
            )
        }
        None => {}
    }
    dp.load_node(cfg)
        .context("writing cilium_lxc, fp_config, cilium_ipcache_v2 and the LB maps")?;
    if !state.state.is_empty() {
        let path = state.path();
        let fix = || {
            format!(
                "restoring the runtime state in {} (fix it, or remove it to start from the config alone)",
                path.display()
            )
        };
        dp.set_services(&state.state.services_over(cfg), &cfg.lb_settings())
            .with_context(fix)?;
        let policies = state.state.policies_over(cfg).with_context(fix)?;
        dp.set_policies(&policies).with_context(fix)?;
        for (pod, slot) in &devs.restored {
            let labels = control::identity::pod_labels(&pod.namespace, &pod.labels);
            let had = state
                .state
                .identities
                .get(&crate::endpoints::pod_id(pod))
                .copied();
            let id = dp
                .identity_for_restored(&labels, had)
                .map_err(anyhow::Error::msg)
                .with_context(fix)?;
            dp.add_local_endpoint(
                *slot,
                devs.ports[*slot as usize].clone(),
                pod.mac,
                pod.ipv6,
                id,
                labels,
            )
            .with_context(|| format!("endpoint {}", crate::endpoints::pod_id(pod)))
            .with_context(fix)?;
        }
        eprintln!(
            "fastpath: restored {} service(s), {} policy object(s) and {} endpoint(s) applied at run time, {} service and {} policy deletion(s), from {}",
            state.state.services.len(),
            state.state.policies.len(),
            devs.restored.len(),
            state.state.services_deleted.len(),
            state.state.policies_deleted.len(),
            path.display()
        );
    }
    // Port slots of the last run (by device name) → this run's: NodePort entries name the
    // device their replies leave by.
    let names: Vec<String> = devs.ports.iter().map(|p| p.ifname.clone()).collect();
    let slots = read_port_names(&run_dir).map(|old| {
        old.into_iter()
            .filter_map(|(slot, name)| {
                let now = names.iter().position(|n| *n == name)?;
                Some((slot, now as u16))
            })
            .collect::<std::collections::HashMap<u16, u16>>()
    });
    let r = dp.restore_datapath_maps(
        ct,
        affinity,
        kept_lb.as_ref(),
        slots.as_ref(),
        control::clock::now(),
    );
    // Endpoints gone while fastpath was down: their flows too (the address is free again).
    for ip in &devs.dropped_ips {
        dp.flush_conntrack(*ip);
    }
    if let Err(e) = write_port_names(
        &run_dir,
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u16, n.as_str())),
    ) {
        eprintln!(
            "fastpath: recording the port slots in {}: {e}",
            run_dir.display()
        );
    }
    if r.ct_kept + r.ct_dropped + r.affinity_kept > 0 {
        eprintln!(
            "fastpath: restored {} conntrack and {} affinity entries from {} ({} conntrack entries dropped: expired, or their service or backend is gone)",
            r.ct_kept,
            r.affinity_kept,
            run_dir.display(),
            r.ct_dropped
        );
    }
    Ok(dp)
}

/// The file system a directory is on, if it is not one kept in memory (tmpfs, ramfs).
fn not_in_memory(dir: &std::path::Path) -> Option<String> {
    const TMPFS: u64 = 0x0102_1994;
    const RAMFS: u64 = 0x8584_58f6;
    let st = rustix::fs::statfs(dir).ok()?;
    let t = st.f_type as u64;
    (t != TMPFS && t != RAMFS).then(|| match t {
        0xef53 => "ext4".to_string(),
        0x5846_5342 => "xfs".to_string(),
        0x9123_683e => "btrfs".to_string(),
        0x794c_7630 => "overlayfs".to_string(),
        other => format!("a file system of type {other:#x}"),
    })
}

/// `--run-dir`, or `/run/fastpath/<node>`.
fn run_dir(opts: &RunOptions, cfg: &Config) -> PathBuf {
    opts.run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/fastpath/{}", cfg.node.name)))
}

/// `<run dir>/ports.json`: the device of every port slot, so that the next run can move
/// the slots conntrack entries name (NodePort replies) to its own numbering.
pub(crate) fn write_port_names<'a>(
    dir: &std::path::Path,
    names: impl Iterator<Item = (u16, &'a str)>,
) -> std::io::Result<()> {
    let v: Vec<(u16, &str)> = names.collect();
    let tmp = dir.join("ports.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&v).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, dir.join("ports.json"))
}

/// What [`write_port_names`] left, if anything readable (at most 64 KiB of it).
fn read_port_names(dir: &std::path::Path) -> Option<Vec<(u16, String)>> {
    let b = std::fs::read(dir.join("ports.json")).ok()?;
    if b.len() > 64 << 10 {
        return None;
    }
    serde_json::from_slice(&b).ok()
}

/// Conntrack and affinity, kept outside the process so a restart finds them: with bpffs
/// (`pin_dir`), as pinned BPF arrays (`cilium_ct4_global`, `cilium_ct_any4_global`,
/// `cilium_lb4_affinity`) that the tc datapath shares, with their lock files in `dir`;
/// without, as files of `dir` (`ct4_tcp.table`, `ct4_any.table`, `affinity.table`). `dir`
/// is made mode 0700. What the last run left is used again when its layout and sizes
/// match (and it is from this boot); otherwise the table starts empty and the log says why.
fn open_kept_maps(
    dir: &std::path::Path,
    pin_dir: Option<&std::path::Path>,
    ct: control::ct::CtSizes,
    affinity: usize,
) -> anyhow::Result<(control::ct::Conntrack, control::tables::AffinityMap)> {
    use control::shared_table::Keep;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the run dir {} (--run-dir)", dir.display()))?;
    let fix = || match pin_dir {
        Some(p) => format!(
            "conntrack and affinity maps pinned in {} (lock files in --run-dir {}; remove the pins to start afresh)",
            p.display(),
            dir.display()
        ),
        None => format!(
            "conntrack and affinity tables in {} (--run-dir; remove the directory to start afresh)",
            dir.display()
        ),
    };
    let ((ct, opened), (aff, a)) = match pin_dir {
        Some(p) => {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            let aff_pin = p.join(control::maps::lb::AFFINITY_MAP);
            let aff_lock = dir.join(format!("{}.lock", control::maps::lb::AFFINITY_MAP));
            (
                control::ct::Conntrack::open_pinned(p, dir, ct).with_context(fix)?,
                control::tables::AffinityMap::open_kept(
                    Keep::Pinned {
                        pin: &aff_pin,
                        lock: &aff_lock,
                    },
                    control::maps::lb::AFFINITY_MAP,
                    affinity,
                )
                .with_context(fix)?,
            )
        }
        None => {
            if let Some(fs) = not_in_memory(dir) {
                eprintln!(
                    "fastpath: --run-dir {} is on {fs}, not tmpfs: the kernel writes conntrack's pages back to disk as they change (disk I/O, and a page fault the next time a worker writes a page that was written back); give it a tmpfs directory (/run usually is one; /dev/shm/fastpath/<node>)",
                    dir.display()
                );
            }
            (
                control::ct::Conntrack::open_files(dir, "ct4", ct).with_context(fix)?,
                control::tables::AffinityMap::open_file(
                    &dir.join("affinity.table"),
                    "affinity",
                    affinity,
                )
                .with_context(fix)?,
            )
        }
    };
    let names = if pin_dir.is_some() {
        [
            control::maps::ct::CT_TCP_MAP,
            control::maps::ct::CT_ANY_MAP,
            control::maps::lb::AFFINITY_MAP,
        ]
    } else {
        ["ct4_tcp", "ct4_any", "affinity"]
    };
    let place = pin_dir.unwrap_or(dir);
    for (name, o) in names.iter().zip(opened.iter().chain([&a])) {
        match o {
            control::shared_table::Opened::Kept { torn, .. } if *torn > 0 => eprintln!(
                "fastpath: {name}: {torn} entries half-written by the last run were dropped"
            ),
            control::shared_table::Opened::Fresh { why } => {
                eprintln!(
                    "fastpath: {name}: starting empty, the table in {} is not used: {why}",
                    place.display()
                )
            }
            _ => {}
        }
    }
    Ok((ct, aff))
}

/// Step 6a: the workers, each with its UMEM and sockets; every socket registered in the
/// XSKMAP before XDP is attached, so nothing is steered to an empty slot.
#[allow(clippy::too_many_arguments)]
fn make_workers(
    cfg: &Config,
    opts: &RunOptions,
    devs: &Devices,
    sizing: &Sizing,
    cores: &[usize],
    dp: &mut Datapath<Steering>,
    stop: &Arc<AtomicBool>,
    acks: &crossbeam_channel::Sender<crate::worker::Ack>,
) -> anyhow::Result<Vec<Worker>> {
    let queues = cfg.datapath.queues;
    let wdevs: Vec<WorkerDevice> = devs
        .ports
        .iter()
        .zip(&devs.rx_in_use)
        .map(|(p, &rx)| WorkerDevice {
            name: p.ifname.clone(),
            ifindex: p.ifindex,
            rx_queues: rx,
        })
        .collect();
    let mut workers = Vec::new();
    for q in 0..queues {
        let wc = WorkerConfig {
            queue: q,
            workers: queues,
            core: Some(cores[q as usize]),
            batch_size: cfg.datapath.batch_size,
            ring_size: cfg.datapath.ring_size,
            frame_size: devs.frame_size,
            poll: cfg.datapath.poll,
            spin: std::time::Duration::from_micros(cfg.datapath.poll_spin_us.into()),
            rt_priority: cfg.datapath.rt_priority,
            tx_flush: std::time::Duration::from_micros(cfg.datapath.tx_flush_us.into()),
            bare: opts.bare,
        };
        let w = Worker::new(
            wc,
            &wdevs,
            sizing.frames[q as usize],
            sizing.slots,
            dp.reader(),
            stop.clone(),
            acks.clone(),
        )?;
        debug_assert_eq!(w.sockets().len() as u32, sizing.initial[q as usize]);
        for si in w.sockets() {
            dp.kernel()
                .register_xsk(si.port as u32, si.queue, &RawFdRef(si.fd))
                .with_context(|| {
                    format!(
                        "registering the socket of {} queue {} in fp_xsks",
                        devs.ports[si.port as usize].ifname, si.queue
                    )
                })?;
        }
        workers.push(w);
    }
    Ok(workers)
}

/// Step 6b: XDP on every device, slot = port.
fn attach_devices(
    cfg: &Config,
    ports: &[Port],
    dp: &mut Datapath<Steering>,
    socket_mode: &str,
) -> anyhow::Result<()> {
    for (slot, p) in ports.iter().enumerate() {
        let role = match p.role {
            PortRole::Lxc => ROLE_LXC,
            PortRole::Underlay => ROLE_UNDERLAY,
        };
        let d = dp.kernel().attach(
            xdp_redirect::PortSpec {
                ifname: &p.ifname,
                ifindex: p.ifindex,
                slot: slot as u32,
                role,
                mac: p.mac.0,
            },
            cfg.datapath.xdp_mode,
            cfg.datapath.attach_for(&p.ifname),
        )?;
        let (what, failed) = match d.mode {
            xdp_redirect::AttachedMode::Tc => ("tc datapath".to_string(), "XDP"),
            m => (format!("xdp {}", m.name()), "native"),
        };
        let how = d
            .fallback_reason
            .as_ref()
            .map(|r| format!(" ({failed} failed: {r})"))
            .unwrap_or_default();
        eprintln!(
            "fastpath: {} ifindex {} {what}{how}, af_xdp {socket_mode}",
            p.ifname, p.ifindex,
        );
    }
    Ok(())
}

/// Step 2b: a real-time priority the workers could not get is refused before anything is
/// made (a thread tries it and ends).
fn check_rt_priority(priority: u8) -> anyhow::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    std::thread::spawn(move || xsk::sys::set_fifo(priority))
        .join()
        .expect("probe thread")
        .map_err(|e| {
            anyhow::anyhow!(
                "datapath.rt_priority: {priority}: the workers cannot run under SCHED_FIFO ({e}); it needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least {priority}, or set 0"
            )
        })
}

/// Step 7a: one pinned thread per worker.
fn start_workers(workers: Vec<Worker>, cores: &[usize]) -> anyhow::Result<Vec<WorkerHandle>> {
    let mut handles = Vec::new();
    for (q, w) in workers.into_iter().enumerate() {
        let counters = w.counters();
        let thread = std::thread::Builder::new()
            .name(format!("fp-worker-{q}"))
            .spawn(move || w.run())?;
        handles.push(WorkerHandle {
            queue: q as u32,
            core: Some(cores[q]),
            counters,
            thread,
        });
    }
    Ok(handles)
}

/// Step 7b: the control loop. Never blocks on anything but poll(2), which wakes for a
/// client, a client's deadline, or after at most 100 ms: SIGTERM, endpoint changes,
/// conntrack GC, next hops and worker liveness are checked on every pass.
#[allow(clippy::too_many_arguments)]
fn serve(
    cfg: &Config,
    opts: &RunOptions,
    listener: UnixListener,
    dp: &mut Datapath<Steering>,
    handles: &[WorkerHandle],
    devs: &mut Devices,
    socket_mode: &str,
    state: &mut crate::state::StateFile,
    endpoints: &mut crate::endpoints::Endpoints,
    intake: Intake<'_>,
) -> anyhow::Result<()> {
    let Intake {
        tx: intent_tx,
        rx: intents,
        kvstore,
        k8s,
        routes,
    } = intake;
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    let started = Instant::now();
    let mut last_gc = Instant::now();
    let mut poll = mio::Poll::new()?;
    let mut server = Server::new(listener, poll.registry())?;
    let mut events = mio::Events::with_capacity(64);
    let mut next_ticket = 1u64;
    if let Some(path) = &opts.config_path {
        crate::sources::config_file(path.clone(), intent_tx.clone())?;
    }
    drop(intent_tx);
    let mut cfg = cfg.clone();
    let mut cluster = ClusterState::default();
    let mut last_publish = Instant::now();
    while !term.load(Ordering::Relaxed) {
        let wait = if endpoints.pending() > 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        };
        if let Err(e) = poll.poll(&mut events, Some(server.timeout(wait)))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            return Err(e.into());
        }
        for ev in events.iter() {
            if ev.token() == server::LISTENER {
                server.accept(poll.registry());
                continue;
            }
            let stats = server.stats;
            let mut view = NodeView {
                cfg: &cfg,
                dp,
                handles,
                nexthops: &devs.nexthops,
                kvstore,
                k8s,
                cluster: &cluster,
                socket_mode,
                opts,
                started,
                server: stats,
                state,
                endpoints,
                next_ticket: &mut next_ticket,
            };
            server.ready(ev.token(), poll.registry(), &mut |req| {
                handle(req, &mut view)
            });
        }
        while let Ok(batch) = intents.try_recv() {
            let mut cx = ClusterCx {
                devs: &mut *devs,
                endpoints: &*endpoints,
                routes: &mut *routes,
                state: &mut cluster,
            };
            apply_batch(opts, &mut cfg, dp, state, batch, &mut cx);
        }
        if cluster.retry_at.is_some_and(|t| Instant::now() >= t)
            && let Some(view) = cluster.pending.take()
        {
            let mut cx = ClusterCx {
                devs: &mut *devs,
                endpoints: &*endpoints,
                routes: &mut *routes,
                state: &mut cluster,
            };
            apply_cluster(&mut cfg, dp, state, view, &mut cx);
        }
        endpoints.tick(dp, &mut |eps| {
            let mut next = state.state.clone();
            next.identities = eps
                .iter()
                .map(|(p, id)| (crate::endpoints::pod_id(p), *id))
                .collect();
            next.endpoints = eps
                .into_iter()
                .map(|(p, _)| (crate::endpoints::pod_id(&p), p))
                .collect();
            if next == state.state {
                return Ok(());
            }
            state.save(next)
        });
        let mut changed = false;
        for (ticket, outcome) in endpoints.finished() {
            server.finish(ticket, endpoint_response(outcome), poll.registry());
            changed = true;
        }
        // What this node publishes, when an endpoint changed and at least every second
        // (services applied at run time, a reload).
        if let Some(k) = kvstore
            && (changed || last_publish.elapsed() >= Duration::from_secs(1))
        {
            last_publish = Instant::now();
            let own =
                crate::cluster::own(&cfg, &endpoints.runtime(), &state.state.services_over(&cfg));
            if cluster.published.as_ref() != Some(&own) {
                k.publish(own.clone());
                cluster.published = Some(own);
            }
        }
        server.tick(poll.registry(), &mut |g| dp.writer().is_applied(g));
        dp.writer().reclaim();
        devs.nexthops.tick(dp);
        if last_gc.elapsed() >= GC_INTERVAL {
            last_gc = Instant::now();
            if let Err(e) = dp.gc(control::clock::now()) {
                eprintln!("fastpath: conntrack GC: {e}");
            }
        }
        if handles.iter().any(|h| h.thread.is_finished()) {
            eprintln!("fastpath: a worker exited unexpectedly; shutting down");
            break;
        }
    }
    Ok(())
}

/// Apply a batch of intent from a source (on the control loop; every step bounded like the
/// same change through the control socket). A batch that cannot be applied leaves what is in
/// force and says why in the log.
fn apply_batch(
    opts: &RunOptions,
    cfg: &mut Config,
    dp: &mut Datapath<Steering>,
    state: &crate::state::StateFile,
    batch: crate::sources::Batch,
    cx: &mut ClusterCx<'_>,
) {
    use crate::sources::Intent;
    for intent in batch.intents {
        match intent {
            Intent::Cluster(view) => apply_cluster(cfg, dp, state, *view, cx),
            Intent::ConfigServicesAndPolicies(new) => {
                let mut new = *new;
                overrides(opts, &mut new);
                match reload(cfg, new, dp, state, cx.state.view.as_ref()) {
                    Ok((s, p)) => eprintln!(
                        "fastpath: {}: reloaded, {s} service(s) and {p} policy object(s) in force",
                        batch.source
                    ),
                    Err(e) => eprintln!(
                        "fastpath: {}: not reloaded, the old one stays in force: {e:#}",
                        batch.source
                    ),
                }
            }
        }
    }
}

/// Take the services and policies of a re-read config (under what was applied at run
/// time, as at start). Everything else of the config is fixed while the node runs: a file
/// whose node, datapath, pods or remote nodes differ is refused whole.
fn reload(
    cfg: &mut Config,
    mut new: Config,
    dp: &mut Datapath<Steering>,
    state: &crate::state::StateFile,
    view: Option<&crate::kvstore::schema::View>,
) -> anyhow::Result<(usize, usize)> {
    check(&new)?;
    // (Kubernetes) this node's pods carry the labels of their Pod objects, as at start.
    if let Some(v) = view {
        for p in &mut new.pods {
            if let Some(l) = v.local_labels.get(&format!("{}/{}", p.namespace, p.name)) {
                p.labels = l.clone();
            }
        }
    }
    let same = |a: &Config, b: &Config| -> bool {
        // With `source: kvstore` the running config's remote nodes are the store's.
        let remote = |c: &Config| match c.source {
            control::config::SourceMode::File => serde_json::json!(c.remote_nodes),
            _ => serde_json::Value::Null,
        };
        let j = |c: &Config| {
            serde_json::json!([
                c.node,
                c.datapath,
                c.pods,
                remote(c),
                c.source,
                c.kvstore,
                c.kubernetes
            ])
            .to_string()
        };
        j(a) == j(b)
    };
    if !same(cfg, &new) {
        bail!(
            "only services and policies are reloaded; node, datapath, pods, remote_nodes, source or kvstore changed (restart fastpath to apply them; pods can be added live with `fastpath endpoint add`)"
        );
    }
    // What the cluster's source brought stays: the other nodes, identities, policies.
    new.remote_nodes = cfg.remote_nodes.clone();
    new.allocated = cfg.allocated.clone();
    new.cluster_policies = cfg.cluster_policies.clone();
    let services = crate::cluster::services(state.state.services_over(&new), view);
    let policies = state.state.policies_over(&new)?;
    let (before_s, settings) = (dp.services(), cfg.lb_settings());
    dp.set_services(&services, &new.lb_settings())
        .context("services")?;
    if let Err(e) = dp.set_policies(&policies) {
        if let Err(undo) = dp.set_services(&before_s, &settings) {
            // Rare (a kernel map write failing twice): say what is in force.
            *cfg = new;
            return Err(anyhow::anyhow!(
                "policies: {e}; putting the old services back failed too ({undo}): the new file's services and the old policies are in force"
            ));
        }
        return Err(anyhow::anyhow!("policies: {e}"));
    }
    let n = (services.len(), new.policies.len());
    *cfg = new;
    Ok(n)
}

fn endpoint_response(o: crate::endpoints::Outcome) -> Response {
    use crate::endpoints::Outcome;
    match o {
        Outcome::Added {
            endpoint,
            generation,
        } => Response::EndpointAdded {
            endpoint: Box::new(endpoint),
            generation,
        },
        Outcome::Deleted {
            endpoint,
            conntrack_flushed,
        } => Response::EndpointDeleted {
            endpoint: Box::new(endpoint),
            conntrack_flushed,
        },
        Outcome::Absent => Response::EndpointAbsent,
        Outcome::Failed(message) => Response::Error { message },
    }
}

pub(crate) struct RawFdRef(pub(crate) i32);
impl std::os::fd::AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> i32 {
        self.0
    }
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// bpffs at `/sys/fs/bpf`, mounted if it is not (as Cilium's agent does): the maps are
/// pinned there, and the LB maps' pins carry the service and backend IDs a restart needs to
/// keep its conntrack entries. False (and a log line) if it cannot be mounted.
fn mount_bpffs() -> bool {
    if bpffs_mounted() {
        return true;
    }
    let _ = std::fs::create_dir_all("/sys/fs/bpf");
    match std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .output()
    {
        Ok(o) if o.status.success() => {
            eprintln!("fastpath: mounted bpffs at /sys/fs/bpf");
            true
        }
        Ok(o) => {
            eprintln!(
                "fastpath: bpffs is not mounted and `mount -t bpf bpf /sys/fs/bpf` failed ({}): maps are not pinned, and a restart drops the conntrack entries of services",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!(
                "fastpath: bpffs is not mounted and `mount` cannot run ({e}): maps are not pinned"
            );
            false
        }
    }
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
        })
        .unwrap_or(false)
}

/// What the control socket reports on: the running node's parts, borrowed.
struct NodeView<'a> {
    cfg: &'a Config,
    dp: &'a mut Datapath<Steering>,
    handles: &'a [WorkerHandle],
    nexthops: &'a NextHops,
    kvstore: Option<&'a crate::kvstore::Kvstore>,
    k8s: Option<&'a crate::k8s::Kubernetes>,
    cluster: &'a ClusterState,
    socket_mode: &'a str,
    opts: &'a RunOptions,
    started: Instant,
    server: ServerStats,
    state: &'a mut crate::state::StateFile,
    endpoints: &'a mut crate::endpoints::Endpoints,
    next_ticket: &'a mut u64,
}

/// Queue an endpoint change; its answer comes when it is done.
fn submit(v: &mut NodeView<'_>, c: crate::endpoints::Change) -> Reply {
    let ticket = *v.next_ticket;
    *v.next_ticket += 1;
    if v.endpoints.submit(ticket, c) {
        Reply::Later { ticket }
    } else {
        Reply::Now(Response::Error {
            message: format!(
                "busy: {} endpoint changes are queued; try again",
                crate::endpoints::MAX_QUEUED
            ),
        })
    }
}

/// Answer one control-socket request (on the control thread; see [`crate::server`] for
/// what bounds the clients).
fn handle(req: Request, v: &mut NodeView<'_>) -> Reply {
    let now = |r| Reply::Now(r);
    match req {
        Request::Status => now(Response::Status(Box::new(status(v)))),
        Request::EndpointList => now(Response::EndpointList {
            entries: endpoint_entries(v.dp),
        }),
        Request::IpcacheList => now(Response::IpcacheList {
            entries: ipcache_entries(v.dp)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        Request::TunnelList => now(Response::TunnelList {
            entries: ipcache_entries(v.dp)
                .into_iter()
                .filter_map(|(k, v)| {
                    let p = k.prefix_v4()?;
                    (p.len < 32 && v.tunnel_v4().is_some()).then(|| {
                        (
                            format!("{}:0", p.addr),
                            format!("{}:0", v.tunnel_endpoint_v4()),
                        )
                    })
                })
                .collect(),
        }),
        Request::LbList { view } => now(Response::LbList {
            entries: lb_entries(&v.dp.tables().lb, view),
        }),
        Request::CtList => {
            let (entries, left_out) = ct_rows(&v.dp.tables().ct);
            now(Response::CtList { entries, left_out })
        }
        Request::ServiceApply { services } => {
            let before = v.dp.services();
            now(match v.dp.upsert_services(&services) {
                Ok(generation) => {
                    let mut next = v.state.state.clone();
                    next.upsert_services(&services);
                    match persist_services(v, next, &before) {
                        Ok(()) => Response::Applied {
                            generation,
                            services: services.len(),
                        },
                        Err(message) => Response::Error { message },
                    }
                }
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            })
        }
        Request::PolicyApply { yaml, file } => {
            let start = std::time::Instant::now();
            match control::policy::parse::parse_objects(&yaml, &file) {
                Err(e) => now(Response::Error {
                    message: e.to_string(),
                }),
                Ok(objects) => {
                    let ps: Vec<control::policy::Policy> =
                        objects.iter().flat_map(|(_, ps)| ps.clone()).collect();
                    let mut next = v.state.state.clone();
                    next.upsert_policies(&objects);
                    policy_applied(v, start, ps.len(), next, |dp| dp.upsert_policies(&ps))
                }
            }
        }
        Request::PolicyDelete { id } => {
            let start = std::time::Instant::now();
            // Persisted as the object ids it removes (an object goes whole).
            let removed: Vec<String> =
                v.dp.policies()
                    .iter()
                    .filter(|p| p.id.matches(&id))
                    .map(|p| p.id.object().to_string())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
            let in_config: std::collections::BTreeSet<String> = v
                .cfg
                .policies()
                .unwrap_or_default()
                .iter()
                .map(|p| p.id.object().to_string())
                .collect();
            let mut next = v.state.state.clone();
            next.delete_policies(&removed, |o| in_config.contains(o));
            policy_applied(v, start, 1, next, |dp| dp.delete_policy(&id))
        }
        Request::PolicyGet { endpoint } => {
            now(match policy_dumps(v.dp, endpoint, &tc_policy(v.dp)) {
                Ok(endpoints) => Response::PolicyGet { endpoints },
                Err(message) => Response::Error { message },
            })
        }
        Request::PolicyList => now(Response::PolicyList {
            policies: policy_summaries(v.dp),
        }),
        Request::IdentityList => now(Response::Identities {
            identities: v
                .dp
                .identities()
                .into_iter()
                .map(|(id, labels)| crate::api::IdentityRow { id, labels })
                .collect(),
        }),
        Request::IdentityGet { id } => now(match v.dp.identities().remove(&id) {
            Some(labels) => Response::Identities {
                identities: vec![crate::api::IdentityRow { id, labels }],
            },
            None => Response::Error {
                message: format!(
                    "identity {id} is not known on this node (`fastpath identity list` shows those that are)"
                ),
            },
        }),
        Request::Text { of, numeric } => {
            let inner = (*of).clone();
            match handle(*of, v) {
                Reply::Now(resp) => now(match crate::views::render(&inner, &resp, numeric) {
                    Some(text) => Response::Text { text },
                    None if matches!(resp, Response::Error { .. }) => resp,
                    None => Response::Error {
                        message: "the text request is for listings and status".into(),
                    },
                }),
                _ => now(Response::Error {
                    message: "the text request is for listings and status, not changes".into(),
                }),
            }
        }
        Request::Endpoints => now(Response::Endpoints {
            endpoints: v.endpoints.list(),
            pending: v.endpoints.pending(),
        }),
        Request::EndpointAdd { endpoint } => submit(v, crate::endpoints::Change::Add(endpoint)),
        Request::EndpointDelete { id } => submit(v, crate::endpoints::Change::Delete(id)),
        Request::CniAdd { endpoint } => submit(v, endpoint.into_change()),
        Request::CniDelete { attachment } => {
            submit(v, crate::endpoints::Change::CniDelete(attachment))
        }
        Request::NodeInfo => now(Response::NodeInfo(Box::new(v.endpoints.node_info(v.cfg)))),
        Request::DatapathSet { device, datapath } => now(set_datapath(v, &device, datapath)),
        Request::ServiceDelete { id } => {
            let before = v.dp.services();
            now(match v.dp.delete_service(&id) {
                Ok(generation) => {
                    let mut next = v.state.state.clone();
                    next.delete_service(&id, v.cfg.services.iter().any(|s| s.id() == id));
                    match persist_services(v, next, &before) {
                        Ok(()) => Response::Applied {
                            generation,
                            services: 1,
                        },
                        Err(message) => Response::Error { message },
                    }
                }
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            })
        }
    }
}

/// The LB maps as `cilium-dbg bpf lb list` prints them, sorted by frontend then slot.
fn lb_entries(lb: &control::lb::LbTables, view: LbView) -> Vec<(String, String)> {
    use control::maps::lb::proto_name;
    let mut keys: Vec<_> = lb.services.iter().collect();
    keys.sort_by_key(|(k, _)| (k.address, k.port(), k.proto, k.backend_slot));
    match view {
        LbView::Services => keys
            .into_iter()
            .map(|(k, v)| {
                let rev = v.rev_nat().0;
                let val = if k.backend_slot == 0 {
                    format!("0.0.0.0:0 ({rev}) (0) [{}]", v.type_string())
                } else {
                    match lb.backends.get(&v.backend_id()) {
                        Some(b) => format!("{} ({rev}) ({})", b.name(), k.backend_slot),
                        None => format!(
                            "<backend {} missing> ({rev}) ({})",
                            v.backend_id(),
                            k.backend_slot
                        ),
                    }
                };
                let mut key = k.to_string();
                if let Some(i) = key.rfind(" (") {
                    key.truncate(i);
                }
                (format!("{key} ({})", k.backend_slot), val)
            })
            .collect(),
        LbView::Frontends => keys
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    format!(
                        "{} {}[{}] ({}) [{:#x} {:#x}]",
                        v.word,
                        v.count,
                        v.qcount,
                        v.rev_nat().0,
                        v.flags,
                        v.flags2
                    ),
                )
            })
            .collect(),
        LbView::Backends => {
            let mut b: Vec<_> = lb.backends.iter().collect();
            b.sort_by_key(|(id, _)| **id);
            b.into_iter()
                .map(|(id, b)| {
                    (
                        id.to_string(),
                        format!(
                            "{}://{}:{} state={}",
                            proto_name(b.proto),
                            b.addr(),
                            b.port(),
                            b.state_name()
                        ),
                    )
                })
                .collect()
        }
        LbView::Revnat => {
            let mut r: Vec<_> = lb.revnat.iter().collect();
            r.sort_by_key(|(id, _)| **id);
            r.into_iter()
                .map(|(id, v)| (id.to_string(), v.to_string()))
                .collect()
        }
        LbView::Maglev => {
            let mut r: Vec<_> = lb.maglev.iter().collect();
            r.sort_by_key(|(id, _)| **id);
            r.into_iter()
                .map(|(id, table)| {
                    let mut counts: std::collections::BTreeMap<u32, usize> = Default::default();
                    for b in table.iter() {
                        *counts.entry(*b).or_default() += 1;
                    }
                    let parts: Vec<String> = counts
                        .iter()
                        .map(|(b, n)| {
                            let name = lb.backends.get(b).map_or("?".into(), |x| x.name());
                            format!("{name}={n}")
                        })
                        .collect();
                    // A digest of the whole table: equal on every node with the same
                    // backends and seed.
                    let digest = table.iter().zip(1u64..).fold(0u64, |h, (id, i)| {
                        let name = lb.backends.get(id).map_or(String::new(), |x| x.name());
                        h.wrapping_mul(31)
                            .wrapping_add(control::maglev::murmur3_128(name.as_bytes(), i as u32).0)
                    });
                    (
                        id.to_string(),
                        format!("M={} digest={digest:016x} {}", table.len(), parts.join(" ")),
                    )
                })
                .collect()
        }
    }
}

/// The most conntrack rows one `ct_list` answer carries (~400 bytes of JSON each).
pub const MAX_CT_ROWS: usize = 250_000;

/// Live conntrack entries, TCP map first, as `bpf ct list global` lines plus fields: at most
/// [`MAX_CT_ROWS`], and how many were left out.
fn ct_rows(ct: &control::ct::Conntrack) -> (Vec<CtRow>, u64) {
    use control::maps::ct::{CT_ANY_MAP, CT_TCP_MAP, TUPLE_F_SERVICE, format_line};
    let now = control::clock::now();
    let mut out = Vec::new();
    let mut left_out = 0u64;
    for (tcp, name) in [(true, CT_TCP_MAP), (false, CT_ANY_MAP)] {
        let (mut e, live) = ct.entries_at_most(tcp, now, MAX_CT_ROWS - out.len());
        left_out += (live - e.len()) as u64;
        e.sort_by_key(|(k, _)| (k.daddr, k.saddr, k.sport, k.dport, k.flags));
        for (k, v) in e {
            let ((a, ap), (b, bp)) = k.endpoints();
            let nat = std::net::Ipv4Addr::new(
                v.nat_addr_lo[0],
                v.nat_addr_lo[1],
                v.nat_addr_lo[2],
                v.nat_addr_lo[3],
            );
            out.push(CtRow {
                map: name.into(),
                line: format_line(&k, &v),
                kind: k.kind().into(),
                proto: k.nexthdr,
                from: format!("{a}:{ap}"),
                to: format!("{b}:{bp}"),
                expires: v.lifetime,
                flags: v.flags,
                rev_nat: u16::from_be(v.rev_nat_index),
                backend_id: v.backend_id,
                src_sec_id: v.src_sec_id,
                nat: (k.flags & TUPLE_F_SERVICE == 0 && !nat.is_unspecified())
                    .then(|| format!("{nat}:{}", u16::from_be(v.nat_port))),
            });
        }
    }
    (out, left_out)
}

/// `cilium_lxc` as the kernel holds it, formatted like `cilium-dbg bpf endpoint list`.
fn endpoint_entries(dp: &Datapath<Steering>) -> Vec<(String, String)> {
    let mut rows = match dp.kernel_ref().kernel_endpoints() {
        Ok(v) => v,
        Err(_) => dp
            .tables()
            .endpoints
            .iter()
            .map(|(k, e)| (*k, e.info))
            .collect(),
    };
    rows.sort_by_key(|(k, _)| k.ip);
    rows.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `cilium_ipcache_v2` as the kernel holds it (the workers' copy if the map cannot be read),
/// sorted by address then prefix length.
fn ipcache_entries(
    dp: &Datapath<Steering>,
) -> Vec<(IpcacheKey, control::maps::RemoteEndpointInfo)> {
    let mut rows = match dp.kernel_ref().kernel_ipcache() {
        Ok(v) => v,
        Err(_) => dp
            .tables()
            .ipcache
            .iter()
            .map(|(p, v)| (IpcacheKey::v4(p), *v))
            .collect(),
    };
    rows.sort_by_key(|(k, _)| (k.family, k.ip, k.prefixlen));
    rows
}

/// Persist the runtime state after a service change; if that fails, put the services back as
/// they were (`before`) so that what is in force is what a restart restores.
fn persist_services(
    v: &mut NodeView<'_>,
    next: crate::state::RuntimeState,
    before: &[control::lb::ServiceConfig],
) -> Result<(), String> {
    match v.state.save(next) {
        Ok(()) => Ok(()),
        Err(e) => {
            let undo = v.dp.set_services(before, &v.cfg.lb_settings());
            Err(format!(
                "not applied: the change could not be persisted ({e:#}), so it was taken back{}",
                undo.err()
                    .map(|u| format!(" — and taking it back failed too: {u}"))
                    .unwrap_or_default()
            ))
        }
    }
}

/// Run a policy change, persist the runtime state `next` (or take the change back if that
/// fails); the answer waits (without blocking the loop) until every worker runs it, and
/// carries both times.
fn policy_applied(
    v: &mut NodeView<'_>,
    start: std::time::Instant,
    policies: usize,
    next: crate::state::RuntimeState,
    change: impl FnOnce(&mut Datapath<Steering>) -> Result<u64, control::datapath::DatapathError>,
) -> Reply {
    let before = v.dp.policies();
    let r = change(v.dp);
    if r.is_ok()
        && let Err(e) = v.state.save(next)
    {
        let undo = v.dp.set_policies(&before);
        return Reply::Now(Response::Error {
            message: format!(
                "not applied: the change could not be persisted ({e:#}), so it was taken back{}",
                undo.err()
                    .map(|u| format!(" — and taking it back failed too: {u}"))
                    .unwrap_or_default()
            ),
        });
    }
    match r {
        Err(e) => Reply::Now(Response::Error {
            message: e.to_string(),
        }),
        Ok(generation) => {
            let compile_us = start.elapsed().as_micros() as u64;
            Reply::WhenApplied {
                generation,
                make: Box::new(move |applied| {
                    if applied {
                        Response::PolicyApplied {
                            generation,
                            policies,
                            compile_us,
                            applied_us: start.elapsed().as_micros() as u64,
                        }
                    } else {
                        Response::Error {
                            message: format!(
                                "policy published as generation {generation} but not every worker switched to it within {} s",
                                server::APPLY_TIMEOUT.as_secs()
                            ),
                        }
                    }
                }),
            }
        }
    }
}

/// The tc datapath's per-entry policy counters (none while no device runs it).
fn tc_policy(dp: &Datapath<Steering>) -> std::collections::HashMap<(u16, u32), (u64, u64)> {
    match dp.kernel_ref().tc_stats() {
        Some(Ok(s)) => {
            let t = dp.tables();
            let mut out = std::collections::HashMap::new();
            for (ep, e, p, b) in crate::metrics::tc_policy_entries(&t, &s.policy) {
                let c = out.entry((ep, e.slot)).or_insert((0, 0));
                *c = (c.0 + p, c.1 + b);
            }
            out
        }
        _ => Default::default(),
    }
}

/// `bpf policy get`: each endpoint's entries with what they decided, in the workers and
/// (`tc`, by endpoint and entry slot) in the tc datapath.
fn policy_dumps<K: control::datapath::KernelMaps>(
    dp: &Datapath<K>,
    endpoint: Option<u16>,
    tc: &std::collections::HashMap<(u16, u32), (u64, u64)>,
) -> Result<Vec<crate::api::PolicyDump>, String> {
    let t = dp.tables();
    let mut ids: Vec<u16> = match endpoint {
        Some(id) if t.policy.endpoints.contains_key(&id) => vec![id],
        Some(id) => {
            let mut known: Vec<u16> = t.policy.endpoints.keys().copied().collect();
            known.sort_unstable();
            return Err(format!(
                "endpoint {id} has no policy map here (local endpoints: {known:?})"
            ));
        }
        None => t.policy.endpoints.keys().copied().collect(),
    };
    ids.sort_unstable();
    let u = dp.universe();
    Ok(ids
        .into_iter()
        .map(|id| {
            let ep = &t.policy.endpoints[&id];
            crate::api::PolicyDump {
                endpoint: id,
                map: control::maps::policy::map_name(id),
                enforced: ep.enforced,
                rows: ep
                    .entries
                    .iter()
                    .map(|e| {
                        let (packets, bytes) = t.policy_stats.get(e.slot);
                        let (tp, tb) = tc.get(&(id, e.slot)).copied().unwrap_or_default();
                        let (packets, bytes) = (packets + tp, bytes + tb);
                        crate::api::PolicyRow {
                            policy: if e.entry.is_deny() { "Deny" } else { "Allow" }.into(),
                            direction: e.key.direction().into(),
                            labels: u.labels(e.key.sec_label),
                            identity: e.key.sec_label,
                            port_proto: e.key.port_proto(),
                            proxy_port: "NONE".into(),
                            auth_type: "disabled".into(),
                            bytes,
                            packets,
                            prefix: e.key.lpm_len(),
                            cookie: e.entry.cookie,
                        }
                    })
                    .collect(),
            }
        })
        .collect())
}

fn policy_summaries<K: control::datapath::KernelMaps>(
    dp: &Datapath<K>,
) -> Vec<crate::api::PolicySummary> {
    let t = dp.tables();
    let u = dp.universe();
    dp.policies()
        .into_iter()
        .map(|p| {
            let mut selects: Vec<u16> = t
                .policy
                .endpoints
                .values()
                .filter(|ep| {
                    u.ids
                        .get(&ep.sec_id)
                        .is_some_and(|labels| p.subject.matches(labels))
                })
                .map(|ep| ep.ep_id)
                .collect();
            selects.sort_unstable();
            crate::api::PolicySummary {
                id: p.id.to_string(),
                selects,
                ingress_rules: p.ingress.len(),
                egress_rules: p.egress.len(),
                default_deny: p.default_deny,
            }
        })
        .collect()
}

/// [`Request::DatapathSet`]: move an attached device to the other datapath.
fn set_datapath(
    v: &mut NodeView<'_>,
    device: &str,
    to: control::config::DatapathChoice,
) -> Response {
    let Some(ifindex) =
        v.dp.kernel_ref()
            .devices()
            .iter()
            .find(|d| d.ifname == device)
            .map(|d| d.ifindex)
    else {
        return Response::Error {
            message: format!("device `{device}` is not attached to fastpath"),
        };
    };
    let socket_mode = v.socket_mode.to_string();
    match v
        .dp
        .kernel()
        .switch_datapath(ifindex, to, v.cfg.datapath.xdp_mode)
    {
        Ok(d) => {
            eprintln!(
                "fastpath: {device} moved to the {} datapath",
                d.mode.datapath()
            );
            Response::Device(crate::api::DeviceStatus {
                ifname: d.ifname.clone(),
                ifindex: d.ifindex,
                datapath: d.mode.datapath().to_string(),
                xdp_mode: d.mode.name().into(),
                fallback_reason: d.fallback_reason.clone(),
                socket_mode,
            })
        }
        Err(e) => Response::Error {
            message: format!("{device}: {}", xdp_redirect::error_chain(&e)),
        },
    }
}

fn status(v: &NodeView<'_>) -> Status {
    let mut s = crate::metrics::snapshot(&crate::metrics::Sources {
        cfg: v.cfg,
        dp: v.dp,
        workers: v
            .handles
            .iter()
            .map(|h| crate::metrics::WorkerSource {
                queue: h.queue,
                core: h.core,
                counters: &h.counters,
                sockets: v.endpoints.sockets(h.queue as usize),
            })
            .collect(),
        nexthops: v.nexthops.status(),
        socket_mode: v.socket_mode,
        bare: v.opts.bare,
        uptime_secs: v.started.elapsed().as_secs(),
        server: v.server,
        endpoints: v.endpoints,
    });
    s.source = crate::api::SourceStatus {
        mode: v.cfg.source.name().to_string(),
        kvstore: v.kvstore.map(|k| k.status()),
        kubernetes: v.k8s.map(|k| k.status()),
        views_applied: v.cluster.applied,
        views_failed: v.cluster.failed,
        last_error: v.cluster.last_error.clone(),
        remote_nodes: v.cfg.remote_nodes.len(),
        skipped: v.cluster.skipped.clone(),
    };
    s
}

/// The intent channel and what applying the kvstore's views needs, handed to `serve`.
struct Intake<'a> {
    tx: crossbeam_channel::Sender<crate::sources::Batch>,
    rx: crossbeam_channel::Receiver<crate::sources::Batch>,
    kvstore: Option<&'a crate::kvstore::Kvstore>,
    k8s: Option<&'a crate::k8s::Kubernetes>,
    routes: &'a mut KernelRoutes,
}

/// The kvstore's view as the control loop holds it.
#[derive(Debug, Default)]
struct ClusterState {
    /// The view in force.
    view: Option<crate::kvstore::schema::View>,
    /// A view that could not be applied whole, retried at `retry_at`.
    pending: Option<crate::kvstore::schema::View>,
    retry_at: Option<Instant>,
    applied: u64,
    failed: u64,
    last_error: Option<String>,
    /// The error the view in `pending` failed with (said once in the log).
    failing: Option<String>,
    /// Nodes of the view left out, each with why.
    skipped: Vec<String>,
    /// What this node last handed the kvstore to publish.
    published: Option<crate::kvstore::Own>,
}

/// What applying a view touches besides the config and the datapath.
struct ClusterCx<'a> {
    devs: &'a mut Devices,
    endpoints: &'a crate::endpoints::Endpoints,
    routes: &'a mut KernelRoutes,
    state: &'a mut ClusterState,
}

/// `source: kvstore`: start the agent, wait for the store (`kvstore.connect_timeout`),
/// allocate the config pods' identities there, and take the other nodes the store has
/// into `cfg` (those that pass the checks; the others are reported).
fn start_kvstore(
    cfg: &mut Config,
    tx: &crossbeam_channel::Sender<crate::sources::Batch>,
) -> anyhow::Result<Option<crate::kvstore::Kvstore>> {
    let Some(k) = cfg
        .kvstore
        .clone()
        .filter(|_| cfg.source == control::config::SourceMode::Kvstore)
    else {
        return Ok(None);
    };
    let kv = crate::kvstore::Kvstore::start(&k, &cfg.node.name, tx.clone())
        .context("starting the kvstore thread")?;
    let timeout = Duration::from_secs(u64::from(k.connect_timeout));
    let view = kv.wait_synced(timeout)?;
    let mut sets: Vec<Vec<String>> = cfg
        .pods
        .iter()
        .map(|p| control::identity::pod_labels(&p.namespace, &p.labels))
        .collect();
    sets.sort();
    sets.dedup();
    for labels in sets {
        let id = kv
            .allocate(&labels)
            .map_err(|e| anyhow::anyhow!("pods: identity of {labels:?}: {e}"))?;
        cfg.allocated.insert(labels, id);
    }
    take_first_view(cfg, &view);
    eprintln!(
        "fastpath: kvstore: {} other node(s), {} identities at revision {}",
        cfg.remote_nodes.len(),
        view.allocated.len(),
        view.revision
    );
    Ok(Some(kv))
}

/// At start: the nodes of a source's first view that pass the checks (the others are
/// reported; the source's agent has reported its skipped records), with its identities and
/// policies, into `cfg`.
fn take_first_view(cfg: &mut Config, view: &crate::kvstore::schema::View) {
    let src = cfg.source.name();
    let checked = crate::cluster::check(cfg, view, &|ip| neigh::route_get(ip));
    for p in &checked.problems {
        eprintln!("fastpath: {src}: skipped {p}");
    }
    *cfg = crate::cluster::candidate(
        cfg,
        view,
        checked.nodes.into_iter().map(|(n, _)| n).collect(),
    );
}

/// `source: kubernetes`: start the watch, wait until every kind is listed
/// (`kubernetes.connect_timeout`), and take the other nodes, identities and policies the
/// API has into `cfg` (nodes that fail the checks are reported and left out).
fn start_kubernetes(
    cfg: &mut Config,
    tx: &crossbeam_channel::Sender<crate::sources::Batch>,
) -> anyhow::Result<Option<crate::k8s::Kubernetes>> {
    let Some(k) = cfg
        .kubernetes
        .clone()
        .filter(|_| cfg.source == control::config::SourceMode::Kubernetes)
    else {
        return Ok(None);
    };
    let kube = crate::k8s::Kubernetes::start(&k, &cfg.node.name, tx.clone())?;
    let view = kube.wait_synced(Duration::from_secs(u64::from(k.connect_timeout)))?;
    // The config's pods take the labels of their Pod objects.
    for p in &mut cfg.pods {
        if let Some(l) = view
            .local_labels
            .get(&format!("{}/{}", p.namespace, p.name))
            && *l != p.labels
        {
            eprintln!(
                "fastpath: kubernetes: pod {}/{} takes the labels of its Pod object: {l:?}",
                p.namespace, p.name
            );
            p.labels = l.clone();
        }
    }
    take_first_view(cfg, &view);
    eprintln!(
        "fastpath: kubernetes: {} other node(s), {} service(s), {} policy object(s) from {}",
        cfg.remote_nodes.len(),
        view.services.len(),
        cfg.cluster_policies.len(),
        k.api_server
    );
    Ok(Some(kube))
}

/// Apply the kvstore's view of the rest of the cluster (see `crate::cluster`). On a
/// failure the view is kept and tried again in a second.
fn apply_cluster(
    cfg: &mut Config,
    dp: &mut Datapath<Steering>,
    state: &crate::state::StateFile,
    view: crate::kvstore::schema::View,
    cx: &mut ClusterCx<'_>,
) {
    let src = cfg.source.name();
    let checked = crate::cluster::check(cfg, &view, &|ip| neigh::route_get(ip));
    let skipped = checked.problems.clone();
    for p in skipped.iter().filter(|p| !cx.state.skipped.contains(p)) {
        eprintln!("fastpath: {src}: skipped {p}");
    }
    cx.state.skipped = skipped;
    let next = crate::cluster::candidate(
        cfg,
        &view,
        checked.nodes.iter().map(|(n, _)| n.clone()).collect(),
    );
    match apply_cluster_steps(cfg, &next, &checked, dp, state, &view, cx) {
        Ok(()) => {
            let n = next.remote_nodes.len();
            let pods: usize = next.remote_nodes.iter().map(|r| r.pods.len()).sum();
            if cx.state.view.as_ref().is_none_or(|v| v.nodes != view.nodes) {
                eprintln!(
                    "fastpath: {src}: {n} other node(s), {pods} remote pod(s) in force (revision {})",
                    view.revision
                );
            }
            *cfg = next;
            cx.state.view = Some(view);
            cx.state.pending = None;
            cx.state.retry_at = None;
            cx.state.failing = None;
            cx.state.applied += 1;
        }
        Err(e) => {
            let msg = format!("{e:#}");
            // Said once per distinct error, not every second it is retried.
            if cx.state.failing.as_deref() != Some(msg.as_str()) {
                eprintln!(
                    "fastpath: {src}: revision {} not (fully) applied, retried every second: {msg}",
                    view.revision
                );
            }
            cx.state.failed += 1;
            cx.state.failing = Some(msg.clone());
            cx.state.last_error = Some(msg);
            cx.state.pending = Some(view);
            cx.state.retry_at = Some(Instant::now() + Duration::from_secs(1));
        }
    }
}

fn apply_cluster_steps(
    cfg: &Config,
    next: &Config,
    checked: &crate::cluster::Checked,
    dp: &mut Datapath<Steering>,
    state: &crate::state::StateFile,
    view: &crate::kvstore::schema::View,
    cx: &mut ClusterCx<'_>,
) -> anyhow::Result<()> {
    use control::datapath as d;
    // 1. Pods' and nodes' addresses: what is new or changed, then what is gone.
    let old4: BTreeMap<_, _> = d::node_ipcache(cfg).into_iter().collect();
    let new4: BTreeMap<_, _> = d::node_ipcache(next).into_iter().collect();
    let up4: Vec<_> = new4
        .iter()
        .filter(|(p, e)| old4.get(*p) != Some(*e))
        .map(|(p, e)| (*p, *e))
        .collect();
    // 2. The identities accepted from the overlay and the routes first, so that a new
    //    pod's identity is accepted before its address is known.
    let ports: Vec<control::tables::Port> = dp.tables().ports.iter().flatten().cloned().collect();
    // The new config's, and those run-time pods brought (not the old config's).
    let was = d::accepted_identities(cfg);
    let mut accepted = d::accepted_identities(next);
    accepted.extend(
        dp.tables()
            .identities
            .iter()
            .filter(|id| was.binary_search(id).is_err()),
    );
    dp.set_overlay(
        d::node_overlay(next, &ports),
        next.datapath.native_routing_cidr,
        &d::datapath_routes(next),
        accepted,
    )
    .context("forwarding settings")?;
    if !up4.is_empty() {
        dp.upsert_ipcache(&up4).context("cilium_ipcache_v2")?;
    }
    // (A prefix already gone — removed by an earlier try of this view — is done.)
    for p in old4.keys().filter(|p| !new4.contains_key(*p)) {
        if dp.tables().ipcache.get(*p).is_some() {
            dp.remove_ipcache(*p).context("cilium_ipcache_v2")?;
        }
    }
    let old6: BTreeMap<_, _> = d::node_ipcache6(cfg).into_iter().collect();
    let new6: BTreeMap<_, _> = d::node_ipcache6(next).into_iter().collect();
    let up6: Vec<_> = new6
        .iter()
        .filter(|(p, e)| old6.get(*p) != Some(*e))
        .map(|(p, e)| (*p, *e))
        .collect();
    if !up6.is_empty() {
        dp.upsert_ipcache_of::<control::net::V6>(&up6)
            .context("cilium_ipcache_v2 (IPv6)")?;
    }
    for p in old6.keys().filter(|p| !new6.contains_key(*p)) {
        if dp.tables().ipcache6.get(*p).is_some() {
            dp.remove_ipcache_of::<control::net::V6>(*p)
                .context("cilium_ipcache_v2 (IPv6)")?;
        }
    }
    // 3. Policy, recompiled for the cluster's identities (this node's run-time pods'
    //    labels are kept by the datapath).
    let labels = next.identity_labels();
    if labels != cfg.identity_labels() || next.cluster_policies != cfg.cluster_policies {
        dp.set_cluster_identity_labels(labels);
        let ps = state.state.policies_over(next).context("policy")?;
        dp.set_policies(&ps).context("policy")?;
    }
    // 4. Services: this node's own, then the store's.
    let want = crate::cluster::services(state.state.services_over(next), Some(view));
    let have = dp.services();
    if serde_json::to_string(&want).ok() != serde_json::to_string(&have).ok()
        && let Err(e) = dp.set_services(&want, &next.lb_settings())
    {
        // The store's services conflict with each other or with this node's (each one
        // alone passed its checks when the view was made): this node's own stay in
        // force, and the conflict is reported until the store changes.
        let own = state.state.services_over(next);
        dp.set_services(&own, &next.lb_settings())
            .context("services")?;
        eprintln!(
            "fastpath: {}: the cluster's services are not in force, only this node's: {e}",
            next.source.name()
        );
        cx.state.last_error = Some(format!("the cluster's services: {e}"));
    }
    // 5. Next hops, guard rules, kernel routes (native routing).
    cx.devs.nexthops.set_nodes(
        &checked
            .nodes
            .iter()
            .map(|(n, via)| (n.ip, *via, n.overlay_mac))
            .collect::<Vec<_>>(),
        dp,
    );
    let runtime = cx.endpoints.runtime();
    crate::guard::sync(&crate::guard::wanted(
        next,
        next.pods.iter().chain(runtime.iter().map(|(p, _)| p)),
    ))
    .context("guard rules")?;
    cx.routes
        .sync(
            &d::node_routes(next),
            next.node.underlay.as_ref().map(|u| u.device.as_str()),
        )
        .context("kernel routes")?;
    Ok(())
}

/// Kernel routes fastpath installed (native routing): (prefix, gateway), removed again on
/// exit.
struct KernelRoutes(Vec<(String, String)>);

impl KernelRoutes {
    /// Make the installed routes `routes`: new ones added (or replaced), gone ones deleted.
    fn sync(
        &mut self,
        routes: &[(control::net::Ipv4Cidr, std::net::Ipv4Addr)],
        dev: Option<&str>,
    ) -> anyhow::Result<()> {
        let Some(dev) = dev else {
            return Ok(());
        };
        // New or changed routes, one at a time: each that succeeds is recorded (so a
        // failure half-way removes nothing that is in place), then the gone ones.
        for (p, gw) in routes {
            let entry = (p.to_string(), gw.to_string());
            if self.0.contains(&entry) {
                continue;
            }
            let out = std::process::Command::new("ip")
                .args([
                    "route",
                    "replace",
                    &p.to_string(),
                    "via",
                    &gw.to_string(),
                    "dev",
                    dev,
                ])
                .output()
                .context("running `ip` (iproute2)")?;
            if !out.status.success() {
                bail!(
                    "installing the kernel route {p} via {gw} dev {dev}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            self.0.retain(|(q, _)| *q != entry.0);
            self.0.push(entry);
        }
        let want: Vec<(String, String)> = routes
            .iter()
            .map(|(p, gw)| (p.to_string(), gw.to_string()))
            .collect();
        for (p, _) in self.0.iter().filter(|e| !want.contains(e)) {
            let _ = std::process::Command::new("ip")
                .args(["route", "del", p])
                .output();
        }
        self.0 = want;
        Ok(())
    }

    /// Install `routes` (at start): on a failure, those installed are removed again.
    fn install(
        routes: &[(control::net::Ipv4Cidr, std::net::Ipv4Addr)],
        dev: Option<&str>,
    ) -> anyhow::Result<KernelRoutes> {
        let mut done = KernelRoutes(Vec::new());
        done.sync(routes, dev)?;
        Ok(done)
    }
}

impl Drop for KernelRoutes {
    fn drop(&mut self) {
        for (p, _) in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["route", "del", p])
                .output();
        }
    }
}

/// A node address the workers forward to, and how it is reached.
#[derive(Debug, Clone)]
struct NextHopTarget {
    ip: std::net::Ipv4Addr,
    /// Whose MAC the frames need (a router, or `ip` itself).
    via: std::net::Ipv4Addr,
    inner_dst_mac: Option<MacAddr>,
}

/// The device every next hop is reached through.
struct Underlay {
    port: PortId,
    dev: String,
    ifindex: u32,
    mac: MacAddr,
}

/// Keeps the workers' next-hop table in step with the kernel's neighbour table.
struct NextHops {
    underlay: Option<Underlay>,
    targets: Vec<NextHopTarget>,
    /// Last state seen per target (for status), in target order.
    seen: Vec<neigh::Neighbour>,
    last: Instant,
    /// The neighbour table's netlink socket (opened by `start`).
    table: Option<neigh::NeighTable>,
    read_failing: bool,
    /// Per target: when it may be asked for again while missing or FAILED, and the wait
    /// after that (doubling from 1 s to 30 s; back to 1 s once it resolves).
    probes: Vec<(Instant, Duration)>,
}

/// The longest wait between two re-probes of a next hop that does not resolve.
const REPROBE_MAX: Duration = Duration::from_secs(30);

/// How often the neighbour table is re-read.
const NEIGH_REFRESH: Duration = Duration::from_secs(1);
/// Conntrack/affinity garbage collection period (Cilium adapts its interval; a fixed short
/// one keeps terminating backends from lingering long after their last connection).
const GC_INTERVAL: Duration = Duration::from_secs(2);

impl NextHops {
    /// Next hops through the underlay port (none without an underlay).
    fn new(underlay: Option<(PortId, &Port)>) -> Self {
        NextHops {
            underlay: underlay.map(|(id, p)| Underlay {
                port: id,
                dev: p.ifname.clone(),
                ifindex: p.ifindex,
                mac: p.mac,
            }),
            targets: Vec::new(),
            seen: Vec::new(),
            last: Instant::now(),
            table: None,
            read_failing: false,
            probes: Vec::new(),
        }
    }

    /// The targets become `nodes` (address, next hop, inner MAC): new ones are asked for,
    /// gone ones forgotten (their entry removed from the workers' table), then the
    /// neighbour table is read.
    fn set_nodes(
        &mut self,
        nodes: &[(std::net::Ipv4Addr, std::net::Ipv4Addr, Option<MacAddr>)],
        dp: &mut Datapath<Steering>,
    ) {
        let Some(dev) = self.underlay.as_ref().map(|u| u.dev.clone()) else {
            return;
        };
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.targets.len() {
            let t = &self.targets[i];
            if nodes
                .iter()
                .any(|(ip, via, m)| *ip == t.ip && *via == t.via && *m == t.inner_dst_mac)
            {
                i += 1;
                continue;
            }
            gone.push((t.ip.octets(), None));
            self.targets.remove(i);
            self.seen.remove(i);
            self.probes.remove(i);
        }
        let mut added = false;
        for (ip, via, m) in nodes {
            if self.targets.iter().any(|t| t.ip == *ip) {
                continue;
            }
            if let Err(e) = neigh::ensure_managed(*via, &dev) {
                eprintln!("fastpath: next hop {via} (for {ip}): {e:#}");
            }
            self.add(*ip, *via, *m);
            added = true;
        }
        gone.retain(|(ip, _)| !self.targets.iter().any(|t| t.ip.octets() == *ip));
        if !gone.is_empty() {
            dp.set_nexthops(&gone);
        }
        if added {
            if self.table.is_none() {
                self.table = neigh::NeighTable::open().ok();
            }
            self.refresh(dp);
        }
    }

    fn add(&mut self, ip: std::net::Ipv4Addr, via: std::net::Ipv4Addr, inner: Option<MacAddr>) {
        self.targets.push(NextHopTarget {
            ip,
            via,
            inner_dst_mac: inner,
        });
        self.seen.push(neigh::Neighbour {
            mac: None,
            state: "unknown".into(),
        });
        self.probes.push((Instant::now(), NEIGH_REFRESH));
    }

    /// Ask the kernel to resolve every next hop and wait up to 2 s for them; publish what
    /// resolved. An unresolved one is not fatal (that node may be down): its frames are
    /// dropped with "FIB lookup failed" until it resolves.
    fn start(&mut self, dp: &mut Datapath<Steering>) -> anyhow::Result<()> {
        let Some(u) = &self.underlay else {
            return Ok(());
        };
        for t in &self.targets {
            neigh::ensure_managed(t.via, &u.dev)?;
        }
        self.table = Some(neigh::NeighTable::open()?);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            self.refresh(dp);
            if self.seen.iter().all(|n| n.usable().is_some()) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for (t, n) in self.targets.iter().zip(&self.seen) {
            if n.usable().is_none() {
                eprintln!(
                    "fastpath: next hop {} (for {}) is not resolved yet ({}); frames to it are dropped until it is",
                    t.via, t.ip, n.state
                );
            }
        }
        Ok(())
    }

    /// Re-read the neighbour table if it is time.
    fn tick(&mut self, dp: &mut Datapath<Steering>) {
        if self.targets.is_empty() || self.last.elapsed() < NEIGH_REFRESH {
            return;
        }
        self.refresh(dp);
    }

    /// One read of the underlay's neighbour table; publish what changed.
    fn refresh(&mut self, dp: &mut Datapath<Steering>) {
        self.last = Instant::now();
        let (Some(u), Some(nt)) = (&self.underlay, &mut self.table) else {
            return;
        };
        let table = match nt.neighbours(u.ifindex) {
            Ok(t) => t,
            Err(e) => {
                // Keep what the workers have (a failed read is not a flushed table); the
                // next refresh tries again. Said once per run of failures.
                if !self.read_failing {
                    eprintln!(
                        "fastpath: reading the neighbour table: {e:#} (retried every {NEIGH_REFRESH:?})"
                    );
                }
                self.read_failing = true;
                return;
            }
        };
        if self.read_failing {
            eprintln!("fastpath: the neighbour table reads again");
            self.read_failing = false;
        }
        let mut changes = Vec::with_capacity(self.targets.len());
        let now = Instant::now();
        for ((t, seen), probe) in self
            .targets
            .iter()
            .zip(&mut self.seen)
            .zip(&mut self.probes)
        {
            // Asking again runs `ip`: at most once per backoff period per target.
            let mut ask = |f: &dyn Fn() -> anyhow::Result<()>| {
                if now >= probe.0 {
                    let _ = f();
                    probe.0 = now + probe.1;
                    probe.1 = (probe.1 * 2).min(REPROBE_MAX);
                }
            };
            let n = match table.iter().find(|(ip, _)| *ip == t.via) {
                Some((_, n)) => {
                    if n.state.contains("FAILED") {
                        // The peer did not answer (down, or not up yet): probe again.
                        ask(&|| neigh::reprobe(t.via, &u.dev));
                    }
                    n.clone()
                }
                None => {
                    // Flushed or garbage-collected: ask again.
                    ask(&|| neigh::ensure_managed(t.via, &u.dev));
                    neigh::Neighbour {
                        mac: None,
                        state: "none".into(),
                    }
                }
            };
            if n.usable().is_some() {
                *probe = (now, NEIGH_REFRESH);
            }
            changes.push((
                t.ip.octets(),
                n.usable().map(|mac| NextHop {
                    port: u.port,
                    src_mac: u.mac,
                    dst_mac: mac,
                    inner_dst_mac: t.inner_dst_mac,
                }),
            ));
            *seen = n;
        }
        dp.set_nexthops(&changes);
    }

    fn status(&self) -> Vec<NextHopStatus> {
        self.targets
            .iter()
            .zip(&self.seen)
            .map(|(t, n)| NextHopStatus {
                ip: t.ip.to_string(),
                via: t.via.to_string(),
                mac: n.mac.map(|m| m.to_string()),
                state: n.state.clone(),
            })
            .collect()
    }
}
