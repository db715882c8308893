"""The executor: the one place that touches hardware and data, above the stages.

Planning (`prunebench.context`, the stages' `runs`, `prunebench.plan`) says which runs a
study asks for. The executor makes them: it owns the device (claimed here, never while
planning), the data, making parents first, training (alone or as a stack), and finishing a
run (evaluate, measure, save). A stage's `execute(ex, run)` says how one kind of run is
computed, given an executor; nothing below the stages imports this module or the stages.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunebench.config import DataConfig, Study, TrainConfig
from prunebench.context import StudyContext
from prunebench.data import DataSplits, iterate_batches, load_dataset
from prunebench.determinism import NATIVE, ensure
from prunebench.devices import resolve_device
from prunebench.errors import ConfigError
from prunebench.io import atomic_torch_save, atomic_write_json, read_json
from prunebench.metrics import count_macs, size_counts, sparsity_counts
from prunebench.pruning import Mask, Scope, masked_nonzero, save_mask, sparsity_report
from prunebench.pruning.base import Batches
from prunebench.runs import Arch, Run, load_run_model, load_run_plugins, reusable
from prunebench.sources import record as source_record
from prunebench.sources import recorded, stale_files
from prunebench.stages import STAGES
from prunebench.training import evaluate_splits, train
from prunebench.training.loop import early_stopping

log = logging.getLogger("prunebench")

VAL_FALLBACK_FRACTION = 0.1


def load_data(d: DataConfig, device: torch.device, augment: bool | None = None) -> DataSplits:
    """The dataset a data config names; `augment` overrides the config's setting."""
    return load_dataset(d.name, d.root, mirror=d.mirror, download=d.download,
                        val_size=d.val_size, device=device,
                        augment=d.augment if augment is None else augment)


