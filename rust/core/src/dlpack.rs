//! The DLPack structures (`dlpack.h`, v1.x) that describe a tensor's memory, and the one question
//! the clip math asks of them: is this a contiguous CPU buffer of a float dtype the core handles,
//! and where does it start and how long is it.
//!
//! torch publishes a C table of functions on `torch.Tensor.__dlpack_c_exchange_api__` (the
//! DLPack "exchange API"). One of them fills a [`DlTensor`] for a tensor object with no Python
//! call and no allocation, which is several times cheaper than reading `dtype`, `is_cpu`,
//! `is_contiguous()`, `data_ptr()` and `numel()` through torch's Python bindings. The bindings
//! (`rust/src/clip.rs`) call it; this module owns only the layout and the checks, so `cargo test`
//! covers them without an interpreter. The layout is DLPack's stable C ABI, not libtorch's.

use std::ffi::{c_int, c_void};

use crate::clip::DType;

/// `DLPackVersion`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DlVersion {
    pub major: u32,
    pub minor: u32,
}

/// `DLDevice`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DlDevice {
    pub device_type: i32,
    pub device_id: i32,
}

/// `DLDataType`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DlDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

/// `DLTensor`: a non-owning description of a strided array.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DlTensor {
    pub data: *mut c_void,
    pub device: DlDevice,
    pub ndim: i32,
    pub dtype: DlDataType,
    pub shape: *const i64,
    pub strides: *const i64,
    pub byte_offset: u64,
}

impl Default for DlTensor {
    fn default() -> Self {
        Self {
            data: std::ptr::null_mut(),
            device: DlDevice::default(),
            ndim: 0,
            dtype: DlDataType::default(),
            shape: std::ptr::null(),
            strides: std::ptr::null(),
            byte_offset: 0,
        }
    }
}

/// `DLPackExchangeAPIHeader`.
#[repr(C)]
pub struct DlExchangeApiHeader {
    pub version: DlVersion,
    pub prev_api: *mut DlExchangeApiHeader,
}

/// `DLPackDLTensorFromPyObjectNoSync`: fills a `DLTensor` for a Python object of the exporting
/// type; 0 on success, -1 with a Python exception set on failure.
///
/// # Safety
/// Call with the GIL held, a live object of exactly the type that published the table, and a
/// writable `DLTensor`; the result is valid only while that object lives unchanged.
pub type DlTensorFromPyObject = unsafe extern "C" fn(py_object: *mut c_void, out: *mut DlTensor) -> c_int;

/// A function of the table that is never called here: only its slot's size matters.
pub type Opaque = Option<unsafe extern "C" fn()>; // SAFETY: never called, so no contract to keep

/// `DLPackExchangeAPI`. Only the fields up to the one used are read; the others are opaque.
#[repr(C)]
pub struct DlExchangeApi {
    pub header: DlExchangeApiHeader,
    pub managed_tensor_allocator: Opaque,
    pub managed_tensor_from_py_object_no_sync: Opaque,
    pub managed_tensor_to_py_object_no_sync: Opaque,
    pub dltensor_from_py_object_no_sync: Option<DlTensorFromPyObject>,
    pub current_work_stream: Opaque,
}

/// The capsule name torch gives the table.
pub const EXCHANGE_API_CAPSULE: &std::ffi::CStr = c"dlpack_exchange_api";
/// The major version whose layout is above; a table of another major version is not used.
pub const MAJOR_VERSION: u32 = 1;

const DEVICE_CPU: i32 = 1;

/// `DLDataTypeCode` values (dlpack.h).
pub mod codes {
    pub const INT: u8 = 0;
    pub const UINT: u8 = 1;
    pub const FLOAT: u8 = 2;
    pub const BFLOAT: u8 = 4;
    pub const BOOL: u8 = 6;
}

/// The clip math's dtype for a DLPack scalar type, if it handles it (`crate::dtype`'s table).
pub fn dtype_of(t: DlDataType) -> Option<DType> {
    crate::dtype::of_dlpack(t).and_then(|r| r.scalar).and_then(crate::dtype::Scalar::grad)
}

