//! `tables`: the layer between the layouts (`abi`) and everything that reads or writes the
//! datapath's state. What the workers read *and write*, each module opening with its rules:
//! the RCU snapshot ([`Tables`], [`TableWriter`], [`TableReader`]), the lock-free shared
//! table generic over key width ([`shared_table`]), conntrack generic over the address
//! family ([`ct`]), `Lpm<Family, V>` ([`lpm`]), the LB, Maglev and policy lookups, the
//! conntrack clock and the datapath settings the workers read. Depends on `abi` only;
//! `control` compiles into it, the dataplane reads it (docs/architecture.md).
//!
//! (`control` re-exports every module here under its old path — `control::tables`,
//! `control::ct`, `control::lpm`, … — so the writer and the agent name one type one way.)
#![deny(unsafe_code)]

pub(crate) use abi as maps;
pub(crate) use abi::net;

pub mod clock;
pub mod cow_map;
pub mod ct;
pub mod lb;
pub mod lpm;
pub mod maglev;
pub mod policy;
pub mod settings;
pub mod shared_table;
pub mod shm;
mod snapshot;

pub use settings::{PollMode, RoutingMode};
pub use snapshot::*;
