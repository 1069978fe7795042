//! The kvstore key schema and records: what a `source: kvstore` node writes to etcd, and
//! the cluster a node derives from what every node wrote. Pure: no I/O, unit-tested on
//! maps of keys and values. The reference is `docs/kvstore.md`.
//!
//! Keys and value fields follow Cilium's kvstore mode (`pkg/kvstore/store`,
//! `pkg/node/types.Node`, `pkg/identity.IPIdentityPair`, `pkg/allocator` over
//! `pkg/kvstore/allocator`), all under `cilium/state/`:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `nodes/v1/<cluster>/<node>` | [`NodeRecord`] (JSON) | the node's |
//! | `ip/v1/<cluster>/<ip>` | [`IpRecord`] (JSON), one per pod address | the node's |
//! | `services/v1/<cluster>/<ns>/<name>` | fastpath's service JSON (`docs/services.md`) | the writer's |
//! | `identities/v1/id/<id>` | the label key (`k8s:app=web;k8s:io.kubernetes.pod.namespace=default;`) | none (GC) |
//! | `identities/v1/value/<label key>/<node>` | the identity number, decimal | the node's |
//! | `identities/v1/locks/<label key>` | etcd lock (allocation, GC) | the holder's |

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use control::config::{RemoteNodeConfig, RemotePodConfig};
use control::lb::ServiceConfig;
use control::maps::MacAddr;
use control::net::{Ipv4Cidr, Ipv6Cidr};
use serde::{Deserialize, Serialize};

/// Everything fastpath reads and writes is under this prefix (Cilium's).
pub const PREFIX: &str = "cilium/state/";
/// Identity master keys: `<ID_PREFIX><id>` → label key.
pub const ID_PREFIX: &str = "cilium/state/identities/v1/id/";
/// Identity slave keys: `<VALUE_PREFIX><label key>/<node>` → id.
pub const VALUE_PREFIX: &str = "cilium/state/identities/v1/value/";
/// Allocation / GC locks: `<LOCK_PREFIX><label key>`.
pub const LOCK_PREFIX: &str = "cilium/state/identities/v1/locks/";
/// The most bytes of one value read from the store: larger ones are reported and skipped.
pub const MAX_VALUE: usize = 1 << 20;
/// The most keys under [`PREFIX`] a node holds in memory; past it the view is refused
/// (reported) and the last one stays in force.
pub const MAX_KEYS: usize = 1 << 20;

pub fn nodes_prefix(cluster: &str) -> String {
    format!("{PREFIX}nodes/v1/{cluster}/")
}
pub fn node_key(cluster: &str, node: &str) -> String {
    format!("{}{node}", nodes_prefix(cluster))
}
pub fn ip_prefix(cluster: &str) -> String {
    format!("{PREFIX}ip/v1/{cluster}/")
}
pub fn ip_key(cluster: &str, ip: IpAddr) -> String {
    format!("{}{ip}", ip_prefix(cluster))
}
pub fn services_prefix(cluster: &str) -> String {
    format!("{PREFIX}services/v1/{cluster}/")
}
pub fn service_key(cluster: &str, namespace: &str, name: &str) -> String {
    format!("{}{namespace}/{name}", services_prefix(cluster))
}
pub fn master_key(id: u32) -> String {
    format!("{ID_PREFIX}{id}")
}
pub fn slave_prefix(label_key: &str) -> String {
    format!("{VALUE_PREFIX}{label_key}/")
}
pub fn slave_key(label_key: &str, node: &str) -> String {
    format!("{}{node}", slave_prefix(label_key))
}
pub fn lock_key(label_key: &str) -> String {
    format!("{LOCK_PREFIX}{label_key}")
}

/// Cilium's key of a label set (`labels.SortedList()`): every `source:key=value` in
/// order, each followed by `;`.
pub fn label_key(labels: &[String]) -> String {
    let mut sorted: Vec<&String> = labels.iter().collect();
    sorted.sort();
    sorted.iter().map(|l| format!("{l};")).collect()
}

/// The label set of a label key (the inverse of [`label_key`]); `None` for an empty or
/// malformed one (a label without `source:` or `=`).
pub fn parse_label_key(key: &str) -> Option<Vec<String>> {
    let body = key.strip_suffix(';')?;
    let mut out = Vec::new();
    for l in body.split(';') {
        let (src, kv) = l.split_once(':')?;
        if src.is_empty() || !kv.contains('=') {
            return None;
        }
        out.push(l.to_string());
    }
    out.sort();
    Some(out)
}

