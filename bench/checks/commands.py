"""The checks' subcommands: `perf`, `perf-compare` and `gpu-check` (registered by bench.cli.build_parser)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bench.core.errors import UserError
from bench.core.io import check_writable, results_dir


def register(sub: argparse._SubParsersAction, commands: dict[str, Callable[[argparse.Namespace], int]]) -> None:
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
    p = sub.add_parser("gpu-check", help="every CUDA path in one short run -> RESULTS_DIR/perf/gpu.md (make gpu-check)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cpu (the reduced CPU form)")
    p.add_argument("--reduced", action="store_true", help="tiny sizes and synthetic data (what the CPU form always uses)")
    p.add_argument("--out", default=None, help="output folder (default RESULTS_DIR/perf)")
    commands.update({"perf": cmd_perf, "perf-compare": cmd_perf_compare, "perf-readme": cmd_perf_readme,
                     "gpu-check": cmd_gpu_check})


def cmd_perf(args: argparse.Namespace) -> int:
    import models

    from bench.checks import perf, timing
    from bench.engine.train import resolve_device

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
    cfg = timing.PerfConfig(models=names, batch_size=args.batch_size, steps=args.steps, rounds=args.rounds,
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
    from bench.checks import perf_report

    a, b = perf_report.read_perf(args.run1), perf_report.read_perf(args.run2)
    m = perf_report.compare(a, b)
    print(perf_report.compare_text(m, int((a["unit"] == "ratio").sum()), int((b["unit"] == "ratio").sum())))
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from bench.checks import gpucheck
    from bench.engine.train import resolve_device

    check_writable(results_dir())
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else results_dir() / "perf"
    md, ok = gpucheck.run(device, out, reduced=args.reduced or device.type != "cuda")
    print(Path(md).read_text())
    print(f"wrote {md}" + ("" if ok else " (some checks failed: see the table)"))
    return 0 if ok else 1


def cmd_perf_readme(args: argparse.Namespace) -> int:
    from bench.checks.perf_summary import write_readme

    print(f"wrote {write_readme(Path(args.folder) if args.folder else results_dir() / 'perf')}")
    return 0
