//! Policy compilation on fixtures: YAML in, map entries and verdicts out.

use std::collections::BTreeMap;

use super::parse::parse_policies;
use super::table::PolicyVerdict;
use super::*;
use crate::maps::DropReason;

const WEB: u32 = 1000;
const CLIENT: u32 = 1001;
const OTHER_NS: u32 = 1002;
const DB: u32 = 1003;

fn pods() -> BTreeMap<u32, Vec<String>> {
    let pod = |ns: &str, app: &str| {
        vec![
            format!("k8s:app={app}"),
            format!("k8s:io.kubernetes.pod.namespace={ns}"),
        ]
    };
    BTreeMap::from([
        (WEB, pod("default", "web")),
        (CLIENT, pod("default", "client")),
        (OTHER_NS, pod("prod", "client")),
        (DB, pod("default", "db")),
    ])
}

fn eps() -> Vec<LocalEndpoint> {
    vec![
        LocalEndpoint {
            ep_id: 1,
            sec_id: WEB,
        },
        LocalEndpoint {
            ep_id: 2,
            sec_id: CLIENT,
        },
    ]
}

fn compile(yaml: &str) -> (PolicyState, Compiled) {
    let ps = parse_policies(yaml, "test.yaml").expect("parses");
    let mut st = PolicyState::default().with_policies(&ps);
    let c = st.compile(&eps(), &pods(), 1024).expect("compiles");
    (st, c)
}

fn verdict(c: &Compiled, ep: u16, dir: u8, id: u32, proto: u8, port: u16) -> Option<DropReason> {
    match c.tables.verdict(ep, dir, id, proto, port) {
        PolicyVerdict::Allow { .. } => None,
        PolicyVerdict::Deny { reason, .. } => Some(reason),
    }
}

const ING: u8 = 0;
const EG: u8 = 1;
const DENIED: Option<DropReason> = Some(DropReason::Policy);
const DENY_RULE: Option<DropReason> = Some(DropReason::PolicyDeny);

#[test]
fn unselected_endpoint_allows_everything_and_shows_allow_all() {
    let (_, c) = compile("");
    assert_eq!(verdict(&c, 1, ING, 77777, 6, 80), None);
    assert_eq!(verdict(&c, 1, EG, 2, 17, 53), None);
    let ep = &c.tables.endpoints[&1];
    assert_eq!(ep.enforced, [false, false]);
    let keys: Vec<String> = ep.entries.iter().map(|e| e.key.to_string()).collect();
    // Any identity: under 0 and the aggregates world (2) and remote-node (6), Cilium 1.20.
    assert_eq!(
        keys,
        [
            "Ingress ANY ANY",
            "Egress ANY ANY",
            "Ingress 2 ANY",
            "Egress 2 ANY",
            "Ingress 6 ANY",
            "Egress 6 ANY"
        ]
    );
}

#[test]
fn allowed_cnp_l3_l4_and_default_deny() {
    // connectivity-check pod-to-a-allowed-cnp: only client may reach web on 80/TCP.
    let (_, c) = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: web-from-client }
spec:
  endpointSelector: { matchLabels: { app: web } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: client } }]
      toPorts: [{ ports: [{ port: "80", protocol: TCP }] }]
"#,
    );
    assert_eq!(verdict(&c, 1, ING, CLIENT, 6, 80), None);
    assert_eq!(verdict(&c, 1, ING, CLIENT, 6, 81), DENIED);
    assert_eq!(verdict(&c, 1, ING, CLIENT, 17, 80), DENIED);
    assert_eq!(verdict(&c, 1, ING, DB, 6, 80), DENIED, "other labels");
    assert_eq!(
        verdict(&c, 1, ING, OTHER_NS, 6, 80),
        DENIED,
        "same labels, other namespace"
    );
    assert_eq!(verdict(&c, 1, ING, 1, 6, 22), None, "allow-localhost");
    assert_eq!(verdict(&c, 1, EG, DB, 6, 5432), None, "egress not selected");
    assert_eq!(verdict(&c, 2, ING, DB, 6, 80), None, "client not selected");
    assert_eq!(c.tables.endpoints[&1].enforced, [true, false]);
}

