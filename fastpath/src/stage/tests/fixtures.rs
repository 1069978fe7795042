//! The stage fixtures as one backend-neutral table: each fixture names a node setup and a
//! sequence of steps, each step a frame on a port with what any datapath must do with it —
//! the port it leaves on (or none), the bytes it leaves as, and the Cilium metric rows
//! (reason, direction) → packets it moves. Nothing in a row is about how the userspace
//! pipeline gets there, so a second datapath (the tc programs through
//! `BPF_PROG_TEST_RUN`, issue #15) runs the same rows by implementing [`Backend`].
//!
//! A fixture's steps share one fresh node (its conntrack starts empty), so a request and
//! its reply are two steps of one fixture. Expected frames are built with etherparse, an
//! encoder independent of the code under test; fields a datapath may choose (the outer IP
//! ID, the outer UDP source port, which comes from a flow hash) are masked and checked for
//! validity instead.

use std::ops::Range;
use std::sync::Arc;

use etherparse::PacketBuilder;

use super::overlay::{
    A_IP, A_MAC, A_PORT, B_IP, B_MAC, B_PORT, C_IP, C_MAC, LXC, N1, N1_MAC, N2, N2_MAC, UL,
};
use super::*;

/// The node a fixture runs on, as its config describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// The demo node (pods client, echo, web on ports 0-2), no services, no policy.
    SameNode,
    /// The demo node with ClusterIP `echo` (10.96.9.9:80 → echo:8080) and `none` (10.96.9.10:80,
    /// no backends).
    Services,
    /// The demo node with a policy on echo: ingress from client on TCP 8080, egress `{}`.
    EchoPolicy,
    /// n1 of a two-node tunnel cluster (pods a, b; n2 has pod c), n2's MAC resolved.
    Overlay,
    /// [`Setup::Overlay`] with a policy on pod a: egress only to b, ingress only from c on
    /// UDP 7.
    OverlayPolicy,
    /// [`Setup::Overlay`] with NodePort `remote` (30081 → pod c on n2) and `empty` (30082,
    /// ClusterIP 10.96.0.21, no backends).
    NodePort,
}

impl Setup {
    /// The tables the userspace pipeline runs this node with.
    fn tables(self) -> Arc<Tables> {
        match self {
            Setup::SameNode => tables(),
            Setup::Services => super::services::svc_tables(),
            Setup::EchoPolicy => super::policy::with_policy(super::policy::ECHO_POLICY),
            Setup::Overlay => super::overlay::n1(),
            Setup::OverlayPolicy => super::overlay::n1_with_policy(),
            Setup::NodePort => super::overlay::n1_nodeport(),
        }
    }
}

/// The frame that leaves.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// These bytes exactly.
    Exact(Vec<u8>),
    /// These bytes, except the ranges a datapath may choose (checked for validity).
    Masked {
        want: Vec<u8>,
        free: Vec<Range<usize>>,
    },
    /// Dropped: nothing leaves.
    Dropped,
    /// Leaves, bytes not part of the row (ARP replies and ICMP errors are checked by their
    /// own tests).
    Unchecked,
}

#[derive(Debug, Clone)]
pub(crate) struct Expect {
    pub(crate) tx: Option<PortId>,
    pub(crate) output: Output,
    /// (Cilium reason code, direction, packets) moved by this frame; reason 0 = forwarded.
    pub(crate) metrics: Vec<(u8, MetricDir, u64)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) port: PortId,
    pub(crate) input: Vec<u8>,
    pub(crate) expect: Expect,
}

#[derive(Debug, Clone)]
pub(crate) struct Fixture {
    pub(crate) name: String,
    pub(crate) setup: Setup,
    pub(crate) steps: Vec<Step>,
}

/// What a backend did with one frame.
#[derive(Debug, PartialEq)]
pub(crate) struct Ran {
    pub(crate) tx: Option<PortId>,
    pub(crate) bytes: Vec<u8>,
    pub(crate) metrics: Vec<(u8, MetricDir, u64)>,
}

/// A datapath the table runs on.
pub(crate) trait Backend {
    fn name(&self) -> &'static str;
    /// Start a fixture: this node, fresh.
    fn load(&mut self, setup: Setup);
    fn run(&mut self, port: PortId, frame: &[u8]) -> Ran;
}

