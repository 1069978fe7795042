//! The one C header of map layouts (`src/bpf/fp_maps.h`) against the Rust layouts: the
//! BTF of both compiled objects (as `bpftool btf dump` prints it) gives every struct's
//! size and member offsets, which must be the Rust type's `size_of` and `offset_of!`.
use std::collections::HashMap;
use std::mem::{offset_of, size_of};

use control::maps::lb::{Lb4Backend, Lb4Key, Lb4Service, RevNat4Value};
use control::maps::{EndpointInfo, EndpointKey, IpcacheKey, RemoteEndpointInfo};

use control::maps::policy::{PolicyEntry, PolicyKey};

use super::{FpBackendAddr, FpConfig, FpDev, FpLbConfig, FpNextHop, FpPort};

/// struct name → (size, member → byte offset), from `bpftool btf dump file F format raw`.
fn btf_structs(obj: &[u8], name: &str) -> HashMap<String, (usize, HashMap<String, usize>)> {
    let path = std::env::temp_dir().join(format!("fp-layouts-{}-{name}", std::process::id()));
    std::fs::write(&path, obj).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(&path)
        .args(["format", "raw"])
        .output()
        .expect("bpftool (scripts/setup.sh installs it)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut structs = HashMap::new();
    let mut cur: Option<String> = None;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        if let Some(rest) = line.strip_prefix('[') {
            cur = None;
            // [8] STRUCT 'endpoint_key' size=20 vlen=5
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.get(1) == Some(&"STRUCT") && !f[2].contains("(anon)") {
                let n = f[2].trim_matches('\'').to_string();
                let size = f[3].trim_start_matches("size=").parse().unwrap();
                structs.insert(n.clone(), (size, HashMap::new()));
                cur = Some(n);
            }
        } else if let Some(n) = &cur {
            // 'ip4' type_id=9 bits_offset=0
            let f: Vec<&str> = line.split_whitespace().collect();
            let m = f[0].trim_matches('\'').to_string();
            let bits: usize = f[2].trim_start_matches("bits_offset=").parse().unwrap();
            structs.get_mut(n).unwrap().1.insert(m, bits / 8);
        }
    }
    structs
}

type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

