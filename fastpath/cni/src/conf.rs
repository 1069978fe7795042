//! The plugin's input: the network configuration on stdin (CNI spec 1.1 §1, one plugin
//! object of a `.conflist` with `name` and `cniVersion` put in by the runtime) and the
//! `CNI_ARGS` environment variable, checked field by field before anything is made.
//!
//! Every error names the field and says what is allowed; the CNI error code is the one the
//! spec gives the case (2: a field the plugin does not support; 4: a bad environment
//! variable; 7: a bad value of a supported field).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use control::maps::MacAddr;
use control::net::Ipv4Cidr;
use rscni_types::error::Error;
use rscni_types::types::{CNIResult, Dns, GcAttachment, NetConf};
use serde_json::Value;

/// Largest network configuration read from stdin.
pub const MAX_STDIN_BYTES: usize = 1 << 20;
/// Largest `CNI_ARGS`.
pub const MAX_CNI_ARGS_BYTES: usize = 4096;
/// The plugin-specific keys of a fastpath-cni network configuration.
pub const KEYS: &[&str] = &["node", "socket", "mtu", "labels", "namespace"];
/// The capabilities (runtimeConfig keys) fastpath-cni takes.
pub const CAPABILITIES: &[&str] = &["ips", "mac"];

/// What a fastpath-cni network configuration says, checked.
#[derive(Debug, Clone)]
pub struct PluginConf {
    /// The network name (`name`): part of every attachment's identity.
    pub network: String,
    /// The node's control socket (`socket`, or `/run/fastpath/<node>.sock`).
    pub socket: PathBuf,
    /// The pods' MTU, if the configuration sets one (at most the node's pod MTU).
    pub mtu: Option<u32>,
    /// Labels every pod of this network gets (`labels`), merged with `args.cni.labels`.
    pub labels: BTreeMap<String, String>,
    /// The namespace of pods that `K8S_POD_NAMESPACE` does not name (`namespace`).
    pub namespace: Option<String>,
    /// `ipam.pool`: a part of the node's pod CIDR to allocate from.
    pub pool: Option<Ipv4Cidr>,
    /// The address asked for (`runtimeConfig.ips`, `args.cni.ips`, or `IP` in `CNI_ARGS`).
    pub ip: Option<Ipv4Addr>,
    /// The MAC asked for the container's interface (`runtimeConfig.mac`).
    pub mac: Option<MacAddr>,
    pub dns: Option<Dns>,
    pub prev_result: Option<CNIResult>,
    pub valid_attachments: Option<Vec<GcAttachment>>,
}

/// `CNI_ARGS`: the Kubernetes keys, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub ip: Option<Ipv4Addr>,
}

fn invalid(msg: String) -> Error {
    Error::InvalidNetworkConfig(msg)
}

fn unsupported(msg: String) -> Error {
    Error::UnsupportedNetworkConfiguration(msg)
}

/// Parse stdin's JSON into a [`NetConf`] (bounded by the caller).
pub fn parse_netconf(bytes: &[u8]) -> Result<NetConf, Error> {
    if bytes.len() > MAX_STDIN_BYTES {
        return Err(Error::IOFailure(format!(
            "the network configuration on stdin is over {MAX_STDIN_BYTES} bytes"
        )));
    }
    let conf: Option<NetConf> = serde_json::from_slice(bytes)
        .map_err(|e| Error::FailedToDecode(format!("network configuration on stdin: {e}")))?;
    let conf = conf
        .ok_or_else(|| invalid("network configuration is required on stdin (got `null`)".into()))?;
    conf.validate_name()?;
    Ok(conf)
}