/// This pipeline, counted as a worker counts.
pub(crate) struct Userspace {
    t: Arc<Tables>,
    c: crate::stats::WorkerCounters,
}

impl Userspace {
    pub(crate) fn new() -> Self {
        Userspace {
            t: tables(),
            c: crate::stats::WorkerCounters::new(4),
        }
    }
}

impl Backend for Userspace {
    fn name(&self) -> &'static str {
        "userspace pipeline"
    }
    fn load(&mut self, setup: Setup) {
        self.t = setup.tables();
        self.c = crate::stats::WorkerCounters::new(self.t.ports.len().max(1));
    }
    fn run(&mut self, port: PortId, frame: &[u8]) -> Ran {
        let before = self.c.metrics();
        let (v, bytes) = run(frame, port, &self.t);
        self.c.account(&v, frame.len());
        let metrics = self
            .c
            .metrics()
            .iter()
            .filter_map(|&(r, d, p, _)| {
                let was = before
                    .iter()
                    .find(|&&(r0, d0, _, _)| (r0, d0) == (r, d))
                    .map_or(0, |x| x.2);
                (p > was).then_some((r, d, p - was))
            })
            .collect();
        Ran {
            tx: v.tx_port(),
            bytes,
            metrics,
        }
    }
}

const FWD_EGRESS: (u8, MetricDir, u64) = (0, MetricDir::Egress, 1);
const FWD_INGRESS: (u8, MetricDir, u64) = (0, MetricDir::Ingress, 1);

fn dropped(reason: DropReason, dir: MetricDir) -> Expect {
    Expect {
        tx: None,
        output: Output::Dropped,
        metrics: vec![(reason.code(), dir, 1)],
    }
}

fn one(name: &str, setup: Setup, port: PortId, input: Vec<u8>, expect: Expect) -> Fixture {
    Fixture {
        name: name.into(),
        setup,
        steps: vec![Step {
            port,
            input,
            expect,
        }],
    }
}

/// An Ethernet + IPv4 + TCP frame with valid checksums (DF set, ID 0, as etherparse builds).
fn tcp_frame(
    (dst_mac, src_mac): (MacAddr, MacAddr),
    (src, dst): ([u8; 4], [u8; 4]),
    ttl: u8,
    (sport, dport): (u16, u16),
    syn: bool,
    ack: bool,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src, dst, ttl)
        .tcp(sport, dport, 1000, 64240);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(5000);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("a tcp frame");
    out
}

/// An Ethernet + IPv4 + UDP frame with valid checksums.
fn udp_frame(
    (dst_mac, src_mac): (MacAddr, MacAddr),
    (src, dst): ([u8; 4], [u8; 4]),
    ttl: u8,
    (sport, dport): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src, dst, ttl)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("a udp frame");
    out
}

/// `inner` in VXLAN from `src` to `dst` with `vni`, as the RFC 7348 encoding is: outer
/// Ethernet, IPv4 (TTL 64), UDP to 8472, the 8-byte header with the I flag.
fn vxlan(
    macs: (MacAddr, MacAddr),
    ips: ([u8; 4], [u8; 4]),
    sport: u16,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let v = vni.to_be_bytes();
    vxlan_with(
        macs,
        ips,
        sport,
        [0x08, 0, 0, 0, v[1], v[2], v[3], 0],
        inner,
    )
}

/// [`vxlan`] with the 8-byte VXLAN header as given.
fn vxlan_with(
    (dst_mac, src_mac): (MacAddr, MacAddr),
    (src, dst): ([u8; 4], [u8; 4]),
    sport: u16,
    header: [u8; 8],
    inner: &[u8],
) -> Vec<u8> {
    let mut payload = header.to_vec();
    payload.extend_from_slice(inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src, dst, 64)
        .udp(sport, 8472)
        .write(&mut out, &payload)
        .expect("a vxlan frame");
    out
}

/// What a datapath may choose in an encapsulated frame: the outer IP ID, the DF bit (Linux
/// sets DF per `df` config, Cilium leaves it to the tunnel device; no other bit of the
/// flags/offset word may be set), the outer header checksum, the UDP source port (a flow
/// hash) and the UDP checksum (0, as Linux sends for IPv4 by default, or valid) — each
/// checked for what it must be instead.
fn encap_free() -> Vec<Range<usize>> {
    vec![18..22, 24..26, 34..36, 40..42]
}

