"""Datasets: CIFAR-10/100 (downloaded once, cached as npz), ImageNet-layout folders, and `synthetic`.

CIFAR-sized sets live on the training device as one uint8 NCHW tensor; pad-4 random crop and
horizontal flip run batched on that tensor, and normalisation happens on the device (airbench style).
The npz layout (`x`: uint8 N x H x W x C RGB, `y`: int64 N) is the one of ../shared/data/cifar10.

Selection split (the comparison protocol): by default a fixed, seeded, class-balanced hold-out of the training
set (`val`; CIFAR: 5,000 images, He et al.'s 45k/5k) is what every decision reads, the rest trains, and the test
set is only reported. `selection="test"` is the papers' practice: train on every training image, decide on test.
Every dataset carries a content fingerprint, part of the identity of baselines, trials and experiments.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.engine import dist
from bench.core.errors import UserError
from bench.core.io import atomic_write, sha256_file_cached
from bench.engine.splits import SPLIT_SEED, TEST_SIDE_FRACTION, check_selection, holdout_indices, val_per_class
from bench.engine.imagefolder import image_data_config, image_folder_loaders, imagefolder_fingerprint
from bench.engine.splits import CIFAR_STATS, DATASETS


def data_dir() -> Path:
    """`DATA_DIR` from the environment, else ./data."""
    return Path(os.environ.get("DATA_DIR", "data")).expanduser()


@dataclass
class ArraySplit:
    """Images as uint8 N x H x W x C and int64 labels, in host memory; `ids`: each image's index in the array
    it was loaded from (None: 0..N-1), so the images of subsets and splits can be told apart and counted."""
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray | None = None

    def image_ids(self) -> np.ndarray:
        return np.arange(len(self.y)) if self.ids is None else self.ids

    def take(self, idx: np.ndarray) -> ArraySplit:
        return ArraySplit(self.x[idx], self.y[idx], self.image_ids()[idx])

    def subset_per_class(self, per_class: int | None) -> ArraySplit:
        """The first `per_class` images of every class (class-balanced, order-preserving)."""
        if not per_class:
            return self
        if per_class < 0:
            raise UserError(f"subset of {per_class} images per class is invalid: pass a positive number")
        idx = np.concatenate([np.flatnonzero(self.y == c)[:per_class] for c in np.unique(self.y)])
        idx.sort()
        return self.take(idx)


@dataclass
class ArrayDataset:
    name: str
    train: ArraySplit              # the images baselines and methods train on
    test: ArraySplit               # reported once per finished model, never read by a decision
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    val: ArraySplit | None = None  # the selection split; None: the test set (selection "test")
    selection: str = "test"
    fingerprint: str = ""          # content hash of the loaded arrays (train + test, before the split)
    official: bool = False         # converted from a checksum-verified torchvision download (source.json)

    @property
    def selection_split(self) -> ArraySplit:
        return self.val if self.val is not None else self.test

    def split_info(self) -> dict[str, object]:
        """What the experiment records about its data: fingerprint, selection rule and split sizes."""
        return {"dataset": self.name, "fingerprint": self.fingerprint, "official": self.official, "selection": self.selection,
                "split_seed": SPLIT_SEED if self.selection != "test" else None, "train_images": int(len(self.train.y)),
                "val_images": int(len(self.val.y)) if self.val is not None else 0, "test_images": int(len(self.test.y))}


def with_selection(data: ArrayDataset, selection: str) -> ArrayDataset:
    """The dataset with its selection split: a hold-out of the training set (`val`) or the test set (`test`)."""
    check_selection(selection)
    if selection == "val-test":  # imported weights saw every training image: the hold-out comes from the test side
        held = holdout_indices(data.test.y, max(1, int(TEST_SIDE_FRACTION * np.bincount(data.test.y).min())))
        rest = np.setdiff1d(np.arange(len(data.test.y)), held, assume_unique=True)
        return ArrayDataset(data.name, data.train, data.test.take(rest), data.num_classes, data.mean, data.std,
                            data.test.take(held), "val-test", data.fingerprint, data.official)
    if selection == "test":
        return ArrayDataset(data.name, data.train, data.test, data.num_classes, data.mean, data.std, None, "test",
                            data.fingerprint, data.official)
    held = holdout_indices(data.train.y, val_per_class(data.name, data.train.y))
    rest = np.setdiff1d(np.arange(len(data.train.y)), held, assume_unique=True)
    return ArrayDataset(data.name, data.train.take(rest), data.test, data.num_classes,
                        data.mean, data.std, data.train.take(held), "val", data.fingerprint, data.official)


def array_fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:16]


def file_fingerprint(*paths: Path) -> str:
    """Content hash of files (memoised per path, size and mtime: a changed file is hashed again)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(sha256_file_cached(p).encode())
    return h.hexdigest()[:16]


def data_fingerprint(dataset: str, root: Path | None = None) -> str:
    """The content fingerprint of a dataset by name, without loading it into memory where a file hash serves."""
    if dataset.startswith("imagefolder:"):
        return imagefolder_fingerprint(dataset.split(":", 1)[1])
    if dataset == "synthetic":
        return make_synthetic().fingerprint
    folder = (data_dir() if root is None else Path(root)) / dataset
    if dataset in CIFAR_STATS and (folder / "train.npz").is_file() and (folder / "test.npz").is_file():
        return file_fingerprint(folder / "train.npz", folder / "test.npz")
    return load_dataset(dataset, root).fingerprint


# ---------------------------------------------------------------- loading

