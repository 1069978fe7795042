//! Cilium drop-reason codes (`bpf/lib/drop_reasons.h`) with their monitor names
//! (`pkg/monitor/api/drop.go`), and the metrics direction (`cilium_metrics` key byte 1).
//!
//! Codes are stable and never reused. The datapath returns the negative value in Cilium; we
//! store the positive one, as `cilium_metrics`, drop events and Hubble do.

use std::fmt;

/// Metrics direction, `cilium_metrics` key byte 1 (bits 0-1).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum MetricDir {
    /// Towards an endpoint (to-container / from-overlay).
    Ingress = 1,
    /// Leaving an endpoint (from-container).
    Egress = 2,
    /// Service translation.
    Service = 3,
}

impl MetricDir {
    pub const ALL: [MetricDir; 3] = [MetricDir::Ingress, MetricDir::Egress, MetricDir::Service];
    pub fn index(self) -> usize {
        self as usize - 1
    }
    pub fn name(self) -> &'static str {
        match self {
            MetricDir::Ingress => "ingress",
            MetricDir::Egress => "egress",
            MetricDir::Service => "service",
        }
    }
}

macro_rules! drop_reasons {
    ($($variant:ident = $code:literal, $name:literal;)*) => {
        /// A Cilium drop reason. `#[repr(u8)]`: the discriminant is the positive code.
        #[repr(u8)]
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
        pub enum DropReason { $($variant = $code,)* }

        impl DropReason {
            /// Every reason, in code order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];

            /// The positive code (what `cilium_metrics` and Hubble show).
            pub const fn code(self) -> u8 { self as u8 }

            /// Cilium's monitor/Hubble text for this reason.
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }

            /// The reason for a positive code, if it is one Cilium defines.
            pub fn from_code(code: u8) -> Option<Self> {
                match code { $($code => Some(DropReason::$variant),)* _ => None }
            }
        }
    };
}

drop_reasons! {
    InvalidSmac = 130, "Invalid source mac";
    InvalidDmac = 131, "Invalid destination mac";
    InvalidSip = 132, "Invalid source ip";
    Policy = 133, "Policy denied";
    Invalid = 134, "Invalid packet";
    CtInvalidHdr = 135, "CT: Truncated or invalid header";
    FragNeeded = 136, "Fragmentation needed";
    CtUnknownProto = 137, "CT: Unknown L4 protocol";
    Unused4 = 138, "CT: Can't create entry from packet";
    UnknownL3 = 139, "Unsupported L3 protocol";
    MissedTailCall = 140, "Missed tail call";
    WriteError = 141, "Error writing to packet";
    UnknownL4 = 142, "Unknown L4 protocol";
    UnknownIcmpCode = 143, "Unknown ICMPv4 code";
    UnknownIcmpType = 144, "Unknown ICMPv4 type";
    UnknownIcmp6Code = 145, "Unknown ICMPv6 code";
    UnknownIcmp6Type = 146, "Unknown ICMPv6 type";
    NoTunnelKey = 147, "Error retrieving tunnel key";
    Unused5 = 148, "Error retrieving tunnel options";
    Unused6 = 149, "Invalid Geneve option";
    UnknownTarget = 150, "Unknown L3 target address";
    Unroutable = 151, "Stale or unroutable IP";
    Unused7 = 152, "No matching local container found";
    CsumL3 = 153, "Error while correcting L3 checksum";
    CsumL4 = 154, "Error while correcting L4 checksum";
    CtCreateFailed = 155, "CT: Map insertion failed";
    InvalidExthdr = 156, "Invalid IPv6 extension header";
    FragNosupport = 157, "IP fragmentation not supported";
    NoService = 158, "Service backend not found";
    UnsuppServiceProto = 159, "Unsupported L4 protocol for service";
    NoTunnelEndpoint = 160, "No tunnel/encapsulation endpoint (datapath BUG!)";
    Nat46x64Disabled = 161, "NAT 46/64 not enabled";
    EdtHorizon = 162, "Reached EDT horizon";
    UnknownCt = 163, "Unknown connection tracking state";
    HostUnreachable = 164, "Local host is unreachable";
    NoConfig = 165, "No configuration available to perform policy decision";
    UnsupportedL2 = 166, "Unsupported L2 protocol";
    NatNoMapping = 167, "No mapping for NAT masquerade";
    NatUnsuppProto = 168, "Unsupported protocol for NAT masquerade";
    NoFib = 169, "FIB lookup failed";
    EncapProhibited = 170, "Encapsulation traffic is prohibited";
    InvalidIdentity = 171, "Invalid identity";
    UnknownSender = 172, "Unknown sender";
    NatNotNeeded = 173, "NAT not needed";
    IsClusterIp = 174, "Is a ClusterIP";
    FragNotFound = 175, "First logical datagram fragment not found";
    ForbiddenIcmp6 = 176, "Forbidden ICMPv6 message";
    NotInSrcRange = 177, "Denied by LB src range check";
    ProxyLookupFailed = 178, "Socket lookup failed";
    ProxySetFailed = 179, "Socket assign failed";
    ProxyUnknownProto = 180, "Proxy redirection not supported for protocol";
    PolicyDeny = 181, "Policy denied by denylist";
    VlanFiltered = 182, "VLAN traffic disallowed by VLAN filter";
    InvalidVni = 183, "Incorrect VNI from VTEP";
    InvalidTcBuffer = 184, "Failed to update or lookup TC buffer";
    NoSid = 185, "No SID was found for the IP address";
    Unused8 = 186, "SRv6 state was removed during tail call";
    Nat46 = 187, "L3 translation from IPv4 to IPv6 failed (NAT46)";
    Nat64 = 188, "L3 translation from IPv6 to IPv4 failed (NAT64)";
    PolicyAuthRequired = 189, "Authentication required";
    CtNoMapFound = 190, "No conntrack map found";
    SnatNoMapFound = 191, "No nat map found";
    InvalidClusterId = 192, "Invalid ClusterID";
    DsrEncapUnsuppProto = 193, "Unsupported packet protocol for DSR encapsulation";
    NoEgressGateway = 194, "No egress gateway found";
    UnencryptedTraffic = 195, "Traffic is unencrypted";
    TtlExceeded = 196, "TTL exceeded";
    NoNodeId = 197, "No node ID found";
    RateLimited = 198, "Rate limited";
    IgmpHandled = 199, "IGMP handled";
    IgmpSubscribed = 200, "IGMP subscribed";
    MulticastHandled = 201, "Multicast handled";
    HostNotReady = 202, "Host datapath not ready";
    EpNotReady = 203, "Endpoint policy program not available";
    NoEgressIp = 204, "No Egress IP configured";
    PuntProxy = 205, "Punt to proxy";
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_contiguous_and_round_trip() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.code() as usize, 130 + i, "{r:?}");
            assert_eq!(DropReason::from_code(r.code()), Some(*r));
        }
        assert_eq!(DropReason::from_code(129), None);
        assert_eq!(DropReason::from_code(206), None);
    }

    #[test]
    fn well_known_codes() {
        assert_eq!(DropReason::InvalidSip.code(), 132);
        assert_eq!(DropReason::Policy.code(), 133);
        assert_eq!(DropReason::Invalid.code(), 134);
        assert_eq!(DropReason::NoService.code(), 158);
        assert_eq!(DropReason::InvalidIdentity.code(), 171);
        assert_eq!(DropReason::PolicyDeny.code(), 181);
        assert_eq!(DropReason::TtlExceeded.code(), 196);
    }
}
