"""VGG with BatchNorm for CIFAR (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks
for Large-Scale Image Recognition"; BatchNorm from Ioffe & Szegedy 2015).

Configurations A, D, E of the paper as 3x3 conv + BN + ReLU blocks, then global average
pooling and a single linear classifier 512 -> classes: the common CIFAR variant (e.g. the
network-slimming and lottery-ticket code bases), 14.7M parameters for VGG-16-BN on CIFAR-10.
A max-pool is skipped once the feature map is 1 pixel high or wide, so small inputs work.
"""

from __future__ import annotations

from torch import nn

from prunebench.models.init import init_weights
from prunebench.models.registry import register_model

_POOL = "M"
_CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _vgg(config: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    in_channels = channels
    for item in _CONFIGS[config]:
        if item == _POOL:
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            continue
        layers += [
            nn.Conv2d(in_channels, item, 3, padding=1, bias=False),
            nn.BatchNorm2d(item),
            nn.ReLU(),
        ]
        in_channels = item
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)]
    model = nn.Sequential(*layers)
    init_weights(model)
    return model


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return _vgg("A", num_classes, input_shape)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return _vgg("D", num_classes, input_shape)


@register_model("vgg19_bn")
def vgg19_bn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return _vgg("E", num_classes, input_shape)
