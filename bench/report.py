"""Plots and tables of one experiment, as pure functions of its results table (runs.csv).

`report_experiment(folder)` is what `python -m bench report <folder>` runs: Pareto plots (PNG, SVG, PDF),
a paper-style table (Markdown and LaTeX), a layer-wise plot and a README that shows them. Published
numbers (results/reference/published_results.csv) are drawn and listed beside our own, never mixed in.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .errors import UserError
from .io import atomic_write
from .results import ResultsTable, non_dominated

REFERENCE_CSV = Path(__file__).parents[1] / "results" / "reference" / "published_results.csv"

# method -> (name in plots and tables, colour, marker); our methods in colour, other literature in greys
STYLE: dict[str, tuple[str, str, str]] = {
    "decore": ("DECORE", "tab:blue", "o"),
    "l1": ("L1", "tab:orange", "s"),
    "random": ("Random", "tab:green", "^"),
    "hrank": ("HRank", "0.35", "D"),
    "gal": ("GAL", "0.55", "v"),
    "nisp": ("NISP", "0.45", "P"),
    "baseline": ("Baseline", "black", "*"),
}
OTHER_STYLE = ("", "0.5", "X")
COSTS = {"flops": "FLOPs (M)", "params": "Params (M)"}
HEADERS = ["Method", "Top-1 (%)", "Acc. drop", "Params (M) (down %)", "FLOPs (M) (down %)"]
# the columns that tell one configuration from another when only the seed differs
CONFIG_KEY = ["method", "scope", "knob_name", "knob_value", "knobs", "round_to", "joint_epochs", "finetune_epochs"]


def style(method: str) -> tuple[str, str, str]:
    name, colour, marker = STYLE.get(method, OTHER_STYLE)
    return name or method, colour, marker


# ---------------------------------------------------------------- reference

def reference_model_name(model: str) -> str:
    """timm name -> the name the papers use: cifar_resnet56 -> resnet56."""
    return model.removeprefix("cifar_")


def load_reference(model: str, dataset: str, path: Path | None = None) -> pd.DataFrame:
    """Published pruning points of one model/dataset; the published baseline is in `.attrs["baseline"]`.

    `.attrs["baseline"]` is a dict (top1, params_m, flops_m, reported_in) or None.
    """
    path = Path(path) if path is not None else REFERENCE_CSV
    if not path.is_file():
        raise UserError(f"reference table {str(path)!r} does not exist: restore results/reference/ from git")
    ref = pd.read_csv(path, dtype={"variant": str, "reported_in": str, "note": str})
    ref = ref[(ref["model"] == reference_model_name(model)) & (ref["dataset"] == dataset)]
    base = ref[ref["method"] == "baseline"]
    points = ref[ref["method"] != "baseline"].reset_index(drop=True)
    points.attrs["baseline"] = (None if base.empty else
                                {k: base.iloc[0][k] for k in ("top1", "params_m", "flops_m", "reported_in")})
    return points


def _reference_baseline(reference: pd.DataFrame | None) -> dict[str, Any] | None:
    return None if reference is None else reference.attrs.get("baseline")


# ---------------------------------------------------------------- rows and labels

def _knobs(row: pd.Series) -> dict[str, Any]:
    text = row.get("knobs")
    try:
        return json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}


def _num(v: float) -> str:
    """Compact number as in variant names: 200 -> '200', 0.72 -> '0.72'."""
    return f"{float(v):g}"


def trial_label(row: pd.Series) -> str:
    """The paper's name of a configuration: DECORE-200, L1 (ratio 0.5), L1 (li2017-B), Random (FLOPs 0.60)."""
    name = style(str(row["method"]))[0]
    knob, value, knobs = row.get("knob_name"), row.get("knob_value"), _knobs(row)
    if pd.isna(knob) or not knob:
        knob = next((k for k in ("lambda", "ratio", "flops_target", "preset", "stage_ratios") if k in knobs), None)
    if pd.isna(value):
        value = knobs.get(knob) if knob else None
    if knob is None:
        return name
    if row["method"] == "decore" and knob == "lambda":
        return f"{name}-{_num(value)}"
    return f"{name} ({_knob_text(str(knob), value)})"


