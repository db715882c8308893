"""Benchmark: what every result run's model costs (size, MACs, memory, latency, energy) and
how accurate it is, measured on the saved model with its architecture rebuilt.

One benchmark run per result run (dense, gradual, fine-tuned, distilled, lottery): it reads
the model and never trains. `benchmark.json` holds the whole record of
`prunebench.metrics.benchmark_model` (latency per execution mode and batch size, the
environment); `metrics.json` holds its flat headline, which the tables join to the result
run's row. A benchmark run is named by the result run, the study's `benchmark` settings and
`RECORD_VERSION`, so it is redone when any of them changes; to measure again on the same
terms (another machine, say), delete `results/runs/benchmark/`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunebench.context import StudyContext
from prunebench.io import atomic_write_json
from prunebench.metrics import benchmark_model
from prunebench.metrics.timing import paired_speedup
from prunebench.pruning import load_mask
from prunebench.runs import Run
from prunebench.specs import BenchmarkSpec
from prunebench.stages.base import Stage, dense_run
from prunebench.training import evaluate

if TYPE_CHECKING:
    from prunebench.executor import Executor

log = logging.getLogger("prunebench")

HEADLINE = ("params_total", "params_nonzero", "params_effective_nonzero",
            "weight_sparsity_effective", "size_dense_bytes", "size_sparse_bytes", "macs_dense",
            "macs_effective", "memory_peak_bytes", "memory_avg_bytes", "memory_method",
            "energy_mj_per_sample", "energy_method", "energy_unavailable_reason")


RECORD_VERSION = 2  # 2: paired speed-up over the dense model, CPU memory above baseline


def benchmark_run(ctx: StudyContext, result: Run) -> Run:
    """Measuring `result`; the dense run of its seed is a parent too, since the paired
    speed-up times the two models against each other."""
    desc = {"of": result.description, "benchmark": ctx.study.benchmark,
            "record_version": RECORD_VERSION}
    meta = {**result.meta, "of": str(result.path), "result": False}
    return Run(ctx.root, "benchmark", desc, meta, stage="benchmark", label=result.label,
               spec=BenchmarkSpec(seed=result.spec.seed, target=result.spec.target,
                                  result=result, dense=dense_run(ctx, result.spec.seed)))


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The flat numbers a table row takes: the headline keys, and the median latency and
    throughput of every mode at every batch size (`latency_<mode>_b<batch>_ms`)."""
    flat = {k: record.get(k) for k in HEADLINE}
    if record.get("memory_method") == "rss_sampled":
        # A process's RSS is mostly the Python and torch runtime (~0.5 GB); what inference
        # adds is the part above the RSS measured just before the timed loop.
        loop = record["latency"]["dense"][str(max(int(b) for b in record["latency"]["dense"]))]
        flat["memory_peak_bytes"] = max(loop["memory_peak_bytes"] - loop["memory_baseline_bytes"], 0)
        flat["memory_avg_bytes"] = max(loop["memory_avg_bytes"] - loop["memory_baseline_bytes"], 0)
    for mode, by_batch in record["latency"].items():
        for batch, timing in by_batch.items():
            flat[f"latency_{mode}_b{batch}_ms"] = timing["latency_median_ms"]
            flat[f"throughput_{mode}_b{batch}"] = timing["throughput_samples_per_s"]
    for batch, speedup in record.get("speedup_vs_dense", {}).items():
        flat[f"speedup_vs_dense_b{batch}"] = speedup
    flat["device"] = record["environment"].get("device_name") or record["environment"].get("device")
    flat["threads"] = record["environment"].get("torch_num_threads")
    return flat


class BenchmarkStage(Stage):
    name = kind = "benchmark"
    help = "measure size, MACs, memory, latency and energy of every result model"

    def __init__(self, measures: Sequence[Stage]):
        self.measures = tuple(measures)  # the stages whose runs are results

    def runs(self, ctx: StudyContext) -> list[Run]:
        return [benchmark_run(ctx, run) for stage in self.measures for run in stage.runs(ctx)]

    def execute(self, ex: Executor, run: Run) -> None:
        spec: BenchmarkSpec = run.spec
        cfg = ex.study.benchmark
        device = ex.device_for(cfg.device)
        result = spec.result
        model, arch = ex.load(result)
        mask_file = Path(result.path) / "mask.pt"
        mask = load_mask(mask_file) if mask_file.is_file() else None
        record = benchmark_model(model.to(device), arch.input_shape, mask=mask, device=device,
                                 batch_sizes=cfg.batch_sizes, min_time_s=cfg.min_time_s,
                                 modes=cfg.modes)
        data = ex.data
        accuracy = evaluate(model.to(device), data.test_x.to(device), data.test_y.to(device),
                            ex.study.eval_batch_size)
        record.update(top1=accuracy["top1"], top5=accuracy["top5"],
                      speedup_vs_dense=self._paired(ex, spec, model, device))
        atomic_write_json(run.path / "benchmark.json", record)
        run.write_config()
        run.complete({**headline(record), "top1": accuracy["top1"], "top5": accuracy["top5"]})
        log.info("benchmark %s done: %s", run.hash, device)

    @staticmethod
    def _paired(ex: Executor, spec: BenchmarkSpec, model, device) -> dict[str, float]:
        """Speed-up over the dense model of the same seed on dense kernels, per batch size,
        timed alternately in this process (`paired_speedup`): the comparison the tables make,
        free of the noise between separately timed processes."""
        cfg = ex.study.benchmark
        dense, _ = ex.load(spec.dense)
        dense, model = dense.to(device).eval(), model.to(device).eval()
        generator = torch.Generator().manual_seed(0)
        shape = tuple(ex.data.input_shape)
        out = {}
        for batch in cfg.batch_sizes:
            x = torch.randn(batch, *shape, generator=generator).to(device)
            out[str(batch)] = 1.0 if spec.result.path == spec.dense.path else paired_speedup(
                model, dense, x, min_time_s=2 * cfg.min_time_s)
        return out
