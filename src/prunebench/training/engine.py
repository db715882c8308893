"""What the training loop trains: an engine of K members, and the one-model engine.

`training.loop.run_epochs` is the one epoch loop; it draws every member's batches, sets the
learning rate, counts iterations and writes histories and checkpoints. An `Engine` is what
it drives: K members (models of one architecture, each with its own seed, mask and history)
and one optimiser step for all of them, which returns each member's loss. `SingleEngine` is
one model (`train`); `training.stacked.StackEngine` is K models run as one stacked model
(`train_stacked`). Both read and write the same per-member checkpoints, so either resumes
the other's runs.

Masks: pruned weights stay exactly zero. The mask is applied to the weights when it is
installed and after every optimizer step, so every forward pass sees them at zero (this also
undoes momentum, Adam and weight-decay updates on pruned weights). Gradients of pruned
weights are not masked: with element-wise optimisers they only feed those weights' own
optimiser state, which never reaches a kept weight, and zeroing them makes Adam's second
moment exactly zero, where torch's CPU sqrt is about 6x slower (measured: 310 us vs 44 us on
a 300x784 tensor) -- that alone cost 30 % of a LeNet-300-100 training step.

A step runs as the recipe's `compile`, `precision` and `channels_last` say
(`training.execution`): eager or compiled (forward, loss and backward, and the mask
re-application), under bf16 autocast or not, channels-last or not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.config import TrainConfig
from prunebench.training.execution import (
    autocast,
    begin_step,
    compile_step,
    enforce_mask,
    input_layout,
    keep,
    set_memory_format,
    start_compiled,
)
from prunebench.training.schedule import make_optimizer

Mask = Mapping[str, Tensor]


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    mask: dict[str, Tensor] | None
    steps_per_epoch: int
    epoch: int = 0
    iteration: int = 0
    history: list[dict] = field(default_factory=list)

    def set_mask(self, mask: Mask | None) -> None:
        """Install a new mask: weights and optimizer state of pruned entries become 0."""
        self.mask = None if mask is None else {k: v.to(_device(self.model)) for k, v in mask.items()}
        self._pairs = masked_pairs(self.model, self.mask)
        enforce_mask(self._pairs)
        params = dict(self.model.named_parameters())
        for name, m in (self.mask or {}).items():
            for buf in self.optimizer.state.get(params[name], {}).values():
                if isinstance(buf, Tensor) and buf.shape == m.shape:
                    buf.mul_(m)

    @property
    def pairs(self) -> list[tuple[nn.Parameter, Tensor]]:
        return self._pairs


class Callback(Protocol):
    """Hooks into the loop; gradual pruning is one (it calls state.set_mask)."""

    def on_step_end(self, state: TrainState) -> None: ...


LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class Engine(Protocol):
    """K members trained by one optimiser step, as the epoch loop sees them.

    `epoch` and `iteration` are the members' common position, `histories[k]` member k's
    per-epoch records; the loop advances and appends to them. `models[k]` holds member k's
    current weights after `sync()`.
    """

    seeds: Sequence[int]  # member k's run seed: its data order
    models: Sequence[nn.Module]
    optimizer: torch.optim.Optimizer  # over every member; the loop sets its learning rate
    device: torch.device
    steps_per_epoch: int
    epoch: int
    iteration: int
    histories: list[list[dict]]

    def reset(self) -> None:
        """Start afresh from the models' weights and the given masks (after a failed
        restore, which the loop has rolled back)."""

    def restore(self, checkpoints: Sequence[Mapping]) -> None:
        """Load member k's weights, mask and optimiser state from `checkpoints[k]`, a
        `last.pt` (the loop restores the position and the histories)."""

    def start_epoch(self) -> None:
        """Put the members in training mode."""

    def step(self, x: Tensor, shared: bool, y: Tensor) -> tuple[Tensor, Tensor]:
        """One optimiser step on a batch: x is (B, ...) when `shared` (every member reads
        it), else (K, B, ...); y is (K, B). Returns each member's mean loss (K,), detached,
        and its count of correct top-1 predictions (K,)."""

    def after_step(self) -> None:
        """Run the per-step callbacks (the loop has advanced `iteration`)."""

    def sync(self) -> None:
        """Bring `models` up to date with the trained weights."""

    def masks(self) -> list[Mask | None]:
        """Each member's current mask."""

    def optimizer_states(self) -> list[Mapping]:
        """Each member's optimiser state, laid out as an optimiser over its model alone."""

    def rng_states(self) -> list[Tensor]:
        """What each member's checkpoint records as `torch_rng`."""

    def label(self, member: int) -> str:
        """How logs and errors name a member."""


