//! A strict structural check of a JPEG: every marker segment parsed, and every scan's
//! entropy-coded data walked block by block (Huffman codes and coefficient counts, no IDCT).
//!
//! Decoders (zune-jpeg, and libjpeg apart from a warning) fill what a broken stream lacks and
//! return an image: a file cut short with an end-of-image marker appended decodes with its lower
//! part flat, and garbage inside the scan data decodes to noise. This check refuses what
//! libjpeg would warn about: a scan that ends before its last block, data left over after it,
//! a Huffman code no table holds, restart markers out of order, and also what no encoder of
//! 8-bit samples writes (coefficient runs past the block, magnitude categories beyond 8-bit
//! range, coefficients larger than their quantisation step allows, a DC value drifting out of
//! range, a progressive image whose scans do not refine every coefficient to full precision),
//! which is how desynchronised garbage and cut-off progressive files show. Garbage that the
//! Huffman code happens to resynchronise after within a few blocks can still pass: JPEG has
//! no checksum. Baseline, extended (8-bit) and progressive Huffman JPEGs are checked; other
//! processes (lossless, hierarchical, arithmetic coding, 12-bit) are refused as unsupported.
//!
//! The walk is generic over a [`Sink`]: the check alone passes [`NoSink`] (value bits skipped,
//! nothing stored); the fast decoder (`decode.rs`) passes one that takes the decoded
//! coefficients of sequential scans, so checking and decoding share one Huffman pass.

/// Code lengths up to this are decoded by one table lookup.
const LOOKAHEAD: u32 = 10;
/// Largest DC difference category for 8-bit samples.
const MAX_DC_CATEGORY: u8 = 11;
/// Bound on |DCT coefficient| of 8-bit samples: the DC term lies in [-1024, 1016] and AC terms
/// stay below 930, so a quantised coefficient never exceeds `COEF_BOUND / step` (+1 rounding).
const COEF_BOUND: u32 = 1024;
/// Largest AC magnitude: 10 bits for 8-bit samples.
const MAX_AC: u32 = 1023;

/// Largest quantised magnitude a coefficient with quantisation step `step` can have.
fn max_magnitude(step: u16) -> u32 {
    COEF_BOUND / u32::from(step) + 1
}

/// Bits of `v` (JPEG's magnitude category).
fn category(v: u32) -> u8 {
    (32 - v.leading_zeros()) as u8
}

type Check<T> = Result<T, String>;

/// JPEG's EXTEND: the signed value of `size` (1..=16) magnitude bits `v`. Branch-free: the
/// sign of noisy coefficients is a coin toss, which a branch would mispredict half the time.
#[inline(always)]
fn extend(v: u32, size: u32) -> i32 {
    let v = v as i32;
    // 1 when the top magnitude bit is clear: a negative value, v - (2^size - 1).
    let negative = ((v >> (size - 1)) & 1) ^ 1;
    v - (negative << size) + negative
}

/// (height, width) of a JPEG whose markers and entropy-coded data are complete and consistent,
/// with neither side above `max_side`; otherwise what is wrong.
pub fn check(jpeg: &[u8], max_side: usize) -> Check<(usize, usize)> {
    Parser::new(jpeg, max_side)?.run(&mut NoSink)
}

/// [`check`], handing the coefficients of every sequential scan that `sink` takes to it as the
/// walk decodes them: one Huffman pass checks and decodes. The sink's output is only whole when
/// this returns `Ok`.
pub(super) fn walk<S: Sink>(jpeg: &[u8], max_side: usize, sink: &mut S) -> Check<(usize, usize)> {
    Parser::new(jpeg, max_side)?.run(sink)
}

/// Receives the blocks of sequential scans from the walk of [`walk`]. The walk is
/// monomorphised per sink, so [`NoSink`] (the check alone) costs nothing extra.
pub(super) trait Sink {
    /// Whether the walk must decode coefficient values (without, it skips value bits).
    const VALUES: bool;
    /// Called before each sequential scan's data: whether this sink takes the scan's blocks.
    fn begin_scan(&mut self, scan: &ScanInfo<'_>) -> bool;
    /// Starts a block of the scan's `j`-th component with its DC value; returns where the walk
    /// writes the block's AC coefficients (quantised, natural order, the others left as they
    /// are).
    fn start_block(&mut self, j: usize, dc: i32) -> Option<&mut [i32; 64]>;
    /// Ends the block, which sits at block column `bx`, row `by` of component `j`'s grid (MCU
    /// padding included); `has_ac`: whether AC coefficients may have been written (false:
    /// none was).
    fn end_block(&mut self, j: usize, bx: usize, by: usize, has_ac: bool);
}

/// Natural (row-major) position of each zig-zag index.
pub(super) const UNZIGZAG: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// The sink of the check alone: takes no scan.
pub(super) struct NoSink;

impl Sink for NoSink {
    const VALUES: bool = false;
    fn begin_scan(&mut self, _: &ScanInfo<'_>) -> bool {
        false
    }
    #[inline(always)]
    fn start_block(&mut self, _: usize, _: i32) -> Option<&mut [i32; 64]> {
        None
    }
    #[inline(always)]
    fn end_block(&mut self, _: usize, _: usize, _: usize, _: bool) {}
}

/// What a sink learns of the frame and of a sequential scan before its blocks.
pub(super) struct ScanInfo<'a> {
    pub height: usize,
    pub width: usize,
    /// Frame components as (id, h, v), in frame order.
    pub frame: Vec<(u8, usize, usize)>,
    /// The scan's components as indices into `frame`, in scan order.
    pub scan: Vec<usize>,
    /// Each scan component's quantisation steps in zig-zag order.
    pub quant: Vec<&'a [u16; 64]>,
    /// MCUs per row and column (of an interleaved scan).
    pub mcus_w: usize,
    pub mcus_h: usize,
    /// An APP14 Adobe marker's colour transform, if the file has one.
    pub adobe_transform: Option<u8>,
    /// Whether the file has a JFIF APP0 marker.
    pub jfif: bool,
}