/// Every fixture. The same-node rows come from the per-frame case list; the rest are the
/// overlay, services and policy behaviours, stated as frames and counters.
pub(crate) fn table() -> Vec<Fixture> {
    let mut all: Vec<Fixture> = cases()
        .into_iter()
        .map(|c| {
            let tx = c.verdict.tx_port();
            let output = match (&c.output, tx) {
                (Some(o), _) => Output::Exact(o.clone()),
                (None, None) => Output::Dropped,
                (None, Some(_)) => Output::Unchecked,
            };
            one(
                c.name,
                Setup::SameNode,
                CLIENT_PORT,
                c.input,
                Expect {
                    tx,
                    output,
                    metrics: expected_metrics(&c.verdict),
                },
            )
        })
        .collect();
    all.extend(overlay());
    all.extend(services());
    all.extend(policy());
    all.extend(nodeport());
    all
}

/// NodePort: the direction is fixed by where the frame entered — from outside it is
/// ingress whatever happens next; the same refusal for a pod is egress.
fn nodeport() -> Vec<Fixture> {
    let outside = MacAddr([2, 0, 0, 0, 0, 9]);
    let client = [192, 168, 50, 9];
    let syn = |port| {
        tcp_frame(
            (N1_MAC, outside),
            (client, N1),
            64,
            (45000, port),
            true,
            false,
        )
    };
    vec![
        one(
            "nodeport: a SYN from outside for a remote backend is encapsulated to its node, counted as ingress",
            Setup::NodePort,
            UL,
            syn(30081),
            Expect {
                tx: Some(UL),
                output: Output::Unchecked,
                metrics: vec![FWD_INGRESS],
            },
        ),
        one(
            "nodeport: a SYN from outside for a service without backends is answered unreachable, counted as an ingress drop",
            Setup::NodePort,
            UL,
            syn(30082),
            Expect {
                tx: Some(UL),
                output: Output::Unchecked,
                metrics: vec![(DropReason::NoService.code(), MetricDir::Ingress, 1)],
            },
        ),
        one(
            "nodeport: a pod's SYN to the same empty service is answered unreachable, counted as an egress drop",
            Setup::NodePort,
            A_PORT,
            tcp_frame(
                (LXC[0], A_MAC),
                (A_IP, [10, 96, 0, 21]),
                64,
                (45001, 80),
                true,
                false,
            ),
            Expect {
                tx: Some(A_PORT),
                output: Output::Unchecked,
                metrics: vec![(DropReason::NoService.code(), MetricDir::Egress, 1)],
            },
        ),
    ]
}

fn a_identity() -> u32 {
    super::overlay::identity(&super::overlay::n1_cfg(false, false), 0)
}

fn b_identity() -> u32 {
    super::overlay::identity(&super::overlay::n1_cfg(false, false), 1)
}

fn c_identity() -> u32 {
    super::overlay::n2_cfg().identities().0[0]
}

