//! The links of a pod, made and removed with iproute2 (`ip`), `nsenter` and `ethtool`, each
//! run with a time limit: the host end (`lxc…`) in the node's network namespace, the
//! container end in the container's (`CNI_NETNS`, any path: commands there run under
//! `nsenter --net=PATH`).

use std::io::Read;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most output read from one command.
const MAX_OUTPUT: u64 = 1 << 20;

/// Run `prog args`; its stdout, or an error with the command and its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let line = || format!("{prog} {}", args.join(" "));
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", line()))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    // Readers on threads, so a chatty command cannot fill a pipe and block its exit.
    let rd = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(p) = p {
                let _ = p.take(MAX_OUTPUT).read_to_string(&mut s);
            }
            s
        })
    };
    let o = rd(out.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let e = rd(err.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{}: no answer within {} s",
                    line(),
                    COMMAND_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", line())),
        }
    };
    let (o, e) = (o.join().unwrap_or_default(), e.join().unwrap_or_default());
    if status.success() {
        Ok(o)
    } else {
        Err(format!("{}: {}", line(), e.trim()))
    }
}

/// `ip` in the node's namespace (`None`: the current one).
pub fn node_ip(netns: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut a: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        a.extend(["-n", ns]);
    }
    a.extend_from_slice(args);
    run("ip", &a)
}

/// `prog args` in the container's namespace.
pub fn in_container(netns_path: &str, prog: &str, args: &[&str]) -> Result<String, String> {
    let net = format!("--net={netns_path}");
    let mut a = vec![net.as_str(), prog];
    a.extend_from_slice(args);
    run("nsenter", &a)
}

/// One device as `ip -j link show` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub alias: Option<String>,
    pub kind: Option<String>,
}

fn links_of(json: &str) -> Vec<Link> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|l| Link {
                    name: l["ifname"].as_str().unwrap_or_default().to_string(),
                    mac: l["address"].as_str().unwrap_or_default().to_string(),
                    mtu: l["mtu"].as_u64().unwrap_or_default() as u32,
                    up: l["flags"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == "UP")),
                    alias: l["ifalias"].as_str().map(String::from),
                    kind: l["linkinfo"]["info_kind"].as_str().map(String::from),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A device of the node's namespace, if it exists.
pub fn node_link(netns: Option<&str>, name: &str) -> Option<Link> {
    node_ip(netns, &["-j", "-d", "link", "show", "dev", name])
        .ok()
        .and_then(|j| links_of(&j).into_iter().next())
}

/// Every veth of the node's namespace.
pub fn node_veths(netns: Option<&str>) -> Result<Vec<Link>, String> {
    node_ip(netns, &["-j", "-d", "link", "show", "type", "veth"]).map(|j| links_of(&j))
}

/// A device of the container's namespace, if it exists.
pub fn container_link(netns_path: &str, name: &str) -> Option<Link> {
    in_container(netns_path, "ip", &["-j", "-d", "link", "show", "dev", name])
        .ok()
        .and_then(|j| links_of(&j).into_iter().next())
}

/// The container's IPv4 addresses on `name` (`a.b.c.d/len`).
pub fn container_addrs(netns_path: &str, name: &str) -> Vec<String> {
    let j = in_container(netns_path, "ip", &["-j", "-4", "addr", "show", "dev", name])
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

/// The container's default route's gateway, if any.
pub fn container_default_gw(netns_path: &str) -> Option<String> {
    let j = in_container(netns_path, "ip", &["-j", "-4", "route", "show", "default"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&j).ok()?;
    v.as_array()?
        .iter()
        .find_map(|r| r["gateway"].as_str().map(String::from))
}

/// The veth pair of a pod: `lxc` in the node's namespace (with the plugin's alias), `ifname`
/// in the container's, both with `queues` rx/tx queues (one per fastpath worker) and `mtu`.
pub fn make_veth(
    node_ns: Option<&str>,
    lxc: &str,
    alias: &str,
    netns_path: &str,
    ifname: &str,
    mtu: u32,
    queues: u32,
) -> Result<(), String> {
    let (m, q) = (mtu.to_string(), queues.to_string());
    // The same MTU and queue counts for both ends.
    let each = [
        "mtu",
        m.as_str(),
        "numrxqueues",
        q.as_str(),
        "numtxqueues",
        q.as_str(),
    ];
    let mut a = vec!["link", "add", lxc];
    a.extend(each);
    a.extend(["type", "veth", "peer", "name", ifname, "netns", netns_path]);
    a.extend(each);
    node_ip(node_ns, &a)?;
    node_ip(node_ns, &["link", "set", "dev", lxc, "alias", alias])?;
    Ok(())
}

/// The container's side: TX checksum offload off (AF_XDP carries no offload metadata, so
/// frames must leave with finished checksums), the address as a `/32`, up, the gateway as
/// an on-link route and the default route through it.
pub fn configure_container(
    netns_path: &str,
    ifname: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<(), String> {
    let c = |prog: &str, args: &[&str]| in_container(netns_path, prog, args).map(|_| ());
    c("ethtool", &["-K", ifname, "tx", "off"])?;
    c("ip", &["addr", "add", &format!("{ip}/32"), "dev", ifname])?;
    c("ip", &["link", "set", "dev", ifname, "up"])?;
    c("ip", &["link", "set", "dev", "lo", "up"])?;
    let gw = gateway.to_string();
    c("ip", &["route", "add", &gw, "dev", ifname, "scope", "link"])?;
    c(
        "ip",
        &["route", "add", "default", "via", &gw, "dev", ifname],
    )?;
    Ok(())
}

/// The node's side once fastpath serves the pod: the device up and the host route to the
/// pod through it (host → pod goes through the kernel).
pub fn configure_node(node_ns: Option<&str>, lxc: &str, ip: Ipv4Addr) -> Result<(), String> {
    node_ip(node_ns, &["link", "set", "dev", lxc, "up"])?;
    node_ip(
        node_ns,
        &["route", "replace", &format!("{ip}/32"), "dev", lxc],
    )?;
    Ok(())
}

/// Remove the pair by its host end (its peer goes with it; so do its routes). Absent is
/// fine.
pub fn delete_node_link(node_ns: Option<&str>, lxc: &str) -> Result<(), String> {
    if node_link(node_ns, lxc).is_none() {
        return Ok(());
    }
    node_ip(node_ns, &["link", "del", "dev", lxc]).map(|_| ())
}

/// Remove the container's end of a veth (its peer goes with it). Absent is fine; a device
/// of that name that is not a veth is left alone.
pub fn delete_container_link(netns_path: &str, ifname: &str) -> Result<(), String> {
    match container_link(netns_path, ifname) {
        Some(l) if l.kind.as_deref() == Some("veth") => {
            in_container(netns_path, "ip", &["link", "del", "dev", ifname]).map(|_| ())
        }
        _ => Ok(()),
    }
}
