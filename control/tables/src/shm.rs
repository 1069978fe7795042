//! Memory that outlives the process: a file mapped shared (`MAP_SHARED`) into memory, the
//! backing of the datapath-written tables (conntrack, affinity) so that a restarted
//! fastpath — after SIGTERM or a crash — finds every connection it knew (docs/cni.md,
//! "Restarts"). The file lives on tmpfs (`/run/fastpath/<node>/` by default), so it
//! survives the process, not a reboot; a boot ID in the file's header turns a table from
//! another boot away.
//!
//! # Rules
//! - This module and [`crate::shared_table`]'s marker impls are the tables layer's only
//!   `unsafe`: one `mmap`, one `munmap`, and the slices handed out over the mapping.
//! - [`Store<T>`] gives `&[T]` over either a heap allocation or a range of a [`Mapping`];
//!   `T` must be [`Shareable`]: made of atomics only, valid for every bit pattern, so what a
//!   previous process (or a crash half-way through a write) left in the file is a value of
//!   the type, and concurrent access goes through the atomics' own operations.
//! - One process maps a file at a time: the file is locked (`flock`, exclusive) for as long
//!   as the mapping lives; a second opener is refused.
#![allow(unsafe_code)]

use std::fs::File;
use std::ops::Deref;
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

/// A whole file mapped read-write and shared, locked against other openers.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Held open (and locked) for as long as the mapping lives.
    _file: File,
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
        use rustix::mm::{MapFlags, ProtFlags};
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len as u64)?;
        if file.metadata()?.len() < len as u64 {
            return Err(std::io::Error::other(
                "the file is shorter than its mapping",
            ));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses (no existing memory is
        // replaced); `file` is open read-write, at least `len` bytes long and allocated
        // (checked above), so every byte of the mapping is backed by the file.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &file,
                0,
            )
        }?;
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null address"))?;
        Ok(Mapping {
            ptr,
            len,
            _file: file,
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
