"""`make perf`: how fast the harness trains, gates and runs pruned models, measured in one run.

Everything here is a benchmark, not a test: the numbers land in RESULTS_DIR/perf/ (perf.csv and perf.md) with
the machine they came from. Variants that are compared (harness vs reference loop, gated vs plain step, pruned
vs unpruned) are measured in interleaved rounds (the order rotates every round; the rounds of each model are
split among `processes` fresh processes run one after another); every ratio is taken within a round from two
timings made right beside each other (a variant and its own baseline timing, which goes first alternates by
round), so that a drift in the machine's speed over a round cancels in it, and every reported value is the
median with its IQR over rounds. Rounds repeat until every ratio's IQR is within `rel_iqr` of its median, or a
cap on rounds and seconds is hit, in which case the table says *not settled*.

- reference loop: what most pruning repositories do (torchvision DataLoader with per-sample PIL
  transforms, contiguous layout, `.item()` twice per step);
- harness loop: `bench.engine.train.Trainer` over the device-resident `DeviceLoader` (batched crop/flip,
  channels_last, no host sync in the step);
- DECORE's gated step: the same loop with the per-sample Bernoulli gates and the agents' update;
- pruned models: L1 plans landing on 70/50/30% of the baseline's FLOPs (optionally with kept channels
  rounded to a multiple), inference latency at batch 1 and `latency_batch`, and training throughput;
- deployment form (bench.deploy.forms): the same plans with BatchNorm folded into the convs, in inference mode
  and the faster memory layout, and as ONNX in onnxruntime (CPU).
"""
from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from bench.engine.data import ArraySplit, CIFAR_STATS, DeviceLoader
from bench.core.env import cpu_model, environment
from bench.core.errors import UserError
from bench.core.io import atomic_write
from bench.engine.measure import profile_model
from bench.engine.recipe import Recipe
from bench.engine.train import Trainer, autocast_for, build_optimizer, ce_step, evaluate, prepare_model
from bench.engine.train import compiled as compiled_module  # noqa: I001

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
    compile: bool = False              # also measure the harness step with torch.compile
    processes: int = 3                 # each model's rounds are split among this many fresh processes, one after
                                       # another, so the spreads cover the speed differences between processes
    eval_images: int = 2000
    latency_repeats: int = 20          # timed calls per latency at batch 1 (their median) ...
    throughput_repeats: int = 2        # ... and at latency_batch


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
    """(label, FLOPs target, round_to, plan) of L1 plans at the configured FLOPs fractions and alignments."""
    import models

    from bench.deploy.align import l1_plans

    variants = [(t, r) for t in cfg.flops_targets for r in (1, *(r for r in cfg.round_to if r > 1))]
    return [(f"l1@{target:g}" + (f" round{rnd}" if rnd > 1 else ""), target, rnd, plan)
            for target, rnd, plan, _ in l1_plans(models.resolve(model_name), base.cpu().eval(), (3, 32, 32), variants)]


# ---------------------------------------------------------------------------------------------- spread

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


UNITS = {"train img/s": "img/s", "train peak MB": "MB", "eval img/s": "img/s", "latency ms": "ms", "compile s": "s",
         "onnx convs": "convs", "onnx convs unblocked": "convs"}


# ---------------------------------------------------------------------------------------------- sections

@dataclass
class Plan:
    label: str
    target: float
    round_to: int
    model: nn.Module
    flops: int
    params: int

    def promise(self, base_flops: int) -> float:
        return base_flops / self.flops