/// (height, width) from the frame header alone (no scan check), bounded by `max_side`.
pub fn frame_size(jpeg: &[u8], max_side: usize) -> Check<(usize, usize)> {
    let mut parser = Parser::new(jpeg, max_side)?;
    loop {
        match parser.next_segment()? {
            Segment::Frame => {
                let f = parser.frame.as_ref().expect("just parsed");
                return Ok((f.height, f.width));
            }
            Segment::End => return Err("end-of-image marker before any frame header".into()),
            Segment::Scan(_) => return Err("scan before the frame header".into()),
            Segment::Other => {}
        }
    }
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant: u8,
    /// Blocks of this component when it is scanned alone (no MCU padding).
    blocks_w: usize,
    blocks_h: usize,
    /// Scans that held this component (sequential: exactly one) / DC first scans (progressive).
    scans: u32,
    /// Progressive: per block, which coefficients are non-zero so far (bit k = zig-zag index).
    nonzero: Vec<u64>,
    /// Progressive: the precision (Al) each coefficient has reached, -1 before its first scan.
    precision: [i8; 64],
}

struct Frame {
    progressive: bool,
    height: usize,
    width: usize,
    components: Vec<Component>,
    mcus_w: usize,
    mcus_h: usize,
}

#[derive(Clone)]
struct Huffman {
    /// Entry for the next LOOKAHEAD bits: code length << 8 | symbol; 0 for a longer code.
    /// (A fixed-size array: indexing by LOOKAHEAD bits needs no bounds check.)
    lookup: Box<[u16; 1 << LOOKAHEAD]>,
    /// Per length: largest code of that length (-1: none), and symbol index minus first code.
    max_code: [i32; 17],
    offset: [i32; 17],
    symbols: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Check<Self> {
        let mut lookup = Box::new([0u16; 1 << LOOKAHEAD]);
        let mut max_code = [-1i32; 17];
        let mut offset = [0i32; 17];
        let mut code: u32 = 0;
        let mut index = 0usize;
        for len in 1..=16u32 {
            let n = usize::from(counts[len as usize - 1]);
            if n > 0 {
                offset[len as usize] = index as i32 - code as i32;
                for &symbol in &symbols[index..index + n] {
                    if len <= LOOKAHEAD {
                        let shift = LOOKAHEAD - len;
                        let first = (code << shift) as usize;
                        let entry = (len as u16) << 8 | u16::from(symbol);
                        lookup[first..first + (1 << shift)].fill(entry);
                    }
                    code += 1;
                }
                index += n;
                max_code[len as usize] = code as i32 - 1;
            }
            // A complete code of this length would be all ones, which JPEG reserves.
            if code >= 1 << len {
                return Err("Huffman table with more codes than its lengths allow".into());
            }
            code <<= 1;
        }
        Ok(Self {
            lookup,
            max_code,
            offset,
            symbols: symbols.to_vec(),
        })
    }
}

/// Entropy-coded data with byte unstuffing. The next bits sit at the top of `buf`; past the
/// end of the segment (a marker, or the end of the file) zeros are fed and counted in `fake`,
/// so a walk that needs more bits than the segment holds is caught by [`Self::overrun`].
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    n: u32,
    fake: u32,
    /// The segment's end was reached; `pos` is at its marker (or the end of the file).
    at_end: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            buf: 0,
            n: 0,
            fake: 0,
            at_end: false,
        }
    }

    /// The next data byte, unstuffed, or `None` at a marker or the end of the file.
    #[inline]
    fn next_byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        if b != 0xFF {
            self.pos += 1;
            return Some(b);
        }
        if self.data.get(self.pos + 1) == Some(&0) {
            self.pos += 2;
            return Some(0xFF);
        }
        None
    }

    /// Fills the buffer to at least 57 bits: whole bytes straight from the data while eight
    /// of them hold no 0xFF (inlined: the common case), else [`Self::refill_slow`].
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(bytes) = self.data.get(self.pos..self.pos + 8) {
            let word = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
            // No 0xFF byte among the eight: take whole bytes without unstuffing.
            let ff = !word;
            let has_ff =
                (ff.wrapping_sub(0x0101_0101_0101_0101) & !ff & 0x8080_8080_8080_8080) != 0;
            if !has_ff && !self.at_end {
                let take = (64 - self.n) / 8;
                let bits = 8 * take;
                let incoming = if bits == 64 {
                    word
                } else {
                    word >> (64 - bits)
                };
                self.buf |= incoming << (64 - self.n - bits);
                self.n += bits;
                self.pos += take as usize;
                return;
            }
        }
        self.refill_slow();
    }

    /// Byte-by-byte refill: unstuffing, and zeros past the end of the segment.
    #[cold]
    #[inline(never)]
    fn refill_slow(&mut self) {
        while self.n <= 56 {
            let byte = if self.at_end {
                None
            } else {
                let b = self.next_byte();
                self.at_end = b.is_none();
                b
            };
            match byte {
                Some(b) => self.buf |= u64::from(b) << (56 - self.n),
                None => self.fake += 8,
            }
            self.n += 8;
        }
    }

    /// Whether the walk consumed bits beyond the end of the segment.
    #[inline]
    fn overrun(&self) -> bool {
        self.n < self.fake
    }

    #[inline(always)]
    fn ensure(&mut self, bits: u32) {
        if self.n < bits {
            self.refill();
        }
    }

    /// Drops `bits` bits (checked: refills first).
    #[inline]
    fn skip(&mut self, bits: u32) {
        self.ensure(bits);
        self.buf <<= bits;
        self.n -= bits;
    }

    /// Drops up to 16 bits right after [`Self::symbol`], which left at least 16 in the buffer.
    #[inline(always)]
    fn drop_after_symbol(&mut self, bits: u32) {
        debug_assert!(bits <= 16 && self.n >= bits);
        self.buf <<= bits;
        self.n -= bits;
    }

    /// The next `bits` (at most 16) bits as a number, right after [`Self::symbol`].
    #[inline(always)]
    fn take_after_symbol(&mut self, bits: u32) -> u32 {
        debug_assert!(bits <= 16 && self.n >= bits);
        if bits == 0 {
            return 0;
        }
        let v = (self.buf >> (64 - bits)) as u32;
        self.buf <<= bits;
        self.n -= bits;
        v
    }

    /// A signed coefficient value of `category` (at most 16) bits (JPEG's EXTEND), right after
    /// [`Self::symbol`].
    #[inline(always)]
    fn value_after_symbol(&mut self, category: u8) -> i32 {
        let c = u32::from(category);
        let v = self.take_after_symbol(c);
        if c == 0 {
            0
        } else {
            extend(v, c)
        }
    }

    /// The next Huffman symbol (`None`: a code the table does not hold). Leaves at least 16
    /// bits in the buffer for the value bits that follow the code.
    #[inline(always)]
    fn symbol(&mut self, table: &Huffman) -> Option<u8> {
        self.ensure(32);
        let entry = table.lookup[(self.buf >> (64 - LOOKAHEAD)) as usize];
        if entry != 0 {
            let len = u32::from(entry >> 8);
            self.buf <<= len;
            self.n -= len;
            return Some(entry as u8);
        }
        self.symbol_slow(table)
    }

    #[cold]
    #[inline(never)]
    fn symbol_slow(&mut self, table: &Huffman) -> Option<u8> {
        for len in LOOKAHEAD + 1..=16 {
            let code = (self.buf >> (64 - len)) as i32;
            if code <= table.max_code[len as usize] {
                self.buf <<= len;
                self.n -= len;
                let index = (table.offset[len as usize] + code) as usize;
                return table.symbols.get(index).copied();
            }
        }
        None
    }

    #[cold]
    fn bad_code(&self) -> String {
        self.corrupt("a Huffman code that no table holds")
    }

    /// The message for a walk that failed: running out of data explains any later failure.
    fn corrupt(&self, what: &str) -> String {
        if self.overrun() {
            "the scan data ends before its last block (a truncated image?)".into()
        } else {
            format!("scan data: {what}")
        }
    }

    /// Ends a segment (a restart interval or a scan): the blocks must have used its data up to
    /// the last byte's padding bits. Leaves `pos` at the marker that follows.
    fn finish(&mut self) -> Check<()> {
        if self.overrun() {
            return Err(self.corrupt(""));
        }
        let mut extra = (self.n - self.fake) / 8;
        if !self.at_end {
            while self.next_byte().is_some() {
                extra += 1;
            }
        }
        if extra > 0 {
            return Err(format!(
                "scan data: {extra} bytes left over after the last block"
            ));
        }
        Ok(())
    }

    /// The marker code at `pos` (after fill bytes), or `None` at the end of the file.
    fn marker(&self) -> Option<(u8, usize)> {
        let mut p = self.pos;
        while self.data.get(p) == Some(&0xFF) {
            p += 1;
        }
        self.data.get(p).map(|&m| (m, p + 1))
    }

    /// Starts the next restart interval after `marker_end`.
    fn restart(&mut self, marker_end: usize) {
        *self = Bits::new(self.data, marker_end);
    }
}

