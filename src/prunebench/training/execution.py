"""How a training step executes: eager or compiled, in float32 or bfloat16 autocast, with
convolutions channels-last or not (a recipe's `compile`, `precision` and `channels_last`).

Each changes the rounding of a run, not what it computes, so each is part of the run's name
when it is not its default (off, fp32, false), and the defaults leave old names as they were.

Compiling (`compile` != off, `torch.compile` with that mode, inductor's, and fixed shapes):
  - the forward pass, the loss and the step's metrics are one compiled function; AOT autograd
    compiles its backward with it, so `loss.backward()` runs a compiled graph;
  - the mask re-application after the optimiser step (every pruned weight back to zero) is a
    second compiled function, so masks are applied inside a captured region;
  - the optimiser step between them is the implementation `optimizer_impl` names, run as
    torch runs it: torch does not trace its fused kernels (the default, one kernel per
    update), and a traced foreach or per-parameter step recompiles whenever the learning
    rate (a Python float) changes, which is every step of a schedule.
  The modes are torch's: `default` (inductor's fused kernels), `reduce-overhead` (the same,
  each graph replayed as one CUDA graph on a GPU, which removes the launch overhead that
  dominates a small model's step; on a CPU it is `default`), `max-autotune-no-cudagraphs`
  (kernels chosen by benchmarking, long compiles) and `max-autotune` (both). Under CUDA
  graphs a step marks its start, keeps copies of its metrics (a graph's outputs are
  overwritten by the next replay) and marks the weights, buffers and masks as static
  inputs, updated in place rather than copied in.
  Shapes are static: an epoch has at most two batch sizes (full batches and a final partial
  one), so a run compiles the forward at most twice and the mask function once, then
  reuses them for every later epoch (tests/test_compile.py counts them).
  torch caches compiled code per Python function, across models; a new model of another
  layout would recompile, and after 8 recompiles torch silently runs the function eagerly.
  So each compiled engine starts with `torch.compiler.reset()`: one compiled training at a
  time per process, which is how prunebench trains.

Precision `bf16`: the forward pass and the loss run under `torch.autocast` with bfloat16
(matrix products and convolutions in bf16, reductions and the loss in float32, as autocast's
op lists say); weights, gradients and optimiser state stay float32 (the master weights), so
no loss scaling is needed. Evaluation stays float32.

`channels_last`: the model's 4-d tensors (conv weights) and 4-d input batches are laid out
channels-last (NHWC), which CUDA's tensor-core convolutions prefer; the values are the same,
the kernels and so the rounding differ. A stack's convolutions already run channels-last
(`training.stacked`); there it lays out the input batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

from prunebench.config import TrainConfig

F = TypeVar("F", bound=Callable)

# The compiler behind every mode. Tests swap in "aot_eager" (dynamo's capture and AOT
# autograd without inductor's code generation, whose first compile takes about a minute on
# a 2-core CPU); not a recipe field, since a run is meant to be compiled by inductor.
BACKEND = "inductor"


def compile_step(fn: F, cfg: TrainConfig) -> F:
    """`fn` compiled as `cfg.compile` says (itself when off)."""
    if cfg.compile == "off":
        return fn
    if BACKEND == "inductor":
        return torch.compile(fn, mode=cfg.compile, dynamic=False)
    return torch.compile(fn, backend=BACKEND, dynamic=False)


def start_compiled(cfg: TrainConfig) -> None:
    """Clear torch's compiled code before an engine compiles its own (see the docstring)."""
    if cfg.compile != "off":
        torch.compiler.reset()


def begin_step(static: Iterable[Tensor]) -> None:
    """Before a compiled step: tell CUDA graphs (`reduce-overhead`, `max-autotune`) that a
    new step begins, so the outputs of the last one may be overwritten, and that the
    `static` tensors (weights, buffers, masks) keep their address from step to step, so a
    replay reads and updates them in place instead of copying them in (and, for an updated
    input, instead of not using a CUDA graph at all). nn.Parameters are static already; a
    stack's tensors and the masks are not. Unguarded: a tensor replaced (a new mask) makes
    the graph re-record, not recompile. Without CUDA graphs, both are no-ops."""
    torch.compiler.cudagraph_mark_step_begin()
    for t in static:
        torch._dynamo.mark_static_address(t, guard=False)


def keep(*outputs: Tensor) -> tuple[Tensor, ...]:
    """A compiled step's metrics (loss, hits) as tensors of their own: a CUDA graph's outputs
    live in its memory pool and are overwritten when the next compiled function (the
    mask's) runs."""
    return tuple(t.clone() for t in outputs)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward pass's precision context: none for fp32, bfloat16 autocast for bf16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}")


def set_memory_format(model: nn.Module, cfg: TrainConfig) -> None:
    """Lay the model's 4-d weights out channels-last when the recipe asks (in place: the
    parameters stay the same objects, so optimisers and masks built on them stay valid)."""
    if cfg.channels_last and any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)


def input_layout(x: Tensor, channels_last: bool) -> Tensor:
    """A batch as the step reads it: 4-d images channels-last when asked."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def enforce_mask(pairs: Sequence[tuple[Tensor, Tensor]]) -> None:
    """Multiply every masked parameter by its float mask (pruned weights back to 0)."""
    for p, m in pairs:
        p.mul_(m)


__all__ = ["BACKEND", "autocast", "begin_step", "compile_step", "enforce_mask", "input_layout",
           "keep", "set_memory_format", "start_compiled"]
