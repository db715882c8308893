"""The training loop: masked, deterministic, resumable, for one model or a stack of K.

`run_epochs` is the one epoch loop, over an `Engine` (`training.engine`): one model
(`SingleEngine`, what `train` runs) or K models of one architecture run as one stacked model
(`StackEngine`, what `training.stacked.train_stacked` runs). The loop draws every member's
batches, sets the learning rate, resumes, counts iterations, records each member's history,
stops on divergence and writes each member's `checkpoints/last.pt`,
`checkpoints/iter_<k>.pt` and `history.csv`; the engine runs the optimiser steps. So a
member of a stack writes what its run alone writes, and either engine resumes the other's
checkpoints.

Determinism: the shuffle and augmentation of epoch e come from a generator seeded with
(seed, e) alone, so a run resumed from its end-of-epoch checkpoint sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunebench.config import TrainConfig
from prunebench.data import DataSplits, iterate_batches, num_batches
from prunebench.io import atomic_torch_save, atomic_write_text
from prunebench.training.engine import (
    Callback,
    Engine,
    LossFn,
    SingleEngine,
    TrainState,
    mask_sparsity,
)
from prunebench.training.evaluate import evaluate
from prunebench.training.schedule import (
    OPTIMIZER_IMPLEMENTATION,
    lr_factor,
    make_optimizer,
    set_lr,
)

log = logging.getLogger(__name__)

# With the names other modules and the benchmarks import from here.
__all__ = ["OPTIMIZER_IMPLEMENTATION", "Callback", "LossFn", "TrainState", "early_stopping",
           "epoch_generator", "make_optimizer", "run_epochs", "save_checkpoint", "train",
           "write_history"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


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
    from there (late rewinding trains from iteration k to the end, not k more epochs).
    `loss_fn(logits, x, y)` replaces the cross-entropy (knowledge distillation passes one that
    also runs the teacher on x). `cfg.bn_l1` > 0 adds network slimming's L1 penalty on every
    BatchNorm scale. `callbacks` run after every step and `on_epoch_end` after every epoch,
    both with the run's `TrainState`.
    """
    engine = SingleEngine(model, cfg, seed=seed, mask=mask, callbacks=callbacks, loss_fn=loss_fn,
                          steps_per_epoch=num_batches(len(data.train_y), cfg.batch_size))
    run_epochs(engine, data, cfg, run_dirs=[run_dir], save_iterations=save_iterations,
               stop_at_iteration=stop_at_iteration, start_iteration=start_iteration,
               eval_batch_size=eval_batch_size, progress=progress,
               on_epoch_end=None if on_epoch_end is None else lambda: on_epoch_end(engine.state))
    return engine.state


