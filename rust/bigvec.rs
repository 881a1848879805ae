//! Large output vectors backed by transparent huge pages where the kernel allows it.
//!
//! Multi-hundred-megabyte outputs (17M-row index arrays) otherwise pay one page fault per 4 KiB
//! on first touch, which costs more than the parsing itself; numpy does the same for its own
//! large allocations.
//!
//! Where the size comes from input that does not justify it by itself, use the fallible forms
//! ([`try_with_capacity`], [`try_filled`]): a refused allocation is an
//! [`crate::error::F2cError::OutOfMemory`] naming what asked for it, never an abort.

use crate::error;

/// Allocations from this size up are advised to use huge pages.
const HUGE_FROM: usize = 4 << 20;

/// An empty vector with room for `capacity` elements, its pages advised as huge (aborts if
/// the allocation fails: only for sizes the data already in memory justifies).
pub fn with_capacity<T>(capacity: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(capacity);
    advise_huge(
        v.as_ptr().cast::<u8>(),
        v.capacity() * std::mem::size_of::<T>(),
    );
    v
}

/// [`with_capacity`], or an error naming `what` when the allocation is refused.
pub fn try_with_capacity<T>(
    capacity: usize,
    what: impl FnOnce() -> String,
) -> error::Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    error::try_reserve(&mut v, capacity, what)?;
    advise_huge(
        v.as_ptr().cast::<u8>(),
        v.capacity() * std::mem::size_of::<T>(),
    );
    Ok(v)
}

/// `len` copies of `value`, written after the huge-page advice; an error naming `what` when
/// the allocation is refused.
pub fn try_filled<T: Clone>(
    len: usize,
    value: T,
    what: impl FnOnce() -> String,
) -> error::Result<Vec<T>> {
    let mut v = try_with_capacity(len, what)?;
    v.resize(len, value);
    Ok(v)
}

#[cfg(target_os = "linux")]
fn advise_huge(ptr: *const u8, bytes: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    if bytes < HUGE_FROM {
        return;
    }
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize + bytes) & !(HUGE_PAGE - 1);
    if end > start {
        // SAFETY: the range lies inside this vector's own allocation and MADV_HUGEPAGE only
        // changes how the kernel backs it, never its contents or validity. Failure (no THP
        // support) is harmless, so the result is ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_ptr: *const u8, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use crate::error::F2cError;

    fn what() -> String {
        "test".into()
    }

    #[test]
    fn vectors_have_the_asked_size() {
        let v: Vec<u64> = super::try_with_capacity(1 << 20, what).unwrap();
        assert!(v.is_empty() && v.capacity() >= 1 << 20);
        let u: Vec<u32> = super::with_capacity(5);
        assert!(u.capacity() >= 5);
        let w = super::try_filled(3 << 20, 7u8, what).unwrap();
        assert_eq!(w.len(), 3 << 20);
        assert!(w.iter().all(|&b| b == 7));
    }

    #[test]
    fn impossible_sizes_are_errors_not_aborts() {
        let err = super::try_with_capacity::<u64>(usize::MAX / 4, what).unwrap_err();
        assert!(matches!(err, F2cError::OutOfMemory { .. }), "{err}");
        assert!(err.to_string().starts_with("test: cannot allocate"));
    }
}
