//! AF_XDP sockets, UMEM and rings: the only `unsafe` in this crate.
//!
//! # Contract
//! - A [`Umem`] is one anonymous mapping cut into fixed-size chunks (frames). One worker owns
//!   one UMEM and all its sockets (one per device, sharing the UMEM with `XDP_SHARED_UMEM`), so
//!   forwarding between devices moves a descriptor, never bytes, in userspace.
//! - A [`Frame`] is the ownership token of one chunk. It is not `Clone`: it moves from the
//!   pool to a fill ring (the kernel owns it), back out of an RX ring (we own it), to a TX ring
//!   (the kernel owns it) and back out of a completion ring into the pool. Bytes of a frame are
//!   reachable only through [`Umem::data_mut`] with the token in hand, so there is never a
//!   `&mut [u8]` into a chunk the kernel may be writing.
//! - Every descriptor the kernel hands us is checked (address and length inside one chunk of
//!   this UMEM); a bad one is counted and its chunk reclaimed, never dereferenced.
//! - Ring indices: we cache the peer's index and refresh it only when the cache says the ring
//!   is empty/full. Acquire when reading the kernel's index (so descriptor contents it wrote
//!   are visible), Release when publishing ours (so descriptors we wrote are visible first).
//!
//! Copy mode on veth costs one kernel memcpy per frame in each direction (RX: skb → UMEM,
//! TX: UMEM → new skb); see docs/architecture.md.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// One chunk of a UMEM, owned by whoever holds this token.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a dropped Frame leaks its chunk; return it to the pool"]
pub struct Frame {
    addr: u64,
    len: u32,
}

impl Frame {
    /// Offset of the packet data inside the UMEM.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The anonymous memory a UMEM is made of. Unmapped when the last user (the UMEM and every
/// socket registered with it) is gone.
#[derive(Debug)]
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the area is plain memory; all access goes through `Umem` (one owner, `&mut` for
// writes) or the kernel. Moving the handle between threads is fine.
unsafe impl Send for Area {}
// SAFETY: shared references to `Area` are only used to keep the mapping alive.
unsafe impl Sync for Area {}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing references the area now
        // (every `Umem` and socket holding an Arc to it is gone).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A UMEM: `frames` chunks of `frame_size` bytes plus the free-chunk pool.
///
/// Every chunk handed to the kernel is marked with the id of the socket that holds it (its
/// fill ring, or its TX ring): when a socket is closed at run time the kernel keeps whatever
/// it held (fill-ring entries, frames it had taken but not yet filled, TX not completed), and
/// [`Umem::reclaim`] takes exactly those chunks back. Without the marks a removed endpoint
/// would leak up to two rings' worth of chunks.
#[derive(Debug)]
pub struct Umem {
    area: Arc<Area>,
    frame_size: u32,
    frames: u32,
    free: Vec<u64>,
    /// Per chunk: the socket id last given it (fill or TX); [`NO_OWNER`] when never.
    owner: Vec<u16>,
    /// One bit per chunk, for [`Umem::reclaim`] (sized once: reclaiming allocates nothing).
    in_pool: Vec<u64>,
}

/// A chunk no socket was given.
pub const NO_OWNER: u16 = u16::MAX;

/// What a socket needs of a UMEM: the mapping (kept alive by every socket) and its chunk
/// size. Cloned to the control thread, which creates the sockets of endpoints added at run
/// time and hands them to the worker that owns the [`Umem`].
#[derive(Debug, Clone)]
pub struct UmemRef {
    area: Arc<Area>,
    frame_size: u32,
}

impl Umem {
    /// Map `frames` chunks of `frame_size` (a power of two, 2048 or 4096) bytes.
    ///
    /// # Errors
    /// mmap failure (ENOMEM).
    pub fn new(frames: u32, frame_size: u32) -> io::Result<Umem> {
        assert!(frame_size.is_power_of_two() && (2048..=4096).contains(&frame_size));
        let len = frames as usize * frame_size as usize;
        // SAFETY: anonymous private mapping, no file; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Umem {
            area: Arc::new(Area { ptr, len }),
            frame_size,
            frames,
            free: (0..frames as u64)
                .rev()
                .map(|i| i * frame_size as u64)
                .collect(),
            owner: vec![NO_OWNER; frames as usize],
            in_pool: vec![0; (frames as usize).div_ceil(64)],
        })
    }

