//! The kernel never forwards to pods: policy-routing rules in the node's namespace that keep
//! the kernel from routing traffic to the cluster's pod addresses around fastpath — while
//! fastpath runs (where they are not reached: XDP steers that traffic to the workers first)
//! and, the point, while it is stopped, restarting or crashed, when XDP is gone and pods'
//! frames reach the kernel (docs/cni.md, "Restarts").
//!
//! # Rules
//! - For every *guarded prefix* — the node's pod CIDR (and IPv6 pod CIDR), every remote
//!   node's pod CIDR, and the address of any local pod outside the node's pod CIDR — two
//!   rules, tagged `protocol 251`:
//!   `priority 39 iif lo to P lookup main` (what the node itself sends to a pod is routed as
//!   usual: host → pod goes through the kernel) and `priority 40 to P blackhole` (anything
//!   else — forwarded from a pod, from the NIC, from any other device — goes nowhere).
//!   Both come after the `local` table (priority 0), so traffic *to* the node's own
//!   addresses (the gateway inside the pod CIDR included) is still delivered.
//! - No sysctl touches them: writing `net.ipv4.ip_forward` (podman does) resets every
//!   device's `forwarding`, which is why a per-device sysctl was not enough.
//! - They are made before XDP is attached, kept when fastpath exits, and brought to the
//!   wanted set at start and after an endpoint change: missing rules are added *before*
//!   stale ones (of this tag) are deleted, so there is never a moment without a guard.
//! - Traffic to the world is not guarded: the kernel routes it with or without fastpath,
//!   as it did before (docs/policy.md, "Limits"). One fastpath per network namespace: the
//!   wanted set is the namespace's.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

/// The `protocol` tag of fastpath's rules (`ip rule show` prints it as 251).
pub const PROTO: &str = "251";
/// Priority of the rule that lets the node's own traffic to pods through.
pub const PRIO_HOST: &str = "39";
/// Priority of the blackhole rule.
pub const PRIO_BLACKHOLE: &str = "40";

/// A guarded prefix, as `ip` prints and takes it (`10.1.1.0/24`, `fd00:10:1::/64`).
pub type Prefix = String;

/// The prefixes of a node's config: its pod CIDRs and its remote nodes' pod CIDRs.
pub fn base(cfg: &control::config::Config) -> BTreeSet<Prefix> {
    let mut out = BTreeSet::new();
    if let Some(c) = cfg.node.pod_cidr {
        out.insert(c.network().to_string());
    }
    if let Some(c) = cfg.node.pod_cidr_v6 {
        out.insert(c.network().to_string());
    }
    for r in &cfg.remote_nodes {
        out.insert(r.pod_cidr.network().to_string());
        if let Some(c) = r.pod_cidr_v6 {
            out.insert(c.network().to_string());
        }
    }
    out
}

/// [`base`], and the addresses of the local `pods` outside the node's pod CIDRs.
pub fn wanted<'a>(
    cfg: &control::config::Config,
    pods: impl IntoIterator<Item = &'a control::config::PodConfig>,
) -> BTreeSet<Prefix> {
    with_pods(&base(cfg), cfg.node.pod_cidr, cfg.node.pod_cidr_v6, pods)
}

/// `base`, and the addresses of `pods` outside the pod CIDRs `v4` / `v6`, as host prefixes.
pub fn with_pods<'a>(
    base: &BTreeSet<Prefix>,
    v4: Option<control::net::Ipv4Cidr>,
    v6: Option<control::net::Ipv6Cidr>,
    pods: impl IntoIterator<Item = &'a control::config::PodConfig>,
) -> BTreeSet<Prefix> {
    let mut out = base.clone();
    for p in pods {
        if v4.is_none_or(|c| !c.contains(p.ip)) {
            out.insert(format!("{}/32", p.ip));
        }
        if let Some(a) = p.ipv6
            && v6.is_none_or(|c| !c.contains(a))
        {
            out.insert(format!("{a}/128"));
        }
    }
    out
}

