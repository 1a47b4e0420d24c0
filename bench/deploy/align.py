"""Channel alignment chosen by measurement: `bench align` and `--round-to auto`.

Rounding every group's kept channels up to a multiple (the named option `round_to`, beyond the papers)
removes fewer FLOPs, but a width that is a multiple of what the device's kernels favour can run faster: on
this CPU, `results/perf/perf.md` measured unaligned 50% plans slower than the unpruned graph in onnxruntime.
Which multiple pays depends on the model, the device and the deploy form, so it is measured, not assumed:

1. For each candidate multiple, the L1 plan that keeps one fraction of the FLOPs (default 0.5, within 1%; the
   nearest uniform ratio where rounding makes that unreachable) with its kept counts rounded up to that multiple
   is pruned from the untrained model (latency depends on the widths only): the candidates differ in their
   widths, not in the work they keep.
2. Each pruned model and the unpruned one are built in the deploy form (`eager`: inference mode,
   channels_last; `folded`: BatchNorm folded; `onnxruntime`: exported, every graph optimisation on) and timed
   interleaved: each round times the unpruned model and every candidate, the order rotating between rounds,
   and a candidate's speed-up is the median over rounds of the unpruned time / its time in the same round.
3. Its efficiency is that speed-up over its FLOPs promise (unpruned FLOPs / pruned FLOPs): 1.0 means the
   FLOPs removed turned fully into speed. The choice is the candidate of highest median efficiency among those
   that keep the target's FLOPs within 2 points (a multiple too coarse for the target keeps more work), the
   smaller multiple on a tie.

The record (candidates with FLOPs, speed-up and quartiles, the choice, form, batch, device, CPU, versions)
is written as JSON; a sweep with `--round-to auto` reuses the record of its model, device and form from
RESULTS_DIR/align/ (or measures and writes it), records it in its experiment.json and runs with the chosen
multiple (the experiment's identity holds the number, so `auto` and the same number typed by hand share it).
"""
from __future__ import annotations

import copy
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.deploy.forms import FORMS
from bench.core.errors import UserError
from bench.core.io import read_json, write_json

CANDIDATES = (1, 4, 8, 16, 32)
ALIGN_VERSION = 1


@dataclass
class Alignment:
    model: str
    device: str
    form: str
    batch: int
    flops_target: float  # the fraction of the unpruned FLOPs every candidate's plan keeps
    rounds: int
    cpu: str
    torch: str
    candidates: list[dict[str, Any]] = field(default_factory=list)  # round_to, flops, speedup (+ q1, q3), efficiency
    chosen: int = 1
    version: int = ALIGN_VERSION

    def line(self) -> str:
        best = next(c for c in self.candidates if c["round_to"] == self.chosen)
        plain = next((c for c in self.candidates if c["round_to"] == 1), None)
        vs = f" (round_to 1: speed-up {plain['speedup']:.2f}x, efficiency {plain['efficiency']:.2f})" if plain and self.chosen != 1 else ""
        return (f"alignment for {self.model} on {self.device}, {self.form} form, batch {self.batch}: round_to {self.chosen} "
                f"(plans keeping {self.flops_target:.0%} of the FLOPs: speed-up {best['speedup']:.2f}x at {best['flops_kept']:.0%} FLOPs kept, "
                f"efficiency {best['efficiency']:.2f}){vs}")