def run_epochs(
    engine: Engine,
    data: DataSplits,
    cfg: TrainConfig,
    *,
    run_dirs: Sequence[str | Path | None],
    save_iterations: Sequence[int] = (),
    stop_at_iteration: int | None = None,
    start_iteration: int = 0,
    eval_batch_size: int = 1000,
    progress: bool | None = None,
    on_epoch_end: Callable[[], None] | None = None,
) -> None:
    """Train `engine`'s members to the end of `cfg`'s schedule, `run_dirs[k]` holding member
    k's checkpoints and history (None: nothing written for it); the arguments are `train`'s.

    When every member has a `checkpoints/last.pt` at one epoch, they are resumed; otherwise
    training starts afresh (from `start_iteration`), which ends where resuming would have,
    only later. A damaged checkpoint is set aside as `last.pt.damaged`. Raises
    FloatingPointError, naming the member, when a member's epoch loss is not finite.
    """
    k = len(engine.models)
    steps = engine.steps_per_epoch
    run_dirs = [None if d is None else Path(d) for d in run_dirs]
    if len(run_dirs) != k:
        raise ValueError(f"{k} members but {len(run_dirs)} run directories")
    resumed = _resume(engine, [None if d is None else d / "checkpoints" / "last.pt"
                               for d in run_dirs])
    if resumed:
        log.info("%s resumed from epoch %d (iteration %d)",
                 engine.label(0) if k == 1 else f"stack of {k}", engine.epoch, engine.iteration)
    elif start_iteration:
        engine.epoch, engine.iteration = start_iteration // steps, start_iteration
    save_iterations = set(save_iterations)
    if engine.iteration in save_iterations:
        _save_weights(engine, run_dirs)
    done = stop_at_iteration is not None and engine.iteration >= stop_at_iteration
    batches = MemberBatches(data, cfg.batch_size, engine.seeds)

    bar = tqdm(total=cfg.epochs, initial=engine.epoch, desc="train" if k == 1 else f"train x{k}",
               unit="epoch", disable=None if progress is None else not progress, leave=False)
    while engine.epoch < cfg.epochs and not done:
        engine.start_epoch()
        start = time.perf_counter()
        loss_sum = torch.zeros(k, device=engine.device)
        correct = torch.zeros(k, dtype=torch.long, device=engine.device)
        seen = 0
        skip = engine.iteration - engine.epoch * steps  # > 0 only when starting mid-epoch
        for x, shared, y in batches.epoch(engine.epoch, skip):
            set_lr(engine.optimizer, cfg.lr * lr_factor(cfg, engine.iteration, steps))
            losses, hits = engine.step(x, shared, y)
            loss_sum += losses * y.shape[1]
            correct += hits
            seen += y.shape[1]
            engine.iteration += 1
            engine.after_step()
            if engine.iteration in save_iterations:
                _save_weights(engine, run_dirs)
            if stop_at_iteration is not None and engine.iteration >= stop_at_iteration:
                done = True
                break
        if done and seen < len(data.train_y):
            break  # a partial epoch: a replay up to a rewind point, no epoch record
        engine.epoch += 1
        engine.sync()
        records = _epoch_records(engine, data, loss_sum, correct, seen, start, eval_batch_size)
        for member, record in enumerate(records):
            if not math.isfinite(record["train_loss"]):
                raise FloatingPointError(f"{engine.label(member)} diverged at epoch "
                                         f"{engine.epoch} (loss {record['train_loss']})")
        for member, (history, record) in enumerate(zip(engine.histories, records)):
            history.append(record)
            log.info("%s: epoch %d/%d loss %.4f val_top1 %.4f", engine.label(member),
                     engine.epoch, cfg.epochs, record["train_loss"], record["val_top1"])
        bar.update(1)
        bar.set_postfix(loss=f"{sum(r['train_loss'] for r in records) / k:.3f}",
                        val=f"{sum(r['val_top1'] for r in records) / k:.3f}")
        if any(d is not None for d in run_dirs):
            _save_epoch(engine, run_dirs)
        if on_epoch_end is not None:
            on_epoch_end()
    bar.close()
    engine.sync()


def _epoch_records(engine: Engine, data: DataSplits, loss_sum: Tensor, correct: Tensor,
                   seen: int, start: float, eval_batch_size: int) -> list[dict]:
    """Each member's history record of the epoch just trained. `epoch_time_s` is the
    member's share of the epoch's wall time (training and every member's validation, over
    K), so the times of a stack's runs add up to its wall time."""
    losses, hits = (loss_sum / max(seen, 1)).tolist(), correct.tolist()
    lr = engine.optimizer.param_groups[0]["lr"]
    records = [{"epoch": engine.epoch, "iteration": engine.iteration, "lr": lr,
                "train_loss": loss, "train_top1": hit / max(seen, 1),
                **{f"val_{key}": v for key, v in
                   evaluate(model, data.val_x, data.val_y, eval_batch_size).items()}}
               for model, loss, hit in zip(engine.models, losses, hits)]
    share = (time.perf_counter() - start) / len(records)
    for record, mask in zip(records, engine.masks()):
        record["epoch_time_s"] = share
        if mask:  # a callback may change it (gradual pruning): log its trajectory
            record["weight_sparsity"] = mask_sparsity(mask)
    return records


class MemberBatches:
    """The batches of every member's own run: one `iterate_batches` stream per distinct
    seed, drawn as a run alone draws them (permutation and augmentation from
    `epoch_generator(seed, epoch)`). Members of one seed share each input batch."""

    def __init__(self, data: DataSplits, batch_size: int, seeds: Sequence[int]):
        self.data, self.batch_size = data, batch_size
        self.seeds = list(dict.fromkeys(seeds))
        index = [self.seeds.index(s) for s in seeds]
        self.index = None if index == list(range(len(self.seeds))) else torch.tensor(
            index, device=data.train_x.device)
        self.k = len(seeds)

    def _batches(self, generator: torch.Generator):
        """One seed's batches of an epoch: from the tensors in memory, or, for a streamed
        dataset (`prunebench.data.streaming.SampleSet`), read by DataLoader workers. Both
        draw the same order and augmentation from `generator`, so they are the same
        batches, and a resumed run skips to the same place."""
        from prunebench.data.streaming import SampleSet, stream_batches

        if isinstance(self.data.train_x, SampleSet):
            return stream_batches(self.data.train_x, self.data.train_y, self.batch_size,
                                  shuffle=True, generator=generator, augment=self.data.augment)
        return iterate_batches(self.data.train_x, self.data.train_y, self.batch_size,
                               shuffle=True, generator=generator, augment=self.data.augment)

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[Tensor, bool, Tensor]]:
        """(x, shared, y) per step from step `skip` on: x is (B, ...) when every member
        reads the same batch (shared), else (K, B, ...); y is (K, B). The skipped batches
        are drawn all the same (augmentation draws from the epoch's generator)."""
        streams = [self._batches(epoch_generator(seed, epoch)) for seed in self.seeds]
        for step, batches in enumerate(zip(*streams)):
            if step < skip:
                continue
            if len(batches) == 1:
                x, y = batches[0]
                yield x, True, y.expand(self.k, -1)
                continue
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            if self.index is not None:
                x, y = x[self.index], y[self.index]
            yield x, False, y


