"""An insightface / MXNet RecordIO writer for tests, written from the format description
(docs/design.md §3), independently of f2c's reader.

A part is ``u32 magic 0xced7230a``, ``u32 (flag << 29) | length``, the bytes, zero padding to a
multiple of 4. A payload is cut wherever the magic sits at a 4-byte-aligned offset (the magic is
dropped there): one piece → flag 0; several → 1 (first), 2 (middle), 3 (last). An image payload
is ``IRHeader`` (``u32 flag, f32 label, u64 id, u64 id2``), ``flag`` f32 labels, the image.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)


def ir_payload(
    label: float = 0.0,
    image: bytes = b"",
    *,
    labels: Sequence[float] = (),
    record_id: int = 0,
    record_id2: int = 0,
) -> bytes:
    """``IRHeader`` + labels + image; with ``labels``, flag = their count (as MXNet's pack)."""
    head = struct.pack("<IfQQ", len(labels), label, record_id, record_id2)
    return head + struct.pack(f"<{len(labels)}f", *labels) + image


def split_at_magic(payload: bytes) -> list[bytes]:
    pieces, begin = [], 0
    for at in range(0, len(payload) - 3, 4):
        if payload[at : at + 4] == MAGIC_BYTES:
            pieces.append(payload[begin:at])
            begin = at + 4
    pieces.append(payload[begin:])
    return pieces


def encode_record(payload: bytes) -> bytes:
    pieces = split_at_magic(payload)
    out = bytearray()
    for i, piece in enumerate(pieces):
        if len(pieces) == 1:
            flag = 0
        elif i == 0:
            flag = 1
        elif i == len(pieces) - 1:
            flag = 3
        else:
            flag = 2
        out += struct.pack("<II", MAGIC, (flag << 29) | len(piece)) + piece
        out += b"\0" * (-len(piece) % 4)
    return bytes(out)


def write_pack(
    rec: Path, payloads: Sequence[bytes], *, keys: Sequence[int] | None = None, idx: bool = True
) -> list[int]:
    """Writes ``rec`` and (unless ``idx`` is false) the ``.idx`` beside it; returns offsets."""
    keys = list(range(len(payloads))) if keys is None else list(keys)
    offsets, data = [], bytearray()
    for payload in payloads:
        offsets.append(len(data))
        data += encode_record(payload)
    rec.write_bytes(bytes(data))
    if idx:
        lines = "".join(f"{k}\t{o}\n" for k, o in zip(keys, offsets, strict=True))
        rec.with_suffix(".idx").write_text(lines)
    return offsets


def insightface_payloads(identities: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Header record 0, the images (label = identity index), one identity record each."""
    images = [(c, image) for c, imgs in enumerate(identities) for image in imgs]
    first = 1 + len(images)
    end = first + len(identities)
    out = [ir_payload(labels=(float(first), float(end)))]
    out += [ir_payload(float(c), image) for c, image in images]
    start = 1
    for imgs in identities:
        out.append(ir_payload(labels=(float(start), float(start + len(imgs)))))
        start += len(imgs)
    return out


def smooth_jpeg(rng: np.random.Generator, size: int = 32, quality: int = 92) -> bytes:
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def with_comment(jpeg: bytes, comment: bytes) -> bytes:
    """``jpeg`` with a COM segment holding ``comment`` right after its SOI marker."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def rec_from_rows(rec: Path, images_by_identity: Sequence[Sequence[bytes]]) -> Path:
    """An insightface pack (header record 0, images, identity records) written to ``rec``."""
    write_pack(rec, insightface_payloads(images_by_identity))
    return rec
