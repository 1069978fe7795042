//! Node-wide datapath settings the workers read (from the config's `datapath:` section).

use std::fmt;

use serde::{Deserialize, Serialize};

/// How traffic to pods on other nodes leaves this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// VXLAN to the node that owns the destination (ipcache tunnel endpoint), VNI = source
    /// security identity.
    #[default]
    Tunnel,
    /// No encapsulation: forward to the owning node's underlay address as next hop.
    Native,
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoutingMode::Tunnel => "tunnel",
            RoutingMode::Native => "native",
        })
    }
}

/// How a worker waits for frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Spin on the rings; when idle for a while, sleep in poll(2) until a frame arrives.
    #[default]
    Adaptive,
    /// Spin forever (lowest latency, a full core even when idle).
    Busy,
}