    /// A handle to create sockets over this UMEM with.
    pub fn share(&self) -> UmemRef {
        UmemRef {
            area: self.area.clone(),
            frame_size: self.frame_size,
        }
    }

    /// Mark the chunk of `addr` as held by socket `id` (it was put on that socket's TX ring).
    #[inline]
    pub fn set_owner(&mut self, addr: u64, id: u16) {
        let i = (addr / self.frame_size as u64) as usize;
        if let Some(o) = self.owner.get_mut(i) {
            *o = id;
        }
    }

    /// Take back every chunk held by one of the sockets `ids`, which must all be closed (the
    /// kernel holds nothing of theirs any more): every chunk last given to one of them that is
    /// not in the pool. Returns how many came back. Runs at a quiescent point (the caller
    /// holds no frame outside the pool), in O(frames), allocating nothing.
    pub fn reclaim(&mut self, ids: &[u16]) -> u32 {
        if ids.is_empty() {
            return 0;
        }
        self.in_pool.iter_mut().for_each(|w| *w = 0);
        let fs = self.frame_size as u64;
        for &a in &self.free {
            let i = (a / fs) as usize;
            self.in_pool[i / 64] |= 1 << (i % 64);
        }
        let mut n = 0;
        for i in 0..self.frames as usize {
            if ids.contains(&self.owner[i]) && self.in_pool[i / 64] & (1 << (i % 64)) == 0 {
                self.owner[i] = NO_OWNER;
                self.free.push(i as u64 * fs);
                n += 1;
            }
        }
        n
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }
    pub fn frames(&self) -> u32 {
        self.frames
    }
    /// Chunks in the pool right now.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Take a chunk from the pool.
    #[inline]
    pub fn alloc(&mut self) -> Option<Frame> {
        self.free.pop().map(|addr| Frame { addr, len: 0 })
    }

    /// Return a chunk to the pool.
    #[inline]
    pub fn release(&mut self, f: Frame) {
        self.free.push(self.chunk_of(f.addr));
    }

    #[inline]
    fn chunk_of(&self, addr: u64) -> u64 {
        addr & !(self.frame_size as u64 - 1)
    }

    /// Is `addr..addr+len` inside one chunk of this UMEM?
    #[inline]
    fn valid(&self, addr: u64, len: u32) -> bool {
        let end = addr + len as u64;
        end <= self.area.len as u64
            && self.chunk_of(addr) == self.chunk_of(end.saturating_sub(1).max(addr))
    }

    /// The packet bytes of a frame we own.
    #[inline]
    pub fn data_mut(&mut self, f: &Frame) -> &mut [u8] {
        debug_assert!(self.valid(f.addr, f.len));
        // SAFETY: `f` is a token for a chunk we own (it came from `alloc` or an RX/completion
        // ring and was validated there), addr+len lies inside that one chunk of the mapping,
        // and `&mut self` guarantees no other slice of the UMEM is alive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.area.ptr.as_ptr().add(f.addr as usize),
                f.len as usize,
            )
        }
    }

    /// The whole chunk of a frame we own, and the offset of its packet in it: what the
    /// pipeline needs to grow the packet into the headroom (the kernel leaves 256 bytes,
    /// `XDP_PACKET_HEADROOM`, in front of every received packet) or to shrink it.
    #[inline]
    pub fn chunk_mut(&mut self, f: &Frame) -> (&mut [u8], usize) {
        debug_assert!(self.valid(f.addr, f.len));
        let start = self.chunk_of(f.addr);
        // SAFETY: as in `data_mut`: the token stands for this whole chunk, which lies inside
        // the mapping (`valid` held when the token was made), and `&mut self` excludes any
        // other slice of the UMEM.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(
                self.area.ptr.as_ptr().add(start as usize),
                self.frame_size as usize,
            )
        };
        (chunk, (f.addr - start) as usize)
    }

    /// Move a frame's packet to `head..head + len` of its chunk (after encap/decap).
    /// Panics if that leaves the chunk: the pipeline's `Buf` never lets it.
    #[inline]
    pub fn set_span(&self, f: &mut Frame, head: usize, len: usize) {
        assert!(head + len <= self.frame_size as usize);
        f.addr = self.chunk_of(f.addr) + head as u64;
        f.len = len as u32;
    }

    /// Write `bytes` into a frame we own (from its chunk start) and set its length.
    /// Used by generators and tests. Panics if `bytes` does not fit the chunk.
    pub fn write(&mut self, f: &mut Frame, bytes: &[u8]) {
        assert!(bytes.len() <= self.frame_size as usize);
        f.addr = self.chunk_of(f.addr);
        f.len = bytes.len() as u32;
        self.data_mut(f).copy_from_slice(bytes);
    }
}