/// Whether `strides` (in elements) are the row-major strides of `shape`. Dimensions of size 1
/// may have any stride, and a tensor with no elements is contiguous, as in torch.
pub fn is_contiguous(shape: &[i64], strides: &[i64]) -> bool {
    if shape.len() != strides.len() || shape.iter().any(|&d| d < 0) {
        return false;
    }
    if shape.contains(&0) {
        return true;
    }
    let mut expected: i64 = 1;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 {
            if s != expected {
                return false;
            }
            match expected.checked_mul(d) {
                Some(e) => expected = e,
                None => return false,
            }
        }
    }
    true
}

/// A CPU tensor's memory as DLPack describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuView {
    /// Address of the first element.
    pub address: usize,
    pub shape: Vec<i64>,
    /// In elements.
    pub strides: Vec<i64>,
    pub contiguous: bool,
}

/// The memory of `t` when it is on the CPU, with its shape and strides; `None` otherwise (or
/// when the description is malformed).
///
/// # Safety
/// `t.shape` and `t.strides` must each point at `t.ndim` readable `i64`s (or be null), as the
/// exporter promises while the described object is alive and unchanged.
pub unsafe fn cpu_view(t: &DlTensor) -> Option<CpuView> {
    if t.device.device_type != DEVICE_CPU {
        return None;
    }
    let ndim = usize::try_from(t.ndim).ok()?;
    let (shape, strides): (&[i64], &[i64]) = if ndim == 0 {
        (&[], &[])
    } else {
        // Null strides meant "contiguous" before DLPack 1.2; torch always fills them, but a
        // null is refused rather than trusted.
        if t.shape.is_null() || t.strides.is_null() {
            return None;
        }
        // SAFETY: non-null, and `ndim` long by the caller's contract.
        unsafe { (std::slice::from_raw_parts(t.shape, ndim), std::slice::from_raw_parts(t.strides, ndim)) }
    };
    if shape.iter().any(|&d| d < 0) {
        return None;
    }
    let address = (t.data as usize).checked_add(usize::try_from(t.byte_offset).ok()?)?;
    Some(CpuView { address, shape: shape.to_vec(), strides: strides.to_vec(), contiguous: is_contiguous(shape, strides) })
}

