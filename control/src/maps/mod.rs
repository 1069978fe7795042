//! Cilium 1.19 map layouts (see `docs/maps.md` and `../shared/reference/cilium-maps.md`).
//!
//! Every struct that crosses the kernel boundary is `#[repr(C)]` with explicit padding, a
//! compile-time size assert and a layout test, so the same bytes can be written into the
//! pinned eBPF maps and read by `bpftool map dump` or the tc fallback program.

pub mod ct;
pub mod drop;
pub mod ipcache;
pub mod lb;
pub mod lxc;
mod pod;
pub mod policy;

pub use drop::{DropReason, MetricDir};
pub use ipcache::{IpcacheKey, RemoteEndpointInfo};
pub use lxc::{EndpointInfo, EndpointKey, MacAddr};