/// One mmap'ed ring (producer, consumer, flags, descriptors).
#[derive(Debug)]
struct Ring<D> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<D>,
    mask: u32,
    size: u32,
    /// Our own index (producer for fill/tx, consumer for rx/comp).
    local: u32,
    /// Cached copy of the kernel's index.
    cached: u32,
    map: NonNull<u8>,
    map_len: usize,
}

// SAFETY: the ring memory belongs to this handle alone on our side (single producer or single
// consumer); moving it to the worker thread that uses it is fine.
unsafe impl<D> Send for Ring<D> {}

impl<D: Copy> Ring<D> {
    /// # Safety
    /// `fd` is an AF_XDP socket whose ring at `pgoff` was sized with `size` entries, and `off`
    /// are the offsets the kernel reported for that ring.
    unsafe fn map(
        fd: RawFd,
        pgoff: u64,
        size: u32,
        off: &libc::xdp_ring_offset,
    ) -> io::Result<Self> {
        let map_len = off.desc as usize + size as usize * size_of::<D>();
        // SAFETY: mapping a kernel ring of the given fd; result checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p.cast::<u8>();
        // SAFETY: the kernel-reported offsets lie inside the mapping and are suitably aligned
        // (u32 indices, 8- or 16-byte descriptors).
        let at = |o: u64| unsafe { NonNull::new_unchecked(base.add(o as usize)) };
        let producer = at(off.producer).cast::<AtomicU32>();
        let consumer = at(off.consumer).cast::<AtomicU32>();
        let r = Ring {
            producer,
            consumer,
            flags: at(off.flags).cast(),
            descs: at(off.desc).cast(),
            mask: size - 1,
            size,
            local: 0,
            cached: 0,
            map: at(0),
            map_len,
        };
        Ok(r)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping; the kernel updates it atomically.
        unsafe { self.producer.as_ref() }
    }
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { self.consumer.as_ref() }
    }
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as above; flags is a u32 the kernel sets atomically.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    #[inline]
    fn write(&mut self, idx: u32, d: D) {
        // SAFETY: idx & mask < size, inside the descriptor array; the slot is ours (between
        // the kernel's consumer and our producer it is free).
        unsafe {
            self.descs
                .as_ptr()
                .add((idx & self.mask) as usize)
                .write_volatile(d)
        }
    }
    #[inline]
    fn read(&self, idx: u32) -> D {
        // SAFETY: idx & mask < size; the slot was published by the kernel (between our
        // consumer and its producer, made visible by the Acquire load of the producer).
        unsafe {
            self.descs
                .as_ptr()
                .add((idx & self.mask) as usize)
                .read_volatile()
        }
    }

    // --- producer side (fill, tx) ---
    /// Free slots, refreshing the kernel's consumer index if fewer than `want` look free.
    #[inline]
    fn prod_free(&mut self, want: u32) -> u32 {
        let free = self.size - self.local.wrapping_sub(self.cached);
        if free >= want {
            return free;
        }
        // Acquire: slots the kernel consumed are done being read before we overwrite them.
        self.cached = self.consumer().load(Ordering::Acquire);
        self.size - self.local.wrapping_sub(self.cached)
    }
    #[inline]
    fn prod_publish(&mut self) {
        // Release: descriptor writes above are visible before the new producer index.
        self.producer().store(self.local, Ordering::Release);
    }
    /// Descriptors published but not yet consumed by the kernel.
    fn prod_outstanding(&mut self) -> u32 {
        self.cached = self.consumer().load(Ordering::Acquire);
        self.local.wrapping_sub(self.cached)
    }

    // --- consumer side (rx, comp) ---
    #[inline]
    fn cons_avail(&mut self) -> u32 {
        let n = self.cached.wrapping_sub(self.local);
        if n > 0 {
            return n;
        }
        // Acquire: pairs with the kernel's release of its producer index.
        self.cached = self.producer().load(Ordering::Acquire);
        self.cached.wrapping_sub(self.local)
    }
    #[inline]
    fn cons_release(&mut self) {
        // Release: we are done reading the slots before the kernel may reuse them.
        self.consumer().store(self.local, Ordering::Release);
    }
}

