//! fastpath: Cilium's pod datapath in userspace, on pinned cores fed by AF_XDP.
//!
//! Layers (dependencies point one way): [`wire`] (packet views) ← [`stage`] (the pipeline,
//! pure functions over byte buffers and `&Tables`) ← [`worker`] (pinned poll loop: RX →
//! stages → TX) ← [`xsk`] (UMEM and rings: the only `unsafe`). [`daemon`] wires a node
//! together (config → XDP attach → sockets → workers → control socket); [`api`] is the
//! control-socket protocol the CLI speaks; [`lab`] builds namespace topologies for the demo,
//! tests and benchmarks.
#![deny(unsafe_code)]

pub mod api;
pub mod daemon;
pub mod endpoints;
pub mod lab;
pub mod neigh;
pub mod server;
pub mod stage;
pub mod state;
pub mod stats;
pub mod wire;
pub mod worker;
pub mod xsk;
