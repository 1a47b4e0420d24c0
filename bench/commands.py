"""What each subcommand of `python -m bench` does (bench.cli builds the parser and turns user mistakes into one line).

A function `cmd_<name>` decorated with `@command` runs `python -m bench <name>`; packages with subcommands of their
own register them (bench.deploy.align, bench.checks.commands, sweeps.launch).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.core.errors import UserError


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


@command
def cmd_baseline(args: argparse.Namespace) -> int:
    from bench.engine import dist
    from bench.engine.baseline import get_baseline
    from bench.engine.recipe import load_recipe
    from bench.engine.train import resolve_device

    recipe = load_recipe(args.recipe)
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs {args.epochs} must be at least 1")
        recipe = recipe.replace(epochs=args.epochs)
    if args.subset is not None and args.subset < 1:
        raise UserError(f"--subset {args.subset} must be a positive number of images per class")
    t0 = time.perf_counter()
    b = get_baseline(args.model, args.dataset, recipe, seed=args.seed, subset_per_class=args.subset,
                     checkpoint=args.checkpoint, pretrained=args.pretrained, device=dist.setup(resolve_device(args.device)),
                     channels_last=args.channels_last, compile=args.compile)
    if not dist.is_main():
        return 0
    m = b.meta
    how = "cached" if b.cached else m["source"]
    print(f"{b.spec.key} ({how}, {time.perf_counter() - t0:.1f}s): top-1 {m['test']['top1']:.2f}%  "
          f"top-5 {m['test']['top5']:.2f}%  params {m['params'] / 1e6:.3f}M  FLOPs {m['flops'] / 1e6:.2f}M")
    print(f"  stored in {b.path}")
    return 0


@command
def cmd_sweep(args: argparse.Namespace) -> int:
    # the CLI is the one place that reaches up into sweeps/ (the engine itself never imports it)
    from sweeps.plan import sweep_config
    from sweeps.study import run_sweep

    from bench.engine import dist

    if dist.launched():
        raise UserError("sweep does not run under torchrun: start the sweep with python -m bench, or run single "
                        "trials with torchrun ... -m bench run")
    folder = run_sweep(sweep_config(args))
    print(f"results: {folder / 'runs.csv'}")
    return 0


@command
def cmd_search(args: argparse.Namespace) -> int:
    from sweeps.budget import SearchConfig
    from sweeps.search import run_search

    if args.profile == "auto":  # the same choice as `sweep --profile auto` (on a CPU never the GPU profile `fast`)
        from sweeps.config import SweepConfig
        from sweeps.plan import choose_profile
        from bench.engine.train import resolve_device

        probe = SweepConfig(args.model, args.dataset, "smoke", tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                            args.trials)
        args.profile, args.trials, line = choose_profile(probe, resolve_device(args.device))
        print(line)
    cfg = SearchConfig(args.model, args.dataset, args.budget, args.profile,
                       tuple(m.strip() for m in args.methods.split(",") if m.strip()), args.trials, args.storage,
                       args.device, args.scope, args.decore_per_stage, args.pruner, args.wandb,
                       pretrained=args.pretrained, checkpoint=args.checkpoint)
    run_search(cfg)
    print(f"results: {cfg.folder / 'README.md'}")
    return 0


@command
def cmd_report(args: argparse.Namespace) -> int:
    from bench.core.io import results_dir
    from bench.report.experiment import report_experiment

    folders = [Path(f) for f in args.experiments] or sorted(p.parent for p in results_dir().glob("*/runs.csv"))
    if not folders:
        raise UserError(f"no experiment with a runs.csv under {str(results_dir())!r}: run `make bench` first or set RESULTS_DIR")
    for folder in folders:
        if not (folder / "runs.csv").is_file():
            raise UserError(f"{str(folder)!r} holds no runs.csv: pass an experiment folder such as results/resnet20-cifar10-smoke")
        written = report_experiment(folder)
        print(f"{folder}: {', '.join(sorted(p.name for p in written.values()))}")
    from bench.report.site import write_site

    write_site(results_dir() if not args.experiments else folders[0].parent)
    print(f"site: {results_dir() if not args.experiments else folders[0].parent}/index.html")
    return 0


@command
def cmd_retime(args: argparse.Namespace) -> int:
    from bench.trial.retime import retime

    for folder in map(Path, args.experiments):
        if not (folder / "runs.csv").is_file():
            raise UserError(f"{str(folder)!r} holds no runs.csv: pass an experiment folder such as results/resnet20-cifar10-smoke")
        print(f"{folder}: {retime(folder, force=args.all, form=args.deploy_form)} trial(s) timed alone "
              f"({args.deploy_form}); `python -m bench report {folder}` "
              "writes the tables again")
    return 0


@command
def cmd_paper(args: argparse.Namespace) -> int:
    from bench.core.io import results_dir
    from bench.report.paper import write_paper

    written = write_paper(Path(args.results_dir) if args.results_dir else results_dir())
    print(f"paper tables: {written['paper.md']} (LaTeX: {written['paper.tex']})")
    return 0


def _parse_knobs(pairs: list[str]) -> dict[str, str]:
    knobs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise UserError(f"--knob {pair!r} is not NAME=VALUE: write e.g. --knob lambda=2")
        knobs[name.strip()] = value.strip()
    return knobs


@command
def cmd_run(args: argparse.Namespace) -> int:
    from bench.engine import dist
    from bench.engine import train
    from bench.trial.run import TrialConfig, run_trial, trial_folder
    from bench.deploy.speed import measure_speedup
    from bench.engine.train import resolve_device
    from sweeps.plan import _round_to

    cfg = TrialConfig(model=args.model, dataset=args.dataset, method=args.method, knobs=_parse_knobs(args.knob),
                      scope=args.scope, seed=args.seed, baseline_recipe=args.baseline_recipe,
                      joint_recipe=args.joint_recipe, finetune_recipe=args.finetune_recipe, round_to=_round_to(args)[0],
                      profile=args.label, budget=args.budget, selection=args.selection, pretrained=args.pretrained,
                      checkpoint=args.checkpoint)
    train.PROGRESS_LINES = not sys.stderr.isatty()  # tqdm is silent off a terminal: a line per phase and epoch
    try:
        row = run_trial(cfg, dist.setup(resolve_device(args.device)), compile=args.compile)
        if dist.is_main():
            row = {**row, **measure_speedup(trial_folder(cfg), form=args.deploy_form)}
    finally:
        train.PROGRESS_LINES = False
    if not dist.is_main():
        return 0
    print(f"{row['method']} {row['knobs']} scope={row['scope']}: validation top-1 {row['val_top1_pct']:.2f}%, "
          f"test top-1 {row['top1_pct']:.2f}% (baseline {row['base_top1_pct']:.2f}%), "
          f"{row['budget_images']:,} training images after the baseline ({row['budget']} budget)  "
          f"params {row['params'] / 1e6:.3f}M (-{row['params_reduction_pct']:.1f}%)  "
          f"FLOPs {row['flops'] / 1e6:.2f}M (-{row['flops_reduction_pct']:.1f}%)  speed-up {row['speedup_b1']:.2f}x "
          f"(IQR {row['speedup_b1_q3'] - row['speedup_b1_q1']:.2f}, batch 1, one thread)  {row['wall_seconds']:.0f}s")
    return 0


@command
def cmd_groups(args: argparse.Namespace) -> int:
    import torch

    import models
    from methods.core import channel_groups, describe, gate_vs_removal, prune_model
    from methods.core.surgery import KeepPlan

    from bench.engine.measure import count_flops, count_params

    model = _create(args.model, args.num_classes).eval()
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    if args.image_size:
        size = (3, args.image_size, args.image_size)
    x = torch.randn(2, *size)
    groups = channel_groups(model, x[:1], args.scope, name=models.resolve(args.model))
    for g in groups:
        print(f"{g.id:40s} {g.kind:8s} {g.channels:5d} channels  tie {g.tie}  {len(g.producers)} producers")
    for gid, why in groups.excluded.items():
        print(f"{gid:40s} excluded: {why}")
    gen = torch.Generator().manual_seed(0)
    masks = {}
    for g in groups:  # a random `keep` fraction of every group
        masks[g.id] = torch.zeros(g.units, dtype=torch.bool)
        masks[g.id][torch.randperm(g.units, generator=gen)[: max(1, round(g.units * args.keep))]] = True
    plan = KeepPlan.from_masks(groups, masks, models.resolve(args.model), model_args={"num_classes": args.num_classes},
                               input_size=list(size))
    pruned = prune_model(model, plan)
    err = gate_vs_removal(model, groups, masks, pruned, x)[2]
    print(f"{describe(groups)}")
    print(f"keeping {args.keep:.0%} of every group: params {count_params(model) / 1e6:.3f}M -> {count_params(pruned) / 1e6:.3f}M, "
          f"FLOPs {count_flops(model, size) / 1e6:.2f}M -> {count_flops(pruned, size) / 1e6:.2f}M, "
          f"gate-vs-removal relative error {err:.1e}")
    return 0


def _create(name: str, num_classes: int):
    import models

    try:
        return models.create(name, num_classes=num_classes)
    except models.UnknownModelError as e:
        raise UserError(str(e)) from None


@command
def cmd_measure(args: argparse.Namespace) -> int:
    import models

    from bench.engine.measure import count_flops, count_params, measure_latency
    from bench.engine.train import prepare_model, resolve_device

    model = _create(args.model, args.num_classes)
    input_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    device = resolve_device(args.device)
    lat = measure_latency(prepare_model(model, device), input_size, args.batch_size)
    print(json.dumps({"model": models.resolve(args.model), "input_size": input_size, "params": count_params(model),
                      "flops": count_flops(model.cpu(), input_size), "latency_ms": round(lat["median_ms"], 3),
                      "batch_size": args.batch_size, "device": str(device)}, indent=2))
    if args.self_ratio:
        import copy

        import torch

        from bench.engine.measure import speedup

        model = model.cpu().to(memory_format=torch.channels_last)
        s = speedup(copy.deepcopy(model), model, input_size, args.batch_size)
        print(f"self speed-up {s['speedup']:.3f} (IQR {s['speedup_q1']:.3f}-{s['speedup_q3']:.3f}, {s['rounds']} rounds, "
              f"{s['threads']} thread(s), {'converged' if s['converged'] else 'spread above 5% at the round limit'}); "
              f"{s['base_ms']:.3f} ms vs {s['ms']:.3f} ms per call")
    return 0


@command
def cmd_models(args: argparse.Namespace) -> int:
    import timm

    import models

    for alias, name in models.ALIASES.items():
        print(f"{alias:12s} -> {name}")
    if args.pattern:
        for name in timm.list_models(args.pattern):
            print(name)
    return 0


@command
def cmd_export(args: argparse.Namespace) -> int:
    from bench.deploy.export import FORMATS, export_folder

    formats = FORMATS if args.format == "both" else (args.format,)
    for fmt, path in export_folder(args.folder, formats).items():
        print(f"{fmt}: {path}")
    return 0
