//! The 8x8 inverse DCT of the fast decoder: libjpeg's accurate integer method ("islow", the
//! Loeffler–Ligtenberg–Moschytz factorisation with 13-bit constants and 2 extra bits between
//! passes), so pixels match libjpeg-turbo's default. An AVX2 version (chosen at run time) and a
//! scalar one compute the same integers.
//!
//! Coefficients that no 8-bit image yields (a hostile stream that passes the structural check)
//! can overflow the intermediates (16-bit pairs in the AVX2 rotations, 32-bit sums); the
//! arithmetic wraps, giving garbage pixels (the two versions may then differ), never a panic.

/// Constants scaled by 2^13 (libjpeg's FIX_x_y for CONST_BITS = 13).
const CONST_BITS: i32 = 13;
const PASS1_BITS: i32 = 2;
const F0_298: i32 = 2446;
const F0_390: i32 = 3196;
const F0_541: i32 = 4433;
const F0_765: i32 = 6270;
const F0_899: i32 = 7373;
const F1_175: i32 = 9633;
const F1_501: i32 = 12299;
const F1_847: i32 = 15137;
const F1_961: i32 = 16069;
const F2_053: i32 = 16819;
const F2_562: i32 = 20995;
const F3_072: i32 = 25172;

/// A block of dequantised coefficients in natural (row-major) order, aligned for vector loads.
#[repr(C, align(32))]
pub struct Block(pub [i32; 64]);

impl Default for Block {
    fn default() -> Self {
        Self([0; 64])
    }
}

/// The pixel value of a block whose only non-zero coefficient is the (dequantised) DC `dc`:
/// exactly what the full transform gives.
#[inline]
pub fn dc_value(dc: i32) -> u8 {
    (((dc.wrapping_add(4)) >> 3) + 128).clamp(0, 255) as u8
}

/// Writes the 8x8 pixels of `block` (quantised coefficients, dequantised here by the steps
/// `quant`, both in natural order) to `out` (row `r` at `out[r * stride..][..8]`) and zeroes
/// the block for its next use.
#[inline]
pub fn idct(block: &mut Block, quant: &Block, out: &mut [u8], stride: usize) {
    assert!(out.len() >= 7 * stride + 8, "IDCT output too short");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the one requirement of `idct_avx2`.
        unsafe { idct_avx2(block, quant, out, stride) };
        return;
    }
    idct_scalar(block, quant, out, stride);
}

/// One 1-D pass of the even and odd parts on eight inputs `x`; returns the eight outputs
/// before descaling (libjpeg's tmp10 + tmp3, tmp11 + tmp2, ...).
#[inline(always)]
fn butterfly(x: [i32; 8]) -> [i32; 8] {
    let (z2, z3) = (x[2], x[6]);
    let z1 = z2.wrapping_add(z3).wrapping_mul(F0_541);
    let tmp2 = z1.wrapping_add(z3.wrapping_mul(-F1_847));
    let tmp3 = z1.wrapping_add(z2.wrapping_mul(F0_765));
    let tmp0 = x[0].wrapping_add(x[4]).wrapping_shl(CONST_BITS as u32);
    let tmp1 = x[0].wrapping_sub(x[4]).wrapping_shl(CONST_BITS as u32);
    let (t10, t13) = (tmp0.wrapping_add(tmp3), tmp0.wrapping_sub(tmp3));
    let (t11, t12) = (tmp1.wrapping_add(tmp2), tmp1.wrapping_sub(tmp2));

    let (o0, o1, o2, o3) = (x[7], x[5], x[3], x[1]);
    let z1 = o0.wrapping_add(o3);
    let z2 = o1.wrapping_add(o2);
    let z3 = o0.wrapping_add(o2);
    let z4 = o1.wrapping_add(o3);
    let z5 = z3.wrapping_add(z4).wrapping_mul(F1_175);
    let z1 = z1.wrapping_mul(-F0_899);
    let z2 = z2.wrapping_mul(-F2_562);
    let z3 = z3.wrapping_mul(-F1_961).wrapping_add(z5);
    let z4 = z4.wrapping_mul(-F0_390).wrapping_add(z5);
    let p0 = o0.wrapping_mul(F0_298).wrapping_add(z1).wrapping_add(z3);
    let p1 = o1.wrapping_mul(F2_053).wrapping_add(z2).wrapping_add(z4);
    let p2 = o2.wrapping_mul(F3_072).wrapping_add(z2).wrapping_add(z3);
    let p3 = o3.wrapping_mul(F1_501).wrapping_add(z1).wrapping_add(z4);
    [
        t10.wrapping_add(p3),
        t11.wrapping_add(p2),
        t12.wrapping_add(p1),
        t13.wrapping_add(p0),
        t13.wrapping_sub(p0),
        t12.wrapping_sub(p1),
        t11.wrapping_sub(p2),
        t10.wrapping_sub(p3),
    ]
}

