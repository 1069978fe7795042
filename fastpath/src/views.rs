//! Every text rendering of the control socket's answers — `fastpath status` and the
//! cilium-dbg-style listings (`bpf endpoint|ipcache|tunnel|lb|ct|policy`, `endpoint list`,
//! `policy list`) — in one place, on the server side: the CLI asks for text with the
//! `text` request (`{"cmd":"text","of":{…}}`) and prints it; JSON clients get the data.

use crate::api::{Metric, PolicyDump, Request, Response, Status, WorkerStatus};

/// The text of `resp`, the answer to `req` (`numeric`: identities as numbers in policy
/// dumps). `None` for an answer that has no listing form.
pub fn render(req: &Request, resp: &Response, numeric: bool) -> Option<String> {
    use crate::api::LbView;
    Some(match (req, resp) {
        (_, Response::Status(st)) => status(st),
        (_, Response::EndpointList { entries }) => render_endpoint_list(entries),
        (_, Response::IpcacheList { entries }) => {
            render_table("IP PREFIX/ADDRESS", "IDENTITY", entries)
        }
        (_, Response::TunnelList { entries }) => render_table("TUNNEL", "VALUE", entries),
        (Request::LbList { view }, Response::LbList { entries }) => {
            let (h1, h2) = match view {
                LbView::Frontends => ("SERVICE ADDRESS", "BACKEND ID"),
                LbView::Backends => ("ID", "BACKEND ADDRESS"),
                LbView::Revnat => ("ID", "BACKEND ADDRESS"),
                LbView::Maglev => ("SVC ID", "LOOKUP TABLE"),
                LbView::Services => ("SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"),
            };
            render_table(h1, h2, entries)
        }
        (_, Response::CtList { entries, .. }) => {
            let mut s = String::new();
            for r in entries {
                s += &r.line;
                s.push('\n');
            }
            s
        }
        (_, Response::PolicyGet { endpoints }) => {
            let mut s = String::new();
            for (i, d) in endpoints.iter().enumerate() {
                if endpoints.len() > 1 {
                    if i > 0 {
                        s.push('\n');
                    }
                    s += &format!("Endpoint {} ({}):\n", d.endpoint, d.map);
                }
                s += &render_policy(d, numeric);
            }
            s
        }
        (_, Response::Identities { identities }) => {
            // `cilium-dbg identity list`: ID, then one label per row.
            let e: Vec<(String, String)> = identities
                .iter()
                .flat_map(|i| i.labels.iter().map(move |l| (i.id.to_string(), l.clone())))
                .collect();
            render_table("ID", "LABELS", &e)
        }
        (_, Response::PolicyList { policies }) => {
            let e: Vec<(String, String)> = policies
                .iter()
                .map(|p| {
                    let dd = match p.default_deny {
                        [true, true] => "ingress+egress",
                        [true, false] => "ingress",
                        [false, true] => "egress",
                        [false, false] => "none",
                    };
                    (
                        p.id.clone(),
                        format!(
                            "endpoints {:?}, {} ingress / {} egress rules, default deny: {dd}",
                            p.selects, p.ingress_rules, p.egress_rules
                        ),
                    )
                })
                .collect();
            render_table("POLICY", "SELECTS", &e)
        }
        (_, Response::Endpoints { endpoints, .. }) => render_endpoints(endpoints),
        _ => return None,
    })
}

