//! What was applied at run time survives a restart or a crash.
//!
//! Services and policies applied over the control socket (`service apply|delete`,
//! `policy apply|delete`) are kept as an *overlay on the config*: the services and policy
//! objects applied at run time (by id; the last apply wins), and the ids deleted at run
//! time. On start, after the config's own services and policies, `fastpath run` replays the
//! overlay — upserts, then deletions — before any device is attached, so an endpoint that
//! only a runtime policy protects is never served unprotected. A config edited between two
//! runs still counts: what the overlay does not name comes from the config.
//!
//! # Rules
//! - The file is `<state dir>/runtime.json` (default state dir `/var/lib/fastpath/<node>`,
//!   mode 0700; the file 0600, root's). It is replaced atomically: a new file is written
//!   beside it, flushed to disk (fsync), renamed over it, and the directory flushed. A crash at
//!   any instant leaves either the old or the new state, never a torn one.
//! - A runtime change is answered "applied" only once it is on disk: if persisting fails the
//!   change is rolled back in the datapath and the error says why.
//! - A state file that cannot be read, parsed or replayed stops `fastpath run` before
//!   anything is attached, naming the file and the problem; removing the file starts from the
//!   config alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use control::config::Config;
use control::lb::ServiceConfig;
use control::policy::Policy;
use serde::{Deserialize, Serialize};

/// The layout version of `runtime.json`.
pub const VERSION: u32 = 1;
/// Largest state file written or read back: a change that would make it larger is refused
/// (and taken back), so a node can always restart from its state.
pub const MAX_STATE_BYTES: usize = 64 << 20;

/// The default state directory of a node.
pub fn default_dir(node: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/fastpath/{node}"))
}

/// The runtime overlay on the config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeState {
    pub version: u32,
    /// The node it belongs to (a state dir shared by mistake is refused).
    pub node: String,
    /// Services applied at run time, by `namespace/name`.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Services deleted at run time.
    pub services_deleted: BTreeSet<String>,
    /// Policy objects applied at run time, by object id (`Kind/namespace/name`): what
    /// enforcement reads of them (`apiVersion`, `kind`, `metadata` name/namespace/labels,
    /// `spec`/`specs`), not their status or annotations.
    pub policies: BTreeMap<String, serde_json::Value>,
    /// Ids of the config's policy objects deleted at run time.
    pub policies_deleted: BTreeSet<String>,
    /// Endpoints added at run time, by `namespace/name`, with the endpoint ID they got.
    #[serde(default)]
    pub endpoints: BTreeMap<String, control::config::PodConfig>,
    /// The security identity each of those endpoints had, by `namespace/name`: taken again
    /// on restore (when still free for its labels), so a restart renumbers nothing that
    /// other nodes, conntrack or policy counters know it by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub identities: BTreeMap<String, u32>,
}

impl RuntimeState {
    /// Nothing applied yet, for `node`.
    pub fn new(node: &str) -> RuntimeState {
        RuntimeState {
            version: VERSION,
            node: node.into(),
            ..Default::default()
        }
    }

