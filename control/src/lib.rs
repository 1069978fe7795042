//! fastpath control plane.
//!
//! Owns every table the workers read. Layering (dependencies point one way):
//! `maps` (the `abi` crate: Cilium 1.19 key/value layouts, byte-compatible with the eBPF
//! maps) ←
//! `tables` (the worker-facing snapshot and its single-writer/many-reader publisher) ←
//! `datapath` (intent-named API: `upsert_endpoints`, `remove_endpoint`, mirrored into the
//! kernel maps through [`datapath::KernelMaps`]). `config` parses and validates the node
//! YAML before anything is touched; `identity` turns labels into security identities.
//!
//! Only this crate writes tables; workers get `&Tables` through a [`tables::TableReader`].
#![deny(unsafe_code)]

pub mod clock;
pub mod config;
pub mod ct;
pub mod datapath;
pub mod identity;
pub mod kernel;
pub mod lb;
pub mod lpm;
pub mod maglev;
/// The Cilium map layouts: the `abi` crate (the bottom layer), re-exported.
pub use abi as maps;
pub use abi::net;
pub mod policy;
pub mod shared_table;
pub mod tables;
pub mod yaml;
