"""Knowledge distillation's loss and network slimming's BatchNorm penalty, in the real loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunebench.config import TrainConfig
from prunebench.data import DataSplits
from prunebench.training import train
from prunebench.training.distill import DistillationLoss, kd_loss


def test_kd_loss_equals_the_formula_on_hand_made_logits():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    teacher = torch.tensor([[1.0, 1.5, 0.0], [-2.0, 0.5, 2.5]])
    targets = torch.tensor([0, 2])
    T, alpha = 3.0, 0.7

    def softmax(row, t):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    kl = ce = 0.0
    for s, t, y in zip(student.tolist(), teacher.tolist(), targets.tolist()):
        p, q = softmax(t, T), softmax(s, T)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        ce += -math.log(softmax(s, 1.0)[y])
    expected = alpha * T * T * kl / 2 + (1 - alpha) * ce / 2
    assert kd_loss(student, teacher, targets, T, alpha).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_limits_alpha_zero_is_cross_entropy_and_equal_logits_give_zero_soft_term():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 5
    ce = nn.functional.cross_entropy(logits, y)
    assert kd_loss(logits, logits + 1.0, y, 4.0, 0.0).item() == pytest.approx(ce.item())
    assert kd_loss(logits, logits, y, 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_freezes_the_teacher_and_moves_the_student_towards_it():
    torch.manual_seed(0)
    teacher, student = nn.Linear(6, 3), nn.Linear(6, 3)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    loss_fn = DistillationLoss(teacher, temperature=2.0, alpha=1.0)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    before = loss_fn(student(x), x, y).item()
    for _ in range(200):
        opt.zero_grad()
        loss_fn(student(x), x, y).backward()
        opt.step()
    assert loss_fn(student(x), x, y).item() < 0.1 * before
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training


def bn_data(n=256, seed=0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return DataSplits("toy", 2, (1, 6, 6), x, y, x[:32], y[:32], x[:32], y[:32], None)


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def mean_abs_gamma(model: nn.Module) -> float:
    gammas = [m.weight.detach().abs() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return torch.cat(gammas).mean().item()


def test_slimming_penalty_drives_bn_scales_towards_zero_as_it_grows():
    data = bn_data()
    scales = []
    for penalty in (0.0, 1e-3, 1e-2, 5e-2):
        model = bn_model()
        recipe = TrainConfig(epochs=6, batch_size=32, optimizer="sgd", lr=0.05,
                             schedule="constant", bn_l1=penalty)
        train(model, data, recipe, seed=0, progress=False)
        scales.append(mean_abs_gamma(model))
    assert scales == sorted(scales, reverse=True)
    assert scales[-1] < 0.5 * scales[0]


def test_slimming_penalty_leaves_models_without_batchnorm_unchanged():
    data = bn_data()
    weights = []
    for penalty in (0.0, 1e-2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
        train(model, data, TrainConfig(epochs=2, batch_size=32, bn_l1=penalty), seed=0,
              progress=False)
        weights.append(model[1].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