def train_section(model_name: str, base: nn.Module, plans: list[Plan], base_flops: int, cfg: PerfConfig,
                  log: Callable[[str], None], prior: Rounds | None = None) -> Rounds:
    """Training throughput of the harness, the reference loop, DECORE's gated step and the pruned models."""
    from methods.core import channel_groups

    import models
    dev, bs = cfg.device, cfg.batch_size
    train_split = cifar_like(bs * (cfg.steps + 2) * 2, seed=1)
    loader = DeviceLoader(train_split, MEAN, STD, bs, dev, train=True)
    plain = plain_trainer(prepare_model(copy.deepcopy(base), dev).train(), cfg)
    ref_model = copy.deepcopy(base).to(dev).train()
    ref_opt = build_optimizer(ref_model.parameters(), _recipe(bs))
    ref_batches = _cycle(reference_loader(train_split, bs, cfg.ref_workers, dev))
    gated_model = prepare_model(copy.deepcopy(base), dev).train()
    groups = channel_groups(gated_model, torch.randn(1, 3, 32, 32, device=dev), "all", name=models.resolve(model_name))
    gated, gates = gated_trainer(gated_model, groups, cfg)
    contestants: dict[str, Callable[[int], Timing]] = {
        "harness": lambda n: harness_train(plain, loader, n, bs),
        "reference": lambda n: reference_train(ref_model, ref_opt, ref_batches, n, dev),
        "decore_gated": lambda n: harness_train(gated, loader, n, bs),
    }
    compile_s: dict[str, float] = {}
    if cfg.compile:  # inductor; the first calls (the compilation) are timed apart, in the warm-up below
        compiled = plain_trainer(prepare_model(copy.deepcopy(base), dev, compile=True).train(), cfg)
        contestants["harness_compiled"] = lambda n: harness_train(compiled, loader, n, bs)
        gated_c, gates_c = gated_trainer(prepare_model(copy.deepcopy(base), dev).train(), groups, cfg)
        gated_c = replace(gated_c, model=compiled_module(gated_c.model))  # the gates' hooks compiled in
        contestants["decore_gated_compiled"] = lambda n: harness_train(gated_c, loader, n, bs)
    plans = [p for p in plans if p.round_to in cfg.train_round_to]
    for p in plans:
        tr = plain_trainer(prepare_model(copy.deepcopy(p.model), dev).train(), cfg)
        contestants[p.label] = (lambda n, tr=tr: harness_train(tr, loader, n, bs))
    log(f"{model_name}: warming up {len(contestants)} training variants")
    for k, fn in contestants.items():  # first calls: allocator, oneDNN primitives, worker start, compile
        t0 = time.perf_counter()
        fn(2)
        if k.endswith("_compiled"):
            compile_s[k] = time.perf_counter() - t0

    harness = contestants.pop("harness")

    def one_round(r: int) -> tuple[dict[Key, float], dict[Key, float]]:
        # every variant is timed right beside its own harness timing (which goes first alternates by round): a
        # ratio compares two timings seconds apart, so a drift in the machine's speed over a round cancels in it
        t, h = {}, {}
        for k in _rotated(list(contestants), r):
            if r % 2 == 0:
                h[k] = harness(cfg.steps)
                t[k] = contestants[k](cfg.steps)
            else:
                t[k] = contestants[k](cfg.steps)
                h[k] = harness(cfg.steps)
        base = Timing(sum(v.seconds for v in h.values()), sum(v.images for v in h.values()),
                      max(v.peak_mb for v in h.values()))
        values = {("train img/s", k, "", bs): v.img_s for k, v in {"harness": base, **t}.items()}
        values.update({("train peak MB", k, "", bs): v.peak_mb for k, v in {"harness": base, **t}.items()})
        ratios = {("harness / reference", "harness", "", bs): h["reference"].img_s / t["reference"].img_s,
                  ("gated / plain", "decore_gated", "", bs): t["decore_gated"].seconds / h["decore_gated"].seconds}
        if "decore_gated_compiled" in t:  # each beside its own eager harness timing: the ratio of the two ratios
            ratios[("compiled gated / plain", "decore_gated_compiled", "", bs)] = (
                (t["decore_gated_compiled"].seconds / h["decore_gated_compiled"].seconds)
                / (t["harness_compiled"].seconds / h["harness_compiled"].seconds))
            values.update({("compile s", k, "", bs): v for k, v in compile_s.items()})
        for p in plans:
            up = h[p.label].seconds / t[p.label].seconds   # equal images: time ratio = throughput ratio
            ratios[("train speed-up", p.label, "", bs)] = up
            ratios[("train efficiency", p.label, "", bs)] = up / p.promise(base_flops)
        return values, ratios

    out = repeat_rounds(one_round, cfg, f"{model_name} training rounds", prior)
    gates.remove()
    if cfg.compile:
        gates_c.remove()
    return out


