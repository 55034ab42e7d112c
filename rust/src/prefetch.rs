//! Bindings for the batch prefetcher: `ferrotrain._core.Prefetcher`, re-exported (with an exit
//! hook) as `ferrotrain.data.Prefetcher`.
//!
//! A Rust thread reads the user's iterator ahead of the consumer. It attaches to the interpreter
//! only for the `next()` call itself, so the GIL is held only while the loader's Python code runs;
//! the consumer waits with the GIL released, in short timed waits with a signal check between
//! them, so Ctrl-C works while it waits. The queue, its order and the `is_last` rule live in
//! `ferrotrain_core::prefetch`; this file owns the thread, the Python objects and their release.
//!
//! Rules kept here:
//! - The producer never holds the queue's lock while attached, and never waits for the GIL while
//!   holding it; so the consumer may take that lock with the GIL held, and nothing deadlocks.
//! - Every Python object the producer made (batches, the error, the iterator itself) is handed
//!   back and released by the consumer, with the interpreter attached; the producer releases none.
//! - Stopping: the producer checks the stop flag after each item, so `close` waits for the item it
//!   is reading (a `next()` cannot be interrupted from outside). A signal during that wait (a
//!   second Ctrl-C) abandons the wait: the thread ends by itself after that item.
//! - Fork safety: DataLoader workers fork. A child has none of the parent's threads, and the
//!   queue's lock may have been held by one of them at the fork; so an object that finds itself in
//!   another process (its owner's pid differs) never touches the lock nor joins the thread: it
//!   forgets them (`close`, collection and the exit hook return at once; `fetch` raises).
//!   A pid check (one `getpid`) per `fetch` is the whole cost.

use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyIterator, PyTuple};

use crate::errors::Raise;
use ferrotrain_core::prefetch::{Channel, Lookahead, Pop, Wait};

/// How long the consumer waits before checking for signals again.
const TICK: Duration = Duration::from_millis(20);
/// The OS thread's name (Linux keeps 15 bytes), visible in `/proc/<pid>/task/*/comm`.
const THREAD_NAME: &str = "ft-prefetch";

type Batch = Py<PyAny>;

struct Shared {
    chan: Channel<Batch, PyErr>,
    /// The producer leaves its iterator here when it exits, for the consumer to release.
    returned: Mutex<Option<Py<PyIterator>>>,
}

enum Mode {
    /// `depth=0`: no thread; `fetch` reads the iterator itself.
    Sync { iterator: Py<PyIterator>, queue: Lookahead<Batch, PyErr> },
    Threaded { shared: Arc<Shared>, handle: JoinHandle<()>, producer: ThreadId },
    /// Exhausted, failed or closed: `fetch` returns `None`.
    Done,
}

/// Reads batches from an iterable ahead of the training step. See `ferrotrain.data.Prefetcher`.
#[pyclass(name = "Prefetcher", module = "ferrotrain._core", subclass, weakref)]
pub struct PyPrefetcher {
    mode: Mode,
    len: Option<usize>,
    depth: usize,
    /// The process that made the object (see "Fork safety" above).
    pid: u32,
}

/// `len(obj)`, or `None` when it has none (Lightning's rule: TypeError or NotImplementedError).
fn sized_len(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    match obj.len() {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.is_instance_of::<PyTypeError>(py) || e.is_instance_of::<PyNotImplementedError>(py) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One `next()` on the iterator: `None` at its end.
fn next_item(iterator: &Bound<'_, PyIterator>) -> Option<PyResult<Batch>> {
    let mut it = iterator.clone();
    it.next().map(|r| r.map(Bound::unbind))
}

/// Calls `producer_exit` however the producer loop ends, so the consumer never waits for a
/// thread that is gone.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.chan.producer_exit();
    }
}

