"""The Python API: prune, measure and load any `nn.Module`, without a study or the workflow.

    result = prunebench.prune(model, "snip", sparsity=0.9, data=loader)
    record = prunebench.measure(result.model, example_inputs, mask=result.mask)
    model = prunebench.load_run("results/runs/recover/<hash>")

`prune` builds the `PruneContext` the prune stage builds and calls the registered method
once: an unstructured method's mask is applied to the model's weights; a structured
method's channels are removed by Torch-Pruning. The model is pruned in place and returned;
if anything fails it is left exactly as it was (a structured method works on a copy, whose
edits are then replayed on the model). What the workflow does around a method (training,
fine-tuning, a method's own pretraining such as network slimming's L1 penalty on BatchNorm
scales) is the caller's: pass a trained model to methods applied to trained weights
(`when == "trained"`) and an initialised one to methods applied at initialisation
(`when == "init"`: SNIP, GraSP, SynFlow). The lottery ticket prunes one round, at the given
sparsity, with its criterion; a method that prunes during training has no one-shot form.

Every refusal is a `ConfigError` with one line naming the argument and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.pruning import (
    METHODS,
    PruneContext,
    PruningMethod,
    Scope,
    apply_mask,
    sparsity_report,
)
from prunebench.pruning.base import Batches


@dataclass(frozen=True)
class PruneResult:
    """What `prune` did: the pruned `model` (the one passed in), the `mask` it applied (param
    name -> bool tensor, True = kept; None for a structured method), the structural `edits`
    ({"layer": group root, "pruned": channel indices}, in order; empty for a mask), the
    `method` name, the `target` (sparsity or channel sparsity) and a `report`: the mask's
    `sparsity_report` (`weight_sparsity` over the pruned scope, per layer), or for channels
    the parameter counts and every conv/linear layer's channel count before and after."""

    model: nn.Module
    mask: dict[str, Tensor] | None
    edits: list[dict]
    method: str
    target: float
    report: dict


def prune(model: nn.Module, method: str, *, sparsity: float | None = None,
          channel_sparsity: float | None = None, data: Iterable | None = None,
          example_inputs: Tensor | Sequence[Tensor] | None = None,
          options: Mapping[str, Any] | None = None, scope: Scope | Mapping[str, bool] | None = None,
          seed: int = 0, val_data: Iterable | None = None) -> PruneResult:
    """Prune `model` in place with registered method `method` (`prunebench.pruning.METHODS`).

    - `sparsity`: the fraction of the scope's weights removed, for methods that return a
      mask; N:M takes it from its options (1 - n/m) when it is not given.
    - `channel_sparsity`: the fraction of channels removed, for structured methods.
    - `data`: calibration batches for data-aware methods (SNIP, GraSP, Wanda, regression,
      sensitivity): a `DataLoader`, any iterable of (inputs, labels) batches, or one
      (inputs, labels) pair. It is read again for every pass a method makes, so a one-shot
      iterator is first kept as a list. `val_data` (default: `data`) is what methods that
      evaluate candidate masks evaluate on. Their loss is cross-entropy (a classifier).
    - `example_inputs`: a tensor with a batch dimension (or a 1-tuple of one), for the input
      shape that structured methods trace and SynFlow feeds; default: the first batch's.
    - `options`: the method's options (`prunebench schema` lists them), checked as a study's.
    - `scope`: a `Scope`, or {"exclude_first": bool, "exclude_last": bool}; default: every
      Conv2d and Linear weight.
    - `seed`: every random choice (random scores, sampled positions, dropout, a shuffling
      `DataLoader`'s order) comes from it; torch's global RNG is restored afterwards.
    """
    key = f"prunebench.prune({method!r})"
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{key}: model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ConfigError(f"prunebench.prune: unknown method {method!r}; allowed: "
                          f"{', '.join(METHODS.names())}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{key}: seed must be an integer, got {seed!r}")
    entry = METHODS.get(method)
    opts = entry.resolve_options(options, key=key)
    _check_one_shot(entry, opts, key)
    target = _target(entry, opts, sparsity, channel_sparsity, key)
    scope = _scope(scope, key)
    if not scope.params(model):
        raise ConfigError(f"{key}: {type(model).__name__} has no Conv2d or Linear weight in "
                          f"the scope {scope} to prune")
    device = next(model.parameters()).device
    # Seeded global RNG: a shuffling DataLoader (read here too) and dropout repeat with `seed`.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        batches = _batches(data, "data", key)
        val_batches = _batches(val_data, "val_data", key) or batches
        if entry.needs_data and batches is None:
            raise ConfigError(f"{key} needs calibration data: pass data= (a DataLoader or an "
                              "iterable of (inputs, labels) batches)")
        if example_inputs is not None:
            input_shape = _input_shape(example_inputs, f"{key}: example_inputs")
        elif batches is not None:
            input_shape = tuple(next(iter(batches()))[0].shape[1:])
        else:
            input_shape = None
        if entry.structured and input_shape is None:
            raise ConfigError(f"{key} traces the model to remove channels: pass example_inputs="
                              " (e.g. torch.randn(1, 3, 32, 32)) or data=")
        ctx = PruneContext(model, scope, opts, torch.Generator().manual_seed(seed),
                           batches=batches, val_batches=val_batches, input_shape=input_shape)
        try:
            if entry.structured:
                return _remove_channels(entry, ctx, target)
            mask = entry(ctx, target)
        except ValueError as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"{key} cannot prune {type(model).__name__}: {err}") from err
    apply_mask(model, mask)
    return PruneResult(model, mask, [], method, target, sparsity_report(mask))


