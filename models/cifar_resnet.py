"""CIFAR ResNets of He et al. 2016 (depth 6n+2: 20, 32, 44, 56, 110) with option-A shortcuts.

Three stages of 16/32/64 channels. The parameter-free option-A shortcut is written as a channel
scatter (`ShortcutA`) rather than `F.pad`: torch-pruning reads a pad as element-wise and would merge
the residual streams of all three stages into one wrong group. `ShortcutA` keeps an explicit
input-to-output channel map, so each stage's stream is its own group and can be pruned.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ._cfg import cifar_cfg, refuse_pretrained
from ._layers import init_conv_bn, pooled_head

__all__ = ["CifarResNet", "BasicBlock", "ShortcutA"]


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by `stride` and place input channel src[i] at output channel dst[i].

    Output channels that receive no input are zero (the paper's zero padding). Same output as
    `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`, but the channel map survives pruning.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        pad = (out_channels - in_channels) // 2
        self.stride = stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.register_buffer("src", torch.arange(in_channels))
        self.register_buffer("dst", torch.arange(in_channels) + pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        out = x.new_zeros(x.shape[0], self.out_channels, x.shape[2], x.shape[3])
        return out.index_copy(1, self.dst, x.index_select(1, self.src))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self, depth: int = 56, num_classes: int = 10, in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64), drop_rate: float = 0.0, **_: Any,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)
        init_conv_bn(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return pooled_head(x, self.fc, self.drop_rate, self.training, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_resnet(variant: str, depth: int, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    refuse_pretrained(variant, pretrained)
    return build_model_with_cfg(CifarResNet, variant, pretrained=False, depth=depth, **kwargs)


default_cfgs = generate_default_cfgs({
    f"cifar_resnet{d}.untrained": cifar_cfg() for d in (20, 32, 44, 56, 110)
})


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet20", 20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet32", 32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet44", 44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet56", 56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create_cifar_resnet("cifar_resnet110", 110, pretrained, **kwargs)
