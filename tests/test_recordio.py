"""RecordIOReader against packs written by an independent writer (tests/recordio_support.py):
single- and multi-part records, label arrays, header record 0 + identity records, packs without
them, a missing .idx, and the errors (truncated .rec, bad magic, .idx past the end, PNG)."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image
from recordio_support import (
    MAGIC,
    MAGIC_BYTES,
    insightface_payloads,
    ir_payload,
    smooth_jpeg,
    with_comment,
    write_pack,
)

from f2c._native import KvIndex, LmdbReader, RecordIOReader

SIZE = 32


def lmdb_decode(tmp: Path, images: list[bytes]) -> np.ndarray:
    """The same JPEGs decoded through LmdbReader (the reference for identical pixels)."""
    tmp.mkdir(exist_ok=True)
    env = lmdb.open(str(tmp / "ref.lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, image in enumerate(images):
            txn.put(f"{i}".encode(), image)
    env.close()
    (tmp / "ref.kv").write_text("".join(f"{i} 0\n" for i in range(len(images))))
    reader = LmdbReader(tmp / "ref.lmdb", KvIndex(tmp / "ref.kv"))
    return reader.read(np.arange(len(images)))


@pytest.fixture
def faces(tmp_path: Path) -> tuple[Path, list[list[bytes]]]:
    rng = np.random.default_rng(0)
    identities = [[smooth_jpeg(rng, SIZE) for _ in range(n)] for n in (3, 1, 4, 2)]
    rec = tmp_path / "train.rec"
    write_pack(rec, insightface_payloads(identities))
    return rec, identities


def test_insightface_pack_reads_like_lmdb(faces: tuple[Path, list[list[bytes]]],
                                          tmp_path: Path) -> None:
    rec, identities = faces
    reader = RecordIOReader(rec)
    images = [image for imgs in identities for image in imgs]
    assert len(reader) == 10
    assert reader.header == (11, 15)
    assert reader.label_source == "identity records"
    assert reader.idx_path == str(rec.with_suffix(".idx"))
    assert reader.labels.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 3, 3]
    assert reader.num_classes == 4
    assert reader.identity_offsets.tolist() == [0, 3, 4, 8, 10]
    assert reader.identity_rows.tolist() == list(range(10))
    assert reader.keys().tolist() == list(range(1, 11))
    assert reader.image_size == (SIZE, SIZE)
    assert reader.read_bytes([4, 0]) == [images[4], images[0]]
    rows = np.array([9, 0, 4, 4, 7])
    flips = np.array([False, True, False, True, False])
    batch = reader.read(rows, flip=flips)
    want = lmdb_decode(tmp_path / "ref", images)[rows]
    want[flips] = want[flips][:, :, ::-1]
    assert batch.dtype == np.uint8 and batch.shape == (5, SIZE, SIZE, 3)
    assert np.array_equal(batch, want)
    pil = np.asarray(Image.open(io.BytesIO(images[9])).convert("RGB")).astype(int)
    assert np.abs(batch[0].astype(int) - pil).mean() < 1.5
    assert not reader.labels.flags.writeable


def test_multi_part_records_are_joined(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    # The magic at aligned payload offsets 8 (inside the IRHeader's id), 32 and 36 (two in a
    # row inside a JPEG comment: an empty middle part), and at an unaligned one (kept as is).
    jpeg = with_comment(smooth_jpeg(rng, SIZE), b"ab" + MAGIC_BYTES * 2 + b"c" + MAGIC_BYTES)
    payload = ir_payload(0.0, jpeg, record_id=MAGIC)
    assert payload[8:12] == payload[32:36] == payload[36:40] == MAGIC_BYTES
    plain = smooth_jpeg(rng, SIZE)
    rec = tmp_path / "multi.rec"
    offsets = write_pack(rec, [ir_payload(0.0, plain), payload, ir_payload(1.0, plain)])
    first_word = struct.unpack_from("<I", rec.read_bytes(), offsets[1] + 4)[0]
    assert first_word >> 29 == 1  # really written as several parts
    reader = RecordIOReader(rec)
    assert reader.header is None and reader.label_source == "records"
    assert reader.labels.tolist() == [0, 0, 1]
    assert reader.read_bytes([1]) == [jpeg]
    batch = reader.read([1, 2])
    assert np.array_equal(batch, lmdb_decode(tmp_path / "ref", [jpeg, plain]))


def test_label_arrays_use_the_first_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image = smooth_jpeg(rng, SIZE)
    payloads = [ir_payload(7.0, image, labels=(c, 0.25, 99.0)) for c in (1.0, 0.0, 1.0, 2.0)]
    rec = tmp_path / "arrays.rec"
    write_pack(rec, payloads)
    reader = RecordIOReader(rec)
    assert reader.labels.tolist() == [1, 0, 1, 2]
    assert reader.identity_offsets.tolist() == [0, 1, 3, 4]
    assert reader.identity_rows.tolist() == [1, 0, 2, 3]
    assert reader.read_bytes([3]) == [image]


def test_pack_without_header_record(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = [smooth_jpeg(rng, SIZE) for _ in range(5)]
    rec = tmp_path / "plain.rec"
    # im2rec-style: arbitrary record indices, in any order.
    write_pack(rec, [ir_payload(float(i % 2), im) for i, im in enumerate(images)],
               keys=[40, 7, 12, 3, 99])
    reader = RecordIOReader(rec)
    assert reader.header is None
    assert reader.keys().tolist() == [40, 7, 12, 3, 99]
    assert reader.labels.tolist() == [0, 1, 0, 1, 0]
    assert reader.read_bytes([4]) == [images[4]]


def test_missing_idx_scans_with_a_warning(faces: tuple[Path, list[list[bytes]]]) -> None:
    rec, _ = faces
    indexed = RecordIOReader(rec)
    rec.with_suffix(".idx").unlink()
    with pytest.warns(UserWarning, match="no .idx"):
        scanned = RecordIOReader(rec)
    assert scanned.idx_path is None
    assert scanned.header == indexed.header
    assert np.array_equal(scanned.labels, indexed.labels)
    assert [scanned.offset(r) for r in range(10)] == [indexed.offset(r) for r in range(10)]
    assert np.array_equal(scanned.read(np.arange(10)), indexed.read(np.arange(10)))


def test_truncated_rec_names_record_and_offset(faces: tuple[Path, list[list[bytes]]]) -> None:
    rec, _ = faces
    reader = RecordIOReader(rec)
    last_image = reader.offset(9)
    data = rec.read_bytes()
    rec.write_bytes(data[: last_image + 30])
    # The .idx still lists identity records past the cut.
    with pytest.raises(ValueError, match=rf"{rec.with_suffix('.idx')}:12: offset \d+ of record 11 "
                                         "points past the end"):
        RecordIOReader(rec)
    rec.with_suffix(".idx").unlink()
    with (pytest.warns(UserWarning), pytest.raises(
            ValueError, match=rf"{rec}: record 10 at byte {last_image}: truncated file")):
        RecordIOReader(rec)


def test_bad_magic_is_named_on_read(faces: tuple[Path, list[list[bytes]]]) -> None:
    rec, _ = faces
    offset = RecordIOReader(rec).offset(5)
    data = bytearray(rec.read_bytes())
    data[offset] ^= 0xFF
    rec.write_bytes(bytes(data))
    reader = RecordIOReader(rec)  # identity records give the labels: images not read yet
    reader.read([4])
    for read in (reader.read, reader.read_bytes):
        with pytest.raises(ValueError, match=rf"{rec}: record 6 at byte {offset}: bad magic"):
            read([4, 5])
    # Labels from the records read every record at open.
    with pytest.raises(ValueError, match=f"record 6 at byte {offset}: bad magic"):
        RecordIOReader(rec, label_source="records")


def test_idx_past_the_end_and_malformed_lines(faces: tuple[Path, list[list[bytes]]]) -> None:
    rec, _ = faces
    idx = rec.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    size = rec.stat().st_size
    lines[3] = f"3\t{size}"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{idx}:4: offset {size} of record 3 points past the "
                                         rf"end of {rec} \({size} bytes\)"):
        RecordIOReader(rec)
    lines[3] = "3 oops"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{idx}:4: offset"):
        RecordIOReader(rec)
    with pytest.raises(OSError, match="nope.idx"):
        RecordIOReader(rec, rec.with_name("nope.idx"))
    with pytest.raises(OSError, match="missing.rec"):
        RecordIOReader(rec.with_name("missing.rec"))


def test_label_gaps_are_errors_naming_them(tmp_path: Path) -> None:
    image = smooth_jpeg(np.random.default_rng(4), SIZE)
    rec = tmp_path / "gaps.rec"
    write_pack(rec, [ir_payload(float(c), image) for c in (0, 4, 4, 2, 0)])
    with pytest.raises(ValueError, match=r"class\(es\) 1, 3 have no images"):
        RecordIOReader(rec)
    # An identity record with an empty range is a gap too.
    payloads = insightface_payloads([[image], [image]])
    payloads[-1] = ir_payload(labels=(3.0, 3.0))
    write_pack(rec, payloads)
    with pytest.raises(ValueError, match="record 4 at byte .*class 1 holds no images"):
        RecordIOReader(rec)


def test_png_records_are_refused_by_name(tmp_path: Path) -> None:
    out = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (10, 20, 30)).save(out, format="PNG")
    jpeg = smooth_jpeg(np.random.default_rng(5), SIZE)
    rec = tmp_path / "png.rec"
    offsets = write_pack(rec, insightface_payloads([[jpeg, out.getvalue()]]))
    reader = RecordIOReader(rec)
    assert reader.read_bytes([1]) == [out.getvalue()]
    with pytest.raises(ValueError, match=rf"record 2 at byte {offsets[2]}: the image is a PNG"):
        reader.read([0, 1])


def test_identity_labels_are_checked_against_the_records(tmp_path: Path) -> None:
    jpeg = smooth_jpeg(np.random.default_rng(6), SIZE)
    payloads = insightface_payloads([[jpeg, jpeg], [jpeg]])
    payloads[2] = ir_payload(1.0, jpeg)  # in identity 0's range but labelled 1
    rec = tmp_path / "mislabelled.rec"
    write_pack(rec, payloads)
    reader = RecordIOReader(rec)
    with pytest.raises(ValueError, match="record 2 at byte .*label 1 differs from its identity"):
        reader.read([1])
    by_records = RecordIOReader(rec, label_source="records")
    assert by_records.labels.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="label_source"):
        RecordIOReader(rec, label_source="identity")


def test_pickles_and_threads(faces: tuple[Path, list[list[bytes]]]) -> None:
    rec, _ = faces
    reader = RecordIOReader(rec, num_threads=3)
    again = pickle.loads(pickle.dumps(reader))
    assert again.num_threads == 3 and again.path == reader.path
    rows = np.arange(10)
    one = RecordIOReader(rec, num_threads=1).read(rows)
    assert np.array_equal(again.read(rows), one)
    with pytest.raises(IndexError):
        reader.read([10])
    with pytest.raises(ValueError, match="flip has 1 entries for 2 rows"):
        reader.read([0, 1], flip=[True])
