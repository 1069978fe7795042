//! `fastpath-cni`: the CNI plugin (spec 1.1: ADD, DEL, CHECK, STATUS, GC, VERSION) that
//! makes a pod's links and has a running fastpath serve it (docs/cni.md).
//!
//! # Contract
//! - The plugin is a thin client of the node's control socket: fastpath owns the state
//!   (endpoints, host-scope IPAM, identities), persisted in its state dir, so a restart of
//!   either loses nothing. The plugin keeps no state of its own: the host-side device of
//!   an attachment is named from the attachment (`lxc` + 12 hex digits), so DEL and GC
//!   find it without asking anyone.
//! - ADD: node info (netns, gateway, MTU, queues) → veth pair (`lxc…` in the node's
//!   namespace with the plugin's alias, `CNI_IFNAME` in the container's) → `cni_add` (IPAM
//!   picks the address, fastpath serves the pod on every worker) → the container's address,
//!   TX checksum offload off, routes via the gateway → the node's host route. A failure at
//!   any step undoes the steps before it, so a failed ADD leaves nothing.
//! - DEL: `cni_delete` (absent is success), then the veth pair. With fastpath down the
//!   pair is still removed; fastpath drops the endpoint (and frees its address) when it
//!   starts and finds its device gone.
//! - Every input is bounded: stdin (1 MiB), `CNI_ARGS` (4 KiB), each command (10 s), the
//!   control socket exchange (30 s).
//!
//! Error codes: the spec's (1 version, 2 unsupported field, 3 no such container, 4 bad
//! environment, 5 I/O, 6 decode, 7 bad config, 11 try again later, 50 not available) and
//! the plugin's own: 100 fastpath refused the endpoint, 101 no address left, 102 a link
//! could not be made, 103 CHECK found a difference.

mod conf;
mod link;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use conf::{CniArgs, PluginConf};
use fastpath::api::{self, ClientError, NodeInfo, Request, Response};
use rscni_types::error::Error;
use rscni_types::ipnet::{IpNet, Ipv4Net};
use rscni_types::types::{
    CNIResult, CNIResultWithVersion, Cmd, ErrorResult, Interface, IpConfig, Route,
};
use rscni_types::version::{PluginInfo, SpecVersion};

const E_REFUSED: u32 = 100;
const E_NO_ADDRESS: u32 = 101;
const E_LINK: u32 = 102;
const E_CHECK: u32 = 103;

fn custom(code: u32, msg: &str, details: String) -> Error {
    Error::Custom(code, msg.into(), details)
}

fn plugin_info() -> PluginInfo {
    PluginInfo::new(
        SpecVersion::new(1, 1, 0),
        vec![
            SpecVersion::new(0, 3, 0),
            SpecVersion::new(0, 3, 1),
            SpecVersion::new(0, 4, 0),
            SpecVersion::new(1, 0, 0),
            SpecVersion::new(1, 1, 0),
        ],
    )
}

fn main() {
    let info = plugin_info();
    let cmd = std::env::var("CNI_COMMAND").unwrap_or_default();
    if cmd.is_empty() {
        eprintln!(
            "fastpath-cni {}: the CNI plugin of fastpath (docs/cni.md); run by a container runtime with CNI_COMMAND set.\nCNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0",
            env!("CARGO_PKG_VERSION")
        );
        if std::env::args().len() > 1 {
            // `fastpath-cni --help` / `--version`: the text above is the answer.
            std::process::exit(0);
        }
        let r = ErrorResult::new(info.cni_version(), &Error::missing_env(&["CNI_COMMAND"]));
        let _ = serde_json::to_writer(std::io::stdout().lock(), &r);
        std::process::exit(1);
    }
    // The version errors are reported under: the config's when it parsed, else ours.
    let mut version = info.cni_version();
    let out = run(&info, &cmd, &mut version);
    let mut stdout = std::io::stdout().lock();
    let code = match out {
        Ok(text) => {
            let _ = stdout.write_all(text.as_bytes());
            0
        }
        Err(e) => {
            let r = ErrorResult::new(version, &e);
            let _ = serde_json::to_writer(&mut stdout, &r);
            eprintln!("fastpath-cni: {CNI} failed: {e}", CNI = cmd);
            1
        }
    };
    let _ = stdout.flush();
    std::process::exit(code);
}

