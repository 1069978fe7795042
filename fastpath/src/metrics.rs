//! The one counter model: every counter source of a running node — the workers'
//! single-writer counters and gauges, the AF_XDP sockets' kernel statistics, the XDP
//! program's per-CPU counters, the policy verdict counters, the control socket's and the
//! endpoint lifecycle's — walked once into one [`Status`] snapshot. `fastpath status`
//! (JSON, or text rendered by [`crate::views`]) renders it; a Prometheus exporter and
//! flow events are meant to render the same snapshot, not walk the sources again.

use control::config::Config;
use control::datapath::Datapath;
use control::maps::DropReason;
use xdp_redirect::{Steering, XDP_STAT_NAMES};

use crate::api::{
    DeviceStatus, Metric, NextHopStatus, OverlayStatus, PortStatus, Status, WorkerStatus,
};
use crate::server::ServerStats;
use crate::stats::WorkerCounters;
use crate::worker::SocketInfo;
use crate::xsk;

/// One worker's counters and its live sockets.
#[derive(Debug)]
pub struct WorkerSource<'a> {
    pub queue: u32,
    pub core: Option<usize>,
    pub counters: &'a WorkerCounters,
    pub sockets: &'a [SocketInfo],
}

/// Everything a snapshot reads.
#[derive(Debug)]
pub struct Sources<'a> {
    pub cfg: &'a Config,
    pub dp: &'a Datapath<Steering>,
    pub workers: Vec<WorkerSource<'a>>,
    pub nexthops: Vec<NextHopStatus>,
    pub socket_mode: &'a str,
    pub bare: bool,
    pub uptime_secs: u64,
    pub server: ServerStats,
    pub endpoints: &'a crate::endpoints::Endpoints,
}

/// One `cilium_metrics` row: reason 0 is "Forwarded", the others Cilium's names.
fn metric(code: u8, direction: &str, packets: u64, bytes: u64) -> Metric {
    Metric {
        reason_code: code,
        reason: if code == 0 {
            "Forwarded".into()
        } else {
            DropReason::from_code(code).map_or(format!("unknown ({code})"), |r| r.name().into())
        },
        direction: direction.into(),
        packets,
        bytes,
    }
}

/// The tc datapath's `cilium_policystats` rows with the policy entry each names (found
/// through the endpoint's key index). A row whose entry is gone (the policy changed since)
/// is left out.
pub fn tc_policy_entries<'t>(
    t: &'t control::tables::Tables,
    stats: &[xdp_redirect::TcPolicyStat],
) -> Vec<(u16, &'t control::policy::table::MapEntry, u64, u64)> {
    stats
        .iter()
        .filter_map(|s| {
            let ep = t.policy.endpoints.get(&s.endpoint)?;
            let e = ep.entry(s.identity, s.egress, s.prefix_len, s.protocol, s.dport)?;
            Some((s.endpoint, e, s.packets, s.bytes))
        })
        .collect()
}

