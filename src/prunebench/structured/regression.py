"""Channel pruning by LASSO selection and least-squares reconstruction (He, Zhang & Sun 2017,
"Channel Pruning for Accelerating Very Deep Neural Networks").

For each group that feeds exactly one conv/linear (its consumer), in forward order:
sample the consumer's inputs in the network pruned so far and the ORIGINAL network's
consumer outputs at the same places; pick the channels to keep by LASSO on per-channel
contribution coefficients; remove the others by surgery; refit the consumer's weights by
least squares so it reproduces the original outputs from what is left. Taking inputs from the
pruned network lets each layer absorb the error of the layers pruned before it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso
from torch import Tensor, nn

from prunebench.structured.graph import (
    ChannelGraph,
    ChannelGroup,
    Consumer,
    eval_mode,
    model_device,
)
from prunebench.structured.surgery import Edit

LASSO_ALPHAS = 100  # points on the regularisation path, log-spaced
LASSO_ALPHA_RANGE = 1e-4  # smallest alpha / largest alpha on the path
LASSO_MAX_ITER = 10_000  # coordinate-descent sweeps per alpha
MOMENT_CHUNK_ELEMENTS = 1 << 22  # cap on the per-chunk contribution tensor (32 MiB float64)


def regression_prune(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batches: Iterable,
    channel_sparsity: float,
    *,
    positions_per_sample: int = 10,
    max_samples: int = 2000,
    exclude_first: bool = False,
    generator: torch.Generator | None = None,
) -> list[Edit]:
    """Prune round(channel_sparsity * size) channels of every single-consumer group in place.

    `batches` yields (x, y) pairs; the first `max_samples` images are kept (in memory) and
    reused for every layer, `positions_per_sample` random output positions per image (all of
    them if the map is smaller; one per image for a linear consumer). Groups coupled by a
    residual add feed several consumers and are left alone. `generator` (default: seeded 0)
    draws the positions, so equal inputs give equal edits.
    """
    if not 0.0 <= channel_sparsity <= 1.0:
        raise ValueError(f"channel_sparsity must lie in [0, 1], got {channel_sparsity}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    images = _first_images(batches, max_samples, model_device(model))
    original = copy.deepcopy(model).eval()
    graph = ChannelGraph(model, input_shape)
    edits = []
    for root in [group.root for group in graph.groups(exclude_first=exclude_first)]:
        group = graph.group(root)
        prune_count = min(round(channel_sparsity * group.size), group.size - 1)
        if prune_count == 0 or not _reconstructible(graph, group):
            continue
        consumer = group.consumers[0]
        layer = graph.modules[consumer.name]
        inputs, outputs = _sample(
            (model, original), consumer.name, images, positions_per_sample, generator
        )
        channel = _feature_channels(layer, consumer)
        weight = layer.weight.detach().reshape(outputs.shape[1], -1).double().cpu()
        keep = _lasso_keep(
            inputs, weight, outputs - _bias(layer), channel, group.size - prune_count
        )
        edits.append(graph.prune(root, sorted(set(range(group.size)) - set(keep))))
        _refit(layer, inputs[:, torch.isin(channel, torch.tensor(keep))], outputs)
    return edits


def _reconstructible(graph: ChannelGraph, group: ChannelGroup) -> bool:
    """One producer, one ungrouped consumer, and that consumer reads this group only."""
    if len(group.producers) != 1 or len(group.consumers) != 1:
        return False
    layer = graph.modules[group.consumers[0].name]
    width = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
    return getattr(layer, "groups", 1) == 1 and len(group.consumers[0].input_channel) == width


def _first_images(batches: Iterable, max_samples: int, device: torch.device) -> list[Tensor]:
    """The inputs of the first `max_samples` images, kept so every layer sees the same data."""
    images, count = [], 0
    for inputs, *_ in batches:
        images.append(inputs[: max_samples - count].to(device))
        count += len(images[-1])
        if count >= max_samples:
            break
    if not images:
        raise ValueError("regression_prune needs at least one batch of inputs")
    return images


def _sample(
    networks: tuple[nn.Module, nn.Module],
    layer_name: str,
    images: list[Tensor],
    positions_per_sample: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Rows (input features of layer `layer_name` in the pruned network, its output in the
    original network) at the same random positions; float64 on the CPU."""
    pruned, original = networks
    pruned_layer = dict(pruned.named_modules())[layer_name]
    original_layer = dict(original.named_modules())[layer_name]
    seen: dict[str, Tensor] = {}
    hooks = [
        pruned_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("input", i[0])),
        original_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("output", o)),
    ]
    input_rows, output_rows = [], []
    try:
        with torch.no_grad(), eval_mode(pruned):
            for batch in images:
                pruned(batch)
                original(batch)
                features = _features_by_position(pruned_layer, seen["input"])
                outputs = _outputs_by_position(seen["output"])
                picks = _positions(len(batch), features.shape[2], positions_per_sample, generator)
                input_rows.append(_take(features, picks))
                output_rows.append(_take(outputs, picks))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(input_rows).double(), torch.cat(output_rows).double()


