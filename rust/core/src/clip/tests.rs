use super::*;
use proptest::prelude::*;

/// Slow, obviously-right f16 decoding.
fn f16_ref(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

/// Nearest f16 (ties to even mantissa) by searching the sorted positive values.
fn f16_round_ref(v: f32) -> u16 {
    let a = f64::from(v.abs());
    let sign = if v.is_sign_negative() { 0x8000 } else { 0 };
    if v.is_nan() {
        return 0x7e00 | sign;
    }
    if a >= 65520.0 {
        return 0x7c00 | sign;
    }
    static POSITIVE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let positive = POSITIVE.get_or_init(|| (0u16..0x7c00).map(f16_ref).collect());
    let idx = positive.partition_point(|&x| x <= a);
    let lo = idx as u16 - 1;
    let hi = lo + 1;
    let (dl, dh) = (a - f16_ref(lo), f16_ref(hi) - a);
    let pick = if dl < dh || (dl == dh && lo % 2 == 0) { lo } else { hi };
    pick | sign
}

fn naive(values: &[f64], p: f64) -> f64 {
    if p == f64::INFINITY {
        return values.iter().fold(0.0, |m: f64, v| if v.is_nan() { f64::NAN } else { m.max(v.abs()) });
    }
    values.iter().map(|v| v.abs().powf(p)).sum::<f64>().powf(1.0 / p)
}

fn rel_close(a: f64, b: f64, tol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol * a.abs().max(b.abs())
}

const ORDERS: [f64; 4] = [2.0, 1.0, f64::INFINITY, 3.5];

#[test]
fn norm_type_rejects_non_positive_orders() {
    assert_eq!(NormType::from_p(0.0), None);
    assert_eq!(NormType::from_p(-1.0), None);
    assert_eq!(NormType::from_p(f64::NAN), None);
    assert_eq!(NormType::from_p(f64::NEG_INFINITY), None);
    assert_eq!(NormType::from_p(2.0), Some(NormType::L2));
    assert_eq!(NormType::from_p(1.0), Some(NormType::L1));
    assert_eq!(NormType::from_p(f64::INFINITY), Some(NormType::Inf));
    assert_eq!(NormType::from_p(3.5), Some(NormType::P(3.5)));
}

#[test]
fn f16_decoding_is_exact_for_every_bit_pattern() {
    for bits in 0..=u16::MAX {
        let got = f64::from(f16_to_f32(bits));
        let want = f16_ref(bits);
        assert!(got == want || (got.is_nan() && want.is_nan()), "{bits:#06x}: {got} != {want}");
        if !want.is_nan() {
            assert_eq!(f32_to_f16(f16_to_f32(bits)), bits, "round trip of {bits:#06x}");
        }
    }
}

#[test]
fn f16_rounding_matches_nearest_even_at_the_edges() {
    let cases = [
        0.0f32, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e9, -1e9, f32::INFINITY, f32::NAN,
        5.960_464_5e-8, 2.980_232_2e-8, 2.980_233e-8, 1e-10, 6.097_555e-5, 6.103_515_6e-5,
        1.000_488_3, 1.000_976_6, 1.001_464_8, 0.333_333_34,
    ];
    for v in cases {
        assert_eq!(f32_to_f16(v), f16_round_ref(v), "{v:e}");
    }
}

#[test]
fn bf16_conversions_round_to_nearest_even() {
    for bits in 0..=u16::MAX {
        let v = bf16_to_f32(bits);
        if !v.is_nan() {
            assert_eq!(f32_to_bf16(v), bits);
        }
    }
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
    assert_eq!(f32_to_bf16(f32::NAN), 0x7fc0);
    assert_eq!(f32_to_bf16(f32::MAX), 0x7f80); // overflows to inf
}

#[test]
fn empty_input_has_zero_norm() {
    for p in ORDERS {
        let norm = NormType::from_p(p).unwrap();
        assert_eq!(total_norm(&[], norm), 0.0);
        assert_eq!(total_norm(&[Grad::F32(&[])], norm), 0.0);
    }
}

#[test]
fn norms_of_known_vectors() {
    let a = [3.0f32, -4.0];
    let b = [12.0f64];
    let grads = [Grad::F32(&a), Grad::F64(&b)];
    assert_eq!(total_norm(&grads, NormType::L2), 13.0);
    assert_eq!(total_norm(&grads, NormType::L1), 19.0);
    assert_eq!(total_norm(&grads, NormType::Inf), 12.0);
    let (each, total) = norms_and_total(&grads, NormType::L2);
    assert_eq!(each, vec![5.0, 12.0]);
    assert_eq!(total, 13.0);
}

#[test]
fn nan_and_inf_propagate_like_torch() {
    let mut v = vec![1.0f32; 37];
    v[20] = f32::NAN;
    for p in ORDERS {
        assert!(total_norm(&[Grad::F32(&v)], NormType::from_p(p).unwrap()).is_nan(), "p={p}");
    }
    let h = [f32_to_f16(1.0), 0x7c00, f32_to_f16(-2.0)];
    assert_eq!(total_norm(&[Grad::F16(&h)], NormType::Inf), f64::INFINITY);
    assert_eq!(total_norm(&[Grad::F16(&h)], NormType::L2), f64::INFINITY);
    // A NaN in a later buffer still wins over a larger earlier inf-norm.
    let big = [1e30f64];
    let nan = [f64::NAN];
    assert!(total_norm(&[Grad::F64(&big), Grad::F64(&nan)], NormType::Inf).is_nan());
}

#[test]
fn clip_coef_skips_when_norm_is_below_max() {
    assert_eq!(clip_coef(0.5, 1.0), None);
    assert_eq!(clip_coef(0.0, 0.0), Some(0.0));
    let c = clip_coef(4.0, 1.0).unwrap();
    assert!((c - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
    assert!(clip_coef(f64::NAN, 1.0).unwrap().is_nan());
    assert_eq!(clip_coef(f64::INFINITY, 1.0), Some(0.0));
    assert_eq!(clip_coef(1e30, f64::INFINITY), None);
}

#[test]
fn scale_matches_per_element_product() {
    let mut a = [1.0f32, -2.5, 3.25, 0.0, f32::NAN];
    scale_in_place(GradMut::F32(&mut a), 0.5);
    assert_eq!(&a[..4], &[0.5, -1.25, 1.625, 0.0]);
    assert!(a[4].is_nan());
    let mut h: Vec<u16> = [1.0f32, -2.0, 1000.0].iter().map(|&v| f32_to_f16(v)).collect();
    scale_in_place(GradMut::F16(&mut h), 0.25);
    let back: Vec<f32> = h.iter().map(|&b| f16_to_f32(b)).collect();
    assert_eq!(back, vec![0.25, -0.5, 250.0]);
    let mut b: Vec<u16> = [1.0f32, -3.0].iter().map(|&v| f32_to_bf16(v)).collect();
    scale_in_place(GradMut::BF16(&mut b), 0.5);
    assert_eq!(b.iter().map(|&x| bf16_to_f32(x)).collect::<Vec<_>>(), vec![0.5, -1.5]);
}

#[test]
fn clamp_bounds_values_and_keeps_nan() {
    let mut a = [0.5f64, -7.0, 7.0, f64::NAN, -0.25];
    clamp_in_place(GradMut::F64(&mut a), 1.0);
    assert_eq!(&a[..3], &[0.5, -1.0, 1.0]);
    assert!(a[3].is_nan());
    assert_eq!(a[4], -0.25);
    // The bound is rounded to the element type first: 0.1 is not an f16.
    let mut h: Vec<u16> = [0.5f32, -0.5, 0.05, f32::NAN].iter().map(|&v| f32_to_f16(v)).collect();
    clamp_in_place(GradMut::F16(&mut h), 0.1);
    let tenth = f32_to_f16(0.1);
    assert_eq!(&h[..3], &[tenth, tenth | 0x8000, f32_to_f16(0.05)]);
    assert!(f16_to_f32(h[3]).is_nan());
    let mut b: Vec<u16> = [2.0f32, -2.0, 0.5].iter().map(|&v| f32_to_bf16(v)).collect();
    clamp_in_place(GradMut::BF16(&mut b), 1.0);
    assert_eq!(b.iter().map(|&x| bf16_to_f32(x)).collect::<Vec<_>>(), vec![1.0, -1.0, 0.5]);
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![-1e3f32..1e3, -1e-3f32..1e-3, Just(0.0f32)]
}

proptest! {
    #[test]
    fn norms_match_naive_f64_reference(
        parts in prop::collection::vec(prop::collection::vec(finite_f32(), 0..70), 0..6),
        dtype in 0u8..4,
        p_index in 0usize..4,
    ) {
        let p = ORDERS[p_index];
        let norm = NormType::from_p(p).unwrap();
        let dt = DType::from_code(dtype).unwrap();
        // Store each part in the dtype under test, and keep the exact values it holds.
        let f32s: Vec<Vec<f32>> = parts.clone();
        let f64s: Vec<Vec<f64>> = parts.iter().map(|v| v.iter().map(|&x| f64::from(x) * 1.5).collect()).collect();
        let halfs: Vec<Vec<u16>> = parts.iter().map(|v| v.iter().map(|&x| f32_to_f16(x)).collect()).collect();
        let bfs: Vec<Vec<u16>> = parts.iter().map(|v| v.iter().map(|&x| f32_to_bf16(x)).collect()).collect();
        let (grads, exact): (Vec<Grad>, Vec<f64>) = match dt {
            DType::F32 => (f32s.iter().map(|v| Grad::F32(v)).collect(), f32s.concat().iter().map(|&x| f64::from(x)).collect()),
            DType::F64 => (f64s.iter().map(|v| Grad::F64(v)).collect(), f64s.concat()),
            DType::F16 => (halfs.iter().map(|v| Grad::F16(v)).collect(), halfs.concat().iter().map(|&b| f16_ref(b)).collect()),
            DType::BF16 => (bfs.iter().map(|v| Grad::BF16(v)).collect(), bfs.concat().iter().map(|&b| f64::from(bf16_to_f32(b))).collect()),
        };
        let got = total_norm(&grads, norm);
        let want = naive(&exact, p);
        prop_assert!(rel_close(got, want, 1e-12), "p={} dtype={:?}: {} vs {}", p, dt, got, want);
        let (each, total) = norms_and_total(&grads, norm);
        prop_assert_eq!(each.len(), grads.len());
        prop_assert!(rel_close(total, want, 1e-12));
        prop_assert!(rel_close(naive(&each, p), want, 1e-12));
    }

    #[test]
    fn scaling_rounds_once_to_the_element_type(
        values in prop::collection::vec(finite_f32(), 0..70),
        coef in 0.0f64..1.0,
    ) {
        let mut a = values.clone();
        scale_in_place(GradMut::F32(&mut a), coef);
        for (x, y) in values.iter().zip(&a) {
            prop_assert_eq!(*y, x * coef as f32);
        }
        let mut h: Vec<u16> = values.iter().map(|&x| f32_to_f16(x)).collect();
        let before = h.clone();
        scale_in_place(GradMut::F16(&mut h), coef);
        for (x, y) in before.iter().zip(&h) {
            let exact = f16_ref(*x) * f64::from(coef as f32);
            prop_assert_eq!(*y, f16_round_ref(exact as f32));
        }
    }

    #[test]
    fn clamping_matches_naive(values in prop::collection::vec(finite_f32(), 0..70), clip in 0.0f64..500.0) {
        let mut a = values.clone();
        clamp_in_place(GradMut::F32(&mut a), clip);
        let c = clip as f32;
        for (x, y) in values.iter().zip(&a) {
            prop_assert_eq!(*y, x.clamp(-c, c));
        }
    }
}

proptest! {
    #[test]
    fn f16_rounding_matches_reference_on_random_bits(bits in any::<u32>()) {
        let v = f32::from_bits(bits);
        prop_assume!(!v.is_nan());
        prop_assert_eq!(f32_to_f16(v), f16_round_ref(v));
    }
}

/// Long f32 buffers (many vector chunks, a ragged tail) over any mix of magnitudes, including
/// squares outside f32's range: the f64 accumulation keeps them within 1e-6 of exact.
fn any_magnitude_f32() -> impl Strategy<Value = f32> {
    prop_oneof![-1e3f32..1e3, -1e-3f32..1e-3, -1e-25f32..1e-25, -1e25f32..1e25, Just(0.0f32)]
}

proptest! {
    #[test]
    fn long_f32_norms_stay_within_1e_6_of_exact(
        values in prop::collection::vec(any_magnitude_f32(), 200..2000),
        p_index in 0usize..4,
    ) {
        let p = ORDERS[p_index];
        let got = total_norm(&[Grad::F32(&values)], NormType::from_p(p).unwrap());
        let want = naive(&values.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), p);
        prop_assert!(rel_close(got, want, 1e-6), "p={}: {} vs {}", p, got, want);
    }
}

#[test]
fn long_f32_blocks_outside_f32_range_are_exact() {
    // Squares below f32's smallest normal, and above its largest finite value.
    for &v in &[3e-25f32, -7e-30, 2e20, -3e37] {
        let xs = vec![v; 1000];
        let want = f64::from(v).abs() * 1000f64.sqrt();
        let got = total_norm(&[Grad::F32(&xs)], NormType::L2);
        assert!(rel_close(got, want, 1e-12), "{v}: {got} vs {want}");
    }
    let mut xs = vec![1.0f32; 1000];
    xs[300] = f32::NAN;
    assert!(total_norm(&[Grad::F32(&xs)], NormType::L2).is_nan());
    assert!(total_norm(&[Grad::F32(&xs)], NormType::L1).is_nan());
    xs[300] = f32::INFINITY;
    assert_eq!(total_norm(&[Grad::F32(&xs)], NormType::L2), f64::INFINITY);
}