class Executor:
    """Makes the runs of one study on one device: `ensure(run)` makes a run (its parents
    first) unless it is done, `ensure_stack(runs)` makes one stack's runs together."""

    def __init__(self, ctx: StudyContext, device: str = "auto", progress: bool | None = None):
        self.ctx = ctx
        self.device = resolve_device(device)
        self.progress = progress

    @property
    def study(self) -> Study:
        return self.ctx.study

    @property
    def scope(self) -> Scope:
        return self.ctx.scope

    @property
    def dense_arch(self) -> Arch:
        return self.ctx.dense_arch

    @cached_property
    def data(self) -> DataSplits:
        return load_data(self.study.data, self.device)

    def device_for(self, name: str) -> torch.device:
        """The device a stage asks for by name (the benchmark's own `device` setting):
        claimed here, like the executor's own (a process keeps the GPU it claimed)."""
        return resolve_device(name)

    # ------------------------------------------------------------------ models and data

    def new_model(self, seed: int) -> nn.Module:
        """The study's unpruned architecture, freshly initialised from `seed`, on the device."""
        torch.manual_seed(seed)
        return self.dense_arch.build().to(self.device)

    def initialised(self, run: Run, seed: int) -> nn.Module:
        """The model dense training starts from, saved as the run's `init.pt` (what rewinding
        and methods applied at initialisation start from): a fresh model of `seed`, or the
        study's pretrained checkpoint (`model.checkpoint`, verified, then loaded)."""
        model = self.new_model(seed)
        checkpoint = self.study.model.checkpoint
        if checkpoint is not None:
            from prunebench.models.checkpoint import load_pretrained

            load_pretrained(model, checkpoint.path, checkpoint.sha256)
            log.info("starting from the pretrained checkpoint %s (sha256 %s)", checkpoint.path,
                     checkpoint.sha256[:12])
        atomic_torch_save(model.state_dict(), run.path / "init.pt")
        return model

    def load(self, run: Run, weights: str = "model.pt") -> tuple[nn.Module, Arch]:
        return load_run_model(run.path, weights, self.device)

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """The study's (unpruned) architecture with `state` loaded, on the device."""
        model = self.dense_arch.build()
        model.load_state_dict(state)
        return model.to(self.device)

    def calibration_batches(self, seed: int) -> Batches:
        """A fixed, seed-dependent sample of training batches for data-driven methods."""
        n, bs = self.study.calibration_batches, self.study.train.batch_size

        def batches():
            gen = torch.Generator().manual_seed(seed)
            it = iterate_batches(self.data.train_x, self.data.train_y, bs, shuffle=True,
                                 generator=gen)
            for _ in range(n):
                try:
                    yield next(it)
                except StopIteration:
                    return

        return batches

    def val_batches(self) -> Batches:
        """The validation split in evaluation batches, for methods that compare masks.

        With no validation split (data.val_size: 0) this falls back to the last 10% of the
        training split. The model has trained on those samples, so the estimates are
        optimistic; a study that uses `sensitivity` should hold out a validation split.
        """
        x, y = self.data.val_x, self.data.val_y
        if len(y) == 0:
            n = max(1, int(VAL_FALLBACK_FRACTION * len(self.data.train_y)))
            log.warning("no validation split: evaluating on the last %d training samples", n)
            x, y = self.data.train_x[-n:], self.data.train_y[-n:]
        batch_size = self.study.eval_batch_size
        return lambda: iterate_batches(x, y, batch_size)

    # ------------------------------------------------------------------ making runs

    def ensure(self, run: Run) -> Run:
        """Make `run` (its parents first) unless it is already done and undamaged; a finished
        run whose files no longer match their checksums is redone."""
        if reusable(run):
            _warn_if_stale(run)
            return run
        for parent in run.parents:
            self.ensure(parent)
        with _cleanup_on_failure([run]), run.logging():
            attach_sources(run)
            STAGES[run.stage].execute(self, run)
        return run

    def ensure_stack(self, runs: Sequence[Run]) -> None:
        """Make the unfinished runs of one stack (`prunebench.stacking`) together, their
        parents first; each run's log gets the stack's lines. A single unfinished run is
        made alone, as `ensure` makes it."""
        if all(reusable(run) for run in runs):
            for run in runs:
                _warn_if_stale(run)
            return
        with _locked(self.ctx.root / ".stacks" / f"{runs[0].hash}.lock"):
            # Jobs of one stack may run at once (after an edit adds runs to a stack whose
            # leader is done): the first trains what is missing, the others then find it done.
            todo = [run for run in runs if not reusable(run)]
            if len(todo) < 2:
                for run in todo:
                    self.ensure(run)
                return
            for run in todo:
                for parent in run.parents:
                    self.ensure(parent)
            with _cleanup_on_failure(todo), contextlib.ExitStack() as logs:
                for run in todo:
                    logs.enter_context(run.logging())
                for run in todo:
                    attach_sources(run)
                log.info("training %d runs as one stack: %s", len(todo),
                         " ".join(r.hash for r in todo))
                STAGES[todo[0].stage].execute_stack(self, todo)

    def train(self, run_dir: Path | None, model: nn.Module, recipe: TrainConfig, seed: int,
              mask: Mask | None = None, **kw) -> tuple[float, Any]:
        """Train `model` with checkpoints in `run_dir` (resumable; None: no files, as for a
        replay up to a rewind point); (seconds, final state)."""
        start = time.perf_counter()
        state = train(model, self.data, recipe, seed=seed, mask=mask, run_dir=run_dir,
                      eval_batch_size=self.study.eval_batch_size, progress=self.progress, **kw)
        return time.perf_counter() - start, state

    def train_stack(self, runs: Sequence[Run], models: Sequence[nn.Module], recipe: TrainConfig,
                    masks: Sequence[Mask | None]) -> float:
        """Train `models[k]` for `runs[k]` (seed, checkpoints) as one stack; the seconds each
        member's share of the stack took (its wall time over K)."""
        from prunebench.training.stacked import train_stacked

        start = time.perf_counter()
        train_stacked(models, self.data, recipe, seeds=[r.spec.seed for r in runs],
                      masks=masks, run_dirs=[r.path for r in runs],
                      eval_batch_size=self.study.eval_batch_size, progress=self.progress)
        return (time.perf_counter() - start) / len(runs)

    def finish(self, run: Run, model: nn.Module, arch: Arch, mask: Mask | None,
               extra: Mapping[str, Any]) -> dict:
        """Evaluate, measure and save a finished model: model.pt, arch.json, mask.pt and
        sparsity.json (masked models), config.json, and metrics.json last (marks it done).

        Names say what each number is: `weight_sparsity` is the fraction of all conv/linear
        weights of the saved model that are zero and `param_sparsity` that of all its
        parameters (counted from the weights, whole model, whatever the scope);
        `mask_sparsity` is the pruned fraction of the weights in the scope (the mask's);
        `param_reduction` and `macs_reduction` are measured on the saved model against the
        unpruned architecture (zeros count as removed parameters, but a masked weight still
        costs its MAC on dense kernels).
        """
        attach_sources(run)  # a lottery level made inside its chain's job comes here first
        counts = size_counts(model)
        macs = count_macs(model, arch.input_shape)
        dense = self.ctx.dense_costs
        metrics = {**evaluate_splits(model, self.data, self.study.eval_batch_size), **counts,
                   **sparsity_counts(model), "macs": macs,
                   "param_reduction": 1.0 - counts["params_nonzero"] / dense["params_total"],
                   "macs_reduction": 1.0 - macs / dense["macs"],
                   "threads": torch.get_num_threads(),
                   **early_stopping(run.path / "history.csv"), **extra}
        if mask is not None:
            unapplied = masked_nonzero(model, mask)
            if unapplied:
                raise RuntimeError(f"run {run.path}: {unapplied} weights that the mask prunes "
                                   "are nonzero; the model is not the one its mask describes")
            report = sparsity_report(mask)
            metrics["mask_sparsity"] = report["weight_sparsity"]
            atomic_write_json(run.path / "sparsity.json", report)
            save_mask(mask, run.path / "mask.pt")
        if arch.edits:
            from prunebench.structured import count_channels

            metrics["channels"] = count_channels(model)
        atomic_torch_save(model.state_dict(), run.path / "model.pt")
        atomic_write_json(run.path / "arch.json", arch.to_json())
        run.write_config()
        metrics = run.complete(metrics)
        log.info("%s %s done: top1 %.4f", run.kind, run.hash, metrics["top1"])
        return metrics