def _outputs_by_position(output: Tensor) -> Tensor:
    """(batch, outputs, positions): a conv's output map, or a linear's output vector."""
    return output.flatten(2) if output.dim() == 4 else output[..., None]


def _features_by_position(layer: nn.Module, inputs: Tensor) -> Tensor:
    """(batch, features, positions): the receptive-field patch behind each conv output
    position (channel-major, as the conv weight flattens), or the input vector of a linear."""
    if isinstance(layer, nn.Conv2d):
        return F.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    return inputs[..., None]


def _positions(images: int, positions: int, per_image: int, generator: torch.Generator) -> Tensor:
    """(images, k) distinct random positions per image, k = min(per_image, positions)."""
    return torch.rand(images, positions, generator=generator).argsort(dim=1)[:, :per_image]


def _take(values: Tensor, picks: Tensor) -> Tensor:
    """Rows of `values` (batch, width, positions) at the picked positions: (batch * k, width)."""
    index = picks.to(values.device)[:, None, :].expand(-1, values.shape[1], -1)
    return values.gather(2, index).transpose(1, 2).reshape(-1, values.shape[1]).cpu()


def _feature_channels(layer: nn.Module, consumer: Consumer) -> Tensor:
    """The group channel behind each input feature of the consumer's flattened weight."""
    channel = torch.tensor(consumer.input_channel)
    if isinstance(layer, nn.Conv2d):
        return channel.repeat_interleave(layer.kernel_size[0] * layer.kernel_size[1])
    return channel


def _bias(layer: nn.Module) -> Tensor | float:
    return 0.0 if layer.bias is None else layer.bias.detach().double().cpu()


def _lasso_keep(
    inputs: Tensor, weight: Tensor, target: Tensor, channel: Tensor, keep_count: int
) -> list[int]:
    """Channels to keep: the `keep_count` largest |beta| where beta solves
        min ||target - sum_i beta_i Z_i||^2 + alpha ||beta||_1,
    Z_i being channel i's contribution to the consumer's output (its inputs times its
    weights), at the largest alpha that leaves at least `keep_count` nonzero (ties in
    |beta| go to the lower channel index).
    """
    gram, cross = _contribution_moments(inputs, weight, target, channel)
    design, response = _gram_root(gram, cross)
    beta = _lasso_on_path(design, response, keep_count)
    order = torch.sort(-torch.from_numpy(np.abs(beta)), stable=True).indices
    return sorted(order[:keep_count].tolist())


def _contribution_moments(
    inputs: Tensor, weight: Tensor, target: Tensor, channel: Tensor
) -> tuple[Tensor, Tensor]:
    """G[i, j] = <Z_i, Z_j> and b[i] = <Z_i, target>, Z_i = inputs_i @ weight_i.T.

    The LASSO objective depends on the data only through these, so the (rows x outputs x
    channels) tensor of contributions is never stored whole. Two exact ways to get them;
    the cheaper one is used: summing contributions in chunks of rows costs
    rows * channels * outputs * (features per channel + channels); going through the
    feature Gram matrices inputs.T @ inputs and weight.T @ weight costs
    (rows + outputs) * features^2 but is far cheaper for wide convs.
    """
    rows, features = inputs.shape
    outputs = weight.shape[0]
    channels = int(channel.max()) + 1
    per_channel = features // channels
    if features != channels * per_channel or bool((channel.bincount() != per_channel).any()):
        raise ValueError("every channel must own the same number of consumer input features")
    order = torch.sort(channel, stable=True).indices
    grouped_inputs = inputs[:, order].reshape(rows, channels, per_channel)
    grouped_weight = weight[:, order].reshape(outputs, channels, per_channel)
    chunked_cost = rows * channels * outputs * (per_channel + channels)
    gram_cost = (rows + outputs) * features * features
    if gram_cost < chunked_cost:
        return _moments_by_feature_gram(grouped_inputs, grouped_weight, target)
    return _moments_by_chunks(grouped_inputs, grouped_weight, target)


