//! The control plane's intent-named API over the tables (katran's `KatranLb` shape).
//!
//! Every change is validated first, then written to the kernel maps (the XDP steering program
//! and the tc fallback read them), then published to the workers. If a kernel write fails
//! half-way the entries already written are restored, so a bad update leaves the old state in
//! force on both sides. [`NoKernel`] runs the same logic without any BPF map (unit tests, and
//! `fastpath replay`-style uses).

use crate::config::Config;
use crate::identity;
use crate::maps::lxc::ENDPOINT_KEY_IPV4;
use crate::maps::{EndpointInfo, EndpointKey};
use crate::tables::{EndpointEntry, Port, TableReader, TableWriter, Tables};

/// A failed write to a kernel map.
#[derive(Debug, thiserror::Error)]
#[error("{map}: {op} {key}: {msg}")]
pub struct MapWriteError {
    pub map: &'static str,
    pub op: &'static str,
    pub key: String,
    pub msg: String,
}

/// Where the control plane mirrors its tables in the kernel (pinned eBPF maps).
pub trait KernelMaps {
    fn upsert_endpoint(&mut self, k: &EndpointKey, v: &EndpointInfo) -> Result<(), MapWriteError>;
    fn remove_endpoint(&mut self, k: &EndpointKey) -> Result<(), MapWriteError>;
}

/// No kernel maps: the testing mode.
#[derive(Debug, Default)]
pub struct NoKernel;

impl KernelMaps for NoKernel {
    fn upsert_endpoint(&mut self, _: &EndpointKey, _: &EndpointInfo) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn remove_endpoint(&mut self, _: &EndpointKey) -> Result<(), MapWriteError> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("endpoint {key}: {msg}")]
    InvalidEndpoint { key: String, msg: String },
    #[error("endpoint {0} does not exist")]
    NoSuchEndpoint(String),
    #[error(transparent)]
    Kernel(#[from] MapWriteError),
}

/// The single writer of the worker tables and the kernel maps.
#[derive(Debug)]
pub struct Datapath<K: KernelMaps> {
    writer: TableWriter,
    kernel: K,
}

impl<K: KernelMaps> Datapath<K> {
    /// Start with the devices every worker has sockets on and no endpoints.
    pub fn new(ports: Vec<Port>, workers: usize, kernel: K) -> Self {
        let t = Tables {
            ports,
            ..Default::default()
        };
        Datapath {
            writer: TableWriter::new(t, workers),
            kernel,
        }
    }

    /// A table reader for one worker.
    pub fn reader(&mut self) -> TableReader {
        self.writer.reader()
    }

    pub fn tables(&self) -> std::sync::Arc<Tables> {
        self.writer.current()
    }

    pub fn writer(&mut self) -> &mut TableWriter {
        &mut self.writer
    }

    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }

    pub fn kernel_ref(&self) -> &K {
        &self.kernel
    }

    /// Add or replace endpoints, all or nothing. Returns the published generation.
    pub fn upsert_endpoints(
        &mut self,
        batch: &[(EndpointKey, EndpointEntry)],
    ) -> Result<u64, DatapathError> {
        let cur = self.writer.current();
        for (k, e) in batch {
            validate_endpoint(&cur, k, e)?;
        }
        let mut done: Vec<(EndpointKey, Option<EndpointEntry>)> = Vec::with_capacity(batch.len());
        for (k, e) in batch {
            if let Err(err) = self.kernel.upsert_endpoint(k, &e.info) {
                self.roll_back(&done);
                return Err(err.into());
            }
            done.push((*k, cur.endpoints.get(k).copied()));
        }
        let mut next = (*cur).clone();
        for (k, e) in batch {
            next.endpoints.insert(*k, *e);
        }
        Ok(self.writer.publish(next))
    }

    /// Remove one endpoint (kernel first, then workers).
    pub fn remove_endpoint(&mut self, key: &EndpointKey) -> Result<u64, DatapathError> {
        let cur = self.writer.current();
        if !cur.endpoints.contains_key(key) {
            return Err(DatapathError::NoSuchEndpoint(key.to_string()));
        }
        self.kernel.remove_endpoint(key)?;
        let mut next = (*cur).clone();
        next.endpoints.remove(key);
        Ok(self.writer.publish(next))
    }

    fn roll_back(&mut self, done: &[(EndpointKey, Option<EndpointEntry>)]) {
        for (k, old) in done.iter().rev() {
            // Best effort: the map accepted these keys a moment ago.
            let _ = match old {
                Some(e) => self.kernel.upsert_endpoint(k, &e.info),
                None => self.kernel.remove_endpoint(k),
            };
        }
    }
}

