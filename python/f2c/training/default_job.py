"""The embedded default job: synthetic identities, built once and cached, trained on a CPU.

``python -m f2c.train`` with no data sources runs this job. Its settings (``DEFAULT_JOB``) are a
layer between the dataclass defaults (the paper's GPU recipe) and any config file or
command-line override, so ``python -m f2c.train --head fc`` trains the FC baseline on the same
data with the same budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from f2c.cli import UserError
from f2c.config import Config, DataSource, SyntheticConfig
from f2c.training.runtime import Runtime

__all__ = ["DEFAULT_JOB", "SyntheticData", "cache_root", "prepare_synthetic"]

# Overrides (section.key -> value) applied when no data source is configured.
DEFAULT_JOB: dict[str, Any] = {
    # Reading in the training process (one read-ahead thread): ~2% of a CPU step, and no worker
    # process competes for the cores.
    "data.workers": 0,
    # A plain 1M-parameter CNN at 48x48: ~450 img/s on 2 cores (MobileFaceNet at 112x112 runs
    # over 10x slower there, dominated by depthwise-conv and PReLU backward kernels).
    "model.backbone": "tinyfacenet",
    "model.embedding_size": 128,
    "train.batch_size": 64,
    "train.epochs": 8,
    "train.checkpoint_every": 200,
    "train.log_every": 5,
    "train.eval_batch_size": 250,
    "optim.lr": 0.1,
    "optim.weight_decay": 5e-4,
    "optim.schedule": "cosine",
    "optim.warmup_epochs": 0.5,
}


def cache_root(config: SyntheticConfig) -> Path:
    """``data.synthetic.cache_dir``, else ``$F2C_CACHE``, else ``~/.cache/f2c``."""
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    env = os.environ.get("F2C_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "f2c"


@dataclass(frozen=True)
class SyntheticData:
    source: DataSource
    pairs_path: str
    pixel_baseline_accuracy: float
    folder: Path


def prepare_synthetic(config: Config, runtime: Runtime) -> SyntheticData:
    """Build (once per node) or reuse the cached synthetic dataset of ``config.data.synthetic``.

    The cache folder may be node-local or shared by all nodes. Global rank 0 builds it first;
    after a barrier, the local rank 0 of every other node builds its node's copy if it still
    lacks one (a node-local cache; on a shared one it is complete by then); after a second
    barrier every rank opens the complete folder. Other local ranks never build, so processes
    of one node never race on the same folder.
    """
    from f2c.data.synthetic import MANIFEST_NAME, make_synthetic_dataset, pixel_cosine_accuracy

    s = config.data.synthetic
    folder = cache_root(s) / (
        f"synthetic-v1-{s.num_identities}x{s.images_per_identity}-t{s.num_test_identities}"
        f"-p{s.pairs_per_fold}-s{s.image_size}-seed{s.seed}"
    )
    kwargs = {
        "num_identities": s.num_identities,
        "images_per_identity": s.images_per_identity,
        "num_test_identities": s.num_test_identities,
        "pairs_per_fold": s.pairs_per_fold,
        "image_size": s.image_size,
        "seed": s.seed,
    }
    if runtime.is_main:
        make_synthetic_dataset(folder, progress=config.train.progress, **kwargs)
    runtime.barrier()
    if runtime.distributed:
        if runtime.local_rank == 0 and not runtime.is_main:
            make_synthetic_dataset(folder, **kwargs)  # opens it if complete, else builds it
        runtime.barrier()
    if not (folder / MANIFEST_NAME).is_file():
        raise UserError(
            f"rank {runtime.rank} (local rank {runtime.local_rank}): the synthetic dataset "
            f"{folder} is missing after its node's local rank 0 prepared it; do all processes "
            "of a node share its cache folder (data.synthetic.cache_dir, $F2C_CACHE)?"
        )
    dataset = make_synthetic_dataset(folder, **kwargs)  # complete now: opens the cache
    return SyntheticData(
        source=DataSource(lmdb=str(dataset.lmdb_path), kv=str(dataset.kv_path)),
        pairs_path=str(dataset.pairs_path),
        pixel_baseline_accuracy=float(pixel_cosine_accuracy(dataset.pairs_path)),
        folder=folder,
    )
