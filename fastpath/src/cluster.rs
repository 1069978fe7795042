//! The rest of the cluster at run time (`source: kvstore`): what the kvstore agent
//! ([`crate::kvstore`]) sees, checked and turned into the node's config view, and what
//! this node publishes in return.
//!
//! The daemon applies a [`View`] in the control loop, step by step, each step all or
//! nothing as the same change through the control socket: `cilium_ipcache_v2` (what
//! changed, then what is gone), the forwarding settings (native routes, the identities
//! accepted from the overlay), policy recompiled for the new identities, services (this
//! node's own over the store's), next hops, guard rules and kernel routes. A step that
//! fails leaves the rest for the next try (the view is retried every second until it is
//! in force); a record that fails a check is reported with its key and skipped.

use std::collections::BTreeMap;
use std::net::IpAddr;

use control::config::{Config, RemoteNodeConfig};
use control::lb::ServiceConfig;

use crate::kvstore::schema::{self, GoIpNet, IpRecord, NodeAddress, NodeRecord, View};

/// A remote node the view brings, with the address its frames are sent to (the node, or
/// the gateway the kernel routes it through).
#[derive(Debug, Clone)]
pub struct Checked {
    pub nodes: Vec<(RemoteNodeConfig, std::net::Ipv4Addr)>,
    pub problems: Vec<String>,
}

/// The nodes of `view` this node can take: each passes the config's checks beside this
/// node's own config (pod CIDRs that do not overlap, pods inside their CIDR, unique
/// addresses) and is reached through the underlay (`route` says how). Others are
/// reported and left out.
pub fn check(
    cfg: &Config,
    view: &View,
    route: &dyn Fn(std::net::Ipv4Addr) -> anyhow::Result<crate::neigh::Route>,
) -> Checked {
    let mut problems = Vec::new();
    let underlay = cfg.node.underlay.as_ref().map(|u| u.device.clone());
    let mut nodes: Vec<(RemoteNodeConfig, std::net::Ipv4Addr)> = Vec::new();
    let native = cfg.datapath.routing == control::config::RoutingMode::Native;
    for n in &view.nodes {
        match route(n.ip) {
            Ok(r) if native && r.gateway.is_some() => problems.push(format!(
                "node {} ({}): reached through the gateway {}; native routing needs it on the underlay's link",
                n.name,
                n.ip,
                r.gateway.map(|g| g.to_string()).unwrap_or_default()
            )),
            Ok(r) if Some(&r.dev) == underlay.as_ref() => {
                nodes.push((n.clone(), r.neighbour(n.ip)))
            }
            Ok(r) => problems.push(format!(
                "node {} ({}): routed via `{}`, not the underlay",
                n.name, n.ip, r.dev
            )),
            Err(e) => problems.push(format!("node {} ({}): {e:#}", n.name, n.ip)),
        }
    }
    // The config's own checks, with the nodes as `remote_nodes`: a pod a problem names is
    // left out, a node a problem names (not one of its pods) is left out whole, and the
    // rest checked again (a problem between two nodes drops the later one first).
    for _ in 0..=nodes.iter().map(|(n, _)| n.pods.len() + 1).sum::<usize>() {
        let mut c = candidate(cfg, view, nodes.iter().map(|(n, _)| n.clone()).collect());
        c.source = control::config::SourceMode::File;
        c.kvstore = None;
        c.kubernetes = None;
        // (node, pod if the problem is one pod's, message)
        let bad: Vec<(usize, Option<usize>, String)> = c
            .validate()
            .into_iter()
            .filter_map(|p| {
                let rest = p.field.strip_prefix("remote_nodes[")?;
                let (i, rest) = rest.split_once(']')?;
                let i = i.parse::<usize>().ok()?;
                let j = rest
                    .strip_prefix(".pods[")
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(j, _)| j.parse::<usize>().ok());
                Some((i, j, format!("{}: {}", p.field, p.msg)))
            })
            .collect();
        let Some(worst) = bad.iter().map(|(i, _, _)| *i).max() else {
            break;
        };
        let here: Vec<&(usize, Option<usize>, String)> =
            bad.iter().filter(|(i, _, _)| *i == worst).collect();
        let name = nodes[worst].0.name.clone();
        for (_, _, msg) in &here {
            problems.push(format!(
                "node {name}: {}",
                msg.replacen(&format!("remote_nodes[{worst}]"), "", 1)
            ));
        }
        if here.iter().all(|(_, j, _)| j.is_some()) {
            // Only some of its pods are wrong: those are left out, the node stays.
            let mut js: Vec<usize> = here.iter().filter_map(|(_, j, _)| *j).collect();
            js.sort_unstable();
            js.dedup();
            for j in js.into_iter().rev() {
                if j < nodes[worst].0.pods.len() {
                    nodes[worst].0.pods.remove(j);
                }
            }
        } else {
            nodes.remove(worst);
        }
    }
    Checked { nodes, problems }
}

