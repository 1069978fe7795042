//! The operator-facing inputs: the node config (parse, validate, load into a datapath),
//! policy texts (parse and compile), and control-socket requests (decode and apply). None may
//! panic, and each is bounded (the bounds themselves are unit-tested in `control`).

use std::cell::RefCell;
use std::sync::OnceLock;

use bolero::check;
use control::config::{Config, DEMO_CLUSTER};
use control::datapath::{Datapath, NoKernel};
use control::maps::MacAddr;
use control::policy::{LocalEndpoint, PolicyState};
use control::tables::Port;
use fastpath::api::{LbView, Request};
use fastpath_fuzz::Executions;
use fastpath_fuzz::mutate::TextGen;

fn config_seeds() -> &'static [String] {
    static S: OnceLock<Vec<String>> = OnceLock::new();
    S.get_or_init(|| {
        let mut v: Vec<String> = DEMO_CLUSTER.iter().map(|(_, y)| y.to_string()).collect();
        v.push(fastpath_fuzz::fixture::CONFIG.to_string());
        v.push(format!(
            "{}datapath: {{ routing: native, native_routing_cidr: 10.0.0.0/8, queues: 2, cores: [0, 1], lb_algorithm: maglev, maglev_table_size: 251 }}\n",
            fastpath_fuzz::fixture::CONFIG
        ));
        v.push("node: { name: n1, router_ip: 10.1.0.1 }\npods:\n  - { name: a, ip: 10.1.1.2, mac: \"0a:00:00:00:00:02\", lxc: lxc-a, id: 7 }\n".into());
        v
    })
}

/// Ports for a config's pods (and underlay), as the daemon would find them.
fn ports_for(cfg: &Config) -> Vec<Port> {
    let mut ports: Vec<Port> = cfg
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mac = MacAddr([0x3e, 0, 0, 0, (i >> 8) as u8, i as u8]);
            Port::lxc(&p.lxc, 10 + i as u32, mac, p.ip, 0, 1500)
        })
        .collect();
    if let Some(u) = &cfg.node.underlay {
        ports.push(Port::underlay(
            &u.device,
            9,
            MacAddr([2, 0, 0, 0, 0, 1]),
            u.address.addr,
            1500,
        ));
    }
    ports
}

#[test]
fn config() {
    let ex = Executions::new("config");
    check!()
        .with_generator(TextGen {
            seeds: config_seeds,
        })
        .for_each(|text| {
            ex.input(text.as_bytes());
            let Ok(cfg) = Config::parse(text, "fuzz.yaml") else {
                return;
            };
            assert!(
                cfg.validate().is_empty(),
                "parse returned an invalid config"
            );
            assert!(
                cfg.endpoint_ids().is_ok(),
                "a valid config's pods all get IDs"
            );
            assert_eq!(
                cfg.identities(),
                cfg.identities(),
                "identities are deterministic"
            );
            let mut dp = Datapath::new(ports_for(&cfg), 1, NoKernel);
            // May refuse (e.g. a policy past a bound), must not panic.
            let _ = dp.load_node(&cfg);
        });
}

fn policy_seeds() -> &'static [String] {
    static S: OnceLock<Vec<String>> = OnceLock::new();
    S.get_or_init(|| {
        vec![
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: web, namespace: default }
spec:
  endpointSelector: { matchLabels: { app: b } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: a } }]
      toPorts: [{ ports: [{ port: "8080", protocol: TCP }, { port: "5000", endPort: 5100 }] }]
    - fromEntities: [world, host]
      icmps: [{ fields: [{ type: 8, family: IPv4 }, { type: EchoReply }] }]
  ingressDeny: [{ fromCIDRSet: [{ cidr: 192.168.0.0/16, except: [192.168.50.0/24] }] }]
  egress: [{ toEndpoints: [{ matchExpressions: [{ key: app, operator: NotIn, values: [c] }] }] }]
"#
            .into(),
            r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: db, namespace: prod }
spec:
  podSelector: { matchLabels: { app: c } }
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: default } }
          podSelector: { matchLabels: { app: a } }
        - ipBlock: { cidr: 10.0.0.0/8, except: [10.2.0.0/16] }
      ports: [{ port: 5432, endPort: 5440, protocol: TCP }]
  egress: [{ to: [{ podSelector: {} }] }]
"#
            .into(),
            r#"kind: CiliumClusterwideNetworkPolicy
metadata: { name: cw }
specs:
  - endpointSelector: {}
    egressDeny: [{ toCIDR: [8.8.8.8/32] }]
  - endpointSelector: { matchLabels: { "k8s:app": a } }
    enableDefaultDeny: { ingress: false, egress: true }
    egress: [{ toEntities: [cluster], toPorts: [{ ports: [{ port: "53", protocol: UDP }] }] }]
---
kind: List
items:
  - kind: CiliumNetworkPolicy
    metadata: { name: l7 }
    spec:
      endpointSelector: {}
      ingress: [{ toPorts: [{ ports: [{ port: "80" }], rules: { http: [{ method: GET }] } }] }]
"#
            .into(),
        ]
    })
}

/// The fixture's pods (identity → labels) and its local endpoints, as policy sees them.
type Universe = (
    std::collections::BTreeMap<u32, Vec<String>>,
    Vec<LocalEndpoint>,
);

