"""YTF: frame lists, the 5,000-pair protocol (10 x 500), video features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from eval_support import PixelNet, face_images, save_png

from f2c.evaluation.features import ImageFiles, extract_features
from f2c.evaluation.metrics import kfold_evaluate
from f2c.evaluation.ytf import (
    evaluate_ytf,
    evaluate_ytf_features,
    load_ytf,
    read_frame_list,
    read_ytf_pairs,
    video_features,
)

VIDEOS = 20  # 10 identities x 2 videos, 2-3 frames each


@pytest.fixture(scope="module")
def ytf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ytf")
    rng = np.random.default_rng(0)
    frames, labels = face_images(rng, 10, 5)
    lines = []
    for i, (img, ident) in enumerate(zip(frames, labels, strict=True)):
        video = f"person{ident}/{i % 5 // 3}"  # frames 0-2 -> video 0, 3-4 -> video 1
        name = f"frames/{video}/{i}.png"
        save_png(img, root / name)
        lines.append(f"{name} {video}")
    (root / "frames.txt").write_text("\n".join(lines) + "\n")
    videos = sorted({ln.split()[1] for ln in lines})
    pairs = []
    for k in range(5000):
        a = videos[rng.integers(len(videos))]
        if k % 2 == 0:
            b = a[:-1] + ("1" if a.endswith("0") else "0")
        else:
            b = videos[rng.integers(len(videos))]
        pairs.append(f"{a} {b} {int(a.split('/')[0] == b.split('/')[0])}")
    (root / "pairs.txt").write_text("\n".join(pairs) + "\n")
    return root


def test_protocol_shape_and_accuracy(ytf_dir: Path) -> None:
    res = evaluate_ytf(PixelNet(), ytf_dir, flip=False)
    assert res["pairs"] == 5000 and res["folds"] == 10 and res["fold_size"] == 500
    assert res["videos"] == VIDEOS and res["frames"] == 50
    # independent path: per-video loop over frame features
    ytf = load_ytf(ytf_dir)
    frame_feats = extract_features(PixelNet(), ImageFiles(ytf.frames.paths), flip=False)
    vids = np.stack([frame_feats[ytf.frame_video == v].mean(0) for v in range(VIDEOS)])
    vids /= np.linalg.norm(vids, axis=1, keepdims=True)
    scores = (vids[ytf.left] * vids[ytf.right]).sum(1)
    ref = kfold_evaluate(scores, ytf.same, 10)
    np.testing.assert_allclose(res["fold_accuracies"], ref.accuracies)
    assert res["accuracy"] > 0.8


def test_video_features_is_normalised_mean() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(9, 4)).astype(np.float32)
    vid = np.array([2, 0, 0, 1, 2, 2, 1, 0, 2])
    got = video_features(f, vid, 3)
    for v in range(3):
        m = f[vid == v].mean(0)
        np.testing.assert_allclose(got[v], m / np.linalg.norm(m), rtol=1e-6)


def test_pair_count_is_validated(ytf_dir: Path, tmp_path: Path) -> None:
    _, _, videos = read_frame_list(ytf_dir / "frames.txt")
    lines = (ytf_dir / "pairs.txt").read_text().splitlines()
    short = tmp_path / "pairs.txt"
    short.write_text("\n".join(lines[:2500]) + "\n")  # the 2,500-pair assumption of old code
    with pytest.raises(ValueError, match=r"pairs.txt: the YTF protocol has 5000 pairs .* 2500"):
        read_ytf_pairs(short, videos)
    left, _, _ = read_ytf_pairs(short, videos, expected_pairs=2500)
    assert len(left) == 2500


def test_errors_name_file_and_line(ytf_dir: Path, tmp_path: Path) -> None:
    _, _, videos = read_frame_list(ytf_dir / "frames.txt")
    bad = tmp_path / "pairs.txt"
    bad.write_text(f"{videos[0]} {videos[1]} 1\n{videos[0]} nobody/0 0\n")
    with pytest.raises(ValueError, match=r"pairs.txt:2: video 'nobody/0' has no frames"):
        read_ytf_pairs(bad, videos, expected_pairs=2)
    bad.write_text(f"{videos[0]} {videos[1]}\n")
    with pytest.raises(ValueError, match=r"pairs.txt:1: expected 'video_a video_b 1\|0'"):
        read_ytf_pairs(bad, videos, expected_pairs=1)
    frames = tmp_path / "frames.txt"
    frames.write_text("a.png v1\n")
    with pytest.raises(FileNotFoundError, match=r"frames.txt:1: frame not found"):
        read_frame_list(frames)
    frames.write_text("a.png\n")
    with pytest.raises(ValueError, match=r"frames.txt:1: expected 'path video_id'"):
        read_frame_list(frames)
    with pytest.raises(FileNotFoundError, match="frame list not found"):
        read_frame_list(tmp_path / "none.txt")


def test_features_path_reuses_extraction(ytf_dir: Path) -> None:
    ytf = load_ytf(ytf_dir)
    feats = extract_features(PixelNet(), ytf.frames, flip=True)
    a = evaluate_ytf_features(feats, ytf)
    b = evaluate_ytf(PixelNet(), ytf_dir, flip=True)
    assert a["fold_accuracies"] == b["fold_accuracies"]
