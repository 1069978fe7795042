//! The control plane's intent-named API over the tables (katran's `KatranLb` shape).
//!
//! Every change is validated first, then written to the kernel maps (the XDP steering program
//! and the tc fallback read them), then published to the workers. If a kernel write fails
//! half-way the entries already written are restored, so a bad update leaves the old state in
//! force on both sides. [`NoKernel`] runs the same logic without any BPF map (unit tests, and
//! `fastpath replay`-style uses).

use std::sync::Arc;

use crate::config::{Config, RoutingMode};
use crate::ct::{Conntrack, CtSizes};
use crate::identity;
use crate::lb::{LbError, LbSettings, LbState, ServiceConfig};
use crate::lpm::{Lpm, Lpm4};
use crate::maps::lb::{Lb4Key, Lb4Service, RevNat};
use crate::maps::lxc::{ENDPOINT_KEY_IPV4, ENDPOINT_KEY_IPV6};
use crate::maps::policy::{PolicyEntry, PolicyKey};
use crate::maps::{EndpointInfo, EndpointKey, IpcacheKey, MacAddr, RemoteEndpointInfo};
use crate::net::{Ipv4Cidr, Ipv6Cidr, V4, V6};
use crate::policy::table::{EndpointPolicy, MapEntry, POLICY_STATS_MAX, PolicyStats, PolicyTables};
use crate::policy::{LocalEndpoint, Policy, PolicyState, Universe};
use crate::shared_table::SharedTable;
use crate::tables::{
    EndpointEntry, NextHop, Overlay, Port, PortId, TableFamily, TableReader, TableWriter, Tables,
};

pub use crate::kernel::{
    EndpointMap, IpcacheMap, KernelMaps, LbMaps, MapWriteError, NoKernel, OverlayMap, PolicyMaps,
};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("endpoint {key}: {msg}")]
    InvalidEndpoint { key: String, msg: String },
    #[error("endpoint {0} does not exist")]
    NoSuchEndpoint(String),
    #[error("ipcache {prefix}: {msg}")]
    InvalidIpcache { prefix: String, msg: String },
    #[error("ipcache entry {0} does not exist")]
    NoSuchIpcache(String),
    #[error(transparent)]
    Service(#[from] LbError),
    #[error("policy: {0}")]
    Policy(String),
    #[error(transparent)]
    Kernel(#[from] MapWriteError),
}

/// What one garbage-collection pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub ct_tcp: usize,
    pub ct_any: usize,
    pub affinity: usize,
    /// Terminating backends released because no connection used them any more.
    pub backends_released: bool,
}

/// The single writer of the worker tables and the kernel maps.
#[derive(Debug)]
pub struct Datapath<K: KernelMaps> {
    writer: TableWriter,
    kernel: K,
    lb: LbState,
    lb_settings: LbSettings,
    policy: PolicyState,
    /// The cluster's pod identities and their labels (what selectors match).
    pod_labels: std::collections::BTreeMap<u32, Vec<String>>,
    /// The identities of the last compilation, with their labels (for `bpf policy get`).
    universe: Universe,
    /// The CIDR-identity entries policy put in `cilium_ipcache_v2`.
    policy_ipcache: std::collections::BTreeMap<Ipv4Cidr, u32>,
    /// Identities of endpoints added at run time: how many such endpoints have each, and
    /// whether the identity came with them (false: a config or remote pod has it too, so it
    /// stays when the last runtime pod with it goes).
    runtime_ids: std::collections::BTreeMap<u32, (usize, bool)>,
    /// The cluster-wide allocator pods' identities come from (kvstore mode); the label hash
    /// when none.
    allocator: Option<Box<dyn identity::Allocator>>,
}

/// What a policy compilation leaves to remember once its tables are published.
#[derive(Debug)]
struct PolicyCommit {
    state: PolicyState,
    universe: Universe,
    ipcache: std::collections::BTreeMap<Ipv4Cidr, u32>,
}

impl<K: KernelMaps> Datapath<K> {
    /// Start with the devices every worker has sockets on and no endpoints.
    pub fn new(ports: Vec<Port>, workers: usize, kernel: K) -> Self {
        let t = Tables {
            ports: ports.into_iter().map(Some).collect(),
            policy_stats: Arc::new(PolicyStats::new(workers, POLICY_STATS_MAX)),
            ..Default::default()
        };
        Datapath {
            writer: TableWriter::new(t, workers),
            kernel,
            lb: LbState::default(),
            lb_settings: LbSettings::default(),
            policy: PolicyState::default(),
            pod_labels: Default::default(),
            universe: Universe::default(),
            policy_ipcache: Default::default(),
            runtime_ids: Default::default(),
            allocator: None,
        }
    }

    /// The labels the cluster's source has for this node's pod `namespace/name` (see
    /// [`identity::Allocator::pod_labels`]).
    pub fn cluster_pod_labels(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        self.allocator.as_ref()?.pod_labels(namespace, name)
    }

    /// Take pods' identities from a cluster-wide allocator from now on.
    pub fn set_allocator(&mut self, a: Box<dyn identity::Allocator>) {
        self.allocator = Some(a);
    }

    /// The identity a new pod with `labels` gets: the cluster-wide allocator's when there
    /// is one, else [`Datapath::identity_for`]'s.
    ///
    /// # Errors
    /// The allocator's reason, or that the identity range is full.
    pub fn allocate_identity(&mut self, labels: &[String]) -> Result<u32, String> {
        match &mut self.allocator {
            Some(a) => a.allocate(labels),
            None => self
                .identity_for(labels)
                .ok_or_else(|| "no security identity left in 256-65535".to_string()),
        }
    }

    /// Size the conntrack and affinity maps. Only before workers run: the old maps (and any
    /// entries) are dropped.
    pub fn size_datapath_maps(&mut self, ct: CtSizes, affinity: usize) -> u64 {
        let mut next = (*self.writer.current()).clone();
        next.ct = Arc::new(Conntrack::new(ct));
        next.affinity = Arc::new(SharedTable::new(affinity));
        self.writer.publish(next)
    }

    /// The services as the control plane holds them.
    pub fn services(&self) -> Vec<ServiceConfig> {
        self.lb.services.values().cloned().collect()
    }

    /// Backends kept (terminating) for established connections only.
    pub fn retained_backends(&self) -> Vec<u32> {
        self.lb.retained_backends()
    }

    /// Replace every service (config load). All or nothing.
    pub fn set_services(
        &mut self,
        services: &[ServiceConfig],
        settings: &LbSettings,
    ) -> Result<u64, DatapathError> {
        let plan = self.lb.plan_replace(services, settings)?;
        // The kernel programs' node-wide selection settings (the default algorithm; each
        // Maglev table carries its own size and seed). Put back if the change fails.
        let lb_config = |k: &mut K, s: &LbSettings| k.set_lb_config(s.algorithm.code());
        lb_config(&mut self.kernel, settings)?;
        let g = self.apply_lb(plan).inspect_err(|_| {
            let _ = lb_config(&mut self.kernel, &self.lb_settings);
        })?;
        self.lb_settings = settings.clone();
        Ok(g)
    }

    /// Add or replace services (by namespace/name), all of them in one table switch or none.
    pub fn upsert_services(&mut self, svcs: &[ServiceConfig]) -> Result<u64, DatapathError> {
        let plan = self.lb.plan_upserts(svcs, &self.lb_settings)?;
        self.apply_lb(plan)
    }

    /// Delete one service (`namespace/name`).
    pub fn delete_service(&mut self, id: &str) -> Result<u64, DatapathError> {
        let plan = self.lb.plan_delete(id, &self.lb_settings)?;
        self.apply_lb(plan)
    }

    /// Write a planned LB change to the kernel maps (backends, reverse NAT, slots, masters;
    /// then deletions of what is gone), then put it in force and
    /// publish. On a kernel failure everything written is put back and the old state stays
    /// in force. A plan holds only what changes, so this costs what the change touches.
    fn apply_lb(&mut self, plan: crate::lb::LbPlan) -> Result<u64, DatapathError> {
        let old = self.lb.tables().clone();
        if let Err(e) = write_lb_delta(&mut self.kernel, &plan.delta, &old, false) {
            // Put back the old contents (best effort: these writes succeeded before).
            let _ = write_lb_delta(&mut self.kernel, &plan.delta, &old, true);
            return Err(e.into());
        }
        self.lb.commit(plan);
        let mut t = (*self.writer.current()).clone();
        t.lb = Arc::new(self.lb.tables().clone());
        Ok(self.writer.publish(t))
    }

    /// One garbage-collection pass at `now` (seconds of CLOCK_MONOTONIC): sweep expired
    /// conntrack and affinity entries, then release terminating backends that no service
    /// entry points at any more. Runs on the control thread; workers are never blocked.
    pub fn gc(&mut self, now: u32) -> Result<GcReport, DatapathError> {
        let t = self.writer.current();
        let (ct_tcp, ct_any) = t.ct.sweep(now);
        let affinity = t.affinity.sweep(now);
        let mut report = GcReport {
            ct_tcp,
            ct_any,
            affinity,
            backends_released: false,
        };
        if !self.lb.retained_backends().is_empty() {
            let in_use = t.ct.backends_in_use(now);
            if let Some(plan) = self.lb.plan_release_unused(&in_use) {
                self.apply_lb(plan)?;
                report.backends_released = true;
            }
        }
        Ok(report)
    }

    /// The policies in force.
    pub fn policies(&self) -> Vec<Policy> {
        self.policy.policies.values().cloned().collect()
    }

    /// The identities the last policy compilation knew, with their labels.
    pub fn universe(&self) -> &Universe {
        &self.universe
    }

    /// Every identity this node knows now, with its labels (`source:key=value`), by number:
    /// the reserved ones, the pods' (local and of the other nodes, as set by
    /// [`Datapath::set_identity_labels`]), and the CIDR identities the policies in force
    /// made. What `fastpath identity list` shows, as `cilium-dbg identity list` does.
    pub fn identities(&self) -> std::collections::BTreeMap<u32, Vec<String>> {
        let mut out: std::collections::BTreeMap<u32, Vec<String>> = crate::policy::RESERVED
            .iter()
            .map(|(id, name)| (*id, vec![format!("reserved:{name}")]))
            .collect();
        for (id, ls) in &self.pod_labels {
            out.insert(*id, ls.clone());
        }
        for id in self.universe.cidrs.keys() {
            out.insert(*id, self.universe.labels(*id));
        }
        out
    }

    /// Tell policy which identities exist in the cluster and their labels (`source:key=value`).
    /// Takes effect with the next policy change.
    pub fn set_identity_labels(&mut self, pods: std::collections::BTreeMap<u32, Vec<String>>) {
        self.pod_labels = pods;
    }

    /// [`Datapath::set_identity_labels`] for a new view of the cluster: the identities of
    /// pods added at run time keep their labels.
    pub fn set_cluster_identity_labels(
        &mut self,
        pods: std::collections::BTreeMap<u32, Vec<String>>,
    ) {
        let mut next = pods;
        for id in self.runtime_ids.keys() {
            if let Some(l) = self.pod_labels.get(id) {
                next.entry(*id).or_insert_with(|| l.clone());
            }
        }
        self.pod_labels = next;
    }

    /// Replace every policy. All or nothing.
    pub fn set_policies(&mut self, ps: &[Policy]) -> Result<u64, DatapathError> {
        let next = self.policy.with_policies(ps);
        self.apply_policy(next)
    }

    /// Add or replace policies, in one table switch.
    pub fn upsert_policies(&mut self, ps: &[Policy]) -> Result<u64, DatapathError> {
        let next = self.policy.with_upserts(ps);
        self.apply_policy(next)
    }

    /// Delete a policy (`Kind/ns/name` or `ns/name`).
    pub fn delete_policy(&mut self, id: &str) -> Result<u64, DatapathError> {
        let next = self.policy.with_delete(id).map_err(DatapathError::Policy)?;
        self.apply_policy(next)
    }

    /// Compile `next` for the local endpoints, write the CIDR identities it needs into
    /// `cilium_ipcache_v2` (rolled back on failure), then publish the new policy maps and
    /// ipcache in one table switch.
    fn apply_policy(&mut self, next: PolicyState) -> Result<u64, DatapathError> {
        let cur = self.writer.current();
        let (t, commit) = self.policy_onto(next, (*cur).clone())?;
        self.commit_policy(commit);
        Ok(self.writer.publish(t))
    }

