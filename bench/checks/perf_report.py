"""perf.md and perf.csv from `make perf`'s rows: the tables (training loops, pruned models, deploy forms), which
alignment to pick, what remains onnxruntime's, and the comparison of two runs (`bench perf-compare`)."""
from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.core.env import cpu_model, environment
from bench.core.errors import UserError
from bench.core.io import atomic_write
from bench.checks.timing import PerfConfig, Spread


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


def onnx_layout_note(df: pd.DataFrame, where: str = "the table below") -> str:
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
            f"{int(base.value.sum())} such convs in {len(base)} model{'s' if len(base) != 1 else ''}. Plans with "
            "convs outside the layout, by alignment: " + "; ".join(parts) + ". Aligning the kept widths is the "
            f"remedy on our side; {where} prices it.")


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
        *([f"- the compiled steps (torch.compile, inductor; compile time apart, in the warm-up) are measured for "
           f"{', '.join(m for m in cfg.models if m in cfg.compile_models) or 'no model'}"] if cfg.compile else []),
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
