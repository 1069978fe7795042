//! A realistic table set for the pipeline target: three local pods, a remote node with a
//! pod, every kind of service (random, Maglev with uneven and all-zero weights, ClientIP
//! affinity, NodePort TCP and UDP with local and remote backends, an external IP, no
//! backends, terminating), and CiliumNetworkPolicy, NetworkPolicy and
//! CiliumClusterwideNetworkPolicy objects with allow, deny, CIDR-with-except and L4 rules —
//! compiled by the same control plane `fastpath run` uses, in tunnel and in native routing
//! mode.

use std::sync::{Arc, OnceLock};

use control::config::Config;
use control::ct::{Conntrack, CtSizes};
use control::datapath::{Datapath, NoKernel};
use control::maps::MacAddr;
use control::shared_table::SharedTable;
use control::tables::{NextHop, Port, PortId, Tables};

pub const POD_IPS: [[u8; 4]; 3] = [[10, 1, 0, 11], [10, 1, 0, 12], [10, 1, 0, 13]];
pub const POD_MACS: [MacAddr; 3] = [
    MacAddr([0x0a, 0x58, 0, 0, 0, 11]),
    MacAddr([0x0a, 0x58, 0, 0, 0, 12]),
    MacAddr([0x0a, 0x58, 0, 0, 0, 13]),
];
pub const LXC_MACS: [MacAddr; 3] = [
    MacAddr([0x3e, 0, 0, 0, 0, 11]),
    MacAddr([0x3e, 0, 0, 0, 0, 12]),
    MacAddr([0x3e, 0, 0, 0, 0, 13]),
];
pub const ROUTER: [u8; 4] = [10, 1, 0, 1];
pub const NODE_IP: [u8; 4] = [192, 168, 50, 1];
pub const PEER_IP: [u8; 4] = [192, 168, 50, 2];
pub const OUTSIDE: [u8; 4] = [192, 168, 50, 9];
pub const EXTERNAL_IP: [u8; 4] = [192, 168, 50, 100];
pub const REMOTE_POD: [u8; 4] = [10, 2, 0, 11];
pub const NODE_MAC: MacAddr = MacAddr([0x02, 0x50, 0, 0, 0, 1]);
pub const PEER_MAC: MacAddr = MacAddr([0x02, 0x50, 0, 0, 0, 2]);
pub const REMOTE_POD_MAC: MacAddr = MacAddr([0x0a, 0x58, 0, 0, 2, 11]);
pub const NODE_PORT: u16 = 30080;
pub const NODE_PORT_UDP: u16 = 30053;
/// The port of the underlay device in the port table (after the three lxc ports).
pub const UNDERLAY: PortId = 3;

/// Every service frontend of the fixture: (address, port, protocol).
pub const FRONTENDS: &[([u8; 4], u16, u8)] = &[
    ([10, 96, 0, 10], 80, 6),
    ([10, 96, 0, 20], 80, 6),
    ([10, 96, 0, 30], 53, 17),
    ([10, 96, 0, 40], 443, 6),
    ([10, 96, 0, 50], 80, 6),
    ([10, 96, 0, 60], 80, 6),
    ([10, 96, 0, 70], 80, 6),
    (EXTERNAL_IP, 80, 6),
];

/// The fixture node's config (also a seed of the config target).
pub const CONFIG: &str = r#"
node:
  name: fz
  router_ip: 10.1.0.1
  pod_cidr: 10.1.0.0/24
  underlay: { device: eth1, address: 192.168.50.1/24 }
pods:
  - { name: a, ip: 10.1.0.11, mac: "0a:58:00:00:00:0b", lxc: lxc-a, labels: { app: a } }
  - { name: b, ip: 10.1.0.12, mac: "0a:58:00:00:00:0c", lxc: lxc-b, labels: { app: b } }
  - { name: c, namespace: prod, ip: 10.1.0.13, mac: "0a:58:00:00:00:0d", lxc: lxc-c, labels: { app: c, tier: backend } }
remote_nodes:
  - name: peer
    ip: 192.168.50.2
    pod_cidr: 10.2.0.0/24
    pods: [ { name: r, ip: 10.2.0.11, labels: { app: r } } ]
