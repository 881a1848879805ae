"""Hostile kv files: each bad input is a clear error naming file:line, never an abort (an
allocation sized by a label) and never a silently wrong index (three columns, repeated keys).
A hypothesis fuzz compares ``KvIndex`` with a Python reading of the format, in a child process.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hostile_support import Hostile, explain, run_calls, run_cases
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

MAX_LABEL = 2**31 - 1


# ------------------------------------------------------------------ child side


def kv_summary(paths: list[str]) -> dict[str, Any]:
    """Index the files; return keys (hex) and labels."""
    import f2c

    index = f2c.KvIndex(paths)
    return {
        "keys": [index.key(r).hex() for r in range(min(len(index), 1000))],
        "labels": index.labels[:1000].tolist(),
        "num_classes": index.num_classes,
    }


def kv_batch(paths: list[str]) -> list[dict[str, Any]]:
    """One summary or error per file (a crash ends the whole batch, failing its test)."""
    out = []
    for path in paths:
        try:
            out.append({"ok": kv_summary([path])})
        except (ValueError, OSError, MemoryError) as exc:
            out.append({"error": type(exc).__name__, "message": str(exc)})
    return out


# ------------------------------------------------------------------ cases


def hostile_cases(tmp: Path) -> list[Hostile]:
    def file(name: str, body: bytes) -> str:
        path = tmp / name
        path.write_bytes(body)
        return str(path)

    garbage = bytes((i * 7919 + 13) % 256 for i in range(4096))
    cases = [
        # The campaign's abort: the CSR sized by the largest label.
        ("max_label", [file("max.kv", b"a 2147483646\n")], ("ValueError", "MemoryError"), ":1:"),
        ("max_label_after_rows", [file("max2.kv", b"a 0\nb 1\nc 2000000000\n")],
         ("ValueError", "MemoryError"), ":3:"),
        ("three_columns", [file("three.kv", b"a 0 7\n")], ("ValueError",), ":1:"),
        ("three_columns_later", [file("three2.kv", b"a 0\nb 1\nkey 12 3\n")], ("ValueError",),
         ":3:"),
        ("double_space", [file("double.kv", b"a  3\n")], ("ValueError",), ":1:"),
        ("duplicate_other_label", [file("dup.kv", b"a 0\nb 1\na 2\n")], ("ValueError",), ":3:"),
        ("duplicate_same_label", [file("dup2.kv", b"k 5\nk 5\n")], ("ValueError",), ":2:"),
        ("duplicate_unsorted", [file("dup3.kv", b"z 0\nb 1\nm 0\nb 1\n")], ("ValueError",),
         ":4:"),
        ("negative_label", [file("neg.kv", b"a 1\nb -3\n")], ("ValueError",), ":2:"),
        ("label_2_31", [file("big.kv", b"a 2147483648\n")], ("ValueError",), ":1:"),
        ("tab_separator", [file("tab.kv", b"a\t1\n")], ("ValueError",), ":1:"),
        ("blank_line", [file("blank.kv", b"a 1\n\r\nb 2\n")], ("ValueError",), ":2:"),
        ("binary_garbage", [file("garbage.kv", garbage)], ("ValueError",), ":"),
        ("empty_file", [file("empty.kv", b"")], ("ValueError",), ":1:"),
    ]
    out = [
        Hostile(name, "kv_summary", [paths], errors=errors,
                needles=(f"{paths[-1]}{where}" if where != ":" else paths[-1],))
        for name, paths, errors, where in cases
    ]
    offset_a = file("offset-a.kv", b"a 0\n")
    offset_b = file("offset-b.kv", b"b 2147483646\n")
    out.append(Hostile("label_offset_overflow", "kv_summary", [[offset_a, offset_b]],
                       errors=("ValueError", "MemoryError"), needles=(offset_b,)))
    folder = tmp / "a-folder.kv"
    folder.mkdir()
    out.append(Hostile("directory", "kv_summary", [[str(folder)]], errors=("OSError",),
                       needles=(str(folder),)))
    # Odd but valid: bytes that are not UTF-8 form a key; the right rows are a clean result.
    out.append(Hostile("binary_key", "kv_summary", [[file("bin.kv", b"\xff\x00k 1\n")]],
                       accept=lambda v: v["labels"] == [1] and v["keys"] == ["ff006b"]))
    return out


CASE_NAMES = [
    "max_label", "max_label_after_rows", "three_columns", "three_columns_later", "double_space",
    "duplicate_other_label", "duplicate_same_label", "duplicate_unsorted", "negative_label",
    "label_2_31", "tab_separator", "blank_line", "binary_garbage", "empty_file",
    "label_offset_overflow", "directory", "binary_key",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("hostile-kv")
    found = run_cases("test_hostile_kv", hostile_cases(folder))
    assert sorted(found) == sorted(CASE_NAMES)
    return found


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_kv_input_is_a_clean_error(results: dict[str, Any], name: str) -> None:
    kind, outcome = results[name]
    assert kind == "clean", explain(name, kind, outcome)


def test_duplicate_message_names_both_lines_and_labels(results: dict[str, Any]) -> None:
    _, outcome = results["duplicate_other_label"]
    assert "repeats line 1" in outcome.message and "label 2" in outcome.message
    assert "label 0" in outcome.message


# ------------------------------------------------------------------ fuzz


def reference(data: bytes) -> list[tuple[bytes, int]] | None:
    """The kv rules in Python: the rows, or None where the file must be refused."""
    if not data:
        return None
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines = lines[:-1]
    rows: list[tuple[bytes, int]] = []
    seen: set[bytes] = set()
    for line in lines:
        line = line.removesuffix(b"\r")
        key, sep, label = line.rpartition(b" ")
        if not sep or not key or not re.fullmatch(rb"[0-9]+", label):
            return None
        value = int(label)
        last = key.rsplit(b" ", 1)
        if value > MAX_LABEL or key.endswith(b" ") or (
            len(last) == 2 and re.fullmatch(rb"[+-]?[0-9]+", last[1])
        ):
            return None
        if key in seen:
            return None
        seen.add(key)
        rows.append((key, value))
    if max(v for _, v in rows) + 1 > 16 * len(rows) + 2**22:
        return None
    return rows


_key = st.sampled_from([b"a", b"b", b"img/1.jpg", b"x y", b"k 7", b"z", b"\xc3\xa9", b"0", b" "])
_label = st.one_of(
    st.integers(0, 40).map(lambda i: str(i).encode()),
    st.sampled_from([b"", b"-1", b"007", b"2147483647", b"2147483648", b"99999999999",
                     b"1.5", b"x", b"4194304", b"5000000", b"1 2"]),
)
_sep = st.sampled_from([b" ", b" ", b" ", b"  ", b"\t", b""])
_line = st.tuples(_key, _sep, _label, st.sampled_from([b"", b"", b"\r"])).map(b"".join)
_file = st.one_of(
    st.lists(_line, min_size=0, max_size=8).map(lambda ls: b"\n".join(ls)),
    st.lists(_line, min_size=1, max_size=8).map(lambda ls: b"\n".join(ls) + b"\n"),
    st.binary(max_size=64),
)


# No shrinking: each example is a batch run in a child process; the assertion names
# the failing input within it.
@settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=st.lists(_file, min_size=40, max_size=40))
def test_fuzz_kv_parser_is_a_clean_error_or_the_right_rows(
    tmp_path_factory: pytest.TempPathFactory, files: list[bytes]
) -> None:
    folder = tmp_path_factory.mktemp("fuzz-kv")
    paths = []
    for i, body in enumerate(files):
        path = folder / f"{i}.kv"
        path.write_bytes(body)
        paths.append(str(path))
    [outcome] = run_calls("test_hostile_kv", [("kv_batch", [paths])], timeout=120)
    assert outcome.kind == "returned", explain("kv batch", "abort", outcome)
    for path, body, got in zip(paths, files, outcome.value, strict=True):
        want = reference(body)
        if want is None:
            assert "error" in got, f"{body!r} was accepted: {got}"
            assert got["error"] == "ValueError" and path in got["message"], got
        else:
            assert "ok" in got, f"{body!r} was refused: {got}"
            assert got["ok"]["keys"] == [k.hex() for k, _ in want], body
            assert got["ok"]["labels"] == [v for _, v in want], body


def test_many_unsorted_keys_stay_fast_and_distinct(tmp_path: Path) -> None:
    """The duplicate check of a file out of key order (a hash table) accepts distinct keys and
    finds one repeat among many."""
    import f2c

    n = 200_000
    order = [(i * 7_919) % n for i in range(n)]  # a permutation: keys out of order
    body = "".join(f"img/{i:07d}.jpg {i // 20}\n" for i in order)
    good = tmp_path / "good.kv"
    good.write_text(body)
    assert len(f2c.KvIndex(good)) == n
    bad = tmp_path / "bad.kv"
    bad.write_text(body + f"img/{order[5]:07d}.jpg 3\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}:{n + 1}:.*repeats line 6"):
        f2c.KvIndex(bad)
