"""Several experiments compared: each one's change in test top-1 against its *own* no-pruning control, against
FLOPs kept (% of its own baseline), so models of any accuracy share an axis.

Experiments share a figure only when they ran on the same data (fingerprint) under the same protocol
(selection split and budget rule): `groups` forms them, one figure each. Points are configurations (seed
means); lines are the fronts runs.csv flags. One trace per (experiment, method) with `meta.experiment`; the
page's checkboxes show and hide whole experiments.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .data import CONTROL, style
from .pareto import method_order

DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "triangle-up", "diamond", "cross", "x", "star-triangle-up", "pentagon")


def protocol_key(df: pd.DataFrame) -> tuple[str, str, str]:
    """(data fingerprint, selection split, budget rule) of an experiment; 'unrecorded' where the table lacks one."""
    def one(name: str) -> str:
        vals = sorted({str(v) for v in df[name].dropna()}) if name in df.columns else []  # raw: no aliases
        return "+".join(vals) if vals else "unrecorded"
    return one("data_fingerprint"), one("selection"), one("budget")


def group_heading(key: tuple[str, str, str]) -> str:
    fingerprint, selection, budget = key
    split = {"val": "validation", "test": "test (legacy)", "unrecorded": "test (legacy: before the selection split)"}
    return f"data {fingerprint}, decisions on {split.get(selection, selection)}, budget rule {budget}"


def groups(tables: dict[str, pd.DataFrame]) -> dict[tuple[str, str, str], list[str]]:
    """Experiments by protocol_key: only these share an axis."""
    out: dict[tuple[str, str, str], list[str]] = {}
    for name, df in tables.items():
        out.setdefault(protocol_key(df), []).append(name)
    return out


def changes(pts: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Configurations (seed means) of one experiment: FLOPs kept (%), test top-1 change against the experiment's
    own control (else its own baseline: `base_top1`), front flag; and which reference was used."""
    trials = pts[pts["method"] != CONTROL]
    control = pts.loc[pts["method"] == CONTROL, "top1"]
    if len(control):
        ref, against = float(control.mean()), "control"
    else:
        ref, against = float((trials["top1"] + trials["drop"]).mean()), "baseline"
    grouped = trials.groupby("config_key", sort=False)
    out = pd.DataFrame({"method": grouped["method"].first(), "series": grouped["series"].first(),
                        "label": grouped["label"].first(), "n": grouped.size(),
                        "kept": 100 * grouped["rel_flops"].mean(), "change": grouped["top1"].mean() - ref,
                        "pareto": grouped["pareto"].any(), "scope": grouped["scope"].first()})
    return out.reset_index(drop=True), against


def compare_figure(experiments: dict[str, pd.DataFrame], title: str = "") -> go.Figure:
    """experiment name -> its points table (data.points); colour per method, marker shape per experiment."""
    traces: list[go.Scatter] = []
    for i, (name, pts) in enumerate(experiments.items()):
        conf, against = changes(pts)
        for method in method_order(conf["method"]):
            part = conf[conf["method"] == method]
            label, colour = style(method)
            traces.append(go.Scatter(
                x=part["kept"].tolist(), y=part["change"].tolist(), mode="markers", legendgroup=name,
                name=f"{name}: {label} (vs its {against})", meta={"kind": "measured", "experiment": name, "method": method},
                customdata=[[lb, f"{n}"] for lb, n in zip(part["label"], part["n"])],
                hovertemplate=(f"<b>%{{customdata[0]}}</b><br>{name}<br>FLOPs kept %{{x:.1f}}%<br>test top-1 change vs "
                               f"its {against}: %{{y:+.2f}} pp (mean of %{{customdata[1]}} seed(s))<extra></extra>"),
                marker=dict(color=colour, size=9, line=dict(width=1, color=colour), symbol=SYMBOLS[i % len(SYMBOLS)])))
            for _, front in part[part["pareto"]].groupby("series", sort=False):
                front = front.sort_values("kept")
                traces.append(go.Scatter(
                    x=front["kept"].tolist(), y=front["change"].tolist(), mode="lines", legendgroup=name,
                    showlegend=False, hoverinfo="skip", name=f"{name}: {front['series'].iloc[0]} front",
                    meta={"kind": "front", "experiment": name, "method": method},
                    line=dict(color=colour, width=1.2, dash=DASHES[i % len(DASHES)])))
    fig = go.Figure(traces)
    fig.add_hline(y=0, line=dict(color="#999999", width=1, dash="dash"))
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=13)),
        xaxis=dict(title="FLOPs kept (% of the experiment's own baseline, MACs)"),
        yaxis=dict(title="Test top-1 change vs own control (pp)"),
        template="plotly_white", height=520, hovermode="closest", margin=dict(t=60))
    return fig