/// A pod's namespace and labels from its identity's labels (`k8s:key=value`, the
/// namespace as `k8s:io.kubernetes.pod.namespace`): what a remote pod record needs.
pub fn pod_of_labels(labels: &[String]) -> (String, BTreeMap<String, String>) {
    let mut ns = "default".to_string();
    let mut out = BTreeMap::new();
    for l in labels {
        let Some(kv) = l.strip_prefix("k8s:") else {
            continue;
        };
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        if k == "io.kubernetes.pod.namespace" {
            ns = v.to_string();
        } else {
            out.insert(k.to_string(), v.to_string());
        }
    }
    (ns, out)
}

/// Go's `net.IPNet` as JSON: the network address and the mask's bytes in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoIpNet {
    #[serde(rename = "IP")]
    pub ip: IpAddr,
    #[serde(rename = "Mask")]
    pub mask: String,
}

impl GoIpNet {
    pub fn v4(c: Ipv4Cidr) -> GoIpNet {
        let m = u32::MAX.checked_shl(32 - u32::from(c.len)).unwrap_or(0);
        GoIpNet {
            ip: IpAddr::V4(c.network().addr),
            mask: base64(&m.to_be_bytes()),
        }
    }
    pub fn v6(c: Ipv6Cidr) -> GoIpNet {
        let m = u128::MAX.checked_shl(128 - u32::from(c.len)).unwrap_or(0);
        GoIpNet {
            ip: IpAddr::V6(c.network().addr),
            mask: base64(&m.to_be_bytes()),
        }
    }
    /// The prefix length of the mask (contiguous ones only).
    fn len(&self) -> Option<u8> {
        let b = unbase64(&self.mask)?;
        if b.len() != 4 && b.len() != 16 {
            return None;
        }
        let ones: u32 = b.iter().map(|x| x.count_ones()).sum();
        let contiguous = b
            .iter()
            .flat_map(|x| (0..8).rev().map(move |i| x >> i & 1))
            .skip(ones as usize)
            .all(|bit| bit == 0);
        contiguous.then_some(ones as u8)
    }
    pub fn to_v4(&self) -> Option<Ipv4Cidr> {
        match self.ip {
            IpAddr::V4(a) if self.len()? <= 32 => Some(Ipv4Cidr::new(a, self.len()?)),
            _ => None,
        }
    }
    pub fn to_v6(&self) -> Option<Ipv6Cidr> {
        match self.ip {
            IpAddr::V6(a) if self.len()? <= 128 => Some(Ipv6Cidr::new(a, self.len()?)),
            _ => None,
        }
    }
}

/// One of a node's addresses (`types.Address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "IP")]
    pub ip: IpAddr,
}

/// A node, as Cilium's `types.Node` names its fields (the ones fastpath uses; others are
/// ignored when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Cluster")]
    pub cluster: String,
    /// `InternalIP`: the underlay address (tunnel endpoint); `CiliumInternalIP`: the
    /// router address.
    #[serde(rename = "IPAddresses")]
    pub addresses: Vec<NodeAddress>,
    #[serde(rename = "IPv4AllocCIDR")]
    pub ipv4_alloc_cidr: Option<GoIpNet>,
    #[serde(rename = "IPv6AllocCIDR", default)]
    pub ipv6_alloc_cidr: Option<GoIpNet>,
    /// `fastpath.io/overlay-mac`: the inner destination MAC a Linux VXLAN peer needs.
    #[serde(rename = "Annotations", default)]
    pub annotations: BTreeMap<String, String>,
}

/// The annotation carrying a node's overlay MAC.
pub const OVERLAY_MAC: &str = "fastpath.io/overlay-mac";

impl NodeRecord {
    pub fn internal_ip(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a.ip {
            IpAddr::V4(ip) if a.kind == "InternalIP" => Some(ip),
            _ => None,
        })
    }
}

/// A pod address, as Cilium's `identity.IPIdentityPair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRecord {
    #[serde(rename = "IP")]
    pub ip: IpAddr,
    /// `null` for a host address (a pod's).
    #[serde(rename = "Mask", default)]
    pub mask: Option<String>,
    /// The node's underlay address.
    #[serde(rename = "HostIP")]
    pub host_ip: Ipv4Addr,
    #[serde(rename = "ID")]
    pub id: u32,
    #[serde(rename = "Key", default)]
    pub key: u8,
    #[serde(rename = "K8sNamespace", default)]
    pub namespace: String,
    #[serde(rename = "K8sPodName", default)]
    pub pod: String,
}