/// Rounding right shift (libjpeg's DESCALE).
#[inline(always)]
fn descale(x: i32, bits: i32) -> i32 {
    x.wrapping_add(1 << (bits - 1)) >> bits
}

/// The transform in plain Rust (CPUs without AVX2, and the reference of the tests).
pub fn idct_scalar(block: &mut Block, quant: &Block, out: &mut [u8], stride: usize) {
    let c: [i32; 64] = std::array::from_fn(|i| block.0[i].wrapping_mul(quant.0[i]));
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let x: [i32; 8] = std::array::from_fn(|r| c[r * 8 + col]);
        for (r, v) in butterfly(x).into_iter().enumerate() {
            ws[r * 8 + col] = descale(v, CONST_BITS - PASS1_BITS);
        }
    }
    for r in 0..8 {
        let x: [i32; 8] = ws[r * 8..r * 8 + 8].try_into().expect("8 values");
        let row = &mut out[r * stride..r * stride + 8];
        for (p, v) in row.iter_mut().zip(butterfly(x)) {
            *p = (descale(v, CONST_BITS + PASS1_BITS + 3) + 128).clamp(0, 255) as u8;
        }
    }
    block.0 = [0; 64];
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The 1-D pass of [`butterfly`] on eight vectors (one input index each, eight transforms in
/// the lanes), with the products regrouped as libjpeg-turbo's SIMD code does so that each
/// rotation is one pmaddwd (two 16-bit products and their sum) instead of 32-bit multiplies:
/// the same integers while every input and every sum of two inputs fits 16 bits, which holds
/// for the coefficients of 8-bit images.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn butterfly_avx2(x: [__m256i; 8]) -> [__m256i; 8] {
    let add = |a, b| _mm256_add_epi32(a, b);
    let sub = |a, b| _mm256_sub_epi32(a, b);
    // Each 32-bit lane: a's low 16 bits, then b's; times (c1, c2) and summed: a*c1 + b*c2.
    let pair = |a: __m256i, b: __m256i| _mm256_blend_epi16::<0xAA>(a, _mm256_slli_epi32::<16>(b));
    let rotate = |p: __m256i, c1: i32, c2: i32| {
        _mm256_madd_epi16(p, _mm256_set1_epi32((c2 << 16) | (c1 & 0xFFFF)))
    };
    // Even part: tmp3 = z2 (F0_541 + F0_765) + z3 F0_541, tmp2 = z2 F0_541 + z3 (F0_541 - F1_847).
    let z23 = pair(x[2], x[6]);
    let tmp3 = rotate(z23, F0_541 + F0_765, F0_541);
    let tmp2 = rotate(z23, F0_541, F0_541 - F1_847);
    let tmp0 = _mm256_slli_epi32::<CONST_BITS>(add(x[0], x[4]));
    let tmp1 = _mm256_slli_epi32::<CONST_BITS>(sub(x[0], x[4]));
    let (t10, t13) = (add(tmp0, tmp3), sub(tmp0, tmp3));
    let (t11, t12) = (add(tmp1, tmp2), sub(tmp1, tmp2));

    // Odd part on o0..o3 = x7, x5, x3, x1: z3 = o0 + o2 and z4 = o1 + o3 rotated by z5.
    let (o0, o1, o2, o3) = (x[7], x[5], x[3], x[1]);
    let z34 = pair(add(o0, o2), add(o1, o3));
    let z3 = rotate(z34, F1_175 - F1_961, F1_175);
    let z4 = rotate(z34, F1_175, F1_175 - F0_390);
    let p03 = pair(o0, o3);
    let p12 = pair(o1, o2);
    let p0 = add(rotate(p03, F0_298 - F0_899, -F0_899), z3);
    let p3 = add(rotate(p03, -F0_899, F1_501 - F0_899), z4);
    let p1 = add(rotate(p12, F2_053 - F2_562, -F2_562), z4);
    let p2 = add(rotate(p12, -F2_562, F3_072 - F2_562), z3);
    [
        add(t10, p3),
        add(t11, p2),
        add(t12, p1),
        add(t13, p0),
        sub(t13, p0),
        sub(t12, p1),
        sub(t11, p2),
        sub(t10, p3),
    ]
}

