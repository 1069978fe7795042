//! A pinned worker: its rx queues of every owned device, one UMEM shared by their sockets.
//!
//! Queues: with `N` workers, worker `w` serves rx queue `q` of a device when `q mod N = w`,
//! so every rx queue of every device is served whatever `--queues` says (a device with more
//! queues than workers gives some workers several). Its *home* socket on a device is the one
//! on queue `w` (every device has at least `N` queues in use: the daemon checks), with a TX
//! ring: everything the worker sends to that device leaves through it. Its other sockets on
//! the device are receive-only.
//!
//! Loop (OVS `pmd_thread_main` shape): reap completions → refill fill rings → poll each
//! socket's RX ring → pipeline → queue on the destination device's home TX ring (moving the
//! descriptor; no copy) → kick TX while the kernel has work it has not taken. Every
//! [`HOUSEKEEPING_EVERY`] loops it passes a quiescent point (picks up a new table version)
//! and checks the stop flag. In adaptive mode a worker
//! that has had no frame for `spin` (`datapath.poll_spin_us`, a time, not a loop count)
//! sleeps in poll(2) on its RX sockets instead of burning the core; a sleep that times out
//! goes straight back to sleep.
//!
//! The loop allocates nothing: the RX batch vector is sized once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use abi::MetricDir;
use tables::PollMode;
use tables::{PortId, TableReader};

use crate::stage::{self, Scratch, Verdict};
use crate::stats::WorkerCounters;
use crate::wire::Buf;
use crate::xsk::{Frame, Socket, Umem, UmemRef};

/// Loops between quiescent points / stop checks.
pub const HOUSEKEEPING_EVERY: u64 = 64;
/// Empty loops between two looks at the clock while spinning idle (a vDSO read, no syscall).
const CLOCK_EVERY: u32 = 16;
/// Kicks per TX socket and loop at most (copy mode moves up to 32 frames per kick).
const MAX_KICKS: u32 = 8;
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
    /// Adaptive poll: how long an idle worker keeps spinning after its last frame before it
    /// sleeps in poll(2) (`datapath.poll_spin_us`).
    pub spin: std::time::Duration,
    /// SCHED_FIFO priority (`datapath.rt_priority`); 0: normal scheduling.
    pub rt_priority: u8,
    /// How long queued TX may wait for more frames before its kick (`datapath.tx_flush_us`);
    /// zero: kick at the end of the loop that queued it.
    pub tx_flush: std::time::Duration,
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
    /// The worker's id for it (marks the UMEM chunks it holds).
    pub id: u16,
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

/// A socket made for a worker by the control thread (an endpoint added at run time), with
/// the id the worker marks its chunks with ([`crate::xsk::Umem::reclaim`]).
#[derive(Debug)]
pub struct NewSocket {
    pub socket: Socket,
    pub id: u16,
    pub queue: u32,
    pub home: bool,
}

/// What the control thread asks of a running worker. Taken only at quiescent points (every
/// [`HOUSEKEEPING_EVERY`] loops, and on waking), when the worker holds no frame outside
/// its pool and rings, so a change never splits a batch.
#[derive(Debug)]
pub enum Command {
    /// Serve `port` with these sockets (fill their rings, poll them); ack [`Ack::Adopted`].
    Adopt {
        port: PortId,
        sockets: Vec<NewSocket>,
    },
    /// Stop serving `port`: give its sockets back (the control thread closes them; closing
    /// can wait for an RCU grace period, which must not stall a worker). Frames still in
    /// their RX rings are dropped and counted (172 *Unknown sender*); ack [`Ack::Released`].
    Release { port: PortId },
    /// These sockets are closed: take back the chunks the kernel held for them.
    Reclaim { ids: Vec<u16> },
}

/// A worker's answer to a [`Command`].
#[derive(Debug)]
pub enum Ack {
    Adopted {
        worker: u32,
        port: PortId,
    },
    Released {
        worker: u32,
        port: PortId,
        sockets: Vec<Socket>,
    },
}

/// The control thread's end of a worker's command queue.
#[derive(Debug, Clone)]
pub struct WorkerControl {
    pub commands: crossbeam_channel::Sender<Command>,
    /// What the control thread needs to create sockets over this worker's UMEM.
    pub umem: UmemRef,
}

/// Commands a worker may have queued (the control thread runs one endpoint change at a time,
/// so a handful is the most ever waiting).
pub const COMMAND_QUEUE: usize = 64;

