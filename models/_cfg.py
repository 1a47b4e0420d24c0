"""Pretrained-config helpers shared by the CIFAR model files (timm's `_cfg` idiom)."""
from __future__ import annotations

from typing import Any

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def cifar_cfg(**overrides: Any) -> dict[str, Any]:
    """A timm pretrained_cfg for a 32x32 CIFAR model that has no published weights."""
    cfg = dict(
        url="", hf_hub_id=None, num_classes=10, input_size=(3, 32, 32), pool_size=None,
        crop_pct=1.0, interpolation="bilinear", mean=CIFAR10_MEAN, std=CIFAR10_STD,
        first_conv="conv1", classifier="fc", license="mit",
    )
    cfg.update(overrides)
    return cfg


def refuse_pretrained(variant: str, pretrained: bool) -> None:
    """timm silently builds a random model when no weights exist; we say so instead."""
    if pretrained:
        raise ValueError(
            f"no pretrained weights exist for {variant!r}: train one with "
            f"`python -m bench baseline --model {variant}` or pass pretrained=False"
        )
