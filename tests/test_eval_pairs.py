"""Pair sets: pairs files, insightface .bin packs (restricted unpickler), protocol folds."""

from __future__ import annotations

import os
import pickle
import pickletools
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from eval_support import PixelNet, write_pair_set

from f2c.evaluation.features import ImageFiles, extract_features
from f2c.evaluation.metrics import kfold_evaluate
from f2c.evaluation.pairs import (
    PROTOCOL_FOLD_SIZES,
    evaluate_pair_features,
    evaluate_pairs,
    load_bin,
    read_pairs_file,
)


@pytest.fixture
def pair_dir(tmp_path: Path) -> tuple[Path, list[tuple[str, str, int]]]:
    return write_pair_set(tmp_path / "set")


def reference_accuracy(root: Path, rows: list[tuple[str, str, int]], flip: bool) -> np.ndarray:
    """Independent path: embed both images of every pair, cosine, 10 contiguous folds."""
    net = PixelNet()
    left = extract_features(net, ImageFiles([root / a for a, _, _ in rows]), flip=flip)
    right = extract_features(net, ImageFiles([root / b for _, b, _ in rows]), flip=flip)
    left = left / np.linalg.norm(left, axis=1, keepdims=True)
    right = right / np.linalg.norm(right, axis=1, keepdims=True)
    scores = (left * right).sum(1)
    same = np.array([s for _, _, s in rows], dtype=bool)
    return kfold_evaluate(scores, same, 10).accuracies


@pytest.mark.parametrize("flip", [True, False])
def test_evaluate_pairs_file(pair_dir: tuple[Path, list], flip: bool) -> None:
    path, rows = pair_dir
    res = evaluate_pairs(PixelNet(), path, "cpu", batch_size=8, flip=flip)
    ref = reference_accuracy(path.parent, rows, flip)
    np.testing.assert_allclose(res["fold_accuracies"], ref)
    assert res["accuracy"] == pytest.approx(ref.mean())
    assert res["accuracy_std"] == pytest.approx(ref.std())
    assert res["pairs"] == 60 and res["folds"] == 10 and res["fold_size"] == 6
    assert res["accuracy"] > 0.8  # the generated identities are separable
    assert len(res["thresholds"]) == 10 and "tar@far=1e-02" in res


def test_pairs_file_dedups_images_and_keeps_order(pair_dir: tuple[Path, list]) -> None:
    path, rows = pair_dir
    ps = read_pairs_file(path)
    ids = ps.images.ids()
    assert len(ids) == len(set(ids)) <= 2 * len(rows)
    for i, (a, b, s) in enumerate(rows):
        assert ids[ps.left[i]] == a and ids[ps.right[i]] == b and ps.same[i] == bool(s)


def test_absolute_paths_and_comments(tmp_path: Path, pair_dir: tuple[Path, list]) -> None:
    path, rows = pair_dir
    other = tmp_path / "elsewhere" / "pairs.txt"
    other.parent.mkdir()
    lines = ["# absolute paths", ""] + [
        f"{path.parent / a} {path.parent / b} {s}" for a, b, s in rows
    ]
    other.write_text("\n".join(lines) + "\n")
    assert len(read_pairs_file(other)) == 60