def load_dataset(name: str, root: Path | None = None, selection: str | None = None) -> ArrayDataset:
    """Load `cifar10`, `cifar100` or `synthetic` into host arrays (downloading CIFAR on first use).

    `selection` "val" (the protocol's default) holds out the validation split from the training images,
    "test" keeps them all (the papers' practice); None returns the raw train/test arrays.
    """
    root = data_dir() if root is None else Path(root)
    if name == "synthetic":
        data = make_synthetic()
        return data if selection is None else with_selection(data, selection)
    if name not in CIFAR_STATS:
        close = difflib.get_close_matches(name, list(CIFAR_STATS) + ["synthetic"], n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(DATASETS)}"
        raise UserError(f"unknown dataset {name!r}: {hint}")
    mean, std, num_classes = CIFAR_STATS[name]
    folder = root / name
    if not (folder / "train.npz").exists() or not (folder / "test.npz").exists():
        download_cifar(name, root)
    train, test = (_load_npz(folder / f"{s}.npz", num_classes) for s in ("train", "test"))
    fingerprint = file_fingerprint(folder / "train.npz", folder / "test.npz")
    data = ArrayDataset(name, train, test, num_classes, mean, std, fingerprint=fingerprint,
                        official=_source(folder).get("fingerprint") == fingerprint)
    return data if selection is None else with_selection(data, selection)


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


def _source(folder: Path) -> dict:
    """source.json of a converted download: which archive (checksum) made these arrays, and their fingerprint."""
    import json

    try:
        return json.loads((folder / "source.json").read_text())
    except (OSError, ValueError):
        return {}


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
    # torchvision verified the archive's md5 (check_integrity): these arrays are the official set. The marker
    # names their fingerprint, so arrays changed or copied in later are not taken for official.
    import json

    cls_ = splits["train"].__class__
    source = {"source": f"torchvision.datasets.{cls_.__name__}", "archive": cls_.filename, "md5": cls_.tgz_md5,
              "fingerprint": file_fingerprint(root / name / "train.npz", root / name / "test.npz")}
    atomic_write(root / name / "source.json", lambda tmp: Path(tmp).write_text(json.dumps(source, indent=1)))
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
    return ArrayDataset("synthetic", train, test, num_classes, mean, std,  # type: ignore[arg-type]
                        fingerprint=array_fingerprint(train.x, train.y, test.x, test.y))


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
            split = split.take(part)
        self.rank, self.world = rank, world
        self.x = torch.from_numpy(split.x).to(self.device).permute(0, 3, 1, 2).contiguous()
        self.y = torch.from_numpy(split.y).to(self.device)
        self.ids = split.image_ids()
        self.drawn = torch.zeros(len(self.y), dtype=torch.bool, device=self.device)  # training: images yielded
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
                self.drawn[idx] = True
                x = self._augment(x)
            x = ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            yield x, y

    def drawn_ids(self) -> np.ndarray:
        """The ids (ArraySplit.ids) of every image a training pass has drawn from this loader, all ranks together
        (a batch cut short by an image budget counts whole)."""
        mask = self.drawn.to(torch.int32)
        dist.all_reduce_([mask])
        return self.ids[mask.cpu().numpy() > 0]

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


@dataclass
class Loaders:
    train: object
    test: object                     # reported, never read by a decision
    num_classes: int
    input_size: tuple[int, int, int]
    val: object = None               # the selection split every decision reads


def open_loaders(dataset: str, batch_size: int, device: torch.device, *, seed: int = 0,
                 subset_per_class: int | None = None, channels_last: bool = True,
                 data: ArrayDataset | None = None, selection: str = "val", model: str | None = None) -> Loaders:
    """Train and test loaders for a dataset name: cifar10, cifar100, synthetic or imagefolder:<path>.

    Image folders need the `model` (a timm name): its pretrained_cfg decides the input size and the transforms
    (image_data_config). Under torchrun `batch_size` stays the global batch (so a recipe means the same on any
    number of GPUs): each of the N ranks loads batch_size / N images of it.
    """
    rank, world = dist.rank(), dist.world_size()
    if batch_size % world:
        raise UserError(f"batch size {batch_size} does not split over {world} processes: "
                        f"use a recipe whose batch_size is a multiple of --nproc_per_node")
    batch_size //= world
    if dataset.startswith("imagefolder:"):
        if subset_per_class:
            raise UserError("--subset works for array datasets (cifar10, cifar100, synthetic), not image folders")
        if model is None:
            raise ValueError("open_loaders needs the model for an image folder: its data config sets the transforms")
        config = image_data_config(model)
        train, val, test, n = image_folder_loaders(dataset.split(":", 1)[1], batch_size, config, device=device,
                                                   seed=seed, selection=selection)
        return Loaders(train, test, n, tuple(config["input_size"]), val)  # type: ignore[arg-type]
    data = data or load_dataset(dataset, selection=selection)
    train = DeviceLoader(data.train.subset_per_class(subset_per_class), data.mean, data.std, batch_size,
                         device, train=True, channels_last=channels_last, seed=seed, rank=rank, world=world)

    def evaluation(split: ArraySplit) -> DeviceLoader:
        return DeviceLoader(split, data.mean, data.std, max(batch_size, 500), device, channels_last=channels_last,
                            rank=rank, world=world)
    test = evaluation(data.test)
    val = evaluation(data.val) if data.val is not None else test
    h, w = data.train.x.shape[1:3]
    return Loaders(train, test, data.num_classes, (3, h, w), val)