    /// Policy `next` compiled for the local endpoints of `t` (a version being built), with
    /// its CIDR identities written to the kernel's ipcache: `t` with the new policy maps and
    /// ipcache, and what to remember once it is published. Nothing of `self` changes here;
    /// on an error the kernel is as it was.
    fn policy_onto(
        &mut self,
        mut next: PolicyState,
        mut t: Tables,
    ) -> Result<(Tables, PolicyCommit), DatapathError> {
        let mut eps: Vec<LocalEndpoint> = t
            .endpoints
            .values()
            .filter(|e| e.port.is_some())
            .map(|e| LocalEndpoint {
                ep_id: e.info.lxc_id,
                sec_id: e.info.sec_id,
            })
            .collect();
        eps.sort_by_key(|e| e.ep_id);
        // A dual-stack pod is one endpoint under two keys: compiled once.
        eps.dedup_by_key(|e| e.ep_id);
        let compiled = next
            .compile(&eps, &self.pod_labels, t.policy_stats.slots())
            .map_err(|e| DatapathError::Policy(e.to_string()))?;
        // CIDR identities go into the ipcache unless the node already has that exact prefix
        // (a pod, a node, the world default): what the cluster knows about it wins.
        let want: std::collections::BTreeMap<Ipv4Cidr, u32> = next
            .cidr_ids
            .iter()
            .filter(|(p, _)| self.policy_ipcache.contains_key(p) || t.ipcache.get(**p).is_none())
            .map(|(p, id)| (*p, *id))
            .collect();
        // The ipcache changes: new or renumbered CIDR identities, and the ones no longer used.
        let mut changes: Vec<(Ipv4Cidr, Option<RemoteEndpointInfo>)> = want
            .iter()
            .filter(|(p, id)| self.policy_ipcache.get(p) != Some(id))
            .map(|(p, id)| (*p, Some(RemoteEndpointInfo::local(*id))))
            .collect();
        changes.extend(
            self.policy_ipcache
                .keys()
                .filter(|p| !want.contains_key(p))
                .map(|p| (*p, None)),
        );
        // The ipcache's CIDR identities first, then the kernel's policy maps that use them
        // (the tc datapath reads both); a failure of the second puts the first back.
        write_ipcache(&mut self.kernel, &changes, &t.ipcache)?;
        if let Err(e) = write_policy(&mut self.kernel, &t.policy, &compiled.tables) {
            let undo: Vec<(Ipv4Cidr, Option<RemoteEndpointInfo>)> = changes
                .iter()
                .map(|(p, _)| (*p, t.ipcache.get(*p).copied()))
                .collect();
            let _ = write_ipcache(&mut self.kernel, &undo, &ipcache_with(&t.ipcache, &changes));
            return Err(e.into());
        }
        for s in &compiled.new_slots {
            t.policy_stats.reset(*s);
        }
        if !changes.is_empty() {
            t.ipcache = Arc::new(ipcache_with(&t.ipcache, &changes));
        }
        t.policy = Arc::new(compiled.tables);
        Ok((
            t,
            PolicyCommit {
                state: next,
                universe: compiled.universe,
                ipcache: want,
            },
        ))
    }

    fn commit_policy(&mut self, c: PolicyCommit) {
        self.policy = c.state;
        self.universe = c.universe;
        self.policy_ipcache = c.ipcache;
    }

    /// Serve a pod added at run time on port slot `slot` (its lxc device `port`): its
    /// `cilium_lxc` entry, its `/32` in `cilium_ipcache_v2` with identity `sec_id` (labels
    /// `labels`, which policy selectors then match), the policy maps of every local endpoint
    /// recompiled with it — all in one table switch, or nothing (the kernel maps are put
    /// back on any failure). Returns the published generation.
    pub fn add_local_endpoint(
        &mut self,
        slot: PortId,
        port: Port,
        pod_mac: MacAddr,
        ipv6: Option<std::net::Ipv6Addr>,
        sec_id: u32,
        labels: Vec<String>,
    ) -> Result<u64, DatapathError> {
        let cur = self.writer.current();
        let ip = port.endpoint_ip;
        let key = EndpointKey::v4(ip.octets());
        let bad = |msg: String| DatapathError::InvalidEndpoint {
            key: key.to_string(),
            msg,
        };
        if cur.endpoints.contains_key(&key) {
            return Err(bad("the address is already an endpoint of this node".into()));
        }
        if cur.port(slot).is_some() {
            return Err(bad(format!("port slot {slot} is in use")));
        }
        if let Some(e) = cur
            .endpoints
            .values()
            .find(|e| e.port.is_some() && e.info.lxc_id == port.endpoint_id)
        {
            return Err(bad(format!(
                "endpoint ID {} is taken (ifindex {})",
                port.endpoint_id, e.info.ifindex
            )));
        }
        if sec_id < identity::MIN_ALLOCATED {
            return Err(bad(format!("identity {sec_id} is reserved")));
        }
        if let Some(r) = cur.ipcache.get(Ipv4Cidr::host(ip)) {
            return Err(bad(format!(
                "{ip}/32 is in cilium_ipcache_v2 already (identity {}): another node's or pod's address",
                r.sec_identity
            )));
        }
        let entry = EndpointEntry {
            info: EndpointInfo {
                ifindex: port.ifindex,
                lxc_id: port.endpoint_id,
                mac: EndpointInfo::encode_mac(pod_mac),
                node_mac: EndpointInfo::encode_mac(port.mac),
                sec_id,
                ..Default::default()
            },
            port: Some(slot),
        };
        {
            let mut with_port = Tables {
                ports: cur.ports.clone(),
                ..Default::default()
            };
            if with_port.ports.len() <= slot as usize {
                with_port.ports.resize(slot as usize + 1, None);
            }
            with_port.ports[slot as usize] = Some(port.clone());
            validate_endpoint(&with_port, &key, &entry)?;
        }
        // Dual stack: the same entry under the IPv6 key, and its /128.
        let v6 = ipv6.map(|a| (EndpointKey::v6(a.octets()), Ipv6Cidr::host(a)));
        if let Some((k6, p6)) = v6 {
            if cur.endpoints.contains_key(&k6) {
                return Err(bad(format!(
                    "{k6}: the IPv6 address is already an endpoint of this node"
                )));
            }
            if let Some(r) = cur.ipcache6.get(p6) {
                return Err(bad(format!(
                    "{p6} is in cilium_ipcache_v2 already (identity {}): another node's or pod's address",
                    r.sec_identity
                )));
            }
        }
        let prefix = Ipv4Cidr::host(ip);
        let old_ipcache = cur.ipcache.get(prefix).copied();
        self.kernel.upsert_endpoint(&key, &entry.info)?;
        let ic = [(prefix, Some(RemoteEndpointInfo::local(sec_id)))];
        if let Err(e) = write_ipcache::<K, V4>(&mut self.kernel, &ic, &cur.ipcache) {
            let _ = self.kernel.remove_endpoint(&key);
            return Err(e.into());
        }
        let undo_kernel = |k: &mut K| {
            if let Some((k6, p6)) = v6 {
                let _ = k.remove_endpoint(&k6);
                let _ = k.remove_ipcache(&IpcacheKey::v6(p6));
            }
            let _ = k.remove_endpoint(&key);
            let _ = match old_ipcache {
                Some(v) => k.upsert_ipcache(&IpcacheKey::v4(prefix), &v),
                None => k.remove_ipcache(&IpcacheKey::v4(prefix)),
            };
        };
        let ic6: Vec<(Ipv6Cidr, Option<RemoteEndpointInfo>)> = v6
            .map(|(_, p6)| (p6, Some(RemoteEndpointInfo::local(sec_id))))
            .into_iter()
            .collect();
        if let Some((k6, _)) = v6 {
            let written = self
                .kernel
                .upsert_endpoint(&k6, &entry.info)
                .map_err(DatapathError::from)
                .and_then(|()| {
                    write_ipcache::<K, V6>(&mut self.kernel, &ic6, &cur.ipcache6)
                        .map_err(DatapathError::from)
                });
            if let Err(e) = written {
                undo_kernel(&mut self.kernel);
                return Err(e);
            }
        }
        let mut t = (*cur).clone();
        if t.ports.len() <= slot as usize {
            t.ports.resize(slot as usize + 1, None);
        }
        t.ports[slot as usize] = Some(port);
        t.endpoints.insert(key, entry);
        t.ipcache = Arc::new(ipcache_with::<V4>(&cur.ipcache, &ic));
        if let Some((k6, _)) = v6 {
            t.endpoints.insert(k6, entry);
            t.ipcache6 = Arc::new(ipcache_with::<V6>(&cur.ipcache6, &ic6));
        }
        let known = cur.identities.contains(&sec_id) || self.pod_labels.contains_key(&sec_id);
        t.identities.insert(sec_id);
        let had_labels = self.pod_labels.insert(sec_id, labels);
        let policy = self.policy.clone();
        match self.policy_onto(policy, t) {
            Ok((t, commit)) => {
                self.commit_policy(commit);
                let e = self.runtime_ids.entry(sec_id).or_insert((0, !known));
                e.0 += 1;
                self.sync_identities(&cur.identities, &t.identities);
                Ok(self.writer.publish(t))
            }
            Err(e) => {
                match had_labels {
                    Some(l) => self.pod_labels.insert(sec_id, l),
                    None => self.pod_labels.remove(&sec_id),
                };
                undo_kernel(&mut self.kernel);
                Err(e)
            }
        }
    }

    /// Stop serving a pod added at run time (by its address): its `cilium_lxc` entry, its
    /// ipcache `/32`, its port slot and policy maps go in one table switch (kernel first; on
    /// a failure the kernel is put back and nothing changes). Its identity is forgotten when
    /// no other runtime endpoint has it. Conntrack entries are left to
    /// [`Datapath::flush_conntrack`], once no worker can still create one with the old
    /// tables. Returns the generation and the slot freed.
    pub fn remove_local_endpoint(
        &mut self,
        ip: std::net::Ipv4Addr,
    ) -> Result<(u64, PortId), DatapathError> {
        let cur = self.writer.current();
        let key = EndpointKey::v4(ip.octets());
        let Some(entry) = cur.endpoints.get(&key).copied() else {
            return Err(DatapathError::NoSuchEndpoint(key.to_string()));
        };
        let Some(slot) = entry.port else {
            return Err(DatapathError::InvalidEndpoint {
                key: key.to_string(),
                msg: "a host address, not a pod".into(),
            });
        };
        let prefix = Ipv4Cidr::host(ip);
        let old_ipcache = cur.ipcache.get(prefix).copied();
        // Its IPv6 keys (dual stack): the entries on the same slot, and their /128s.
        let v6: Vec<(EndpointKey, Ipv6Cidr, Option<RemoteEndpointInfo>)> = cur
            .endpoints
            .iter()
            .filter(|(k, e)| k.family == ENDPOINT_KEY_IPV6 && e.port == Some(slot))
            .map(|(k, _)| {
                let p6 = Ipv6Cidr::host(k.ip.into());
                (*k, p6, cur.ipcache6.get(p6).copied())
            })
            .collect();
        let put_back_v6 = |k: &mut K, upto: usize| {
            for (k6, p6, old) in &v6[..upto] {
                let _ = k.upsert_endpoint(k6, &entry.info);
                if let Some(o) = old {
                    let _ = k.upsert_ipcache(&IpcacheKey::v6(*p6), o);
                }
            }
        };
        for (i, (k6, p6, old)) in v6.iter().enumerate() {
            let r = self.kernel.remove_endpoint(k6).and_then(|()| match old {
                Some(_) => self.kernel.remove_ipcache(&IpcacheKey::v6(*p6)),
                None => Ok(()),
            });
            if let Err(e) = r {
                put_back_v6(&mut self.kernel, i + 1);
                return Err(e.into());
            }
        }
        if let Err(e) = self.kernel.remove_endpoint(&key) {
            put_back_v6(&mut self.kernel, v6.len());
            return Err(e.into());
        }
        if old_ipcache.is_some()
            && let Err(e) = self.kernel.remove_ipcache(&IpcacheKey::v4(prefix))
        {
            let _ = self.kernel.upsert_endpoint(&key, &entry.info);
            put_back_v6(&mut self.kernel, v6.len());
            return Err(e.into());
        }
        let mut t = (*cur).clone();
        t.endpoints.remove(&key);
        if !v6.is_empty() {
            let mut ic6 = (*cur.ipcache6).clone();
            for (k6, p6, _) in &v6 {
                t.endpoints.remove(k6);
                ic6.remove(*p6);
            }
            t.ipcache6 = Arc::new(ic6);
        }
        if let Some(p) = t.ports.get_mut(slot as usize) {
            *p = None;
        }
        if old_ipcache.is_some() {
            let mut ic = (*cur.ipcache).clone();
            ic.remove(prefix);
            t.ipcache = Arc::new(ic);
        }
        let sec = entry.info.sec_id;
        let last = self.runtime_ids.get(&sec).is_some_and(|e| e.0 == 1);
        // Forgotten only if it came with the runtime pods: a config or remote pod with the
        // same labels keeps it (and its labels, which its policies select on).
        let owned = last && self.runtime_ids.get(&sec).is_some_and(|e| e.1);
        let labels = owned.then(|| self.pod_labels.remove(&sec)).flatten();
        if owned {
            t.identities.remove(&sec);
        }
        let policy = self.policy.clone();
        match self.policy_onto(policy, t) {
            Ok((t, commit)) => {
                self.commit_policy(commit);
                if last {
                    self.runtime_ids.remove(&sec);
                } else if let Some(n) = self.runtime_ids.get_mut(&sec) {
                    n.0 -= 1;
                }
                self.sync_identities(&cur.identities, &t.identities);
                Ok((self.writer.publish(t), slot))
            }
            Err(e) => {
                if let Some(l) = labels {
                    self.pod_labels.insert(sec, l);
                }
                let _ = self.kernel.upsert_endpoint(&key, &entry.info);
                if let Some(v) = old_ipcache {
                    let _ = self.kernel.upsert_ipcache(&IpcacheKey::v4(prefix), &v);
                }
                put_back_v6(&mut self.kernel, v6.len());
                Err(e)
            }
        }
    }

