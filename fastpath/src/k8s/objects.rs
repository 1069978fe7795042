//! Kubernetes objects → the cluster view a node applies (`source: kubernetes`). Pure: the
//! watcher's caches in, a [`View`] out; unit-tested on k8s-openapi objects. The mapping is
//! documented in `docs/kubernetes.md`:
//!
//! | object | becomes |
//! |---|---|
//! | Node (not this one) | a remote node: `status.addresses` InternalIP, `spec.podCIDRs` |
//! | CiliumNode | its `spec.ipam.podCIDRs` and InternalIP win over its Node's; alone, a node |
//! | Pod (`spec.nodeName`, `status.podIPs`, labels) | a remote pod on its node; on this node, the labels of the endpoint of that name; every pod's labels feed identity allocation |
//! | Service + its EndpointSlices | a service: ClusterIP / NodePort, `externalIPs`, `sessionAffinity`, ready backends, terminating ones kept for their connections |
//! | NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy | policy objects, compiled as the file's |
//!
//! An object that cannot be read, or that fails the checks its table needs, is reported
//! with its kind, namespace and name and left out; the rest of the view is unaffected.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use control::config::{RemoteNodeConfig, RemotePodConfig};
use control::lb::{
    BackendConfig, BackendState, LbAlgorithm, Protocol, ServiceConfig, ServicePort, ServiceType,
    SessionAffinity,
};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::kvstore::schema::View;

/// The label EndpointSlices name their Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Cilium's per-service algorithm annotation.
pub const LB_ALGORITHM_ANNOTATION: &str = "service.cilium.io/lb-algorithm";
/// A node's overlay MAC (a Linux VXLAN peer), as the kvstore's node records carry it.
pub const OVERLAY_MAC_ANNOTATION: &str = "fastpath.io/overlay-mac";

/// What the watchers hold, by `namespace/name` (or `name` for cluster-scoped objects).
#[derive(Debug, Clone, Default)]
pub struct Caches {
    pub nodes: BTreeMap<String, Node>,
    pub pods: BTreeMap<String, Pod>,
    pub services: BTreeMap<String, Service>,
    pub slices: BTreeMap<String, EndpointSlice>,
    /// CiliumNode objects (`cilium.io/v2`, JSON), by name.
    pub cilium_nodes: BTreeMap<String, serde_json::Value>,
    /// NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy objects as the
    /// API server returned them (JSON), by `Kind/namespace/name`.
    pub policies: BTreeMap<String, serde_json::Value>,
    /// Objects that could not be decoded, by `Kind/namespace/name`, with why.
    pub undecodable: BTreeMap<String, String>,
}

fn key(ns: Option<&String>, name: Option<&String>) -> String {
    match ns {
        Some(ns) => format!("{ns}/{}", name.map_or("", String::as_str)),
        None => name.cloned().unwrap_or_default(),
    }
}

