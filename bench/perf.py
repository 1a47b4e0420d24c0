"""`make perf`: how fast the harness trains, gates and runs pruned models, measured in one run.

Everything here is a benchmark, not a test: the numbers land in RESULTS_DIR/perf/ (perf.csv and perf.md)
with the machine they came from. Variants that are compared (harness vs reference loop, gated vs plain
step, pruned vs unpruned) are measured in interleaved rounds inside one process, and each reported value
is the median over rounds, so their ratios survive a noisy machine.

- reference loop: what most pruning repositories do (torchvision DataLoader with per-sample PIL
  transforms, contiguous layout, `.item()` twice per step);
- harness loop: `bench.train.Trainer` over the device-resident `DeviceLoader` (batched crop/flip,
  channels_last, no host sync in the step);
- DECORE's gated step: the same loop with the per-sample Bernoulli gates and the agents' update;
- pruned models: L1 plans landing on 70/50/30% of the baseline's FLOPs (optionally with kept channels
  rounded to a multiple), inference latency at batch 1 and the batch size, and training throughput.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import ArraySplit, CIFAR_STATS, DeviceLoader
from .env import environment
from .io import atomic_write
from .measure import measure_latency, profile_model
from .recipe import Recipe
from .train import Trainer, autocast_for, build_optimizer, ce_step, evaluate, prepare_model

MEAN, STD, _ = CIFAR_STATS["cifar10"]


@dataclass
class PerfConfig:
    models: tuple[str, ...] = ("resnet20", "resnet56", "resnet110")
    batch_size: int = 128
    steps: int = 10                    # timed training steps per round and variant
    rounds: int = 3                    # interleaved rounds; values are medians over rounds
    flops_targets: tuple[float, ...] = (0.7, 0.5, 0.3)   # kept fraction of the baseline's FLOPs
    round_to: tuple[int, ...] = (8, 16)  # also measure the 50% plan with kept channels rounded to these multiples
    ref_workers: int = 2               # DataLoader workers of the reference loop (pytorch-cifar's value)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    compile: bool = False              # also measure the harness step with torch.compile
    eval_images: int = 2000
    latency_repeats: int = 10


# ---------------------------------------------------------------------------------------------- data

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


# ---------------------------------------------------------------------------------------------- memory

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


# ---------------------------------------------------------------------------------------------- loops

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


# ---------------------------------------------------------------------------------------------- pieces

def _recipe(batch_size: int) -> Recipe:
    return Recipe(name="perf", epochs=1, batch_size=batch_size, lr=0.01, momentum=0.9, weight_decay=5e-4,
                  schedule="constant", warmup_epochs=0)


def plain_trainer(model: nn.Module, cfg: PerfConfig) -> Trainer:
    opt = build_optimizer(model.parameters(), _recipe(cfg.batch_size))
    return Trainer(model, opt, None, cfg.device, ce_step(nn.CrossEntropyLoss()), autocast_for(cfg.device))


def gated_trainer(model: nn.Module, groups: Any, cfg: PerfConfig, lam: float = 1.0):
    """DECORE's training step as `methods.decore.Decore.select` wires it: gates, agents, Adam after each step."""
    from methods.core import Gates
    from methods.decore import AGENT_INIT, AGENT_LR, DecoreStep, make_agents

    gates = Gates(model, groups)
    ids = [g.id for g in groups]
    agents, agent_update = make_agents(groups, AGENT_INIT, AGENT_LR, cfg.device)
    step = DecoreStep(agents, gates, ids, lam, False, False, cfg.device)
    opt = build_optimizer(model.parameters(), _recipe(cfg.batch_size))
    return Trainer(model, opt, None, cfg.device, step, autocast_for(cfg.device), [agent_update]), gates


