"""What a run is on disk: the `Run` record, its architecture (`Arch`), reading and writing.

A run is a directory named by the hash of its description (its resolved config, parents
included), so identical work lands in the same place and is reused: a run whose
`metrics.json` exists is done. Which runs a study asks for is decided by the stages
(`prunebench.stages`, each run with a typed spec, `prunebench.specs`); how a run is made
(device, data, training, measuring) by the executor (`prunebench.executor`). This module
imports neither.

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
import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunebench.config import canonical, config_hash
from prunebench.io import (
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    json_text,
    load_tensors,
    read_json,
)
from prunebench.models import get_model

if TYPE_CHECKING:
    from prunebench.specs import RunSpec

log = logging.getLogger("prunebench")


@dataclass(eq=False)
class Run:
    """One unit of work: a directory named by the hash of its description.

    `stage` names the stage that makes it and `label` the job it belongs to (a method label,
    or "dense"); `spec` is its typed spec (`prunebench.specs`): what kind of run it is, with
    its parent runs named (not hashed: everything that changes the result is in
    `description`).
    """

    root: Path
    kind: str
    description: Mapping[str, Any]
    meta: Mapping[str, Any]
    stage: str = ""
    label: str = "dense"
    spec: RunSpec | None = None
    # What `prunebench.sources.record` gives for this run, set by the executor before it
    # makes the run; `complete` records it in the run's provenance.
    sources: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def parents(self) -> tuple[Run, ...]:
        """The runs this one reads, as its spec names them."""
        return () if self.spec is None else self.spec.parents

    @cached_property
    def hash(self) -> str:
        return config_hash(self.description)

    def __eq__(self, other: object) -> bool:
        """The same run: the same directory (its description, under the same root)."""
        return isinstance(other, Run) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @cached_property
    def path(self) -> Path:
        return Path(self.root) / self.kind / self.hash

    @property
    def done(self) -> bool:
        return (self.path / "metrics.json").is_file()

    def metrics(self) -> dict:
        return read_json(self.path / "metrics.json")

    def complete(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Add the run's provenance (`prunebench.provenance`) to `metrics`, record the
        checksums of every file of the run (`metrics.json` included, by the bytes about to be
        written), then write `metrics.json`, which marks the run done (so a crash in between
        leaves it unfinished, never unverifiable); the metrics as written."""
        from prunebench.provenance import run_record

        metrics = {**metrics, "provenance": run_record(self.sources)}
        text = json_text(metrics)
        sums = {name: file_sha256(self.path / name) for name in _result_files(self.path)}
        sums["metrics.json"] = hashlib.sha256(text.encode()).hexdigest()
        atomic_write_json(self.path / CHECKSUMS, sums)
        atomic_write_text(self.path / "metrics.json", text)
        return metrics

    def damaged(self) -> str | None:
        """The first of a finished run's files whose checksum no longer matches (or that is
        gone), else None."""
        return damaged_file(self.path)

    def write_config(self) -> None:
        """`config.json`: the run's metadata, its description, and the plugins this process
        had loaded (so a later reader of the run, `prunebench evaluate` or
        `prunebench.load_run`, can import them before rebuilding its model and data)."""
        from prunebench.plugins import loaded

        names = [p.name for p in loaded()]
        atomic_write_json(
            self.path / "config.json",
            {"kind": self.kind, "hash": self.hash, **self.meta,
             **({"plugins": names} if names else {}), "config": canonical(self.description)},
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
# A run's log is appended to after it is done (and says nothing the results depend on);
# `checksums.json` is the record itself. Every other file is checked, `metrics.json` too.
_UNCHECKED = {"log.txt", "metrics.json", CHECKSUMS}


def damaged_file(run_dir: str | Path) -> str | None:
    """The first file of a finished run whose checksum no longer matches (or that is gone),
    else None (also for a run made before checksums were recorded)."""
    run_dir = Path(run_dir)
    sums_file = run_dir / CHECKSUMS
    if not sums_file.is_file():
        return None  # made before checksums were recorded
    try:
        sums = read_json(sums_file)
    except ValueError:
        return CHECKSUMS
    for name, digest in sums.items():
        path = run_dir / name
        if not path.is_file() or file_sha256(path) != digest:
            return name
    return None


def _result_files(run_dir: Path) -> list[str]:
    """The files a finished run is made of besides its metrics: not its log or training
    checkpoints (a directory)."""
    return sorted(p.name for p in run_dir.iterdir() if p.is_file() and p.name not in _UNCHECKED
                  and not p.name.startswith("."))


@dataclass(frozen=True)
class Arch:
    """How to rebuild a run's model: a registry model (or a factory) with its constructor
    arguments, plus the structural edits applied. `kwargs_json` is the canonical JSON of the
    arguments (a string, so the record stays hashable)."""

    model: str | None
    num_classes: int
    input_shape: tuple[int, ...]
    edits: tuple[Mapping[str, Any], ...] = ()
    factory: str | None = None
    kwargs_json: str = ""

    @staticmethod
    def of(model: str | None, num_classes: int, input_shape: tuple[int, ...], *,
           factory: str | None = None, kwargs: Mapping[str, Any] | None = None) -> Arch:
        return Arch(model, num_classes, tuple(input_shape), factory=factory,
                    kwargs_json=json.dumps(kwargs, sort_keys=True) if kwargs else "")

    @property
    def kwargs(self) -> dict[str, Any]:
        return json.loads(self.kwargs_json) if self.kwargs_json else {}

    def build(self) -> nn.Module:
        if self.factory is not None:
            from prunebench.models import build_from_factory

            model = build_from_factory(self.factory, self.num_classes, self.input_shape,
                                       self.kwargs)
        else:
            model = get_model(self.model, self.num_classes, self.input_shape, self.kwargs)
        if self.edits:
            from prunebench.structured import replay

            replay(model, self.input_shape, self.edits)
        return model

    def to_json(self) -> dict:
        out = {"model": self.model, "num_classes": self.num_classes,
               "input_shape": list(self.input_shape), "edits": [dict(e) for e in self.edits]}
        if self.factory is not None:
            out["factory"] = self.factory
        if self.kwargs_json:
            out["kwargs"] = self.kwargs
        return out

    @classmethod
    def read(cls, run_dir: Path) -> Arch:
        raw = read_json(Path(run_dir) / "arch.json")
        arch = cls.of(raw["model"], raw["num_classes"], tuple(raw["input_shape"]),
                      factory=raw.get("factory"), kwargs=raw.get("kwargs"))
        return dataclasses.replace(arch, edits=tuple(raw.get("edits", ())))


def load_run_plugins(run_dir: str | Path) -> None:
    """Import the plugins a run was made with (its `config.json` lists them), from the
    project directory, so its model and dataset are registered."""
    config = Path(run_dir) / "config.json"
    if config.is_file():
        names = read_json(config).get("plugins") or []
        if names:
            from prunebench.plugins import load_all

            load_all(list(names), f"{config} plugins")


def load_run_model(run_dir: str | Path, weights: str = "model.pt",
                   device: torch.device | str = "cpu") -> tuple[nn.Module, Arch]:
    """A finished run's model with its architecture rebuilt (after importing the plugins it
    was made with), weights loaded safely."""
    run_dir = Path(run_dir)
    load_run_plugins(run_dir)
    arch = Arch.read(run_dir)
    model = arch.build()
    model.load_state_dict(load_tensors(run_dir / weights))
    return model.to(device), arch


def reusable(run: Run) -> bool:
    """Whether `run` is done and undamaged; a damaged finished run is removed (to be redone)."""
    if not run.done:
        return False
    damaged = run.damaged()
    if damaged is None:
        return True
    log.warning("run %s: %s does not match its checksum; redoing the run", run.path, damaged)
    shutil.rmtree(run.path)
    return False


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


__all__ = ["Arch", "Run", "damaged_file", "load_run_model", "reusable", "seeded"]
