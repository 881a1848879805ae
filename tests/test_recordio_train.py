"""Training on a RecordIO pack: ``python -m f2c.train --data x.rec`` with DataLoader workers, and
``data.sources`` entries given as paths (config files and ``--data PATH``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from recordio_support import rec_from_rows
from train_support import run_module, tiny_dataset, tiny_run_args

from f2c.config import ConfigError, check_inputs, load_config
from f2c.data import MixedSource, RecordIOSource, open_training_source
from f2c.data.synthetic import SyntheticDataset
from f2c.train import build_config, build_parser


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("rectrain") / "tiny")


@pytest.fixture(scope="module")
def rec(data: SyntheticDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny db as an insightface RecordIO pack (identities in label order)."""
    source = open_training_source(data.root)
    offsets, rows = source.identity_offsets, source.identity_rows
    images = [source.read_bytes(rows[offsets[c]:offsets[c + 1]])
              for c in range(source.num_classes)]
    return rec_from_rows(tmp_path_factory.mktemp("rec") / "train.rec", images)


def test_train_on_a_rec_with_two_workers(data: SyntheticDataset, rec: Path,
                                         tmp_path: Path) -> None:
    args = tiny_run_args(data, tmp_path / "runs", "--epochs", "1", "--train.name", "rec")
    at = args.index("--data")
    args[at:at + 3] = ["--data", str(rec)]
    args[args.index("--workers") + 1] = "2"
    done = run_module(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(rec) in done.stderr  # the start-up line names the data
    summary = json.loads((tmp_path / "runs" / "rec" / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["num_images"] == 96 and summary["num_classes"] == 24
    assert summary["steps"] == 12 and np.isfinite(summary["final_loss"])


def test_sources_as_paths_in_config_files_and_options(data: SyntheticDataset, rec: Path,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f"data:\n  sources:\n    - {rec}\n"
                    f"    - {{lmdb: {data.lmdb_path}, kv: {data.kv_path}}}\n")
    config = load_config(path)
    assert config.data.sources[0].path == str(rec) and config.data.sources[1].kv is not None
    check_inputs(config)
    mixed = open_training_source(list(config.data.sources))
    assert isinstance(mixed, MixedSource) and mixed.num_classes == 48
    config, _ = build_config(build_parser().parse_args(["--data", str(rec.parent)]))
    assert isinstance(open_training_source(list(config.data.sources)), RecordIOSource)
    with pytest.raises(ConfigError, match="one path, or an LMDB and its kv"):
        build_config(build_parser().parse_args(["--data", "a", "b", "c"]))
    with pytest.raises(ConfigError, match="data.sources\\[0\\]"):
        load_config(None, {"data.sources": [{"lmdb": "a.lmdb"}]})


def test_unrecognised_data_paths_fail_before_work(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    config, _ = build_config(build_parser().parse_args(["--data", str(tmp_path / "empty")]))
    with pytest.raises(ConfigError, match=r"data.sources\[0\].path: .*not training data"):
        check_inputs(config)
    config, _ = build_config(build_parser().parse_args(["--data", str(tmp_path / "no.rec")]))
    with pytest.raises(ConfigError, match=r"data.sources\[0\].path: training data not found"):
        check_inputs(config)