enum Segment {
    Frame,
    Scan(ScanHeader),
    End,
    Other,
}

struct ScanHeader {
    /// (component index, DC table, AC table)
    components: Vec<(usize, usize, usize)>,
    ss: usize,
    se: usize,
    ah: u8,
    al: u8,
}

struct Parser<'a> {
    data: &'a [u8],
    pos: usize,
    max_side: usize,
    frame: Option<Frame>,
    dc_tables: [Option<Huffman>; 4],
    ac_tables: [Option<Huffman>; 4],
    /// Quantisation steps in zig-zag order (None: table not defined).
    quant: [Option<[u16; 64]>; 4],
    restart_interval: usize,
    scans: usize,
    adobe_transform: Option<u8>,
    jfif: bool,
}

impl<'a> Parser<'a> {
    fn new(data: &'a [u8], max_side: usize) -> Check<Self> {
        if !data.starts_with(&[0xFF, 0xD8]) {
            return Err("not a JPEG (no start-of-image marker)".into());
        }
        Ok(Self {
            data,
            pos: 2,
            max_side,
            frame: None,
            dc_tables: Default::default(),
            ac_tables: Default::default(),
            quant: [None; 4],
            restart_interval: 0,
            scans: 0,
            adobe_transform: None,
            jfif: false,
        })
    }

    fn run<S: Sink>(mut self, sink: &mut S) -> Check<(usize, usize)> {
        loop {
            match self.next_segment()? {
                Segment::Scan(header) => {
                    if self.frame.as_ref().is_some_and(|f| !f.progressive)
                        && sink.begin_scan(&self.scan_info(&header))
                    {
                        self.walk_scan(&header, sink)?;
                    } else {
                        self.walk_scan(&header, &mut NoSink)?;
                    }
                    self.scans += 1;
                }
                Segment::End => break,
                Segment::Frame | Segment::Other => {}
            }
        }
        let frame = self.frame.as_ref().ok_or("no frame header")?;
        for c in &frame.components {
            if frame.progressive && c.precision.iter().any(|&p| p != 0) {
                return Err(format!(
                    "progressive image whose scans leave component {} incomplete (a truncated \
                     file?)",
                    c.id
                ));
            }
            if !frame.progressive && c.scans != 1 {
                return Err(format!(
                    "component {} is in {} scans (a sequential image has exactly one)",
                    c.id, c.scans
                ));
            }
        }
        Ok((frame.height, frame.width))
    }