/// One invocation: its stdout on success.
fn run(info: &PluginInfo, cmd: &str, version: &mut SpecVersion) -> Result<String, Error> {
    let cmd: Cmd = cmd.parse()?;
    let mut stdin = Vec::new();
    std::io::stdin()
        .take(conf::MAX_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| Error::IOFailure(format!("reading stdin: {e}")))?;
    if cmd == Cmd::Version {
        return serde_json::to_string(info).map_err(|e| Error::IOFailure(e.to_string()));
    }
    let netconf = conf::parse_netconf(&stdin)?;
    if let Ok(v) = netconf.version() {
        *version = v;
    }
    let v = info.negotiate(&netconf, cmd)?;
    let env = Env::read(cmd)?;
    let pc = conf::plugin_conf(&netconf, &env.args)?;
    match cmd {
        Cmd::Add => {
            if !v.is_supported() {
                return Err(Error::IncompatibleVersion(format!(
                    "cniVersion {v}: results before 0.3.0 are not supported"
                )));
            }
            let r = add(&pc, &env)?;
            render(v, r)
        }
        Cmd::Del => del(&pc, &env).map(|()| String::new()),
        Cmd::Check => check(&pc, &env).map(|()| String::new()),
        Cmd::Status => status(&pc).map(|()| String::new()),
        Cmd::Gc => gc(&pc).map(|()| String::new()),
        Cmd::Version => unreachable!("answered above"),
    }
}

fn render(v: SpecVersion, r: CNIResult) -> Result<String, Error> {
    if v.is_legacy() {
        serde_json::to_string(&rscni_types::legacy::CNIResult::new(v, r))
    } else {
        serde_json::to_string(&CNIResultWithVersion::new(v, r))
    }
    .map_err(|e| Error::IOFailure(e.to_string()))
}

/// The `CNI_*` environment of one invocation, checked for the command.
#[derive(Debug, Default)]
struct Env {
    container_id: String,
    netns: Option<String>,
    ifname: String,
    args: CniArgs,
}

impl Env {
    fn read(cmd: Cmd) -> Result<Env, Error> {
        let get = |k: &str| -> Result<Option<String>, Error> {
            match std::env::var(k) {
                Ok(v) if v.is_empty() => Ok(None),
                Ok(v) => Ok(Some(v)),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(_) => Err(Error::InvalidEnvValue(format!("{k}: not valid UTF-8"))),
            }
        };
        let args = match get("CNI_ARGS")? {
            Some(a) => conf::parse_cni_args(&a)?,
            None => CniArgs::default(),
        };
        if matches!(cmd, Cmd::Status | Cmd::Gc) {
            return Ok(Env {
                args,
                ..Env::default()
            });
        }
        let mut missing = Vec::new();
        let container_id = get("CNI_CONTAINERID")?;
        let ifname = get("CNI_IFNAME")?;
        let netns = get("CNI_NETNS")?;
        if container_id.is_none() {
            missing.push("CNI_CONTAINERID");
        }
        if ifname.is_none() {
            missing.push("CNI_IFNAME");
        }
        if netns.is_none() && cmd != Cmd::Del {
            missing.push("CNI_NETNS");
        }
        if !missing.is_empty() {
            return Err(Error::missing_env(&missing));
        }
        let (container_id, ifname) = (container_id.unwrap_or_default(), ifname.unwrap_or_default());
        let att = control::config::CniAttachment {
            network: "n".into(),
            container_id: container_id.clone(),
            ifname: ifname.clone(),
        };
        fastpath::endpoints::check_attachment(&att)
            .map_err(|e| Error::InvalidEnvValue(format!("CNI_CONTAINERID / CNI_IFNAME: {e}")))?;
        if let Some(n) = &netns
            && (!n.starts_with('/') || n.len() > 4096)
        {
            return Err(Error::InvalidEnvValue(format!(
                "CNI_NETNS: `{n}` must be an absolute path"
            )));
        }
        Ok(Env {
            container_id,
            netns,
            ifname,
            args,
        })
    }

