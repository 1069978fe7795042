//! fastpath control plane.
//!
//! Layering (dependencies point one way): `maps` (the `abi` crate: Cilium 1.19 key/value
//! layouts, byte-compatible with the eBPF maps) ← `tables` (the `tables` crate: what the
//! workers read and write — the snapshot and its single-writer/many-reader publisher,
//! conntrack, LPM, LB/Maglev/policy lookups) ← this crate: `config` parses and validates
//! the node YAML before anything is touched; `identity` turns labels into security
//! identities; `lb` and `policy` compile services and rules into table contents;
//! `datapath` is the single writer (validate, write the kernel maps through the
//! [`kernel`] traits, publish, roll back).
//!
//! Only this crate writes tables; workers get `&Tables` through a [`tables::TableReader`].
//! The `tables` modules are re-exported under the paths they had when they lived here.
#![deny(unsafe_code)]

pub mod config;
pub mod datapath;
pub mod identity;
pub mod kernel;
pub mod lb;
/// The Cilium map layouts: the `abi` crate (the bottom layer), re-exported.
pub use abi as maps;
pub use abi::net;
pub mod policy;
pub mod yaml;
/// The tables layer: the `tables` crate, re-exported.
pub use ::tables;
pub use ::tables::{clock, ct, lpm, maglev, shared_table};