def _knob_text(knob: str, value: Any) -> str:
    if knob == "preset":
        return str(value)
    if knob == "flops_target":
        return f"FLOPs {float(value):.2f}"
    if knob == "stage_ratios":
        return f"stages {value}"
    return f"{knob} {_num(value)}" if _is_number(value) else f"{knob} {value}"


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def complete_trials(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["row_type"] == "trial") & (df["status"] == "complete")]


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Complete trials, one row per configuration: means over seeds, `*_std` (NaN for one seed), `n`."""
    trials = complete_trials(df)
    if trials.empty:
        return pd.DataFrame(columns=[*df.columns, "label", "n", "top1_std", "params_std", "flops_std"])
    # dropna=False: a preset has no knob_value, and its configuration must still form a group
    rows = [_mean_row(part) for _, part in trials.groupby(CONFIG_KEY, sort=False, dropna=False)]
    return pd.DataFrame(rows).reset_index(drop=True)


def _mean_row(part: pd.DataFrame) -> dict[str, Any]:
    row = part.iloc[0].to_dict()
    for c in ("top1_pct", "top1_drop_pct", "params", "flops", "params_reduction_pct", "flops_reduction_pct"):
        row[c] = part[c].astype(float).mean()
    for c, std in (("top1_pct", "top1_std"), ("params", "params_std"), ("flops", "flops_std")):
        row[std] = part[c].astype(float).std(ddof=1) if len(part) > 1 else math.nan
    row["n"] = len(part)
    row["label"] = trial_label(part.iloc[0])
    return row


def baseline_point(df: pd.DataFrame) -> dict[str, float] | None:
    """Our unpruned model: the baseline rows (mean over seeds), else the trials' base_* columns."""
    base = df[df["row_type"] == "baseline"]
    if not base.empty and base["top1_pct"].notna().any():
        vals = {"top1_pct": base["top1_pct"], "params": base["params"].fillna(base["base_params"]),
                "flops": base["flops"].fillna(base["base_flops"])}
        out = {k: float(v.astype(float).mean()) for k, v in vals.items()}
        out["top1_std"] = float(base["top1_pct"].astype(float).std(ddof=1)) if len(base) > 1 else math.nan
        return out
    trials = complete_trials(df).dropna(subset=["base_top1_pct"])
    if trials.empty:
        return None
    r = trials.iloc[0]
    return {"top1_pct": float(r["base_top1_pct"]), "params": float(r["base_params"]),
            "flops": float(r["base_flops"]), "top1_std": math.nan}


# ---------------------------------------------------------------- Pareto front

def pareto_front(df_method: pd.DataFrame, cost: str = "flops") -> pd.DataFrame:
    """Non-dominated complete trials (max top1_pct, min `cost`), sorted by cost."""
    ok = df_method
    if "row_type" in ok.columns:
        ok = ok[ok["row_type"] == "trial"]
    if "status" in ok.columns:
        ok = ok[ok["status"] == "complete"]
    ok = ok.dropna(subset=["top1_pct", cost])
    if ok.empty:
        return ok
    mask = non_dominated(ok["top1_pct"].to_numpy(float), ok[cost].to_numpy(float))
    return ok[mask].sort_values(cost, kind="stable")


# ---------------------------------------------------------------- Pareto plot

def _title(df: pd.DataFrame) -> str:
    first = df.iloc[0]
    return f"{first['model']} on {first['dataset']} ({first['profile'] if pd.notna(first['profile']) else '-'})"


