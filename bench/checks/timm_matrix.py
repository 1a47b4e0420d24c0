"""The timm CNN matrix: one representative of every timm model module that builds a convolutional network,
its channel groups and a random 50% trial on the synthetic set (make timm-matrix -> results/timm-matrix/).

Which modules count (the rule, in code): a module's representative is its registered model with the fewest
parameters (built on the meta device, no weights); the module is a CNN family when that model has at least
`MIN_SPATIAL_CONVS` convolutions with a spatial kernel (a vision transformer has one, its patch embedding)
and no token-attention layer (`_is_attention`: nn.MultiheadAttention, a class named *Attention*, or an *Attn*
class with query-key layers; channel attention such as squeeze-excitation, selective kernels or split
attention is part of many CNNs).

Each model runs in its own process under a time limit: build it (num_classes 10, no pretrained weights),
perturb its norm statistics so a wrong gate shows, find its channel groups at 32x32 (the synthetic set's
size; the smallest of SIZES the model runs at, with the images resized, for stems that need more), select a random half of every group's units (the `random` method, ratio 0.5, seed 0), gate the
synthetic test images with that plan and compare with the physically pruned network, and count params and
FLOPs before and after. The groups found have passed the removal check (methods/core/verify.py): groups a
construct cannot take are excluded, and the row's note names the constructs (`checked_out`). A model either
runs, or is refused with the one-line reason (PruningError: nothing prunable left, the construct named), or
fails (a traceback, a gate-vs-removal error above TOLERANCE or the time limit: defects to fix, never results).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COLUMNS = ("family", "model", "status", "size", "groups", "excluded", "units", "gate_vs_removal", "params", "params_pruned",
           "flops", "flops_pruned", "seconds", "reason")
MIN_SPATIAL_CONVS = 4
SIZE = 32
QK_LAYERS = ("qkv", "q", "k", "kv", "qk", "to_qkv")
SIZES = (32, 64, 96, 128, 160, 224, 299)  # the first a model runs at (the synthetic images are resized)
TOLERANCE = 1e-4  # gate vs removal, relative: beyond it the row is a failure


def _meta_model(name: str):
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=10)


def _is_attention(module) -> bool:
    """Token attention: nn.MultiheadAttention, a class named *Attention*, or an *Attn* class with query-key
    layers. timm's *Attn classes without them are channel attention inside CNNs (SelectiveKernelAttn,
    SplitAttn, CBAM's ChannelAttn), as is squeeze-excitation."""
    import torch.nn as nn

    kind = type(module).__name__.lower()
    return (isinstance(module, nn.MultiheadAttention) or "attention" in kind
            or ("attn" in kind and any(hasattr(module, a) for a in QK_LAYERS)))


def _is_cnn(model) -> bool:
    import torch.nn as nn

    spatial = sum(isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 for m in model.modules())
    return spatial >= MIN_SPATIAL_CONVS and not any(_is_attention(m) for m in model.modules())


def representatives() -> dict[str, str]:
    """timm module -> its smallest registered model, for every module whose smallest model is a CNN."""
    import timm

    out = {}
    for module in sorted(timm.list_modules()):
        sized = []
        for name in timm.list_models(module=module):
            try:
                model = _meta_model(name)
            except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device is not a candidate
                continue
            sized.append((sum(p.numel() for p in model.parameters()), name, model))
        if sized:
            _, name, model = min(sized, key=lambda t: (t[0], t[1]))
            if _is_cnn(model):
                out[module] = name
    return out


def probe(name: str, batch: int = 8) -> dict[str, Any]:
    """Groups and a random 50% trial of one model (in this process); refusals raise PruningError."""
    import torch

    import methods
    import models
    from methods.core import channel_groups, gate_vs_removal, prune_model
    from methods.core.verify import perturb_norms

    from bench.engine.data import make_synthetic
    from bench.engine.measure import count_flops, count_params

    torch.manual_seed(0)
    model = perturb_norms(models.create(name, num_classes=10))
    data = make_synthetic(size=SIZE)
    x = torch.as_tensor(data.test.x[:batch]).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(data.mean).view(1, 3, 1, 1)) / torch.tensor(data.std).view(1, 3, 1, 1)
    side = _runs_at(model)
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear") if side != SIZE else x
    size = (3, side, side)
    groups = channel_groups(model, x[:1], "all", name=name)
    ctx = methods.Context(model, groups, name, {"num_classes": 10}, size, torch.device("cpu"))
    plan = methods.get_method("random").select(ctx, ratio=0.5).plan
    masks = {gid: torch.isin(torch.arange(plan.units[gid]), torch.tensor(kept)).float() for gid, kept in plan.keep.items()}
    pruned = prune_model(model, plan)
    err = gate_vs_removal(model, groups, masks, pruned, x)[2]
    if not err < TOLERANCE:
        raise GateMismatch(f"gating differs from removal: relative error {err:.1e} (tolerance {TOLERANCE:.0e})")
    return {"size": side, "groups": len(groups), "excluded": len(groups.excluded), "units": sum(g.units for g in groups),
            "reason": checked_out(groups.excluded), "gate_vs_removal": err, "params": count_params(model), "params_pruned": count_params(pruned),
            "flops": count_flops(model, size), "flops_pruned": count_flops(pruned, size)}


def checked_out(excluded: dict[str, str]) -> str:
    """The constructs whose groups the removal check excluded (methods/core/verify.py), with counts, or ""."""
    import collections
    import re

    kinds = collections.Counter(m.group(1) for why in excluded.values()
                                if (m := re.search(r"(?:removing it breaks|differs from its removal in) (\w+) \(", why)))
    if not kinds:
        return ""
    return "removal check excluded groups of " + ", ".join(f"{k} (x{n})" for k, n in sorted(kinds.items()))