fn overlay() -> Vec<Fixture> {
    let a_to_c = udp_frame((LXC[0], A_MAC), (A_IP, C_IP), 64, (40000, 7), b"to c");
    let c_to_b = udp_frame((LXC[1], C_MAC), (C_IP, B_IP), 64, (50000, 7), b"to b");
    let c_to_b_delivered = udp_frame((B_MAC, LXC[1]), (C_IP, B_IP), 63, (50000, 7), b"to b");
    let from_n2 = |vni: u32, inner: &[u8]| vxlan((N1_MAC, N2_MAC), (N2, N1), 50000, vni, inner);
    let mut v = vec![
        one(
            "overlay: pod a to remote pod c is encapsulated to n2 with a's identity as VNI",
            Setup::Overlay,
            A_PORT,
            a_to_c.clone(),
            Expect {
                tx: Some(UL),
                output: Output::Masked {
                    want: vxlan((N2_MAC, N1_MAC), (N1, N2), 0, a_identity(), &a_to_c),
                    free: encap_free(),
                },
                metrics: vec![FWD_EGRESS],
            },
        ),
        one(
            "overlay: c's frame from the tunnel is delivered to b (outer headers gone, TTL-1, pod MACs)",
            Setup::Overlay,
            UL,
            from_n2(c_identity(), &c_to_b),
            Expect {
                tx: Some(B_PORT),
                output: Output::Exact(c_to_b_delivered),
                metrics: vec![FWD_INGRESS],
            },
        ),
        one(
            "overlay: a VNI that is no identity this node accepts",
            Setup::Overlay,
            UL,
            from_n2(54321, &c_to_b),
            dropped(DropReason::InvalidVni, MetricDir::Ingress),
        ),
        one(
            "overlay: a reserved identity (host) as VNI",
            Setup::Overlay,
            UL,
            from_n2(1, &c_to_b),
            dropped(DropReason::InvalidIdentity, MetricDir::Ingress),
        ),
        one(
            "overlay: a VXLAN header without the I flag carries no VNI",
            Setup::Overlay,
            UL,
            vxlan_with(
                (N1_MAC, N2_MAC),
                (N2, N1),
                50000,
                [0, 0, 0, 0, 0, 1, 0, 0],
                &c_to_b,
            ),
            dropped(DropReason::NoTunnelKey, MetricDir::Ingress),
        ),
        one(
            "overlay: VXLAN to an address that is not this node's",
            Setup::Overlay,
            UL,
            vxlan(
                (N1_MAC, N2_MAC),
                (N2, [192, 168, 50, 7]),
                50000,
                c_identity(),
                &c_to_b,
            ),
            dropped(DropReason::UnknownTarget, MetricDir::Ingress),
        ),
    ];
    // Policy: egress is judged before encapsulation, ingress after decapsulation on the
    // identity the VNI carries, and the reply of an admitted flow passes both ways.
    let c_to_a = udp_frame((LXC[0], C_MAC), (C_IP, A_IP), 64, (50000, 7), b"to a");
    let a_to_c_reply = udp_frame((LXC[0], A_MAC), (A_IP, C_IP), 64, (7, 50000), b"back");
    v.push(one(
        "overlay policy: a may not send to c (egress only to b): nothing is encapsulated",
        Setup::OverlayPolicy,
        A_PORT,
        a_to_c,
        dropped(DropReason::Policy, MetricDir::Egress),
    ));
    v.push(one(
        "overlay policy: the frame c may send, carried with b's identity, is denied on ingress",
        Setup::OverlayPolicy,
        UL,
        from_n2(b_identity(), &c_to_a),
        dropped(DropReason::Policy, MetricDir::Ingress),
    ));
    v.push(Fixture {
        name: "overlay policy: c to a on UDP 7 is admitted, and a's reply is encapsulated though a's egress forbids c".into(),
        setup: Setup::OverlayPolicy,
        steps: vec![
            Step {
                port: UL,
                input: from_n2(c_identity(), &c_to_a),
                expect: Expect {
                    tx: Some(A_PORT),
                    output: Output::Exact(udp_frame(
                        (A_MAC, LXC[0]),
                        (C_IP, A_IP),
                        63,
                        (50000, 7),
                        b"to a",
                    )),
                    metrics: vec![FWD_INGRESS],
                },
            },
            Step {
                port: A_PORT,
                input: a_to_c_reply.clone(),
                expect: Expect {
                    tx: Some(UL),
                    output: Output::Masked {
                        want: vxlan((N2_MAC, N1_MAC), (N1, N2), 0, a_identity(), &a_to_c_reply),
                        free: encap_free(),
                    },
                    metrics: vec![FWD_EGRESS],
                },
            },
        ],
    });
    v
}

