"""Two torchrun agents on one machine, standing in for two nodes (gloo on CPU).

Each "node" is a folder that plays its local disk: the agent's working directory, ``HOME``,
``TMPDIR`` and the f2c cache (``F2C_CACHE``), so the synthetic dataset is built once per node by
its local rank 0 and never shared. The run folder is shared, as it must be (every rank reads the
checkpoint when a run resumes): an absolute ``--out-dir`` outside both node folders, like a
shared file system mounted at the same path on every node.

With c10d rendezvous the agents agree on node ranks themselves (``--node-rank`` is only read by
static rendezvous), so which node hosts global rank 0 is found from the logs, not assumed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from train_support import assert_same_state, load

import f2c
from f2c.cli import UserError
from f2c.config import Config, SyntheticConfig
from f2c.training.default_job import prepare_synthetic
from f2c.training.runtime import Runtime, init_runtime
from f2c.training.tensorboard import TENSORBOARD_DIR

# Finding a node's processes reads /proc (Linux).
pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")

NODES = 2
# 40 identities x 4 images at 32 px; batch 8 per rank on 2 ranks: 10 steps per epoch.
TINY_JOB = [
    "--data.synthetic.num_identities", "40",
    "--data.synthetic.images_per_identity", "4",
    "--data.synthetic.num_test_identities", "20",
    "--data.synthetic.pairs_per_fold", "6",
    "--data.synthetic.image_size", "32",
    "--backbone", "tinyfacenet",
    "--model.embedding_size", "32",
    "--batch-size", "8",
    "--epochs", "2",
    "--device", "cpu",
    "--threads", "1",
    "--workers", "0",
    "--train.checkpoint_every", "4",
    "--train.log_every", "2",
    "--train.eval_batch_size", "64",
    "--train.progress", "false",
]
TOTAL_STEPS = 20
LAUNCH_TIMEOUT = 120.0  # seconds for one launch of both agents to finish


@dataclass
class Node:
    root: Path  # the node's "local disk"
    log: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def env(self) -> dict[str, str]:
        package_root = str(Path(f2c.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env.update(
            HOME=str(self.root / "home"),
            TMPDIR=str(self.root / "tmp"),
            F2C_CACHE=str(self.cache),
            PYTHONPATH=os.pathsep.join([package_root, env.get("PYTHONPATH", "")]),
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        return env


class World:
    """Starts both agents of one launch; kills whatever is left on teardown."""

    def __init__(self, nodes: list[Node], shared: Path) -> None:
        self.nodes = nodes
        self.shared = shared  # the shared run folder's parent (train.out_dir)
        self.args = [*TINY_JOB, "--out-dir", str(shared)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._marks = [0] * len(nodes)  # log offsets where the latest launch starts

    def launch(self, args: list[str]) -> list[subprocess.Popen[bytes]]:
        port, rdzv_id = _free_port(), uuid.uuid4().hex[:12]
        self._marks = [n.log.stat().st_size if n.log.exists() else 0 for n in self.nodes]
        procs = []
        for node in self.nodes:
            for sub in ("home", "tmp"):
                (node.root / sub).mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable, "-m", "torch.distributed.run",
                "--nnodes", str(NODES), "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                "--rdzv-id", rdzv_id, "--max-restarts", "0",
                "-m", "f2c.train", *args,
            ]
            with open(node.log, "ab") as log:
                log.write(f"\n=== launch {rdzv_id}: {' '.join(args)}\n".encode())
                log.flush()
                procs.append(subprocess.Popen(cmd, cwd=node.root, env=node.env(), stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        self.procs += procs
        return procs

    def wait(self, procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                self.kill_all()
                pytest.fail(f"an agent did not exit within {timeout:.0f} s\n{self.logs()}")
        return codes

    def run(self, args: list[str]) -> None:
        codes = self.wait(self.launch(args), LAUNCH_TIMEOUT)
        assert codes == [0] * NODES, f"exit codes {codes}\n{self.logs()}"

    def last_launch(self, node: int) -> str:
        with open(self.nodes[node].log, "rb") as f:
            f.seek(self._marks[node])
            return f.read().decode(errors="replace")

    def last_launch_text(self) -> str:
        return "".join(self.last_launch(i) for i in range(len(self.nodes)))

    def rank0_nodes(self) -> list[int]:
        """The nodes whose worker was global rank 0 in the latest launch (from its banner)."""
        banner = re.compile(r"^f2c\.train: .* process\(es\) on ", re.MULTILINE)
        return [i for i in range(len(self.nodes)) if banner.search(self.last_launch(i))]

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- node {i} ({node.log}):\n{node.log.read_text(errors='replace')[-tail:]}"
            for i, node in enumerate(self.nodes) if node.log.exists()
        )

    def kill_all(self) -> None:
        for node in self.nodes:
            _kill_node(node)
        for proc in self.procs:
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_in(folder: Path) -> list[int]:
    """Processes whose working directory is ``folder``: a node's agent and its workers.

    torchrun starts each worker in a session of its own, so the agent's process group does not
    hold it; the working directory (inherited) does, even after the agent is gone.
    """
    want = str(folder.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == want:
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return pids


def _kill_node(node: Node) -> None:
    """SIGKILL everything running on ``node``, as if the machine lost power."""
    for _ in range(50):
        pids = [pid for pid in _processes_in(node.root) if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"processes in {node.root} survive SIGKILL: {pids}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Two node folders kept for the module, so the slow test reuses the uninterrupted run."""
    root = tmp_path_factory.mktemp("two-node")
    nodes = [Node(root / f"node{i}", root / f"node{i}.log") for i in range(NODES)]
    w = World(nodes, root / "shared" / "runs")
    try:
        yield w
    finally:
        w.kill_all()


