"""The paper figure of one experiment, in the project's one look (bench.report.style).

`paper_figure(df, ...)` draws the change in test top-1 against the no-pruning control (mean and 95%
interval over seeds) against FLOPs kept (%) and against the measured speed-up, at the two widths of a
two-column paper (3.3 in and 7 in), with 8 pt text and TrueType fonts in the PDF; the protocol goes to
caption.md / caption.tex, not into a title.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.core.io import atomic_write
from bench.report.style import SCOPE_FILL, method_order, method_style, print_rc, save

logging.getLogger("fontTools").setLevel(logging.WARNING)  # its font subsetting logs every table at INFO

WIDTHS_IN = {"paper": 7.0, "paper-column": 3.3}  # double-column and single-column figure widths


# ---------------------------------------------------------------- statistics

def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (numerical: the CDF on a fine grid, no SciPy): t_{0.975, 4} = 2.776."""
    if df < 1:
        return math.nan
    x = np.linspace(0.0, 200.0, 400_001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(x))])
    return float(np.interp(p, cdf, x))


def change_vs(values: np.ndarray, ref: np.ndarray, seeds: np.ndarray | None = None,
              ref_seeds: np.ndarray | None = None) -> tuple[float, float]:
    """(mean change, 95% half-width) of `values` minus `ref` over seeds: paired by seed when every seed has
    its reference, else Welch's interval; NaN half-width with one seed (no interval claimed)."""
    values, ref = np.asarray(values, float), np.asarray(ref, float)
    if seeds is not None and ref_seeds is not None and len(values) > 1 and set(seeds) <= set(ref_seeds):
        by_seed = dict(zip(ref_seeds, ref))
        diff = values - np.array([by_seed[s] for s in seeds])
        return float(diff.mean()), t_quantile(0.975, len(diff) - 1) * float(diff.std(ddof=1)) / math.sqrt(len(diff))
    mean = float(values.mean() - ref.mean())
    if len(values) < 2:
        return mean, math.nan
    va = values.var(ddof=1) / len(values)
    vb = ref.var(ddof=1) / len(ref) if len(ref) > 1 else 0.0
    dof = (va + vb) ** 2 / (va ** 2 / (len(values) - 1) + (vb ** 2 / (len(ref) - 1) if len(ref) > 1 else 0.0))
    return mean, t_quantile(0.975, max(1, int(dof))) * math.sqrt(va + vb)


# ---------------------------------------------------------------- the paper figure

def _reference_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows every change is taken against: the no-pruning control's seeds, else the baseline's."""
    from bench.report.rows import complete_trials

    control = complete_trials(df)
    control = control[control["method"] == "control"]
    if not control.empty:
        return control, "control"
    return df[df["row_type"] == "baseline"].dropna(subset=["top1_pct"]), "baseline"


def paper_points(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One row per pruned configuration: method, scope, series, pareto, FLOPs kept (%), speed-up, n, the change
    in test top-1 against the reference rows (`_reference_rows`) and its 95% half-width; and what the
    reference is ('control' or 'baseline')."""
    from bench.report.rows import aggregate

    ref, against = _reference_rows(df)
    points = aggregate(df)
    points = points[points["method"] != "control"]
    out = []
    for _, p in points.iterrows():
        rows = df[df["config_hash"].isin(p["hashes"])]
        change, half = change_vs(rows["top1_pct"].to_numpy(float), ref["top1_pct"].to_numpy(float),
                                 rows["seed"].to_numpy(), ref["seed"].to_numpy())
        out.append({"method": p["method"], "scope": p["scope"], "series": p["series"], "label": p["label"],
                    "pareto": bool(p["pareto"]), "n": int(p["n"]), "change": change, "ci95": half,
                    "flops_kept": 100 * float(p["flops"]) / float(p["base_flops"]),
                    "speedup": float(p["speedup_b1"]) if pd.notna(p["speedup_b1"]) else math.nan})
    return pd.DataFrame(out), against


def _published_points(reference: pd.DataFrame | None) -> pd.DataFrame:
    """Published points as changes against their own papers' baselines, at their FLOPs kept (%)."""
    if reference is None or reference.empty:
        return pd.DataFrame(columns=["method", "change", "flops_kept"])
    return pd.DataFrame({"method": reference["method"].astype(str),
                         "change": reference["top1"].astype(float) - reference["base_top1"].astype(float),
                         "flops_kept": 100 * reference["flops_m"].astype(float) / reference["base_flops_m"].astype(float)})


