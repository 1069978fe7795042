//! The stage fixture table (`fastpath::fixtures::table`, the rows the userspace pipeline's
//! unit tests run) through the tc programs with `BPF_PROG_TEST_RUN`, case by case: each
//! fixture's node is written into real kernel maps (the same map set `fastpath run` makes,
//! conntrack in pinned shared arrays), each frame runs through `cil_from_container` (a pod's
//! port) or `cil_from_netdev` (the node NIC) with `skb->ifindex` set to a device of that
//! index, and the verdict, the bytes that leave, where they go and the `cilium_metrics` rows
//! moved are checked against the row — the same check as the userspace pipeline's.
//!
//! Rows the tc datapath answers differently by design are named in [`KNOWN`] with the
//! reason (docs/tc.md lists the same); every other row must pass, and a known row that
//! starts passing must be taken off the list.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use aya::programs::{TestRun, TestRunOptions};
use control::ct::{Conntrack, CtSizes};
use control::kernel::{EndpointMap, IpcacheMap, LbMaps, OverlayMap, PolicyMaps};
use control::maps::{IpcacheKey, MetricDir};
use control::net::Ipv4Cidr;
use control::tables::{PortId, PortRole, Tables};
use fastpath::fixtures::table::{Backend, Ran, Setup, check, table};
use fastpath_tests::require_root;
use xdp_redirect::{Steering, TcPrograms};

/// Rows the tc datapath does not answer as the workers do, and why. The first group are
/// frames the XDP steering program hands to the kernel before a worker sees them — the
/// rows state what the workers' pipeline does should one reach it (a table change racing
/// the steering); the tc program makes the steering decision and the pipeline's in one
/// pass, so it hands them to the kernel too. Then frames `BPF_PROG_TEST_RUN` cannot carry.
/// The last group is what the tc datapath does not do yet (docs/tc.md, "What differs").
const KNOWN: &[(&str, &str)] = &[
    (
        "arp for the pod's own ip is not answered",
        "a DAD probe (sender 0.0.0.0): the kernel's, as XDP passes it",
    ),
    (
        "arp reply from a pod",
        "ARP replies are the kernel's, as XDP passes them",
    ),
    (
        "unknown destination",
        "not an endpoint, a remote pod or a frontend: the kernel's, as XDP passes it",
    ),
    (
        "host destination raced the steering",
        "a host address: the kernel's, as XDP passes it",
    ),
    (
        "services: a port the ClusterIP does not serve is no service, and the VIP itself routes nowhere",
        "no frontend on that port: the kernel's, as XDP passes it",
    ),
    (
        "ipv6 ethertype",
        "IPv6 is the kernel's, as XDP passes it (and the 46-byte frame is too short for the test run's skb)",
    ),
    (
        "truncated ethernet",
        "13 bytes: the test run makes no skb of it (on a device the kernel drops runts before tc)",
    ),
    (
        "truncated ipv4",
        "shorter than an IPv4 header: the test run makes no skb of it (on a device the program drops it as 134)",
    ),
    (
        "overlay: a VNI that is no identity this node accepts",
        "not yet: the tc program refuses only the reserved VNIs 0 and 1, not identities the node does not know (183)",
    ),
    (
        "services: a service without backends answers port unreachable",
        "not yet: dropped with 158 but no ICMP port unreachable is sent",
    ),
    (
        "nodeport: a SYN from outside for a remote backend is encapsulated to its node, counted as ingress",
        "not yet: NodePort/ExternalIP from outside is the workers' only (a tc NIC hands it to the kernel)",
    ),
    (
        "nodeport: a SYN from outside for a service without backends is answered unreachable, counted as an ingress drop",
        "not yet: NodePort on a tc NIC",
    ),
    (
        "nodeport: a pod's SYN to the same empty service is answered unreachable, counted as an egress drop",
        "not yet: no ICMP port unreachable from tc (dropped with 158)",
    ),
];

