//! The kv index of a training db: `key label` lines, one per image, parsed from memory-mapped
//! files in one pass, with labels of later files offset past the earlier ones and the rows of
//! every identity laid out as CSR.
//!
//! Parsing is one `memchr` pass over the mapping; labels are parsed by hand; keys are copied into
//! one byte buffer with an offset table (no allocation per key); the CSR is a counting sort.
//!
//! Input is not trusted: a key may appear once per file (a repeated key would make its image
//! count twice), a line has exactly two columns, and the class count (largest label + 1, which
//! sizes the CSR) must be justified by the number of lines (see [`class_limit`]). Every
//! allocation whose size comes from the files is fallible.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::MmapOptions;

use crate::bigvec;
use crate::error::{self, F2cError, Result};

/// Labels must stay below this: the CSR holds one offset per class up to the largest label.
pub const MAX_LABEL: i64 = (1 << 31) - 1;

/// Classes allowed per line of the kv files, on top of [`FREE_CLASSES`].
const CLASSES_PER_LINE: usize = 16;
/// Classes allowed whatever the line count: a few lines sampled from a db of up to 4M
/// identities still index (the CSR then costs at most 64 MiB).
const FREE_CLASSES: usize = 1 << 22;

/// The most classes (largest label + 1) that `lines` lines justify. The CSR holds 16 bytes per
/// class, so a label far beyond the line count (`a 2147483646` alone in a file) would allocate
/// gigabytes for nothing; such files are refused instead.
pub fn class_limit(lines: usize) -> usize {
    lines
        .saturating_mul(CLASSES_PER_LINE)
        .saturating_add(FREE_CLASSES)
}

/// End offsets of the keys in the key buffer: 32-bit while the buffer is below 4 GiB.
#[derive(Debug)]
enum KeyEnds {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl KeyEnds {
    fn with_capacity(rows: usize, total_bytes: u64) -> Result<Self> {
        let what = || format!("key offsets for up to {rows} kv lines");
        Ok(if total_bytes < u64::from(u32::MAX) {
            KeyEnds::Narrow(bigvec::try_with_capacity(rows, what)?)
        } else {
            KeyEnds::Wide(bigvec::try_with_capacity(rows, what)?)
        })
    }

    fn shrink_to_fit(&mut self) {
        match self {
            KeyEnds::Narrow(v) => v.shrink_to_fit(),
            KeyEnds::Wide(v) => v.shrink_to_fit(),
        }
    }

    #[inline]
    fn push(&mut self, end: usize) {
        match self {
            // Narrow is only chosen when every end fits.
            KeyEnds::Narrow(v) => v.push(end as u32),
            KeyEnds::Wide(v) => v.push(end as u64),
        }
    }

    fn len(&self) -> usize {
        match self {
            KeyEnds::Narrow(v) => v.len(),
            KeyEnds::Wide(v) => v.len(),
        }
    }

    /// (start, end) of key `row`.
    fn range(&self, row: usize) -> (usize, usize) {
        match self {
            KeyEnds::Narrow(v) => (
                if row == 0 { 0 } else { v[row - 1] as usize },
                v[row] as usize,
            ),
            KeyEnds::Wide(v) => (
                if row == 0 { 0 } else { v[row - 1] as usize },
                v[row] as usize,
            ),
        }
    }
}

#[derive(Debug)]
pub struct KvIndex {
    paths: Vec<PathBuf>,
    /// All keys back to back; key `r` ends at `key_ends[r]` and starts where key `r - 1` ends.
    key_bytes: Vec<u8>,
    key_ends: KeyEnds,
    labels: Vec<i64>,
    /// First row of each file, plus the total: file `f` holds rows `file_starts[f]..file_starts[f+1]`.
    file_starts: Vec<usize>,
    /// Label offset added to every label of file `f`.
    label_offsets: Vec<i64>,
    num_classes: usize,
    identity_offsets: Vec<i64>,
    identity_rows: Vec<i64>,
}

fn io_error(path: &Path, err: impl std::fmt::Display) -> F2cError {
    F2cError::Io {
        path: path.display().to_string(),
        message: err.to_string(),
    }
}

fn parse_error(path: &Path, line: usize, message: impl Into<String>) -> F2cError {
    F2cError::Parse {
        path: path.display().to_string(),
        line,
        message: message.into(),
    }
}

/// Parses a non-negative decimal label; `Err` holds the message for the caller's parse error.
fn parse_label(text: &[u8]) -> std::result::Result<i64, String> {
    if text.is_empty() {
        return Err("missing label (expected `key label`)".into());
    }
    if text[0] == b'-' && text.len() > 1 && text[1..].iter().all(u8::is_ascii_digit) {
        return Err(format!("negative label {}", String::from_utf8_lossy(text)));
    }
    let mut value: i64 = 0;
    for &b in text {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return Err(format!(
                "label {:?} is not a non-negative integer",
                String::from_utf8_lossy(text)
            ));
        }
        value = value * 10 + i64::from(digit);
        if value > MAX_LABEL {
            return Err(format!(
                "label {} is too large (labels must be below 2^31)",
                String::from_utf8_lossy(text)
            ));
        }
    }
    Ok(value)
}

