//! ferrotrain's native core.
//!
//! Everything here is plain Rust that `cargo test` exercises without a Python interpreter:
//! the loop schedule and the epoch driver that runs it, metric accumulation, gradient-norm and clip math, the checkpoint format
//! and its I/O, and the prefetch queue. The `python` module (behind the `python` feature, which
//! maturin turns on) is the thin PyO3 layer that converts values and maps errors; it owns no logic.

pub mod checkpoint;
pub mod clip;
pub mod dlpack;
pub mod dtype;
pub mod epoch;
pub mod metrics;
pub mod prefetch;
pub mod profile;
pub mod schedule;
pub mod tfevents;

#[cfg(feature = "python")]
mod python;