/// `(address of the first element, number of elements, dtype)` when `t` is a contiguous CPU
/// buffer of a dtype the core handles; `None` sends the tensor to torch's path.
///
/// # Safety
/// As [`cpu_view`].
pub unsafe fn cpu_buffer(t: &DlTensor) -> Option<(usize, usize, DType)> {
    let dtype = dtype_of(t.dtype)?;
    // SAFETY: the caller's contract is `cpu_view`'s.
    let view = unsafe { cpu_view(t) }?;
    if !view.contiguous {
        return None;
    }
    let numel = view.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))?;
    Some((view.address, numel, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(data: &mut [f32], shape: &[i64], strides: &[i64], dtype: DlDataType) -> DlTensor {
        DlTensor {
            data: data.as_mut_ptr().cast(),
            device: DlDevice { device_type: DEVICE_CPU, device_id: 0 },
            ndim: i32::try_from(shape.len()).unwrap_or(i32::MAX),
            dtype,
            shape: shape.as_ptr(),
            strides: strides.as_ptr(),
            byte_offset: 0,
        }
    }

    const F32: DlDataType = DlDataType { code: codes::FLOAT, bits: 32, lanes: 1 };

    #[test]
    fn layout_matches_dlpack_h() {
        // Sizes and offsets of dlpack.h's structs on 64-bit targets.
        assert_eq!(std::mem::size_of::<DlTensor>(), 48);
        assert_eq!(std::mem::offset_of!(DlTensor, ndim), 16);
        assert_eq!(std::mem::offset_of!(DlTensor, dtype), 20);
        assert_eq!(std::mem::offset_of!(DlTensor, shape), 24);
        assert_eq!(std::mem::offset_of!(DlTensor, byte_offset), 40);
        assert_eq!(std::mem::size_of::<DlExchangeApi>(), 56);
        assert_eq!(std::mem::offset_of!(DlExchangeApi, dltensor_from_py_object_no_sync), 40);
    }

    #[test]
    fn dtypes() {
        assert_eq!(dtype_of(F32), Some(DType::F32));
        assert_eq!(dtype_of(DlDataType { code: codes::FLOAT, bits: 64, lanes: 1 }), Some(DType::F64));
        assert_eq!(dtype_of(DlDataType { code: codes::FLOAT, bits: 16, lanes: 1 }), Some(DType::F16));
        assert_eq!(dtype_of(DlDataType { code: codes::BFLOAT, bits: 16, lanes: 1 }), Some(DType::BF16));
        // int32, vector lanes, complex.
        assert_eq!(dtype_of(DlDataType { code: 0, bits: 32, lanes: 1 }), None);
        assert_eq!(dtype_of(DlDataType { code: codes::FLOAT, bits: 32, lanes: 4 }), None);
        assert_eq!(dtype_of(DlDataType { code: 5, bits: 64, lanes: 1 }), None);
    }

    #[test]
    fn contiguity_as_torch() {
        assert!(is_contiguous(&[], &[]));
        assert!(is_contiguous(&[4, 3], &[3, 1]));
        assert!(!is_contiguous(&[4, 3], &[1, 4])); // a transpose
        assert!(!is_contiguous(&[4, 3], &[6, 2])); // every other column
        assert!(is_contiguous(&[4, 1, 3], &[3, 99, 1])); // size-1 dims: any stride
        assert!(is_contiguous(&[0, 3], &[7, 5])); // empty
        assert!(!is_contiguous(&[4], &[0])); // expanded
        assert!(!is_contiguous(&[4, 3], &[3])); // malformed
    }

    #[test]
    fn cpu_buffer_reads_start_and_length() {
        let mut data = [0f32; 12];
        let t = tensor(&mut data, &[4, 3], &[3, 1], F32);
        // SAFETY: shape and strides are live arrays of ndim elements.
        let got = unsafe { cpu_buffer(&t) };
        assert_eq!(got, Some((data.as_ptr() as usize, 12, DType::F32)));

        let mut offset = t;
        offset.byte_offset = 8;
        // SAFETY: as above.
        assert_eq!(unsafe { cpu_buffer(&offset) }.map(|b| b.0), Some(data.as_ptr() as usize + 8));

        let strided = tensor(&mut data, &[4, 3], &[1, 4], F32);
        // SAFETY: as above.
        assert_eq!(unsafe { cpu_buffer(&strided) }, None);

        let mut gpu = t;
        gpu.device.device_type = 2;
        // SAFETY: as above.
        assert_eq!(unsafe { cpu_buffer(&gpu) }, None);

        let mut scalar = t;
        scalar.ndim = 0;
        scalar.shape = std::ptr::null();
        scalar.strides = std::ptr::null();
        // SAFETY: ndim 0 reads nothing.
        assert_eq!(unsafe { cpu_buffer(&scalar) }.map(|b| b.1), Some(1));

        let mut null_strides = t;
        null_strides.strides = std::ptr::null();
        // SAFETY: null is checked before reading.
        assert_eq!(unsafe { cpu_buffer(&null_strides) }, None);
    }

    #[test]
    fn cpu_view_keeps_strided_views_with_their_strides() {
        let mut data = [0f32; 12];
        let mut t = tensor(&mut data, &[3, 2], &[1, 4], F32);
        t.byte_offset = 4;
        // SAFETY: shape and strides point at 2 values each, alive for the call.
        let view = unsafe { cpu_view(&t) };
        let expected = CpuView { address: data.as_ptr() as usize + 4, shape: vec![3, 2], strides: vec![1, 4], contiguous: false };
        assert_eq!(view, Some(expected));

        // A dtype the clip math does not handle still has a view (the checkpoint takes any).
        let t = tensor(&mut data, &[12], &[1], DlDataType { code: codes::INT, bits: 64, lanes: 1 });
        // SAFETY: as above.
        assert!(unsafe { cpu_view(&t) }.is_some_and(|v| v.contiguous));

        let negative = tensor(&mut data, &[-1], &[1], F32);
        // SAFETY: as above.
        assert_eq!(unsafe { cpu_view(&negative) }, None);
    }
}
