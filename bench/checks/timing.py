"""How `make perf` times: its configuration (`PerfConfig`), the synthetic CIFAR-like data, the reference and
harness training loops, peak memory, and interleaved rounds repeated until their ratios settle (`repeat_rounds`),
every value a median with its quartiles (`Spread`)."""
from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from bench.engine.data import ArraySplit
from bench.engine.splits import CIFAR_STATS
from bench.engine.train import Trainer


MEAN, STD, _ = CIFAR_STATS["cifar10"]


@dataclass
class PerfConfig:
    models: tuple[str, ...] = ("resnet20", "resnet56", "resnet110")
    batch_size: int = 128
    steps: int = 3                     # timed training steps per round and variant (each beside its own harness timing)
    rounds: int = 3                    # interleaved rounds at least; values are medians over rounds
    max_rounds: int = 12               # ... repeated until every ratio's IQR <= rel_iqr x its median,
    rel_iqr: float = 0.03              #     or max_rounds, or max_seconds per model and section
    max_seconds: float = 240.0         # (resnet110's latency round takes ~25 s on 2 CPU cores)
    latency_batch: int = 64            # the throughput batch of the latency rows (and batch 1)
    deploy: bool = True                # also time the deployment forms: BN folded, onnxruntime (CPU)
    flops_targets: tuple[float, ...] = (0.7, 0.5, 0.3)   # kept fraction of the baseline's FLOPs
    round_to: tuple[int, ...] = (8, 16)  # also measure every plan with kept channels rounded to these multiples
    train_round_to: tuple[int, ...] = (1, 16)  # the alignments whose plans the training section times too
    ref_workers: int = 2               # DataLoader workers of the reference loop (pytorch-cifar's value)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    compile: bool = False              # also measure the harness step with torch.compile ...
    compile_models: tuple[str, ...] = ("resnet20", "resnet56")  # ... of these models (inductor takes minutes a
                                       # process on resnet110's graph, and the gated / plain ratio is the step's)
    processes: int = 3                 # each model's rounds are split among this many fresh processes, one after
                                       # another, so the spreads cover the speed differences between processes
    eval_images: int = 2000
    latency_repeats: int = 20          # timed calls per latency at batch 1 (their median) ...
    throughput_repeats: int = 2        # ... and at latency_batch


def cifar_like(n: int, seed: int = 0, classes: int = 10) -> ArraySplit:
    """n random CIFAR-shaped uint8 images: speed does not depend on pixel values."""
    rng = np.random.default_rng(seed)
    return ArraySplit(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int64))


class _PilDataset(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: a PIL image through per-sample transforms."""

    def __init__(self, split: ArraySplit, transform: Callable) -> None:
        self.x, self.y, self.transform = split.x, split.y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def reference_loader(split: ArraySplit, batch_size: int, workers: int, device: torch.device):
    from torchvision import transforms as T
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    return torch.utils.data.DataLoader(_PilDataset(split, tf), batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=device.type == "cuda", drop_last=True,
                                       persistent_workers=workers > 0)


class PeakMemory:
    """Peak memory during a block: CUDA's allocator peak, or on CPU the process RSS sampled every 2 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, float("nan")
        self._stop = threading.Event()

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self.peak_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds: float
    images: int
    peak_mb: float

    @property
    def img_s(self) -> float:
        return self.images / self.seconds


def _limited(loader: Iterable, n: int) -> Iterator:
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch


class _Steps:
    """An iterable of exactly `n` batches from a loader that is restarted as often as needed."""

    def __init__(self, loader: Iterable, n: int) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        left = self.n
        while left:
            for batch in _limited(self.loader, left):
                left -= 1
                yield batch


def harness_train(trainer: Trainer, loader: Iterable, steps: int, batch_size: int) -> Timing:
    """The harness's own epoch function over `steps` batches (one host sync, at the end)."""
    with PeakMemory(trainer.device) as mem:
        _sync(trainer.device)
        t0 = time.perf_counter()
        trainer.train_epoch(_Steps(loader, steps), desc="perf")
        _sync(trainer.device)
        seconds = time.perf_counter() - t0
    return Timing(seconds, steps * batch_size, mem.peak_mb)


def reference_train(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator, steps: int,
                    device: torch.device) -> Timing:
    """The loop of most pruning repositories (pytorch-cifar style): host batches, .item() every step."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    train_loss, correct, total = 0.0, 0, 0
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        for _ in range(steps):
            inputs, targets = next(batches)
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            train_loss += loss.item()
            correct += outputs.max(1)[1].eq(targets).sum().item()
            total += targets.size(0)
        _sync(device)
        seconds = time.perf_counter() - t0
    return Timing(seconds, total, mem.peak_mb)


def _cycle(loader: Iterable) -> Iterator:
    while True:
        yield from loader


Key = tuple[str, str, str, int]   # (measure, variant, form, batch)


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of one quantity over rounds."""
    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        return self.iqr / abs(self.median) if self.median else math.inf


def spread(values: Iterable[float]) -> Spread:
    v = np.asarray(list(values), dtype=float)
    if not len(v):
        return Spread(math.nan, math.nan, math.nan, 0)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return Spread(float(med), float(q1), float(q3), len(v))


@dataclass
class Rounds:
    """Every value of a section over its rounds; `settled`: every ratio's IQR <= rel_iqr x its median;
    `pids`: the process that measured each round."""
    series: dict[Key, list[float]]
    ratios: set[Key]
    settled: bool
    seconds: float
    pids: list[int] = field(default_factory=list)

    @property
    def processes(self) -> int:
        return len(set(self.pids))


def _settled(series: dict[Key, list[float]], ratios: set[Key], rel_iqr: float) -> bool:
    return all(spread(series[k]).rel_iqr <= rel_iqr for k in ratios)


def repeat_rounds(one_round: Callable[[int], tuple[dict[Key, float], dict[Key, float]]], cfg: PerfConfig,
                  desc: str, prior: Rounds | None = None) -> Rounds:
    """Call one_round(r) -> (values, ratios) for cfg.rounds rounds, then again until every ratio is settled,
    cfg.max_rounds rounds are done or cfg.max_seconds have passed. With `prior` (the rounds of earlier
    processes), its series are continued: round numbers go on from it and settling is judged on all rounds."""
    series = {k: list(v) for k, v in prior.series.items()} if prior else {}
    ratios = set(prior.ratios) if prior else set()
    pids = list(prior.pids) if prior else []
    start, settled, t0 = len(pids), False, time.perf_counter()
    bar = tqdm(total=max(cfg.max_rounds, cfg.rounds), desc=desc, leave=False, disable=None)
    for r in range(max(cfg.max_rounds, cfg.rounds)):
        values, rat = one_round(start + r)
        for k, v in {**values, **rat}.items():
            series.setdefault(k, []).append(v)
        ratios |= set(rat)
        pids.append(os.getpid())
        bar.update()
        if r + 1 >= cfg.rounds:
            settled = _settled(series, ratios, cfg.rel_iqr)
            if settled or time.perf_counter() - t0 > cfg.max_seconds:
                break
    bar.close()
    return Rounds(series, ratios, settled, time.perf_counter() - t0 + (prior.seconds if prior else 0.0), pids)


def _rotated(items: list, r: int) -> list:
    """The round's order: rotated each round, so no variant always runs first (or right after another)."""
    k = r % len(items) if items else 0
    return items[k:] + items[:k]
