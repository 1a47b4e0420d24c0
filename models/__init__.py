"""The model zoo: CIFAR ResNets and VGG-16-BN registered in timm, and name resolution.

Importing this package registers `cifar_resnet{20,32,44,56,110}`, `cifar_vgg16_bn`, `cifar_densenet40` and
`cifar_googlenet` with timm,
so `timm.create_model("cifar_resnet56", num_classes=10)` works once `models` is imported.
"""
from __future__ import annotations

import difflib
from typing import Any

import timm
import torch.nn as nn

from . import cifar_densenet, cifar_googlenet, cifar_resnet, cifar_vgg  # noqa: F401  (registers the entrypoints)
from .cifar_densenet import CifarDenseNet
from .cifar_googlenet import CifarGoogLeNet
from .cifar_resnet import CifarResNet, ShortcutA
from .cifar_vgg import CifarVGG

__all__ = ["ALIASES", "CifarDenseNet", "CifarGoogLeNet", "CifarResNet", "CifarVGG", "ShortcutA", "UnknownModelError", "create", "resolve"]

# Names users type -> registered timm names.
ALIASES: dict[str, str] = {
    **{f"resnet{d}": f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110)},
    "vgg16": "cifar_vgg16_bn",
    "vgg16_bn": "cifar_vgg16_bn",
    "densenet40": "cifar_densenet40",
    "googlenet": "cifar_googlenet",
}


class UnknownModelError(ValueError):
    """A model name that is neither an alias nor a timm model."""


def resolve(name: str) -> str:
    """Map a user-facing name to a timm model name, failing with the closest matches."""
    name = ALIASES.get(name, name)
    if timm.is_model(name):
        return name
    candidates = sorted(set(timm.list_models()) | set(ALIASES))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `python -m bench models` for the list"
    raise UnknownModelError(f"unknown model {name!r}: {hint}")


def create(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a model by user-facing name (alias or any timm name), without pretrained weights."""
    return timm.create_model(resolve(name), num_classes=num_classes, **kwargs)
