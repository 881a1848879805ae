//! insightface / MXNet RecordIO training packs (`train.rec` + `train.idx`) read in place: the
//! `.rec` is memory-mapped, record offsets come from the `.idx` (or from one scan of the `.rec`
//! when there is none), and images are decoded on the shared batch path ([`crate::batch`]).
//!
//! Format (docs/design.md §3): a part is a little-endian `u32` magic `0xced7230a`, a `u32` whose
//! upper 3 bits are a continuation flag and lower 29 bits the length, the payload, padding to 4
//! bytes. A logical record is one part (flag 0) or parts flagged 1 (first), 2 (middle), 3 (last):
//! the writer cut the payload wherever the magic occurred at a 4-byte-aligned offset and dropped
//! it there, so the parts are joined with the magic put back between them. An image payload
//! starts with an `IRHeader` (`u32 flag, f32 label, u64 id, u64 id2`); with `flag > 0`, `flag`
//! more f32 labels follow and the class id is the first of them; the JPEG follows.
//!
//! insightface packs carry a header record 0 whose labels are `[first identity record, end)`;
//! records `1 .. first` are the images and each identity record's labels are its `[start, end)`
//! image-record range. When present, rows are those image records and class `i` is the `i`-th
//! identity record (each read then checks the image record's own label against it); otherwise
//! every record is a row and labels come from the records themselves. Either way labels must form
//! `0 .. C-1`: a class without images is an error naming it.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::{Advice, Mmap, MmapOptions};

use crate::batch::{self, JpegFetch};
use crate::bigvec;
use crate::error::{F2cError, Result};
use crate::jpeg;
use crate::kv_index::build_csr;

pub const MAGIC: u32 = 0xced7_230a;
const MAGIC_BYTES: [u8; 4] = MAGIC.to_le_bytes();
/// Magic + length word in front of every part.
const PART_HEADER: usize = 8;
const LENGTH_MASK: u32 = (1 << 29) - 1;
/// `u32 flag, f32 label, u64 id, u64 id2`.
pub const IR_HEADER: usize = 24;
/// Labels must stay below this (as in kv files).
const MAX_LABEL: i64 = (1 << 31) - 1;

const JPEG_SOI: [u8; 2] = [0xFF, 0xD8];
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// A logical record found at a byte offset: its payload (borrowed from the file when it is one
/// part, joined otherwise) and the offset just past it (where the next record starts).
#[derive(Debug)]
pub struct Record<'a> {
    pub payload: Cow<'a, [u8]>,
    pub end: usize,
}

/// Reads the logical record starting at `offset` of `data`. `Err` holds the message.
pub fn read_record(data: &[u8], offset: usize) -> std::result::Result<Record<'_>, String> {
    let mut pos = offset;
    let mut joined: Option<Vec<u8>> = None;
    loop {
        let head = pos
            .checked_add(PART_HEADER)
            .and_then(|end| data.get(pos..end))
            .ok_or_else(|| {
                format!(
                    "truncated file: a record header at byte {pos} runs past its end ({} bytes)",
                    data.len()
                )
            })?;
        let magic = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        if magic != MAGIC {
            return Err(format!(
                "bad magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x}): not a record \
                 boundary"
            ));
        }
        let word = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let (flag, len) = (word >> 29, (word & LENGTH_MASK) as usize);
        let start = pos + PART_HEADER;
        let part = data.get(start..start + len).ok_or_else(|| {
            format!(
                "truncated file: a {len}-byte record part at byte {pos} runs past its end ({} \
                 bytes)",
                data.len()
            )
        })?;
        // Padding to 4 bytes; a file cut inside the last record's padding loses nothing.
        let next = (start + len.next_multiple_of(4)).min(data.len());
        match (joined.as_mut(), flag) {
            (None, 0) => {
                return Ok(Record {
                    payload: Cow::Borrowed(part),
                    end: next,
                })
            }
            (None, 1) => joined = Some(part.to_vec()),
            (Some(buf), 2 | 3) => {
                buf.extend_from_slice(&MAGIC_BYTES);
                buf.extend_from_slice(part);
                if flag == 3 {
                    return Ok(Record {
                        payload: Cow::Owned(joined.expect("set")),
                        end: next,
                    });
                }
            }
            (None, _) => {
                return Err(format!(
                    "a record starts with a part flagged {flag} at byte {pos} (expected 0 or 1)"
                ))
            }
            (Some(_), _) => {
                return Err(format!(
                    "a multi-part record is cut by a part flagged {flag} at byte {pos} (expected \
                     2 or 3)"
                ))
            }
        }
        pos = next;
    }
}

/// The `IRHeader` of a payload, its extra labels and the image bytes after them.
#[derive(Debug)]
pub struct IrPayload<'a> {
    pub flag: u32,
    pub label: f32,
    pub id: u64,
    pub id2: u64,
    extra: &'a [u8],
    pub image: &'a [u8],
}

