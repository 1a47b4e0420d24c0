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
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from bench.engine.data import DeviceLoader
from bench.engine.measure import profile_model
from bench.engine.recipe import Recipe
from bench.engine.train import Trainer, autocast_for, build_optimizer, ce_step, evaluate, prepare_model
from bench.engine.train import compiled as compiled_module  # noqa: I001
from bench.checks.timing import Key, MEAN, PerfConfig, Rounds, STD, Timing, _cycle, _rotated, _settled, _sync, cifar_like, harness_train, reference_loader, reference_train, repeat_rounds, spread
from bench.checks.perf_report import write


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


def _train_contestants(model_name: str, base: nn.Module, plans: list[Plan], cfg: PerfConfig,
                       log: Callable[[str], None]) -> tuple[dict[str, Callable[[int], Timing]], dict[str, float], list]:
    """name -> a function timing n training steps, for every variant of the training section, warmed up; the
    compile seconds of the compiled ones; the gates to remove afterwards."""
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
    compiling = cfg.compile and model_name in cfg.compile_models
    if compiling:  # inductor; the first calls (the compilation) are timed apart, in the warm-up below
        compiled = plain_trainer(prepare_model(copy.deepcopy(base), dev, compile=True).train(), cfg)
        contestants["harness_compiled"] = lambda n: harness_train(compiled, loader, n, bs)
        gated_c, gates_c = gated_trainer(prepare_model(copy.deepcopy(base), dev).train(), groups, cfg)
        gated_c = replace(gated_c, model=compiled_module(gated_c.model))  # the gates' hooks compiled in
        contestants["decore_gated_compiled"] = lambda n: harness_train(gated_c, loader, n, bs)
    for p in plans:
        tr = plain_trainer(prepare_model(copy.deepcopy(p.model), dev).train(), cfg)
        contestants[p.label] = (lambda n, tr=tr: harness_train(tr, loader, n, bs))
    log(f"{model_name}: warming up {len(contestants)} training variants")
    for k, fn in contestants.items():  # first calls: allocator, oneDNN primitives, worker start, compile
        t0 = time.perf_counter()
        fn(2)
        if k.endswith("_compiled"):
            compile_s[k] = time.perf_counter() - t0
    return contestants, compile_s, [gates, gates_c] if compiling else [gates]


def train_section(model_name: str, base: nn.Module, plans: list[Plan], base_flops: int, cfg: PerfConfig,
                  log: Callable[[str], None], prior: Rounds | None = None) -> Rounds:
    """Training throughput of the harness, the reference loop, DECORE's gated step and the pruned models."""
    bs = cfg.batch_size
    plans = [p for p in plans if p.round_to in cfg.train_round_to]
    contestants, compile_s, gates = _train_contestants(model_name, base, plans, cfg, log)
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
    for g in gates:
        g.remove()
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


def run(cfg: PerfConfig, out: Path, command: str = "python -m bench perf") -> tuple[Path, Path]:
    rows: list[dict[str, Any]] = []
    for name in cfg.models:
        t0 = time.perf_counter()
        rows += bench_model(name, cfg, log=lambda s: tqdm.write(s))
        tqdm.write(f"{name}: measured in {time.perf_counter() - t0:.0f} s")
        written = write(rows, cfg, out, command)  # after every model: an interrupted run keeps what it measured
    return written
