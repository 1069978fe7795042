//! Memory that outlives the process: a file mapped shared (`MAP_SHARED`) into memory, the
//! backing of the datapath-written tables (conntrack, affinity) so that a restarted
//! fastpath — after SIGTERM or a crash — finds every connection it knew (docs/cni.md,
//! "Restarts"). The file lives on tmpfs (`/run/fastpath/<node>/` by default), so it
//! survives the process, not a reboot; a boot ID in the file's header turns a table from
//! another boot away.
//!
//! The same tables can instead live in a **BPF array map** made with `BPF_F_MMAPABLE` and
//! pinned in bpffs ([`pinned_array`]): the kernel's tc datapath then reads and writes the
//! very memory the workers do (`xdp-redirect/src/bpf/fp_table.h`), and the pin keeps it
//! across restarts as the file does.
//!
//! # Rules
//! - This module and [`crate::shared_table`]'s marker impls are the tables layer's only
//!   `unsafe`: one `mmap`, one `munmap`, the slices handed out over the mapping, and the
//!   four `bpf(2)` commands that make, pin, open and describe a pinned array.
//! - [`Store<T>`] gives `&[T]` over either a heap allocation or a range of a [`Mapping`];
//!   `T` must be [`Shareable`]: made of atomics only, valid for every bit pattern, so what a
//!   previous process (or a crash half-way through a write) left in the file is a value of
//!   the type, and concurrent access goes through the atomics' own operations.
//! - One process maps a file at a time: the file is locked (`flock`, exclusive) for as long
//!   as the mapping lives; a second opener is refused.
#![allow(unsafe_code)]

use std::fs::File;
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

/// A type whose values may live in a shared file mapping.
///
/// # Safety
/// Every bit pattern must be a valid value (a file may hold anything), its alignment must be
/// at most 64 (mappings are page aligned, ranges start at multiples of 64), and all mutation
/// must go through atomics (the memory is shared with every reader of the table).
pub unsafe trait Shareable: Send + Sync {}

// SAFETY: an AtomicU64 is valid for every bit pattern and mutated only atomically; align 8.
unsafe impl Shareable for std::sync::atomic::AtomicU64 {}

/// A whole file (or pinned BPF array) mapped read-write and shared, locked against other
/// openers.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Held open (and locked) for as long as the mapping lives: the table's file, or the
    /// lock file of a pinned array.
    _file: File,
    /// The BPF map, for a pinned array.
    _map: Option<OwnedFd>,
}

// SAFETY: the mapping is plain memory; what is stored in it is accessed only through
// `Store<T: Shareable>`, whose element types are atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` gives out nothing but `Store` slices of atomics.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `file` (locked by the caller) read-write, shared, after giving it all `len` bytes
    /// of backing store: a page the file system could not supply later would kill the
    /// process that touches it (SIGBUS), so a file system too small is an error here.
    ///
    /// # Errors
    /// The file system has no room (`ENOSPC`), or the kernel refused the mapping (a length
    /// of 0, no memory, a file system without shared mappings).
    pub(crate) fn new(file: File, len: usize) -> std::io::Result<Mapping> {
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len as u64)?;
        if file.metadata()?.len() < len as u64 {
            return Err(std::io::Error::other(
                "the file is shorter than its mapping",
            ));
        }
        // Every byte of the mapping is backed by the file: `file` is open read-write, at
        // least `len` bytes long and allocated (checked above).
        let ptr = map_shared(&file, len)?;
        Ok(Mapping {
            ptr,
            len,
            _file: file,
            _map: None,
        })
    }

    /// Map the first `len` bytes of the BPF array `map` (made by [`pinned_array`], at
    /// least `len` bytes of values) read-write, shared; `lock` is the caller's locked file,
    /// held as long as the mapping.
    ///
    /// # Errors
    /// The kernel refused the mapping (the map is not `BPF_F_MMAPABLE`, or too small).
    pub(crate) fn of_map(map: OwnedFd, lock: File, len: usize) -> std::io::Result<Mapping> {
        // Every byte of the mapping is backed: the kernel allocated all of an mmapable array
        // map's values when the map was made (vmalloc'd, zeroed, never paged out), and
        // refuses a length beyond them.
        let ptr = map_shared(&map, len)?;
        Ok(Mapping {
            ptr,
            len,
            _file: lock,
            _map: Some(map),
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and every `Store` over this
        // mapping holds an `Arc` to it, so none is alive now.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `len` bytes of `fd` from offset 0, mapped read-write and shared at an address the kernel
/// chooses. The caller makes sure every byte is backed (a file allocated that far, a BPF
/// array that large): a page that is not would kill the process that touches it.
fn map_shared(fd: impl std::os::fd::AsFd, len: usize) -> std::io::Result<NonNull<u8>> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh mapping at an address the kernel chooses, so no existing memory is
    // replaced; nothing is read or written through it here.
    let p = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }?;
    NonNull::new(p.cast::<u8>())
        .ok_or_else(|| std::io::Error::other("mmap returned a null address"))
}

/// Open (or create) `path` for a mapping of `len` bytes, locked exclusively. Returns the
/// file and its first `header.len()` bytes as they were before (empty for a new file).
///
/// # Errors
/// The file cannot be opened or sized, or another process holds it.
pub fn open_locked(path: &Path, header_len: usize) -> std::io::Result<(File, Vec<u8>, u64)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!("locked by another process (is another fastpath running for this node?): {e}"),
        )
    })?;
    let size = f.metadata()?.len();
    let mut head = Vec::new();
    (&mut f).take(header_len as u64).read_to_end(&mut head)?;
    Ok((f, head, size))
}