impl<'a> IrPayload<'a> {
    pub fn parse(payload: &'a [u8]) -> std::result::Result<Self, String> {
        if payload.len() < IR_HEADER {
            return Err(format!(
                "payload of {} bytes is shorter than an IRHeader ({IR_HEADER} bytes)",
                payload.len()
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8"));
        let flag = u32_at(0);
        let extra_end = (flag as usize)
            .checked_mul(4)
            .and_then(|n| n.checked_add(IR_HEADER))
            .filter(|&end| end <= payload.len())
            .ok_or_else(|| {
                format!(
                    "IRHeader flag {flag} announces {flag} labels but the payload holds {} bytes",
                    payload.len()
                )
            })?;
        Ok(Self {
            flag,
            label: f32::from_bits(u32_at(4)),
            id: u64_at(8),
            id2: u64_at(16),
            extra: &payload[IR_HEADER..extra_end],
            image: &payload[extra_end..],
        })
    }

    /// The labels after the header (`flag` of them).
    pub fn labels(&self) -> impl Iterator<Item = f32> + '_ {
        self.extra
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
    }

    /// The class label: the first extra label when there are any, else the header's label.
    pub fn class_label(&self) -> f32 {
        self.labels().next().unwrap_or(self.label)
    }
}

/// A label stored as f32 as a non-negative integer below 2^31.
fn as_index(value: f32, what: &str) -> std::result::Result<i64, String> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && (value as i64) <= MAX_LABEL {
        Ok(value as i64)
    } else {
        Err(format!(
            "{what} {value} is not a non-negative integer below 2^31"
        ))
    }
}

/// How far a record index stored as f32 may be from the index it was written from: integers
/// above 2^24 are not all representable, and the writer rounded to the nearest f32 (Glint360K's
/// 17M records reach that range). 0 below 2^24; else the f32 spacing there (a safe bound).
fn f32_slack(value: u64) -> u64 {
    if value < 1 << 24 {
        0
    } else {
        1 << (63 - value.leading_zeros() - 23)
    }
}

/// The one boundary `b` in `candidates` where `left(b)` holds and `right(b)` holds, for an
/// index stored as f32 (see [`f32_slack`]); `Ok(None)` when no candidate fits.
fn resolve_boundary(
    candidates: std::ops::RangeInclusive<u64>,
    mut fits: impl FnMut(u64) -> Result<bool>,
) -> Result<Option<u64>> {
    for b in candidates {
        if fits(b)? {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

fn window(stored: u64, slack: u64, low: u64, high: u64) -> std::ops::RangeInclusive<u64> {
    stored.saturating_sub(slack).max(low)..=stored.saturating_add(slack).min(high)
}

/// The image bytes of a payload as a JPEG, or why it is not one.
fn jpeg_image(image: &[u8]) -> std::result::Result<&[u8], String> {
    if image.starts_with(&JPEG_SOI) {
        Ok(image)
    } else if image.starts_with(&PNG_SIGNATURE) {
        Err("the image is a PNG; f2c reads JPEG records only (repack the images as JPEG)".into())
    } else if image.is_empty() {
        Err("the record holds no image (a header or identity record?)".into())
    } else {
        let head: Vec<String> = image.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(format!(
            "the image is not a JPEG (starts with {})",
            head.join(" ")
        ))
    }
}

/// Record keys of the entries: `base + position` (every `.idx` insightface writes, and a scan),
/// or listed with a sorted copy for lookups.
enum Keys {
    Dense {
        base: u64,
    },
    Listed {
        keys: Vec<u64>,
        sorted: Vec<(u64, usize)>,
    },
}

/// Where the `.idx` (or the scan) put each entry: byte offsets in entry order and their keys.
struct Entries {
    offsets: Vec<u64>,
    keys: Keys,
}

impl Entries {
    fn len(&self) -> usize {
        self.offsets.len()
    }

    fn key(&self, pos: usize) -> u64 {
        match &self.keys {
            Keys::Dense { base } => base + pos as u64,
            Keys::Listed { keys, .. } => keys[pos],
        }
    }

    fn position(&self, key: u64) -> Option<usize> {
        match &self.keys {
            Keys::Dense { base } => key
                .checked_sub(*base)
                .and_then(|p| usize::try_from(p).ok())
                .filter(|&p| p < self.len()),
            Keys::Listed { sorted, .. } => sorted
                .binary_search_by_key(&key, |&(k, _)| k)
                .ok()
                .map(|i| sorted[i].1),
        }
    }
}

/// Parses an unsigned decimal field of an `.idx` line.
fn parse_u64(text: &[u8], what: &str) -> std::result::Result<u64, String> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "{what} {:?} is not a non-negative integer (expected `index<TAB>offset`)",
            String::from_utf8_lossy(text)
        ));
    }
    Ok(text.iter().fold(0u64, |v, &b| v * 10 + u64::from(b - b'0')))
}

/// The common `.idx` line in one pass: up to 19 digits, one tab or space, up to 19 digits.
/// `None` sends the line to [`parse_idx_line_slow`] (which also words the errors).
#[inline]
fn parse_idx_line_fast(line: &[u8]) -> Option<(u64, u64)> {
    let digits = |from: usize| -> (u64, usize) {
        let mut value = 0u64;
        let mut i = from;
        while let Some(d) = line
            .get(i)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|&d| d <= 9)
        {
            value = value.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        (value, i)
    };
    let (key, sep) = digits(0);
    if sep == 0 || sep > 19 || !matches!(line.get(sep), Some(b'\t' | b' ')) {
        return None;
    }
    let (offset, end) = digits(sep + 1);
    (end == line.len() && end > sep + 1 && end - sep - 1 <= 19).then_some((key, offset))
}

#[cold]
fn parse_idx_line_slow(line: &[u8]) -> std::result::Result<(u64, u64), String> {
    let Some(sep) = line.iter().position(|&b| b == b'\t' || b == b' ') else {
        return Err("expected `index<TAB>offset`".into());
    };
    let key = parse_u64(&line[..sep], "index")?;
    let offset = parse_u64(line[sep..].trim_ascii(), "offset")?;
    Ok((key, offset))
}

fn io_error(path: &Path, err: impl std::fmt::Display) -> F2cError {
    F2cError::Io {
        path: path.display().to_string(),
        message: err.to_string(),
    }
}

