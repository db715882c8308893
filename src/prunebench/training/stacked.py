"""Stacked training: K masked models of one architecture trained together as one model.

A pruning study trains the same architecture many times (levels, sparsities, methods,
seeds). Here each parameter of the K models becomes one tensor with a leading stack
dimension, every layer runs as one batched kernel (a Linear as one `bmm`, a Conv2d as one
grouped convolution) and one optimiser step updates all K. Each member keeps its own
initialisation, mask and seed, and so its own data order: members of one seed share each
input batch (the first layer reads it once for all of them), members of different seeds get
the batches their own runs would have drawn.

`StackEngine` is the stack as the training loop's engine: `train_stacked` runs it through
`training.loop.run_epochs`, the loop `train` runs a single model through, so every member's
history, checkpoints (`checkpoints/last.pt`, `checkpoints/iter_<k>.pt`) and `history.csv` are
written as `train(..., run_dir=...)` writes them: a stack resumes from its members'
checkpoints, and `train` resumes a member of a crashed stack alone.

Every member ends where `train(...)` alone would have ended, up to float rounding: the
batched kernels sum the same products in a different order (and BatchNorm statistics are
kept per member), so the weights agree to float tolerance, not bit for bit. Its history has
`train`'s records; `epoch_time_s` is the member's share (the stack's epoch time, validation
included, divided by K), so the times of a stack's runs add up to its wall time.

What stacks: models that are (nested) `nn.Sequential`s of Linear, Conv2d, BatchNorm1d/2d
(running statistics per member), pooling, Flatten and element-wise activations, with
identical shapes; plain cross-entropy (with label smoothing) and the network-slimming BN
penalty; SGD and Adam and the learning-rate schedules. What does not (use `train`
one run at a time): other module types (ResNet's residual blocks, Dropout, whose random
masks cannot be drawn as each run alone would draw them), a custom loss (distillation),
callbacks (gradual pruning changes a mask mid-training) and `stop_at_iteration`.
`stack_refusal` says why a list of models does not stack.

The recipe's `compile`, `precision` and `channels_last` apply as in `train`
(`training.execution`): the stack's forward pass and loss (and so its backward) and its mask
re-application compiled, under bf16 autocast; its convolutions run channels-last anyway, and
`channels_last` lays out a shared input batch so too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.config import TrainConfig
from prunebench.data import DataSplits, num_batches
from prunebench.training.engine import (
    TrainState,
    add_bn_l1_subgradient,
    load_optimizer_state,
)
from prunebench.training.execution import (
    autocast,
    begin_step,
    compile_step,
    enforce_mask,
    input_layout,
    keep,
    start_compiled,
)
from prunebench.training.loop import run_epochs
from prunebench.training.schedule import make_optimizer

# Layouts of the activations between layers, for a stack of K members and batch B:
SHARED = "shared"      # (B, ...): the same input for every member (one data stream)
MEMBER = "member"      # (K, B, ...): one slice per member (inputs of separate streams)
CHANNELS = "channels"  # (B, K*C, H, W): member k owns channels k*C..(k+1)*C (grouped convs)
FEATURES = "features"  # (K, F, B): feature-major, so a Linear is W @ h, and its weight
                       # gradient comes out in the weight's own layout (no copy)

ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
               nn.Hardtanh, nn.Identity)
SPATIAL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class NotStackable(ValueError):
    """The models or the recipe cannot train as one stack; train them one at a time."""


def stack_refusal(models: Sequence[nn.Module], recipe: TrainConfig | None = None) -> str | None:
    """Why `models` cannot train as one stack, or None when they can."""
    if not models:
        return "no models"
    if recipe is not None and recipe.optimizer not in ("sgd", "adam"):
        return f"optimizer {recipe.optimizer!r} (stacked training runs sgd and adam)"
    try:
        layers = _layers(models[0])
    except NotStackable as err:
        return str(err)
    for name, module in layers:
        reason = _module_refusal(module)
        if reason is not None:
            return f"layer {name!r}: {reason}"
    reference = _signature(models[0])
    for i, model in enumerate(models[1:], start=1):
        if _signature(model) != reference:
            return f"model {i} differs from model 0 in its layers, shapes, dtypes or device"
    return None


def can_stack(models: Sequence[nn.Module], recipe: TrainConfig | None = None) -> bool:
    """Whether `train_stacked` takes these models (and recipe); see `stack_refusal`."""
    return stack_refusal(models, recipe) is None


def stack_size(model: nn.Module, batch_size: int, budget_bytes: int, *,
               input_shape: Sequence[int], recipe: TrainConfig | None = None) -> int:
    """How many copies of `model` fit in one stack within `budget_bytes` (at least 1).

    An estimate per member: its parameters four times over (the stacked weights, their
    gradients, the float mask, the member's own module) plus the optimiser's slots (two Adam
    moments, one SGD momentum buffer, none for plain SGD; two without a recipe), its buffers
    twice, and twice the activations of a `batch_size` batch (kept for the backward pass,
    then their gradients). The shared data and the process itself are not counted.
    """
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    optimizer_slots = 2
    if recipe is not None and recipe.optimizer == "sgd":
        optimizer_slots = 1 if recipe.momentum > 0 else 0
    activations = _activation_bytes(model, input_shape)
    per_member = (4 + optimizer_slots) * params + 2 * buffers + 2 * batch_size * activations
    return max(1, int(budget_bytes // per_member))


def train_stacked(
    models: Sequence[nn.Module],
    data: DataSplits,
    recipe: TrainConfig,
    *,
    seeds: Sequence[int],
    masks: Sequence[Mapping[str, Tensor] | None] | None = None,
    run_dirs: Sequence[str | Path | None] | None = None,
    save_iterations: Sequence[int] = (),
    start_iteration: int = 0,
    eval_batch_size: int = 1000,
    progress: bool | None = None,
    on_epoch_end: Callable[[list[TrainState]], None] | None = None,
) -> list[TrainState]:
    """Train `models[k]` with `seeds[k]` and `masks[k]` as `train(models[k], data, recipe,
    seed=seeds[k], mask=masks[k], run_dir=run_dirs[k], ...)` would, all K in one stack.

    Models are trained in place and one `TrainState` per member is returned (its optimizer
    holds that member's state, as `train` leaves it). `run_dirs[k]` gets member k's
    checkpoints and `history.csv` (None: nothing written for it); when every member has a
    `checkpoints/last.pt` at the same epoch the stack resumes from them, and otherwise it
    starts afresh (a damaged checkpoint is set aside as `last.pt.damaged`, as `train` does).
    `save_iterations` and `start_iteration` mean what they mean for `train`;
    `on_epoch_end` gets the members' states after every epoch (for the caller's own
    bookkeeping; their optimisers are rebuilt each time). Raises `NotStackable` for models
    or a recipe `stack_refusal` refuses, and FloatingPointError, naming the member, when one
    diverges.
    """
    k = len(models)
    masks = list(masks) if masks is not None else [None] * k
    run_dirs = [None] * k if run_dirs is None else list(run_dirs)
    if not (len(seeds) == len(masks) == len(run_dirs) == k):
        raise ValueError(f"{k} models but {len(seeds)} seeds, {len(masks)} masks and "
                         f"{len(run_dirs)} run directories")
    reason = stack_refusal(models, recipe)
    if reason is not None:
        raise NotStackable(f"cannot train these {k} models as one stack: {reason}")
    engine = StackEngine(models, recipe, seeds=seeds, masks=masks,
                         steps_per_epoch=num_batches(len(data.train_y), recipe.batch_size))
    run_epochs(engine, data, recipe, run_dirs=run_dirs, save_iterations=save_iterations,
               start_iteration=start_iteration, eval_batch_size=eval_batch_size,
               progress=progress,
               on_epoch_end=None if on_epoch_end is None else
               lambda: on_epoch_end(engine.states()))
    return engine.states()


# ---------------------------------------------------------------------------- the engine


class StackEngine:
    """K models as one `_Stack` and one optimiser over its stacked parameters: the engine
    of `train_stacked` (see `training.engine.Engine`)."""

    def __init__(self, models: Sequence[nn.Module], recipe: TrainConfig, *,
                 seeds: Sequence[int], steps_per_epoch: int,
                 masks: Sequence[Mapping[str, Tensor] | None] | None = None):
        self.models, self.recipe, self.steps_per_epoch = list(models), recipe, steps_per_epoch
        self.seeds = [int(s) for s in seeds]
        self.k = len(self.models)
        self.initial_masks = [None if not m else dict(m)
                              for m in (masks if masks is not None else [None] * self.k)]
        self.device = _device(self.models[0])
        self.epoch, self.iteration = 0, 0
        self.histories: list[list[dict]] = [[] for _ in self.models]
        self.compiled = recipe.compile != "off"
        start_compiled(recipe)
        self._forward = compile_step(_stack_forward, recipe)
        self._enforce_mask = compile_step(enforce_mask, recipe)
        self.reset()

    def reset(self) -> None:
        for model in self.models:
            model.train()
        self.stack = _Stack(self.models)
        self.optimizer = make_optimizer(self.stack.params.values(), self.recipe)
        self._masks = list(self.initial_masks)
        self.stack.install_masks(self._masks)
        self.bn_scales = self.stack.batch_norm_scales()
        self.bn_l1 = self.recipe.bn_l1 if self.bn_scales else 0.0
        self._optimizer_states: list[dict] | None = None

    def restore(self, checkpoints: Sequence[Mapping]) -> None:
        for model, ckpt in zip(self.models, checkpoints):
            model.load_state_dict(ckpt["model"])
        self._masks = [ckpt["mask"] for ckpt in checkpoints]
        self.stack.read_members(self.models)
        self.stack.install_masks(self._masks)
        self.stack.load_optimizer_state(self.optimizer, [c["optimizer"] for c in checkpoints])
        self._optimizer_states = None

    def start_epoch(self) -> None:
        pass  # the stack always trains (BatchNorm in training mode); members are only evaluated

    def step(self, x: Tensor, shared: bool, y: Tensor) -> tuple[Tensor, Tensor]:
        self._optimizer_states = None
        self.optimizer.zero_grad(set_to_none=True)
        if self.compiled:
            begin_step((*self.stack.params.values(), *self.stack.buffers.values(),
                        *(m for _, m in self.stack.masks)))
        losses, hits = self._forward(self.stack, x, shared, y, self.recipe.label_smoothing,
                                     self.recipe.precision, self.recipe.channels_last)
        losses.sum().backward()  # member k's loss depends on member k's slice alone
        losses = losses.detach()
        if self.compiled:
            losses, hits = keep(losses, hits)
        if self.bn_l1:
            add_bn_l1_subgradient(self.bn_scales, self.bn_l1)
        self.optimizer.step()
        if self.stack.masks:
            self._enforce_mask(self.stack.masks)
        return losses, hits

    def after_step(self) -> None:
        pass  # no callbacks: a mask changed mid-training has no stacked form here

    def sync(self) -> None:
        self.stack.write_back(self.models)

    def masks(self) -> list[Mapping[str, Tensor] | None]:
        return list(self._masks)

    def optimizer_states(self) -> list[dict]:
        if self._optimizer_states is None:
            self._optimizer_states = self.stack.member_optimizer_states(self.optimizer)
        return self._optimizer_states

    def rng_states(self) -> list[Tensor]:
        """What `torch.get_rng_state()` holds at a checkpoint of `train`: it seeds the global
        RNG with the run's seed and no stackable model draws from it."""
        return [torch.Generator().manual_seed(seed).get_state() for seed in self.seeds]

    def label(self, member: int) -> str:
        return f"stack member {member} (seed {self.seeds[member]})"

    def states(self) -> list[TrainState]:
        """One TrainState per member, as `train` would return it (the models are synced)."""
        states = []
        for model, mask, opt_state, history in zip(self.models, self._masks,
                                                   self.optimizer_states(), self.histories):
            state = TrainState(model, make_optimizer(model.parameters(), self.recipe), None,
                               self.steps_per_epoch, self.epoch, self.iteration, list(history))
            state.set_mask(mask)  # before the optimiser state: it only re-zeroes weights
            load_optimizer_state(state.optimizer, opt_state)
            states.append(state)
        return states


def _stack_forward(stack: _Stack, x: Tensor, shared: bool, y: Tensor, label_smoothing: float,
                   precision: str, channels_last: bool) -> tuple[Tensor, Tensor]:
    """Each member's mean loss (K,), float32 for backward, and its count of correct top-1
    predictions (K,): what a stack's step computes before its backward (compiled when
    asked)."""
    x = input_layout(x, channels_last and shared)
    with autocast(x.device, precision):
        logits = stack(x, shared)  # (K, classes, B)
        losses = F.cross_entropy(logits, y, reduction="none",
                                 label_smoothing=label_smoothing).mean(1)
    return losses.float(), logits.detach().argmax(1).eq(y).sum(1)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------- the stack


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules in execution order; only plain Sequentials say what that order is."""
    layers = []
    for name, module in model.named_modules():
        children = list(module.children())
        if not children:
            layers.append((name, module))
        elif type(module).forward is not nn.Sequential.forward:
            raise NotStackable(f"module {name or 'model'!r} ({type(module).__name__}) is not an "
                               "nn.Sequential, so its forward cannot be batched layer by layer")
    return layers


def _module_refusal(module: nn.Module) -> str | None:
    """Why one leaf module has no stacked form, or None. Exact types only: a subclass may
    compute something else, and so may a module with hooks or frozen weights."""
    kind = type(module)
    if module._forward_hooks or module._forward_pre_hooks:
        return f"{kind.__name__} has forward hooks"
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    if frozen:
        return f"{kind.__name__} has frozen parameters ({', '.join(frozen)})"
    if kind is nn.Conv2d and module.padding_mode != "zeros":
        return f"Conv2d padding_mode {module.padding_mode!r}"
    if kind is nn.Flatten and (module.start_dim, module.end_dim) != (1, -1):
        return "Flatten other than start_dim=1, end_dim=-1"
    if kind in SPATIAL_POOLS and getattr(module, "return_indices", False):
        return "a pool that returns indices"
    if kind in (nn.Linear, nn.Conv2d, nn.Flatten, *SPATIAL_POOLS, *BATCH_NORMS, *ELEMENTWISE):
        return None
    return f"{kind.__name__} has no stacked form"


def _signature(model: nn.Module) -> tuple:
    return (
        tuple((name, type(m).__name__, m.extra_repr()) for name, m in model.named_modules()),
        tuple((n, tuple(t.shape), t.dtype, t.device) for n, t in model.state_dict().items()),
    )


def _activation_bytes(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes of every leaf module's output for one sample."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=_device(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


class _Stack:
    """The K models as stacked tensors, run layer by layer in batched form."""

    def __init__(self, models: Sequence[nn.Module]):
        self.k = len(models)
        self.layers = _layers(models[0])
        self.device = _device(models[0])
        with torch.no_grad():
            self.params = {name: torch.stack([dict(m.named_parameters())[name].detach()
                                              for m in models]).requires_grad_()
                           for name, _ in models[0].named_parameters()}
            self.buffers = {name: torch.stack([dict(m.named_buffers())[name] for m in models])
                            for name, _ in models[0].named_buffers()}
        self.masks: list[tuple[Tensor, Tensor]] = []

    def install_masks(self, masks: Sequence[Mapping[str, Tensor] | None]) -> None:
        """Stacked float masks (ones for members without one) for every masked parameter,
        in place of any installed before; the weights are masked at once."""
        names = sorted({n for m in masks if m for n in m}, key=list(self.params).index)
        self.masks = []
        for name in names:
            if name not in self.params:
                raise ValueError(f"mask names {name!r}, which the models do not have")
            p = self.params[name]
            stacked = torch.ones_like(p, dtype=p.dtype)
            for i, mask in enumerate(masks):
                if mask and name in mask:
                    stacked[i] = mask[name].to(device=p.device, dtype=p.dtype)
            self.masks.append((p, stacked))
        self.enforce_masks()

    def enforce_masks(self) -> None:
        enforce_mask(self.masks)

    def batch_norm_scales(self) -> list[Tensor]:
        return [self.params[f"{name}.weight"] for name, m in self.layers
                if type(m) in BATCH_NORMS and m.weight is not None]

    @torch.no_grad()
    def read_members(self, models: Sequence[nn.Module]) -> None:
        """Copy every parameter and buffer of models[k] into member k's slice."""
        for i, model in enumerate(models):
            for name, p in model.named_parameters():
                self.params[name][i].copy_(p)
            for name, b in model.named_buffers():
                self.buffers[name][i].copy_(b)

    @torch.no_grad()
    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Copy member k's slice of every parameter and buffer into models[k]."""
        for i, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(self.params[name][i])
            for name, b in model.named_buffers():
                b.copy_(self.buffers[name][i])

    def member_optimizer_states(self, optimizer: torch.optim.Optimizer) -> list[dict]:
        """Member k's optimiser state in the layout of an optimiser over models[k] alone."""
        saved = optimizer.state_dict()
        shapes = [p.shape for p in self.params.values()]
        return [{"state": {idx: {key: v[i].clone() if _per_weight(key, v, shapes[idx]) else
                                 (v.clone() if isinstance(v, Tensor) else v)
                                 for key, v in slots.items()}
                           for idx, slots in saved["state"].items()},
                 "param_groups": [dict(g) for g in saved["param_groups"]]}
                for i in range(self.k)]

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer,
                             states: Sequence[Mapping]) -> None:
        """Stack the members' saved optimiser states (each laid out as an optimiser over
        its model alone, as every `last.pt` holds it) into the stack's optimiser."""
        shapes = [p.shape[1:] for p in self.params.values()]
        stacked = {idx: {key: torch.stack([s["state"][idx][key] for s in states])
                         if _per_weight(key, v, shapes[idx]) else v
                         for key, v in slots.items()}
                   for idx, slots in states[0]["state"].items()}
        load_optimizer_state(optimizer, {"state": stacked,
                                         "param_groups": states[0]["param_groups"]})

    def __call__(self, x: Tensor, shared: bool) -> Tensor:
        """Logits (K, classes, B) of input x: (B, ...) when shared, else (K, B, ...)."""
        h, layout = x, SHARED if shared else MEMBER
        for name, module in self.layers:
            h, layout = self._layer(name, module, h, layout)
        return self._to_features(h, layout)

    # A rule per layer kind: (activations, layout) in, (activations, layout) out.

    def _layer(self, name: str, module: nn.Module, h: Tensor, layout: str) -> tuple[Tensor, str]:
        kind = type(module)
        if kind is nn.Linear:
            return self._linear(name, h, layout)
        if kind is nn.Conv2d:
            return self._conv(name, module, h, layout)
        if kind in BATCH_NORMS:
            return self._batch_norm(name, module, h, layout)
        if kind is nn.Flatten:
            return self._flatten(h, layout)
        if kind in SPATIAL_POOLS:
            if layout == MEMBER:
                return module(h.flatten(0, 1)).unflatten(0, h.shape[:2]), MEMBER
            if layout == FEATURES:
                raise NotStackable(f"layer {name!r}: a pool after the features were flattened")
        return module(h), layout  # element-wise, or a pool over (B, C, H, W) channels

    def _param(self, name: str, kind: str) -> Tensor | None:
        return self.params.get(f"{name}.{kind}")

    def _linear(self, name: str, h: Tensor, layout: str) -> tuple[Tensor, str]:
        w, b = self._param(name, "weight"), self._param(name, "bias")  # (K, O, I), (K, O)
        k, out, inp = w.shape
        if layout == SHARED and h.dim() == 2:
            # One (K*O, I) x (I, B) product reads the shared input once for all members
            # (and runs faster than the (B, I) x (I, K*O) product, measured on CPU).
            flat_w = w.reshape(k * out, inp)
            y = flat_w @ h.t() if b is None else torch.addmm(b.reshape(k * out, 1), flat_w, h.t())
            return y.view(k, out, -1), FEATURES
        h = self._to_features(h, layout)
        if h.dim() != 3:
            raise NotStackable(f"layer {name!r}: Linear on inputs of shape {tuple(h.shape)}")
        return (torch.bmm(w, h) if b is None else torch.baddbmm(b.unsqueeze(2), w, h)), FEATURES

    def _conv(self, name: str, conv: nn.Conv2d, h: Tensor, layout: str) -> tuple[Tensor, str]:
        """A Conv2d of the stack: K*O filters over a shared input, else a grouped convolution
        (member k's channels are group k). Activations are channels-last: CPU convolutions
        and max-pools over the stack's many channels ran 2-4x faster so (LeNet-5, K = 8)."""
        w, b = self._param(name, "weight"), self._param(name, "bias")  # (K, O, C/g, kh, kw)
        if layout == SHARED and conv.groups == 1 and conv.dilation == (1, 1) \
                and not isinstance(conv.padding, str):
            return _shared_conv(h, w, b, conv.stride, conv.padding), CHANNELS
        h = self._to_channels(name, h, layout).contiguous(memory_format=torch.channels_last)
        return F.conv2d(h, w.flatten(0, 1), None if b is None else b.flatten(), conv.stride,
                        conv.padding, conv.dilation, self.k * conv.groups), CHANNELS

    def _batch_norm(self, name: str, bn: nn.modules.batchnorm._BatchNorm, h: Tensor,
                    layout: str) -> tuple[Tensor, str]:
        """Member k's channels are channels of their own, with their own statistics."""
        if type(bn) is nn.BatchNorm2d:
            flat = self._to_channels(name, h, layout)
        else:
            h = self._to_features(h, layout)
            if h.dim() != 3:
                raise NotStackable(f"layer {name!r}: BatchNorm1d on inputs of shape "
                                   f"{tuple(h.shape)}")
            flat = h.flatten(0, 1).t()  # (B, K*F)
        factor = 0.0 if bn.momentum is None else bn.momentum
        running_mean = running_var = None
        if bn.track_running_stats:
            tracked = self.buffers[f"{name}.num_batches_tracked"]
            tracked.add_(1)
            if bn.momentum is None:
                factor = 1.0 / float(tracked[0])
            running_mean = self.buffers[f"{name}.running_mean"].view(-1)
            running_var = self.buffers[f"{name}.running_var"].view(-1)
        weight, bias = self._param(name, "weight"), self._param(name, "bias")
        y = F.batch_norm(flat, running_mean, running_var,
                         None if weight is None else weight.flatten(),
                         None if bias is None else bias.flatten(), True, factor, bn.eps)
        if type(bn) is nn.BatchNorm2d:
            return y, CHANNELS
        return y.t().unflatten(0, (self.k, -1)), FEATURES

    def _flatten(self, h: Tensor, layout: str) -> tuple[Tensor, str]:
        if layout == SHARED:
            return h.flatten(1), SHARED
        if layout == MEMBER:
            return h.flatten(2), MEMBER
        if layout == CHANNELS:
            return h.reshape(h.shape[0], self.k, -1).permute(1, 2, 0), FEATURES
        return h, FEATURES

    def _to_features(self, h: Tensor, layout: str) -> Tensor:
        """(K, F, B) from a layout of flat (per-member 2-d) activations."""
        if layout == FEATURES:
            return h
        if layout == MEMBER:
            return h.transpose(1, 2)
        if layout == SHARED:
            return h.t().expand(self.k, *h.t().shape)
        return self._flatten(h, layout)[0]

    def _to_channels(self, name: str, h: Tensor, layout: str) -> Tensor:
        """(B, K*C, H, W) from a layout of image activations."""
        if layout == CHANNELS:
            return h
        if layout == FEATURES or h.dim() != (4 if layout == SHARED else 5):
            raise NotStackable(f"layer {name!r}: a 2-d convolution or BatchNorm on inputs of "
                               f"shape {tuple(h.shape)}")
        if layout == SHARED:
            return h.repeat(1, self.k, 1, 1)
        return h.transpose(0, 1).flatten(1, 2)


