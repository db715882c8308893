"""Sensitivity: per-layer sensitivity curves of a dense model on the validation split, for
the methods that allocate sparsity from them (their `sensitivity_sweep` hook). The prune
runs of those methods read this run's rows instead of measuring again."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunebench.context import StudyContext
from prunebench.pruning.sensitivity import (
    batch_evaluator,
    drop_sparsity,
    layer_sensitivity,
    plot_sensitivity,
    write_sensitivity_csv,
)
from prunebench.runs import Run
from prunebench.specs import SensitivitySpec
from prunebench.stages.base import Stage, dense_run, method_of

if TYPE_CHECKING:
    from prunebench.executor import Executor

log = logging.getLogger("prunebench")

SENSITIVITY_DROP = 0.01  # metrics.json: where a layer costs more than 1 point of top-1
ROWS_FILE = "sensitivity.csv"


def sensitivity_run(ctx: StudyContext, entry, seed: int) -> Run:
    parent = dense_run(ctx, seed)
    sweep = list(method_of(entry).sensitivity_sweep(entry.options))
    desc = {"parent": parent.description, "scope": ctx.study.scope, "sweep": sweep}
    if method_of(entry).version != 1:  # the method's declared semantics name its sweep too
        desc["version"] = method_of(entry).version
    meta = {**parent.meta, "method": "sensitivity", "label": entry.label,
            "target_sparsity": None, "result": False}
    return Run(ctx.root, "sensitivity", desc, meta, stage="sensitivity", label=entry.label,
               spec=SensitivitySpec(seed=seed, sweep=tuple(sweep), dense=parent))


def read_rows(run: Run) -> list[dict[str, Any]]:
    """The rows `layer_sensitivity` measured, as written to the run's CSV."""
    with open(Path(run.path) / ROWS_FILE, newline="") as fh:
        return [{"layer": r["layer"], "layer_params": int(r["layer_params"]),
                 "sparsity": float(r["sparsity"]), "top1": float(r["top1"]),
                 "loss": float(r["loss"])} for r in csv.DictReader(fh)]


class SensitivityStage(Stage):
    name = kind = "sensitivity"
    help = "per-layer sensitivity curves of the dense model(s)"

    def runs(self, ctx: StudyContext) -> list[Run]:
        return [sensitivity_run(ctx, entry, seed) for entry in ctx.study.methods
                if method_of(entry).uses_sensitivity for seed in ctx.study.seeds]

    def execute(self, ex: Executor, run: Run) -> None:
        """`sensitivity.csv`, `sensitivity.png`, and in `metrics.json` the dense validation
        top-1 and, per layer, the first swept sparsity that costs more than 1 point."""
        spec: SensitivitySpec = run.spec
        model, _ = ex.load(spec.dense)
        start = time.perf_counter()
        rows = layer_sensitivity(model, ex.scope, batch_evaluator(ex.val_batches()),
                                 list(spec.sweep))
        elapsed = time.perf_counter() - start
        write_sensitivity_csv(rows, run.path / ROWS_FILE)
        plot_sensitivity(rows, run.path / "sensitivity.png")
        run.write_config()
        metrics = {"val_top1": rows[0]["top1"], "val_loss": rows[0]["loss"],
                   "top1_drop": SENSITIVITY_DROP,
                   "sparsity_at_top1_drop": drop_sparsity(rows, SENSITIVITY_DROP),
                   "sensitivity_time_s": elapsed}
        run.complete(metrics)
        log.info("sensitivity %s done: %d layers x %d sparsities", run.hash,
                 len(metrics["sparsity_at_top1_drop"]), len(spec.sweep))


__all__ = ["SensitivityStage", "read_rows", "sensitivity_run"]
