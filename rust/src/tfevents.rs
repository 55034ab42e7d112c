//! The event-file binding: `EventFileWriter`, TensorBoard event files written by a Rust thread
//! (see `ferrotrain_core::tfevents`). Used by `ferrotrain.loggers.TensorBoardLogger`; I/O errors become
//! Python `OSError`s (their subclasses by errno, e.g. `FileExistsError`).

use std::path::PathBuf;

use pyo3::prelude::*;

use ferrotrain_core::tfevents::{now, EventWriter};

/// Appends TensorBoard events to one new event file; a background thread does the writing.
#[pyclass(name = "EventFileWriter", module = "ferrotrain._core")]
pub struct PyEventWriter {
    inner: EventWriter,
}

#[pymethods]
impl PyEventWriter {
    /// Create `path` (it must not exist) with its `file_version` event; `writer` names the
    /// program in that event's `source_metadata`.
    #[new]
    #[pyo3(signature = (path, writer = "ferrotrain"))]
    fn new(path: PathBuf, writer: &str) -> PyResult<Self> {
        Ok(Self {
            inner: EventWriter::create(&path, writer)?,
        })
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.closed()
    }

    /// Queue one scalar event per `(tag, value)` at `step` (None: no step) and `wall_time`
    /// (None: now); values are stored as float32, as `SummaryWriter.add_scalar` does.
    #[pyo3(signature = (scalars, step = None, wall_time = None))]
    fn add_scalars(
        &self,
        scalars: Vec<(String, f64)>,
        step: Option<i64>,
        wall_time: Option<f64>,
    ) -> PyResult<()> {
        let scalars: Vec<(String, f32)> = scalars.into_iter().map(|(t, v)| (t, v as f32)).collect();
        self.inner
            .add_scalars(&scalars, step, wall_time.unwrap_or_else(now))
            .map_err(PyErr::from)
    }

    /// Queue an already serialized `Event` proto.
    fn add_event(&self, event: &[u8]) -> PyResult<()> {
        self.inner.add_events(&[event]).map_err(PyErr::from)
    }

    /// Block (GIL released) until every queued event is written to the file.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let inner = &self.inner;
        py.detach(|| inner.flush()).map_err(PyErr::from)
    }

    /// Write out the queue, stop the thread, close the file (GIL released). Idempotent.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(|| inner.close()).map_err(PyErr::from)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEventWriter>()?;
    Ok(())
}