def _shared_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                 padding: tuple[int, int]) -> Tensor:
    """Every member's filters over one shared (B, C, H, W) input as one matrix product of
    the input's patches, (B*H'*W', C*kh*kw) x (C*kh*kw, K*O): the input is read once, and
    both the product and its weight gradient are single large GEMMs, where CPU convolution
    kernels over few input channels are slow (LeNet-5's first layer, K = 8: 2x faster).
    Returns (B, K*O, H', W'), channels-last. (With K separate inputs the K products have
    only O columns each, and the grouped convolution is faster.)"""
    k, out_channels, _, kh, kw = weight.shape
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    patches = x.unfold(2, kh, stride[0]).unfold(3, kw, stride[1])  # (B, C, H', W', kh, kw)
    n, _, height, width = patches.shape[:4]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * height * width, -1)
    w = weight.reshape(k * out_channels, -1).t()
    y = patches @ w if bias is None else torch.addmm(bias.flatten(), patches, w)
    return y.view(n, height, width, k * out_channels).permute(0, 3, 1, 2)


def _per_weight(key: str, value: object, shape: torch.Size) -> bool:
    """Whether an optimiser slot holds one entry per weight (momentum, Adam's moments), not
    one for the whole parameter (Adam's step count, which every member shares)."""
    return key != "step" and isinstance(value, Tensor) and value.shape == shape


__all__ = ["NotStackable", "StackEngine", "can_stack", "stack_refusal", "stack_size",
           "train_stacked"]
