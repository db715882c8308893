"""LeNet-300-100 and LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to
document recognition"); LeNet-300-100 is the MNIST baseline of Han et al. 2015 and
Frankle & Carbin 2019.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from prunebench.models.init import init_weights
from prunebench.models.registry import register_model, shape_error


def mlp(input_shape: tuple[int, ...], hidden: Sequence[int], num_classes: int) -> nn.Module:
    """Flatten, then fully connected ReLU layers of the given widths, then the classifier."""
    widths = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))
    init_weights(model)
    return model


@register_model("lenet_300_100")
def lenet_300_100(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Flatten -> 300 -> 100 -> classes, ReLU. 266,610 parameters on MNIST, 10 classes."""
    return mlp(input_shape, (300, 100), num_classes)


@register_model("lenet5")
def lenet5(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """conv 6@5x5 (padding 2) -> maxpool -> conv 16@5x5 -> maxpool -> fc 120, 84, classes.

    Padding 2 on the first conv is the usual modern MNIST variant: a 28x28 digit then reaches
    the fc layers as 16x5x5, as a 32x32 input does in the original.
    """
    channels, height, width = input_shape
    # 5x5 "same" conv, pool 2, 5x5 valid conv, pool 2.
    spatial = [(size // 2 - 4) // 2 for size in (height, width)]
    if min(spatial) < 1:
        raise shape_error("lenet5", input_shape, "needs H, W >= 12")
    model = nn.Sequential(
        nn.Conv2d(channels, 6, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * spatial[0] * spatial[1], 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
    init_weights(model)
    return model
