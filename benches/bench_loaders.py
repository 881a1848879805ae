"""The two training loaders end to end against the bare reader, on the same cores.

One training step reads an identity batch (``B`` identities, two views each: ``2B`` images) and
an instance batch (``B`` images). The loaders run as the trainer builds them
(``f2c.training.build.build_loaders``, uint8 batches as torch tensors) with the default
``data.workers = 0`` (one read-ahead thread per loader in this process) and, for comparison,
with 2 DataLoader worker processes split between the two loaders; the bare reader reads the
same rows with the same flips in this process (``source.read``, decode threads = cores).
The two are timed alternately, so other load on the machine hits both; ``extra_info`` holds
img/s of each and the ratio loaders / reader:

    pytest benches/bench_loaders.py --benchmark-enable            # smoke
    pytest benches/bench_loaders.py --benchmark-enable -m slow    # the quoted figure
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from f2c.config import DataConfig
from f2c.data import synthetic
from f2c.data.db import TrainingDbWriter
from f2c.data.samplers import DistributedIdentitySampler, DistributedInstanceSampler
from f2c.data.sources import TrainingSource, open_training_source
from f2c.training.build import build_loaders


def build_db(folder: Path, size: int, identities: int, per_identity: int) -> Path:
    """``identities`` × ``per_identity`` synthetic face crops, JPEG q95."""
    rng = np.random.default_rng(size)
    count = identities * per_identity
    ident = synthetic.sample_identities(rng, identities)
    nuis = synthetic.sample_nuisance(rng, count)
    owners = np.arange(count) // per_identity
    with TrainingDbWriter(folder, [f"id{i:05d}" for i in range(identities)]) as writer:
        for start in range(0, count, 64):
            sl = slice(start, start + 64)
            images = synthetic.render_identity_images(
                synthetic._take(ident, owners[sl]), synthetic._take(nuis, np.arange(count)[sl]),
                size, rng=rng,
            )
            for k, image in enumerate(images):
                out = io.BytesIO()
                Image.fromarray(image).save(out, format="JPEG", quality=95)
                writer.add(f"{start + k:08d}", int(owners[start + k]), out.getvalue())
    return folder


PREFETCH = DataConfig().prefetch
SETTLE_SECONDS = 0.5


def _samplers(source: TrainingSource, batch: int, seed: int) -> tuple[Any, Any]:
    identity = DistributedIdentitySampler(
        source.identity_offsets, source.identity_rows, batch, seed=seed
    )
    instance = DistributedInstanceSampler(len(source), batch, seed=seed)
    return identity, instance


def _epochs(sampler: DistributedInstanceSampler, items: Iterable[Any]) -> Iterator[Any]:
    """``items`` (the sampler itself, or a loader over it) epoch after epoch, endlessly."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from items


def _loader_bench(benchmark: Any, folder: Path, batch: int, steps: int, rounds: int,
                  workers: int) -> None:
    source = open_training_source(folder)
    identity_sampler, instance_sampler = _samplers(source, batch, seed=1)
    identity_loader, instance_loader = build_loaders(
        source, identity_sampler, instance_sampler, DataConfig(workers=workers),
        torch.device("cpu"),
    )
    identities = iter(identity_loader)
    instance_batches = _epochs(instance_sampler, instance_loader)
    # The bare reader reads what the same samplers (fresh copies) ask for.
    bare_identity, bare_instance = _samplers(source, batch, seed=1)
    bare_identity_requests = iter(bare_identity)
    bare_instance_requests = _epochs(bare_instance, bare_instance)
    reader = open_training_source(folder)
    times: dict[str, list[float]] = {"loaders": [], "reader": []}
    images_per_step = 3 * batch

    def take(count: int) -> None:
        for _ in range(count):
            view1, view2, _ = next(identities)
            images, _ = next(instance_batches)
            assert view1.dtype == torch.uint8 and images.shape[0] == batch

    def loaders_run() -> None:
        take(steps)

    def reader_run() -> None:
        for _ in range(steps):
            request = next(bare_identity_requests)
            reader.read(request.rows, request.flips)
            request = next(bare_instance_requests)
            reader.read(request.rows, request.flips)

    loaders_run()  # starts the workers and fills their prefetch queues
    reader_run()

    def both() -> None:
        # Steady state: the batches the loaders read ahead while idle are taken untimed, and
        # the reader starts once the loaders have refilled their queues (nothing reads
        # meanwhile).
        take(PREFETCH)
        for name, run in (("loaders", loaders_run), ("reader", reader_run)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            time.sleep(SETTLE_SECONDS)

    benchmark.pedantic(both, rounds=rounds, warmup_rounds=0)
    rates = {k: steps * images_per_step / float(np.median(v)) for k, v in times.items()}
    benchmark.extra_info.update({f"{k}_img_per_s": round(v) for k, v in rates.items()})
    benchmark.extra_info["workers"] = workers
    benchmark.extra_info["loaders / reader"] = round(rates["loaders"] / rates["reader"], 3)


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_db(tmp_path_factory.mktemp("loaders-small"), 112, 64, 4)


@pytest.fixture(scope="module")
def moderate_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_db(tmp_path_factory.mktemp("loaders-moderate"), 112, 512, 8)


@pytest.mark.benchmark(group="loaders vs bare reader")
@pytest.mark.parametrize("workers", [0, 2])
def bench_loaders_small(benchmark: Any, small_db: Path, workers: int) -> None:
    _loader_bench(benchmark, small_db, batch=16, steps=2, rounds=1, workers=workers)


@pytest.mark.slow
@pytest.mark.benchmark(group="loaders vs bare reader")
@pytest.mark.parametrize("workers", [DataConfig().workers, 2])
def bench_loaders_moderate(benchmark: Any, moderate_db: Path, workers: int) -> None:
    _loader_bench(benchmark, moderate_db, batch=128, steps=40, rounds=7, workers=workers)