/// A network namespace of the test's own with a device for every port of a setup (the
/// index and MAC the tables give it), so `BPF_PROG_TEST_RUN` can set `skb->dev`.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = lab::sh(&["ip", "netns", "del", name]);
        lab::sh(&["ip", "netns", "add", name]).expect("ip netns add");
        Netns { name: name.into() }
    }

    /// Make a device with `ifindex` and `mac` (a veth, its peer at a high index).
    fn device(&self, i: usize, ifindex: u32, mac: &str) {
        let (a, b) = (format!("fx{i}"), format!("fxp{i}"));
        let (ix, px) = (ifindex.to_string(), (30000 + i).to_string());
        lab::sh(&[
            "ip", "-n", &self.name, "link", "add", &a, "index", &ix, "address", mac, "type",
            "veth", "peer", "name", &b, "index", &px,
        ])
        .expect("a device of the fixture's index");
        lab::sh(&["ip", "-n", &self.name, "link", "set", &a, "up"]).unwrap();
        lab::sh(&["ip", "-n", &self.name, "link", "set", &b, "up"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = lab::sh(&["ip", "netns", "del", &self.name]);
    }
}

/// The tc programs over kernel maps holding one fixture setup.
struct Tc {
    tag: String,
    setup: Option<Setup>,
    t: Arc<Tables>,
    /// Held for their maps: the XDP object's map set (pinned) and the conntrack tables.
    steering: Option<Steering>,
    ct: Option<Conntrack>,
    tc: Option<TcPrograms>,
    ns: Option<Netns>,
}

impl Tc {
    fn pins(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}", self.tag))
    }

    /// The kernel maps of a node holding `t`, as the control plane writes them.
    fn mirror(&mut self, t: &Tables) {
        let s = self.steering.as_mut().unwrap();
        for (k, e) in t.endpoints.iter() {
            s.upsert_endpoint(k, &e.info).unwrap();
        }
        for (p, v) in t.ipcache.iter() {
            s.upsert_ipcache(&IpcacheKey::v4(p), v).unwrap();
        }
        for (id, b) in t.lb.backends.iter() {
            s.upsert_backend(*id, b).unwrap();
        }
        for (id, v) in t.lb.revnat.iter() {
            s.upsert_revnat(control::maps::lb::RevNat(*id), v).unwrap();
        }
        for (k, v) in t.lb.services.iter() {
            s.upsert_service(k, v).unwrap();
        }
        for (id, p) in &t.policy.endpoints {
            let entries: Vec<_> = p.entries.iter().map(|e| (e.key, e.entry)).collect();
            s.create_policy_map(*id, &entries).unwrap();
        }
        s.set_overlay(&t.overlay, None::<Ipv4Cidr>).unwrap();
        for (ip, nh) in &t.nexthops {
            let ifindex = t.port(nh.port).map(|p| p.ifindex).unwrap();
            s.set_nexthop(*ip, Some((ifindex, nh))).unwrap();
        }
    }

    /// `cilium_metrics` rows of the tc programs, summed over CPUs.
    fn metrics(&self) -> BTreeMap<(u8, u8), u64> {
        let st = self.steering.as_ref().unwrap().tc_stats();
        let st = match st {
            Some(r) => r.unwrap(),
            None => self.tc.as_ref().unwrap().stats().unwrap(),
        };
        st.metrics
            .into_iter()
            .map(|(r, d, p, _)| ((r, d), p))
            .collect()
    }

    /// Where a redirected frame goes: to the pod whose MAC it is now addressed to, to the
    /// NIC when addressed to a next hop, back where it came from when it is an ARP reply.
    fn port_of(&self, in_port: PortId, out: &[u8]) -> Option<PortId> {
        let dst = control::maps::MacAddr(out[..6].try_into().ok()?);
        if out.get(12..14) == Some(&[0x08, 0x06]) {
            return Some(in_port);
        }
        let pod =
            self.t.endpoints.iter().find_map(|(_, e)| {
                (e.port.is_some() && e.info.pod_mac() == dst).then_some(e.port?)
            });
        pod.or_else(|| {
            self.t
                .nexthops
                .values()
                .find(|n| n.dst_mac == dst)
                .map(|n| n.port)
        })
    }
}

