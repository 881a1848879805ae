//! The fast decode path: the strict walk of [`scan::walk`] decodes the coefficients as it
//! checks them (one Huffman pass), each block goes through the IDCT into its component plane
//! as soon as it ends, and once the whole file has passed the check the planes become RGB rows
//! in the caller's buffer (mirrored there when asked).
//!
//! It covers what training crops are: sequential 8-bit Huffman JPEGs, grey or YCbCr with luma
//! sampled 1x1, 2x1 or 2x2 and chroma 1x1, in one interleaved scan (any size, restart
//! intervals). Anything else passes the same check and is left to the general decoder.

use std::cell::RefCell;

use super::color::{self, Plane, RowScratch, Sampling};
use super::idct::{self, Block};
use super::scan::{self, ScanInfo, Sink};

/// Planes larger than this are freed after the image instead of kept for the next one.
const KEEP_BYTES: usize = 16 << 20;

/// Buffers one decoding thread reuses from image to image.
#[derive(Default)]
struct Scratch {
    planes: [Vec<u8>; 3],
    rows: RowScratch,
    block: Block,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Decodes the blocks of a scan it takes into planes of samples.
struct PlaneSink<'s> {
    planes: &'s mut [Vec<u8>; 3],
    block: &'s mut Block,
    /// The size the caller expects; a frame of another size is not taken.
    expected: (usize, usize),
    /// Set once a scan is taken.
    sampling: Option<Sampling>,
    strides: [usize; 3],
    /// Per scan component: its plane and its quantisation steps in natural order.
    plane_of: [usize; 3],
    quant: [Block; 3],
}

/// Whether three components are YCbCr, by libjpeg's rules: an Adobe marker's transform says
/// (1: YCbCr), else a JFIF marker means YCbCr, else component ids 'R', 'G', 'B' mean RGB.
fn is_ycc(scan: &ScanInfo<'_>) -> bool {
    match scan.adobe_transform {
        Some(transform) => transform == 1,
        None => {
            let ids = [scan.frame[0].0, scan.frame[1].0, scan.frame[2].0];
            scan.jfif || ids != *b"RGB"
        }
    }
}

impl PlaneSink<'_> {
    fn layout(&self, scan: &ScanInfo<'_>) -> Option<Sampling> {
        if self.sampling.is_some() || (scan.height, scan.width) != self.expected {
            return None;
        }
        match *scan.frame.as_slice() {
            [_] => Some(Sampling::Gray),
            [(_, h, v), (_, 1, 1), (_, 1, 1)]
                if matches!((h, v), (1, 1) | (2, 1) | (2, 2))
                    && scan.scan.len() == 3
                    && is_ycc(scan) =>
            {
                Some(Sampling::Ycc(h, v))
            }
            _ => None,
        }
    }
}

impl Sink for PlaneSink<'_> {
    const VALUES: bool = true;

    fn begin_scan(&mut self, scan: &ScanInfo<'_>) -> bool {
        let Some(sampling) = self.layout(scan) else {
            return false;
        };
        // Plane sizes in blocks: the whole MCU grid (padding blocks are coded too), or for one
        // component scanned alone its own block grid.
        let sizes: Vec<(usize, usize)> = match sampling {
            Sampling::Gray => vec![(scan.width.div_ceil(8), scan.height.div_ceil(8))],
            Sampling::Ycc(h, v) => vec![
                (scan.mcus_w * h, scan.mcus_h * v),
                (scan.mcus_w, scan.mcus_h),
                (scan.mcus_w, scan.mcus_h),
            ],
        };
        for (p, &(bw, bh)) in sizes.iter().enumerate() {
            self.strides[p] = bw * 8;
            self.planes[p].resize(bw * 8 * bh * 8, 0);
        }
        for (j, (&index, steps)) in scan.scan.iter().zip(&scan.quant).enumerate() {
            self.plane_of[j] = index;
            for (k, &step) in steps.iter().enumerate() {
                self.quant[j].0[usize::from(scan::UNZIGZAG[k])] = i32::from(step);
            }
        }
        self.sampling = Some(sampling);
        true
    }

    #[inline(always)]
    fn start_block(&mut self, _: usize, dc: i32) -> Option<&mut [i32; 64]> {
        self.block.0[0] = dc;
        Some(&mut self.block.0)
    }

    #[inline(always)]
    fn end_block(&mut self, j: usize, bx: usize, by: usize, has_ac: bool) {
        let p = self.plane_of[j];
        let stride = self.strides[p];
        let start = by * 8 * stride + bx * 8;
        let out = &mut self.planes[p][start..start + 7 * stride + 8];
        if has_ac {
            idct::idct(self.block, &self.quant[j], out, stride);
        } else {
            // DC only (common in smooth images): the transform is one flat value.
            let value = idct::dc_value(self.block.0[0].wrapping_mul(self.quant[j].0[0]));
            for row in out.chunks_mut(stride) {
                row[..8].fill(value);
            }
        }
    }
}