/// Transposes an 8x8 matrix of i32 held as eight row vectors.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_avx2(r: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// [`idct_scalar`] on AVX2: dequantisation, the column pass with one row per vector, a
/// transpose, the row pass, a transpose back, then saturating packs to bytes.
///
/// Writes through checked slices (an `out` too short panics).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn idct_avx2(block: &mut Block, quant: &Block, out: &mut [u8], stride: usize) {
    let base = block.0.as_mut_ptr().cast::<__m256i>();
    let steps = quant.0.as_ptr().cast::<__m256i>();
    // SAFETY: `Block` is 64 i32 = 8 vectors of 32 bytes, 32-byte aligned, so `base.add(r)` and
    // `steps.add(r)` for r < 8 are aligned, in-bounds vectors; AVX2 is enabled here.
    let rows: [__m256i; 8] = std::array::from_fn(|r| unsafe {
        _mm256_mullo_epi32(
            _mm256_load_si256(base.add(r)),
            _mm256_load_si256(steps.add(r)),
        )
    });
    let round1 = _mm256_set1_epi32(1 << (CONST_BITS - PASS1_BITS - 1));
    let cols = butterfly_avx2(rows)
        .map(|v| _mm256_srai_epi32::<{ CONST_BITS - PASS1_BITS }>(_mm256_add_epi32(v, round1)));
    // Row pass: after the transpose, vector k holds input k of every row.
    const SHIFT2: i32 = CONST_BITS + PASS1_BITS + 3;
    let round2 = _mm256_set1_epi32((1 << (SHIFT2 - 1)) + (128 << SHIFT2));
    let pixels = transpose_avx2(
        butterfly_avx2(transpose_avx2(cols))
            .map(|v| _mm256_srai_epi32::<SHIFT2>(_mm256_add_epi32(v, round2))),
    );
    // Saturating packs give libjpeg's range limit; the permute restores row order (packs work
    // within 128-bit lanes).
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for half in 0..2 {
        let p = &pixels[half * 4..half * 4 + 4];
        let words01 = _mm256_packs_epi32(p[0], p[1]);
        let words23 = _mm256_packs_epi32(p[2], p[3]);
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words01, words23), order);
        let lanes = [
            _mm256_extract_epi64::<0>(bytes),
            _mm256_extract_epi64::<1>(bytes),
            _mm256_extract_epi64::<2>(bytes),
            _mm256_extract_epi64::<3>(bytes),
        ];
        for (i, lane) in lanes.into_iter().enumerate() {
            let r = half * 4 + i;
            out[r * stride..r * stride + 8].copy_from_slice(&lane.to_le_bytes());
        }
    }
    let zero = _mm256_setzero_si256();
    for r in 0..8 {
        // SAFETY: as for the loads above.
        unsafe { _mm256_store_si256(base.add(r), zero) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A float inverse DCT, the definition the integer one approximates.
    fn reference(c: &[i32; 64]) -> [f64; 64] {
        let mut out = [0.0; 64];
        for y in 0..8 {
            for x in 0..8 {
                let mut s = 0.0;
                for v in 0..8 {
                    for u in 0..8 {
                        let cu = if u == 0 { 0.5f64.sqrt() } else { 1.0 };
                        let cv = if v == 0 { 0.5f64.sqrt() } else { 1.0 };
                        s += cu
                            * cv
                            * f64::from(c[v * 8 + u])
                            * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos()
                            * ((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI / 16.0).cos();
                    }
                }
                out[y * 8 + x] = s / 4.0 + 128.0;
            }
        }
        out
    }

    /// Deterministic pseudo-random blocks, sparse and dense, of realistic magnitudes.
    fn blocks() -> Vec<[i32; 64]> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..500)
            .map(|i| {
                let density = [2, 8, 64][i % 3];
                std::array::from_fn(|k| {
                    let r = next();
                    if k == 0 {
                        (r % 2040) as i32 - 1020
                    } else if r % 64 < density {
                        ((r >> 8) % 400) as i32 - 200
                    } else {
                        0
                    }
                })
            })
            .collect()
    }

    #[test]
    fn scalar_is_close_to_the_float_transform() {
        let mut worst = 0.0f64;
        for c in blocks() {
            let expected = reference(&c);
            let mut out = [0u8; 64];
            idct_scalar(&mut Block(c), &Block([1; 64]), &mut out, 8);
            for (p, e) in out.iter().zip(expected) {
                worst = worst.max((f64::from(*p) - e.clamp(0.0, 255.0)).abs());
            }
        }
        assert!(worst <= 1.5, "worst error {worst}");
    }

    #[test]
    fn vector_equals_scalar_and_zeroes_the_block() {
        let steps = Block(std::array::from_fn(|i| [1, 2, 3, 7][i % 4]));
        for c in blocks() {
            let quantised = Block(std::array::from_fn(|i| c[i] / steps.0[i]));
            let (mut a, mut b) = ([0u8; 80], [0u8; 80]);
            idct_scalar(&mut Block(quantised.0), &steps, &mut a[..], 9);
            let mut block = Block(quantised.0);
            idct(&mut block, &steps, &mut b[..], 9);
            assert_eq!(a, b);
            assert_eq!(block.0, [0; 64]);
        }
    }

    #[test]
    fn dc_only_matches_the_full_transform() {
        for dc in -1100..1100 {
            let mut c = [0; 64];
            c[0] = dc;
            let mut out = [0u8; 64];
            idct_scalar(&mut Block(c), &Block([1; 64]), &mut out, 8);
            assert!(out.iter().all(|&p| p == dc_value(dc)), "dc {dc}");
        }
    }
}
