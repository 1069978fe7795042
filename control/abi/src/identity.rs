//! Cilium's reserved security identities and the cluster-local allocation range: numbers the
//! datapath compares against (a VNI, an ipcache value), so they live with the layouts.

pub const RESERVED_UNKNOWN: u32 = 0;
pub const RESERVED_HOST: u32 = 1;
pub const RESERVED_WORLD: u32 = 2;
pub const RESERVED_UNMANAGED: u32 = 3;
pub const RESERVED_HEALTH: u32 = 4;
pub const RESERVED_INIT: u32 = 5;
pub const RESERVED_REMOTE_NODE: u32 = 6;
pub const RESERVED_KUBE_APISERVER: u32 = 7;
pub const RESERVED_INGRESS: u32 = 8;

/// First identity of the cluster-allocated range (cluster ID 0).
pub const MIN_ALLOCATED: u32 = 256;
pub const MAX_ALLOCATED: u32 = 65535;
