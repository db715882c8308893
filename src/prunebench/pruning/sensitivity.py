"""Layer sensitivity analysis and sensitivity-based layer-wise sparsity (as in Distiller).

Analysis (`layer_sensitivity`): each prunable layer is pruned *alone* by magnitude to every
sparsity of a sweep, on a copy of the model, and evaluated on held-out batches (the
validation split: model selection never looks at test). A layer whose accuracy survives
high sparsity is insensitive and can give up more weights.

Allocation (`allocate_sparsity`): choose per-layer sparsities s_l that prune exactly the
global target count T = sum_l n_l * s_l while minimising the predicted top-1 drop
sum_l d_l(s_l), where d_l is layer l's measured drop, linearly interpolated between sweep
points. Each curve is replaced by its lower convex hull on [0, s_max_l] and hull segments are
taken greedily in order of predicted drop per pruned weight (ties broken by the increase of
validation loss per pruned weight, which is finer than top-1 on small validation sets), the
last one partially. On the convexified curves this greedy is optimal, and every layer but
the partial one ends on a measured sweep point or its cap. The cap s_max_l is the smaller
of `max_layer_sparsity` and the last sweep point, rounded down to whole weights: the curve
is never extrapolated. Summing
per-layer drops assumes the layers' damage adds up, the approximation Distiller makes too.

The per-layer weight counts are rounded by largest remainder so that they sum exactly to T;
the mask keeps the largest-magnitude weights within each layer (`layerwise_topk_mask`).

The method `sensitivity` allocates from the rows of the dense model's sensitivity run
(`ctx.sensitivity`, the same sweep) when it is given: the prune job reads that run's result
rather than measuring the curves again. Without rows it measures them itself.
"""

from __future__ import annotations

import copy
import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunebench.errors import ConfigError
from prunebench.io import atomic_write, atomic_write_text
from prunebench.options import Option, fraction
from prunebench.pruning.base import METHODS, Batches, PruneContext, register_method
from prunebench.pruning.magnitude import magnitude_scores
from prunebench.pruning.mask import Mask, keep_count, layerwise_topk_mask
from prunebench.pruning.scope import Scope

DEFAULT_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
CSV_COLUMNS = ("layer", "layer_params", "sparsity", "top1", "loss")
Evaluate = Callable[[nn.Module], Mapping[str, float]]


# ----------------------------------------------------------------------------- analysis


def batch_evaluator(batches: Batches, loss_fn=torch.nn.functional.cross_entropy) -> Evaluate:
    """evaluate(model) -> {"top1", "loss"} over every (x, y) batch that `batches()` yields."""

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in batches():
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(loss_fn(logits, y)) * len(y)
            correct += int(logits.argmax(1).eq(y).sum())
            seen += len(y)
        model.train(was_training)
        if seen == 0:
            raise ConfigError("sensitivity analysis got no evaluation batches")
        return {"top1": correct / seen, "loss": loss_sum / seen}

    return evaluate


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module, scope: Scope, evaluate_fn: Evaluate, sweep: Sequence[float] = DEFAULT_SWEEP
) -> list[dict[str, Any]]:
    """Rows {layer, layer_params, sparsity, top1, loss}: each layer pruned alone by magnitude.

    Every layer also gets a row at sparsity 0 (the dense model, evaluated once). The model
    passed in is not modified: the work happens on a copy whose layer is restored after
    each sweep.
    """
    work = copy.deepcopy(model)
    dense = dict(evaluate_fn(work))
    rows = []
    for name, weight in scope.params(work).items():
        original = weight.detach().clone()
        rows.append({"layer": name, "layer_params": weight.numel(), "sparsity": 0.0,
                     "top1": dense["top1"], "loss": dense["loss"]})
        for sparsity in sweep:
            keep = layerwise_topk_mask({name: original.abs()}, float(sparsity))[name]
            weight.copy_(original * keep)
            result = evaluate_fn(work)
            rows.append({"layer": name, "layer_params": weight.numel(), "sparsity": float(sparsity),
                         "top1": result["top1"], "loss": result["loss"]})
        weight.copy_(original)
    return rows


def curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float, float]]]:
    """Per layer, (sparsity, top1, loss) sorted by sparsity, in first-seen layer order."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for r in rows:
        point = (float(r["sparsity"]), float(r["top1"]), float(r["loss"]))
        out.setdefault(r["layer"], []).append(point)
    return {name: sorted(points) for name, points in out.items()}


def drop_sparsity(rows: Sequence[Mapping[str, Any]], drop: float = 0.01) -> dict[str, float | None]:
    """Per layer, the smallest measured sparsity whose top-1 is more than `drop` below dense
    (None if none is)."""
    out = {}
    for name, points in curves(rows).items():
        dense = _at_zero(name, points)[1]
        out[name] = next((s for s, top1, _ in points if dense - top1 > drop), None)
    return out


def _at_zero(name: str, points: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    if not points or points[0][0] != 0.0:
        raise ConfigError(f"sensitivity curve of {name!r} has no dense (sparsity 0) point")
    return points[0]


# ----------------------------------------------------------------------------- allocation


def _interpolate(points: Sequence[tuple[float, ...]], s: float, column: int) -> float:
    xs = [p[0] for p in points]
    for (x0, *v0), (x1, *v1) in zip(points, points[1:]):
        if x0 <= s <= x1:
            t = 0.0 if x1 == x0 else (s - x0) / (x1 - x0)
            return v0[column - 1] + t * (v1[column - 1] - v0[column - 1])
    raise ValueError(f"sparsity {s} outside the measured range [{xs[0]}, {xs[-1]}]")


def _lower_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of points sorted by x (monotone chain, collinear points dropped)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (p[1] - y0) - (y1 - y0) * (p[0] - x0) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate_sparsity(
    rows: Sequence[Mapping[str, Any]], sizes: Mapping[str, int], sparsity: float,
    max_layer_sparsity: float = 0.98,
) -> dict[str, float]:
    """Per-layer sparsities pruning exactly the global count of `sparsity` over `sizes`.

    Each returned s_l is k_l / n_l with integer k_l, sum k_l = sum n_l - keep_count(sum n_l,
    sparsity), and s_l <= max_layer_sparsity (see the module docstring for the algorithm).
    """
    by_layer = curves(rows)
    missing = [name for name in sizes if name not in by_layer]
    if missing:
        raise ConfigError(f"no sensitivity curve for layer {missing[0]!r}")
    total = sum(sizes.values())
    target = total - keep_count(total, sparsity)
    caps, segments = {}, []
    for index, (name, n) in enumerate(sizes.items()):
        points = by_layer[name]
        dense_top1 = _at_zero(name, points)[1]
        # Whole weights only, so that the greedy never assigns more than the cap allows.
        caps[name] = math.floor(min(max_layer_sparsity, points[-1][0]) * n + 1e-9)
        s_max = caps[name] / n
        measured = [p for p in points if p[0] < s_max] + [
            (s_max, _interpolate(points, s_max, 1), _interpolate(points, s_max, 2))]
        hull = _lower_hull([(s, dense_top1 - top1) for s, top1, _ in measured])
        for (s0, d0), (s1, d1) in zip(hull, hull[1:]):
            weights = (s1 - s0) * n
            loss_rise = _interpolate(measured, s1, 2) - _interpolate(measured, s0, 2)
            segments.append(((d1 - d0) / weights, loss_rise / weights, index, s0, name, weights))
    if sum(caps.values()) < target:
        raise ConfigError(
            f"sensitivity: target sparsity {sparsity} needs {target} of {total} weights pruned, "
            f"but layers may lose at most {sum(caps.values())} (max_layer_sparsity "
            f"{max_layer_sparsity}, last sweep point caps it too)"
        )
    pruned = {name: 0.0 for name in sizes}
    remaining = float(target)
    for *_, name, weights in sorted(segments, key=lambda seg: seg[:4]):
        take = min(weights, remaining)
        pruned[name] += take
        remaining -= take
        if remaining <= 0:
            break
    counts = _round_to_total(pruned, caps, target)
    return {name: counts[name] / sizes[name] for name in sizes}


def _round_to_total(
    amounts: Mapping[str, float], caps: Mapping[str, int], total: int
) -> dict[str, int]:
    """Integers within one of `amounts` (each <= its cap) that sum to `total`: round down,
    then round up the largest fractional parts (the largest-remainder method)."""
    counts = {name: min(math.floor(a + 1e-9), caps[name]) for name, a in amounts.items()}
    short = total - sum(counts.values())
    for name in sorted(amounts, key=lambda name: amounts[name] - counts[name], reverse=True):
        if short <= 0:
            break
        if counts[name] < caps[name]:
            counts[name] += 1
            short -= 1
    if short != 0:
        raise ValueError(f"cannot round {dict(amounts)} to {total} within the caps {dict(caps)}")
    return counts


# ----------------------------------------------------------------------------- the method


def _check_sweep(rows: Sequence[Mapping[str, Any]], sweep: Sequence[float]) -> None:
    """Rows measured at another sweep would allocate differently from what the options say."""
    expected = [0.0, *map(float, sweep)]
    for name, points in curves(rows).items():
        measured = [s for s, _, _ in points]
        if measured != expected:
            raise ConfigError(
                f"the sensitivity rows of {name!r} were measured at sparsities {measured}, but "
                f"methods.sensitivity.sweep is {list(sweep)} (plus the dense point 0)")


@register_method(
    "sensitivity", when="trained", needs_data=True,
    sensitivity_sweep=lambda options: list(options["sweep"]), options={
        "sweep": Option(DEFAULT_SWEEP, list, "layer sparsities the curves are measured at",
                        item=float, low=0.0, high=1.0, low_open=True, high_open=True,
                        min_items=1, increasing=True),
        "max_layer_sparsity": fraction(0.98, "no layer is pruned beyond it", open_low=True),
    },
)
def sensitivity_pruning(ctx: PruneContext, sparsity: float) -> Mask:
    """Magnitude pruning within layers, with per-layer sparsities from the sensitivity curves
    of `ctx.sensitivity`, or measured on `ctx.val_batches` when no rows are given."""
    opts = METHODS.get("sensitivity").resolve_options(ctx.options)
    if ctx.sensitivity is None:
        evaluate_fn = batch_evaluator(ctx.require_val_batches("sensitivity"), ctx.loss_fn)
        rows = layer_sensitivity(ctx.model, ctx.scope, evaluate_fn, opts["sweep"])
    else:
        rows = ctx.sensitivity
        _check_sweep(rows, opts["sweep"])
    sizes = {name: p.numel() for name, p in ctx.params.items()}
    layer_sparsity = allocate_sparsity(rows, sizes, sparsity, opts["max_layer_sparsity"])
    return layerwise_topk_mask(magnitude_scores(ctx), layer_sparsity, ctx.mask)


# ----------------------------------------------------------------------------- outputs


def write_sensitivity_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in CSV_COLUMNS})
    return atomic_write_text(path, buf.getvalue())


def plot_sensitivity(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One curve per layer: validation top-1 against that layer's sparsity."""
    from matplotlib.figure import Figure  # lazily: plotting is not needed to prune

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, points in curves(rows).items():
        n = next(r["layer_params"] for r in rows if r["layer"] == name)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                label=f"{name} ({n:,} weights)")
    ax.set_xlabel("layer weight sparsity (this layer pruned alone)")
    ax.set_ylabel("validation top-1")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120), mode="wb")