/// The careful parse of one line (without its newline): (key length, label) or the message.
#[cold]
fn parse_line_slow(line: &[u8]) -> std::result::Result<(usize, i64), String> {
    if line.is_empty() {
        return Err("empty line (expected `key label`)".into());
    }
    // The label follows the last space, so keys may themselves contain spaces.
    let Some(space) = memchr::memrchr(b' ', line) else {
        return Err("missing label (expected `key label`)".into());
    };
    let label = parse_label(&line[space + 1..])?;
    if space == 0 {
        return Err("empty key".into());
    }
    let key = &line[..space];
    if key.ends_with(b" ") {
        return Err("two spaces before the label (the format is `key label`, one space)".into());
    }
    if ends_in_a_number(key) {
        return Err(format!(
            "three columns in {:?}: the format is `key label` (a key may hold spaces, but its \
             last word must not be a number)",
            String::from_utf8_lossy(line)
        ));
    }
    Ok((space, label))
}

/// Number of ASCII digits at the end of `s`, eight bytes at a time (all-digit keys such as
/// insightface's `000123456` are the common case and would otherwise cost a loop per byte).
#[inline]
fn trailing_digits(s: &[u8]) -> usize {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut end = s.len();
    while end >= 8 {
        let word = u64::from_le_bytes(s[end - 8..end].try_into().expect("8 bytes"));
        // Digits become 0..=9; the high bit of each byte is then set exactly for non-digits.
        let x = word ^ 0x3030_3030_3030_3030;
        let non_digit = (((x & LOW7) + 0x7676_7676_7676_7676) | x) & HIGH;
        if non_digit != 0 {
            // The slice's last byte is the word's top byte.
            return s.len() - end + (non_digit.leading_zeros() / 8) as usize;
        }
        end -= 8;
    }
    while end > 0 && s[end - 1].is_ascii_digit() {
        end -= 1;
    }
    s.len() - end
}

/// Byte order of two keys, compared eight bytes at a time inline (a libc `memcmp` call per
/// line costs more than the rest of the parse of a short key).
#[inline]
fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_be_bytes(a[i..i + 8].try_into().expect("8 bytes"));
        let y = u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if x != y {
            return x.cmp(&y);
        }
        i += 8;
    }
    while i < n {
        if a[i] != b[i] {
            return a[i].cmp(&b[i]);
        }
        i += 1;
    }
    a.len().cmp(&b.len())
}

/// Whether `key` ends in a space and an integer: the line then reads as `key label extra`
/// (`a 0 7`), which is refused rather than read as key `a 0`, label 7.
#[inline(always)]
fn ends_in_a_number(key: &[u8]) -> bool {
    let mut i = key.len() - trailing_digits(key);
    if i == key.len() {
        return false;
    }
    if i > 0 && (key[i - 1] == b'-' || key[i - 1] == b'+') {
        i -= 1;
    }
    i > 0 && key[i - 1] == b' '
}

