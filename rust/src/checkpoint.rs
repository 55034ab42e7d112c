//! The checkpoint bindings: `CheckpointLayout`, `checkpoint_write`, `checkpoint_read` and
//! `AsyncWriter`. They convert arguments, release the GIL for every pass over tensor bytes, and
//! map `CheckpointError` to `ferrotrain.errors.CheckpointError` / `CorruptCheckpointError`.
//!
//! Tensor memory arrives as `(data_ptr, nbytes)` integers from `ferrotrain.checkpoint` (the crate
//! never links libtorch). That Python code is the only caller, and it guarantees what the
//! `unsafe` blocks below rely on: each pointer addresses `nbytes` readable bytes of a contiguous
//! CPU tensor it keeps alive (and does not resize) for the duration of the call, or, for the
//! async writer's snapshot buffer, until `wait` has returned.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use pyo3::prelude::*;

use crate::errors::IntoPyErr;
use ferrotrain_core::checkpoint::{
    gate::RawBuffer, io, open_checkpoint, parallel, write_atomic, AnyLayout, AsyncWriter,
    ByteSource, CheckpointError, FileLayout,
};

/// View `len` bytes at address `ptr` (an empty slice when `len` is 0, whatever `ptr` is).
///
/// # Safety
/// When `len > 0`, `ptr` must address `len` readable bytes that stay valid and unwritten for `'a`.
unsafe fn bytes_at<'a>(ptr: usize, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller (see the module docs).
        unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
    }
}

/// Where each tensor of a checkpoint goes; made once per save by `encode_checkpoint`
/// (`checkpoint_tree.rs`), with the tree JSON and extra metadata in its header.
#[pyclass(name = "CheckpointLayout", module = "ferrotrain._core", frozen)]
pub struct PyLayout {
    inner: AnyLayout,
}

impl From<AnyLayout> for PyLayout {
    fn from(inner: AnyLayout) -> Self {
        Self { inner }
    }
}

#[pymethods]
impl PyLayout {
    /// Start of each tensor relative to the data region, in the order the specs were given.
    #[getter]
    fn offsets(&self) -> Vec<u64> {
        self.inner.buffer_offsets().to_vec()
    }

    /// Bytes of the data region: the size of a snapshot buffer for this checkpoint.
    #[getter]
    fn data_len(&self) -> u64 {
        self.inner.data_len()
    }
}

/// Write a checkpoint atomically and durably from the tensors' own memory: `sources[i]` is the
/// `(data_ptr, nbytes)` of the i-th spec's contiguous CPU tensor. The GIL is released.
#[pyfunction]
fn checkpoint_write(
    py: Python<'_>,
    path: PathBuf,
    layout: PyRef<'_, PyLayout>,
    sources: Vec<(usize, usize)>,
) -> PyResult<()> {
    let layout = &layout.inner;
    py.detach(|| {
        // SAFETY: see the module docs; the caller holds the tensors for the whole call.
        let slices: Vec<&[u8]> = sources
            .iter()
            .map(|&(p, n)| unsafe { bytes_at(p, n) })
            .collect();
        write_atomic(&path, layout, &slices)
    })
    .map_err(|e| e.into_py_err(py))
}

/// One tensor found in a file: name, dtype, shape, absolute byte offset, byte count.
type EntryTuple = (String, &'static str, Vec<u64>, u64, u64);

/// Validate the checkpoint open as file descriptor `fd` (`path` is for messages) and, when
/// `verify`, check every tensor's checksum. Returns the entries and the metadata.
#[pyfunction]
fn checkpoint_read(
    py: Python<'_>,
    fd: i32,
    path: PathBuf,
    verify: bool,
) -> PyResult<(Vec<EntryTuple>, BTreeMap<String, String>)> {
    // SAFETY: the caller's file object keeps `fd` open during this call; we only duplicate it.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(|e| {
            CheckpointError::Io { path: path.clone(), what: "cannot open".into(), source: e }.into_py_err(py)
        })?;
    let file = std::fs::File::from(owned);
    let header = py
        .detach(|| open_checkpoint(&file, &path, verify))
        .map_err(|e| e.into_py_err(py))?;
    let entries = header
        .entries
        .into_iter()
        .map(|e| {
            (
                e.name,
                e.dtype.name(),
                e.shape,
                header.data_start + e.start,
                e.end - e.start,
            )
        })
        .collect();
    Ok((entries, header.metadata))
}