def _draw_measured(ax: Axes, points: pd.DataFrame, cost: str) -> None:
    for method, pts in points.groupby("method", sort=False):
        name, colour, marker = style(str(method))
        x, y = pts[cost].to_numpy(float) / 1e6, pts["top1_pct"].to_numpy(float)
        many = pts["n"].to_numpy() > 1
        if many.any():  # several seeds: mean with std bars
            ax.errorbar(x[many], y[many], yerr=pts["top1_std"].to_numpy(float)[many],
                        xerr=pts[f"{cost}_std"].to_numpy(float)[many] / 1e6,
                        fmt="none", ecolor=colour, elinewidth=1, capsize=3, zorder=2)
        ax.scatter(x, y, color=colour, marker=marker, s=36, zorder=3, label=name)
        front = pareto_front(pts, cost)
        ax.step(front[cost].to_numpy(float) / 1e6, front["top1_pct"].to_numpy(float), where="post",
                color=colour, lw=1.5, alpha=0.8, zorder=2)


def _draw_baselines(ax: Axes, ours: dict[str, float] | None, published: dict[str, Any] | None, cost: str) -> None:
    if ours is not None:
        ax.axhline(ours["top1_pct"], color="black", ls=":", lw=0.8, zorder=1)
        ax.scatter([ours[cost] / 1e6], [ours["top1_pct"]], marker="*", s=180, color="black", zorder=4,
                   label="Baseline (measured)")
    if published is not None:
        ax.scatter([published[f"{cost}_m"]], [published["top1"]], marker="*", s=180, facecolors="none",
                   edgecolors="black", zorder=4, label="Baseline (reported)")


def _draw_published(ax: Axes, reference: pd.DataFrame | None, cost: str) -> None:
    if reference is None or reference.empty:
        return
    for method, pts in reference.groupby("method", sort=False):
        name, colour, marker = style(str(method))
        x, y = pts[f"{cost}_m"].to_numpy(float), pts["top1"].to_numpy(float)
        ax.scatter(x, y, marker=marker, s=42, facecolors="none", edgecolors=colour, linewidths=1.2,
                   zorder=3, label=f"{name} (reported)")
        for xi, yi, text in zip(x, y, pts["variant"].fillna(name)):
            ax.annotate(text, (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7, color=colour)


def pareto_figure(df: pd.DataFrame, reference: pd.DataFrame | None) -> Figure:
    """Top-1 vs FLOPs and top-1 vs params: our points and fronts, baselines, published points."""
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    axes = fig.subplots(1, 2, sharey=True)
    points, ours = aggregate(df), baseline_point(df)
    for ax, (cost, xlabel) in zip(axes, COSTS.items()):
        _draw_measured(ax, points, cost)
        _draw_baselines(ax, ours, _reference_baseline(reference), cost)
        _draw_published(ax, reference, cost)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Top-1 (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.3", lw=1.5, drawstyle="steps-post"))
    labels.append("Pareto front (measured)")
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle(_title(df))
    return fig


def _save(fig: Figure, path: Path, fmt: str) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150))


def pareto_plot(df: pd.DataFrame, reference: pd.DataFrame | None, out_stem: Path) -> list[Path]:
    """Write <out_stem>.png/.svg/.pdf of `pareto_figure`; returns the paths."""
    fig = pareto_figure(df, reference)
    out_stem = Path(out_stem)
    return [_save(fig, out_stem.with_name(f"{out_stem.name}.{fmt}"), fmt) for fmt in ("png", "svg", "pdf")]


# ---------------------------------------------------------------- paper table

def _millions(v: float) -> str:
    # small CIFAR models have well under 1M params: keep three decimals there
    m = v / 1e6
    return f"{m:.3f}" if m < 1 else f"{m:.2f}"


def _pm(mean: float, std: float, fmt: str = "{:.2f}") -> str:
    return fmt.format(mean) if pd.isna(std) else f"{fmt.format(mean)} ± {fmt.format(std)}"