def _remove_channels(entry: PruningMethod, ctx: PruneContext, target: float) -> PruneResult:
    """Run a structured method on a copy, then replay its edits on the model and load the
    copy's weights (regression refits them): the model changes only once the method has
    succeeded."""
    from prunebench.structured import count_channels, replay

    model = ctx.model
    before, params_before = count_channels(model), _param_count(model)
    work = copy.deepcopy(model)
    edits = list(entry(dataclasses.replace(ctx, model=work), target))
    replay(model, ctx.input_shape, edits)
    model.load_state_dict(work.state_dict())
    params_after = _param_count(model)
    report = {"channel_sparsity": target, "params_before": params_before,
              "params_after": params_after, "param_reduction": 1.0 - params_after / params_before,
              "channels_before": before, "channels_after": count_channels(model)}
    return PruneResult(model, None, edits, entry.name, target, report)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_one_shot(entry: PruningMethod, opts: Mapping[str, Any], key: str) -> None:
    """Refuse what one call cannot do: pruning inside a training run, or rounds of pruning
    with fine-tuning between them."""
    if entry.when == "during_training":
        raise ConfigError(
            f"{key}: {entry.name!r} prunes during training, which one call cannot do; run it "
            f"through the workflow (a study's methods) or train with its callback "
            f"({entry.fn.__module__}); one-shot methods: "
            f"{', '.join(n for n in METHODS.names() if METHODS.get(n).when != 'during_training')}")
    rounds, epochs = entry.pruning_rounds(opts)
    if rounds > 1:
        raise ConfigError(
            f"{key}: these options prune in {rounds} rounds with {epochs} epoch(s) of "
            "fine-tuning between them, which prunebench.prune does not train; prune in one "
            "round and call prune again after your own fine-tuning, or use the workflow")


def _target(entry: PruningMethod, opts: Mapping[str, Any], sparsity: float | None,
            channel_sparsity: float | None, key: str) -> float:
    """The one target the method's kind takes: sparsity (a mask) or channel_sparsity."""
    name, value, other = (("channel_sparsity", channel_sparsity, "sparsity") if entry.structured
                          else ("sparsity", sparsity, "channel_sparsity"))
    if (sparsity if entry.structured else channel_sparsity) is not None:
        kind = "removes whole channels" if entry.structured else "prunes single weights (a mask)"
        raise ConfigError(f"{key}: {entry.name!r} {kind}; give {name}=, not {other}=")
    fixed = None if entry.fixed_sparsity is None else float(entry.fixed_sparsity(opts))
    if value is None:
        if fixed is None:
            raise ConfigError(f"{key} needs {name}= (the fraction removed, in [0, 1))")
        value = fixed
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{key}: {name} must be a number in [0, 1), got {value!r}")
    if fixed is not None and abs(value - fixed) > 1e-9:
        raise ConfigError(f"{key}: its options fix the sparsity at {fixed:g}; leave {name} out "
                          f"or give {fixed:g}, got {value!r}")
    return float(value)


