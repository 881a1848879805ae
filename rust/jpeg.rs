//! Record values of a training db: raw JPEG bytes or a Caffe-style protobuf `Datum` wrapping
//! them, decoded to RGB straight into a caller's buffer (optionally mirrored).
//!
//! Every JPEG passes [`scan::check`] before it is decoded: the decoder fills what a truncated
//! or corrupt stream lacks, the check refuses it (see `docs/design.md §3`, training db). The
//! kinds training crops are (sequential, grey or YCbCr 4:4:4 / 4:2:2 / 4:2:0) are decoded by
//! `decode` in the same pass as the check; the rest by zune-jpeg after the check.

mod color;
mod decode;
mod idct;
mod scan;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

const JPEG_SOI: [u8; 2] = [0xFF, 0xD8];

/// Largest image side accepted; a header claiming more is treated as corrupt.
pub const MAX_SIDE: usize = 8192;

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = buf.get(*pos) else {
            return Err("truncated protobuf varint".into());
        };
        *pos += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("protobuf varint longer than 10 bytes".into())
}

/// The image bytes of a protobuf `Datum`: length-delimited field 4 (`data` in Caffe's schema),
/// or field 1 when it is length-delimited (what some writers emit by mistake). Other fields are
/// skipped by wire type.
pub fn datum_image(buf: &[u8]) -> Result<&[u8], String> {
    let mut pos = 0;
    let mut field1: Option<&[u8]> = None;
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 0 {
            return Err("protobuf field number 0".into());
        }
        match wire {
            0 => {
                read_varint(buf, &mut pos)?;
            }
            1 | 5 => {
                pos += if wire == 1 { 8 } else { 4 };
                if pos > buf.len() {
                    return Err("truncated protobuf fixed-width field".into());
                }
            }
            2 => {
                let len = read_varint(buf, &mut pos)?;
                let end = pos
                    .checked_add(usize::try_from(len).map_err(|_| "protobuf length overflows")?)
                    .filter(|&e| e <= buf.len())
                    .ok_or("truncated protobuf length-delimited field")?;
                let payload = &buf[pos..end];
                pos = end;
                if field == 4 {
                    return Ok(payload);
                }
                if field == 1 {
                    field1 = Some(payload);
                }
            }
            _ => {
                return Err(format!(
                    "unsupported protobuf wire type {wire} (field {field})"
                ))
            }
        }
    }
    field1.ok_or_else(|| "protobuf Datum without image data (field 4 or 1)".into())
}

/// The JPEG bytes of a stored value: the value itself when it starts with a JPEG SOI marker,
/// else the image field of a `Datum`, which must then be a JPEG.
pub fn jpeg_payload(value: &[u8]) -> Result<&[u8], String> {
    if value.starts_with(&JPEG_SOI) {
        return Ok(value);
    }
    let inner = datum_image(value).map_err(|e| format!("neither a JPEG nor a Datum: {e}"))?;
    if !inner.starts_with(&JPEG_SOI) {
        return Err(
            "Datum image data is not a JPEG (unencoded Datum pixels are not supported)".into(),
        );
    }
    Ok(inner)
}

fn options() -> DecoderOptions {
    // Strict mode: a truncated or corrupt stream is an error, never a partly grey image.
    DecoderOptions::new_fast()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE)
}

type Decoder<'a> = JpegDecoder<ZCursor<&'a [u8]>>;

/// A decoder of `jpeg` with its headers read, and the image's (height, width).
fn open(jpeg: &[u8]) -> Result<(Decoder<'_>, usize, usize), String> {
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(jpeg), options());
    decoder
        .decode_headers()
        .map_err(|e| format!("corrupt JPEG: {e:?}"))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or("corrupt JPEG: no frame header")?;
    Ok((decoder, h, w))
}

/// [`scan::check`] with its message marked as a JPEG's.
fn strict_check(jpeg: &[u8], max_side: usize) -> Result<(usize, usize), String> {
    scan::check(jpeg, max_side).map_err(|e| format!("corrupt JPEG: {e}"))
}

/// (height, width) of a JPEG whose headers and scan data pass the strict check.
pub fn jpeg_size(jpeg: &[u8]) -> Result<(usize, usize), String> {
    strict_check(jpeg, MAX_SIDE)
}

/// (height, width) of a JPEG from its frame header alone, refused above `max_side` per side.
pub fn jpeg_header_size(jpeg: &[u8], max_side: usize) -> Result<(usize, usize), String> {
    scan::frame_size(jpeg, max_side).map_err(|e| format!("corrupt JPEG: {e}"))
}