    /// Reads the marker at `pos` and its segment.
    fn next_segment(&mut self) -> Check<Segment> {
        let data = self.data;
        if self.pos >= data.len() {
            return Err("no end-of-image marker (a truncated file?)".into());
        }
        if data[self.pos] != 0xFF {
            let garbage = data[self.pos..].iter().take_while(|&&b| b != 0xFF).count();
            return Err(format!(
                "{garbage} bytes of garbage where a marker belongs (offset {})",
                self.pos
            ));
        }
        while data.get(self.pos) == Some(&0xFF) {
            self.pos += 1;
        }
        let Some(&marker) = data.get(self.pos) else {
            return Err("no end-of-image marker (a truncated file?)".into());
        };
        self.pos += 1;
        match marker {
            0xD9 => return Ok(Segment::End),
            0xD8 => return Err("a second start-of-image marker".into()),
            // Parameterless markers outside scans (libjpeg skips them too).
            0x01 | 0xD0..=0xD7 => return Ok(Segment::Other),
            0x00 => return Err("a zero marker code".into()),
            _ => {}
        }
        let len = data
            .get(self.pos..self.pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or("a marker segment cut off (a truncated file?)")?;
        if len < 2 || self.pos + len > data.len() {
            return Err(format!(
                "marker 0xFF{marker:02X} segment of length {len} does not fit the file \
                 (a truncated file?)"
            ));
        }
        let body = &data[self.pos + 2..self.pos + len];
        self.pos += len;
        match marker {
            0xC0..=0xC2 => {
                self.parse_frame(marker, body)?;
                Ok(Segment::Frame)
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => Err(format!(
                "unsupported JPEG process (marker 0xFF{marker:02X}: lossless, hierarchical or \
                 arithmetic-coded)"
            )),
            0xC4 => {
                self.parse_tables(body)?;
                Ok(Segment::Other)
            }
            0xDB => {
                self.parse_quant(body)?;
                Ok(Segment::Other)
            }
            0xDD => {
                let [a, b] = body else {
                    return Err("restart-interval segment of the wrong length".into());
                };
                self.restart_interval = usize::from(u16::from_be_bytes([*a, *b]));
                Ok(Segment::Other)
            }
            0xDA => Ok(Segment::Scan(self.parse_scan(body)?)),
            0xDC => Err("unsupported DNL marker (height defined after the scan)".into()),
            // Colour interpretation, for decoders (libjpeg's rules).
            0xE0 if body.starts_with(b"JFIF\0") => {
                self.jfif = true;
                Ok(Segment::Other)
            }
            0xEE if body.len() >= 12 && body.starts_with(b"Adobe") => {
                self.adobe_transform = Some(body[11]);
                Ok(Segment::Other)
            }
            _ => Ok(Segment::Other), // APPn, COM, extensions
        }
    }

    fn parse_frame(&mut self, marker: u8, body: &[u8]) -> Check<()> {
        if self.frame.is_some() {
            return Err("a second frame header".into());
        }
        if body.len() < 6 {
            return Err("frame header too short".into());
        }
        if body[0] != 8 {
            return Err(format!(
                "unsupported sample precision {} (8-bit only)",
                body[0]
            ));
        }
        let height = usize::from(u16::from_be_bytes([body[1], body[2]]));
        let width = usize::from(u16::from_be_bytes([body[3], body[4]]));
        if height == 0 || width == 0 {
            return Err(format!("image size {height}x{width} (HxW) is empty"));
        }
        if height > self.max_side || width > self.max_side {
            return Err(format!(
                "image size {height}x{width} (HxW) exceeds the limit of {} per side",
                self.max_side
            ));
        }
        let n = usize::from(body[5]);
        if !(1..=4).contains(&n) || body.len() != 6 + 3 * n {
            return Err(format!(
                "frame header with {n} components does not match its length"
            ));
        }
        let mut components = Vec::with_capacity(n);
        for c in body[6..].chunks_exact(3) {
            let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
                return Err(format!("component {} has invalid sampling or table", c[0]));
            }
            if components.iter().any(|x: &Component| x.id == c[0]) {
                return Err(format!("component id {} repeats", c[0]));
            }
            components.push(Component {
                id: c[0],
                h,
                v,
                quant: c[2],
                blocks_w: 0,
                blocks_h: 0,
                scans: 0,
                nonzero: Vec::new(),
                precision: [-1; 64],
            });
        }
        let h_max = components.iter().map(|c| c.h).max().unwrap_or(1);
        let v_max = components.iter().map(|c| c.v).max().unwrap_or(1);
        for c in &mut components {
            c.blocks_w = (width * c.h).div_ceil(h_max).div_ceil(8);
            c.blocks_h = (height * c.v).div_ceil(v_max).div_ceil(8);
        }
        self.frame = Some(Frame {
            progressive: marker == 0xC2,
            height,
            width,
            mcus_w: width.div_ceil(8 * h_max),
            mcus_h: height.div_ceil(8 * v_max),
            components,
        });
        Ok(())
    }

    fn parse_tables(&mut self, mut body: &[u8]) -> Check<()> {
        while !body.is_empty() {
            if body.len() < 17 {
                return Err("Huffman table segment cut off".into());
            }
            let (class, id) = (body[0] >> 4, usize::from(body[0] & 15));
            if class > 1 || id > 3 {
                return Err(format!("invalid Huffman table class {class} / id {id}"));
            }
            let counts: [u8; 16] = body[1..17].try_into().expect("16 bytes");
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            if total > 256 || body.len() < 17 + total {
                return Err("Huffman table segment cut off or overfull".into());
            }
            let table = Huffman::new(&counts, &body[17..17 + total])?;
            if class == 0 {
                if let Some(&bad) = table.symbols.iter().find(|&&s| s > 15) {
                    return Err(format!("DC Huffman table with symbol {bad}"));
                }
                self.dc_tables[id] = Some(table);
            } else {
                self.ac_tables[id] = Some(table);
            }
            body = &body[17 + total..];
        }
        Ok(())
    }

    fn parse_quant(&mut self, mut body: &[u8]) -> Check<()> {
        while !body.is_empty() {
            let (precision, id) = (body[0] >> 4, usize::from(body[0] & 15));
            let size = if precision == 0 { 64 } else { 128 };
            if precision > 1 || id > 3 || body.len() < 1 + size {
                return Err("invalid or cut-off quantisation table".into());
            }
            let mut steps = [0u16; 64];
            for (k, step) in steps.iter_mut().enumerate() {
                *step = if precision == 0 {
                    u16::from(body[1 + k])
                } else {
                    u16::from_be_bytes([body[1 + 2 * k], body[2 + 2 * k]])
                };
            }
            if steps.contains(&0) {
                return Err(format!("quantisation table {id} holds a zero step"));
            }
            self.quant[id] = Some(steps);
            body = &body[1 + size..];
        }
        Ok(())
    }

    fn parse_scan(&mut self, body: &[u8]) -> Check<ScanHeader> {
        let frame = self
            .frame
            .as_ref()
            .ok_or("a scan before the frame header")?;
        let n = usize::from(*body.first().ok_or("empty scan header")?);
        if !(1..=4).contains(&n) || body.len() != 4 + 2 * n {
            return Err(format!(
                "scan header with {n} components does not match its length"
            ));
        }
        let mut components = Vec::with_capacity(n);
        for c in body[1..1 + 2 * n].chunks_exact(2) {
            let index = frame
                .components
                .iter()
                .position(|x| x.id == c[0])
                .ok_or_else(|| format!("scan names component {} not in the frame", c[0]))?;
            if components.iter().any(|&(i, _, _)| i == index) {
                return Err(format!("component {} repeats in one scan", c[0]));
            }
            if self.quant[usize::from(frame.components[index].quant)].is_none() {
                return Err(format!(
                    "quantisation table {} of component {} is not defined",
                    frame.components[index].quant, c[0]
                ));
            }
            let (dc, ac) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
            if dc > 3 || ac > 3 {
                return Err(format!("scan names Huffman table {dc}/{ac}"));
            }
            components.push((index, dc, ac));
        }
        let tail = &body[1 + 2 * n..];
        let (ss, se) = (usize::from(tail[0]), usize::from(tail[1]));
        let (ah, al) = (tail[2] >> 4, tail[2] & 15);
        if frame.progressive {
            let ok = ss <= se
                && se <= 63
                && (ss == 0) == (se == 0)
                && (ss == 0 || n == 1)
                && al <= 13
                && (ah == 0 || ah == al + 1);
            if !ok {
                return Err(format!(
                    "invalid progressive scan (Ss={ss}, Se={se}, Ah={ah}, Al={al}, {n} components)"
                ));
            }
        } else {
            if (ss, se, ah, al) != (0, 63, 0, 0) {
                return Err(format!(
                    "sequential scan with Ss={ss}, Se={se}, Ah={ah}, Al={al} (expected 0, 63, 0, 0)"
                ));
            }
            let blocks: usize = components
                .iter()
                .map(|&(i, _, _)| frame.components[i].h * frame.components[i].v)
                .sum();
            if n > 1 && blocks > 10 {
                return Err(format!("{blocks} blocks per MCU (at most 10)"));
            }
        }
        Ok(ScanHeader {
            components,
            ss,
            se,
            ah,
            al,
        })
    }

    fn table<'t>(tables: &'t [Option<Huffman>; 4], id: usize, kind: &str) -> Check<&'t Huffman> {
        tables[id]
            .as_ref()
            .ok_or_else(|| format!("scan uses {kind} Huffman table {id}, which is not defined"))
    }

    fn scan_info(&self, scan: &ScanHeader) -> ScanInfo<'_> {
        let frame = self.frame.as_ref().expect("parse_scan checked");
        ScanInfo {
            height: frame.height,
            width: frame.width,
            frame: frame.components.iter().map(|c| (c.id, c.h, c.v)).collect(),
            scan: scan.components.iter().map(|&(i, _, _)| i).collect(),
            quant: scan
                .components
                .iter()
                .map(|&(i, _, _)| {
                    self.quant[usize::from(frame.components[i].quant)]
                        .as_ref()
                        .expect("parse_scan checked")
                })
                .collect(),
            mcus_w: frame.mcus_w,
            mcus_h: frame.mcus_h,
            adobe_transform: self.adobe_transform,
            jfif: self.jfif,
        }
    }

    /// Walks the entropy-coded data of one scan, leaving `pos` at the marker after it; a
    /// sequential scan's blocks go to `sink`.
    fn walk_scan<S: Sink>(&mut self, scan: &ScanHeader, sink: &mut S) -> Check<()> {
        let frame = self.frame.as_mut().expect("parse_scan checked");
        let progressive = frame.progressive;
        let dc_first = scan.ss == 0 && scan.ah == 0;
        let needs_dc = scan.ss == 0 && scan.ah == 0;
        let needs_ac = scan.ss > 0 || !progressive;
        let mut dc: Vec<Option<&Huffman>> = Vec::with_capacity(scan.components.len());
        let mut ac: Vec<Option<&Huffman>> = Vec::with_capacity(scan.components.len());
        for &(_, d, a) in &scan.components {
            dc.push(if needs_dc {
                Some(Self::table(&self.dc_tables, d, "DC")?)
            } else {
                None
            });
            ac.push(if needs_ac {
                Some(Self::table(&self.ac_tables, a, "AC")?)
            } else {
                None
            });
        }
        let mut limits = [Limits::default(); 4];
        for (j, &(i, _, _)) in scan.components.iter().enumerate() {
            let c = &mut frame.components[i];
            if !progressive || dc_first {
                c.scans += 1;
            }
            if progressive {
                for k in scan.ss..=scan.se {
                    let expected = if scan.ah == 0 { -1 } else { scan.ah as i8 };
                    if c.precision[k] != expected {
                        return Err(format!(
                            "progressive scan out of order: coefficient {k} of component {} \
                             refined from {} bits to Ah={} (a corrupt file?)",
                            c.id, c.precision[k], scan.ah
                        ));
                    }
                    c.precision[k] = scan.al as i8;
                }
            }
            if progressive && scan.ss > 0 && c.nonzero.is_empty() {
                let blocks = c.blocks_w * c.blocks_h; // at most (MAX_SIDE / 8)²
                c.nonzero = vec![0u64; blocks];
            }
            let steps = self.quant[usize::from(c.quant)]
                .as_ref()
                .expect("parse_scan checked");
            limits[j] = Limits::new(steps, scan.al);
        }
        // One component alone is scanned block by block; several, by MCU.
        let (units_w, units_h) = if scan.components.len() == 1 {
            let c = &frame.components[scan.components[0].0];
            (c.blocks_w, c.blocks_h)
        } else {
            (frame.mcus_w, frame.mcus_h)
        };
        let total = units_w * units_h;
        let interval = if self.restart_interval == 0 {
            total
        } else {
            self.restart_interval
        };
        let mut bits = Bits::new(self.data, self.pos);
        let mut walker = Walker {
            progressive,
            dc_pred: [0; 4],
            eob_run: 0,
            ss: scan.ss,
            se: scan.se,
            al: scan.al,
            limits,
        };
        let mut restarts = 0usize;
        // Unit position and the units left in the restart interval, counted (no divisions).
        let (mut ux, mut uy) = (0usize, 0usize);
        let mut left_in_interval = interval;
        for _ in 0..total {
            if left_in_interval == 0 {
                left_in_interval = interval;
                bits.finish()?;
                match bits.marker() {
                    Some((m @ 0xD0..=0xD7, end)) if usize::from(m - 0xD0) == restarts % 8 => {
                        bits.restart(end);
                    }
                    Some((m, _)) => {
                        return Err(format!(
                            "scan data: marker 0xFF{m:02X} where restart marker RST{} \
                             belongs",
                            restarts % 8
                        ));
                    }
                    None => return Err(bits.corrupt("end of file inside the scan")),
                }
                restarts += 1;
                walker.dc_pred = [0; 4];
                walker.eob_run = 0;
            }
            left_in_interval -= 1;
            for (j, &(i, _, _)) in scan.components.iter().enumerate() {
                let c = &mut frame.components[i];
                if scan.components.len() == 1 {
                    let block = uy * c.blocks_w + ux;
                    let has_ac =
                        walker.block(&mut bits, c, j, block, scan.ah, dc[j], ac[j], sink)?;
                    sink.end_block(j, ux, uy, has_ac);
                } else {
                    let (h, v) = (c.h, c.v);
                    for by in uy * v..uy * v + v {
                        for bx in ux * h..ux * h + h {
                            let has_ac =
                                walker.block(&mut bits, c, j, 0, scan.ah, dc[j], ac[j], sink)?;
                            sink.end_block(j, bx, by, has_ac);
                        }
                    }
                }
            }
            if bits.overrun() {
                return Err(bits.corrupt(""));
            }
            ux += 1;
            if ux == units_w {
                (ux, uy) = (0, uy + 1);
            }
        }
        bits.finish()?;
        self.pos = bits.pos;
        Ok(())
    }
}