    /// The identity a pod with `labels` gets on this node: the one of a known identical
    /// label set, else the label hash probed past every number in use (the numbers of
    /// running pods never change).
    pub fn identity_for(&self, labels: &[String]) -> Option<u32> {
        if let Some((id, _)) = self.pod_labels.iter().find(|(_, l)| l.as_slice() == labels) {
            return Some(*id);
        }
        identity::candidates(labels).find(|id| !self.pod_labels.contains_key(id))
    }

    /// After a restart, before any worker reads them: take the conntrack and affinity maps
    /// kept from the last run (`ct`, `affinity`), drop what expired, renumber the service
    /// and backend IDs their entries carry from the last run's (`old`, read from its pinned
    /// LB maps) to this run's — by frontend and backend address — and the port slots
    /// NodePort entries send replies by (`slots`: last run's slot → this run's, by device),
    /// and delete the entries whose service, backend or device is gone (or all that name
    /// one, when `old` or `slots` is unknown), then publish them. Call after the services
    /// are in force.
    pub fn restore_datapath_maps(
        &mut self,
        mut ct: Conntrack,
        mut affinity: crate::tables::AffinityMap,
        old: Option<&LbIds>,
        slots: Option<&std::collections::HashMap<u16, u16>>,
        now: u32,
    ) -> RestoreReport {
        let remap = IdRemap::new(old, self.lb.tables());
        let (ct_kept, ct_dropped) = ct.restore(now, |_, st| {
            let rev = remap.service(st.rev_nat.0);
            let be = remap.backend(st.backend_id);
            let port = match st.reply_port {
                None => Some(None),
                Some(p) => slots.and_then(|m| m.get(&p)).map(|n| Some(*n)),
            };
            match (rev, be, port) {
                (Some(r), Some(b), Some(p)) => {
                    st.rev_nat = RevNat(r);
                    st.backend_id = b;
                    st.reply_port = p;
                    true
                }
                _ => false,
            }
        });
        // Affinity keys hold the service ID: taken out, renumbered, put back.
        let mut entries = Vec::new();
        affinity.retain_mut(|k, v, life| {
            if !crate::shared_table::expired(*life, now) {
                entries.push((*k, *v, *life));
            }
            false
        });
        let mut aff_kept = 0;
        for (k, v, life) in entries {
            let rev = crate::tables::lb::affinity_rev_nat(&k).0;
            let (Some(r), Some(id)) = (remap.service(rev), remap.backend(v[0] as u32)) else {
                continue;
            };
            let k = crate::tables::lb::affinity_with_rev_nat(k, RevNat(r));
            if affinity.insert(k, [id as u64], life, now).is_some() {
                aff_kept += 1;
            }
        }
        let mut next = (*self.writer.current()).clone();
        next.ct = Arc::new(ct);
        next.affinity = Arc::new(affinity);
        self.writer.publish(next);
        RestoreReport {
            ct_kept,
            ct_dropped,
            affinity_kept: aff_kept,
        }
    }

    /// The identity for a restored endpoint that had `had` before the restart: `had` again
    /// when it is free or already these labels' (so a restart renumbers nothing), else
    /// what [`Datapath::identity_for`] gives.
    pub fn identity_for_restored(
        &mut self,
        labels: &[String],
        had: Option<u32>,
    ) -> Result<u32, String> {
        if self.allocator.is_some() {
            // Cluster-wide: the store's number for these labels, whatever this node had.
            return self.allocate_identity(labels);
        }
        match had {
            Some(id)
                if (identity::MIN_ALLOCATED..=identity::MAX_ALLOCATED).contains(&id)
                    && self
                        .pod_labels
                        .get(&id)
                        .is_none_or(|l| l.as_slice() == labels)
                    && self
                        .pod_labels
                        .iter()
                        .all(|(i, l)| *i == id || l.as_slice() != labels) =>
            {
                Ok(id)
            }
            _ => self.allocate_identity(labels),
        }
    }

