//! One place that maps core errors to Python exceptions. The exception classes themselves are
//! defined in `ferrotrain/errors.py` (so they subclass the standard ones users already catch);
//! this module looks them up once and raises them by name.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Build a `ferrotrain.errors.<name>` exception carrying `msg`.
pub fn ferro_err(py: Python<'_>, name: &str, msg: impl Into<String>) -> PyErr {
    let msg = msg.into();
    let module = ERRORS_MODULE.get_or_try_init(py, || {
        PyModule::import(py, "ferrotrain.errors").map(|m| m.unbind())
    });
    match module.and_then(|m| m.bind(py).getattr(name)) {
        Ok(cls) => match cls.cast_into::<PyType>() {
            Ok(t) => PyErr::from_type(t, msg),
            Err(_) => pyo3::exceptions::PyRuntimeError::new_err(msg),
        },
        Err(_) => pyo3::exceptions::PyRuntimeError::new_err(msg),
    }
}

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