    /// Is there anything to replay?
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.services_deleted.is_empty()
            && self.policies.is_empty()
            && self.policies_deleted.is_empty()
            && self.endpoints.is_empty()
    }

    /// Record services applied at run time.
    pub fn upsert_services(&mut self, svcs: &[ServiceConfig]) {
        for s in svcs {
            self.services_deleted.remove(&s.id());
            self.services.insert(s.id(), s.clone());
        }
    }

    /// Record a service deleted at run time (`in_config`: the config defines it, so the
    /// deletion must be remembered; otherwise forgetting the applied one is all).
    pub fn delete_service(&mut self, id: &str, in_config: bool) {
        self.services.remove(id);
        if in_config {
            self.services_deleted.insert(id.into());
        }
    }

    /// Record policy objects applied at run time (each with the policies it made).
    pub fn upsert_policies(&mut self, objects: &[(serde_json::Value, Vec<Policy>)]) {
        for (obj, ps) in objects {
            let Some(first) = ps.first() else { continue };
            let id = first.id.object().to_string();
            self.policies_deleted.remove(&id);
            self.policies.insert(id, essentials(obj));
        }
    }

    /// Record the policy objects a run-time delete removed (their object ids), remembering
    /// the deletion only for those the config defines (`in_config`).
    pub fn delete_policies(&mut self, removed: &[String], in_config: impl Fn(&str) -> bool) {
        for id in removed {
            self.policies.remove(id);
            if in_config(id) {
                self.policies_deleted.insert(id.clone());
            }
        }
    }

    /// The services in force after replaying the overlay on `cfg`.
    pub fn services_over(&self, cfg: &Config) -> Vec<ServiceConfig> {
        let mut all: BTreeMap<String, ServiceConfig> =
            cfg.services.iter().map(|s| (s.id(), s.clone())).collect();
        for (id, s) in &self.services {
            all.insert(id.clone(), s.clone());
        }
        for id in &self.services_deleted {
            all.remove(id);
        }
        all.into_values().collect()
    }

    /// The policies in force after replaying the overlay on `cfg`'s.
    ///
    /// # Errors
    /// A stored object no longer parses (a bound or a supported field changed).
    pub fn policies_over(&self, cfg: &Config) -> anyhow::Result<Vec<Policy>> {
        // Objects whole: a config object the overlay replaces or deletes loses every part.
        let mut all: BTreeMap<String, Policy> = cfg
            .policies()?
            .into_iter()
            .filter(|p| {
                let o = p.id.object().to_string();
                !self.policies.contains_key(&o) && !self.policies_deleted.contains(&o)
            })
            .map(|p| (p.id.to_string(), p))
            .collect();
        let objects: Vec<serde_json::Value> = self.policies.values().cloned().collect();
        for p in control::policy::parse::parse_values(&objects, "runtime state")? {
            all.insert(p.id.to_string(), p);
        }
        Ok(all.into_values().collect())
    }
}

/// What of a policy object is kept: the fields enforcement reads. A `status` or annotations
/// (which a tool may fill with megabytes) are not persisted.
fn essentials(obj: &serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for k in ["apiVersion", "kind", "spec", "specs"] {
        if let Some(v) = obj.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut meta = serde_json::Map::new();
    for k in ["name", "namespace", "labels"] {
        if let Some(v) = obj.get("metadata").and_then(|m| m.get(k)) {
            meta.insert(k.into(), v.clone());
        }
    }
    out.insert("metadata".into(), serde_json::Value::Object(meta));
    serde_json::Value::Object(out)
}

/// The runtime state of one node on disk.
#[derive(Debug)]
pub struct StateFile {
    dir: PathBuf,
    pub state: RuntimeState,
}

impl StateFile {
    /// `<dir>/runtime.json`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("runtime.json")
    }

    /// Open the state of `node` in `dir` (created 0700 if missing); an absent file is an
    /// empty state.
    ///
    /// # Errors
    /// The directory cannot be made, or the file cannot be read or parsed, or belongs to
    /// another node or layout version.
    pub fn open(dir: &Path, node: &str) -> anyhow::Result<StateFile> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let mut f = StateFile {
            dir: dir.to_path_buf(),
            state: RuntimeState::new(node),
        };
        let path = f.path();
        let bytes = match read_at_most(&path, MAX_STATE_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(f),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let st: RuntimeState = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{}: not a fastpath runtime state (remove it to start from the config alone)",
                path.display()
            )
        })?;
        if st.version != VERSION {
            bail!(
                "{}: layout version {}, this fastpath reads {VERSION} (remove it to start from the config alone)",
                path.display(),
                st.version
            );
        }
        if st.node != node {
            bail!(
                "{}: the runtime state of node `{}`, not `{node}` (each node needs its own --state-dir)",
                path.display(),
                st.node
            );
        }
        f.state = st;
        Ok(f)
    }

    /// Replace the file with `next` atomically; `self.state` becomes `next` only if that
    /// worked.
    ///
    /// # Errors
    /// Any write, flush or rename failure (the old file is then still in place).
    pub fn save(&mut self, next: RuntimeState) -> anyhow::Result<()> {
        let path = self.path();
        let tmp = self.dir.join("runtime.json.tmp");
        let body = serde_json::to_vec(&next).expect("state serializes");
        if body.len() > MAX_STATE_BYTES {
            bail!(
                "the runtime state would be {} bytes, more than the {MAX_STATE_BYTES} a state file may have: delete services or policies applied at run time first",
                body.len()
            );
        }
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().with_context(|| format!("writing {}", path.display()))?;
        self.state = next;
        Ok(())
    }
}

