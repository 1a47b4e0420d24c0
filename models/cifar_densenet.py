"""CIFAR DenseNet-40 as defined in the HRank code (and pruned by HRank and DECORE).

Growth rate 12, three dense blocks of 12 layers each: a layer is BN-ReLU-3x3 conv to 12 channels whose
output is concatenated onto its input (no bottleneck, no compression). A 3x3 stem conv to 24 channels;
transitions BN-ReLU-1x1 conv (same width)-2x2 average pool; head BN-ReLU-global pool-Linear.
1.04M conv+linear params (the published count; 1.06M with BatchNorm) and 282.92M conv+linear MACs at
32x32 with 10 classes.

For pruning, each layer's 12 new channels are one channel group whose consumers are every later layer
of the block and the transition (torch-pruning maps the concatenation's channel offsets).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ._cfg import cifar_cfg, refuse_pretrained
from ._layers import init_conv_bn, pooled_head

__all__ = ["CifarDenseNet", "DenseLayer", "Transition"]


class DenseLayer(nn.Module):
    """BN-ReLU-3x3 conv to `growth` channels, concatenated onto the input."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv1(F.relu(self.bn1(x)))], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (same width)-2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class CifarDenseNet(nn.Module):
    def __init__(
        self, depth: int = 40, growth_rate: int = 12, num_classes: int = 10, in_chans: int = 3,
        drop_rate: float = 0.0, **_: Any,
    ) -> None:
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"CIFAR DenseNet depth must be 3n+4 (40, 100), got {depth}")
        n = (depth - 4) // 3
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        c = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_chans, c, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for i in range(3):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth_rate))
                c += growth_rate
            blocks.append(nn.Sequential(*layers))
            if i < 2:
                blocks.append(Transition(c, c))
        self.dense1, self.trans1, self.dense2, self.trans2, self.dense3 = blocks
        self.bn = nn.BatchNorm2d(c)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)
        init_conv_bn(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.trans1(self.dense1(x))
        x = self.trans2(self.dense2(x))
        return F.relu(self.bn(self.dense3(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return pooled_head(x, self.fc, self.drop_rate, self.training, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_densenet(variant: str, depth: int, pretrained: bool = False, **kwargs: Any) -> CifarDenseNet:
    refuse_pretrained(variant, pretrained)
    return build_model_with_cfg(CifarDenseNet, variant, pretrained=False, depth=depth, **kwargs)


default_cfgs = generate_default_cfgs({
    "cifar_densenet40.untrained": cifar_cfg(),
})


@register_model
def cifar_densenet40(pretrained: bool = False, **kwargs: Any) -> CifarDenseNet:
    return _create_cifar_densenet("cifar_densenet40", 40, pretrained, growth_rate=12, **kwargs)
