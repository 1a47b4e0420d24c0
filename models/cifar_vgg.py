"""CIFAR VGG-16 with BatchNorm as used by the pruning literature (Li et al. 2017, HRank, DECORE).

13 conv+BN+ReLU layers, max-pooling after conv 2, 4, 7, 10 and 13, and the head
Linear(512, 512)-BN-ReLU-Linear(512, classes): only this head gives the published 14.98M params.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ._cfg import cifar_cfg, refuse_pretrained
from ._layers import init_conv_bn

__all__ = ["CifarVGG"]

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


class CifarVGG(nn.Module):
    def __init__(
        self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10, in_chans: int = 3,
        drop_rate: float = 0.0, **_: Any,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.num_classes = num_classes
        self.num_features = c
        self.features = nn.Sequential(*layers)
        self.pre_logits = nn.Sequential(
            nn.Linear(c, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
        )
        self.fc = nn.Linear(512, num_classes)
        init_conv_bn(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x.flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_vgg(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    refuse_pretrained(variant, pretrained)
    return build_model_with_cfg(CifarVGG, variant, pretrained=False, **kwargs)


default_cfgs = generate_default_cfgs({
    "cifar_vgg16_bn.untrained": cifar_cfg(first_conv="features.0"),
})


@register_model
def cifar_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    return _create_cifar_vgg("cifar_vgg16_bn", pretrained, cfg=VGG16_CFG, **kwargs)
