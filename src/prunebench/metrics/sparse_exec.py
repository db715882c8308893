"""Execution modes that exploit zero weights, to measure whether sparsity buys speed.

`sparse_csr`: every Linear and Conv2d layer with zero weights becomes a sparse-matrix x dense
product (`torch.sparse.mm`) with its weight stored as CSR (COO where this torch cannot
multiply CSR on the device). A Conv2d runs as im2col (`F.unfold`) and one sparse product over
all output positions of the batch. Layers with no zero weight, grouped convs, convs with a
string padding ("same") or a non-zero padding mode stay dense. The outputs equal the dense
ones up to floating-point summation order.

`semi_structured_2_4`: fp16 Linear weights in which every group of 4 consecutive weights
along the input dimension has at most 2 nonzeros become `to_sparse_semi_structured` tensors,
run by the sparse tensor cores of NVIDIA GPUs of compute capability 8.0 and later. Convs have
no such kernel and stay dense fp16, so `dense_fp16` is the baseline to compare it with.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.metrics.effective import LAYER_TYPES


def _to_layout(weight: Tensor, layout: torch.layout) -> Tensor:
    """The weight as an (out, in * kernel) sparse matrix; torch's "CSR is beta" warning, which
    every conversion would repeat, is silenced: this module is the experiment it warns about."""
    matrix = weight.detach().reshape(weight.shape[0], -1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        if layout == torch.sparse_csr:
            return matrix.to_sparse_csr()
        return matrix.to_sparse().coalesce()


def sparse_layout(device: torch.device) -> torch.layout:
    """CSR if `torch.sparse.mm` multiplies CSR by dense on this device, else COO."""
    probe = torch.eye(2, device=device)
    try:
        torch.sparse.mm(_to_layout(probe, torch.sparse_csr), probe)
    except (RuntimeError, NotImplementedError):
        return torch.sparse_coo
    return torch.sparse_csr


def has_zero_weights(module: nn.Module) -> bool:
    return not bool(module.weight.all())


def _bias(module: nn.Module) -> Tensor | None:
    return None if module.bias is None else module.bias.detach().clone()


class SparseLinear(nn.Module):
    """A Linear layer as `W @ x^T` with W sparse."""

    def __init__(self, linear: nn.Linear, layout: torch.layout):
        super().__init__()
        self.register_buffer("weight", _to_layout(linear.weight, layout))
        self.register_buffer("bias", _bias(linear))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


class SparseConv2d(nn.Module):
    """An ungrouped, zero-padded Conv2d as im2col and `W @ columns` with W sparse."""

    def __init__(self, conv: nn.Conv2d, layout: torch.layout):
        super().__init__()
        self.register_buffer("weight", _to_layout(conv.weight, layout))
        self.register_buffer("bias", _bias(conv))
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation

    def _output_size(self, size: int, dim: int) -> int:
        span = self.dilation[dim] * (self.kernel_size[dim] - 1) + 1
        return (size + 2 * self.padding[dim] - span) // self.stride[dim] + 1

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        columns = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        # (batch, C*kh*kw, positions) -> (C*kh*kw, batch*positions): one product for the batch
        flat = columns.transpose(0, 1).reshape(columns.shape[1], -1)
        out = torch.sparse.mm(self.weight, flat)
        out = out.view(out.shape[0], batch, -1).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.reshape(batch, -1, self._output_size(height, 0), self._output_size(width, 1))


def _sparse_csr_replacement(module: nn.Module, layout: torch.layout) -> nn.Module | None:
    if not isinstance(module, (nn.Linear, nn.Conv2d)) or not has_zero_weights(module):
        return None
    if isinstance(module, nn.Linear):
        return SparseLinear(module, layout)
    if module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple):
        return SparseConv2d(module, layout)
    return None


def _replace(model: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    """The model with submodule `name` replaced (the model itself when `name` is empty)."""
    if not name:
        return replacement
    model.set_submodule(name, replacement)
    return model


def to_sparse_csr(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy whose sparse Linear/Conv2d layers run sparse matmuls; how many were converted."""
    converted = copy.deepcopy(model)
    layout = sparse_layout(next(model.parameters()).device)
    count = 0
    for name, module in list(converted.named_modules()):
        replacement = _sparse_csr_replacement(module, layout)
        if replacement is not None:
            converted = _replace(converted, name, replacement)
            count += 1
    return converted, count


def is_2_4_sparse(weight: Tensor) -> bool:
    """At most 2 nonzeros in every 4 consecutive weights along the input dim (dim 1).

    Conv weights are grouped as (out, kh, kw, in), the layout of N:M pruning in this package.
    """
    if weight.dim() < 2 or weight.shape[1] % 4:
        return False
    groups = (weight != 0).movedim(1, -1).reshape(-1, 4)
    return bool((groups.sum(1) <= 2).all())


def semi_structured_skip_reason(model: nn.Module, device: torch.device) -> str | None:
    """Why `semi_structured_2_4` cannot run here, or None if it can be tried."""
    if device.type != "cuda":
        return ("needs CUDA sparse tensor cores (compute capability >= 8.0); "
                f"device is {device.type}")
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 0):
        name = torch.cuda.get_device_name(device)
        return f"needs compute capability >= 8.0; {name} has {capability}"
    sparse = {n: m.weight for n, m in model.named_modules()
              if isinstance(m, LAYER_TYPES) and has_zero_weights(m)}
    if not sparse:
        return "no zero weights: the model is dense"
    not_2_4 = [n for n, w in sparse.items() if not is_2_4_sparse(w)]
    if not_2_4:
        return f"weights not 2:4 sparse along the input dim: {', '.join(not_2_4)}"
    return None


def to_semi_structured(model: nn.Module) -> tuple[nn.Module, int, list[str]]:
    """An fp16 copy whose 2:4 sparse Linear weights are semi-structured sparse tensors.

    Returns the copy, how many layers were converted, and why the others were not (the
    kernels need each weight dimension to be a multiple of a small block, e.g. 16 or 64).
    """
    from torch.sparse import to_sparse_semi_structured

    converted = copy.deepcopy(model).half()
    count, errors = 0, []
    for name, module in converted.named_modules():
        if isinstance(module, nn.Linear) and is_2_4_sparse(module.weight):
            try:
                sparse = to_sparse_semi_structured(module.weight.detach())
            except RuntimeError as error:
                errors.append(f"{name}: {error}")
                continue
            module.weight = nn.Parameter(sparse, requires_grad=False)
            count += 1
    return converted, count, errors