/// Checks that `jpeg` is complete and uncorrupted (the strict check, then a full decode) with
/// no side above `max_side`; returns its (height, width). What `pack` stores passes this, and
/// so decodes in the reader.
pub fn validate(jpeg: &[u8], max_side: usize) -> Result<(usize, usize), String> {
    let (height, width) = strict_check(jpeg, max_side.min(MAX_SIDE))?;
    let bytes = height * width * 3; // at most MAX_SIDE² × 3
    let mut pixels: Vec<u8> = Vec::new();
    pixels
        .try_reserve_exact(bytes)
        .map_err(|_| format!("cannot allocate {bytes} bytes to decode a {height}x{width} image"))?;
    pixels.resize(bytes, 0);
    decode_rgb_into(jpeg, &mut pixels, height, width, false)?;
    Ok((height, width))
}

/// Decodes `jpeg` as RGB into `out` (exactly `height * width * 3` bytes), mirrored
/// left-right when `flip`. The image must be exactly `height` × `width`.
pub fn decode_rgb_into(
    jpeg: &[u8],
    out: &mut [u8],
    height: usize,
    width: usize,
    flip: bool,
) -> Result<(), String> {
    debug_assert_eq!(out.len(), height * width * 3);
    let ((h, w), decoded) = decode::check_and_decode(jpeg, MAX_SIDE, out, (height, width), flip)
        .map_err(|e| format!("corrupt JPEG: {e}"))?;
    if (h, w) != (height, width) {
        return Err(format!(
            "image is {h}x{w} (HxW) but the db's first record is {height}x{width}"
        ));
    }
    if decoded {
        return Ok(());
    }
    decode_general(jpeg, out, height, width, flip)
}

/// Decodes with zune-jpeg a JPEG that passed the strict check (what the fast path leaves).
fn decode_general(
    jpeg: &[u8],
    out: &mut [u8],
    height: usize,
    width: usize,
    flip: bool,
) -> Result<(), String> {
    let (mut decoder, h, w) = open(jpeg)?;
    if (h, w) != (height, width) {
        return Err(format!(
            "the decoder reads {h}x{w} (HxW) where the headers say {height}x{width}"
        ));
    }
    decoder
        .decode_into(out)
        .map_err(|e| format!("corrupt JPEG: {e:?}"))?;
    if flip {
        mirror_rows(out, width);
    }
    Ok(())
}

/// Mirrors every row of an RGB image in place.
pub fn mirror_rows(image: &mut [u8], width: usize) {
    for row in image.chunks_exact_mut(width * 3) {
        let (mut left, mut right) = (0, width - 1);
        while left < right {
            for c in 0..3 {
                row.swap(left * 3 + c, right * 3 + c);
            }
            left += 1;
            right -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn field_bytes(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    #[test]
    fn datum_field_4_wins_and_other_fields_are_skipped() {
        let mut d = Vec::new();
        varint(1 << 3, &mut d); // channels = 3 (varint field 1, as in Caffe)
        varint(3, &mut d);
        varint(5 << 3 | 5, &mut d); // a fixed32 field
        d.extend_from_slice(&[1, 2, 3, 4]);
        field_bytes(4, &[0xFF, 0xD8, 9], &mut d);
        varint(5 << 3, &mut d); // label
        varint(300, &mut d);
        assert_eq!(datum_image(&d).unwrap(), &[0xFF, 0xD8, 9]);
        assert_eq!(jpeg_payload(&d).unwrap(), &[0xFF, 0xD8, 9]);
    }

    #[test]
    fn datum_field_1_is_accepted() {
        let mut d = Vec::new();
        field_bytes(1, &[0xFF, 0xD8, 7, 7], &mut d);
        varint(2 << 3, &mut d);
        varint(5, &mut d);
        assert_eq!(jpeg_payload(&d).unwrap(), &[0xFF, 0xD8, 7, 7]);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(jpeg_payload(b"").is_err());
        assert!(jpeg_payload(b"\x22\x10abc")
            .unwrap_err()
            .contains("truncated"));
        let mut d = Vec::new();
        field_bytes(4, b"not a jpeg", &mut d);
        assert!(jpeg_payload(&d).unwrap_err().contains("not a JPEG"));
        assert!(jpeg_payload(&[0x0F]).is_err()); // wire type 7
    }

    #[test]
    fn mirror_reverses_pixels() {
        let mut img: Vec<u8> = (0..18).collect(); // 2 rows x 3 pixels
        mirror_rows(&mut img, 3);
        assert_eq!(
            img,
            vec![6, 7, 8, 3, 4, 5, 0, 1, 2, 15, 16, 17, 12, 13, 14, 9, 10, 11]
        );
    }

    #[test]
    fn garbage_after_soi_is_an_error() {
        let mut out = vec![0u8; 12];
        assert!(decode_rgb_into(&[0xFF, 0xD8, 0, 1, 2], &mut out, 2, 2, false).is_err());
        assert!(jpeg_size(&[0xFF, 0xD8]).is_err());
    }
}
