"""Synthetic identities: layout, pairs protocol, determinism, caching, hardness, and the pixel
baseline (scored by f2c.evaluation)."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import f2c
from f2c.data import synthetic
from f2c.data.db import read_label_map
from f2c.data.synthetic import make_synthetic_dataset, pixel_cosine_accuracy
from f2c.evaluation.metrics import kfold_accuracy

SMALL = {
    "num_identities": 6,
    "images_per_identity": 4,
    "num_test_identities": 20,
    "pairs_per_fold": 4,
    "image_size": 64,
    "seed": 3,
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> synthetic.SyntheticDataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data", **SMALL)


def read_pairs(path: Path) -> list[tuple[str, str, bool]]:
    rows = []
    for line in path.read_text().splitlines():
        a, b, same = line.split(" ")
        rows.append((a, b, same == "1"))
    return rows


def test_training_db_layout(small: synthetic.SyntheticDataset) -> None:
    index = f2c.KvIndex(small.kv_path)
    assert len(index) == small.num_images == 24
    assert index.num_classes == small.num_classes == 6
    assert np.diff(index.identity_offsets).tolist() == [4] * 6
    assert read_label_map(small.labels_path) == {f"id{i:06d}": i for i in range(6)}
    batch = f2c.LmdbReader(small.lmdb_path, index).read(np.arange(24))
    assert batch.shape == (24, 64, 64, 3)
    assert len({b.tobytes() for b in batch}) == 24  # every image differs


def test_pairs_protocol(small: synthetic.SyntheticDataset) -> None:
    pairs = read_pairs(small.pairs_path)
    assert len(pairs) == small.num_pairs == 10 * 4
    identity = {}
    for fold in range(10):
        chunk = pairs[fold * 4 : (fold + 1) * 4]
        assert sum(same for _, _, same in chunk) == 2  # half genuine in every fold
        ids = set()
        for a, b, same in chunk:
            assert (small.pairs_path.parent / a).is_file()
            ida, idb = a.split("/")[1], b.split("/")[1]
            assert (ida == idb) == same and a != b
            ids |= {ida, idb}
        for i in ids:  # folds are identity-disjoint
            assert identity.setdefault(i, fold) == fold
    assert len(set(pairs)) == len(pairs)


def test_bin_matches_the_pair_files(small: synthetic.SyntheticDataset) -> None:
    bins, issame = _PlainUnpickler(io.BytesIO(small.bin_path.read_bytes())).load()
    pairs = read_pairs(small.pairs_path)
    assert issame == [same for _, _, same in pairs]
    folder = small.pairs_path.parent
    for i, (a, b, _) in enumerate(pairs):
        assert bins[2 * i] == (folder / a).read_bytes()
        assert bins[2 * i + 1] == (folder / b).read_bytes()
    assert Image.open(io.BytesIO(bins[0])).size == (64, 64)


def test_cached_and_parameter_checked(small: synthetic.SyntheticDataset) -> None:
    stamp = small.kv_path.stat().st_mtime_ns
    again = make_synthetic_dataset(small.root, **SMALL)
    assert again == small and small.kv_path.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        make_synthetic_dataset(small.root, **{**SMALL, "seed": 4})
    with pytest.raises(ValueError, match="pairs_per_fold"):
        make_synthetic_dataset(small.root.parent / "x", **{**SMALL, "pairs_per_fold": 3})


def test_deterministic_and_independent_of_workers(
    small: synthetic.SyntheticDataset, tmp_path: Path
) -> None:
    other = make_synthetic_dataset(tmp_path / "again", **SMALL, workers=2)
    assert other.kv_path.read_text() == small.kv_path.read_text()
    assert other.pairs_path.read_text() == small.pairs_path.read_text()
    assert other.bin_path.read_bytes() == small.bin_path.read_bytes()
    rows = np.arange(small.num_images)
    a = f2c.LmdbReader(small.lmdb_path, f2c.KvIndex(small.kv_path)).read_bytes(rows)
    b = f2c.LmdbReader(other.lmdb_path, f2c.KvIndex(other.kv_path)).read_bytes(rows)
    assert a == b


def test_identity_cues_survive_nuisance() -> None:
    """Same identity, many nuisances: the skin colour region stays the identity's colour."""
    rng = np.random.default_rng(0)
    ident = synthetic.sample_identities(rng, 2)
    nuis = synthetic.sample_nuisance(rng, 8)
    owners = np.array([0] * 4 + [1] * 4)
    mats, _ = synthetic._render_materials(synthetic._take(ident, owners), nuis, 64)
    # Every image shows skin, eyes and a mouth of its face.
    for m in mats:
        present = set(np.unique(m).tolist())
        assert {synthetic.SKIN, synthetic.SCLERA, synthetic.LIP} <= present
    a = synthetic.render_identity_images(synthetic._take(ident, owners), nuis, 64, rng=rng)
    assert a.shape == (8, 64, 64, 3) and a.dtype == np.uint8


