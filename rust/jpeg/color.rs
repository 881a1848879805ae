//! From decoded component planes to interleaved RGB rows: libjpeg's "fancy" (triangle filter)
//! chroma upsampling for h2v1 and h2v2, its fixed-point YCbCr→RGB conversion, and the
//! left-right mirror folded into the row write. The same integers as libjpeg-turbo's default
//! decode (jdsample.c, jdcolor.c); only the arrangement of the loops is ours.
//!
//! The loops are plain Rust written so that the compiler vectorises them; [`convert`] runs them
//! compiled for AVX2 when the CPU has it, and for the baseline target otherwise.

/// How the chroma planes relate to the luma plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// One component: grey replicated to R, G and B.
    Gray,
    /// Luma sampling factors (h, v) of a YCbCr image whose chroma factors are 1x1: (1, 1)
    /// 4:4:4, (2, 1) 4:2:2, (2, 2) 4:2:0.
    Ycc(usize, usize),
}

/// One decoded component: `rows` rows of `stride` samples (MCU padding included), of which
/// the first `height` rows and `width` columns are the image's.
pub struct Plane<'a> {
    pub data: &'a [u8],
    pub stride: usize,
    pub width: usize,
    pub height: usize,
}

impl Plane<'_> {
    fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.stride..y * self.stride + self.width]
    }
}

/// Row buffers reused between images (one set per decoding thread).
#[derive(Default)]
pub struct RowScratch {
    cb: Vec<u8>,
    cr: Vec<u8>,
}

/// Writes the `height` × `width` RGB image of `planes` (luma, then Cb and Cr unless grey) into
/// `out` (`height * width * 3` bytes), each row mirrored when `flip`.
pub fn convert(
    sampling: Sampling,
    planes: &[Plane<'_>],
    out: &mut [u8],
    width: usize,
    height: usize,
    flip: bool,
    scratch: &mut RowScratch,
) {
    assert_eq!(out.len(), width * height * 3, "output buffer size");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the one requirement of `convert_avx2`.
        unsafe { convert_avx2(sampling, planes, out, width, height, flip, scratch) };
        return;
    }
    convert_generic(
        sampling,
        planes,
        out,
        width,
        height,
        flip,
        scratch,
        RowWriter::Scalar,
    );
}

/// How rows of pixels are converted and written.
#[derive(Clone, Copy)]
enum RowWriter {
    Scalar,
    /// Only constructed where the CPU is known to support AVX2 (the vector code relies on it).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl RowWriter {
    /// Writes the RGB pixels of one row (grey when `chroma` is `None`), mirrored when `flip`.
    #[inline(always)]
    fn write(self, luma: &[u8], chroma: Option<(&[u8], &[u8])>, out: &mut [u8], flip: bool) {
        let n = out.len() / 3;
        let (luma, chroma) = (&luma[..n], chroma.map(|(b, r)| (&b[..n], &r[..n])));
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if let RowWriter::Avx2 = self {
            // SAFETY: `Avx2` is only chosen after the CPU was found to support AVX2, the one
            // requirement of `avx2::row`.
            done = unsafe { avx2::row(luma, chroma, out, flip) };
        }
        let source = |x: usize| if flip { n - 1 - x } else { x };
        match chroma {
            None => {
                for x in done..n {
                    let v = luma[source(x)];
                    out[3 * x..3 * x + 3].fill(v);
                }
            }
            Some((cb, cr)) => {
                for x in done..n {
                    let i = source(x);
                    out[3 * x..3 * x + 3].copy_from_slice(&ycc_pixel(luma[i], cb[i], cr[i]));
                }
            }
        }
    }
}

// FIX(1.40200), FIX(1.77200), FIX(0.71414), FIX(0.34414) at 16 bits (jdcolor.c).
const CR_R: i32 = 91881;
const CB_B: i32 = 116_130;
const CR_G: i32 = 46802;
const CB_G: i32 = 22554;
const HALF: i32 = 1 << 15;

/// libjpeg's YCbCr→RGB of one pixel: 16-bit fixed point, rounded, clamped.
#[inline(always)]
fn ycc_pixel(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = i32::from(y);
    let b = i32::from(cb) - 128;
    let r = i32::from(cr) - 128;
    [
        (y + ((CR_R * r + HALF) >> 16)).clamp(0, 255) as u8,
        (y + ((-CB_G * b - CR_G * r + HALF) >> 16)).clamp(0, 255) as u8,
        (y + ((CB_B * b + HALF) >> 16)).clamp(0, 255) as u8,
    ]
}