def _cost_cell(value: float, reduction: float) -> str:
    return f"{_millions(value)} ({reduction:.1f}%)"


def _measured_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Baseline first, then configurations by FLOPs descending; cells as printed, plus sort keys."""
    rows, base = [], baseline_point(df)
    if base is not None:
        rows.append({"cells": ["Baseline", _pm(base["top1_pct"], base["top1_std"]), "–",
                               _millions(base["params"]), _millions(base["flops"])], "trial": False})
    points = aggregate(df).sort_values("flops", ascending=False, kind="stable")
    for _, r in points.iterrows():
        rows.append({"trial": True, "cells": [
            r["label"], _pm(r["top1_pct"], r["top1_std"]), f"{r['top1_drop_pct']:.2f}",
            _cost_cell(r["params"], r["params_reduction_pct"]), _cost_cell(r["flops"], r["flops_reduction_pct"])]})
    return rows


def _mark_best(rows: list[dict[str, Any]]) -> None:
    """Flag the best printed value per column among trials: top-1 up, drop/params/FLOPs down."""
    trials = [r for r in rows if r["trial"]]
    for r in rows:
        r["best"] = set()
    for col, sign in ((1, 1), (2, -1), (3, -1), (4, -1)):
        # compare the printed numbers, so ties as printed are all marked
        keyed = [(sign * float(r["cells"][col].split()[0]), r) for r in trials]
        best = max((k for k, _ in keyed), default=None)
        for k, r in keyed:
            if k == best:
                r["best"].add(col)


def _reference_name(row: pd.Series) -> str:
    name = style(str(row["method"]))[0]
    variant = row["variant"] if isinstance(row["variant"], str) else ""
    if not variant:
        return name
    return variant if variant.lower().startswith(name.lower()) else f"{name} ({variant})"


def _reference_rows(reference: pd.DataFrame | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Published baseline and points by FLOPs descending, with numbered sources."""
    if reference is None:
        return [], []
    sources: list[str] = []

    def note(src: str) -> int:
        if src not in sources:
            sources.append(src)
        return sources.index(src) + 1

    rows = []
    base = _reference_baseline(reference)
    if base is not None:
        rows.append({"cells": ["Baseline", f"{base['top1']:.2f}", "–", f"{base['params_m']:.2f}",
                               f"{base['flops_m']:.2f}"], "source": note(str(base["reported_in"]))})
    for _, r in reference.sort_values("flops_m", ascending=False, kind="stable").iterrows():
        rows.append({"source": note(str(r["reported_in"])), "cells": [
            _reference_name(r), f"{r['top1']:.2f}", f"{r['base_top1'] - r['top1']:.2f}",
            f"{r['params_m']:.2f} ({100 * (1 - r['params_m'] / r['base_params_m']):.1f}%)",
            f"{r['flops_m']:.2f} ({100 * (1 - r['flops_m'] / r['base_flops_m']):.1f}%)"]})
    return rows, sources


def _markdown(measured: list[dict], published: list[dict], sources: list[str]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "| --- |" + " ---: |" * (len(HEADERS) - 1)]
    blank = " |" * (len(HEADERS) - 1)
    lines.append("| *Measured here* |" + blank)
    for r in measured:
        cells = [f"**{c}**" if i in r.get("best", ()) else c for i, c in enumerate(r["cells"])]
        lines.append("| " + " | ".join(cells) + " |")
    if published:
        lines.append("| *Reported in the literature* |" + blank)
        for r in published:
            cells = [f"{r['cells'][0]} [{r['source']}]", *r["cells"][1:]]
            lines.append("| " + " | ".join(cells) + " |")
    notes = [f"[{i}] {s}" for i, s in enumerate(sources, 1)]
    foot = ("Bold: best among the measured trials. Mean ± std where several seeds ran one configuration. "
            "Acc. drop: baseline top-1 minus top-1 (points); (down %): reduction against the baseline.")
    sources_line = f"\n\nSources: {'; '.join(notes)} (full references: results/reference/README.md)" if notes else ""
    return "\n".join(lines) + "\n\n" + foot + sources_line + "\n"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$", "–": "--"}