def test_raw_pixels_are_not_enough(tmp_path: Path) -> None:
    data = make_synthetic_dataset(
        tmp_path / "hard",
        num_identities=2,
        images_per_identity=2,
        num_test_identities=160,
        pairs_per_fold=40,
        image_size=64,
        seed=11,
    )
    accuracy = pixel_cosine_accuracy(data.pairs_path)
    assert 0.5 <= accuracy <= 0.75
    # The .bin pack holds the same pairs and image bytes: the same baseline.
    assert pixel_cosine_accuracy(data.bin_path) == accuracy


def test_pixel_cosine_of_identical_images_is_perfect(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lines = []
    for i in range(20):
        a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        b = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / f"a{i}.png")
        Image.fromarray(b).save(tmp_path / f"b{i}.png")
        lines.append(f"a{i}.png a{i}.png 1" if i % 2 else f"a{i}.png b{i}.png 0")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    assert pixel_cosine_accuracy(tmp_path / "pairs.txt") == 1.0
    # evaluation.metrics' protocol: 10 equal contiguous folds, no uneven split.
    (tmp_path / "uneven.txt").write_text("\n".join(lines[:15]) + "\n")
    with pytest.raises(ValueError, match="equal contiguous folds"):
        pixel_cosine_accuracy(tmp_path / "uneven.txt")
    (tmp_path / "bad.txt").write_text("a0.png a1.png yes\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        pixel_cosine_accuracy(tmp_path / "bad.txt")


def test_pixel_baseline_is_the_evaluation_kfold_of_pixel_cosines(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    lines, scores, same = [], [], []
    for i in range(40):
        a = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        genuine = i % 2 == 0
        if genuine:  # a noisy copy: similar, with overlap against the impostors
            b = np.clip(a.astype(int) + rng.integers(-200, 201, a.shape), 0, 255).astype(np.uint8)
        else:
            b = rng.integers(0, 256, a.shape, dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / f"a{i}.png")
        Image.fromarray(b).save(tmp_path / f"b{i}.png")
        lines.append(f"a{i}.png b{i}.png {int(genuine)}")
        u, v = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        scores.append(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
        same.append(genuine)
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    expected, _ = kfold_accuracy(np.array(scores), np.array(same))
    assert 0.5 < expected < 1.0  # thresholds matter here
    assert pixel_cosine_accuracy(tmp_path / "pairs.txt") == pytest.approx(expected)


def test_cli(tmp_path: Path) -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "f2c.data.synthetic", "--help"],
        capture_output=True, text=True, check=True,
    )
    assert "--pairs-per-fold" in helped.stdout
    code = synthetic.main([
        "--out", str(tmp_path / "cli"), "--identities", "3", "--images-per-identity", "2",
        "--test-identities", "20", "--pairs-per-fold", "2", "--size", "48", "--no-progress",
    ])
    assert code == 0
    assert (tmp_path / "cli" / "synthetic.json").is_file()
    assert synthetic.main(["--out", str(tmp_path / "cli"), "--identities", "4"]) == 1
