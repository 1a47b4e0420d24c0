"""Plots and tables of one experiment, as pure functions of its results table (runs.csv).

`report_experiment(folder)` is what `python -m bench report <folder>` runs: Pareto plots (PNG, SVG, PDF),
a paper-style table (Markdown and LaTeX), a layer-wise plot and a README that shows them. Published
numbers (results/reference/published_results.csv) are drawn and listed beside our own, never mixed in.
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .errors import UserError
from .figures import (METHOD_STYLE, SCOPE_FILL, distinct_allocations, group_name, method_style, ordered_groups,
                      print_rc, save, write_paper_figure)
from .io import atomic_write
from .results import CONFIG_KEYS, ResultsTable, mark_pareto
from .stats import paired

REFERENCE_CSV = Path(__file__).parents[1] / "results" / "reference" / "published_results.csv"

# method -> (name in plots and tables, colour, marker): one map for every output (bench.figures)
STYLE = METHOD_STYLE
COSTS = {"flops": "FLOPs (M)", "params": "Params (M)"}
HEADERS = ["Method", "Top-1 (%)", "Acc. drop", "Params (M) (down %)", "FLOPs (M) (down %)"]


def style(method: str) -> tuple[str, str, str]:
    return method_style(method)


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


CONTROL_NAMES = {"scratch-b": "Scratch-B", "scratch-e": "Scratch-E", "scratch": "Scratch (baseline + trial images)"}


def _name(method: str) -> str:
    return CONTROL_NAMES.get(method) or style(method)[0]


def non_paper(row: pd.Series) -> list[str]:
    """What a row used beyond its paper (methods.Method.non_paper): e.g. ["agents init 3, lr 0.1"], ["scope all"]."""
    import methods

    cls = methods.METHODS.get(str(row["method"]))
    if cls is None:
        return []
    scope = row.get("scope")
    model = row.get("model")
    return cls().non_paper(_knobs(row), str(scope) if pd.notna(scope) else None, str(model) if pd.notna(model) else None)


def trial_label(row: pd.Series) -> str:
    """The paper's name of a configuration: DECORE-200, L1 (ratio 0.5), L1 (li2017-B), Random (FLOPs 0.60), then
    whatever the row used beyond its paper: DECORE-0.99 (agents init 3, lr 0.1), L1 (FLOPs 0.60; scope all)."""
    name = _name(str(row["method"]))
    knob, value, knobs = row.get("knob_name"), row.get("knob_value"), _knobs(row)
    if pd.isna(knob) or not knob:
        knob = next((k for k in ("lambda", "ratio", "flops_target", "preset", "stage_ratios") if k in knobs), None)
    if pd.isna(value):
        value = knobs.get(knob) if knob else None
    extra = non_paper(row)
    if knob is None:
        return f"{name} ({', '.join(extra)})" if extra else name
    if row["method"] == "decore" and knob == "lambda":
        return f"{name}-{_num(value)}" + (f" ({'; '.join(extra)})" if extra else "")
    return f"{name} ({'; '.join([_knob_text(str(knob), value), *extra])})"


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


def _images(n: float) -> str:
    n = float(n)
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def training_text(row: pd.Series) -> str:
    """The training a row got after the baseline: images (engine-counted) and epochs, joint + fine-tune."""
    joint = row.get("joint_epochs")
    ft = row.get("finetune_epochs")
    epochs = (f"{int(joint)}+{int(ft)} ep" if pd.notna(joint) and int(joint) > 0 else
              f"{int(ft)} ep" if pd.notna(ft) else "")
    images = row.get("budget_images")
    if pd.notna(images) and float(images) > 0:
        return f"{_images(images)} img" + (f" ({epochs})" if epochs else "")
    return epochs or "?"


def series_label(row: pd.Series, versions: dict[str, int] | None = None) -> str:
    """What makes a series: method, scope, training after the baseline, round_to (when not 1), code version
    (when the experiment holds several of one method)."""
    parts = [_name(str(row["method"])), str(row["scope"]) if pd.notna(row.get("scope")) else "?", training_text(row)]
    if pd.notna(row.get("round_to")) and int(row["round_to"]) != 1:
        parts.append(f"round_to {int(row['round_to'])}")
    if versions and versions.get(str(row["method"]), 1) > 1 and pd.notna(row.get("method_version")):
        parts.append(f"code {str(row['method_version'])[:6]}")
    if versions and versions.get(ENGINE, 1) > 1:  # rows of several engines: each says which
        engine = row.get("engine_version")
        parts.append(f"engine {str(engine)[:6]}" if pd.notna(engine) else "engine older (unrecorded)")
    return " · ".join(parts)


def config_label(row: pd.Series, versions: dict[str, int] | None = None) -> str:
    """A configuration in full: knob label, then the series' parts, then n seeds."""
    series = series_label(row, versions).split(" · ", 1)[1]
    n = row.get("n")
    return f"{trial_label(row)} · {series}" + (f" · n={int(n)}" if pd.notna(n) else "")


ENGINE = "engine"  # _versions' key for the number of engine versions (a row without one counts as one more)


def _versions(df: pd.DataFrame) -> dict[str, int]:
    trials = df[df["row_type"] == "trial"]
    out = {str(m): int(part["method_version"].nunique()) for m, part in trials.groupby("method")}
    if "engine_version" in trials:
        out[ENGINE] = int(trials["engine_version"].nunique(dropna=False)) if len(trials) else 1
    return out


def complete_trials(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["row_type"] == "trial") & (df["status"] == "complete")]


