"""The training loop: masked, deterministic, resumable.

All state lives in a `TrainState` of plain tensors and modules (no globals), so a later step
can stack several grid points into one batched model. Pruned weights stay exactly zero:
the mask is applied to the weights when it is installed and after every optimizer step, so
every forward pass sees them at zero (this also undoes momentum, Adam and weight-decay
updates on pruned weights). Gradients of pruned weights are not masked: with element-wise
optimisers they only feed those weights' own optimiser state, which never reaches a kept
weight, and zeroing them makes Adam's second moment exactly zero, where torch's CPU sqrt is
about 6x slower (measured: 310 us vs 44 us on a 300x784 tensor) -- that alone cost 30 % of a
LeNet-300-100 training step.

Determinism: the shuffle and augmentation of epoch e come from a generator seeded with
(seed, e) alone, so a run resumed from its end-of-epoch checkpoint sees exactly the batches an
uninterrupted run would have seen.

Optimiser steps use the implementation the recipe's `optimizer_impl` names, by default
torch's fused kernels (one per parameter for the whole update) rather than torch's own CPU
default, its per-parameter loop of small ops: fused was the fastest of the three on the
2-core development CPU (`benchmarks/train_throughput.py`, `optimizer_impls`). Each
implementation rounds differently, so runs made with the per-parameter loop (before fused
became the default) end at slightly different weights; a fixed seed still gives
bit-identical runs with any one of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunebench.config import TrainConfig
from prunebench.data import DataSplits, iterate_batches, num_batches
from prunebench.io import atomic_torch_save, atomic_write_text
from prunebench.training.evaluate import evaluate
from prunebench.training.schedule import build_optimizer, lr_factor, set_lr

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    mask: dict[str, Tensor] | None
    steps_per_epoch: int
    epoch: int = 0
    iteration: int = 0
    history: list[dict] = field(default_factory=list)

    def set_mask(self, mask: Mapping[str, Tensor] | None) -> None:
        """Install a new mask: weights and optimizer state of pruned entries become 0."""
        self.mask = None if mask is None else {k: v.to(_device(self.model)) for k, v in mask.items()}
        self._pairs = masked_pairs(self.model, self.mask)
        enforce_mask(self._pairs)
        params = dict(self.model.named_parameters())
        for name, m in (self.mask or {}).items():
            for buf in self.optimizer.state.get(params[name], {}).values():
                if isinstance(buf, Tensor) and buf.shape == m.shape:
                    buf.mul_(m)

    @property
    def pairs(self) -> list[tuple[nn.Parameter, Tensor]]:
        return self._pairs


class Callback(Protocol):
    """Hooks into the loop; gradual pruning is one (it calls state.set_mask)."""

    def on_step_end(self, state: TrainState) -> None: ...


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def masked_pairs(model: nn.Module, mask: Mapping[str, Tensor] | None) -> list[tuple[nn.Parameter, Tensor]]:
    """(parameter, float mask) pairs: multiplying by a float mask is the cheapest enforcement."""
    if not mask:
        return []
    params = dict(model.named_parameters())
    return [(params[n], m.to(device=params[n].device, dtype=params[n].dtype)) for n, m in mask.items()]


@torch.no_grad()
def enforce_mask(pairs: Sequence[tuple[nn.Parameter, Tensor]]) -> None:
    for p, m in pairs:
        p.mul_(m)


def mask_sparsity(mask: Mapping[str, Tensor]) -> float:
    """The fraction of the masked weights that are pruned."""
    total = sum(m.numel() for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    return 1.0 - kept / total


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


# torch's three implementations of an optimiser step, by the recipe's `optimizer_impl`:
# fused kernels (one per parameter for the whole update; the fastest on CPU and CUDA,
# benchmarks/train_throughput.py), foreach (multi-tensor) ops, or the per-parameter loop.
# Each rounds differently, so the choice is part of every run's name (it is a recipe field).
OPTIMIZER_IMPLEMENTATION = {
    "fused": {"fused": True, "foreach": False},
    "foreach": {"fused": False, "foreach": True},
    "forloop": {"fused": False, "foreach": False},
}


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser (`build_optimizer` decides its hyperparameters), run by the
    implementation the recipe's `optimizer_impl` names."""
    reference = build_optimizer(params, cfg)
    implementation = OPTIMIZER_IMPLEMENTATION[cfg.optimizer_impl]
    return type(reference)(reference.param_groups[0]["params"],
                           **{**reference.defaults, **implementation})