/// Parses `.idx` bytes (`index<TAB>byte offset` lines) of a `.rec` of `rec_len` bytes.
fn parse_idx(path: &Path, data: &[u8], rec: &Path, rec_len: u64) -> Result<Entries> {
    let parse_error = |line: usize, message: String| F2cError::Parse {
        path: path.display().to_string(),
        line,
        message,
    };
    let lines = memchr::memchr_iter(b'\n', data).count() + 1;
    let mut offsets: Vec<u64> = bigvec::with_capacity(lines);
    let mut listed: Option<Vec<u64>> = None;
    let mut base = 0;
    let mut start = 0;
    let open_last = data.last().is_some_and(|&b| b != b'\n');
    let ends = memchr::memchr_iter(b'\n', data).chain(open_last.then_some(data.len()));
    for (i, end) in ends.enumerate() {
        let mut line = &data[start..end];
        start = end + 1;
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        let (key, offset) = match parse_idx_line_fast(line) {
            Some(parsed) => parsed,
            None => parse_idx_line_slow(line).map_err(|m| parse_error(i + 1, m))?,
        };
        if !matches!(offset.checked_add(PART_HEADER as u64), Some(end) if end <= rec_len) {
            return Err(parse_error(
                i + 1,
                format!(
                    "offset {offset} of record {key} points past the end of {} ({rec_len} bytes)",
                    rec.display()
                ),
            ));
        }
        if offset % 4 != 0 {
            return Err(parse_error(
                i + 1,
                format!("offset {offset} of record {key} is not a multiple of 4"),
            ));
        }
        if i == 0 {
            base = key;
        }
        match &mut listed {
            None if key == base.wrapping_add(i as u64) => {}
            None => {
                let mut keys = bigvec::with_capacity(offsets.capacity());
                keys.extend((0..i as u64).map(|p| base + p));
                keys.push(key);
                listed = Some(keys);
            }
            Some(keys) => keys.push(key),
        }
        offsets.push(offset);
    }
    if offsets.is_empty() {
        return Err(parse_error(1, "the .idx file lists no records".into()));
    }
    let keys = match listed {
        None => Keys::Dense { base },
        Some(mut keys) => {
            keys.shrink_to_fit();
            let mut sorted: Vec<(u64, usize)> = keys.iter().copied().zip(0..).collect();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
                let (a, b) = (w[0].1.min(w[1].1), w[0].1.max(w[1].1));
                return Err(parse_error(
                    b + 1,
                    format!(
                        "record index {} is listed twice (also on line {})",
                        w[0].0,
                        a + 1
                    ),
                ));
            }
            Keys::Listed { keys, sorted }
        }
    };
    Ok(Entries { offsets, keys })
}

/// Offsets of every record of `data`, found by walking it part by part.
fn scan_rec(rec: &Path, data: &[u8]) -> Result<Entries> {
    let mut offsets = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let record = read_record(data, pos).map_err(|message| F2cError::RecordIo {
            path: rec.display().to_string(),
            record: Some(offsets.len() as u64),
            offset: pos as u64,
            message,
        })?;
        offsets.push(pos as u64);
        pos = record.end;
    }
    Ok(Entries {
        offsets,
        keys: Keys::Dense { base: 0 },
    })
}

/// Where record offsets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdxSource {
    /// The `.idx` file given.
    File(PathBuf),
    /// A scan of the `.rec` (no `.idx`).
    Scan,
}

impl IdxSource {
    /// The `.idx` beside `rec` (same name, `.idx` suffix) when it exists, else a scan.
    pub fn beside(rec: &Path) -> Self {
        let idx = rec.with_extension("idx");
        if idx.is_file() {
            IdxSource::File(idx)
        } else {
            IdxSource::Scan
        }
    }
}

/// Where class labels come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSource {
    /// The identity records of header record 0 when the pack has them, else the records.
    Auto,
    /// Every image record's own label (one pass over the records).
    Records,
}

/// (first row, class) of each identity.
type IdentityStarts = Vec<(usize, i64)>;

/// Row → entry position.
enum Rows {
    /// Rows are the entries `start..end` (no header record, or one with dense keys).
    Range(usize, usize),
    Listed(Vec<usize>),
}

pub struct RecordIoReader {
    name: String,
    idx: IdxSource,
    map: Mmap,
    entries: Entries,
    rows: Rows,
    len: usize,
    /// `[first identity record, end)` from header record 0, when the pack has one.
    header: Option<(u64, u64)>,
    /// With labels from identity records: (first row, class) of each identity, by first row.
    /// Each read checks the record's own label against it.
    identity_starts: Option<IdentityStarts>,
    labels: Vec<i64>,
    num_classes: usize,
    identity_offsets: Vec<i64>,
    identity_rows: Vec<i64>,
    num_threads: usize,
    image_size: OnceLock<(usize, usize)>,
}

impl RecordIoReader {
    pub fn open(
        rec: &Path,
        idx: IdxSource,
        label_source: LabelSource,
        num_threads: usize,
    ) -> Result<Self> {
        if num_threads == 0 {
            return Err(F2cError::InvalidInput(
                "num_threads must be at least 1".into(),
            ));
        }
        let file = File::open(rec).map_err(|e| io_error(rec, e))?;
        let rec_len = file.metadata().map_err(|e| io_error(rec, e))?.len();
        if rec_len == 0 {
            return Err(io_error(rec, "the .rec file is empty"));
        }
        // SAFETY: the map is read-only; a training set must not be modified while it is read
        // (the reader's documented contract), as for LMDB. A file truncated underneath would
        // fault on access rather than return wrong data.
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(|e| io_error(rec, e))?;
        // Opening reads the file in order (a scan, or labels from every record); training reads
        // it at random, where readahead only wastes I/O.
        let _ = map.advise(Advice::Sequential);
        let entries = match &idx {
            IdxSource::File(path) => {
                let file = File::open(path).map_err(|e| io_error(path, e))?;
                let len = file.metadata().map_err(|e| io_error(path, e))?.len();
                if len == 0 {
                    parse_idx(path, &[], rec, rec_len)?
                } else {
                    // SAFETY: read-only, and only for the parse, which copies what it keeps;
                    // an .idx is not written while a training set is opened.
                    let text = unsafe { MmapOptions::new().populate().map(&file) }
                        .map_err(|e| io_error(path, e))?;
                    parse_idx(path, &text, rec, rec_len)?
                }
            }
            IdxSource::Scan => scan_rec(rec, &map)?,
        };
        let mut reader = Self {
            name: rec.display().to_string(),
            idx,
            map,
            entries,
            rows: Rows::Range(0, 0),
            len: 0,
            header: None,
            identity_starts: None,
            labels: Vec::new(),
            num_classes: 0,
            identity_offsets: Vec::new(),
            identity_rows: Vec::new(),
            num_threads,
            image_size: OnceLock::new(),
        };
        reader.index(label_source)?;
        let _ = reader.map.advise(Advice::Random);
        Ok(reader)
    }

    fn record_error(&self, pos: usize, message: String) -> F2cError {
        F2cError::RecordIo {
            path: self.name.clone(),
            record: Some(self.entries.key(pos)),
            offset: self.entries.offsets[pos],
            message,
        }
    }

