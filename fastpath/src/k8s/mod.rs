//! `source: kubernetes`: the node's watch of the Kubernetes API, as Cilium's agent keeps
//! informers on it.
//!
//! One thread (`fp-k8s`, a single-threaded tokio runtime for kube-rs) runs one watcher per
//! kind — Nodes, CiliumNodes, Pods, Services, EndpointSlices, NetworkPolicies,
//! CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies — with kube-rs's informer semantics: list, then watch
//! from the list's `resourceVersion` with bookmarks; a watch that ends is resumed from the
//! last version seen; `410 Gone` (the version is too old) relists. Objects are received
//! untyped and decoded one by one, so an object that does not decode is reported with its
//! name and the rest are taken. A relist replaces the kind's cache whole when it completes.
//! After every change (coalesced over 20 ms) the whole derived view ([`objects::view`]) goes
//! to the control loop, which diffs it with what is in force: an event seen twice, or a
//! relist, cannot apply anything twice.
//!
//! The node waits at start until every kind has been listed once (`kubernetes.connect_timeout`).
//! A kind the API server does not serve (no Cilium CRDs installed: 404) counts as listed and
//! empty, and is said in `fastpath status`.

pub mod objects;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::config::KubernetesConfig;
use crossbeam_channel::Sender;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};

use crate::kvstore::schema::View;
use crate::sources::{Batch, Intent};

/// Changes seen within this long are sent as one view.
const COALESCE: Duration = Duration::from_millis(20);
/// The most objects of the watched kinds held together; past it no view is sent (the last
/// stays in force) and the error is shown.
pub const MAX_OBJECTS: usize = 1 << 20;

/// The kinds watched, in the order `fastpath status` lists them.
pub const KINDS: [&str; 8] = [
    "Node",
    "CiliumNode",
    "Pod",
    "Service",
    "EndpointSlice",
    "NetworkPolicy",
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
];

/// One kind's watcher, for `fastpath status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KindStatus {
    pub kind: String,
    /// Objects in the cache.
    pub objects: usize,
    /// Listed at least once (or not served by the API server).
    pub synced: bool,
    /// The API server does not serve it (404).
    pub not_served: bool,
    /// Lists after the first (a watch that could not be resumed, e.g. 410 Gone).
    pub relists: u64,
    pub events: u64,
}

/// The watch's state for `fastpath status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct K8sStatus {
    pub api_server: String,
    /// Every kind listed, and no error since the last event (a watch that resumes after
    /// an error shows it at its next event).
    pub connected: bool,
    pub last_error: Option<String>,
    /// Seconds since `last_error`.
    #[serde(default)]
    pub last_error_secs: Option<u64>,
    pub errors: u64,
    pub kinds: Vec<KindStatus>,
    pub views: u64,
    /// Other nodes and their pods in the view; services and policy objects.
    pub nodes: usize,
    pub remote_pods: usize,
    pub services: usize,
    pub policies: usize,
    /// Objects skipped in the last view, each with its kind, name and why (at most 16).
    pub problems: Vec<String>,
}

#[derive(Debug, Default)]
struct Shared {
    status: Mutex<K8sStatus>,
    synced: Mutex<Option<View>>,
    last_error_at: Mutex<Option<Instant>>,
    /// The problems already said in the log (each is said once while it lasts).
    logged: Mutex<Vec<String>>,
}

/// The handle the daemon holds.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    shared: Arc<Shared>,
}