/// What the quantisation steps allow one component's coefficients in one scan.
#[derive(Clone, Copy)]
struct Limits {
    /// Largest |DC| (at full precision).
    dc: u32,
    /// Largest magnitude category of each AC coefficient as sent (shifted down by Al).
    /// Indices 64..80 (past the block, which a run can reach) allow nothing.
    ac_category: [u8; 80],
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            dc: 0,
            ac_category: [0; 80],
        }
    }
}

/// [`Limits::ac_category`] of 8-bit steps at full precision, computed once (per image it cost
/// 63 divisions per component, a few per cent of decoding a small crop).
const AC_CATEGORY_OF_STEP: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut step = 1;
    while step < 256 {
        let mut magnitude = COEF_BOUND / step as u32 + 1;
        if magnitude > MAX_AC {
            magnitude = MAX_AC;
        }
        table[step] = (32 - magnitude.leading_zeros()) as u8;
        step += 1;
    }
    table
};

impl Limits {
    fn new(steps: &[u16; 64], al: u8) -> Self {
        let mut ac_category = [0u8; 80];
        for (k, c) in ac_category.iter_mut().enumerate().take(64).skip(1) {
            *c = match AC_CATEGORY_OF_STEP.get(usize::from(steps[k])) {
                Some(&table) if al == 0 => table,
                _ => category(max_magnitude(steps[k]).min(MAX_AC) >> al),
            };
        }
        Self {
            dc: max_magnitude(steps[0]),
            ac_category,
        }
    }
}

