"""Residual networks (He et al. 2016, "Deep Residual Learning for Image Recognition").

ResNet-20/56 are the paper's CIFAR networks (Section 4.2): a 3x3 stem of 16 channels, three
stages of n = 3 / 9 basic blocks with 16, 32, 64 channels, global average pooling, one fc.
ResNet-18 is the usual CIFAR adaptation of the ImageNet network: a 3x3 stride-1 stem of 64
channels and no max-pool, then four stages (64, 128, 256, 512) of two basic blocks.

Shortcuts use option B: a 1x1 conv + BN projection where the shape changes, identity
elsewhere. Its shortcuts are ordinary layers that structured pruning tools can follow, and it
adds only 2,752 parameters to option A (zero padding): on CIFAR-10 ResNet-20 has 272,474 and
ResNet-56 855,770 (paper: 0.27M, 0.85M). ResNet-18 has 11,173,962.
"""

from __future__ import annotations

from torch import Tensor, nn

from prunebench.models.init import init_weights
from prunebench.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers around a shortcut; ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv + BN + ReLU, stages of basic blocks, global average pool, fc.

    Each stage after the first halves the spatial size with a stride-2 first block.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stem_channels: int,
        stage_channels: tuple[int, ...],
        blocks_per_stage: int,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        channels = stem_channels
        for index, out_channels in enumerate(stage_channels):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        return self.fc(self.flatten(self.pool(out)))


@register_model("resnet20")
def resnet20(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ResNet(input_shape[0], num_classes, 16, (16, 32, 64), blocks_per_stage=3)


@register_model("resnet56")
def resnet56(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ResNet(input_shape[0], num_classes, 16, (16, 32, 64), blocks_per_stage=9)


@register_model("resnet18")
def resnet18(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ResNet(input_shape[0], num_classes, 64, (64, 128, 256, 512), blocks_per_stage=2)