impl Kubernetes {
    /// Start watching for node `node`; views go to `views`.
    ///
    /// # Errors
    /// A token file that cannot be read, or no thread.
    pub fn start(
        cfg: &KubernetesConfig,
        node: &str,
        views: Sender<Batch>,
    ) -> anyhow::Result<Kubernetes> {
        use anyhow::Context;
        let uri: http::Uri = cfg
            .api_server
            .parse()
            .with_context(|| format!("kubernetes.api_server `{}`", cfg.api_server))?;
        let mut kc = kube::Config::new(uri);
        kc.connect_timeout = Some(Duration::from_secs(5));
        // Watches stay open for minutes: no read timeout (kube-rs sets none for watches).
        kc.read_timeout = Some(Duration::from_secs(300));
        if let Some(f) = &cfg.token_file {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("kubernetes.token_file {}", f.display()))?;
            kc.auth_info.token = Some(t.trim().to_string().into());
        }
        let shared = Arc::new(Shared::default());
        {
            let mut st = shared.status.lock().expect("fresh");
            st.api_server = cfg.api_server.clone();
            st.kinds = KINDS
                .iter()
                .map(|k| KindStatus {
                    kind: (*k).into(),
                    ..Default::default()
                })
                .collect();
        }
        let sh = shared.clone();
        let node = node.to_string();
        crate::sources::spawn_async("fp-k8s", move || run(kc, node, views, sh))?;
        Ok(Kubernetes { shared })
    }

    /// Wait until every kind has been listed once (or `timeout`): the view then.
    ///
    /// # Errors
    /// Not listed in time, with the last error.
    pub fn wait_synced(&self, timeout: Duration) -> anyhow::Result<View> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.shared.synced.lock().expect("not poisoned").clone() {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let st = self.status();
                let missing: Vec<&str> = st
                    .kinds
                    .iter()
                    .filter(|k| !k.synced)
                    .map(|k| k.kind.as_str())
                    .collect();
                anyhow::bail!(
                    "kubernetes: {} not listed from {} within {} s (kubernetes.connect_timeout): {}",
                    missing.join(", "),
                    st.api_server,
                    timeout.as_secs(),
                    st.last_error.as_deref().unwrap_or("no answer")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn status(&self) -> K8sStatus {
        let mut s = self.shared.status.lock().expect("not poisoned").clone();
        s.last_error_secs = self
            .shared
            .last_error_at
            .lock()
            .expect("not poisoned")
            .map(|t| t.elapsed().as_secs());
        s
    }
}

/// The resource of each kind (the Cilium CRDs by their group, version and plural).
fn resource(kind: &str) -> ApiResource {
    match kind {
        "Node" => ApiResource::erase::<Node>(&()),
        "Pod" => ApiResource::erase::<Pod>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "EndpointSlice" => ApiResource::erase::<EndpointSlice>(&()),
        "NetworkPolicy" => ApiResource::erase::<NetworkPolicy>(&()),
        crd => ApiResource {
            group: "cilium.io".into(),
            version: "v2".into(),
            api_version: "cilium.io/v2".into(),
            kind: crd.into(),
            plural: match crd {
                "CiliumNode" => "ciliumnodes".into(),
                "CiliumNetworkPolicy" => "ciliumnetworkpolicies".into(),
                _ => "ciliumclusterwidenetworkpolicies".into(),
            },
        },
    }
}

async fn run(kc: kube::Config, node: String, views: Sender<Batch>, shared: Arc<Shared>) {
    let client = match kube::Client::try_from(kc) {
        Ok(c) => c,
        Err(e) => {
            let mut st = shared.status.lock().expect("not poisoned");
            st.last_error = Some(format!("client: {e}"));
            st.errors += 1;
            return;
        }
    };
    let streams = KINDS.iter().enumerate().map(|(i, kind)| {
        let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &resource(kind));
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |e| (i, e))
            .boxed()
    });
    let mut all = futures::stream::select_all(streams);
    let mut caches = objects::Caches::default();
    let mut init: BTreeMap<usize, Vec<DynamicObject>> = BTreeMap::new();
    // The first change not yet in a sent view: a view goes at most COALESCE after it,
    // however busy the watchers are.
    let mut dirty: Option<Instant> = None;
    let mut last_sent: Option<View> = None;
    let mut revision: i64 = 0;
    loop {
        let next = if let Some(since) = dirty {
            let left = COALESCE.saturating_sub(since.elapsed());
            match tokio::time::timeout(left, all.next()).await {
                Ok(n) => n,
                Err(_) => {
                    // COALESCE after the first unsent change: send the view (if every
                    // kind is listed); a full channel is tried again in 100 ms.
                    if flush(&caches, &node, revision, &views, &shared, &mut last_sent) {
                        dirty = None;
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            }
        } else {
            all.next().await
        };
        let Some((i, ev)) = next else { return };
        let kind = KINDS[i];
        match ev {
            Ok(watcher::Event::Init) => {
                init.insert(i, Vec::new());
                let mut st = shared.status.lock().expect("not poisoned");
                if st.kinds[i].synced {
                    st.kinds[i].relists += 1;
                }
            }
            Ok(watcher::Event::InitApply(o)) => init.entry(i).or_default().push(o),
            Ok(watcher::Event::InitDone) => {
                let objs = init.remove(&i).unwrap_or_default();
                clear_kind(&mut caches, kind);
                for o in objs {
                    apply(&mut caches, kind, o, false);
                }
                let mut st = shared.status.lock().expect("not poisoned");
                st.kinds[i].synced = true;
                st.kinds[i].not_served = false;
                dirty.get_or_insert_with(Instant::now);
            }
            Ok(watcher::Event::Apply(o)) => {
                apply(&mut caches, kind, o, false);
                dirty.get_or_insert_with(Instant::now);
            }
            Ok(watcher::Event::Delete(o)) => {
                apply(&mut caches, kind, o, true);
                dirty.get_or_insert_with(Instant::now);
            }
            Err(e) => {
                let not_served = matches!(
                    &e,
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404
                );
                let mut st = shared.status.lock().expect("not poisoned");
                st.errors += 1;
                if not_served {
                    // No such resource (the Cilium CRDs not installed): none of them.
                    if !st.kinds[i].not_served {
                        eprintln!(
                            "fastpath: kubernetes: {kind} is not served by the API server (404): taken as none"
                        );
                    }
                    st.kinds[i].not_served = true;
                    st.kinds[i].synced = true;
                    dirty.get_or_insert_with(Instant::now);
                } else {
                    let msg = format!("{kind}: {e}");
                    if st.last_error.as_deref() != Some(&msg) {
                        eprintln!("fastpath: kubernetes: {msg} (retrying)");
                    }
                    st.last_error = Some(msg);
                    st.connected = false;
                    *shared.last_error_at.lock().expect("not poisoned") = Some(Instant::now());
                }
                continue;
            }
        }
        revision += 1;
        let mut st = shared.status.lock().expect("not poisoned");
        st.connected = st.kinds.iter().all(|k| k.synced);
        st.kinds[i].events += 1;
        st.kinds[i].objects = count(&caches, kind);
    }
}

fn count(c: &objects::Caches, kind: &str) -> usize {
    match kind {
        "Node" => c.nodes.len(),
        "Pod" => c.pods.len(),
        "Service" => c.services.len(),
        "EndpointSlice" => c.slices.len(),
        "CiliumNode" => c.cilium_nodes.len(),
        k => c
            .policies
            .keys()
            .filter(|p| p.starts_with(&format!("{k}/")))
            .count(),
    }
}

fn clear_kind(c: &mut objects::Caches, kind: &str) {
    let pre = format!("{kind}/");
    c.undecodable.retain(|k, _| !k.starts_with(&pre));
    match kind {
        "Node" => c.nodes.clear(),
        "Pod" => c.pods.clear(),
        "Service" => c.services.clear(),
        "EndpointSlice" => c.slices.clear(),
        "CiliumNode" => c.cilium_nodes.clear(),
        _ => c.policies.retain(|k, _| !k.starts_with(&pre)),
    }
}

/// Take (or with `delete`, drop) one object into the caches, decoding it as its kind; one
/// that does not decode is recorded with why and left out.
fn apply(c: &mut objects::Caches, kind: &str, o: DynamicObject, delete: bool) {
    let name = match &o.metadata.namespace {
        Some(ns) => format!("{ns}/{}", o.metadata.name.as_deref().unwrap_or("")),
        None => o.metadata.name.clone().unwrap_or_default(),
    };
    let full = format!("{kind}/{name}");
    c.undecodable.remove(&full);
    let mut value = match serde_json::to_value(&o) {
        Ok(v) => v,
        Err(e) => {
            c.undecodable.insert(full, e.to_string());
            return;
        }
    };
    if let Some(m) = value.as_object_mut() {
        let ar = resource(kind);
        m.entry("apiVersion")
            .or_insert_with(|| ar.api_version.clone().into());
        m.entry("kind").or_insert_with(|| kind.into());
    }
    fn put<T: serde::de::DeserializeOwned>(
        map: &mut BTreeMap<String, T>,
        bad: &mut BTreeMap<String, String>,
        full: String,
        name: String,
        v: serde_json::Value,
        delete: bool,
    ) {
        if delete {
            map.remove(&name);
            return;
        }
        match serde_json::from_value::<T>(v) {
            Ok(t) => {
                map.insert(name, t);
            }
            Err(e) => {
                map.remove(&name);
                bad.insert(full, format!("not a valid object: {e}"));
            }
        }
    }
    match kind {
        "Node" => put(&mut c.nodes, &mut c.undecodable, full, name, value, delete),
        "Pod" => put(&mut c.pods, &mut c.undecodable, full, name, value, delete),
        "Service" => put(
            &mut c.services,
            &mut c.undecodable,
            full,
            name,
            value,
            delete,
        ),
        "EndpointSlice" => put(&mut c.slices, &mut c.undecodable, full, name, value, delete),
        "CiliumNode" => {
            if delete {
                c.cilium_nodes.remove(&name);
            } else {
                c.cilium_nodes.insert(name, value);
            }
        }
        _ => {
            if delete {
                c.policies.remove(&full);
            } else {
                c.policies.insert(full, value);
            }
        }
    }
}

/// Send the view if every kind is listed and it changed. False if it could not be sent
/// (the channel is full): the caller tries again.
fn flush(
    caches: &objects::Caches,
    node: &str,
    revision: i64,
    views: &Sender<Batch>,
    shared: &Shared,
    last_sent: &mut Option<View>,
) -> bool {
    {
        let st = shared.status.lock().expect("not poisoned");
        if !st.kinds.iter().all(|k| k.synced) {
            return true; // not yet: the first view waits for every list
        }
    }
    let total = caches.nodes.len()
        + caches.cilium_nodes.len()
        + caches.pods.len()
        + caches.services.len()
        + caches.slices.len()
        + caches.policies.len();
    if total > MAX_OBJECTS {
        let mut st = shared.status.lock().expect("not poisoned");
        let msg = format!(
            "{total} objects, more than the {MAX_OBJECTS} this node holds: the last view stays in force"
        );
        if st.last_error.as_deref() != Some(&msg) {
            eprintln!("fastpath: kubernetes: {msg}");
        }
        st.last_error = Some(msg);
        return true;
    }
    let v = objects::view(caches, node, revision);
    {
        let mut st = shared.status.lock().expect("not poisoned");
        st.connected = true;
        st.nodes = v.nodes.len();
        st.remote_pods = v.nodes.iter().map(|n| n.pods.len()).sum();
        st.services = v.services.len();
        st.policies = v.policies.as_ref().map_or(0, Vec::len);
        st.problems = v.problems.iter().take(16).cloned().collect();
    }
    *shared.synced.lock().expect("not poisoned") = Some(v.clone());
    {
        let mut logged = shared.logged.lock().expect("not poisoned");
        for p in v.problems.iter().filter(|p| !logged.contains(p)) {
            eprintln!("fastpath: kubernetes: skipped {p}");
        }
        *logged = v.problems.clone();
    }
    if last_sent
        .as_ref()
        .is_some_and(|l| crate::kvstore::same_view(l, &v))
    {
        return true;
    }
    let b = Batch {
        source: "kubernetes".into(),
        intents: vec![Intent::Cluster(Box::new(v.clone()))],
    };
    if views.try_send(b).is_ok() {
        shared.status.lock().expect("not poisoned").views += 1;
        *last_sent = Some(v);
        true
    } else {
        false
    }
}

/// Pods' identities in `source: kubernetes`: the number the cluster's pods give a label
/// set ([`objects::view`]), or, for a label set no Pod object has yet, its label hash
/// probed past every number in use — what every node computes once the Pod appears,
/// unless two label sets collide.
#[derive(Debug, Clone)]
pub struct K8sAllocator(pub Kubernetes);

impl control::identity::Allocator for K8sAllocator {
    fn pod_labels(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let v = self.0.shared.synced.lock().expect("not poisoned");
        v.as_ref()?
            .local_labels
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    fn allocate(&mut self, labels: &[String]) -> Result<u32, String> {
        let v = self.0.shared.synced.lock().expect("not poisoned");
        let allocated = v.as_ref().map(|v| &v.allocated);
        if let Some(id) = allocated.and_then(|a| a.get(labels)) {
            return Ok(*id);
        }
        let used: std::collections::BTreeSet<u32> = allocated
            .map(|a| a.values().copied().collect())
            .unwrap_or_default();
        control::identity::candidates(labels)
            .find(|id| !used.contains(id))
            .ok_or_else(|| "no security identity left in 256-65535".into())
    }
}
