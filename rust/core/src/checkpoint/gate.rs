//! The hand-off between the snapshot copy and the background write of the same checkpoint, so
//! the two overlap: the caller copies the tensors into the snapshot buffer piece by piece and
//! opens each piece's gate; the writer thread waits on a piece's gate before it reads that piece
//! of the buffer. Owns the per-piece readiness flags and the snapshot buffer as raw memory; it
//! does not decide the pieces (`parallel::pieces`, shared with the writer) nor write files.
//!
//! Why this is sound: the writer never reads a live tensor, only the snapshot buffer, and only
//! a piece whose copy has finished (Release store after the copy, Acquire load before the read);
//! the copy writes each byte once, before opening its gate, and never touches a piece after that.
//! `submit` returns only once every copy is done, so the caller may modify its tensors then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use super::error::CheckpointError;
use super::parallel::Piece;

/// Per-piece readiness: `wait(i)` blocks until `open(i)` (or `abort`).
pub struct Gate {
    ready: Vec<AtomicBool>,
    aborted: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Gate {
    /// `n` pieces, all closed.
    pub fn new(n: usize) -> Self {
        Self {
            ready: (0..n).map(|_| AtomicBool::new(false)).collect(),
            aborted: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.ready.len()
    }

    /// True when there are no pieces.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    fn notify(&self) {
        // Taking the lock orders the flag update before a waiter's re-check (no lost wake-up).
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.cv.notify_all();
    }

    /// Piece `i`'s bytes are in the buffer (everything written before this is visible to `wait`).
    pub fn open(&self, i: usize) {
        if let Some(r) = self.ready.get(i) {
            r.store(true, Ordering::Release);
            self.notify();
        }
    }

    /// Mark piece `i` ready without waking anyone (before any waiter exists).
    pub fn preopen(&self, i: usize) {
        if let Some(r) = self.ready.get(i) {
            r.store(true, Ordering::Release);
        }
    }

    /// The copy failed: every waiter gives up with an error.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.notify();
    }

    /// Block until piece `i` is ready; an error when the copy was aborted.
    pub fn wait(&self, i: usize) -> Result<(), CheckpointError> {
        let Some(r) = self.ready.get(i) else {
            return Err(CheckpointError::Invalid(
                "internal error: piece out of range".into(),
            ));
        };
        if r.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if r.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.aborted.load(Ordering::Acquire) {
                return Err(CheckpointError::Invalid(
                    "the snapshot copy failed; nothing was written".into(),
                ));
            }
            guard = self.cv.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A snapshot buffer seen as raw memory, shared by the copy threads (writing) and the writer
/// thread (reading) without ever forming a reference to the whole buffer: each side forms a
/// slice of one piece only, at a time the gate says nobody else touches it.
#[derive(Clone, Copy)]
pub struct RawBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the pointer is only dereferenced through `piece`/`piece_mut`, whose callers guarantee
// that no two threads access the same bytes at once (see the module docs).
unsafe impl Send for RawBuffer {}
// SAFETY: as above.
unsafe impl Sync for RawBuffer {}

impl RawBuffer {
    /// # Safety
    /// `ptr` must address `len` bytes that stay allocated as long as this value (or a copy) is used.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Self { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's address (for overlap checks).
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    fn check(&self, at: u64, len: u64) -> Result<usize, CheckpointError> {
        at.checked_add(len)
            .filter(|&end| end <= self.len as u64)
            .map(|_| at as usize)
            .ok_or_else(|| {
                CheckpointError::Invalid("snapshot buffer smaller than the checkpoint".into())
            })
    }

    /// The bytes `at..at + len`.
    ///
    /// # Safety
    /// Nobody may write these bytes while the slice is alive.
    pub unsafe fn piece<'a>(&self, at: u64, len: u64) -> Result<&'a [u8], CheckpointError> {
        let at = self.check(at, len)?;
        if len == 0 {
            return Ok(&[]);
        }
        // SAFETY: in bounds (checked); exclusivity guaranteed by the caller.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.add(at), len as usize) })
    }

    /// The bytes `at..at + len`, writable.
    ///
    /// # Safety
    /// Nobody else may read or write these bytes while the slice is alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn piece_mut<'a>(&self, at: u64, len: u64) -> Result<&'a mut [u8], CheckpointError> {
        let at = self.check(at, len)?;
        if len == 0 {
            return Ok(&mut []);
        }
        // SAFETY: in bounds (checked); exclusivity guaranteed by the caller.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len as usize) })
    }

    /// Copy `src` into the bytes at `at`.
    ///
    /// # Safety
    /// Nobody else may read or write these bytes during the copy; `src` must not overlap them.
    pub unsafe fn fill(&self, at: u64, src: &[u8]) -> Result<(), CheckpointError> {
        let at = self.check(at, src.len() as u64)?;
        if !src.is_empty() {
            // SAFETY: in bounds (checked); exclusive and non-overlapping per the caller.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(at), src.len()) };
        }
        Ok(())
    }
}

/// Where each piece lives in the data region: `offsets[p.tensor] + p.start`.
pub fn piece_offset(offsets: &[u64], p: Piece) -> Result<u64, CheckpointError> {
    offsets
        .get(p.tensor)
        .map(|o| o + p.start)
        .ok_or_else(|| CheckpointError::Invalid("internal error: piece out of range".into()))
}