/// The common case of one line, parsed backwards from its end: up to 10 digits, a space and a
/// non-empty key. `None` sends the line to [`parse_line_slow`].
#[inline]
fn parse_line_fast(line: &[u8]) -> Option<(usize, i64)> {
    let mut i = line.len();
    let mut value: i64 = 0;
    let mut scale: i64 = 1;
    while i > 0 {
        let digit = line[i - 1].wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value += i64::from(digit) * scale;
        scale *= 10;
        i -= 1;
        if line.len() - i > 10 {
            return None;
        }
    }
    // i: start of the digits; the byte before must be the separating space, after a key.
    if i < 2 || i == line.len() || line[i - 1] != b' ' || value > MAX_LABEL {
        return None;
    }
    // A key ending in a space or a number goes to the slow path, which refuses it. The last
    // byte of the key decides the common case (`img/123.jpg`, `000123`) in one comparison.
    let last = line[i - 2];
    if last == b' ' || (last.is_ascii_digit() && ends_in_a_number(&line[..i - 1])) {
        return None;
    }
    Some((i - 1, value))
}

/// Where parsed lines go: the shared outputs of every file.
struct Outputs<'a> {
    key_bytes: &'a mut Vec<u8>,
    key_ends: &'a mut KeyEnds,
    labels: &'a mut Vec<i64>,
    /// Rows per class, counted here to save the CSR a pass over the labels.
    counts: &'a mut Vec<i64>,
    /// Classes the files may reach (see [`class_limit`]).
    max_classes: usize,
}

/// Parses one kv file's bytes, appending its keys and its labels plus `label_offset` to `out`.
/// Returns the file's largest label (before the offset).
fn parse_kv_bytes(
    path: &Path,
    data: &[u8],
    label_offset: i64,
    out: &mut Outputs<'_>,
) -> Result<i64> {
    let first_row = out.labels.len();
    // The outputs as plain locals: the loop below then keeps their pointers in registers.
    let Outputs {
        key_bytes,
        key_ends,
        labels,
        counts,
        max_classes,
    } = out;
    let max_classes = *max_classes;
    let mut max_label = -1;
    let mut start = 0;
    // Keys in strictly increasing byte order (how packs and insightface lists are written)
    // cannot repeat, so only files out of order pay for the duplicate check.
    let mut increasing = true;
    let mut previous: &[u8] = &[];
    let last_line_open = data.last().is_some_and(|&b| b != b'\n');
    let ends = memchr::memchr_iter(b'\n', data).chain(last_line_open.then_some(data.len()));
    for (index, end) in ends.enumerate() {
        let line_no = index + 1;
        let mut line = &data[start..end];
        start = end + 1;
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        let (key_len, label) = match parse_line_fast(line) {
            Some(parsed) => parsed,
            None => parse_line_slow(line).map_err(|msg| parse_error(path, line_no, msg))?,
        };
        let key = &line[..key_len];
        if increasing && index > 0 {
            match key_order(key, previous) {
                std::cmp::Ordering::Greater => {}
                std::cmp::Ordering::Equal => {
                    let first = labels[labels.len() - 1] - label_offset;
                    return Err(duplicate_error(
                        path,
                        key,
                        (line_no - 1, first),
                        (line_no, label),
                    ));
                }
                std::cmp::Ordering::Less => increasing = false,
            }
        }
        previous = key;
        max_label = max_label.max(label);
        key_bytes.extend_from_slice(key);
        key_ends.push(key_bytes.len());
        let label = label + label_offset;
        labels.push(label);
        let class = label as usize;
        if class >= counts.len() {
            grow_counts(counts, max_classes, class, path, line_no)?;
        }
        counts[class] += 1;
    }
    if labels.len() == first_row {
        return Err(parse_error(
            path,
            1,
            "the kv file holds no `key label` lines",
        ));
    }
    if !increasing {
        check_unique_keys(path, out, first_row, label_offset)?;
    }
    Ok(max_label)
}

/// Makes room in the class counts for `class`, if the line count justifies it.
#[cold]
fn grow_counts(
    counts: &mut Vec<i64>,
    max_classes: usize,
    class: usize,
    path: &Path,
    line_no: usize,
) -> Result<()> {
    if class >= max_classes {
        return Err(parse_error(
            path,
            line_no,
            format!(
                "label {class} (after the offsets of earlier files) would make {} classes, more \
                 than the kv files' size justifies ({}); labels must be dense ids 0..C-1",
                class + 1,
                max_classes
            ),
        ));
    }
    let additional = class + 1 - counts.len();
    error::try_reserve(counts, additional, || {
        format!("{}: row counts of {} classes", path.display(), class + 1)
    })?;
    counts.resize(class + 1, 0);
    Ok(())
}