def _batches(data: Any, name: str, key: str) -> Batches | None:
    """`data` as the re-readable batches a `PruneContext` takes, after checking that its
    first item is an (inputs, labels) pair of tensors."""
    if data is None:
        return None
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, Tensor) for t in data):
        data = [tuple(data)]  # one (inputs, labels) batch
    elif isinstance(data, Iterator):
        data = list(data)  # a method may read the batches more than once
    elif isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise ConfigError(f"{key}: {name} must be a DataLoader or an iterable of (inputs, "
                          f"labels) batches, got {type(data).__name__}")
    first = next(iter(data), None)
    if not (isinstance(first, (tuple, list)) and len(first) == 2
            and all(isinstance(t, Tensor) for t in first)):
        got = "no batch" if first is None else f"a {type(first).__name__}"
        raise ConfigError(f"{key}: {name} must yield (inputs, labels) pairs of tensors; its "
                          f"first item is {got}")
    return lambda: iter(data)


def _input_shape(example_inputs: Any, what: str) -> tuple[int, ...]:
    """One example's shape: `example_inputs` without its batch dimension."""
    x = example_inputs
    if isinstance(x, (tuple, list)) and len(x) == 1:
        x = x[0]
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise ConfigError(f"{what} must be one input tensor with a batch dimension (e.g. "
                          f"torch.randn(1, 3, 32, 32)) or a 1-tuple of one; models with "
                          f"several inputs are not supported, got {_describe(x)}")
    return tuple(x.shape[1:])


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    return type(x).__name__


def _scope(scope: Scope | Mapping[str, bool] | None, key: str) -> Scope:
    if scope is None or isinstance(scope, Scope):
        return scope or Scope()
    allowed = [f.name for f in dataclasses.fields(Scope)]
    if (not isinstance(scope, Mapping) or set(scope) - set(allowed)
            or not all(isinstance(v, bool) for v in scope.values())):
        raise ConfigError(f"{key}: scope must be a prunebench.pruning.Scope or a mapping of "
                          f"{', '.join(allowed)} to true/false, got {scope!r}")
    return Scope(**scope)


def measure(model: nn.Module, example_inputs: Tensor | Sequence[Tensor], *,
            mask: Mapping[str, Tensor] | None = None, device: str | torch.device = "cpu",
            batch_sizes: Sequence[int] = (1,), min_time_s: float = 0.1,
            modes: Sequence[str] = ("dense",)) -> dict:
    """The benchmark record of `model` (`prunebench.metrics.benchmark_model`): parameters,
    size dense and sparse, MACs, latency, memory and energy, measured on a copy (with `mask`
    applied, if given) on `device`. `example_inputs` gives the input shape only (its batch
    dimension is dropped); the timed inputs are seeded standard-normal batches of each of
    `batch_sizes`. `modes` is any of `prunebench.metrics.MODES` (e.g. "sparse_csr" on CPU);
    one that cannot run here is skipped with its reason in `modes_skipped`."""
    from prunebench.metrics import benchmark_model

    input_shape = _input_shape(example_inputs, "prunebench.measure: example_inputs")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"prunebench.measure: model must be a torch.nn.Module, got "
                          f"{type(model).__name__}")
    try:
        return benchmark_model(model, input_shape, mask=mask, device=torch.device(device),
                               batch_sizes=tuple(batch_sizes), min_time_s=min_time_s,
                               modes=tuple(modes))
    except ValueError as err:  # bad modes or batch sizes
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"prunebench.measure: {err}") from err


def load_run(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a finished run directory (`results/runs/<kind>/<hash>`), in eval mode:
    its architecture rebuilt (channel edits replayed) and `model.pt` loaded with
    `weights_only=True`. A masked run's pruned weights are exact zeros in `model.pt`."""
    from prunebench.runs import load_run_model

    run_dir = Path(path)
    missing = [f for f in ("metrics.json", "arch.json", "model.pt") if not (run_dir / f).is_file()]
    if missing:
        what = "does not exist" if not run_dir.is_dir() else f"has no {', '.join(missing)}"
        raise ConfigError(f"prunebench.load_run: {str(path)!r} is not a finished run directory "
                          f"with a model ({what}); runs are results/runs/<kind>/<hash>")
    model, _ = load_run_model(run_dir, device=device)
    return model.eval()


__all__ = ["PruneResult", "load_run", "measure", "prune"]