def train(
    model: nn.Module,
    data: DataSplits,
    cfg: TrainConfig,
    *,
    seed: int,
    mask: Mapping[str, Tensor] | None = None,
    run_dir: str | Path | None = None,
    save_iterations: Sequence[int] = (),
    stop_at_iteration: int | None = None,
    start_iteration: int = 0,
    callbacks: Sequence[Callback] = (),
    eval_batch_size: int = 1000,
    progress: bool | None = None,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    loss_fn: LossFn | None = None,
) -> TrainState:
    """Train `model` in place on `data` with recipe `cfg`.

    With `run_dir`, a checkpoint is written after every epoch and an existing one is resumed;
    weights are saved at every iteration in `save_iterations` (`checkpoints/iter_<k>.pt`, for
    rewinding); the per-epoch metrics go to `history.csv`. `stop_at_iteration` stops early
    (used to replay a run up to a rewind point). `start_iteration` continues a schedule from
    that iteration, seeing exactly the batches and learning rates an uninterrupted run sees
    from there (late rewinding trains from iteration k to the end, not k more epochs). `loss_fn(logits, x, y)` replaces the
    cross-entropy (knowledge distillation passes one that also runs the teacher on x).
    `cfg.bn_l1` > 0 adds network slimming's L1 penalty on every BatchNorm scale.
    """
    device = _device(model)
    steps = num_batches(len(data.train_y), cfg.batch_size)
    state = _fresh_state(model, cfg, mask, steps)
    if loss_fn is None:
        loss_fn = cross_entropy(cfg.label_smoothing)
    bn_scales = [m.weight for m in model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    l1 = cfg.bn_l1 if bn_scales else 0.0
    ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None
    torch.manual_seed(seed)
    checkpoint = ckpt_dir / "last.pt" if ckpt_dir is not None else None
    resumed = checkpoint is not None and checkpoint.exists() and _resume(state, checkpoint)
    if resumed:
        log.info("resumed from epoch %d (iteration %d)", state.epoch, state.iteration)
    elif checkpoint is not None and checkpoint.with_name("last.pt.damaged").exists():
        state = _fresh_state(model, cfg, mask, steps)  # undo what the damaged file half-set
        torch.manual_seed(seed)
    if not resumed and start_iteration:
        state.epoch, state.iteration = divmod(start_iteration, steps)[0], start_iteration
    save_iterations = set(save_iterations)
    if ckpt_dir is not None and state.iteration in save_iterations:
        atomic_torch_save(model.state_dict(), ckpt_dir / f"iter_{state.iteration}.pt")
    done = stop_at_iteration is not None and state.iteration >= stop_at_iteration

    bar = tqdm(total=cfg.epochs, initial=state.epoch, desc="train", unit="epoch",
               disable=None if progress is None else not progress, leave=False)
    while state.epoch < cfg.epochs and not done:
        model.train()
        start = time.perf_counter()
        gen = epoch_generator(seed, state.epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        skip = state.iteration - state.epoch * steps  # > 0 only when starting mid-epoch
        for xb, yb in iterate_batches(
            data.train_x, data.train_y, cfg.batch_size, shuffle=True, generator=gen,
            augment=data.augment,
        ):
            if skip > 0:
                skip -= 1
                continue
            set_lr(state.optimizer, cfg.lr * lr_factor(cfg, state.iteration, steps))
            loss, logits = _step(state, xb, yb, loss_fn, bn_scales, l1)
            loss_sum += loss.detach() * len(yb)
            correct += logits.argmax(1).eq(yb).sum()
            seen += len(yb)
            state.iteration += 1
            for cb in callbacks:
                cb.on_step_end(state)
            if ckpt_dir is not None and state.iteration in save_iterations:
                atomic_torch_save(model.state_dict(), ckpt_dir / f"iter_{state.iteration}.pt")
            if stop_at_iteration is not None and state.iteration >= stop_at_iteration:
                done = True
                break
        if done and seen < len(data.train_y):
            break  # a partial epoch: a replay up to a rewind point, no epoch record
        state.epoch += 1
        record = {
            "epoch": state.epoch,
            "iteration": state.iteration,
            "lr": state.optimizer.param_groups[0]["lr"],
            "train_loss": (loss_sum / max(seen, 1)).item(),
            "train_top1": correct.item() / max(seen, 1),
            **{f"val_{k}": v for k, v in evaluate(model, data.val_x, data.val_y, eval_batch_size).items()},
            "epoch_time_s": time.perf_counter() - start,
        }
        if state.mask:  # a callback may change it (gradual pruning): log its trajectory
            record["weight_sparsity"] = mask_sparsity(state.mask)
        if not math.isfinite(record["train_loss"]):
            raise FloatingPointError(f"training diverged at epoch {state.epoch} (loss {record['train_loss']})")
        state.history.append(record)
        log.info("epoch %d/%d loss %.4f val_top1 %.4f", state.epoch, cfg.epochs,
                 record["train_loss"], record["val_top1"])
        bar.update(1)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val=f"{record['val_top1']:.3f}")
        if ckpt_dir is not None:
            _checkpoint(state, ckpt_dir / "last.pt")
            write_history(state.history, Path(run_dir) / "history.csv")
        if on_epoch_end is not None:
            on_epoch_end(state)
    bar.close()
    return state


LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    return lambda logits, x, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def _step(state: TrainState, xb: Tensor, yb: Tensor, loss_fn: LossFn,
          bn_scales: Sequence[Tensor], bn_l1: float) -> tuple[Tensor, Tensor]:
    pairs = state.pairs
    state.optimizer.zero_grad(set_to_none=True)
    logits = state.model(xb)
    loss = loss_fn(logits, xb, yb)
    loss.backward()
    if bn_l1:
        add_bn_l1_subgradient(bn_scales, bn_l1)
    state.optimizer.step()
    enforce_mask(pairs)
    return loss, logits


@torch.no_grad()
def add_bn_l1_subgradient(scales: Sequence[Tensor], strength: float) -> None:
    """Network slimming (Liu et al. 2017): the subgradient of strength * sum|gamma| added to
    the BatchNorm scales' gradients, which drives unimportant channels' scales to zero."""
    for gamma in scales:
        if gamma.grad is not None:
            gamma.grad.add_(torch.sign(gamma), alpha=strength)


def _checkpoint(state: TrainState, path: Path) -> None:
    save_checkpoint(path, state.model, state.optimizer.state_dict(), state.mask, state.epoch,
                    state.iteration, state.history, torch.get_rng_state())


def save_checkpoint(path: Path, model: nn.Module, optimizer_state: Mapping,
                    mask: Mapping[str, Tensor] | None, epoch: int, iteration: int,
                    history: Sequence[Mapping], torch_rng: Tensor) -> None:
    """An end-of-epoch `last.pt` (also written by stacked training, so either loop resumes
    the other's runs)."""
    atomic_torch_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer_state,
            "mask": {k: v.cpu() for k, v in mask.items()} if mask else None,
            "epoch": epoch,
            "iteration": iteration,
            "history": list(history),
            "torch_rng": torch_rng,
        },
        path,
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Mapping) -> None:
    """Load a saved optimiser state but keep the implementation `make_optimizer` chose (a
    checkpoint may have been written by another)."""
    implementation = {k: optimizer.param_groups[0][k] for k in ("fused", "foreach")}
    optimizer.load_state_dict(saved)
    for group in optimizer.param_groups:
        group.update(implementation)