/// Every struct of fp_maps.h, as the Rust side lays it out (C member name → offset).
fn rust_layouts() -> Vec<Layout> {
    vec![
        (
            "endpoint_key",
            size_of::<EndpointKey>(),
            vec![
                ("ip4", offset_of!(EndpointKey, ip)),
                ("ip6_rest", offset_of!(EndpointKey, ip) + 4),
                ("family", offset_of!(EndpointKey, family)),
                ("key", offset_of!(EndpointKey, key)),
                ("cluster_id", offset_of!(EndpointKey, cluster_id)),
            ],
        ),
        (
            "endpoint_info",
            size_of::<EndpointInfo>(),
            vec![
                ("ifindex", offset_of!(EndpointInfo, ifindex)),
                ("unused", offset_of!(EndpointInfo, unused)),
                ("lxc_id", offset_of!(EndpointInfo, lxc_id)),
                ("flags", offset_of!(EndpointInfo, flags)),
                ("pad0", offset_of!(EndpointInfo, pad0)),
                ("mac", offset_of!(EndpointInfo, mac)),
                ("node_mac", offset_of!(EndpointInfo, node_mac)),
                ("sec_id", offset_of!(EndpointInfo, sec_id)),
                ("parent_ifindex", offset_of!(EndpointInfo, parent_ifindex)),
                ("pad", offset_of!(EndpointInfo, pad)),
            ],
        ),
        (
            "ipcache_key",
            size_of::<IpcacheKey>(),
            vec![
                ("prefixlen", offset_of!(IpcacheKey, prefixlen)),
                ("cluster_id", offset_of!(IpcacheKey, cluster_id)),
                ("pad1", offset_of!(IpcacheKey, pad1)),
                ("family", offset_of!(IpcacheKey, family)),
                ("ip4", offset_of!(IpcacheKey, ip)),
                ("ip6_rest", offset_of!(IpcacheKey, ip) + 4),
            ],
        ),
        (
            "remote_endpoint_info",
            size_of::<RemoteEndpointInfo>(),
            vec![
                ("sec_identity", offset_of!(RemoteEndpointInfo, sec_identity)),
                (
                    "tunnel_endpoint",
                    offset_of!(RemoteEndpointInfo, tunnel_endpoint),
                ),
                ("pad", offset_of!(RemoteEndpointInfo, pad)),
                ("key", offset_of!(RemoteEndpointInfo, key)),
                ("flags", offset_of!(RemoteEndpointInfo, flags)),
            ],
        ),
        (
            "lb4_key",
            size_of::<Lb4Key>(),
            vec![
                ("address", offset_of!(Lb4Key, address)),
                ("dport", offset_of!(Lb4Key, dport)),
                ("backend_slot", offset_of!(Lb4Key, backend_slot)),
                ("proto", offset_of!(Lb4Key, proto)),
                ("scope", offset_of!(Lb4Key, scope)),
                ("pad", offset_of!(Lb4Key, pad)),
            ],
        ),
        (
            "lb4_service",
            size_of::<Lb4Service>(),
            vec![
                ("backend_id", offset_of!(Lb4Service, word)),
                ("count", offset_of!(Lb4Service, count)),
                ("rev_nat_index", offset_of!(Lb4Service, rev_nat_index)),
                ("flags", offset_of!(Lb4Service, flags)),
                ("flags2", offset_of!(Lb4Service, flags2)),
                ("qcount", offset_of!(Lb4Service, qcount)),
            ],
        ),
        (
            "lb4_backend",
            size_of::<Lb4Backend>(),
            vec![
                ("address", offset_of!(Lb4Backend, address)),
                ("port", offset_of!(Lb4Backend, port)),
                ("proto", offset_of!(Lb4Backend, proto)),
                ("flags", offset_of!(Lb4Backend, flags)),
                ("cluster_id", offset_of!(Lb4Backend, cluster_id)),
                ("zone", offset_of!(Lb4Backend, zone)),
                ("pad", offset_of!(Lb4Backend, pad)),
            ],
        ),
        (
            "lb4_reverse_nat",
            size_of::<RevNat4Value>(),
            vec![
                ("address", offset_of!(RevNat4Value, address)),
                ("port", offset_of!(RevNat4Value, port)),
            ],
        ),
        (
            "fp_backend_addr",
            size_of::<FpBackendAddr>(),
            vec![
                ("address", offset_of!(FpBackendAddr, address)),
                ("port", offset_of!(FpBackendAddr, port)),
                ("proto", offset_of!(FpBackendAddr, proto)),
                ("pad", offset_of!(FpBackendAddr, pad)),
            ],
        ),
        (
            "fp_config",
            size_of::<FpConfig>(),
            vec![
                ("mode", offset_of!(FpConfig, mode)),
                ("tunnel_port", offset_of!(FpConfig, tunnel_port)),
                ("pad", offset_of!(FpConfig, pad)),
                ("native_net", offset_of!(FpConfig, native_net)),
                ("native_mask", offset_of!(FpConfig, native_mask)),
                ("node_ip", offset_of!(FpConfig, node_ip)),
                ("underlay_mtu", offset_of!(FpConfig, underlay_mtu)),
                ("router_ip", offset_of!(FpConfig, router_ip)),
                ("pad2", offset_of!(FpConfig, pad2)),
            ],
        ),
        (
            "fp_lb_config",
            size_of::<FpLbConfig>(),
            vec![("default_alg", offset_of!(FpLbConfig, default_alg))],
        ),
        (
            "fp_port",
            size_of::<FpPort>(),
            vec![
                ("ifindex", offset_of!(FpPort, ifindex)),
                ("mac", offset_of!(FpPort, mac)),
                ("pad", offset_of!(FpPort, pad)),
            ],
        ),
        (
            "fp_nexthop",
            size_of::<FpNextHop>(),
            vec![
                ("ifindex", offset_of!(FpNextHop, ifindex)),
                ("dst_mac", offset_of!(FpNextHop, dst_mac)),
                ("src_mac", offset_of!(FpNextHop, src_mac)),
                ("inner_dst_mac", offset_of!(FpNextHop, inner_dst_mac)),
                ("flags", offset_of!(FpNextHop, flags)),
                ("pad", offset_of!(FpNextHop, pad)),
            ],
        ),
        (
            "policy_key",
            size_of::<PolicyKey>(),
            vec![
                ("prefixlen", offset_of!(PolicyKey, prefixlen)),
                ("sec_label", offset_of!(PolicyKey, sec_label)),
                ("egress", offset_of!(PolicyKey, egress)),
                ("protocol", offset_of!(PolicyKey, protocol)),
                ("dport", offset_of!(PolicyKey, dport)),
            ],
        ),
        (
            "policy_entry",
            size_of::<PolicyEntry>(),
            vec![
                ("proxy_port", offset_of!(PolicyEntry, proxy_port)),
                ("flags", offset_of!(PolicyEntry, flags)),
                ("auth_type", offset_of!(PolicyEntry, auth)),
                ("precedence", offset_of!(PolicyEntry, precedence)),
                ("cookie", offset_of!(PolicyEntry, cookie)),
            ],
        ),
        (
            "fp_dev",
            size_of::<FpDev>(),
            vec![
                ("slot", offset_of!(FpDev, slot)),
                ("role", offset_of!(FpDev, role)),
            ],
        ),
        ("fp_line", control::tables::shm::LINE, vec![("w", 0)]),
    ]
}