fn services() -> Vec<Fixture> {
    let vip = super::services::VIP;
    let client = (LXC_CLIENT_MAC, CLIENT_MAC);
    let to_echo = (ECHO_MAC, LXC_ECHO_MAC);
    let from_echo = (LXC_ECHO_MAC, ECHO_MAC);
    let to_client = (CLIENT_MAC, LXC_CLIENT_MAC);
    vec![
        Fixture {
            name: "services: a SYN to the ClusterIP reaches the backend DNATed to its target port; its SYN-ACK comes back from the VIP".into(),
            setup: Setup::Services,
            steps: vec![
                Step {
                    port: CLIENT_PORT,
                    input: tcp_frame(client, (CLIENT_IP, vip), 64, (40000, 80), true, false),
                    expect: Expect {
                        tx: Some(ECHO_PORT),
                        output: Output::Exact(tcp_frame(
                            to_echo,
                            (CLIENT_IP, ECHO_IP),
                            63,
                            (40000, 8080),
                            true,
                            false,
                        )),
                        metrics: vec![FWD_EGRESS, FWD_INGRESS],
                    },
                },
                Step {
                    port: ECHO_PORT,
                    input: tcp_frame(from_echo, (ECHO_IP, CLIENT_IP), 64, (8080, 40000), true, true),
                    expect: Expect {
                        tx: Some(CLIENT_PORT),
                        output: Output::Exact(tcp_frame(
                            to_client,
                            (vip, CLIENT_IP),
                            63,
                            (80, 40000),
                            true,
                            true,
                        )),
                        metrics: vec![FWD_EGRESS, FWD_INGRESS],
                    },
                },
            ],
        },
        one(
            "services: a service without backends answers port unreachable",
            Setup::Services,
            CLIENT_PORT,
            tcp_frame(client, (CLIENT_IP, [10, 96, 9, 10]), 64, (40001, 80), true, false),
            Expect {
                tx: Some(CLIENT_PORT),
                output: Output::Unchecked,
                metrics: vec![(DropReason::NoService.code(), MetricDir::Egress, 1)],
            },
        ),
        one(
            "services: a port the ClusterIP does not serve is no service, and the VIP itself routes nowhere",
            Setup::Services,
            CLIENT_PORT,
            tcp_frame(client, (CLIENT_IP, vip), 64, (40002, 81), true, false),
            dropped(DropReason::Unroutable, MetricDir::Egress),
        ),
    ]
}

fn policy() -> Vec<Fixture> {
    let client = (LXC_CLIENT_MAC, CLIENT_MAC);
    let from_echo = (LXC_ECHO_MAC, ECHO_MAC);
    let from_web = (LXC_WEB_MAC, super::policy::WEB_MAC);
    vec![
        Fixture {
            name: "policy: client to echo on TCP 8080 is admitted and echo's SYN-ACK passes its default-deny egress as a reply".into(),
            setup: Setup::EchoPolicy,
            steps: vec![
                Step {
                    port: CLIENT_PORT,
                    input: tcp_frame(client, (CLIENT_IP, ECHO_IP), 64, (40000, 8080), true, false),
                    expect: Expect {
                        tx: Some(ECHO_PORT),
                        output: Output::Exact(tcp_frame(
                            (ECHO_MAC, LXC_ECHO_MAC),
                            (CLIENT_IP, ECHO_IP),
                            63,
                            (40000, 8080),
                            true,
                            false,
                        )),
                        metrics: vec![FWD_EGRESS, FWD_INGRESS],
                    },
                },
                Step {
                    port: ECHO_PORT,
                    input: tcp_frame(from_echo, (ECHO_IP, CLIENT_IP), 64, (8080, 40000), true, true),
                    expect: Expect {
                        tx: Some(CLIENT_PORT),
                        output: Output::Exact(tcp_frame(
                            (CLIENT_MAC, LXC_CLIENT_MAC),
                            (ECHO_IP, CLIENT_IP),
                            63,
                            (8080, 40000),
                            true,
                            true,
                        )),
                        metrics: vec![FWD_EGRESS, FWD_INGRESS],
                    },
                },
            ],
        },
        one(
            "policy: a new connection from echo is no reply: denied on its egress",
            Setup::EchoPolicy,
            ECHO_PORT,
            tcp_frame(from_echo, (ECHO_IP, CLIENT_IP), 64, (41000, 22), true, false),
            dropped(DropReason::Policy, MetricDir::Egress),
        ),
        one(
            "policy: client to echo on a port the rule does not name: denied on echo's ingress",
            Setup::EchoPolicy,
            CLIENT_PORT,
            tcp_frame(client, (CLIENT_IP, ECHO_IP), 64, (40001, 81), true, false),
            dropped(DropReason::Policy, MetricDir::Ingress),
        ),
        one(
            "policy: web to echo on the admitted port: web is not selected, denied on ingress",
            Setup::EchoPolicy,
            super::policy::WEB_PORT,
            tcp_frame(
                from_web,
                (super::policy::WEB_IP, ECHO_IP),
                64,
                (40002, 8080),
                true,
                false,
            ),
            dropped(DropReason::Policy, MetricDir::Ingress),
        ),
    ]
}