fn duplicate_error(path: &Path, key: &[u8], first: (usize, i64), second: (usize, i64)) -> F2cError {
    parse_error(
        path,
        second.0,
        format!(
            "key {:?} (label {}) repeats line {} (label {}); each key must appear once per kv file",
            String::from_utf8_lossy(key),
            second.1,
            first.0,
            first.1
        ),
    )
}

/// A 64-bit hash of a key, seeded per process so that crafted keys cannot aim at one bucket.
#[inline]
fn key_hash(key: &[u8], seed: u64) -> u64 {
    const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = seed ^ (key.len() as u64).wrapping_mul(MUL);
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        h = (h ^ w).wrapping_mul(MUL).rotate_left(31);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(buf))
            .wrapping_mul(MUL)
            .rotate_left(31);
    }
    // Final avalanche (the murmur3 finaliser constants): every input bit reaches the top bits,
    // which pick the bucket.
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

fn process_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Refuses a repeated key among rows `first_row..` (one file, not in increasing order): an
/// open-addressing table of `fingerprint << 32 | row + 1` at most half full, filled in blocks
/// whose buckets are prefetched together (the table is far larger than the cache).
#[cold]
fn check_unique_keys(
    path: &Path,
    out: &Outputs<'_>,
    first_row: usize,
    label_offset: i64,
) -> Result<()> {
    const BLOCK: usize = 16;
    let rows = out.labels.len() - first_row;
    if rows >= u32::MAX as usize {
        return Err(F2cError::InvalidInput(format!(
            "{}: {rows} lines out of key order; the duplicate-key check handles up to 2^32 - 2 \
             (sort the file by key)",
            path.display()
        )));
    }
    let bits = (2 * rows).next_power_of_two().trailing_zeros().max(4);
    let mut table: Vec<u64> = bigvec::try_filled(1usize << bits, 0u64, || {
        format!("{}: duplicate-key table for {rows} lines", path.display())
    })?;
    let mask = (1usize << bits) - 1;
    let seed = process_seed();
    let key = |row: usize| -> &[u8] {
        let (a, b) = out.key_ends.range(first_row + row);
        &out.key_bytes[a..b]
    };
    let mut hashes = [0u64; BLOCK];
    for block_start in (0..rows).step_by(BLOCK) {
        let block = BLOCK.min(rows - block_start);
        for (i, h) in hashes[..block].iter_mut().enumerate() {
            *h = key_hash(key(block_start + i), seed);
            crate::pool_index::prefetch(&table[(*h >> (64 - bits)) as usize]);
        }
        for (i, &h) in hashes[..block].iter().enumerate() {
            let row = block_start + i;
            // The low half of the hash tells keys apart; its top bits chose the bucket.
            let fingerprint = h << 32;
            let mut bucket = (h >> (64 - bits)) as usize;
            loop {
                let entry = table[bucket];
                if entry == 0 {
                    table[bucket] = fingerprint | (row as u64 + 1);
                    break;
                }
                if entry & 0xFFFF_FFFF_0000_0000 == fingerprint {
                    let other = (entry & 0xFFFF_FFFF) as usize - 1;
                    if key(other) == key(row) {
                        let label = |r: usize| out.labels[first_row + r] - label_offset;
                        return Err(duplicate_error(
                            path,
                            key(row),
                            (other + 1, label(other)),
                            (row + 1, label(row)),
                        ));
                    }
                }
                bucket = (bucket + 1) & mask;
            }
        }
    }
    Ok(())
}

fn map_file(path: &Path) -> Result<Option<memmap2::Mmap>> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if len == 0 {
        return Ok(None); // mmap of an empty file fails; the parser reports it as empty
    }
    // SAFETY: the mapping is read-only and lives only for the duration of the parse, which
    // copies everything it keeps. A file truncated by another process during that window could
    // fault (SIGBUS); the kv files of a training db are not written while being indexed.
    let map = unsafe { MmapOptions::new().populate().map(&file) }.map_err(|e| io_error(path, e))?;
    Ok(Some(map))
}

