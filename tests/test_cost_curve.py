"""CPU smoke test of the GPU cost-curve benchmark, so the script cannot rot between GPU runs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from f2c.benchmarks import cost_curve


def test_smoke_run_writes_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "curve"
    heads = "backbone,f2c:0.01,fc,partial_fc:0.1"
    assert cost_curve.main(["--smoke", "--heads", heads, "--out", str(out)]) == 0
    table = pl.read_csv(out / "cost_curve.csv")
    assert set(table["head"]) == set(heads.split(","))
    assert sorted(set(table["num_classes"])) == [1_000, 10_000]
    assert (table["status"] == "ok").all()
    assert (table["images_per_second"] > 0).all()
    # Each step runs 2 views of 1.5 B images; Q = 1% of C, above the one-pass minimum.
    assert (table["images_per_step"] == 12).all()
    f2c_rows = table.filter(pl.col("head") == "f2c:0.01")
    assert f2c_rows["pool_size"].to_list() == [10, 100]
    assert (out / "cost_curve.png").stat().st_size > 10_000
    assert "| head" in (out / "cost_curve.md").read_text()


def test_out_of_memory_is_a_row_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 40.00 GiB")

    monkeypatch.setattr(cost_curve, "_Step", explode)
    row = cost_curve.measure(
        "fc",
        backbone="mobilefacenet",
        num_classes=10,
        batch_size=4,
        device=cost_curve.torch.device("cpu"),
        amp=False,
    )
    assert row.status == "oom" and row.images_per_second is None


def test_other_errors_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a real bug")

    monkeypatch.setattr(cost_curve, "_Step", broken)
    with pytest.raises(ValueError, match="a real bug"):
        cost_curve.measure(
            "fc",
            backbone="mobilefacenet",
            num_classes=10,
            batch_size=4,
            device=cost_curve.torch.device("cpu"),
            amp=False,
        )


def test_unknown_head_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown head 'softmax'"):
        cost_curve._parse_head("softmax")