/// Per-scan decoding state.
struct Walker {
    progressive: bool,
    dc_pred: [i32; 4],
    eob_run: u32,
    ss: usize,
    se: usize,
    al: u8,
    limits: [Limits; 4],
}

impl Walker {
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn block<S: Sink>(
        &mut self,
        bits: &mut Bits<'_>,
        c: &mut Component,
        j: usize,
        block: usize,
        ah: u8,
        dc: Option<&Huffman>,
        ac: Option<&Huffman>,
        sink: &mut S,
    ) -> Check<bool> {
        if !self.progressive {
            self.dc(bits, j, dc.expect("table checked"))?;
            let coefficients = sink.start_block(j, self.dc_pred[j]);
            let table = ac.expect("table checked");
            return Self::ac_sequential::<S>(bits, table, &self.limits[j], coefficients);
        }
        if self.ss == 0 {
            return match dc {
                Some(table) => self.dc(bits, j, table).map(|()| false),
                None => {
                    bits.skip(1); // DC refinement: one bit per block
                    Ok(false)
                }
            };
        }
        let table = ac.expect("table checked");
        let nonzero = &mut c.nonzero[block];
        if ah == 0 {
            self.ac_first(bits, table, nonzero, j).map(|()| false)
        } else {
            self.ac_refine(bits, table, nonzero).map(|()| false)
        }
    }

    #[inline(always)]
    fn dc(&mut self, bits: &mut Bits<'_>, j: usize, table: &Huffman) -> Check<()> {
        let Some(category) = bits.symbol(table) else {
            return Err(bits.bad_code());
        };
        if category > MAX_DC_CATEGORY {
            return Err(Self::bad_dc_category(bits, category));
        }
        let pred = self.dc_pred[j] + bits.value_after_symbol(category);
        self.dc_pred[j] = pred;
        // An arithmetic shift rounds negative values down: allow one step of Al.
        if pred.unsigned_abs() << self.al > self.limits[j].dc + (1 << self.al) {
            return Err(self.dc_too_large(bits, pred));
        }
        Ok(())
    }

