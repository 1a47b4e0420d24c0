"""Command line: `python -m bench <command>`. Every user mistake ends as one line and exit code 2."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bench.core.errors import UserError
from bench.commands import COMMANDS


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


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """`python -m bench` and its -v, before any subcommand is added."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="decore-bench: DECORE and baseline pruners, measured fairly.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser, parser.add_subparsers(dest="command", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser, sub = _top_parser()
    _trial_parsers(sub)
    _sweep_parsers(sub)
    _inspect_parsers(sub)
    _deploy_parsers(sub)
    from bench.checks import commands as checks  # perf, perf-compare, gpu-check
    from bench.deploy import align

    checks.register(sub, COMMANDS)
    align.register(sub, COMMANDS)
    from sweeps import launch  # `launch` (SLURM) and `status`
    launch.register(sub, COMMANDS)
    _finish_help(parser, sub)
    return parser


def _status_parser() -> argparse.ArgumentParser:
    """The parser of `status` alone: it reads a study and squeue, so it loads neither torch nor the methods and
    answers in about a second (a cluster user polls it; build_parser imports every method for its help)."""
    from sweeps.status import add_status_parser

    parser, sub = _top_parser()
    add_status_parser(sub, COMMANDS)
    _finish_help(parser, sub)
    return parser


def _trial_parsers(sub: argparse._SubParsersAction) -> None:
    """`baseline` and `run`: the unpruned model, and one trial on it."""
    p = sub.add_parser("baseline", help="train (or import) the unpruned model once and cache it")
    _common_model_args(p)
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, synthetic or imagefolder:<path>")
    p.add_argument("--recipe", default="cifar-standard", help="a name in bench/engine/recipes/ or a .json path")
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


def _sweep_parsers(sub: argparse._SubParsersAction) -> None:
    """`sweep` and `search`: studies over each method's knob, and the best model under a budget."""
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
    p.add_argument("--no-report", action="store_true",
                   help="leave the report (plots, tables, README) to `python -m bench report`, e.g. for a script that "
                        "runs many sweeps (env BENCH_SWEEP_REPORT=0 where no flag is given)")
    p.add_argument("--scratch-at", type=float, default=None, metavar="FRACTION",
                   help="scratch controls only of each seed's DECORE trial nearest this fraction of the FLOPs removed, "
                        "e.g. 0.5 (default: of every DECORE trial)")
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


def _inspect_parsers(sub: argparse._SubParsersAction) -> None:
    """Commands that read or measure without training: report, retime, groups, paper, measure, models."""
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

    p = sub.add_parser("models", help="list the CIFAR models and their aliases")
    p.add_argument("pattern", nargs="?", default=None, help="a timm wildcard, e.g. 'resnet*', to list timm models too")


# ---------------------------------------------------------------------------------------------- deployment (issue #18)

def _deploy_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a finished trial folder as model.safetensors and model.onnx (checked by onnxruntime)")
    p.add_argument("folder", help="a trial folder holding plan.json + model.pt (RESULTS_DIR/<experiment>/trials/...)")
    p.add_argument("--format", default="both", choices=["onnx", "safetensors", "both"])


def _user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input, raised below the engine (methods and models do not import bench)."""
    import models
    from methods.base import KnobError
    from methods.core import PruningError

    return UserError, KnobError, PruningError, models.UnknownModelError


WRITES_RESULTS = ("baseline", "run", "sweep", "search", "perf")


def _check_results_dir() -> None:
    from bench.core.io import results_dir
    from bench.core.io import check_writable

    check_writable(results_dir())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = (_status_parser() if argv[:1] == ["status"] else build_parser()).parse_args(argv)
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
        if "bench.engine.dist" in sys.modules:  # torchrun: leave the process group cleanly
            sys.modules["bench.engine.dist"].teardown()


if __name__ == "__main__":
    sys.exit(main())
