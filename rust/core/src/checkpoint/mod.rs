//! The checkpoint format and its I/O: a safetensors-compatible file (tensors as raw bytes, the
//! rest of the checkpoint as JSON inside `__metadata__`, a CRC-32 per tensor), written
//! atomically and durably, optionally on a background thread, and read back with every length,
//! offset and checksum validated. Pure Rust: the Python layer (`rust/src/checkpoint.rs` and
//! `ferrotrain.checkpoint`) turns torch tensors into byte slices and the JSON tree into objects.
//!
//! - `format`: dtypes, the layout of a file to write, header serialisation and validation.
//! - `io`: the atomic write, the header read and the checksum verification.
//! - `async_writer`: one write in flight on a background thread, overlapped with the snapshot copy.
//! - `gate`: the per-piece hand-off between that copy and the write.
//! - `parallel`: the piece-wise work split shared by the three passes over tensor bytes.
//! - `tree`: the JSON text, tensor names and shared-memory keys of a checkpoint's tree.
//! - `tree_format`: the tree's tags and the writer of each tagged value (read back by `pickle`).

pub mod async_writer;
pub mod error;
pub mod format;
pub mod gate;
pub mod io;
pub mod json_tree;
pub mod layout;
pub mod pickle;
pub mod torchzip;
pub mod parallel;
pub mod tree;
pub mod tree_format;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod torch_tests;

pub use async_writer::{AsyncWriter, ByteSource};
pub use error::{CheckpointError, FormatError};
pub use format::{Dtype, Entry, Layout, ParsedHeader, TensorSpec};
pub use layout::{AnyLayout, FileLayout};
pub use torchzip::TorchLayout;
pub use io::{check_bytes, open_checkpoint, write_atomic, write_atomic_with};
