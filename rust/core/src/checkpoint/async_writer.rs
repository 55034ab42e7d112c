//! The background writer: one write in flight at a time, on its own thread, from a snapshot
//! buffer. Owns the thread's lifetime, the hand-back of its result, and the snapshot copy of
//! `submit`, which overlaps with the write (see `gate`): the writer starts on the first pieces
//! while later ones are still being copied, and `submit` returns once the copy is complete.
//! It does not own the buffer's memory (see `ByteSource`).
//!
//! A result is reported exactly once: by the `wait` (or the next `start`, which waits first).
//! Fork safety: a forked child inherits the handle but not the thread; `wait` in the child
//! forgets the handle and reports an error instead of joining a thread that does not exist.

use std::path::PathBuf;
use std::thread::JoinHandle;

use std::sync::Arc;

use super::error::CheckpointError;
use super::layout::FileLayout;
use super::gate::{piece_offset, Gate, RawBuffer};
use super::io::write_atomic_with;
use super::parallel;

/// Memory holding a checkpoint's data region (the snapshot buffer), kept allocated while the
/// writer owns it.
pub trait ByteSource: Send + 'static {
    /// The buffer as raw memory (called once, before any copy or write).
    fn raw(&mut self) -> RawBuffer;
}

impl ByteSource for Vec<u8> {
    fn raw(&mut self) -> RawBuffer {
        // SAFETY: the Vec's heap allocation does not move while the Box holding it lives.
        unsafe { RawBuffer::new(self.as_mut_ptr(), self.len()) }
    }
}

struct InFlight {
    handle: JoinHandle<Result<(), CheckpointError>>,
    pid: u32,
    path: PathBuf,
    /// For a held write: the gate and the slot the writer waits on before it finishes the file.
    hold: Option<(Arc<Gate>, usize)>,
}

/// Writes checkpoints on a background thread, one at a time.
#[derive(Default)]
pub struct AsyncWriter {
    in_flight: Option<InFlight>,
}

