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

/// `reserved:world-ipv4` / `reserved:world-ipv6` (dual-stack clusters split world).
pub const RESERVED_WORLD_IPV4: u32 = 9;
pub const RESERVED_WORLD_IPV6: u32 = 10;

/// First identity of the cluster-allocated range (cluster ID 0).
pub const MIN_ALLOCATED: u32 = 256;
pub const MAX_ALLOCATED: u32 = 65535;

/// The scope bits of a numeric identity (the top 8).
pub const SCOPE_MASK: u32 = 0xFF00_0000;
/// Node-local CIDR identities (`cidr:` labels): 0x01000000 + n.
pub const SCOPE_LOCAL_CIDR: u32 = 1 << 24;
/// Identities of in-cluster remote nodes (`policy-cidr-match-mode: nodes`): 0x02000000 + n.
pub const SCOPE_REMOTE_NODE: u32 = 2 << 24;

/// Cilium 1.20's policy identity aggregation (cilium#46438): the identity a policy map's
/// second lookup uses for remote identity `id` — `reserved:world` (2) for the world's
/// identities (world, world-ipv4/-ipv6, node-local CIDR identities), `reserved:remote-node`
/// (6) for remote nodes' (6 and the remote-node scope), and 0 ("any identity") for every
/// other. A policy that selects the world writes one entry for 2, not one per CIDR
/// identity; a policy that selects any identity writes 0, 2 and 6.
pub fn policy_aggregate(id: u32) -> u32 {
    match id {
        RESERVED_WORLD | RESERVED_WORLD_IPV4 | RESERVED_WORLD_IPV6 => RESERVED_WORLD,
        RESERVED_REMOTE_NODE => RESERVED_REMOTE_NODE,
        _ if id & SCOPE_MASK == SCOPE_LOCAL_CIDR => RESERVED_WORLD,
        _ if id & SCOPE_MASK == SCOPE_REMOTE_NODE => RESERVED_REMOTE_NODE,
        _ => RESERVED_UNKNOWN,
    }
}

/// The identities a policy entry for "any identity" is written under: 0 and the
/// aggregates (whose identities' second lookup does not reach 0).
pub const ANY_IDENTITY_KEYS: [u32; 3] = [RESERVED_UNKNOWN, RESERVED_WORLD, RESERVED_REMOTE_NODE];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_as_cilium_1_20() {
        assert_eq!(policy_aggregate(RESERVED_WORLD), RESERVED_WORLD);
        assert_eq!(policy_aggregate(RESERVED_WORLD_IPV4), RESERVED_WORLD);
        assert_eq!(
            policy_aggregate(0x0100_0005),
            RESERVED_WORLD,
            "a CIDR identity"
        );
        assert_eq!(policy_aggregate(RESERVED_REMOTE_NODE), RESERVED_REMOTE_NODE);
        assert_eq!(
            policy_aggregate(0x0200_0001),
            RESERVED_REMOTE_NODE,
            "a node identity"
        );
        for id in [
            0,
            RESERVED_HOST,
            RESERVED_HEALTH,
            RESERVED_KUBE_APISERVER,
            256,
            65535,
        ] {
            assert_eq!(policy_aggregate(id), 0, "{id}");
        }
    }
}