# the columns that tell one configuration from another when only the seed differs
CONFIG_KEY = [*CONFIG_KEYS, "knob_name", "knob_value", "joint_epochs", "finetune_epochs", "budget_images"]
_MEANS = ("top1_pct", "val_top1_pct", "top5_pct", "top1_drop_pct", "params", "flops", "params_reduction_pct",
          "flops_reduction_pct", "speedup_b1", "speedup_b1_q1", "speedup_b1_q3", "budget_images")


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Complete trials, one row per configuration: means over seeds, `*_std` (NaN for one seed), `n`, and
    `n_failed` (seeds of the configuration that did not complete: such a mean is marked partial)."""
    trials = complete_trials(df)
    cols = [*df.columns, "label", "series", "n", "n_failed", "top1_std", "val_std", "params_std", "flops_std"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    failed = df[(df["row_type"] == "trial") & (df["status"] == "failed")]
    versions = _versions(df)
    key = [c for c in CONFIG_KEY if c != "budget_images"]
    rows = []
    # dropna=False: a preset has no knob_value, and its configuration must still form a group
    for _, part in trials.groupby(key, sort=False, dropna=False):
        row = part.iloc[0].to_dict()
        for c in _MEANS:
            row[c] = part[c].astype(float).mean()
        for c, std in (("top1_pct", "top1_std"), ("val_top1_pct", "val_std"), ("params", "params_std"),
                       ("flops", "flops_std")):
            row[std] = part[c].astype(float).std(ddof=1) if len(part) > 1 else math.nan
        row["n"] = len(part)
        same = failed
        for c in ("method", "knobs", "scope"):
            same = same[same[c].astype(str) == str(row[c])]
        row["n_failed"] = len(same)
        row["hashes"] = list(part["config_hash"])
        row["pareto"] = bool(part["pareto"].fillna(False).any())
        s = pd.Series(row)
        row["series"] = series_label(s, versions)
        row["label"] = config_label(s, versions)
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def control_point(df: pd.DataFrame) -> dict[str, float] | None:
    """The no-pruning control (the baseline trained on for the same budget): test/val top-1 mean, std, n."""
    part = complete_trials(df)
    part = part[part["method"] == "control"]
    if part.empty:
        return None
    t = part["top1_pct"].astype(float)
    return {"top1_pct": float(t.mean()), "top1_std": float(t.std(ddof=1)) if len(t) > 1 else math.nan,
            "val_top1_pct": float(part["val_top1_pct"].astype(float).mean()), "n": len(part),
            "params": float(part["params"].astype(float).mean()), "flops": float(part["flops"].astype(float).mean()),
            "label": config_label(pd.Series({**part.iloc[0].to_dict(), "n": len(part)}), _versions(df))}


def baseline_point(df: pd.DataFrame) -> dict[str, float] | None:
    """Our unpruned model: the baseline rows (mean over seeds), else the trials' base_* columns."""
    base = df[df["row_type"] == "baseline"]
    if not base.empty and base["top1_pct"].notna().any():
        vals = {"top1_pct": base["top1_pct"], "params": base["params"].fillna(base["base_params"]),
                "flops": base["flops"].fillna(base["base_flops"])}
        out = {k: float(v.astype(float).mean()) for k, v in vals.items()}
        out["top1_std"] = float(base["top1_pct"].astype(float).std(ddof=1)) if len(base) > 1 else math.nan
        out["n"] = len(base)
        return out
    trials = complete_trials(df).dropna(subset=["base_top1_pct"])
    if trials.empty:
        return None
    r = trials.iloc[0]
    return {"top1_pct": float(r["base_top1_pct"]), "params": float(r["base_params"]),
            "flops": float(r["base_flops"]), "top1_std": math.nan, "n": 1}


def protocol_text(df: pd.DataFrame, official: bool | None = None) -> str:
    """The protocol, stated once: selection split, budget rule, data, profile, matching."""
    trials = df[df["row_type"] == "trial"]
    # an experiment with no row yet (its page says so) has no dataset or profile to name
    first = df.iloc[0] if len(df) else pd.Series({c: None for c in ("dataset", "profile", "model")}, dtype=object)
    sel = set(trials["selection"].dropna()) or {None}
    bud = set(trials["budget"].dropna()) or {None}
    parts = []
    parts.append("selection: " + ", ".join(
        "validation hold-out of the training set (decisions read it; test top-1 only reported)" if s == "val" else
        "test set (the papers' practice: decisions read test accuracy)" if s == "test" else
        "test set (rows from before the selection split)" for s in sorted(sel, key=str)))
    parts.append("budget: " + ", ".join(
        "equal (the same training images after the baseline for every method)" if b == "equal" else
        "paper budgets, unequal" if b == "paper" else "unrecorded (rows from before the budget rule)"
        for b in sorted(bud, key=str)))
    fp = trials["data_fingerprint"].dropna()
    data = f"{first['dataset']}" + (f" (fingerprint {fp.iloc[0]})" if len(fp) else "")
    if official is not None:
        data += ", the official set" if official else ", not the official set"
    parts.append(f"data: {data}")
    parts.append(f"profile: {first['profile'] if pd.notna(first['profile']) else '-'}")
    matched = trials["match_of"].notna().sum() if "match_of" in trials else 0
    parts.append(f"matched partners: {int(matched)} trial(s) run at DECORE's FLOPs" if matched else "matched partners: none")
    return "; ".join(parts)


# ---------------------------------------------------------------- Pareto plot (fronts: runs.csv's `pareto` flags)

