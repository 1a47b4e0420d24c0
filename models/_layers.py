"""Pieces every CIFAR model file shares: the literature's weight init and the pooled classifier head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_conv_bn(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs and BatchNorm at weight 1, bias 0, as the CIFAR ResNet/DenseNet code."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def pooled_head(x: torch.Tensor, fc: nn.Module, drop_rate: float, training: bool, pre_logits: bool) -> torch.Tensor:
    """Global average pool, dropout (timm's drop_rate), then the classifier unless `pre_logits`."""
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    if drop_rate:
        x = F.dropout(x, drop_rate, training)
    return x if pre_logits else fc(x)