/// Walk every source once.
pub fn snapshot(src: &Sources<'_>) -> Status {
    let cfg: &Config = src.cfg;
    let dp: &Datapath<Steering> = src.dp;
    let tables = dp.tables();
    let socket_mode: &str = src.socket_mode;
    let steering = dp.kernel_ref();
    let devices = steering
        .devices()
        .iter()
        .map(|d| DeviceStatus {
            ifname: d.ifname.clone(),
            ifindex: d.ifindex,
            datapath: d.mode.datapath().to_string(),
            xdp_mode: d.mode.name().into(),
            fallback_reason: d.fallback_reason.clone(),
            socket_mode: socket_mode.into(),
        })
        .collect();
    let xdp = steering
        .stats()
        .map(|s| {
            XDP_STAT_NAMES
                .iter()
                .zip(s)
                .map(|(n, v)| (n.to_string(), v))
                .collect()
        })
        .unwrap_or_default();
    let workers = src
        .workers
        .iter()
        .map(|h| {
            let c = h.counters;
            WorkerStatus {
                queue: h.queue,
                core: h.core,
                ports: tables
                    .ports
                    .iter()
                    .zip(&c.ports)
                    .enumerate()
                    .filter_map(|(i, (p, pc))| p.as_ref().map(|p| (i, (p, pc))))
                    .map(|(i, (p, pc))| {
                        let mine: Vec<&crate::worker::SocketInfo> =
                            h.sockets.iter().filter(|s| s.port as usize == i).collect();
                        PortStatus {
                            ifname: p.ifname.clone(),
                            rx_queues: mine.iter().map(|s| s.queue).collect(),
                            rx_packets: pc.rx_packets.get(),
                            rx_bytes: pc.rx_bytes.get(),
                            tx_packets: pc.tx_packets.get(),
                            tx_bytes: pc.tx_bytes.get(),
                            tx_ring_full: pc.tx_ring_full.get(),
                            tx_kicks: pc.tx_kicks.get(),
                            xsk: mine
                                .iter()
                                .map(|s| xsk::stats_of(s.fd).unwrap_or_default())
                                .fold(xsk::XskStats::default(), |a, b| a.add(&b)),
                        }
                    })
                    .collect(),
                metrics: c
                    .metrics()
                    .into_iter()
                    .map(|(code, dir, packets, bytes)| metric(code, dir.name(), packets, bytes))
                    .collect(),
                arp_replies: c.arp_replies.get(),
                loops: c.loops.get(),
                idle_loops: c.idle_loops.get(),
                sleeps: c.sleeps.get(),
                batch_hist: c.batch_hist.iter().map(|b| b.get()).collect(),
                loop_hist: c.loop_hist.iter().map(|b| b.get()).collect(),
                longest_loop_ns: c.longest_loop_ns.get(),
                table_switches: c.table_switches.get(),
                encapsulated: c.encapsulated.get(),
                decapsulated: c.decapsulated.get(),
                routed: c.routed.get(),
                icmp_errors: c.icmp_errors.get(),
                sockets: c.sockets.get(),
                umem_frames: c.umem_frames.get(),
                umem_free: c.umem_free.get(),
                umem_in_rings: c.umem_in_rings.get(),
                frames_reclaimed: c.frames_reclaimed.get(),
            }
        })
        .collect();
    let list = src.endpoints.list();
    Status {
        endpoints: crate::api::EndpointsStatus {
            served: list.len(),
            runtime: list
                .iter()
                .filter(|r| r.source != crate::endpoints::Source::Config)
                .count(),
            max_pods: cfg.max_pods(),
            pending: src.endpoints.pending(),
            added: src.endpoints.added,
            deleted: src.endpoints.deleted,
            failed: src.endpoints.failed,
            xsk_entries: steering.xsk_entries(),
            attached: steering.devices().len(),
        },
        control_socket: src.server,
        node: cfg.node.name.clone(),
        netns: cfg.node.netns.clone(),
        pid: std::process::id(),
        uptime_secs: src.uptime_secs,
        xdp_mode_requested: cfg.datapath.xdp_mode.to_string(),
        poll: format!("{:?}", cfg.datapath.poll).to_lowercase(),
        bare: src.bare,
        devices,
        workers,
        xdp,
        tc: steering
            .tc_stats()
            .and_then(|r| r.ok())
            .map(|t| crate::api::TcStatus {
                counters: xdp_redirect::TC_STAT_NAMES
                    .iter()
                    .zip(t.counters)
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
                metrics: t
                    .metrics
                    .into_iter()
                    .map(|(code, dir, packets, bytes)| Metric {
                        reason_code: code,
                        reason: if code == 0 {
                            "Forwarded".into()
                        } else {
                            DropReason::from_code(code)
                                .map_or(format!("unknown ({code})"), |r| r.name().into())
                        },
                        direction: match dir {
                            1 => "ingress",
                            2 => "egress",
                            _ => "service",
                        }
                        .into(),
                        packets,
                        bytes,
                    })
                    .collect(),
            }),
        table_generation: dp.tables().generation,
        policy: {
            use control::policy::table::*;
            let t = dp.tables();
            let st = &t.policy_stats;
            let eps = t.policy.endpoints.values();
            // The tc datapath's verdicts: allowed ones from its per-entry counters, denied
            // ones from its drop metrics (133 no entry allows, 181 a deny entry).
            let (mut allowed, mut denied) = ([0u64; 2], [0u64; 2]);
            if let Some(Ok(tc)) = steering.tc_stats() {
                for (_, e, p, _) in tc_policy_entries(&t, &tc.policy) {
                    if !e.entry.is_deny() {
                        allowed[usize::from(e.key.is_egress())] += p;
                    }
                }
                for (code, dir, p, _) in tc.metrics {
                    if (code == 133 || code == 181) && (dir == 1 || dir == 2) {
                        denied[usize::from(dir == 2)] += p;
                    }
                }
            }
            crate::api::PolicyStatus {
                policies: dp.policies().len(),
                enforced_ingress: eps.clone().filter(|e| e.enforced[0]).count(),
                enforced_egress: eps.filter(|e| e.enforced[1]).count(),
                allowed_ingress: st.get(STAT_ALLOWED_INGRESS).0 + allowed[0],
                allowed_egress: st.get(STAT_ALLOWED_EGRESS).0 + allowed[1],
                denied_ingress: st.get(STAT_DENIED_INGRESS).0 + denied[0],
                denied_egress: st.get(STAT_DENIED_EGRESS).0 + denied[1],
            }
        },
        overlay: cfg.node.underlay.as_ref().map(|u| {
            let t = dp.tables();
            OverlayStatus {
                mode: cfg.datapath.routing.to_string(),
                underlay: u.device.clone(),
                node_ip: u.address.to_string(),
                mtu: t.overlay.underlay_mtu,
                tunnel_port: cfg.datapath.tunnel_port,
                ipcache_entries: t.ipcache.len(),
                nexthops: src.nexthops.clone(),
            }
        }),
        source: Default::default(),
    }
}
