"""Command line: `python -m bench <command>`. Every user mistake ends as one line and exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="resnet20..resnet110, vgg16, or any timm model name")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")


def _weights_args(p: argparse.ArgumentParser) -> None:
    w = p.add_mutually_exclusive_group()
    w.add_argument("--checkpoint", default=None, help="the baseline is your own trained state_dict (not trained here)")
    w.add_argument("--pretrained", action="store_true",
                   help="the baseline is timm's pretrained weights for --model (downloaded once; a tag picks them, "
                        "e.g. resnet50.tv_in1k for torchvision's), not trained here")


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option's help, and epilogs (the examples) printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.required:  # "(default: None)" says nothing
            return action.help or ""
        return super()._get_help_string(action) or ""


ENVIRONMENT = ("environment: DATA_DIR (default ./data) holds the data sets (CIFAR is downloaded there once); "
               "RESULTS_DIR (default ./results) receives baselines, trials, experiments and reports")

# two examples per command, shown under its --help (`make help` lists the make targets)
EXAMPLES: dict[str, tuple[str, ...]] = {
    "baseline": ("python -m bench baseline --model resnet20 --dataset cifar10 --recipe cpu-tiny",
                 "python -m bench baseline --model resnet56 --dataset cifar10 --checkpoint my_resnet56.pt"),
    "run": ("python -m bench run --model resnet56 --dataset cifar10 --method l1 --knob preset=li2017-B",
            "python -m bench run --model resnet20 --dataset synthetic --method decore --knob lambda=0.5 "
            "--baseline-recipe test-micro --joint-recipe test-micro --finetune-recipe test-micro"),
    "sweep": ("python -m bench sweep --model resnet110 --dataset cifar10 --profile auto",
              "python -m bench sweep --model resnet20 --dataset synthetic --profile demo --methods decore,l1 --match none"),
    "search": ("python -m bench search --model resnet56 --dataset cifar10 --budget flops:0.5",
               "python -m bench search --model resnet20 --dataset synthetic --profile test --budget params:0.6 --trials 2"),
    "report": ("python -m bench report", "python -m bench report results/resnet20-cifar10-cpu-bea263c0"),
    "retime": ("python -m bench retime results/resnet20-cifar10-cpu-bea263c0 && python -m bench report",
               "python -m bench retime --all results/*/"),
    "groups": ("python -m bench groups --model resnet56", "python -m bench groups --model efficientnet_b0 --scope internal"),
    "paper": ("python -m bench paper", "python -m bench paper --results-dir results"),
    "measure": ("python -m bench measure --model resnet110", "python -m bench measure --model vgg16 --self-ratio"),
    "perf": ("python -m bench perf", "python -m bench perf --models resnet20 --max-rounds 5 --processes 1"),
    "perf-compare": ("python -m bench perf-compare results/perf/run-before results/perf",
                     "python -m bench perf-compare a/perf.csv b/perf.csv"),
    "models": ("python -m bench models", "python -m bench models 'resnet*'"),
    "export": ("python -m bench export results/<experiment>/trials/<trial>",
               "python -m bench export results/<experiment>/trials/<trial> --format onnx"),
    "gpu-check": ("python -m bench gpu-check", "python -m bench gpu-check --device cpu"),
}


def _profiles_help() -> str:
    from sweeps.profile import list_profiles

    return ("a profile of sweeps/profiles/ (" + ", ".join(list_profiles()) + ") or auto: the profile that fits this "
            "machine, chosen from rates measured here and said in the plan (`fast` on a GPU). No profile's time on a "
            "GPU has been measured; measured CPU times are in docs/profiles.md, and the plan prints an estimate "
            "measured on this machine before anything trains")


def _methods_help() -> str:
    import methods

    return "one of " + ", ".join(sorted(methods.METHODS)) + " (docs/methods.md)"


def _finish_help(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """Every parser shows its defaults; every command two examples and the environment it reads."""
    parser.formatter_class = _Help
    parser.epilog = ENVIRONMENT + "\n\nexamples:\n  python -m bench sweep --help\n  make demo"
    for name, p in sub.choices.items():
        p.formatter_class = _Help
        lines = [f"  {e}" for e in EXAMPLES.get(name, ())]
        p.epilog = ("examples:\n" + "\n".join(lines) + "\n\n" if lines else "") + ENVIRONMENT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="decore-bench: DECORE and baseline pruners, measured fairly.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("baseline", help="train (or import) the unpruned model once and cache it")
    _common_model_args(p)
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, synthetic or imagefolder:<path>")
    p.add_argument("--recipe", default="cifar-standard", help="a name in bench/recipes/ or a .json path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=int, default=None, metavar="N", help="N training images per class (default: the recipe's)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    _weights_args(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays on GPUs)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")

    p = sub.add_parser("run", help="one trial: baseline -> method -> removal -> fine-tune -> measure")
    _common_model_args(p)
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, synthetic or imagefolder:<path>")
    p.add_argument("--method", required=True, help=_methods_help())
    p.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="a method knob or option, e.g. lambda=2, ratio=0.5, flops_target=0.6, preset=li2017-B")
    p.add_argument("--scope", default=None, choices=["internal", "all"], help="default: the method's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-recipe", default="cifar-standard")
    p.add_argument("--joint-recipe", default="finetune-cifar", help="DECORE's joint training phase")
    p.add_argument("--finetune-recipe", default="finetune-cifar", help="the same for every method")
    p.add_argument("--round-to", default="1", help="round kept channels up to a multiple (beyond the papers), or "
                   "auto: the multiple `bench align` measures fastest for this model and device")
    p.add_argument("--deploy-form", default="eager", choices=["eager", "folded", "onnxruntime"],
                   help="the form pruned models are deployed in: speed-ups are timed in it and --round-to auto "
                        "aligns for it (default eager: PyTorch, channels_last)")
    p.add_argument("--label", default="custom", help="experiment label: the trial goes to RESULTS_DIR/<model>-<dataset>-<label>-<hash>/")
    p.add_argument("--budget", default="equal", choices=["equal", "paper"],
                   help="equal (default): every method trains for the same images after the baseline; paper: each "
                        "paper's own schedule (unequal, labelled so)")
    p.add_argument("--selection", default="val", choices=["val", "test", "val-test"],
                   help="val (default): decisions read a hold-out of the training set; test: the papers' practice")
    p.add_argument("--compile", action="store_true", help="torch.compile the method's training and the fine-tuning (pays on GPUs)")
    _weights_args(p)

    p = sub.add_parser("sweep", help="Optuna studies over each method's knob: the Pareto fronts (make bench)")
    _common_model_args(p)
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, synthetic or imagefolder:<path>")
    p.add_argument("--profile", default="smoke", help=_profiles_help() + "; on a CPU where none fits, smoke with fewer trials")
    p.add_argument("--methods", default="decore,l1,random", help="comma-separated, each " + _methods_help())
    p.add_argument("--trials", type=int, default=None, help="trials per method (default: the profile's; "
                   "always obeyed, also under --profile auto)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per suggested knob value (baseline included)")
    p.add_argument("--storage", default=os.environ.get("BENCH_STORAGE") or None, help="Optuna storage URL (or env BENCH_STORAGE, which keeps a password off the command line): sqlite:///f.db (default, in the experiment "
                   "folder), postgresql://user@host/db, journal:path.log")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--scope", default=None, choices=["internal", "all"], help="default: each method's")
    p.add_argument("--match", default="decore", choices=["decore", "none"],
                   help="decore (default): the other methods also run at every DECORE trial's FLOPs; none: off")
    p.add_argument("--control", default="keep",
                   help="controls, comma-separated: keep (default: the baseline trained on for the same budget, no "
                        "pruning), scratch-b and scratch-e (Liu et al. 2019's controls of every DECORE trial: its "
                        "architecture re-initialised and trained from scratch for the baseline's images x FLOPs_base / "
                        "FLOPs_pruned (B) or the baseline's images (E)), none")
    p.add_argument("--budget", default="equal", choices=["equal", "paper"],
                   help="equal (default): every method trains for the same images after the baseline; paper: each "
                        "paper's own schedule (unequal, labelled so)")
    p.add_argument("--selection", default="val", choices=["val", "test", "val-test"],
                   help="val (default): decisions read a hold-out of the training set; test: the papers' practice")
    p.add_argument("--round-to", default="1", help="round every plan's kept channels up to a multiple (beyond the "
                   "papers; default 1: none), or auto: the multiple `bench align` measures fastest per FLOPs removed "
                   "for this model and device in the --deploy-form form")
    p.add_argument("--deploy-form", default="eager", choices=["eager", "folded", "onnxruntime"],
                   help="the form pruned models are deployed in: speed-ups are timed in it and --round-to auto "
                        "aligns for it (default eager: PyTorch, channels_last)")
    p.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "off"])
    p.add_argument("--compile", action="store_true", help="torch.compile training (pays on GPUs; models of one "
                   "architecture reuse the compiled graph across trials)")
    _weights_args(p)

    p = sub.add_parser("search", help="the most accurate pruned model per method under a budget (make search)")
    _common_model_args(p)
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, synthetic or imagefolder:<path>")
    p.add_argument("--profile", default="smoke", help=_profiles_help())
    p.add_argument("--budget", required=True, help="flops:0.5 or params:0.4 (fractions of the baseline), flops:60M, "
                   "params:0.4M, latency_ms:2.5 (measured on this device)")
    p.add_argument("--methods", default="decore,l1,random", help="comma-separated, each " + _methods_help())
    p.add_argument("--trials", type=int, default=None, help="trials per method (default: the profile's)")
    p.add_argument("--storage", default=os.environ.get("BENCH_STORAGE") or None, help="Optuna storage URL (default: the experiment's sqlite file)")
    p.add_argument("--scope", default=None, choices=["internal", "all"], help="default: each method's")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                   help="stops hopeless trials on their validation top-1 after each fine-tune epoch")
    p.add_argument("--decore-per-stage", action="store_true", help="also search one lambda factor per stage (beyond the paper)")
    p.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "off"])
    _weights_args(p)

    p = sub.add_parser("report", help="Pareto plots, paper-style tables and README of stored results (no training)")
    p.add_argument("experiments", nargs="*", help="experiment folders (default: every RESULTS_DIR/*/runs.csv)")

    p = sub.add_parser("retime", help="time stored trials' speed-ups again, alone, from their kept channels (then report)")
    p.add_argument("experiments", nargs="+", help="experiment folders")
    p.add_argument("--all", action="store_true", help="every complete trial, not only those not yet timed alone "
                   "(or timed in another form)")
    p.add_argument("--deploy-form", default="eager", choices=["eager", "folded", "onnxruntime"],
                   help="the form to time them in (default eager: PyTorch, channels_last)")

    p = sub.add_parser("groups", help="the channel groups of a model, and what keeping a fraction of each gives")
    _common_model_args(p)
    p.add_argument("--scope", default="all", choices=["internal", "all"])
    p.add_argument("--keep", type=float, default=0.5, help="fraction of every group kept for the check")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=None, help="default: the model's")

    p = sub.add_parser("paper", help="DECORE's tables from every stored experiment beside the published rows (make paper)")
    p.add_argument("--results-dir", default=None, help="default: RESULTS_DIR")

    p = sub.add_parser("measure", help="params, FLOPs and latency of an untrained model")
    _common_model_args(p)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--self-ratio", action="store_true",
                   help="also time the model against a copy of itself with the trials' speed-up measurement "
                        "(interleaved, one thread): a check of that measurement, which should give 1.00")

    p = sub.add_parser("perf", help="benchmark: training loops, DECORE's gated step, pruned-model speed (make perf)")
    p.add_argument("--models", default="resnet20,resnet56,resnet110", help="comma-separated CIFAR models")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per variant and round, each variant's "
                   "beside a harness timing of as many steps")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds at least; reported values are medians")
    p.add_argument("--max-rounds", type=int, default=12, help="rounds at most per model and section (more until "
                   "every ratio's IQR is within 3%% of its median)")
    p.add_argument("--max-seconds", type=float, default=240.0, help="no new round after this many seconds per model "
                   "and section")
    p.add_argument("--flops-targets", default="0.7,0.5,0.3", help="kept FLOPs fractions of the pruned models")
    p.add_argument("--round-to", default="8,16", help="also measure every plan with kept channels rounded to these multiples")
    p.add_argument("--train-round-to", default="1,16", help="the alignments whose plans the training section times too")
    p.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--compile", action="store_true", help="also measure the harness step under torch.compile")
    p.add_argument("--compile-models", default="resnet20,resnet56", help="the models whose steps --compile measures")
    p.add_argument("--processes", type=int, default=3, help="split each model's rounds among this many fresh "
                   "processes (one after another), so the spreads include the differences between processes")
    p.add_argument("--out", default=None, help="output folder (default RESULTS_DIR/perf)")

    p = sub.add_parser("perf-readme", help="write a perf folder's README.md from its runs (newest, run-before/, earlier)")
    p.add_argument("folder", nargs="?", default=None, help="the perf folder (default RESULTS_DIR/perf)")

    p = sub.add_parser("perf-compare", help="do two `make perf` runs agree? every ratio against the printed spreads")
    p.add_argument("run1", help="perf.csv, or the folder holding it")
    p.add_argument("run2", help="perf.csv, or the folder holding it")

    p = sub.add_parser("models", help="list the CIFAR models and their aliases")
    p.add_argument("pattern", nargs="?", default=None, help="a timm wildcard, e.g. 'resnet*', to list timm models too")
    _deploy_parsers(sub)
    from . import align
    align.register(sub, COMMANDS)
    from sweeps import launch  # `launch` (SLURM) and `status`
    launch.register(sub, COMMANDS)
    _finish_help(parser, sub)
    return parser


@command
def cmd_baseline(args: argparse.Namespace) -> int:
    from . import dist
    from .baseline import get_baseline
    from .recipe import load_recipe
    from .train import resolve_device

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
    from sweeps.study import run_sweep

    from . import dist

    if dist.launched():
        raise UserError("sweep does not run under torchrun: start the sweep with python -m bench, or run single "
                        "trials with torchrun ... -m bench run")
    folder = run_sweep(sweep_config(args))
    print(f"results: {folder / 'runs.csv'}")
    return 0


def sweep_config(args: argparse.Namespace):
    """The SweepConfig of `sweep`'s arguments (also `launch`'s), --profile auto resolved on this machine."""
    from sweeps.study import SweepConfig

    profile = args.profile
    if profile == "auto":
        from sweeps.study import choose_profile
        from .train import resolve_device

        probe = SweepConfig(args.model, args.dataset, "smoke", tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                            args.trials, args.seeds, selection=args.selection, budget=args.budget)
        profile, args.trials, line = choose_profile(probe, resolve_device(args.device))
        print(line)
    round_to, alignment = _round_to(args)
    cfg = SweepConfig(args.model, args.dataset, profile, tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                      args.trials, args.seeds, args.storage, args.workers, args.device, args.scope,
                      None if args.match == "none" else args.match, round_to, args.wandb, compile=args.compile,
                      alignment=alignment, deploy_form=args.deploy_form,
                      budget=args.budget, selection=args.selection, **_controls(args.control),
                      pretrained=args.pretrained, checkpoint=args.checkpoint)
    return cfg


def _round_to(args: argparse.Namespace) -> tuple[int, dict | None]:
    """--round-to as a number, `auto` resolved by measurement (bench.align; its record reused from RESULTS_DIR/align/)."""
    if str(args.round_to) == "auto":
        from . import align
        from .train import resolve_device

        record = align.auto(args.model, resolve_device(args.device), args.deploy_form)
        print(record.line())
        return record.chosen, dataclasses.asdict(record)
    try:
        value = int(args.round_to)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"--round-to {args.round_to!r} is not a whole number of at least 1 nor auto: use e.g. 8, or auto")
    return value, None


@command
def cmd_search(args: argparse.Namespace) -> int:
    from sweeps.search import SearchConfig, run_search

    if args.profile == "auto":  # the same choice as `sweep --profile auto` (on a CPU never the GPU profile `fast`)
        from sweeps.study import SweepConfig, choose_profile
        from .train import resolve_device

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
    from .baseline import results_dir
    from .report import report_experiment

    folders = [Path(f) for f in args.experiments] or sorted(p.parent for p in results_dir().glob("*/runs.csv"))
    if not folders:
        raise UserError(f"no experiment with a runs.csv under {str(results_dir())!r}: run `make bench` first or set RESULTS_DIR")
    for folder in folders:
        if not (folder / "runs.csv").is_file():
            raise UserError(f"{str(folder)!r} holds no runs.csv: pass an experiment folder such as results/resnet20-cifar10-smoke")
        written = report_experiment(folder)
        print(f"{folder}: {', '.join(sorted(p.name for p in written.values()))}")
    from .site import write_site

    write_site(results_dir() if not args.experiments else folders[0].parent)
    print(f"site: {results_dir() if not args.experiments else folders[0].parent}/index.html")
    return 0


@command
def cmd_retime(args: argparse.Namespace) -> int:
    from .retime import retime

    for folder in map(Path, args.experiments):
        if not (folder / "runs.csv").is_file():
            raise UserError(f"{str(folder)!r} holds no runs.csv: pass an experiment folder such as results/resnet20-cifar10-smoke")
        print(f"{folder}: {retime(folder, force=args.all, form=args.deploy_form)} trial(s) timed alone "
              f"({args.deploy_form}); `python -m bench report {folder}` "
              "writes the tables again")
    return 0


def _controls(text: str) -> dict[str, Any]:
    names = {c.strip() for c in text.split(",") if c.strip()}
    unknown = names - {"keep", "scratch-b", "scratch-e", "none"}
    if unknown or not names or ("none" in names and len(names) > 1):
        raise UserError(f"--control {text!r} is not a list of keep, scratch-b, scratch-e (or none): "
                        "e.g. --control keep,scratch-b,scratch-e")
    return {"control": "keep" in names, "scratch": tuple(sorted(names & {"scratch-b", "scratch-e"}))}


@command
def cmd_paper(args: argparse.Namespace) -> int:
    from .baseline import results_dir
    from .paper import write_paper

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
    from . import dist, train
    from .trial import TrialConfig, measure_speedup, run_trial, trial_folder
    from .train import resolve_device

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

    from .measure import count_flops, count_params

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

    from .measure import count_flops, count_params, measure_latency
    from .train import prepare_model, resolve_device

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

        from .measure import speedup

        model = model.cpu().to(memory_format=torch.channels_last)
        s = speedup(copy.deepcopy(model), model, input_size, args.batch_size)
        print(f"self speed-up {s['speedup']:.3f} (IQR {s['speedup_q1']:.3f}-{s['speedup_q3']:.3f}, {s['rounds']} rounds, "
              f"{s['threads']} thread(s), {'converged' if s['converged'] else 'spread above 5% at the round limit'}); "
              f"{s['base_ms']:.3f} ms vs {s['ms']:.3f} ms per call")
    return 0


@command
def cmd_perf(args: argparse.Namespace) -> int:
    import models

    from . import perf
    from .baseline import results_dir
    from .train import resolve_device

    names = tuple(m.strip() for m in args.models.split(",") if m.strip())
    for name in names:
        models.resolve(name)  # unknown names fail here, before anything is measured
    try:
        targets = tuple(float(t) for t in args.flops_targets.split(",") if t.strip())
    except ValueError:
        raise UserError(f"--flops-targets {args.flops_targets!r} is not a list of numbers: use e.g. 0.7,0.5,0.3") from None
    bad = [t for t in targets if not 0 < t < 1]
    if bad or not names:
        raise UserError(f"--flops-targets {bad} must lie in (0, 1) and --models must name at least one model")
    try:
        round_to = tuple(int(r) for r in args.round_to.split(",") if r.strip())
    except ValueError:
        raise UserError(f"--round-to {args.round_to!r} is not a list of whole numbers: use e.g. 8,16") from None
    try:
        train_round_to = tuple(int(r) for r in args.train_round_to.split(",") if r.strip())
    except ValueError:
        raise UserError(f"--train-round-to {args.train_round_to!r} is not a list of whole numbers: use e.g. 1,16") from None
    for flag, value in (("--batch-size", args.batch_size), ("--steps", args.steps), ("--rounds", args.rounds),
                        ("--max-rounds", args.max_rounds), ("--max-seconds", args.max_seconds),
                        ("--processes", args.processes),
                        ("--round-to", min(round_to, default=1)), ("--train-round-to", min(train_round_to, default=1))):
        if value < 1:
            raise UserError(f"{flag} {value} must be at least 1")
    cfg = perf.PerfConfig(models=names, batch_size=args.batch_size, steps=args.steps, rounds=args.rounds,
                          max_rounds=args.max_rounds, max_seconds=args.max_seconds,
                          flops_targets=targets, round_to=round_to, train_round_to=train_round_to, ref_workers=max(args.ref_workers, 0),
                          device=resolve_device(args.device), compile=args.compile, processes=args.processes,
                          compile_models=tuple(m.strip() for m in args.compile_models.split(",") if m.strip()))
    out = Path(args.out) if args.out else results_dir() / "perf"
    csv, md = perf.run(cfg, out, "python -m bench " + " ".join(sys.argv[1:]))
    print(Path(md).read_text())
    print(f"wrote {csv} and {md}")
    return 0


def cmd_perf_compare(args: argparse.Namespace) -> int:
    from . import perf

    a, b = perf.read_perf(args.run1), perf.read_perf(args.run2)
    m = perf.compare(a, b)
    print(perf.compare_text(m, int((a["unit"] == "ratio").sum()), int((b["unit"] == "ratio").sum())))
    return 0


COMMANDS["perf-compare"] = cmd_perf_compare


def cmd_perf_readme(args: argparse.Namespace) -> int:
    from .baseline import results_dir
    from .perf_summary import write_readme

    print(f"wrote {write_readme(Path(args.folder) if args.folder else results_dir() / 'perf')}")
    return 0


COMMANDS["perf-readme"] = cmd_perf_readme


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


# ---------------------------------------------------------------------------------------------- deployment (issue #18)

def _deploy_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a finished trial folder as model.safetensors and model.onnx (checked by onnxruntime)")
    p.add_argument("folder", help="a trial folder holding plan.json + model.pt (RESULTS_DIR/<experiment>/trials/...)")
    p.add_argument("--format", default="both", choices=["onnx", "safetensors", "both"])

    p = sub.add_parser("gpu-check", help="every CUDA path in one short run -> RESULTS_DIR/perf/gpu.md (make gpu-check)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cpu (the reduced CPU form)")
    p.add_argument("--reduced", action="store_true", help="tiny sizes and synthetic data (what the CPU form always uses)")
    p.add_argument("--out", default=None, help="output folder (default RESULTS_DIR/perf)")


@command
def cmd_export(args: argparse.Namespace) -> int:
    from .export import FORMATS, export_folder

    formats = FORMATS if args.format == "both" else (args.format,)
    for fmt, path in export_folder(args.folder, formats).items():
        print(f"{fmt}: {path}")
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from . import gpucheck
    from .baseline import results_dir
    from .train import resolve_device

    _check_results_dir()
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else results_dir() / "perf"
    md, ok = gpucheck.run(device, out, reduced=args.reduced or device.type != "cuda")
    print(Path(md).read_text())
    print(f"wrote {md}" + ("" if ok else " (some checks failed: see the table)"))
    return 0 if ok else 1


COMMANDS["gpu-check"] = cmd_gpu_check  # the subcommand's name has a dash


def _user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input, raised below the engine (methods and models do not import bench)."""
    import models
    from methods.base import KnobError
    from methods.core import PruningError

    return UserError, KnobError, PruningError, models.UnknownModelError


WRITES_RESULTS = ("baseline", "run", "sweep", "search", "perf")


def _check_results_dir() -> None:
    from .baseline import results_dir
    from .io import check_writable

    check_writable(results_dir())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in WRITES_RESULTS:
            _check_results_dir()
        return COMMANDS[args.command](args)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if "bench.dist" in sys.modules:  # torchrun: leave the process group cleanly
            sys.modules["bench.dist"].teardown()


if __name__ == "__main__":
    sys.exit(main())
