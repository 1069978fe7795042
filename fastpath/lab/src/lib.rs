//! Namespace topologies built from a node config: the demo, the tests and the benchmarks
//! all use this, so the topology a user sees in the demo is the one the tests prove.
//!
//! For a node with `node.netns` and pods with `netns`:
//! - node namespace: `lo` up with the router IP on it (host-bound traffic works), a /32 route
//!   per pod via its lxc, IPv4 forwarding **off** (so only fastpath can move pod→pod traffic);
//! - per pod: a namespace with `eth0` (the pod MAC, `ip/32`, Cilium-style routes: the router IP
//!   on-link, default via it), veth peer `lxc…` in the node namespace, `queues` queues on both
//!   ends, TX checksum offload off on `eth0` (AF_XDP frames carry the bytes as they are; a
//!   CHECKSUM_PARTIAL skb from the pod would arrive with an unfinished checksum), IPv6 off.
//!
//! With `node.underlay` the node also gets its NIC: a veth (`underlay.device`, `queues`
//! queues, the node address on it) whose peer is a port of bridge `br0` in the fabric
//! namespace `underlay.fabric_netns` (the "top-of-rack switch", created by the first node that
//! needs it). Pods then get the overlay MTU (underlay MTU − 50) in tunnel mode, as Cilium
//! sets it.
//!
//! [`Lab::up_kernel_vxlan`] builds the same node but forwarding with the Linux kernel instead
//! of fastpath: IPv4 forwarding on, an `external` (collect-metadata) VXLAN device on the
//! tunnel port, and per-pod policy routes whose lightweight-tunnel encap puts the *pod's*
//! security identity in the VNI — the interop peer for fastpath's tunnel mode.
//!
//! [`Lab`] removes every namespace it created when dropped (RAII; not `Send`, so it is dropped
//! on the thread that made it).

use std::marker::PhantomData;
use std::process::{Command, Output};

use anyhow::{Context, bail};
use control::config::{Config, RoutingMode};

/// The bridge in the fabric namespace.
/// The bridge in the fabric namespace every node's underlay is plugged into.
pub const FABRIC_BRIDGE: &str = "br0";
/// VXLAN overhead: outer Ethernet + IPv4 + UDP + VXLAN.
const VXLAN_OVERHEAD: u32 = 50;
/// MTU of the lab's underlay links.
pub const UNDERLAY_MTU: u32 = 1500;
/// Name of the kernel node's VXLAN device.
pub const KERNEL_VXLAN_DEV: &str = "vxlan0";

/// The namespaces of a running topology; deleted on drop.
#[derive(Debug)]
pub struct Lab {
    namespaces: Vec<String>,
    /// The fabric namespace, if this lab created it (deleted last).
    fabric: Option<String>,
    keep: bool,
    _not_send: PhantomData<*const ()>,
}

/// Run a command, failing with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Run a command inside a network namespace.
pub fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

impl Lab {
    /// Build the topology `cfg` describes with `queues` queues per veth.
    ///
    /// # Errors
    /// A missing `netns` field, an existing namespace of the same name, or a failing `ip`.
    pub fn up(cfg: &Config, queues: u32) -> anyhow::Result<Lab> {
        Lab::build(cfg, queues, false)
    }

    /// Build the node with the kernel's VXLAN device and routes (the interop peer).
    pub fn up_kernel_vxlan(cfg: &Config) -> anyhow::Result<Lab> {
        Lab::build(cfg, 1, true)
    }