def _panel(ax, pts: pd.DataFrame, published: pd.DataFrame, x: str, xlabel: str, against: str) -> None:
    for (method, scope), part in pts.groupby(["method", "scope"], sort=False):
        _, colour, marker = method_style(str(method))
        ok = part[x].notna()
        ax.errorbar(part.loc[ok, x], part.loc[ok, "change"], yerr=part.loc[ok, "ci95"].fillna(0.0), fmt=marker,
                    color=colour, ms=5, mec=colour, mew=0.8, fillstyle=SCOPE_FILL.get(str(scope), "full"),
                    elinewidth=0.8, capsize=2, zorder=3)
    fronts = pts[pts["pareto"]] if x == "flops_kept" else pts.iloc[0:0]  # a front is chosen on FLOPs: drawn there
    for _, part in fronts.groupby("series", sort=False):  # fronts as runs.csv flags them
        part = part.dropna(subset=[x]).sort_values(x)
        colour = method_style(str(part["method"].iloc[0]))[1] if len(part) else "k"
        ax.plot(part[x], part["change"], color=colour, lw=0.8, alpha=0.7, zorder=2)
    if x == "flops_kept":
        for method, part in published.groupby("method", sort=False):
            _, colour, marker = method_style(str(method))
            ax.plot(part["flops_kept"], part["change"], marker, color=colour, ms=5, fillstyle="none", mew=0.8, ls="",
                    zorder=3)
    ax.axhline(0, color="0.4", lw=0.6, ls="--", zorder=1)
    if x == "speedup":
        ax.axvline(1, color="0.4", lw=0.6, ls=":", zorder=1)
        if not pts[x].notna().any():
            ax.text(0.5, 0.5, "speed-up not measured", transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"Test top-1 change vs {'control' if against == 'control' else 'baseline'} (pp)")
    ax.grid(alpha=0.25, lw=0.5)


def _legend_handles(pts: pd.DataFrame, published: pd.DataFrame) -> list[Line2D]:
    handles = []
    for m in method_order(pd.concat([pts["method"], published["method"]])):
        name, colour, marker = method_style(m)
        handles.append(Line2D([], [], marker=marker, color=colour, ls="", ms=5, label=name))
    scopes = [s for s in ("all", "internal") if s in set(pts["scope"].astype(str))]
    handles += [Line2D([], [], marker="o", color="0.2", ls="", ms=5, fillstyle=SCOPE_FILL[s], label=f"scope {s}")
                for s in scopes]
    if not published.empty:
        handles.append(Line2D([], [], marker="o", color="0.2", ls="", ms=5, fillstyle="none", label="published"))
    if pts["pareto"].any():
        handles.append(Line2D([], [], color="0.2", lw=0.8, label="front"))
    return handles


def paper_figure(df: pd.DataFrame, reference: pd.DataFrame | None, width: str = "paper") -> Figure:
    """Test top-1 change against the control vs FLOPs kept (%) and vs measured speed-up, at `width`
    (WIDTHS_IN: 'paper' 7 in, two panels side by side; 'paper-column' 3.3 in, stacked)."""
    pts, against = paper_points(df)
    published = _published_points(reference)
    wide = width == "paper"
    with print_rc():
        fig = Figure(figsize=(WIDTHS_IN[width], 3.0 if wide else 5.4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2) if wide else fig.subplots(2, 1)
        _panel(axes[0], pts, published, "flops_kept", "FLOPs kept (% of baseline MACs)", against)
        _panel(axes[1], pts, published, "speedup", "Measured speed-up (x, batch 1, 1 CPU thread)", against)
        handles = _legend_handles(pts, published)
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7 if wide else 3),
                   frameon=False, handletextpad=0.3, columnspacing=0.9)
    return fig


def paper_caption(df: pd.DataFrame, official: bool | None, published: bool) -> dict[str, str]:
    """The figure's caption as Markdown and LaTeX: what is drawn, how intervals are formed, the protocol."""
    from bench.report.rows import _title, latex_escape, protocol_text

    pts, against = paper_points(df)
    ns = sorted(set(pts["n"])) if len(pts) else [0]
    ref = ("the no-pruning control (the unpruned baseline trained on for the same images after the baseline)"
           if against == "control" else "the unpruned baseline (this experiment has no no-pruning control)")
    interval = ("Bars: 95% t-interval over seeds (paired by seed where the reference has the same seeds, else "
                "Welch)." if max(ns) > 1 else "Every configuration has one seed: no interval is drawn.")
    text = (f"{_title(df)}. Change in test top-1 (percentage points, pp) of each pruned configuration against {ref}, "
            f"mean over n = {'/'.join(map(str, ns))} seed(s). {interval} Left/top: FLOPs kept, as a percentage of the "
            "baseline's multiply-accumulates (MACs) of one image; right/bottom: measured speed-up, baseline latency / "
            "pruned latency at batch 1 on one CPU thread in eager PyTorch (channels_last), median over interleaved "
            "rounds. Colour and marker: method; filled: scope all (every prunable group); half-filled: scope internal "
            "(stream channels kept); lines (left/top only: a front is chosen on FLOPs): each series' Pareto front as "
            "runs.csv flags it (validation top-1 against FLOPs on seed means). "
            + ("Hollow: published points, each against its own paper's baseline and schedule. " if published else "")
            + f"Protocol: {protocol_text(df, official)}.")
    return {"md": text + "\n", "tex": latex_escape(text) + "\n"}


def write_paper_figure(df: pd.DataFrame, reference: pd.DataFrame | None, folder: Path,
                       official: bool | None) -> dict[str, Path]:
    """paper.{pdf,png,svg} (7 in), paper-column.{pdf,png,svg} (3.3 in), caption.md and caption.tex."""
    out: dict[str, Path] = {}
    for stem in WIDTHS_IN:
        fig = paper_figure(df, reference, stem)
        for fmt in ("pdf", "png", "svg"):
            out[f"{stem}.{fmt}"] = save(fig, Path(folder) / f"{stem}.{fmt}", fmt, dpi=300)
    caption = paper_caption(df, official, reference is not None and not reference.empty)
    for ext, text in caption.items():
        out[f"caption.{ext}"] = atomic_write(Path(folder) / f"caption.{ext}", lambda tmp, t=text: Path(tmp).write_text(t))
    return out