/// Check the fastpath-specific parts of `conf`; `args` is `CNI_ARGS` (ADD, DEL, CHECK).
pub fn plugin_conf(conf: &NetConf, args: &CniArgs) -> Result<PluginConf, Error> {
    if conf.r#type != "fastpath-cni" {
        return Err(invalid(format!(
            "type: `{}`: this is the fastpath-cni plugin",
            conf.r#type
        )));
    }
    for k in conf.custom.keys() {
        if !KEYS.contains(&k.as_str()) {
            return Err(unsupported(format!(
                "`{k}` is not a fastpath-cni field (it takes {})",
                KEYS.join(", ")
            )));
        }
    }
    let str_field = |k: &str| -> Result<Option<String>, Error> {
        match conf.custom.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(invalid(format!("{k}: must be a string, not {v}"))),
        }
    };
    let node = str_field("node")?;
    let socket = match (str_field("socket")?, &node) {
        (Some(s), _) => {
            if !s.starts_with('/') || s.len() > 107 {
                return Err(invalid(format!(
                    "socket: `{s}` must be an absolute path of at most 107 bytes (a unix socket)"
                )));
            }
            PathBuf::from(s)
        }
        (None, Some(n)) => {
            // The rule of the node config's `node.name`.
            control::config::check_node_name(n).map_err(|m| invalid(format!("node: {m}")))?;
            fastpath::api::socket_path(n)
        }
        (None, None) => {
            return Err(invalid(
                "node: missing: name the fastpath node (its control socket is /run/fastpath/<node>.sock), or give `socket`".into(),
            ));
        }
    };
    let mtu = match conf.custom.get("mtu") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(m @ 576..=65535) => Some(m as u32),
            _ => return Err(invalid(format!("mtu: {n} must be between 576 and 65535"))),
        },
        Some(v) => return Err(invalid(format!("mtu: must be a number, not {v}"))),
    };
    let mut labels = match conf.custom.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(invalid(format!("labels.{k}: must be a string, not {v}"))),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(invalid(format!(
                "labels: must be a map of strings, not {v}"
            )));
        }
    };
    let namespace = str_field("namespace")?;
    let pool = match &conf.ipam {
        None => None,
        Some(ipam) => {
            if ipam.r#type != "fastpath" {
                return Err(unsupported(format!(
                    "ipam.type: `{}`: fastpath-cni allocates from the node's pod CIDR itself (leave `ipam` out, or set type `fastpath`)",
                    ipam.r#type
                )));
            }
            let mut pool = None;
            for (k, v) in &ipam.custom {
                match (k.as_str(), v) {
                    ("pool", Value::String(s)) => {
                        pool = Some(s.parse::<Ipv4Cidr>().map_err(|e| {
                            invalid(format!("ipam.pool: `{s}` is not an IPv4 CIDR ({e})"))
                        })?);
                    }
                    ("pool", v) => {
                        return Err(invalid(format!(
                            "ipam.pool: must be a CIDR string, not {v}"
                        )));
                    }
                    (k, _) => {
                        return Err(unsupported(format!(
                            "ipam.{k}: not a field of the fastpath IPAM (it takes `pool`)"
                        )));
                    }
                }
            }
            pool
        }
    };
    if let Some(caps) = &conf.capabilities {
        for k in caps.keys() {
            if !CAPABILITIES.contains(&k.as_str()) {
                return Err(unsupported(format!(
                    "capabilities.{k}: not supported (fastpath-cni takes {})",
                    CAPABILITIES.join(", ")
                )));
            }
        }
    }
    let mut ips: Vec<(String, String)> = Vec::new();
    let mut mac = None;
    if let Some(rc) = &conf.runtime_config {
        if !rc.port_mappings.is_empty() {
            return Err(unsupported(
                "runtimeConfig.portMappings: not supported by fastpath-cni (chain the `portmap` plugin after it)".into(),
            ));
        }
        for (k, v) in &rc.custom {
            match (k.as_str(), v) {
                ("ips", Value::Array(a)) => {
                    for x in a {
                        ips.push((
                            "runtimeConfig.ips".into(),
                            value_str(x, "runtimeConfig.ips")?,
                        ));
                    }
                }
                ("mac", Value::String(s)) => {
                    let m: MacAddr = s.parse().map_err(|_| {
                        invalid(format!("runtimeConfig.mac: `{s}` is not a MAC address"))
                    })?;
                    if m.0[0] & 1 == 1 || m.0 == [0; 6] {
                        return Err(invalid(format!(
                            "runtimeConfig.mac: {s} must be a unicast, non-zero address"
                        )));
                    }
                    mac = Some(m);
                }
                ("ips" | "mac", v) => {
                    return Err(invalid(format!("runtimeConfig.{k}: unexpected value {v}")));
                }
                (k, _) => {
                    return Err(unsupported(format!(
                        "runtimeConfig.{k}: not supported (fastpath-cni takes {})",
                        CAPABILITIES.join(", ")
                    )));
                }
            }
        }
    }
    // The CNI conventions' `args.cni` (labels, ips); other keys of `args` are for other
    // plugins and left alone.
    if let Some(cni) = conf.args.as_ref().and_then(|a| a.get("cni")) {
        if let Some(v) = cni.get("labels") {
            let Value::Array(a) = v else {
                return Err(invalid(format!(
                    "args.cni.labels: must be a list of {{\"key\", \"value\"}}, not {v}"
                )));
            };
            for l in a {
                let (Some(Value::String(k)), Some(Value::String(val))) =
                    (l.get("key"), l.get("value"))
                else {
                    return Err(invalid(format!(
                        "args.cni.labels: {l} must be {{\"key\": string, \"value\": string}}"
                    )));
                };
                labels.insert(k.clone(), val.clone());
            }
        }
        if let Some(v) = cni.get("ips") {
            let Value::Array(a) = v else {
                return Err(invalid(format!("args.cni.ips: must be a list, not {v}")));
            };
            for x in a {
                ips.push(("args.cni.ips".into(), value_str(x, "args.cni.ips")?));
            }
        }
    }
    if let Some(ip) = args.ip {
        ips.push(("CNI_ARGS IP".into(), ip.to_string()));
    }
    let ip = requested_ip(&ips)?;
    Ok(PluginConf {
        network: conf.name.clone(),
        socket,
        mtu,
        labels,
        namespace,
        pool,
        ip,
        mac,
        dns: conf.dns.clone(),
        prev_result: conf.prev_result.clone(),
        valid_attachments: conf.valid_attachments.clone(),
    })
}