fn dup_file(py: Python<'_>, fd: i32, path: &std::path::Path) -> PyResult<std::fs::File> {
    // SAFETY: the caller's file object keeps `fd` open during this call; we only duplicate it.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(|e| CheckpointError::Io { path: path.to_path_buf(), what: "cannot open".into(), source: e }.into_py_err(py))?;
    Ok(std::fs::File::from(owned))
}

/// One storage of a torch checkpoint: record name, dtype, byte count, saved location, file
/// offset of its bytes, CRC-32.
type StorageTuple = (String, &'static str, u64, String, u64, u32);

/// Open the torch checkpoint (zip archive) at `fd`: its `data.pkl` is CRC-checked and decoded
/// without running any pickle (refusing anything outside the restricted subset). Returns the
/// tree as JSON and the storages it views (their bytes are not read).
#[pyfunction]
fn torch_open(py: Python<'_>, fd: i32, path: PathBuf) -> PyResult<(String, Vec<StorageTuple>)> {
    let file = dup_file(py, fd, &path)?;
    let opened = py.detach(|| io::open_torch(&file, &path)).map_err(|e| e.into_py_err(py))?;
    let storages = opened
        .storages
        .into_iter()
        .map(|s| {
            (
                format!("data/{}", s.storage.key),
                s.storage.dtype.name(),
                s.storage.nbytes,
                s.storage.location,
                s.data_at,
                s.crc,
            )
        })
        .collect();
    Ok((opened.tree, storages))
}

/// Read storages `ranges[i] = (file offset, nbytes, crc, name)` of the file at `fd` into the
/// memory `dsts[i] = (address, nbytes)` (tensors the caller owns and holds), checking each
/// CRC-32 on the way when `verify`. The GIL is released.
#[pyfunction]
fn torch_read_storages(
    py: Python<'_>,
    fd: i32,
    path: PathBuf,
    ranges: Vec<(u64, u64, u32, String)>,
    dsts: Vec<(usize, usize)>,
    verify: bool,
) -> PyResult<()> {
    let file = dup_file(py, fd, &path)?;
    if ranges.iter().zip(&dsts).any(|(r, d)| r.1 != d.1 as u64 || (d.0 == 0 && d.1 > 0)) {
        return Err(CheckpointError::Invalid("destination sizes do not match the storages".into()).into_py_err(py));
    }
    // SAFETY: see the module docs: each address is a live, writable tensor of that many bytes
    // that the caller holds and nothing else touches during the call.
    let bufs: Vec<RawBuffer> = dsts.iter().map(|&(p, n)| unsafe { RawBuffer::new(p as *mut u8, n) }).collect();
    // SAFETY: as above.
    py.detach(|| unsafe { io::read_storages(&file, &path, &ranges, &bufs, verify) })
        .map_err(|e| e.into_py_err(py))
}

/// Check the CRC-32 of `ranges[i] = (file offset, nbytes, crc, name)` of the file at `fd`.
#[pyfunction]
fn torch_verify(py: Python<'_>, fd: i32, path: PathBuf, ranges: Vec<(u64, u64, u32, String)>) -> PyResult<()> {
    let file = dup_file(py, fd, &path)?;
    py.detach(|| io::verify_ranges(&file, &path, &ranges)).map_err(|e| e.into_py_err(py))
}

/// The snapshot buffer, owned by Python and kept alive by `PyAsyncWriter::buffer`.
struct ForeignBuffer {
    ptr: usize,
    len: usize,
}

impl ByteSource for ForeignBuffer {
    fn raw(&mut self) -> RawBuffer {
        // SAFETY: the buffer object is referenced by the writer until `wait` returns, and the
        // Python writer does not touch it while a write is in flight (module docs).
        unsafe { RawBuffer::new(self.ptr as *mut u8, self.len) }
    }
}

/// Writes checkpoints on a background thread from a snapshot buffer (see
/// `ferrotrain.checkpoint.AsyncCheckpointWriter`, which drives it).
#[pyclass(name = "AsyncWriter", module = "ferrotrain._core")]
pub struct PyAsyncWriter {
    // Dropped first: a dropped writer finishes its file before the buffer is released.
    inner: AsyncWriter,
    buffer: Option<Py<PyAny>>,
    /// Address of the last snapshot buffer, to advise a new one once.
    last_buffer: usize,
}

#[pymethods]
impl PyAsyncWriter {
    #[new]
    fn new() -> Self {
        Self {
            inner: AsyncWriter::new(),
            last_buffer: 0,
            buffer: None,
        }
    }

    /// True while a write has been submitted and not yet waited for.
    #[getter]
    fn in_flight(&self) -> bool {
        self.inner.in_flight()
    }

    /// True while a write submitted with `hold=True` waits for `commit` or `discard`.
    #[getter]
    fn held(&self) -> bool {
        self.inner.held()
    }

    /// Let the held write finish (header, fsync, rename into place).
    fn commit(&mut self) {
        self.inner.commit();
    }

    /// Drop the held write: its temporary file goes, the target is left as it was, and the next
    /// `wait` raises that error.
    fn discard(&mut self) {
        self.inner.discard();
    }

    /// Block (GIL released) until the write in flight is durable; raise its error if it failed.
    /// A held write is committed first.
    fn wait(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = &mut self.inner;
        let result = py.detach(|| inner.wait());
        self.buffer = None;
        result.map_err(|e| e.into_py_err(py))
    }

    /// Await the previous write (raising its error), copy the CPU tensors `(data_ptr, nbytes,
    /// offset)` into `buffer` (address `buffer_ptr`, `buffer_len` bytes) in parallel while the
    /// background thread already writes the pieces copied so far to `path`; return once the copy
    /// is complete (the write goes on). The files `remove` are deleted by the background thread
    /// before it writes (the checkpoint that replaces them is durable: awaited first). With
    /// `hold`, the file is not completed nor renamed into place until `commit` (or `wait`).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, layout, buffer, buffer_ptr, buffer_len, copies, remove = Vec::new(), hold = false))]
    fn submit(
        &mut self,
        py: Python<'_>,
        path: PathBuf,
        layout: PyRef<'_, PyLayout>,
        buffer: Py<PyAny>,
        buffer_ptr: usize,
        buffer_len: usize,
        copies: Vec<(usize, usize, u64)>,
        remove: Vec<PathBuf>,
        hold: bool,
    ) -> PyResult<()> {
        self.wait(py)?;
        let layout = layout.inner.clone();
        if (buffer_len as u64) < layout.data_len() || (buffer_ptr == 0 && buffer_len > 0) {
            return Err(CheckpointError::Invalid("snapshot buffer smaller than the checkpoint".into()).into_py_err(py));
        }
        let fresh = self.last_buffer != buffer_ptr;
        self.last_buffer = buffer_ptr;
        let inner = &mut self.inner;
        py.detach(|| {
            if fresh && buffer_len > 0 {
                // SAFETY: a live Python-owned allocation of `buffer_len` bytes that nothing
                // reads or writes during this call (no write is in flight: awaited above).
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(buffer_ptr as *mut u8, buffer_len) };
                parallel::advise_huge_pages(dst);
            }
            // SAFETY: see the module docs; the caller holds the source tensors for the call,
            // and `submit` returns only once it has finished reading them.
            let srcs: Vec<(&[u8], u64)> = copies
                .iter()
                .map(|&(p, n, off)| (unsafe { bytes_at(p, n) }, off))
                .collect();
            // The copy overlaps with the write it feeds; it is complete when this returns.
            inner.submit_held(
                path,
                layout,
                Box::new(ForeignBuffer {
                    ptr: buffer_ptr,
                    len: buffer_len,
                }),
                &srcs,
                remove,
                hold,
            )
        })
        .map_err(|e| e.into_py_err(py))?;
        self.buffer = Some(buffer);
        Ok(())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLayout>()?;
    m.add_class::<PyAsyncWriter>()?;
    m.add_function(wrap_pyfunction!(checkpoint_write, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint_read, m)?)?;
    m.add_function(wrap_pyfunction!(torch_open, m)?)?;
    m.add_function(wrap_pyfunction!(torch_read_storages, m)?)?;
    m.add_function(wrap_pyfunction!(torch_verify, m)?)?;
    Ok(())
}
