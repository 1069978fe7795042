//! A fake Kubernetes API server for the `source: kubernetes` tests. No API server can run
//! on this machine, so this one speaks the real list/watch protocol over HTTP/1.1 — the
//! collection paths (`/api/v1/pods`, `/apis/discovery.k8s.io/v1/endpointslices`,
//! `/apis/cilium.io/v2/ciliumnetworkpolicies`, …), `*List` responses with a
//! `resourceVersion`, `?watch=true&resourceVersion=N` streams of `ADDED`/`MODIFIED`/`DELETED`
//! events (chunked, one JSON object per line), `BOOKMARK` events, and `410 Gone` (an `ERROR`
//! event with a `Status`, reason `Expired`) for a version older than its last compaction —
//! with objects the tests build as k8s-openapi types and serialize (the Cilium CRDs, which
//! k8s-openapi has no types for, as JSON). It listens on an address inside a network
//! namespace the test made (the fabric), from a thread that entered it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The collections served: path, list kind, apiVersion.
pub const COLLECTIONS: [(&str, &str, &str); 8] = [
    ("/api/v1/nodes", "NodeList", "v1"),
    (
        "/apis/cilium.io/v2/ciliumnodes",
        "CiliumNodeList",
        "cilium.io/v2",
    ),
    ("/api/v1/pods", "PodList", "v1"),
    ("/api/v1/services", "ServiceList", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSliceList",
        "discovery.k8s.io/v1",
    ),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicyList",
        "networking.k8s.io/v1",
    ),
    (
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
        "CiliumNetworkPolicyList",
        "cilium.io/v2",
    ),
    (
        "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
        "CiliumClusterwideNetworkPolicyList",
        "cilium.io/v2",
    ),
];

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// Everything before this version is compacted away: a watch from it gets 410.
    compacted: u64,
    /// path → key (ns/name) → object.
    objects: BTreeMap<&'static str, BTreeMap<String, serde_json::Value>>,
    /// path → (version, type, object).
    events: BTreeMap<&'static str, Vec<(u64, &'static str, serde_json::Value)>>,
}

#[derive(Debug, Default)]
struct Inner {
    store: Mutex<Store>,
    changed: Condvar,
    stop: AtomicBool,
    /// Bumped to end every open watch (the server keeps serving).
    epoch: AtomicU64,
    lists: AtomicU64,
    watches: AtomicU64,
    gone: AtomicU64,
    bookmarks: AtomicU64,
}

/// The server; stopped (listener and streams closed) on drop.
#[derive(Debug)]
pub struct FakeApi {
    pub url: String,
    inner: Arc<Inner>,
    netns: String,
    addr: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn path_of(kind: &str) -> &'static str {
    COLLECTIONS
        .iter()
        .find(|(_, k, _)| k.strip_suffix("List") == Some(kind))
        .map(|(p, _, _)| *p)
        .unwrap_or_else(|| panic!("kind {kind} is not served"))
}

fn key_of(o: &serde_json::Value) -> String {
    let m = &o["metadata"];
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", m["name"].as_str().unwrap_or("")),
        None => m["name"].as_str().unwrap_or("").to_string(),
    }
}

impl FakeApi {
    /// Serve on `ip:port` inside network namespace `netns`.
    pub fn start(netns: &str, ip: &str, port: u16) -> FakeApi {
        let mut f = FakeApi {
            url: format!("http://{ip}:{port}"),
            inner: Arc::new(Inner::default()),
            netns: netns.to_string(),
            addr: format!("{ip}:{port}"),
            thread: None,
        };
        f.listen();
        f
    }

