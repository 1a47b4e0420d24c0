"""CIFAR GoogLeNet as in the kuangliu/pytorch-cifar and HRank code (pruned by HRank and DECORE).

A 3x3 stem conv to 192 channels, nine Inception blocks (a3 b3, max pool, a4 b4 c4 d4 e4, max pool,
a5 b5) and global pool-Linear(1024, classes). Every conv has a bias and is followed by BN+ReLU; the
"5x5" branch is two stacked 3x3 convs. 6.15M conv+linear params (6.17M with BatchNorm) and 1.52G
conv+linear MACs at 32x32, 10 classes. Weights keep PyTorch's default init, as in that code.

For pruning, each branch's output is one channel group whose consumers are the four branches of the
next Inception block (or the classifier), through the concatenation.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ._cfg import cifar_cfg, refuse_pretrained
from ._layers import pooled_head

__all__ = ["CifarGoogLeNet", "Inception"]

# in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection
INCEPTION_CFG: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "a3": (192, 64, 96, 128, 16, 32, 32),
    "b3": (256, 128, 128, 192, 32, 96, 64),
    "a4": (480, 192, 96, 208, 16, 48, 64),
    "b4": (512, 160, 112, 224, 24, 64, 64),
    "c4": (512, 128, 128, 256, 24, 64, 64),
    "d4": (512, 112, 144, 288, 32, 64, 64),
    "e4": (528, 256, 160, 320, 32, 128, 128),
    "a5": (832, 256, 160, 320, 32, 128, 128),
    "b5": (832, 384, 192, 384, 48, 128, 128),
}


def conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class Inception(nn.Module):
    def __init__(self, in_planes: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int,
                 pool_planes: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(*conv_bn(in_planes, n1x1, 1))
        self.b2 = nn.Sequential(*conv_bn(in_planes, n3x3red, 1), *conv_bn(n3x3red, n3x3, 3))
        self.b3 = nn.Sequential(*conv_bn(in_planes, n5x5red, 1), *conv_bn(n5x5red, n5x5, 3), *conv_bn(n5x5, n5x5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *conv_bn(in_planes, pool_planes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class CifarGoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0, **_: Any) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.pre_layers = nn.Sequential(*conv_bn(in_chans, 192, 3))
        for name, cfg in INCEPTION_CFG.items():
            self.add_module(name, Inception(*cfg))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        last = INCEPTION_CFG["b5"]
        self.num_features = last[1] + last[3] + last[5] + last[6]
        self.linear = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b3(self.a3(self.pre_layers(x)))
        x = self.maxpool(x)
        x = self.e4(self.d4(self.c4(self.b4(self.a4(x)))))
        x = self.maxpool(x)
        return self.b5(self.a5(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return pooled_head(x, self.linear, self.drop_rate, self.training, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_googlenet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarGoogLeNet:
    refuse_pretrained(variant, pretrained)
    return build_model_with_cfg(CifarGoogLeNet, variant, pretrained=False, **kwargs)


default_cfgs = generate_default_cfgs({
    "cifar_googlenet.untrained": cifar_cfg(first_conv="pre_layers.0", classifier="linear"),
})


@register_model
def cifar_googlenet(pretrained: bool = False, **kwargs: Any) -> CifarGoogLeNet:
    return _create_cifar_googlenet("cifar_googlenet", pretrained, **kwargs)
