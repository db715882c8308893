"""The contract every pruning method follows.

A method is a small function `(ctx, sparsity) -> Mask` (OpenLTH's "pruning strategy"): it
reads the model, the current mask and, if it needs them, calibration batches, and returns a
new mask. It never trains and never edits the weights; the caller applies the mask. All
randomness comes from `ctx.generator`, so a fixed seed gives a fixed mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.pruning.mask import Mask
from prunebench.pruning.scope import Scope
from prunebench.registry import Registry

# When a method runs relative to training:
#   "trained": one shot on trained weights, then fine-tune;
#   "init": on the initial weights, then train the sparse network from scratch;
#   "iterative": its own prune/train loop (lottery ticket);
#   "during_training": masks change inside one training run (gradual pruning).
When = Literal["trained", "init", "iterative", "during_training"]
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


MethodFn = Callable[[PruneContext, float], Mask]


@dataclass(frozen=True)
class PruningMethod:
    name: str
    fn: MethodFn
    when: When
    defaults: Mapping[str, Any]
    needs_data: bool = False
    structured: bool = False
    validate: Callable[[Mapping[str, Any]], None] | None = None
    fixed_sparsity: Callable[[Mapping[str, Any]], float] | None = None

    def sparsities(self, options: Mapping[str, Any], grid: Sequence[float]) -> tuple[float, ...]:
        """The grid sparsities this method runs at: its own one if its options fix it (N:M)."""
        return (self.fixed_sparsity(options),) if self.fixed_sparsity else tuple(grid)

    def resolve_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Method defaults overridden by user options; unknown options are an error."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(
                f"unknown option {unknown[0]!r} for method {self.name!r} "
                f"(key methods.{self.name}.{unknown[0]}); allowed: {allowed}"
            )
        resolved = {**self.defaults, **options}
        if self.validate is not None:
            self.validate(resolved)
        return resolved

    def __call__(self, ctx: PruneContext, sparsity: float) -> Mask:
        return self.fn(ctx, sparsity)


METHODS: Registry[PruningMethod] = Registry("pruning method", "method")


def register_method(
    name: str,
    *,
    when: When,
    needs_data: bool = False,
    structured: bool = False,
    validate: Callable[[Mapping[str, Any]], None] | None = None,
    fixed_sparsity: Callable[[Mapping[str, Any]], float] | None = None,
    **defaults: Any,
) -> Callable[[MethodFn], MethodFn]:
    """Register `fn` as method `name`; keyword arguments are its options with their defaults.

    `validate(options)` raises ConfigError for bad option values; it runs when a study is
    loaded, so bad options stop the run before anything is written.
    """

    def deco(fn: MethodFn) -> MethodFn:
        METHODS.register(
            name,
            PruningMethod(
                name, fn, when, dict(defaults), needs_data, structured, validate, fixed_sparsity
            ),
        )
        return fn

    return deco


def check_sparsity(sparsity: float, key: str = "sparsity") -> float:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"{key} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)
