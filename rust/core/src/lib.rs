//! ferrotrain's native core, in plain Rust: this crate has no PyO3 dependency, so every rule in
//! it is tested by `cargo test` without a Python interpreter.
//!
//! - `schedule`: Lightning's loop rules and progress counters (when to step, log, validate, stop).
//! - `epoch`: the epoch driver that runs the schedule batch by batch over caller closures.
//! - `metrics`: `self.log` reductions. `clip`: gradient norms and clipping.
//! - `dtype`: the one dtype table; `dlpack`: a tensor's memory layout from torch's DLPack table.
//! - `checkpoint`: the file formats, the tree format and the I/O.
//! - `prefetch`: the batch queue and its `is_last` rule. `profile`: the phase timer.
//! - `tfevents`: TensorBoard event files.
//!
//! The binding crate (`rust/src`, the Python module `ferrotrain._core`) converts values and maps
//! errors to exceptions; it owns no logic.

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
