//! Gradient-norm and clipping math over plain CPU buffers: the total p-norm of many gradients
//! in one pass (accumulated in f64), in-place scaling by a clip coefficient, and in-place value
//! clamping, for f32, f64, f16 and bf16 data. f16/bf16 travel as their raw `u16` bits and are
//! converted here, so no extra crate is needed.
//!
//! This module owns the arithmetic only. It never sees a tensor: the bindings build slices from
//! the `data_ptr()`s Python passes, and Python owns every torch call (and every gradient that is
//! not a contiguous CPU buffer). Semantics follow `torch.nn.utils.clip_grad_norm_` /
//! `clip_grad_value_`: a NaN anywhere makes the norm NaN, and a NaN or below-one coefficient scales.
//!
//! The inner loops run over fixed-width lanes (`chunks_exact`) so LLVM vectorizes them; each kernel
//! is compiled twice, for the baseline target and for AVX2, and picks one at run time.

/// Which p-norm to compute. Built with [`NormType::from_p`], which rejects non-positive orders.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormType {
    L1,
    L2,
    Inf,
    /// Any other finite positive order.
    P(f64),
}

impl NormType {
    /// The norm of order `p`; `None` unless `p > 0` (NaN is rejected too).
    pub fn from_p(p: f64) -> Option<Self> {
        // Written so that NaN fails the test too.
        if p.is_nan() || p <= 0.0 {
            return None;
        }
        Some(if p == 1.0 {
            Self::L1
        } else if p == 2.0 {
            Self::L2
        } else if p == f64::INFINITY {
            Self::Inf
        } else {
            Self::P(p)
        })
    }
}

/// The float dtypes of the clip math; their codes are `crate::dtype::Scalar`'s, which Python
/// reads from `_core.DTYPES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32 = 0,
    F64 = 1,
    F16 = 2,
    BF16 = 3,
}