fn value_str(v: &Value, field: &str) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(invalid(format!("{field}: {v} is not an address string"))),
    }
}

/// The one IPv4 address asked for, from any of the places a runtime puts it.
fn requested_ip(ips: &[(String, String)]) -> Result<Option<Ipv4Addr>, Error> {
    let mut out: Option<Ipv4Addr> = None;
    for (field, s) in ips {
        let addr = s.split('/').next().unwrap_or_default();
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| invalid(format!("{field}: `{s}` is not an IP address")))?;
        let IpAddr::V4(v4) = ip else {
            return Err(unsupported(format!(
                "{field}: {s}: fastpath-cni gives pods IPv4 addresses only"
            )));
        };
        match out {
            Some(o) if o != v4 => {
                return Err(invalid(format!(
                    "{field}: {v4}: one address per pod ({o} was asked for already)"
                )));
            }
            _ => out = Some(v4),
        }
    }
    Ok(out)
}

/// Parse `CNI_ARGS` (`K=V;K=V`). Keys other than the Kubernetes ones and `IP` are an error
/// unless `IgnoreUnknown=1` (or `true`) is among them, as the CNI conventions say.
pub fn parse_cni_args(s: &str) -> Result<CniArgs, Error> {
    let bad = |m: String| Error::InvalidEnvValue(format!("CNI_ARGS: {m}"));
    if s.len() > MAX_CNI_ARGS_BYTES {
        return Err(bad(format!("over {MAX_CNI_ARGS_BYTES} bytes")));
    }
    let mut pairs = Vec::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(bad(format!("`{part}` is not KEY=VALUE")));
        };
        pairs.push((k, v));
    }
    let ignore_unknown = pairs.iter().any(|(k, v)| {
        *k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
    });
    let mut out = CniArgs::default();
    for (k, v) in pairs {
        match k {
            "K8S_POD_NAMESPACE" if !v.is_empty() => out.pod_namespace = Some(v.to_string()),
            "K8S_POD_NAME" if !v.is_empty() => out.pod_name = Some(v.to_string()),
            "IP" => {
                out.ip = Some(
                    v.split('/')
                        .next()
                        .unwrap_or_default()
                        .parse()
                        .map_err(|_| bad(format!("IP=`{v}` is not an IPv4 address")))?,
                )
            }
            "IgnoreUnknown"
            | "K8S_POD_NAMESPACE"
            | "K8S_POD_NAME"
            | "K8S_POD_INFRA_CONTAINER_ID"
            | "K8S_POD_UID" => {}
            _ if ignore_unknown => {}
            _ => {
                return Err(bad(format!(
                    "unknown key `{k}` (fastpath-cni reads K8S_POD_NAMESPACE, K8S_POD_NAME and IP; add IgnoreUnknown=1 to pass others)"
                )));
            }
        }
    }
    Ok(out)
}