fn universe() -> &'static Universe {
    static U: OnceLock<Universe> = OnceLock::new();
    U.get_or_init(|| {
        let cfg = Config::parse(fastpath_fuzz::fixture::CONFIG, "fixture").unwrap();
        let pods = cfg.identity_labels();
        let (ids, _) = cfg.identities();
        let eps = ids
            .iter()
            .enumerate()
            .map(|(i, id)| LocalEndpoint {
                ep_id: i as u16 + 1,
                sec_id: *id,
            })
            .collect();
        (pods, eps)
    })
}

#[test]
fn policy() {
    let ex = Executions::new("policy");
    check!()
        .with_generator(TextGen {
            seeds: policy_seeds,
        })
        .for_each(|text| {
            ex.input(text.as_bytes());
            let Ok(ps) = control::policy::parse::parse_policies(text, "fuzz.yaml") else {
                return;
            };
            let (pods, eps) = universe();
            let mut st = PolicyState::default().with_policies(&ps);
            let Ok(c) = st.compile(eps, pods, 4096) else {
                return;
            };
            let again = PolicyState::default()
                .with_policies(&ps)
                .compile(eps, pods, 4096)
                .expect("compiles the same the second time");
            for ep in eps {
                let (a, b) = (
                    &c.tables.endpoints[&ep.ep_id],
                    &again.tables.endpoints[&ep.ep_id],
                );
                assert_eq!(a.enforced, b.enforced);
                assert_eq!(a.entries.len(), b.entries.len(), "deterministic");
                for id in pods.keys().copied().chain([0, 1, 2, 6, 1 << 24 | 1]) {
                    for (proto, port) in [(6, 80), (6, 8080), (17, 53), (1, 8), (132, 5050), (0, 0)]
                    {
                        let _ = c.tables.verdict(ep.ep_id, 0, id, proto, port);
                        let _ = c.tables.verdict(ep.ep_id, 1, id, proto, port);
                    }
                }
            }
        });
}

fn request_seeds() -> &'static [String] {
    static S: OnceLock<Vec<String>> = OnceLock::new();
    S.get_or_init(|| {
        let svcs = control::lb::parse_services(
            "[{ name: x, type: NodePort, cluster_ip: 10.96.9.1, external_ips: [192.168.50.101], ports: [{ port: 80, target_port: 8080, node_port: 30099 }, { port: 53, protocol: UDP }], session_affinity: ClientIP, lb_algorithm: maglev, backends: [{ ip: 10.1.0.12, weight: 3 }, { ip: 10.2.0.11, state: terminating }] }]",
        )
        .unwrap();
        let reqs = vec![
            Request::Status,
            Request::EndpointList,
            Request::IpcacheList,
            Request::TunnelList,
            Request::LbList {
                view: LbView::Maglev,
            },
            Request::CtList,
            Request::ServiceApply { services: svcs },
            Request::ServiceDelete {
                id: "default/random".into(),
            },
            Request::PolicyApply {
                yaml: policy_seeds()[0].clone(),
                file: "p.yaml".into(),
            },
            Request::PolicyDelete {
                id: "prod/c".into(),
            },
            Request::PolicyGet { endpoint: Some(3) },
            Request::PolicyList,
            Request::IdentityList,
            Request::IdentityGet { id: 2 },
        ];
        reqs.iter()
            .map(|r| serde_json::to_string_pretty(r).unwrap())
            .collect()
    })
}

thread_local! {
    /// A datapath with the fixture node loaded, reused across inputs (rebuilt every 256
    /// changes so that state does not pile up).
    static DP: RefCell<(Datapath<NoKernel>, u32)> = RefCell::new((fixture_datapath(), 0));
}

fn fixture_datapath() -> Datapath<NoKernel> {
    let cfg = Config::parse(fastpath_fuzz::fixture::CONFIG, "fixture").unwrap();
    let mut dp = Datapath::new(ports_for(&cfg), 1, NoKernel);
    dp.load_node(&cfg).unwrap();
    dp
}

#[test]
fn control_request() {
    let ex = Executions::new("control_request");
    check!()
        .with_generator(TextGen {
            seeds: request_seeds,
        })
        .for_each(|text| {
            ex.input(text.as_bytes());
            let Ok(req) = serde_json::from_str::<Request>(text) else {
                return;
            };
            DP.with(|cell| {
                let (dp, n) = &mut *cell.borrow_mut();
                *n += 1;
                if *n > 256 {
                    *dp = fixture_datapath();
                    *n = 0;
                }
                let g = dp.tables().generation;
                let ok = match req {
                    Request::ServiceApply { services } => {
                        let r = dp.upsert_services(&services);
                        if r.is_ok() {
                            let have: Vec<String> = dp.services().iter().map(|s| s.id()).collect();
                            assert!(services.iter().all(|s| have.contains(&s.id())));
                        }
                        r.is_ok()
                    }
                    Request::ServiceDelete { id } => dp.delete_service(&id).is_ok(),
                    Request::PolicyApply { yaml, file } => {
                        match control::policy::parse::parse_objects(&yaml, &file) {
                            Ok(objs) => {
                                let ps: Vec<_> = objs.into_iter().flat_map(|(_, p)| p).collect();
                                dp.upsert_policies(&ps).is_ok()
                            }
                            Err(_) => false,
                        }
                    }
                    Request::PolicyDelete { id } => dp.delete_policy(&id).is_ok(),
                    _ => return,
                };
                if !ok {
                    assert_eq!(
                        dp.tables().generation,
                        g,
                        "a refused change published nothing"
                    );
                }
            });
        });
}
