"""The data sets the harness knows and how each is split: normalisation statistics, the selection splits
(`val`: a seeded hold-out of the training set; `test`: the papers' practice; `val-test`: a seeded part of the test
set, for imported weights) and the seeded, class-balanced hold-outs behind them."""
from __future__ import annotations


import numpy as np

from bench.core.errors import UserError


SELECTIONS = ("val", "test", "val-test")
TEST_SIDE_PER_CLASS = 10        # val-test on image folders: a seeded hold-out of val/ (ImageNet: 10 of 50 per class)
TEST_SIDE_FRACTION = 0.1        # val-test on arrays: this fraction of every test class (CIFAR: 100 per class)
SPLIT_SEED = 0                 # the hold-out is the same for every trial seed: one split per experiment
CIFAR_VAL_IMAGES = 5000        # He et al. 2016: 45k/5k
VAL_FRACTION = 0.1             # other sets: this fraction of every class (image folders: at most 50 per class)
IMAGEFOLDER_VAL_MAX = 50


def check_selection(selection: str) -> str:
    if selection not in SELECTIONS:
        raise UserError(f"selection split {selection!r} is unknown: use val (a hold-out of the training set, the default), "
                        "val-test (a hold-out of the test split: for weights trained on every training image) "
                        "or test (the papers' practice)")
    return selection


def holdout_indices(y: np.ndarray, per_class: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """A seeded, class-balanced hold-out: `per_class` random indices of every class (sorted)."""
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            raise UserError(f"class {int(c)} has {len(idx)} training image(s): a validation hold-out needs at least 2 "
                            "per class (or use --selection test)")
        parts.append(rng.permutation(idx)[: min(per_class, len(idx) - 1)])
    return np.sort(np.concatenate(parts))


def val_per_class(name: str, y: np.ndarray) -> int:
    """CIFAR: 5,000 images in all (He et al.); other sets: VAL_FRACTION of the smallest class, at least 1."""
    classes = len(np.unique(y))
    if name in CIFAR_STATS:
        return CIFAR_VAL_IMAGES // classes
    return max(1, int(VAL_FRACTION * np.bincount(y).min()))


CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
}


DATASETS = ("cifar10", "cifar100", "synthetic", "imagefolder:<path>")