/// The view of the cluster for node `me`.
pub fn view(c: &Caches, me: &str, revision: i64) -> View {
    let mut v = View {
        revision,
        ..Default::default()
    };
    v.problems
        .extend(c.undecodable.iter().map(|(k, why)| format!("{k}: {why}")));
    // Nodes: a Node object, with its CiliumNode's pod CIDRs and addresses where there is
    // one (Cilium's cluster-pool IPAM writes them there); a CiliumNode alone is a node too.
    let mut nodes: BTreeMap<String, RemoteNodeConfig> = BTreeMap::new();
    let names: BTreeSet<&String> = c.nodes.keys().chain(c.cilium_nodes.keys()).collect();
    for name in names {
        if name == me {
            continue;
        }
        let r = match (c.nodes.get(name), c.cilium_nodes.get(name)) {
            (Some(n), cn) => node_with(n, cn),
            (None, Some(cn)) => cilium_node(name, cn),
            (None, None) => continue,
        };
        match r {
            Ok(r) => {
                nodes.insert(name.clone(), r);
            }
            Err(why) => {
                let kind = if c.nodes.contains_key(name) {
                    "Node"
                } else {
                    "CiliumNode"
                };
                v.problems.push(format!("{kind}/{name}: {why}"));
            }
        }
    }
    // Pods: every pod's label set gets an identity (the same numbers on every node: each
    // sees the same pods); pods of other nodes join their node.
    let mut sets: BTreeSet<Vec<String>> = BTreeSet::new();
    for (k, p) in &c.pods {
        let ns = p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let spec = p.spec.as_ref();
        if spec.and_then(|s| s.host_network).unwrap_or(false) {
            continue; // the node's own address: not an endpoint
        }
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        sets.insert(control::identity::pod_labels(&ns, &labels));
        let Some(on) = spec.and_then(|s| s.node_name.as_ref()) else {
            continue; // not scheduled yet
        };
        if on == me {
            v.local_labels
                .insert(k.clone(), p.metadata.labels.clone().unwrap_or_default());
            continue;
        }
        let Some(node) = nodes.get_mut(on) else {
            continue; // its node is not known (yet)
        };
        let ips: Vec<IpAddr> = p
            .status
            .as_ref()
            .map(|s| {
                s.pod_ips
                    .iter()
                    .flatten()
                    .map(|i| i.ip.as_str())
                    .chain(s.pod_ip.as_deref())
                    .filter_map(|i| i.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let Some(ip) = ips.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }) else {
            continue; // no address yet
        };
        if node.pods.iter().any(|q| q.ip == ip) {
            v.problems.push(format!(
                "Pod/{k}: {ip} is another pod's address on node {on}"
            ));
            continue;
        }
        node.pods.push(RemotePodConfig {
            name: p.metadata.name.clone().unwrap_or_default(),
            namespace: ns,
            ip,
            ipv6: ips.iter().find_map(|a| match a {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            }),
            labels,
        });
    }
    let sets: Vec<Vec<String>> = sets.into_iter().collect();
    let ids = control::identity::allocate(&sets);
    v.allocated = sets.into_iter().zip(ids).collect();
    v.nodes = nodes.into_values().collect();
    // Services with their slices.
    let mut slices: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in c.slices.values() {
        let owner = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let Some(svc) = owner {
            slices
                .entry(key(s.metadata.namespace.as_ref(), Some(svc)))
                .or_default()
                .push(s);
        }
    }
    for (k, s) in &c.services {
        let mine = slices.get(k).map(Vec::as_slice).unwrap_or_default();
        match service(s, mine) {
            Ok(Some(svc)) => {
                let p = control::lb::validate(std::slice::from_ref(&svc), "service");
                if p.is_empty() {
                    v.services.push(svc);
                } else {
                    for p in p {
                        let field = p.field.replacen("service[0].", "", 1);
                        v.problems.push(format!("Service/{k}: {field}: {}", p.msg));
                    }
                }
            }
            Ok(None) => {}
            Err(why) => v.problems.push(format!("Service/{k}: {why}")),
        }
    }
    // Policies: each must compile alone to be taken.
    let mut ps = Vec::new();
    for (k, p) in &c.policies {
        match control::policy::parse::parse_values(std::slice::from_ref(p), k) {
            Ok(_) => ps.push(p.clone()),
            Err(e) => v.problems.push(format!("{k}: {e}")),
        }
    }
    v.policies = Some(ps);
    v
}

/// A CiliumNode's IPv4 InternalIP (`spec.addresses`) and pod CIDRs (`spec.ipam.podCIDRs`).
fn cilium_node_parts(cn: &serde_json::Value) -> (Option<Ipv4Addr>, Vec<String>) {
    let ip = cn["spec"]["addresses"].as_array().and_then(|a| {
        a.iter()
            .filter(|x| x["type"] == "InternalIP")
            .find_map(|x| x["ip"].as_str()?.parse::<Ipv4Addr>().ok())
    });
    let cidrs = cn["spec"]["ipam"]["podCIDRs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (ip, cidrs)
}

/// A node from a CiliumNode alone.
///
/// # Errors
/// What it lacks.
pub fn cilium_node(name: &str, cn: &serde_json::Value) -> Result<RemoteNodeConfig, String> {
    let (ip, cidrs) = cilium_node_parts(cn);
    let ip = ip.ok_or("no IPv4 InternalIP in spec.addresses")?;
    let pod_cidr = cidrs
        .iter()
        .find_map(|c| c.parse::<control::net::Ipv4Cidr>().ok())
        .ok_or("no IPv4 spec.ipam.podCIDRs")?;
    Ok(RemoteNodeConfig {
        name: name.to_string(),
        ip,
        pod_cidr,
        pod_cidr_v6: cidrs
            .iter()
            .find_map(|c| c.parse::<control::net::Ipv6Cidr>().ok()),
        overlay_mac: None,
        pods: Vec::new(),
    })
}

/// A Node, completed by its CiliumNode's pod CIDRs and InternalIP when it has one (they
/// win: Cilium allocates pod CIDRs there).
fn node_with(n: &Node, cn: Option<&serde_json::Value>) -> Result<RemoteNodeConfig, String> {
    let Some(cn) = cn else {
        return node(n);
    };
    let (ip, cidrs) = cilium_node_parts(cn);
    let mut n = n.clone();
    let spec = n.spec.get_or_insert_with(Default::default);
    if !cidrs.is_empty() {
        spec.pod_cidrs = Some(cidrs);
        spec.pod_cidr = None;
    }
    if let Some(ip) = ip {
        let st = n.status.get_or_insert_with(Default::default);
        let mut a = vec![k8s_openapi::api::core::v1::NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        }];
        a.extend(
            st.addresses
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|x| x.type_ != "InternalIP"),
        );
        st.addresses = Some(a);
    }
    node(&n)
}

