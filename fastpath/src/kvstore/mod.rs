//! `source: kvstore`: the node's agent for an etcd kvstore, as Cilium's kvstore mode.
//!
//! One thread (`fp-kvstore`, a single-threaded tokio runtime for the etcd client) that:
//! - holds a lease (`kvstore.lease_ttl`) and keeps it alive; every key the node publishes
//!   is under it, so a node that dies has its keys deleted by etcd when the lease expires;
//! - publishes what the daemon tells it (node record, pod addresses, services, the
//!   identities its pods use: [`Own`]) and re-puts any of those keys that disappear;
//! - allocates identities cluster-wide by label set ([`Kvstore::allocate`], Cilium's
//!   scheme: one master key per identity, one slave key per node using it, an etcd lock per
//!   label set around allocation and garbage collection);
//! - lists then watches everything under `cilium/state/`, and on a watch that ends, is
//!   compacted or cannot be resumed lists again and diffs (resync): nothing missed, nothing
//!   applied twice, because what it sends the control loop is the whole derived
//!   [`schema::View`], never an event;
//! - on losing etcd (restart, network) reconnects with backoff, takes a new lease, puts
//!   every key again, and revokes the old lease.
//!
//! The control loop never waits on it except for an allocation (bounded: [`ALLOCATE_TIMEOUT`]).
//! The key schema is in [`schema`] and `docs/kvstore.md`.

pub mod schema;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::config::KvstoreConfig;
use crossbeam_channel::Sender;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LockOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::sources::{Batch, Intent};

/// The longest a pod's identity allocation may take (the control loop waits for it).
pub const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a label set allocated for a pod keeps its slave key before the pod is
/// published (the daemon publishes within a second; this is generous).
const ALLOCATION_GRACE: Duration = Duration::from_secs(60);
/// The timeout of each etcd request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff: from 0.5 s, doubling, to 5 s.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Changes seen within this long are sent to the control loop as one view.
const COALESCE: Duration = Duration::from_millis(20);
/// Keys per page of a full list (a page stays far below gRPC's 4 MiB message limit).
const LIST_PAGE: i64 = 500;
/// Identity master keys garbage-collected per GC tick at most (each takes a lock).
const GC_PER_TICK: usize = 64;
/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// What this node publishes (leased keys) and the identities its pods use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Own {
    /// Key → value (node record, pod addresses, services).
    pub keys: BTreeMap<String, String>,
    /// Label sets of this node's pods and their identities (one slave key each).
    pub identities: BTreeMap<Vec<String>, u32>,
}

/// The agent's state for `fastpath status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvStatus {
    pub endpoints: Vec<String>,
    pub cluster: String,
    pub connected: bool,
    /// The last error talking to etcd (kept after recovering, with `errors`).
    pub last_error: Option<String>,
    pub errors: u64,
    /// Sessions opened (1 + reconnections).
    pub sessions: u64,
    pub lease_id: i64,
    pub lease_ttl: u32,
    /// The store revision the node's view is of.
    pub revision: i64,
    /// Keys under `cilium/state/` the node holds.
    pub keys: usize,
    /// Keys this node has written under its lease.
    pub published: usize,
    /// Other nodes and pods in the view; identities in the store.
    pub nodes: usize,
    pub remote_pods: usize,
    pub identities: usize,
    pub services: usize,
    /// Full lists after the first (watch compacted, cancelled or broken).
    pub resyncs: u64,
    pub watch_events: u64,
    /// Views sent to the control loop.
    pub views: u64,
    pub allocations: u64,
    /// Unused identities this node's garbage collection deleted.
    pub identities_collected: u64,
    /// Records skipped in the last view, each with its key and why (at most 16 shown).
    pub problems: Vec<String>,
}

enum Cmd {
    Allocate {
        labels: Vec<String>,
        reply: std::sync::mpsc::SyncSender<Result<u32, String>>,
    },
    Publish(Box<Own>),
}

#[derive(Debug, Default)]
struct Shared {
    status: Mutex<KvStatus>,
    /// The first full list is done: the view is the store's.
    synced: Mutex<Option<schema::View>>,
}

