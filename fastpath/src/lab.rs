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
//! [`Lab`] removes every namespace it created when dropped (RAII; not `Send`, so it is dropped
//! on the thread that made it).

use std::marker::PhantomData;
use std::process::{Command, Output};

use anyhow::{Context, bail};
use control::config::Config;

/// The namespaces of a running topology; deleted on drop.
#[derive(Debug)]
pub struct Lab {
    namespaces: Vec<String>,
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
        let mut lab = Lab {
            namespaces: Vec::new(),
            keep: false,
            _not_send: PhantomData,
        };
        let q = queues.to_string();
        lab.add_ns(&node)?;
        in_ns(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
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
            in_ns(&pns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
            sh(&[
                "ip",
                "link",
                "add",
                &p.lxc,
                "netns",
                &node,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pns,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
            ])?;
            in_ns(
                &pns,
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
                &pns,
                &["ip", "addr", "add", &format!("{}/32", p.ip), "dev", "eth0"],
            )?;
            in_ns(&pns, &["ethtool", "-K", "eth0", "tx", "off"])?;
            in_ns(&pns, &["ip", "link", "set", "eth0", "up"])?;
            in_ns(
                &pns,
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
                &pns,
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
            in_ns(&node, &["ip", "link", "set", &p.lxc, "up"])?;
            in_ns(
                &node,
                &["ip", "route", "add", &format!("{}/32", p.ip), "dev", &p.lxc],
            )?;
        }
        Ok(lab)
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
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Remove the namespaces a config names (the counterpart of `up` + `keep`).
pub fn down(cfg: &Config) {
    let names = cfg
        .pods
        .iter()
        .filter_map(|p| p.netns.clone())
        .chain(cfg.node.netns.clone());
    for ns in names {
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    }
}