@pytest.mark.parametrize(
    "line",
    ["a.png b.png", "a.png b.png 2", "a.png b.png 1 extra", "a.png b.png yes"],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    for n in ("a.png", "b.png"):
        (tmp_path / n).write_bytes(b"x")
    p = tmp_path / "pairs.txt"
    p.write_text(f"a.png b.png 1\n\n{line}\n")
    with pytest.raises(ValueError, match=r"pairs.txt:3: expected 'path_a path_b 1\|0'"):
        read_pairs_file(p)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pairs file not found"):
        read_pairs_file(tmp_path / "none.txt")
    (tmp_path / "a.png").write_bytes(b"x")
    p = tmp_path / "pairs.txt"
    p.write_text("a.png a.png 1\na.png gone.png 0\n")
    with pytest.raises(FileNotFoundError, match=r"pairs.txt:2: image not found: .*gone.png"):
        read_pairs_file(p)
    p.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no pairs"):
        read_pairs_file(p)


# ---------------------------------------------------------------- .bin packs


def write_bin(path: Path, root: Path, rows: list, protocol: int) -> None:
    blobs, issame = [], []
    for a, b, s in rows:
        blobs += [(root / a).read_bytes(), (root / b).read_bytes()]
        issame.append(bool(s))
    path.write_bytes(pickle.dumps((blobs, issame), protocol=protocol))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_bin_equals_pairs_file(tmp_path: Path, pair_dir: tuple[Path, list], protocol: int) -> None:
    path, rows = pair_dir
    bin_path = tmp_path / "set.bin"
    write_bin(bin_path, path.parent, rows, protocol)
    ps = load_bin(bin_path)
    assert len(ps) == 60 and ps.left.tolist() == list(range(0, 120, 2))
    a = evaluate_pairs(PixelNet(), bin_path, flip=True)
    b = evaluate_pairs(PixelNet(), path, flip=True)
    assert a["fold_accuracies"] == b["fold_accuracies"]
    np.testing.assert_allclose(a["thresholds"], b["thresholds"])


class _Reduce:
    def __init__(self, fn: object, args: tuple) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args


@pytest.mark.parametrize(
    "payload, message",
    [
        (lambda m: ([_Reduce(os.system, (f"touch {m}",))], [True]), "posix.system|nt.system"),
        (lambda m: _Reduce(eval, (f"open({str(m)!r}, 'w')",)), "(__builtin__|builtins).eval"),
        (lambda m: _Reduce(subprocess.Popen, (["touch", str(m)],)), "(subprocess|commands).Popen"),
        (lambda m: ([np.zeros(3)], [True]), "numpy"),
        (lambda m: _Reduce(__import__("codecs").encode, ("x", "rot13")), "_codecs.encode"),
    ],
)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_hostile_bin_is_refused(tmp_path: Path, payload, message: str, protocol: int) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.bin"
    bad.write_bytes(pickle.dumps(payload(marker), protocol=protocol))
    with pytest.raises(ValueError, match=rf"evil.bin.*({message})"):
        load_bin(bad)
    assert not marker.exists()


def numpy1_names(data: bytes) -> bytes:
    """The same pickle as numpy 1.x writes it (``numpy.core.*`` for ``numpy._core.*``)."""
    for sub in (b"multiarray", b"numeric"):
        new, old = b"numpy.core." + sub, b"numpy._core." + sub
        data = data.replace(old + b"\n", new + b"\n")  # GLOBAL (protocol <= 3)
        data = data.replace(bytes([0x8C, len(old)]) + old, bytes([0x8C, len(new)]) + new)
    return pickletools.optimize(data)  # recomputes the frame lengths (protocol >= 4)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("numpy1", [False, True])
@pytest.mark.parametrize("writeable", [False, True])
def test_bin_of_numpy_uint8_arrays(
    tmp_path: Path, pair_dir: tuple[Path, list], protocol: int, numpy1: bool, writeable: bool
) -> None:
    """insightface's current pack builder stores each image as a 1-D uint8 numpy array."""
    path, rows = pair_dir
    blobs = [(path.parent / x).read_bytes() for a, b, _ in rows for x in (a, b)]
    arrays = [np.array(bytearray(b), np.uint8) if writeable else np.frombuffer(b, np.uint8)
              for b in blobs]
    data = pickle.dumps((arrays, [bool(s) for _, _, s in rows]), protocol=protocol)
    if numpy1:
        data = numpy1_names(data)
    spelled = b"numpy.core." if numpy1 else b"numpy._core."
    assert spelled + (b"numeric" if protocol == 5 else b"multiarray") in data
    with warnings.catch_warnings():  # numpy 2 reads numpy 1's names with a deprecation warning
        warnings.simplefilter("ignore")
        assert all(np.array_equal(x, y) for x, y in zip(pickle.loads(data)[0], arrays,
                                                         strict=True))
    bin_path = tmp_path / "np.bin"
    bin_path.write_bytes(data)
    ps = load_bin(bin_path)
    assert ps.images.blobs == blobs  # type: ignore[attr-defined]
    a = evaluate_pairs(PixelNet(), bin_path, flip=False)
    b = evaluate_pairs(PixelNet(), path, flip=False)
    assert a["fold_accuracies"] == b["fold_accuracies"]


@pytest.mark.parametrize(
    "images, message",
    [
        ([np.zeros((2, 3), np.uint8)], r"shape \(2, 3\)"),
        ([np.zeros(3, np.float32)], "dtype 'f4'"),
        ([np.zeros(3, np.int16)], "dtype 'i2'"),
        ([np.zeros(3, ">u2")], "dtype 'u2'"),
        ([np.array([b"ab"], dtype=object)], "dtype 'O8'"),
        ([np.zeros(2, [("a", "u1")])], "dtype 'V1'"),
        ([_Reduce(np.load, ("x.npy",))], "numpy.load"),
        ([_Reduce(np.frombuffer, (b"ab", np.uint8))], "numpy.frombuffer"),
        ([_Reduce(np._core.multiarray._reconstruct, (np.ndarray, (2,), b"b"))],
         "_reconstruct of anything but an empty ndarray"),
        ([_Reduce(np._core.multiarray._reconstruct, (np.matrix, (0,), b"b"))], "numpy.matrix"),
    ],
)
@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy_bin_allows_only_1d_uint8(
    tmp_path: Path, images: list, message: str, protocol: int
) -> None:
    bad = tmp_path / "evil.bin"
    bad.write_bytes(pickle.dumps((images + [b"x"], [True]), protocol=protocol))
    with pytest.raises(ValueError, match=rf"evil.bin.*{message}"):
        load_bin(bad)


def test_numpy_array_state_is_checked(tmp_path: Path) -> None:
    """A hand-made _reconstruct whose state lies about its length, or sets its state twice."""
    arr = np.frombuffer(b"abcd", np.uint8)
    fn, args, state = arr.__reduce__()
    lying = (state[0], (9,), *state[2:])
    bad = tmp_path / "evil.bin"
    bad.write_bytes(pickle.dumps(([_State(fn, args, lying), b"x"], [True]), protocol=2))
    with pytest.raises(ValueError, match=r"evil.bin.*shape \(9,\) over 4 bytes"):
        load_bin(bad)
    bad.write_bytes(pickle.dumps(([_State(fn, args, (state, state)), b"x"], [True]), protocol=2))
    with pytest.raises(ValueError, match=r"evil.bin.*not \(shape, dtype, order, data\)"):
        load_bin(bad)


class _State:
    def __init__(self, fn: object, args: tuple, state: object) -> None:
        self.reduced = (fn, args, state)

    def __reduce__(self) -> tuple:
        return self.reduced


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"images": []}, "expected a pair"),
        (([b"a", b"b"], [True, False]), "2 images for 2 pairs"),
        (([b"a", "b"], [True]), "image 1 is a str"),
        (([b"a", b"b"], [2]), "issame"),
        (([b"a", b"b"], [0.5]), "issame"),
        (([], []), "no pairs"),
    ],
)
def test_malformed_bin_structure(tmp_path: Path, obj: object, message: str) -> None:
    bad = tmp_path / "odd.bin"
    bad.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=rf"odd.bin: .*{message}"):
        load_bin(bad)


