//! Policy YAML: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and Kubernetes
//! NetworkPolicy (one or more `---`-separated documents, or a `kind: List`).
//!
//! Every field the API defines is recognised; the ones fastpath does not enforce (L7 rules,
//! FQDNs, host policies, services, groups, authentication, IPv6, named ports, ...) are refused
//! with the field's path and the reason, never ignored. Unknown fields are refused too.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{
    Entity, NAMESPACE_LABEL, Op, Peer, Policy, PolicyId, PolicyKind, PortRule, Req, Rule, Selector,
};
use crate::net::Ipv4Cidr;

/// A refused policy document: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{doc}: {path}: {msg}")]
pub struct PolicyError {
    /// `file document N (Kind ns/name)`.
    pub doc: String,
    /// The field, e.g. `spec.ingress[0].toPorts[0].rules`.
    pub path: String,
    pub msg: String,
}

/// Parse every policy in `text` (from `file`). All or nothing: the first problem is returned.
/// The text is bounded ([`crate::yaml::POLICY`]: size, depth, nodes, documents).
pub fn parse_policies(text: &str, file: &str) -> Result<Vec<Policy>, PolicyError> {
    Ok(parse_objects(text, file)?
        .into_iter()
        .flat_map(|(_, ps)| ps)
        .collect())
}

/// Parse every policy object in `text`, each with the policies it makes (a
/// CiliumNetworkPolicy with `specs` makes one per spec): what `fastpath run` persists of a
/// policy applied at run time is the object. Ids are unique across the text.
///
/// # Errors
/// As [`parse_policies`].
pub fn parse_objects(text: &str, file: &str) -> Result<Vec<(Value, Vec<Policy>)>, PolicyError> {
    let mut out = Vec::new();
    let docs = crate::yaml::documents(text, &crate::yaml::POLICY).map_err(|e| PolicyError {
        doc: file.into(),
        path: "-".into(),
        msg: format!("not a policy text: {e}"),
    })?;
    for (i, v) in docs.into_iter().enumerate() {
        let where_ = format!("{file} document {}", i + 1);
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind == "List" {
            let items = v
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (j, item) in items.into_iter().enumerate() {
                let ps = object(item.clone(), &format!("{where_} item {j}"))?;
                out.push((item, ps));
            }
        } else {
            let ps = object(v.clone(), &where_)?;
            out.push((v, ps));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in out.iter().flat_map(|(_, ps)| ps) {
        if !seen.insert(p.id.clone()) {
            return Err(PolicyError {
                doc: file.into(),
                path: "metadata.name".into(),
                msg: format!("{} appears twice", p.id),
            });
        }
    }
    Ok(out)
}

/// Parse policy objects already read as YAML values (the config's `policies:` list).
pub fn parse_values(vs: &[Value], file: &str) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        out.extend(object(v.clone(), &format!("{file} policies[{i}]"))?);
    }
    Ok(out)
}

