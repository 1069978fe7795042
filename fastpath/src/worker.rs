//! A pinned worker: its rx queues of every owned device, one UMEM shared by their sockets.
//!
//! Queues: with `N` workers, worker `w` serves rx queue `q` of a device when `q mod N = w`,
//! so every rx queue of every device is served whatever `--queues` says (a device with more
//! queues than workers gives some workers several). Its *home* socket on a device is the one
//! on queue `w` (every device has at least `N` queues in use: the daemon checks), with a TX
//! ring: everything the worker sends to that device leaves through it. Its other sockets on
//! the device are receive-only.
//!
//! Loop (OVS `pmd_thread_main` shape): poll each socket's RX ring → pipeline → queue on the
//! destination device's home TX ring (moving the descriptor; no copy) → flush/kick TX → reap
//! completions → refill fill rings. Every [`HOUSEKEEPING_EVERY`] loops it passes a quiescent
//! point (picks up a new table version) and checks the stop flag. When idle in adaptive mode
//! it sleeps in poll(2) on its RX sockets instead of burning the core.
//!
//! The loop allocates nothing: the RX batch vector is sized once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use control::config::PollMode;
use control::maps::MetricDir;
use control::tables::{PortId, TableReader};

use crate::stage::{self, Scratch, Verdict};
use crate::stats::WorkerCounters;
use crate::wire::Buf;
use crate::xsk::{Frame, Socket, Umem};

/// Loops between quiescent points / stop checks.
pub const HOUSEKEEPING_EVERY: u64 = 64;
/// Empty loops before an adaptive worker sleeps.
const SPIN_BEFORE_SLEEP: u32 = 256;
/// Longest sleep: bounds how late a stop request or a table change is noticed.
const SLEEP_MS: i32 = 10;

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's index `w` (its home queue on every device).
    pub queue: u32,
    /// Workers in all (`N`): the worker serves the rx queues `q` with `q mod N = w`.
    pub workers: u32,
    pub core: Option<usize>,
    pub batch_size: u32,
    pub ring_size: u32,
    pub frame_size: u32,
    pub poll: PollMode,
    /// Skip the pipeline: forward everything from port i to port i^1 (the bench ceiling).
    pub bare: bool,
}

/// A device as a worker needs it: name (for errors), ifindex, and the rx queues it has in
/// use (`ethtool -l`'s current count).
#[derive(Debug, Clone)]
pub struct WorkerDevice {
    pub name: String,
    pub ifindex: u32,
    pub rx_queues: u32,
}

/// One of a worker's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketInfo {
    /// The device (its index in the port table).
    pub port: PortId,
    /// The rx queue it is bound to.
    pub queue: u32,
    pub fd: i32,
    /// The device's home socket (has the TX ring).
    pub home: bool,
}

/// UMEM chunks a worker with `sockets` sockets needs: each socket's fill and RX rings (or TX
/// and completion rings) full at once, plus batches in flight.
pub fn umem_frames(sockets: u32, ring_size: u32, batch_size: u32) -> u32 {
    sockets
        .saturating_mul(ring_size)
        .saturating_mul(2)
        .saturating_add(4 * batch_size)
}

/// The most UMEM all workers together may map (what `fastpath run` checks before anything
/// is made: the chunks are populated and locked at start).
pub const MAX_UMEM_BYTES: u64 = 8 << 30;

/// A worker before it runs: its UMEM and sockets exist, so failures show up at start.
#[derive(Debug)]
pub struct Worker {
    cfg: WorkerConfig,
    umem: Umem,
    socks: Vec<Socket>,
    /// Per socket: its device and queue.
    info: Vec<SocketInfo>,
    /// Per device: the index of its home socket in `socks`.
    home: Vec<usize>,
    tables: TableReader,
    counters: Arc<WorkerCounters>,
    stop: Arc<AtomicBool>,
}

/// The rx queues worker `w` of `n` serves on a device with `rx` queues in use: `w` first
/// (its home queue), then `w + n`, `w + 2n`, ...
pub fn queues_of(w: u32, n: u32, rx: u32) -> impl Iterator<Item = u32> {
    (w..rx).step_by(n.max(1) as usize)
}