def parse_candidates(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise UserError(f"--candidates {text!r} is not a list of whole numbers: use e.g. 1,8,16") from None
    if not values or min(values) < 1:
        raise UserError(f"--candidates {text!r} needs multiples of at least 1: use e.g. 1,8,16")
    return values


def _runner(form: str, model: torch.nn.Module, size: tuple[int, ...], device: torch.device):
    """A timer of `model` as deployed in `form` (bench.deploy.forms.in_form's forms; onnxruntime on the CPU only)."""
    from bench.deploy.forms import OnnxRunner, TorchRunner, fold_bn

    if form == "onnxruntime" and device.type != "cpu":
        raise UserError(f"form onnxruntime runs on the CPU here, not on {device}: use --form eager or folded")
    if form == "onnxruntime":
        return OnnxRunner(model, size)
    return TorchRunner(fold_bn(model) if form == "folded" else copy.deepcopy(model), size, device)


def l1_plans(name: str, base: torch.nn.Module, size: tuple[int, ...], variants: list[tuple[float, int]]
             ) -> list[tuple[float, int, dict, int]]:
    """(target, round_to, plan, FLOPs) for each (target, round_to): the L1 plan keeping `target` of the FLOPs
    (within 1%) with its kept counts rounded up to the multiple; where rounding makes the target unreachable,
    the uniform ratio whose FLOPs come closest. Shared by `bench align` and `make perf`."""
    import methods
    from methods.core import channel_groups, prune_model

    from bench.engine.measure import profile_model

    groups = channel_groups(base, torch.randn(1, *size), "all", name=name)
    cost = lambda plan: profile_model(prune_model(base, plan), size)  # noqa: E731
    base_flops = cost(methods.Context(base, groups, name, {}, size, torch.device("cpu")).plan({}))["flops"]
    l1 = methods.get_method("l1")
    out = []
    for target, r in variants:
        ctx = methods.Context(base, groups, name, {"num_classes": 10}, size, torch.device("cpu"), plan_cost=cost, round_to=r)
        try:
            plan = l1.select(ctx, flops_target=target).plan
        except methods.KnobError:
            plans = [l1.select(ctx, ratio=k / 100).plan for k in range(5, 96, 2)]
            plan = min(plans, key=lambda p: abs(cost(p)["flops"] / base_flops - target))
        out.append((target, r, plan, cost(plan)["flops"]))
    return out


def _plans(name: str, base: torch.nn.Module, size: tuple[int, ...], target: float, candidates: tuple[int, ...]):
    """round_to -> (pruned model, FLOPs) of every candidate's plan at `target` (see l1_plans)."""
    from methods.core import prune_model

    return {r: (prune_model(base, plan), flops) for _, r, plan, flops in l1_plans(name, base, size, [(target, r) for r in candidates])}


def measure(model: str, device: torch.device, form: str = "folded", batch: int = 64, target: float = 0.5,
            candidates: tuple[int, ...] = CANDIDATES, rounds: int = 7, repeats: int = 3, num_classes: int = 10,
            input_size: tuple[int, ...] = (3, 32, 32), progress: bool = True) -> Alignment:
    """Time every candidate's plan against the unpruned model in `form` (see the module's docstring)."""
    import models
    from tqdm.auto import tqdm

    from bench.engine.measure import count_flops
    from bench.core.env import cpu_model

    if form not in FORMS:
        raise UserError(f"--form {form!r} is unknown: use one of {', '.join(FORMS)}")
    if not 0 < target < 1:
        raise UserError(f"--flops-target {target} must lie in (0, 1): the fraction of the FLOPs the plans keep, e.g. 0.5")
    name = models.resolve(model)
    torch.manual_seed(0)
    base = models.create(model, num_classes=num_classes).eval()
    base_flops = count_flops(base, input_size)
    plans = _plans(name, base, input_size, target, candidates)
    runners = {"base": _runner(form, base, input_size, device),
               **{r: _runner(form, m, input_size, device) for r, (m, _) in plans.items()}}
    for run in runners.values():  # warm-up: allocator, kernel choice, onnxruntime's first calls
        run.latency_ms(batch, 2, 1)
    ups: dict[int, list[float]] = {r: [] for r in plans}
    for k in tqdm(range(rounds), desc=f"align {name} {form}", unit="round", disable=not progress or None):
        keys = list(runners)
        keys = keys[k % len(keys):] + keys[:k % len(keys)]  # the order rotates between rounds
        ms = {key: runners[key].latency_ms(batch, 0, repeats) for key in keys}
        for r in plans:
            ups[r].append(ms["base"] / ms[r])
    rows = []
    for r, (_, flops) in plans.items():
        q = statistics.quantiles(ups[r], n=4) if len(ups[r]) > 1 else [ups[r][0]] * 3
        up = statistics.median(ups[r])
        rows.append({"round_to": r, "flops": flops, "flops_kept": flops / base_flops, "speedup": up,
                     "speedup_q1": q[0], "speedup_q3": q[2], "efficiency": up * flops / base_flops})
    chosen = choose(rows, target)
    return Alignment(name, device_label(device), form, batch, target, rounds, cpu_model(), torch.__version__, rows, chosen)


ON_TARGET = 0.02  # a candidate counts when its FLOPs kept lie within 2 points of the target (equal work)


def choose(rows: list[dict[str, Any]], target: float | None = None) -> int:
    """The candidate of highest median efficiency among those that keep the target's FLOPs (a multiple too coarse
    to reach it keeps more work, and would win on efficiency by pruning less); the smaller multiple on a tie
    (closer to the paper's plan). round_to 1 reaches every target (within 1%)."""
    fair = [c for c in rows if target is None or abs(c["flops_kept"] - target) <= ON_TARGET] or rows
    return max(fair, key=lambda c: (round(c["efficiency"], 6), -c["round_to"]))["round_to"]


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def record_path(model: str, device: torch.device, form: str, batch: int, root: str | Path | None = None) -> Path:
    import models

    root = Path(root or os.environ.get("RESULTS_DIR", "results"))
    tag = "".join(ch if ch.isalnum() else "-" for ch in device_label(device)).strip("-").lower()
    return root / "align" / f"{models.resolve(model)}-{tag}-{form}-b{batch}.json"


def write(alignment: Alignment, path: str | Path) -> Path:
    return write_json(path, asdict(alignment))


def read(path: str | Path) -> Alignment:
    data = read_json(path)
    if data.get("version") != ALIGN_VERSION:
        raise UserError(f"{path} is an alignment record of version {data.get('version')!r}, not {ALIGN_VERSION}: "
                        "delete it to measure again")
    return Alignment(**data)


def auto(model: str, device: torch.device, form: str = "folded", batch: int = 64) -> Alignment:
    """The alignment record of (model, device, form, batch) from RESULTS_DIR/align/, measured once when missing
    (or when it was measured on another CPU model or torch version: a device label alone does not tell CPUs apart)."""
    from bench.core.env import cpu_model

    path = record_path(model, device, form, batch)
    if path.is_file():
        record = read(path)
        if (record.cpu, record.torch) == (cpu_model(), torch.__version__) or device.type == "cuda":
            return record
        print(f"{path} was measured on {record.cpu} (torch {record.torch}): measuring again here")
    alignment = measure(model, device, form, batch)
    write(alignment, path)
    return alignment


def register(sub, commands: dict) -> None:
    """The `align` subcommand (called once from bench.cli.build_parser)."""
    p = sub.add_parser("align", help="which round_to makes pruned models fastest for a model, device and deploy form "
                       "(measured; --round-to auto uses it)")
    p.add_argument("--model", required=True, help="a CIFAR model (resnet56) or a timm name")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--form", default="folded", choices=FORMS, help="the deploy form timed (default folded)")
    p.add_argument("--batch", type=int, default=64, help="images per call (default 64)")
    p.add_argument("--flops-target", type=float, default=0.5, help="fraction of the FLOPs every candidate's L1 plan keeps")
    p.add_argument("--candidates", default=",".join(map(str, CANDIDATES)), help="round_to multiples to compare")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the speed-ups are their medians)")
    p.add_argument("--out", default=None, help="the JSON record (default RESULTS_DIR/align/<model>-<device>-<form>-b<batch>.json)")
    commands["align"] = cmd_align


def cmd_align(args) -> int:
    from bench.engine.train import resolve_device

    if args.batch < 1 or args.rounds < 1:
        raise UserError(f"--batch {args.batch} and --rounds {args.rounds} must be at least 1")
    device = resolve_device(args.device)
    alignment = measure(args.model, device, args.form, args.batch, args.flops_target, parse_candidates(args.candidates),
                        args.rounds, num_classes=args.num_classes)
    print(f"{'round_to':>8s} {'FLOPs kept':>10s} {'speed-up (IQR)':>16s} {'efficiency':>10s}")
    for c in alignment.candidates:
        print(f"{c['round_to']:8d} {c['flops_kept']:10.1%} {c['speedup']:8.2f}x ({c['speedup_q3'] - c['speedup_q1']:.2f})"
              f" {c['efficiency']:10.2f}")
    print(alignment.line())
    path = write(alignment, args.out or record_path(args.model, device, args.form, args.batch))
    print(f"wrote {path}")
    return 0
