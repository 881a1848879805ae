"""Hostile training-db records: a truncated JPEG with an end-of-image marker appended, garbage
inside the scan data, a header claiming a huge image, an incomplete progressive image — each is
an error naming the key and the db, from ``LmdbReader`` (in a child process) and from
``f2c._native.validate_jpeg`` (what ``pack`` checks with). A hypothesis fuzz mutates valid
JPEGs: the check refuses or the image decodes, never a crash, and truncation is always refused.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
from hostile_support import Hostile, explain, run_calls, run_cases
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from f2c.data.db import encode_datum

SIZE = 64


def jpeg(seed: int, *, size: int = SIZE, quality: int = 92, **options: Any) -> bytes:
    """A textured RGB JPEG (enough scan data for mid-scan damage)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality, **options)
    return out.getvalue()


def scan_data(data: bytes) -> tuple[int, int]:
    """(start, end) of the first scan's entropy-coded data."""
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return start, len(data) - 2


def cut_with_eoi(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)] + b"\xff\xd9"


def overwrite(data: bytes, count: int, seed: int, *, insert: bool = False) -> bytes:
    start, end = scan_data(data)
    rng = np.random.default_rng(seed)
    garbage = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    at = (start + end - count) // 2
    return data[:at] + garbage + data[at if insert else at + count :]


