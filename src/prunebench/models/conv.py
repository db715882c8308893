"""Conv-2, Conv-4 and Conv-6: the VGG-like CIFAR-10 networks of Frankle & Carbin 2019,
"The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks" (Figure 2).

Pairs of 3x3 convs (padding 1) each followed by a 2x2 max-pool, then fc 256, 256, classes.
On CIFAR-10 with biases: Conv-2 4,301,642 and Conv-4 2,425,930 parameters (paper: 4.3M,
2.4M). Conv-6 has 2,262,602; the paper's 1.7M matches only if the second 256-channel conv
(590,080 parameters) is left out, so we follow the architecture, not the count.
"""

from __future__ import annotations

from torch import nn

from prunebench.models.init import init_weights
from prunebench.models.registry import register_model, shape_error

_PAIR_WIDTHS = (64, 128, 256)


def _conv_net(name: str, pairs: int, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    channels, height, width = input_shape
    if min(height, width) < 2**pairs:
        raise shape_error(name, input_shape, f"needs H, W >= {2**pairs} ({pairs} max-pools)")
    layers: list[nn.Module] = []
    in_channels = channels
    for out_channels in _PAIR_WIDTHS[:pairs]:
        for _ in range(2):
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU()]
            in_channels = out_channels
        layers.append(nn.MaxPool2d(2))
    flat = in_channels * (height // 2**pairs) * (width // 2**pairs)
    layers += [
        nn.Flatten(),
        nn.Linear(flat, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    ]
    model = nn.Sequential(*layers)
    init_weights(model)
    return model


@register_model("conv2")
def conv2(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return _conv_net("conv2", 1, num_classes, input_shape)


@register_model("conv4")
def conv4(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return _conv_net("conv4", 2, num_classes, input_shape)


@register_model("conv6")
def conv6(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return _conv_net("conv6", 3, num_classes, input_shape)