/// Checks `jpeg` strictly (as [`scan::check`], sides up to `max_side`) and, when it is
/// `height` × `width` and of a kind this path covers, decodes it as RGB into `out` (mirrored
/// when `flip`). Returns the image's (height, width) and whether `out` now holds it; `out` is
/// untouched when the check fails.
pub fn check_and_decode(
    jpeg: &[u8],
    max_side: usize,
    out: &mut [u8],
    (height, width): (usize, usize),
    flip: bool,
) -> Result<((usize, usize), bool), String> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => run(jpeg, max_side, out, (height, width), flip, &mut scratch),
        // Only reachable if a decode were nested in another on this thread: use fresh buffers.
        Err(_) => run(
            jpeg,
            max_side,
            out,
            (height, width),
            flip,
            &mut Scratch::default(),
        ),
    })
}

fn run(
    jpeg: &[u8],
    max_side: usize,
    out: &mut [u8],
    expected: (usize, usize),
    flip: bool,
    scratch: &mut Scratch,
) -> Result<((usize, usize), bool), String> {
    let Scratch {
        planes,
        rows,
        block,
    } = scratch;
    // A walk that failed inside a block may have left coefficients behind.
    block.0 = [0; 64];
    let mut sink = PlaneSink {
        planes,
        block,
        expected,
        sampling: None,
        strides: [0; 3],
        plane_of: [0; 3],
        quant: Default::default(),
    };
    let size = scan::walk(jpeg, max_side, &mut sink)?;
    let (height, width) = size;
    let decoded = match sink.sampling {
        Some(sampling) if size == expected && out.len() == height * width * 3 => {
            let views: Vec<Plane<'_>> = (0..if sampling == Sampling::Gray { 1 } else { 3 })
                .map(|p| {
                    // Chroma planes hold ceil(side / 2) samples when luma is sampled 2x.
                    let (fw, fh) = match sampling {
                        Sampling::Ycc(h, v) if p > 0 => (h, v),
                        _ => (1, 1),
                    };
                    Plane {
                        data: &sink.planes[p],
                        stride: sink.strides[p],
                        width: width.div_ceil(fw),
                        height: height.div_ceil(fh),
                    }
                })
                .collect();
            color::convert(sampling, &views, out, width, height, flip, rows);
            true
        }
        _ => false,
    };
    for plane in planes.iter_mut() {
        if plane.capacity() > KEEP_BYTES {
            *plane = Vec::new();
        }
    }
    Ok((size, decoded))
}

#[cfg(test)]
mod tests {
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

    use super::super::{decode_general, decode_rgb_into, mirror_rows};

