//! `abi`: the bottom layer. Cilium 1.19 map layouts (see `docs/maps.md` and
//! `../shared/reference/cilium-maps.md`), one map family per module, with `DropReason`,
//! `MacAddr` and IPv4 CIDRs. Depends on nothing of fastpath; the aya `Pod` markers that let
//! the loader write these types into kernel maps are behind the `aya` feature, so the layouts
//! themselves need no BPF library. (`control::maps` and `control::net` re-export it.)
//!
//! Every struct that crosses the kernel boundary is `#[repr(C)]` with explicit padding, a
//! compile-time size assert and a layout test, so the same bytes can be written into the
//! pinned eBPF maps and read by `bpftool map dump` or the tc fallback program.
#![deny(unsafe_code)]

pub mod ct;
pub mod drop;
pub mod identity;
pub mod ipcache;
pub mod lb;
pub mod lxc;
pub mod net;
#[cfg(feature = "aya")]
mod pod;
pub mod policy;

pub use drop::{DropReason, MetricDir};
pub use ipcache::{IpcacheKey, RemoteEndpointInfo};
pub use lxc::{EndpointInfo, EndpointKey, MacAddr};