impl Worker {
    /// Create the UMEM and the sockets: on every device (`devs`, in port order) one per rx
    /// queue this worker serves ([`queues_of`]).
    ///
    /// # Errors
    /// Socket creation or bind failures, naming the device and queue.
    pub fn new(
        cfg: WorkerConfig,
        devs: &[WorkerDevice],
        tables: TableReader,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Worker> {
        use anyhow::Context;
        let per_dev: Vec<Vec<u32>> = devs
            .iter()
            .map(|d| queues_of(cfg.queue, cfg.workers, d.rx_queues).collect())
            .collect();
        let nsocks: u32 = per_dev.iter().map(|q| q.len() as u32).sum();
        for (d, q) in devs.iter().zip(&per_dev) {
            if q.first() != Some(&cfg.queue) {
                anyhow::bail!(
                    "{}: {} rx queues in use, so no queue {} for worker {} (each worker needs its own queue on every device)",
                    d.name,
                    d.rx_queues,
                    cfg.queue,
                    cfg.queue
                );
            }
        }
        let frames = umem_frames(nsocks, cfg.ring_size, cfg.batch_size);
        let mut umem = Umem::new(frames, cfg.frame_size).context("allocating UMEM")?;
        let mut socks: Vec<Socket> = Vec::with_capacity(nsocks as usize);
        let mut info = Vec::with_capacity(nsocks as usize);
        let mut home = Vec::with_capacity(devs.len());
        for (p, (d, queues)) in devs.iter().zip(&per_dev).enumerate() {
            for &q in queues {
                let is_home = q == cfg.queue;
                let s = bind_retry(|| {
                    Socket::new(&umem, d.ifindex, q, cfg.ring_size, socks.first(), is_home)
                })
                .with_context(|| format!("AF_XDP socket on {} queue {q}", d.name))?;
                if is_home {
                    home.push(socks.len());
                }
                info.push(SocketInfo {
                    port: p as PortId,
                    queue: q,
                    fd: s.fd(),
                    home: is_home,
                });
                socks.push(s);
            }
        }
        for s in &mut socks {
            s.fill(&mut umem, cfg.ring_size);
        }
        Ok(Worker {
            counters: Arc::new(WorkerCounters::new(devs.len())),
            cfg,
            umem,
            socks,
            info,
            home,
            tables,
            stop,
        })
    }

    /// Every socket with its device and queue, for the XSKMAP and for statistics.
    pub fn sockets(&self) -> Vec<SocketInfo> {
        self.info.clone()
    }

    pub fn socket_mode(&self) -> &'static str {
        self.socks.first().map_or("none", |s| s.mode().name())
    }

    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.counters.clone()
    }

    /// Run until the stop flag is set. Pins itself to `cfg.core` first.
    pub fn run(mut self) {
        if let Some(core) = self.cfg.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        let batch = self.cfg.batch_size;
        let nports = self.home.len();
        let nsocks = self.socks.len();
        let mut rx: Vec<Frame> = Vec::with_capacity(batch as usize);
        let mut pending = vec![false; nsocks];
        let mut pollfds: Vec<libc::pollfd> = self
            .socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut idle_streak = 0u32;
        // One worker per queue: the queue index is this worker's counter stripe. Its random
        // state comes from the kernel's entropy, never from the queue number alone.
        let mut scratch = Scratch::for_worker(self.cfg.queue as usize);
        let mut loops = 0u64;
        let c = self.counters.clone();
        loop {
            loops += 1;
            if loops.is_multiple_of(HOUSEKEEPING_EVERY) {
                if self.stop.load(Ordering::Acquire) {
                    break;
                }
                if self.tables.quiesce() {
                    c.table_switches.add(1);
                }
            }
            c.loops.add(1);
            let mut got = 0u32;
            for i in 0..nsocks {
                let p = self.info[i].port as usize;
                let n = self.socks[i].recv(&mut self.umem, &mut rx, batch);
                if n == 0 {
                    continue;
                }
                got += n;
                c.batch(n as usize);
                // Conntrack time: once per batch (a vDSO call, no syscall).
                scratch.now = control::clock::now();
                let pc = &c.ports[p];
                pc.rx_packets.add(n as u64);
                let t = self.tables.get();
                for mut f in rx.drain(..) {
                    let len = f.len();
                    pc.rx_bytes.add(len as u64);
                    let v = if self.cfg.bare {
                        Verdict::Deliver {
                            port: (p ^ 1).min(nports - 1) as PortId,
                        }
                    } else {
                        let (chunk, head) = self.umem.chunk_mut(&f);
                        let mut b = Buf::new(chunk, head, len);
                        let v = stage::process(&mut b, p as PortId, t, &mut scratch);
                        let (h, l) = (b.head(), b.len());
                        self.umem.set_span(&mut f, h, l);
                        v
                    };
                    let out = match v {
                        Verdict::Deliver { port } => {
                            c.forwarded(MetricDir::Egress, len);
                            c.forwarded(MetricDir::Ingress, len);
                            port as usize
                        }
                        Verdict::Decap { port } => {
                            c.decapsulated.add(1);
                            c.forwarded(MetricDir::Ingress, len);
                            port as usize
                        }
                        Verdict::RoutedIn { port } => {
                            c.forwarded(MetricDir::Ingress, len);
                            port as usize
                        }
                        Verdict::Encap { port } => {
                            c.encapsulated.add(1);
                            c.forwarded(MetricDir::Egress, len);
                            port as usize
                        }
                        Verdict::Route { port } => {
                            c.routed.add(1);
                            c.forwarded(MetricDir::Egress, len);
                            port as usize
                        }
                        Verdict::ArpReply { port } => {
                            c.arp_replies.add(1);
                            port as usize
                        }
                        Verdict::IcmpReply { port, reason } => {
                            c.icmp_errors.add(1);
                            c.dropped(reason, MetricDir::Egress, len);
                            port as usize
                        }
                        Verdict::Drop { reason, dir } => {
                            c.dropped(reason, dir, len);
                            self.umem.release(f);
                            continue;
                        }
                    };
                    let len = f.len();
                    let Some(&o) = self.home.get(out) else {
                        // A verdict naming a port this worker has no socket on: the tables
                        // and the sockets disagree. Counted, never a panic.
                        c.dropped(
                            control::maps::DropReason::UnknownTarget,
                            MetricDir::Egress,
                            len,
                        );
                        self.umem.release(f);
                        continue;
                    };
                    match self.socks[o].send(f) {
                        Ok(()) => {
                            c.ports[out].tx_packets.add(1);
                            c.ports[out].tx_bytes.add(len as u64);
                            pending[o] = true;
                        }
                        Err(f) => {
                            c.ports[out].tx_ring_full.add(1);
                            self.umem.release(f);
                        }
                    }
                }
            }
            let mut tx_busy = false;
            for ((sock, pend), inf) in self
                .socks
                .iter_mut()
                .zip(pending.iter_mut())
                .zip(&self.info)
            {
                if *pend {
                    if sock.flush() {
                        c.ports[inf.port as usize].tx_kicks.add(1);
                    }
                    // Copy-mode TX sends at most 32 frames per kick: keep kicking until drained.
                    *pend = sock.tx_outstanding() > 0;
                    tx_busy |= *pend;
                }
                sock.complete(&mut self.umem, self.cfg.ring_size);
            }
            for s in &mut self.socks {
                if s.fill(&mut self.umem, self.cfg.ring_size) > 0 && s.fill_needs_wakeup() {
                    s.wake_rx();
                }
            }
            if got == 0 {
                c.idle_loops.add(1);
                idle_streak += 1;
                if self.cfg.poll == PollMode::Adaptive
                    && idle_streak > SPIN_BEFORE_SLEEP
                    && !tx_busy
                {
                    self.tables.idle();
                    c.sleeps.add(1);
                    crate::xsk::poll_readable(&mut pollfds, SLEEP_MS);
                    idle_streak = 0;
                    // A quiescent point on waking: the frames that woke us (and everything
                    // after) see any table version published while we slept.
                    if self.tables.quiesce() {
                        c.table_switches.add(1);
                    }
                }
            } else {
                idle_streak = 0;
            }
        }
        let invalid: u64 = self.socks.iter().map(|s| s.invalid_descs).sum();
        c.invalid_descs.add(invalid);
    }
}

/// Binding right after a previous socket on the same queue closed can fail with EBUSY for a
/// moment while the kernel tears the old one down (lab report §3): retry for up to 2 s.
fn bind_retry(mut f: impl FnMut() -> std::io::Result<Socket>) -> std::io::Result<Socket> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.to_string().contains("busy") => {
                if std::time::Instant::now() > deadline {
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}