fn ip(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = std::process::Command::new("ip")
        .env("LC_ALL", "C")
        .args(args)
        .output()
        .context("running `ip rule`")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn family(p: &str) -> &'static str {
    if p.contains(':') { "-6" } else { "-4" }
}

/// The rules of `p` (host pass-through, then blackhole), as `ip rule add|del` arguments.
fn rules(p: &str) -> [Vec<String>; 2] {
    let f = family(p).to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    [
        [
            vec![f.clone()],
            s(&[
                "rule", "OP", "priority", PRIO_HOST, "iif", "lo", "to", p, "lookup", "main",
                "protocol", PROTO,
            ]),
        ]
        .concat(),
        [
            vec![f],
            s(&[
                "rule",
                "OP",
                "priority",
                PRIO_BLACKHOLE,
                "to",
                p,
                "blackhole",
                "protocol",
                PROTO,
            ]),
        ]
        .concat(),
    ]
}

/// The prefixes that have fastpath's rules now (either family).
fn in_force() -> anyhow::Result<BTreeSet<Prefix>> {
    let mut out = BTreeSet::new();
    for f in ["-4", "-6"] {
        let (ok, stdout, err) = ip(&[f, "-j", "rule", "show"])?;
        if !ok {
            bail!("`ip {f} rule show`: {}", err.trim());
        }
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
        for r in v.as_array().into_iter().flatten() {
            if r["protocol"] == PROTO
                && let (Some(d), Some(l)) = (r["dst"].as_str(), r["dstlen"].as_u64())
            {
                out.insert(format!("{d}/{l}"));
            }
        }
    }
    Ok(out)
}

/// Bring the rules to `want`: add what is missing, then delete what is no longer wanted.
///
/// # Errors
/// A rule could not be added (the kernel refused it, `ip` is missing). Deleting a stale
/// rule that is already gone is fine.
pub fn sync(want: &BTreeSet<Prefix>) -> anyhow::Result<()> {
    let have = in_force()?;
    for p in want {
        for r in rules(p) {
            let a: Vec<&str> = r
                .iter()
                .map(|s| if s == "OP" { "add" } else { s })
                .collect();
            let (ok, _, err) = ip(&a)?;
            if !ok && !err.contains("File exists") {
                bail!(
                    "`ip {}` (the rule that keeps the kernel from forwarding to pods): {}",
                    a.join(" "),
                    err.trim()
                );
            }
        }
    }
    for p in have.difference(want) {
        for r in rules(p) {
            let a: Vec<&str> = r
                .iter()
                .map(|s| if s == "OP" { "del" } else { s })
                .collect();
            let _ = ip(&a);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wanted_prefixes_are_the_clusters_pod_addresses() {
        let cfg = control::config::Config::parse(
            "node: { name: n, router_ip: 10.1.0.1, pod_cidr: 10.1.1.0/24, pod_cidr_v6: 'fd00:10:1::/64', underlay: { device: eth1, address: 192.168.0.1/24 } }\npods: []\nremote_nodes: [{ name: m, ip: 192.168.0.2, pod_cidr: 10.1.2.0/24 }]\n",
            "t",
        )
        .unwrap();
        let pod = |ip: &str, v6: Option<&str>| control::config::PodConfig {
            name: "p".into(),
            namespace: "default".into(),
            ip: ip.parse().unwrap(),
            ipv6: v6.map(|a| a.parse().unwrap()),
            mac: control::maps::MacAddr([2, 0, 0, 0, 0, 1]),
            lxc: "lxc-p".into(),
            id: None,
            labels: Default::default(),
            netns: None,
            cni: None,
        };
        let pods = [pod("10.1.1.9", Some("fd00:10:1::9")), pod("10.9.9.9", None)];
        let w = wanted(&cfg, &pods);
        let w: Vec<&str> = w.iter().map(String::as_str).collect();
        assert_eq!(
            w,
            [
                "10.1.1.0/24",
                "10.1.2.0/24",
                "10.9.9.9/32",
                "fd00:10:1::/64"
            ]
        );
        let r = rules("fd00:10:1::/64");
        assert_eq!(r[0][0], "-6");
        assert!(r[1].contains(&"blackhole".to_string()));
    }
}
