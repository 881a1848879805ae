"""The one training step: order of work, EMA, non-finite stop, clipping, the view layout."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from f2c.config import OptimConfig
from f2c.heads import HeadBatch, HeadOutput, ProbeGallery
from f2c.training.errors import NonFiniteLossError
from f2c.training.step import (
    StepInput,
    StepModel,
    build_optimizer,
    clip_gradients,
    f2c_views,
    train_step,
)

D = 3


class RecordingHead(nn.Module):
    """A head with one parameter that keeps the batch it was given."""

    def __init__(self, requires_gallery: bool, scale: float = 1.0) -> None:
        super().__init__()
        self.requires_gallery = requires_gallery
        self.weight = nn.Parameter(torch.full((D,), scale))
        self.seen: HeadBatch | None = None

    def forward(self, batch: HeadBatch) -> HeadOutput:
        self.seen = batch
        loss = (batch.embeddings * self.weight).pow(2).sum()
        return HeadOutput(loss=loss, stats={"rows": float(batch.num_rows)})


def _model(requires_gallery: bool = True, **kwargs: object) -> StepModel:
    torch.manual_seed(0)
    nets = ProbeGallery(nn.Linear(4, D), momentum=0.9)
    head = RecordingHead(requires_gallery)
    optim = OptimConfig(lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.0)
    return StepModel(nets, head, build_optimizer(nets.probe, head, optim), **kwargs)  # type: ignore[arg-type]


def _input() -> StepInput:
    gen = torch.Generator().manual_seed(1)
    return StepInput(torch.randn(6, 4, generator=gen), torch.arange(6), split=4)


def test_ema_update_comes_before_the_gallery_forward_and_after_nothing_else() -> None:
    model = _model()
    probe0 = [p.detach().clone() for p in model.nets.probe.parameters()]
    gallery0 = [p.detach().clone() for p in model.nets.gallery.parameters()]
    batch = _input()
    result = train_step(model, batch)
    # One EMA step from the probe as it was before the optimiser step.
    for g, g0, p0 in zip(model.nets.gallery.parameters(), gallery0, probe0, strict=True):
        assert torch.allclose(g, 0.9 * g0 + 0.1 * p0, atol=1e-7)
    # The head saw the gallery embeddings of the updated gallery, and the probe's of the probe
    # before the optimiser step.
    head = model.head
    assert isinstance(head, RecordingHead) and head.seen is not None
    assert head.seen.gallery is not None
    assert torch.equal(head.seen.gallery, model.nets.gallery(batch.images))
    before = copy.deepcopy(model.nets.probe)
    for p, p0 in zip(before.parameters(), probe0, strict=True):
        p.data.copy_(p0)
    assert torch.equal(head.seen.embeddings.detach(), before(batch.images).detach())
    assert head.seen.split == 4 and torch.equal(head.seen.labels, batch.labels)
    # The optimiser moved the probe.
    assert not all(torch.equal(p, p0) for p, p0 in zip(model.nets.probe.parameters(), probe0,
                                                         strict=True))
    assert result.stats == {"rows": 6.0} and result.images == 6
    assert result.loss == pytest.approx(head.seen.embeddings.detach().pow(2).sum().item())


def test_heads_without_gallery_skip_the_gallery_entirely() -> None:
    model = _model(requires_gallery=False)
    gallery0 = copy.deepcopy(model.nets.gallery.state_dict())
    train_step(model, _input())
    head = model.head
    assert isinstance(head, RecordingHead) and head.seen is not None
    assert head.seen.gallery is None
    for key, value in model.nets.gallery.state_dict().items():
        assert torch.equal(value, gallery0[key])


def test_non_finite_loss_stops_before_anything_is_updated() -> None:
    model = _model(requires_gallery=False)
    before = copy.deepcopy(model.nets.probe.state_dict())
    bad = _input()
    bad = StepInput(bad.images * float("inf"), bad.labels, bad.split)
    with pytest.raises(NonFiniteLossError, match="loss became (nan|inf)") as info:
        train_step(model, bad)
    assert not math.isfinite(info.value.value)
    for key, value in model.nets.probe.state_dict().items():
        assert torch.equal(value, before[key])


def test_clipping_scales_all_gradients_to_the_global_norm() -> None:
    clipped = _model(clip_grad_norm=0.05)
    free = _model()
    params0 = [p.detach().clone() for p in clipped.optimizer.param_groups[0]["params"]]
    params0 += [p.detach().clone() for p in clipped.head.parameters()]
    train_step(free, _input())
    train_step(clipped, _input())
    # lr 0.5, plain SGD: each step moved the parameters by -0.5 * gradient.
    all_clipped = [*clipped.nets.probe.parameters(), *clipped.head.parameters()]
    all_free = [*free.nets.probe.parameters(), *free.head.parameters()]
    g_clipped = [(p0 - p.detach()) / 0.5 for p, p0 in zip(all_clipped, params0, strict=True)]
    g_free = [(p0 - p.detach()) / 0.5 for p, p0 in zip(all_free, params0, strict=True)]
    norm_free = torch.linalg.vector_norm(torch.cat([g.flatten() for g in g_free]))
    assert norm_free > 0.5  # clipping had something to do
    norm_clipped = torch.linalg.vector_norm(torch.cat([g.flatten() for g in g_clipped]))
    assert norm_clipped.item() == pytest.approx(0.05, rel=1e-4)
    for a, b in zip(g_clipped, g_free, strict=True):  # same direction
        assert torch.allclose(a, b * (0.05 / norm_free), atol=1e-6)


def test_clip_gradients_equals_torch_on_one_process() -> None:
    gen = torch.Generator().manual_seed(3)
    ours = [nn.Parameter(torch.zeros(5)) for _ in range(3)]
    theirs = [nn.Parameter(torch.zeros(5)) for _ in range(3)]
    for a, b in zip(ours, theirs, strict=True):
        a.grad = torch.randn(5, generator=gen)
        b.grad = a.grad.clone()
    norm = clip_gradients(ours[:2], ours[2:], 0.7)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.7)
    assert norm == pytest.approx(expected.item(), rel=1e-6)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip_grad_norm must be positive"):
        _model(clip_grad_norm=0.0)


def test_f2c_views_lay_out_identity_and_instance_rows() -> None:
    inst = (torch.arange(4).view(4, 1, 1, 1).expand(4, 2, 2, 3).to(torch.uint8),
            torch.tensor([10, 11, 12, 13]))
    ident = (torch.full((4, 2, 2, 3), 100, dtype=torch.uint8),
             torch.full((4, 2, 2, 3), 200, dtype=torch.uint8), torch.tensor([1, 2, 3, 4]))
    batch = f2c_views(inst, ident, torch.device("cpu"))
    assert batch.split == 6 and batch.images.shape == (12, 2, 2, 3)
    assert batch.labels.tolist() == [1, 2, 3, 4, 10, 11, 1, 2, 3, 4, 12, 13]
    first_pixel = batch.images[:, 0, 0, 0].tolist()
    assert first_pixel == [100] * 4 + [0, 1] + [200] * 4 + [2, 3]


def test_head_batch_checks_shapes_and_splits_views() -> None:
    emb, labels = torch.randn(5, D), torch.arange(5)
    with pytest.raises(ValueError, match="labels must be"):
        HeadBatch(emb, labels[:4], split=2)
    with pytest.raises(ValueError, match="split must be"):
        HeadBatch(emb, labels, split=6)
    with pytest.raises(ValueError, match="gallery must have"):
        HeadBatch(emb, labels, split=2, gallery=torch.randn(4, D))
    with pytest.raises(ValueError, match="both views or of neither"):
        HeadBatch.from_views(emb[:2], labels[:2], emb[2:], labels[2:], gallery_x=emb[:2])
    batch = HeadBatch.from_views(emb[:2], labels[:2], emb[2:], labels[2:], emb[:2], emb[2:])
    probe_y, labels_y, gallery_y = batch.view("y")
    assert torch.equal(probe_y, emb[2:]) and labels_y.tolist() == [2, 3, 4]
    assert gallery_y is not None and torch.equal(gallery_y, emb[2:])
