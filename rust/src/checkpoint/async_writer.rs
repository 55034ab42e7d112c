//! The background writer: one write in flight at a time, on its own thread, from a snapshot
//! buffer the caller filled. Owns the thread's lifetime and the hand-back of its result; it
//! does not own the buffer (see `ByteSource`), nor the snapshot (the caller copies first).
//!
//! A result is reported exactly once: by the `wait` (or the next `start`, which waits first).
//! Fork safety: a forked child inherits the handle but not the thread; `wait` in the child
//! forgets the handle and reports an error instead of joining a thread that does not exist.

use std::path::PathBuf;
use std::thread::JoinHandle;

use super::error::CheckpointError;
use super::format::Layout;
use super::io::write_atomic;

/// Memory holding a checkpoint's data region, readable from the writer thread.
pub trait ByteSource: Send + 'static {
    fn bytes(&self) -> &[u8];
}

impl ByteSource for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

struct InFlight {
    handle: JoinHandle<Result<(), CheckpointError>>,
    pid: u32,
    path: PathBuf,
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

    /// Block until the write in flight (if any) is durable; return its error if it failed.
    pub fn wait(&mut self) -> Result<(), CheckpointError> {
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

    /// Start writing `buffer` (the data region laid out as `layout` says) to `path`. A write
    /// still in flight is awaited first, and its error returned (the new write is then not
    /// started).
    pub fn start(
        &mut self,
        path: PathBuf,
        layout: Layout,
        buffer: Box<dyn ByteSource>,
    ) -> Result<(), CheckpointError> {
        self.wait()?;
        if (buffer.bytes().len() as u64) < layout.data_len() {
            return Err(CheckpointError::Invalid(
                "snapshot buffer smaller than the checkpoint".into(),
            ));
        }
        let thread_path = path.clone();
        let handle = std::thread::Builder::new()
            .name("ferrotrain-ckpt".into())
            .spawn(move || {
                let bytes = buffer.bytes();
                let sources = layout
                    .offsets()
                    .iter()
                    .zip(layout.nbytes())
                    .map(|(&o, &n)| bytes.get(o as usize..(o + n) as usize))
                    .collect::<Option<Vec<&[u8]>>>()
                    .ok_or_else(|| {
                        CheckpointError::Invalid(
                            "snapshot buffer smaller than the checkpoint".into(),
                        )
                    })?;
                write_atomic(&thread_path, &layout, &sources)
            })
            .map_err(|e| {
                CheckpointError::io(&path, "cannot start the background writer thread", e)
            })?;
        self.in_flight = Some(InFlight {
            handle,
            pid: std::process::id(),
            path,
        });
        Ok(())
    }
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
