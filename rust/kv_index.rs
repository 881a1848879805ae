//! The kv index of a training db: `key label` lines, one per image, parsed from memory-mapped
//! files in one pass, with labels of later files offset past the earlier ones and the rows of
//! every identity laid out as CSR.
//!
//! Parsing is one `memchr` pass over the mapping; labels are parsed by hand; keys are copied into
//! one byte buffer with an offset table (no allocation per key); the CSR is a counting sort.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::MmapOptions;

use crate::bigvec;
use crate::error::{F2cError, Result};

/// Labels must stay below this: the CSR holds one offset per class up to the largest label.
pub const MAX_LABEL: i64 = (1 << 31) - 1;

/// End offsets of the keys in the key buffer: 32-bit while the buffer is below 4 GiB.
#[derive(Debug)]
enum KeyEnds {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl KeyEnds {
    fn with_capacity(rows: usize, total_bytes: u64) -> Self {
        if total_bytes < u64::from(u32::MAX) {
            KeyEnds::Narrow(bigvec::with_capacity(rows))
        } else {
            KeyEnds::Wide(bigvec::with_capacity(rows))
        }
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
    Ok((space, label))
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
    Some((i - 1, value))
}

/// Parses one kv file's bytes, appending its keys to `key_bytes`/`key_ends` and its labels,
/// plus `label_offset`, to `labels`. Returns the file's largest label (before the offset).
fn parse_kv_bytes(
    path: &Path,
    data: &[u8],
    label_offset: i64,
    key_bytes: &mut Vec<u8>,
    key_ends: &mut KeyEnds,
    labels: &mut Vec<i64>,
    counts: &mut Vec<i64>,
) -> Result<i64> {
    let first_row = labels.len();
    let mut max_label = -1;
    let mut start = 0;
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
        max_label = max_label.max(label);
        key_bytes.extend_from_slice(&line[..key_len]);
        key_ends.push(key_bytes.len());
        let label = label + label_offset;
        labels.push(label);
        // Rows per class, counted here to save the CSR a pass over the labels.
        let class = label as usize;
        if class >= counts.len() {
            counts.resize(class + 1, 0);
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
    Ok(max_label)
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
        // Keys are shorter than their lines, so the files' size bounds the key buffer; pages
        // never touched cost nothing and the excess is returned by shrink_to_fit.
        let mut key_bytes: Vec<u8> = bigvec::with_capacity(total_bytes);
        // A line takes at least 4 bytes ("k 0\n"), which bounds the row count: the outputs are
        // allocated once (pages never touched cost nothing) and trimmed at the end.
        let max_rows = total_bytes / 4 + paths.len();
        let mut key_ends = KeyEnds::with_capacity(max_rows, total_bytes as u64);
        let mut labels: Vec<i64> = bigvec::with_capacity(max_rows);
        let mut counts: Vec<i64> = Vec::new();
        let mut file_starts = vec![0usize];
        let mut label_offsets = Vec::with_capacity(paths.len());
        let mut next_offset: i64 = 0;
        for (path, map) in paths.iter().zip(&maps) {
            let path = path.as_ref();
            let data: &[u8] = map.as_deref().unwrap_or(&[]);
            let max_label = parse_kv_bytes(
                path,
                data,
                next_offset,
                &mut key_bytes,
                &mut key_ends,
                &mut labels,
                &mut counts,
            )?;
            if next_offset + max_label > MAX_LABEL {
                return Err(F2cError::InvalidInput(format!(
                    "{}: labels offset by {next_offset} exceed 2^31 - 1",
                    path.display()
                )));
            }
            label_offsets.push(next_offset);
            next_offset += max_label + 1;
            file_starts.push(labels.len());
        }
        drop(maps);
        key_bytes.shrink_to_fit();
        key_ends.shrink_to_fit();
        labels.shrink_to_fit();
        let num_classes = next_offset as usize;
        let (identity_offsets, identity_rows) = build_csr(&labels, counts, num_classes);
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
) -> (Vec<i64>, Vec<i64>) {
    counts.resize(num_classes, 0);
    let mut offsets = bigvec::with_capacity(num_classes + 1);
    offsets.push(0i64);
    let mut total = 0;
    for &n in &counts {
        total += n;
        offsets.push(total);
    }
    let rows = if labels.windows(2).all(|w| w[0] <= w[1]) {
        // Sorted labels (the usual layout): the rows are already grouped.
        let mut rows = bigvec::with_capacity(labels.len());
        rows.extend(0..labels.len() as i64);
        rows
    } else {
        let mut cursor = counts; // reused as the next free slot of each class
        cursor.copy_from_slice(&offsets[..num_classes]);
        let mut rows = bigvec::filled(labels.len(), 0i64);
        for (row, &l) in labels.iter().enumerate() {
            let slot = &mut cursor[l as usize];
            rows[*slot as usize] = row as i64;
            *slot += 1;
        }
        rows
    };
    (offsets, rows)
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
