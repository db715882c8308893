"""Runs: train, prune, fine-tune, lottery and sensitivity, each in a directory named by its
config hash.

A run's description (its resolved config, parents included) is hashed into its directory
name, so identical work lands in the same place and is reused: a run whose `metrics.json`
exists is done. Each run writes `config.json`, `metrics.json`, `log.txt` and its weights;
every file is written atomically, so an interrupted run never looks finished.

Descriptions nest: a fine-tune run's description contains its prune run's, which contains the
dense training run's. Changing anything upstream changes every name downstream. A method
applied during training (gradual pruning) has no prune run: its fine-tune run trains the dense
run's initialisation and names the method, options and sparsity itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunebench.config import DataConfig, MethodEntry, Study, TrainConfig, canonical, config_hash
from prunebench.errors import ConfigError
from prunebench.data import DataSplits, iterate_batches, load_dataset, num_batches
from prunebench.io import atomic_torch_save, atomic_write_json, read_json
from prunebench.models import get_model
from prunebench.pruning import (
    METHODS,
    Mask,
    PruneContext,
    Scope,
    apply_mask,
    load_mask,
    ones_mask,
    save_mask,
    sparsity_report,
)
from prunebench.pruning.base import Batches
from prunebench.pruning.gradual import GradualPruning, resolve_schedule
from prunebench.pruning.sensitivity import (
    DEFAULT_SWEEP,
    batch_evaluator,
    drop_sparsity,
    layer_sensitivity,
    plot_sensitivity,
    write_sensitivity_csv,
)
from prunebench.training import TrainState, evaluate_splits, train

log = logging.getLogger("prunebench")

REINIT_SEED_OFFSET = 1_000_000  # fresh initialisation for the lottery-ticket control
SENSITIVITY_DROP = 0.01  # metrics.json of a sensitivity run: where a layer costs > 1 point top-1
VAL_FALLBACK_FRACTION = 0.1


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_data(d: DataConfig, device: torch.device, augment: bool | None = None) -> DataSplits:
    """The dataset a data config names; `augment` overrides the config's setting."""
    return load_dataset(d.name, d.root, mirror=d.mirror, download=d.download,
                        val_size=d.val_size, device=device,
                        augment=d.augment if augment is None else augment)


@dataclass
class Run:
    """A directory holding one unit of work, named by the hash of its description."""

    root: Path
    kind: str
    description: Mapping[str, Any]
    meta: Mapping[str, Any]

    @cached_property
    def hash(self) -> str:
        return config_hash(self.description)

    @property
    def path(self) -> Path:
        return Path(self.root) / self.kind / self.hash

    @property
    def done(self) -> bool:
        return (self.path / "metrics.json").is_file()

    def metrics(self) -> dict:
        return read_json(self.path / "metrics.json")

    def write_config(self) -> None:
        atomic_write_json(
            self.path / "config.json",
            {"kind": self.kind, "hash": self.hash, **self.meta, "config": canonical(self.description)},
        )

    @contextlib.contextmanager
    def logging(self) -> Iterator[None]:
        """Send the prunebench logger to this run's log.txt for the duration."""
        self.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.path / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        try:
            yield
        finally:
            log.removeHandler(handler)
            handler.close()