def latency_runners(base: nn.Module, plans: list[Plan], cfg: PerfConfig, log: Callable[[str], None],
                    channels_last: bool | None = None) -> dict[tuple[str, str], Any]:
    """(form, variant) -> runner: eager (eval, channels_last) for every plan; with cfg.deploy, BatchNorm
    folded (channels_last where it measures faster, unless `channels_last` decides) and, on CPU,
    onnxruntime, for every plan (each alignment too)."""
    from bench.deploy.forms import OnnxRunner, TorchRunner, faster_channels_last, fold_bn

    dev, size = cfg.device, (3, 32, 32)
    variants = {"baseline": base, **{p.label: p.model for p in plans}}
    runners: dict[tuple[str, str], Any] = {("eager", k): TorchRunner(copy.deepcopy(m), size, dev) for k, m in variants.items()}
    if not cfg.deploy:
        return runners
    deploy = variants
    folded = {k: fold_bn(m) for k, m in deploy.items()}
    cl = channels_last
    if cl is None:
        cl = faster_channels_last(folded["baseline"], size, dev, cfg.latency_batch)
        log(f"deployment form: BatchNorm folded, inference mode, {'channels_last' if cl else 'contiguous'} (measured faster)")
    runners.update({("folded", k): TorchRunner(m, size, dev, cl) for k, m in folded.items()})
    if dev.type == "cpu":
        runners.update({("onnxruntime", k): OnnxRunner(m, size) for k, m in deploy.items()})
    return runners


def latency_section(model_name: str, base: nn.Module, plans: list[Plan], base_flops: int, cfg: PerfConfig,
                    log: Callable[[str], None], prior: Rounds | None = None, layout: str | None = None
                    ) -> tuple[Rounds, str]:
    """Latency of every (form, variant) at batch 1 and cfg.latency_batch, and evaluation throughput.
    `layout` ("channels_last" or "contiguous"): the folded form's layout, as an earlier process measured it."""
    dev = cfg.device
    runners = latency_runners(base, plans, cfg, log, None if layout is None else layout == "channels_last")
    layout = "channels_last" if runners.get(("folded", "baseline")) and runners[("folded", "baseline")].channels_last else "contiguous"
    eval_runner = prepare_model(copy.deepcopy(base), dev).eval()
    test_split = cifar_like(cfg.eval_images, seed=2)
    eval_loader = DeviceLoader(test_split, MEAN, STD, 500, dev)
    amp = autocast_for(dev)
    batches = (1, cfg.latency_batch)
    promise = {p.label: p.promise(base_flops) for p in plans}

    def one_round(r: int) -> tuple[dict[Key, float], dict[Key, float]]:
        _sync(dev)
        t0 = time.perf_counter()
        evaluate(eval_runner, eval_loader, dev, amp, desc="perf eval")
        _sync(dev)
        values = {("eval img/s", "harness", "", 500): len(test_split.y) / (time.perf_counter() - t0)}
        for (form, variant), run in runners.items():  # the graph's facts, the same every round
            if form == "onnxruntime":
                values[("onnx convs", variant, form, 0)] = run.convs
                values[("onnx convs unblocked", variant, form, 0)] = run.unblocked
        ratios = {}
        for b in batches:
            repeats = cfg.latency_repeats if b == 1 else cfg.throughput_repeats
            base_ms: dict[str, list[float]] = {}
            for form, variant in _rotated([k for k in runners if k[1] != "baseline"], r):
                # each pruned variant right beside its form's baseline (which goes first alternates by round)
                pair = [(form, "baseline"), (form, variant)]
                ms = {k: runners[k].latency_ms(b, 1, repeats) for k in (pair if r % 2 == 0 else pair[::-1])}
                base_ms.setdefault(form, []).append(ms[(form, "baseline")])
                values[("latency ms", variant, form, b)] = ms[(form, variant)]
                up = ms[(form, "baseline")] / ms[(form, variant)]
                ratios[("speed-up", variant, form, b)] = up
                ratios[("efficiency", variant, form, b)] = up / promise[variant]
            for form, variant in runners:  # a form with no pruned variant: its baseline alone
                if variant == "baseline" and form not in base_ms:
                    base_ms[form] = [runners[(form, variant)].latency_ms(b, 1, repeats)]
            for form, times in base_ms.items():
                values[("latency ms", "baseline", form, b)] = float(np.median(times))
        return values, ratios

    return repeat_rounds(one_round, cfg, f"{model_name} latency rounds", prior), layout


