//! fastpath: Cilium's pod datapath in userspace, on pinned cores fed by AF_XDP.
//!
//! Layers (dependencies point one way): [`wire`] (packet views) ← [`stage`] (the pipeline,
//! pure functions over byte buffers and `&Tables`) ← [`worker`] (pinned poll loop: RX →
//! stages → TX) ← [`xsk`] (UMEM and rings: the only `unsafe`). [`daemon`] wires a node
//! together (config → XDP attach → sockets → workers → control socket); [`api`] is the
//! control-socket protocol the CLI speaks; [`lab`] builds namespace topologies for the demo,
//! tests and benchmarks.
#![deny(unsafe_code)]

pub mod api;
pub mod cluster;
pub mod daemon;
pub mod endpoints;
/// Test fixtures (unit tests; `bench/` and other datapaths with the `fixtures` feature).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod guard;
pub mod k8s;
pub mod kvstore;
pub mod metrics;
pub mod neigh;
pub mod server;
pub mod sources;
pub mod stage;
pub mod state;
pub mod stats;
pub mod views;
pub mod wire;
pub mod worker;
pub mod xsk;

/// The layering docs/architecture.md promises, checked on the sources themselves.
#[cfg(test)]
mod layering {
    use std::path::Path;

    fn sources(dir: &str) -> Vec<(String, String)> {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
        let mut v: Vec<(String, String)> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .map(|p| {
                (
                    p.file_stem().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// `wire` depends on nothing above it: only `abi` (MAC type) and itself.
    #[test]
    fn wire_depends_on_nothing_above_it() {
        for (f, text) in sources("wire") {
            for bad in [
                "control::",
                "crate::stage",
                "crate::worker",
                "crate::xsk",
                "crate::daemon",
            ] {
                assert!(!text.contains(bad), "wire/{f}.rs uses {bad}");
            }
        }
    }

    /// The dataplane (`stage/`, `worker.rs`, `stats.rs`, `xsk/`, `wire/`) uses the layers
    /// below it — `abi` and `tables` — and nothing of the control plane (config, identity
    /// allocation, the writer, kernel maps) or the agent.
    #[test]
    fn the_dataplane_uses_only_abi_and_tables() {
        let mut files: Vec<(String, String)> = Vec::new();
        for dir in ["stage", "xsk", "wire"] {
            files.extend(
                sources(dir)
                    .into_iter()
                    .filter(|(f, _)| f != "tests")
                    .map(|(f, t)| (format!("{dir}/{f}.rs"), t)),
            );
        }
        for f in ["worker.rs", "stats.rs"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(f);
            files.push((f.into(), std::fs::read_to_string(p).unwrap()));
        }
        assert!(files.len() > 20, "{} files", files.len());
        for (f, text) in files {
            // Code only, and not the unit tests (they build nodes from configs).
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for bad in [
                    "control::",
                    "crate::daemon",
                    "crate::endpoints",
                    "crate::server",
                    "crate::api",
                    "crate::views",
                ] {
                    assert!(!line.contains(bad), "{f} uses {bad}: {line}");
                }
            }
        }
        // And the tables crate depends on abi alone among fastpath's crates.
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/tables/Cargo.toml"),
        )
        .unwrap();
        let deps = manifest
            .split("[dependencies]")
            .nth(1)
            .unwrap()
            .split("\n[")
            .next()
            .unwrap();
        for bad in ["control", "fastpath", "xdp-redirect", "aya", "lab"] {
            assert!(
                !deps.lines().any(|l| l.starts_with(bad)),
                "tables depends on {bad}"
            );
        }
    }

    /// The pipeline's step files call only down the order of stage/mod.rs's table: no
    /// cycles between steps.
    #[test]
    fn stage_steps_call_only_downward() {
        // Lowest first: a file may use the ones before it (and mod.rs's Verdict/Scratch).
        let order = [
            "flow",
            "policy",
            "ct",
            "icmp",
            "forward",
            "lb",
            "to_container",
            "nodeport",
            "from_overlay",
            "from_container",
            "from_netdev",
        ];
        for (f, text) in sources("stage") {
            let Some(me) = order.iter().position(|o| *o == f) else {
                continue; // mod.rs, tests.rs
            };
            // Code only: doc comments may point anywhere.
            let text: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for (i, other) in order.iter().enumerate() {
                let used = text.contains(&format!("super::{other}"))
                    || text
                        .lines()
                        .filter(|l| l.starts_with("use super::{"))
                        .any(|l| {
                            l.trim_end_matches("};")
                                .split([',', '{', ' '])
                                .any(|w| w == *other)
                        });
                if used && *other != f {
                    assert!(i < me, "stage/{f}.rs uses {other}, which is not below it");
                }
            }
        }
    }
}
