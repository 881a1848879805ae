//! The decode path shared by every training-set reader (LMDB, RecordIO): a batch of rows is
//! split into chunks, each chunk decodes its JPEGs (mirrored where asked) straight into its
//! slice of one caller-provided RGB buffer, on this process's decode threads.
//!
//! A reader supplies only how to reach the JPEG bytes of a row ([`JpegFetch`]); decoding,
//! flipping, the size check and the threading live here once.

use rayon::prelude::*;

use crate::error::{F2cError, Result};
use crate::jpeg;
use crate::parallel;

/// Access to the JPEG bytes of rows, used by one chunk on one thread at a time.
pub trait JpegFetch {
    /// Calls `decode` with the JPEG bytes of `row`. An error of `decode` (a message) or of the
    /// lookup comes back as an error naming the record.
    fn with_jpeg(
        &mut self,
        row: usize,
        decode: &mut dyn FnMut(&[u8]) -> std::result::Result<(), String>,
    ) -> Result<()>;
}

/// Checks that `flips` and `out` fit `rows` images of `height` × `width`.
pub fn check_batch(
    rows: usize,
    flips: usize,
    out: usize,
    (height, width): (usize, usize),
) -> Result<()> {
    if flips != rows {
        return Err(F2cError::InvalidInput(format!(
            "flip has {flips} entries for {rows} rows"
        )));
    }
    if Some(out) != rows.checked_mul(height * width * 3) {
        return Err(F2cError::InvalidInput(
            "output buffer has the wrong size".into(),
        ));
    }
    Ok(())
}

/// Decodes `rows` into `out` (`rows.len()` RGB images of `size`, back to back), mirroring image
/// `i` when `flips[i]`, with up to `threads` threads. `fetcher` makes one [`JpegFetch`] per
/// chunk (a chunk runs on one thread, so a fetcher may hold per-thread state such as LMDB read
/// transactions).
pub fn decode_batch<F, M>(
    rows: &[usize],
    flips: &[bool],
    out: &mut [u8],
    size: (usize, usize),
    threads: usize,
    fetcher: M,
) -> Result<()>
where
    F: JpegFetch,
    M: Fn() -> Result<F> + Sync,
{
    check_batch(rows.len(), flips.len(), out.len(), size)?;
    if rows.is_empty() {
        return Ok(());
    }
    let (height, width) = size;
    let image_bytes = height * width * 3;
    let decode_chunk = |rows: &[usize], flips: &[bool], out: &mut [u8]| -> Result<()> {
        let mut fetch = fetcher()?;
        for ((&row, &flip), image) in rows
            .iter()
            .zip(flips)
            .zip(out.chunks_exact_mut(image_bytes))
        {
            fetch.with_jpeg(row, &mut |bytes| {
                jpeg::decode_rgb_into(bytes, image, height, width, flip)
            })?;
        }
        Ok(())
    };
    let threads = threads.clamp(1, rows.len());
    if threads == 1 {
        return decode_chunk(rows, flips, out);
    }
    // A few chunks per thread balance uneven decode times.
    let chunk = rows.len().div_ceil(threads * 4);
    parallel::pool(threads)?.install(|| {
        out.par_chunks_mut(chunk * image_bytes)
            .zip(rows.par_chunks(chunk))
            .zip(flips.par_chunks(chunk))
            .try_for_each(|((out, rows), flips)| decode_chunk(rows, flips, out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves every row the same bytes and counts the rows it was asked for.
    struct Fixed<'a> {
        bytes: &'a [u8],
        seen: &'a std::sync::atomic::AtomicUsize,
    }

    impl JpegFetch for Fixed<'_> {
        fn with_jpeg(
            &mut self,
            row: usize,
            decode: &mut dyn FnMut(&[u8]) -> std::result::Result<(), String>,
        ) -> Result<()> {
            self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            decode(self.bytes).map_err(|m| F2cError::InvalidInput(format!("row {row}: {m}")))
        }
    }

    #[test]
    fn sizes_are_checked_before_any_fetch() {
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            Ok(Fixed {
                bytes: b"",
                seen: &seen,
            })
        };
        let mut out = vec![0u8; 2 * 4 * 4 * 3];
        let err = decode_batch(&[0, 1], &[false], &mut out, (4, 4), 2, make).unwrap_err();
        assert!(err.to_string().contains("flip has 1 entries for 2 rows"));
        let err = decode_batch(&[0, 1], &[false; 2], &mut out, (4, 5), 2, make).unwrap_err();
        assert!(err.to_string().contains("wrong size"));
        decode_batch(&[], &[], &mut [], (4, 4), 2, make).unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn decode_errors_come_back_through_the_fetcher() {
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            Ok(Fixed {
                bytes: b"\xff\xd8garbage",
                seen: &seen,
            })
        };
        let mut out = vec![0u8; 3 * 2 * 2 * 3];
        let err = decode_batch(&[0, 1, 2], &[false; 3], &mut out, (2, 2), 1, make).unwrap_err();
        assert!(err.to_string().starts_with("row 0: "), "{err}");
    }
}