fn object(v: Value, where_: &str) -> Result<Vec<Policy>, PolicyError> {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let meta = |key: &str| {
        v.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let name = meta("name").unwrap_or_default();
    let ns = meta("namespace").unwrap_or_else(|| "default".into());
    let doc = format!("{where_} ({kind} {ns}/{name})");
    let err = |path: &str, msg: String| PolicyError {
        doc: doc.clone(),
        path: path.into(),
        msg,
    };
    if name.is_empty() {
        return Err(err("metadata.name", "a policy needs a name".into()));
    }
    match kind.as_str() {
        "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" => {
            let o: CnpObject = typed(v, &doc)?;
            let clusterwide = kind == "CiliumClusterwideNetworkPolicy";
            let id = PolicyId {
                kind: if clusterwide {
                    PolicyKind::CiliumClusterwide
                } else {
                    PolicyKind::Cilium
                },
                namespace: if clusterwide {
                    String::new()
                } else {
                    ns.clone()
                },
                name,
            };
            let mut specs: Vec<(String, CnpRule)> = Vec::new();
            if let Some(s) = o.spec {
                specs.push(("spec".into(), s));
            }
            for (i, s) in o.specs.unwrap_or_default().into_iter().enumerate() {
                specs.push((format!("specs[{i}]"), s));
            }
            if specs.is_empty() {
                return Err(err("spec", "a policy needs `spec` or `specs`".into()));
            }
            let ns = (!clusterwide).then_some(ns.as_str());
            // Several specs in one object are separate rules with their own subjects: each
            // becomes a policy of its own (`name`, `name#1`, ...).
            let mut all = Vec::new();
            for (i, (path, s)) in specs.into_iter().enumerate() {
                let mut p = cnp_rule(s, ns, &path).map_err(|(p, m)| err(&p, m))?;
                p.id = id.clone();
                if i > 0 {
                    p.id.name = format!("{}#{i}", id.name);
                }
                all.push(p);
            }
            Ok(all)
        }
        "NetworkPolicy" => {
            let o: KnpObject = typed(v, &doc)?;
            let id = PolicyId {
                kind: PolicyKind::Kubernetes,
                namespace: ns.clone(),
                name,
            };
            let Some(spec) = o.spec else {
                return Err(err("spec", "a NetworkPolicy needs a spec".into()));
            };
            knp(spec, id, &ns)
                .map(|p| vec![p])
                .map_err(|(p, m)| err(&p, m))
        }
        "" => Err(err("kind", "missing".into())),
        k => Err(err(
            "kind",
            format!(
                "`{k}` is not a policy kind fastpath reads (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)"
            ),
        )),
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: Value, doc: &str) -> Result<T, PolicyError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        PolicyError {
            doc: doc.into(),
            path,
            msg: e.into_inner().to_string(),
        }
    })
}

type Bad = (String, String);

fn unsupported(path: &str, field: &str, v: &Option<Value>, why: &str) -> Result<(), Bad> {
    match v {
        Some(_) => Err((format!("{path}.{field}"), format!("not supported: {why}"))),
        None => Ok(()),
    }
}