impl AsyncWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while a write has been started and not yet waited for.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// True while a held write (see `submit_held`) waits for `commit` or `discard`.
    pub fn held(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|j| j.hold.is_some())
    }

    /// Let a held write finish: its header is written and it is renamed into place.
    pub fn commit(&mut self) {
        if let Some((gate, slot)) = self.in_flight.as_mut().and_then(|j| j.hold.take()) {
            gate.open(slot);
        }
    }

    /// Give up a held write: its temporary file is removed and `path` is left as it was; the
    /// next `wait` returns the error.
    pub fn discard(&mut self) {
        if let Some((gate, _)) = self.in_flight.as_mut().and_then(|j| j.hold.take()) {
            gate.abort();
        }
    }

    /// Block until the write in flight (if any) is durable; return its error if it failed.
    /// A held write is committed first (the caller had its chance to `discard` it).
    pub fn wait(&mut self) -> Result<(), CheckpointError> {
        self.commit();
        let Some(job) = self.in_flight.take() else {
            return Ok(());
        };
        if job.pid != std::process::id() {
            // Forked child: the thread lives in the parent only.
            std::mem::forget(job.handle);
            return Err(CheckpointError::Invalid(format!(
                "the write of '{}' was started in the parent process",
                job.path.display()
            )));
        }
        job.handle.join().unwrap_or_else(|_| {
            Err(CheckpointError::Invalid(format!(
                "internal error: the background write of '{}' panicked",
                job.path.display()
            )))
        })
    }

    /// Start writing `buffer` (the data region laid out as `layout` says, already filled) to
    /// `path`. A write still in flight is awaited first, and its error returned (the new write
    /// is then not started).
    pub fn start<L: FileLayout + Send + Sync + 'static>(
        &mut self,
        path: PathBuf,
        layout: L,
        buffer: Box<dyn ByteSource>,
    ) -> Result<(), CheckpointError> {
        self.submit(path, layout, buffer, &[])
    }

    /// Copy `copies` (`(bytes, offset in the data region)`, each one whole tensor of `layout`)
    /// into `buffer`, writing the buffer to `path` on the background thread meanwhile; return
    /// once every copy is done (the caller may then modify the sources), while the write goes
    /// on. The rest of the buffer must already hold its tensors. A write still in flight is
    /// awaited first (its error is returned and nothing is started).
    pub fn submit<L: FileLayout + Send + Sync + 'static>(
        &mut self,
        path: PathBuf,
        layout: L,
        buffer: Box<dyn ByteSource>,
        copies: &[(&[u8], u64)],
    ) -> Result<(), CheckpointError> {
        self.submit_removing(path, layout, buffer, copies, Vec::new())
    }

    /// `submit`, and delete the files `remove` on the background thread before it writes
    /// `path`. They may go then: the write in flight before this call, whose checkpoint
    /// replaces them, is durable once it has been awaited here. A file already gone is fine;
    /// another failure to delete one is reported like a write error (by the next `wait`),
    /// after the new checkpoint was written all the same.
    pub fn submit_removing<L: FileLayout + Send + Sync + 'static>(
        &mut self,
        path: PathBuf,
        layout: L,
        buffer: Box<dyn ByteSource>,
        copies: &[(&[u8], u64)],
        remove: Vec<PathBuf>,
    ) -> Result<(), CheckpointError> {
        self.submit_held(path, layout, buffer, copies, remove, false)
    }

    /// `submit_removing`; with `hold`, the file is written and fsynced but not completed
    /// (header) nor renamed into place until `commit` (or `wait`), and `discard` drops it. For
    /// a caller that checks, after the copy, that its sources did not change during it.
    pub fn submit_held<L: FileLayout + Send + Sync + 'static>(
        &mut self,
        path: PathBuf,
        layout: L,
        mut buffer: Box<dyn ByteSource>,
        copies: &[(&[u8], u64)],
        remove: Vec<PathBuf>,
        hold: bool,
    ) -> Result<(), CheckpointError> {
        self.wait()?;
        let raw = buffer.raw();
        if (raw.len() as u64) < layout.data_len() {
            return Err(CheckpointError::Invalid(
                "snapshot buffer smaller than the checkpoint".into(),
            ));
        }
        let pieces = parallel::pieces(layout.tensor_nbytes());
        let copy_of = match_copies(&layout, raw, copies)?;
        // One slot per piece, and with `hold` one more that the writer waits on before the
        // header and the rename (opened by `commit`).
        let slot = pieces.len();
        let gate = Arc::new(Gate::new(slot + usize::from(hold)));
        let mut to_copy = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            match copy_of.get(p.tensor).copied().flatten() {
                Some(src) => to_copy.push((i, src)),
                None => gate.preopen(i),
            }
        }
        let thread_path = path.clone();
        let thread_gate = Arc::clone(&gate);
        let offsets = layout.buffer_offsets().to_vec();
        let copy_offsets = offsets.clone();
        let handle = std::thread::Builder::new()
            .name("ferrotrain-ckpt".into())
            .spawn(move || {
                let _buffer = buffer; // kept allocated until the write is done
                lower_priority();
                let removed = remove_files(&remove);
                write_atomic_with(&thread_path, &layout, |i, p| {
                    if hold && i + 1 == slot {
                        // The header is written only once every piece is: waiting in one
                        // piece's fetch holds the file back until the commit.
                        thread_gate.wait(slot)?;
                    }
                    thread_gate.wait(i)?;
                    // SAFETY: the gate is open, so the copy of this piece is finished and
                    // nothing writes these bytes until the write is waited for.
                    unsafe { raw.piece(piece_offset(&offsets, p)?, p.len) }
                })
                .and(removed)
            })
            .map_err(|e| {
                CheckpointError::io(&path, "cannot start the background writer thread", e)
            })?;
        self.in_flight = Some(InFlight {
            handle,
            pid: std::process::id(),
            path,
            hold: hold.then(|| (Arc::clone(&gate), slot)),
        });
        let copied = copy(&pieces, &to_copy, raw, &copy_offsets, &gate);
        if let Err(e) = copied {
            gate.abort();
            // The writer gives up on the aborted gate and removes its temporary file.
            let _ = self.wait();
            return Err(e);
        }
        Ok(())
    }
}