impl<D> Drop for Ring<D> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `map`; no references outlive self.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// How the kernel bound a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    Copy,
    ZeroCopy,
}

impl BindMode {
    pub fn name(self) -> &'static str {
        match self {
            BindMode::Copy => "copy",
            BindMode::ZeroCopy => "zero-copy",
        }
    }
}

/// Kernel statistics of one socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct XskStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl XskStats {
    /// The two added (one device's sockets of a worker together).
    pub fn add(&self, o: &XskStats) -> XskStats {
        XskStats {
            rx_dropped: self.rx_dropped + o.rx_dropped,
            rx_invalid_descs: self.rx_invalid_descs + o.rx_invalid_descs,
            tx_invalid_descs: self.tx_invalid_descs + o.tx_invalid_descs,
            rx_ring_full: self.rx_ring_full + o.rx_ring_full,
            rx_fill_ring_empty_descs: self.rx_fill_ring_empty_descs + o.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: self.tx_ring_empty_descs + o.tx_ring_empty_descs,
        }
    }
}

/// One AF_XDP socket bound to (ifindex, queue), with its rings: RX, fill and completion
/// always, TX unless it was made receive-only ([`Socket::new`] `tx: false`).
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    rx: Ring<libc::xdp_desc>,
    tx: Option<Ring<libc::xdp_desc>>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    mode: BindMode,
    /// Descriptors from the kernel that failed the bounds check.
    pub invalid_descs: u64,
    _area: Arc<Area>,
}

/// Is `e` the errno `n`? The errors of this module carry the syscall's name (`bind: Device
/// or resource busy`), which loses the raw errno, so the message `text` is checked too.
pub fn errno_is(e: &io::Error, n: i32, text: &str) -> bool {
    e.raw_os_error() == Some(n) || e.to_string().contains(text)
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T, what: &str) -> io::Result<()> {
    // SAFETY: `v` is a valid T for the duration of the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(r, what)
}