// ---- CiliumNetworkPolicy ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CnpObject {
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: String,
    #[allow(dead_code)]
    metadata: Value,
    spec: Option<CnpRule>,
    specs: Option<Vec<CnpRule>>,
    #[allow(dead_code)]
    status: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CnpRule {
    endpoint_selector: Option<Sel>,
    node_selector: Option<Value>,
    ingress: Option<Vec<CnpPeerRule>>,
    ingress_deny: Option<Vec<CnpPeerRule>>,
    egress: Option<Vec<CnpPeerRule>>,
    egress_deny: Option<Vec<CnpPeerRule>>,
    #[allow(dead_code)]
    labels: Option<Value>,
    #[allow(dead_code)]
    description: Option<String>,
    enable_default_deny: Option<DefaultDeny>,
    log: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

/// An ingress or egress rule (both shapes in one: the direction decides which names are
/// legal, checked in [`cnp_peer_rule`]).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CnpPeerRule {
    from_endpoints: Option<Vec<Sel>>,
    to_endpoints: Option<Vec<Sel>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrRule>>,
    from_entities: Option<Vec<String>>,
    to_entities: Option<Vec<String>>,
    to_ports: Option<Vec<CnpPorts>>,
    icmps: Option<Vec<IcmpRule>>,
    from_requires: Option<Value>,
    to_requires: Option<Value>,
    from_groups: Option<Value>,
    to_groups: Option<Value>,
    from_nodes: Option<Value>,
    to_nodes: Option<Value>,
    to_services: Option<Value>,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Value>,
    authentication: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CnpPorts {
    ports: Option<Vec<PortProto>>,
    rules: Option<Value>,
    #[serde(rename = "terminatingTLS")]
    terminating_tls: Option<Value>,
    #[serde(rename = "originatingTLS")]
    originating_tls: Option<Value>,
    server_names: Option<Value>,
    listener: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortProto {
    port: Option<IntOrStr>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum IntOrStr {
    Int(i64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CidrRule {
    cidr: Option<String>,
    except: Option<Vec<String>>,
    cidr_group_ref: Option<Value>,
    cidr_group_selector: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpRule {
    fields: Vec<IcmpField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpField {
    #[serde(rename = "type")]
    ty: IntOrStr,
    family: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Sel {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<Expr>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Expr {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

/// A label selector; `source` is put on keys that have none (`k8s` for Kubernetes objects).
fn selector(s: &Sel, path: &str, source: Option<&str>) -> Result<Selector, Bad> {
    let key = |k: &str| match (source, k.contains(':')) {
        (Some(src), false) => format!("{src}:{k}"),
        _ => k.to_string(),
    };
    let mut reqs = Vec::new();
    for (k, v) in s.match_labels.iter().flatten() {
        reqs.push(Req::new(&key(k), Op::In(vec![v.clone()])));
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = e.values.clone().unwrap_or_default();
        let op = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err((
                    format!("{p}.values"),
                    format!("{} needs values", e.operator),
                ));
            }
            "In" => Op::In(values),
            "NotIn" => Op::NotIn(values),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err((
                    format!("{p}.values"),
                    format!("{} takes no values", e.operator),
                ));
            }
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            o => {
                return Err((
                    format!("{p}.operator"),
                    format!("`{o}` is not one of In, NotIn, Exists, DoesNotExist"),
                ));
            }
        };
        reqs.push(Req::new(&key(&e.key), op));
    }
    Ok(Selector { reqs })
}

fn cidr(s: &str, path: &str) -> Result<Ipv4Cidr, Bad> {
    if s.contains(':') {
        return Err((
            path.into(),
            format!("`{s}`: IPv6 is not supported (fastpath is IPv4-only)"),
        ));
    }
    let c: Ipv4Cidr = if s.contains('/') {
        s.parse()
            .map_err(|e: crate::net::CidrParseError| (path.to_string(), e.0))?
    } else {
        let a: std::net::Ipv4Addr = s
            .parse()
            .map_err(|_| (path.to_string(), format!("`{s}` is not an IPv4 CIDR")))?;
        Ipv4Cidr::host(a)
    };
    Ok(c.network())
}

fn port_number(p: &IntOrStr, path: &str) -> Result<u16, Bad> {
    let n = match p {
        IntOrStr::Int(n) => *n,
        IntOrStr::Str(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                return Err((
                    path.into(),
                    format!("named port `{s}` is not supported: give the number"),
                ));
            }
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|_| n >= 0)
        .ok_or_else(|| (path.to_string(), format!("{n} is not a port (0-65535)")))
}

fn protocol(p: Option<&str>, default: &str, path: &str, any_ok: bool) -> Result<u8, Bad> {
    match p.unwrap_or(default).to_ascii_uppercase().as_str() {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        "ANY" if any_ok => Ok(0),
        other => Err((
            path.into(),
            format!(
                "protocol `{other}` is not one of TCP, UDP, SCTP{}",
                if any_ok { ", ANY" } else { "" }
            ),
        )),
    }
}

/// `port` (+ `endPort`) and protocol → a [`PortRule`].
fn port_rule(
    port: Option<&IntOrStr>,
    end: Option<i64>,
    proto: u8,
    path: &str,
) -> Result<PortRule, Bad> {
    let port = match port {
        Some(p) => port_number(p, &format!("{path}.port"))?,
        None => 0,
    };
    let end = match end {
        None => port,
        Some(_) if port == 0 => {
            return Err((format!("{path}.endPort"), "endPort needs a port".into()));
        }
        Some(e) => {
            let e = port_number(&IntOrStr::Int(e), &format!("{path}.endPort"))?;
            if e < port {
                return Err((
                    format!("{path}.endPort"),
                    format!("endPort {e} is below port {port}"),
                ));
            }
            e
        }
    };
    Ok(PortRule { proto, port, end })
}

fn icmp_type(t: &IntOrStr, path: &str) -> Result<u16, Bad> {
    let names = [
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
    ];
    match t {
        IntOrStr::Int(n) if (0..=255).contains(n) => Ok(*n as u16),
        IntOrStr::Str(s) => match names.iter().find(|(n, _)| n == s) {
            Some((_, v)) => Ok(*v),
            None => s
                .parse::<u8>()
                .map(|v| v as u16)
                .map_err(|_| (path.into(), format!("`{s}` is not an ICMPv4 type"))),
        },
        IntOrStr::Int(n) => Err((path.into(), format!("{n} is not an ICMP type (0-255)"))),
    }
}

fn cnp_rule(r: CnpRule, ns: Option<&str>, path: &str) -> Result<Policy, Bad> {
    unsupported(
        path,
        "nodeSelector",
        &r.node_selector,
        "host policies (host firewall) are not enforced by fastpath; it enforces pod endpoints",
    )?;
    unsupported(path, "log", &r.log, "policy logging")?;
    let Some(sel) = &r.endpoint_selector else {
        return Err((format!("{path}.endpointSelector"), "required".into()));
    };
    let mut subject = selector(sel, &format!("{path}.endpointSelector"), None)?;
    if let Some(ns) = ns {
        subject = subject.in_namespace(ns);
    }
    let mut dirs: [Vec<Rule>; 2] = Default::default();
    let lists = [
        ("ingress", 0usize, false, &r.ingress),
        ("ingressDeny", 0, true, &r.ingress_deny),
        ("egress", 1, false, &r.egress),
        ("egressDeny", 1, true, &r.egress_deny),
    ];
    let mut has = [false; 2];
    for (name, dir, deny, list) in lists {
        for (i, pr) in list.iter().flatten().enumerate() {
            let p = format!("{path}.{name}[{i}]");
            dirs[dir].push(cnp_peer_rule(pr, dir == 1, deny, ns, &p)?);
        }
        has[dir] |= list.as_ref().is_some_and(|l| !l.is_empty());
    }
    let dd = r.enable_default_deny.as_ref();
    let default_deny = [
        has[0] && dd.and_then(|d| d.ingress).unwrap_or(true),
        has[1] && dd.and_then(|d| d.egress).unwrap_or(true),
    ];
    let [ingress, egress] = dirs;
    Ok(Policy {
        id: PolicyId {
            kind: PolicyKind::Cilium,
            namespace: String::new(),
            name: String::new(),
        },
        subject,
        ingress,
        egress,
        default_deny,
    })
}

/// The egress or the ingress variant of a field.
fn by_dir<T>(egress: bool, e: T, i: T) -> T {
    if egress { e } else { i }
}

fn cnp_peer_rule(
    r: &CnpPeerRule,
    egress: bool,
    deny: bool,
    ns: Option<&str>,
    path: &str,
) -> Result<Rule, Bad> {
    let (wrong, names): (&[(&str, bool)], _) = if egress {
        (
            &[
                ("fromEndpoints", r.from_endpoints.is_some()),
                ("fromCIDR", r.from_cidr.is_some()),
                ("fromCIDRSet", r.from_cidr_set.is_some()),
                ("fromEntities", r.from_entities.is_some()),
                ("fromRequires", r.from_requires.is_some()),
                ("fromGroups", r.from_groups.is_some()),
                ("fromNodes", r.from_nodes.is_some()),
            ],
            "an egress rule",
        )
    } else {
        (
            &[
                ("toEndpoints", r.to_endpoints.is_some()),
                ("toCIDR", r.to_cidr.is_some()),
                ("toCIDRSet", r.to_cidr_set.is_some()),
                ("toEntities", r.to_entities.is_some()),
                ("toRequires", r.to_requires.is_some()),
                ("toGroups", r.to_groups.is_some()),
                ("toNodes", r.to_nodes.is_some()),
                ("toServices", r.to_services.is_some()),
                ("toFQDNs", r.to_fqdns.is_some()),
            ],
            "an ingress rule",
        )
    };
    if let Some((f, _)) = wrong.iter().find(|(_, set)| *set) {
        return Err((
            format!("{path}.{f}"),
            format!("`{f}` is not a field of {names}"),
        ));
    }
    unsupported(
        path,
        "fromRequires",
        &r.from_requires,
        "deprecated; use fromEndpoints with matchExpressions",
    )?;
    unsupported(
        path,
        "toRequires",
        &r.to_requires,
        "deprecated; use toEndpoints with matchExpressions",
    )?;
    unsupported(path, "fromGroups", &r.from_groups, "cloud-provider groups")?;
    unsupported(path, "toGroups", &r.to_groups, "cloud-provider groups")?;
    unsupported(
        path,
        "fromNodes",
        &r.from_nodes,
        "node selectors (use fromEntities remote-node)",
    )?;
    unsupported(
        path,
        "toNodes",
        &r.to_nodes,
        "node selectors (use toEntities remote-node)",
    )?;
    unsupported(
        path,
        "toServices",
        &r.to_services,
        "service selectors; select the backends with toEndpoints",
    )?;
    unsupported(
        path,
        "toFQDNs",
        &r.to_fqdns,
        "DNS-based rules need an L7 DNS proxy, which fastpath does not have",
    )?;
    unsupported(
        path,
        "authentication",
        &r.authentication,
        "mutual authentication",
    )?;

    let mut peers = Vec::new();
    let (eps, eps_name) = by_dir(
        egress,
        (&r.to_endpoints, "toEndpoints"),
        (&r.from_endpoints, "fromEndpoints"),
    );
    for (i, s) in eps.iter().flatten().enumerate() {
        let p = format!("{path}.{eps_name}[{i}]");
        let mut sel = selector(s, &p, None)?;
        if let Some(ns) = ns
            && !sel.has_namespace()
            && !sel.has_reserved()
        {
            sel = sel.in_namespace(ns);
        }
        peers.push(Peer::Endpoints(sel));
    }
    let (cidrs, cidr_name) = by_dir(egress, (&r.to_cidr, "toCIDR"), (&r.from_cidr, "fromCIDR"));
    for (i, c) in cidrs.iter().flatten().enumerate() {
        peers.push(Peer::Cidr {
            prefix: cidr(c, &format!("{path}.{cidr_name}[{i}]"))?,
            except: Vec::new(),
        });
    }
    let (sets, set_name) = by_dir(
        egress,
        (&r.to_cidr_set, "toCIDRSet"),
        (&r.from_cidr_set, "fromCIDRSet"),
    );
    for (i, s) in sets.iter().flatten().enumerate() {
        let p = format!("{path}.{set_name}[{i}]");
        unsupported(
            &p,
            "cidrGroupRef",
            &s.cidr_group_ref,
            "CiliumCIDRGroup references",
        )?;
        unsupported(
            &p,
            "cidrGroupSelector",
            &s.cidr_group_selector,
            "CiliumCIDRGroup selectors",
        )?;
        let Some(c) = &s.cidr else {
            return Err((format!("{p}.cidr"), "required".into()));
        };
        let prefix = cidr(c, &format!("{p}.cidr"))?;
        let mut except = Vec::new();
        for (j, x) in s.except.iter().flatten().enumerate() {
            let xp = format!("{p}.except[{j}]");
            let x = cidr(x, &xp)?;
            if x.len < prefix.len || !prefix.contains(x.addr) {
                return Err((xp, format!("{x} is not inside {prefix}")));
            }
            except.push(x);
        }
        peers.push(Peer::Cidr { prefix, except });
    }
    let (ents, ent_name) = by_dir(
        egress,
        (&r.to_entities, "toEntities"),
        (&r.from_entities, "fromEntities"),
    );
    for (i, e) in ents.iter().flatten().enumerate() {
        match Entity::parse(e) {
            Some(ent) => peers.push(Peer::Entity(ent)),
            None => {
                return Err((
                    format!("{path}.{ent_name}[{i}]"),
                    format!(
                        "`{e}` is not an entity (all, world, cluster, host, remote-node, kube-apiserver, health, init, ingress, unmanaged)"
                    ),
                ));
            }
        }
    }

    let mut ports = Vec::new();
    for (i, tp) in r.to_ports.iter().flatten().enumerate() {
        let p = format!("{path}.toPorts[{i}]");
        let l7 = "L7 rules need a proxy; fastpath enforces L3/L4 only";
        unsupported(&p, "rules", &tp.rules, l7)?;
        unsupported(&p, "terminatingTLS", &tp.terminating_tls, l7)?;
        unsupported(&p, "originatingTLS", &tp.originating_tls, l7)?;
        unsupported(&p, "serverNames", &tp.server_names, l7)?;
        unsupported(&p, "listener", &tp.listener, l7)?;
        let list = tp.ports.as_deref().unwrap_or_default();
        if list.is_empty() {
            return Err((
                format!("{p}.ports"),
                "toPorts needs at least one port".into(),
            ));
        }
        for (j, pp) in list.iter().enumerate() {
            let pp_path = format!("{p}.ports[{j}]");
            let proto = protocol(
                pp.protocol.as_deref(),
                "ANY",
                &format!("{pp_path}.protocol"),
                true,
            )?;
            ports.push(port_rule(pp.port.as_ref(), pp.end_port, proto, &pp_path)?);
        }
    }
    for (i, ic) in r.icmps.iter().flatten().enumerate() {
        for (j, f) in ic.fields.iter().enumerate() {
            let p = format!("{path}.icmps[{i}].fields[{j}]");
            if let Some(fam) = &f.family
                && fam != "IPv4"
            {
                return Err((
                    format!("{p}.family"),
                    format!("`{fam}`: only IPv4 is supported"),
                ));
            }
            let ty = icmp_type(&f.ty, &format!("{p}.type"))?;
            ports.push(PortRule {
                proto: 1,
                port: ty,
                end: ty,
            });
        }
    }
    Ok(Rule { deny, peers, ports })
}

// ---- Kubernetes NetworkPolicy -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KnpObject {
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: String,
    #[allow(dead_code)]
    metadata: Value,
    spec: Option<KnpSpec>,
    #[allow(dead_code)]
    status: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KnpSpec {
    pod_selector: Option<Sel>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<KnpRule>>,
    egress: Option<Vec<KnpRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KnpRule {
    from: Option<Vec<KnpPeer>>,
    to: Option<Vec<KnpPeer>>,
    ports: Option<Vec<PortProto>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KnpPeer {
    pod_selector: Option<Sel>,
    namespace_selector: Option<Sel>,
    ip_block: Option<IpBlock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IpBlock {
    cidr: String,
    except: Option<Vec<String>>,
}

/// The namespace label Kubernetes sets on every namespace; the only one fastpath knows.
const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn knp(spec: KnpSpec, id: PolicyId, ns: &str) -> Result<Policy, Bad> {
    let Some(ps) = &spec.pod_selector else {
        return Err((
            "spec.podSelector".into(),
            "required ({} selects every pod)".into(),
        ));
    };
    let subject = selector(ps, "spec.podSelector", Some("k8s"))?.in_namespace(ns);
    let mut types = [true, spec.egress.is_some()];
    if let Some(t) = &spec.policy_types {
        types = [false, false];
        for (i, ty) in t.iter().enumerate() {
            match ty.as_str() {
                "Ingress" => types[0] = true,
                "Egress" => types[1] = true,
                o => {
                    return Err((
                        format!("spec.policyTypes[{i}]"),
                        format!("`{o}` is not Ingress or Egress"),
                    ));
                }
            }
        }
    }
    let mut dirs: [Vec<Rule>; 2] = Default::default();
    for (dir, name, list) in [
        (0usize, "ingress", &spec.ingress),
        (1, "egress", &spec.egress),
    ] {
        for (i, r) in list.iter().flatten().enumerate() {
            let p = format!("spec.{name}[{i}]");
            let (peers_field, wrong) = if dir == 0 {
                (&r.from, r.to.is_some().then_some("to"))
            } else {
                (&r.to, r.from.is_some().then_some("from"))
            };
            if let Some(w) = wrong {
                return Err((
                    format!("{p}.{w}"),
                    format!("`{w}` is not a field of an {name} rule"),
                ));
            }
            let pname = if dir == 0 { "from" } else { "to" };
            let mut peers = Vec::new();
            for (j, peer) in peers_field.iter().flatten().enumerate() {
                peers.push(knp_peer(peer, ns, &format!("{p}.{pname}[{j}]"))?);
            }
            if peers.is_empty() {
                // No `from`/`to`: every source/destination.
                peers.push(Peer::Any);
            }
            let mut ports = Vec::new();
            for (j, pp) in r.ports.iter().flatten().enumerate() {
                let pp_path = format!("{p}.ports[{j}]");
                let proto = protocol(
                    pp.protocol.as_deref(),
                    "TCP",
                    &format!("{pp_path}.protocol"),
                    false,
                )?;
                ports.push(port_rule(pp.port.as_ref(), pp.end_port, proto, &pp_path)?);
            }
            dirs[dir].push(Rule {
                deny: false,
                peers,
                ports,
            });
        }
    }
    let [ingress, egress] = dirs;
    Ok(Policy {
        id,
        subject,
        ingress,
        egress,
        default_deny: types,
    })
}

fn knp_peer(peer: &KnpPeer, ns: &str, path: &str) -> Result<Peer, Bad> {
    if let Some(b) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err((
                format!("{path}.ipBlock"),
                "ipBlock cannot be combined with a selector".into(),
            ));
        }
        let prefix = cidr(&b.cidr, &format!("{path}.ipBlock.cidr"))?;
        let mut except = Vec::new();
        for (j, x) in b.except.iter().flatten().enumerate() {
            except.push(cidr(x, &format!("{path}.ipBlock.except[{j}]"))?);
        }
        return Ok(Peer::Cidr { prefix, except });
    }
    let mut sel = match &peer.pod_selector {
        Some(s) => selector(s, &format!("{path}.podSelector"), Some("k8s"))?,
        None => Selector::default(),
    };
    match &peer.namespace_selector {
        None => sel = sel.in_namespace(ns),
        Some(nsel) => {
            let p = format!("{path}.namespaceSelector");
            let n = selector(nsel, &p, None)?;
            if n.reqs.is_empty() {
                // Every namespace: pods only.
                sel.reqs.push(Req {
                    source: Some("k8s".into()),
                    key: NAMESPACE_LABEL.into(),
                    op: Op::Exists,
                });
            }
            for r in n.reqs {
                if r.key != NS_NAME_LABEL {
                    return Err((
                        p,
                        format!(
                            "namespace label `{}` is unknown to fastpath: select namespaces by `{NS_NAME_LABEL}`",
                            r.key
                        ),
                    ));
                }
                sel.reqs.push(Req {
                    source: Some("k8s".into()),
                    key: NAMESPACE_LABEL.into(),
                    op: r.op,
                });
            }
        }
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Err((
            path.into(),
            "a peer needs podSelector, namespaceSelector or ipBlock".into(),
        ));
    }
    Ok(Peer::Endpoints(sel))
}
