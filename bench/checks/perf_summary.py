"""What `make perf` found, in a few lines derived from its files: the README of a perf folder and the main
README's performance sentence (`python -m bench perf-readme FOLDER`; tests hold both to the files).

A perf folder holds the newest run (perf.csv, perf.md), the run right before it (run-before/), their comparison
(compare.txt, `bench perf-compare`) and earlier runs in sub-folders, each with its perf.md.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bench.core.io import atomic_write
from bench.checks.perf_report import alignment_advice, compare, onnx_layout_note, read_perf
from bench.deploy.forms import FORMS


def picks(df: pd.DataFrame, batch: int = 64) -> dict[str, tuple[int, float]]:
    """form -> (round_to perf.md's advice picks at `batch`, its median efficiency)."""
    advice = alignment_advice(df)
    out = {}
    for form in FORMS:
        chosen = advice[(advice.form == form) & (advice.batch == batch) & (advice.pick != "")]
        if len(chosen):
            out[form] = (int(chosen.round_to.iloc[0]), float(chosen["median efficiency"].iloc[0]))
    return out


def slower_with_pick(df: pd.DataFrame, batch: int = 64, min_removed: float = 0.3) -> dict[str, tuple[int, int]]:
    """form -> (plans of the picked alignment removing >= min_removed of the FLOPs that ran slower than the
    unpruned model at `batch`, how many such plans)."""
    up = df[(df.measure == "speed-up") & (df.batch == batch) & (df.flops_fraction <= 1 - min_removed + 0.01)]
    out = {}
    for form, (r, _) in picks(df, batch).items():
        g = up[(up.form == form) & (up.round_to == r)]
        out[form] = (int((g.value < 1).sum()), len(g))
    return out


def best_half_cut(df: pd.DataFrame, batch: int = 64) -> dict[str, tuple[float, str, int]]:
    """model -> (the highest median speed-up at `batch` of its plans keeping half the FLOPs, in which form, with
    which round_to)."""
    up = df[(df.measure == "speed-up") & (df.batch == batch) & df.variant.str.startswith("l1@0.5")]
    out = {}
    for model, g in up.groupby("model", sort=False):
        r = g.loc[g.value.idxmax()]
        out[model] = (float(r.value), str(r.form), int(r.round_to))
    return out


def ratio_cells(df: pd.DataFrame, measure: str) -> str:
    """Every model's median (IQR) of a ratio, as perf.md prints them: "resnet20 1.06 (0.07), ..."."""
    rows = df[df.measure == measure]
    return ", ".join(f"{m} {v:.2f} ({i:.2f})" for m, v, i in zip(rows.model, rows.value, rows.iqr))


def pick_sentence(df: pd.DataFrame, batch: int = 64) -> str:
    """The main README's advice: which alignment to pick per deploy form on the machine of `df`."""
    parts = [f"`round_to {r}` {form} (median efficiency {e:.2f})" for form, (r, e) in picks(df, batch).items()]
    return f"at batch {batch}, pick " + ", ".join(parts)


def _header(perf_md: Path) -> dict[str, str]:
    text = perf_md.read_text()
    found = {k: re.search(rf"^- {k}: (.+)$", text, re.M) for k in ("command", "machine", "date")}
    return {k: m.group(1).strip().strip("`") if m else "?" for k, m in found.items()}


def readme(folder: str | Path) -> str:
    """The README of a perf folder, from its files."""
    folder = Path(folder)
    new, before = read_perf(folder), read_perf(folder / "run-before")
    m = compare(before, new)
    head = _header(folder / "perf.md")
    agree = f"**{int(m['agree'].sum())} of {len(m)} ratios agree**"
    older = sorted(p.parent for p in folder.glob("*/**/perf.md") if p.parent.name != "run-before")
    lines = [
        "# `make perf` results", "",
        "Written by `python -m bench perf-readme results/perf` from the files beside it (bench/checks/perf_summary.py); "
        "do not edit by hand.", "",
        "| folder | what |", "| --- | --- |",
        f"| `perf.md`, `perf.csv` | the newest run: {head['machine']}, {head['date']} |",
        "| `run-before/` | the run right before it, the same command, nothing else running |",
        f"| `compare.txt` | `python -m bench perf-compare run-before perf.csv` of those two: {agree} |",
        *[f"| `{p.relative_to(folder)}/` | an earlier run: {_header(p / 'perf.md')['machine']}, "
          f"{_header(p / 'perf.md')['date']} |" for p in older],
        "", f"Both runs: `{head['command']}` (`make perf DEVICE=cpu`).", "",
        "## What this machine says", "",
        f"- **Which alignment to pick** (perf.md, *Which alignment to pick on this machine*): {pick_sentence(new)}; "
        f"at batch 1: {pick_sentence(new, 1).removeprefix('at batch 1, pick ')}.",
        "- **With that pick, plans removing 30% of the FLOPs or more that ran slower than the unpruned model at "
        "batch 64**: " + ", ".join(f"{form} {k} of {n}" for form, (k, n) in slower_with_pick(new).items()) + ".",
        "- **The best 50% cut at batch 64**: " + ", ".join(
            f"{model} {up:.2f}x ({form}, round_to {r})" for model, (up, form, r) in best_half_cut(new).items()) + ".",
        f"- **DECORE's gated step / plain step**, eager: {ratio_cells(new, 'gated / plain')}; compiled (inductor): "
        f"{ratio_cells(new, 'compiled gated / plain') or 'not measured'} (median (IQR)).",
    ]
    note = onnx_layout_note(new, "perf.md's alignment table")
    if note:
        lines.append(f"- **onnxruntime**: {note}")
    records = sorted(folder.glob("align/*.json"))
    if records:
        lines += ["", "## What `--round-to auto` chose here", "",
                  "`python -m bench align --model M --form F` for each model and deploy form (batch 64, plans keeping "
                  "50% of the FLOPs; records in `align/`). The choice is the multiple of highest measured efficiency, among those that "
                  "keep the target's FLOPs within 2 points (efficiency = speed-up / FLOPs promise):", "",
                  "| model | form | chosen | its speed-up (IQR) | its efficiency | round_to 1: speed-up, efficiency |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [_alignment_row(r) for r in records]
    return "\n".join(lines) + "\n"


def _alignment_row(path: Path) -> str:
    from bench.deploy.align import read as read_alignment

    a = read_alignment(path)
    best = next(c for c in a.candidates if c["round_to"] == a.chosen)
    plain = next((c for c in a.candidates if c["round_to"] == 1), None)
    vs = f"{plain['speedup']:.2f}x, {plain['efficiency']:.2f}" if plain else "-"
    return (f"| {a.model} | {a.form} | round_to {a.chosen} | {best['speedup']:.2f}x "
            f"({best['speedup_q3'] - best['speedup_q1']:.2f}) | {best['efficiency']:.2f} | {vs} |")


def write_readme(folder: str | Path) -> Path:
    folder = Path(folder)
    text = readme(folder)
    return atomic_write(folder / "README.md", lambda p: Path(p).write_text(text))