#[test]
fn l3_denied_cnp_and_deny_wins_over_allow() {
    // pod-to-a-l3-denied-cnp: an egress rule to an unrelated peer selects client, which
    // then cannot reach web; a deny beats an allow-all.
    let (_, c) = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: client-egress }
spec:
  endpointSelector: { matchLabels: { app: client } }
  egress:
    - toEndpoints: [{ matchLabels: { app: db } }]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: web-all-but-22 }
spec:
  endpointSelector: { matchLabels: { app: web } }
  ingress:
    - fromEntities: [all]
  ingressDeny:
    - fromEndpoints: [{ matchLabels: { app: client } }]
      toPorts: [{ ports: [{ port: "22" }] }]
"#,
    );
    assert_eq!(verdict(&c, 2, EG, WEB, 6, 80), DENIED);
    assert_eq!(verdict(&c, 2, EG, DB, 6, 5432), None);
    assert_eq!(verdict(&c, 1, ING, DB, 6, 22), None);
    assert_eq!(verdict(&c, 1, ING, CLIENT, 6, 22), DENY_RULE);
    assert_eq!(
        verdict(&c, 1, ING, CLIENT, 17, 22),
        DENY_RULE,
        "ANY expands to UDP"
    );
    assert_eq!(verdict(&c, 1, ING, CLIENT, 6, 23), None);
}

#[test]
fn deny_covering_an_allow_of_the_same_identity_removes_it() {
    let (_, c) = compile(
        r#"
kind: CiliumNetworkPolicy
metadata: { name: p }
spec:
  endpointSelector: { matchLabels: { app: web } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: client } }]
      toPorts: [{ ports: [{ port: "80", protocol: TCP }] }]
  ingressDeny:
    - fromEndpoints: [{ matchLabels: { app: client } }]
      toPorts: [{ ports: [{ port: "0", protocol: TCP }] }]
"#,
    );
    assert_eq!(verdict(&c, 1, ING, CLIENT, 6, 80), DENY_RULE);
    let ep = &c.tables.endpoints[&1];
    assert!(
        !ep.entries
            .iter()
            .any(|e| e.key.sec_label == CLIENT && !e.entry.is_deny())
    );
}

#[test]
fn port_ranges_cidr_except_and_entities() {
    let (st, c) = compile(
        r#"
kind: CiliumNetworkPolicy
metadata: { name: p }
spec:
  endpointSelector: { matchLabels: { app: web } }
  ingress:
    - fromCIDRSet: [{ cidr: 192.168.0.0/16, except: [192.168.5.0/24] }]
      toPorts: [{ ports: [{ port: "8000", endPort: 8100, protocol: TCP }] }]
    - fromEntities: [remote-node]
  egress:
    - toEntities: [world]
      toPorts: [{ ports: [{ port: "53", protocol: UDP }] }]
    - toCIDR: [10.0.0.0/8]
"#,
    );
    let outer = st.cidr_ids[&"192.168.0.0/16".parse().unwrap()];
    let inner = st.cidr_ids[&"192.168.5.0/24".parse().unwrap()];
    let ten = st.cidr_ids[&"10.0.0.0/8".parse().unwrap()];
    assert!(outer > LOCAL_IDENTITY_BASE && inner > LOCAL_IDENTITY_BASE);
    assert_eq!(verdict(&c, 1, ING, outer, 6, 8000), None);
    assert_eq!(verdict(&c, 1, ING, outer, 6, 8100), None);
    assert_eq!(verdict(&c, 1, ING, outer, 6, 8101), DENIED);
    assert_eq!(verdict(&c, 1, ING, outer, 6, 7999), DENIED);
    assert_eq!(verdict(&c, 1, ING, inner, 6, 8050), DENIED, "except");
    assert_eq!(
        verdict(&c, 1, ING, 2, 6, 8050),
        DENIED,
        "world is not in the /16"
    );
    assert_eq!(verdict(&c, 1, ING, 6, 17, 9), None, "remote-node");
    assert_eq!(verdict(&c, 1, EG, 2, 17, 53), None, "world");
    assert_eq!(
        verdict(&c, 1, EG, ten, 17, 53),
        None,
        "CIDR identities are world too"
    );
    assert_eq!(verdict(&c, 1, EG, ten, 6, 443), None, "toCIDR L3");
    assert_eq!(verdict(&c, 1, EG, 2, 6, 443), DENIED);
    assert_eq!(
        verdict(&c, 1, EG, CLIENT, 17, 53),
        DENIED,
        "a pod is not world"
    );
    assert_eq!(
        c.universe.labels(inner),
        ["cidr:192.168.5.0/24", "reserved:world"]
    );
    // Cilium 1.20: `toEntities: [world]` is one entry under the world's aggregate (2), not
    // one per CIDR identity; a CIDR identity's second lookup reaches it.
    let world_53: Vec<String> = c.tables.endpoints[&1]
        .entries
        .iter()
        .filter(|e| e.key.egress == EG && e.key.port() == 53)
        .map(|e| format!("{} {}", e.key.sec_label, e.key.protocol))
        .collect();
    assert_eq!(world_53, ["2 17"]);
}