impl KvIndex {
    /// Loads and indexes the kv files, in order; labels of file `f` are offset by
    /// `max label + 1` summed over the files before it.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        if paths.is_empty() {
            return Err(F2cError::InvalidInput(
                "KvIndex needs at least one kv file".into(),
            ));
        }
        let maps = paths
            .iter()
            .map(|p| map_file(p.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let total_bytes: usize = maps.iter().flatten().map(|m| m.len()).sum();
        let files = || {
            paths
                .iter()
                .map(|p| p.as_ref().display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Keys are shorter than their lines, so the files' size bounds the key buffer; pages
        // never touched cost nothing and the excess is returned by shrink_to_fit.
        let mut key_bytes: Vec<u8> =
            bigvec::try_with_capacity(total_bytes, || format!("keys of the kv files {}", files()))?;
        // A line takes at least 4 bytes ("k 0\n"), which bounds the row count: the outputs are
        // allocated once (pages never touched cost nothing) and trimmed at the end.
        let max_rows = total_bytes / 4 + paths.len();
        let mut key_ends = KeyEnds::with_capacity(max_rows, total_bytes as u64)?;
        let mut labels: Vec<i64> = bigvec::try_with_capacity(max_rows, || {
            format!("labels of up to {max_rows} lines of {}", files())
        })?;
        let mut counts: Vec<i64> = Vec::new();
        let mut out = Outputs {
            key_bytes: &mut key_bytes,
            key_ends: &mut key_ends,
            labels: &mut labels,
            counts: &mut counts,
            max_classes: class_limit(max_rows),
        };
        let mut file_starts = vec![0usize];
        let mut label_offsets = Vec::with_capacity(paths.len());
        let mut next_offset: i64 = 0;
        for (path, map) in paths.iter().zip(&maps) {
            let path = path.as_ref();
            let data: &[u8] = map.as_deref().unwrap_or(&[]);
            let max_label = parse_kv_bytes(path, data, next_offset, &mut out)?;
            if next_offset + max_label > MAX_LABEL {
                return Err(F2cError::InvalidInput(format!(
                    "{}: labels offset by {next_offset} exceed 2^31 - 1",
                    path.display()
                )));
            }
            label_offsets.push(next_offset);
            next_offset += max_label + 1;
            file_starts.push(out.labels.len());
        }
        drop(maps);
        let num_classes = next_offset as usize;
        // The bound used while parsing allowed for the largest line count the files' size
        // permits; hold the classes to the lines actually found.
        if num_classes > class_limit(labels.len()) {
            return Err(F2cError::InvalidInput(format!(
                "{}: the largest label makes {num_classes} classes for {} lines (at most {} \
                 allowed: 16 per line + 2^22); labels must be dense ids 0..C-1",
                files(),
                labels.len(),
                class_limit(labels.len())
            )));
        }
        key_bytes.shrink_to_fit();
        key_ends.shrink_to_fit();
        labels.shrink_to_fit();
        let (identity_offsets, identity_rows) = build_csr(&labels, counts, num_classes)?;
        Ok(Self {
            paths: paths.iter().map(|p| p.as_ref().to_path_buf()).collect(),
            key_bytes,
            key_ends,
            labels,
            file_starts,
            label_offsets,
            num_classes,
            identity_offsets,
            identity_rows,
        })
    }

    /// Number of rows (stays valid after [`Self::take_arrays`]).
    pub fn len(&self) -> usize {
        self.key_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    pub fn label_offsets(&self) -> &[i64] {
        &self.label_offsets
    }

    pub fn identity_offsets(&self) -> &[i64] {
        &self.identity_offsets
    }

    pub fn identity_rows(&self) -> &[i64] {
        &self.identity_rows
    }

    /// Checks `row` (a Python-side int) and returns it as an index.
    pub fn check_row(&self, row: i64) -> Result<usize> {
        if row < 0 || row as u64 >= self.len() as u64 {
            return Err(F2cError::IndexOutOfRange {
                index: row,
                len: self.len(),
            });
        }
        Ok(row as usize)
    }

    /// The key of a row already checked with [`Self::check_row`].
    pub fn key(&self, row: usize) -> &[u8] {
        let (a, b) = self.key_ends.range(row);
        &self.key_bytes[a..b]
    }

    /// Index of the kv file (and so of the lmdb) that holds `row`.
    pub fn file_of_row(&self, row: usize) -> usize {
        // file_starts is sorted; the file is the last start <= row.
        self.file_starts.partition_point(|&s| s <= row) - 1
    }

    /// Moves the label and CSR arrays out (for zero-copy hand-over to numpy); keys stay.
    pub fn take_arrays(&mut self) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        (
            std::mem::take(&mut self.labels),
            std::mem::take(&mut self.identity_offsets),
            std::mem::take(&mut self.identity_rows),
        )
    }
}

/// Counting sort of rows by label: rows of class `c` are
/// `rows[offsets[c]..offsets[c + 1]]`, in increasing row order.
pub(crate) fn build_csr(
    labels: &[i64],
    mut counts: Vec<i64>,
    num_classes: usize,
) -> Result<(Vec<i64>, Vec<i64>)> {
    counts.resize(num_classes, 0); // counts already covers the largest label
    let what = || format!("the per-identity index of {num_classes} classes");
    let mut offsets = bigvec::try_with_capacity(num_classes + 1, what)?;
    offsets.push(0i64);
    let mut total = 0;
    for &n in &counts {
        total += n;
        offsets.push(total);
    }
    let rows = if labels.windows(2).all(|w| w[0] <= w[1]) {
        // Sorted labels (the usual layout): the rows are already grouped.
        let mut rows = bigvec::try_with_capacity(labels.len(), what)?;
        rows.extend(0..labels.len() as i64);
        rows
    } else {
        let mut cursor = counts; // reused as the next free slot of each class
        cursor.copy_from_slice(&offsets[..num_classes]);
        let mut rows = bigvec::try_filled(labels.len(), 0i64, what)?;
        for (row, &l) in labels.iter().enumerate() {
            let slot = &mut cursor[l as usize];
            rows[*slot as usize] = row as i64;
            *slot += 1;
        }
        rows
    };
    Ok((offsets, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_temp(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("f2c-kv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(contents)
            .unwrap();
        path
    }

    #[test]
    fn parses_keys_labels_and_csr() {
        let p = write_temp("a.kv", b"img/0 2\nimg/1 0\nwith space 2\r\nimg/3 0");
        let idx = KvIndex::open(&[&p]).unwrap();
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.labels(), &[2, 0, 2, 0]);
        assert_eq!(idx.key(2), b"with space");
        assert_eq!(idx.key(3), b"img/3");
        assert_eq!(idx.num_classes(), 3);
        assert_eq!(idx.identity_offsets(), &[0, 2, 2, 4]);
        assert_eq!(idx.identity_rows(), &[1, 3, 0, 2]);
    }

    #[test]
    fn several_files_get_label_offsets() {
        let a = write_temp("m1.kv", b"a 0\nb 4\n");
        let b = write_temp("m2.kv", b"c 1\nd 0\n");
        let idx = KvIndex::open(&[&a, &b]).unwrap();
        assert_eq!(idx.labels(), &[0, 4, 6, 5]);
        assert_eq!(idx.label_offsets(), &[0, 5]);
        assert_eq!(idx.num_classes(), 7);
        assert_eq!(idx.file_of_row(1), 0);
        assert_eq!(idx.file_of_row(2), 1);
        assert_eq!(idx.file_of_row(3), 1);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases: [(&str, &[u8], usize, &str); 7] = [
            ("nolabel.kv", b"a 1\nb\n", 2, "missing label"),
            ("emptylabel.kv", b"a 1\nb \n", 2, "missing label"),
            ("neg.kv", b"a 1\nb 2\nc -3\n", 3, "negative label"),
            ("text.kv", b"a x1\n", 1, "not a non-negative integer"),
            ("emptykey.kv", b"a 1\n 2\n", 2, "empty key"),
            ("blank.kv", b"a 1\n\nb 2\n", 2, "empty line"),
            ("huge.kv", b"a 99999999999\n", 1, "too large"),
        ];
        for (name, body, line, needle) in cases {
            let p = write_temp(name, body);
            let err = KvIndex::open(&[&p]).unwrap_err().to_string();
            let want = format!("{}:{line}:", p.display());
            assert!(err.starts_with(&want), "{name}: {err}");
            assert!(err.contains(needle), "{name}: {err}");
        }
        let empty = write_temp("empty.kv", b"");
        assert!(KvIndex::open(&[&empty])
            .unwrap_err()
            .to_string()
            .contains("no `key label`"));
        let missing = KvIndex::open(&["/nonexistent/f2c.kv"]).unwrap_err();
        assert!(matches!(missing, F2cError::Io { .. }));
    }

    #[test]
    fn three_columns_and_double_spaces_are_refused() {
        let cases: [(&str, &[u8], usize, &str); 5] = [
            ("three.kv", b"a 0 7\n", 1, "three columns"),
            ("three-signed.kv", b"b 1\na -3 7\n", 2, "three columns"),
            (
                "three-late.kv",
                b"k 1\nk2 0\nx y 12 3\n",
                3,
                "three columns",
            ),
            ("double.kv", b"a  7\n", 1, "two spaces"),
            ("digits.kv", b"img 0001 4\n", 1, "three columns"),
        ];
        for (name, body, line, needle) in cases {
            let p = write_temp(name, body);
            let err = KvIndex::open(&[&p]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{}:{line}:", p.display())),
                "{name}: {err}"
            );
            assert!(err.contains(needle), "{name}: {err}");
        }
        // Spaces inside keys stay allowed when the last word is not a number.
        let p = write_temp("spaces.kv", b"John Smith/img 1.jpg 0\n0 1\nx-3 2\n");
        let idx = KvIndex::open(&[&p]).unwrap();
        assert_eq!(idx.key(0), b"John Smith/img 1.jpg");
        assert_eq!(idx.key(1), b"0");
        assert_eq!(idx.labels(), &[0, 1, 2]);
    }

    #[test]
    fn repeated_keys_name_both_lines() {
        // In key order (adjacent repeat) and out of order (found by the hash table).
        for (name, body, lines) in [
            ("dup-sorted.kv", &b"a 0\nb 0\nb 7\nc 1\n"[..], (2, 3)),
            ("dup-unsorted.kv", &b"z 0\nb 0\nq 1\nb 0\n"[..], (2, 4)),
        ] {
            let p = write_temp(name, body);
            let err = KvIndex::open(&[&p]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{}:{}:", p.display(), lines.1)),
                "{err}"
            );
            assert!(err.contains(&format!("repeats line {}", lines.0)), "{err}");
        }
        // Each file is its own key space (one lmdb per kv file).
        let a = write_temp("own-a.kv", b"k 0\nj 1\n");
        let b = write_temp("own-b.kv", b"k 0\n");
        assert_eq!(KvIndex::open(&[&a, &b]).unwrap().len(), 3);
        // Many unsorted distinct keys pass.
        let body: String = (0..5000)
            .rev()
            .map(|i| format!("key{i} {}\n", i % 7))
            .collect();
        let p = write_temp("many.kv", body.as_bytes());
        assert_eq!(KvIndex::open(&[&p]).unwrap().len(), 5000);
    }

    #[test]
    fn labels_beyond_what_the_lines_justify_are_refused() {
        let p = write_temp("max-label.kv", b"a 2147483646\n");
        let err = KvIndex::open(&[&p]).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:1:", p.display())), "{err}");
        assert!(err.contains("dense"), "{err}");
        // Sparse but justified: a few lines of a db with a million identities.
        let p = write_temp("sparse.kv", b"a 999999\nb 3\n");
        assert_eq!(KvIndex::open(&[&p]).unwrap().num_classes(), 1_000_000);
        // Long lines raise the size-based bound used while parsing, not the final one.
        let mut body = vec![b'k'; 200_000];
        body.extend_from_slice(b" 4500000\n");
        let p = write_temp("long-line.kv", &body);
        let err = KvIndex::open(&[&p]).unwrap_err().to_string();
        assert!(err.contains("4500001 classes for 1 lines"), "{err}");
    }

    #[test]
    fn word_at_a_time_helpers_match_the_plain_ones() {
        let samples: [&[u8]; 12] = [
            b"",
            b"7",
            b"a",
            b"000123456",
            b"img 12345678",
            b"x/123456789012345",
            b"1234567a",
            b"a12345678",
            b"\xff\xb9123",
            b"12345678",
            b"k 0",
            b"abc:9",
        ];
        for a in samples {
            let plain = a.iter().rev().take_while(|b| b.is_ascii_digit()).count();
            assert_eq!(trailing_digits(a), plain, "{a:?}");
            for b in samples {
                assert_eq!(key_order(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn row_checks() {
        let p = write_temp("rows.kv", b"a 0\n");
        let idx = KvIndex::open(&[&p]).unwrap();
        assert_eq!(idx.check_row(0).unwrap(), 0);
        assert!(matches!(
            idx.check_row(1),
            Err(F2cError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            idx.check_row(-1),
            Err(F2cError::IndexOutOfRange { .. })
        ));
    }
}
