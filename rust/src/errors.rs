//! The one table from core errors to Python exceptions. The exception classes themselves are
//! defined in `ferrotrain/errors.py` (so they subclass the standard ones users already catch);
//! [`Raise`] names the ones the core raises, and [`IntoPyErr`] says which class each core error
//! becomes. Errors that are plain Python ones (`TypeError` for a wrong argument, `OSError` from
//! the event writer) are raised as such where they happen.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use ferrotrain_core::checkpoint::CheckpointError;
use ferrotrain_core::schedule::ScheduleError;

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The `ferrotrain.errors` classes the core raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raise {
    /// A setting out of range (`MisconfigurationException`, a `ValueError`).
    Misconfiguration,
    /// A call the loop state does not allow, or an internal inconsistency (`LoopStateError`).
    LoopState,
    /// A checkpoint that cannot be written or read (`CheckpointError`).
    Checkpoint,
    /// A damaged or foreign checkpoint file (`CorruptCheckpointError`).
    CorruptCheckpoint,
}

impl Raise {
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Misconfiguration => "MisconfigurationException",
            Self::LoopState => "LoopStateError",
            Self::Checkpoint => "CheckpointError",
            Self::CorruptCheckpoint => "CorruptCheckpointError",
        }
    }

    /// The exception, carrying `msg` (a `RuntimeError` if `ferrotrain.errors` cannot be read).
    pub fn err(self, py: Python<'_>, msg: impl Into<String>) -> PyErr {
        let msg = msg.into();
        let module = ERRORS_MODULE.get_or_try_init(py, || {
            PyModule::import(py, "ferrotrain.errors").map(|m| m.unbind())
        });
        match module.and_then(|m| m.bind(py).getattr(self.class_name())) {
            Ok(cls) => match cls.cast_into::<PyType>() {
                Ok(t) => PyErr::from_type(t, msg),
                Err(_) => pyo3::exceptions::PyRuntimeError::new_err(msg),
            },
            Err(_) => pyo3::exceptions::PyRuntimeError::new_err(msg),
        }
    }
}

/// A core error as the exception a user catches.
pub trait IntoPyErr {
    fn into_py_err(self, py: Python<'_>) -> PyErr;
}

impl IntoPyErr for ScheduleError {
    fn into_py_err(self, py: Python<'_>) -> PyErr {
        let class = match self {
            ScheduleError::InvalidSetting(..) => Raise::Misconfiguration,
            ScheduleError::OutOfOrder(_) => Raise::LoopState,
        };
        class.err(py, self.to_string())
    }
}

impl IntoPyErr for CheckpointError {
    fn into_py_err(self, py: Python<'_>) -> PyErr {
        let class = if self.is_corrupt() { Raise::CorruptCheckpoint } else { Raise::Checkpoint };
        class.err(py, self.to_string())
    }
}

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
