"""Top-1, top-5 and loss of a model on a split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.data import DataSplits, iterate_batches


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and top-1/top-5 accuracy (fractions); top-5 is top-k with k=min(5, classes)."""
    if len(y) == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan")}
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    top1 = torch.zeros((), dtype=torch.long, device=x.device)
    top5 = torch.zeros((), dtype=torch.long, device=x.device)
    for xb, yb in iterate_batches(x, y, batch_size):
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit = topk.eq(yb[:, None])
        top1 += hit[:, 0].sum()
        top5 += hit.any(dim=1).sum()
    model.train(was_training)
    n = len(y)
    return {"loss": loss_sum.item() / n, "top1": top1.item() / n, "top5": top5.item() / n}


def evaluate_splits(model: nn.Module, data: DataSplits, batch_size: int = 1000) -> dict[str, float]:
    """Test metrics under plain names, validation metrics prefixed `val_`."""
    test = evaluate(model, data.test_x, data.test_y, batch_size)
    val = evaluate(model, data.val_x, data.val_y, batch_size)
    return {**test, **{f"val_{k}": v for k, v in val.items()}}