/// The producer thread's body.
fn produce(shared: Arc<Shared>, iterator: Py<PyIterator>) {
    let _exit = ExitGuard(&shared);
    while shared.chan.wait_for_room() {
        // Attach only for the loader's own Python code. `try_attach` fails when the interpreter is
        // shutting down; then there is nobody left to feed.
        let Some(next) = Python::try_attach(|py| next_item(iterator.bind(py))) else {
            break;
        };
        match next {
            Some(Ok(batch)) => {
                if !shared.chan.push(batch) {
                    break;
                }
            }
            Some(Err(err)) => shared.chan.fail(err),
            None => shared.chan.finish(),
        }
    }
    let mut slot = shared.returned.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *slot = Some(iterator);
}

impl PyPrefetcher {
    /// In a forked child (see "Fork safety" above), drop the parent's thread state without
    /// touching it; returns whether this happened.
    fn forget_if_forked(&mut self) -> bool {
        if self.pid == std::process::id() || !matches!(self.mode, Mode::Threaded { .. }) {
            return false;
        }
        if let Mode::Threaded { shared, handle, .. } = std::mem::replace(&mut self.mode, Mode::Done) {
            // Leaked on purpose: dropping the handle would detach a thread that is not here, and
            // the queue may be locked for ever.
            std::mem::forget(handle);
            std::mem::forget(shared);
        }
        true
    }

    fn next_batch(&mut self, py: Python<'_>) -> PyResult<Option<(Batch, bool)>> {
        if self.forget_if_forked() {
            return Err(Raise::LoopState.err(py, "this Prefetcher was created in the parent of a fork; its thread does not exist in this process",
            ));
        }
        let popped = match &mut self.mode {
            Mode::Done => return Ok(None),
            Mode::Sync { iterator, queue } => loop {
                match queue.pop() {
                    Pop::NotReady => match next_item(iterator.bind(py)) {
                        Some(Ok(batch)) => queue.push(batch),
                        Some(Err(err)) => queue.fail(err),
                        None => queue.finish(),
                    },
                    done => break done,
                }
            },
            Mode::Threaded { shared, .. } => {
                let shared = Arc::clone(shared);
                // Fast path: a batch is ready, no need to release the GIL.
                let mut popped = shared.chan.try_pop();
                while matches!(popped, Pop::NotReady) {
                    popped = match py.detach(|| shared.chan.pop_timeout(TICK)) {
                        Wait::Done(p) => p,
                        Wait::TimedOut => Pop::NotReady,
                    };
                    if matches!(popped, Pop::NotReady) {
                        if let Err(interrupt) = py.check_signals() {
                            // Ctrl-C (or another signal handler raising) while waiting: stop the
                            // producer before the exception leaves.
                            return Err(self.close_with(py, interrupt));
                        }
                    }
                }
                popped
            }
        };
        match popped {
            Pop::Item { item, is_last } => Ok(Some((item, is_last))),
            Pop::Error(err) => Err(self.close_with(py, err)),
            Pop::Exhausted | Pop::NotReady => {
                self.shutdown(py)?;
                Ok(None)
            }
        }
    }

    /// Close, then return `err` (or the error that interrupted closing).
    fn close_with(&mut self, py: Python<'_>, err: PyErr) -> PyErr {
        match self.shutdown(py) {
            Ok(()) => err,
            Err(interrupted) => interrupted,
        }
    }

    /// Stop the producer, wait for it to finish its item, join it and release what it left.
    /// A signal while waiting returns its error and leaves the thread to end on its own.
    fn shutdown(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.forget_if_forked() {
            return Ok(());
        }
        if let Mode::Threaded { shared, producer, .. } = &self.mode {
            shared.chan.stop();
            if *producer == std::thread::current().id() {
                // Called from the loader's own code on the producer thread: it stops after the
                // current item; waiting for ourselves would never end.
                self.mode = Mode::Done;
                return Ok(());
            }
            let shared = Arc::clone(shared);
            while !py.detach(|| shared.chan.wait_producer_exit(TICK)) {
                py.check_signals()?;
            }
        }
        if let Mode::Threaded { shared, handle, .. } = std::mem::replace(&mut self.mode, Mode::Done) {
            // The producer has left its loop; this join returns at once. A panic in it (a bug)
            // is reported rather than propagated.
            if py.detach(|| handle.join()).is_err() {
                return Err(PyRuntimeError::new_err("the prefetch thread panicked (a ferrotrain bug)"));
            }
            // Release the leftovers here, attached: batches not handed out, an undelivered
            // error, the iterator (a DataLoader iterator shuts its workers down when released).
            drop(shared.chan.drain());
            let iterator = shared.returned.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            drop(iterator);
        }
        Ok(())
    }
}