fn validate_endpoint(t: &Tables, k: &EndpointKey, e: &EndpointEntry) -> Result<(), DatapathError> {
    let bad = |msg: String| DatapathError::InvalidEndpoint {
        key: k.to_string(),
        msg,
    };
    if k.family != ENDPOINT_KEY_IPV4 {
        return Err(bad("only IPv4 endpoints are served so far".into()));
    }
    if k.key != 0 || k.ip[4..].iter().any(|&b| b != 0) {
        return Err(bad("key bytes beyond the IPv4 address must be zero".into()));
    }
    match (e.info.is_host(), e.port) {
        (true, Some(_)) => Err(bad("a host entry has no lxc port".into())),
        (false, None) => Err(bad("an endpoint needs the lxc port it sits behind".into())),
        (false, Some(p)) => match t.port(p) {
            None => Err(bad(format!("port {p} does not exist"))),
            Some(port) if port.ifindex != e.info.ifindex => Err(bad(format!(
                "ifindex {} does not match port {p} ({} ifindex {})",
                e.info.ifindex, port.ifname, port.ifindex
            ))),
            Some(_) => Ok(()),
        },
        (true, None) => Ok(()),
    }
}

/// The `cilium_lxc` entries a node config describes, given its resolved lxc ports (in pod
/// order): one per pod, plus `(localhost)` entries for the router IP and the host IPs.
pub fn node_endpoints(cfg: &Config, ports: &[Port]) -> Vec<(EndpointKey, EndpointEntry)> {
    let ids = cfg.endpoint_ids();
    let label_sets: Vec<Vec<String>> = cfg
        .pods
        .iter()
        .map(|p| identity::pod_labels(&p.namespace, &p.labels))
        .collect();
    let sec_ids = identity::allocate(&label_sets);
    let mut out = Vec::new();
    for (i, pod) in cfg.pods.iter().enumerate() {
        let port = &ports[i];
        out.push((
            EndpointKey::v4(pod.ip.octets()),
            EndpointEntry {
                info: EndpointInfo {
                    ifindex: port.ifindex,
                    lxc_id: ids[i],
                    mac: EndpointInfo::encode_mac(pod.mac),
                    node_mac: EndpointInfo::encode_mac(port.mac),
                    sec_id: sec_ids[i],
                    ..Default::default()
                },
                port: Some(i as u16),
            },
        ));
    }
    for ip in std::iter::once(&cfg.node.router_ip).chain(&cfg.node.host_ips) {
        out.push((
            EndpointKey::v4(ip.octets()),
            EndpointEntry {
                info: EndpointInfo::host(),
                port: None,
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::MacAddr;

    fn ports() -> Vec<Port> {
        vec![Port {
            ifname: "lxc-a".into(),
            ifindex: 7,
            mac: MacAddr([2, 0, 0, 0, 0, 7]),
            endpoint_ip: "10.1.1.2".parse().unwrap(),
            endpoint_id: 1,
        }]
    }

    fn ep(ip: [u8; 4], ifindex: u32, port: Option<u16>) -> (EndpointKey, EndpointEntry) {
        (
            EndpointKey::v4(ip),
            EndpointEntry {
                info: EndpointInfo {
                    ifindex,
                    lxc_id: 1,
                    ..Default::default()
                },
                port,
            },
        )
    }

    /// Fails the Nth write, records the rest.
    #[derive(Default)]
    struct Flaky {
        fail_at: usize,
        writes: usize,
        map: std::collections::HashMap<EndpointKey, EndpointInfo>,
    }
    impl KernelMaps for Flaky {
        fn upsert_endpoint(
            &mut self,
            k: &EndpointKey,
            v: &EndpointInfo,
        ) -> Result<(), MapWriteError> {
            self.writes += 1;
            if self.writes == self.fail_at {
                return Err(MapWriteError {
                    map: "cilium_lxc",
                    op: "update",
                    key: k.to_string(),
                    msg: "E2BIG".into(),
                });
            }
            self.map.insert(*k, *v);
            Ok(())
        }
        fn remove_endpoint(&mut self, k: &EndpointKey) -> Result<(), MapWriteError> {
            self.map.remove(k);
            Ok(())
        }
    }

    #[test]
    fn invalid_endpoint_rejected_before_any_write() {
        let mut dp = Datapath::new(ports(), 1, Flaky::default());
        let e =
            dp.upsert_endpoints(&[ep([10, 1, 1, 2], 7, Some(0)), ep([10, 1, 1, 3], 9, Some(0))]);
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("ifindex 9 does not match port 0 (lxc-a ifindex 7)")
        );
        assert_eq!(dp.kernel().writes, 0);
        assert!(dp.tables().endpoints.is_empty());
        let e = dp.upsert_endpoints(&[ep([10, 1, 1, 3], 7, Some(4))]);
        assert!(e.unwrap_err().to_string().contains("port 4 does not exist"));
    }

    #[test]
    fn kernel_failure_leaves_old_state_everywhere() {
        let mut dp = Datapath::new(
            ports(),
            1,
            Flaky {
                fail_at: 3,
                ..Default::default()
            },
        );
        let g1 = dp
            .upsert_endpoints(&[ep([10, 1, 1, 2], 7, Some(0))])
            .unwrap();
        let before = dp.kernel().map.clone();
        let mut host = ep([10, 1, 0, 1], 0, None);
        host.1.info = EndpointInfo::host();
        let mut changed = ep([10, 1, 1, 2], 7, Some(0));
        changed.1.info.lxc_id = 99;
        let err = dp.upsert_endpoints(&[changed, host]).unwrap_err();
        assert!(err.to_string().contains("E2BIG"));
        assert_eq!(dp.kernel().map, before, "kernel map restored");
        assert_eq!(dp.tables().generation, g1, "nothing published");
        assert_eq!(
            dp.tables().endpoint_v4([10, 1, 1, 2]).unwrap().info.lxc_id,
            1
        );
    }

    #[test]
    fn node_endpoints_from_default_config() {
        let cfg = Config::default_node();
        let ports: Vec<Port> = cfg
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| Port {
                ifname: p.lxc.clone(),
                ifindex: 10 + i as u32,
                mac: MacAddr([2, 0, 0, 0, 0, i as u8]),
                endpoint_ip: p.ip,
                endpoint_id: 0,
            })
            .collect();
        let eps = node_endpoints(&cfg, &ports);
        assert_eq!(eps.len(), 4);
        let mut dp = Datapath::new(ports, 1, NoKernel);
        dp.upsert_endpoints(&eps).unwrap();
        let t = dp.tables();
        assert!(t.endpoint_v4([10, 200, 0, 1]).unwrap().info.is_host());
        let e = t.endpoint_v4([10, 200, 1, 12]).unwrap();
        assert_eq!(e.port, Some(1));
        assert_eq!(e.info.ifindex, 11);
        assert_eq!(e.info.lxc_id, 2);
        assert!(e.info.sec_id >= 256);
    }
}