impl Socket {
    /// Create a socket on `ifindex`/`queue` over `umem`, with rings of `ring_size` entries.
    /// `shared_with`: a bound socket already registered with this same UMEM (this one then
    /// shares it and gets its own fill/completion rings, as sharing across devices and queues
    /// requires); `None` registers the UMEM anew (the first socket, or the first after all of
    /// a worker's sockets were closed). The fd must be a live socket of *this* UMEM — the
    /// kernel would otherwise put this socket's packets in another UMEM's chunks; callers
    /// keep the fds of the sockets they made and never pass a closed one. `tx: false`
    /// makes a receive-only socket (no TX ring): the kernel lets a socket with a TX ring bind
    /// only to a queue below the device's TX queue count, one without to any RX queue.
    ///
    /// # Errors
    /// Any failing syscall, with its name (e.g. `bind: Device or resource busy`).
    pub fn new(
        umem: &UmemRef,
        ifindex: u32,
        queue: u32,
        ring_size: u32,
        shared_with: Option<RawFd>,
        tx: bool,
    ) -> io::Result<Socket> {
        assert!(ring_size.is_power_of_two());
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        check(raw, "socket(AF_XDP)")?;
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let f = fd.as_raw_fd();
        if shared_with.is_none() {
            // SAFETY: zeroed is a valid xdp_umem_reg; fields set below.
            let mut reg: libc::xdp_umem_reg = unsafe { std::mem::zeroed() };
            reg.addr = umem.area.ptr.as_ptr() as u64;
            reg.len = umem.area.len as u64;
            reg.chunk_size = umem.frame_size;
            reg.headroom = 0;
            setsockopt(f, libc::XDP_UMEM_REG, &reg, "XDP_UMEM_REG")?;
        }
        setsockopt(
            f,
            libc::XDP_UMEM_FILL_RING,
            &ring_size,
            "XDP_UMEM_FILL_RING",
        )?;
        setsockopt(
            f,
            libc::XDP_UMEM_COMPLETION_RING,
            &ring_size,
            "XDP_UMEM_COMPLETION_RING",
        )?;
        setsockopt(f, libc::XDP_RX_RING, &ring_size, "XDP_RX_RING")?;
        if tx {
            setsockopt(f, libc::XDP_TX_RING, &ring_size, "XDP_TX_RING")?;
        }

        // SAFETY: zeroed is valid for this plain struct; getsockopt fills it.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: off/optlen are valid for writes of the given size.
        let r = unsafe {
            libc::getsockopt(
                f,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut optlen,
            )
        };
        check(r, "XDP_MMAP_OFFSETS")?;

        // SAFETY: each ring was sized with ring_size above and `off` is what the kernel reported.
        let (rx, tx, fill, comp) = unsafe {
            (
                Ring::<libc::xdp_desc>::map(f, libc::XDP_PGOFF_RX_RING as u64, ring_size, &off.rx)?,
                if tx {
                    Some(Ring::<libc::xdp_desc>::map(
                        f,
                        libc::XDP_PGOFF_TX_RING as u64,
                        ring_size,
                        &off.tx,
                    )?)
                } else {
                    None
                },
                Ring::<u64>::map(f, libc::XDP_UMEM_PGOFF_FILL_RING, ring_size, &off.fr)?,
                Ring::<u64>::map(f, libc::XDP_UMEM_PGOFF_COMPLETION_RING, ring_size, &off.cr)?,
            )
        };

        // SAFETY: zeroed is valid for sockaddr_xdp; fields set below.
        let mut sa: libc::sockaddr_xdp = unsafe { std::mem::zeroed() };
        sa.sxdp_family = libc::AF_XDP as u16;
        sa.sxdp_ifindex = ifindex;
        sa.sxdp_queue_id = queue;
        match shared_with {
            // Sharing: no mode flags (they are inherited; passing any is EINVAL — lab report §3).
            Some(first) => {
                sa.sxdp_flags = libc::XDP_SHARED_UMEM;
                sa.sxdp_shared_umem_fd = first as u32;
            }
            // No COPY/ZEROCOPY flag: the kernel picks zero-copy where the driver has it.
            None => sa.sxdp_flags = libc::XDP_USE_NEED_WAKEUP,
        }
        // SAFETY: sa is a valid sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                f,
                (&sa as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        check(r, "bind")?;

        let mut opts = libc::xdp_options { flags: 0 };
        let mut optlen = size_of::<libc::xdp_options>() as libc::socklen_t;
        // SAFETY: opts/optlen valid for writes.
        let r = unsafe {
            libc::getsockopt(
                f,
                libc::SOL_XDP,
                libc::XDP_OPTIONS,
                (&mut opts as *mut libc::xdp_options).cast(),
                &mut optlen,
            )
        };
        check(r, "XDP_OPTIONS")?;
        let mode = if opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 {
            BindMode::ZeroCopy
        } else {
            BindMode::Copy
        };

        Ok(Socket {
            fd,
            rx,
            tx,
            fill,
            comp,
            mode,
            invalid_descs: 0,
            _area: umem.area.clone(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    pub fn mode(&self) -> BindMode {
        self.mode
    }

    /// Hand up to `max` chunks from the pool to the kernel for receiving, marked as held by
    /// socket `owner` ([`Umem::reclaim`]). Returns how many.
    #[inline]
    pub fn fill(&mut self, umem: &mut Umem, max: u32, owner: u16) -> u32 {
        let n = self
            .fill
            .prod_free(max)
            .min(max)
            .min(umem.free.len() as u32);
        for _ in 0..n {
            let f = umem.alloc().expect("counted above");
            umem.set_owner(f.addr, owner);
            let idx = self.fill.local;
            self.fill.write(idx, f.addr);
            self.fill.local = idx.wrapping_add(1);
        }
        if n > 0 {
            self.fill.prod_publish();
        }
        n
    }

    /// Chunks currently in the fill ring (kernel-owned, waiting for packets).
    pub fn fill_level(&mut self) -> u32 {
        self.fill.prod_outstanding()
    }

    /// Receive up to `max` frames into `out`. Returns how many were appended.
    #[inline]
    pub fn recv(&mut self, umem: &mut Umem, out: &mut Vec<Frame>, max: u32) -> u32 {
        let n = self.rx.cons_avail().min(max);
        let mut got = 0;
        for _ in 0..n {
            let d = self.rx.read(self.rx.local);
            self.rx.local = self.rx.local.wrapping_add(1);
            if umem.valid(d.addr, d.len) && d.len > 0 {
                out.push(Frame {
                    addr: d.addr,
                    len: d.len,
                });
                got += 1;
            } else {
                self.invalid_descs += 1;
                if d.addr < umem.area.len as u64 {
                    umem.release(Frame {
                        addr: d.addr,
                        len: 0,
                    });
                }
            }
        }
        if n > 0 {
            self.rx.cons_release();
        }
        got
    }

    /// Queue a frame for transmission (published by [`Socket::flush`]). Gives the frame back if
    /// the TX ring is full (or the socket is receive-only).
    #[inline]
    pub fn send(&mut self, f: Frame) -> Result<(), Frame> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(f);
        };
        if tx.prod_free(1) == 0 {
            return Err(f);
        }
        let idx = tx.local;
        tx.write(
            idx,
            libc::xdp_desc {
                addr: f.addr,
                len: f.len,
                options: 0,
            },
        );
        tx.local = idx.wrapping_add(1);
        Ok(())
    }

    /// Does this socket have a TX ring?
    pub fn can_send(&self) -> bool {
        self.tx.is_some()
    }

    /// Publish queued TX descriptors and kick the kernel if it asked for it (copy mode always
    /// does). Returns true if a syscall was made.
    #[inline]
    pub fn flush(&mut self) -> bool {
        let copy = self.mode == BindMode::Copy;
        let fd = self.fd();
        let Some(tx) = self.tx.as_mut() else {
            return false;
        };
        tx.prod_publish();
        if tx.prod_outstanding() == 0 {
            return false;
        }
        if copy || tx.needs_wakeup() {
            // SAFETY: sendto with no buffer is the documented AF_XDP TX kick.
            let r = unsafe {
                libc::sendto(
                    fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            // EAGAIN/EBUSY/ENOBUFS mean "try again later"; frames stay queued and are retried
            // on the next flush. Other errors surface in the kernel's tx statistics.
            let _ = r;
            return true;
        }
        false
    }

    /// TX descriptors still queued in the kernel.
    pub fn tx_outstanding(&mut self) -> u32 {
        self.tx.as_mut().map_or(0, |tx| tx.prod_outstanding())
    }

    /// Move completed TX chunks back to the pool. Returns how many.
    #[inline]
    pub fn complete(&mut self, umem: &mut Umem, max: u32) -> u32 {
        let n = self.comp.cons_avail().min(max);
        for _ in 0..n {
            let addr = self.comp.read(self.comp.local);
            self.comp.local = self.comp.local.wrapping_add(1);
            if addr < umem.area.len as u64 {
                umem.release(Frame { addr, len: 0 });
            } else {
                self.invalid_descs += 1;
            }
        }
        if n > 0 {
            self.comp.cons_release();
        }
        n
    }

    /// Does queued TX need a kick to move (copy mode always: the kernel transmits only in
    /// `sendto`; zero-copy when the driver asks through need_wakeup)?
    #[inline]
    pub fn tx_kick_needed(&self) -> bool {
        self.mode == BindMode::Copy || self.tx.as_ref().is_some_and(|t| t.needs_wakeup())
    }

    /// Does the kernel want a wakeup to take more fill descriptors?
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Wake the kernel's RX side (only needed when `fill_needs_wakeup`).
    pub fn wake_rx(&self) {
        // SAFETY: zero-length recvfrom is the documented AF_XDP RX wakeup.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Kernel statistics for this socket.
    pub fn stats(&self) -> io::Result<XskStats> {
        stats_of(self.fd())
    }
}

/// `XDP_STATISTICS` of any AF_XDP socket fd (the control thread reads workers' sockets).
pub fn stats_of(fd: RawFd) -> io::Result<XskStats> {
    // SAFETY: zeroed is valid for xdp_statistics; getsockopt fills it.
    let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
    // SAFETY: s/len valid for writes of the given size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            (&mut s as *mut libc::xdp_statistics).cast(),
            &mut len,
        )
    };
    check(r, "XDP_STATISTICS")?;
    Ok(XskStats {
        rx_dropped: s.rx_dropped,
        rx_invalid_descs: s.rx_invalid_descs,
        tx_invalid_descs: s.tx_invalid_descs,
        rx_ring_full: s.rx_ring_full,
        rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
        tx_ring_empty_descs: s.tx_ring_empty_descs,
    })
}

/// Wait until one of `fds` is readable or `timeout_ms` passes. Returns true if one is.
pub fn poll_readable(fds: &mut Vec<libc::pollfd>, timeout_ms: i32) -> bool {
    // SAFETY: `fds` is a valid array of pollfd of the given length.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    r > 0
}

pub mod sys;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_bounds() {
        let mut u = Umem::new(8, 2048).unwrap();
        assert_eq!(u.free_frames(), 8);
        let mut f = u.alloc().unwrap();
        assert_eq!(f.addr(), 0);
        u.write(&mut f, &[1, 2, 3]);
        assert_eq!(u.data_mut(&f), &[1, 2, 3]);
        assert!(u.valid(100, 1948));
        assert!(!u.valid(100, 1949), "crosses into the next chunk");
        assert!(!u.valid(7 * 2048, 2049), "past the end");
        u.release(f);
        assert_eq!(u.free_frames(), 8);
    }

    /// What a closed socket held comes back, and nothing else: not the chunks in the pool,
    /// not the ones another socket holds.
    #[test]
    fn reclaim_takes_back_exactly_what_closed_sockets_held() {
        let mut u = Umem::new(10, 2048).unwrap();
        let held: Vec<Frame> = (0..6).map(|_| u.alloc().unwrap()).collect();
        for (i, f) in held.iter().enumerate() {
            u.set_owner(f.addr(), if i < 4 { 7 } else { 9 });
        }
        // One of socket 7's chunks came back through RX and was released to the pool.
        let mut it = held.into_iter();
        u.release(it.next().unwrap());
        let rest: Vec<Frame> = it.collect(); // 3 of socket 7 (kernel-held), 2 of socket 9
        assert_eq!(u.free_frames(), 5);
        assert_eq!(u.reclaim(&[7]), 3);
        assert_eq!(u.free_frames(), 8);
        assert_eq!(u.reclaim(&[7]), 0, "nothing twice");
        assert_eq!(u.reclaim(&[9]), 2);
        assert_eq!(u.free_frames(), 10);
        let mut addrs: Vec<u64> = u.free.clone();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), 10, "no chunk in the pool twice");
        std::mem::forget(rest); // tokens of chunks now back in the pool
    }
}
