//! `_core.DTYPES`: the core's one dtype table (`ferrotrain_core::dtype`), for Python to build its torch
//! dtype maps from.

use pyo3::prelude::*;

use ferrotrain_core::dtype::TABLE;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // (torch attribute name, file dtype name, scalar code or None) per dtype.
    let rows: Vec<(&str, &str, Option<u8>)> =
        TABLE.iter().map(|r| (r.torch, r.file.name(), r.scalar.map(|s| s.code()))).collect();
    m.add("DTYPES", pyo3::types::PyTuple::new(m.py(), rows)?)?;
    Ok(())
}