/// The rest of the cluster as the store has it, for one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Every other node of the cluster with its pods (identities from `allocated`).
    pub nodes: Vec<RemoteNodeConfig>,
    /// Every identity in the store: label set → number (the lowest, if two name one set).
    pub allocated: BTreeMap<Vec<String>, u32>,
    /// Every service in the store, by `ns/name`.
    pub services: Vec<ServiceConfig>,
    /// Labels of this node's own pods by `namespace/name`, where the source has them (the
    /// Kubernetes API's Pod objects): they win over the labels an endpoint is added with.
    pub local_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Policy objects (the Kubernetes source's; `None`: the source has none and the
    /// node's own stay as they are).
    pub policies: Option<Vec<serde_json::Value>>,
    /// What was skipped, each with its key and why.
    pub problems: Vec<String>,
    /// The store revision this view is of.
    pub revision: i64,
}

/// What a node sees of the store `kv` (key → value): the other nodes of `cluster`, their
/// pods, every identity and service. Records that do not parse, name an identity the store
/// does not have, or a node it does not have, are skipped and listed in `problems`.
pub fn view(kv: &BTreeMap<String, Vec<u8>>, cluster: &str, me: &str, revision: i64) -> View {
    let mut v = View {
        revision,
        ..Default::default()
    };
    let mut by_id: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (k, val) in range(kv, ID_PREFIX) {
        let id = k[ID_PREFIX.len()..].parse::<u32>();
        let labels = std::str::from_utf8(val).ok().and_then(parse_label_key);
        match (id, labels) {
            (Ok(id), Some(l)) if (256..=65535).contains(&id) => {
                v.allocated
                    .entry(l.clone())
                    .and_modify(|e| *e = (*e).min(id))
                    .or_insert(id);
                by_id.insert(id, l);
            }
            _ => v
                .problems
                .push(format!("{k}: not an identity (id 256-65535 → label key)")),
        }
    }
    // Nodes, by underlay address.
    let mut nodes: BTreeMap<Ipv4Addr, RemoteNodeConfig> = BTreeMap::new();
    let np = nodes_prefix(cluster);
    for (k, val) in range(kv, &np) {
        let name = &k[np.len()..];
        if name == me {
            continue;
        }
        let r: NodeRecord = match serde_json::from_slice(val) {
            Ok(r) => r,
            Err(e) => {
                v.problems.push(format!("{k}: {e}"));
                continue;
            }
        };
        let (Some(ip), Some(cidr)) = (
            r.internal_ip(),
            r.ipv4_alloc_cidr.as_ref().and_then(GoIpNet::to_v4),
        ) else {
            v.problems
                .push(format!("{k}: no InternalIP IPv4 address or IPv4AllocCIDR"));
            continue;
        };
        if r.name != name {
            v.problems
                .push(format!("{k}: the record names node `{}`", r.name));
            continue;
        }
        if nodes.contains_key(&ip) {
            v.problems
                .push(format!("{k}: another node has InternalIP {ip}; skipped"));
            continue;
        }
        let overlay_mac = match r.annotations.get(OVERLAY_MAC) {
            None => None,
            Some(m) => match m.parse::<MacAddr>() {
                Ok(m) => Some(m),
                Err(_) => {
                    v.problems
                        .push(format!("{k}: {OVERLAY_MAC} `{m}` is not a MAC address"));
                    continue;
                }
            },
        };
        nodes.insert(
            ip,
            RemoteNodeConfig {
                name: name.to_string(),
                ip,
                pod_cidr: cidr,
                pod_cidr_v6: r.ipv6_alloc_cidr.as_ref().and_then(GoIpNet::to_v6),
                overlay_mac,
                pods: Vec::new(),
            },
        );
    }
    // Pod addresses: IPv4 ones make pods, IPv6 ones join the pod of the same name.
    let ipp = ip_prefix(cluster);
    let mut v6: Vec<(String, IpRecord, Ipv6Addr)> = Vec::new();
    for (k, val) in range(kv, &ipp) {
        let r: IpRecord = match serde_json::from_slice(val) {
            Ok(r) => r,
            Err(e) => {
                v.problems.push(format!("{k}: {e}"));
                continue;
            }
        };
        if k[ipp.len()..] != r.ip.to_string() {
            v.problems.push(format!("{k}: the record is for {}", r.ip));
            continue;
        }
        let Some(node) = nodes.get_mut(&r.host_ip) else {
            // This node's own pods, or a node whose record is not (yet) in the store.
            continue;
        };
        let Some(labels) = by_id.get(&r.id) else {
            v.problems
                .push(format!("{k}: identity {} is not in the store (yet)", r.id));
            continue;
        };
        let (namespace, labels) = pod_of_labels(labels);
        let namespace = if r.namespace.is_empty() {
            namespace
        } else {
            r.namespace.clone()
        };
        let name = if r.pod.is_empty() {
            r.ip.to_string()
        } else {
            r.pod.clone()
        };
        match r.ip {
            IpAddr::V4(ip) => node.pods.push(RemotePodConfig {
                name,
                namespace,
                ip,
                ipv6: None,
                labels,
            }),
            IpAddr::V6(a) => v6.push((k.clone(), r.clone(), a)),
        }
    }
    for (k, r, a) in v6 {
        let node = nodes.get_mut(&r.host_ip).expect("found above");
        match node
            .pods
            .iter_mut()
            .find(|p| p.name == r.pod && p.namespace == r.namespace && p.ipv6.is_none())
        {
            Some(p) => p.ipv6 = Some(a),
            None => v.problems.push(format!(
                "{k}: no IPv4 record of pod {}/{}",
                r.namespace, r.pod
            )),
        }
    }
    v.nodes = nodes.into_values().collect();
    v.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let sp = services_prefix(cluster);
    for (k, val) in range(kv, &sp) {
        match serde_json::from_slice::<ServiceConfig>(val) {
            Ok(s) if format!("{sp}{}", s.id()) == *k => {
                let p = control::lb::validate(std::slice::from_ref(&s), k);
                if p.is_empty() {
                    v.services.push(s);
                } else {
                    for p in p {
                        let field = p.field.replacen(&format!("{k}[0]."), "", 1);
                        v.problems.push(format!("{k}: {field}: {}", p.msg));
                    }
                }
            }
            Ok(s) => v
                .problems
                .push(format!("{k}: the record is service {}", s.id())),
            Err(e) => v.problems.push(format!("{k}: {e}")),
        }
    }
    v
}

