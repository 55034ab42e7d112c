//! What the writer needs to know of a file format: where each tensor's bytes go, and every other
//! byte of the file once the tensors' CRC-32s are known. Two formats implement it: torch's zip
//! archive (`torchzip`, every checkpoint) and safetensors (`format`, weights exported for
//! serving). The writer (`io`, `async_writer`) is the same for both.

use super::error::CheckpointError;
use super::format::Layout;
use super::torchzip::TorchLayout;

pub trait FileLayout {
    /// Per tensor: its byte count.
    fn tensor_nbytes(&self) -> &[u64];
    /// Per tensor: its offset in a snapshot buffer of `data_len` bytes.
    fn buffer_offsets(&self) -> &[u64];
    /// Bytes of a snapshot buffer holding every tensor.
    fn data_len(&self) -> u64;
    /// Per tensor: the absolute file offset of its bytes.
    fn tensor_at(&self, i: usize) -> u64;
    fn file_len(&self) -> u64;
    /// The non-tensor bytes of the file as `(offset, bytes)`, given the tensors' CRC-32s.
    fn framing(&self, crcs: &[u32]) -> Result<Vec<(u64, Vec<u8>)>, CheckpointError>;
}

impl FileLayout for Layout {
    fn tensor_nbytes(&self) -> &[u64] {
        self.nbytes()
    }
    fn buffer_offsets(&self) -> &[u64] {
        self.offsets()
    }
    fn data_len(&self) -> u64 {
        Layout::data_len(self)
    }
    fn tensor_at(&self, i: usize) -> u64 {
        self.data_start() + self.offsets().get(i).copied().unwrap_or(0)
    }
    fn file_len(&self) -> u64 {
        Layout::file_len(self)
    }
    fn framing(&self, crcs: &[u32]) -> Result<Vec<(u64, Vec<u8>)>, CheckpointError> {
        Ok(vec![(0, self.header_bytes(crcs)?)])
    }
}

impl FileLayout for TorchLayout {
    fn tensor_nbytes(&self) -> &[u64] {
        self.nbytes()
    }
    fn buffer_offsets(&self) -> &[u64] {
        TorchLayout::buffer_offsets(self)
    }
    fn data_len(&self) -> u64 {
        TorchLayout::data_len(self)
    }
    fn tensor_at(&self, i: usize) -> u64 {
        TorchLayout::tensor_at(self).get(i).copied().unwrap_or(0)
    }
    fn file_len(&self) -> u64 {
        TorchLayout::file_len(self)
    }
    fn framing(&self, crcs: &[u32]) -> Result<Vec<(u64, Vec<u8>)>, CheckpointError> {
        TorchLayout::framing(self, crcs)
    }
}

/// Either format, as one value the bindings and the background writer can hold.
#[derive(Clone, Debug)]
pub enum AnyLayout {
    Torch(TorchLayout),
    Safetensors(Layout),
}

impl AnyLayout {
    fn inner(&self) -> &dyn FileLayout {
        match self {
            AnyLayout::Torch(l) => l,
            AnyLayout::Safetensors(l) => l,
        }
    }
}

impl FileLayout for AnyLayout {
    fn tensor_nbytes(&self) -> &[u64] {
        self.inner().tensor_nbytes()
    }
    fn buffer_offsets(&self) -> &[u64] {
        self.inner().buffer_offsets()
    }
    fn data_len(&self) -> u64 {
        self.inner().data_len()
    }
    fn tensor_at(&self, i: usize) -> u64 {
        self.inner().tensor_at(i)
    }
    fn file_len(&self) -> u64 {
        self.inner().file_len()
    }
    fn framing(&self, crcs: &[u32]) -> Result<Vec<(u64, Vec<u8>)>, CheckpointError> {
        self.inner().framing(crcs)
    }
}
