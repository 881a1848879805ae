"""KvIndex: parsing, label offsets across files, CSR layout and errors naming file:line."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import f2c


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def reference_parse(texts: list[str]) -> tuple[list[bytes], list[int]]:
    """Plain-Python twin of the kv rules (label after the last space, offsets per file)."""
    keys: list[bytes] = []
    labels: list[int] = []
    offset = 0
    for text in texts:
        file_labels = []
        for line in text.split("\n"):
            if line == "":
                continue
            key, _, label = line.rpartition(" ")
            keys.append(key.encode())
            file_labels.append(int(label))
        labels += [label + offset for label in file_labels]
        offset += max(file_labels) + 1
    return keys, labels


def test_parses_keys_labels_and_csr(tmp_path: Path) -> None:
    kv = write(tmp_path / "a.kv", "img/0 2\nimg/1 0\nkey with spaces 2\r\nimg/3 0")
    index = f2c.KvIndex(kv)
    assert len(index) == 4
    assert index.labels.dtype == np.int64
    assert index.labels.tolist() == [2, 0, 2, 0]
    assert index.key(2) == b"key with spaces"
    assert index.num_classes == 3
    assert index.identity_offsets.tolist() == [0, 2, 2, 4]
    assert index.identity_rows.tolist() == [1, 3, 0, 2]
    assert index.paths == [str(kv)]


def test_labels_are_shared_and_read_only(tmp_path: Path) -> None:
    index = f2c.KvIndex(write(tmp_path / "a.kv", "a 0\nb 1\n"))
    first, second = index.labels, index.labels
    assert np.shares_memory(first, second)  # no copy per access
    with pytest.raises(ValueError):
        first[0] = 5
    assert not index.identity_rows.flags.writeable


def test_several_files_get_label_offsets(tmp_path: Path) -> None:
    a = write(tmp_path / "a.kv", "a 0\nb 4\n")
    b = write(tmp_path / "b.kv", "c 1\nd 0\n")
    index = f2c.KvIndex([a, str(b)])  # PathLike and str mixed
    assert index.labels.tolist() == [0, 4, 6, 5]
    assert index.label_offsets == [0, 5]
    assert index.num_classes == 7
    assert [index.file_of_row(r) for r in range(4)] == [0, 0, 1, 1]
    rows = index.identity_rows
    offsets = index.identity_offsets
    assert rows[offsets[6] : offsets[7]].tolist() == [2]
    assert offsets[2] == offsets[3] == offsets[4]  # labels 1..3 have no rows


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("a 1\nb\n", 2, "missing label"),
        ("a 1\nb \n", 2, "missing label"),
        ("a 1\nb 2\nc -3\n", 3, "negative label"),
        ("a x1\n", 1, "not a non-negative integer"),
        ("a 1.5\n", 1, "not a non-negative integer"),
        ("a 1\n 2\n", 2, "empty key"),
        ("a 1\n\nb 2\n", 2, "empty line"),
        ("a 99999999999\n", 1, "too large"),
    ],
)
def test_malformed_lines_name_file_and_line(
    tmp_path: Path, body: str, line: int, needle: str
) -> None:
    kv = write(tmp_path / "bad.kv", body)
    with pytest.raises(ValueError, match=needle) as info:
        f2c.KvIndex(kv)
    assert str(info.value).startswith(f"{kv}:{line}:")


def test_error_in_second_file_names_it(tmp_path: Path) -> None:
    good = write(tmp_path / "good.kv", "a 0\n")
    bad = write(tmp_path / "bad.kv", "b 0\nc\n")
    with pytest.raises(ValueError, match=f"^{bad}:2:"):
        f2c.KvIndex([good, bad])


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no `key label` lines"):
        f2c.KvIndex(write(tmp_path / "empty.kv", ""))
    missing = tmp_path / "missing.kv"
    with pytest.raises(OSError, match=str(missing)):
        f2c.KvIndex(missing)
    with pytest.raises(ValueError, match="at least one"):
        f2c.KvIndex([])
    with pytest.raises(TypeError):
        f2c.KvIndex(3)  # type: ignore[arg-type]


def test_rows_out_of_range(tmp_path: Path) -> None:
    index = f2c.KvIndex(write(tmp_path / "a.kv", "a 0\n"))
    with pytest.raises(IndexError, match="row 1 out of range"):
        index.key(1)
    with pytest.raises(IndexError):
        index.key(-1)
    with pytest.raises(IndexError):
        index.file_of_row(5)


def test_pickles_as_its_paths(tmp_path: Path) -> None:
    index = f2c.KvIndex(write(tmp_path / "a.kv", "x 3\ny 1\n"))
    clone = pickle.loads(pickle.dumps(index))
    assert clone.labels.tolist() == [3, 1]
    assert clone.key(1) == b"y"


keys = st.text(
    alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda k: not k.startswith(" ") or k.strip() != "")
files = st.lists(
    st.lists(st.tuples(keys, st.integers(0, 50)), min_size=1, max_size=30), min_size=1, max_size=3
)


@settings(max_examples=60, deadline=None)
@given(files=files)
def test_matches_reference_parser(tmp_path_factory: pytest.TempPathFactory, files: list) -> None:
    folder = tmp_path_factory.mktemp("kv")
    texts = []
    paths = []
    for i, rows in enumerate(files):
        # A key may not start with the separating space; trailing newline optional.
        rows = [(k if not k.startswith(" ") else "k" + k, label) for k, label in rows]
        # Keys are unique per file and must not read as extra columns (tests/test_hostile_kv.py
        # covers the refusals).
        seen: set[str] = set()
        rows = [
            (k, label) for k, label in rows
            if not re.search(r" ([+-]?[0-9]+)?$", k) and not (k in seen or seen.add(k))
        ] or [("k", 0)]
        text = "\n".join(f"{k} {label}" for k, label in rows) + ("\n" if i % 2 == 0 else "")
        texts.append(text)
        paths.append(write(folder / f"{i}.kv", text))
    index = f2c.KvIndex(paths)
    want_keys, want_labels = reference_parse(texts)
    assert index.labels.tolist() == want_labels
    assert [index.key(r) for r in range(len(index))] == want_keys
    assert index.num_classes == max(want_labels) + 1
    # CSR: every row exactly once, grouped by label, rows ascending within a label.
    offsets, rows = index.identity_offsets, index.identity_rows
    for label in range(index.num_classes):
        got = rows[offsets[label] : offsets[label + 1]].tolist()
        assert got == [r for r, lab in enumerate(want_labels) if lab == label]