    #[cold]
    fn bad_dc_category(bits: &Bits<'_>, category: u8) -> String {
        bits.corrupt(&format!("DC difference category {category}"))
    }

    #[cold]
    fn dc_too_large(&self, bits: &Bits<'_>, pred: i32) -> String {
        bits.corrupt(&format!(
            "DC value {} beyond what its quantisation step allows",
            pred << self.al
        ))
    }

    /// The AC coefficients of one block (sequential): the hot loop of the check, on a local
    /// copy of the bit buffer (written back around refills and slow codes). With a sink that
    /// wants values, each coefficient is decoded, dequantised and written to `coefficients`;
    /// otherwise value bits are skipped unread. Returns whether AC coefficients may have been
    /// written (false: the block ended before any).
    #[inline(always)]
    fn ac_sequential<S: Sink>(
        bits: &mut Bits<'_>,
        table: &Huffman,
        limits: &Limits,
        mut coefficients: Option<&mut [i32; 64]>,
    ) -> Check<bool> {
        let categories = &limits.ac_category;
        let (mut buf, mut n) = (bits.buf, bits.n);
        let mut k = 1usize;
        let result = loop {
            if n < 32 {
                (bits.buf, bits.n) = (buf, n);
                bits.refill();
                (buf, n) = (bits.buf, bits.n);
            }
            let entry = table.lookup[(buf >> (64 - LOOKAHEAD)) as usize];
            let (rs, value) = if entry != 0 {
                // A code of at most LOOKAHEAD bits, then its value bits: the buffer holds both
                // (at least 32 bits; the value is at most 15 bits).
                let len = u32::from(entry >> 8);
                let size = u32::from(entry as u8 & 15);
                let value = if S::VALUES && size > 0 {
                    extend(((buf << len) >> (64 - size)) as u32, size)
                } else {
                    0
                };
                buf <<= len + size;
                n -= len + size;
                (entry as u8, value)
            } else {
                (bits.buf, bits.n) = (buf, n);
                let Some(rs) = bits.symbol(table) else {
                    break Err(bits.bad_code());
                };
                let value = if S::VALUES {
                    bits.value_after_symbol(rs & 15)
                } else {
                    bits.drop_after_symbol(u32::from(rs & 15));
                    0
                };
                (buf, n) = (bits.buf, bits.n);
                (rs, value)
            };
            let (run, size) = (usize::from(rs >> 4), rs & 15);
            if size == 0 {
                if run != 15 {
                    break Ok(k > 1); // end of block
                }
                k += 16;
                if k >= 64 {
                    break if k == 64 {
                        Ok(true)
                    } else {
                        (bits.buf, bits.n) = (buf, n);
                        Err(bits.corrupt("a zero run past the end of a block"))
                    };
                }
                continue;
            }
            k += run;
            // One test for both: past index 63 the allowed category is 0 (k is at most 78).
            if size > categories[k] {
                (bits.buf, bits.n) = (buf, n);
                break Err(if k > 63 {
                    bits.corrupt("a coefficient past the end of a block")
                } else {
                    Self::too_large(bits, k, size)
                });
            }
            if let Some(block) = coefficients.as_mut() {
                block[usize::from(UNZIGZAG[k])] = value;
            }
            k += 1;
            if k == 64 {
                break Ok(true);
            }
        };
        (bits.buf, bits.n) = (buf, n);
        result
    }

    #[cold]
    fn too_large(bits: &Bits<'_>, k: usize, size: u8) -> String {
        bits.corrupt(&format!(
            "AC coefficient {k} of magnitude category {size}, beyond its quantisation step"
        ))
    }

    fn ac_first(
        &mut self,
        bits: &mut Bits<'_>,
        table: &Huffman,
        nonzero: &mut u64,
        j: usize,
    ) -> Check<()> {
        if self.eob_run > 0 {
            self.eob_run -= 1;
            return Ok(());
        }
        let mut k = self.ss;
        while k <= self.se {
            let Some(rs) = bits.symbol(table) else {
                return Err(bits.bad_code());
            };
            let (run, size) = (usize::from(rs >> 4), rs & 15);
            if size == 0 {
                if run < 15 {
                    self.eob_run = (1 << run) - 1 + bits.take_after_symbol(run as u32);
                    return Ok(());
                }
                k += 16;
                if k > self.se + 1 {
                    return Err(bits.corrupt("a zero run past the end of the band"));
                }
                continue;
            }
            k += run;
            if k > self.se {
                return Err(bits.corrupt("a coefficient past the end of the band"));
            }
            if size > self.limits[j].ac_category[k] {
                return Err(Self::too_large(bits, k, size));
            }
            bits.drop_after_symbol(u32::from(size));
            *nonzero |= 1 << k;
            k += 1;
        }
        Ok(())
    }

