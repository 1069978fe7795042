//! State applied at run time survives a restart and a crash (issue #11 defect 10): services
//! and policies applied with `service apply` / `policy apply` used to vanish, leaving an
//! endpoint that only a runtime policy protected unprotected after a restart.

use std::os::unix::fs::PermissionsExt;

use control::maps::DropReason;
use fastpath_tests::{Pods, TestNode, node_yaml, require_root, unique};

/// Pod 1 admits nothing from pod 0 (its only ingress peer is an app nobody has).
const LOCKDOWN: &str = "kind: CiliumNetworkPolicy\nmetadata: { name: lockdown }\nspec:\n  endpointSelector: { matchLabels: { app: p1 } }\n  ingress: [{ fromEndpoints: [{ matchLabels: { app: nobody } }] }]\n";

fn stdout(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn runtime_services_and_policies_survive_restart_and_crash() {
    if !require_root() {
        return;
    }
    let name = unique("r");
    let mut n = TestNode::start(&node_yaml(&name, 2, 1, ""), 1, &[]);
    let (p0, p1) = (n.pod_ip(0), n.pod_ip(1));
    let _to_p1 = n.echo_server(1, 7010);
    let _to_p0 = n.echo_server(0, 7011);
    assert_eq!(n.echo(0, "TCP", &p1, 7010, "open\n"), "open\n");

    // At run time: a policy that locks pod 1 down, and a ClusterIP to pod 0.
    n.apply("policy", LOCKDOWN);
    n.apply(
        "service",
        &format!(
            "{{ name: rt, cluster_ip: 10.96.77.7, ports: [{{ port: 80, target_port: 7011 }}], backends: [{{ ip: {p0} }}] }}\n"
        ),
    );
    assert_eq!(n.echo(0, "TCP", &p1, 7010, "locked\n"), "");
    assert_eq!(n.echo(1, "TCP", "10.96.77.7", 80, "via vip\n"), "via vip\n");
    let file = n.state_dir.join("runtime.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "root-only state file");

    // A crash (SIGKILL, nothing cleaned up), then a start: both are back before traffic.
    n.crash();
    n.launch(&[]);
    assert!(
        n.log()
            .contains("restored 1 service(s), 1 policy object(s) and 0 endpoint(s)"),
        "{}",
        n.log()
    );
    let denied = n.status().drops_with(DropReason::Policy.code());
    assert_eq!(
        n.echo(0, "TCP", &p1, 7010, "still locked\n"),
        "",
        "pod 1 unprotected after a crash"
    );
    assert!(n.status().drops_with(DropReason::Policy.code()) > denied);
    assert_eq!(
        n.echo(1, "TCP", "10.96.77.7", 80, "vip again\n"),
        "vip again\n"
    );
    assert!(stdout(n.cli(&["policy", "list"])).contains("CiliumNetworkPolicy/default/lockdown"));

    // Deleted at run time and restarted (SIGTERM): the deletion is what is restored.
    let out = n.cli(&["policy", "delete", "default/lockdown"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = n.cli(&["service", "delete", "rt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n.stop();
    n.launch(&[]);
    assert_eq!(n.echo(0, "TCP", &p1, 7010, "open again\n"), "open again\n");
    assert!(!stdout(n.cli(&["bpf", "lb", "list"])).contains("10.96.77.7"));
    assert!(!stdout(n.cli(&["policy", "list"])).contains("lockdown"));

    // A state file that cannot be read stops the start, naming it; without it the node
    // starts from its config alone.
    n.stop();
    std::fs::write(&file, b"{ \"version\": 1, torn").unwrap();
    let log = n.try_launch(&[]).unwrap_err();
    assert!(
        log.contains(&format!("{}: not a fastpath runtime state", file.display())),
        "{log}"
    );
    std::fs::remove_file(&file).unwrap();
    n.launch(&[]);
    assert_eq!(n.echo(0, "TCP", &p1, 7010, "config\n"), "config\n");
}
