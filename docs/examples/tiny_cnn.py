"""A four-layer CIFAR CNN registered in timm: the example of docs/models.md ("Adding a model").

Any model timm can build works with the harness by name; a model of your own only has to be registered with
timm (`@register_model`) and carry a pretrained_cfg that gives its input size, mean and std. To add it to the
zoo, save this file as `models/cifar_tiny.py` and add it to the import line of `models/__init__.py` (an alias
in `models.ALIASES` gives it a short name). tests/test_docs.py imports this very file, prunes the model and
sweeps it on the synthetic set.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from models._cfg import cifar_cfg, refuse_pretrained


class TinyCNN(nn.Module):
    """conv-BN-ReLU x 4 (16, 32, 32, 64 channels, stride 2 at layers 2 and 4), global pooling, a linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 32, 64),
                 **_: Any) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, stride=2 if i % 2 else 1, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.num_classes, self.num_features = num_classes, c
        self.fc = nn.Linear(c, num_classes)  # the classifier's outputs are never pruned

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


default_cfgs = generate_default_cfgs({"cifar_tiny_cnn.untrained": cifar_cfg(first_conv="features.0")})


@register_model
def cifar_tiny_cnn(pretrained: bool = False, **kwargs: Any) -> TinyCNN:
    refuse_pretrained("cifar_tiny_cnn", pretrained)  # no weights exist: say so rather than build a random model
    return build_model_with_cfg(TinyCNN, "cifar_tiny_cnn", pretrained=False, **kwargs)
