"""Pareto fronts of one experiment: top-1 against FLOPs, params or measured speed-up (one figure per axis).

Every complete trial of runs.csv is one point (a seed is a point; its hover shows the mean +- std of its
configuration); each method's front is the step line through its non-dominated points. Published points
are hollow, the baseline a star; the legend toggles methods, two buttons toggle published points and the
no-pruning control. Each trace carries `meta.kind` (measured, front, baseline, published, highlight) and
`meta.method`, which the page's script and the tests read.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from bench.results import non_dominated

from .data import CONTROL, HOVER_TEMPLATE, hover_data, style

# axis name -> (x column of the points table, scale, axis title, larger is better)
AXES: dict[str, tuple[str, float, str, bool]] = {
    "flops": ("flops", 1e6, "FLOPs (M multiply-accumulates per image)", False),
    "params": ("params", 1e6, "Params (M)", False),
    "speedup": ("speedup", 1.0, "Measured speed-up (baseline latency / latency)", True),
}
MARKERS = {"decore": "circle", "l1": "square", "random": "triangle-up", CONTROL: "diamond"}


def method_order(methods: pd.Series) -> list[str]:
    """decore, l1, random, then others alphabetically, the control last."""
    first = ["decore", "l1", "random"]
    found = list(dict.fromkeys(methods))
    rest = sorted(m for m in found if m not in first and m != CONTROL)
    return [m for m in first if m in found] + rest + ([CONTROL] if CONTROL in found else [])


def axes_available(pts: pd.DataFrame) -> list[str]:
    """The axes this experiment can draw: FLOPs and params always, speed-up where it was measured."""
    return [a for a, (c, *_) in AXES.items() if pts[c].notna().any()] if len(pts) else ["flops", "params"]


def _front(x: np.ndarray, y: np.ndarray, higher_better: bool) -> tuple[list[float], list[float]]:
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if not len(x):
        return [], []
    mask = non_dominated(y, -x if higher_better else x)
    order = np.argsort(x[mask], kind="stable")
    return x[mask][order].tolist(), y[mask][order].tolist()


def _measured(pts: pd.DataFrame, method: str, xcol: str, scale: float, better: bool) -> list[go.Scatter]:
    part = pts[pts["method"] == method]
    name, colour = style(method)
    x, y = (part[xcol] / scale).to_numpy(float), part["top1"].to_numpy(float)
    fx, fy = _front(x, y, better)
    meta = {"kind": "measured", "method": method}
    dots = go.Scatter(x=x.tolist(), y=y.tolist(), mode="markers", name=name, legendgroup=method, meta=meta,
                      marker=dict(color=colour, size=9, symbol=MARKERS.get(method, "circle"),
                                  line=dict(width=0.5, color="white")),
                      customdata=hover_data(part), hovertemplate=HOVER_TEMPLATE)
    line = go.Scatter(x=fx, y=fy, mode="lines", line=dict(color=colour, width=1.5, shape="vh" if better else "hv"),
                      legendgroup=method, showlegend=False, hoverinfo="skip",
                      meta={"kind": "front", "method": method}, name=f"{name} front")
    return [dots, line]


def _baseline(base: dict[str, float] | None, axis: str) -> list[go.Scatter]:
    if base is None:
        return []
    xcol, scale, _, _ = AXES[axis]
    x = 1.0 if axis == "speedup" else base[xcol] / scale
    return [go.Scatter(x=[x], y=[base["top1"]], mode="markers", name="Baseline (measured)",
                       marker=dict(symbol="star", size=15, color="black"), meta={"kind": "baseline"},
                       hovertemplate=f"<b>Baseline</b> (unpruned, {base['n']} seed(s))<br>top-1 %{{y:.2f}}%<extra></extra>")]


def _published(reference: pd.DataFrame, axis: str) -> list[go.Scatter]:
    if axis == "speedup" or reference.empty:
        return []
    col = f"{axis}_m"
    traces = []
    base = reference.attrs.get("baseline")
    if base:
        traces.append(go.Scatter(
            x=[float(base[col])], y=[float(base["top1"])], mode="markers", name="Baseline (reported)",
            legendgroup="published", meta={"kind": "published", "method": "baseline"},
            marker=dict(symbol="star-open", size=15, color="black"),
            hovertemplate=f"<b>Baseline</b> (published, in {base['reported_in']})<br>top-1 %{{y:.2f}}%<br>"
                          "%{x:.2f}M<extra></extra>"))
    for method, part in reference.groupby("method", sort=False):
        name, colour = style(str(method))
        variant = part["variant"].fillna(name).astype(str).tolist()
        traces.append(go.Scatter(
            x=part[col].astype(float).tolist(), y=part["top1"].astype(float).tolist(), mode="markers+text",
            name=f"{name} (reported)", legendgroup="published", meta={"kind": "published", "method": str(method)},
            text=variant, textposition="top right", textfont=dict(size=9, color=colour),
            marker=dict(symbol=MARKERS.get(str(method), "diamond"), size=10, color="rgba(0,0,0,0)",
                        line=dict(color=colour, width=1.5)),
            customdata=part["reported_in"].fillna("").astype(str).tolist(),
            hovertemplate="<b>%{text}</b> (published, their schedule)<br>top-1 %{y:.2f}%<br>%{x:.2f}M<br>"
                          "reported in %{customdata}<extra></extra>"))
    return traces


def _highlight() -> go.Scatter:
    """Empty ring trace; the page's script fills it with the clicked point and its matched partners."""
    return go.Scatter(x=[], y=[], mode="markers", name="matched partners", showlegend=False, hoverinfo="skip",
                      meta={"kind": "highlight"},
                      marker=dict(symbol="circle-open", size=22, color="#d62728", line=dict(width=3)))


def _toggles(traces: list[go.Scatter]) -> list[dict[str, Any]]:
    """Buttons that show/hide the published points and the control (the legend toggles each method)."""
    buttons = []
    for label, pick in (("published points", lambda m: m.get("kind") == "published"),
                        ("no-pruning control", lambda m: m.get("method") == CONTROL)):
        idx = [i for i, t in enumerate(traces) if pick(t.meta or {})]
        if idx:
            buttons.append(dict(label=f"toggle {label}", method="restyle",
                                args=[{"visible": False}, idx], args2=[{"visible": True}, idx]))
    return [dict(type="buttons", direction="right", x=0, xanchor="left", y=1.01, yanchor="bottom",
                 buttons=buttons, showactive=False, active=-1, pad=dict(r=4))] if buttons else []  # -1: the first click hides


def pareto_figure(pts: pd.DataFrame, base: dict[str, float] | None, reference: pd.DataFrame, axis: str,
                  subtitle: str = "") -> go.Figure:
    """Top-1 against one cost axis (AXES): measured points and fronts, baseline, published points."""
    xcol, scale, xtitle, better = AXES[axis]
    traces: list[go.Scatter] = []
    for method in method_order(pts["method"]):
        traces += _measured(pts, method, xcol, scale, better)
    traces += _baseline(base, axis) + _published(reference, axis) + [_highlight()]
    fig = go.Figure(traces)
    fig.update_layout(
        title=dict(text=f"Top-1 against {xtitle.split(' (')[0]}<br><sup>{subtitle}</sup>", x=0.01),
        xaxis_title=xtitle, yaxis_title="Top-1 (%)", hovermode="closest", template="plotly_white",
        height=540, margin=dict(t=125, r=20), legend=dict(groupclick="togglegroup"),
        updatemenus=_toggles(traces))
    return fig