def _warn_if_stale(run: Run) -> None:
    """Say so when a finished run that is reused was made by other source than today's
    (it is reused all the same: `prunebench status` lists such runs, `prunebench rerun`
    redoes them)."""
    try:
        source = recorded(run.metrics())
    except ValueError:
        return
    changed = None if source is None else stale_files(run, source)
    if changed is not None:
        log.warning("reusing run %s, made by older source (changed since: %s); "
                    "`prunebench status` lists such runs, `prunebench rerun` redoes them",
                    run.path, ", ".join(changed))


def attach_sources(run: Run) -> None:
    """Give `run` the record of the source that decides its result (once), which its
    `metrics.json` will hold (`prunebench.sources`)."""
    if run.sources is None:
        run.sources = source_record(run)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing) for the block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _cleanup_on_failure(runs: Sequence[Run]) -> Iterator[None]:
    """On any failure, remove the directories of `runs` that this attempt created and that
    hold no checkpoint to resume from: no orphans."""
    fresh = [run for run in runs if not run.path.exists()]
    try:
        yield
    except BaseException:
        for run in fresh:
            if not (run.path / "checkpoints" / "last.pt").is_file():  # nothing to resume
                shutil.rmtree(run.path, ignore_errors=True)
        raise


def _recorded_mode(description: Any) -> str:
    """The `determinism` a run's description names (its dense ancestor's), else native."""
    if isinstance(description, dict):
        if isinstance(description.get("determinism"), str):
            return description["determinism"]
        for value in description.values():
            found = _recorded_mode(value)
            if found != NATIVE:
                return found
    return NATIVE


def evaluate_run_dir(path: str | Path, device: str = "auto") -> dict:
    """Re-evaluate a finished run's `model.pt` on its dataset's test and validation splits."""
    path = Path(path)
    needed = ("config.json", "model.pt", "arch.json")
    if not all((path / f).is_file() for f in needed):
        raise ConfigError(f"{str(path)!r} is not a finished run directory (needs "
                          f"{', '.join(needed)})")
    meta = read_json(path / "config.json")
    # A portable run is re-scored on its own code path (before any torch operation here).
    ensure(_recorded_mode(meta.get("config")), f"{path / 'config.json'} determinism")
    load_run_plugins(path)  # its dataset may be a plugin's
    dev = resolve_device(device)
    data = load_data(DataConfig(**meta["data"]), dev, augment=False)
    model, _ = load_run_model(path, device=dev)
    return {"path": str(path), **evaluate_splits(model, data), **size_counts(model)}


__all__ = ["Executor", "evaluate_run_dir", "load_data"]
