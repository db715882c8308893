"""The contract every pruning method follows.

An unstructured method is a small function `(ctx, sparsity) -> Mask` (OpenLTH's "pruning
strategy"): it reads the model, the current mask and, if it needs them, calibration batches,
and returns a new mask. It never trains and never edits the weights; the caller applies the
mask. A structured method is `(ctx, channel_sparsity) -> edits`: it removes whole channels
from `ctx.model` in place (Torch-Pruning does the surgery) and returns the edits, which are
saved with the run so that its architecture can be rebuilt. All randomness comes from
`ctx.generator`, so a fixed seed gives a fixed result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.options import Option, non_default, resolve_options
from prunebench.pruning.mask import Mask
from prunebench.pruning.scope import PRUNABLE_TYPES, Scope
from prunebench.registry import Registry

# When a method runs relative to training:
#   "trained": one shot on trained weights, then fine-tune;
#   "init": on the initial weights, then train the sparse network from scratch;
#   "iterative": its own prune/train loop (lottery ticket);
#   "during_training": masks change inside one training run (gradual pruning).
When = Literal["trained", "init", "iterative", "during_training"]
# Layers whose weights no method prunes and whose presence is fine: normalisation.
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]


@dataclass
class PruneContext:
    model: nn.Module
    scope: Scope = field(default_factory=Scope)
    options: Mapping[str, Any] = field(default_factory=dict)
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
    mask: Mask | None = None
    batches: Batches | None = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    # Held-out batches for methods that evaluate candidate masks (the validation split).
    val_batches: Batches | None = None
    input_shape: tuple[int, ...] | None = None  # one example's shape, for data-free methods
    # Rows of the dense model's sensitivity run (methods with a `sensitivity_sweep` hook).
    sensitivity: Sequence[Mapping[str, Any]] | None = None

    @property
    def params(self) -> dict[str, nn.Parameter]:
        return self.scope.params(self.model)

    def require_batches(self, method: str) -> Batches:
        if self.batches is None:
            raise ConfigError(f"method {method!r} needs calibration data batches")
        return self.batches

    def require_val_batches(self, method: str) -> Batches:
        if self.val_batches is None:
            raise ConfigError(f"method {method!r} needs validation batches (ctx.val_batches)")
        return self.val_batches


MethodFn = Callable[[PruneContext, float], Any]

# What a method returns: a mask over the fixed architecture ("mask"), or the list of
# structural edits it applied to ctx.model in place ("channels": whole channels removed).
Produces = Literal["mask", "channels"]


class TrainingCallback(Protocol):
    """What a method that prunes during training (`when="during_training"`) hands the
    training loop: the mask to start from, a hook after every optimiser step (which may call
    `state.set_mask`), and the files that describe what it will do (written to the run)."""

    def initial_mask(self, model: nn.Module) -> Mask: ...

    def on_step_end(self, state: Any) -> None: ...

    def artifacts(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class CallbackContext:
    """What a method's `training_callback` hook may read to build its callback."""

    options: Mapping[str, Any]
    target: float
    scope: Scope
    steps_per_epoch: int
    epochs: int
    generator: torch.Generator