def _title(df: pd.DataFrame) -> str:
    first = df.iloc[0]
    return f"{first['model']} on {first['dataset']} ({first['profile'] if pd.notna(first['profile']) else '-'})"


_PANELS = (("val_top1_pct", "flops", "Validation top-1 (%)", "FLOPs (M MACs)"),
           ("top1_pct", "flops", "Test top-1 (%)", "FLOPs (M MACs)"),
           ("top1_pct", "params", "Test top-1 (%)", "Params (M)"))


def _draw_measured(ax: Axes, points: pd.DataFrame, acc: str, cost: str) -> None:
    """Each series in its method's colour, scope by fill (bench.figures); its front through the configurations
    runs.csv flags (chosen on validation top-1 against FLOPs, seed means), on every panel."""
    for series, pts in points.groupby("series", sort=False):
        _, colour, marker = style(str(pts.iloc[0]["method"]))
        fill = SCOPE_FILL.get(str(pts.iloc[0]["scope"]), "full")
        x, y = pts[cost].to_numpy(float) / 1e6, pts[acc].to_numpy(float)
        if not np.isfinite(y).any():
            continue
        std = "val_std" if acc == "val_top1_pct" else "top1_std"
        partial = pts["n_failed"].to_numpy() > 0
        ax.errorbar(x, y, yerr=np.nan_to_num(pts[std].to_numpy(float)), fmt=marker, color=colour, mec=colour,
                    ms=4.5, mew=0.8, fillstyle=fill, elinewidth=0.8, capsize=2, zorder=3, label=str(series))
        if partial.any():  # some seeds failed: the mean of the rest, ringed
            ax.scatter(x[partial], y[partial], facecolors="none", edgecolors="0.2", marker="o", s=60, zorder=4)
        front = pts[pts["pareto"].astype(bool)].sort_values(cost, kind="stable")
        ax.step(front[cost].to_numpy(float) / 1e6, front[acc].to_numpy(float), where="post",
                color=colour, lw=1.0, alpha=0.8, zorder=2)


def _draw_baselines(ax: Axes, ours: dict[str, float] | None, control: dict[str, float] | None,
                    published: dict[str, Any] | None, acc: str, cost: str) -> None:
    """The baseline as a star; the control (same FLOPs) as a dashed line only, so the two never overlap."""
    if ours is not None and acc == "top1_pct":
        ax.scatter([ours[cost] / 1e6], [ours["top1_pct"]], marker="*", s=70, color="black", zorder=4,
                   label="Baseline (measured)")
    if control is not None:
        ax.axhline(control[acc], color=style("control")[1], ls="--", lw=0.8, zorder=1, label="No-pruning control")
    if published is not None and acc == "top1_pct":
        ax.scatter([published[f"{cost}_m"]], [published["top1"]], marker="*", s=70, facecolors="none",
                   edgecolors="black", zorder=4, label="Baseline (published)")


def _draw_published(ax: Axes, reference: pd.DataFrame | None, cost: str) -> None:
    if reference is None or reference.empty:
        return
    for method, pts in reference.groupby("method", sort=False):
        name, colour, marker = style(str(method))
        ax.scatter(pts[f"{cost}_m"].to_numpy(float), pts["top1"].to_numpy(float), marker=marker, s=20,
                   facecolors="none", edgecolors=colour, linewidths=0.8, zorder=3, label=f"{name} (published)")


def pareto_figure(df: pd.DataFrame, reference: pd.DataFrame | None, official: bool | None = None) -> Figure:
    """Validation top-1 against FLOPs (the fronts decisions use), test top-1 against FLOPs and params (reported):
    our series and their fronts (on seed means), baseline, no-pruning control, and published points only when
    `reference` is given (the caller passes it only for the official data). 7 in wide, 8 pt text; the
    protocol is in the README and caption, not in a title."""
    points, ours, control = aggregate(df), baseline_point(df), control_point(df)
    points = points[points["method"] != "control"]
    entries = points["series"].nunique() + 4  # series, baseline(s), control, front
    with print_rc():
        # the legend sits below the panels, two entries a line: the figure grows with it, the panels keep 2.3 in
        fig = Figure(figsize=(7.0, 2.6 + 0.16 * math.ceil(entries / 2)), layout="constrained")
        FigureCanvasAgg(fig)  # Agg, without pyplot's global state
        axes = fig.subplots(1, 3)
        for ax, (acc, cost, ylabel, xlabel) in zip(axes, _PANELS):
            _draw_measured(ax, points, acc, cost)
            if acc == "val_top1_pct" and not points[acc].astype(float).notna().any():
                ax.text(0.5, 0.5, "no validation top-1\n(selected on test)", ha="center", va="center",
                        transform=ax.transAxes, color="0.4")
            _draw_baselines(ax, ours, control, _reference_baseline(reference), acc, cost)
            if acc == "top1_pct":
                _draw_published(ax, reference, cost)
            ax.set(xlabel=xlabel, ylabel=ylabel)
            ax.grid(alpha=0.25, lw=0.5)
        handles: dict[str, Any] = {}
        for ax in axes:
            for h, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, h)
        handles["Pareto front (val. top-1 vs FLOPs, seed means)"] = Line2D([], [], color="0.3", lw=1.0,
                                                                            drawstyle="steps-post")
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=2, frameon=False)
    return fig


def _save(fig: Figure, path: Path, fmt: str) -> Path:
    return save(fig, path, fmt)