impl DType {
    pub fn from_code(code: u8) -> Option<Self> {
        crate::dtype::Scalar::from_code(code).and_then(crate::dtype::Scalar::grad)
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F64 => 8,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

/// A read-only gradient buffer. f16 and bf16 are their raw bits.
#[derive(Clone, Copy, Debug)]
pub enum Grad<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    F16(&'a [u16]),
    BF16(&'a [u16]),
}

/// A gradient buffer to modify in place.
#[derive(Debug)]
pub enum GradMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    F16(&'a mut [u16]),
    BF16(&'a mut [u16]),
}

// ---------------------------------------------------------------------------------------------
// f16 / bf16 conversions. Branch-free (selects only) so they vectorize inside the loops.

/// IEEE binary16 bits to f32, exact. Subnormals go through an int-to-float conversion, so the
/// result is right even when the thread flushes denormals (torch.set_flush_denormal).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let mag = h & 0x7fff;
    let normal = (mag << 13) + (112 << 23); // rebias the exponent from 15 to 127
    let inf_nan = (mag << 13) | 0x7f80_0000;
    let sub = (mag as f32 * f32::from_bits(0x3380_0000)).to_bits(); // mantissa * 2^-24
    let bits = if mag < 0x400 {
        sub
    } else if mag >= 0x7c00 {
        inf_nan
    } else {
        normal
    };
    f32::from_bits(bits | sign)
}

/// f32 to IEEE binary16 bits, round to nearest even (as torch's `c10::Half`); overflow gives
/// inf, NaN stays a (quiet) NaN with its sign.
#[inline(always)]
pub fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = (x >> 16) & 0x8000;
    let a = x & 0x7fff_ffff;
    let inf_nan = if a > 0x7f80_0000 { 0x7e00 } else { 0x7c00 };
    // Results below 2^-14 are f16 subnormals: adding 0.5 lines the 10 mantissa bits up at the
    // bottom of an f32, and the FPU's own round-to-nearest-even does the rounding.
    const DENORM_MAGIC: u32 = 126 << 23;
    let sub = (f32::from_bits(a) + f32::from_bits(DENORM_MAGIC)).to_bits().wrapping_sub(DENORM_MAGIC);
    let mant_odd = (a >> 13) & 1;
    let normal = a.wrapping_sub(112 << 23).wrapping_add(0xfff + mant_odd) >> 13;
    let o = if a >= 0x4780_0000 {
        inf_nan
    } else if a < 0x3880_0000 {
        sub
    } else {
        normal
    };
    (o | sign) as u16
}

#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// f32 to bfloat16 bits, round to nearest even; NaN becomes 0x7fc0, as torch's `c10::BFloat16`.
#[inline(always)]
pub fn f32_to_bf16(f: f32) -> u16 {
    let x = f.to_bits();
    let rounded = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
    if f.is_nan() {
        0x7fc0
    } else {
        rounded
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels. `multiversion!` compiles a body for the baseline target and for AVX2+FMA and
// dispatches once per call (the feature check is a cached atomic load).

macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY (callers): only called once the CPU is known to support AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only
                    // requirement of a `target_feature` function.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

/// Lanes per accumulator group: four AVX2 registers of f64 in flight, enough to hide the
/// latency of the adds.
const LANES: usize = 16;

/// Sum of `f(x)` over `xs`, in `LANES` independent f64 accumulators (vectorizable, and more
/// accurate than one running sum).
#[inline(always)]
fn lane_sum<T: Copy>(xs: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        // A fixed-size array (not a slice) is what lets LLVM's SLP vectorizer see the lanes.
        let Ok(c) = <&[T; LANES]>::try_from(c) else { continue };
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    // The tail gets its own accumulator: indexing `acc` with a run-time index would pin the
    // lanes to memory and stop the vectorizer.
    let tail: f64 = rest.iter().map(|&x| f(x)).sum();
    acc.iter().sum::<f64>() + tail
}

/// Largest of `key(x)` over `xs` (integer keys, so it vectorizes to `pmaxu*`).
#[inline(always)]
fn lane_max<T: Copy, K: Copy + Ord + Default>(xs: &[T], key: impl Fn(T) -> K) -> K {
    let mut acc = [K::default(); LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        let Ok(c) = <&[T; LANES]>::try_from(c) else { continue };
        for i in 0..LANES {
            acc[i] = acc[i].max(key(c[i]));
        }
    }
    let tail = rest.iter().map(|&x| key(x)).max().unwrap_or_default();
    acc.iter().copied().max().unwrap_or_default().max(tail)
}

multiversion! { fn sq_f32(xs: &[f32]) -> f64 { lane_sum(xs, |x| { let v = f64::from(x); v * v }) } }
multiversion! { fn sq_f64(xs: &[f64]) -> f64 { lane_sum(xs, |v| v * v) } }
multiversion! { fn sq_f16(xs: &[u16]) -> f64 { lane_sum(xs, |x| { let v = f64::from(f16_to_f32(x)); v * v }) } }
multiversion! { fn sq_bf16(xs: &[u16]) -> f64 { lane_sum(xs, |x| { let v = f64::from(bf16_to_f32(x)); v * v }) } }

multiversion! { fn abs_f32(xs: &[f32]) -> f64 { lane_sum(xs, |x| f64::from(x.abs())) } }
multiversion! { fn abs_f64(xs: &[f64]) -> f64 { lane_sum(xs, f64::abs) } }
multiversion! { fn abs_f16(xs: &[u16]) -> f64 { lane_sum(xs, |x| f64::from(f16_to_f32(x).abs())) } }
multiversion! { fn abs_bf16(xs: &[u16]) -> f64 { lane_sum(xs, |x| f64::from(bf16_to_f32(x).abs())) } }

// The max-abs kernels compare the magnitude bits as unsigned integers: for IEEE floats that
// order is the numeric order, and every NaN sorts above inf, so a NaN propagates as in torch.
multiversion! { fn maxbits_f32(xs: &[f32]) -> u32 { lane_max(xs, |x| x.to_bits() & 0x7fff_ffff) } }
multiversion! { fn maxbits_f64(xs: &[f64]) -> u64 { lane_max(xs, |x| x.to_bits() & 0x7fff_ffff_ffff_ffff) } }
multiversion! { fn maxbits_u16(xs: &[u16]) -> u16 { lane_max(xs, |x| x & 0x7fff) } }

// General p: `powf` is a libm call and does not vectorize; the lanes still split the sum.
#[inline(always)]
fn pow_sum<T: Copy>(xs: &[T], p: f64, to_f64: impl Fn(T) -> f64) -> f64 {
    lane_sum(xs, |x| to_f64(x).abs().powf(p))
}

multiversion! { fn scale_f32(xs: &mut [f32], c: f32) { for x in xs.iter_mut() { *x *= c; } } }
multiversion! { fn scale_f64(xs: &mut [f64], c: f64) { for x in xs.iter_mut() { *x *= c; } } }
multiversion! { fn scale_f16(xs: &mut [u16], c: f32) { for x in xs.iter_mut() { *x = f32_to_f16(f16_to_f32(*x) * c); } } }
multiversion! { fn scale_bf16(xs: &mut [u16], c: f32) { for x in xs.iter_mut() { *x = f32_to_bf16(bf16_to_f32(*x) * c); } } }

// Clamp keeps NaN (every comparison with NaN is false), as torch's clamp does.
multiversion! { fn clamp_f32(xs: &mut [f32], c: f32) {
    for x in xs.iter_mut() { *x = if *x > c { c } else if *x < -c { -c } else { *x }; }
} }
multiversion! { fn clamp_f64(xs: &mut [f64], c: f64) {
    for x in xs.iter_mut() { *x = if *x > c { c } else if *x < -c { -c } else { *x }; }
} }
/// `bits` is the clip value already rounded to the 16-bit type; `c` is its exact f32 value.
#[inline(always)]
fn clamp_u16(xs: &mut [u16], bits: u16, c: f32, to_f32: impl Fn(u16) -> f32 + Copy) {
    for x in xs.iter_mut() {
        let v = to_f32(*x);
        *x = if v > c {
            bits
        } else if v < -c {
            bits | 0x8000
        } else {
            *x
        };
    }
}
multiversion! { fn clamp_f16(xs: &mut [u16], bits: u16, c: f32) { clamp_u16(xs, bits, c, f16_to_f32) } }
multiversion! { fn clamp_bf16(xs: &mut [u16], bits: u16, c: f32) { clamp_u16(xs, bits, c, bf16_to_f32) } }

// ---------------------------------------------------------------------------------------------
// Public API.

/// Running state of a total norm over many buffers: the sum of `|x|^p` (or the largest `|x|`
/// for the inf-norm), in f64. Add buffers one by one, then [`NormAcc::finish`].
#[derive(Clone, Copy, Debug)]
pub struct NormAcc {
    norm: NormType,
    acc: f64,
}

impl NormAcc {
    pub fn new(norm: NormType) -> Self {
        Self { norm, acc: 0.0 }
    }

    pub fn add(&mut self, grad: Grad<'_>) {
        match self.norm {
            NormType::L2 => self.acc += sum_sq(grad),
            NormType::L1 => self.acc += sum_abs(grad),
            NormType::P(p) => self.acc += sum_pow(grad, p),
            NormType::Inf => {
                let m = max_abs(grad);
                // NaN must win, so not `f64::max` (which drops NaN).
                if m.is_nan() || m > self.acc {
                    self.acc = m;
                }
            }
        }
    }

    /// The norm of everything added so far (0 when nothing was).
    pub fn finish(&self) -> f64 {
        match self.norm {
            NormType::L2 => self.acc.sqrt(),
            NormType::L1 | NormType::Inf => self.acc,
            NormType::P(p) => self.acc.powf(1.0 / p),
        }
    }
}

fn sum_sq(grad: Grad<'_>) -> f64 {
    match grad {
        Grad::F32(x) => sq_f32(x),
        Grad::F64(x) => sq_f64(x),
        Grad::F16(x) => sq_f16(x),
        Grad::BF16(x) => sq_bf16(x),
    }
}

fn sum_abs(grad: Grad<'_>) -> f64 {
    match grad {
        Grad::F32(x) => abs_f32(x),
        Grad::F64(x) => abs_f64(x),
        Grad::F16(x) => abs_f16(x),
        Grad::BF16(x) => abs_bf16(x),
    }
}

fn sum_pow(grad: Grad<'_>, p: f64) -> f64 {
    match grad {
        Grad::F32(x) => pow_sum(x, p, f64::from),
        Grad::F64(x) => pow_sum(x, p, |v| v),
        Grad::F16(x) => pow_sum(x, p, |b| f64::from(f16_to_f32(b))),
        Grad::BF16(x) => pow_sum(x, p, |b| f64::from(bf16_to_f32(b))),
    }
}

fn max_abs(grad: Grad<'_>) -> f64 {
    match grad {
        Grad::F32(x) => f64::from(f32::from_bits(maxbits_f32(x))),
        Grad::F64(x) => f64::from_bits(maxbits_f64(x)),
        Grad::F16(x) => f64::from(f16_to_f32(maxbits_u16(x))),
        Grad::BF16(x) => f64::from(bf16_to_f32(maxbits_u16(x))),
    }
}

/// The p-norm of all buffers seen as one vector.
pub fn total_norm(grads: &[Grad<'_>], norm: NormType) -> f64 {
    let mut acc = NormAcc::new(norm);
    for &g in grads {
        acc.add(g);
    }
    acc.finish()
}

/// The p-norm of each buffer on its own, plus the total (one pass over the memory).
pub fn norms_and_total(grads: &[Grad<'_>], norm: NormType) -> (Vec<f64>, f64) {
    let mut total = NormAcc::new(norm);
    let each = grads
        .iter()
        .map(|&g| {
            let mut one = NormAcc::new(norm);
            one.add(g);
            total.merge(&one);
            one.finish()
        })
        .collect();
    (each, total.finish())
}

impl NormAcc {
    /// Fold another accumulator of the same norm type into this one.
    pub fn merge(&mut self, other: &NormAcc) {
        match self.norm {
            NormType::Inf => {
                if other.acc.is_nan() || other.acc > self.acc {
                    self.acc = other.acc;
                }
            }
            _ => self.acc += other.acc,
        }
    }
}

/// torch's coefficient `max_norm / (total_norm + 1e-6)`, or `None` when it is at least 1 and
/// scaling would change nothing. A NaN coefficient (NaN norm) is returned: torch scales by it.
pub fn clip_coef(total_norm: f64, max_norm: f64) -> Option<f64> {
    let coef = max_norm / (total_norm + 1e-6);
    if coef >= 1.0 {
        None
    } else {
        Some(coef)
    }
}

/// Multiply every element by `coef` in place. The coefficient is rounded to f32 for f32 and
/// 16-bit data and the product rounded once to the element type, as torch's `mul_` does.
pub fn scale_in_place(grad: GradMut<'_>, coef: f64) {
    let c32 = coef as f32;
    match grad {
        GradMut::F32(x) => scale_f32(x, c32),
        GradMut::F64(x) => scale_f64(x, coef),
        GradMut::F16(x) => scale_f16(x, c32),
        GradMut::BF16(x) => scale_bf16(x, c32),
    }
}

/// Clamp every element to `[-clip_value, clip_value]` in place, the bound first rounded to the
/// element type (as torch's `clamp_` does with a Python scalar). NaN elements stay NaN.
pub fn clamp_in_place(grad: GradMut<'_>, clip_value: f64) {
    match grad {
        GradMut::F32(x) => clamp_f32(x, clip_value as f32),
        GradMut::F64(x) => clamp_f64(x, clip_value),
        GradMut::F16(x) => {
            let bits = f32_to_f16(clip_value as f32) & 0x7fff;
            clamp_f16(x, bits, f16_to_f32(bits));
        }
        GradMut::BF16(x) => {
            let bits = f32_to_bf16(clip_value as f32) & 0x7fff;
            clamp_bf16(x, bits, bf16_to_f32(bits));
        }
    }
}

#[cfg(test)]
mod tests;