    fn build(cfg: &Config, queues: u32, kernel: bool) -> anyhow::Result<Lab> {
        let node = cfg
            .node
            .netns
            .clone()
            .context("node.netns: the lab needs a namespace for the node")?;
        for (i, p) in cfg.pods.iter().enumerate() {
            if p.netns.is_none() {
                bail!(
                    "pods[{i}].netns: the lab needs a namespace for pod `{}`",
                    p.name
                );
            }
        }
        if kernel && cfg.node.underlay.is_none() {
            bail!("node.underlay: a kernel-VXLAN node needs an underlay");
        }
        let pod_mtu = if cfg.node.underlay.is_some() && cfg.datapath.routing == RoutingMode::Tunnel
        {
            UNDERLAY_MTU - VXLAN_OVERHEAD
        } else {
            UNDERLAY_MTU
        }
        .to_string();
        let mut lab = Lab {
            namespaces: Vec::new(),
            fabric: None,
            keep: false,
            _not_send: PhantomData,
        };
        lab.add_ns(&node)?;
        in_ns(
            &node,
            &[
                "sysctl",
                "-qw",
                if kernel {
                    "net.ipv4.ip_forward=1"
                } else {
                    "net.ipv4.ip_forward=0"
                },
            ],
        )?;
        in_ns(
            &node,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/32", cfg.node.router_ip),
                "dev",
                "lo",
            ],
        )?;
        for ip in &cfg.node.host_ips {
            in_ns(
                &node,
                &["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"],
            )?;
        }
        for p in &cfg.pods {
            let pns = p.netns.clone().expect("checked");
            lab.add_ns(&pns)?;
            pod_links(cfg, p, &node, &pns, &pod_mtu, queues)?;
        }
        if cfg.node.underlay.is_some() {
            lab.underlay(cfg, &node, queues)?;
        }
        if kernel {
            kernel_vxlan(cfg, &node)?;
        }
        Ok(lab)
    }

    /// The node's NIC, plugged into the fabric bridge.
    fn underlay(&mut self, cfg: &Config, node: &str, queues: u32) -> anyhow::Result<()> {
        let u = cfg.node.underlay.as_ref().expect("checked");
        let fabric = u
            .fabric_netns
            .clone()
            .context("node.underlay.fabric_netns: the lab needs the fabric namespace name")?;
        if !std::path::Path::new(&format!("/run/netns/{fabric}")).exists() {
            sh(&["ip", "netns", "add", &fabric])?;
            self.fabric = Some(fabric.clone());
            in_ns(&fabric, &["ip", "link", "set", "lo", "up"])?;
            // A switch, not a firewall: with br_netfilter on (it is, in every namespace of
            // this kernel) the bridge would run IP checks on what it forwards and drop
            // frames with a bad header checksum or length before any node saw them.
            in_ns(
                &fabric,
                &[
                    "ip",
                    "link",
                    "add",
                    FABRIC_BRIDGE,
                    "type",
                    "bridge",
                    "nf_call_iptables",
                    "0",
                    "nf_call_arptables",
                    "0",
                    "nf_call_ip6tables",
                    "0",
                ],
            )?;
            // The per-bridge options only add to the namespace's sysctls: turn those off too
            // (where br_netfilter exists at all).
            for sysctl in [
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ] {
                let _ = in_ns(&fabric, &["sysctl", "-qw", sysctl]);
            }
            in_ns(&fabric, &["ip", "link", "set", FABRIC_BRIDGE, "up"])?;
        }
        let port = fabric_port(&cfg.node.name);
        veth_pair((&u.device, node), (&port, &fabric), queues)?;
        // Checksums finished in software before frames reach an AF_XDP socket (see module doc).
        in_ns(&fabric, &["ethtool", "-K", &port, "tx", "off"])?;
        in_ns(
            &fabric,
            &["ip", "link", "set", &port, "master", FABRIC_BRIDGE, "up"],
        )?;
        in_ns(node, &["ethtool", "-K", &u.device, "tx", "off"])?;
        in_ns(
            node,
            &[
                "ip",
                "addr",
                "add",
                &u.address.to_string(),
                "dev",
                &u.device,
            ],
        )?;
        in_ns(node, &["ip", "link", "set", &u.device, "up"])?;
        Ok(())
    }

    fn add_ns(&mut self, name: &str) -> anyhow::Result<()> {
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            bail!(
                "network namespace `{name}` already exists (a previous run still up? `fastpath lab down`)"
            );
        }
        sh(&["ip", "netns", "add", name])?;
        self.namespaces.push(name.into());
        in_ns(name, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Leave the namespaces in place when dropped (`fastpath lab up` for a later `lab down`).
    pub fn keep(mut self) {
        self.keep = true;
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for ns in self.namespaces.iter().rev().chain(self.fabric.as_ref()) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A pod's links: the veth pair (`lxc` in the node's namespace, `eth0` in the pod's), its
/// MAC, address, MTU, routes via the router IP, TX checksum offload off — what a CNI plugin
/// does for Cilium.
fn pod_links(
    cfg: &Config,
    p: &control::config::PodConfig,
    node: &str,
    pns: &str,
    pod_mtu: &str,
    queues: u32,
) -> anyhow::Result<()> {
    in_ns(pns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
    veth_pair((&p.lxc, node), ("eth0", pns), queues)?;
    in_ns(
        pns,
        &[
            "ip",
            "link",
            "set",
            "eth0",
            "address",
            &p.mac.to_string().to_lowercase(),
        ],
    )?;
    in_ns(
        pns,
        &["ip", "addr", "add", &format!("{}/32", p.ip), "dev", "eth0"],
    )?;
    in_ns(pns, &["ethtool", "-K", "eth0", "tx", "off"])?;
    in_ns(pns, &["ip", "link", "set", "eth0", "mtu", pod_mtu])?;
    in_ns(node, &["ip", "link", "set", &p.lxc, "mtu", pod_mtu])?;
    in_ns(pns, &["ip", "link", "set", "eth0", "up"])?;
    in_ns(
        pns,
        &[
            "ip",
            "route",
            "add",
            &cfg.node.router_ip.to_string(),
            "dev",
            "eth0",
            "scope",
            "link",
        ],
    )?;
    in_ns(
        pns,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &cfg.node.router_ip.to_string(),
            "dev",
            "eth0",
        ],
    )?;
    in_ns(node, &["ip", "link", "set", &p.lxc, "up"])?;
    in_ns(
        node,
        &["ip", "route", "add", &format!("{}/32", p.ip), "dev", &p.lxc],
    )?;
    Ok(())
}

/// One pod's namespace and veth pair, made outside a [`Lab`] (what a CNI plugin would do
/// before `fastpath endpoint add`); deleted on drop (which also deletes the veth pair).
#[derive(Debug)]
pub struct PodNs {
    pub netns: String,
}

impl PodNs {
    /// Create `pod` (its `netns` field names the namespace) on the node of `cfg`.
    ///
    /// # Errors
    /// A missing `netns`, an existing namespace, or a failing `ip`.
    pub fn up(
        cfg: &Config,
        pod: &control::config::PodConfig,
        queues: u32,
    ) -> anyhow::Result<PodNs> {
        let node = cfg
            .node
            .netns
            .clone()
            .context("node.netns: the lab needs a namespace for the node")?;
        let pns = pod
            .netns
            .clone()
            .context("netns: the lab needs a namespace for the pod")?;
        if std::path::Path::new(&format!("/run/netns/{pns}")).exists() {
            bail!("network namespace `{pns}` already exists");
        }
        sh(&["ip", "netns", "add", &pns])?;
        let guard = PodNs { netns: pns.clone() };
        in_ns(&pns, &["ip", "link", "set", "lo", "up"])?;
        let pod_mtu = if cfg.node.underlay.is_some() && cfg.datapath.routing == RoutingMode::Tunnel
        {
            UNDERLAY_MTU - VXLAN_OVERHEAD
        } else {
            UNDERLAY_MTU
        }
        .to_string();
        pod_links(cfg, pod, &node, &pns, &pod_mtu, queues)?;
        Ok(guard)
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// A veth pair with `queues` rx/tx queues on both ends, each end created in its namespace.
fn veth_pair(a: (&str, &str), b: (&str, &str), queues: u32) -> anyhow::Result<()> {
    let q = queues.to_string();
    sh(&[
        "ip",
        "link",
        "add",
        a.0,
        "netns",
        a.1,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        b.0,
        "netns",
        b.1,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ])?;
    Ok(())
}

/// The node's port on the fabric bridge: `p-` and the last 13 characters of the node name
/// (the tail is what tells generated names apart).
pub fn fabric_port(node: &str) -> String {
    let tail: String = node
        .chars()
        .rev()
        .take(13)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("p-{tail}")
}

/// The kernel's way to be a Cilium tunnel-mode node: an `external` VXLAN device, a permanent
/// neighbour per remote node (so nothing ARPs through the tunnel), and per-pod policy routes
/// whose encap carries the pod's identity as the VNI; host-originated traffic goes out as
/// remote-node (6), as Cilium's sender rule says.
fn kernel_vxlan(cfg: &Config, node: &str) -> anyhow::Result<()> {
    let u = cfg.node.underlay.as_ref().expect("checked");
    let port = cfg.datapath.tunnel_port.to_string();
    let mtu = (UNDERLAY_MTU - VXLAN_OVERHEAD).to_string();
    for sysctl in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        in_ns(node, &["sysctl", "-qw", sysctl])?;
    }
    in_ns(
        node,
        &[
            "ip",
            "link",
            "add",
            KERNEL_VXLAN_DEV,
            "type",
            "vxlan",
            "external",
            "dstport",
            &port,
            "nolearning",
        ],
    )?;
    if let Some(m) = u.overlay_mac {
        in_ns(
            node,
            &[
                "ip",
                "link",
                "set",
                KERNEL_VXLAN_DEV,
                "address",
                &m.to_string().to_lowercase(),
            ],
        )?;
    }
    in_ns(
        node,
        &["ip", "link", "set", KERNEL_VXLAN_DEV, "mtu", &mtu, "up"],
    )?;
    in_ns(
        node,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{KERNEL_VXLAN_DEV}.rp_filter=0"),
        ],
    )?;
    let (local_ids, _) = cfg.identities();
    for (k, r) in cfg.remote_nodes.iter().enumerate() {
        let gw = format!("169.254.42.{}", k + 1);
        let mac = r
            .overlay_mac
            .map(|m| m.to_string().to_lowercase())
            .unwrap_or_else(|| format!("02:00:00:00:42:{:02x}", k + 1));
        in_ns(
            node,
            &[
                "ip",
                "neigh",
                "replace",
                &gw,
                "lladdr",
                &mac,
                "dev",
                KERNEL_VXLAN_DEV,
                "nud",
                "permanent",
            ],
        )?;
        let node_ip = u.address.addr.to_string();
        let route = |table: &str, id: u32, src: Option<&str>| -> anyhow::Result<()> {
            let (pod_cidr, id, dst) = (r.pod_cidr.to_string(), id.to_string(), r.ip.to_string());
            let mut args = vec![
                "ip",
                "route",
                "add",
                &pod_cidr,
                "encap",
                "ip",
                "id",
                &id,
                "dst",
                &dst,
                "ttl",
                "64",
                "via",
                &gw,
                "dev",
                KERNEL_VXLAN_DEV,
                "onlink",
                "table",
                table,
            ];
            // Host-originated traffic must leave with the node's underlay address as its
            // source (the address the peer's ipcache calls remote-node), not whichever other
            // address the node has.
            if let Some(src) = src {
                args.extend(["src", src]);
            }
            in_ns(node, &args)?;
            Ok(())
        };
        route(
            "main",
            control::identity::RESERVED_REMOTE_NODE,
            Some(&node_ip),
        )?;
        for (i, id) in local_ids.iter().enumerate() {
            route(&(100 + i).to_string(), *id, None)?;
        }
    }
    for (i, p) in cfg.pods.iter().enumerate() {
        in_ns(
            node,
            &[
                "ip",
                "rule",
                "add",
                "from",
                &p.ip.to_string(),
                "lookup",
                &(100 + i).to_string(),
                "pref",
                "100",
            ],
        )?;
    }
    Ok(())
}

/// Remove the namespaces a config names (the counterpart of `up` + `keep`).
pub fn down(cfg: &Config) {
    // Unplug the node from the fabric first: deleting a namespace destroys its veths only
    // asynchronously, and the fabric check below must not see the port still there.
    if let Some(f) = cfg
        .node
        .underlay
        .as_ref()
        .and_then(|u| u.fabric_netns.clone())
    {
        let _ = Command::new("ip")
            .args(["-n", &f, "link", "del", &fabric_port(&cfg.node.name)])
            .output();
    }
    let names = cfg
        .pods
        .iter()
        .filter_map(|p| p.netns.clone())
        .chain(cfg.node.netns.clone());
    for ns in names {
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    }
    // The fabric goes with its last node.
    if let Some(f) = cfg
        .node
        .underlay
        .as_ref()
        .and_then(|u| u.fabric_netns.clone())
    {
        let ports = Command::new("ip")
            .args(["-n", &f, "-j", "link", "show", "master", FABRIC_BRIDGE])
            .output();
        if let Ok(o) = ports
            && o.status.success()
            && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .map(|v| v.as_array().is_none_or(|a| a.is_empty()))
                .unwrap_or(true)
        {
            let _ = Command::new("ip").args(["netns", "del", &f]).output();
        }
    }
}