    /// Deterministic pseudo-random numbers (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A smooth RGB image (three colour gradients and a blob) with uniform noise of `noise`.
    fn image(height: usize, width: usize, noise: u64, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed | 1);
        let mut out = Vec::with_capacity(height * width * 3);
        for y in 0..height {
            for x in 0..width {
                let (fy, fx) = (y as f64 / height as f64, x as f64 / width as f64);
                let blob = (-((fx - 0.5).powi(2) + (fy - 0.4).powi(2)) * 12.0).exp();
                for (c, base) in [40.0 + 170.0 * fx, 200.0 - 150.0 * fy, 90.0 + 140.0 * blob]
                    .into_iter()
                    .enumerate()
                {
                    let jitter = if noise > 0 {
                        (rng.next() % (2 * noise + 1)) as f64 - noise as f64
                    } else {
                        0.0
                    };
                    out.push((base + jitter + c as f64 * 5.0).clamp(0.0, 255.0) as u8);
                }
            }
        }
        out
    }

    /// `rgb` encoded by jpeg-encoder: `sampling` None means grey.
    fn encode(
        rgb: &[u8],
        height: usize,
        width: usize,
        sampling: Option<SamplingFactor>,
        restart: u16,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(&mut out, 93);
        if restart > 0 {
            encoder.set_restart_interval(restart);
        }
        let (w, h) = (width as u16, height as u16);
        match sampling {
            Some(s) => {
                encoder.set_sampling_factor(s);
                encoder.encode(rgb, w, h, ColorType::Rgb).unwrap();
            }
            None => {
                let grey: Vec<u8> = rgb.chunks(3).map(|p| p[1]).collect();
                encoder.encode(&grey, w, h, ColorType::Luma).unwrap();
            }
        }
        out
    }

    fn fast(jpeg: &[u8], height: usize, width: usize, flip: bool) -> Vec<u8> {
        let mut out = vec![0u8; height * width * 3];
        let (size, decoded) =
            super::check_and_decode(jpeg, 8192, &mut out, (height, width), flip).unwrap();
        assert_eq!(size, (height, width));
        assert!(decoded, "the fast path did not take the image");
        out
    }

    fn general(jpeg: &[u8], height: usize, width: usize) -> Vec<u8> {
        let mut out = vec![0u8; height * width * 3];
        decode_general(jpeg, &mut out, height, width, false).unwrap();
        out
    }

    const SAMPLINGS: [Option<SamplingFactor>; 4] = [
        None,
        Some(SamplingFactor::F_1_1),
        Some(SamplingFactor::F_2_1),
        Some(SamplingFactor::F_2_2),
    ];

    #[test]
    fn fast_path_matches_the_general_decoder() {
        let mut worst = (0, 0.0f64);
        for (height, width) in [(16, 16), (37, 53), (53, 37), (1, 1), (2, 3), (112, 112)] {
            for noise in [0, 8] {
                for sampling in SAMPLINGS {
                    for restart in [0, 1, 3] {
                        let rgb = image(height, width, noise, (height * 31 + width) as u64);
                        let jpeg = encode(&rgb, height, width, sampling, restart);
                        let a = fast(&jpeg, height, width, false);
                        let b = general(&jpeg, height, width);
                        let diffs: Vec<i32> = a
                            .iter()
                            .zip(&b)
                            .map(|(&p, &q)| (i32::from(p) - i32::from(q)).abs())
                            .collect();
                        let max = diffs.iter().copied().max().unwrap();
                        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
                        let what =
                            format!("{height}x{width} noise {noise} {sampling:?} rst {restart}");
                        // Below 3 chroma columns libjpeg (which this path follows, see the
                        // Python tests) repeats samples where zune-jpeg still filters.
                        if width >= 5 {
                            assert!(max <= 6 && mean < 0.5, "{what}: max {max} mean {mean}");
                            worst = (worst.0.max(max), worst.1.max(mean));
                        }
                        // The mirrored decode is the plain one mirrored, exactly.
                        let mut mirrored = a.clone();
                        mirror_rows(&mut mirrored, width);
                        assert_eq!(fast(&jpeg, height, width, true), mirrored, "{what}");
                        // The public entry point takes the fast path.
                        let mut out = vec![0u8; a.len()];
                        decode_rgb_into(&jpeg, &mut out, height, width, false).unwrap();
                        assert_eq!(out, a, "{what}");
                    }
                }
            }
        }
        // `--nocapture` shows how far zune-jpeg is from this path (libjpeg's arithmetic).
        println!(
            "fast vs zune-jpeg: worst max {}, worst mean {:.3}",
            worst.0, worst.1
        );
    }

    #[test]
    fn other_kinds_go_to_the_general_decoder() {
        let rgb = image(24, 40, 4, 5);
        let mut out = vec![0u8; rgb.len()];
        // Progressive: checked, not taken by the fast path, decoded by zune-jpeg.
        let mut progressive = Vec::new();
        let mut encoder = Encoder::new(&mut progressive, 93);
        encoder.set_progressive(true);
        encoder.set_sampling_factor(SamplingFactor::F_2_2);
        encoder.encode(&rgb, 40, 24, ColorType::Rgb).unwrap();
        let (size, decoded) =
            super::check_and_decode(&progressive, 8192, &mut out, (24, 40), false).unwrap();
        assert_eq!((size, decoded), ((24, 40), false));
        decode_rgb_into(&progressive, &mut out, 24, 40, false).unwrap();
        let baseline = encode(&rgb, 24, 40, Some(SamplingFactor::F_2_2), 0);
        let reference = fast(&baseline, 24, 40, false);
        let max = out
            .iter()
            .zip(&reference)
            .map(|(&p, &q)| p.abs_diff(q))
            .max()
            .unwrap();
        assert!(max <= 8, "progressive vs baseline {max}");
        // A size other than the expected one: refused with the size named, nothing decoded.
        let mut small = vec![7u8; 12 * 20 * 3];
        let err = decode_rgb_into(&baseline, &mut small, 12, 20, false).unwrap_err();
        assert!(err.contains("24x40"), "{err}");
        assert!(small.iter().all(|&p| p == 7));
    }

    #[test]
    fn rgb_colour_transforms_are_left_to_the_general_decoder() {
        let rgb = image(16, 16, 0, 3);
        let jpeg = encode(&rgb, 16, 16, Some(SamplingFactor::F_1_1), 0);
        let mut out = vec![0u8; rgb.len()];
        let taken = |data: &[u8], out: &mut [u8]| {
            super::check_and_decode(data, 8192, out, (16, 16), false)
                .unwrap()
                .1
        };
        assert!(taken(&jpeg, &mut out));
        // An Adobe APP14 marker with transform 0 (components are R, G, B, not YCbCr).
        let mut adobe = vec![0xFF, 0xEE, 0x00, 0x0E];
        adobe.extend_from_slice(b"Adobe\x00\x64\x00\x00\x00\x00\x00");
        let with_adobe = [&jpeg[..2], &adobe[..], &jpeg[2..]].concat();
        assert!(!taken(&with_adobe, &mut out));
        // Transform 1 (YCbCr) is taken.
        let mut ycc = with_adobe.clone();
        ycc[2 + 4 + 11] = 1;
        assert!(taken(&ycc, &mut out));
    }

    #[test]
    fn corrupt_scans_are_refused_and_leave_no_state_behind() {
        let (height, width) = (40, 48);
        let rgb = image(height, width, 8, 9);
        let jpeg = encode(&rgb, height, width, Some(SamplingFactor::F_2_2), 2);
        let good = fast(&jpeg, height, width, false);
        let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let data = sos + 2 + usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
        let end = jpeg.len() - 2;
        let rst = data
            + jpeg[data..]
                .windows(2)
                .position(|w| w == [0xFF, 0xD0])
                .unwrap();
        let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
        for cut in (data + 1..end).step_by(7) {
            let truncated = [&jpeg[..cut], &[0xFF, 0xD9][..]].concat();
            cases.push(("truncated", truncated, ""));
        }
        let mut reordered = jpeg.clone();
        reordered[rst + 1] = 0xD5;
        cases.push(("restart order", reordered, "restart marker RST0"));
        let extra = [&jpeg[..end], &[0x12, 0x34][..], &jpeg[end..]].concat();
        cases.push(("left over", extra, "left over"));
        let mut flipped_bits = jpeg.clone();
        for b in &mut flipped_bits[data + 10..data + 30] {
            *b = if *b == 0xFE { 0x01 } else { !*b & 0xFE };
        }
        cases.push(("garbage", flipped_bits, ""));
        for (what, damaged, message) in cases {
            let mut out = vec![0u8; good.len()];
            match decode_rgb_into(&damaged, &mut out, height, width, false) {
                Err(e) => {
                    assert!(e.starts_with("corrupt JPEG: "), "{what}: {e}");
                    assert!(e.contains(message), "{what}: {e}");
                }
                // JPEG has no checksum: garbage can resynchronise, but a truncation cannot.
                Ok(()) => assert_eq!(what, "garbage", "{what} passed"),
            }
            // The next image decodes exactly as before: no coefficients left in the scratch.
            assert_eq!(fast(&jpeg, height, width, false), good, "after {what}");
        }
    }
}

