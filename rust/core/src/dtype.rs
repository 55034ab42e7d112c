//! One table of the tensor dtypes the core knows: torch's name for each, its name in a checkpoint
//! file, its DLPack type, and the scalar code the native readers take (the metric reader reads
//! all seven; the clip math the four float ones). Every other mapping (DLPack to file dtype,
//! DLPack to scalar code, code to clip dtype) is read from this table, and the bindings export
//! it to Python (`_core.DTYPES`), so no dtype code is written twice.

use crate::checkpoint::Dtype;
use crate::clip::DType;
use crate::dlpack::{codes, DlDataType};

/// The scalar types a native reader takes, by code: the codes cross to Python and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    F32 = 0,
    F64 = 1,
    F16 = 2,
    BF16 = 3,
    I64 = 4,
    I32 = 5,
    Bool = 6,
}

impl Scalar {
    pub const ALL: [Scalar; 7] = [Self::F32, Self::F64, Self::F16, Self::BF16, Self::I64, Self::I32, Self::Bool];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The clip math's dtype, for the float scalars.
    pub fn grad(self) -> Option<DType> {
        match self {
            Self::F32 => Some(DType::F32),
            Self::F64 => Some(DType::F64),
            Self::F16 => Some(DType::F16),
            Self::BF16 => Some(DType::BF16),
            Self::I64 | Self::I32 | Self::Bool => None,
        }
    }
}

/// One dtype: its names, and how the native paths see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtypeInfo {
    /// The attribute of `torch` (`torch.float32`); some exist only in newer torch versions.
    pub torch: &'static str,
    pub file: Dtype,
    /// DLPack's `(code, bits)` with one lane; `None` where DLPack cannot tell the flavour
    /// (complex, the float8 types), which then go through torch.
    pub dlpack: Option<(u8, u8)>,
    pub scalar: Option<Scalar>,
}

const fn row(torch: &'static str, file: Dtype, dlpack: Option<(u8, u8)>, scalar: Option<Scalar>) -> DtypeInfo {
    DtypeInfo { torch, file, dlpack, scalar }
}

pub const TABLE: [DtypeInfo; 18] = [
    row("bool", Dtype::Bool, Some((codes::BOOL, 8)), Some(Scalar::Bool)),
    row("uint8", Dtype::U8, Some((codes::UINT, 8)), None),
    row("int8", Dtype::I8, Some((codes::INT, 8)), None),
    row("int16", Dtype::I16, Some((codes::INT, 16)), None),
    row("int32", Dtype::I32, Some((codes::INT, 32)), Some(Scalar::I32)),
    row("int64", Dtype::I64, Some((codes::INT, 64)), Some(Scalar::I64)),
    row("float16", Dtype::F16, Some((codes::FLOAT, 16)), Some(Scalar::F16)),
    row("bfloat16", Dtype::BF16, Some((codes::BFLOAT, 16)), Some(Scalar::BF16)),
    row("float32", Dtype::F32, Some((codes::FLOAT, 32)), Some(Scalar::F32)),
    row("float64", Dtype::F64, Some((codes::FLOAT, 64)), Some(Scalar::F64)),
    row("complex64", Dtype::C64, None, None),
    row("uint16", Dtype::U16, Some((codes::UINT, 16)), None),
    row("uint32", Dtype::U32, Some((codes::UINT, 32)), None),
    row("uint64", Dtype::U64, Some((codes::UINT, 64)), None),
    row("float8_e4m3fn", Dtype::F8E4M3, None, None),
    row("float8_e5m2", Dtype::F8E5M2, None, None),
    row("float8_e4m3fnuz", Dtype::F8E4M3Fnuz, None, None),
    row("float8_e5m2fnuz", Dtype::F8E5M2Fnuz, None, None),
];

/// The row of a DLPack scalar type, if the native paths take it.
pub fn of_dlpack(t: DlDataType) -> Option<&'static DtypeInfo> {
    if t.lanes != 1 {
        return None;
    }
    TABLE.iter().find(|r| r.dlpack == Some((t.code, t.bits)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_dtype_has_one_row_and_names_are_unique() {
        for d in Dtype::ALL {
            assert_eq!(TABLE.iter().filter(|r| r.file == d).count(), 1, "{d:?}");
        }
        for (i, r) in TABLE.iter().enumerate() {
            assert!(TABLE[i + 1..].iter().all(|o| o.torch != r.torch && o.dlpack.map_or(true, |d| Some(d) != r.dlpack)));
        }
    }

    #[test]
    fn scalar_codes_round_trip_and_the_float_ones_are_the_clip_dtypes() {
        for s in Scalar::ALL {
            assert_eq!(Scalar::from_code(s.code()), Some(s));
            assert_eq!(TABLE.iter().filter(|r| r.scalar == Some(s)).count(), 1);
            // The clip math's codes are the scalar codes (`clip::DType` crosses as a code too).
            assert_eq!(s.grad().map(|g| g as u8), (s.code() < 4).then_some(s.code()));
        }
        assert_eq!(Scalar::from_code(7), None);
    }

    #[test]
    fn dlpack_types_map_to_their_rows() {
        let t = |code, bits, lanes| DlDataType { code, bits, lanes };
        assert_eq!(of_dlpack(t(codes::BFLOAT, 16, 1)).map(|r| r.file), Some(Dtype::BF16));
        assert_eq!(of_dlpack(t(codes::INT, 64, 1)).and_then(|r| r.scalar), Some(Scalar::I64));
        assert_eq!(of_dlpack(t(codes::UINT, 8, 1)).map(|r| (r.file, r.scalar)), Some((Dtype::U8, None)));
        assert_eq!(of_dlpack(t(codes::FLOAT, 32, 4)), None); // vector lanes
        assert_eq!(of_dlpack(t(5, 64, 1)), None); // complex: torch's path
    }
}