#[test]
fn kubernetes_network_policy() {
    let (_, c) = compile(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: web, namespace: default }
spec:
  podSelector: { matchLabels: { app: web } }
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector: { matchLabels: { app: client } }
        - namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: prod } }
      ports: [{ port: 80 }, { protocol: UDP, port: 5000, endPort: 5010 }]
  egress: []
"#,
    );
    assert_eq!(verdict(&c, 1, ING, CLIENT, 6, 80), None);
    assert_eq!(
        verdict(&c, 1, ING, OTHER_NS, 17, 5005),
        None,
        "namespaceSelector"
    );
    assert_eq!(verdict(&c, 1, ING, DB, 6, 80), DENIED);
    assert_eq!(
        verdict(&c, 1, EG, DB, 6, 80),
        DENIED,
        "egress: [] denies all"
    );
    let (_, c) = compile(
        r#"
kind: NetworkPolicy
metadata: { name: all }
spec:
  podSelector: {}
  ingress: [{}]
"#,
    );
    assert_eq!(
        verdict(&c, 1, ING, 2, 6, 1),
        None,
        "ingress: [{{}}] allows all"
    );
    assert_eq!(c.tables.endpoints[&2].enforced, [true, false]);
}

#[test]
fn empty_cnp_ingress_rule_denies_all_and_enable_default_deny_false_does_not() {
    let (_, c) = compile(
        r#"
kind: CiliumNetworkPolicy
metadata: { name: lockdown }
spec:
  endpointSelector: {}
  ingress: [{}]
"#,
    );
    assert_eq!(verdict(&c, 1, ING, CLIENT, 6, 80), DENIED);
    assert_eq!(verdict(&c, 2, ING, WEB, 6, 80), DENIED);
    let (_, c) = compile(
        r#"
kind: CiliumNetworkPolicy
metadata: { name: additive }
spec:
  endpointSelector: { matchLabels: { app: web } }
  enableDefaultDeny: { ingress: false }
  ingressDeny:
    - fromEndpoints: [{ matchLabels: { app: db } }]
"#,
    );
    assert_eq!(verdict(&c, 1, ING, CLIENT, 6, 80), None);
    assert_eq!(verdict(&c, 1, ING, DB, 6, 80), DENY_RULE);
}

#[test]
fn matchexpressions_and_icmp() {
    let (_, c) = compile(
        r#"
kind: CiliumNetworkPolicy
metadata: { name: p }
spec:
  endpointSelector: { matchExpressions: [{ key: app, operator: In, values: [web, db] }] }
  ingress:
    - fromEndpoints: [{ matchExpressions: [{ key: app, operator: NotIn, values: [db] }] }]
      icmps: [{ fields: [{ type: 8, family: IPv4 }] }]
"#,
    );
    assert_eq!(verdict(&c, 1, ING, CLIENT, 1, 8), None);
    assert_eq!(verdict(&c, 1, ING, CLIENT, 1, 13), DENIED);
    assert_eq!(verdict(&c, 1, ING, DB, 1, 8), DENIED);
}