    /// A refinement scan: one correction bit per coefficient already non-zero, and new
    /// coefficients of magnitude one placed among the zero ones (ITU T.81 G.1.2.3).
    fn ac_refine(&mut self, bits: &mut Bits<'_>, table: &Huffman, nonzero: &mut u64) -> Check<()> {
        let mut k = self.ss;
        if self.eob_run == 0 {
            while k <= self.se {
                let Some(rs) = bits.symbol(table) else {
                    return Err(bits.bad_code());
                };
                let (mut run, size) = (i32::from(rs >> 4), rs & 15);
                match size {
                    0 if run < 15 => {
                        self.eob_run = (1 << run) + bits.take_after_symbol(run as u32);
                        break;
                    }
                    0 => {} // sixteen zero coefficients
                    1 => bits.drop_after_symbol(1),
                    _ => return Err(bits.corrupt(&format!("refinement magnitude {size}"))),
                }
                // Pass over `run` zero coefficients, correcting the non-zero ones met on the way;
                // the new coefficient (if any) takes the zero one after them.
                let mut placed = false;
                while k <= self.se {
                    if *nonzero & (1 << k) != 0 {
                        bits.skip(1);
                    } else {
                        if run == 0 {
                            if size != 0 {
                                *nonzero |= 1 << k;
                            }
                            placed = true;
                            k += 1;
                            break;
                        }
                        run -= 1;
                    }
                    k += 1;
                }
                if !placed {
                    return Err(bits.corrupt("a refinement run past the end of the band"));
                }
            }
        }
        if self.eob_run > 0 {
            while k <= self.se {
                if *nonzero & (1 << k) != 0 {
                    bits.skip(1);
                }
                k += 1;
            }
            self.eob_run -= 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{check, frame_size};

    /// 16x16 RGB JPEGs written by Pillow (libjpeg), quality 60: baseline and progressive.
    const BASELINE: &[&str] = &[
    "ffd8ffe000104a46494600010100000100010000ffdb0043000d090a0b0a080d0b0a0b0e0e0d0f13201513121213271c",
    "1e17202e2931302e292d2c333a4a3e333646372c2d405741464c4e525352323e5a615a50604a51524fffdb0043010e0e",
    "0e131113261515264f352d354f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f",
    "4f4f4f4f4f4f4f4f4f4f4f4f4f4fffc00011080010001003012200021101031101ffc4001f0000010501010101010100",
    "000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d010203000411051221",
    "31410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a",
    "434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a9293949596979899",
    "9aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1",
    "f2f3f4f5f6f7f8f9faffc4001f0100030101010101010101010000000000000102030405060708090a0bffc400b51100",
    "020102040403040705040400010277000102031104052131061241510761711322328108144291a1b1c109233352f015",
    "6272d10a162434e125f11718191a262728292a35363738393a434445464748494a535455565758595a63646566676869",
    "6a737475767778797a82838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4",
    "c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9faffda000c03010002110311003f0093",
    "50d704e308b9fa554b3d785816257ef565df42745203b799bfd79a75ae9a759190db3156eae17d9b4a378cb76378a952",
    "a4a3295efb9fffd9",
    ];
    const PROGRESSIVE: &[&str] = &[
    "ffd8ffe000104a46494600010100000100010000ffdb0043000d090a0b0a080d0b0a0b0e0e0d0f13201513121213271c",
    "1e17202e2931302e292d2c333a4a3e333646372c2d405741464c4e525352323e5a615a50604a51524fffdb0043010e0e",
    "0e131113261515264f352d354f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f",
    "4f4f4f4f4f4f4f4f4f4f4f4f4f4fffc20011080010001003012200021101031101ffc400170000030100000000000000",
    "00000000000001020304ffc4001501010100000000000000000000000000000001ffda000c0301000210031000000168",
    "e535ffc4001a100002020300000000000000000000000000030213011112ffda000801010001050263f641fc13c52457",
    "71ffc4001811000203000000000000000000000000000102001113ffda0008010301013f01d4aad133ffc40019110001",
    "0500000000000000000000000000120001032131ffda0008010201013f01288729d7ffc4001510010100000000000000",
    "000000000000001051ffda0008010100063f0229ffc4001a100002020300000000000000000000000000210141113151",
    "ffda0008010100013f21a3036b65f963bb07ffda000c030100020003000000107fffc400171100030100000000000000",
    "00000000000000011131ffda0008010301013f1068e8ba7fffc400171101010101000000000000000000000000011100",
    "31ffda0008010201013f106c0ae8efffc4001810010003010000000000000000000000000100112171ffda0008010100",
    "013f10035772034c110767621b319fffd9",
    ];

    fn bytes(hex: &[&str]) -> Vec<u8> {
        let hex: String = hex.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn first_scan(data: &[u8]) -> usize {
        data.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap()
    }

    #[test]
    fn valid_images_pass() {
        for image in [bytes(BASELINE), bytes(PROGRESSIVE)] {
            assert_eq!(check(&image, 8192), Ok((16, 16)));
            assert_eq!(frame_size(&image, 16), Ok((16, 16)));
        }
    }

    #[test]
    fn every_cut_with_an_end_marker_appended_is_refused() {
        for image in [bytes(BASELINE), bytes(PROGRESSIVE)] {
            for cut in first_scan(&image)..image.len() - 2 {
                let mut damaged = image[..cut].to_vec();
                damaged.extend_from_slice(&[0xFF, 0xD9]);
                assert!(check(&damaged, 8192).is_err(), "cut at {cut} passed");
                assert!(
                    check(&image[..cut], 8192).is_err(),
                    "cut at {cut} without EOI passed"
                );
            }
        }
    }

    #[test]
    fn left_over_scan_data_and_stray_bytes_are_refused() {
        let image = bytes(BASELINE);
        let end = image.len() - 2;
        let extra = [&image[..end], &[0x12, 0x34], &image[end..]].concat();
        assert!(check(&extra, 8192).unwrap_err().contains("left over"));
        let at = first_scan(&image);
        let stray = [&image[..at], &[0x00, 0x01], &image[at..]].concat();
        assert!(check(&stray, 8192).unwrap_err().contains("garbage"));
        assert!(check(b"\xFF\xD8\xFF\xD9", 8192).is_err());
        assert!(check(b"GIF89a", 8192).unwrap_err().contains("not a JPEG"));
    }

    #[test]
    fn category_table_matches_the_formula() {
        for step in 1..256u16 {
            let expected = super::category(super::max_magnitude(step).min(super::MAX_AC));
            assert_eq!(
                super::AC_CATEGORY_OF_STEP[usize::from(step)],
                expected,
                "step {step}"
            );
        }
    }

    #[test]
    fn sizes_are_bounded_before_any_scan() {
        let mut image = bytes(BASELINE);
        let sof = image.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        image[sof + 5..sof + 9].copy_from_slice(&[0x2E, 0xE0, 0x2E, 0xE0]); // 12000x12000
        let err = check(&image, 8192).unwrap_err();
        assert!(err.contains("12000x12000") && err.contains("8192"), "{err}");
        assert!(frame_size(&bytes(BASELINE), 15).is_err());
    }
}
