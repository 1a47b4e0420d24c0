"""ImageNet-layout folders (root/{train,val}/<class>/*): checks, counts and fingerprints from one read of the file
list per folder (`listing`, cached while the folder is unchanged), and loaders through torchvision with timm's
transforms for the model's data config."""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.engine import dist
from bench.core.errors import UserError
from bench.engine.splits import IMAGEFOLDER_VAL_MAX, SPLIT_SEED, TEST_SIDE_PER_CLASS, VAL_FRACTION, check_selection, holdout_indices


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Listing:
    """One read of an image folder's file list (nothing decoded): per split (train, val) present, its class folders
    (sorted), the images directly in each, and every file under the split with its size (sorted by path)."""
    classes: dict[str, tuple[str, ...]]
    images: dict[str, dict[str, tuple[Path, ...]]]
    files: dict[str, tuple[tuple[str, int], ...]]

    def counts(self, split: str) -> list[int]:
        return [len(self.images[split][c]) for c in self.classes[split]]


def listing(root: str | Path) -> Listing:
    """The file list of `root`, read once while it is unchanged: cached under the modification times of train/,
    val/ and their class folders, which a file added, removed or renamed in a class changes."""
    root = Path(root)
    stamp = []
    for split in ("train", "val"):
        folder = root / split
        if folder.is_dir():
            stamp += [(str(d), d.stat().st_mtime_ns) for d in (folder, *sorted(c for c in folder.iterdir() if c.is_dir()))]
    return _listing(str(root), tuple(stamp))