#[test]
fn counter_slots_survive_recompilation() {
    let yaml = r#"
kind: CiliumNetworkPolicy
metadata: { name: p }
spec:
  endpointSelector: { matchLabels: { app: web } }
  ingress: [{ fromEndpoints: [{ matchLabels: { app: client } }] }]
"#;
    let (mut st, c1) = compile(yaml);
    let c2 = st.compile(&eps(), &pods(), 1024).unwrap();
    let slots = |c: &Compiled| -> Vec<u32> {
        c.tables.endpoints[&1]
            .entries
            .iter()
            .map(|e| e.slot)
            .collect()
    };
    assert_eq!(slots(&c1), slots(&c2));
    assert!(c2.new_slots.is_empty());
    assert!(slots(&c1).iter().all(|&s| s >= table::FIRST_ENTRY_SLOT));
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    let cases = [
        (
            r#"
kind: CiliumNetworkPolicy
metadata: { name: l7 }
spec:
  endpointSelector: {}
  ingress:
    - toPorts: [{ ports: [{ port: "80" }], rules: { http: [{ method: GET }] } }]
"#,
            "spec.ingress[0].toPorts[0].rules",
            "L7",
        ),
        (
            r#"
kind: CiliumNetworkPolicy
metadata: { name: fqdn }
spec:
  endpointSelector: {}
  egress: [{ toFQDNs: [{ matchName: example.com }] }]
"#,
            "spec.egress[0].toFQDNs",
            "DNS",
        ),
        (
            r#"
kind: CiliumClusterwideNetworkPolicy
metadata: { name: host }
spec:
  nodeSelector: {}
  ingress: [{ fromEntities: [world] }]
"#,
            "spec.nodeSelector",
            "host",
        ),
        (
            r#"
kind: NetworkPolicy
metadata: { name: named }
spec:
  podSelector: {}
  ingress: [{ ports: [{ port: http }] }]
"#,
            "spec.ingress[0].ports[0].port",
            "named port",
        ),
        (
            r#"
kind: CiliumNetworkPolicy
metadata: { name: typo }
spec:
  endpointSelector: {}
  ingress: [{ fromEndpoint: [{}] }]
"#,
            "spec.ingress[0].fromEndpoint",
            "unknown field `fromEndpoint`",
        ),
        (
            r#"
kind: CiliumNetworkPolicy
metadata: { name: v6 }
spec:
  endpointSelector: {}
  egress: [{ toCIDR: ["fd00::/64"] }]
"#,
            "spec.egress[0].toCIDR[0]",
            "IPv6",
        ),
        (
            r#"
kind: CiliumNetworkPolicy
metadata: { name: ent }
spec:
  endpointSelector: {}
  egress: [{ toEntities: [internet] }]
"#,
            "spec.egress[0].toEntities[0]",
            "not an entity",
        ),
        (
            r#"
kind: CiliumNetworkPolicy
metadata: { name: range }
spec:
  endpointSelector: {}
  egress: [{ toPorts: [{ ports: [{ port: "90", endPort: 80 }] }] }]
"#,
            "spec.egress[0].toPorts[0].ports[0].endPort",
            "below",
        ),
    ];
    for (yaml, path, words) in cases {
        let e = parse_policies(yaml, "bad.yaml").expect_err(path);
        assert_eq!(e.path, path, "{e}");
        assert!(e.to_string().contains(words), "{e}");
    }
}

/// Issue #11 defect 8: a 57 KiB policy took 26 s and 418 MiB to compile, a 5 000-CIDR one
/// passed 2 GiB. Compilation now stops at the first bound the result would pass.
mod bounds {
    use super::*;

    fn cidr_policy(n: usize, ports: &str) -> String {
        let mut y = String::from(
            "kind: CiliumNetworkPolicy\nmetadata: { name: wide }\nspec:\n  endpointSelector: {}\n  egress:\n    - toCIDR: [10.0.0.0/8",
        );
        for i in 0..n {
            y += &format!(", 10.{}.{}.{}/32", i >> 16 & 255, i >> 8 & 255, i & 255);
        }
        y += &format!("]\n      toPorts: [{{ ports: [{ports}] }}]\n");
        y
    }

    fn compile_err(yaml: &str, eps: &[LocalEndpoint]) -> CompileError {
        let ps = parse_policies(yaml, "t.yaml").expect("parses");
        let mut st = PolicyState::default().with_policies(&ps);
        st.compile(eps, &pods(), 1 << 20).unwrap_err()
    }