/// A Node as a remote node.
///
/// # Errors
/// What it lacks.
pub fn node(n: &Node) -> Result<RemoteNodeConfig, String> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let ip = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
        })
        .ok_or("no IPv4 InternalIP in status.addresses")?;
    let spec = n.spec.as_ref();
    let cidrs: Vec<&String> = spec
        .map(|s| {
            s.pod_cidrs
                .iter()
                .flatten()
                .chain(s.pod_cidr.as_ref())
                .collect()
        })
        .unwrap_or_default();
    let pod_cidr = cidrs
        .iter()
        .find_map(|c| c.parse::<control::net::Ipv4Cidr>().ok())
        .ok_or("no IPv4 spec.podCIDRs")?;
    let pod_cidr_v6 = cidrs
        .iter()
        .find_map(|c| c.parse::<control::net::Ipv6Cidr>().ok());
    let overlay_mac = match n
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OVERLAY_MAC_ANNOTATION))
    {
        None => None,
        Some(m) => Some(
            m.parse()
                .map_err(|_| format!("{OVERLAY_MAC_ANNOTATION} `{m}` is not a MAC address"))?,
        ),
    };
    Ok(RemoteNodeConfig {
        name,
        ip,
        pod_cidr,
        pod_cidr_v6,
        overlay_mac,
        pods: Vec::new(),
    })
}