/// A slice of `T`s, owned on the heap (a leaked box, freed on drop) or borrowed from a
/// [`Mapping`] it keeps alive.
pub struct Store<T: Shareable> {
    ptr: NonNull<T>,
    len: usize,
    /// `None`: the heap allocation `Box::into_raw` gave `ptr`, ours to free.
    map: Option<Arc<Mapping>>,
}

// SAFETY: a `Store` is a `Box<[T]>` or a range of a `Mapping`; with `T: Send + Sync` (atomics)
// sharing or moving it across threads is as safe as for the slice it derefs to.
unsafe impl<T: Shareable> Send for Store<T> {}
// SAFETY: as above.
unsafe impl<T: Shareable> Sync for Store<T> {}

impl<T: Shareable> Store<T> {
    /// A heap slice.
    pub fn heap(b: Box<[T]>) -> Store<T> {
        let len = b.len();
        // The box is given up for its raw pointer (no `Box` is kept beside `ptr` to alias
        // it); `Drop` rebuilds it to free the allocation.
        let raw: *mut [T] = Box::into_raw(b);
        Store {
            ptr: NonNull::new(raw.cast::<T>()).expect("Box::into_raw is never null"),
            len,
            map: None,
        }
    }

    /// `len` values of `T` at byte `offset` of `map`.
    ///
    /// # Panics
    /// The range is not inside the mapping or `offset` is not aligned for `T`: a caller's
    /// layout bug, before any value is read.
    pub fn mapped(map: &Arc<Mapping>, offset: usize, len: usize) -> Store<T> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(offset))
            .expect("store size overflows");
        assert!(bytes <= map.len, "store past the end of the mapping");
        assert!(offset.is_multiple_of(align_of::<T>()), "misaligned store");
        // SAFETY: `offset` is inside the mapping (checked above), so the pointer stays in the
        // same allocation; it is non-null because the mapping's base is.
        let p = unsafe { map.ptr.as_ptr().add(offset) };
        Store {
            ptr: NonNull::new(p.cast::<T>()).expect("inside a non-null mapping"),
            len,
            map: Some(map.clone()),
        }
    }

    /// Is it a file mapping (a table that survives the process)?
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }
}

impl<T: Shareable> Drop for Store<T> {
    fn drop(&mut self) {
        if self.map.is_none() {
            // SAFETY: `ptr`/`len` are exactly what `Box::into_raw` gave in `heap`, and this
            // is the one place the box is rebuilt (once: `drop` runs once); no reference
            // from `deref` outlives `self`.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
        }
    }
}