    /// Delete every conntrack entry with `ip` as either end (an endpoint that is gone).
    /// Returns how many.
    pub fn flush_conntrack(&mut self, ip: std::net::Ipv4Addr) -> usize {
        self.writer.current().ct.flush_addr(ip.octets())
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

    /// Add or replace `cilium_ipcache_v2` entries, all or nothing (kernel map first, rolled
    /// back on failure; then one publish to the workers). The IPv4 arm of
    /// [`Datapath::upsert_ipcache_of`].
    pub fn upsert_ipcache(
        &mut self,
        batch: &[(Ipv4Cidr, RemoteEndpointInfo)],
    ) -> Result<u64, DatapathError> {
        self.upsert_ipcache_of::<V4>(batch)
    }

    /// [`Datapath::upsert_ipcache`] for prefixes of family `F`.
    pub fn upsert_ipcache_of<F: TableFamily>(
        &mut self,
        batch: &[(F::Prefix, RemoteEndpointInfo)],
    ) -> Result<u64, DatapathError> {
        for (p, v) in batch {
            let bad = |msg: &str| DatapathError::InvalidIpcache {
                prefix: p.to_string(),
                msg: msg.into(),
            };
            let (net, len) = F::split(*p);
            if F::join(net, len) != *p {
                return Err(bad("host bits set beyond the prefix length"));
            }
            if v.sec_identity == identity::RESERVED_UNKNOWN {
                return Err(bad("identity 0 (unknown) cannot be assigned"));
            }
            if v.flags & crate::maps::ipcache::FLAG_HAS_TUNNEL_EP != 0
                && v.tunnel_endpoint_v4().is_unspecified()
            {
                return Err(bad("has_tunnel_ep set with tunnel endpoint 0.0.0.0"));
            }
        }
        let cur = self.writer.current();
        let changes: Vec<(F::Prefix, Option<RemoteEndpointInfo>)> =
            batch.iter().map(|(p, v)| (*p, Some(*v))).collect();
        write_ipcache::<K, F>(&mut self.kernel, &changes, F::ipcache(&cur))?;
        let mut next = (*cur).clone();
        *F::ipcache_mut(&mut next) = Arc::new(ipcache_with::<F>(F::ipcache(&cur), &changes));
        Ok(self.writer.publish(next))
    }

    /// Remove one `cilium_ipcache_v2` prefix (kernel first, then workers).
    pub fn remove_ipcache(&mut self, prefix: Ipv4Cidr) -> Result<u64, DatapathError> {
        self.remove_ipcache_of::<V4>(prefix)
    }

    /// [`Datapath::remove_ipcache`] for a prefix of family `F`.
    pub fn remove_ipcache_of<F: TableFamily>(
        &mut self,
        prefix: F::Prefix,
    ) -> Result<u64, DatapathError> {
        let cur = self.writer.current();
        if F::ipcache(&cur).get(prefix).is_none() {
            return Err(DatapathError::NoSuchIpcache(prefix.to_string()));
        }
        self.kernel.remove_ipcache(&F::ipcache_key(prefix))?;
        let mut next = (*cur).clone();
        let mut ic = F::ipcache(&cur).clone();
        ic.remove(prefix);
        *F::ipcache_mut(&mut next) = Arc::new(ic);
        Ok(self.writer.publish(next))
    }

    /// Set the node-wide forwarding settings, the native routes, and the identities accepted
    /// from the overlay (worker tables; the settings also go to the steering program).
    pub fn set_overlay(
        &mut self,
        overlay: Overlay,
        native_cidr: Option<Ipv4Cidr>,
        routes: &[(Ipv4Cidr, std::net::Ipv4Addr)],
        identities: impl IntoIterator<Item = u32>,
    ) -> Result<u64, DatapathError> {
        let cur = self.writer.current();
        let mut r = Lpm4::new();
        for (p, gw) in routes {
            r.insert(*p, gw.octets());
        }
        // The kernel's copy of the routes (the tc datapath's), all or nothing: what changed,
        // then what is gone; on a failure what was written is put back.
        // (prefix, gateway before, gateway after)
        type RouteChange = (Ipv4Cidr, Option<[u8; 4]>, Option<[u8; 4]>);
        let mut changes: Vec<RouteChange> = r
            .iter()
            .filter(|(p, gw)| cur.routes.get(*p) != Some(*gw))
            .map(|(p, gw)| (p, cur.routes.get(p).copied(), Some(*gw)))
            .collect();
        changes.extend(
            cur.routes
                .iter()
                .filter(|(p, _)| r.get(*p).is_none())
                .map(|(p, gw)| (p, Some(*gw), None)),
        );
        for (i, (p, _, new)) in changes.iter().enumerate() {
            if let Err(e) = self.kernel.set_route(*p, *new) {
                for (p, old, _) in changes[..i].iter().rev() {
                    let _ = self.kernel.set_route(*p, *old);
                }
                return Err(e.into());
            }
        }
        if let Err(e) = self.kernel.set_overlay(&overlay, native_cidr) {
            for (p, old, _) in changes.iter().rev() {
                let _ = self.kernel.set_route(*p, *old);
            }
            return Err(e.into());
        }
        let mut next = (*cur).clone();
        next.overlay = overlay;
        next.routes = Arc::new(r);
        next.identities = identities.into_iter().collect();
        self.sync_identities(&cur.identities, &next.identities);
        Ok(self.writer.publish(next))
    }

    /// The kernel's copy of the identities accepted from the overlay (`fp_identities`, what
    /// the tc datapath checks a VNI against), moved from `old` to `new`. Best effort: a
    /// write that fails is logged (the tc datapath then refuses that identity's VXLAN with
    /// 183, or keeps accepting a gone one, until the next change), the workers' tables are
    /// what they were asked to be.
    fn sync_identities(&mut self, old: &hashbrown::HashSet<u32>, new: &hashbrown::HashSet<u32>) {
        let changes = new
            .difference(old)
            .map(|id| (*id, true))
            .chain(old.difference(new).map(|id| (*id, false)));
        for (id, known) in changes {
            if let Err(e) = self.kernel.set_identity(id, known) {
                eprintln!("fastpath: identity {id}: {e}");
            }
        }
    }

    /// Everything a node config puts in the tables and kernel maps, in the order the
    /// daemon needs: `cilium_lxc`, the forwarding settings (with native routes and the
    /// accepted identities), then `cilium_ipcache_v2`. The ports (lxc devices in pod order,
    /// then the underlay) are the ones this `Datapath` was created with.
    pub fn load_node(&mut self, cfg: &Config) -> Result<u64, DatapathError> {
        let ports: Vec<Port> = self.tables().ports.iter().flatten().cloned().collect();
        self.upsert_endpoints(&node_endpoints(cfg, &ports)?)?;
        self.set_overlay(
            node_overlay(cfg, &ports),
            cfg.datapath.native_routing_cidr,
            &datapath_routes(cfg),
            accepted_identities(cfg),
        )?;
        self.upsert_ipcache(&node_ipcache(cfg))?;
        let v6 = node_ipcache6(cfg);
        if !v6.is_empty() {
            self.upsert_ipcache_of::<V6>(&v6)?;
        }
        self.set_services(&cfg.services, &cfg.lb_settings())?;
        self.set_identity_labels(cfg.identity_labels());
        let policies = cfg
            .policies()
            .map_err(|e| DatapathError::Policy(e.to_string()))?;
        self.set_policies(&policies)
    }

    /// Install, replace (`Some`) or forget (`None`) the next hop for a tunnel endpoint or
    /// gateway. Publishes only if something changed; returns whether it did.
    pub fn set_nexthops(&mut self, changes: &[([u8; 4], Option<NextHop>)]) -> bool {
        let cur = self.writer.current();
        if changes
            .iter()
            .all(|(ip, nh)| cur.nexthops.get(ip) == nh.as_ref())
        {
            return false;
        }
        let mut next = (*cur).clone();
        for (ip, nh) in changes {
            if cur.nexthops.get(ip) == nh.as_ref() {
                continue;
            }
            // The kernel's copy (the tc datapath's next hops) first; one that cannot be
            // written is logged and left to the next refresh (the neighbour loop calls this
            // every second), the workers' copy still changes.
            let dev = nh.and_then(|n| cur.port(n.port)).map(|p| p.ifindex);
            let written = match (nh, dev) {
                (Some(n), Some(ifindex)) => self.kernel.set_nexthop(*ip, Some((ifindex, n))),
                _ => self.kernel.set_nexthop(*ip, None),
            };
            if let Err(e) = written {
                eprintln!("fastpath: next hop {}: {e}", std::net::Ipv4Addr::from(*ip));
            }
            match nh {
                Some(n) => next.nexthops.insert(*ip, *n),
                None => next.nexthops.remove(ip),
            };
        }
        self.writer.publish(next);
        true
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

/// Write an LB change to the kernel maps: additions and changes first (backends, reverse
/// NAT, slots, masters), removals after (masters before their slots, backends last), so a
/// reader never meets a slot whose backend is missing, a master counting slots that are not
/// there yet, or a new frontend without its reverse NAT. `undo` writes every entry's value before instead (a rollback), in the
/// same order, trying every entry whatever fails.
fn write_lb_delta<K: KernelMaps>(
    k: &mut K,
    d: &crate::lb::LbDelta,
    old: &crate::tables::lb::LbTables,
    undo: bool,
) -> Result<(), MapWriteError> {
    // A rollback tries every entry (some of the forward writes never happened).
    let go = |r: Result<(), MapWriteError>| if undo { Ok(()) } else { r };
    // Maglev tables and affinity matches: a table or match a service gains before its
    // entries point at it, one it loses after they stopped. `old` has the tables before
    // the change (what a rollback puts back).
    let maglev = |rev: u16, new: &Option<Arc<[u32]>>| -> Option<Arc<[u32]>> {
        if undo {
            old.maglev.get(&rev).cloned()
        } else {
            new.clone()
        }
    };
    let seed = if undo {
        old.seeds.jhash0
    } else {
        d.maglev_seed
    };
    for (rev, new) in &d.maglev {
        if let Some(t) = maglev(*rev, new) {
            go(k.set_maglev(RevNat(*rev), Some((&t, seed))))?;
        }
    }
    for (key, add) in &d.affinity_match {
        if *add != undo {
            go(k.set_affinity_match(key, true))?;
        }
    }
    for (id, old, new) in &d.backends {
        if let Some(b) = if undo { old } else { new } {
            go(k.upsert_backend(*id, b))?;
        }
    }
    // Reverse NAT before the masters that use it: a connection DNATed through a new master
    // finds its reply translation already there.
    for (id, old, new) in &d.revnat {
        if let Some(v) = if undo { old } else { new } {
            go(k.upsert_revnat(RevNat(*id), v))?;
        }
    }
    let mut ups: Vec<(&Lb4Key, &Lb4Service)> = d
        .services
        .iter()
        .filter_map(|(key, old, new)| if undo { old } else { new }.as_ref().map(|v| (key, v)))
        .collect();
    // Slots before masters.
    ups.sort_by_key(|(key, _)| std::cmp::Reverse(key.backend_slot));
    for (key, v) in ups {
        go(k.upsert_service(key, v))?;
    }
    let mut gone: Vec<&Lb4Key> = d
        .services
        .iter()
        .filter(|(_, old, new)| if undo { old.is_none() } else { new.is_none() })
        .map(|(key, _, _)| key)
        .collect();
    gone.sort_by_key(|key| key.backend_slot);
    for key in gone {
        go(k.remove_service(key))?;
    }
    for (id, old, new) in &d.revnat {
        if (if undo { old } else { new }).is_none() {
            go(k.remove_revnat(RevNat(*id)))?;
        }
    }
    for (rev, new) in &d.maglev {
        if maglev(*rev, new).is_none() {
            go(k.set_maglev(RevNat(*rev), None))?;
        }
    }
    for (key, add) in &d.affinity_match {
        if *add == undo {
            go(k.set_affinity_match(key, false))?;
        }
    }
    for (id, old, new) in &d.backends {
        let (before, after) = if undo { (new, old) } else { (old, new) };
        if after.is_none()
            && let Some(b) = before
        {
            go(k.remove_backend(*id, b))?;
        }
    }
    Ok(())
}

fn validate_endpoint(t: &Tables, k: &EndpointKey, e: &EndpointEntry) -> Result<(), DatapathError> {
    let bad = |msg: String| DatapathError::InvalidEndpoint {
        key: k.to_string(),
        msg,
    };
    match k.family {
        ENDPOINT_KEY_IPV4 if k.ip[4..].iter().any(|&b| b != 0) => {
            return Err(bad("key bytes beyond the IPv4 address must be zero".into()));
        }
        ENDPOINT_KEY_IPV4 | ENDPOINT_KEY_IPV6 => {}
        f => {
            return Err(bad(format!(
                "family {f} is neither IPv4 ({ENDPOINT_KEY_IPV4}) nor IPv6 ({ENDPOINT_KEY_IPV6})"
            )));
        }
    }
    if k.key != 0 {
        return Err(bad("the key byte must be 0 in cilium_lxc".into()));
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

/// Write `cilium_ipcache_v2` changes (`Some`: upsert, `None`: remove) to the kernel in order.
/// On a failure the ones already written are put back as `old` (the contents the workers run)
/// has them, so a failed batch leaves the kernel map as it was.
fn write_ipcache<K: KernelMaps, F: TableFamily>(
    kernel: &mut K,
    changes: &[(F::Prefix, Option<RemoteEndpointInfo>)],
    old: &Lpm<F, RemoteEndpointInfo>,
) -> Result<(), MapWriteError> {
    for (i, (p, v)) in changes.iter().enumerate() {
        let k = F::ipcache_key(*p);
        let r = match v {
            Some(v) => kernel.upsert_ipcache(&k, v),
            None => kernel.remove_ipcache(&k),
        };
        if let Err(err) = r {
            for (p, _) in changes[..i].iter().rev() {
                let k = F::ipcache_key(*p);
                let _ = match old.get(*p) {
                    Some(o) => kernel.upsert_ipcache(&k, o),
                    None => kernel.remove_ipcache(&k),
                };
            }
            return Err(err);
        }
    }
    Ok(())
}

/// One write of [`write_policy`], and how to undo it.
enum PolicyOp<'a> {
    Create(u16, &'a EndpointPolicy),
    Drop(u16, &'a EndpointPolicy),
    Upsert(u16, &'a MapEntry, Option<&'a MapEntry>),
    Remove(u16, &'a MapEntry),
}

fn pairs(p: &EndpointPolicy) -> Vec<(PolicyKey, PolicyEntry)> {
    p.entries.iter().map(|e| (e.key, e.entry)).collect()
}

/// Make the kernel's policy maps (`cilium_policy_v3_<id>`) hold `new` where they held `old`:
/// a map per endpoint that has a compiled policy, written entry by entry where an endpoint
/// had one already (only the entries that changed), made whole and then published where it
/// is new, withdrawn where the endpoint is gone. All or nothing: on a failed write the
/// writes before it are undone, in reverse, and the error returned.
fn write_policy<K: KernelMaps>(
    kernel: &mut K,
    old: &PolicyTables,
    new: &PolicyTables,
) -> Result<(), MapWriteError> {
    let mut ops: Vec<PolicyOp<'_>> = Vec::new();
    for (id, n) in &new.endpoints {
        match old.endpoints.get(id) {
            None => ops.push(PolicyOp::Create(*id, n)),
            Some(o) => {
                let before: std::collections::HashMap<PolicyKey, &MapEntry> =
                    o.entries.iter().map(|e| (e.key, e)).collect();
                let after: std::collections::HashSet<PolicyKey> =
                    n.entries.iter().map(|e| e.key).collect();
                for e in &n.entries {
                    let was = before.get(&e.key).copied();
                    if was.map(|w| w.entry) != Some(e.entry) {
                        ops.push(PolicyOp::Upsert(*id, e, was));
                    }
                }
                for e in &o.entries {
                    if !after.contains(&e.key) {
                        ops.push(PolicyOp::Remove(*id, e));
                    }
                }
            }
        }
    }
    for (id, o) in &old.endpoints {
        if !new.endpoints.contains_key(id) {
            ops.push(PolicyOp::Drop(*id, o));
        }
    }
    for (i, op) in ops.iter().enumerate() {
        let r = match op {
            PolicyOp::Create(id, p) => kernel.create_policy_map(*id, &pairs(p)),
            PolicyOp::Drop(id, _) => kernel.remove_policy_map(*id),
            PolicyOp::Upsert(id, e, _) => kernel.upsert_policy(*id, &e.key, &e.entry),
            PolicyOp::Remove(id, e) => kernel.remove_policy(*id, &e.key),
        };
        if let Err(err) = r {
            for op in ops[..i].iter().rev() {
                let _ = match op {
                    PolicyOp::Create(id, _) => kernel.remove_policy_map(*id),
                    PolicyOp::Drop(id, p) => kernel.create_policy_map(*id, &pairs(p)),
                    PolicyOp::Upsert(id, e, Some(w)) => kernel.upsert_policy(*id, &e.key, &w.entry),
                    PolicyOp::Upsert(id, e, None) => kernel.remove_policy(*id, &e.key),
                    PolicyOp::Remove(id, e) => kernel.upsert_policy(*id, &e.key, &e.entry),
                };
            }
            return Err(err);
        }
    }
    Ok(())
}

/// The workers' ipcache copy with `changes` applied.
fn ipcache_with<F: TableFamily>(
    cur: &Lpm<F, RemoteEndpointInfo>,
    changes: &[(F::Prefix, Option<RemoteEndpointInfo>)],
) -> Lpm<F, RemoteEndpointInfo> {
    let mut ic = cur.clone();
    for (p, v) in changes {
        match v {
            Some(v) => {
                ic.insert(*p, *v);
            }
            None => {
                ic.remove(*p);
            }
        }
    }
    ic
}

/// The `cilium_lxc` entries a node config describes, given its resolved lxc ports (in pod
/// order): one per pod, plus `(localhost)` entries for the router IP and the host IPs.
///
/// # Errors
/// The config's pods cannot all get an endpoint ID ([`Config::endpoint_ids`]).
pub fn node_endpoints(
    cfg: &Config,
    ports: &[Port],
) -> Result<Vec<(EndpointKey, EndpointEntry)>, DatapathError> {
    let ids = cfg
        .endpoint_ids()
        .map_err(|p| DatapathError::InvalidEndpoint {
            key: p.field,
            msg: p.msg,
        })?;
    let (sec_ids, _) = cfg.identities();
    let mut out = Vec::new();
    for (i, pod) in cfg.pods.iter().enumerate() {
        let Some(port) = ports.get(i) else {
            return Err(DatapathError::InvalidEndpoint {
                key: format!("pods[{i}]"),
                msg: format!(
                    "no lxc port for it ({} ports for {} pods)",
                    ports.len(),
                    cfg.pods.len()
                ),
            });
        };
        let entry = EndpointEntry {
            info: EndpointInfo {
                ifindex: port.ifindex,
                lxc_id: ids[i],
                mac: EndpointInfo::encode_mac(pod.mac),
                node_mac: EndpointInfo::encode_mac(port.mac),
                sec_id: sec_ids[i],
                ..Default::default()
            },
            port: Some(i as u16),
        };
        out.push((EndpointKey::v4(pod.ip.octets()), entry));
        // Dual stack: the same endpoint under its IPv6 key, as Cilium writes both.
        if let Some(v6) = pod.ipv6 {
            out.push((EndpointKey::v6(v6.octets()), entry));
        }
    }
    for ip in std::iter::once(&cfg.node.router_ip)
        .chain(&cfg.node.host_ips)
        .chain(cfg.node.underlay.as_ref().map(|u| &u.address.addr))
    {
        out.push((
            EndpointKey::v4(ip.octets()),
            EndpointEntry {
                info: EndpointInfo::host(),
                port: None,
            },
        ));
    }
    Ok(out)
}

/// The `cilium_ipcache_v2` entries a config describes, as Cilium's agent would write them:
/// - `0.0.0.0/0` → world;
/// - local pods → their identity, no tunnel; this node's addresses → host;
/// - each remote node's address → remote-node with itself as tunnel endpoint (Cilium
///   tunnels pod → remote-node traffic; NodePort replies from backends rely on it);
/// - each remote pod → its identity, tunnel endpoint = its node (tunnel mode);
/// - each remote pod CIDR → world with the tunnel endpoint, so pods not (yet) known
///   individually still reach their node (what replaced `cilium_tunnel_map` in 1.18).
///
/// In native routing mode the remote entries carry no tunnel endpoint.
pub fn node_ipcache(cfg: &Config) -> Vec<(Ipv4Cidr, RemoteEndpointInfo)> {
    let (local, remote) = cfg.identities();
    let remote_info = |id: u32, node: std::net::Ipv4Addr| remote_entry(cfg, id, node);
    let mut out = vec![(
        Ipv4Cidr::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
        RemoteEndpointInfo::local(identity::RESERVED_WORLD),
    )];
    for (pod, id) in cfg.pods.iter().zip(&local) {
        out.push((Ipv4Cidr::host(pod.ip), RemoteEndpointInfo::local(*id)));
    }
    for ip in std::iter::once(&cfg.node.router_ip)
        .chain(&cfg.node.host_ips)
        .chain(cfg.node.underlay.as_ref().map(|u| &u.address.addr))
    {
        out.push((
            Ipv4Cidr::host(*ip),
            RemoteEndpointInfo::local(identity::RESERVED_HOST),
        ));
    }
    for (node, ids) in cfg.remote_nodes.iter().zip(&remote) {
        out.push((
            Ipv4Cidr::host(node.ip),
            remote_info(identity::RESERVED_REMOTE_NODE, node.ip),
        ));
        out.push((
            node.pod_cidr,
            remote_info(identity::RESERVED_WORLD, node.ip),
        ));
        for (pod, id) in node.pods.iter().zip(ids) {
            out.push((Ipv4Cidr::host(pod.ip), remote_info(*id, node.ip)));
        }
    }
    out
}

/// The ipcache value of something behind remote node `node` with identity `id`: its
/// tunnel endpoint in tunnel mode, none with native routing (both families' entries).
fn remote_entry(cfg: &Config, id: u32, node: std::net::Ipv4Addr) -> RemoteEndpointInfo {
    if cfg.datapath.routing == RoutingMode::Tunnel {
        RemoteEndpointInfo::tunnelled(id, node)
    } else {
        RemoteEndpointInfo::local(id)
    }
}

/// The IPv6 part of `cilium_ipcache_v2` a config describes (dual-stack pods and pod
/// CIDRs), as [`node_ipcache`] does for IPv4: local pods `/128` → their identity; a remote
/// node's IPv6 pod CIDR → world behind its (IPv4) tunnel endpoint, its pods `/128` → their
/// identities behind it. Empty for an IPv4-only config.
pub fn node_ipcache6(cfg: &Config) -> Vec<(Ipv6Cidr, RemoteEndpointInfo)> {
    let (local, remote) = cfg.identities();
    let remote_info = |id: u32, node: std::net::Ipv4Addr| remote_entry(cfg, id, node);
    let mut out = Vec::new();
    for (pod, id) in cfg.pods.iter().zip(&local) {
        if let Some(v6) = pod.ipv6 {
            out.push((Ipv6Cidr::host(v6), RemoteEndpointInfo::local(*id)));
        }
    }
    for (node, ids) in cfg.remote_nodes.iter().zip(&remote) {
        if let Some(c) = node.pod_cidr_v6 {
            out.push((c, remote_info(identity::RESERVED_WORLD, node.ip)));
        }
        for (pod, id) in node.pods.iter().zip(ids) {
            if let Some(v6) = pod.ipv6 {
                out.push((Ipv6Cidr::host(v6), remote_info(*id, node.ip)));
            }
        }
    }
    out
}

/// Identities a node accepts as the source of tunnelled traffic: every pod identity of the
/// cluster, plus world and remote-node. Not host (1) and not unknown (0): Cilium drops a VNI
/// claiming the host identity.
pub fn accepted_identities(cfg: &Config) -> Vec<u32> {
    let (local, remote) = cfg.identities();
    let mut v: Vec<u32> = local
        .into_iter()
        .chain(remote.into_iter().flatten())
        .collect();
    v.extend([
        identity::RESERVED_WORLD,
        identity::RESERVED_REMOTE_NODE,
        identity::RESERVED_KUBE_APISERVER,
        identity::RESERVED_HEALTH,
    ]);
    v.sort_unstable();
    v.dedup();
    v
}

/// Native routing: each remote node's pod CIDR via the node's address (none in tunnel mode).
pub fn node_routes(cfg: &Config) -> Vec<(Ipv4Cidr, std::net::Ipv4Addr)> {
    if cfg.datapath.routing != RoutingMode::Native {
        return Vec::new();
    }
    cfg.remote_nodes
        .iter()
        .map(|n| (n.pod_cidr, n.ip))
        .collect()
}

/// The datapath's native routes: [`node_routes`], and each remote node's own address via
/// itself, so that what a pod sends to another node's address — a service backend's reply
/// to a NodePort connection that node SNATed — is routed there too (the kernel has its own
/// route to the node on the underlay; the XDP program hands pods' other traffic to nodes
/// to the kernel).
pub fn datapath_routes(cfg: &Config) -> Vec<(Ipv4Cidr, std::net::Ipv4Addr)> {
    let mut r = node_routes(cfg);
    if cfg.datapath.routing == RoutingMode::Native {
        r.extend(
            cfg.remote_nodes
                .iter()
                .map(|n| (Ipv4Cidr::host(n.ip), n.ip)),
        );
    }
    r
}

/// The service and backend IDs of a previous run (from its pinned LB maps): each
/// frontend's master key with its service ID, and each backend ID with its backend.
#[derive(Debug, Clone, Default)]
pub struct LbIds {
    pub services: Vec<(crate::maps::lb::Lb4Key, u16)>,
    pub backends: Vec<(u32, crate::maps::lb::Lb4Backend)>,
}

/// What [`Datapath::restore_datapath_maps`] kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    pub ct_kept: usize,
    pub ct_dropped: usize,
    pub affinity_kept: usize,
}

/// The last run's service and backend IDs → this run's, matched by frontend (master key)
/// and by backend (address, port, protocol). ID 0 ("none") maps to itself.
struct IdRemap {
    services: std::collections::HashMap<u16, u16>,
    backends: std::collections::HashMap<u32, u32>,
}

impl IdRemap {
    fn new(old: Option<&LbIds>, now: &crate::lb::LbTables) -> IdRemap {
        let mut services = std::collections::HashMap::new();
        let mut backends = std::collections::HashMap::new();
        if let Some(old) = old {
            for (k, rev) in &old.services {
                if let Some(m) = now.services.get(k) {
                    services.insert(*rev, m.rev_nat().0);
                }
            }
            let by_addr: std::collections::HashMap<([u8; 4], [u8; 2], u8), u32> = now
                .backends
                .iter()
                .map(|(id, b)| ((b.address, b.port, b.proto), *id))
                .collect();
            for (id, b) in &old.backends {
                if let Some(n) = by_addr.get(&(b.address, b.port, b.proto)) {
                    backends.insert(*id, *n);
                }
            }
        }
        IdRemap { services, backends }
    }

    fn service(&self, old: u16) -> Option<u16> {
        if old == 0 {
            Some(0)
        } else {
            self.services.get(&old).copied()
        }
    }

    fn backend(&self, old: u32) -> Option<u32> {
        if old == 0 {
            Some(0)
        } else {
            self.backends.get(&old).copied()
        }
    }
}

/// The node-wide forwarding settings of a config, given its resolved ports (the underlay
/// port, if any, gives the MTU).
pub fn node_overlay(cfg: &Config, ports: &[Port]) -> Overlay {
    Overlay {
        mode: cfg.datapath.routing,
        tunnel_port: cfg.datapath.tunnel_port,
        node_ip: cfg.node_ip().map_or([0; 4], |ip| ip.octets()),
        router_ip: cfg.node.router_ip.octets(),
        underlay_mtu: ports
            .iter()
            .find(|p| p.role == crate::tables::PortRole::Underlay)
            .map_or(1500, |p| p.mtu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::MacAddr;
    use crate::maps::lb::AffinityMatchKey;
    use crate::maps::lb::{Lb4Backend, RevNat4Value};

    /// Service `name` at ClusterIP 10.96.0.<vip>:80 → 8080 on backends 10.200.0.<b>.
    fn svc(name: &str, vip: u8, backends: &[u8]) -> crate::lb::ServiceConfig {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "cluster_ip": format!("10.96.0.{vip}"),
            "ports": [{ "port": 80, "target_port": 8080 }],
            "backends": backends.iter().map(|b| serde_json::json!({ "ip": format!("10.200.0.{b}") })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn ports() -> Vec<Port> {
        vec![Port::lxc(
            "lxc-a",
            7,
            MacAddr([2, 0, 0, 0, 0, 7]),
            "10.1.1.2".parse().unwrap(),
            1,
            1500,
        )]
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
        ipcache: std::collections::HashMap<IpcacheKey, RemoteEndpointInfo>,
        /// The LB maps, like the kernel's: removing an absent key fails (ENOENT).
        lb: std::collections::BTreeMap<String, String>,
    }

    impl Flaky {
        fn lb_write(&mut self, key: String, v: Option<String>) -> Result<(), MapWriteError> {
            self.writes += 1;
            let err = |msg: &str| MapWriteError {
                map: "lb",
                op: "write",
                key: key.clone(),
                msg: msg.into(),
            };
            if self.writes == self.fail_at {
                return Err(err("ENOSPC"));
            }
            match v {
                Some(v) => {
                    self.lb.insert(key, v);
                }
                None => {
                    self.lb.remove(&key).ok_or_else(|| err("ENOENT"))?;
                }
            }
            Ok(())
        }
    }
    impl EndpointMap for Flaky {
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

    impl IpcacheMap for Flaky {
        fn upsert_ipcache(
            &mut self,
            k: &IpcacheKey,
            v: &RemoteEndpointInfo,
        ) -> Result<(), MapWriteError> {
            self.writes += 1;
            if self.writes == self.fail_at {
                return Err(MapWriteError {
                    map: "cilium_ipcache_v2",
                    op: "update",
                    key: k.to_string(),
                    msg: "ENOSPC".into(),
                });
            }
            self.ipcache.insert(*k, *v);
            Ok(())
        }
        fn remove_ipcache(&mut self, k: &IpcacheKey) -> Result<(), MapWriteError> {
            self.ipcache.remove(k);
            Ok(())
        }
    }

    impl OverlayMap for Flaky {
        fn set_overlay(&mut self, _: &Overlay, _: Option<Ipv4Cidr>) -> Result<(), MapWriteError> {
            Ok(())
        }
        fn set_nexthop(
            &mut self,
            _: [u8; 4],
            _: Option<(u32, &crate::tables::NextHop)>,
        ) -> Result<(), MapWriteError> {
            Ok(())
        }
        fn set_identity(&mut self, _: u32, _: bool) -> Result<(), MapWriteError> {
            Ok(())
        }
        fn set_route(&mut self, p: Ipv4Cidr, gw: Option<[u8; 4]>) -> Result<(), MapWriteError> {
            self.lb_write(format!("route {p}"), gw.map(|g| format!("{g:?}")))
        }
    }

    /// Policy maps, in the LB maps' store (one write each; a map's entries go with it).
    impl PolicyMaps for Flaky {
        fn create_policy_map(
            &mut self,
            ep_id: u16,
            entries: &[(PolicyKey, PolicyEntry)],
        ) -> Result<(), MapWriteError> {
            self.lb_write(format!("polmap {ep_id}"), Some(String::new()))?;
            for (k, v) in entries {
                self.lb
                    .insert(format!("pol {ep_id} {k:?}"), format!("{v:?}"));
            }
            Ok(())
        }
        fn remove_policy_map(&mut self, ep_id: u16) -> Result<(), MapWriteError> {
            self.lb_write(format!("polmap {ep_id}"), None)?;
            let prefix = format!("pol {ep_id} ");
            self.lb.retain(|k, _| !k.starts_with(&prefix));
            Ok(())
        }
        fn upsert_policy(
            &mut self,
            ep_id: u16,
            k: &PolicyKey,
            v: &PolicyEntry,
        ) -> Result<(), MapWriteError> {
            self.lb_write(format!("pol {ep_id} {k:?}"), Some(format!("{v:?}")))
        }
        fn remove_policy(&mut self, ep_id: u16, k: &PolicyKey) -> Result<(), MapWriteError> {
            self.lb_write(format!("pol {ep_id} {k:?}"), None)
        }
    }

    impl LbMaps for Flaky {
        fn upsert_service(&mut self, k: &Lb4Key, v: &Lb4Service) -> Result<(), MapWriteError> {
            self.lb_write(format!("svc {k:?}"), Some(format!("{v:?}")))
        }
        fn remove_service(&mut self, k: &Lb4Key) -> Result<(), MapWriteError> {
            self.lb_write(format!("svc {k:?}"), None)
        }
        fn upsert_backend(&mut self, id: u32, v: &Lb4Backend) -> Result<(), MapWriteError> {
            self.lb_write(format!("be {id}"), Some(format!("{v:?}")))
        }
        fn remove_backend(&mut self, id: u32, _: &Lb4Backend) -> Result<(), MapWriteError> {
            self.lb_write(format!("be {id}"), None)
        }
        fn upsert_revnat(&mut self, id: RevNat, v: &RevNat4Value) -> Result<(), MapWriteError> {
            self.lb_write(format!("rev {}", id.0), Some(format!("{v:?}")))
        }
        fn remove_revnat(&mut self, id: RevNat) -> Result<(), MapWriteError> {
            self.lb_write(format!("rev {}", id.0), None)
        }
        fn set_maglev(
            &mut self,
            id: RevNat,
            t: Option<(&[u32], u32)>,
        ) -> Result<(), MapWriteError> {
            self.lb_write(format!("mag {}", id.0), t.map(|t| format!("{t:?}")))
        }
        fn set_affinity_match(
            &mut self,
            k: &AffinityMatchKey,
            on: bool,
        ) -> Result<(), MapWriteError> {
            self.lb_write(format!("aff {k:?}"), on.then(String::new))
        }
        fn set_lb_config(&mut self, alg: u8) -> Result<(), MapWriteError> {
            self.lb_write("lbcfg".into(), Some(format!("{alg}")))
        }
    }

    /// Conntrack and affinity kept from a run that numbered services and backends
    /// differently are renumbered to this run's by frontend and backend address; entries of
    /// a service or backend that is gone, expired entries and cached verdicts are dropped;
    /// entries that name no service are kept as they are.
    #[test]
    fn restored_conntrack_is_renumbered_to_this_runs_service_ids() {
        use crate::ct::{CtSizes, CtState};
        use crate::maps::ct::CtTuple4;
        let find = |t: &crate::tables::Tables, vip: [u8; 4]| {
            let (k, m) =
                t.lb.services
                    .iter()
                    .find(|(k, _)| k.address == vip && k.backend_slot == 0)
                    .unwrap();
            let be = t.lb.services.get(&k.slot(1)).unwrap().backend_id();
            (*k, m.rev_nat().0, be)
        };
        let mut dp = Datapath::new(ports(), 1, NoKernel);
        dp.set_services(
            &[svc("b", 5, &[4, 5]), svc("a", 10, &[1])],
            &LbSettings::default(),
        )
        .unwrap();
        let (key_a, rev_a, be_a) = find(&dp.tables(), [10, 96, 0, 10]);
        // The last run gave a's frontend and backend other IDs, and had a service (and a
        // backend) this run does not.
        let (rev_a_old, be_a_old, rev_g_old, be_g_old) = (77u16, 99u32, 78u16, 98u32);
        let backend_a = *dp.tables().lb.backends.get(&be_a).unwrap();
        let mut key_g = key_a;
        key_g.address = [10, 96, 0, 12];
        let mut backend_g = backend_a;
        backend_g.address = [10, 200, 0, 9];
        let old = LbIds {
            services: vec![(key_a, rev_a_old), (key_g, rev_g_old)],
            backends: vec![(be_a_old, backend_a), (be_g_old, backend_g)],
        };
        let now = 1000;
        let ct = crate::ct::Conntrack::new(CtSizes {
            tcp: 1024,
            any: 1024,
        });
        let key = |sport: u16, vip: u8| CtTuple4 {
            daddr: [10, 96, 0, vip],
            saddr: [10, 200, 0, 50],
            dport: 80u16.to_be_bytes(),
            sport: sport.to_be_bytes(),
            nexthdr: 6,
            flags: 0,
        };
        let st = |rev: u16, be: u32| CtState {
            backend_id: be,
            rev_nat: RevNat(rev),
            src_sec_id: 4242,
            ..Default::default()
        };
        let hit = ct
            .create(&key(1000, 10), &st(rev_a_old, be_a_old), now + 100, now)
            .unwrap();
        ct.cache_policy(&hit, 7, 3);
        ct.create(&key(1001, 12), &st(rev_g_old, be_g_old), now + 100, now)
            .unwrap();
        ct.create(&key(1002, 99), &st(0, 0), now + 100, now)
            .unwrap();
        ct.create(&key(1003, 10), &st(rev_a_old, be_a_old), now - 1, now - 50)
            .unwrap();
        // NodePort entries: their reply device's slot moves with it, or the entry goes.
        let np = |p: u16| CtState {
            reply_port: Some(p),
            ..st(0, 0)
        };
        ct.create(&key(1004, 99), &np(3), now + 100, now).unwrap();
        ct.create(&key(1005, 99), &np(5), now + 100, now).unwrap();
        let slots: std::collections::HashMap<u16, u16> = [(3, 1)].into();
        let aff = crate::tables::AffinityMap::new(64);
        let client = [10, 200, 0, 50];
        let aw = |rev: u16| crate::tables::lb::affinity_words(client, RevNat(rev));
        aff.insert(aw(rev_a_old), [be_a_old as u64], now + 100, now)
            .unwrap();
        aff.insert(aw(rev_g_old), [be_g_old as u64], now + 100, now)
            .unwrap();
        let r = dp.restore_datapath_maps(ct, aff, Some(&old), Some(&slots), now);
        let n = dp
            .tables()
            .ct
            .lookup(&key(1004, 99), now)
            .expect("its device is there");
        assert_eq!(n.state.reply_port, Some(1));
        assert!(dp.tables().ct.lookup(&key(1005, 99), now).is_none());
        assert_eq!(
            (r.ct_kept, r.ct_dropped, r.affinity_kept),
            (3, 3, 1),
            "{r:?}"
        );
        let t = dp.tables();
        let s = t
            .affinity
            .lookup(&aw(rev_a))
            .expect("a's client keeps its backend");
        assert_eq!(t.affinity.read(s).map(|(v, _)| v), Some([be_a as u64]));
        assert!(t.affinity.lookup(&aw(rev_a_old)).is_none());
        let t = dp.tables();
        let a = t.ct.lookup(&key(1000, 10), now).expect("a's flow kept");
        let s = a.state;
        assert_eq!(
            (s.rev_nat.0, s.backend_id, s.src_sec_id),
            (rev_a, be_a, 4242)
        );
        assert_eq!(a.policy, None, "verdicts of the last run are forgotten");
        assert!(
            t.ct.lookup(&key(1001, 12), now).is_none(),
            "its service is gone"
        );
        assert!(
            t.ct.lookup(&key(1002, 99), now).is_some(),
            "no service: kept as is"
        );
        // Without the last run's IDs, only entries that name no service are kept.
        let mut dp2 = Datapath::new(ports(), 1, NoKernel);
        let ct = crate::ct::Conntrack::new(CtSizes {
            tcp: 1024,
            any: 1024,
        });
        ct.create(&key(1000, 10), &st(rev_a_old, be_a_old), now + 100, now)
            .unwrap();
        ct.create(&key(1002, 99), &st(0, 0), now + 100, now)
            .unwrap();
        let r = dp2.restore_datapath_maps(ct, crate::tables::AffinityMap::new(64), None, None, now);
        assert_eq!((r.ct_kept, r.ct_dropped), (1, 1));
    }

    /// A route change the kernel fails half-way (the tc datapath's `fp_routes`) leaves the
    /// old routes in force, in the kernel and in the tables; the next change applies whole.
    #[test]
    fn a_route_change_the_kernel_fails_leaves_the_old_routes() {
        let r = |p: &str, gw: &str| {
            (
                p.parse::<Ipv4Cidr>().unwrap(),
                gw.parse::<std::net::Ipv4Addr>().unwrap(),
            )
        };
        let routes = |dp: &Datapath<Flaky>| -> Vec<String> {
            let mut v: Vec<String> = dp
                .kernel_ref()
                .lb
                .iter()
                .filter(|(k, _)| k.starts_with("route "))
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            v.sort();
            v
        };
        let mut dp = Datapath::new(ports(), 1, Flaky::default());
        let o = dp.tables().overlay;
        let old = [
            r("10.2.0.0/24", "192.168.0.2"),
            r("10.3.0.0/24", "192.168.0.3"),
        ];
        let new = [
            r("10.2.0.0/24", "192.168.0.9"),
            r("10.4.0.0/24", "192.168.0.4"),
        ];
        dp.set_overlay(o, None, &old, []).unwrap();
        let before = routes(&dp);
        assert_eq!(before.len(), 2, "{before:?}");
        for fail in 1..=3 {
            dp.kernel().fail_at = dp.kernel().writes + fail;
            assert!(dp.set_overlay(o, None, &new, []).is_err());
            assert_eq!(routes(&dp), before, "write {fail} failed: kernel restored");
            assert_eq!(
                dp.tables().routes.get("10.3.0.0/24".parse().unwrap()),
                Some(&[192, 168, 0, 3])
            );
        }
        dp.kernel().fail_at = 0;
        dp.set_overlay(o, None, &new, []).unwrap();
        assert_eq!(
            routes(&dp),
            [
                "route 10.2.0.0/24 [192, 168, 0, 9]",
                "route 10.4.0.0/24 [192, 168, 0, 4]"
            ]
        );
    }

    /// A service change the kernel fails half-way is rolled back: the kernel maps hold what
    /// they held, the workers' tables and the services in force are unchanged, and the next
    /// change applies as if nothing had happened. The kernel maps always equal the tables.
    #[test]
    fn a_service_change_the_kernel_fails_leaves_the_old_state_in_force() {
        let kernel_view = |dp: &Datapath<Flaky>| {
            let t = dp.tables();
            let mut want = std::collections::BTreeMap::new();
            for (k, v) in t.lb.services.iter() {
                want.insert(format!("svc {k:?}"), format!("{v:?}"));
            }
            for (id, v) in t.lb.backends.iter() {
                want.insert(format!("be {id}"), format!("{v:?}"));
            }
            for (id, v) in t.lb.revnat.iter() {
                want.insert(format!("rev {id}"), format!("{v:?}"));
            }
            for (id, v) in t.lb.maglev.iter() {
                let v: &[u32] = v;
                want.insert(format!("mag {id}"), format!("{:?}", (v, t.lb.seeds.jhash0)));
            }
            for (k, _) in t.lb.affinity_match.iter() {
                want.insert(format!("aff {k:?}"), String::new());
            }
            let s = LbSettings::default();
            want.insert("lbcfg".into(), format!("{}", s.algorithm.code()));
            want
        };
        // Service a uses Maglev and session affinity, so their tables change too.
        let svc = |name: &str, vip: u8, backends: &[u8]| {
            let mut s = svc(name, vip, backends);
            if name == "a" {
                s.lb_algorithm = Some(crate::lb::LbAlgorithm::Maglev);
                s.session_affinity = crate::lb::SessionAffinity::ClientIP;
            }
            s
        };
        let mut dp = Datapath::new(ports(), 1, Flaky::default());
        dp.set_services(
            &[svc("a", 10, &[1, 2, 3]), svc("b", 11, &[3, 4])],
            &LbSettings::default(),
        )
        .unwrap();
        assert!(dp.kernel_ref().lb.keys().any(|k| k.starts_with("mag ")));
        assert!(dp.kernel_ref().lb.keys().any(|k| k.starts_with("aff ")));
        assert_eq!(dp.kernel_ref().lb, kernel_view(&dp));
        let (before, g) = (dp.kernel_ref().lb.clone(), dp.tables().generation);
        let writes = dp.kernel().writes;
        for fail in 1..=12 {
            dp.kernel().fail_at = dp.kernel().writes + fail;
            let e = dp
                .upsert_services(&[svc("a", 10, &[2, 5, 6]), svc("c", 12, &[7])])
                .unwrap_err();
            assert!(e.to_string().contains("ENOSPC"), "{e}");
            assert_eq!(
                dp.kernel().lb,
                before,
                "write {fail} failed: kernel restored"
            );
            assert_eq!(dp.tables().generation, g, "nothing published");
            assert_eq!(dp.services().len(), 2);
        }
        assert!(dp.kernel().writes > writes);
        dp.kernel().fail_at = 0;
        dp.upsert_services(&[svc("a", 10, &[2, 5, 6]), svc("c", 12, &[7])])
            .unwrap();
        assert_eq!(
            dp.kernel_ref().lb,
            kernel_view(&dp),
            "kernel = tables after the change"
        );
        dp.delete_service("default/b").unwrap();
        assert_eq!(
            dp.kernel_ref().lb,
            kernel_view(&dp),
            "kernel = tables after a delete"
        );
        // Backends 1, 3 (and 4) are retained terminating; released when no flow uses them.
        assert!(!dp.retained_backends().is_empty());
        dp.gc(0).unwrap();
        assert!(dp.retained_backends().is_empty());
        assert_eq!(
            dp.kernel_ref().lb,
            kernel_view(&dp),
            "kernel = tables after the GC"
        );
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn ipcache_batch_is_all_or_nothing() {
        let mut dp = Datapath::new(
            ports(),
            1,
            Flaky {
                fail_at: 4,
                ..Default::default()
            },
        );
        let node2 = "192.168.50.2".parse().unwrap();
        let g = dp
            .upsert_ipcache(&[
                (cidr("10.2.0.0/24"), RemoteEndpointInfo::tunnelled(2, node2)),
                (
                    cidr("10.2.0.5/32"),
                    RemoteEndpointInfo::tunnelled(300, node2),
                ),
            ])
            .unwrap();
        assert_eq!(
            dp.tables().ipcache_v4([10, 2, 0, 5]).unwrap().sec_identity,
            300
        );
        assert_eq!(
            dp.tables().ipcache_v4([10, 2, 0, 6]).unwrap().sec_identity,
            2
        );
        let before = dp.kernel().ipcache.clone();
        let err = dp
            .upsert_ipcache(&[
                (
                    cidr("10.2.0.5/32"),
                    RemoteEndpointInfo::tunnelled(301, node2),
                ),
                (
                    cidr("10.2.0.6/32"),
                    RemoteEndpointInfo::tunnelled(302, node2),
                ),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("ENOSPC"), "{err}");
        assert_eq!(dp.kernel().ipcache, before, "kernel map restored");
        assert_eq!(dp.tables().generation, g, "nothing published");
        assert_eq!(
            dp.tables().ipcache_v4([10, 2, 0, 5]).unwrap().sec_identity,
            300
        );
        // Invalid entries are refused before any write.
        let writes = dp.kernel().writes;
        let e = dp
            .upsert_ipcache(&[(cidr("10.2.0.1/24"), RemoteEndpointInfo::local(5))])
            .unwrap_err();
        assert!(e.to_string().contains("host bits"), "{e}");
        let e = dp
            .upsert_ipcache(&[(cidr("10.3.0.0/24"), RemoteEndpointInfo::local(0))])
            .unwrap_err();
        assert!(e.to_string().contains("identity 0"), "{e}");
        assert_eq!(dp.kernel().writes, writes);
        assert!(dp.remove_ipcache(cidr("10.9.0.0/16")).is_err());
        dp.remove_ipcache(cidr("10.2.0.5/32")).unwrap();
        assert_eq!(
            dp.tables().ipcache_v4([10, 2, 0, 5]).unwrap().sec_identity,
            2
        );
    }

    #[test]
    fn cluster_ipcache_and_identities_agree_across_nodes() {
        let n1 = Config::parse(
            r#"
node: { name: n1, router_ip: 10.1.0.1, pod_cidr: 10.1.0.0/24,
        underlay: { device: eth1, address: 192.168.50.1/24 } }
pods:
  - { name: a, ip: 10.1.0.11, mac: "0a:00:00:00:00:0b", lxc: lxc-a, labels: { app: a } }
remote_nodes:
  - name: n2
    ip: 192.168.50.2
    pod_cidr: 10.2.0.0/24
    pods: [ { name: b, ip: 10.2.0.11, labels: { app: b } } ]
"#,
            "n1.yaml",
        )
        .unwrap();
        let n2 = Config::parse(
            r#"
node: { name: n2, router_ip: 10.2.0.1, pod_cidr: 10.2.0.0/24,
        underlay: { device: eth1, address: 192.168.50.2/24 } }
pods:
  - { name: b, ip: 10.2.0.11, mac: "0a:00:00:00:00:0c", lxc: lxc-b, labels: { app: b } }
remote_nodes:
  - name: n1
    ip: 192.168.50.1
    pod_cidr: 10.1.0.0/24
    pods: [ { name: a, ip: 10.1.0.11, labels: { app: a } } ]
"#,
            "n2.yaml",
        )
        .unwrap();
        let (a_on_n1, _) = n1.identities();
        let (b_on_n2, _) = n2.identities();
        let ic1: Lpm4<RemoteEndpointInfo> = {
            let mut t = Lpm4::new();
            for (p, v) in node_ipcache(&n1) {
                t.insert(p, v);
            }
            t
        };
        let b = ic1.lookup([10, 2, 0, 11]).unwrap();
        assert_eq!(b.sec_identity, b_on_n2[0], "n1 knows b by n2's number");
        assert_eq!(b.tunnel_v4(), Some([192, 168, 50, 2]));
        let other = ic1.lookup([10, 2, 0, 99]).unwrap();
        assert_eq!(
            (other.sec_identity, other.tunnel_v4()),
            (identity::RESERVED_WORLD, Some([192, 168, 50, 2])),
            "unknown pods of n2 still tunnel to n2"
        );
        assert_eq!(ic1.lookup([192, 168, 50, 2]).unwrap().sec_identity, 6);
        assert_eq!(ic1.lookup([192, 168, 50, 1]).unwrap().sec_identity, 1);
        assert_eq!(ic1.lookup([10, 1, 0, 11]).unwrap().sec_identity, a_on_n1[0]);
        assert_eq!(ic1.lookup([10, 1, 0, 11]).unwrap().tunnel_v4(), None);
        assert_eq!(ic1.lookup([8, 8, 8, 8]).unwrap().sec_identity, 2);
        let acc = accepted_identities(&n1);
        assert!(acc.contains(&b_on_n2[0]) && acc.contains(&a_on_n1[0]));
        assert!(!acc.contains(&identity::RESERVED_HOST));
    }

    /// Dual stack: a pod's IPv6 address is the same `cilium_lxc` endpoint under its IPv6
    /// key, and the IPv6 ipcache arm (kernel and workers) holds local and remote pods and the
    /// remote pod CIDR behind the tunnel; a bad IPv6 prefix is refused before any write.
    #[test]
    fn dual_stack_pods_are_written_under_both_families() {
        let cfg = Config::parse(
            r#"
node: { name: n1, router_ip: 10.1.0.1, pod_cidr: 10.1.0.0/24, pod_cidr_v6: "fd00:10:1::/64",
        underlay: { device: eth1, address: 192.168.50.1/24 } }
pods:
  - { name: a, ip: 10.1.0.11, ipv6: "fd00:10:1::11", mac: "0a:00:00:00:00:0b", lxc: lxc-a, labels: { app: a } }
remote_nodes:
  - name: n2
    ip: 192.168.50.2
    pod_cidr: 10.2.0.0/24
    pod_cidr_v6: "fd00:10:2::/64"
    pods: [ { name: b, ip: 10.2.0.11, ipv6: "fd00:10:2::11", labels: { app: b } } ]
"#,
            "n1.yaml",
        )
        .unwrap();
        let ports = vec![
            Port::lxc(
                "lxc-a",
                7,
                MacAddr([2, 0, 0, 0, 0, 7]),
                "10.1.0.11".parse().unwrap(),
                1,
                1500,
            ),
            Port::underlay(
                "eth1",
                8,
                MacAddr([2, 0, 0, 0, 0, 8]),
                "192.168.50.1".parse().unwrap(),
                1500,
            ),
        ];
        let mut dp = Datapath::new(ports, 1, Flaky::default());
        dp.load_node(&cfg).unwrap();
        let (local, remote) = cfg.identities();
        let a6: std::net::Ipv6Addr = "fd00:10:1::11".parse().unwrap();
        let t = dp.tables();
        let e4 = t.endpoint_v4([10, 1, 0, 11]).unwrap();
        let e6 = t.endpoint::<V6>(a6.octets()).unwrap();
        assert_eq!(e4, e6, "one endpoint, two keys");
        assert_eq!(
            dp.kernel().map[&EndpointKey::v6(a6.octets())].sec_id,
            local[0]
        );
        assert_eq!(t.ipcache::<V6>(a6.octets()).unwrap().sec_identity, local[0]);
        let b6: std::net::Ipv6Addr = "fd00:10:2::11".parse().unwrap();
        let b = t.ipcache::<V6>(b6.octets()).unwrap();
        assert_eq!(
            (b.sec_identity, b.tunnel_v4()),
            (remote[0][0], Some([192, 168, 50, 2]))
        );
        let other: std::net::Ipv6Addr = "fd00:10:2::99".parse().unwrap();
        let o = t.ipcache::<V6>(other.octets()).unwrap();
        assert_eq!(
            (o.sec_identity, o.tunnel_v4()),
            (identity::RESERVED_WORLD, Some([192, 168, 50, 2]))
        );
        let k = IpcacheKey::v6(Ipv6Cidr::host(b6));
        assert_eq!(
            dp.kernel().ipcache[&k].sec_identity,
            remote[0][0],
            "in the kernel map too"
        );
        assert!(
            t.ipcache::<V6>([0xfe; 16]).is_none(),
            "no IPv6 world entry was written"
        );
        // The IPv4 arm is what it was.
        assert_eq!(
            t.ipcache_v4([10, 2, 0, 11]).unwrap().sec_identity,
            remote[0][0]
        );
        // A prefix with host bits set is refused and writes nothing.
        let writes = dp.kernel().writes;
        let bad: Ipv6Cidr = "fd00:10:3::1/64".parse().unwrap();
        let e = dp
            .upsert_ipcache_of::<V6>(&[(bad, RemoteEndpointInfo::local(300))])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fd00:10:3::1/64") && e.contains("host bits"),
            "{e}"
        );
        assert_eq!(dp.kernel().writes, writes);
        dp.remove_ipcache_of::<V6>(Ipv6Cidr::host(b6)).unwrap();
        assert!(!dp.kernel().ipcache.contains_key(&k));
        assert_eq!(
            dp.tables().ipcache::<V6>(b6.octets()).unwrap().sec_identity,
            identity::RESERVED_WORLD,
            "the /64 answers once the /128 is gone"
        );
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
    fn policy_whose_cidr_identities_cannot_be_written_changes_nothing() {
        let mut dp = Datapath::new(ports(), 1, Flaky::default());
        let policy = |c: &str, x: &str| {
            crate::policy::parse::parse_policies(
                &format!(
                    "kind: CiliumNetworkPolicy\nmetadata: {{ name: p }}\nspec:\n  endpointSelector: {{}}\n  egress: [{{ toCIDRSet: [{{ cidr: {c}, except: [{x}] }}] }}]\n"
                ),
                "t",
            )
            .unwrap()
        };
        dp.set_policies(&policy("172.16.0.0/16", "172.16.1.0/24"))
            .unwrap();
        let kernel_before = dp.kernel().ipcache.clone();
        let (g, ids) = (dp.tables().generation, dp.policy.cidr_ids.clone());
        assert_eq!(kernel_before.len(), 2);
        // The next policy writes two new prefixes, then removes the two old ones: fail the
        // second write, so the first must be taken back.
        dp.kernel().fail_at = dp.kernel().writes + 2;
        let err = dp
            .set_policies(&policy("172.17.0.0/16", "172.17.1.0/24"))
            .unwrap_err();
        assert!(err.to_string().contains("ENOSPC"), "{err}");
        assert_eq!(
            dp.kernel().ipcache,
            kernel_before,
            "kernel ipcache as before"
        );
        assert_eq!(dp.tables().generation, g, "nothing published");
        assert_eq!(dp.policy.cidr_ids, ids, "policy state as before");
        assert!(dp.tables().ipcache.get(cidr("172.16.0.0/16")).is_some());
    }

    #[test]
    fn node_endpoints_from_default_config() {
        let cfg = Config::default_node();
        let ports: Vec<Port> = cfg
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Port::lxc(
                    &p.lxc,
                    10 + i as u32,
                    MacAddr([2, 0, 0, 0, 0, i as u8]),
                    p.ip,
                    0,
                    1500,
                )
            })
            .collect();
        let eps = node_endpoints(&cfg, &ports).unwrap();
        assert_eq!(eps.len(), 5, "3 pods, router IP, underlay address");
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

    fn web_port(ifindex: u32, ip: &str, id: u16) -> Port {
        Port::lxc(
            "lxc-web",
            ifindex,
            MacAddr([2, 0, 0, 0, 0, ifindex as u8]),
            ip.parse().unwrap(),
            id,
            1500,
        )
    }

    fn web_labels() -> Vec<String> {
        vec![
            "k8s:app=web".to_string(),
            "k8s:io.kubernetes.pod.namespace=default".to_string(),
        ]
    }

    /// The policy maps the kernel holds (`cilium_policy_v3_<id>` in Flaky's store).
    fn kernel_policy(dp: &mut Datapath<Flaky>) -> std::collections::BTreeMap<String, String> {
        dp.kernel()
            .lb
            .iter()
            .filter(|(k, _)| k.starts_with("pol"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// What the kernel should hold for the workers' compiled policy.
    fn policy_of(t: &Tables) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        for (id, p) in &t.policy.endpoints {
            m.insert(format!("polmap {id}"), String::new());
            for e in &p.entries {
                m.insert(format!("pol {id} {:?}", e.key), format!("{:?}", e.entry));
            }
        }
        m
    }

    /// Issue #15: the kernel's per-endpoint policy maps (what the tc datapath reads) hold
    /// exactly the workers' compiled policy after every change, and a change whose Nth
    /// kernel write fails leaves them — and the tables — as they were, for every N.
    #[test]
    fn kernel_policy_maps_follow_the_compiled_policy_all_or_nothing() {
        let mut dp = Datapath::new(ports(), 1, Flaky::default());
        let pol = |y: &str| crate::policy::parse::parse_policies(y, "t").unwrap();
        dp.set_policies(&pol(
            "kind: CiliumNetworkPolicy\nmetadata: { name: web }\nspec:\n  endpointSelector: { matchLabels: { app: web } }\n  ingress: [{}]\n",
        ))
        .unwrap();
        let id = dp.identity_for(&web_labels()).unwrap();
        dp.add_local_endpoint(
            3,
            web_port(9, "10.1.1.9", 42),
            MacAddr([0xa, 0, 0, 0, 0, 9]),
            None,
            id,
            web_labels(),
        )
        .unwrap();
        let want = policy_of(&dp.tables());
        assert!(want.contains_key("polmap 42"), "{want:?}");
        assert_eq!(kernel_policy(&mut dp), want);
        let next = pol(
            "kind: CiliumNetworkPolicy\nmetadata: { name: web }\nspec:\n  endpointSelector: { matchLabels: { app: web } }\n  ingress: [{ fromEndpoints: [{ matchLabels: { app: db } }], toPorts: [{ ports: [{ port: '80', protocol: TCP }] }] }]\n  egressDeny: [{ toPorts: [{ ports: [{ port: '22', protocol: TCP }] }] }]\n",
        );
        let mut failures = 0;
        for n in 1.. {
            let (before, g) = (kernel_policy(&mut dp), dp.tables().generation);
            dp.kernel().fail_at = dp.kernel().writes + n;
            match dp.set_policies(&next) {
                Err(e) => {
                    failures += 1;
                    assert!(e.to_string().contains("ENOSPC"), "{e}");
                    assert_eq!(
                        kernel_policy(&mut dp),
                        before,
                        "write {n} failed: all undone"
                    );
                    assert_eq!(dp.tables().generation, g, "nothing published");
                }
                Ok(_) => break,
            }
        }
        dp.kernel().fail_at = 0;
        assert!(
            failures >= 2,
            "the change takes several writes ({failures} failed)"
        );
        let after = kernel_policy(&mut dp);
        assert_eq!(after, policy_of(&dp.tables()));
        assert_ne!(after, want, "the new policy is in the kernel");
        // The endpoint leaves: its map goes with it.
        dp.remove_local_endpoint("10.1.1.9".parse().unwrap())
            .unwrap();
        assert!(!kernel_policy(&mut dp).keys().any(|k| k.contains(" 42")));
        assert_eq!(kernel_policy(&mut dp), policy_of(&dp.tables()));
    }

    /// Issue #12: a pod added at run time is in the kernel's `cilium_lxc` and ipcache, the
    /// workers' endpoint, port and ipcache tables, and under the policy that selects its
    /// labels — all from one table switch; removing it takes all of it back in one more.
    #[test]
    fn runtime_endpoint_joins_and_leaves_in_one_switch_each() {
        let mut dp = Datapath::new(ports(), 1, Flaky::default());
        // Default deny on ingress for app=web, with nothing allowed: the new pod is
        // protected from its first packet.
        let p = crate::policy::parse::parse_policies(
            "kind: CiliumNetworkPolicy\nmetadata: { name: web }\nspec:\n  endpointSelector: { matchLabels: { app: web } }\n  ingress: [{}]\n",
            "t",
        )
        .unwrap();
        dp.set_policies(&p).unwrap();
        let g0 = dp.tables().generation;
        let id = dp.identity_for(&web_labels()).unwrap();
        let g = dp
            .add_local_endpoint(
                3,
                web_port(9, "10.1.1.9", 42),
                MacAddr([0xa, 0, 0, 0, 0, 9]),
                None,
                id,
                web_labels(),
            )
            .unwrap();
        assert_eq!(g, g0 + 1, "one table switch");
        let t = dp.tables();
        assert_eq!(t.port(3).map(|p| p.ifindex), Some(9));
        let e = t.endpoint_v4([10, 1, 1, 9]).unwrap();
        assert_eq!((e.port, e.info.lxc_id, e.info.sec_id), (Some(3), 42, id));
        assert_eq!(t.ipcache_v4([10, 1, 1, 9]).unwrap().sec_identity, id);
        assert!(t.identities.contains(&id));
        let pol = t.policy.endpoints.get(&42).expect("a policy map for it");
        assert!(
            pol.enforced[0],
            "selected by the policy: default deny on ingress"
        );
        assert!(
            dp.kernel()
                .map
                .contains_key(&EndpointKey::v4([10, 1, 1, 9]))
        );
        assert!(
            dp.kernel()
                .ipcache
                .contains_key(&IpcacheKey::v4(Ipv4Cidr::host("10.1.1.9".parse().unwrap())))
        );
        assert_eq!(
            dp.identity_for(&web_labels()),
            Some(id),
            "same labels, same number"
        );

        let (g2, slot) = dp
            .remove_local_endpoint("10.1.1.9".parse().unwrap())
            .unwrap();
        assert_eq!((g2, slot), (g + 1, 3));
        let t = dp.tables();
        assert!(t.port(3).is_none() && t.endpoint_v4([10, 1, 1, 9]).is_none());
        assert!(
            t.ipcache
                .get(Ipv4Cidr::host("10.1.1.9".parse().unwrap()))
                .is_none()
        );
        assert!(!t.policy.endpoints.contains_key(&42));
        assert!(!t.identities.contains(&id), "its identity was only its own");
        assert!(
            !dp.kernel()
                .map
                .contains_key(&EndpointKey::v4([10, 1, 1, 9]))
        );
        assert!(dp.kernel().ipcache.is_empty());
    }

    /// A failed kernel write during an add leaves the kernel and the tables as they were.
    #[test]
    fn runtime_endpoint_add_is_all_or_nothing() {
        let mut dp = Datapath::new(ports(), 1, Flaky::default());
        let g0 = dp.tables().generation;
        // The cilium_lxc write succeeds, the ipcache one fails.
        dp.kernel().fail_at = dp.kernel().writes + 2;
        let id = dp.identity_for(&web_labels()).unwrap();
        let err = dp
            .add_local_endpoint(
                3,
                web_port(9, "10.1.1.9", 42),
                MacAddr([0xa, 0, 0, 0, 0, 9]),
                None,
                id,
                web_labels(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("ENOSPC"), "{err}");
        assert_eq!(dp.tables().generation, g0, "nothing published");
        assert!(dp.tables().port(3).is_none());
        assert!(dp.kernel().map.is_empty(), "cilium_lxc entry taken back");
        assert!(dp.kernel().ipcache.is_empty());
        // Refusals before any write: a taken slot, a taken address, a taken ID.
        dp.kernel().fail_at = 0;
        dp.upsert_endpoints(&[ep([10, 1, 1, 2], 7, Some(0))])
            .unwrap();
        for (slot, ip, epid, what) in [
            (0, "10.1.1.9", 42, "slot 0 is in use"),
            (3, "10.1.1.9", 1, "endpoint ID 1 is taken"),
        ] {
            let e = dp
                .add_local_endpoint(
                    slot,
                    web_port(9, ip, epid),
                    MacAddr([0xa, 0, 0, 0, 0, 9]),
                    None,
                    id,
                    web_labels(),
                )
                .unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
        dp.upsert_endpoints(&[ep([10, 1, 1, 2], 7, Some(0))])
            .unwrap();
        let e = dp
            .add_local_endpoint(
                3,
                web_port(9, "10.1.1.2", 43),
                MacAddr([0xa, 0, 0, 0, 0, 9]),
                None,
                id,
                web_labels(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("already an endpoint"), "{e}");
    }

    /// A dual-stack pod added at run time: its IPv6 key and /128 join with the IPv4 ones in
    /// the same switch and leave with them; a failure on the IPv6 writes takes every write
    /// back; an IPv6 address already in use is refused before any write.
    #[test]
    fn runtime_dual_stack_endpoint_joins_and_leaves_with_both_families() {
        let mut dp = Datapath::new(ports(), 1, Flaky::default());
        let id = dp.identity_for(&web_labels()).unwrap();
        let mac = MacAddr([0xa, 0, 0, 0, 0, 9]);
        let v6: std::net::Ipv6Addr = "fd00:10:1::9".parse().unwrap();
        let k6 = EndpointKey::v6(v6.octets());
        let ik6 = IpcacheKey::v6(Ipv6Cidr::host(v6));
        let before = (dp.kernel().map.len(), dp.kernel().ipcache.len());
        // The IPv4 writes succeed, the IPv6 cilium_lxc one fails: all taken back.
        dp.kernel().fail_at = dp.kernel().writes + 3;
        let e = dp
            .add_local_endpoint(
                3,
                web_port(9, "10.1.1.9", 42),
                mac,
                Some(v6),
                id,
                web_labels(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("E2BIG"), "{e}");
        assert_eq!((dp.kernel().map.len(), dp.kernel().ipcache.len()), before);
        assert!(dp.tables().port(3).is_none());
        dp.kernel().fail_at = 0;
        let g0 = dp.tables().generation;
        let g = dp
            .add_local_endpoint(
                3,
                web_port(9, "10.1.1.9", 42),
                mac,
                Some(v6),
                id,
                web_labels(),
            )
            .unwrap();
        assert_eq!(g, g0 + 1, "one table switch for both families");
        let t = dp.tables();
        assert_eq!(t.endpoint::<V6>(v6.octets()), t.endpoint_v4([10, 1, 1, 9]));
        assert_eq!(t.ipcache::<V6>(v6.octets()).unwrap().sec_identity, id);
        assert_eq!(dp.kernel().map[&k6].sec_id, id);
        assert_eq!(dp.kernel().ipcache[&ik6].sec_identity, id);
        // Another pod on the same IPv6 address: refused, nothing written.
        let writes = dp.kernel().writes;
        let e = dp
            .add_local_endpoint(
                4,
                Port {
                    ifname: "lxc-web2".into(),
                    ..web_port(10, "10.1.1.10", 43)
                },
                mac,
                Some(v6),
                id,
                web_labels(),
            )
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("IPv6 address is already an endpoint"),
            "{e}"
        );
        assert_eq!(dp.kernel().writes, writes);
        dp.remove_local_endpoint("10.1.1.9".parse().unwrap())
            .unwrap();
        let t = dp.tables();
        assert!(t.endpoint::<V6>(v6.octets()).is_none());
        assert!(t.ipcache::<V6>(v6.octets()).is_none());
        assert!(!dp.kernel().map.contains_key(&k6));
        assert!(!dp.kernel().ipcache.contains_key(&ik6));
        assert_eq!((dp.kernel().map.len(), dp.kernel().ipcache.len()), before);
    }

    /// Two runtime pods with one label set share an identity; it stays while either is
    /// there. A new label set never takes a number in use.
    #[test]
    fn runtime_identities_are_shared_and_released_with_their_last_pod() {
        let mut dp = Datapath::new(ports(), 1, Flaky::default());
        let mut known = std::collections::BTreeMap::new();
        let other = vec!["k8s:app=other".to_string()];
        let taken = identity::identity_of(&web_labels());
        known.insert(taken, other.clone());
        dp.set_identity_labels(known);
        let id = dp.identity_for(&web_labels()).unwrap();
        assert_ne!(id, taken, "probed past a number in use");
        let mac = MacAddr([0xa, 0, 0, 0, 0, 9]);
        dp.add_local_endpoint(3, web_port(9, "10.1.1.9", 42), mac, None, id, web_labels())
            .unwrap();
        dp.add_local_endpoint(
            4,
            Port {
                ifname: "lxc-web2".into(),
                ..web_port(10, "10.1.1.10", 43)
            },
            mac,
            None,
            id,
            web_labels(),
        )
        .unwrap();
        dp.remove_local_endpoint("10.1.1.9".parse().unwrap())
            .unwrap();
        assert!(
            dp.tables().identities.contains(&id),
            "the other pod still has it"
        );
        assert_eq!(dp.identity_for(&web_labels()), Some(id));
        dp.remove_local_endpoint("10.1.1.10".parse().unwrap())
            .unwrap();
        assert!(!dp.tables().identities.contains(&id));
        assert_eq!(
            dp.identity_for(&other),
            Some(taken),
            "config identities stay"
        );
    }
}
