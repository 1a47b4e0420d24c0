"""Plots and tables of one experiment, as pure functions of its results table (runs.csv).

`report_experiment(folder)` is what `python -m bench report <folder>` runs: Pareto plots (PNG, SVG, PDF),
a paper-style table (Markdown and LaTeX), a layer-wise plot and a README that shows them. Published
numbers (results/reference/published_results.csv) are drawn and listed beside our own, never mixed in.
"""
from __future__ import annotations

import json
import math
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

from bench.core.errors import UserError
from bench.report.figures import write_paper_figure
from bench.report.style import SCOPE_FILL, distinct_allocations, group_name, ordered_groups, print_rc, save
from bench.core.io import atomic_write
from bench.trial.results import ResultsTable, mark_pareto
from bench.report.rows import _reference_baseline, _title, _versions, aggregate, baseline_point, complete_trials, control_point, load_reference, official_data, protocol_text, style, trial_label
from bench.report.tables import paper_table


# ---------------------------------------------------------------- Pareto plot (fronts: runs.csv's `pareto` flags)


_PANELS = (("val_top1_pct", "flops", "Validation top-1 (%)", "FLOPs (M MACs)"),
           ("top1_pct", "flops", "Test top-1 (%)", "FLOPs (M MACs)"),
           ("top1_pct", "params", "Test top-1 (%)", "Params (M)"))


def _draw_measured(ax: Axes, points: pd.DataFrame, acc: str, cost: str) -> None:
    """Each series in its method's colour, scope by fill (bench.report.style); its front through the configurations
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
    graph order under the site's names (bench.report.style), groups outside a method's scope hatched, kept whole."""
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