@pytest.fixture(scope="module")
def full_run(world: World) -> Path:
    """An uninterrupted two-node run (the reference); returns its run folder."""
    started = time.monotonic()
    world.run([*world.args, "--name", "full"])
    print(f"uninterrupted two-node run: {time.monotonic() - started:.1f} s")
    return world.shared / "full"


def _have_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _loss_events(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


def _train_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["kind"] == "train"]


def test_two_nodes_build_caches_per_node_and_write_the_run_once(
    world: World, full_run: Path
) -> None:
    # Each node built its own copy of the synthetic dataset, completely and once.
    for node in world.nodes:
        built = sorted(p.name for p in node.cache.iterdir())
        assert len(built) == 1 and built[0].startswith("synthetic-v1-40x4"), built
        assert (node.cache / built[0] / "synthetic.json").is_file()
        # Nothing went to the node's working folder (a relative run folder).
        assert not (node.root / "runs").exists()
    assert world.rank0_nodes() in ([0], [1]), world.logs()
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["world_size"] == NODES and summary["steps"] == TOTAL_STEPS
    assert summary["status"] == "finished"
    steps = _train_steps(full_run)
    assert steps == sorted(set(steps)) and steps[-1] == TOTAL_STEPS, "rows from several ranks?"
    if _have_tensorboard():  # one process (global rank 0) wrote events
        assert len(list((full_run / TENSORBOARD_DIR).iterdir())) == 1
        assert [s for s, _ in _loss_events(full_run)] == steps


@pytest.mark.slow  # one more launch of two agents: ~25 s on 2 busy cores
def test_a_run_folder_on_one_node_only_stops_at_start(world: World, full_run: Path) -> None:
    """A relative --out-dir resolves to each node's own disk: the ranks on the other node
    cannot read what rank 0 writes (a resume would fail there, or start over unseen)."""
    args = [*TINY_JOB, "--out-dir", "runs", "--name", "local"]
    codes = world.wait(world.launch(args), LAUNCH_TIMEOUT)
    assert all(code != 0 for code in codes), world.logs()
    text = world.last_launch_text()
    assert "cannot see" in text and "every node mounts at the same path" in text, world.logs()
    writer = world.rank0_nodes()
    assert [n for n in range(NODES) if (world.nodes[n].root / "runs").exists()] == writer
    assert not (world.nodes[writer[0]].root / "runs" / "local" / "checkpoint.pt").exists()


