"""Runs and the workspace they share.

A run is a directory named by the hash of its description (its resolved config, parents
included), so identical work lands in the same place and is reused: a run whose
`metrics.json` exists is done. Which runs a study asks for, and how each is made, is decided
by the stages (`prunebench.stages`); this module holds what they share: the `Run` record,
the data and device (`Workspace`), loading a run's model with its architecture, and writing a
finished run.

Every file is written atomically and `metrics.json` last, so an interrupted run never looks
finished. A run's `arch.json` says how to rebuild its model: the registry name, the number
of classes, the input shape and the structural edits (channels removed, in order) that
structured pruning applied. Loading builds the registry model, replays the edits with
Torch-Pruning and then loads `model.pt` with `torch.load(weights_only=True)`, so masked,
structurally pruned, fine-tuned and distilled models all go through the same code path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunebench.config import DataConfig, Study, TrainConfig, canonical, config_hash
from prunebench.data import DataSplits, dataset_shape, iterate_batches, load_dataset
from prunebench.errors import ConfigError
from prunebench.io import atomic_torch_save, atomic_write_json, load_tensors, read_json
from prunebench.metrics import count_macs, size_counts, sparsity_counts
from prunebench.models import get_model
from prunebench.pruning import Mask, Scope, masked_nonzero, save_mask, sparsity_report
from prunebench.pruning.base import Batches
from prunebench.training import evaluate_splits, train
from prunebench.training.loop import early_stopping

log = logging.getLogger("prunebench")

VAL_FALLBACK_FRACTION = 0.1


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`: a GPU if there is one. `auto` or `cuda` on a machine with several GPUs: a free
    one, claimed for this process (prunebench.devices), so parallel jobs never share one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        from prunebench.devices import claim_gpu

        return torch.device("cuda", claim_gpu(torch.cuda.device_count()))
    return torch.device(device)


def load_data(d: DataConfig, device: torch.device, augment: bool | None = None) -> DataSplits:
    """The dataset a data config names; `augment` overrides the config's setting."""
    return load_dataset(d.name, d.root, mirror=d.mirror, download=d.download,
                        val_size=d.val_size, device=device,
                        augment=d.augment if augment is None else augment)


@dataclass
class Run:
    """One unit of work: a directory named by the hash of its description.

    `stage` names the stage that makes it and `label` the job it belongs to (a method label,
    or "dense"); `parents` are the runs it reads; `spec` holds what the stage needs to make
    it (not hashed: everything that changes the result is in `description`).
    """

    root: Path
    kind: str
    description: Mapping[str, Any]
    meta: Mapping[str, Any]
    stage: str = ""
    label: str = "dense"
    parents: tuple[Run, ...] = ()
    spec: Mapping[str, Any] = field(default_factory=dict)

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

    def complete(self, metrics: Mapping[str, Any]) -> None:
        """Record the checksums of the run's files, then `metrics.json`, which marks the run
        done (so a crash in between leaves it unfinished, never unverifiable)."""
        sums = {name: _sha256(self.path / name) for name in _result_files(self.path)}
        atomic_write_json(self.path / CHECKSUMS, sums)
        atomic_write_json(self.path / "metrics.json", metrics)

    def damaged(self) -> str | None:
        """The first of a finished run's files whose checksum no longer matches (or that is
        gone), else None."""
        sums_file = self.path / CHECKSUMS
        if not sums_file.is_file():
            return None  # made before checksums were recorded
        for name, digest in read_json(sums_file).items():
            path = self.path / name
            if not path.is_file() or _sha256(path) != digest:
                return name
        return None

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


CHECKSUMS = "checksums.json"
_UNCHECKED = {"log.txt", "metrics.json", CHECKSUMS}


def _result_files(run_dir: Path) -> list[str]:
    """The files a finished run is made of: not its log, metrics or training checkpoints."""
    return sorted(p.name for p in run_dir.iterdir() if p.is_file() and p.name not in _UNCHECKED
                  and not p.name.startswith("."))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Arch:
    """How to rebuild a run's model: a registry model plus the structural edits applied."""

    model: str
    num_classes: int
    input_shape: tuple[int, ...]
    edits: tuple[Mapping[str, Any], ...] = ()

    def build(self) -> nn.Module:
        model = get_model(self.model, self.num_classes, self.input_shape)
        if self.edits:
            from prunebench.structured import replay

            replay(model, self.input_shape, self.edits)
        return model

    def to_json(self) -> dict:
        return {"model": self.model, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "edits": [dict(e) for e in self.edits]}

    @classmethod
    def read(cls, run_dir: Path) -> Arch:
        raw = read_json(Path(run_dir) / "arch.json")
        return cls(raw["model"], raw["num_classes"], tuple(raw["input_shape"]),
                   tuple(raw.get("edits", ())))


