//! The config file as a source of intent: SIGHUP re-reads it and its services and policies
//! take effect without a restart, through the control loop's intent channel; a file that
//! does not parse, or that changes what cannot change live, leaves everything in force.

use std::time::{Duration, Instant};

use fastpath_tests::{Pods, TestNode, node_yaml, require_root, unique};

fn hup(n: &TestNode) {
    let pid = n.status().pid;
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Wait (≤ 5 s) for `needle` to appear in the log `times` times.
fn wait_log(n: &TestNode, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while n.log().matches(needle).count() < times {
        assert!(Instant::now() < deadline, "no `{needle}` in\n{}", n.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lb(n: &TestNode) -> String {
    String::from_utf8_lossy(&n.cli(&["bpf", "lb", "list"]).stdout).into_owned()
}

#[test]
fn sighup_reloads_services_and_policies_from_the_config_file() {
    if !require_root() {
        return;
    }
    let name = unique("hup");
    let base = node_yaml(&name, 2, 1, "");
    let mut n = TestNode::start(&base, 1, &[]);
    let p1 = n.pod_ip(1);
    let _srv = n.echo_server(1, 7020);
    assert_eq!(n.echo(0, "TCP", &p1, 7020, "before\n"), "before\n");
    assert!(!lb(&n).contains("10.96.88.8"));

    // A service and a lockdown policy added to the file: in force after SIGHUP.
    let with = format!(
        "{base}services:\n  - {{ name: hup, cluster_ip: 10.96.88.8, ports: [{{ port: 80, target_port: 7020 }}], backends: [{{ ip: {p1} }}] }}\npolicies:\n  - kind: CiliumNetworkPolicy\n    metadata: {{ name: lock }}\n    spec:\n      endpointSelector: {{ matchLabels: {{ app: p1 }} }}\n      ingress: [{{}}]\n"
    );
    std::fs::write(&n.config_path, &with).unwrap();
    hup(&n);
    wait_log(
        &n,
        "reloaded, 1 service(s) and 1 policy object(s) in force",
        1,
    );
    assert!(lb(&n).contains("10.96.88.8:80"), "{}", lb(&n));
    assert_eq!(
        n.echo(0, "TCP", &p1, 7020, "locked\n"),
        "",
        "the reloaded policy denies"
    );

    // A file that does not parse: logged, the reloaded state stays.
    std::fs::write(&n.config_path, "node: [").unwrap();
    hup(&n);
    wait_log(&n, "not reloaded, the old one stays in force", 1);
    assert!(lb(&n).contains("10.96.88.8:80"));

    // A file that changes what cannot change live (the pods): refused whole.
    std::fs::write(&n.config_path, with.replace("app: p0", "app: zz")).unwrap();
    hup(&n);
    wait_log(&n, "not reloaded, the old one stays in force", 2);
    assert!(n.log().contains("only services and policies are reloaded"));
    assert!(lb(&n).contains("10.96.88.8:80"));

    // Back to the base file: the service and the policy go.
    std::fs::write(&n.config_path, &base).unwrap();
    hup(&n);
    wait_log(
        &n,
        "reloaded, 0 service(s) and 0 policy object(s) in force",
        1,
    );
    assert!(!lb(&n).contains("10.96.88.8"));
    assert_eq!(n.echo(0, "TCP", &p1, 7020, "after\n"), "after\n");
    n.stop();
}