@pytest.mark.slow  # two more launches of two agents: ~70 s on 2 busy cores
def test_two_nodes_killed_and_restarted_match_an_uninterrupted_run(
    world: World, full_run: Path
) -> None:
    started = time.monotonic()
    args = [*world.args, "--name", "killed"]
    procs = world.launch(args)
    checkpoint = world.shared / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not checkpoint.exists() and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.02)
    # Kill the node of global rank 0 (the writer, and the likely rendezvous host) outright.
    victim = world.rank0_nodes()[0]
    _kill_node(world.nodes[victim])
    procs[victim].wait()
    assert checkpoint.exists(), f"no checkpoint before the kill\n{world.logs()}"
    killed = time.monotonic()
    # The surviving agent notices its peer is gone and exits on its own (no hang).
    survivor = world.wait([procs[1 - victim]], 90.0)
    assert survivor != [0], f"the survivor finished a run that lost a node\n{world.logs()}"
    survivor_exit = time.monotonic() - killed
    state = load(checkpoint)
    killed_at = state["global_step"]
    assert not state["finished"] and 0 < killed_at < TOTAL_STEPS

    # Restart both agents with the same command: the run continues from the checkpoint.
    world.run(args)
    assert f"resuming {world.shared / 'killed'} at step {killed_at}" in world.last_launch_text()
    a, b = load(full_run / "checkpoint.pt"), load(checkpoint)
    assert a["global_step"] == b["global_step"] == TOTAL_STEPS and b["finished"]
    assert_same_state(a, b, skip=("/config",))
    steps = _train_steps(world.shared / "killed")
    assert steps == sorted(set(steps)) and steps[-1] == TOTAL_STEPS
    if _have_tensorboard():  # the killed process's events after the checkpoint are purged
        assert _loss_events(world.shared / "killed") == _loss_events(full_run)
    print(f"kill at step {killed_at}, survivor exited {survivor_exit:.1f} s later; "
          f"kill + restart: {time.monotonic() - started:.1f} s")


# ------------------------------------------------------------- per-process roles, in-process


def test_device_follows_local_rank_not_global_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    # Second node, second GPU: global rank 3 of a world of 4 (one process: no group is made).
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    runtime = init_runtime("cuda")
    assert runtime.device == torch.device("cuda", 1) and chosen == [1]
    assert (runtime.rank, runtime.local_rank) == (3, 1) and not runtime.is_main
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match="LOCAL_RANK 2 but only 2 CUDA devices"):
        init_runtime("cuda")


def test_only_a_nodes_local_rank_zero_builds_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that is neither global rank 0 nor its node's local rank 0 never builds the
    synthetic dataset (which would race its node's builder); a missing cache is a clear error."""
    monkeypatch.setattr(Runtime, "barrier", lambda self: None)  # the others "have run"
    config = Config()
    config.data.synthetic = SyntheticConfig(
        num_identities=4, images_per_identity=2, num_test_identities=20, pairs_per_fold=2,
        image_size=32, cache_dir=str(tmp_path / "cache"),
    )
    config.train.progress = False
    third = Runtime(rank=3, world_size=4, local_rank=1, device=torch.device("cpu"))
    with pytest.raises(UserError, match="local rank 1.*missing after its node's local rank 0"):
        prepare_synthetic(config, third)
    assert not (tmp_path / "cache").exists()
    # The node's local rank 0 (global rank 2) builds it; then the third process opens it.
    second_node_leader = Runtime(rank=2, world_size=4, local_rank=0, device=torch.device("cpu"))
    built = prepare_synthetic(config, second_node_leader)
    assert prepare_synthetic(config, third).folder == built.folder
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [built.folder.name]