/// Run this thread (and the worker threads it starts, which inherit it) at a lower priority:
/// the snapshot copy and the training loop come first when the cores are busy, and the write
/// uses what they leave. Best effort (Linux only; errors ignored).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls; `gettid` names this thread, and nice applies per thread on Linux.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Delete `paths` (a file already gone counts as deleted); the first failure is returned after
/// trying them all.
fn remove_files(paths: &[PathBuf]) -> Result<(), CheckpointError> {
    let mut result = Ok(());
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                if result.is_ok() {
                    result = Err(CheckpointError::io(
                        path,
                        "cannot delete the checkpoint it replaces",
                        e,
                    ));
                }
            }
        }
    }
    result
}

fn copy(
    pieces: &[parallel::Piece],
    to_copy: &[(usize, &[u8])],
    raw: RawBuffer,
    copy_offsets: &[u64],
    gate: &Gate,
) -> Result<(), CheckpointError> {
    let bytes = to_copy.iter().map(|&(i, _)| pieces[i].len).sum();
    parallel::run(to_copy.len(), bytes, |k| {
        let (i, src) = to_copy[k];
        let p = pieces[i];
        let from = src
            .get(p.start as usize..(p.start + p.len) as usize)
            .ok_or_else(|| CheckpointError::Invalid("internal error: piece out of range".into()))?;
        // SAFETY: the writer reads this piece only after `open(i)` below; pieces are
        // disjoint, and `match_copies` checked that no source overlaps the buffer.
        unsafe { raw.fill(piece_offset(copy_offsets, p)?, from)? };
        gate.open(i);
        Ok(())
    })?;
    Ok(())
}

/// For each tensor of `layout`, the source to copy into it (if any). Every non-empty copy must
/// cover exactly one tensor, at most once, and not overlap the buffer.
fn match_copies<'c, L: FileLayout>(
    layout: &L,
    raw: RawBuffer,
    copies: &[(&'c [u8], u64)],
) -> Result<Vec<Option<&'c [u8]>>, CheckpointError> {
    let offsets = layout.buffer_offsets();
    let lens = layout.tensor_nbytes();
    let mut out: Vec<Option<&[u8]>> = vec![None; offsets.len()];
    let mut by_offset: Vec<usize> = (0..offsets.len()).collect();
    by_offset.sort_by_key(|&t| offsets[t]);
    let buf_start = raw.addr();
    let buf_end = buf_start + raw.len();
    for &(src, off) in copies {
        if src.is_empty() {
            continue;
        }
        let s = src.as_ptr() as usize;
        if s < buf_end && buf_start < s + src.len() {
            return Err(CheckpointError::Invalid(
                "a source tensor overlaps the snapshot buffer".into(),
            ));
        }
        // Offsets are not in spec order (the layout groups tensors by alignment): search the
        // spec indices sorted by offset.
        let first = by_offset.partition_point(|&t| offsets[t] < off);
        let t = by_offset[first..]
            .iter()
            .copied()
            .take_while(|&t| offsets[t] == off)
            .find(|&t| lens[t] == src.len() as u64)
            .ok_or_else(|| {
                CheckpointError::Invalid(format!(
                    "a copy of {} bytes at {off} does not match a tensor of the checkpoint",
                    src.len()
                ))
            })?;
        if out[t].replace(src).is_some() {
            return Err(CheckpointError::Invalid("snapshot copies overlap".into()));
        }
    }
    Ok(out)
}

impl Drop for AsyncWriter {
    /// Never abandon a write half-way: a dropped writer finishes its file first. The result has
    /// no one to go to here; the Python layer waits explicitly (and at exit) so it is not lost.
    fn drop(&mut self) {
        if let Some(job) = self.in_flight.take_if(|job| job.pid != std::process::id()) {
            // A forked child dropping its copy: the write belongs to the parent.
            std::mem::forget(job.handle);
            return;
        }
        if let Err(e) = self.wait() {
            eprintln!("ferrotrain: background checkpoint write failed: {e}");
        }
    }
}