def pareto_plot(df: pd.DataFrame, reference: pd.DataFrame | None, out_stem: Path,
                official: bool | None = None) -> list[Path]:
    """Write <out_stem>.png/.svg/.pdf of `pareto_figure`; returns the paths."""
    fig = pareto_figure(df, reference, official)
    out_stem = Path(out_stem)
    return [_save(fig, out_stem.with_name(f"{out_stem.name}.{fmt}"), fmt) for fmt in ("png", "svg", "pdf")]


# ---------------------------------------------------------------- paper table

def _millions(v: float) -> str:
    # small CIFAR models have well under 1M params: keep three decimals there
    m = v / 1e6
    return f"{m:.3f}" if m < 1 else f"{m:.2f}"


def _pm(mean: float, std: float, fmt: str = "{:.2f}") -> str:
    if pd.isna(mean):
        return "–"
    return fmt.format(mean) if pd.isna(std) else f"{fmt.format(mean)} ± {fmt.format(std)}"


def _cost_cell(value: float, reduction: float) -> str:
    return f"{_millions(value)} ({reduction:.1f}%)"


def _speedup_cell(r: pd.Series | dict) -> str:
    if pd.isna(r.get("speedup_b1")):
        return "–"
    return f"{r['speedup_b1']:.2f}x ({r['speedup_b1_q3'] - r['speedup_b1_q1']:.2f})"  # median (IQR), as perf.md


def _efficiency_cell(r: pd.Series | dict) -> str:
    """Speed-up over the FLOPs ratio it was promised (1.0: latency fell as much as FLOPs)."""
    if pd.isna(r.get("speedup_b1")) or pd.isna(r.get("flops")) or pd.isna(r.get("base_flops")):
        return "–"
    return f"{r['speedup_b1'] / (float(r['base_flops']) / float(r['flops'])):.2f}"


HEADERS = ["Method · scope · training after the baseline", "Front", "n", "Val top-1 (%)", "Test top-1 (%)",
           "vs control", "Params (M) (down %)", "FLOPs (M) (down %)", "Speed-up, eager b1 (IQR)", "Efficiency"]


def _measured_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Baseline, the no-pruning control, then configurations by FLOPs descending; cells as printed."""
    rows, base, control = [], baseline_point(df), control_point(df)
    if base is not None:
        b = df[df["row_type"] == "baseline"]
        val = b["val_top1_pct"].astype(float).mean() if len(b) else math.nan
        rows.append({"cells": ["Baseline (before pruning)", "", str(base.get("n", 1)), _pm(val, math.nan),
                               _pm(base["top1_pct"], base["top1_std"]), "", _millions(base["params"]),
                               _millions(base["flops"]), "1.00x", ""]})
    points = aggregate(df).sort_values("flops", ascending=False, kind="stable")
    for _, r in points.iterrows():
        label = r["label"].rsplit(" · n=", 1)[0]
        if r["n_failed"]:
            label += f" (partial: {int(r['n_failed'])} seed(s) failed)"
        vs = "" if control is None or r["method"] == "control" else f"{r['top1_pct'] - control['top1_pct']:+.2f}"
        rows.append({"cells": [
            label, "◆" if r["pareto"] and r["method"] != "control" else "", str(int(r["n"])),
            _pm(r["val_top1_pct"], r["val_std"]), _pm(r["top1_pct"], r["top1_std"]), vs,
            _cost_cell(r["params"], r["params_reduction_pct"]), _cost_cell(r["flops"], r["flops_reduction_pct"]),
            _speedup_cell(r), _efficiency_cell(r)]})
    return rows


def matched_sets(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DECORE configurations with their matched partners (rows whose `match_of` names one of its seeds' trials):
    per partner method the paired rows, seed by seed."""
    points = aggregate(df)
    trials = complete_trials(df)
    out = []
    for _, d in points[points["method"] == "decore"].iterrows():
        pairs: dict[str, list[tuple[pd.Series, pd.Series]]] = {}
        for h in d["hashes"]:
            own = trials[trials["config_hash"] == h].iloc[0]
            partners = trials[trials["match_of"].fillna("").str.split(";").map(lambda hs, h=h: h in hs)]
            for _, p in partners.iterrows():
                pairs.setdefault(str(p["method"]), []).append((own, p))
        if pairs:
            out.append({"decore": d, "pairs": pairs})
    return out


def _matched_rows(df: pd.DataFrame) -> list[list[str]]:
    rows = []
    for m in matched_sets(df):
        d = m["decore"]
        rows.append([d["label"], _pm(d["top1_pct"], d["top1_std"]), f"{100 * d['flops'] / d['base_flops']:.1f}%", "", ""])
        for method, pairs in m["pairs"].items():
            own = np.array([float(a["top1_pct"]) for a, _ in pairs])
            other = np.array([float(b["top1_pct"]) for _, b in pairs])
            flops = np.array([float(b["flops"]) / float(b["base_flops"]) for _, b in pairs])
            gap = np.array([100 * (float(b["flops"]) - float(a["flops"])) / float(a["flops"]) for a, b in pairs])
            diff = paired(other, own)  # per seed: partner minus DECORE
            n = diff.n
            scope = pairs[0][1]["scope"]
            rows.append([f"  {trial_label(pairs[0][1]).split(' (')[0]} at the same FLOPs · {scope} · "
                         f"{training_text(pairs[0][1])} · n={n}",
                         _pm(other.mean(), other.std(ddof=1) if n >= 2 else math.nan),
                         f"{100 * flops.mean():.1f}% (gap {gap.mean():+.2f}%)", diff.interval_text(),
                         diff.verdict("partner better", "DECORE better") + (", paired by seed" if n >= 2 else "")])
    return rows