def refused_fast(data: bytes, path: Path, message: str) -> None:
    """A ~1 MB hostile pack is refused with ``message`` within seconds (no 20 GiB expansion)."""
    assert len(data) < 1.2 * 2**20
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"{path.name}.*{message}"):
        load_bin(path)
    assert time.perf_counter() - start < 5


def test_bin_that_repeats_one_image_fails_fast(tmp_path: Path) -> None:
    """A 1 MB pickle naming one 1 MiB buffer 20,000 times would expand to 20 GiB."""
    big = bytearray(1 << 20)
    for images in ([big] * 20_000, [np.frombuffer(bytes(big), np.uint8)] * 20_000):
        refused_fast(pickle.dumps((images, [True] * 10_000), protocol=5), tmp_path / "bomb.bin",
                     "image 1 is the same object as image 0")


def test_bin_that_expands_one_string_fails_fast(tmp_path: Path) -> None:
    """Protocol 2 bytes are _codecs.encode(str, 'latin1'); each call copies its string."""
    text = pickle.dumps("x" * (1 << 20), protocol=2)[2:-1]  # the BINUNICODE of a 1 MiB str
    # memo 1 = _codecs.encode, 2 = the string, 3 = 'latin1' (each popped); then the image list
    head = (b"\x80\x02c_codecs\nencode\nq\x010" + text + b"q\x020"
            + b"X\x06\x00\x00\x00latin1q\x030]")
    one = b"h\x01h\x02h\x03\x86Ra"  # images.append(encode(str, 'latin1'))
    refused_fast(head + one * 20_000 + b"]\x88a\x86.", tmp_path / "bomb.bin",  # (images, [True])
                 r"_codecs.encode built \d+ bytes, more than")


def test_truncated_and_missing_bin(tmp_path: Path) -> None:
    bad = tmp_path / "cut.bin"
    bad.write_bytes(pickle.dumps(([b"a", b"b"], [True]))[:-5])
    with pytest.raises(ValueError, match="cut.bin"):
        load_bin(bad)
    with pytest.raises(FileNotFoundError, match="none.bin"):
        load_bin(tmp_path / "none.bin")


def test_protocol_fold_sizes(pair_dir: tuple[Path, list]) -> None:
    assert PROTOCOL_FOLD_SIZES["lfw"] == 600 and PROTOCOL_FOLD_SIZES["cfp_fp"] == 700
    path, _ = pair_dir
    ps = read_pairs_file(path)
    feats = np.random.default_rng(0).normal(size=(len(ps.images), 8))
    with pytest.raises(ValueError, match=r"lfw has 10 folds of 600 pairs \(6000\), but 60"):
        evaluate_pair_features(feats, ps, protocol="lfw")
    with pytest.raises(ValueError, match="cfp_fp has 10 folds of 700"):
        evaluate_pair_features(feats, ps, protocol="cfp_fp")
    assert evaluate_pair_features(feats, ps)["fold_size"] == 6
    # a full-size protocol set is accepted with the protocol's fold size
    n = 7000
    ps.left = np.zeros(n, np.int64)
    ps.right = np.ones(n, np.int64)
    ps.same = np.arange(n) % 2 == 0
    assert evaluate_pair_features(feats, ps, protocol="cfp_fp")["fold_size"] == 700
