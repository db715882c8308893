"""The user's own model, in plain torch: a small residual network (no prunebench import).

The study names it by its factory, `model: {factory: "examples.byo.model:small_resnet",
kwargs: {...}}`; prunebench calls it with the study's kwargs plus `num_classes` and
`input_shape`, which it takes.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 16, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*(Block(width) for _ in range(blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)  # registered last: the classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def small_resnet(num_classes: int, input_shape: tuple[int, ...], width: int = 16,
                 blocks: int = 2) -> SmallResNet:
    return SmallResNet(num_classes, input_shape[0], width, blocks)