class SingleEngine:
    """One model: what `train` trains. Its `TrainState` is `state` (callbacks get it)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, *, seed: int, steps_per_epoch: int,
                 mask: Mask | None = None, callbacks: Sequence[Callback] = (),
                 loss_fn: LossFn | None = None):
        self.model, self.cfg, self.steps_per_epoch = model, cfg, steps_per_epoch
        self.seeds, self.models = [seed], [model]
        self.device = _device(model)
        self.initial_mask = mask
        self.callbacks = list(callbacks)
        self.loss_fn = cross_entropy(cfg.label_smoothing) if loss_fn is None else loss_fn
        self.bn_scales = [m.weight for m in model.modules() if isinstance(
            m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
        self.bn_l1 = cfg.bn_l1 if self.bn_scales else 0.0
        set_memory_format(model, cfg)
        self.compiled = cfg.compile != "off"
        start_compiled(cfg)
        self._forward = compile_step(_forward, cfg)
        self._enforce_mask = compile_step(enforce_mask, cfg)
        self.reset()

    def reset(self) -> None:
        self.state = TrainState(self.model, make_optimizer(self.model.parameters(), self.cfg),
                                None, self.steps_per_epoch)
        self.state.set_mask(self.initial_mask)
        torch.manual_seed(self.seeds[0])  # what the model draws (dropout) is the seed's

    def restore(self, checkpoints: Sequence[Mapping]) -> None:
        (ckpt,) = checkpoints
        self.model.load_state_dict(ckpt["model"])
        load_optimizer_state(self.state.optimizer, ckpt["optimizer"])
        self.state.set_mask(ckpt["mask"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state.optimizer

    # The position and history are the TrainState's, which callbacks see.
    @property
    def epoch(self) -> int:
        return self.state.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.state.epoch = value

    @property
    def iteration(self) -> int:
        return self.state.iteration

    @iteration.setter
    def iteration(self, value: int) -> None:
        self.state.iteration = value

    @property
    def histories(self) -> list[list[dict]]:
        return [self.state.history]

    @histories.setter
    def histories(self, value: Sequence[list[dict]]) -> None:
        (self.state.history,) = value

    def start_epoch(self) -> None:
        self.model.train()

    def step(self, x: Tensor, shared: bool, y: Tensor) -> tuple[Tensor, Tensor]:
        state = self.state
        state.optimizer.zero_grad(set_to_none=True)
        if self.compiled:
            begin_step(m for _, m in state.pairs)  # a callback may have set new masks
        loss, hits = self._forward(self.model, self.loss_fn, x, y[0], self.cfg.precision,
                                   self.cfg.channels_last)
        loss.backward()
        loss = loss.detach()
        if self.compiled:
            loss, hits = keep(loss, hits)
        if self.bn_l1:
            add_bn_l1_subgradient(self.bn_scales, self.bn_l1)
        state.optimizer.step()
        if state.pairs:
            self._enforce_mask(state.pairs)
        return loss.reshape(1), hits.reshape(1)

    def after_step(self) -> None:
        for cb in self.callbacks:
            cb.on_step_end(self.state)

    def sync(self) -> None:
        pass  # the model is trained in place

    def masks(self) -> list[Mask | None]:
        return [self.state.mask]

    def optimizer_states(self) -> list[Mapping]:
        return [self.state.optimizer.state_dict()]

    def rng_states(self) -> list[Tensor]:
        return [torch.get_rng_state()]

    def label(self, member: int) -> str:
        return "training"


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    return lambda logits, x, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def _forward(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, precision: str,
             channels_last: bool) -> tuple[Tensor, Tensor]:
    """The loss of a batch (float32, for backward) and the count of correct top-1
    predictions: what a step computes before its backward pass (compiled when asked)."""
    x = input_layout(x, channels_last)
    with autocast(x.device, precision):
        logits = model(x)
        loss = loss_fn(logits, x, y)
    return loss.float(), logits.detach().argmax(1).eq(y).sum()


@torch.no_grad()
def add_bn_l1_subgradient(scales: Sequence[Tensor], strength: float) -> None:
    """Network slimming (Liu et al. 2017): the subgradient of strength * sum|gamma| added to
    the BatchNorm scales' gradients, which drives unimportant channels' scales to zero."""
    for gamma in scales:
        if gamma.grad is not None:
            gamma.grad.add_(torch.sign(gamma), alpha=strength)


def masked_pairs(model: nn.Module, mask: Mask | None) -> list[tuple[nn.Parameter, Tensor]]:
    """(parameter, float mask) pairs: multiplying by a float mask is the cheapest enforcement.
    Each mask has its parameter's dtype, device and memory layout (channels-last or not)."""
    if not mask:
        return []
    params = dict(model.named_parameters())
    return [(params[n], torch.empty_like(params[n], requires_grad=False).copy_(m))
            for n, m in mask.items()]


def mask_sparsity(mask: Mask) -> float:
    """The fraction of the masked weights that are pruned."""
    total = sum(m.numel() for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    return 1.0 - kept / total


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Mapping) -> None:
    """Load a saved optimiser state but keep the implementation `make_optimizer` chose (a
    checkpoint may have been written by another)."""
    implementation = {k: optimizer.param_groups[0][k] for k in ("fused", "foreach")}
    optimizer.load_state_dict(saved)
    for group in optimizer.param_groups:
        group.update(implementation)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