/// Check what `b` did against `e`; the panic names the backend, fixture and step.
fn check(b: &dyn Backend, f: &Fixture, i: usize, step: &Step, r: &Ran) {
    let name = (b.name(), f.name.as_str(), i);
    let e = &step.expect;
    assert_eq!(r.tx, e.tx, "{name:?}: where it goes");
    let mut want = e.metrics.clone();
    let mut got = r.metrics.clone();
    want.sort_by_key(|m| (m.0, m.1.index()));
    got.sort_by_key(|m| (m.0, m.1.index()));
    assert_eq!(got, want, "{name:?}: metric rows moved");
    match &e.output {
        Output::Exact(w) => assert_eq!(&r.bytes, w, "{name:?}: output bytes"),
        Output::Masked { want, free } => {
            assert_eq!(r.bytes.len(), want.len(), "{name:?}: output length");
            let fixed = |j: &usize| !free.iter().any(|f| f.contains(j));
            for j in (0..want.len()).filter(fixed) {
                assert_eq!(
                    r.bytes[j], want[j],
                    "{name:?}: output byte {j}\n got {:02x?}\nwant {:02x?}",
                    r.bytes, want
                );
            }
            // The masked fields, checked for what they must be.
            let b = &r.bytes;
            let ip = Ipv4Packet::new_checked(&b[14..]).expect("outer ipv4");
            assert!(ip.verify_checksum(), "{name:?}: outer ip checksum");
            assert!(
                b[20] & 0xbf == 0 && b[21] == 0,
                "{name:?}: only DF may be set in the outer flags/offset ({:02x}{:02x})",
                b[20],
                b[21]
            );
            let sport = u16::from_be_bytes([b[34], b[35]]);
            assert!(sport >= 1024, "{name:?}: outer source port {sport}");
            let csum = u16::from_be_bytes([b[40], b[41]]);
            if csum != 0 {
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&b[26..34]);
                pseudo.extend_from_slice(&[0, 17]);
                pseudo.extend_from_slice(&((b.len() - 34) as u16).to_be_bytes());
                pseudo.extend_from_slice(&b[34..]);
                assert_eq!(
                    crate::wire::checksum(&pseudo),
                    0,
                    "{name:?}: a non-zero outer UDP checksum must verify"
                );
            }
        }
        // Nothing leaves: what the buffer holds is the backend's business (the userspace
        // pipeline may have decapsulated it before the drop).
        Output::Dropped | Output::Unchecked => {}
    }
    if r.tx.is_some() && r.bytes.len() > 34 && r.bytes[12..14] == [8, 0] {
        let ip = Ipv4Packet::new_checked(&r.bytes[14..]).unwrap();
        assert!(ip.verify_checksum(), "{name:?}: ip checksum of what leaves");
    }
}

/// Run every fixture on `b`.
pub(crate) fn run_table(b: &mut dyn Backend) -> usize {
    let table = table();
    let mut steps = 0;
    for f in &table {
        b.load(f.setup);
        for (i, s) in f.steps.iter().enumerate() {
            let r = b.run(s.port, &s.input);
            check(b, f, i, s, &r);
            steps += 1;
        }
    }
    steps
}

/// The table on every backend this build has.
#[test]
fn every_fixture_on_every_backend() {
    let t = table();
    let steps: usize = t.iter().map(|f| f.steps.len()).sum();
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(Userspace::new())];
    for b in &mut backends {
        assert_eq!(run_table(b.as_mut()), steps, "{}", b.name());
    }
    // Every setup is used, and names are unique (a failure names one row).
    let mut names: Vec<&str> = t.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "fixture names are unique");
    for s in [
        Setup::SameNode,
        Setup::Services,
        Setup::EchoPolicy,
        Setup::Overlay,
        Setup::OverlayPolicy,
        Setup::NodePort,
    ] {
        assert!(t.iter().any(|f| f.setup == s), "{s:?} has no fixture");
    }
}
