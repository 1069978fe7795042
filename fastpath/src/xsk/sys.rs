//! The few other syscalls the datapath needs, kept beside the ring code so that `unsafe`
//! stays inside `xsk/`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// Move the calling thread into the network namespace `name` (`/run/netns/<name>`, as
/// `ip netns add` creates). Call before spawning threads: new threads inherit it.
///
/// # Errors
/// The namespace does not exist, or setns(2) fails.
pub fn enter_netns(name: &str) -> io::Result<()> {
    let path = format!("/run/netns/{name}");
    let f =
        std::fs::File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    // SAFETY: `f` is an open namespace fd for the duration of the call.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("setns({path}): {e}")));
    }
    Ok(())
}

/// `if_nametoindex(3)` in the calling thread's network namespace.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The effective uid of a peer on a unix socket (SO_PEERCRED).
pub fn peer_uid(fd: &impl AsRawFd) -> io::Result<u32> {
    // SAFETY: zeroed is valid for ucred; getsockopt fills it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred/len valid for writes of the given size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Run the calling thread under the real-time policy SCHED_FIFO at `priority` (1–99): no
/// normal thread on its core can preempt it (a worker's `datapath.rt_priority`). Needs
/// CAP_SYS_NICE (root) or an RLIMIT_RTPRIO that allows the priority.
pub fn set_fifo(priority: u8) -> io::Result<()> {
    let p = libc::sched_param {
        sched_priority: priority as libc::c_int,
    };
    // SAFETY: sched_setscheduler reads exactly one sched_param; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restrict the calling thread (and the threads it starts later) to `cores`.
pub fn set_thread_affinity(cores: &[usize]) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it for any core
    // below CPU_SETSIZE (checked), and sched_setaffinity reads exactly size_of::<cpu_set_t>().
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cores {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("core {c} is beyond CPU_SETSIZE"),
            ));
        }
        // SAFETY: as above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: as above; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// A device's queue counts as `ethtool -l` reports them (ETHTOOL_GCHANNELS): what is in use
/// now (`rx`, `tx` — combined channels counted in both) and the most the driver allows.
/// AF_XDP can bind only to queues in use: a plain veth has 2 queues allocated but 1 in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    pub rx: u32,
    pub tx: u32,
    pub max_rx: u32,
    pub max_tx: u32,
}

/// `struct ethtool_channels` (linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _rest: [u8; 16],
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// The queue counts of `ifname` in the calling thread's network namespace.
///
/// # Errors
/// The device does not exist (ENODEV) or its driver has no channel counts (EOPNOTSUPP).
pub fn channels(ifname: &str) -> io::Result<Channels> {
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: std::ptr::null_mut(),
        _rest: [0; 16],
    };
    if ifname.len() >= libc::IFNAMSIZ || ifname.as_bytes().contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (d, s) in req.name.iter_mut().zip(ifname.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    req.data = (&mut ch as *mut EthtoolChannels).cast();
    // SAFETY: plain socket(2); the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd we own.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    // SAFETY: `req` is a valid ifreq whose data points at `ch`, both alive for the call;
    // the kernel writes at most size_of::<EthtoolChannels>() bytes into it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL as _, &mut req as *mut IfreqData) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Channels {
        rx: ch.rx_count + ch.combined_count,
        tx: ch.tx_count + ch.combined_count,
        max_rx: ch.max_rx + ch.max_combined,
        max_tx: ch.max_tx + ch.max_combined,
    })
}

/// A `NETLINK_ROUTE` socket, opened once and kept: the control thread's periodic read of
/// the kernel's neighbour table without forking iproute2 every second (each fork held
/// pipes and a copy of the page tables of a process with a large UMEM). The messages are
/// built and parsed by safe code (`crate::neigh::nl`); this is only the socket.
#[derive(Debug)]
pub struct RtNetlink {
    fd: std::os::fd::OwnedFd,
}

impl RtNetlink {
    /// Open and bind it in the calling thread's network namespace, with a receive timeout
    /// (`timeout`) so a dump can never hang the control loop.
    pub fn open(timeout: std::time::Duration) -> io::Result<RtNetlink> {
        // SAFETY: plain socket(2); the fd is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: `tv` is a valid timeval for the duration of the call.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zeroed is a valid sockaddr_nl (pid 0: the kernel picks our port id).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `sa` is a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RtNetlink { fd })
    }

    /// Send one request to the kernel.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed is a valid sockaddr_nl; pid 0 is the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `sa` are valid for reads of their lengths for the call.
        retry_eintr(|| unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }

    /// Receive one datagram (a batch of messages) into `buf`; its length. A datagram larger
    /// than `buf` is an error (`MSG_TRUNC`), never a silently cut message. Times out with
    /// `WouldBlock` after the timeout given to [`RtNetlink::open`].
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length for the call.
        let n = retry_eintr(|| unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        })?;
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "netlink message of {n} bytes > the {} byte buffer",
                    buf.len()
                ),
            ));
        }
        Ok(n)
    }
}

/// Run a syscall returning a byte count until it is not interrupted (`EINTR`).
fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