    #[test]
    fn a_policy_resolving_past_the_map_size_is_refused_quickly() {
        // 5 001 CIDR identities inside 10.0.0.0/8, times every port on TCP, UDP and SCTP.
        let yaml = cidr_policy(5000, "{ port: \"1\", endPort: 65535 }");
        assert!(yaml.len() > 57 << 10, "at least the reported size");
        let t = std::time::Instant::now();
        let e = compile_err(&yaml, &eps());
        assert_eq!(
            e,
            CompileError::PolicyTooLarge {
                policy: "CiliumNetworkPolicy/default/wide".into()
            }
        );
        assert!(
            e.to_string()
                .contains("an endpoint's policy map holds 16384"),
            "{e}"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn too_many_cidrs_and_too_many_entries_overall() {
        let e = compile_err(&cidr_policy(20_000, "{ port: \"80\" }"), &eps());
        assert_eq!(e, CompileError::TooManyCidrs { n: 20_001 });
        // 3 000 CIDRs × 3 protocols on one port: ~9 000 entries per endpoint, fine for
        // one endpoint; 200 endpoints together pass the node-wide bound.
        let yaml = cidr_policy(3000, "{ port: \"80\" }");
        let ps = parse_policies(&yaml, "t.yaml").unwrap();
        let mut st = PolicyState::default().with_policies(&ps);
        let c = st.compile(&eps()[..1], &pods(), 1 << 20).unwrap();
        let n = c.tables.endpoints[&1].entries.len();
        assert!((9_000..POLICY_MAP_MAX).contains(&n), "{n}");
        let many: Vec<LocalEndpoint> = (1..=200)
            .map(|i| LocalEndpoint {
                ep_id: i,
                sec_id: WEB,
            })
            .collect();
        assert_eq!(compile_err(&yaml, &many), CompileError::TooManyEntries);
    }

    #[test]
    fn an_endpoint_map_past_its_size_is_refused() {
        // 6 001 CIDR identities × TCP/UDP/SCTP + egress allow-all (any identity: 0, 2, 6) =
        // 18 006 keys: under the resolve bound, over one endpoint map.
        let e = compile_err(&cidr_policy(6000, "{ port: \"80\" }"), &eps()[..1]);
        assert_eq!(
            e,
            CompileError::EndpointMapFull {
                ep: 1,
                need: 18_006
            }
        );
        assert!(
            e.to_string().contains("cilium_policy_v3_00001 holds 16384"),
            "{e}"
        );
    }
}

/// A CNP object is applied and deleted whole: its `specs` parts (`name#1`, …) come and go
/// with it, so what is in force is always what its last apply said.
#[test]
fn objects_with_specs_are_replaced_and_deleted_whole() {
    let two = r#"
kind: CiliumNetworkPolicy
metadata: { name: p }
specs:
  - endpointSelector: { matchLabels: { app: web } }
    ingress: [{ fromEndpoints: [{ matchLabels: { app: client } }] }]
  - endpointSelector: { matchLabels: { app: client } }
    ingressDeny: [{ fromEndpoints: [{ matchLabels: { app: web } }] }]
"#;
    let one = r#"
kind: CiliumNetworkPolicy
metadata: { name: p }
specs:
  - endpointSelector: { matchLabels: { app: web } }
    ingress: [{ fromEndpoints: [{ matchLabels: { app: client } }] }]
"#;
    let ids =
        |st: &PolicyState| -> Vec<String> { st.policies.keys().map(|k| k.to_string()).collect() };
    let st = PolicyState::default().with_upserts(&parse_policies(two, "t").unwrap());
    assert_eq!(
        ids(&st),
        [
            "CiliumNetworkPolicy/default/p",
            "CiliumNetworkPolicy/default/p#1"
        ]
    );
    let st = st.with_upserts(&parse_policies(one, "t").unwrap());
    assert_eq!(
        ids(&st),
        ["CiliumNetworkPolicy/default/p"],
        "the old #1 part went"
    );
    let st = PolicyState::default()
        .with_upserts(&parse_policies(two, "t").unwrap())
        .with_delete("default/p")
        .unwrap();
    assert!(st.policies.is_empty(), "{:?}", ids(&st));
}