/// The handle the daemon holds.
#[derive(Debug, Clone)]
pub struct Kvstore {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Allocate { labels, .. } => write!(f, "Allocate({labels:?})"),
            Cmd::Publish(_) => write!(f, "Publish"),
        }
    }
}

impl Kvstore {
    /// Start the agent for node `node` on its own thread; views go to `views`.
    pub fn start(
        cfg: &KvstoreConfig,
        node: &str,
        views: Sender<Batch>,
    ) -> std::io::Result<Kvstore> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        {
            let mut st = shared.status.lock().expect("fresh");
            st.endpoints = cfg.endpoints.clone();
            st.cluster = cfg.cluster.clone();
            st.lease_ttl = cfg.lease_ttl;
        }
        let agent = Agent {
            cfg: cfg.clone(),
            node: node.to_string(),
            views,
            shared: shared.clone(),
            cache: BTreeMap::new(),
            master_revs: HashMap::new(),
            own: Own::default(),
            recent: Vec::new(),
            written: BTreeMap::new(),
            lease: 0,
            last_sent: None,
            dirty: false,
            logged: Vec::new(),
        };
        crate::sources::spawn_async("fp-kvstore", move || agent.run(rx))?;
        Ok(Kvstore { tx, shared })
    }

    /// Wait until the agent has listed the store once (or `timeout`): the view then.
    ///
    /// # Errors
    /// Not connected in time, with the last error.
    pub fn wait_synced(&self, timeout: Duration) -> anyhow::Result<schema::View> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.shared.synced.lock().expect("not poisoned").clone() {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let st = self.status();
                anyhow::bail!(
                    "kvstore: no etcd reachable at {} within {} s (kvstore.connect_timeout): {}",
                    st.endpoints.join(", "),
                    timeout.as_secs(),
                    st.last_error.as_deref().unwrap_or("no answer")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's state now.
    pub fn status(&self) -> KvStatus {
        self.shared.status.lock().expect("not poisoned").clone()
    }

    /// Publish `own` (replacing what was published before).
    pub fn publish(&self, own: Own) {
        let _ = self.tx.send(Cmd::Publish(Box::new(own)));
    }

    /// The cluster-wide identity of `labels`, allocated in etcd when none exists. Blocks
    /// at most [`ALLOCATE_TIMEOUT`].
    ///
    /// # Errors
    /// etcd unreachable, the range full, or no answer in time.
    pub fn allocate(&self, labels: &[String]) -> Result<u32, String> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(Cmd::Allocate {
                labels: labels.to_vec(),
                reply,
            })
            .map_err(|_| "kvstore: the agent has stopped".to_string())?;
        match rx.recv_timeout(ALLOCATE_TIMEOUT) {
            Ok(r) => r.map_err(|e| format!("kvstore identity allocation: {e}")),
            Err(_) => Err(format!(
                "kvstore identity allocation: no answer within {} s (etcd unreachable? see `fastpath status`)",
                ALLOCATE_TIMEOUT.as_secs()
            )),
        }
    }
}

/// [`control::identity::Allocator`] over the kvstore.
#[derive(Debug, Clone)]
pub struct KvAllocator(pub Kvstore);

impl control::identity::Allocator for KvAllocator {
    fn allocate(&mut self, labels: &[String]) -> Result<u32, String> {
        self.0.allocate(labels)
    }
}

struct Agent {
    cfg: KvstoreConfig,
    node: String,
    views: Sender<Batch>,
    shared: Arc<Shared>,
    /// Everything under `cilium/state/` as of the last event.
    cache: BTreeMap<String, Vec<u8>>,
    /// Mod revisions of identity master keys (GC deletes only an unchanged one).
    master_revs: HashMap<u32, i64>,
    own: Own,
    /// Label sets allocated for pods not published yet, with their identity.
    recent: Vec<(Vec<String>, u32, Instant)>,
    /// What this session has put under its lease.
    written: BTreeMap<String, String>,
    lease: i64,
    last_sent: Option<schema::View>,
    /// The cache changed since the last view was sent.
    dirty: bool,
    /// The problems already said in the log (each is said once while it lasts).
    logged: Vec<String>,
}

