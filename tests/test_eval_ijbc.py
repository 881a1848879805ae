"""IJB-C 1:1: meta files, template pooling, pair scoring, TAR@FAR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from eval_support import loop_pool

from f2c.evaluation.ijbc import (
    evaluate_ijbc_features,
    pool_templates,
    read_ijbc_meta,
    score_template_pairs,
)
from f2c.evaluation.metrics import tar_at_far_roc_nearest, tar_at_fars


def random_meta(rng: np.random.Generator, images: int = 400, templates: int = 40):
    tids = rng.choice(np.arange(1000, 1000 + 3 * templates, 3), images)  # sparse, unsorted ids
    mids = rng.integers(0, 25, images)  # media ids shared across templates on purpose
    return tids, mids


@pytest.mark.parametrize("normalize_images", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_pool_templates_matches_loop(normalize_images: bool, weighted: bool) -> None:
    rng = np.random.default_rng(0)
    tids, mids = random_meta(rng)
    feats = rng.normal(size=(len(tids), 8)).astype(np.float32) * rng.uniform(0.5, 3, (400, 1))
    weights = rng.uniform(0.2, 1.0, len(tids)) if weighted else None
    ids, pooled = pool_templates(feats, tids, mids, normalize_images=normalize_images,
                                 weights=weights)
    ref = loop_pool(feats, tids, mids, normalize_images, weights)
    assert ids.tolist() == sorted(ref)
    np.testing.assert_allclose(pooled.numpy(), np.stack([ref[t] for t in ids]), atol=1e-5)


def test_media_are_keyed_per_template() -> None:
    # medium 7 appears in both templates; template 1 must not see template 2's image
    feats = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ids, pooled = pool_templates(feats, np.array([1, 1, 2]), np.array([7, 8, 7]))
    np.testing.assert_allclose(pooled.numpy(), [[1.0, 0.0], [0.0, 1.0]], atol=1e-6)
    # medium mean, then sum: two images of one medium weigh as much as one of another
    feats = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    _, pooled = pool_templates(feats, np.array([1, 1, 1]), np.array([5, 5, 6]))
    np.testing.assert_allclose(pooled.numpy(), [[2**-0.5, 2**-0.5]], atol=1e-6)


@pytest.mark.parametrize("method", ["gemm", "gather", "auto"])
@pytest.mark.parametrize("block", [1, 5, 4096])
def test_score_methods_agree(method: str, block: int) -> None:
    rng = np.random.default_rng(1)
    ids = np.arange(10, 70, 2)
    tf = torch.nn.functional.normalize(torch.randn(len(ids), 16, dtype=torch.float32), dim=1)
    a = rng.choice(ids, 500)
    b = rng.choice(ids, 500)
    got = score_template_pairs(ids, tf, a, b, method=method, block=block)  # type: ignore[arg-type]
    ra, rb = np.searchsorted(ids, a), np.searchsorted(ids, b)
    ref = (tf.numpy()[ra].astype(np.float64) * tf.numpy()[rb]).sum(1)
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("offset", [0, 1 << 40])  # lookup table / binary search
def test_template_lookup_and_unknown_template(offset: int) -> None:
    ids = np.array([0, 2, 3]) + offset
    tf = torch.eye(3)
    got = score_template_pairs(ids, tf, ids[[0, 1, 2, 2]], ids[[0, 2, 2, 1]])
    np.testing.assert_array_equal(got, [1.0, 0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=rf"template {9 + offset} \(pair 2\) has no images"):
        score_template_pairs(ids, tf, ids[[0, 0]], np.array([2, 9]) + offset, source="p.txt")
    with pytest.raises(ValueError, match=rf"template {offset - 5} \(pair 1\)"):
        score_template_pairs(ids, tf, np.array([offset - 5]), ids[:1])


def write_meta(root: Path, names, tids, mids, pairs, scores=None) -> None:
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta/ijbc_face_tid_mid.txt").write_text(
        "".join(f"{n} {t} {m}\n" for n, t, m in zip(names, tids, mids, strict=True))
    )
    (root / "meta/ijbc_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {s}\n" for a, b, s in pairs)
    )
    if scores is not None:
        (root / "meta/ijbc_name_5pts_score.txt").write_text(
            "".join(f"{n} " + "1 2 3 4 5 6 7 8 9 10" + f" {s}\n"
                    for n, s in zip(names, scores, strict=True))
        )


def test_end_to_end_from_meta(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    tids, mids = random_meta(rng, images=300, templates=30)
    # features close to a per-template centre, so genuine pairs score high
    uniq = np.unique(tids)
    centres = rng.normal(size=(len(uniq), 8))
    # genuine = same "subject": templates k and k + 15 share a centre
    centres[15:] = centres[:15]
    feats = centres[np.searchsorted(uniq, tids)] + rng.normal(0, 0.7, (300, 8))
    pairs = [(uniq[i], uniq[j], int(i % 15 == j % 15)) for i in range(30) for j in range(i + 1, 30)]
    names = [f"{i}.jpg" for i in range(300)]
    det = rng.uniform(0.5, 1.0, 300)
    write_meta(tmp_path, names, tids, mids, pairs, det)
    meta = read_ijbc_meta(tmp_path)
    assert meta.detector_scores is not None and len(meta.same) == len(pairs)
    fars = (1e-2, 1e-1)
    for use in (False, True):
        res = evaluate_ijbc_features(feats.astype(np.float32), meta, fars=fars,
                                     use_detector_scores=use, keep_roc=True)
        ref = loop_pool(feats, tids, mids, weights=det if use else None)
        scores = np.array([ref[a] @ ref[b] for a, b, _ in pairs])
        same = np.array([s for _, _, s in pairs], dtype=bool)
        assert list(res["tar@far"].values()) == pytest.approx(tar_at_fars(scores, same, fars))
        assert list(res["tar@far_roc_nearest"].values()) == pytest.approx(
            tar_at_far_roc_nearest(scores, same, list(fars))
        )
        assert res["genuine"] == 15 and res["templates"] == 30
        assert res["detector_scores"] is use
        fpr, tpr = res["roc"]
        assert fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_meta_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ijbc_face_tid_mid.txt"):
        read_ijbc_meta(tmp_path)
    write_meta(tmp_path, ["a.jpg", "b.jpg"], [1, 2], [1, 1], [(1, 2, 0)])
    (tmp_path / "meta/ijbc_face_tid_mid.txt").write_text("a.jpg 1 1\nb.jpg two 1\n")
    with pytest.raises(ValueError, match=r"ijbc_face_tid_mid.txt:2: 'two' is not an int"):
        read_ijbc_meta(tmp_path)
    (tmp_path / "meta/ijbc_face_tid_mid.txt").write_text("a.jpg 1 1\nb.jpg 2\n")
    with pytest.raises(ValueError, match=r"ijbc_face_tid_mid.txt:2: expected 3 fields"):
        read_ijbc_meta(tmp_path)
    (tmp_path / "meta/ijbc_face_tid_mid.txt").write_text("a.jpg 1 1\nb.jpg 2 1\n")
    (tmp_path / "meta/ijbc_template_pair_label.txt").write_text("1 2 0\n1 2 3\n")
    with pytest.raises(ValueError, match=r"ijbc_template_pair_label.txt:2: label must be 0 or 1"):
        read_ijbc_meta(tmp_path)
    (tmp_path / "meta/ijbc_template_pair_label.txt").write_text("1 2 0\n")
    (tmp_path / "meta/ijbc_name_5pts_score.txt").write_text(
        "b.jpg 1 2 3 4 5 6 7 8 9 10 0.9\na.jpg 1 2 3 4 5 6 7 8 9 10 0.9\n"
    )
    with pytest.raises(ValueError, match="image names differ"):
        read_ijbc_meta(tmp_path)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("b.jpg  2 1", "a leading, trailing or doubled space"),
        ("b.jpg 2 1 ", "a leading, trailing or doubled space"),
        (" b.jpg 2 1", "a leading, trailing or doubled space"),
        ("b.jpg\t2 1", "a tab"),
        ("b\t.jpg 2 1", "a tab"),  # polars alone would read this name with its tab
        ('"b.jpg" 2 1', "a quote"),  # CSV quoting would silently strip these
        ("b.jpg '2' 1", "a quote"),
        ("", "empty line"),
    ],
)
def test_meta_with_stray_whitespace_or_quotes_names_the_line(
    tmp_path: Path, line: str, problem: str
) -> None:
    write_meta(tmp_path, ["a.jpg", "b.jpg", "c.jpg"], [1, 2, 2], [1, 1, 1], [(1, 2, 0)])
    tid_mid = tmp_path / "meta/ijbc_face_tid_mid.txt"
    tid_mid.write_text(f"a.jpg 1 1\n{line}\nc.jpg 2 1\n")
    with pytest.raises(ValueError, match=rf"ijbc_face_tid_mid.txt:2: {problem}"):
        read_ijbc_meta(tmp_path)
    tid_mid.write_text("a.jpg 1 1\r\nb.jpg 2 1\r\n")  # CRLF line ends are fine
    assert read_ijbc_meta(tmp_path).image_names.tolist() == ["a.jpg", "b.jpg"]
    tid_mid.write_text("")
    with pytest.raises(ValueError, match="ijbc_face_tid_mid.txt: no rows"):
        read_ijbc_meta(tmp_path)


def test_detector_scores_checked(tmp_path: Path) -> None:
    names, tids = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], [1, 1, 2, 3]
    write_meta(tmp_path, names, tids, [1, 2, 1, 1], [(1, 2, 1), (1, 3, 0), (2, 3, 0)],
               scores=[0.5, -0.1, 0.7, 0.9])
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score.txt:2: detector score -0.1"):
        read_ijbc_meta(tmp_path)
    feats = np.eye(4, dtype=np.float32)
    write_meta(tmp_path, names, tids, [1, 2, 1, 1], [(1, 2, 1), (1, 3, 0), (2, 3, 0)],
               scores=[0.0, 0.0, 0.0, 0.0])
    meta = read_ijbc_meta(tmp_path)
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score.txt: every detector score is 0"):
        evaluate_ijbc_features(feats, meta, fars=(0.5,))
    assert evaluate_ijbc_features(feats, meta, fars=(0.5,), use_detector_scores=False)["pairs"] == 3
    write_meta(tmp_path, names, tids, [1, 2, 1, 1], [(1, 2, 1), (1, 3, 0), (2, 3, 0)],
               scores=[0.5, 0.5, 0.0, 0.9])
    with pytest.warns(UserWarning, match="1 template.* only zero detector scores"):
        evaluate_ijbc_features(feats, read_ijbc_meta(tmp_path), fars=(0.5,))
