//! Where the control plane mirrors its tables in the kernel: one trait per map family, with
//! Cilium's layouts (the `abi` crate). No method has a default: an implementation says for
//! every family what it does (the loader writes pinned eBPF maps; [`NoKernel`] writes
//! nothing, on purpose, for tests and fixtures). [`KernelMaps`] is all of them together,
//! what [`crate::datapath::Datapath`] writes through.
//!
//! Conntrack and affinity are not written through a trait: the workers and the tc datapath
//! share those tables' memory (pinned mmapable arrays, `control/tables/src/shm.rs`). Maglev
//! tables are written to `cilium_lb4_maglev` for the tc datapath ([`LbMaps::set_maglev`]).

use crate::maps::lb::{AffinityMatchKey, Lb4Backend, Lb4Key, Lb4Service, RevNat, RevNat4Value};
use crate::maps::policy::{PolicyEntry, PolicyKey};
use crate::maps::{EndpointInfo, EndpointKey, IpcacheKey, RemoteEndpointInfo};
use crate::net::Ipv4Cidr;
use crate::tables::Overlay;

/// A failed write to a kernel map.
#[derive(Debug, thiserror::Error)]
#[error("{map}: {op} {key}: {msg}")]
pub struct MapWriteError {
    pub map: &'static str,
    pub op: &'static str,
    pub key: String,
    pub msg: String,
}

/// `cilium_lxc`.
pub trait EndpointMap {
    fn upsert_endpoint(&mut self, k: &EndpointKey, v: &EndpointInfo) -> Result<(), MapWriteError>;
    fn remove_endpoint(&mut self, k: &EndpointKey) -> Result<(), MapWriteError>;
}

/// `cilium_ipcache_v2`.
pub trait IpcacheMap {
    fn upsert_ipcache(
        &mut self,
        k: &IpcacheKey,
        v: &RemoteEndpointInfo,
    ) -> Result<(), MapWriteError>;
    fn remove_ipcache(&mut self, k: &IpcacheKey) -> Result<(), MapWriteError>;
}

/// `fp_config`: the node-wide settings the kernel programs need (routing mode, tunnel
/// port, native routing CIDR, the node's underlay address and MTU); `fp_nexthops`: how a
/// node address is reached (device `ifindex` and the next hop's MACs), for the tc
/// datapath's encapsulation.
pub trait OverlayMap {
    fn set_overlay(
        &mut self,
        o: &Overlay,
        native_cidr: Option<Ipv4Cidr>,
    ) -> Result<(), MapWriteError>;
    fn set_nexthop(
        &mut self,
        ip: [u8; 4],
        nh: Option<(u32, &crate::tables::NextHop)>,
    ) -> Result<(), MapWriteError>;
    /// `fp_identities`: whether the overlay may carry identity `id` (its VNI) to this node.
    fn set_identity(&mut self, id: u32, known: bool) -> Result<(), MapWriteError>;
    /// `fp_routes`: native routing's route for `prefix` (another node's pod CIDR) via the
    /// node address `gw`, or none.
    fn set_route(&mut self, prefix: Ipv4Cidr, gw: Option<[u8; 4]>) -> Result<(), MapWriteError>;
}

/// `cilium_lb4_services_v2`, `cilium_lb4_backends_v3`, `cilium_lb4_reverse_nat`.
pub trait LbMaps {
    /// Master entries and slots.
    fn upsert_service(&mut self, k: &Lb4Key, v: &Lb4Service) -> Result<(), MapWriteError>;
    fn remove_service(&mut self, k: &Lb4Key) -> Result<(), MapWriteError>;
    fn upsert_backend(&mut self, id: u32, v: &Lb4Backend) -> Result<(), MapWriteError>;
    fn remove_backend(&mut self, id: u32, v: &Lb4Backend) -> Result<(), MapWriteError>;
    /// Key: the host-order service ID; stored network order.
    fn upsert_revnat(&mut self, id: RevNat, v: &RevNat4Value) -> Result<(), MapWriteError>;
    fn remove_revnat(&mut self, id: RevNat) -> Result<(), MapWriteError>;
    /// `cilium_lb4_maglev`: service `id`'s Maglev lookup table (`None`: it has none) and the
    /// datapath hash seed it goes with, put in place whole (readers see the old table or the
    /// new one, each with its own size and seed).
    fn set_maglev(&mut self, id: RevNat, table: Option<(&[u32], u32)>)
    -> Result<(), MapWriteError>;
    /// `cilium_lb_affinity_match`: whether a sessionAffinity service still offers a backend.
    fn set_affinity_match(&mut self, k: &AffinityMatchKey, on: bool) -> Result<(), MapWriteError>;
    /// `fp_lb_config`: the node's default algorithm code, for the kernel programs' backend
    /// selection (each Maglev table carries its own size and seed).
    fn set_lb_config(&mut self, default_alg: u8) -> Result<(), MapWriteError>;
}