# ---------------------------------------------------------------------------------------------- run

def make_plans(model_name: str, cfg: PerfConfig) -> tuple[nn.Module, dict[str, int], list[Plan]]:
    """The untrained base model (seed 0), its params and FLOPs, and its pruned L1 models."""
    import models
    from methods.core import prune_model

    torch.manual_seed(0)
    base = models.create(model_name, num_classes=10).eval()
    prof = profile_model(base, (3, 32, 32))
    plans = []
    for label, target, rnd, plan in pruned_plans(model_name, base, cfg):
        m = prune_model(base, plan)
        p = profile_model(m, (3, 32, 32))
        plans.append(Plan(label, target, rnd, m, p["flops"], p["params"]))
    return base, prof, plans


def bench_model(model_name: str, cfg: PerfConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """All measurements of one model; a list of long-format rows (median, quartiles, rounds, settled)."""
    base, prof, plans = make_plans(model_name, cfg)
    if cfg.processes <= 1:
        train = train_section(model_name, base, plans, prof["flops"], cfg, log)
        latency, layout = latency_section(model_name, base, plans, prof["flops"], cfg, log)
    else:
        train, latency, layout = _in_processes(model_name, base, prof, plans, cfg, log)
    return (section_rows(model_name, "train", train, plans, prof, cfg)
            + section_rows(model_name, "latency", latency, plans, prof, cfg, layout))


def _share(cfg: PerfConfig) -> PerfConfig:
    """One process's part of the rounds: at least rounds / processes, at most max_rounds / processes."""
    k = cfg.processes
    return replace(cfg, rounds=math.ceil(cfg.rounds / k), max_rounds=math.ceil(cfg.max_rounds / k),
                   max_seconds=cfg.max_seconds / k, processes=1)


def _in_processes(model_name: str, base: nn.Module, prof: dict[str, int], plans: list[Plan], cfg: PerfConfig,
                  log: Callable[[str], None]) -> tuple[Rounds, Rounds, str]:
    """Both sections measured in cfg.processes fresh processes, one after another, each continuing the rounds
    of the ones before it. A process fixes some of its own speed (with one process per run, latency medians moved
    between two runs by more than each run's IQR: results/perf/intel-xeon/), so one process's rounds understate
    the spread a rerun sees; pooled rounds from several processes do not."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    share, ctx = _share(cfg), mp.get_context("spawn")
    train = latency = None
    layout = None
    for i in range(cfg.processes):
        log(f"{model_name}: process {i + 1} of {cfg.processes}")
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            train, latency, layout = pool.submit(_measure, model_name, base, prof, plans, share, train, latency,
                                                 layout, torch.get_num_threads()).result()
    # settled is judged on the pooled rounds, against the whole run's criterion
    train.settled = _settled(train.series, train.ratios, cfg.rel_iqr)
    latency.settled = _settled(latency.series, latency.ratios, cfg.rel_iqr)
    return train, latency, layout


def _measure(model_name: str, base: nn.Module, prof: dict[str, int], plans: list[Plan], cfg: PerfConfig,
             train: Rounds | None, latency: Rounds | None, layout: str | None, threads: int
             ) -> tuple[Rounds, Rounds, str]:
    """One process's rounds of both sections (runs in a fresh process)."""
    torch.set_num_threads(threads)
    log = tqdm.write
    train = train_section(model_name, base, plans, prof["flops"], cfg, log, train)
    latency, layout = latency_section(model_name, base, plans, prof["flops"], cfg, log, latency, layout)
    return train, latency, layout


def section_rows(model_name: str, section: str, rounds: Rounds, plans: list[Plan], prof: dict[str, int],
                 cfg: PerfConfig, layout: str | None = None) -> list[dict[str, Any]]:
    """Long-format rows of one section: one per measured quantity, its median, quartiles and rounds."""
    info = {p.label: p for p in plans}
    rows = []
    for (measure, variant, form, b), values in rounds.series.items():
        s = spread(values)
        p = info.get(variant)
        rows.append({
            "model": model_name, "section": section, "measure": measure, "variant": variant, "form": form,
            "batch": b, "value": s.median, "q1": s.q1, "q3": s.q3, "iqr": s.iqr, "rounds": s.n,
            "settled": rounds.settled, "section_seconds": rounds.seconds, "processes": rounds.processes,
            "unit": UNITS.get(measure, "ratio"), "steps": cfg.steps if section == "train" else None,
            "layout": layout if form == "folded" else None,
            "flops": p.flops if p else prof["flops"], "params": p.params if p else prof["params"],
            "flops_fraction": p.flops / prof["flops"] if p else 1.0,
            "params_fraction": p.params / prof["params"] if p else 1.0,
            "round_to": p.round_to if p else 1,
        })
    return rows


def _cell(g: pd.DataFrame, measure: str, variant: str, form: str = "", batch: int | None = None) -> Spread | None:
    sel = g[(g.measure == measure) & (g.variant == variant) & (g.form.fillna("") == form)]
    if batch is not None:
        sel = sel[sel.batch == batch]
    if sel.empty:
        return None
    r = sel.iloc[0]
    return Spread(r.value, r.q1, r.q3, int(r.rounds))


def _rounds_note(g: pd.DataFrame, section: str) -> str:
    sel = g[g.section == section]
    if sel.empty:
        return "-"
    r = sel.iloc[0]
    return (f"{int(r.rounds)}" + (f" in {int(r.processes)} processes" if r.processes > 1 else "")
            + ("" if bool(r.settled) else " (not settled)"))


def summarise(rows: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The tables of perf.md; each measured cell is a Spread (median and IQR over rounds)."""
    df = pd.DataFrame(rows)
    out = {}
    train = []
    for model, g in df.groupby("model", sort=False):
        harness = _cell(g, "train img/s", "harness")
        row = {
            "model": model,
            "reference img/s": _cell(g, "train img/s", "reference"),
            "harness img/s": harness,
            "harness / reference": _cell(g, "harness / reference", "harness"),
            "s per CIFAR-10 epoch": 50000 / harness.median if harness else None,
            "DECORE gated img/s": _cell(g, "train img/s", "decore_gated"),
            "gated step / plain step": _cell(g, "gated / plain", "decore_gated"),
            "eval img/s": _cell(g, "eval img/s", "harness"),
            "peak MB harness": _cell(g, "train peak MB", "harness"),
            "peak MB reference": _cell(g, "train peak MB", "reference"),
            "peak MB gated": _cell(g, "train peak MB", "decore_gated"),
        }
        if (g.variant == "harness_compiled").any():
            row["compiled img/s"] = _cell(g, "train img/s", "harness_compiled")
            row["compiled gated img/s"] = _cell(g, "train img/s", "decore_gated_compiled")
            row["compiled gated / plain"] = _cell(g, "compiled gated / plain", "decore_gated_compiled")
            row["compile s (plain, gated)"] = " / ".join(
                f"{c.median:.0f}" for c in (_cell(g, "compile s", k) for k in ("harness_compiled", "decore_gated_compiled"))
                if c is not None) or None
        row["rounds"] = _rounds_note(g, "train")
        train.append(row)
    out["train"] = pd.DataFrame(train)
    out["pruned"] = _pruned_table(df, "eager", train_columns=True)
    out["deploy"] = pd.concat([_pruned_table(df, f) for f in ("folded", "onnxruntime")], ignore_index=True)
    return out


def _pruned_table(df: pd.DataFrame, form: str, train_columns: bool = False) -> pd.DataFrame:
    """One row per (model, plan) of a latency form: speed-up and efficiency at each batch."""
    rows = []
    lat = df[(df.measure == "latency ms") & (df.form == form)]
    for model, g in lat.groupby("model", sort=False):
        gm = df[df.model == model]
        batches = sorted(int(b) for b in g.batch.unique())
        for variant, gv in g[g.variant != "baseline"].groupby("variant", sort=False):
            r1 = gv.iloc[0]
            row: dict[str, Any] = {"model": model, "plan": variant}
            if not train_columns:
                row["form"] = form + (f" ({r1.layout})" if isinstance(r1.layout, str) else "")
            row.update({"FLOPs red. %": 100 * (1 - r1.flops_fraction), "params red. %": 100 * (1 - r1.params_fraction),
                        "FLOPs promise": 1.0 / r1.flops_fraction})
            for b in batches:
                row[f"baseline ms b{b}"] = _cell(gm, "latency ms", "baseline", form, b)
                row[f"speed-up b{b}"] = _cell(gm, "speed-up", variant, form, b)
                row[f"efficiency b{b}"] = _cell(gm, "efficiency", variant, form, b)
            blocked = _cell(gm, "onnx convs unblocked", variant, form, 0), _cell(gm, "onnx convs", variant, form, 0)
            if form == "onnxruntime" and all(blocked):
                row["convs outside NCHWc"] = f"{blocked[0].median:.0f} of {blocked[1].median:.0f}"
            if train_columns:
                row["train speed-up"] = _cell(gm, "train speed-up", variant)
                row["train efficiency"] = _cell(gm, "train efficiency", variant)
            row["rounds"] = _rounds_note(gm, "latency")
            rows.append(row)
    return pd.DataFrame(rows)


def alignment_advice(df: pd.DataFrame, min_removed: float = 0.3) -> pd.DataFrame:
    """Which alignment to pick, per deploy form and batch: for each round_to, the median efficiency of its plans
    (over models and FLOPs targets) and how many of its plans removing at least `min_removed` of the FLOPs ran
    slower than the unpruned model in that form. The pick is the highest median efficiency (the smaller
    multiple on a tie), the rule `bench align` applies to one model."""
    eff, up = df[df.measure == "efficiency"], df[df.measure == "speed-up"]
    rows = []
    for (form, batch), g in eff.groupby(["form", "batch"], sort=False):
        per = {}
        for r, gr in g.groupby("round_to"):
            big = up[(up.form == form) & (up.batch == batch) & (up.round_to == r)
                     & (up.flops_fraction <= 1 - min_removed + 0.01)]
            per[int(r)] = (float(gr.value.median()), len(gr), int((big.value < 1).sum()), len(big))
        pick = max(per, key=lambda r: (round(per[r][0], 6), -r))
        for r, (med, n, slow, n_big) in sorted(per.items()):
            rows.append({"form": form, "batch": int(batch), "round_to": r, "plans": n, "median efficiency": med,
                         f"slower than unpruned (of those >= {min_removed:.0%} removed)": f"{slow} of {n_big}",
                         "pick": "**pick**" if r == pick else ""})
    return pd.DataFrame(rows)


def onnx_layout_note(df: pd.DataFrame) -> str:
    """What remains the runtime's in onnxruntime, from the optimised graphs' facts: how many plans of each
    alignment have convs outside the blocked NCHWc layout (bench.deploy.export.blocked_convs)."""
    sel = df[(df.measure == "onnx convs unblocked") & (df.form == "onnxruntime")]
    if sel.empty:
        return ""
    base = sel[sel.variant == "baseline"]
    parts = []
    for r, g in sel[sel.variant != "baseline"].groupby("round_to"):
        parts.append(f"round_to {int(r)}: {int((g.value > 0).sum())} of {len(g)} plans "
                     f"({int(g.value.sum())} convs in all)")
    return ("onnxruntime runs a conv in its blocked NCHWc layout (channel blocks of the SIMD width) only when its "
            "channel counts fit the block; any other conv runs the plain kernel with layout reorders around it "
            "(column *convs outside NCHWc*). That cost is the runtime's: the export is checked against PyTorch, "
            "every graph optimisation is on and the session has torch's threads. Unpruned models: "
            f"{int(base.value.sum())} such convs over {len(base)} models. Plans with convs outside the layout, "
            "by alignment: " + "; ".join(parts) + ". Aligning the kept widths is the remedy on our side; the "
            "table below prices it.")


def _num(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


def _md(df: pd.DataFrame) -> str:
    """Markdown; a Spread cell reads "median (IQR)"."""
    def fmt(v: Any) -> str:
        if isinstance(v, Spread):
            return f"{_num(v.median)} ({_num(v.iqr)})"
        if v is None:
            return "-"
        if isinstance(v, float):
            return _num(v)
        return str(v)
    if df.empty:
        return "(nothing measured)"
    lines = ["| " + " | ".join(df.columns) + " |", "| " + " | ".join("---" for _ in df.columns) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# every abbreviation of perf.md's tables, defined where the tables start (issue #29)
ABBREVIATIONS = ("Plans and columns: *l1@F* = the L1 plan whose pruned model keeps the fraction F of the baseline's "
                 "FLOPs; *round8* / *round16* after it = an L1 plan of the same FLOPs target with every group's kept "
                 "channels rounded up to a multiple of 8 / 16 (the `round_to` option); *bN* (b1, b64) = batch N; *red.* = reduction; "
                 "*ms* = milliseconds per call; cells \"m (i)\" = median m and IQR i (interquartile range: third "
                 "quartile minus first) over rounds, the one way the project prints a spread.")
# the legend of perf.md files written before every plan was measured at every alignment (their round8/16 rows
# are the l1@0.5 plan only)
LEGACY_ABBREVIATIONS = ("Plans and columns: *l1@F* = the L1 plan whose pruned model keeps the fraction F of the baseline's "
                 "FLOPs; *round8* / *round16* = the same l1@0.5 plan with every group's kept channels rounded up to a "
                 "multiple of 8 / 16 (the `round_to` option); *bN* (b1, b64) = batch N; *red.* = reduction; "
                 "*ms* = milliseconds per call; cells \"m (i)\" = median m and IQR i (interquartile range: third "
                 "quartile minus first) over rounds, the one way the project prints a spread.")


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
        f"- batch {cfg.batch_size}, {cfg.steps} timed steps per variant and round, each variant timed right beside "
        f"a harness timing of as many steps (training ratios are taken within that pair); latency at batch 1 "
        f"(median of {cfg.latency_repeats} calls) and {cfg.latency_batch} (median of {cfg.throughput_repeats}), each "
        "pruned variant timed right beside its form's baseline",
        f"- every cell: median (IQR) over interleaved rounds (order rotated each round); ratios are taken within a "
        f"round, then summarised. Rounds repeat from {cfg.rounds} until every ratio's IQR is at most "
        f"{cfg.rel_iqr:.0%} of its median, up to {cfg.max_rounds} rounds or {cfg.max_seconds:.0f} s per model and "
        "section; *not settled* marks a section that hit the cap first (its spread is wider).",
        *([f"- each model's rounds are split among {cfg.processes} fresh processes run one after another (each "
           f"continues the rounds before it; the caps are shared among them), so the spreads include the speed "
           "differences between processes, which one process's rounds do not see"] if cfg.processes > 1 else []),
        "", "## Training loops", "",
        "img/s of one training step at the batch size. *reference*: torchvision DataLoader with per-sample PIL",
        f"transforms ({cfg.ref_workers} workers), contiguous layout, `.item()` per step. *harness*: device-resident",
        "data, batched augmentation, channels_last, no host sync. *gated*: DECORE's step (per-sample gates +",
        "agent update). Peak MB: CUDA allocator peak, or process RSS on CPU (reference workers not counted).",
        "", _md(tables["train"]), "",
        "## Pruned models (L1 plans) against their FLOPs promise", "",
        "speed-up = baseline time / pruned time; promise = baseline FLOPs / pruned FLOPs; efficiency =",
        "speed-up / promise (1.0 = as fast as the FLOPs say). Eager PyTorch, eval mode, channels_last;",
        "*train* is the harness's training step.", "", ABBREVIATIONS, "", _md(tables["pruned"]), "",
        "## Deployment form", "",
        "The same plans (and the baseline) as they would be deployed: *folded* = BatchNorm folded into the",
        "preceding conv (`torch.fx.experimental.optimization.fuse`), inference mode, the memory layout that",
        "measured faster for the folded baseline; *onnxruntime* = the ONNX export (opset 18, checked against",
        "PyTorch) in an onnxruntime CPU session with all graph optimisations, as many threads as torch.",
        "Speed-up and efficiency compare the pruned and the unpruned model in the same form.",
        "", _md(tables["deploy"]), "", *([onnx_layout_note(df), ""] if onnx_layout_note(df) else []),
        "## Which alignment to pick on this machine", "",
        "Per form and batch, each `round_to` over all its plans above (every model and FLOPs target): the median",
        "efficiency, and how many plans removing 30% of the FLOPs or more ran slower than the unpruned model in",
        "the same form. *pick* = the highest median efficiency (the smaller multiple on a tie), the rule",
        "`python -m bench align` applies to one model (`--round-to auto` for a sweep).",
        "", _md(alignment_advice(df)), "",
    ]
    md = atomic_write(out / "perf.md", lambda p: Path(p).write_text("\n".join(text)))
    return csv, md


# ---------------------------------------------------------------------------------------------- two runs

KEY = ["model", "section", "measure", "variant", "form", "batch"]


def read_perf(path: str | Path) -> pd.DataFrame:
    """A perf.csv (or a folder holding one), checked to be one."""
    p = Path(path)
    p = p / "perf.csv" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"{path}: no perf.csv there; give a file or folder written by `make perf`")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not a readable CSV ({e}); give a perf.csv written by `make perf`") from None
    missing = sorted(set(KEY + ["value", "iqr", "unit"]) - set(df.columns))
    if missing:
        raise UserError(f"{p}: columns {missing} missing; give a perf.csv written by `make perf`")
    return df.assign(form=df["form"].fillna(""))


def compare(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Every ratio measured in both runs, with `agree`: the two medians as perf.md prints them differ by at most
    the larger of their printed IQRs, i.e. each run's median lies within the other's printed spread or both
    spreads cover the gap."""
    shown = lambda v: float(_num(v)) if not math.isnan(v) else math.nan  # what perf.md prints
    pick = lambda d: d[d["unit"] == "ratio"][KEY + ["value", "iqr"]]
    m = pick(a).merge(pick(b), on=KEY, suffixes=("_1", "_2"))
    for c in ("value_1", "iqr_1", "value_2", "iqr_2"):
        m[c] = m[c].map(shown)
    m["diff"] = (m["value_1"] - m["value_2"]).abs().round(6)
    m["spread"] = m[["iqr_1", "iqr_2"]].max(axis=1)
    m["agree"] = m["diff"] <= m["spread"]
    return m


def compare_text(m: pd.DataFrame, n_a: int, n_b: int) -> str:
    if m.empty:
        return "the two runs share no ratio (different models or settings?)"
    by = m.groupby(["model", "measure"])["agree"].agg(["sum", "count"]).reset_index()
    lines = [f"{r.model:12s} {r.measure:20s} {int(r['sum']):3d} of {int(r['count'])} agree" for _, r in by.iterrows()]
    lines.append(f"agree within the printed spread (|median1 - median2| <= max(IQR1, IQR2)): "
                 f"{int(m['agree'].sum())} of {len(m)} ratios")
    if n_a != n_b or n_a != len(m):
        lines.append(f"(ratios in run 1: {n_a}, in run 2: {n_b}, in both: {len(m)})")
    bad = m[~m["agree"]]
    if len(bad):
        lines += ["", "disagree:", bad[KEY + ["value_1", "iqr_1", "value_2", "iqr_2", "diff"]].to_string(index=False)]
    return "\n".join(lines)


def run(cfg: PerfConfig, out: Path, command: str = "python -m bench perf") -> tuple[Path, Path]:
    rows: list[dict[str, Any]] = []
    for name in cfg.models:
        t0 = time.perf_counter()
        rows += bench_model(name, cfg, log=lambda s: tqdm.write(s))
        tqdm.write(f"{name}: measured in {time.perf_counter() - t0:.0f} s")
        written = write(rows, cfg, out, command)  # after every model: an interrupted run keeps what it measured
    return written
