//! Next hops from the kernel: which device and layer-2 address reach a tunnel endpoint or a
//! native-routing gateway. The kernel's FIB and neighbour table stay the source of truth (as
//! for Cilium's `neighbor` subsystem): fastpath asks the route (`ip route get`), makes the
//! neighbour entry *managed* (`NTF_MANAGED`, Linux 5.16+: the kernel resolves it and keeps it
//! resolved even though fastpath's own frames never pass through the neighbour layer), and
//! reads the MAC back. The control thread re-reads every entry periodically and publishes
//! changes (a MAC move, a failover) to the workers.
//!
//! This (and the underlay address check) uses iproute2's JSON output; it runs on the control thread only, never per packet.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};
use control::maps::MacAddr;

/// How the kernel routes to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dev: String,
    /// The gateway, or `None` when the address is on-link.
    pub gateway: Option<Ipv4Addr>,
}

impl Route {
    /// The address whose MAC a frame to `dst` needs.
    pub fn neighbour(&self, dst: Ipv4Addr) -> Ipv4Addr {
        self.gateway.unwrap_or(dst)
    }
}

/// A neighbour entry as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: Option<MacAddr>,
    /// `REACHABLE`, `STALE`, `INCOMPLETE`, `FAILED`, … (joined with `,`), or `none`.
    pub state: String,
}

impl Neighbour {
    /// A MAC the datapath may use: present and not in a failed state.
    pub fn usable(&self) -> Option<MacAddr> {
        self.mac
            .filter(|_| !self.state.contains("FAILED") && !self.state.contains("INCOMPLETE"))
    }
}

fn ip_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout).context("parsing `ip -j` output")
}

/// Is `ip` one of the addresses of `dev`?
pub fn has_address(dev: &str, ip: Ipv4Addr) -> anyhow::Result<bool> {
    let v = ip_json(&["-4", "addr", "show", "dev", dev])?;
    let want = ip.to_string();
    Ok(v.as_array().into_iter().flatten().any(|l| {
        l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["local"].as_str() == Some(&want))
    }))
}

/// `ip route get DST`.
pub fn route_get(dst: Ipv4Addr) -> anyhow::Result<Route> {
    let v = ip_json(&["route", "get", &dst.to_string()])
        .with_context(|| format!("no route to {dst}"))?;
    let r = &v[0];
    Ok(Route {
        dev: r["dev"]
            .as_str()
            .with_context(|| format!("route to {dst} has no device"))?
            .to_string(),
        gateway: r["gateway"].as_str().and_then(|g| g.parse().ok()),
    })
}

/// Make the neighbour entry for `ip` on `dev` managed, so the kernel resolves it now and
/// keeps it fresh. An entry that already exists is left as it is (it may be permanent).
pub fn ensure_managed(ip: Ipv4Addr, dev: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["neigh", "add", &ip.to_string(), "dev", dev, "managed"])
        .output()
        .context("running `ip neigh add`")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.contains("File exists") {
        return Ok(());
    }
    bail!("`ip neigh add {ip} dev {dev} managed`: {}", err.trim())
}

/// Start resolving `ip` afresh: a FAILED entry is only retried when traffic goes through the
/// kernel, and ours does not, so replace it with a new managed one (which probes at once).
pub fn reprobe(ip: Ipv4Addr, dev: &str) -> anyhow::Result<()> {
    let _ = Command::new("ip")
        .args(["neigh", "del", &ip.to_string(), "dev", dev])
        .output();
    ensure_managed(ip, dev)
}

/// Every IPv4 neighbour on `dev`.
pub fn neighbours(dev: &str) -> anyhow::Result<Vec<(Ipv4Addr, Neighbour)>> {
    let v = ip_json(&["-4", "neigh", "show", "dev", dev])?;
    let mut out = Vec::new();
    for e in v.as_array().into_iter().flatten() {
        let Some(ip) = e["dst"].as_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let mac = e["lladdr"].as_str().and_then(|m| m.parse().ok());
        let state = e["state"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "none".into());
        out.push((ip, Neighbour { mac, state }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_only_when_resolved() {
        let m: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let n = |mac, state: &str| Neighbour {
            mac,
            state: state.into(),
        };
        assert_eq!(n(Some(m), "REACHABLE").usable(), Some(m));
        assert_eq!(n(Some(m), "STALE").usable(), Some(m));
        assert_eq!(n(Some(m), "PERMANENT").usable(), Some(m));
        assert_eq!(n(None, "INCOMPLETE").usable(), None);
        assert_eq!(n(Some(m), "FAILED").usable(), None);
        let r = Route {
            dev: "eth1".into(),
            gateway: None,
        };
        assert_eq!(
            r.neighbour(Ipv4Addr::new(1, 2, 3, 4)),
            Ipv4Addr::new(1, 2, 3, 4)
        );
    }
}