@dataclass(frozen=True)
class Iterative:
    """The hooks of a method with its own prune/train loop (`when="iterative"`, the lottery
    ticket): the sparsity after each level of a chain to `target` (given the options, a
    function that builds the study's unpruned architecture, the scope and the target), the
    iteration whose weights the survivors rewind to, and whether each chain also trains a
    random-reinitialisation control of its final mask."""

    levels: Callable[[Mapping[str, Any], Callable[[], nn.Module], Scope, float], list[float]]
    rewind_iteration: Callable[[Mapping[str, Any]], int]
    reinit_control: Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class PruningMethod:
    """A registered method and what the stages need to know about it.

    `options` declares every option (type, range, default) once; they are checked when a
    study is parsed. `validate` adds checks across options. `fixed_sparsity` gives the one
    sparsity the options imply (N:M). `check_grid(options, train_recipe, targets, key)`
    checks options against the study's recipe and targets when the study is parsed (gradual
    pruning's epochs).

    What only some methods need is a hook the method declares, so that no stage reads a
    method's options by name:
    - `pretrain(options)`: overrides of the training recipe for a dense run of its own
      (network slimming's L1 penalty on BatchNorm scales);
    - `sensitivity_sweep(options)`: the layer sparsities of the sensitivity run of the same
      dense model that the prune run reads (None: no sensitivity run);
    - `rounds(options)`: (steps, fine-tuning epochs between steps) for a method that prunes
      in several steps (Li et al.'s iterative filter pruning);
    - `training_callback(CallbackContext)`: the callback of a method that prunes during
      training (gradual magnitude pruning);
    - `iterative`: the level schedule, rewind point and control of an iterative method;
    - `check_model(model, input_shape, options)`: why the method cannot prune a model (None:
      it can), checked when a study with a model of the user's own is parsed.

    `version` is the method's semantics: bump it when a change to the method's code changes
    what its runs compute (a fixed bug, a new tie-break). It enters the name of every run of
    the method (and so of the runs that depend on them) once it is above 1, so old runs are
    never reused as if new; a refactor that computes the same thing keeps it (those runs are
    then only reported as made by older source, `prunebench status`).
    """

    name: str
    fn: MethodFn
    when: When
    options: Mapping[str, Option]
    produces: Produces = "mask"
    needs_data: bool = False
    validate: Callable[[Mapping[str, Any], str], None] | None = None
    fixed_sparsity: Callable[[Mapping[str, Any]], float] | None = None
    sensitivity_sweep: Callable[[Mapping[str, Any]], Sequence[float]] | None = None
    pretrain: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    check_grid: Callable[[Mapping[str, Any], Any, Sequence[float], str], None] | None = None
    rounds: Callable[[Mapping[str, Any]], tuple[int, int]] | None = None
    training_callback: Callable[[CallbackContext], TrainingCallback] | None = None
    iterative: Iterative | None = None
    check_model: Callable[[nn.Module, tuple[int, ...], Mapping[str, Any]], str | None] | None = None
    version: int = 1

    def model_refusal(self, model: nn.Module, input_shape: tuple[int, ...],
                      options: Mapping[str, Any], scope: Scope) -> str | None:
        """Why this method cannot prune `model` (None: it can): no weight in the scope, a
        channel graph Torch-Pruning cannot build (structured methods), or the method's own
        `check_model` hook (slimming needs BatchNorm). Run when a study is parsed."""
        if not scope.params(model):
            return "it has no Conv2d or Linear weight in the pruning scope"
        others = sorted({type(m).__name__ for m in model.modules()
                         if not isinstance(m, (*PRUNABLE_TYPES, *NORM_TYPES))
                         and any(True for _ in m.parameters(recurse=False))})
        if others:
            return (f"it has weights in layers of type {', '.join(others)}, which prunebench's "
                    "methods do not prune (they prune Conv2d and Linear weights)")
        if self.structured:
            from prunebench.structured import channel_groups

            try:
                if not channel_groups(model, tuple(input_shape),
                                      exclude_first=scope.exclude_first):
                    return "it has no channel group to remove"
            except Exception as err:  # noqa: BLE001 (Torch-Pruning's tracing, any layer type)
                return f"its channel graph cannot be built ({type(err).__name__}: {err})"
        return None if self.check_model is None else self.check_model(model, input_shape,
                                                                      options)

    @property
    def structured(self) -> bool:
        return self.produces == "channels"

    @property
    def uses_sensitivity(self) -> bool:
        return self.sensitivity_sweep is not None

    def pruning_rounds(self, options: Mapping[str, Any]) -> tuple[int, int]:
        """(steps, fine-tuning epochs between them): (1, 0) unless the method declares rounds."""
        return (1, 0) if self.rounds is None else self.rounds(options)

    @property
    def defaults(self) -> dict[str, Any]:
        return {name: opt.default for name, opt in self.options.items()}

    def sparsities(self, options: Mapping[str, Any], grid: Sequence[float]) -> tuple[float, ...]:
        """The grid sparsities this method runs at: its own one if its options fix it (N:M)."""
        return (self.fixed_sparsity(options),) if self.fixed_sparsity else tuple(grid)

    def resolve_options(self, options: Mapping[str, Any] | None,
                        key: str | None = None) -> dict[str, Any]:
        """Declared defaults overridden by `options`, each checked against its declaration;
        `key` (default `methods.<name>`) is what error messages name."""
        key = key or f"methods.{self.name}"
        resolved = resolve_options(self.options, options, key)
        if self.validate is not None:
            self.validate(resolved, key)
        return resolved

    def hashed_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options that name a run: those that differ from their defaults."""
        return non_default(self.options, options)

    def __call__(self, ctx: PruneContext, sparsity: float):
        return self.fn(ctx, sparsity)


METHODS: Registry[PruningMethod] = Registry("pruning method", "method")


def register_method(
    name: str,
    *,
    when: When,
    options: Mapping[str, Option] | None = None,
    produces: Produces = "mask",
    needs_data: bool = False,
    validate: Callable[[Mapping[str, Any], str], None] | None = None,
    fixed_sparsity: Callable[[Mapping[str, Any]], float] | None = None,
    sensitivity_sweep: Callable[[Mapping[str, Any]], Sequence[float]] | None = None,
    pretrain: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    check_grid: Callable[[Mapping[str, Any], Any, Sequence[float], str], None] | None = None,
    rounds: Callable[[Mapping[str, Any]], tuple[int, int]] | None = None,
    training_callback: Callable[[CallbackContext], TrainingCallback] | None = None,
    iterative: Iterative | None = None,
    check_model: Callable[[nn.Module, tuple[int, ...], Mapping[str, Any]], str | None] | None = None,
    version: int = 1,
) -> Callable[[MethodFn], MethodFn]:
    """Register `fn` as method `name` with its declared `options`.

    `validate(options, key)` raises ConfigError for bad combinations of option values; it
    runs when a study is parsed, so bad options stop the run before anything is written.
    `version` (an int >= 1): see `PruningMethod`.
    """
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"method {name!r}: version must be an int >= 1, got {version!r}")

    if when == "during_training" and training_callback is None:
        raise ValueError(f"method {name!r} prunes during training: it needs a training_callback")
    if when == "iterative" and iterative is None:
        raise ValueError(f"method {name!r} is iterative: it needs its `iterative` hooks")

    def deco(fn: MethodFn) -> MethodFn:
        METHODS.register(name, PruningMethod(
            name, fn, when, dict(options or {}), produces, needs_data, validate,
            fixed_sparsity, sensitivity_sweep, pretrain, check_grid, rounds, training_callback,
            iterative, check_model, version,
        ))
        return fn

    return deco