/// One socket of a running worker.
#[derive(Debug)]
struct Sock {
    s: Socket,
    info: SocketInfo,
}

/// A worker before it runs: its UMEM and sockets exist, so failures show up at start.
#[derive(Debug)]
pub struct Worker {
    cfg: WorkerConfig,
    umem: Umem,
    socks: Vec<Sock>,
    /// Per port slot: the index of its home socket in `socks` ([`NO_HOME`] for none).
    home: Vec<u32>,
    tables: TableReader,
    counters: Arc<WorkerCounters>,
    stop: Arc<AtomicBool>,
    commands: crossbeam_channel::Receiver<Command>,
    commands_tx: crossbeam_channel::Sender<Command>,
    acks: crossbeam_channel::Sender<Ack>,
}

/// A port slot this worker has no home socket on.
const NO_HOME: u32 = u32::MAX;

/// The rx queues worker `w` of `n` serves on a device with `rx` queues in use: `w` first
/// (its home queue), then `w + n`, `w + 2n`, ...
pub fn queues_of(w: u32, n: u32, rx: u32) -> impl Iterator<Item = u32> {
    (w..rx).step_by(n.max(1) as usize)
}

impl Worker {
    /// Create the UMEM (`frames` chunks; at least [`umem_frames`] of the sockets it will
    /// ever have at once) and the sockets: on every device (`devs`, in port order) one per rx
    /// queue this worker serves ([`queues_of`]). `ports` is the size of the port table
    /// (devices added at run time take the slots after `devs`). Socket ids are 0.. in the
    /// order of [`Worker::sockets`].
    ///
    /// # Errors
    /// Socket creation or bind failures, naming the device and queue.
    pub fn new(
        cfg: WorkerConfig,
        devs: &[WorkerDevice],
        frames: u32,
        ports: usize,
        tables: TableReader,
        stop: Arc<AtomicBool>,
        acks: crossbeam_channel::Sender<Ack>,
    ) -> anyhow::Result<Worker> {
        use anyhow::Context;
        let per_dev: Vec<Vec<u32>> = devs
            .iter()
            .map(|d| queues_of(cfg.queue, cfg.workers, d.rx_queues).collect())
            .collect();
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
        let mut umem = Umem::new(frames, cfg.frame_size).context("allocating UMEM")?;
        let share = umem.share();
        let mut socks: Vec<Sock> = Vec::new();
        for (p, (d, queues)) in devs.iter().zip(&per_dev).enumerate() {
            for &q in queues {
                let is_home = q == cfg.queue;
                let first = socks.first().map(|s| s.s.fd());
                let s =
                    bind_retry(|| Socket::new(&share, d.ifindex, q, cfg.ring_size, first, is_home))
                        .with_context(|| format!("AF_XDP socket on {} queue {q}", d.name))?;
                let info = SocketInfo {
                    port: p as PortId,
                    queue: q,
                    fd: s.fd(),
                    home: is_home,
                    id: socks.len() as u16,
                };
                socks.push(Sock { s, info });
            }
        }
        for s in &mut socks {
            s.s.fill(&mut umem, cfg.ring_size, s.info.id);
        }
        let (commands_tx, commands) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let mut w = Worker {
            counters: Arc::new(WorkerCounters::new(ports.max(devs.len()))),
            home: vec![NO_HOME; ports.max(devs.len())],
            cfg,
            umem,
            socks,
            tables,
            stop,
            commands,
            commands_tx,
            acks,
        };
        w.index();
        Ok(w)
    }

    /// Every socket with its device, queue and id, for the XSKMAP and for statistics.
    pub fn sockets(&self) -> Vec<SocketInfo> {
        self.socks.iter().map(|s| s.info).collect()
    }

    /// The control thread's handle: command queue and UMEM.
    pub fn control(&self) -> WorkerControl {
        WorkerControl {
            commands: self.commands_tx.clone(),
            umem: self.umem.share(),
        }
    }