    /// `f(payload)` of the record at entry position `pos`, errors naming the record.
    fn with_payload<T>(
        &self,
        pos: usize,
        f: impl FnOnce(IrPayload<'_>) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let offset = self.entries.offsets[pos] as usize;
        read_record(&self.map, offset)
            .and_then(|record| f(IrPayload::parse(&record.payload)?))
            .map_err(|message| self.record_error(pos, message))
    }

    /// Rows, labels and the per-identity CSR, from header record 0 when present.
    fn index(&mut self, label_source: LabelSource) -> Result<()> {
        self.header = self.header_record()?;
        let identities = match self.header {
            Some((first, end)) => {
                self.rows = self.image_rows(first)?;
                (end > first).then_some((first, end))
            }
            None => {
                self.rows = Rows::Range(0, self.entries.len());
                None
            }
        };
        self.len = match &self.rows {
            Rows::Range(start, end) => end - start,
            Rows::Listed(p) => p.len(),
        };
        if self.len == 0 {
            return Err(F2cError::InvalidInput(format!(
                "{}: the pack holds no image records",
                self.name
            )));
        }
        let (labels, counts) = match (identities, label_source) {
            (Some((first, end)), LabelSource::Auto) => {
                let (labels, counts, starts) = self.identity_labels(first, end)?;
                self.identity_starts = Some(starts);
                (labels, counts)
            }
            _ => self.record_labels()?,
        };
        if let Some(missing) = counts.iter().position(|&n| n == 0) {
            let gaps: Vec<usize> = (missing..counts.len())
                .filter(|&c| counts[c] == 0)
                .collect();
            let shown: Vec<String> = gaps.iter().take(10).map(|c| c.to_string()).collect();
            let more = if gaps.len() > 10 {
                format!(" and {} more", gaps.len() - 10)
            } else {
                String::new()
            };
            return Err(F2cError::InvalidInput(format!(
                "{}: labels must form 0..C-1 but class(es) {}{more} have no images (largest \
                 label {})",
                self.name,
                shown.join(", "),
                counts.len() - 1
            )));
        }
        self.num_classes = counts.len();
        let (offsets, rows) = build_csr(&labels, counts, self.num_classes)?;
        self.labels = labels;
        self.identity_offsets = offsets;
        self.identity_rows = rows;
        Ok(())
    }

    /// `[first, end)` of header record 0: record key 0 with at least 2 labels and no image.
    fn header_record(&self) -> Result<Option<(u64, u64)>> {
        let Some(pos) = self.entries.position(0) else {
            return Ok(None);
        };
        let range = self.with_payload(pos, |p| {
            if p.flag < 2 || !p.image.is_empty() {
                return Ok(None);
            }
            let mut labels = p.labels();
            let first = as_index(labels.next().expect("flag >= 2"), "header label")?;
            let end = as_index(labels.next().expect("flag >= 2"), "header label")?;
            if first < 1 || end < first {
                return Err(format!(
                    "header record 0 gives the range [{first}, {end}) (expected 1 <= first <= \
                     end)"
                ));
            }
            Ok(Some((first as u64, end as u64)))
        })?;
        let Some((first, end)) = range else {
            return Ok(None);
        };
        // Above 2^24 the stored indices may be rounded: the identity records start where an
        // image record is followed by an identity record.
        let last = self.len_u64();
        let mut exact = (first, end);
        if f32_slack(first) > 0 {
            exact.0 = resolve_boundary(window(first, f32_slack(first), 1, last), |k| {
                Ok(self.is_identity_record(k)? && !self.is_identity_record(k - 1)?)
            })?
            .ok_or_else(|| {
                self.header_error(format!(
                    "header record 0 puts the first identity record at {first} (stored as f32), \
                     but no identity record starts within {} of it",
                    f32_slack(first)
                ))
            })?;
        }
        if f32_slack(end) > 0 {
            exact.1 = resolve_boundary(window(end, f32_slack(end), exact.0, last), |k| {
                Ok((k == exact.0 || self.is_identity_record(k - 1)?)
                    && !self.is_identity_record(k)?)
            })?
            .ok_or_else(|| {
                self.header_error(format!(
                    "header record 0 ends the identity records at {end} (stored as f32), but \
                     none ends within {} of it",
                    f32_slack(end)
                ))
            })?;
        }
        Ok(Some(exact))
    }

    /// Whether record `key` is an identity (or header) record: labels and no image.
    fn is_identity_record(&self, key: u64) -> Result<bool> {
        match self.entries.position(key) {
            None => Ok(false),
            Some(pos) => self.with_payload(pos, |p| Ok(p.flag >= 2 && p.image.is_empty())),
        }
    }

    /// The class label of image record `key` (row `key - 1`), read from its own header.
    fn own_label(&self, key: u64) -> Result<i64> {
        let pos = self.entry_of_row(key as usize - 1);
        self.with_payload(pos, |p| as_index(p.class_label(), "label"))
    }

    /// Entry positions of image records `1 .. first`.
    fn image_rows(&self, first: u64) -> Result<Rows> {
        let count = first - 1;
        if let (Keys::Dense { base: 0 }, true) = (&self.entries.keys, first <= self.len_u64()) {
            return Ok(Rows::Range(1, first as usize));
        }
        if count > self.len_u64() {
            return Err(self.header_error(format!(
                "header record 0 puts the images at records 1..{first} but the index lists {} \
                 records",
                self.entries.len()
            )));
        }
        (1..first)
            .map(|key| {
                self.entries.position(key).ok_or_else(|| {
                    self.header_error(format!(
                        "header record 0 puts the images at records 1..{first} but record {key} \
                         is not in the index"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Rows::Listed)
    }

    fn len_u64(&self) -> u64 {
        self.entries.len() as u64
    }

    fn header_error(&self, message: String) -> F2cError {
        let pos = self.entries.position(0).expect("a header record was read");
        self.record_error(pos, message)
    }

    /// Class `i` = identity record `first + i`, whose labels give its image records
    /// `[start, end)`. Returns (labels per row, images per class, (first row, class) per class).
    fn identity_labels(
        &self,
        first: u64,
        end: u64,
    ) -> Result<(Vec<i64>, Vec<i64>, IdentityStarts)> {
        let num_classes = end - first;
        if num_classes > self.len_u64() {
            return Err(self.header_error(format!(
                "header record 0 announces {num_classes} identity records but the index lists {} \
                 records",
                self.entries.len()
            )));
        }
        // (first image record, end, class, entry position) of every identity.
        let mut ranges = Vec::with_capacity(num_classes as usize);
        for class in 0..num_classes {
            let key = first + class;
            let pos = self.entries.position(key).ok_or_else(|| {
                self.header_error(format!(
                    "header record 0 announces identity records {first}..{end} but record {key} \
                     is not in the index"
                ))
            })?;
            let (start, stop) = self.with_payload(pos, |p| {
                let mut l = p.labels();
                let (Some(a), Some(b)) = (l.next(), l.next()) else {
                    return Err(format!(
                        "identity record of class {class} has {} labels (expected [start, end))",
                        p.flag
                    ));
                };
                let (a, b) = (as_index(a, "range start")?, as_index(b, "range end")?);
                if a < 1 || b < a || b as u64 > first + f32_slack(b as u64) {
                    return Err(format!(
                        "identity record of class {class} gives images [{a}, {b}), outside the \
                         image records [1, {first})"
                    ));
                }
                Ok((a as usize, b as usize))
            })?;
            ranges.push((start, stop, class as i64, pos));
        }
        ranges.sort_unstable();
        self.resolve_rounded_ranges(&mut ranges, first)?;
        // The ranges must tile the image records 1..first: sorted by start, each begins where
        // the one before ends.
        ranges.sort_unstable();
        let mut next = 1;
        for &(start, stop, class, pos) in &ranges {
            if start == stop {
                return Err(self.record_error(
                    pos,
                    format!(
                        "labels must form 0..C-1 but the identity record of class {class} holds \
                         no images"
                    ),
                ));
            }
            if start < next {
                let owner = ranges
                    .iter()
                    .find(|r| r.0 <= start && start < r.1 && r.2 != class)
                    .map_or(-1, |r| r.2);
                return Err(self.record_error(
                    pos,
                    format!(
                        "identity record of class {class} claims image record {start} already \
                         claimed by class {owner}"
                    ),
                ));
            }
            if start > next {
                return Err(self.record_error(
                    self.entry_of_row(next - 1),
                    "image record in no identity record's range (pass label_source=\"records\" \
                     to label images by their own headers)"
                        .into(),
                ));
            }
            next = stop;
        }
        if next != first as usize {
            return Err(self.record_error(
                self.entry_of_row(next - 1),
                "image record in no identity record's range (pass label_source=\"records\" to \
                 label images by their own headers)"
                    .into(),
            ));
        }
        let mut labels: Vec<i64> = bigvec::with_capacity(self.len);
        let mut counts = vec![0i64; num_classes as usize];
        let mut starts = Vec::with_capacity(ranges.len());
        for &(start, stop, class, _) in &ranges {
            // Image record k is row k - 1.
            labels.resize(labels.len() + (stop - start), class);
            counts[class as usize] = (stop - start) as i64;
            starts.push((start - 1, class));
        }
        Ok((labels, counts, starts))
    }

    /// Identity ranges above 2^24 were stored rounded (see [`f32_slack`]). In sorted order, each
    /// such boundary between two identities is placed exactly where the image records' own
    /// labels change from the one class to the other.
    fn resolve_rounded_ranges(
        &self,
        ranges: &mut [(usize, usize, i64, usize)],
        first: u64,
    ) -> Result<()> {
        for i in 0..ranges.len() {
            let (_, stop, class, pos) = ranges[i];
            let slack = f32_slack(stop as u64);
            if slack == 0 {
                continue;
            }
            let Some(&(_, _, next_class, _)) = ranges.get(i + 1) else {
                // The last identity ends where the identity records begin.
                if (stop as u64).abs_diff(first) <= slack {
                    ranges[i].1 = first as usize;
                }
                continue;
            };
            let stored = stop as u64;
            let exact = resolve_boundary(window(stored, slack, 2, first - 1), |b| {
                Ok(self.own_label(b - 1)? == class && self.own_label(b)? == next_class)
            })?
            .ok_or_else(|| {
                self.record_error(
                    pos,
                    format!(
                        "identity record of class {class} ends its images at {stored} (stored as \
                         f32), but the image labels do not change from class {class} to \
                         {next_class} within {slack} of it"
                    ),
                )
            })? as usize;
            ranges[i].1 = exact;
            ranges[i + 1].0 = exact;
        }
        Ok(())
    }

    /// Labels of every row from its own record (one pass over the file).
    fn record_labels(&self) -> Result<(Vec<i64>, Vec<i64>)> {
        let mut labels: Vec<i64> = bigvec::with_capacity(self.len);
        let mut counts: Vec<i64> = Vec::new();
        for row in 0..self.len {
            let pos = self.entry_of_row(row);
            let label = self.with_payload(pos, |p| as_index(p.class_label(), "label"))?;
            // A label at or above the row count leaves a class without images: refuse it here,
            // before it sizes any allocation.
            if label as u64 >= self.len as u64 {
                return Err(self.record_error(
                    pos,
                    format!(
                        "label {label} is not below the number of images ({}): labels must form \
                         0..C-1",
                        self.len
                    ),
                ));
            }
            let class = label as usize;
            if class >= counts.len() {
                counts.resize(class + 1, 0);
            }
            counts[class] += 1;
            labels.push(label);
        }
        Ok((labels, counts))
    }

    fn entry_of_row(&self, row: usize) -> usize {
        match &self.rows {
            Rows::Range(start, _) => start + row,
            Rows::Listed(p) => p[row],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn idx_source(&self) -> &IdxSource {
        &self.idx
    }

    /// `[first identity record, end)` of header record 0, when the pack has one.
    pub fn header(&self) -> Option<(u64, u64)> {
        self.header
    }

    pub fn labels_from_identities(&self) -> bool {
        self.identity_starts.is_some()
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn num_threads(&self) -> usize {
        self.num_threads
    }

    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    pub fn identity_offsets(&self) -> &[i64] {
        &self.identity_offsets
    }

    pub fn identity_rows(&self) -> &[i64] {
        &self.identity_rows
    }

    /// Moves the label and CSR arrays out (for zero-copy hand-over to numpy).
    pub fn take_arrays(&mut self) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        (
            std::mem::take(&mut self.labels),
            std::mem::take(&mut self.identity_offsets),
            std::mem::take(&mut self.identity_rows),
        )
    }

    pub fn check_row(&self, row: i64) -> Result<usize> {
        if row < 0 || row as u64 >= self.len as u64 {
            return Err(F2cError::IndexOutOfRange {
                index: row,
                len: self.len,
            });
        }
        Ok(row as usize)
    }

    /// The record index (`.idx` key) of a checked row.
    pub fn key(&self, row: usize) -> u64 {
        self.entries.key(self.entry_of_row(row))
    }

    /// The byte offset of a checked row's record in the `.rec`.
    pub fn offset(&self, row: usize) -> u64 {
        self.entries.offsets[self.entry_of_row(row)]
    }

    /// `f(row, image bytes)` of a checked row; with labels from identity records, the record's
    /// own label must agree.
    fn with_image<T>(
        &self,
        row: usize,
        f: impl FnOnce(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<T> {
        // Labels from the records themselves were read from these very records at open.
        let want = self.identity_starts.as_ref().map(|starts| {
            // The identity ranges cover every row without overlap (checked at open).
            starts[starts.partition_point(|&(start, _)| start <= row) - 1].1
        });
        self.with_payload(self.entry_of_row(row), |p| {
            if let Some(want) = want {
                let own = p.class_label();
                if own != want as f32 {
                    return Err(format!(
                        "the record's label {own} differs from its identity record's class \
                         {want} (pass label_source=\"records\" to use the records' labels)"
                    ));
                }
            }
            f(p.image)
        })
    }

    /// Calls `f(row, image bytes)` for each checked row, in order.
    /// Asks the kernel to read ahead the bytes of checked `rows` (one range from the first
    /// record to the end of the last), without waiting. For reads in file order (a copy of the
    /// whole pack): the map is otherwise advised for random access, where each page missing
    /// from the cache costs one small disk read.
    pub fn prefetch(&self, rows: &[usize]) {
        let offsets = rows.iter().map(|&row| self.offset(row) as usize);
        let (Some(first), Some(last)) = (offsets.clone().min(), offsets.max()) else {
            return;
        };
        // The last record's own length, from its part header (at most a few MB when whole).
        let tail = self.map.get(last + 4..last + 8).map_or(0, |b| {
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & LENGTH_MASK) as usize
        });
        let end = (last + 8 + tail).min(self.map.len());
        let _ = self.map.advise_range(Advice::WillNeed, first, end - first);
    }

    /// Calls `f` with a checked row's image once it is known to be a JPEG whose frame header
    /// says it has the pack's image size (the first image's); errors name the record. No
    /// entropy-coded data is read: [`Self::read_into`] checks that.
    pub fn with_jpeg<T>(&self, row: usize, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        let want = self.image_size()?;
        self.with_image(row, |image| {
            let jpeg = jpeg_image(image)?;
            let got = jpeg::jpeg_header_size(jpeg, jpeg::MAX_SIDE)?;
            if got != want {
                return Err(format!(
                    "image is {}x{} (HxW) but the pack's first image is {}x{}",
                    got.0, got.1, want.0, want.1
                ));
            }
            Ok(f(jpeg))
        })
    }

    pub fn for_each_image(&self, rows: &[usize], mut f: impl FnMut(usize, &[u8])) -> Result<()> {
        for &row in rows {
            self.with_image(row, |image| {
                f(row, image);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// (height, width) of the images: that of the first row's.
    pub fn image_size(&self) -> Result<(usize, usize)> {
        if let Some(&size) = self.image_size.get() {
            return Ok(size);
        }
        let size = self.with_image(0, |image| jpeg_image(image).and_then(jpeg::jpeg_size))?;
        Ok(*self.image_size.get_or_init(|| size))
    }

    /// Decodes checked `rows` into `out` (`rows.len()` RGB images of [`Self::image_size`]),
    /// mirroring image `i` when `flips[i]`.
    pub fn read_into(&self, rows: &[usize], flips: &[bool], out: &mut [u8]) -> Result<()> {
        let size = self.image_size()?;
        batch::decode_batch(rows, flips, out, size, self.num_threads, || Ok(self))
    }
}

impl std::fmt::Debug for RecordIoReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordIoReader")
            .field("name", &self.name)
            .field("idx", &self.idx)
            .field("rows", &self.len)
            .field("num_classes", &self.num_classes)
            .field("header", &self.header)
            .finish()
    }
}

impl JpegFetch for &RecordIoReader {
    fn with_jpeg(
        &mut self,
        row: usize,
        decode: &mut dyn FnMut(&[u8]) -> std::result::Result<(), String>,
    ) -> Result<()> {
        self.with_image(row, |image| jpeg_image(image).and_then(decode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// MXNet's writer, from the format description: split where the magic sits at an aligned
    /// offset, dropping it; flag 0 whole, 1 first, 2 middle, 3 last; pad to 4.
    fn write_record(out: &mut Vec<u8>, payload: &[u8]) -> u64 {
        let at = out.len() as u64;
        let mut parts = Vec::new();
        let mut begin = 0;
        let mut i = 0;
        while i + 4 <= payload.len() {
            if payload[i..i + 4] == MAGIC_BYTES {
                parts.push(&payload[begin..i]);
                begin = i + 4;
            }
            i += 4;
        }
        parts.push(&payload[begin..]);
        let n = parts.len();
        for (k, part) in parts.iter().enumerate() {
            let flag: u32 = match (n, k) {
                (1, _) => 0,
                (_, 0) => 1,
                (_, k) if k + 1 == n => 3,
                _ => 2,
            };
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&((flag << 29) | part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        at
    }

    fn ir(flag_labels: &[f32], label: f32, image: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&(flag_labels.len() as u32).to_le_bytes());
        p.extend_from_slice(&label.to_le_bytes());
        p.extend_from_slice(&7u64.to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        for l in flag_labels {
            p.extend_from_slice(&l.to_le_bytes());
        }
        p.extend_from_slice(image);
        p
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("f2c-rec-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `payloads` as `x.rec` and, unless `idx` is false, `x.idx`.
    fn write_pack(name: &str, payloads: &[Vec<u8>], idx: bool) -> PathBuf {
        let dir = temp_dir(name);
        let mut rec = Vec::new();
        let mut lines = String::new();
        for (k, p) in payloads.iter().enumerate() {
            let at = write_record(&mut rec, p);
            lines.push_str(&format!("{k}\t{at}\n"));
        }
        let path = dir.join("x.rec");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&rec)
            .unwrap();
        let idx_path = dir.join("x.idx");
        if idx {
            std::fs::write(&idx_path, lines).unwrap();
        } else {
            let _ = std::fs::remove_file(&idx_path);
        }
        path
    }

    fn open(path: &Path) -> Result<RecordIoReader> {
        RecordIoReader::open(path, IdxSource::beside(path), LabelSource::Auto, 2)
    }

    #[test]
    fn multi_part_records_join_with_the_magic_put_back() {
        let mut image = b"\xff\xd8abc".to_vec();
        image.extend_from_slice(&MAGIC_BYTES); // at offset 29 of the payload: not aligned...
        let mut payload = ir(&[], 0.0, &image);
        payload.extend_from_slice(&[0; 3]); // ...so pad to put the next magic at 36
        payload.extend_from_slice(&MAGIC_BYTES);
        payload.extend_from_slice(&MAGIC_BYTES); // two in a row: an empty middle part
        payload.extend_from_slice(b"tail");
        let mut data = Vec::new();
        write_record(&mut data, &payload);
        let record = read_record(&data, 0).unwrap();
        assert!(matches!(record.payload, Cow::Owned(_)));
        assert_eq!(&record.payload[..], &payload[..]);
        assert_eq!(record.end, data.len());
        // A magic at the very end gives an empty last part.
        let mut ends_with_magic = payload.clone();
        ends_with_magic.truncate(40);
        let mut data = Vec::new();
        write_record(&mut data, &ends_with_magic);
        assert_eq!(
            &read_record(&data, 0).unwrap().payload[..],
            &ends_with_magic[..]
        );
    }

    #[test]
    fn ir_header_labels() {
        let payload = ir(&[3.0, 9.5], 1.0, b"img");
        let p = IrPayload::parse(&payload).unwrap();
        assert_eq!(p.flag, 2);
        assert_eq!(p.id, 7);
        assert_eq!(p.labels().collect::<Vec<_>>(), vec![3.0, 9.5]);
        assert_eq!(p.class_label(), 3.0);
        assert_eq!(p.image, b"img");
        assert_eq!(
            IrPayload::parse(&ir(&[], 4.0, b"")).unwrap().class_label(),
            4.0
        );
        let mut lying = ir(&[1.0], 0.0, b"");
        lying[0] = 200; // flag 200, 4 bytes of labels
        assert!(IrPayload::parse(&lying)
            .unwrap_err()
            .contains("announces 200"));
        assert!(IrPayload::parse(&[0; 10]).is_err());
    }

    #[test]
    fn bad_parts_are_errors_naming_the_offset() {
        let mut data = Vec::new();
        write_record(&mut data, &ir(&[], 0.0, b"\xff\xd8"));
        let mut bad = data.clone();
        bad[0] ^= 1;
        assert!(read_record(&bad, 0).unwrap_err().contains("bad magic"));
        assert!(read_record(&data[..data.len() - 8], 0)
            .unwrap_err()
            .contains("truncated"));
        assert!(read_record(&data[..6], 0)
            .unwrap_err()
            .contains("at byte 0"));
        let mut cont = data.clone();
        cont[7] |= 2 << 5; // flag 2 on a first part
        assert!(read_record(&cont, 0).unwrap_err().contains("flagged 2"));
    }

    #[test]
    fn header_record_and_identity_records() {
        // Header: images 1..5, identities 5..7; class 0 = images 1..3, class 1 = images 3..5.
        let mut payloads = vec![ir(&[5.0, 7.0], 0.0, b"")];
        for label in [0.0, 0.0, 1.0, 1.0] {
            payloads.push(ir(&[], label, b"\xff\xd8x"));
        }
        payloads.push(ir(&[1.0, 3.0], 0.0, b""));
        payloads.push(ir(&[3.0, 5.0], 1.0, b""));
        let r = open(&write_pack("header", &payloads, true)).unwrap();
        assert_eq!(r.header(), Some((5, 7)));
        assert!(r.labels_from_identities());
        assert_eq!(r.len(), 4);
        assert_eq!(r.labels(), &[0, 0, 1, 1]);
        assert_eq!(r.identity_offsets(), &[0, 2, 4]);
        assert_eq!((r.key(0), r.key(3)), (1, 4));
        let mut images = Vec::new();
        r.for_each_image(&[3, 0], |row, b| images.push((row, b.to_vec())))
            .unwrap();
        assert_eq!(
            images,
            vec![(3, b"\xff\xd8x".to_vec()), (0, b"\xff\xd8x".to_vec())]
        );

        // The same without an .idx: a scan finds the same records.
        let scanned = open(&write_pack("header-scan", &payloads, false)).unwrap();
        assert_eq!(scanned.idx_source(), &IdxSource::Scan);
        assert_eq!(scanned.labels(), r.labels());
        assert_eq!(scanned.offset(2), r.offset(2));

        // An image whose own label disagrees with its identity record is refused on read.
        let mut wrong = payloads.clone();
        wrong[2] = ir(&[], 1.0, b"\xff\xd8x");
        let mut r = open(&write_pack("header-wrong", &wrong, true)).unwrap();
        r.take_arrays(); // the check must not depend on the label array (handed to numpy)
        let err = r.for_each_image(&[1], |_, _| ()).unwrap_err().to_string();
        assert!(
            err.contains("record 2 at byte") && err.contains("differs"),
            "{err}"
        );
        let rec = PathBuf::from(r.name());
        let by_records =
            RecordIoReader::open(&rec, IdxSource::Scan, LabelSource::Records, 1).unwrap();
        assert_eq!(by_records.labels(), &[0, 1, 1, 1]);
    }

    #[test]
    fn identity_ranges_must_cover_the_images_without_gaps() {
        let mut payloads = vec![ir(&[5.0, 7.0], 0.0, b"")];
        for _ in 0..4 {
            payloads.push(ir(&[], 0.0, b"\xff\xd8x"));
        }
        payloads.push(ir(&[1.0, 3.0], 0.0, b""));
        payloads.push(ir(&[3.0, 3.0], 1.0, b""));
        let err = open(&write_pack("gap", &payloads, true))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("record 6 at byte") && err.contains("no images"),
            "{err}"
        );
        payloads[6] = ir(&[2.0, 5.0], 1.0, b"");
        let err = open(&write_pack("overlap", &payloads, true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already claimed by class 0"), "{err}");
        payloads[6] = ir(&[4.0, 5.0], 1.0, b"");
        let err = open(&write_pack("uncovered", &payloads, true))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("record 3 at byte") && err.contains("no identity"),
            "{err}"
        );
    }

    #[test]
    fn without_header_labels_come_from_the_records() {
        let payloads: Vec<Vec<u8>> = [2.0, 0.0, 1.0, 0.0]
            .iter()
            .map(|&l| ir(&[l, 0.5], 9.0, b"\xff\xd8y"))
            .collect();
        let r = open(&write_pack("plain", &payloads, true)).unwrap();
        assert_eq!(r.header(), None);
        assert_eq!(r.labels(), &[2, 0, 1, 0]);
        assert_eq!(r.identity_offsets(), &[0, 2, 3, 4]);
        assert_eq!(r.identity_rows(), &[1, 3, 2, 0]);
        assert_eq!(r.num_classes(), 3);

        let gappy: Vec<Vec<u8>> = [0.0, 3.0, 0.0, 3.0]
            .iter()
            .map(|&l| ir(&[], l, b"\xff\xd8y"))
            .collect();
        let err = open(&write_pack("gappy", &gappy, true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("class(es) 1, 2 have no images"), "{err}");
        let huge = vec![ir(&[], 1e9, b"\xff\xd8y")];
        let err = open(&write_pack("huge", &huge, true))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("record 0 at byte 0") && err.contains("not below"),
            "{err}"
        );
        let frac = vec![ir(&[], 0.5, b"\xff\xd8y")];
        assert!(open(&write_pack("frac", &frac, true)).is_err());
    }

    #[test]
    fn idx_errors_name_the_file_and_line() {
        let payloads = vec![ir(&[], 0.0, b"\xff\xd8y"), ir(&[], 0.0, b"\xff\xd8y")];
        let rec = write_pack("idx", &payloads, true);
        let idx = rec.with_extension("idx");
        let rec_len = std::fs::metadata(&rec).unwrap().len();
        let cases: [(String, usize, &str); 5] = [
            (
                format!("0\t0\n1\t{}\n", rec_len + 4),
                2,
                "points past the end",
            ),
            ("0\t0\n1\tx\n".into(), 2, "not a non-negative integer"),
            ("0\t0\n\n".into(), 2, "expected `index<TAB>offset`"),
            ("0\t0\n1\t2\n".into(), 2, "not a multiple of 4"),
            (
                "5\t0\n3\t0\n5\t0\n".into(),
                3,
                "listed twice (also on line 1)",
            ),
        ];
        for (body, line, needle) in cases {
            std::fs::write(&idx, &body).unwrap();
            let err = open(&rec).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{}:{line}:", idx.display())),
                "{err}"
            );
            assert!(err.contains(needle), "{body:?}: {err}");
        }
        // Listed (non-dense) keys in any order are fine.
        std::fs::write(&idx, "9\t0\n4\t36\n").unwrap(); // record 0 takes 8 + 28 bytes
        let r = open(&rec).unwrap();
        assert_eq!((r.key(0), r.key(1)), (9, 4));
        // An offset inside a record: bad magic, named on read.
        std::fs::write(&idx, "0\t0\n1\t8\n").unwrap();
        let r = open(&rec).unwrap_err().to_string();
        assert!(
            r.contains("record 1 at byte 8") && r.contains("bad magic"),
            "{r}"
        );
    }

    #[test]
    fn truncated_rec_is_named_by_record_and_offset() {
        let payloads = vec![ir(&[], 0.0, &[0xff; 40]), ir(&[], 0.0, &[0xff; 40])];
        let rec = write_pack("trunc", &payloads, false);
        let len = std::fs::metadata(&rec).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&rec).unwrap();
        f.set_len(len - 20).unwrap();
        let err = open(&rec).unwrap_err().to_string();
        assert!(
            err.contains("record 1 at byte 72") && err.contains("truncated"),
            "{err}"
        );
    }

    #[test]
    fn indices_stored_as_f32_are_placed_exactly() {
        assert_eq!(f32_slack((1 << 24) - 1), 0);
        assert_eq!(f32_slack(1 << 24), 2);
        assert_eq!(f32_slack(17_091_657), 2);
        assert_eq!(f32_slack(40_000_000), 4);
        // The writer's rounding: 16,777,221 is stored as 16,777,220, 17,000,001 as 17,000,000.
        assert_eq!(16_777_221f32 as u64, 16_777_220);
        assert_eq!(17_000_001f32 as u64, 17_000_000);
        // Labels of image records 16,777,210.. : class 5 up to 16,777,220, class 6 from 16,777,221.
        let label = |k: u64| if k <= 16_777_220 { 5 } else { 6 };
        let stored = 16_777_221f32 as u64;
        let found = resolve_boundary(window(stored, f32_slack(stored), 2, 20_000_000), |b| {
            Ok(label(b - 1) == 5 && label(b) == 6)
        });
        assert_eq!(found.unwrap(), Some(16_777_221));
        let none = resolve_boundary(window(stored, 0, 2, 20_000_000), |b| {
            Ok(label(b - 1) == 5 && label(b) == 6)
        });
        assert_eq!(none.unwrap(), None);
    }

    #[test]
    fn non_jpeg_images_are_refused_by_name() {
        assert!(jpeg_image(&PNG_SIGNATURE).unwrap_err().contains("PNG"));
        assert!(jpeg_image(b"GIF89a").unwrap_err().contains("47 49 46 38"));
        assert!(jpeg_image(b"").unwrap_err().contains("no image"));
    }
}