type Res<T> = Result<T, String>;

fn e(what: &str) -> impl Fn(etcd_client::Error) -> String + '_ {
    move |err| format!("{what}: {err}")
}

impl Agent {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut backoff = Duration::from_millis(500);
        let mut old_lease: Option<i64> = None;
        loop {
            let opts = ConnectOptions::new()
                .with_connect_timeout(REQUEST_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT)
                .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
            let began = Instant::now();
            let res = match Client::connect(&self.cfg.endpoints, Some(opts)).await {
                Ok(mut c) => self.session(&mut c, &mut rx, &mut old_lease).await,
                Err(err) => Err(format!("connecting: {err}")),
            };
            if began.elapsed() >= STABLE_SESSION {
                backoff = Duration::from_millis(500);
            }
            let Err(why) = res else { return };
            {
                let mut st = self.status();
                st.connected = false;
                st.errors += 1;
                st.last_error = Some(why.clone());
            }
            eprintln!(
                "fastpath: kvstore: {why}; reconnecting in {} ms",
                backoff.as_millis()
            );
            // Allocations asked for meanwhile fail at once rather than time out.
            let until = tokio::time::Instant::now() + backoff;
            while let Ok(Some(cmd)) = tokio::time::timeout_at(until, rx.recv()).await {
                match cmd {
                    Cmd::Allocate { reply, .. } => {
                        let _ = reply.send(Err(format!("etcd unreachable: {why}")));
                    }
                    Cmd::Publish(o) => self.own = *o,
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, KvStatus> {
        self.shared.status.lock().expect("not poisoned")
    }

    /// One connection: lease, list, publish, watch. Returns why it ended.
    async fn session(
        &mut self,
        c: &mut Client,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
        old_lease: &mut Option<i64>,
    ) -> Res<()> {
        let lease = c
            .lease_grant(i64::from(self.cfg.lease_ttl), None)
            .await
            .map_err(e("granting a lease"))?;
        self.lease = lease.id();
        self.written.clear();
        let (mut keeper, mut alive) = c
            .lease_keep_alive(self.lease)
            .await
            .map_err(e("keeping the lease alive"))?;
        // Keep-alives on a task of their own: a slow allocation, lock wait or GC on this
        // task must not let the lease run out. It says why it stopped on `lost`.
        let (lost_tx, mut lost) = tokio::sync::oneshot::channel::<String>();
        let every = Duration::from_millis(u64::from(self.cfg.lease_ttl) * 1000 / 3);
        let lease_id = self.lease;
        let keep = AbortOnDrop(tokio::spawn(async move {
            let why = loop {
                tokio::time::sleep(every).await;
                if let Err(err) = keeper.keep_alive().await {
                    break format!("lease keep-alive: {err}");
                }
                match alive.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => break format!("lease {lease_id:x} expired"),
                    Ok(None) => break "the lease keep-alive stream ended".to_string(),
                    Err(err) => break format!("lease keep-alive: {err}"),
                }
            };
            let _ = lost_tx.send(why);
        }));
        let mut rev = self.list(c).await?;
        // Everything this node holds, under the new lease; then the old lease's keys go.
        self.recreate_masters(c).await?;
        self.reconcile(c).await?;
        if let Some(old) = old_lease.replace(self.lease)
            && old != self.lease
        {
            let _ = c.lease_revoke(old).await;
        }
        {
            let mut st = self.status();
            st.connected = true;
            st.sessions += 1;
            st.lease_id = self.lease;
        }
        eprintln!(
            "fastpath: kvstore: connected to {}, lease {:x} ({} s), revision {rev}",
            self.cfg.endpoints.join(","),
            self.lease,
            self.cfg.lease_ttl
        );
        self.flush();
        let mut watch = self.watch(c, rev).await?;
        let _keep = keep;
        let mut gc_tick = tokio::time::interval(Duration::from_secs(u64::from(
            self.cfg.identity_gc_interval,
        )));
        gc_tick.tick().await;
        let mut retry = tokio::time::interval(Duration::from_millis(200));
        loop {
            let flush_at = tokio::time::sleep(if self.dirty {
                COALESCE
            } else {
                Duration::from_secs(3600)
            });
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => return Ok(()),
                    Some(Cmd::Allocate { labels, reply }) => {
                        let r = tokio::time::timeout(ALLOCATE_TIMEOUT, self.allocate(c, &labels)).await
                            .unwrap_or_else(|_| Err("timed out".into()));
                        // A failed allocation fails that pod's add alone; trouble with the
                        // store itself ends the session through the watch or the lease.
                        let _ = reply.send(r);
                    }
                    Some(Cmd::Publish(o)) => {
                        self.own = *o;
                        self.recent.retain(|(_, _, t)| t.elapsed() < ALLOCATION_GRACE);
                        self.reconcile(c).await?;
                    }
                },
                msg = watch.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err("the watch ended".into()),
                        Err(err) => return Err(format!("watching: {err}")),
                    };
                    if resp.canceled() || resp.compact_revision() > 0 {
                        // Compacted past what this node has seen (or cancelled by the
                        // server): list again and diff, then watch from there.
                        eprintln!(
                            "fastpath: kvstore: watch {} (compacted to {}, {}): resyncing",
                            if resp.canceled() { "cancelled" } else { "behind" },
                            resp.compact_revision(),
                            resp.cancel_reason()
                        );
                        self.status().resyncs += 1;
                        rev = self.list(c).await?;
                        self.reconcile(c).await?;
                        watch = self.watch(c, rev).await?;
                        continue;
                    }
                    let mut lost = false;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let Ok(k) = kv.key_str() else { continue };
                        rev = rev.max(kv.mod_revision());
                        match ev.event_type() {
                            EventType::Put => self.put_cached(k, kv.value(), kv.mod_revision()),
                            EventType::Delete => {
                                self.remove_cached(k);
                                // A key this node holds went (its lease was lost, or it was
                                // deleted): put it back.
                                if self.written.remove(k).is_some() {
                                    lost = true;
                                }
                            }
                        }
                        self.status().watch_events += 1;
                    }
                    if let Some(h) = resp.header() {
                        rev = rev.max(h.revision());
                    }
                    self.status().revision = rev;
                    if lost {
                        self.reconcile(c).await?;
                    }
                },
                why = &mut lost => {
                    return Err(why.unwrap_or_else(|_| "the lease keep-alive task ended".into()));
                },
                _ = gc_tick.tick() => {
                    // Allocations whose pod never came (or went at once) stop holding
                    // their slave key once their grace is over.
                    let before = self.recent.len();
                    self.recent.retain(|(_, _, t)| t.elapsed() < ALLOCATION_GRACE);
                    if self.recent.len() != before {
                        self.reconcile(c).await?;
                    }
                    self.collect_identities(c).await?;
                }
                _ = retry.tick(), if self.dirty => self.flush(),
                _ = flush_at => self.flush(),
            }
        }
    }

    async fn watch(&mut self, c: &mut Client, rev: i64) -> Res<etcd_client::WatchStream> {
        c.watch(
            schema::PREFIX,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await
        .map_err(e("watching"))
    }

    /// List everything (resync), in pages of [`LIST_PAGE`] keys at one revision: the
    /// cache becomes the store; returns its revision. Keys this node wrote that the store
    /// no longer has as written (deleted while the watch was behind) are put again by the
    /// next [`Agent::reconcile`].
    async fn list(&mut self, c: &mut Client) -> Res<i64> {
        // The end of the prefix range: `cilium/state/` with its last byte + 1.
        let mut end = schema::PREFIX.as_bytes().to_vec();
        *end.last_mut().expect("non-empty prefix") += 1;
        let mut from = schema::PREFIX.as_bytes().to_vec();
        let mut rev = 0i64;
        let mut cache = BTreeMap::new();
        let mut revs = HashMap::new();
        loop {
            let mut o = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if rev > 0 {
                o = o.with_revision(rev);
            }
            let r = c.get(from.clone(), Some(o)).await.map_err(e("listing"))?;
            if rev == 0 {
                rev = r.header().map_or(0, |h| h.revision());
            }
            for kv in r.kvs() {
                let Ok(k) = kv.key_str() else { continue };
                if kv.value().len() > schema::MAX_VALUE {
                    eprintln!(
                        "fastpath: kvstore: {k}: {} bytes, more than {}: ignored",
                        kv.value().len(),
                        schema::MAX_VALUE
                    );
                    continue;
                }
                if let Some(id) = k
                    .strip_prefix(schema::ID_PREFIX)
                    .and_then(|i| i.parse().ok())
                {
                    revs.insert(id, kv.mod_revision());
                }
                cache.insert(k.to_string(), kv.value().to_vec());
            }
            if cache.len() > schema::MAX_KEYS {
                return Err(format!(
                    "more than {} keys under {}: more than this node holds",
                    schema::MAX_KEYS,
                    schema::PREFIX
                ));
            }
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        self.cache = cache;
        self.master_revs = revs;
        self.written
            .retain(|k, v| self.cache.get(k).map(Vec::as_slice) == Some(v.as_bytes()));
        self.status().revision = rev;
        self.dirty = true;
        Ok(rev)
    }

    fn put_cached(&mut self, k: &str, v: &[u8], mod_rev: i64) {
        if v.len() > schema::MAX_VALUE {
            eprintln!(
                "fastpath: kvstore: {k}: {} bytes, more than {}: ignored",
                v.len(),
                schema::MAX_VALUE
            );
            return;
        }
        if let Some(id) = k
            .strip_prefix(schema::ID_PREFIX)
            .and_then(|i| i.parse().ok())
        {
            self.master_revs.insert(id, mod_rev);
        }
        if self.cache.get(k).map(Vec::as_slice) != Some(v) {
            self.cache.insert(k.to_string(), v.to_vec());
            self.dirty = true;
        }
    }

    fn remove_cached(&mut self, k: &str) {
        if let Some(id) = k
            .strip_prefix(schema::ID_PREFIX)
            .and_then(|i| i.parse::<u32>().ok())
        {
            self.master_revs.remove(&id);
        }
        if self.cache.remove(k).is_some() {
            self.dirty = true;
        }
    }

    /// Send the view of the cache to the control loop if it changed. A full channel
    /// leaves it dirty: the next try sends the newest view.
    fn flush(&mut self) {
        if !self.dirty && self.last_sent.is_some() {
            return;
        }
        let rev = self.status().revision.max(0);
        let mut v = schema::view(&self.cache, &self.cfg.cluster, &self.node, rev);
        v.revision = rev;
        {
            let mut st = self.status();
            st.keys = self.cache.len();
            st.published = self.written.len();
            st.nodes = v.nodes.len();
            st.remote_pods = v.nodes.iter().map(|n| n.pods.len()).sum();
            st.identities = schema::masters(&self.cache).len();
            st.services = v.services.len();
            st.problems = v.problems.iter().take(16).cloned().collect();
        }
        *self.shared.synced.lock().expect("not poisoned") = Some(v.clone());
        for p in v.problems.iter().filter(|p| !self.logged.contains(p)) {
            eprintln!("fastpath: kvstore: skipped {p}");
        }
        self.logged = v.problems.clone();
        if self.last_sent.as_ref().is_some_and(|l| same_view(l, &v)) {
            self.dirty = false;
            return;
        }
        let b = Batch {
            source: format!("kvstore {}", self.cfg.endpoints.join(",")),
            intents: vec![Intent::Cluster(Box::new(v.clone()))],
        };
        if self.views.try_send(b).is_ok() {
            self.status().views += 1;
            self.last_sent = Some(v);
            self.dirty = false;
        } else {
            self.dirty = true;
        }
    }

    /// Every key this node should hold: its published keys and one slave key per label
    /// set its pods use (or were just allocated for).
    fn wanted(&self) -> BTreeMap<String, String> {
        let mut w = self.own.keys.clone();
        let sets = self
            .own
            .identities
            .iter()
            .map(|(l, id)| (l, *id))
            .chain(self.recent.iter().map(|(l, id, _)| (l, *id)));
        for (labels, id) in sets {
            w.insert(
                schema::slave_key(&schema::label_key(labels), &self.node),
                id.to_string(),
            );
        }
        w
    }

    /// Bring the store to [`Agent::wanted`]: put what is missing or different, delete what
    /// this node wrote and no longer wants.
    async fn reconcile(&mut self, c: &mut Client) -> Res<()> {
        let want = self.wanted();
        for (k, v) in &want {
            if self.written.get(k) == Some(v) {
                continue;
            }
            c.put(
                k.as_str(),
                v.as_str(),
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
            .map_err(e("publishing"))?;
            self.written.insert(k.clone(), v.clone());
        }
        let gone: Vec<String> = self
            .written
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            c.delete(k.as_str(), None)
                .await
                .map_err(e("unpublishing"))?;
            self.written.remove(&k);
        }
        self.status().published = self.written.len();
        Ok(())
    }

    /// The master keys of this node's identities, put back where the store lost them (a
    /// store restored from nothing): Cilium's allocator does the same.
    async fn recreate_masters(&mut self, c: &mut Client) -> Res<()> {
        let sets: Vec<(Vec<String>, u32)> = self
            .own
            .identities
            .iter()
            .map(|(l, id)| (l.clone(), *id))
            .chain(self.recent.iter().map(|(l, id, _)| (l.clone(), *id)))
            .collect();
        for (labels, id) in sets {
            let lk = schema::label_key(&labels);
            let t = Txn::new()
                .when(vec![Compare::create_revision(
                    schema::master_key(id),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(schema::master_key(id), lk.as_str(), None)]);
            let r = c.txn(t).await.map_err(e("recreating an identity"))?;
            if r.succeeded() {
                eprintln!("fastpath: kvstore: identity {id} was missing from the store: recreated");
            } else {
                let m = c
                    .get(schema::master_key(id), None)
                    .await
                    .map_err(e("etcd get"))?;
                if let Some(kv) = m.kvs().first()
                    && kv.value() != lk.as_bytes()
                {
                    eprintln!(
                        "fastpath: kvstore: identity {id} of this node's pods ({lk}) names `{}` in the store now: those pods keep {id} until they are added again",
                        String::from_utf8_lossy(kv.value())
                    );
                }
            }
        }
        Ok(())
    }

    /// Allocate (or find) the identity of `labels` under the label set's lock.
    async fn allocate(&mut self, c: &mut Client, labels: &[String]) -> Res<u32> {
        let lk = schema::label_key(labels);
        if lk.len() > 4096 {
            return Err(format!("a label set of {} bytes (at most 4096)", lk.len()));
        }
        let lock = self.lock(c, &lk).await?;
        // This node's slave key is written before the lock is released: a GC that takes
        // the lock next sees the number in use.
        let r = match self.allocate_locked(c, &lk, labels).await {
            Ok(id) => {
                self.recent.push((labels.to_vec(), id, Instant::now()));
                self.reconcile(c).await.map(|()| id)
            }
            Err(err) => Err(err),
        };
        let _ = c.unlock(lock).await;
        let id = r?;
        self.status().allocations += 1;
        Ok(id)
    }

    /// Take the etcd lock of label set `lk` (held under this node's lease: released if the
    /// node dies holding it); its key, for `unlock`.
    async fn lock(&self, c: &mut Client, lk: &str) -> Res<Vec<u8>> {
        let l = c
            .lock(
                schema::lock_key(lk),
                Some(LockOptions::new().with_lease(self.lease)),
            )
            .await
            .map_err(e("etcd lock"))?;
        Ok(l.key().to_vec())
    }

    async fn allocate_locked(&mut self, c: &mut Client, lk: &str, labels: &[String]) -> Res<u32> {
        // 1. A node uses this set already: its number.
        let slaves = c
            .get(
                schema::slave_prefix(lk),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(e("etcd get"))?;
        let used = slaves
            .kvs()
            .iter()
            .filter_map(|kv| kv.value_str().ok()?.trim().parse::<u32>().ok())
            .min();
        // 2. Else a master key left for it (no node uses it now; GC has not run).
        let masters = schema::masters(&self.cache);
        let known = used.or_else(|| {
            masters
                .iter()
                .find(|(_, v)| v.as_str() == lk)
                .map(|(id, _)| *id)
        });
        if let Some(id) = known {
            let m = c
                .get(schema::master_key(id), None)
                .await
                .map_err(e("etcd get"))?;
            match m.kvs().first().map(|kv| kv.value().to_vec()) {
                Some(v) if v == lk.as_bytes() => return Ok(id),
                Some(_) => {} // the number names another set now: allocate anew
                None => {
                    if self.create_master(c, id, lk).await? {
                        return Ok(id);
                    }
                }
            }
        }
        // 3. A new number: the label hash, probed past every number in the store.
        for id in control::identity::candidates(labels) {
            if !masters.contains_key(&id) && self.create_master(c, id, lk).await? {
                return Ok(id);
            }
        }
        Err("no identity left in 256-65535".into())
    }

    /// Create master key `id` → `lk` if no key `id` exists. True if created.
    async fn create_master(&mut self, c: &mut Client, id: u32, lk: &str) -> Res<bool> {
        let t = Txn::new()
            .when(vec![Compare::create_revision(
                schema::master_key(id),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(schema::master_key(id), lk, None)]);
        let r = c.txn(t).await.map_err(e("etcd txn"))?;
        Ok(r.succeeded())
    }

    /// Identity garbage collection (Cilium's operator does it; here every node may): a
    /// master key no slave key refers to is deleted, under its label set's lock, if it is
    /// unchanged since it was seen.
    async fn collect_identities(&mut self, c: &mut Client) -> Res<()> {
        let used = schema::ids_in_use(&self.cache);
        let mine: BTreeSet<u32> = self.wanted_ids();
        let stale: Vec<(u32, String)> = schema::masters(&self.cache)
            .into_iter()
            .filter(|(id, _)| !used.contains(id) && !mine.contains(id))
            .take(GC_PER_TICK)
            .collect();
        for (id, lk) in stale {
            let Some(&mod_rev) = self.master_revs.get(&id) else {
                continue;
            };
            let lock = self.lock(c, &lk).await?;
            let slaves = c
                .get(
                    schema::slave_prefix(&lk),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(e("etcd get"));
            let res = match slaves {
                Ok(s) if s.count() == 0 => {
                    let t = Txn::new()
                        .when(vec![Compare::mod_revision(
                            schema::master_key(id),
                            CompareOp::Equal,
                            mod_rev,
                        )])
                        .and_then(vec![TxnOp::delete(schema::master_key(id), None)]);
                    c.txn(t).await.map_err(e("etcd txn")).map(|r| r.succeeded())
                }
                Ok(_) => Ok(false),
                Err(err) => Err(err),
            };
            let _ = c.unlock(lock).await;
            if res? {
                self.status().identities_collected += 1;
                eprintln!("fastpath: kvstore: identity {id} ({lk}) unused: deleted");
            }
        }
        Ok(())
    }

    fn wanted_ids(&self) -> BTreeSet<u32> {
        self.own
            .identities
            .values()
            .copied()
            .chain(self.recent.iter().map(|(_, id, _)| *id))
            .collect()
    }
}

/// Aborts its task when dropped (the keep-alive task ends with its session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Views equal in what the node applies (the revision and problems aside).
pub(crate) fn same_view(a: &schema::View, b: &schema::View) -> bool {
    a.nodes.len() == b.nodes.len()
        && serde_json::to_string(&a.nodes).ok() == serde_json::to_string(&b.nodes).ok()
        && a.allocated == b.allocated
        && serde_json::to_string(&a.services).ok() == serde_json::to_string(&b.services).ok()
        && a.policies == b.policies
}
