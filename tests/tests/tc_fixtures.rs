//! The stage fixture table (`fastpath::fixtures::table`, the rows the userspace pipeline's
//! unit tests run) through the tc programs with `BPF_PROG_TEST_RUN`, case by case
//! (`fastpath::fixtures::tc::Tc`): each fixture's node written into real kernel maps, each
//! frame through the program of its port, and the verdict, the bytes that leave, where they
//! go and the `cilium_metrics` rows moved checked against the row — the same check as the
//! userspace pipeline's.
//!
//! Rows the tc datapath answers differently by design are named in [`KNOWN`] with the
//! reason (docs/tc.md lists the same); every other row must pass, and a known row that
//! starts passing must be taken off the list.

use fastpath::fixtures::table::{Backend, check, table};
use fastpath::fixtures::tc::Tc;
use fastpath_tests::require_root;

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
];

#[test]
fn the_fixture_table_through_the_tc_programs() {
    if !require_root() {
        return;
    }
    let tag = format!("fpfx{}", std::process::id() % 100000);
    let mut b = Tc::new(&tag);
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