def _fresh_state(model: nn.Module, cfg: TrainConfig, mask, steps: int) -> TrainState:
    state = TrainState(model, make_optimizer(model.parameters(), cfg), None, steps)
    state.set_mask(mask)
    return state


def _resume(state: TrainState, path: Path) -> bool:
    """Restore a checkpoint; a damaged one (truncated, foreign) is set aside and training
    starts afresh, which gives the same result as resuming would have, only later."""
    initial = {k: v.clone() for k, v in state.model.state_dict().items()}
    try:
        ckpt = torch.load(path, map_location=_device(state.model), weights_only=True)
        state.model.load_state_dict(ckpt["model"])
        load_optimizer_state(state.optimizer, ckpt["optimizer"])
        state.set_mask(ckpt["mask"])
        state.epoch, state.iteration = ckpt["epoch"], ckpt["iteration"]
        state.history = ckpt["history"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())
    except Exception as err:  # noqa: BLE001 (any unreadable or foreign file)
        log.warning("checkpoint %s is damaged (%s: %s); starting this run afresh", path,
                    type(err).__name__, err)
        state.model.load_state_dict(initial)
        path.replace(path.with_name(path.name + ".damaged"))
        return False
    return True


def write_history(history: Sequence[Mapping], path: Path) -> None:
    if not history:
        return
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k]) for k in keys) for row in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def early_stopping(path: Path) -> dict[str, float]:
    """The early-stopping point of a run's `history.csv` (Frankle & Carbin's measure of how
    fast a network learns): the iteration of minimum validation loss, recorded per epoch, and
    the validation top-1 there. Empty without a history or a validation split."""
    import csv

    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if math.isfinite(float(r.get("val_loss") or "nan"))]
    if not rows:
        return {}
    best = min(rows, key=lambda r: float(r["val_loss"]))  # the first of equal minima
    return {"early_stop_iteration": int(best["iteration"]),
            "early_stop_val_loss": float(best["val_loss"]),
            "early_stop_val_top1": float(best["val_top1"])}