def pruned_plans(model_name: str, base: nn.Module, cfg: PerfConfig) -> list[tuple[str, float, int, Any]]:
    """(label, FLOPs target, round_to, plan) of L1 plans at the configured FLOPs fractions."""
    import methods
    import models
    from methods.core import channel_groups, prune_model

    name = models.resolve(model_name)
    base_cpu = base.cpu().eval()
    groups = channel_groups(base_cpu, torch.randn(1, 3, 32, 32), "all", name=name)
    cost = lambda plan: profile_model(prune_model(base_cpu, plan), (3, 32, 32))  # noqa: E731
    l1 = methods.get_method("l1")
    out = []
    variants = [(t, 1) for t in cfg.flops_targets]
    if 0.5 in cfg.flops_targets:
        variants += [(0.5, r) for r in cfg.round_to if r > 1]
    for target, rnd in variants:
        ctx = methods.Context(base_cpu, groups, name, {"num_classes": 10}, (3, 32, 32), torch.device("cpu"),
                              plan_cost=cost, round_to=rnd)
        try:
            plan = l1.select(ctx, flops_target=target).plan
        except methods.KnobError:  # rounding can make a target unreachable within 1%: the closest uniform ratio
            base_flops = cost(ctx.plan({}))["flops"]
            candidates = [l1.select(ctx, ratio=r / 100).plan for r in range(5, 96, 2)]
            plan = min(candidates, key=lambda p: abs(cost(p)["flops"] / base_flops - target))
        label = f"l1@{target:g}" + (f" round{rnd}" if rnd > 1 else "")
        out.append((label, target, rnd, plan))
    return out


# ---------------------------------------------------------------------------------------------- run