/// The entries of `kv` under `prefix`.
fn range<'a>(
    kv: &'a BTreeMap<String, Vec<u8>>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a Vec<u8>)> + 'a {
    kv.range::<str, _>((
        std::ops::Bound::Included(prefix),
        std::ops::Bound::Unbounded,
    ))
    .take_while(move |(k, _)| k.starts_with(prefix))
}

/// The identity numbers some node holds a slave key for (in use somewhere).
pub fn ids_in_use(kv: &BTreeMap<String, Vec<u8>>) -> BTreeSet<u32> {
    range(kv, VALUE_PREFIX)
        .filter_map(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
        .collect()
}

/// Identity master keys: id → label key.
pub fn masters(kv: &BTreeMap<String, Vec<u8>>) -> BTreeMap<u32, String> {
    range(kv, ID_PREFIX)
        .filter_map(|(k, v)| {
            Some((
                k[ID_PREFIX.len()..].parse().ok()?,
                String::from_utf8(v.clone()).ok()?,
            ))
        })
        .collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what Go's encoding/json does for `[]byte`).
pub fn base64(b: &[u8]) -> String {
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`base64`]; `None` if it is not base64.
pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    for c in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for &ch in c {
            let v = if ch == b'=' {
                pad += 1;
                0
            } else {
                if pad > 0 {
                    return None;
                }
                B64.iter().position(|&x| x == ch)? as u32
            };
            n = n << 6 | v;
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad.min(2)]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, String)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn node(name: &str, ip: &str, cidr: &str) -> String {
        serde_json::to_string(&NodeRecord {
            name: name.into(),
            cluster: "default".into(),
            addresses: vec![NodeAddress {
                kind: "InternalIP".into(),
                ip: ip.parse().unwrap(),
            }],
            ipv4_alloc_cidr: Some(GoIpNet::v4(cidr.parse().unwrap())),
            ipv6_alloc_cidr: None,
            annotations: BTreeMap::new(),
        })
        .unwrap()
    }

    fn ip(ip: &str, host: &str, id: u32, pod: &str) -> String {
        serde_json::to_string(&IpRecord {
            ip: ip.parse().unwrap(),
            mask: None,
            host_ip: host.parse().unwrap(),
            id,
            key: 0,
            namespace: "default".into(),
            pod: pod.into(),
        })
        .unwrap()
    }

    #[test]
    fn base64_matches_go() {
        // Go: json.Marshal(net.CIDRMask(24, 32)) == "////AA==".
        assert_eq!(base64(&[255, 255, 255, 0]), "////AA==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        for n in 0..40u8 {
            let b: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unbase64(&base64(&b)).unwrap(), b);
        }
        assert_eq!(unbase64("////AA=").map(|_| ()), None);
        let c = GoIpNet::v4("10.1.2.0/24".parse().unwrap());
        assert_eq!(c.to_v4(), Some("10.1.2.0/24".parse().unwrap()));
        assert_eq!(
            GoIpNet {
                ip: "10.0.0.0".parse().unwrap(),
                mask: base64(&[255, 0, 255, 0])
            }
            .to_v4(),
            None,
            "a non-contiguous mask is refused"
        );
    }

    #[test]
    fn label_keys_round_trip_in_ciliums_form() {
        let l =
            control::identity::pod_labels("prod", &BTreeMap::from([("app".into(), "web".into())]));
        let k = label_key(&l);
        assert_eq!(k, "k8s:app=web;k8s:io.kubernetes.pod.namespace=prod;");
        assert_eq!(parse_label_key(&k), Some(l.clone()));
        assert_eq!(
            pod_of_labels(&l),
            (
                "prod".into(),
                BTreeMap::from([("app".into(), "web".into())])
            )
        );
        assert_eq!(parse_label_key(""), None);
        assert_eq!(parse_label_key("app=web;"), None, "no source");
        assert_eq!(parse_label_key("k8s:app;"), None, "no value");
    }

    /// Another node's record, its pods' ip records and their identities make a remote
    /// node with pods labelled as the identities say; this node's own records and bad
    /// records are left out, the bad ones listed by key.
    #[test]
    fn view_of_a_store() {
        let web = "k8s:app=web;k8s:io.kubernetes.pod.namespace=default;".to_string();
        let s = kv(&[
            (
                &node_key("default", "a"),
                node("a", "192.168.1.1", "10.1.1.0/24"),
            ),
            (
                &node_key("default", "b"),
                node("b", "192.168.1.2", "10.1.2.0/24"),
            ),
            (&node_key("default", "c"), "{not json".into()),
            (
                &node_key("other", "d"),
                node("d", "192.168.1.4", "10.1.4.0/24"),
            ),
            (&master_key(4000), web.clone()),
            (&master_key(3000), web.clone()),
            (&master_key(17), "k8s:x=y;".into()),
            (
                &ip_key("default", "10.1.1.11".parse().unwrap()),
                ip("10.1.1.11", "192.168.1.1", 4000, "mine"),
            ),
            (
                &ip_key("default", "10.1.2.11".parse().unwrap()),
                ip("10.1.2.11", "192.168.1.2", 4000, "w0"),
            ),
            (
                &ip_key("default", "10.1.2.12".parse().unwrap()),
                ip("10.1.2.12", "192.168.1.2", 999, "ghost"),
            ),
            (
                &ip_key("default", "10.1.2.13".parse().unwrap()),
                ip("10.1.2.99", "192.168.1.2", 4000, "liar"),
            ),
        ]);
        let mut s = s;
        let svc = |name: &str, vip: &str| {
            format!(
                "{{\"name\":\"{name}\",\"cluster_ip\":\"{vip}\",\"ports\":[{{\"port\":80,\"target_port\":8080}}],\"backends\":[]}}"
            )
            .into_bytes()
        };
        s.insert(
            service_key("default", "default", "good"),
            svc("good", "10.96.0.10"),
        );
        s.insert(
            service_key("default", "default", "bad"),
            svc("bad", "0.0.0.0"),
        );
        s.insert(
            service_key("default", "default", "named"),
            svc("other", "10.96.0.11"),
        );
        let v = view(&s, "default", "a", 7);
        assert_eq!(
            v.services.iter().map(|s| s.id()).collect::<Vec<_>>(),
            ["default/good"]
        );
        assert_eq!(v.revision, 7);
        assert_eq!(v.nodes.len(), 1, "{:?}", v.nodes);
        let b = &v.nodes[0];
        assert_eq!(
            (b.name.as_str(), b.ip),
            ("b", "192.168.1.2".parse().unwrap())
        );
        assert_eq!(b.pod_cidr, "10.1.2.0/24".parse().unwrap());
        assert_eq!(b.pods.len(), 1);
        assert_eq!(b.pods[0].name, "w0");
        assert_eq!(b.pods[0].labels["app"], "web");
        assert_eq!(
            v.allocated[&parse_label_key(&web).unwrap()],
            3000,
            "two numbers for one set: the lowest"
        );
        let p = v.problems.join("\n");
        for k in [
            node_key("default", "c"),
            master_key(17),
            ip_key("default", "10.1.2.12".parse().unwrap()),
            ip_key("default", "10.1.2.13".parse().unwrap()),
            service_key("default", "default", "bad") + ": cluster_ip: ",
            service_key("default", "default", "named"),
        ] {
            assert!(p.contains(&k), "{k} reported:\n{p}");
        }
        assert_eq!(v.problems.len(), 6, "{p}");
    }
}