#[cfg(test)]
mod timing {
    /// CPU seconds of this thread (wall time is meaningless on a shared machine).
    fn cpu_seconds() -> f64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given and nothing else.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
    }

    /// `F2C_JPEG_DIR=... cargo test --release --lib -- --ignored --nocapture decode_speed`:
    /// CPU µs per image of the strict check alone, the fused decode, and the general decoder
    /// (check + zune-jpeg), over a folder of same-size JPEGs, alternating rounds.
    #[test]
    #[ignore]
    fn decode_speed() {
        let dir = std::env::var("F2C_JPEG_DIR").expect("set F2C_JPEG_DIR");
        let files: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        let (h, w) = super::scan::check(&files[0], 8192).unwrap();
        let mut out = vec![0u8; h * w * 3];
        let mut per_image = |f: &mut dyn FnMut(&[u8], &mut [u8])| {
            let start = cpu_seconds();
            for data in &files {
                f(data, &mut out);
            }
            (cpu_seconds() - start) * 1e6 / files.len() as f64
        };
        // F2C_DECODE_MODE=check|fused|general times one of them alone (for `perf stat`).
        let mode = std::env::var("F2C_DECODE_MODE").unwrap_or_default();
        let mut sums = [0.0; 3];
        for _ in 0..5 {
            if mode.is_empty() || mode == "check" {
                sums[0] += per_image(&mut |d, _| {
                    super::scan::check(d, 8192).unwrap();
                });
            }
            if mode.is_empty() || mode == "fused" {
                sums[1] += per_image(&mut |d, o| {
                    super::super::decode_rgb_into(d, o, h, w, false).unwrap();
                });
            }
            if mode.is_empty() || mode == "general" {
                sums[2] += per_image(&mut |d, o| {
                    super::scan::check(d, 8192).unwrap();
                    super::super::decode_general(d, o, h, w, false).unwrap();
                });
            }
        }
        let [check, fused, general] = sums.map(|s| s / 5.0);
        println!("{h}x{w}: check {check:.1} us, fused decode {fused:.1} us, check + zune {general:.1} us");
    }
}