/// Each object holds the structs it uses, laid out as the Rust side has them: size, member
/// set and every member's offset.
#[test]
fn the_c_header_and_the_rust_layouts_agree() {
    for (obj, name, must) in [
        (
            super::FP_XDP_OBJ,
            "xdp",
            &["endpoint_key", "lb4_key", "fp_config", "fp_dev"][..],
        ),
        (
            super::FP_TC_OBJ,
            "tc",
            &[
                "endpoint_key",
                "endpoint_info",
                "ipcache_key",
                "remote_endpoint_info",
                "lb4_key",
                "lb4_service",
                "lb4_backend",
                "lb4_reverse_nat",
                "fp_backend_addr",
                "fp_config",
                "fp_dev",
                "fp_line",
                "fp_nexthop",
            ][..],
        ),
    ] {
        let btf = btf_structs(obj, name);
        let rust = rust_layouts();
        for m in must {
            assert!(
                btf.contains_key(*m),
                "{name}: struct {m} is not in the object's BTF"
            );
        }
        let mut checked = 0;
        for (s, size, members) in &rust {
            let Some((csize, cmembers)) = btf.get(*s) else {
                continue;
            };
            assert_eq!(csize, size, "{name}: size of struct {s}");
            let want: HashMap<String, usize> =
                members.iter().map(|(m, o)| (m.to_string(), *o)).collect();
            assert_eq!(cmembers, &want, "{name}: members of struct {s} (C vs Rust)");
            checked += 1;
        }
        assert!(checked >= must.len(), "{name}: {checked} structs checked");
    }
}

/// Every counter slot of `fp_tc_stats` has a name in `TC_STAT_NAMES` (a slot added in C
/// without its name would be counted and never shown).
#[test]
fn every_tc_counter_has_a_name() {
    let obj = aya_obj::Object::parse(super::FP_TC_OBJ).expect("the tc object parses");
    let stats = obj.maps.get("fp_tc_stats").expect("fp_tc_stats");
    assert_eq!(
        stats.max_entries() as usize,
        super::TC_STAT_NAMES.len(),
        "fp_tc.c TC_STAT_MAX vs xdp-redirect TC_STAT_NAMES"
    );
}