/// `fastpath status` as text.
/// The `Source:` lines of `fastpath status`: `file`, or the kvstore's state.
pub fn source_lines(src: &crate::api::SourceStatus) -> String {
    let mut s = String::new();
    if let Some(k) = &src.kubernetes {
        s += &format!(
            "Source:    kubernetes {}: {}; {} other node(s) with {} pod(s), {} service(s), {} policy object(s)\n",
            k.api_server,
            if k.connected {
                "listed and watching".to_string()
            } else if k.kinds.iter().all(|w| w.synced) {
                format!(
                    "RETRYING since an error {} s ago (what is in force stays)",
                    k.last_error_secs.unwrap_or(0)
                )
            } else {
                "NOT SYNCED".to_string()
            },
            k.nodes,
            k.remote_pods,
            k.services,
            k.policies
        );
        let kinds: Vec<String> = k
            .kinds
            .iter()
            .map(|w| {
                format!(
                    "{} {}{}{}",
                    w.kind,
                    w.objects,
                    if w.not_served {
                        " (not served)"
                    } else if w.synced {
                        ""
                    } else {
                        " (listing)"
                    },
                    if w.relists > 0 {
                        format!(" {} relists", w.relists)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        s += &format!("  objects: {}\n", kinds.join(", "));
        s += &format!(
            "  applied: {} view(s), {} failed; {} remote node(s) in force\n",
            src.views_applied, src.views_failed, src.remote_nodes
        );
        if let Some(e) = &k.last_error {
            s += &format!("  last API error ({} in all): {e}\n", k.errors);
        }
        if let Some(e) = &src.last_error {
            s += &format!("  last apply error: {e}\n");
        }
        for p in k.problems.iter().chain(&src.skipped) {
            s += &format!("  skipped: {p}\n");
        }
        return s;
    }
    let Some(k) = &src.kvstore else {
        if !src.mode.is_empty() {
            s += &format!(
                "Source:    {} (remote nodes from the config file)\n",
                src.mode
            );
        }
        return s;
    };
    s += &format!(
        "Source:    kvstore etcd {} cluster {}: {}, revision {}, lease {:x} ({} s), session {}\n",
        k.endpoints.join(","),
        k.cluster,
        if k.connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
        k.revision,
        k.lease_id,
        k.lease_ttl,
        k.sessions
    );
    s += &format!(
        "  store:   {} keys, {} published by this node; {} other node(s) with {} pod(s), {} identities, {} service(s)\n",
        k.keys, k.published, k.nodes, k.remote_pods, k.identities, k.services
    );
    s += &format!(
        "  applied: {} view(s), {} failed; {} remote node(s) in force; {} watch events, {} resyncs, {} allocations, {} identities collected\n",
        src.views_applied,
        src.views_failed,
        src.remote_nodes,
        k.watch_events,
        k.resyncs,
        k.allocations,
        k.identities_collected
    );
    if let Some(e) = &k.last_error {
        s += &format!("  last etcd error ({} in all): {e}\n", k.errors);
    }
    if let Some(e) = &src.last_error {
        s += &format!("  last apply error: {e}\n");
    }
    for p in k.problems.iter().chain(&src.skipped) {
        s += &format!("  skipped: {p}\n");
    }
    s
}

pub fn status(st: &Status) -> String {
    let this = st;
    let mut s = String::new();
    let ns = this
        .netns
        .as_deref()
        .map(|n| format!(" (netns {n})"))
        .unwrap_or_default();
    s += &format!(
        "Node:      {}{ns}, pid {}, up {}s\n",
        this.node, this.pid, this.uptime_secs
    );
    s += &source_lines(&this.source);
    s += &format!(
        "Workers:   {} (poll {}{}), tables generation {}\n",
        this.workers.len(),
        this.poll,
        if this.bare {
            ", BARE forwarding: pipeline skipped"
        } else {
            ""
        },
        this.table_generation
    );
    s += &format!(
        "Devices:   XDP requested {}; datapath per device (xdp: steered to the workers, tc: the in-kernel tc datapath)\n",
        this.xdp_mode_requested
    );
    for d in &this.devices {
        let how = if d.datapath == "tc" {
            "tc".to_string()
        } else {
            format!("xdp {}", d.xdp_mode)
        };
        s += &format!(
            "  {:<15} ifindex {:<4} {:<12} af_xdp {}",
            d.ifname, d.ifindex, how, d.socket_mode
        );
        if let Some(r) = &d.fallback_reason {
            let failed = if d.datapath == "tc" { "XDP" } else { "native" };
            s += &format!("  ({failed} failed: {r})");
        }
        s.push('\n');
    }
    let p = &this.policy;
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
    let c = &this.control_socket;
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
    let e = &this.endpoints;
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
    for w in &this.workers {
        s += &format!(
            "  worker {}: {} sockets; UMEM {} chunks, {} free, {} on fill/TX rings, {} reclaimed from closed sockets\n",
            w.queue, w.sockets, w.umem_frames, w.umem_free, w.umem_in_rings, w.frames_reclaimed
        );
    }
    if let Some(o) = &this.overlay {
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
    s += &this
        .xdp
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    s += "\n";
    match &this.tc {
        Some(t) => {
            s += "tc datapath: ";
            s += &t
                .counters
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            s += "\n";
            for m in &t.metrics {
                s += &format!(
                    "  {:<8} {:<40} {:>12} packets {:>14} bytes\n",
                    m.direction,
                    if m.reason_code == 0 {
                        m.reason.clone()
                    } else {
                        format!("{} ({})", m.reason, m.reason_code)
                    },
                    m.packets,
                    m.bytes
                );
            }
        }
        None => s += "tc datapath: not loaded\n",
    }
    s += "\n";
    s += &format!(
        "{:<6}{:<6}{:<16}{:<8}{:>12}{:>14}{:>12}{:>14}{:>9}{:>9}{:>11}{:>9}\n",
        "QUEUE",
        "CORE",
        "DEVICE",
        "RXQS",
        "RX_PKTS",
        "RX_BYTES",
        "TX_PKTS",
        "TX_BYTES",
        "TX_FULL",
        "RX_FULL",
        "FILL_EMPTY",
        "XSK_DROP"
    );
    for w in &this.workers {
        let core = w.core.map_or("-".into(), |c| c.to_string());
        for p in &w.ports {
            let rxqs: Vec<String> = p.rx_queues.iter().map(|q| q.to_string()).collect();
            // The drops of the I/O stages, in order: our TX ring was full (fastpath's
            // counter); the kernel's XDP_STATISTICS of the device's sockets: RX ring full (the
            // worker did not keep up), fill ring found empty (no chunk to receive into), and
            // every frame the kernel dropped at the socket.
            s += &format!(
                "{:<6}{:<6}{:<16}{:<8}{:>12}{:>14}{:>12}{:>14}{:>9}{:>9}{:>11}{:>9}\n",
                w.queue,
                core,
                p.ifname,
                rxqs.join(","),
                p.rx_packets,
                p.rx_bytes,
                p.tx_packets,
                p.tx_bytes,
                p.tx_ring_full,
                p.xsk.rx_ring_full,
                p.xsk.rx_fill_ring_empty_descs,
                p.xsk.rx_dropped
            );
        }
    }
    s += &format!(
        "\n{:<6}{:>12}{:>12}{:>10}{:>10}{:>10}{:>10}{:>12}{:>8}{:>12}{:>10}{:>8}{:>12}  {}\n",
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
        "STALLS",
        "LONGEST_US",
        "RX BATCH (1,2-3,4-7,..,64+)"
    );
    for w in &this.workers {
        // Loops of 100 µs or more: the worker held frames that long (preempted, or a slow
        // kick); its rings absorb ring_size / rate of it.
        let stalls: u64 = w.loop_hist.iter().skip(2).sum();
        s += &format!(
            "{:<6}{:>12}{:>12}{:>10}{:>10}{:>10}{:>10}{:>12}{:>8}{:>12}{:>10}{:>8}{:>12}  {:?}\n",
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
            stalls,
            w.longest_loop_ns / 1000,
            w.batch_hist
        );
    }
    let drops: Vec<(&WorkerStatus, &Metric)> = this
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

/// `fastpath endpoint list` as text: one row per endpoint, like `cilium-dbg endpoint list`.
pub fn render_endpoints(rows: &[crate::endpoints::EndpointRow]) -> String {
    let mut s = format!(
        "{:<10}{:<10}{:<40}{:<16}{:<26}{:<18}{:<16}{:<8}{}\n",
        "ENDPOINT", "IDENTITY", "POD", "IPv4", "IPv6", "MAC", "LXC", "SOURCE", "LABELS"
    );
    for r in rows {
        s += &format!(
            "{:<10}{:<10}{:<40}{:<16}{:<26}{:<18}{:<16}{:<8}{}\n",
            r.id,
            r.identity,
            format!("{}/{}", r.namespace, r.name),
            r.ipv4,
            r.ipv6.as_deref().unwrap_or("-"),
            r.mac,
            r.lxc,
            match r.source {
                crate::endpoints::Source::Config => "config",
                crate::endpoints::Source::Api => "api",
                crate::endpoints::Source::Cni => "cni",
            },
            r.labels.join(",")
        );
    }
    s
}
