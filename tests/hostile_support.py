"""Hostile inputs, run in child processes: an abort fails one case instead of the test run.

A surface's test module defines child-side functions (plain functions of JSON arguments that
feed one input to f2c and return a JSON summary of what came back) and a list of
:class:`Hostile` cases naming them. :func:`run_calls` runs many calls in one child under a
memory limit, starting a fresh child after a crash; :func:`classify` sorts each outcome into

* ``clean``: the expected exception, naming the input (file, line, key, size), or, where the
  case allows it, a correct result;
* ``unclear``: some other exception, or one that does not name the input;
* ``abort``: the child died (a signal such as SIGABRT, or a hang past the timeout);
* ``silent``: the call returned although the input is bad (or returned a wrong result).

``python tests/hostile_support.py`` prints the table tried / clean / unclear / abort / silent
of every ``tests/test_hostile_*.py`` module for whatever f2c is on ``PYTHONPATH`` (how the
before/after figures of the hardening issue were counted).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent

# The child: applies an address-space limit (so a runaway allocation fails at a bounded size
# instead of swapping the machine), imports the surface module and runs one call per stdin line.
_CHILD = r"""
import json, resource, sys, importlib
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
module = importlib.import_module(sys.argv[2])
for line in sys.stdin:
    name, args = json.loads(line)
    try:
        out = {"kind": "returned", "value": getattr(module, name)(*args)}
    except BaseException as exc:  # a Rust panic surfaces as a BaseException
        out = {"kind": "raised", "type": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out, default=repr), flush=True)
"""


@dataclass
class Outcome:
    kind: str  # "returned", "raised" or "crashed"
    value: Any = None
    error_type: str = ""
    message: str = ""
    returncode: int | None = None


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(TESTS), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env.update(PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def run_calls(
    module: str,
    calls: Sequence[tuple[str, list[Any]]],
    *,
    timeout: float = 120,
    memory_gib: float = 4,
) -> list[Outcome]:
    """Run ``module.name(*args)`` for each call, in order, in child processes."""
    outcomes: list[Outcome] = []
    pending = list(calls)
    limit = str(int(memory_gib * 2**30))
    while pending:
        stdin = "".join(json.dumps(list(c)) + "\n" for c in pending)
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, limit, module],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=child_env(),
        )
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        for data in lines:
            outcomes.append(Outcome(
                data["kind"], data.get("value"), data.get("type", ""), data.get("message", "")
            ))
        pending = pending[len(lines):]
        if pending:
            # The child died (or hung) on the first call it did not report.
            if proc.returncode == 0 and not lines:
                raise RuntimeError(f"child of {module} reported nothing:\n{err[-3000:]}")
            outcomes.append(Outcome("crashed", message=err[-2000:], returncode=proc.returncode))
            pending = pending[1:]
    return outcomes


@dataclass
class Hostile:
    """One bad input: which child function runs it, and what a clean outcome is."""

    name: str
    call: str
    args: list[Any]
    errors: tuple[str, ...] = ("ValueError",)
    needles: tuple[str, ...] = ()
    # For inputs where a correct result is as good as an error: checks the returned value.
    accept: Callable[[Any], bool] | None = None
    memory_gib: float = 4
    tags: dict[str, Any] = field(default_factory=dict)


def classify(case: Hostile, outcome: Outcome) -> str:
    if outcome.kind == "crashed":
        return "abort"
    if outcome.kind == "raised":
        named = all(n in outcome.message for n in case.needles)
        return "clean" if outcome.error_type in case.errors and named else "unclear"
    if case.accept is not None and case.accept(outcome.value):
        return "clean"
    return "silent"


def run_cases(module: str, cases: Sequence[Hostile]) -> dict[str, tuple[str, Outcome]]:
    """Each case's class and outcome (cases grouped by memory limit, one child per group)."""
    results: dict[str, tuple[str, Outcome]] = {}
    for gib in sorted({c.memory_gib for c in cases}):
        group = [c for c in cases if c.memory_gib == gib]
        outcomes = run_calls(module, [(c.call, c.args) for c in group], memory_gib=gib)
        for case, outcome in zip(group, outcomes, strict=True):
            results[case.name] = (classify(case, outcome), outcome)
    return results


def explain(name: str, kind: str, outcome: Outcome) -> str:
    detail = outcome.message if outcome.kind != "returned" else repr(outcome.value)
    code = f" (exit {outcome.returncode})" if outcome.kind == "crashed" else ""
    return f"{name}: {kind}{code}: {outcome.error_type} {detail[-600:]}"


def _table() -> None:
    import tempfile

    rows = []
    for path in sorted(TESTS.glob("test_hostile_*.py")):
        module = importlib.import_module(path.stem)
        with tempfile.TemporaryDirectory() as tmp:
            cases = module.hostile_cases(Path(tmp))
            results = run_cases(path.stem, cases)
        counts = {k: 0 for k in ("clean", "unclear", "abort", "silent")}
        for name, (kind, outcome) in results.items():
            counts[kind] += 1
            if kind != "clean":
                print("  " + explain(name, kind, outcome).replace("\n", " | ")[:400])
        rows.append((path.stem.removeprefix("test_hostile_"), len(results), counts))
    print(f"{'surface':12s} {'tried':>5s} {'clean':>5s} {'unclear':>7s} {'abort':>5s} "
          f"{'silent':>6s}")
    for surface, tried, c in rows:
        print(f"{surface:12s} {tried:5d} {c['clean']:5d} {c['unclear']:7d} {c['abort']:5d} "
              f"{c['silent']:6d}")


if __name__ == "__main__":
    sys.path.insert(0, str(TESTS))
    _table()