def with_frame_size(data: bytes, height: int, width: int) -> bytes:
    """The same JPEG with its frame header claiming another size."""
    sof = data.index(b"\xff\xc0")
    patched = bytearray(data)
    patched[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(patched)


def progressive_cut_at_scan(data: bytes, scans: int) -> bytes:
    """A progressive JPEG cut just before its ``scans``-th scan header, EOI appended."""
    at = -1
    for _ in range(scans):
        at = data.index(b"\xff\xda", at + 1)
    return data[:at] + b"\xff\xd9"


def wrong_restart_marker(data: bytes) -> bytes:
    """A JPEG with restart markers whose second marker names the wrong interval."""
    start, _ = scan_data(data)
    first = data.index(b"\xff\xd0", start)
    second = data.index(b"\xff\xd1", first)
    return data[: second + 1] + b"\xd5" + data[second + 2 :]


# ------------------------------------------------------------------ child side


def read_rows(db: str, kv: str, rows: list[int]) -> list[int]:
    import f2c

    reader = f2c.LmdbReader(db, f2c.KvIndex(kv), num_threads=1)
    return list(reader.read(np.asarray(rows)).shape)


def validate_files(paths: list[str]) -> list[dict[str, Any]]:
    from f2c import _native

    out = []
    for path in paths:
        try:
            out.append({"ok": list(_native.validate_jpeg(Path(path).read_bytes()))})
        except ValueError as exc:
            out.append({"error": str(exc)})
    return out


# ------------------------------------------------------------------ cases


def bad_records() -> dict[str, bytes]:
    base = jpeg(1)
    progressive = jpeg(2, progressive=True)
    restarts = jpeg(3, restart_marker_blocks=4)
    return {
        "cut_60_eoi": cut_with_eoi(base, 0.6),
        "cut_90_eoi": cut_with_eoi(base, 0.9),
        "cut_99_eoi": cut_with_eoi(base, 0.99),
        "cut_no_eoi": base[: len(base) * 3 // 4],
        "garbage_256": overwrite(base, 256, 1),
        "garbage_64": overwrite(base, 64, 2),
        "garbage_insert_64": overwrite(base, 64, 3, insert=True),
        "header_12000": with_frame_size(base, 12000, 12000),
        "header_taller": with_frame_size(base, SIZE * 4, SIZE),
        "header_8192": with_frame_size(base, 8192, 8192),
        "progressive_cut_60_eoi": cut_with_eoi(progressive, 0.6),
        "progressive_missing_scans": progressive_cut_at_scan(progressive, 4),
        "restart_out_of_order": wrong_restart_marker(restarts),
        "datum_cut_60_eoi": encode_datum(cut_with_eoi(base, 0.6), label=0),
        "soi_only": b"\xff\xd8",
        "eoi_only": b"\xff\xd8\xff\xd9",
        "empty": b"",
    }


def hostile_cases(tmp: Path) -> list[Hostile]:
    records = bad_records()
    good = jpeg(0)
    db = tmp / "hostile.lmdb"
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"good", good)
        for name, value in records.items():
            txn.put(f"bad/{name}".encode(), value)
    env.close()
    cases = []
    for name in records:
        kv = tmp / f"{name}.kv"
        kv.write_text(f"good 0\nbad/{name} 1\n")
        cases.append(Hostile(name, "read_rows", [str(db), str(kv), [0, 1]],
                             needles=(f"bad/{name}", str(db))))
    # A bad first record sets nothing wrong either: the image size comes from a checked record.
    kv = tmp / "first.kv"
    kv.write_text("bad/cut_60_eoi 0\ngood 1\n")
    cases.append(Hostile("first_record_cut_60_eoi", "read_rows", [str(db), str(kv), [1]],
                         needles=("bad/cut_60_eoi", str(db))))
    # A first record claiming the largest size sets an 8192x8192 batch; its data then fails.
    kv = tmp / "first-huge.kv"
    kv.write_text("bad/header_8192 0\ngood 1\n")
    cases.append(Hostile("first_record_header_8192", "read_rows", [str(db), str(kv), [0]],
                         errors=("ValueError", "MemoryError"),
                         needles=("bad/header_8192", str(db))))
    return cases


CASE_NAMES = [*bad_records(), "first_record_cut_60_eoi", "first_record_header_8192"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    found = run_cases("test_hostile_reader", hostile_cases(tmp_path_factory.mktemp("reader")))
    assert sorted(found) == sorted(CASE_NAMES)
    return found


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_record_is_an_error_naming_key_and_db(results: dict[str, Any], name: str) -> None:
    kind, outcome = results[name]
    assert kind == "clean", explain(name, kind, outcome)


def test_validate_jpeg_refuses_the_same_records_and_accepts_valid_ones() -> None:
    from f2c import _native

    for name, value in bad_records().items():
        if name.startswith("datum"):
            continue  # pack stores raw JPEG bytes
        with pytest.raises(ValueError, match="JPEG"):
            _native.validate_jpeg(value)
    for options in ({}, {"progressive": True}, {"restart_marker_blocks": 2},
                    {"subsampling": 0}, {"optimize": True}):
        assert _native.validate_jpeg(jpeg(7, size=37, **options)) == (37, 37)


def test_validate_jpeg_bounds_the_side_before_decoding() -> None:
    from f2c import _native

    huge = with_frame_size(jpeg(4), 12000, 12000)
    with pytest.raises(ValueError, match="12000x12000.*exceeds the limit of 8192"):
        _native.validate_jpeg(huge)
    with pytest.raises(ValueError, match="exceeds the limit of 48"):
        _native.validate_jpeg(jpeg(4), max_side=48)
    assert _native.validate_jpeg(jpeg(4), max_side=SIZE) == (SIZE, SIZE)


# ------------------------------------------------------------------ fuzz

_base = st.builds(
    lambda seed, quality, progressive, sub: jpeg(
        seed, size=40, quality=quality, progressive=progressive, subsampling=sub
    ),
    st.integers(0, 5), st.sampled_from([30, 75, 95]), st.booleans(), st.sampled_from([0, 2]),
)
_mutation = st.one_of(
    st.tuples(st.just("cut_eoi"), st.floats(0.05, 0.995)),
    st.tuples(st.just("cut"), st.floats(0.05, 0.995)),
    st.tuples(st.just("overwrite"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("insert"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("flip"), st.floats(0.0, 1.0), st.integers(0, 7)),
)


def mutate(data: bytes, mutation: tuple[Any, ...]) -> tuple[bytes, bool]:
    """The mutated bytes, and whether the result is certainly broken (a truncation)."""
    kind, where = mutation[0], mutation[1]
    at = min(len(data) - 3, int(where * len(data)))
    if kind == "cut_eoi":
        return data[:at] + b"\xff\xd9", True
    if kind == "cut":
        return data[:at], True
    if kind == "overwrite":
        return data[:at] + mutation[2] + data[at + len(mutation[2]) :], False
    if kind == "insert":
        return data[:at] + mutation[2] + data[at:], False
    flipped = bytearray(data)
    flipped[at] ^= 1 << mutation[2]
    return bytes(flipped), False


# No shrinking: each example is a batch run in a child process; the assertion names
# the failing input within it.
@settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(st.tuples(_base, _mutation), min_size=40, max_size=40))
def test_fuzz_jpeg_check_is_a_clean_error_or_a_decoded_image(
    tmp_path_factory: pytest.TempPathFactory, batch: list[tuple[bytes, tuple[Any, ...]]]
) -> None:
    folder = tmp_path_factory.mktemp("fuzz-jpeg")
    paths, broken = [], []
    for i, (data, mutation) in enumerate(batch):
        value, certainly_broken = mutate(data, mutation)
        path = folder / f"{i}.jpg"
        path.write_bytes(value)
        paths.append(str(path))
        broken.append(certainly_broken and value != data)
    [outcome] = run_calls("test_hostile_reader", [("validate_files", [paths])], timeout=120)
    assert outcome.kind == "returned", explain("jpeg batch", "abort", outcome)
    for path, must_fail, got in zip(paths, broken, outcome.value, strict=True):
        if "error" in got:
            assert got["error"].startswith("corrupt JPEG"), got
        else:
            assert not must_fail, f"{path}: a truncated JPEG passed as {got}"
            assert got["ok"][0] >= 1 and got["ok"][1] >= 1