/// A Service and its EndpointSlices as a service; `None` for the kinds fastpath does not
/// balance (headless, ExternalName, no IPv4 ClusterIP).
///
/// # Errors
/// What cannot be read.
pub fn service(s: &Service, slices: &[&EndpointSlice]) -> Result<Option<ServiceConfig>, String> {
    let Some(spec) = &s.spec else {
        return Err("no spec".into());
    };
    let kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" | "LoadBalancer" => ServiceType::NodePort,
        "ExternalName" => return Ok(None),
        other => return Err(format!("spec.type `{other}` is not a Service type")),
    };
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("None") | Some("") => return Ok(None),
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(ip) => ip,
            Err(_) => return Ok(None), // IPv6 single-stack: not balanced yet
        },
    };
    let mut external_ips = Vec::new();
    for e in spec.external_ips.iter().flatten() {
        external_ips.push(
            e.parse::<Ipv4Addr>()
                .map_err(|_| format!("spec.externalIPs: `{e}` is not an IPv4 address"))?,
        );
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let port =
            u16::try_from(p.port).map_err(|_| format!("spec.ports[{i}].port: {}", p.port))?;
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::TCP,
            "UDP" => Protocol::UDP,
            other => {
                return Err(format!(
                    "spec.ports[{i}].protocol: {other} is not balanced (TCP and UDP are)"
                ));
            }
        };
        // The backends' port: the slices' port of the same name (a named targetPort is
        // resolved there), else an integer targetPort, else the port.
        let from_slices = slices.iter().find_map(|sl| {
            sl.ports.iter().flatten().find_map(|sp| {
                (sp.name.as_deref().unwrap_or("") == p.name.as_deref().unwrap_or(""))
                    .then_some(sp.port)
                    .flatten()
            })
        });
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let target = match (from_slices, &p.target_port) {
            (Some(t), _) => Some(t),
            (None, Some(IntOrString::Int(t))) => Some(*t),
            _ => None,
        };
        let target_port = target
            .map(|t| u16::try_from(t).map_err(|_| format!("spec.ports[{i}].targetPort: {t}")))
            .transpose()?;
        let node_port = match (kind, p.node_port) {
            (ServiceType::NodePort, Some(n)) => {
                Some(u16::try_from(n).map_err(|_| format!("spec.ports[{i}].nodePort: {n}"))?)
            }
            _ => None,
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            port,
            protocol,
            target_port,
            node_port,
        });
    }
    let (session_affinity, session_affinity_timeout) =
        match spec.session_affinity.as_deref().unwrap_or("None") {
            "ClientIP" => (
                SessionAffinity::ClientIP,
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .map(|t| t.max(0) as u32),
            ),
            "None" => (SessionAffinity::None, None),
            other => return Err(format!("spec.sessionAffinity `{other}`")),
        };
    let lb_algorithm = match s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
        .map(String::as_str)
    {
        None => None,
        Some("maglev") => Some(LbAlgorithm::Maglev),
        Some("random") => Some(LbAlgorithm::Random),
        Some(other) => {
            return Err(format!(
                "{LB_ALGORITHM_ANNOTATION} `{other}`: maglev or random"
            ));
        }
    };
    // Backends: ready endpoints; terminating ones that still serve are kept as
    // terminating (their connections carry on, no new ones), as Cilium does.
    let mut backends: Vec<BackendConfig> = Vec::new();
    for sl in slices {
        if sl.address_type != "IPv4" {
            continue;
        }
        for e in sl.endpoints.iter().flatten() {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let state = if ready && !terminating {
                BackendState::Active
            } else if serving && terminating {
                BackendState::Terminating
            } else {
                continue;
            };
            for a in &e.addresses {
                let Ok(ip) = a.parse::<Ipv4Addr>() else {
                    continue;
                };
                match backends.iter_mut().find(|b| b.ip == ip) {
                    // Seen in two slices (a move between slices): active wins.
                    Some(b) if state == BackendState::Active => b.state = state,
                    Some(_) => {}
                    None => backends.push(BackendConfig {
                        ip,
                        weight: None,
                        state,
                    }),
                }
            }
        }
    }
    backends.sort_by_key(|b| b.ip);
    Ok(Some(ServiceConfig {
        name: s.metadata.name.clone().unwrap_or_default(),
        namespace: s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        kind,
        cluster_ip,
        external_ips,
        ports,
        session_affinity,
        session_affinity_timeout,
        lb_algorithm,
        backends,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, NodeAddress, NodeSpec, NodeStatus, PodIP, PodSpec, PodStatus,
        ServicePort as KPort, ServiceSpec, SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(Into::into),
            ..Default::default()
        }
    }

    fn knode(name: &str, ip: &str, cidr: Option<&str>) -> Node {
        Node {
            metadata: meta(None, name),
            spec: Some(NodeSpec {
                pod_cidrs: cidr.map(|c| vec![c.into()]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }]),
                ..Default::default()
            }),
        }
    }

    fn kpod(name: &str, node: &str, ip: &str, app: &str) -> Pod {
        let mut m = meta(Some("default"), name);
        m.labels = Some([("app".to_string(), app.to_string())].into());
        Pod {
            metadata: m,
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            ..Default::default()
        }
    }

    fn caches() -> Caches {
        let mut c = Caches::default();
        for n in [
            knode("a", "192.168.0.1", Some("10.1.1.0/24")),
            knode("b", "192.168.0.2", Some("10.1.2.0/24")),
            knode("nocidr", "192.168.0.3", None),
            knode("cn", "192.168.0.4", None),
        ] {
            c.nodes.insert(n.metadata.name.clone().unwrap(), n);
        }
        // Node `cn` has its pod CIDR only in its CiliumNode; `only-cn` has no Node at all.
        c.cilium_nodes.insert(
            "cn".into(),
            serde_json::json!({"apiVersion":"cilium.io/v2","kind":"CiliumNode","metadata":{"name":"cn"},
                "spec":{"ipam":{"podCIDRs":["10.1.4.0/24"]}}}),
        );
        c.cilium_nodes.insert(
            "only-cn".into(),
            serde_json::json!({"apiVersion":"cilium.io/v2","kind":"CiliumNode","metadata":{"name":"only-cn"},
                "spec":{"addresses":[{"type":"InternalIP","ip":"192.168.0.5"}],"ipam":{"podCIDRs":["10.1.5.0/24"]}}}),
        );
        for p in [
            kpod("web-a", "a", "10.1.1.11", "web"),
            kpod("web-b", "b", "10.1.2.11", "web"),
            kpod("db-b", "b", "10.1.2.12", "db"),
        ] {
            c.pods
                .insert(format!("default/{}", p.metadata.name.clone().unwrap()), p);
        }
        let mut sm = meta(Some("default"), "web");
        sm.annotations = Some([(LB_ALGORITHM_ANNOTATION.to_string(), "maglev".to_string())].into());
        c.services.insert(
            "default/web".into(),
            Service {
                metadata: sm,
                spec: Some(ServiceSpec {
                    type_: Some("NodePort".into()),
                    cluster_ip: Some("10.96.0.10".into()),
                    external_ips: Some(vec!["192.168.0.100".into()]),
                    ports: Some(vec![KPort {
                        name: Some("http".into()),
                        port: 80,
                        node_port: Some(30080),
                        target_port: Some(IntOrString::String("web".into())),
                        ..Default::default()
                    }]),
                    session_affinity: Some("ClientIP".into()),
                    session_affinity_config: Some(SessionAffinityConfig {
                        client_ip: Some(ClientIPConfig {
                            timeout_seconds: Some(60),
                        }),
                    }),
                    ..Default::default()
                }),
                status: None,
            },
        );
        c.services.insert(
            "default/headless".into(),
            Service {
                metadata: meta(Some("default"), "headless"),
                spec: Some(ServiceSpec {
                    cluster_ip: Some("None".into()),
                    ..Default::default()
                }),
                status: None,
            },
        );
        let mut slm = meta(Some("default"), "web-x1");
        slm.labels = Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into());
        c.slices.insert(
            "default/web-x1".into(),
            EndpointSlice {
                metadata: slm,
                address_type: "IPv4".into(),
                endpoints: Some(vec![
                    ep("10.1.1.11", true, true, false),
                    ep("10.1.2.11", false, true, true),
                    ep("10.1.2.99", false, false, false),
                ]),
                ports: Some(vec![EndpointPort {
                    name: Some("http".into()),
                    port: Some(8080),
                    ..Default::default()
                }]),
            },
        );
        c.policies.insert(
            "NetworkPolicy/default/deny".into(),
            serde_json::json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
                "metadata":{"name":"deny","namespace":"default"},
                "spec":{"podSelector":{"matchLabels":{"app":"db"}},"policyTypes":["Ingress"]}}),
        );
        c.policies.insert(
            "CiliumNetworkPolicy/default/bad".into(),
            serde_json::json!({"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy",
                "metadata":{"name":"bad","namespace":"default"},
                "spec":{"endpointSelector":{},"ingress":[{"fromNowhere":[]}]}}),
        );
        c.undecodable
            .insert("Pod/default/broken".into(), "not a valid object: …".into());
        c
    }

    /// The other node with its pods, identities agreeing with what any node computes, the
    /// service with its NodePort, external IP, affinity, algorithm, named target port and
    /// backend states, the valid policy; every object left out is named.
    #[test]
    fn a_clusters_objects_make_the_view() {
        let v = view(&caches(), "a", 3);
        let names: Vec<&str> = v.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["b", "cn", "only-cn"], "{:?}", v.problems);
        assert_eq!(
            v.nodes[1].pod_cidr,
            "10.1.4.0/24".parse().unwrap(),
            "from its CiliumNode"
        );
        assert_eq!(v.nodes[2].ip.to_string(), "192.168.0.5");
        assert_eq!(
            v.local_labels["default/web-a"]["app"], "web",
            "this node's own pod's labels, for its endpoint"
        );
        let b = &v.nodes[0];
        assert_eq!(
            (b.name.as_str(), b.ip.to_string()),
            ("b", "192.168.0.2".into())
        );
        assert_eq!(b.pod_cidr, "10.1.2.0/24".parse().unwrap());
        let mut pods: Vec<&str> = b.pods.iter().map(|p| p.name.as_str()).collect();
        pods.sort();
        assert_eq!(pods, ["db-b", "web-b"]);
        assert_eq!(v.allocated.len(), 2, "web (on both nodes) and db");
        assert_eq!(
            view(&caches(), "b", 3).allocated,
            v.allocated,
            "the same on node b"
        );
        assert_eq!(v.services.len(), 1, "the headless one is not balanced");
        let s = &v.services[0];
        assert_eq!(s.kind, ServiceType::NodePort);
        assert_eq!(
            s.external_ips,
            ["192.168.0.100".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(
            s.ports[0].target_port,
            Some(8080),
            "named port from the slice"
        );
        assert_eq!(s.session_affinity, SessionAffinity::ClientIP);
        assert_eq!(s.session_affinity_timeout, Some(60));
        assert_eq!(s.lb_algorithm, Some(LbAlgorithm::Maglev));
        let st: Vec<(String, BackendState)> = s
            .backends
            .iter()
            .map(|b| (b.ip.to_string(), b.state))
            .collect();
        assert_eq!(
            st,
            [
                ("10.1.1.11".to_string(), BackendState::Active),
                ("10.1.2.11".to_string(), BackendState::Terminating)
            ]
        );
        assert_eq!(v.policies.as_ref().unwrap().len(), 1);
        let p = v.problems.join("\n");
        for want in [
            "Node/nocidr: no IPv4 spec.podCIDRs",
            "CiliumNetworkPolicy/default/bad",
            "Pod/default/broken: not a valid object",
        ] {
            assert!(p.contains(want), "{want}\n{p}");
        }
        assert_eq!(v.problems.len(), 3, "{p}");
    }
}