def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_model(model_name: str, cfg: PerfConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """All measurements of one model; a list of long-format rows."""
    import models
    from methods.core import channel_groups, prune_model

    dev, bs = cfg.device, cfg.batch_size
    torch.manual_seed(0)
    base = models.create(model_name, num_classes=10).eval()
    name = models.resolve(model_name)
    prof = profile_model(base, (3, 32, 32))
    train_split = cifar_like(bs * (cfg.steps + 2) * 2, seed=1)
    test_split = cifar_like(cfg.eval_images, seed=2)
    harness_loader = DeviceLoader(train_split, MEAN, STD, bs, dev, train=True)
    eval_loader = DeviceLoader(test_split, MEAN, STD, 500, dev)

    # the contestants, each warmed up once
    plain = plain_trainer(prepare_model(copy.deepcopy(base), dev).train(), cfg)
    ref_model = copy.deepcopy(base).to(dev).train()
    ref_opt = build_optimizer(ref_model.parameters(), _recipe(bs))
    ref_batches = _cycle(reference_loader(train_split, bs, cfg.ref_workers, dev))
    gated_model = prepare_model(copy.deepcopy(base), dev).train()
    groups = channel_groups(gated_model, torch.randn(1, 3, 32, 32, device=dev), "all", name=name)
    gated, gates = gated_trainer(gated_model, groups, cfg)
    contestants: dict[str, Callable[[int], Timing]] = {
        "harness": lambda n: harness_train(plain, harness_loader, n, bs),
        "reference": lambda n: reference_train(ref_model, ref_opt, ref_batches, n, dev),
        "decore_gated": lambda n: harness_train(gated, harness_loader, n, bs),
    }
    if cfg.compile:
        compiled = plain_trainer(prepare_model(copy.deepcopy(base), dev, compile=True).train(), cfg)
        contestants["harness_compiled"] = lambda n: harness_train(compiled, harness_loader, n, bs)

    plans = pruned_plans(model_name, base, cfg)
    pruned_models = {label: (target, rnd, prune_model(base, plan)) for label, target, rnd, plan in plans}
    pruned_trainers = {label: plain_trainer(prepare_model(copy.deepcopy(m), dev).train(), cfg)
                       for label, (_, _, m) in pruned_models.items()}
    for label, tr in pruned_trainers.items():
        contestants[f"train {label}"] = (lambda n, tr=tr: harness_train(tr, harness_loader, n, bs))

    log(f"{model_name}: warming up {len(contestants)} variants")
    for fn in contestants.values():  # first calls: allocator, oneDNN primitives, worker start, compile
        fn(2)

    timings: dict[str, list[Timing]] = {k: [] for k in contestants}
    for r in tqdm(range(cfg.rounds), desc=f"{model_name} rounds", leave=False, disable=None):
        for key, fn in contestants.items():
            timings[key].append(fn(cfg.steps))
    gates.remove()

    rows: list[dict[str, Any]] = []

    def add(measure: str, variant: str, value: float, unit: str, **extra: Any) -> None:
        rows.append({"model": model_name, "measure": measure, "variant": variant, "value": value, "unit": unit,
                     "batch_size": bs, **extra})

    for key, ts in timings.items():
        variant = key.removeprefix("train ")
        measure = "train_pruned" if key.startswith("train ") else "train"
        add(measure, variant, _median([t.img_s for t in ts]), "img/s", rounds=len(ts), steps=cfg.steps)
        add(f"{measure}_peak_mem", variant, _median([t.peak_mb for t in ts]), "MB")

    # evaluation throughput and inference latency, interleaved over rounds as well
    eval_runner = prepare_model(copy.deepcopy(base), dev).eval()
    lat_models = {"baseline": (1.0, 1, prepare_model(copy.deepcopy(base), dev).eval())}
    lat_models.update({label: (t, r, prepare_model(copy.deepcopy(m), dev).eval())
                       for label, (t, r, m) in pruned_models.items()})
    eval_s: list[float] = []
    lat: dict[tuple[str, int], list[float]] = {(k, b): [] for k in lat_models for b in (1, bs)}
    amp = autocast_for(dev)
    for _ in range(cfg.rounds):
        _sync(dev)
        t0 = time.perf_counter()
        evaluate(eval_runner, eval_loader, dev, amp, desc="perf eval")
        _sync(dev)
        eval_s.append(time.perf_counter() - t0)
        for (label, b) in lat:
            m = lat_models[label][2]
            lat[(label, b)].append(measure_latency(m, (3, 32, 32), b, warmup=3, repeats=cfg.latency_repeats)["median_ms"])
    add("eval", "harness", _median([len(test_split.y) / s for s in eval_s]), "img/s", rounds=cfg.rounds)

    base_flops, base_params = prof["flops"], prof["params"]
    for label, (target, rnd, m) in lat_models.items():
        p = prof if label == "baseline" else profile_model(m.cpu(), (3, 32, 32))
        m.to(dev)
        for b in (1, bs):
            add("latency", label, _median(lat[(label, b)]), "ms", latency_batch=b, flops=p["flops"],
                params=p["params"], flops_fraction=p["flops"] / base_flops, params_fraction=p["params"] / base_params,
                round_to=rnd)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The two tables of perf.md: training loops, and pruned models against their FLOPs promise."""
    df = pd.DataFrame(rows)
    out = {}
    train = []
    for model, g in df.groupby("model", sort=False):
        v = {(r.measure, r.variant): r.value for r in g.itertuples()}
        row = {
            "model": model,
            "reference img/s": v.get(("train", "reference")),
            "harness img/s": v.get(("train", "harness")),
            "harness / reference": v.get(("train", "harness")) / v.get(("train", "reference")),
            "s per CIFAR-10 epoch": 50000 / v.get(("train", "harness")),
            "DECORE gated img/s": v.get(("train", "decore_gated")),
            "gated step / plain step": v.get(("train", "harness")) / v.get(("train", "decore_gated")),
            "eval img/s": v.get(("eval", "harness")),
            "peak MB harness": v.get(("train_peak_mem", "harness")),
            "peak MB reference": v.get(("train_peak_mem", "reference")),
            "peak MB gated": v.get(("train_peak_mem", "decore_gated")),
        }
        if ("train", "harness_compiled") in v:
            row["compiled img/s"] = v[("train", "harness_compiled")]
            row["compiled s per CIFAR-10 epoch"] = 50000 / v[("train", "harness_compiled")]
        train.append(row)
    out["train"] = pd.DataFrame(train)

    pruned = []
    lat = df[df.measure == "latency"]
    for model, g in lat.groupby("model", sort=False):
        base = {int(r.latency_batch): r.value for r in g[g.variant == "baseline"].itertuples()}
        tr = df[(df.model == model) & (df.measure.isin(["train", "train_pruned"]))]
        train_v = {r.variant: r.value for r in tr.itertuples()}
        for variant, gv in g[g.variant != "baseline"].groupby("variant", sort=False):
            by_b = {int(r.latency_batch): r for r in gv.itertuples()}
            r1 = next(iter(by_b.values()))
            promise = 1.0 / r1.flops_fraction
            bs = max(by_b)
            row = {"model": model, "plan": variant, "FLOPs red. %": 100 * (1 - r1.flops_fraction),
                   "params red. %": 100 * (1 - r1.params_fraction), "FLOPs promise": promise}
            for b in sorted(by_b):
                row[f"speed-up b{b}"] = base[b] / by_b[b].value
            row[f"efficiency b{bs}"] = row[f"speed-up b{bs}"] / promise
            if variant in train_v and "harness" in train_v:
                row["train speed-up"] = train_v[variant] / train_v["harness"]
                row["train efficiency"] = row["train speed-up"] / promise
            pruned.append(row)
    out["pruned"] = pd.DataFrame(pruned)
    return out


def _md(df: pd.DataFrame) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "| " + " | ".join("---" for _ in df.columns) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write(rows: list[dict[str, Any]], cfg: PerfConfig, out: Path, command: str) -> tuple[Path, Path]:
    env = environment(cfg.device)
    tables = summarise(rows)
    df = pd.DataFrame(rows)
    machine = env["device"] if cfg.device.type == "cuda" else f"{cpu_model()}, {torch.get_num_threads()} threads"
    df.insert(0, "device", machine)
    csv = atomic_write(out / "perf.csv", lambda p: df.to_csv(p, index=False))
    text = [
        "# decore-bench performance", "",
        f"- command: `{command}`",
        f"- machine: {machine}; {os.cpu_count()} CPUs visible; torch {torch.__version__}; commit {env['git_commit']}",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- batch {cfg.batch_size}, {cfg.steps} timed steps per variant and round, median of {cfg.rounds} interleaved rounds",
        "", "## Training loops", "",
        "img/s of one training step at the batch size. *reference*: torchvision DataLoader with per-sample PIL",
        f"transforms ({cfg.ref_workers} workers), contiguous layout, `.item()` per step. *harness*: device-resident",
        "data, batched augmentation, channels_last, no host sync. *gated*: DECORE's step (per-sample gates +",
        "agent update). Peak MB: CUDA allocator peak, or process RSS on CPU (reference workers not counted).",
        "", _md(tables["train"]), "",
        "## Pruned models (L1 plans) against their FLOPs promise", "",
        "speed-up = baseline time / pruned time; promise = baseline FLOPs / pruned FLOPs; efficiency =",
        "speed-up / promise (1.0 = as fast as the FLOPs say). Inference in eval mode; *train* is the harness's",
        "training step.", "", _md(tables["pruned"]), "",
    ]
    md = atomic_write(out / "perf.md", lambda p: Path(p).write_text("\n".join(text)))
    return csv, md


def run(cfg: PerfConfig, out: Path, command: str = "python -m bench perf") -> tuple[Path, Path]:
    rows: list[dict[str, Any]] = []
    for name in cfg.models:
        t0 = time.perf_counter()
        rows += bench_model(name, cfg, log=lambda s: tqdm.write(s))
        tqdm.write(f"{name}: measured in {time.perf_counter() - t0:.0f} s")
    return write(rows, cfg, out, command)
