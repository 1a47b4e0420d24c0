"""Command line: `python -m bench <command>`. Every user mistake ends as one line and exit code 2."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence

from .errors import UserError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="resnet20..resnet110, vgg16, or any timm model name")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")


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
    p.add_argument("--checkpoint", default=None, help="your own trained state_dict instead of training")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays on GPUs)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")

    p = sub.add_parser("measure", help="params, FLOPs and latency of an untrained model")
    _common_model_args(p)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1)

    p = sub.add_parser("models", help="list the CIFAR models and their aliases")
    p.add_argument("pattern", nargs="?", default=None, help="a timm wildcard, e.g. 'resnet*', to list timm models too")
    return parser


@command
def cmd_baseline(args: argparse.Namespace) -> int:
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
                     checkpoint=args.checkpoint, device=resolve_device(args.device),
                     channels_last=args.channels_last, compile=args.compile)
    m = b.meta
    how = "cached" if b.cached else m["source"]
    print(f"{b.spec.key} ({how}, {time.perf_counter() - t0:.1f}s): top-1 {m['test']['top1']:.2f}%  "
          f"top-5 {m['test']['top5']:.2f}%  params {m['params'] / 1e6:.3f}M  FLOPs {m['flops'] / 1e6:.2f}M")
    print(f"  stored in {b.path}")
    return 0


@command
def cmd_measure(args: argparse.Namespace) -> int:
    import models

    from .measure import count_flops, count_params, measure_latency
    from .train import resolve_device

    try:
        model = models.create(args.model, num_classes=args.num_classes)
    except models.UnknownModelError as e:
        raise UserError(str(e)) from None
    input_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    device = resolve_device(args.device)
    lat = measure_latency(model.to(device).to(memory_format=__import__("torch").channels_last), input_size, args.batch_size)
    print(json.dumps({"model": models.resolve(args.model), "input_size": input_size, "params": count_params(model),
                      "flops": count_flops(model.cpu(), input_size), "latency_ms": round(lat["median_ms"], 3),
                      "batch_size": args.batch_size, "device": str(device)}, indent=2))
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