# ---------------------------------------------------------------------------- checkpoints


def _resume(engine: Engine, paths: Sequence[Path | None]) -> bool:
    """Resume every member from its `last.pt` when all have one at the same epoch. Otherwise
    start afresh, which gives the same result, only later; a damaged file (truncated,
    foreign) is set aside and the engine rolled back to where it started."""
    present = [p is not None and p.exists() for p in paths]
    if not any(present):
        return False
    checkpoints = []
    for model, path, exists in zip(engine.models, paths, present):
        if not exists:
            continue
        try:
            ckpt = torch.load(path, map_location=engine.device, weights_only=True)
            _check_checkpoint(ckpt, model)
        except Exception as err:  # noqa: BLE001 (any unreadable or foreign file)
            _set_aside(path, err)
            return False
        checkpoints.append(ckpt)
    if not all(present) or len({(c["epoch"], c["iteration"]) for c in checkpoints}) != 1:
        log.warning("the stack's checkpoints are not all at one epoch; starting it afresh")
        return False
    initial = [{k: v.clone() for k, v in m.state_dict().items()} for m in engine.models]
    try:
        engine.restore(checkpoints)
    except Exception as err:  # noqa: BLE001 (a foreign optimiser state, mask or RNG state)
        for model, weights in zip(engine.models, initial):
            model.load_state_dict(weights)
        for path in paths:
            _set_aside(path, err)
        engine.reset()
        return False
    engine.epoch, engine.iteration = checkpoints[0]["epoch"], checkpoints[0]["iteration"]
    engine.histories = [list(c["history"]) for c in checkpoints]
    return True


def _check_checkpoint(ckpt: Mapping, model: nn.Module) -> None:
    """Raise unless `ckpt` is a `last.pt` of this architecture."""
    missing = {"model", "optimizer", "mask", "epoch", "iteration", "history"} - set(ckpt)
    if missing:
        raise KeyError(f"no {', '.join(sorted(missing))}")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if {k: tuple(v.shape) for k, v in ckpt["model"].items()} != expected:
        raise ValueError("weights of another architecture")


def _set_aside(path: Path, err: Exception) -> None:
    log.warning("checkpoint %s is damaged (%s: %s); starting afresh", path, type(err).__name__,
                err)
    path.replace(path.with_name(path.name + ".damaged"))


def _save_weights(engine: Engine, run_dirs: Sequence[Path | None]) -> None:
    """`checkpoints/iter_<k>.pt`: the weights at iteration k (a rewinding point)."""
    if all(d is None for d in run_dirs):
        return
    engine.sync()
    for model, run_dir in zip(engine.models, run_dirs):
        if run_dir is not None:
            atomic_torch_save(model.state_dict(),
                              run_dir / "checkpoints" / f"iter_{engine.iteration}.pt")


def _save_epoch(engine: Engine, run_dirs: Sequence[Path | None]) -> None:
    """Every member's end-of-epoch `checkpoints/last.pt` and `history.csv`."""
    members = zip(run_dirs, engine.models, engine.optimizer_states(), engine.masks(),
                  engine.histories, engine.rng_states())
    for run_dir, model, optimizer_state, mask, history, rng in members:
        if run_dir is not None:
            save_checkpoint(run_dir / "checkpoints" / "last.pt", model, optimizer_state, mask,
                            engine.epoch, engine.iteration, history, rng)
            write_history(history, run_dir / "history.csv")


def save_checkpoint(path: Path, model: nn.Module, optimizer_state: Mapping,
                    mask: Mapping[str, Tensor] | None, epoch: int, iteration: int,
                    history: Sequence[Mapping], torch_rng: Tensor) -> None:
    """An end-of-epoch `last.pt`: one member's weights, optimiser state (laid out as an
    optimiser over its model alone), mask, position, history and global RNG state."""
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