class Workspace:
    """Everything a study's runs share: the data on the device, the runs root, the device."""

    def __init__(self, study: Study, runs_root: str | Path = "results/runs", device: str = "auto",
                 progress: bool | None = None):
        self.study = study
        self.root = Path(runs_root)
        self.device = resolve_device(device)
        self.progress = progress

    @cached_property
    def data(self) -> DataSplits:
        return load_data(self.study.data, self.device)

    @cached_property
    def scope(self) -> Scope:
        return Scope(**dataclasses.asdict(self.study.scope))

    def new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = get_model(self.study.model.name, self.data.num_classes, self.data.input_shape)
        return model.to(self.device)

    def load_model(self, path: Path) -> nn.Module:
        return self.load_model_state(torch.load(path, map_location="cpu", weights_only=True))

    def calibration_batches(self, seed: int):
        """A fixed, seed-dependent sample of training batches for data-driven methods."""
        n, bs = self.study.calibration_batches, self.study.train.batch_size

        def batches():
            gen = torch.Generator().manual_seed(seed)
            it = iterate_batches(self.data.train_x, self.data.train_y, bs, shuffle=True, generator=gen)
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

    def sparsities(self, entry: MethodEntry) -> tuple[float, ...]:
        """The study's sparsities, or the one a method's options fix (N:M)."""
        return METHODS.get(entry.method).sparsities(entry.options, self.study.sparsities)

    # ------------------------------------------------------------------ descriptions

    def train_run(self, seed: int) -> Run:
        s = self.study
        desc = {"data": s.data, "model": s.model, "train": s.train, "seed": seed}
        meta = {"study": s.name, "dataset": s.data.name, "model": s.model.name, "method": "dense",
                "label": "dense", "target_sparsity": 0.0, "seed": seed,
                "data": dataclasses.asdict(s.data)}
        return Run(self.root, "train", desc, meta)

    def prune_run(self, entry: MethodEntry, sparsity: float, seed: int) -> Run:
        parent = self.train_run(seed)
        desc = {"parent": parent.description, "scope": self.study.scope, "method": entry.method,
                "options": dict(entry.options), "sparsity": sparsity}
        if METHODS.get(entry.method).needs_data:
            desc["calibration_batches"] = self.study.calibration_batches
        meta = {**parent.meta, "method": entry.method, "label": entry.label, "target_sparsity": sparsity}
        return Run(self.root, "prune", desc, meta)

    def finetune_recipe(self, entry: MethodEntry) -> TrainConfig:
        """Methods applied at initialisation or during training train with the full recipe;
        methods applied to trained weights fine-tune."""
        when = METHODS.get(entry.method).when
        return self.study.train if when in ("init", "during_training") else self.study.finetune

    def finetune_run(self, entry: MethodEntry, sparsity: float, seed: int) -> Run:
        if METHODS.get(entry.method).when == "during_training":
            parent = self.train_run(seed)
            desc = {"parent": parent.description, "scope": self.study.scope, "method": entry.method,
                    "options": dict(entry.options), "sparsity": sparsity,
                    "train": self.finetune_recipe(entry)}
            meta = {**parent.meta, "method": entry.method, "label": entry.label,
                    "target_sparsity": sparsity, "stage": "finetune"}
            return Run(self.root, "finetune", desc, meta)
        parent = self.prune_run(entry, sparsity, seed)
        desc = {"parent": parent.description, "train": self.finetune_recipe(entry)}
        return Run(self.root, "finetune", desc, {**parent.meta, "stage": "finetune"})

    def sensitivity_run(self, seed: int, sweep: Sequence[float] = DEFAULT_SWEEP) -> Run:
        parent = self.train_run(seed)
        desc = {"parent": parent.description, "scope": self.study.scope, "sweep": list(sweep)}
        meta = {k: v for k, v in parent.meta.items() if k != "target_sparsity"}
        return Run(self.root, "sensitivity", desc, {**meta, "method": "sensitivity", "label": "sensitivity"})

    def lottery_level_run(self, entry: MethodEntry, schedule: Sequence[float], seed: int) -> Run:
        parent = self.train_run(seed)
        desc = {"parent": parent.description, "scope": self.study.scope, "method": entry.method,
                "options": dict(entry.options), "levels": list(schedule)}
        meta = {**parent.meta, "method": entry.method, "label": entry.label,
                "target_sparsity": schedule[-1], "level": len(schedule)}
        return Run(self.root, "lottery", desc, meta)

    def reinit_run(self, level: Run) -> Run:
        meta = {**level.meta, "method": f"{level.meta['method']}_reinit",
                "label": f"{level.meta['label']}_reinit"}
        return Run(self.root, "lottery_reinit", {"level": level.description}, meta)

    # ------------------------------------------------------------------ execution

    def _finish(self, run: Run, model: nn.Module, mask: Mask | None, extra: Mapping[str, Any]) -> dict:
        metrics = {**evaluate_splits(model, self.data, self.study.eval_batch_size),
                   **size_counts(model), **extra}
        if mask is not None:
            report = sparsity_report(mask)
            metrics["weight_sparsity"] = report["weight_sparsity"]
            atomic_write_json(run.path / "sparsity.json", report)
            save_mask(mask, run.path / "mask.pt")
        else:
            metrics["weight_sparsity"] = 0.0
        atomic_torch_save(model.state_dict(), run.path / "model.pt")
        run.write_config()
        atomic_write_json(run.path / "metrics.json", metrics)  # last: marks the run done
        log.info("%s %s done: top1 %.4f", run.kind, run.hash, metrics["top1"])
        return metrics

    def _train(self, run: Run, model: nn.Module, recipe: TrainConfig, seed: int,
               mask: Mask | None = None, **kw) -> tuple[float, TrainState]:
        start = time.perf_counter()
        state = train(model, self.data, recipe, seed=seed, mask=mask, run_dir=run.path,
                      eval_batch_size=self.study.eval_batch_size, progress=self.progress, **kw)
        return time.perf_counter() - start, state

    def run_train(self, seed: int) -> Run:
        run = self.train_run(seed)
        if run.done:
            return run
        with run.logging():
            log.info("dense training %s (seed %d)", run.hash, seed)
            model = self.new_model(seed)
            atomic_torch_save(model.state_dict(), run.path / "init.pt")
            elapsed, _ = self._train(run, model, self.study.train, seed)
            self._finish(run, model, None, {"train_time_s": elapsed})
        return run

    def run_prune(self, entry: MethodEntry, sparsity: float, seed: int) -> Run:
        run = self.prune_run(entry, sparsity, seed)
        if run.done:
            return run
        method = METHODS.get(entry.method)
        if method.when not in ("trained", "init"):
            raise ValueError(f"method {entry.method!r} is applied {method.when!r}, not in one shot")
        parent = self.run_train(seed)
        with run.logging():
            weights = "init.pt" if method.when == "init" else "model.pt"
            model = self.load_model(parent.path / weights)
            start = time.perf_counter()
            ctx = PruneContext(
                model, self.scope, entry.options,
                torch.Generator().manual_seed(seed),
                batches=self.calibration_batches(seed) if method.needs_data else None,
                val_batches=self.val_batches() if method.needs_data else None,
                input_shape=self.data.input_shape,
            )
            mask = method(ctx, sparsity)
            apply_mask(model, mask)
            log.info("pruned with %s to %.4f", entry.method, sparsity)
            self._finish(run, model, mask, {"prune_time_s": time.perf_counter() - start})
        return run

    def run_finetune(self, entry: MethodEntry, sparsity: float, seed: int) -> Run:
        run = self.finetune_run(entry, sparsity, seed)
        if run.done:
            return run
        if METHODS.get(entry.method).when == "during_training":
            return self._run_during_training(run, entry, sparsity, seed)
        parent = self.run_prune(entry, sparsity, seed)
        with run.logging():
            model = self.load_model(parent.path / "model.pt")
            mask = load_mask(parent.path / "mask.pt")
            elapsed, _ = self._train(run, model, self.finetune_recipe(entry), seed, mask)
            oneshot = parent.metrics()
            self._finish(run, model, mask, {
                "train_time_s": elapsed, "prune_time_s": oneshot["prune_time_s"],
                "oneshot_top1": oneshot["top1"], "oneshot_top5": oneshot["top5"],
            })
        return run

    def _run_during_training(self, run: Run, entry: MethodEntry, sparsity: float, seed: int) -> Run:
        """Train the dense run's initialisation with the full recipe while a callback prunes
        on the method's schedule; `schedule.json` lists the pruning steps and history.csv the
        weight sparsity after every epoch."""
        recipe = self.finetune_recipe(entry)
        schedule = resolve_schedule(entry.options, sparsity,
                                    num_batches(len(self.data.train_y), recipe.batch_size),
                                    recipe.epochs)  # first: bad options must not leave a run behind
        parent = self.run_train(seed)
        with run.logging():
            atomic_write_json(run.path / "schedule.json",
                              {**dataclasses.asdict(schedule), "steps": schedule.steps()})
            model = self.load_model(parent.path / "init.pt")
            pruner = GradualPruning(METHODS.get(entry.method), entry.options,
                                    self.scope, schedule,
                                    torch.Generator().manual_seed(seed))
            log.info("training with %s to %.4f: pruning at iterations %d..%d", entry.method,
                     sparsity, schedule.start_iteration, schedule.end_iteration)
            elapsed, state = self._train(run, model, recipe, seed, pruner.initial_mask(model),
                                         callbacks=[pruner])
            self._finish(run, model, state.mask, {"train_time_s": elapsed})
        return run

    def run_sensitivity(self, seed: int, sweep: Sequence[float] = DEFAULT_SWEEP) -> Run:
        """Per-layer sensitivity curves of the trained dense model on the validation split:
        `sensitivity.csv`, `sensitivity.png`, and in `metrics.json` the dense validation
        top-1 and, per layer, the first swept sparsity that costs more than 1 point."""
        run = self.sensitivity_run(seed, sweep)
        if run.done:
            return run
        parent = self.run_train(seed)
        with run.logging():
            model = self.load_model(parent.path / "model.pt")
            start = time.perf_counter()
            rows = layer_sensitivity(model, self.scope,
                                     batch_evaluator(self.val_batches()), sweep)
            elapsed = time.perf_counter() - start
            write_sensitivity_csv(rows, run.path / "sensitivity.csv")
            plot_sensitivity(rows, run.path / "sensitivity.png")
            run.write_config()
            metrics = {"val_top1": rows[0]["top1"], "val_loss": rows[0]["loss"],
                       "top1_drop": SENSITIVITY_DROP,
                       "sparsity_at_top1_drop": drop_sparsity(rows, SENSITIVITY_DROP),
                       "sensitivity_time_s": elapsed}
            atomic_write_json(run.path / "metrics.json", metrics)  # last: marks the run done
            log.info("sensitivity %s done: %d layers x %d sparsities", run.hash,
                     len(metrics["sparsity_at_top1_drop"]), len(sweep))
        return run

    def lottery_schedule(self, entry: MethodEntry, target: float) -> list[float]:
        """Sparsity after each round: prune `prune_fraction` of the remaining weights per
        round (Frankle & Carbin), and land exactly on `target` in the last round."""
        p = entry.options["prune_fraction"]
        levels, density = [], 1.0
        while True:
            density *= 1.0 - p
            if 1.0 - density >= target - 1e-9:
                break
            levels.append(1.0 - density)
        return [*levels, target] if target > 0 else []

    def rewind_weights(self, seed: int, iteration: int) -> dict:
        """Weights at `iteration` of the dense run: the saved init, a saved checkpoint, or a
        deterministic replay of dense training up to that iteration."""
        parent = self.run_train(seed)
        saved = parent.path / ("init.pt" if iteration == 0 else f"checkpoints/iter_{iteration}.pt")
        if saved.exists():
            return torch.load(saved, map_location="cpu", weights_only=True)
        replay = self.root / "rewind" / f"{parent.hash}-iter{iteration}.pt"
        if not replay.exists():
            model = self.load_model(parent.path / "init.pt")
            train(model, self.data, self.study.train, seed=seed, stop_at_iteration=iteration,
                  progress=self.progress)
            atomic_torch_save(model.state_dict(), replay)
        return torch.load(replay, map_location="cpu", weights_only=True)

    def run_lottery(self, entry: MethodEntry, target: float, seed: int) -> list[Run]:
        """Iterative magnitude pruning with rewinding to `target`; returns the final level run
        and, if enabled, its random-reinitialisation control."""
        method = METHODS.get(entry.method)
        opts = entry.options
        schedule = self.lottery_schedule(entry, target)
        rewind = self.rewind_weights(seed, opts["rewind_iteration"])
        parent = self.run_train(seed)
        previous, mask = parent, None
        for i in range(1, len(schedule) + 1):
            level = self.lottery_level_run(entry, schedule[:i], seed)
            if not level.done:
                with level.logging():
                    trained = self.load_model(previous.path / "model.pt")
                    ctx = PruneContext(trained, self.scope, opts,
                                       torch.Generator().manual_seed(seed), mask=mask)
                    mask = method(ctx, schedule[i - 1])
                    model = self.load_model_state(rewind)
                    apply_mask(model, mask)
                    log.info("level %d: sparsity %.4f, rewound to iteration %d", i,
                             schedule[i - 1], opts["rewind_iteration"])
                    elapsed, _ = self._train(level, model, self.study.train, seed, mask)
                    self._finish(level, model, mask, {"train_time_s": elapsed, "level": i})
            mask = load_mask(level.path / "mask.pt")
            previous = level
        runs = [previous]
        if opts["reinit_control"] and schedule:
            runs.append(self.run_reinit(previous, seed))
        return runs

    def run_reinit(self, level: Run, seed: int) -> Run:
        run = self.reinit_run(level)
        if run.done:
            return run
        with run.logging():
            mask = load_mask(level.path / "mask.pt")
            model = self.new_model(seed + REINIT_SEED_OFFSET)
            apply_mask(model, mask)
            log.info("random reinitialisation control for %s", level.hash)
            elapsed, _ = self._train(run, model, self.study.train, seed, mask)
            self._finish(run, model, mask, {"train_time_s": elapsed})
        return run

    def load_model_state(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        model = get_model(self.study.model.name, self.data.num_classes, self.data.input_shape)
        model.load_state_dict(state)
        return model.to(self.device)


def evaluate_run_dir(path: str | Path, device: str = "auto") -> dict:
    """Re-evaluate a finished run's `model.pt` on its dataset's test and validation splits."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file() or not (path / "model.pt").is_file():
        raise ConfigError(f"{str(path)!r} is not a finished run directory (needs config.json and model.pt)")
    meta = read_json(config_file)
    dev = resolve_device(device)
    data = load_data(DataConfig(**meta["data"]), dev, augment=False)
    model = get_model(meta["model"], data.num_classes, data.input_shape)
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    return {"path": str(path), **evaluate_splits(model.to(dev), data), **size_counts(model)}


def size_counts(model: nn.Module) -> dict[str, int]:
    """All parameters (biases and BatchNorm included) and how many are nonzero."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"params_total": total, "params_nonzero": nonzero}