impl<T: Shareable> Deref for Store<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points at `len` initialised `T`s: a leaked box we own (freed only in
        // `drop`), or a range of a mapping we keep alive (bounds and alignment checked in `mapped`); any bit
        // pattern is a valid `T` (`Shareable`), and `T` is mutated only through atomics, so
        // a shared reference for as long as `self` lives is sound.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Shareable> std::fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("len", &self.len)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// `bpf(2)` commands and constants used here (`include/uapi/linux/bpf.h`).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Bytes of one array value: one line of a shared table.
pub const LINE: usize = 64;

/// `bpf(cmd, attr, size)`: the result (an fd or 0), or the OS error.
fn sys_bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, writable buffer of `attr.len()` bytes laid out as the
    // command's `union bpf_attr` member (callers fill it at the uapi offsets); the kernel
    // reads and writes at most `attr.len()` bytes of it and any pointer inside it points at
    // memory the caller keeps alive across this call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: `fd` is a descriptor bpf(2) just returned to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a pin path with a NUL byte"))
}

/// Type, key size, value size, max entries and flags of a BPF map.
fn map_info(fd: &OwnedFd) -> std::io::Result<[u32; 5]> {
    let mut info = [0u8; 88];
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let w = |i: usize| u32::from_ne_bytes(info[i * 4..i * 4 + 4].try_into().expect("4"));
    // struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, ...
    Ok([w(0), w(2), w(3), w(4), w(5)])
}

/// How [`pinned_array`] found the pin.
#[derive(Debug)]
pub enum PinnedArray {
    /// The pin was there, an array of this shape: its memory is the last run's.
    Kept(OwnedFd),
    /// A new array (zeroed), pinned; `why` says what was at the pin before, if anything.
    Made { fd: OwnedFd, why: Option<String> },
}

/// The `BPF_F_MMAPABLE` array of `lines` 64-byte values pinned at `pin` (a bpffs path),
/// named `name` (the kernel keeps 15 bytes of it): the one there if it has this shape,
/// otherwise a new one, pinned in its place.
///
/// # Errors
/// bpf(2) refused to make, pin or open the map (not root, bpffs not mounted, no memory).
pub fn pinned_array(pin: &Path, name: &str, lines: u32) -> std::io::Result<PinnedArray> {
    let path = c_path(pin)?;
    let mut why = None;
    if pin.exists() {
        let mut attr = [0u8; 16];
        attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
        match sys_bpf(BPF_OBJ_GET, &mut attr).map(owned) {
            Ok(fd) => {
                let want = [BPF_MAP_TYPE_ARRAY, 4, LINE as u32, lines, BPF_F_MMAPABLE];
                match map_info(&fd) {
                    Ok(have) if have == want => return Ok(PinnedArray::Kept(fd)),
                    Ok(have) => {
                        why = Some(format!(
                            "the pinned map has {} entries of {} bytes (type {}, flags {:#x}), not {lines} of {LINE}",
                            have[3], have[2], have[0], have[4]
                        ))
                    }
                    Err(e) => why = Some(format!("the pinned map cannot be described: {e}")),
                }
            }
            Err(e) => why = Some(format!("the pin cannot be opened: {e}")),
        }
        std::fs::remove_file(pin)?;
    }
    let mut attr = [0u8; 48];
    attr[0..4].copy_from_slice(&BPF_MAP_TYPE_ARRAY.to_ne_bytes());
    attr[4..8].copy_from_slice(&4u32.to_ne_bytes());
    attr[8..12].copy_from_slice(&(LINE as u32).to_ne_bytes());
    attr[12..16].copy_from_slice(&lines.to_ne_bytes());
    attr[16..20].copy_from_slice(&BPF_F_MMAPABLE.to_ne_bytes());
    // map_name at offset 28: [A-Za-z0-9_.] and at most 15 bytes (the kernel's BPF_OBJ_NAME_LEN).
    let n: Vec<u8> = name
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
        .take(15)
        .collect();
    attr[28..28 + n.len()].copy_from_slice(&n);
    let fd = owned(sys_bpf(BPF_MAP_CREATE, &mut attr)?);
    let mut attr = [0u8; 16];
    attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    sys_bpf(BPF_OBJ_PIN, &mut attr)?;
    Ok(PinnedArray::Made { fd, why })
}
