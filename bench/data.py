"""Datasets: CIFAR-10/100 (downloaded once, cached as npz), ImageNet-layout folders, and `synthetic`.

CIFAR-sized sets live on the training device as one uint8 NCHW tensor; pad-4 random crop and
horizontal flip run batched on that tensor, and normalisation happens on the device (airbench style).
The npz layout (`x`: uint8 N x H x W x C RGB, `y`: int64 N) is the one of ../shared/data/cifar10.
"""
from __future__ import annotations

import difflib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import dist
from .errors import UserError
from .io import atomic_write

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASETS = ("cifar10", "cifar100", "synthetic", "imagefolder:<path>")


def data_dir() -> Path:
    """`DATA_DIR` from the environment, else ./data."""
    return Path(os.environ.get("DATA_DIR", "data")).expanduser()


@dataclass
class ArraySplit:
    """Images as uint8 N x H x W x C and int64 labels, in host memory."""
    x: np.ndarray
    y: np.ndarray

    def subset_per_class(self, per_class: int | None) -> ArraySplit:
        """The first `per_class` images of every class (class-balanced, order-preserving)."""
        if not per_class:
            return self
        if per_class < 0:
            raise UserError(f"subset of {per_class} images per class is invalid: pass a positive number")
        idx = np.concatenate([np.flatnonzero(self.y == c)[:per_class] for c in np.unique(self.y)])
        idx.sort()
        return ArraySplit(self.x[idx], self.y[idx])


@dataclass
class ArrayDataset:
    name: str
    train: ArraySplit
    test: ArraySplit
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# ---------------------------------------------------------------- loading

def load_dataset(name: str, root: Path | None = None) -> ArrayDataset:
    """Load `cifar10`, `cifar100` or `synthetic` into host arrays (downloading CIFAR on first use)."""
    root = data_dir() if root is None else Path(root)
    if name == "synthetic":
        return make_synthetic()
    if name not in CIFAR_STATS:
        close = difflib.get_close_matches(name, list(CIFAR_STATS) + ["synthetic"], n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(DATASETS)}"
        raise UserError(f"unknown dataset {name!r}: {hint}")
    mean, std, num_classes = CIFAR_STATS[name]
    folder = root / name
    if not (folder / "train.npz").exists() or not (folder / "test.npz").exists():
        download_cifar(name, root)
    train, test = (_load_npz(folder / f"{s}.npz", num_classes) for s in ("train", "test"))
    return ArrayDataset(name, train, test, num_classes, mean, std)


def _load_npz(path: Path, num_classes: int) -> ArraySplit:
    try:
        with np.load(path) as z:
            x, y = z["x"], z["y"].astype(np.int64)
    except Exception as e:
        raise UserError(f"data file {str(path)!r} is corrupt ({type(e).__name__}): delete it to re-download, or fix DATA_DIR") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y) or len(x) == 0:
        raise UserError(f"data file {str(path)!r} has x {x.dtype}{tuple(x.shape)} and {len(y)} labels, "
                        "expected uint8 (N, H, W, 3) and N labels: delete it to re-download")
    if y.min() < 0 or y.max() >= num_classes:
        raise UserError(f"data file {str(path)!r} has labels outside 0..{num_classes - 1}: delete it to re-download")
    return ArraySplit(x, y)