def _reference_name(row: pd.Series) -> str:
    name = style(str(row["method"]))[0]
    variant = row["variant"] if isinstance(row["variant"], str) else ""
    if not variant:
        return name
    return variant if variant.lower().startswith(name.lower()) else f"{name} ({variant})"


PUBLISHED_HEADERS = ["Method", "Top-1 (%)", "Acc. drop", "Params (M) (down %)", "FLOPs (M) (down %)"]


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


MATCHED_HEADERS = ["Matched set", "Test top-1 (%)", "FLOPs kept (partner minus DECORE)",
                   "Partner minus DECORE (points, mean [95% t interval, n-1 dof])", "Verdict"]


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _timed(df: pd.DataFrame) -> pd.DataFrame:
    """The trial rows that carry a speed-up."""
    return df[(df["row_type"] == "trial") & df["speedup_b1"].notna()] if "speedup_b1" in df.columns else df.iloc[:0]


def speedup_when(df: pd.DataFrame) -> str:
    """When the table's speed-ups were timed, from the rows' `speedup_pass` (empty: before the measuring pass)."""
    timed = _timed(df)
    alone = int((timed.get("speedup_pass", pd.Series(dtype=object)) == "alone").sum())
    if alone == len(timed):
        return "timed alone, nothing training beside it: the sweep's measuring pass after its trials, or bench retime"
    before = ("timed inside their trials, before the measuring pass existed: other trials may have trained beside "
              "them; bench retime times them again alone")
    return before if alone == 0 else f"{alone} of {len(timed)} rows from the measuring pass, the other {len(timed) - alone} {before}"


FORM_TEXT = {"eager": ("eager PyTorch", "channels_last"), "folded": ("PyTorch with BatchNorm folded", "channels_last"),
             "onnxruntime": ("onnxruntime", "the ONNX export")}


def speedup_form(df: pd.DataFrame) -> tuple[str, str]:
    """The deploy form the table's speed-ups were timed in, from the rows' `speedup_form` (empty: eager), as
    (name, detail) for the footnote."""
    timed = _timed(df)
    forms = (timed["speedup_form"].fillna("eager") if "speedup_form" in timed.columns
             else pd.Series(["eager"] * len(timed), dtype=object)).value_counts()
    if len(forms) <= 1:
        return FORM_TEXT[forms.index[0] if len(forms) else "eager"]
    return "in several forms", ", ".join(f"{n} rows {FORM_TEXT[f][0]}" for f, n in forms.items())


def _markdown(measured: list[dict], published: list[dict], sources: list[str], caption: str,
              matched: list[list[str]], when: str, form: tuple[str, str] = FORM_TEXT["eager"]) -> str:
    lines = [f"*{caption}*", ""]
    lines += _md_table(HEADERS, [r["cells"] for r in measured])
    foot = ("◆: on its series' Pareto front (validation top-1 against FLOPs, on seed means). Mean ± std over n seeds. "
            "vs control: test top-1 minus the no-pruning control's (the baseline trained on for the same budget), so "
            "extra training is not read as a pruning gain. (down %): reduction against the baseline. Speed-up: "
            f"baseline time / pruned time at batch 1 on one CPU thread, {form[0]} ({form[1]}; "
            f"{when}), median (IQR: third minus first quartile) over interleaved rounds, as "
            "perf.md prints it; "
            "efficiency: speed-up / (baseline FLOPs / pruned FLOPs).")
    lines += ["", foot]
    if matched:
        lines += ["", "**Matched FLOPs.** Each DECORE configuration beside the other methods run at its FLOPs "
                  "(within 1%, the same scope, the same budget), seed by seed:", ""]
        lines += _md_table(MATCHED_HEADERS, matched)
    if published:
        lines += ["", "**Published (their schedules, not comparable to the rows above unless the protocol is):**", ""]
        lines += _md_table(PUBLISHED_HEADERS, [[f"{r['cells'][0]} [{r['source']}]", *r["cells"][1:]] for r in published])
        notes = [f"[{i}] {s}" for i, s in enumerate(sources, 1)]
        lines += ["", f"Sources: {'; '.join(notes)} (full references: results/reference/README.md)"]
    return "\n".join(lines) + "\n"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$", "–": "--",
                   "—": "---", "◆": r"$\bullet$", "·": r"$\cdot$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$",
                   "→": r"$\to$", "≈": r"$\approx$", "λ": r"$\lambda$", "−": "-", "…": r"\ldots{}", "°": r"$^\circ$",
                   "µ": r"$\mu$", "’": "'", "‘": "`", "“": "``", "”": "''"}


def latex_escape(text: str) -> str:
    """Text -> ASCII LaTeX source that pdflatex compiles with base packages; one pass, so replacements are never
    escaped twice. Other non-ASCII characters are decomposed to ASCII (e -> e for an accented e), else '?'."""
    out = re.sub("|".join(map(re.escape, _LATEX_SPECIALS)), lambda m: _LATEX_SPECIALS[m.group()], text)
    return "".join(c if c.isascii() else (unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode() or "?")
                   for c in out)