/// `cfg` with the view's nodes and identities.
pub fn candidate(cfg: &Config, view: &View, nodes: Vec<RemoteNodeConfig>) -> Config {
    let mut c = cfg.clone();
    c.remote_nodes = nodes;
    // The source's numbers; the label sets of this node's config pods keep theirs (given
    // at start, held by this node's slave keys). Nothing else of the old view is kept: a
    // number the source no longer has is gone.
    let mut allocated = view.allocated.clone();
    for p in &cfg.pods {
        let l = control::identity::pod_labels(&p.namespace, &p.labels);
        if let Some(id) = cfg.allocated.get(&l) {
            allocated.insert(l, *id);
        }
    }
    c.allocated = allocated;
    if let Some(p) = &view.policies {
        c.cluster_policies = p.clone();
    }
    c
}

/// The services in force: this node's own (`local`: its config's and those applied at
/// run time), then the store's that do not share a name with one of them.
pub fn services(local: Vec<ServiceConfig>, view: Option<&View>) -> Vec<ServiceConfig> {
    let mut out = local;
    if let Some(v) = view {
        let names: std::collections::BTreeSet<String> = out.iter().map(|s| s.id()).collect();
        out.extend(
            v.services
                .iter()
                .filter(|s| !names.contains(&s.id()))
                .cloned(),
        );
    }
    out
}