    fn attachment(&self, pc: &PluginConf) -> control::config::CniAttachment {
        control::config::CniAttachment {
            network: pc.network.clone(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// A control-socket call; a node that is not there is "try again later".
fn call(pc: &PluginConf, req: &Request) -> Result<Response, Error> {
    match api::call(&pc.socket, req) {
        Ok(Response::Error { message }) | Err(ClientError::Remote(message)) => {
            Err(refused(message))
        }
        Ok(r) => Ok(r),
        Err(ClientError::Connect { path, source }) => Err(Error::TryAgainLater(format!(
            "fastpath is not serving {} ({source}): start `fastpath run` on the node, then retry",
            path.display()
        ))),
        Err(e) => Err(Error::TryAgainLater(format!(
            "fastpath control socket: {e}"
        ))),
    }
}

fn refused(message: String) -> Error {
    if message.starts_with("ipam: no free address") {
        custom(E_NO_ADDRESS, "no address left", message)
    } else {
        custom(E_REFUSED, "fastpath refused the endpoint", message)
    }
}

fn node_info(pc: &PluginConf) -> Result<NodeInfo, Error> {
    match call(pc, &Request::NodeInfo)? {
        Response::NodeInfo(i) => Ok(*i),
        other => Err(Error::IOFailure(format!("unexpected answer {other:?}"))),
    }
}

fn endpoints(pc: &PluginConf) -> Result<Vec<fastpath::endpoints::EndpointRow>, Error> {
    match call(pc, &Request::Endpoints)? {
        Response::Endpoints { endpoints, .. } => Ok(endpoints),
        other => Err(Error::IOFailure(format!("unexpected answer {other:?}"))),
    }
}

fn link_err(e: String) -> Error {
    custom(E_LINK, "a link could not be made", e)
}

fn add(pc: &PluginConf, env: &Env) -> Result<CNIResult, Error> {
    let netns = env.netns.as_deref().unwrap_or_default();
    if !Path::new(netns).exists() {
        return Err(Error::InvalidNetNS(format!(
            "CNI_NETNS: {netns}: no such network namespace"
        )));
    }
    if let Some(prev) = &pc.prev_result
        && prev
            .interfaces
            .iter()
            .any(|i| i.name == env.ifname && i.sandbox.is_some())
    {
        return Err(Error::InvalidNetworkConfig(format!(
            "prevResult: interface {} of the container was made by an earlier plugin of the chain; fastpath-cni makes it itself (put it first in the conflist)",
            env.ifname
        )));
    }
    let info = node_info(pc)?;
    let node_ns = info.netns.as_deref();
    let gw = info.router_ip;
    let mtu = match pc.mtu {
        Some(m) if m > info.pod_mtu => {
            return Err(Error::InvalidNetworkConfig(format!(
                "mtu: {m} is over the MTU node {} gives pods ({}: its underlay less the VXLAN overhead, at most what its AF_XDP frames hold)",
                info.node, info.pod_mtu
            )));
        }
        Some(m) => m,
        None => info.pod_mtu,
    };
    if link::container_link(netns, &env.ifname).is_some() {
        return Err(Error::InvalidNetworkConfig(format!(
            "CNI_IFNAME: {} exists already in the container's network namespace {netns}",
            env.ifname
        )));
    }
    let att = env.attachment(pc);
    let lxc = conf::lxc_name(&att.network, &att.container_id, &att.ifname);
    if let Some(l) = link::node_link(node_ns, &lxc) {
        let served = endpoints(pc)?.into_iter().find(|r| r.lxc == lxc);
        match served {
            Some(r) => {
                return Err(custom(
                    E_REFUSED,
                    "fastpath refused the endpoint",
                    format!(
                        "container {} interface {} on network {} is endpoint {}/{} already (device {lxc})",
                        att.container_id, att.ifname, att.network, r.namespace, r.name
                    ),
                ));
            }
            // A leftover of an ADD that died half-way (ours by name and alias): remove it.
            None if l.alias.as_deref() == Some(conf::alias(&pc.network).as_str()) => {
                link::delete_node_link(node_ns, &lxc).map_err(link_err)?;
            }
            None => {
                return Err(link_err(format!(
                    "device {lxc} exists in the node's namespace and was not made by fastpath-cni for network {}",
                    pc.network
                )));
            }
        }
    }
    link::make_veth(
        node_ns,
        &lxc,
        &conf::alias(&pc.network),
        netns,
        &env.ifname,
        mtu,
        info.queues.max(1),
    )
    .map_err(|e| {
        let _ = link::delete_node_link(node_ns, &lxc);
        link_err(e)
    })?;
    let undo_link = || {
        let _ = link::delete_node_link(node_ns, &lxc);
    };
    let ctr_mac = match pc.mac {
        Some(m) => {
            if let Err(e) = link::in_container(
                netns,
                "ip",
                &[
                    "link",
                    "set",
                    "dev",
                    &env.ifname,
                    "address",
                    &m.to_string().to_lowercase(),
                ],
            ) {
                undo_link();
                return Err(link_err(e));
            }
            m
        }
        None => {
            let l = link::container_link(netns, &env.ifname);
            match l.and_then(|l| l.mac.parse().ok()) {
                Some(m) => m,
                None => {
                    undo_link();
                    return Err(link_err(format!(
                        "the container's {} was not found after it was made",
                        env.ifname
                    )));
                }
            }
        }
    };
    let lxc_mac = link::node_link(node_ns, &lxc)
        .map(|l| l.mac)
        .unwrap_or_default();
    let name = env
        .args
        .pod_name
        .as_deref()
        .and_then(|n| conf::dns_name(n, 253))
        .or_else(|| conf::dns_name(&att.container_id.chars().take(12).collect::<String>(), 253))
        .unwrap_or_else(|| "pod".into());
    // A container on several networks has one interface each: eth0 keeps the pod's name,
    // the others are `<name>-<ifname>` (one endpoint per interface).
    let name = if env.ifname == "eth0" {
        name
    } else {
        conf::dns_name(&format!("{name}-{}", env.ifname), 253).unwrap_or(name)
    };
    let namespace = env
        .args
        .pod_namespace
        .as_deref()
        .or(pc.namespace.as_deref())
        .and_then(|n| conf::dns_name(n, 63))
        .unwrap_or_else(|| "default".into());
    let req = Request::CniAdd {
        endpoint: api::CniEndpoint {
            name,
            namespace,
            mac: ctr_mac,
            lxc: lxc.clone(),
            labels: pc.labels.clone(),
            attachment: att.clone(),
            ip: pc.ip,
            pool: pc.pool,
        },
    };
    // Whatever went wrong after the request was sent (a refusal, or no answer in time while
    // the node may still finish the add), the attachment is taken back out — a delete is
    // idempotent and queues behind the add — and the link removed.
    let undo_all = |e: Error| {
        let _ = call(
            pc,
            &Request::CniDelete {
                attachment: att.clone(),
            },
        );
        undo_link();
        e
    };
    let row = match call(pc, &req) {
        Ok(Response::EndpointAdded { endpoint, .. }) => endpoint,
        Ok(other) => {
            return Err(undo_all(Error::IOFailure(format!(
                "unexpected answer {other:?}"
            ))));
        }
        Err(e) => return Err(undo_all(e)),
    };
    let ip: Ipv4Addr = row.ipv4.parse().map_err(|_| {
        undo_all(Error::IOFailure(format!(
            "fastpath answered with address `{}`",
            row.ipv4
        )))
    })?;
    if let Err(e) = link::configure_container(netns, &env.ifname, ip, gw)
        .and_then(|()| link::configure_node(node_ns, &lxc, ip))
    {
        return Err(undo_all(link_err(e)));
    }
    let mut r = pc.prev_result.clone().unwrap_or_default();
    let base = r.interfaces.len() as u32;
    r.interfaces.push(Interface {
        name: lxc,
        mac: lxc_mac,
        mtu: Some(mtu),
        sandbox: None,
        socket_path: None,
        pci_id: None,
    });
    r.interfaces.push(Interface {
        name: env.ifname.clone(),
        mac: ctr_mac.to_string().to_lowercase(),
        mtu: Some(mtu),
        sandbox: Some(netns.into()),
        socket_path: None,
        pci_id: None,
    });
    r.ips.push(IpConfig {
        interface: Some(base + 1),
        address: IpNet::V4(Ipv4Net::new(ip, 32).expect("/32 is a valid prefix")),
        gateway: Some(IpAddr::V4(gw)),
    });
    r.routes.push(Route {
        dst: IpNet::V4(Ipv4Net::default()),
        gw: Some(IpAddr::V4(gw)),
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
    });
    if r.dns.is_none() {
        r.dns = pc.dns.clone();
    }
    Ok(r)
}

fn del(pc: &PluginConf, env: &Env) -> Result<(), Error> {
    let att = env.attachment(pc);
    let lxc = conf::lxc_name(&att.network, &att.container_id, &att.ifname);
    // With fastpath down nothing can be asked; the pair is still removed below, and
    // fastpath drops the endpoint when it starts and finds its device gone.
    let node_ns = match api::call(&pc.socket, &Request::NodeInfo) {
        Err(ClientError::Connect { .. }) => None,
        Ok(Response::NodeInfo(info)) => {
            call(pc, &Request::CniDelete { attachment: att })?;
            Some(info.netns)
        }
        Ok(other) => return Err(Error::IOFailure(format!("unexpected answer {other:?}"))),
        Err(e) => {
            return Err(Error::TryAgainLater(format!(
                "fastpath control socket: {e}"
            )));
        }
    };
    // The pair goes with either end: the container's (while its namespace exists) and
    // the node's (when fastpath said where that is).
    if let Some(ns) = env.netns.as_deref().filter(|n| Path::new(n).exists()) {
        link::delete_container_link(ns, &env.ifname).map_err(link_err)?;
    }
    if let Some(ns) = node_ns {
        link::delete_node_link(ns.as_deref(), &lxc).map_err(link_err)?;
    }
    Ok(())
}

fn check(pc: &PluginConf, env: &Env) -> Result<(), Error> {
    let diff = |m: String| custom(E_CHECK, "the attachment is not as ADD left it", m);
    let prev = pc.prev_result.as_ref().ok_or_else(|| {
        Error::InvalidNetworkConfig("prevResult: CHECK needs the result of the ADD".into())
    })?;
    let netns = env.netns.as_deref().unwrap_or_default();
    if !Path::new(netns).exists() {
        return Err(Error::InvalidNetNS(format!(
            "CNI_NETNS: {netns}: no such network namespace"
        )));
    }
    let att = env.attachment(pc);
    let row = endpoints(pc)?
        .into_iter()
        .find(|r| r.cni.as_ref() == Some(&att))
        .ok_or_else(|| {
            diff(format!(
                "fastpath serves no endpoint for container {} interface {} on network {}",
                att.container_id, att.ifname, att.network
            ))
        })?;
    let want = format!("{}/32", row.ipv4);
    if !prev.ips.iter().any(|i| i.address.to_string() == want) {
        return Err(diff(format!(
            "prevResult has no {want}: fastpath serves the container at {}",
            row.ipv4
        )));
    }
    let info = node_info(pc)?;
    let lxc = link::node_link(info.netns.as_deref(), &row.lxc)
        .ok_or_else(|| diff(format!("the node has no device {}", row.lxc)))?;
    if !lxc.up {
        return Err(diff(format!("device {} of the node is down", row.lxc)));
    }
    let ctr = link::container_link(netns, &env.ifname)
        .ok_or_else(|| diff(format!("the container has no {} in {netns}", env.ifname)))?;
    if !ctr.mac.eq_ignore_ascii_case(&row.mac) {
        return Err(diff(format!(
            "the container's {} has MAC {}, fastpath delivers to {}",
            env.ifname, ctr.mac, row.mac
        )));
    }
    if !link::container_addrs(netns, &env.ifname).contains(&want) {
        return Err(diff(format!(
            "the container's {} does not have {want}",
            env.ifname
        )));
    }
    let gw = info.router_ip.to_string();
    if link::container_default_gw(netns).as_deref() != Some(gw.as_str()) {
        return Err(diff(format!(
            "the container's default route is not via the gateway {gw}"
        )));
    }
    Ok(())
}

fn status(pc: &PluginConf) -> Result<(), Error> {
    let info = match node_info(pc) {
        Ok(i) => i,
        Err(e) => return Err(Error::PluginNotAvailable(e.details().to_string())),
    };
    let no = |m: String| Err(Error::PluginNotAvailable(m));
    if info.pod_cidr.is_none() {
        return no(format!(
            "node {} has no pod CIDR (node.pod_cidr): IPAM cannot give addresses",
            info.node
        ));
    }
    if info.ipam_free == 0 {
        return no(format!(
            "node {}: every address of {} is taken",
            info.node,
            info.pod_cidr.map(|c| c.to_string()).unwrap_or_default()
        ));
    }
    if info.pods >= info.max_pods as usize {
        return no(format!(
            "node {} serves {} pods, its datapath.max_pods",
            info.node, info.pods
        ));
    }
    Ok(())
}

/// GC: every endpoint of this network whose attachment the runtime no longer lists is
/// deleted with its devices; then devices this plugin made for the network that no
/// endpoint has (an ADD that died half-way). Goes on past a failure and reports the first.
fn gc(pc: &PluginConf) -> Result<(), Error> {
    let Some(valid) = &pc.valid_attachments else {
        return Err(Error::InvalidNetworkConfig(
            "cni.dev/valid-attachments: GC needs the list of attachments to keep (an empty list removes every one of this network)".into(),
        ));
    };
    let valid: Vec<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let info = node_info(pc)?;
    let node_ns = info.netns.as_deref();
    let rows = endpoints(pc)?;
    let mut first_err: Option<Error> = None;
    let mut kept: Vec<String> = Vec::new();
    for r in &rows {
        let Some(att) = r.cni.as_ref().filter(|a| a.network == pc.network) else {
            kept.push(r.lxc.clone());
            continue;
        };
        if valid.contains(&(att.container_id.clone(), att.ifname.clone())) {
            kept.push(r.lxc.clone());
            continue;
        }
        let res = call(
            pc,
            &Request::CniDelete {
                attachment: att.clone(),
            },
        )
        .and_then(|_| link::delete_node_link(node_ns, &r.lxc).map_err(link_err));
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    let valid_names: Vec<String> = valid
        .iter()
        .map(|(c, i)| conf::lxc_name(&pc.network, c, i))
        .collect();
    let ours = conf::alias(&pc.network);
    match link::node_veths(node_ns) {
        Ok(links) => {
            for l in links {
                if l.alias.as_deref() == Some(ours.as_str())
                    && !kept.contains(&l.name)
                    && !valid_names.contains(&l.name)
                    && let Err(e) = link::delete_node_link(node_ns, &l.name)
                {
                    first_err.get_or_insert(link_err(e));
                }
            }
        }
        Err(e) => {
            first_err.get_or_insert(link_err(e));
        }
    }
    first_err.map_or(Ok(()), Err)
}