/// [`convert_generic`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn convert_avx2(
    sampling: Sampling,
    planes: &[Plane<'_>],
    out: &mut [u8],
    width: usize,
    height: usize,
    flip: bool,
    scratch: &mut RowScratch,
) {
    convert_generic(
        sampling,
        planes,
        out,
        width,
        height,
        flip,
        scratch,
        RowWriter::Avx2,
    );
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn convert_generic(
    sampling: Sampling,
    planes: &[Plane<'_>],
    out: &mut [u8],
    width: usize,
    height: usize,
    flip: bool,
    s: &mut RowScratch,
    writer: RowWriter,
) {
    // Upsampled rows hold whole sample pairs: one more than the width when it is odd.
    let padded = width + 1;
    for buf in [&mut s.cb, &mut s.cr] {
        buf.resize(padded, 0);
    }
    for (y, out_row) in out.chunks_exact_mut(width * 3).enumerate().take(height) {
        let luma = planes[0].row(y);
        if sampling == Sampling::Gray {
            writer.write(luma, None, out_row, flip);
            continue;
        }
        let (cb, cr) = (&planes[1], &planes[2]);
        let (cb_row, cr_row): (&[u8], &[u8]) = match sampling {
            Sampling::Ycc(1, 1) => (cb.row(y), cr.row(y)),
            Sampling::Ycc(2, 1) => {
                fancy(cb.row(y), None, &mut s.cb, writer);
                fancy(cr.row(y), None, &mut s.cr, writer);
                (&s.cb[..width], &s.cr[..width])
            }
            _ => {
                // h2v2: the nearer chroma row weighs 3, the farther 1 (the row above for an
                // even output row, below for an odd one; edge rows repeat).
                let near = y / 2;
                let far = if y % 2 == 0 {
                    near.saturating_sub(1)
                } else {
                    (near + 1).min(cb.height - 1)
                };
                fancy(cb.row(near), Some(cb.row(far)), &mut s.cb, writer);
                fancy(cr.row(near), Some(cr.row(far)), &mut s.cr, writer);
                (&s.cb[..width], &s.cr[..width])
            }
        };
        writer.write(luma, Some((cb_row, cr_row)), out_row, flip);
    }
}

/// libjpeg's "fancy" chroma upsampling of one row, doubled horizontally (jdsample.c
/// h2v1_fancy_upsample, h2v2_fancy_upsample). Without `far` (h2v1) each output sample is 3/4
/// of the nearer input and 1/4 of the next one over; with it (h2v2) the inputs are first the
/// column sums 3 × nearer row + farther row. Rounding alternates between even and odd outputs,
/// and the edge samples are their own neighbours. Rows of one or two samples are doubled by
/// repetition (of the nearer row), as libjpeg does.
#[inline(always)]
fn fancy(near: &[u8], far: Option<&[u8]>, out: &mut [u8], writer: RowWriter) {
    let n = near.len();
    let out = &mut out[..2 * n];
    if n <= 2 {
        repeat_pairs(near, out);
        return;
    }
    /// Output samples 2i and 2i + 1, neighbours clamped to the row.
    #[inline(always)]
    fn pair(near: &[u8], far: Option<&[u8]>, i: usize, out: &mut [u8]) {
        let n = near.len();
        let sum = |i: usize| match far {
            Some(far) => u16::from(near[i]) * 3 + u16::from(far[i]),
            None => u16::from(near[i]),
        };
        let (shift, even_bias, odd_bias) = if far.is_some() { (4, 8, 7) } else { (2, 1, 2) };
        let this = sum(i) * 3;
        let (prev, next) = (sum(i.saturating_sub(1)), sum((i + 1).min(n - 1)));
        out[2 * i] = ((this + prev + even_bias) >> shift) as u8;
        out[2 * i + 1] = ((this + next + odd_bias) >> shift) as u8;
    }
    let scalar = |i: usize, out: &mut [u8]| pair(near, far, i, out);
    scalar(0, out);
    let mut i = 1;
    #[cfg(target_arch = "x86_64")]
    if let RowWriter::Avx2 = writer {
        // SAFETY: `Avx2` is only chosen after the CPU was found to support AVX2, the one
        // requirement of `avx2::fancy_interior`.
        i = unsafe { avx2::fancy_interior(near, far, out) };
    }
    let _ = writer;
    for i in i..n {
        scalar(i, out);
    }
}

/// Plain doubling: each input sample twice.
#[inline(always)]
fn repeat_pairs(input: &[u8], out: &mut [u8]) {
    for (pair, &v) in out.chunks_exact_mut(2).zip(input) {
        pair.fill(v);
    }
}

/// Row conversion with AVX2 intrinsics, 16 pixels at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{CB_B, CB_G, CR_G, CR_R, HALF};

    /// pshufb masks spreading 16 samples of one channel over 48 interleaved RGB bytes:
    /// `MASKS[c][ch]` fills output chunk `c` (16 bytes) with channel `ch`'s samples.
    const MASKS: [[[u8; 16]; 3]; 3] = {
        let mut m = [[[0x80u8; 16]; 3]; 3];
        let mut p = 0;
        while p < 48 {
            m[p / 16][p % 3][p % 16] = (p / 3) as u8;
            p += 1;
        }
        m
    };
    const REVERSE: [u8; 16] = [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0];

    /// 16 samples from `src` at `at` (panics past its end), reversed when `flip`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn load16(src: &[u8], at: usize, flip: bool) -> __m128i {
        let bytes = &src[at..at + 16];
        // SAFETY: `bytes` is 16 readable bytes; the load has no alignment requirement.
        let v = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        if flip {
            // SAFETY: REVERSE is 16 readable bytes.
            _mm_shuffle_epi8(v, unsafe { _mm_loadu_si128(REVERSE.as_ptr().cast()) })
        } else {
            v
        }
    }

    /// `(x * c + 2^15) >> 16` exactly, in 16-bit lanes: the high half of the product, plus
    /// one where the low half is at least 2^15 (its sign bit).
    #[target_feature(enable = "avx2")]
    unsafe fn mul_round(x: __m256i, c: i16) -> __m256i {
        let c = _mm256_set1_epi16(c);
        _mm256_sub_epi16(
            _mm256_mulhi_epi16(x, c),
            _mm256_srai_epi16::<15>(_mm256_mullo_epi16(x, c)),
        )
    }

    /// libjpeg's YCbCr→RGB on 16 pixels, exact (as [`super::ycc_pixel`]) in 16-bit lanes:
    /// 1.402 = 1 + 26345 / 2^16 and 1.772 = 2 - 14942 / 2^16 keep each product in range;
    /// green sums two products in 32-bit lanes (pmaddwd, with Cr doubled to fit -0.71414).
    #[target_feature(enable = "avx2")]
    unsafe fn rgb16(y: __m128i, cb: __m128i, cr: __m128i) -> [__m128i; 3] {
        debug_assert_eq!(
            (CR_R, CB_B, CB_G, CR_G),
            (65536 + 26345, 131_072 - 14942, 22554, 2 * 23401)
        );
        let centre = _mm256_set1_epi16(128);
        let y = _mm256_cvtepu8_epi16(y);
        let b = _mm256_sub_epi16(_mm256_cvtepu8_epi16(cb), centre);
        let r = _mm256_sub_epi16(_mm256_cvtepu8_epi16(cr), centre);
        let red = _mm256_add_epi16(_mm256_add_epi16(y, r), mul_round(r, 26345));
        let blue = _mm256_add_epi16(
            _mm256_add_epi16(y, _mm256_add_epi16(b, b)),
            mul_round(b, -14942),
        );
        let r2 = _mm256_add_epi16(r, r);
        let weights = _mm256_set1_epi32((-23401i32 << 16) | (-22554i32 & 0xFFFF));
        let half = _mm256_set1_epi32(HALF);
        let green32 = |pairs: __m256i| {
            _mm256_srai_epi32::<16>(_mm256_add_epi32(_mm256_madd_epi16(pairs, weights), half))
        };
        // unpacklo/hi work within 128-bit lanes, and packs puts their halves back in order.
        let green = _mm256_add_epi16(
            y,
            _mm256_packs_epi32(
                green32(_mm256_unpacklo_epi16(b, r2)),
                green32(_mm256_unpackhi_epi16(b, r2)),
            ),
        );
        // Saturating packs clamp to 0..=255; the permute puts the 128-bit halves in order.
        let rg = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(red, green));
        let bb = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(blue, blue));
        [
            _mm256_castsi256_si128(rg),
            _mm256_extracti128_si256::<1>(rg),
            _mm256_castsi256_si128(bb),
        ]
    }

    /// Interleaves 16 samples of each channel into `out` (48 bytes; panics if shorter).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn store48(channels: [__m128i; 3], out: &mut [u8]) {
        let out = &mut out[..48];
        for (c, masks) in MASKS.iter().enumerate() {
            let mut chunk = _mm_setzero_si128();
            for (&channel, mask) in channels.iter().zip(masks) {
                // SAFETY: `mask` is 16 readable bytes.
                let mask = unsafe { _mm_loadu_si128(mask.as_ptr().cast()) };
                chunk = _mm_or_si128(chunk, _mm_shuffle_epi8(channel, mask));
            }
            // SAFETY: `out[16c..16c + 16]` lies within the 48 bytes checked above.
            unsafe { _mm_storeu_si128(out[16 * c..].as_mut_ptr().cast(), chunk) };
        }
    }

    /// [`super::fancy`] on the interior samples 1, 17, 33, ... 16 at a time while the next
    /// sample after the 16 exists; returns the first sample not done.
    ///
    /// Slices are checked (a `far` shorter than `near`, or `out` shorter than twice it, panics).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn fancy_interior(near: &[u8], far: Option<&[u8]>, out: &mut [u8]) -> usize {
        let n = near.len();
        let k = |v: i16| _mm256_set1_epi16(v);
        // 16 samples from `at` as u16 lanes (column sums for h2v2).
        let sums = |at: usize| {
            let load = |src: &[u8]| {
                let bytes = &src[at..at + 16];
                // SAFETY: `bytes` is 16 readable bytes; no alignment requirement.
                _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) })
            };
            match far {
                Some(far) => _mm256_add_epi16(_mm256_mullo_epi16(load(near), k(3)), load(far)),
                None => load(near),
            }
        };
        let (even_bias, odd_bias) = if far.is_some() {
            (k(8), k(7))
        } else {
            (k(1), k(2))
        };
        // Samples 1.. in steps of 16, the last step moved back to end at sample n - 2 (it
        // redoes a few samples, with the same results).
        let mut next = 1;
        while n >= 18 && next < n - 1 {
            let i = next.min(n - 17);
            let this = _mm256_mullo_epi16(sums(i), k(3));
            let even = _mm256_add_epi16(_mm256_add_epi16(this, sums(i - 1)), even_bias);
            let odd = _mm256_add_epi16(_mm256_add_epi16(this, sums(i + 1)), odd_bias);
            let (even, odd) = if far.is_some() {
                (_mm256_srli_epi16::<4>(even), _mm256_srli_epi16::<4>(odd))
            } else {
                (_mm256_srli_epi16::<2>(even), _mm256_srli_epi16::<2>(odd))
            };
            // Each u16 lane: the even output in its low byte, the odd one in its high byte,
            // which is their order in memory.
            let pairs = _mm256_or_si256(even, _mm256_slli_epi16::<8>(odd));
            let dst = &mut out[2 * i..2 * i + 32];
            // SAFETY: `dst` is 32 writable bytes; no alignment requirement.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), pairs) };
            next = i + 16;
        }
        next
    }

    /// Converts and writes the pixels of a row 16 at a time (grey when `chroma` is `None`),
    /// mirrored when `flip`; returns how many leading output pixels it wrote (a multiple of
    /// 16), the rest being the caller's.
    ///
    /// Slices are checked (inputs shorter than `out.len() / 3` samples panic).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn row(
        luma: &[u8],
        chroma: Option<(&[u8], &[u8])>,
        out: &mut [u8],
        flip: bool,
    ) -> usize {
        let n = out.len() / 3;
        let mut x = 0;
        while x + 16 <= n {
            // Output pixels x..x+16 come from input x..x+16, or mirrored from n-x-16..n-x.
            let at = if flip { n - x - 16 } else { x };
            // SAFETY: AVX2 is enabled in this function, the only requirement of `load16`.
            let y = unsafe { load16(luma, at, flip) };
            let channels = match chroma {
                None => [y; 3],
                // SAFETY: as above, for `rgb16` and `load16`.
                Some((cb, cr)) => unsafe { rgb16(y, load16(cb, at, flip), load16(cr, at, flip)) },
            };
            // SAFETY: as above, for `store48`.
            unsafe { store48(channels, &mut out[3 * x..]) };
            x += 16;
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_chroma_upsamples_to_itself() {
        let mut out = vec![0u8; 10];
        fancy(&[77; 5], None, &mut out, RowWriter::Scalar);
        assert_eq!(out, vec![77; 10]);
        fancy(&[200; 5], Some(&[200; 5]), &mut out, RowWriter::Scalar);
        assert_eq!(out, vec![200; 10]);
    }

    #[test]
    fn triangle_filter_weights() {
        let mut out = vec![0u8; 6];
        fancy(&[0, 100, 200], None, &mut out, RowWriter::Scalar);
        // 3/4 nearer + 1/4 farther, rounding +1 / +2 alternately; edges copy.
        assert_eq!(out, vec![0, 25, 75, 125, 175, 200]);
        fancy(
            &[0, 160, 80],
            Some(&[160, 0, 80]),
            &mut out,
            RowWriter::Scalar,
        );
        // Column sums 160, 480, 320.
        assert_eq!(out, vec![40, 60, 100, 110, 90, 80]);
        // Two samples: repeated (libjpeg uses fancy upsampling from three on).
        fancy(&[10, 90], None, &mut out, RowWriter::Scalar);
        assert_eq!(&out[..4], &[10, 10, 90, 90]);
        fancy(&[10, 90], Some(&[200, 200]), &mut out, RowWriter::Scalar);
        assert_eq!(&out[..4], &[10, 10, 90, 90]);
    }

    #[test]
    fn grey_and_neutral_chroma_give_grey_pixels() {
        assert_eq!(ycc_pixel(0, 128, 128), [0, 0, 0]);
        assert_eq!(ycc_pixel(128, 128, 128), [128, 128, 128]);
        assert_eq!(ycc_pixel(255, 128, 128), [255, 255, 255]);
        let red = ycc_pixel(76, 85, 255); // pure red, as a JPEG encoder rounds it
        assert!(red[0] >= 253 && red[1] <= 2 && red[2] <= 2, "{red:?}");
    }

    #[test]
    fn vector_rows_equal_scalar_rows() {
        let mut state = 12345u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        for n in [1, 15, 16, 17, 33, 48, 112, 117] {
            let planes: Vec<Vec<u8>> = (0..3).map(|_| (0..n).map(|_| next()).collect()).collect();
            for flip in [false, true] {
                for grey in [false, true] {
                    let chroma = (!grey).then(|| (&planes[1][..], &planes[2][..]));
                    let mut scalar = vec![0u8; 3 * n];
                    RowWriter::Scalar.write(&planes[0], chroma, &mut scalar, flip);
                    let mut vector = vec![0u8; 3 * n];
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") {
                        RowWriter::Avx2.write(&planes[0], chroma, &mut vector, flip);
                        assert_eq!(scalar, vector, "n {n} flip {flip} grey {grey}");
                    }
                    if flip {
                        let mut plain = vec![0u8; 3 * n];
                        RowWriter::Scalar.write(&planes[0], chroma, &mut plain, false);
                        let mirrored: Vec<u8> = plain.chunks(3).rev().flatten().copied().collect();
                        assert_eq!(scalar, mirrored);
                    }
                }
            }
        }
    }

    #[test]
    fn vector_colour_is_exact_for_every_chroma_pair() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let cb: Vec<u8> = (0..=255).collect();
            for cr in 0..=255u8 {
                for shift in [0usize, 101, 211] {
                    let luma: Vec<u8> = (0..256).map(|i| ((i * 7 + shift) % 256) as u8).collect();
                    let crs = vec![cr; 256];
                    let mut out = vec![0u8; 3 * 256];
                    RowWriter::Avx2.write(&luma, Some((&cb, &crs)), &mut out, false);
                    for (i, px) in out.chunks(3).enumerate() {
                        assert_eq!(
                            px,
                            ycc_pixel(luma[i], cb[i], cr),
                            "y {} cb {i} cr {cr}",
                            luma[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn vector_upsampling_equals_scalar() {
        let mut state = 777u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            for n in [3, 17, 18, 33, 56, 59, 112] {
                let near: Vec<u8> = (0..n).map(|_| next()).collect();
                let far: Vec<u8> = (0..n).map(|_| next()).collect();
                for far in [None, Some(&far[..])] {
                    let (mut a, mut b) = (vec![0u8; 2 * n], vec![0u8; 2 * n]);
                    fancy(&near, far, &mut a, RowWriter::Scalar);
                    fancy(&near, far, &mut b, RowWriter::Avx2);
                    assert_eq!(a, b, "n {n} h2v2 {}", far.is_some());
                }
            }
        }
    }

    #[test]
    fn flip_mirrors_each_row() {
        let data: Vec<u8> = (0..12).collect();
        let plane = Plane {
            data: &data,
            stride: 4,
            width: 3,
            height: 3,
        };
        let mut scratch = RowScratch::default();
        let (mut a, mut b) = (vec![0u8; 27], vec![0u8; 27]);
        convert(Sampling::Gray, &[plane], &mut a, 3, 3, false, &mut scratch);
        let plane = Plane {
            data: &data,
            stride: 4,
            width: 3,
            height: 3,
        };
        convert(Sampling::Gray, &[plane], &mut b, 3, 3, true, &mut scratch);
        assert_eq!(&a[..9], &[0, 0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(&b[..9], &[2, 2, 2, 1, 1, 1, 0, 0, 0]);
        assert_eq!(&b[18..], &[10, 10, 10, 9, 9, 9, 8, 8, 8]);
    }
}