/// What this node publishes: its record, one address record per pod address (config
/// pods and `runtime` ones, with their identities), its own services and its pods'
/// identities.
pub fn own(
    cfg: &Config,
    runtime: &[(control::config::PodConfig, u32)],
    local_services: &[ServiceConfig],
) -> crate::kvstore::Own {
    let Some(k) = &cfg.kvstore else {
        return Default::default();
    };
    let mut out = crate::kvstore::Own::default();
    let Some(u) = &cfg.node.underlay else {
        return out;
    };
    let host = u.address.addr;
    let mut rec = NodeRecord {
        name: cfg.node.name.clone(),
        cluster: k.cluster.clone(),
        addresses: vec![
            NodeAddress {
                kind: "InternalIP".into(),
                ip: IpAddr::V4(host),
            },
            NodeAddress {
                kind: "CiliumInternalIP".into(),
                ip: IpAddr::V4(cfg.node.router_ip),
            },
        ],
        ipv4_alloc_cidr: cfg.node.pod_cidr.map(GoIpNet::v4),
        ipv6_alloc_cidr: cfg.node.pod_cidr_v6.map(GoIpNet::v6),
        annotations: BTreeMap::new(),
    };
    if let Some(m) = u.overlay_mac {
        rec.annotations
            .insert(schema::OVERLAY_MAC.into(), m.to_string());
    }
    out.keys.insert(
        schema::node_key(&k.cluster, &cfg.node.name),
        serde_json::to_string(&rec).expect("plain data"),
    );
    let (ids, _) = cfg.identities();
    let pods = cfg
        .pods
        .iter()
        .zip(ids)
        .chain(runtime.iter().map(|(p, id)| (p, *id)));
    for (p, id) in pods {
        let labels = control::identity::pod_labels(&p.namespace, &p.labels);
        out.identities.insert(labels, id);
        let addrs = std::iter::once(IpAddr::V4(p.ip)).chain(p.ipv6.map(IpAddr::V6));
        for a in addrs {
            let r = IpRecord {
                ip: a,
                mask: None,
                host_ip: host,
                id,
                key: 0,
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
            };
            out.keys.insert(
                schema::ip_key(&k.cluster, a),
                serde_json::to_string(&r).expect("plain data"),
            );
        }
    }
    for s in local_services {
        out.keys.insert(
            schema::service_key(&k.cluster, &s.namespace, &s.name),
            serde_json::to_string(s).expect("plain data"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(
            "node: { name: a, router_ip: 10.1.1.1, pod_cidr: 10.1.1.0/24, underlay: { device: eth1, address: 192.168.0.1/24 } }\n\
             pods: [ { name: w, ip: 10.1.1.11, mac: '0a:58:0a:01:01:0b', lxc: lxc-w, labels: { app: web } } ]\n\
             source: kvstore\nkvstore: { endpoints: ['http://192.168.0.250:2379'] }\n\
             services: [ { name: s, cluster_ip: 10.96.0.10, ports: [ { port: 80, target_port: 8080 } ], backends: [ { ip: 10.1.1.11 } ] } ]\n",
            "t",
        )
        .unwrap()
    }

    fn node(name: &str, ip: &str, cidr: &str) -> RemoteNodeConfig {
        RemoteNodeConfig {
            name: name.into(),
            ip: ip.parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
            pod_cidr_v6: None,
            overlay_mac: None,
            pods: vec![],
        }
    }

    fn on_underlay(_: std::net::Ipv4Addr) -> anyhow::Result<crate::neigh::Route> {
        Ok(crate::neigh::Route {
            dev: "eth1".into(),
            gateway: None,
        })
    }

    /// A node whose pod CIDR overlaps this node's, or another's, is left out and said
    /// why; the others are taken.
    #[test]
    fn overlapping_nodes_are_reported_and_skipped() {
        let v = View {
            nodes: vec![
                node("b", "192.168.0.2", "10.1.2.0/24"),
                node("c", "192.168.0.3", "10.1.1.0/24"),
                node("d", "192.168.0.4", "10.1.4.0/24"),
            ],
            ..Default::default()
        };
        let c = check(&cfg(), &v, &on_underlay);
        let names: Vec<&str> = c.nodes.iter().map(|(n, _)| n.name.as_str()).collect();
        assert_eq!(names, ["b", "d"], "{:?}", c.problems);
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
        assert!(c.problems[0].starts_with("node c: "), "{:?}", c.problems);
        let off = |_: std::net::Ipv4Addr| -> anyhow::Result<crate::neigh::Route> {
            Ok(crate::neigh::Route {
                dev: "eth0".into(),
                gateway: None,
            })
        };
        let c = check(&cfg(), &v, &off);
        assert!(c.nodes.is_empty());
        assert!(c.problems.iter().all(|p| p.contains("not the underlay")));
    }

    /// A remote pod outside its node's pod CIDR is left out, named; its node and its
    /// other pods stay.
    #[test]
    fn a_bad_pod_is_left_out_not_its_node() {
        let mut b = node("b", "192.168.0.2", "10.1.2.0/24");
        for (n, ip) in [("ok", "10.1.2.11"), ("stray", "10.9.9.9")] {
            b.pods.push(control::config::RemotePodConfig {
                name: n.into(),
                namespace: "default".into(),
                ip: ip.parse().unwrap(),
                ipv6: None,
                labels: Default::default(),
            });
        }
        let v = View {
            nodes: vec![b],
            ..Default::default()
        };
        let c = check(&cfg(), &v, &on_underlay);
        assert_eq!(c.nodes.len(), 1, "{:?}", c.problems);
        let pods: Vec<&str> = c.nodes[0].0.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pods, ["ok"]);
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
        assert!(
            c.problems[0].starts_with("node b: .pods[1]"),
            "{:?}",
            c.problems
        );
    }

    /// What a node publishes: its record (addresses, pod CIDR), its pod's address record
    /// with the identity, the pod's label set, and its service under its name.
    #[test]
    fn a_node_publishes_its_record_pods_and_services() {
        let c = cfg();
        let o = own(&c, &[], &c.services);
        let rec: NodeRecord =
            serde_json::from_str(&o.keys[&schema::node_key("default", "a")]).unwrap();
        assert_eq!(rec.internal_ip(), Some("192.168.0.1".parse().unwrap()));
        assert_eq!(
            rec.ipv4_alloc_cidr.unwrap().to_v4(),
            Some("10.1.1.0/24".parse().unwrap())
        );
        let ip: IpRecord =
            serde_json::from_str(&o.keys[&schema::ip_key("default", "10.1.1.11".parse().unwrap())])
                .unwrap();
        let id = c.identities().0[0];
        assert_eq!((ip.id, ip.pod.as_str()), (id, "w"));
        assert_eq!(o.identities.values().copied().collect::<Vec<_>>(), [id]);
        assert!(
            o.keys
                .contains_key(&schema::service_key("default", "default", "s"))
        );
        // Another node reading these keys sees this node with its pod.
        let kv = o
            .keys
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .chain(std::iter::once((
                schema::master_key(id),
                schema::label_key(o.identities.keys().next().unwrap()).into_bytes(),
            )))
            .collect();
        let v = schema::view(&kv, "default", "b", 1);
        assert_eq!(v.nodes.len(), 1, "{:?}", v.problems);
        assert_eq!(v.nodes[0].pods[0].labels["app"], "web");
        assert_eq!(v.services.len(), 1);
    }
}