/// A Kubernetes-style name from what a runtime gives (podman's container names may hold
/// `_` or capitals): lower case, every other character `-`, at most `max` long, starting
/// and ending with an alphanumeric. `None` if nothing is left.
pub fn dns_name(s: &str, max: usize) -> Option<String> {
    let mut n: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    while n.ends_with(['-', '.']) {
        n.pop();
    }
    let n = n.trim_start_matches(['-', '.']).to_string();
    (!n.is_empty()).then_some(n)
}

/// The host-side device of an attachment: `lxc` and 12 hex digits of a hash of
/// (network, container ID, interface), so a DEL finds it without asking anyone, and two
/// attachments do not get one name (48 bits).
pub fn lxc_name(network: &str, container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network
        .bytes()
        .chain([0])
        .chain(container_id.bytes())
        .chain([0])
        .chain(ifname.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("lxc{:012x}", h >> 16)
}

/// The alias fastpath-cni gives the devices it makes, so GC can tell its leftovers of a
/// network from other devices.
pub fn alias(network: &str) -> String {
    format!("fastpath-cni {network}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> Result<PluginConf, Error> {
        let c = parse_netconf(json.as_bytes())?;
        plugin_conf(&c, &CniArgs::default())
    }

    #[test]
    fn a_minimal_config_names_the_node_socket() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n1"}"#)
            .unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/fastpath/n1.sock"));
        assert_eq!(c.network, "fp");
        assert_eq!((c.mtu, c.pool, c.ip), (None, None, None));
    }

    #[test]
    fn every_field_is_read() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"fp","type":"fastpath-cni","socket":"/tmp/x.sock","mtu":1400,
                "labels":{"app":"web"},"namespace":"prod","ipam":{"type":"fastpath","pool":"10.1.1.128/25"},
                "capabilities":{"ips":true,"mac":true},
                "runtimeConfig":{"ips":["10.1.1.130/24"],"mac":"0a:58:0a:01:01:82"},
                "args":{"cni":{"labels":[{"key":"tier","value":"front"}]}}}"#,
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(c.namespace.as_deref(), Some("prod"));
        assert_eq!(c.pool, Some("10.1.1.128/25".parse().unwrap()));
        assert_eq!(c.ip, Some(Ipv4Addr::new(10, 1, 1, 130)));
        assert_eq!(c.mac, Some("0a:58:0a:01:01:82".parse().unwrap()));
    }

    /// Each bad field is refused with its name and the spec's code.
    #[test]
    fn bad_fields_are_refused_by_name() {
        let cases: &[(&str, u32, &str)] = &[
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni"}"#,
                7,
                "node: missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"bridge","node":"n"}"#,
                7,
                "type: `bridge`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","bridge":"x"}"#,
                2,
                "`bridge` is not a fastpath-cni field",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n/../x"}"#,
                7,
                "node: `n/../x`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","socket":"rel.sock"}"#,
                7,
                "socket: `rel.sock`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","mtu":70000}"#,
                7,
                "mtu: 70000",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","mtu":"x"}"#,
                7,
                "mtu: must be a number",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","labels":{"a":1}}"#,
                7,
                "labels.a",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","ipam":{"type":"host-local"}}"#,
                2,
                "ipam.type: `host-local`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","ipam":{"type":"fastpath","pool":"10.1.1.0/33"}}"#,
                7,
                "ipam.pool",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","ipam":{"type":"fastpath","ranges":[]}}"#,
                2,
                "ipam.ranges",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","capabilities":{"portMappings":true}}"#,
                2,
                "capabilities.portMappings",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","runtimeConfig":{"ips":["fd00::5/64"]}}"#,
                2,
                "IPv4 addresses only",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","runtimeConfig":{"ips":["10.0.0.1","10.0.0.2"]}}"#,
                7,
                "one address per pod",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","runtimeConfig":{"mac":"01:00:5e:00:00:01"}}"#,
                7,
                "runtimeConfig.mac",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}}"#,
                2,
                "portMappings",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"","type":"fastpath-cni","node":"n"}"#,
                7,
                "missing network name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"fp","type":"fastpath-cni","node":"n","args":{"cni":{"labels":"x"}}}"#,
                7,
                "args.cni.labels",
            ),
        ];
        for (json, code, needle) in cases {
            let e = conf(json).expect_err(json);
            assert_eq!(u32::from(&e), *code, "{json}: {e}");
            assert!(
                e.details().contains(needle),
                "{json}: `{}` lacks `{needle}`",
                e.details()
            );
        }
        let e = parse_netconf(b"{not json").unwrap_err();
        assert_eq!(u32::from(&e), 6);
        let e = parse_netconf(&vec![b' '; MAX_STDIN_BYTES + 1]).unwrap_err();
        assert_eq!(u32::from(&e), 5);
    }

    #[test]
    fn cni_args_are_read_and_unknown_keys_need_ignore_unknown() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;FOO=bar")
            .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        let e = parse_cni_args("K8S_POD_NAME=web;FOO=bar").unwrap_err();
        assert_eq!(u32::from(&e), 4);
        assert!(e.details().contains("unknown key `FOO`"));
        assert_eq!(
            parse_cni_args("IP=10.1.1.9").unwrap().ip,
            Some(Ipv4Addr::new(10, 1, 1, 9))
        );
        assert!(parse_cni_args("IP=x").is_err());
        assert!(parse_cni_args("novalue").is_err());
        assert!(parse_cni_args(&"a=b;".repeat(2000)).is_err());
    }

    #[test]
    fn names_are_made_kubernetes_safe() {
        assert_eq!(
            dns_name("festive_Hopper", 253).as_deref(),
            Some("festive-hopper")
        );
        assert_eq!(dns_name("__", 253), None);
        assert_eq!(dns_name("-a-", 253).as_deref(), Some("a"));
        assert_eq!(dns_name(&"x".repeat(300), 253).map(|s| s.len()), Some(253));
    }

    #[test]
    fn lxc_names_are_stable_short_and_differ_per_attachment() {
        let a = lxc_name("fp", "c1", "eth0");
        assert_eq!(a, lxc_name("fp", "c1", "eth0"));
        assert_eq!(a.len(), 15, "{a}");
        assert!(a.starts_with("lxc"));
        assert_ne!(a, lxc_name("fp", "c2", "eth0"));
        assert_ne!(a, lxc_name("fp", "c1", "eth1"));
        assert_ne!(a, lxc_name("fp2", "c1", "eth0"));
    }
}