    pub fn socket_mode(&self) -> &'static str {
        self.socks.first().map_or("none", |s| s.s.mode().name())
    }

    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.counters.clone()
    }

    /// Rebuild the per-port home index after the socket set changed.
    fn index(&mut self) {
        self.home.iter_mut().for_each(|h| *h = NO_HOME);
        for (i, s) in self.socks.iter().enumerate() {
            if s.info.home
                && let Some(h) = self.home.get_mut(s.info.port as usize)
            {
                *h = i as u32;
            }
        }
        self.counters.sockets.set(self.socks.len() as u64);
        self.gauges();
    }

    fn gauges(&mut self) {
        let c = &self.counters;
        c.umem_frames.set(self.umem.frames() as u64);
        c.umem_free.set(self.umem.free_frames() as u64);
        let filled: u64 = self
            .socks
            .iter_mut()
            .map(|s| s.s.fill_level() as u64 + s.s.tx_outstanding() as u64)
            .sum();
        c.umem_in_rings.set(filled);
    }

    /// Run the queued commands (at a quiescent point). True if the socket set changed.
    fn commands(&mut self) -> bool {
        let mut changed = false;
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Adopt { port, sockets } => {
                    if let Some(pc) = self.counters.ports.get(port as usize) {
                        pc.reset();
                    }
                    for mut n in sockets {
                        n.socket.fill(&mut self.umem, self.cfg.ring_size, n.id);
                        let info = SocketInfo {
                            port,
                            queue: n.queue,
                            fd: n.socket.fd(),
                            home: n.home,
                            id: n.id,
                        };
                        self.socks.push(Sock { s: n.socket, info });
                    }
                    changed = true;
                    let _ = self.acks.send(Ack::Adopted {
                        worker: self.cfg.queue,
                        port,
                    });
                }
                Command::Release { port } => {
                    let mut out = Vec::new();
                    let mut rx: Vec<Frame> = Vec::new();
                    let mut i = 0;
                    while i < self.socks.len() {
                        if self.socks[i].info.port != port {
                            i += 1;
                            continue;
                        }
                        let mut s = self.socks.swap_remove(i);
                        // What the pod sent before its device was detached: counted, then
                        // back to the pool.
                        while s.s.recv(&mut self.umem, &mut rx, 64) > 0 {
                            for f in rx.drain(..) {
                                self.counters.dropped(
                                    abi::DropReason::UnknownSender,
                                    MetricDir::Egress,
                                    f.len(),
                                );
                                self.umem.release(f);
                            }
                        }
                        // Frames still queued towards it are lost with it: counted.
                        let queued = s.s.tx_outstanding();
                        for _ in 0..queued {
                            self.counters.dropped(
                                abi::DropReason::UnknownTarget,
                                MetricDir::Ingress,
                                0,
                            );
                        }
                        s.s.complete(&mut self.umem, u32::MAX);
                        self.counters.invalid_descs.add(s.s.invalid_descs);
                        out.push(s.s);
                    }
                    changed = true;
                    let _ = self.acks.send(Ack::Released {
                        worker: self.cfg.queue,
                        port,
                        sockets: out,
                    });
                }
                Command::Reclaim { ids } => {
                    let n = self.umem.reclaim(&ids);
                    self.counters.frames_reclaimed.add(n as u64);
                    self.gauges();
                }
            }
        }
        if changed {
            self.index();
        }
        changed
    }

    /// Run until the stop flag is set. Pins itself to `cfg.core` first.
    pub fn run(mut self) {
        if let Some(core) = self.cfg.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        if self.cfg.rt_priority > 0
            && let Err(e) = crate::xsk::sys::set_fifo(self.cfg.rt_priority)
        {
            // `fastpath run` checked this before anything was made; said once, at start.
            eprintln!(
                "fastpath: worker {}: SCHED_FIFO {} refused ({e}); running with normal scheduling",
                self.cfg.queue, self.cfg.rt_priority
            );
        }
        let batch = self.cfg.batch_size;
        let mut rx: Vec<Frame> = Vec::with_capacity(batch as usize);
        // Per socket: TX to kick — ACTIVE every loop, STALLED (a kick moved nothing) only at
        // housekeeping and on waking, IDLE nothing queued.
        let mut pending: Vec<u8> = Vec::new();
        let mut pollfds: Vec<libc::pollfd> = Vec::new();
        // Per socket: when its oldest frame not yet kicked was queued (`tx_flush`).
        let mut held_since: Vec<std::time::Instant> = Vec::new();
        let rebuild = |socks: &mut [Sock],
                       pending: &mut Vec<u8>,
                       held_since: &mut Vec<std::time::Instant>,
                       pollfds: &mut Vec<libc::pollfd>| {
            // A socket that still has TX queued keeps being kicked: the set changing
            // elsewhere must not strand another pod's frames in its ring.
            held_since.clear();
            held_since.resize(socks.len(), std::time::Instant::now());
            pending.clear();
            pending.extend(socks.iter_mut().map(|s| {
                if s.s.tx_outstanding() > 0 {
                    TX_ACTIVE
                } else {
                    TX_IDLE
                }
            }));
            pollfds.clear();
            pollfds.extend(socks.iter().map(|s| libc::pollfd {
                fd: s.s.fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
        };
        rebuild(&mut self.socks, &mut pending, &mut held_since, &mut pollfds);
        let tx_flush = self.cfg.tx_flush;
        let mut idle_streak = 0u32;
        let mut idle_since = std::time::Instant::now();
        let (mut last_top, mut slept) = (std::time::Instant::now(), true);
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
                if self.commands() {
                    rebuild(&mut self.socks, &mut pending, &mut held_since, &mut pollfds);
                }
                retry_stalled(&mut pending);
                if loops.is_multiple_of(HOUSEKEEPING_EVERY * 64) {
                    self.gauges();
                }
            }
            c.loops.add(1);
            // Time from the previous loop's top to this one's: the longest a frame that
            // arrived meanwhile waited for this worker (preemption anywhere in the loop
            // shows). A sleep in poll(2) is not a stall: it restarts the clock.
            let top = std::time::Instant::now();
            if !slept {
                c.loop_time(top.duration_since(last_top).as_nanos() as u64);
            }
            slept = false;
            last_top = top;
            // Completions back to the UMEM, and the fill rings topped up from them, before
            // receiving: the kernel has chunks for the next frames while this loop works.
            for s in &mut self.socks {
                s.s.complete(&mut self.umem, self.cfg.ring_size);
                if s.s.fill(&mut self.umem, self.cfg.ring_size, s.info.id) > 0
                    && s.s.fill_needs_wakeup()
                {
                    s.s.wake_rx();
                }
            }
            let mut got = 0u32;
            let nsocks = self.socks.len();
            for i in 0..nsocks {
                let p = self.socks[i].info.port as usize;
                let n = self.socks[i].s.recv(&mut self.umem, &mut rx, batch);
                if n == 0 {
                    continue;
                }
                got += n;
                c.batch(n as usize);
                // Conntrack time: once per batch (a vDSO call, no syscall).
                scratch.now = tables::clock::now();
                let Some(pc) = c.ports.get(p) else {
                    for f in rx.drain(..) {
                        self.umem.release(f);
                    }
                    continue;
                };
                pc.rx_packets.add(n as u64);
                let t = self.tables.get();
                for mut f in rx.drain(..) {
                    let len = f.len();
                    pc.rx_bytes.add(len as u64);
                    let v = if self.cfg.bare {
                        Verdict::Deliver {
                            port: (p ^ 1).min(self.home.len() - 1) as PortId,
                        }
                    } else {
                        let (chunk, head) = self.umem.chunk_mut(&f);
                        let mut b = Buf::new(chunk, head, len);
                        let v = stage::process(&mut b, p as PortId, t, &mut scratch);
                        let (h, l) = (b.head(), b.len());
                        self.umem.set_span(&mut f, h, l);
                        v
                    };
                    // All accounting in one place, by verdict class (stats.rs).
                    c.account(&v, len);
                    let Some(out) = v.tx_port() else {
                        self.umem.release(f);
                        continue;
                    };
                    let out = out as usize;
                    let len = f.len();
                    let o = self.home.get(out).copied().unwrap_or(NO_HOME);
                    if o == NO_HOME {
                        // A verdict naming a port this worker has no socket on: the tables
                        // and the sockets disagree. Counted, never a panic.
                        c.dropped(abi::DropReason::UnknownTarget, MetricDir::Egress, len);
                        self.umem.release(f);
                        continue;
                    }
                    let o = o as usize;
                    let addr = f.addr();
                    match self.socks[o].s.send(f) {
                        Ok(()) => {
                            self.umem.set_owner(addr, self.socks[o].info.id);
                            c.ports[out].tx_packets.add(1);
                            c.ports[out].tx_bytes.add(len as u64);
                            if pending[o] == TX_IDLE {
                                held_since[o] = top;
                            }
                            pending[o] = TX_ACTIVE;
                        }
                        Err(f) => {
                            c.ports[out].tx_ring_full.add(1);
                            self.umem.release(f);
                        }
                    }
                }
            }
            let mut tx_busy = false;
            // Frames went out in this loop: work, for the spin budget (held frames flushed in
            // a loop that received nothing must not have used up the budget meanwhile).
            let mut moved = false;
            for ((sock, pend), held) in self
                .socks
                .iter_mut()
                .zip(pending.iter_mut())
                .zip(held_since.iter())
            {
                if *pend == TX_ACTIVE
                    && !tx_flush.is_zero()
                    && sock.s.tx_outstanding() < batch
                    && top.duration_since(*held) < tx_flush
                {
                    // Held for more frames (`tx_flush_us`): kicked when a batch is full or
                    // the oldest has waited long enough; never left behind by a sleep, as a
                    // worker with TX to kick does not sleep.
                    tx_busy = true;
                    continue;
                }
                if *pend == TX_ACTIVE {
                    // Copy-mode TX sends at most 32 frames per kick (the kernel's
                    // TX_BATCH_SIZE), in this thread: kick again while a kick moves frames and
                    // some are left, up to MAX_KICKS, so one loop drains what it queued instead
                    // of leaving it to hold UMEM chunks (and starve the fill rings) until the
                    // next loop. A kick that moves none (the device is gone and its socket
                    // unbound, the peer's queue momentarily full, or a zero-copy driver
                    // draining on its own) is retried only at housekeeping and on waking, and
                    // does not keep the worker from sleeping: no spin on sendto.
                    let mut state = TX_IDLE;
                    for _ in 0..MAX_KICKS {
                        let before = sock.s.tx_outstanding();
                        if sock.s.flush() {
                            c.ports[sock.info.port as usize].tx_kicks.add(1);
                        }
                        let after = sock.s.tx_outstanding();
                        moved |= after < before;
                        state = if after == 0 {
                            TX_IDLE
                        } else if after < before {
                            TX_ACTIVE
                        } else {
                            TX_STALLED
                        };
                        if state != TX_ACTIVE || !sock.s.tx_kick_needed() {
                            break;
                        }
                    }
                    *pend = state;
                    tx_busy |= *pend == TX_ACTIVE;
                }
            }
            if got == 0 && !moved {
                c.idle_loops.add(1);
                idle_streak += 1;
                let adaptive = self.cfg.poll == PollMode::Adaptive;
                if adaptive && idle_streak == 1 {
                    // The first empty loop after work: the spin budget starts now.
                    idle_since = std::time::Instant::now();
                }
                if adaptive
                    && !tx_busy
                    && idle_streak.is_multiple_of(CLOCK_EVERY)
                    && idle_since.elapsed() >= self.cfg.spin
                {
                    self.tables.idle();
                    c.sleeps.add(1);
                    self.gauges();
                    let woke = crate::xsk::poll_readable(&mut pollfds, SLEEP_MS);
                    slept = true;
                    // A worker that keeps sleeping runs few loops: check the stop flag on
                    // every wake, not only at housekeeping, so SLEEP_MS bounds how late a stop
                    // is noticed.
                    if self.stop.load(Ordering::Acquire) {
                        break;
                    }
                    // A timeout (nothing to read) goes back to sleep at the next check
                    // instead of spinning a new budget: an idle worker wakes SLEEP_MS apart
                    // for housekeeping only. A frame starts a new budget after it is served.
                    idle_streak = if woke { 0 } else { CLOCK_EVERY - 1 };
                    // A quiescent point on waking: the frames that woke us (and everything
                    // after) see any table version published while we slept, and queued
                    // commands run.
                    if self.tables.quiesce() {
                        c.table_switches.add(1);
                    }
                    if self.commands() {
                        rebuild(&mut self.socks, &mut pending, &mut held_since, &mut pollfds);
                    }
                    retry_stalled(&mut pending);
                }
            } else {
                idle_streak = 0;
            }
        }
        let invalid: u64 = self.socks.iter().map(|s| s.s.invalid_descs).sum();
        c.invalid_descs.add(invalid);
    }
}

const TX_IDLE: u8 = 0;
const TX_ACTIVE: u8 = 1;
const TX_STALLED: u8 = 2;

/// Kick stalled TX rings again (at housekeeping and on waking).
#[inline]
fn retry_stalled(pending: &mut [u8]) {
    for p in pending.iter_mut() {
        if *p == TX_STALLED {
            *p = TX_ACTIVE;
        }
    }
}

/// Binding right after a previous socket on the same queue closed can fail with EBUSY for a
/// moment while the kernel tears the old one down (lab report §3): retry for up to 2 s.
fn bind_retry(mut f: impl FnMut() -> std::io::Result<Socket>) -> std::io::Result<Socket> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match f() {
            Err(e) if crate::xsk::errno_is(&e, libc::EBUSY, "busy") => {
                if std::time::Instant::now() > deadline {
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}