#[pymethods]
impl PyPrefetcher {
    #[new]
    #[pyo3(signature = (iterable, depth = 2))]
    fn new(py: Python<'_>, iterable: &Bound<'_, PyAny>, depth: i64) -> PyResult<Self> {
        let depth = usize::try_from(depth).map_err(|_| {
            Raise::Misconfiguration.err(py, format!("Prefetcher depth must be >= 0, got {depth}"))
        })?;
        let len = sized_len(py, iterable)?;
        // `iter()` here, in the caller's thread: a DataLoader starts (forks) its workers now.
        let iterator = iterable.try_iter()?.unbind();
        let len64 = len.map(|n| n as u64);
        let mode = if depth == 0 {
            Mode::Sync { iterator, queue: Lookahead::new(0, len64) }
        } else {
            let shared = Arc::new(Shared { chan: Channel::new(depth, len64), returned: Mutex::new(None) });
            let for_thread = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(THREAD_NAME.to_owned())
                .spawn(move || produce(for_thread, iterator))
                .map_err(|e| PyRuntimeError::new_err(format!("cannot start the prefetch thread: {e}")))?;
            let producer = handle.thread().id();
            Mode::Threaded { shared, handle, producer }
        };
        Ok(Self { mode, len, depth, pid: std::process::id() })
    }

    /// The next batch and whether it is the last one, or `None` when the iterable is exhausted
    /// (and after `close`). An exception from the iterable is raised here, at its position.
    fn fetch(&mut self, py: Python<'_>) -> PyResult<Option<(Batch, bool)>> {
        self.next_batch(py)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<(Batch, bool)>> {
        self.next_batch(py)
    }

    /// Stop reading, wait for the item being read to finish, join the thread. Idempotent.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        self.shutdown(py)
    }

    /// Whether the background thread is running.
    fn is_alive(&self) -> bool {
        matches!(&self.mode, Mode::Threaded { handle, .. } if !handle.is_finished())
    }

    #[getter]
    fn depth(&self) -> usize {
        self.depth
    }

    fn __len__(&self) -> PyResult<usize> {
        self.len.ok_or_else(|| PyTypeError::new_err("the iterable given to Prefetcher has no len()"))
    }

    fn __bool__(&self) -> bool {
        true
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.shutdown(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = match self.mode {
            Mode::Sync { .. } => "synchronous",
            Mode::Threaded { .. } => "running",
            Mode::Done => "done",
        };
        format!("Prefetcher(depth={}, {state})", self.depth)
    }
}

impl Drop for PyPrefetcher {
    fn drop(&mut self) {
        if self.forget_if_forked() || !matches!(self.mode, Mode::Threaded { .. }) {
            return;
        }
        // Dropped by Python's deallocator, so attached. During interpreter shutdown the producer
        // may never get the GIL back: only signal it then. `ferrotrain.data` closes live
        // prefetchers at exit, before that can happen.
        Python::attach(|py| {
            let finalizing = py
                .import("sys")
                .and_then(|sys| sys.call_method0("is_finalizing"))
                .and_then(|f| f.is_truthy())
                .unwrap_or(true);
            if finalizing {
                if let Mode::Threaded { shared, .. } = &self.mode {
                    shared.chan.stop();
                }
                return;
            }
            if let Err(e) = self.shutdown(py) {
                e.write_unraisable(py, None);
            }
        });
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPrefetcher>()?;
    Ok(())
}