@functools.lru_cache(maxsize=8)
def _listing(root: str, stamp: tuple) -> Listing:
    base = Path(root)
    classes, images, files = {}, {}, {}
    for split in ("train", "val"):
        folder = base / split
        if not folder.is_dir():
            continue
        classes[split] = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        images[split] = {c: tuple(sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
                         for c in classes[split]}
        files[split] = tuple((str(p.relative_to(base)), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file())
    return Listing(classes, images, files)


def check_image_folder(root: str | Path) -> None:
    """An ImageNet-layout folder a run can use, checked when it is opened (before anything is written):
    train/ and val/ exist, hold the same two or more classes, every class has images, and the first image
    of every class opens."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    found = listing(root)
    for split in ("train", "val"):
        folder = root / split
        if split not in found.classes:
            raise UserError(f"image folder {str(folder)!r} does not exist: expected {root}/train/<class>/ and "
                            f"{root}/val/<class>/ (ImageNet layout)")
        if len(found.classes[split]) < 2:
            raise UserError(f"image folder {str(folder)!r} has {len(found.classes[split])} class folder(s): a classifier "
                            "needs at least 2 (one sub-folder of images per class)")
        for c in found.classes[split]:
            images = found.images[split][c]
            if not images:
                raise UserError(f"class folder {str(folder / c)!r} holds no image ({', '.join(IMAGE_EXTENSIONS)}): "
                                "add images or remove the folder")
            try:
                with Image.open(images[0]) as im:
                    im.verify()
            except (UnidentifiedImageError, OSError) as e:
                raise UserError(f"{str(images[0])!r} is not a readable image ({type(e).__name__}): remove or "
                                "replace it") from None
    if found.classes["train"] != found.classes["val"]:
        raise UserError(f"image folder {str(root)!r}: train/ and val/ hold different classes "
                        f"({len(found.classes['train'])} and {len(found.classes['val'])}): give both the same class folders")


def image_folder_train_images(root: str | Path, selection: str = "val") -> int:
    """Training images of an image folder after the validation hold-out (as image_folder_loaders splits it)."""
    counts = listing(root).counts("train")
    if selection != "val" or not counts:
        return sum(counts)
    per_class = max(1, min(IMAGEFOLDER_VAL_MAX, int(VAL_FRACTION * min(counts))))
    return sum(n - min(per_class, n - 1) for n in counts)


def image_folder_split_info(dataset: str, selection: str) -> dict[str, object]:
    """ArrayDataset.split_info of an image folder (imagefolder:<path>), from its file list: nothing is decoded."""
    root = Path(dataset.split(":", 1)[1])
    found = listing(root)
    total, test = (sum(1 for name, _ in found.files[split] if Path(name).suffix.lower() in IMAGE_EXTENSIONS)
                   for split in ("train", "val"))
    train = image_folder_train_images(root, selection)
    val = total - train
    if selection == "val-test":  # the hold-out is TEST_SIDE_PER_CLASS of every class of val/
        val = sum(min(TEST_SIDE_PER_CLASS, n - 1) for n in found.counts("val"))
        test -= val
    return {"dataset": dataset, "fingerprint": imagefolder_fingerprint(root), "official": False, "selection": selection,
            "split_seed": SPLIT_SEED if selection != "test" else None, "train_images": train,
            "val_images": val, "test_images": test}


def image_folder_classes(root: str | Path) -> int:
    """Number of classes of an image folder (its train/ sub-folders; check_image_folder holds val/ to the same)."""
    return len(listing(root).classes.get("train", ()))


def imagefolder_fingerprint(root: str | Path) -> str:
    """Hash of an image folder's file list and sizes (relative paths under train/ and val/); the folder is
    checked first (check_image_folder)."""
    root = Path(root)
    check_image_folder(root)
    h = hashlib.sha256()
    found = listing(root)
    for split in ("train", "val"):
        for name, size in found.files[split]:
            h.update(f"{name}\0{size}\n".encode())
    return h.hexdigest()[:16]


def image_data_config(model: str) -> dict[str, object]:
    """timm's data config of a model: input size, interpolation, crop_pct, crop mode and mean/std, from the
    pretrained_cfg of the name as given (a tag such as resnet50.tv_in1k selects that weights' preprocessing)."""
    return dict(_image_data_config(model))


@functools.lru_cache(maxsize=16)
def _image_data_config(model: str) -> dict[str, object]:
    from timm.data import resolve_model_data_config

    import models

    return resolve_model_data_config(models.create(model))  # use_test_size False: train and test at one size


def image_transforms(config: dict[str, object]) -> tuple[object, object]:
    """timm's standard ImageNet transforms for a data config: (training: random-resized crop, flip and colour
    jitter; evaluation: resize to size / crop_pct, centre crop), both normalised with the config's mean/std."""
    from timm.data import create_transform

    return create_transform(**config, is_training=True), create_transform(**config, is_training=False)


def image_folder_loaders(root: str | Path, batch_size: int, config: dict[str, object], workers: int = 8,
                         device: torch.device | str = "cpu", seed: int = 0,
                         selection: str = "val") -> tuple[object, object, object, int]:
    """ImageNet-layout folders root/{train,val}/<class>/* through torchvision's DataLoader and timm's transforms
    for the data `config` (image_data_config): (train, selection, test, classes). The folder's `val/` is the test
    split; with selection "val" a seeded, class-balanced hold-out of `train/` (VAL_FRACTION of each class, at most
    IMAGEFOLDER_VAL_MAX) is the selection split, evaluated with the test transforms; with "test" the selection split
    is `val/` itself (the papers' practice).

    Under torchrun every split goes through DistributedSampler (training: equal shards, reshuffled per
    epoch with the same seed on every rank; evaluation: unshuffled shards whose counts evaluate() sums;
    the sampler pads it to equal shards, repeating at most N - 1 images).
    """
    from torch.utils.data import DataLoader, DistributedSampler, Subset
    from torchvision import datasets

    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"image folder {str(root / split)!r} does not exist: expected {root}/train/<class>/ and {root}/val/<class>/")
    train_tf, val_tf = image_transforms(config)
    train = datasets.ImageFolder(str(root / "train"), train_tf)
    test = datasets.ImageFolder(str(root / "val"), val_tf)
    select = test
    if check_selection(selection) == "val-test":  # imported weights: a seeded, class-balanced part of val/
        y = np.asarray(test.targets)
        held = holdout_indices(y, TEST_SIDE_PER_CLASS)
        select = Subset(test, held.tolist())
        test = Subset(test, np.setdiff1d(np.arange(len(y)), held).tolist())
    if selection == "val":
        y = np.asarray(train.targets)
        per_class = max(1, min(IMAGEFOLDER_VAL_MAX, int(VAL_FRACTION * np.bincount(y).min())))
        held = holdout_indices(y, per_class)
        select = Subset(datasets.ImageFolder(str(root / "train"), val_tf), held.tolist())
        train = Subset(train, np.setdiff1d(np.arange(len(y)), held).tolist())
    classes = image_folder_classes(root)
    pin = torch.device(device).type == "cuda"
    workers = min(workers, os.cpu_count() or 1)
    if dist.world_size() == 1:
        def evaluation(ds):
            return _ToDevice(DataLoader(ds, batch_size, shuffle=False, num_workers=workers, pin_memory=pin), device)
        return (_ToDevice(DataLoader(train, batch_size, shuffle=True, num_workers=workers, pin_memory=pin, drop_last=True), device),
                evaluation(select), evaluation(test), classes)

    def sharded(ds):
        return _ToDevice(DataLoader(ds, batch_size, sampler=DistributedSampler(ds, shuffle=False), num_workers=workers,
                                    pin_memory=pin), device)
    train_sampler = DistributedSampler(train, shuffle=True, seed=seed, drop_last=True)
    return (_ToDevice(DataLoader(train, batch_size, sampler=train_sampler, num_workers=workers, pin_memory=pin,
                                 drop_last=True), device),
            sharded(select), sharded(test), classes)


class _ToDevice:
    """Wrap a DataLoader so batches arrive on the device, non-blocking, in channels_last."""

    def __init__(self, loader, device) -> None:
        self.loader, self.device, self.epoch = loader, torch.device(device), 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if hasattr(self.loader.sampler, "set_epoch"):  # DistributedSampler: a new shuffle every epoch
            self.loader.sampler.set_epoch(self.epoch)
            self.epoch += 1
        for x, y in self.loader:
            yield (x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                   y.to(self.device, non_blocking=True))