def download_cifar(name: str, root: Path) -> None:
    """Fetch CIFAR with torchvision into root/raw and convert it once into root/<name>/{train,test}.npz."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    raw = root / "raw"
    created = next((p for p in (*reversed(raw.parents), raw) if not p.exists()), None)
    try:
        splits = {s: cls(str(raw), train=(s == "train"), download=True) for s in ("train", "test")}
    except Exception as e:  # URLError, RuntimeError("Dataset not found or corrupted"), PermissionError ...
        if created is not None:  # a failed download leaves no empty folders behind
            shutil.rmtree(created, ignore_errors=True)
        raise UserError(
            f"{name} is not in {str(root / name)!r} and could not be downloaded ({type(e).__name__}: {e}): "
            f"set DATA_DIR to a folder holding {name}/train.npz and {name}/test.npz, or allow the download"
        ) from None
    for split, ds in splits.items():
        x, y = np.ascontiguousarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)
        atomic_write(root / name / f"{split}.npz", lambda tmp, x=x, y=y: _savez(tmp, x, y))
    shutil.rmtree(raw / {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name], ignore_errors=True)


def _savez(path: str, x: np.ndarray, y: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object keeps numpy from appending .npz to the temp name
        np.savez(f, x=x, y=y)


def make_synthetic(num_classes: int = 10, train_per_class: int = 100, test_per_class: int = 20,
                   size: int = 32, seed: int = 0) -> ArrayDataset:
    """A small, learnable set: each class is a smooth random colour template; images are shifted, noisy copies."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(num_classes, 4, 4, 3))
    templates = np.kron(coarse, np.ones((size // 4, size // 4, 1)))  # num_classes x size x size x 3

    def split(per_class: int) -> ArraySplit:
        y = np.repeat(np.arange(num_classes), per_class)
        shifts = rng.integers(-3, 4, size=(len(y), 2))
        x = np.stack([np.roll(templates[c], tuple(s), axis=(0, 1)) for c, s in zip(y, shifts)])
        x = x + rng.normal(0, 40, size=x.shape)
        return ArraySplit(np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64))

    train, test = split(train_per_class), split(test_per_class)
    mean = tuple(float(v) for v in train.x.reshape(-1, 3).mean(0) / 255)
    std = tuple(float(v) for v in train.x.reshape(-1, 3).std(0) / 255)
    return ArrayDataset("synthetic", train, test, num_classes, mean, std)  # type: ignore[arg-type]


# ---------------------------------------------------------------- on-device batches

class DeviceLoader:
    """Batches from a uint8 tensor resident on `device`: batched pad-crop/flip, normalised, no host work.

    Iterating yields (images float N x C x H x W, labels int64 N). A fresh permutation per epoch
    comes from a seeded generator, so runs are reproducible.

    With `world` > 1 (torchrun) `batch_size` is per rank. Training: every rank draws the same permutation
    (same seed) and takes slice `rank` of each global batch of batch_size * world images, so the ranks'
    batches i together are the one-process batch i and every rank has the same number of batches;
    crops and flips come from a per-rank generator. Evaluation: each rank reads a contiguous slice.
    """

    def __init__(self, split: ArraySplit, mean: tuple[float, ...], std: tuple[float, ...], batch_size: int,
                 device: torch.device | str = "cpu", train: bool = False, pad: int = 4, flip: bool = True,
                 drop_last: bool | None = None, channels_last: bool = True, seed: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        self.device = torch.device(device)
        if world > 1 and not train:  # evaluation: this rank's contiguous slice; counts are summed by evaluate()
            part = np.array_split(np.arange(len(split.y)), world)[rank]
            split = ArraySplit(split.x[part], split.y[part])
        self.rank, self.world = rank, world
        self.x = torch.from_numpy(split.x).to(self.device).permute(0, 3, 1, 2).contiguous()
        self.y = torch.from_numpy(split.y).to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255
        self.batch_size, self.train, self.pad, self.flip = batch_size, train, pad if train else 0, flip and train
        self.drop_last = train if drop_last is None else drop_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.aug_generator = self.generator if world == 1 or not train else \
            torch.Generator(device=self.device).manual_seed(seed + 1_000_003 * (rank + 1))

    def _samples(self) -> int:
        """Images this rank sees per epoch (training: the same on every rank)."""
        return len(self.y) // self.world if self.train else len(self.y)

    def __len__(self) -> int:
        n = self._samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of the epoch's permutation: slice `rank` of every global batch, then of the rest."""
        b, w, n = self.batch_size, self.world, self._samples()
        full = n // b
        head = order[: full * b * w].view(full, w, b)[:, self.rank].reshape(-1)
        tail = order[full * b * w:][self.rank::w][: n - full * b]
        return torch.cat([head, tail])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self._samples()
        order = torch.randperm(len(self.y), device=self.device, generator=self.generator) if self.train else None
        if order is not None and self.world > 1:
            order = self._shard(order)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else sl
            x, y = self.x[idx], self.y[idx]
            if self.train:
                x = self._augment(x)
            x = ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            yield x, y

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.pad:
            x = torch.nn.functional.pad(x, (self.pad,) * 4)
            dy, dx = (torch.randint(0, 2 * self.pad + 1, (2, n, 1), device=x.device, generator=self.aug_generator))
            rows = (torch.arange(h, device=x.device) + dy)[:, None, :, None]
            cols = (torch.arange(w, device=x.device) + dx)[:, None, None, :]
            x = x[torch.arange(n, device=x.device)[:, None, None, None],
                  torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
        if self.flip:
            mask = torch.rand(n, device=x.device, generator=self.aug_generator) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        return x


def image_folder_loaders(root: str | Path, batch_size: int, image_size: int = 224, workers: int = 8,
                         device: torch.device | str = "cpu", seed: int = 0) -> tuple[object, object, int]:
    """ImageNet-layout folders root/{train,val}/<class>/*.jpg through torchvision's DataLoader.

    Under torchrun both splits go through DistributedSampler (training: equal shards, reshuffled per
    epoch with the same seed on every rank; validation: unshuffled shards whose counts evaluate() sums;
    the sampler pads it to equal shards, repeating at most N - 1 images).
    """
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision import datasets, transforms as T

    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"image folder {str(root / split)!r} does not exist: expected {root}/train/<class>/ and {root}/val/<class>/")
    norm = T.Normalize(*IMAGENET_STATS)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    val_tf = T.Compose([T.Resize(int(image_size / 0.875)), T.CenterCrop(image_size), T.ToTensor(), norm])
    train = datasets.ImageFolder(str(root / "train"), train_tf)
    val = datasets.ImageFolder(str(root / "val"), val_tf)
    pin = torch.device(device).type == "cuda"
    workers = min(workers, os.cpu_count() or 1)
    if dist.world_size() == 1:
        return (_ToDevice(DataLoader(train, batch_size, shuffle=True, num_workers=workers, pin_memory=pin, drop_last=True), device),
                _ToDevice(DataLoader(val, batch_size, shuffle=False, num_workers=workers, pin_memory=pin), device),
                len(train.classes))
    train_sampler = DistributedSampler(train, shuffle=True, seed=seed, drop_last=True)
    val_sampler = DistributedSampler(val, shuffle=False)
    return (_ToDevice(DataLoader(train, batch_size, sampler=train_sampler, num_workers=workers, pin_memory=pin,
                                 drop_last=True), device),
            _ToDevice(DataLoader(val, batch_size, sampler=val_sampler, num_workers=workers, pin_memory=pin), device),
            len(train.classes))


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


@dataclass
class Loaders:
    train: object
    test: object
    num_classes: int
    input_size: tuple[int, int, int]


def open_loaders(dataset: str, batch_size: int, device: torch.device, *, seed: int = 0,
                 subset_per_class: int | None = None, channels_last: bool = True,
                 data: ArrayDataset | None = None) -> Loaders:
    """Train and test loaders for a dataset name: cifar10, cifar100, synthetic or imagefolder:<path>.

    Under torchrun `batch_size` stays the global batch (so a recipe means the same on any number of
    GPUs): each of the N ranks loads batch_size / N images of it.
    """
    rank, world = dist.rank(), dist.world_size()
    if batch_size % world:
        raise UserError(f"batch size {batch_size} does not split over {world} processes: "
                        f"use a recipe whose batch_size is a multiple of --nproc_per_node")
    batch_size //= world
    if dataset.startswith("imagefolder:"):
        if subset_per_class:
            raise UserError("--subset works for array datasets (cifar10, cifar100, synthetic), not image folders")
        train, test, n = image_folder_loaders(dataset.split(":", 1)[1], batch_size, device=device, seed=seed)
        return Loaders(train, test, n, (3, 224, 224))
    data = data or load_dataset(dataset)
    train = DeviceLoader(data.train.subset_per_class(subset_per_class), data.mean, data.std, batch_size,
                         device, train=True, channels_last=channels_last, seed=seed, rank=rank, world=world)
    test = DeviceLoader(data.test, data.mean, data.std, max(batch_size, 500), device, channels_last=channels_last,
                        rank=rank, world=world)
    h, w = data.train.x.shape[1:3]
    return Loaders(train, test, data.num_classes, (3, h, w))