def _latex_tabular(headers: list[str], rows: list[list[str]]) -> list[str]:
    n = len(headers)
    lines = [rf"\begin{{tabular}}{{l{'r' * (n - 1)}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in rows]
    return lines + [r"\bottomrule", r"\end{tabular}"]


def _latex(measured: list[dict], published: list[dict], sources: list[str], caption: str,
           matched: list[list[str]]) -> str:
    lines = [r"% needs \usepackage{booktabs,graphicx}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(caption)}}}", r"\resizebox{\linewidth}{!}{%"]
    lines += _latex_tabular(HEADERS, [r["cells"] for r in measured]) + ["}"]
    if matched:
        lines += [r"\par\medskip", r"\resizebox{\linewidth}{!}{%"] + _latex_tabular(MATCHED_HEADERS, matched) + ["}"]
    if published:
        lines += [r"\par\medskip", r"{\small\emph{Published, their schedules}}\par"]
        rows = [[r["cells"][0], *r["cells"][1:]] for r in published]
        tab = _latex_tabular(PUBLISHED_HEADERS, rows)
        for i, r in enumerate(published):  # the source as a superscript on the name
            tab[4 + i] = tab[4 + i].replace(latex_escape(r["cells"][0]), latex_escape(r["cells"][0]) + rf"$^{{{r['source']}}}$", 1)
        lines += tab
    if sources:
        notes = "; ".join(f"$^{{{i}}}${latex_escape(s)}" for i, s in enumerate(sources, 1))
        lines += [r"\par\smallskip", rf"{{\footnotesize {notes}}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def paper_table(df: pd.DataFrame, reference: pd.DataFrame | None, official: bool | None = None) -> tuple[str, str]:
    """The paper's table of results as (markdown, latex): measured block with Pareto marks and the control,
    the matched-FLOPs sets, then the literature (a separate block, always: their schedules)."""
    measured = _measured_rows(df)
    published, sources = _reference_rows(reference)
    caption = f"{_title(df)}. Protocol: {protocol_text(df, official)}."
    matched = _matched_rows(df)
    return (_markdown(measured, published, sources, caption, matched, speedup_when(df), speedup_form(df)),
            _latex(measured, published, sources, caption, matched))


# ---------------------------------------------------------------- layer-wise plot

MATCH_TOLERANCE = 0.02  # partners in a layer-wise panel lie within 2% of DECORE's FLOPs (the runs match within 1%)


def _kept(row: pd.Series) -> dict[str, list]:
    text = row.get("kept_channels")
    return json.loads(text) if isinstance(text, str) and text else {}


def pick_layerwise_trials(df: pd.DataFrame, max_sets: int = 3) -> list[list[str]]:
    """Matched sets for the layer-wise plot: for up to `max_sets` DECORE trials (largest FLOPs reduction first),
    the DECORE trial and its matched partners (seed 0 where there are several). A DECORE trial without partners
    forms a set of one: the figure says that no matched partner exists."""
    trials = complete_trials(df).dropna(subset=["kept_channels", "flops"])
    decore = trials[trials["method"] == "decore"].sort_values("flops_reduction_pct", ascending=False, kind="stable")
    if decore.empty:
        raise UserError("no complete DECORE trial with kept_channels: pass trials=[[config hashes]] to choose")
    with_partners = [h for h in decore["config_hash"]
                     if trials["match_of"].fillna("").str.split(";").map(lambda hs, h=h: h in hs).any()]
    order = with_partners or list(decore["config_hash"][:1])
    sets = []
    for h in order[:max_sets]:
        partners = trials[trials["match_of"].fillna("").str.split(";").map(lambda hs, h=h: h in hs)]
        sets.append([h, *(str(p["config_hash"]) for _, p in partners.drop_duplicates("method").iterrows())])
    return sets


def _chosen_rows(df: pd.DataFrame, hashes: Sequence[str]) -> list[pd.Series]:
    found = {h: df[df["config_hash"] == h] for h in hashes}
    missing = [h for h, r in found.items() if r.empty]
    if missing:
        raise UserError(f"no trial with config_hash {missing}: pick hashes from runs.csv")
    return [r.iloc[0] for r in found.values()]


def _layer_panel(ax: Axes, rows: list[pd.Series], versions: dict[str, int]) -> None:
    """One bar per distinct allocation (methods that kept the same channels share a bar and its label), groups in
    graph order under the site's names (bench.figures), groups outside a method's scope hatched, kept whole."""
    kept = [_kept(r) for r in rows]
    groups = ordered_groups(str(rows[0]["model"]), kept)
    ids = [g for g, _, _ in groups]
    shared = distinct_allocations(kept)
    width, x = 0.8 / len(shared), np.arange(len(ids))
    for i, members in enumerate(shared):
        r, k = rows[members[0]], kept[members[0]]
        colour = style(str(r["method"]))[1]
        pos = x + (i - (len(shared) - 1) / 2) * width
        inside = np.array([g in k for g in ids])
        frac = np.array([k[g][0] / k[g][1] if g in k else 1.0 for g in ids])
        # short: the legend sits beside the bars (test top-1 is in the table); equal allocations share a line
        label = "\n= ".join(f"{trial_label(rows[m])}, {rows[m]['scope']}" for m in members) + \
            (" (the same channels)" if len(members) > 1 else "")
        ax.bar(pos[inside], frac[inside], width, color=colour, label=label)
        if (~inside).any():  # not in this method's scope: kept whole, drawn hatched
            ax.bar(pos[~inside], frac[~inside], width, facecolor="none", edgecolor=colour, hatch="///", lw=0.6)
    ax.set_xticks(x, [group_name(*g) for g in groups], rotation=90)
    ax.set_xlim(-0.6, len(ids) - 0.4)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("channels kept (fraction)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)  # beside the bars, never on them


def layerwise_figure(df: pd.DataFrame, trials: Sequence[Sequence[str]] | None = None) -> Figure:
    """Kept fraction per channel group (graph order): one panel per matched set, DECORE beside the partners
    that ran at its FLOPs, titled with its lambda and FLOPs. Partners further than MATCH_TOLERANCE from DECORE's
    FLOPs are refused. Groups outside a method's scope are drawn kept whole and hatched."""
    sets = [list(t) for t in trials] if trials is not None else pick_layerwise_trials(df)
    versions = _versions(df)
    n_groups = len(_kept(_chosen_rows(df, sets[0][:1])[0]))
    with print_rc():
        fig = Figure(figsize=(max(7.0, 0.16 * n_groups + 6.0), 3.0 * len(sets) + 0.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(len(sets), 1, squeeze=False)[:, 0])
        for ax, hashes in zip(axes, sets):
            rows = _chosen_rows(df, hashes)
            ref = float(rows[0]["flops"])
            for r in rows[1:]:
                if abs(float(r["flops"]) - ref) > MATCH_TOLERANCE * float(r["base_flops"]):
                    raise UserError(f"trial {r['config_hash']} ({style(str(r['method']))[0]}) is at "
                                    f"{100 * float(r['flops']) / float(r['base_flops']):.1f}% of the FLOPs and "
                                    f"{rows[0]['config_hash']} at {100 * ref / float(rows[0]['base_flops']):.1f}%: a layer-wise "
                                    f"panel compares trials within {100 * MATCH_TOLERANCE:.0f}% of the FLOPs (pick matched partners)")
            _layer_panel(ax, rows, versions)
            head = (f"{trial_label(rows[0])} (seed {rows[0]['seed']}): {100 * ref / float(rows[0]['base_flops']):.1f}% "
                    "of the FLOPs kept")
            tail = ("; beside the methods run at its FLOPs (matched within 1%)" if len(rows) > 1 else
                    "; no matched partner exists for this DECORE trial (run the sweep with --match decore)")
            ax.set_title(head + tail, loc="left")
    return fig


def layerwise_plot(df: pd.DataFrame, out: Path, trials: list[list[str]] | None = None) -> Path:
    """Write `layerwise_figure` as a PNG to `out`."""
    return _save(layerwise_figure(df, trials), Path(out), "png")


# ---------------------------------------------------------------- DECORE's agents over the joint phase

def agent_histories(folder: Path, df: pd.DataFrame, limit: int = 6) -> list[tuple[pd.Series, list[dict]]]:
    """(row, per-epoch history of the joint phase) of DECORE trials whose trial folder holds history.json."""
    out = []
    trials = complete_trials(df)
    for _, r in trials[trials["method"] == "decore"].sort_values("knob_value", kind="stable").iterrows():
        path = Path(folder) / "trials" / f"decore-{r['config_hash']}" / "history.json"
        if path.is_file():
            hist = [h for h in json.loads(path.read_text()).get("method", []) if "keep_prob" in h]
            if hist:
                out.append((r, hist))
    return out[:limit]


def _agent_series(hist: list[dict]) -> tuple[list[int], list[dict], str]:
    """(x, records, x label): the per-step records (AgentTrace) when the history has them, else one per epoch."""
    steps = [r for h in hist for r in h.get("agent_steps", [])]
    if steps:
        return [r["step"] for r in steps], steps, "agent step"
    records = [{"keep_q": {g: [p, p, p] for g, p in h["keep_prob"].items()},
                "alive": h.get("kept_if_pruned", {})} for h in hist]
    return [h["epoch"] for h in hist], records, "joint epoch (per-step records not stored)"


def agents_figure(df: pd.DataFrame, histories: list[tuple[pd.Series, list[dict]]]) -> Figure:
    """Per DECORE trial, over agent steps (a one-epoch joint phase still shows a trajectory), with markers:
    median keep-probability per group with its 10-90% band (left), channels alive (p >= 0.5) per group as a
    fraction of the group (middle), and the FLOPs the network would have if pruned at each epoch's end (right).
    Groups in graph order, dark to light."""
    with print_rc():
        fig = Figure(figsize=(7.0, 2.3 * len(histories) + 0.4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(histories), 3, squeeze=False)
        cmap = matplotlib.colormaps["viridis"]
        for (ax_p, ax_a, ax_f), (r, hist) in zip(axes, histories):
            x, records, xlabel = _agent_series(hist)
            kept = _kept(r)
            gids = [g for g, _, _ in ordered_groups(str(r["model"]), [{g: [0, 1] for g in records[0]["keep_q"]}])]
            for i, g in enumerate(gids):
                colour = cmap(i / max(len(gids) - 1, 1))
                q = np.array([rec["keep_q"][g] for rec in records])
                ax_p.plot(x, q[:, 1], color=colour, lw=0.8, marker="o", ms=2)
                ax_p.fill_between(x, q[:, 0], q[:, 2], color=colour, alpha=0.08, lw=0)
                units = kept.get(g, [0, 1])[1] or 1
                if all(g in rec["alive"] for rec in records):
                    ax_a.plot(x, [rec["alive"][g] / units for rec in records], color=colour, lw=0.8, marker="o", ms=2)
            ax_p.set(ylim=(0, 1.02), xlabel=xlabel, ylabel="keep-probability")
            ax_a.set(ylim=(0, 1.05), xlabel=xlabel, ylabel="channels alive (fraction)")
            ax_p.set_title(f"{trial_label(r)} (seed {r['seed']}): median, 10-90% band", loc="left")
            ends = [h.get("agent_step", h["epoch"]) for h in hist] if xlabel == "agent step" else [h["epoch"] for h in hist]
            if "flops_if_pruned" in hist[0]:
                ax_f.plot(ends, [100 * h["flops_if_pruned"] / float(r["base_flops"]) for h in hist], marker="o",
                          color=style("decore")[1])
            ax_f.axhline(100 * float(r["flops"]) / float(r["base_flops"]), color="0.4", ls=":", lw=0.8)
            ax_f.set(ylim=(0, 105), xlabel=xlabel, ylabel="FLOPs if pruned (%)")
            for ax in (ax_p, ax_a, ax_f):
                if xlabel == "agent step" and max(x) > 20:
                    ax.set_xscale("log")  # the records are spaced geometrically
    return fig


# ---------------------------------------------------------------- the whole report

def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _counts(df: pd.DataFrame) -> str:
    trials = df[df["row_type"] == "trial"]
    status = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    return (f"{len(df)} rows: {int((df['row_type'] == 'baseline').sum())} baseline, "
            f"{len(trials)} trials ({status or 'none'})")


def official_data(folder: Path) -> bool | None:
    """Whether the experiment ran on the official dataset, as recorded in experiment.json when the data was loaded
    (a CIFAR download through torchvision, checksum-verified, marks its converted arrays; anything else is not
    official). None: the experiment predates the record."""
    path = Path(folder) / "experiment.json"
    if not path.is_file():
        return None
    return bool(json.loads(path.read_text()).get("data", {}).get("official", False))


def _readme(df: pd.DataFrame, folder: Path, table_md: str, layers: bool, agents: bool, official: bool | None) -> str:
    overlay = ("Hollow markers: published numbers (results/reference/), their own schedules."
               if official else "Published points are not drawn: " +
               ("this data is not the official set (its fingerprint is not that of a checksum-verified download)."
                if official is False else "the experiment did not record whether its data is the official set.") +
               " The published rows stay in their own block of the table.")
    parts = [f"# {_title(df)}", "", f"Protocol: {protocol_text(df, official)}.", "",
             "## Paper figure", "", "![Test top-1 change against the no-pruning control](paper.png)", "",
             (folder / "caption.md").read_text().strip() if (folder / "caption.md").is_file() else "", "",
             "Files: [paper.pdf](paper.pdf) / [paper.svg](paper.svg) (7 in, double column), "
             "[paper-column.pdf](paper-column.pdf) / [paper-column.svg](paper-column.svg) / "
             "[paper-column.png](paper-column.png) (3.3 in, single column); the caption as "
             "[caption.md](caption.md) and [caption.tex](caption.tex). TrueType fonts, text at 8 pt.", "",
             "## Fronts and table", "",
             "![Validation and test top-1 against FLOPs and params](pareto.png)", "",
             "Vector versions: [pareto.svg](pareto.svg), [pareto.pdf](pareto.pdf). Colour and marker: method (one "
             "colour per method across the project, Okabe-Ito); filled: scope all, half-filled: scope internal; mean "
             "± std over seeds, ringed where some seeds failed; lines: each series' Pareto front as runs.csv flags it "
             "(validation top-1 against FLOPs on seed means; left panel), drawn through the same configurations on "
             "the test panels. Star: the baseline; dashed line: the no-pruning control. FLOPs count "
             "multiply-accumulates (MACs). " + overlay, "", table_md]
    if layers:
        parts += ["![Channels kept per group at matched FLOPs](layers.png)", ""]
    if agents:
        parts += ["![DECORE's agents over the joint phase](agents.png)", ""]
    parts += ["## How this was made", "",
              f"`python -m bench report {folder}` read `runs.csv` ({_counts(df)}); failed, pruned and "
              "infeasible trials are counted but not plotted. LaTeX of the table: [table.tex](table.tex) "
              "(booktabs and graphicx)."]
    return "\n".join(parts) + "\n"


def _has_layers(df: pd.DataFrame) -> bool:
    trials = complete_trials(df)
    return bool(trials.loc[trials["method"] == "decore", "kept_channels"].notna().any())


def report_experiment(folder: Path, reference_path: Path | None = None) -> dict[str, Path]:
    """Plots, tables and README of one experiment folder; returns {file name: path}."""
    folder = Path(folder)
    if not (folder / "runs.csv").is_file():
        raise UserError(f"{str(folder / 'runs.csv')!r} does not exist: pass an experiment folder that holds runs.csv")
    df = mark_pareto(ResultsTable(folder).read())  # flags as today's rule sets them (tables written before: per seed)
    if complete_trials(df).empty:
        raise UserError(f"{str(folder / 'runs.csv')!r} has no complete trials yet: nothing to report")
    first = df.iloc[0]
    reference = load_reference(str(first["model"]), str(first["dataset"]), reference_path)
    official = official_data(folder)
    overlay = reference if official else None  # published points only on the official data
    out = {p.name: p for p in pareto_plot(df, overlay, folder / "pareto", official)}
    md, tex = paper_table(df, reference, official)
    out["table.md"], out["table.tex"] = _write_text(folder / "table.md", md), _write_text(folder / "table.tex", tex)
    layers = _has_layers(df)
    if layers:
        out["layers.png"] = layerwise_plot(df, folder / "layers.png")
    out.update(write_paper_figure(df, overlay, folder, official))
    histories = agent_histories(folder, df)
    if histories:
        out["agents.png"] = _save(agents_figure(df, histories), folder / "agents.png", "png")
    else:  # an agents.png of an earlier report whose trial folders are gone: it would show nothing we can redo
        (folder / "agents.png").unlink(missing_ok=True)
    out["README.md"] = _write_text(folder / "README.md", _readme(df, folder, md, layers, bool(histories), official))
    return out