fn read_at_most(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let mut c = Config::default_node();
        c.services = control::lb::parse_services(
            "[{ name: a, cluster_ip: 10.96.1.1, ports: [{ port: 80 }] }, { name: b, cluster_ip: 10.96.1.2, ports: [{ port: 80 }] }]",
        )
        .unwrap();
        c
    }

    fn svc(name: &str, vip: &str) -> ServiceConfig {
        control::lb::parse_services(&format!(
            "{{ name: {name}, cluster_ip: {vip}, ports: [{{ port: 81 }}] }}"
        ))
        .unwrap()
        .remove(0)
    }

    #[test]
    fn overlay_replays_upserts_then_deletes_over_the_config() {
        let c = cfg();
        let mut st = RuntimeState::new("demo");
        st.upsert_services(&[svc("a", "10.96.1.9"), svc("c", "10.96.1.3")]);
        st.delete_service("default/b", true);
        // Deleting what only a run-time apply made is forgetting it, not a record that grows.
        st.upsert_services(&[svc("tmp", "10.96.1.5")]);
        st.delete_service("default/tmp", false);
        assert!(!st.services.contains_key("default/tmp"));
        assert!(!st.services_deleted.contains("default/tmp"));
        let ids: Vec<String> = st.services_over(&c).iter().map(|s| s.id()).collect();
        assert_eq!(ids, ["default/a", "default/c"]);
        assert_eq!(
            st.services_over(&c)[0].cluster_ip.to_string(),
            "10.96.1.9",
            "the runtime apply wins over the config"
        );
        // Applied again after a delete: back.
        st.upsert_services(&[svc("b", "10.96.1.2")]);
        assert_eq!(st.services_over(&c).len(), 3);
        let text = "kind: CiliumNetworkPolicy\nmetadata: { name: p, annotations: { big: xxxxxxxx } }\nspecs:\n  - endpointSelector: {}\n    ingress: [{}]\n  - endpointSelector: {}\n    egress: [{}]\nstatus: { a: b }\n";
        let objs = control::policy::parse::parse_objects(text, "t").unwrap();
        st.upsert_policies(&objs);
        assert_eq!(
            st.policies_over(&c).unwrap().len(),
            2,
            "both parts of the object"
        );
        let kept = &st.policies["CiliumNetworkPolicy/default/p"];
        assert!(kept.get("status").is_none() && kept["metadata"].get("annotations").is_none());
        st.delete_policies(&["CiliumNetworkPolicy/default/p".into()], |_| false);
        assert!(st.policies_over(&c).unwrap().is_empty());
        assert!(st.policies.is_empty() && st.policies_deleted.is_empty());
    }

    #[test]
    fn saved_atomically_private_bounded_and_read_back() {
        let dir = std::env::temp_dir().join(format!("fp-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = StateFile::open(&dir, "demo").unwrap();
        assert!(f.state.is_empty());
        let mut next = f.state.clone();
        next.upsert_services(&[svc("z", "10.96.1.26")]);
        f.save(next.clone()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f.path()), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert!(!dir.join("runtime.json.tmp").exists());
        assert_eq!(StateFile::open(&dir, "demo").unwrap().state, next);
        let e = StateFile::open(&dir, "other").unwrap_err().to_string();
        assert!(
            e.contains("the runtime state of node `demo`, not `other`"),
            "{e}"
        );
        // Past the bound: refused, the file and the state as they were.
        let mut huge = next.clone();
        let pad = "x".repeat(1 << 20);
        for i in 0..(MAX_STATE_BYTES >> 20) + 1 {
            let mut s = svc(&format!("h{i}"), "10.96.2.1");
            s.namespace = format!("{pad}{i}");
            huge.services.insert(format!("{i}"), s);
        }
        let e = f.save(huge).unwrap_err().to_string();
        assert!(
            e.contains("more than the 67108864 a state file may have"),
            "{e}"
        );
        assert_eq!(f.state, next);
        assert_eq!(StateFile::open(&dir, "demo").unwrap().state, next);
        std::fs::write(f.path(), b"{ torn").unwrap();
        let e = format!("{:#}", StateFile::open(&dir, "demo").unwrap_err());
        assert!(e.contains("not a fastpath runtime state"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