    /// Start accepting on the address (a thread that entered the namespace).
    fn listen(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let ns = self.netns.clone();
        let addr = self.addr.clone();
        let i2 = self.inner.clone();
        self.thread = Some(std::thread::spawn(move || {
            fastpath::xsk::sys::enter_netns(&ns).expect("enter the fabric namespace");
            let l = TcpListener::bind(&addr).expect("bind the fake API server");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !i2.stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let i3 = i2.clone();
                        std::thread::spawn(move || {
                            let _ = serve(s, &i3);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("fake API server listening");
    }

    /// The server goes away (listener closed, every watch ended: clients get connection
    /// refused) while its store stays, as when an API server restarts over its etcd.
    pub fn stop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Watches still inside their wait see `stop` within 250 ms.
        std::thread::sleep(Duration::from_millis(400));
    }

    /// Serve again on the same address, over the same store.
    pub fn resume(&mut self) {
        self.inner.stop.store(false, Ordering::Relaxed);
        self.listen();
    }

    /// Add or replace an object (any serializable k8s-openapi object, or JSON with
    /// `apiVersion`, `kind` and `metadata`): a new resource version, an ADDED or MODIFIED
    /// event to every watch of its collection.
    pub fn put(&self, obj: impl serde::Serialize) {
        let mut o = serde_json::to_value(obj).unwrap();
        let kind = o["kind"].as_str().expect("object with a kind").to_string();
        let path = path_of(&kind);
        let mut st = self.inner.store.lock().unwrap();
        st.rv += 1;
        o["metadata"]["resourceVersion"] = st.rv.to_string().into();
        let k = key_of(&o);
        let rv = st.rv;
        let existed = st
            .objects
            .entry(path)
            .or_default()
            .insert(k, o.clone())
            .is_some();
        let ty = if existed { "MODIFIED" } else { "ADDED" };
        st.events.entry(path).or_default().push((rv, ty, o));
        self.inner.changed.notify_all();
    }

    /// Delete object `ns/name` (or `name`) of `kind`.
    pub fn delete(&self, kind: &str, key: &str) {
        let path = path_of(kind);
        let mut st = self.inner.store.lock().unwrap();
        let Some(mut o) = st.objects.entry(path).or_default().remove(key) else {
            return;
        };
        st.rv += 1;
        o["metadata"]["resourceVersion"] = st.rv.to_string().into();
        let rv = st.rv;
        st.events.entry(path).or_default().push((rv, "DELETED", o));
        self.inner.changed.notify_all();
    }

    /// Compact: every version before now is gone, and every open watch is closed, so each
    /// watcher must resume from its version and gets 410 Gone (then relists).
    pub fn compact_and_drop_watches(&self) {
        let mut st = self.inner.store.lock().unwrap();
        st.rv += 1;
        st.compacted = st.rv;
        st.events.clear();
        // Under the store's lock: no watch can send a bookmark past the compaction and
        // then keep going.
        self.inner.epoch.fetch_add(1, Ordering::Relaxed);
        drop(st);
        self.inner.changed.notify_all();
    }

    /// (lists, watches, 410s sent, bookmarks sent) so far.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let i = &self.inner;
        (
            i.lists.load(Ordering::Relaxed),
            i.watches.load(Ordering::Relaxed),
            i.gone.load(Ordering::Relaxed),
            i.bookmarks.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
    }
}

fn serve(s: TcpStream, inner: &Inner) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let q: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let mut w = s;
    let Some((path, list_kind, api_version)) =
        COLLECTIONS.iter().find(|(p, _, _)| *p == path).copied()
    else {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
        write!(
            w,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    };
    if q.get("watch") == Some(&"true") || q.get("watch") == Some(&"1") {
        inner.watches.fetch_add(1, Ordering::Relaxed);
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(60u64);
        let bookmarks = q.get("allowWatchBookmarks") == Some(&"true");
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )?;
        let chunk = |w: &mut TcpStream, v: &serde_json::Value| -> std::io::Result<()> {
            let mut b = serde_json::to_vec(v).unwrap();
            b.push(b'\n');
            write!(w, "{:x}\r\n", b.len())?;
            w.write_all(&b)?;
            w.write_all(b"\r\n")?;
            w.flush()
        };
        let mut seen = from;
        let epoch = inner.epoch.load(Ordering::Relaxed);
        let end = Instant::now() + Duration::from_secs(timeout);
        let mut last_bookmark = Instant::now();
        let mut st = inner.store.lock().unwrap();
        if from < st.compacted {
            drop(st);
            inner.gone.fetch_add(1, Ordering::Relaxed);
            chunk(
                &mut w,
                &serde_json::json!({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":format!("too old resource version: {from} ({})", inner.store.lock().unwrap().compacted),"reason":"Expired","code":410}}),
            )?;
            return w.write_all(b"0\r\n\r\n");
        }
        loop {
            let evs: Vec<(u64, &'static str, serde_json::Value)> = st
                .events
                .get(path)
                .map(|e| e.iter().filter(|(rv, _, _)| *rv > seen).cloned().collect())
                .unwrap_or_default();
            let now_rv = st.rv;
            drop(st);
            for (rv, ty, o) in evs {
                chunk(&mut w, &serde_json::json!({"type": ty, "object": o}))?;
                seen = rv;
            }
            if inner.stop.load(Ordering::Relaxed)
                || inner.epoch.load(Ordering::Relaxed) != epoch
                || Instant::now() > end
            {
                return w.write_all(b"0\r\n\r\n");
            }
            if bookmarks && last_bookmark.elapsed() > Duration::from_secs(1) && now_rv > seen {
                seen = now_rv;
                let kind = list_kind.strip_suffix("List").unwrap();
                chunk(
                    &mut w,
                    &serde_json::json!({"type":"BOOKMARK","object":{"kind":kind,"apiVersion":api_version,"metadata":{"resourceVersion":now_rv.to_string()}}}),
                )?;
                inner.bookmarks.fetch_add(1, Ordering::Relaxed);
                last_bookmark = Instant::now();
            }
            st = inner.store.lock().unwrap();
            st = inner
                .changed
                .wait_timeout(st, Duration::from_millis(250))
                .unwrap()
                .0;
        }
    }
    inner.lists.fetch_add(1, Ordering::Relaxed);
    let st = inner.store.lock().unwrap();
    let items: Vec<serde_json::Value> = st
        .objects
        .get(path)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    let body = serde_json::to_vec(&serde_json::json!({
        "kind": list_kind, "apiVersion": api_version,
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    }))
    .unwrap();
    drop(st);
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    w.write_all(&body)
}