def latex_escape(text: str) -> str:
    """Text -> LaTeX source; one pass, so replacements are never escaped twice."""
    return re.sub("|".join(map(re.escape, _LATEX_SPECIALS)), lambda m: _LATEX_SPECIALS[m.group()], text)


def _latex(measured: list[dict], published: list[dict], sources: list[str], caption: str) -> str:
    n = len(HEADERS)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
             rf"\begin{{tabular}}{{l{'r' * (n - 1)}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in HEADERS) + r" \\", r"\midrule",
             rf"\multicolumn{{{n}}}{{l}}{{\emph{{Measured here}}}} \\"]
    for r in measured:
        cells = [latex_escape(c) for c in r["cells"]]
        cells = [rf"\textbf{{{c}}}" if i in r.get("best", ()) else c for i, c in enumerate(cells)]
        lines.append(" & ".join(cells) + r" \\")
    if published:
        lines += [r"\midrule", rf"\multicolumn{{{n}}}{{l}}{{\emph{{Reported in the literature}}}} \\"]
        for r in published:
            cells = [latex_escape(c) for c in r["cells"]]
            cells[0] += rf"$^{{{r['source']}}}$"
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if sources:
        notes = "; ".join(f"$^{{{i}}}${latex_escape(s)}" for i, s in enumerate(sources, 1))
        lines += [r"\par\smallskip", rf"{{\footnotesize {notes}}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def paper_table(df: pd.DataFrame, reference: pd.DataFrame | None) -> tuple[str, str]:
    """The paper's table of results as (markdown, latex): measured block, then the literature."""
    measured = _measured_rows(df)
    _mark_best(measured)
    published, sources = _reference_rows(reference)
    caption = f"{_title(df)}: top-1, accuracy drop, parameters and FLOPs (multiply-accumulates)"
    return _markdown(measured, published, sources), _latex(measured, published, sources, caption)


# ---------------------------------------------------------------- layer-wise plot

def _kept(row: pd.Series) -> dict[str, list[int]]:
    text = row.get("kept_channels")
    return json.loads(text) if isinstance(text, str) and text else {}


def pick_layerwise_trials(df: pd.DataFrame) -> list[str]:
    """The DECORE trial with the largest FLOPs reduction, and the L1 and random trials closest in FLOPs."""
    trials = complete_trials(df).dropna(subset=["kept_channels", "flops"])
    decore = trials[trials["method"] == "decore"]
    if decore.empty:
        raise UserError("no complete DECORE trial with kept_channels: pass trials=[config hashes] to choose")
    pick = decore.loc[decore["flops_reduction_pct"].astype(float).idxmax()]
    chosen = [str(pick["config_hash"])]
    for method in ("l1", "random"):
        part = trials[trials["method"] == method]
        if not part.empty:
            near = (part["flops"].astype(float) - float(pick["flops"])).abs().idxmin()
            chosen.append(str(part.loc[near, "config_hash"]))
    return chosen


def _chosen_rows(df: pd.DataFrame, hashes: Sequence[str]) -> list[pd.Series]:
    found = {h: df[df["config_hash"] == h] for h in hashes}
    missing = [h for h, r in found.items() if r.empty]
    if missing:
        raise UserError(f"no trial with config_hash {missing}: pick hashes from runs.csv")
    return [r.iloc[0] for r in found.values()]


def layerwise_figure(df: pd.DataFrame, trials: Sequence[str] | None = None) -> Figure:
    """Kept fraction per channel group (graph order) for the chosen trials, as grouped bars."""
    rows = _chosen_rows(df, list(trials) if trials is not None else pick_layerwise_trials(df))
    kept = [_kept(r) for r in rows]
    units: dict[str, int] = {}
    for k in kept:  # union in graph order: methods with another scope prune other groups
        units.update({g: ku[1] for g, ku in k.items() if g not in units})
    groups = list(units)
    fig = Figure(figsize=(max(8.0, 0.3 * len(groups) + 4), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width, x = 0.8 / len(rows), np.arange(len(groups))
    for i, (r, k) in enumerate(zip(rows, kept)):
        frac = [k[g][0] / k[g][1] if g in k else np.nan for g in groups]
        label = f"{trial_label(r)}: FLOPs -{float(r['flops_reduction_pct']):.1f}%, top-1 {float(r['top1_pct']):.2f}%"
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, frac, width, color=style(str(r["method"]))[1], label=label)
    ax.set_xticks(x, [f"{g} ({units[g]})" for g in groups], rotation=90, fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set(ylabel="channels kept (fraction)", xlabel="channel group (units), graph order")
    fig.legend(loc="outside upper center", fontsize=8)
    ax.set_title(f"{_title(df)}: channels kept per layer")
    return fig


def layerwise_plot(df: pd.DataFrame, out: Path, trials: list[str] | None = None) -> Path:
    """Write `layerwise_figure` as a PNG to `out`."""
    return _save(layerwise_figure(df, trials), Path(out), "png")


# ---------------------------------------------------------------- the whole report

def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _counts(df: pd.DataFrame) -> str:
    trials = df[df["row_type"] == "trial"]
    status = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    return (f"{len(df)} rows: {int((df['row_type'] == 'baseline').sum())} baseline, "
            f"{len(trials)} trials ({status or 'none'})")


def _readme(df: pd.DataFrame, folder: Path, table_md: str, layers: bool) -> str:
    parts = [f"# {_title(df)}", "", "![Top-1 against FLOPs and params](pareto.png)", "",
             "Vector versions: [pareto.svg](pareto.svg), [pareto.pdf](pareto.pdf). Filled markers: measured "
             "here (mean ± std over seeds); lines: each method's Pareto front (max top-1, min cost); "
             "hollow markers: published numbers (results/reference/).", "", table_md]
    if layers:
        parts += ["![Channels kept per layer](layers.png)", ""]
    parts += ["## How this was made", "",
              f"`python -m bench report {folder}` read `runs.csv` ({_counts(df)}); failed, pruned and "
              "infeasible trials are counted but not plotted. LaTeX of the table: [table.tex](table.tex)."]
    return "\n".join(parts) + "\n"


def _has_layers(df: pd.DataFrame) -> bool:
    trials = complete_trials(df)
    return bool(trials.loc[trials["method"] == "decore", "kept_channels"].notna().any())


def report_experiment(folder: Path, reference_path: Path | None = None) -> dict[str, Path]:
    """Plots, tables and README of one experiment folder; returns {file name: path}."""
    folder = Path(folder)
    if not (folder / "runs.csv").is_file():
        raise UserError(f"{str(folder / 'runs.csv')!r} does not exist: pass an experiment folder that holds runs.csv")
    df = ResultsTable(folder).read()
    if complete_trials(df).empty:
        raise UserError(f"{str(folder / 'runs.csv')!r} has no complete trials yet: nothing to report")
    first = df.iloc[0]
    reference = load_reference(str(first["model"]), str(first["dataset"]), reference_path)
    out = {p.name: p for p in pareto_plot(df, reference, folder / "pareto")}
    md, tex = paper_table(df, reference)
    out["table.md"], out["table.tex"] = _write_text(folder / "table.md", md), _write_text(folder / "table.tex", tex)
    layers = _has_layers(df)
    if layers:
        out["layers.png"] = layerwise_plot(df, folder / "layers.png")
    out["README.md"] = _write_text(folder / "README.md", _readme(df, folder, md, layers))
    return out