services:
  - name: maglev
    type: NodePort
    cluster_ip: 10.96.0.10
    external_ips: [192.168.50.100]
    ports: [{ port: 80, target_port: 8080, node_port: 30080 }]
    lb_algorithm: maglev
    backends: [{ ip: 10.1.0.13, weight: 100 }, { ip: 10.2.0.11, weight: 50 }]
  - name: random
    cluster_ip: 10.96.0.20
    ports: [{ port: 80, target_port: 8080 }]
    backends: [{ ip: 10.1.0.12 }, { ip: 10.1.0.13 }]
  - name: dns
    type: NodePort
    cluster_ip: 10.96.0.30
    ports: [{ port: 53, protocol: UDP, target_port: 5353, node_port: 30053 }]
    backends: [{ ip: 10.2.0.11 }]
  - name: sticky
    cluster_ip: 10.96.0.40
    ports: [{ port: 443 }]
    session_affinity: ClientIP
    session_affinity_timeout: 60
    backends: [{ ip: 10.1.0.12 }, { ip: 10.1.0.13 }]
  - name: drained
    cluster_ip: 10.96.0.50
    ports: [{ port: 80 }]
    lb_algorithm: maglev
    backends: [{ ip: 10.1.0.12, weight: 0 }, { ip: 10.2.0.11, weight: 0 }]
  - name: empty
    cluster_ip: 10.96.0.60
    ports: [{ port: 80 }]
  - name: leaving
    cluster_ip: 10.96.0.70
    ports: [{ port: 80 }]
    backends: [{ ip: 10.1.0.12, state: terminating }, { ip: 10.1.0.13, state: maintenance }]
policies:
  - kind: CiliumNetworkPolicy
    metadata: { name: c, namespace: prod }
    spec:
      endpointSelector: { matchLabels: { app: c } }
      ingress:
        - fromEndpoints: [{ matchLabels: { "k8s:io.kubernetes.pod.namespace": default, app: a } }]
          toPorts: [{ ports: [{ port: "8080", protocol: TCP }, { port: "5000", endPort: 5100, protocol: ANY }] }]
        - fromEntities: [world, remote-node]
          toPorts: [{ ports: [{ port: "8080", protocol: TCP }] }]
        - fromEndpoints: [{ matchExpressions: [{ key: app, operator: In, values: [r] }] }]
      ingressDeny:
        - fromEndpoints: [{ matchLabels: { "k8s:io.kubernetes.pod.namespace": default, app: b } }]
      egress:
        - toCIDRSet: [{ cidr: 0.0.0.0/0, except: [8.8.4.0/24] }]
        - toEntities: [cluster]
  - kind: NetworkPolicy
    metadata: { name: b, namespace: default }
    spec:
      podSelector: { matchLabels: { app: b } }
      policyTypes: [Ingress]
      ingress:
        - from:
            - podSelector: { matchLabels: { app: a } }
            - ipBlock: { cidr: 192.168.50.0/24, except: [192.168.50.9/32] }
          ports: [{ port: 8080 }, { port: 5353, protocol: UDP }, { port: 443 }]
  - kind: CiliumClusterwideNetworkPolicy
    metadata: { name: no-google-dns }
    spec:
      endpointSelector: { matchLabels: { app: a } }
      egressDeny: [{ toCIDR: [8.8.8.8/32] }]
      egress:
        - toEntities: [cluster, world]
        - toPorts: [{ ports: [{ port: "53", protocol: UDP }] }]
      ingress: [{ fromEntities: [all] }]
"#;

fn build(native: bool) -> Arc<Tables> {
    let mut text = CONFIG.to_string();
    if native {
        text += "datapath: { routing: native, native_routing_cidr: 10.0.0.0/8 }\n";
    }
    let cfg = Config::parse(&text, "fuzz fixture").expect("fixture config");
    let mut ports: Vec<Port> = cfg
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| Port::lxc(&p.lxc, 10 + i as u32, LXC_MACS[i], p.ip, 0, 1500))
        .collect();
    ports.push(Port::underlay("eth1", 20, NODE_MAC, NODE_IP.into(), 1500));
    let mut dp = Datapath::new(ports, 1, NoKernel);
    dp.load_node(&cfg).expect("fixture loads");
    dp.set_nexthops(&[(
        PEER_IP,
        Some(NextHop {
            port: UNDERLAY,
            src_mac: NODE_MAC,
            dst_mac: PEER_MAC,
            inner_dst_mac: None,
        }),
    )]);
    dp.tables()
}

/// The fixture's tables (tunnel mode, or native routing), built once.
pub fn tables(native: bool) -> &'static Arc<Tables> {
    static T: OnceLock<Arc<Tables>> = OnceLock::new();
    static N: OnceLock<Arc<Tables>> = OnceLock::new();
    if native {
        N.get_or_init(|| build(true))
    } else {
        T.get_or_init(|| build(false))
    }
}

/// The fixture's tables with empty conntrack and affinity maps, so that one fuzz input (a
/// sequence of frames) runs from a known state and reproduces alone.
pub fn fresh(native: bool) -> Tables {
    let mut t = (**tables(native)).clone();
    t.ct = Arc::new(Conntrack::new(CtSizes { tcp: 256, any: 256 }));
    t.affinity = Arc::new(SharedTable::new(64));
    t
}

/// The security identity of the remote pod, as the fixture computed it.
pub fn remote_id() -> u32 {
    static ID: OnceLock<u32> = OnceLock::new();
    *ID.get_or_init(|| {
        tables(false)
            .ipcache_v4(REMOTE_POD)
            .map_or(2, |i| i.sec_identity)
    })
}