def load_run_model(run_dir: str | Path, weights: str = "model.pt",
                   device: torch.device | str = "cpu") -> tuple[nn.Module, Arch]:
    """A finished run's model with its architecture rebuilt, weights loaded safely."""
    run_dir = Path(run_dir)
    arch = Arch.read(run_dir)
    model = arch.build()
    model.load_state_dict(load_tensors(run_dir / weights))
    return model.to(device), arch


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

    @cached_property
    def dense_arch(self) -> Arch:
        """The study's unpruned architecture, known without reading the data (planning
        uses it)."""
        num_classes, input_shape = dataset_shape(self.study.data.name)
        return Arch(self.study.model.name, num_classes, input_shape)

    @cached_property
    def dense_costs(self) -> dict[str, int]:
        """Parameters and MACs of the unpruned architecture (what reductions compare with)."""
        model = self.dense_arch.build()
        return {"params_total": size_counts(model)["params_total"],
                "macs": count_macs(model, self.dense_arch.input_shape)}

    def new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return self.dense_arch.build().to(self.device)

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

    # ------------------------------------------------------------------ making runs

    def ensure(self, run: Run) -> Run:
        """Make `run` (its parents first) unless it is already done and undamaged; a finished
        run whose files no longer match their checksums is redone."""
        if _reusable(run):
            return run
        for parent in run.parents:
            self.ensure(parent)
        from prunebench.stages import STAGES

        with _cleanup_on_failure([run]), run.logging():
            STAGES[run.stage].execute(self, run)
        return run

    def ensure_stack(self, runs: Sequence[Run]) -> None:
        """Make the unfinished runs of one stack (`prunebench.stacking`) together, their
        parents first; each run's log gets the stack's lines. A single unfinished run is
        made alone, as `ensure` makes it."""
        if all(_reusable(run) for run in runs):
            return
        with _locked(self.root / ".stacks" / f"{runs[0].hash}.lock"):
            # Jobs of one stack may run at once (after an edit adds runs to a stack whose
            # leader is done): the first trains what is missing, the others then find it done.
            todo = [run for run in runs if not _reusable(run)]
            if len(todo) < 2:
                for run in todo:
                    self.ensure(run)
                return
            self._make_stack(todo)

    def _make_stack(self, todo: Sequence[Run]) -> None:
        for run in todo:
            for parent in run.parents:
                self.ensure(parent)
        from prunebench.stages import STAGES

        with _cleanup_on_failure(todo), contextlib.ExitStack() as logs:
            for run in todo:
                logs.enter_context(run.logging())
            log.info("training %d runs as one stack: %s", len(todo),
                     " ".join(r.hash for r in todo))
            STAGES[todo[0].stage].execute_stack(self, todo)

    def train(self, run_dir: Path, model: nn.Module, recipe: TrainConfig, seed: int,
              mask: Mask | None = None, **kw) -> tuple[float, Any]:
        """Train `model` with checkpoints in `run_dir` (resumable); (seconds, final state)."""
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
        train_stacked(models, self.data, recipe, seeds=[r.spec["seed"] for r in runs],
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
        counts = size_counts(model)
        macs = count_macs(model, arch.input_shape)
        dense = self.dense_costs
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
        run.complete(metrics)
        log.info("%s %s done: top1 %.4f", run.kind, run.hash, metrics["top1"])
        return metrics


def _reusable(run: Run) -> bool:
    """Whether `run` is done and undamaged; a damaged finished run is removed (to be redone)."""
    if not run.done:
        return False
    damaged = run.damaged()
    if damaged is None:
        return True
    log.warning("run %s: %s does not match its checksum; redoing the run", run.path, damaged)
    shutil.rmtree(run.path)
    return False


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
            if not (run.path / "checkpoints").is_dir():
                shutil.rmtree(run.path, ignore_errors=True)
        raise


def evaluate_run_dir(path: str | Path, device: str = "auto") -> dict:
    """Re-evaluate a finished run's `model.pt` on its dataset's test and validation splits."""
    path = Path(path)
    needed = ("config.json", "model.pt", "arch.json")
    if not all((path / f).is_file() for f in needed):
        raise ConfigError(f"{str(path)!r} is not a finished run directory (needs "
                          f"{', '.join(needed)})")
    meta = read_json(path / "config.json")
    dev = resolve_device(device)
    data = load_data(DataConfig(**meta["data"]), dev, augment=False)
    model, _ = load_run_model(path, device=dev)
    return {"path": str(path), **evaluate_splits(model, data), **size_counts(model)}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


__all__ = ["Arch", "Run", "Workspace", "evaluate_run_dir", "load_run_model", "resolve_device",
           "seeded"]