class GateMismatch(AssertionError):
    """The gated network and the pruned one disagree: a defect, never a result."""


def _runs_at(model) -> int:
    """The smallest of SIZES the model runs at (Inception's stems need more than 32x32)."""
    import torch

    for side in SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, side, side))
            return side
        except RuntimeError:
            continue
    return SIZES[-1]


def _one(name: str) -> dict[str, Any]:
    """probe() as a row: status ok, refused (the one-line reason) or failed (the exception's last line)."""
    import logging

    from methods.core import PruningError

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the excluded groups are counted in the row
    start = time.perf_counter()
    try:
        row = {"status": "ok", **probe(name)}
    except PruningError as e:
        row = {"status": "refused", "reason": str(e).splitlines()[0]}
    except Exception as e:  # noqa: BLE001 - the matrix records a failure instead of stopping (GateMismatch too)
        row = {"status": "failed", "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    finally:
        logging.disable(previous)  # in a caller's process (the tests) logging stays as it was
    return {**row, "seconds": round(time.perf_counter() - start, 1)}


def run_one(family: str, name: str, limit: float) -> dict[str, Any]:
    """One model in a child process under `limit` seconds."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "bench.checks.timm_matrix", "--one", name]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=Path(__file__).resolve().parents[2],
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        row = json.loads(lines[-1]) if lines else {
            "status": "failed", "reason": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1]}"}
    except subprocess.TimeoutExpired:
        row = {"status": "failed", "reason": f"time limit of {limit:.0f} s exceeded",
               "seconds": round(time.perf_counter() - start, 1)}
    return {"family": family, "model": name, **row}


def _fmt(row: dict[str, Any], key: str) -> str:
    v = row.get(key, "")
    if v == "" or v is None:
        return ""
    if key == "gate_vs_removal":
        return f"{v:.1e}"
    if key in ("params", "params_pruned"):
        return f"{v / 1e6:.3f}M"
    if key in ("flops", "flops_pruned"):
        return f"{v / 1e6:.2f}M"
    return str(v).replace("|", "\\|")


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["family", "model", "status", "size", "groups (excluded)", "gate vs removal", "params", "params at 50%",
            "FLOPs", "FLOPs at 50%", "s", "reason or note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        groups = f"{r['groups']} ({r['excluded']})" if r.get("groups") != "" and "groups" in r else ""
        cells = [r["family"], f"`{r['model']}`", r["status"], str(r.get("size", "")), groups] + [
            _fmt(r, k) for k in ("gate_vs_removal", "params", "params_pruned", "flops", "flops_pruned", "seconds", "reason")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict[str, Any]]) -> str:
    n = {s: sum(r["status"] == s for r in rows) for s in ("ok", "refused", "failed")}
    worst = max((r["gate_vs_removal"] for r in rows if r["status"] == "ok"), default=float("nan"))
    checked = sum(r["status"] == "ok" and bool(r.get("reason")) for r in rows)
    return (f"{len(rows)} families: {n['ok']} pruned, {n['refused']} refused with a named construct, "
            f"{n['failed']} failed (tracebacks, gate mismatches or time-outs); largest gate-vs-removal relative error {worst:.1e}; "
            f"{checked} pruned with groups the removal check excluded (the construct named)")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write(rows: list[dict[str, Any]], out: Path, command: str, wall: float, limit: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(out / "matrix.csv", buf.getvalue())
    _atomic_write(out / "matrix.md", markdown(rows))
    _atomic_write(out / "README.md", (
        "# Every timm CNN family: channel groups and a random 50% trial\n\n"
        f"Command: `{command}`  \nWall time: {wall / 60:.1f} min on this machine (one thread per model, "
        f"limit {limit:.0f} s a model).\n\n"
        f"{summary(rows)}.\n\n"
        "Rule (bench/checks/timm_matrix.py): one model per timm model module, the registered model with the fewest "
        f"parameters; the module counts as a CNN family when that model has at least {MIN_SPATIAL_CONVS} spatial "
        "convolutions and no token-attention layer (query-key products). Each model: num_classes 10, no pretrained weights, norm statistics "
        f"perturbed, {SIZE}x{SIZE} synthetic images (resized to the size column where a stem needs more); groups at scope all; random selection at ratio 0.5 (seed 0); "
        "gate vs removal is the relative L2 difference of the logits of the gated and the physically pruned "
        "network; params and FLOPs (MACs of one image) before and after. A refusal is the one line the harness "
        "prints for that model.\n\n" + markdown(rows)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.checks.timm_matrix", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("RESULTS_DIR", "results"), "timm-matrix"))
    p.add_argument("--limit", type=float, default=120.0, help="seconds per model (time-outs are failures)")
    p.add_argument("--only", default="", help="comma-separated timm modules or model names to run (default: all)")
    p.add_argument("--list", action="store_true", help="print the families and their representatives, run nothing")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # the child process: one model, a JSON line
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one)))
        return 0
    start = time.perf_counter()
    reps = representatives()
    if args.only:
        wanted = set(args.only.split(","))
        reps = {f: m for f, m in reps.items() if f in wanted or m in wanted}
    if args.list:
        for family, name in reps.items():
            print(f"{family:24s} {name}")
        return 0
    rows = []
    for family, name in reps.items():
        rows.append(run_one(family, name, args.limit))
        r = rows[-1]
        print(f"{family:22s} {name:28s} {r['status']:8s} {r.get('seconds', '')!s:>6s}s  {r.get('reason', '')}", flush=True)
    command = "python -m bench.checks.timm_matrix " + " ".join(argv if argv is not None else sys.argv[1:])
    write(rows, Path(args.out), command.strip(), time.perf_counter() - start, args.limit)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