impl Backend for Tc {
    fn name(&self) -> &'static str {
        "tc programs (BPF_PROG_TEST_RUN)"
    }

    fn load(&mut self, setup: Setup) {
        if self.setup == Some(setup) {
            // The same node, fresh: only conntrack changed.
            let ct = self.ct.as_mut().unwrap();
            ct.restore(0, |_, _| false);
            return;
        }
        self.tc = None;
        self.ct = None;
        self.steering = None;
        self.ns = None;
        let pins = self.pins();
        let _ = std::fs::remove_dir_all(&pins);
        std::fs::create_dir_all(&pins).unwrap();
        let t = setup.tables();
        let ns = Netns::new(&self.tag);
        for (i, p) in t.ports.iter().enumerate() {
            if let Some(p) = p {
                ns.device(i, p.ifindex, &p.mac.to_string());
            }
        }
        let mut s = Steering::load().unwrap();
        s.pin_maps(&pins).unwrap();
        self.steering = Some(s);
        self.mirror(&t);
        let locks = std::env::temp_dir().join(&self.tag);
        std::fs::create_dir_all(&locks).unwrap();
        let (ct, _) = Conntrack::open_pinned(
            &pins,
            &locks,
            CtSizes {
                tcp: 4096,
                any: 4096,
            },
        )
        .unwrap();
        self.ct = Some(ct);
        self.tc = Some(TcPrograms::open(&pins).unwrap());
        self.ns = Some(ns);
        self.t = t;
        self.setup = Some(setup);
    }

    fn run(&mut self, port: PortId, frame: &[u8]) -> Ran {
        let p = self.t.port(port).expect("the row's port").clone();
        let prog = match p.role {
            PortRole::Underlay => "cil_from_netdev",
            _ => "cil_from_container",
        };
        let before = self.metrics();
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&p.ifindex.to_ne_bytes());
        let mut ctx_out = [0u8; 192];
        let mut out = vec![0u8; frame.len() + 512];
        let ns = self.ns.as_ref().unwrap().name.clone();
        let tc = self.tc.as_mut().unwrap();
        let prog = tc.program(prog).unwrap();
        // skb->dev comes from the index, looked up in the caller's namespace.
        let r = in_netns(&ns, || {
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ctx_out: Some(&mut ctx_out),
                ..Default::default()
            })
        });
        let r = match r {
            Ok(r) => r,
            // A frame the kernel refuses to make an skb of (shorter than an Ethernet header,
            // or than the IPv4 header its ethertype announces): it never reaches tc either.
            // Nothing leaves, nothing is counted.
            Err(e) => {
                eprintln!(
                    "BPF_PROG_TEST_RUN refused a {}-byte frame: {e}",
                    frame.len()
                );
                return Ran {
                    tx: None,
                    bytes: Vec::new(),
                    metrics: Vec::new(),
                };
            }
        };
        out.truncate(r.data_size_out as usize);
        let after = self.metrics();
        let metrics = after
            .iter()
            .filter_map(|(&(reason, dir), &n)| {
                let d = n - before.get(&(reason, dir)).copied().unwrap_or(0);
                let dir = match dir {
                    1 => MetricDir::Ingress,
                    2 => MetricDir::Egress,
                    _ => MetricDir::Service,
                };
                (d > 0).then_some((reason, dir, d))
            })
            .collect();
        const TC_ACT_REDIRECT: u32 = 7;
        let tx = (r.return_value == TC_ACT_REDIRECT)
            .then(|| self.port_of(port, &out))
            .flatten();
        Ran {
            tx,
            bytes: out,
            metrics,
        }
    }
}

/// Run `f` on a thread of its own in network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            fastpath::xsk::sys::enter_netns(ns).expect("the fixture's namespace");
            f()
        })
        .join()
        .expect("test-run thread")
    })
}

#[test]
fn the_fixture_table_through_the_tc_programs() {
    if !require_root() {
        return;
    }
    let tag = format!("fpfx{}", std::process::id() % 100000);
    let mut b = Tc {
        tag: tag.clone(),
        setup: None,
        t: Arc::new(Tables::default()),
        steering: None,
        ct: None,
        tc: None,
        ns: None,
    };
    let mut passed = 0;
    let mut failed: Vec<(String, String)> = Vec::new();
    for f in table() {
        b.load(f.setup);
        let mut why = None;
        for (i, s) in f.steps.iter().enumerate() {
            let r = b.run(s.port, &s.input);
            let res =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&b, &f, i, s, &r)));
            if let Err(e) = res {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                why = Some(format!("step {i}: {}", msg.lines().next().unwrap_or("")));
                break;
            }
        }
        match why {
            None => passed += 1,
            Some(w) => failed.push((f.name.clone(), w)),
        }
    }
    drop(b);
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/{tag}"));
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&tag));
    eprintln!("{passed} fixtures pass on the tc programs");
    for (n, w) in &failed {
        eprintln!("DIFFERS: {n}: {w}");
    }
    let unexpected: Vec<_> = failed
        .iter()
        .filter(|(n, _)| !KNOWN.iter().any(|(k, _)| k == n))
        .collect();
    let stale: Vec<_> = KNOWN
        .iter()
        .filter(|(k, _)| !failed.iter().any(|(n, _)| n == k))
        .collect();
    assert!(
        unexpected.is_empty(),
        "rows the tc programs answer differently: {unexpected:#?}"
    );
    assert!(
        stale.is_empty(),
        "known differences that now pass (take them off KNOWN): {stale:#?}"
    );
}