def _moments_by_chunks(inputs: Tensor, weight: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Sum over chunks of rows of explicit contributions, at most MOMENT_CHUNK_ELEMENTS each."""
    rows, channels, _ = inputs.shape
    gram = inputs.new_zeros(channels, channels)
    cross = inputs.new_zeros(channels)
    step = max(1, MOMENT_CHUNK_ELEMENTS // (channels * weight.shape[0]))
    for start in range(0, rows, step):
        contributions = torch.einsum("sck,nck->scn", inputs[start : start + step], weight)
        gram += torch.einsum("scn,sdn->cd", contributions, contributions)
        cross += torch.einsum("scn,sn->c", contributions, target[start : start + step])
    return gram, cross


def _moments_by_feature_gram(
    inputs: Tensor, weight: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """G[i, j] = sum_{a, b} (X.T X)[ia, jb] (W.T W)[ia, jb]: trace(W_i X_i.T X_j W_j.T)."""
    rows, channels, per_channel = inputs.shape
    flat_inputs = inputs.reshape(rows, -1)
    flat_weight = weight.reshape(weight.shape[0], -1)
    products = (flat_inputs.T @ flat_inputs) * (flat_weight.T @ flat_weight)
    gram = products.reshape(channels, per_channel, channels, per_channel).sum(dim=(1, 3))
    cross = ((flat_inputs.T @ target) * flat_weight.T).reshape(channels, -1).sum(dim=1)
    return gram, cross


def _gram_root(gram: Tensor, cross: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A (rank x channels) design D and response r with D.T D = G and D.T r = b.

    ||r - D beta||^2 then differs from the full objective by a constant, so sklearn solves a
    problem of `channels` rows instead of rows * outputs. b lies in G's range (b = Z.T t,
    G = Z.T Z), so dropping G's null directions loses nothing.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    tolerance = eigenvalues.max().clamp(min=0) * len(eigenvalues) * torch.finfo(gram.dtype).eps
    kept = eigenvalues > tolerance
    scale = eigenvalues[kept].sqrt()
    basis = eigenvectors[:, kept].T
    return (scale[:, None] * basis).numpy(), ((basis @ cross) / scale).numpy()


def _lasso_on_path(design: np.ndarray, response: np.ndarray, keep_count: int) -> np.ndarray:
    """LASSO coefficients at the largest alpha on a log-spaced path that leaves at least
    `keep_count` nonzero, or at the path's smallest alpha if none does.

    Walks down from the alpha that zeroes everything, warm-starting each fit, and stops as
    soon as enough channels are active: the small-alpha end (nearly plain least squares on a
    possibly ill-conditioned design) is only reached when needed. The coefficients only rank
    channels, and the kept weights are refit by least squares afterwards, so a fit that stops
    at max_iter short of sklearn's tolerance changes at most the ranking of near-ties; its
    ConvergenceWarning is silenced.
    """
    channels = design.shape[1]
    if len(response) == 0:
        return np.zeros(channels)
    largest_alpha = np.abs(design.T @ response).max() / len(response)
    if largest_alpha == 0:
        return np.zeros(channels)
    lasso = Lasso(fit_intercept=False, warm_start=True, max_iter=LASSO_MAX_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for alpha in np.geomspace(largest_alpha, largest_alpha * LASSO_ALPHA_RANGE, LASSO_ALPHAS):
            lasso.set_params(alpha=alpha).fit(design, response)
            if np.count_nonzero(lasso.coef_) >= keep_count:
                break
    return lasso.coef_


def _refit(layer: nn.Module, inputs: Tensor, outputs: Tensor) -> None:
    """Least squares for the consumer's kept weights (and bias) to reproduce `outputs`.

    Solves for the change from the current weights: with more rows than unknowns this is the
    ordinary least-squares fit; with fewer, it is the smallest change that fits, rather than
    the smallest weights, which would throw away what the layer had learnt. The SVD driver
    gelsd, not torch's default gelsy: on CPU gelsy reads an uninitialised pivot array and
    gives run-to-run different answers on rank-deficient systems (pytorch issues #71222,
    #187411), which would break "same inputs, same edits".
    """
    weight = layer.weight.detach().reshape(outputs.shape[1], -1).double().cpu()
    residual = outputs - inputs @ weight.T - _bias(layer)
    if layer.bias is not None:
        inputs = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], dim=1)
    change = torch.linalg.lstsq(inputs, residual, driver="gelsd").solution
    with torch.no_grad():
        new_weight = weight + change[: weight.shape[1]].T
        layer.weight.copy_(new_weight.reshape(layer.weight.shape))
        if layer.bias is not None:
            layer.bias.add_(change[-1].to(layer.bias))