/// The per-endpoint policy maps `cilium_policy_v3_<id>`, reached by the kernel programs
/// through the endpoint ID (`fp_policy`, a hash of maps).
pub trait PolicyMaps {
    /// Make endpoint `ep_id`'s map holding `entries` and publish it: a kernel program sees
    /// either no map or the whole of it.
    fn create_policy_map(
        &mut self,
        ep_id: u16,
        entries: &[(PolicyKey, PolicyEntry)],
    ) -> Result<(), MapWriteError>;
    /// Withdraw endpoint `ep_id`'s map (its endpoint is gone, or has no policy).
    fn remove_policy_map(&mut self, ep_id: u16) -> Result<(), MapWriteError>;
    fn upsert_policy(
        &mut self,
        ep_id: u16,
        k: &PolicyKey,
        v: &PolicyEntry,
    ) -> Result<(), MapWriteError>;
    fn remove_policy(&mut self, ep_id: u16, k: &PolicyKey) -> Result<(), MapWriteError>;
}

/// Every map family the control plane writes.
pub trait KernelMaps: EndpointMap + IpcacheMap + OverlayMap + LbMaps + PolicyMaps {}
impl<T: EndpointMap + IpcacheMap + OverlayMap + LbMaps + PolicyMaps> KernelMaps for T {}

/// No kernel maps at all: unit tests, fixtures, benchmarks of the userspace tables.
#[derive(Debug, Default)]
pub struct NoKernel;

impl EndpointMap for NoKernel {
    fn upsert_endpoint(&mut self, _: &EndpointKey, _: &EndpointInfo) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn remove_endpoint(&mut self, _: &EndpointKey) -> Result<(), MapWriteError> {
        Ok(())
    }
}

impl IpcacheMap for NoKernel {
    fn upsert_ipcache(
        &mut self,
        _: &IpcacheKey,
        _: &RemoteEndpointInfo,
    ) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn remove_ipcache(&mut self, _: &IpcacheKey) -> Result<(), MapWriteError> {
        Ok(())
    }
}

impl OverlayMap for NoKernel {
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
    fn set_route(&mut self, _: Ipv4Cidr, _: Option<[u8; 4]>) -> Result<(), MapWriteError> {
        Ok(())
    }
}

impl PolicyMaps for NoKernel {
    fn create_policy_map(
        &mut self,
        _: u16,
        _: &[(PolicyKey, PolicyEntry)],
    ) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn remove_policy_map(&mut self, _: u16) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn upsert_policy(
        &mut self,
        _: u16,
        _: &PolicyKey,
        _: &PolicyEntry,
    ) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn remove_policy(&mut self, _: u16, _: &PolicyKey) -> Result<(), MapWriteError> {
        Ok(())
    }
}

impl LbMaps for NoKernel {
    fn upsert_service(&mut self, _: &Lb4Key, _: &Lb4Service) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn remove_service(&mut self, _: &Lb4Key) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn upsert_backend(&mut self, _: u32, _: &Lb4Backend) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn remove_backend(&mut self, _: u32, _: &Lb4Backend) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn upsert_revnat(&mut self, _: RevNat, _: &RevNat4Value) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn remove_revnat(&mut self, _: RevNat) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn set_maglev(&mut self, _: RevNat, _: Option<(&[u32], u32)>) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn set_affinity_match(&mut self, _: &AffinityMatchKey, _: bool) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn set_lb_config(&mut self, _: u8) -> Result<(), MapWriteError> {
        Ok(())
    }
}
