//! The PyO3 layer: the Python module `ferrotrain._core`, over the pure crate `ferrotrain_core`
//! (`rust/core`). One file per area, each with a `register` function; inputs are converted into
//! owned Rust values, the GIL is released for real work, and every core error becomes a typed
//! Python exception (the one table is `errors.rs`). A panic never reaches the user. Without the
//! `python` feature (plain `cargo test --workspace`) this crate is empty.
#![cfg(feature = "python")]

use pyo3::prelude::*;

mod checkpoint;
mod checkpoint_tree;
mod clip;
mod dtype;
mod errors;
mod metrics;
mod prefetch;
mod profile;
mod schedule;
mod tfevents;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    dtype::register(m)?;
    schedule::register(m)?;
    metrics::register(m)?;
    clip::register(m)?;
    checkpoint::register(m)?;
    checkpoint_tree::register(m)?;
    prefetch::register(m)?;
    profile::register(m)?;
    tfevents::register(m)?;
    Ok(())
}
