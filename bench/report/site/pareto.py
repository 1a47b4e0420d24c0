"""Pareto fronts of one experiment: decision top-1 against FLOPs, params or measured speed-up (one figure per axis).

Every complete trial of runs.csv is one point (a seed is a point; its hover shows validation and test top-1
and the mean +- std of its configuration). The fronts are the rows runs.csv flags (`pareto`: validation
top-1 against FLOPs, per series, on seed means; bench.trial.results.mark_pareto), drawn through their seed means:
the site never takes a front of its own. The y axis is the split decisions read (validation; test only for
rows from before the selection split) and says so. One trace per series in its method's colour (one colour
per method, bench.report.style), scope by fill; published points are hollow, the baseline a star; the legend
toggles series, two buttons toggle published points and the no-pruning control. Each trace carries
`meta.kind` (measured, front, baseline, published, highlight), `meta.method` and `meta.series`, and a front
`meta.rows` (the config hashes it passes through), which the page's script and the tests read.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from bench.report.style import method_order as _method_order
from bench.report.style import plotly_symbol

from .data import CLICK_HINT, CONTROL, HOVER_TEMPLATE, hover_data, style

# axis name -> (x column of the points table, scale, axis title, larger is better)
AXES: dict[str, tuple[str, float, str, bool]] = {
    "flops": ("flops", 1e6, "FLOPs (M multiply-accumulates per image)", False),
    "params": ("params", 1e6, "Params (M)", False),
    "speedup": ("speedup", 1.0, "Measured speed-up (baseline latency / latency, batch 1, 1 CPU thread)", True),
}


def method_order(methods: pd.Series) -> list[str]:
    """The project's method order (bench.report.style.method_order), the control last."""
    return _method_order(methods)


def axes_available(pts: pd.DataFrame) -> list[str]:
    """The axes this experiment can draw: FLOPs and params always, speed-up where it was measured."""
    return [a for a, (c, *_) in AXES.items() if pts[c].notna().any()] if len(pts) else ["flops", "params"]


def y_title(pts: pd.DataFrame) -> str:
    """The y axis names its split: validation where decisions read it, test for legacy test-selected rows."""
    splits = set(pts["dec_split"]) if len(pts) else {"validation"}
    if splits == {"validation"}:
        return "Validation top-1 (%): what decisions read"
    if splits == {"test"}:
        return "Test top-1 (%): this experiment selected on test (legacy)"
    return "Validation top-1 (%), test where a row has none"


def front_points(part: pd.DataFrame, xcol: str) -> pd.DataFrame:
    """The flagged configurations of one series: seed means of x and decision top-1, and their config hashes."""
    flagged = part[part["pareto"].astype(bool)]
    if flagged.empty:
        return pd.DataFrame(columns=["x", "y", "rows"])
    grouped = flagged.groupby("config_key", sort=False)
    out = pd.DataFrame({"x": grouped[xcol].mean(), "y": grouped["dec"].mean(),
                        "rows": grouped["config_hash"].apply(lambda h: sorted(map(str, h)))})
    return out.sort_values("x", kind="stable")


def _series_traces(pts: pd.DataFrame, series: str, xcol: str, scale: float, better: bool) -> list[go.Scatter]:
    part = pts[pts["series"] == series]
    method, scope = str(part["method"].iloc[0]), str(part["scope"].iloc[0])
    _, colour = style(method)
    x, y = (part[xcol] / scale).to_numpy(float), part["dec"].to_numpy(float)
    meta = {"kind": "measured", "method": method, "series": series}
    dots = go.Scatter(x=x.tolist(), y=y.tolist(), mode="markers", name=series, legendgroup=series, meta=meta,
                      marker=dict(color=colour, size=9, symbol=plotly_symbol(method, scope),
                                  line=dict(width=1, color=colour)),
                      customdata=hover_data(part), hovertemplate=HOVER_TEMPLATE + CLICK_HINT + "<extra></extra>")
    front = front_points(part, xcol)
    # the front is chosen on FLOPs: a step line there, the same configurations joined in x order elsewhere
    line = go.Scatter(x=(front["x"] / scale).tolist(), y=front["y"].tolist(), mode="lines",
                      line=dict(color=colour, width=1.5, shape=("vh" if better else "hv") if xcol == "flops" else "linear",
                                dash="solid" if xcol == "flops" else "dot"),
                      legendgroup=series, showlegend=False, hoverinfo="skip", name=f"{series} front",
                      meta={"kind": "front", "method": method, "series": series, "rows": front["rows"].tolist()})
    return [dots, line]


def _baseline(base: dict[str, float] | None, axis: str) -> list[go.Scatter]:
    if base is None:
        return []
    xcol, scale, _, _ = AXES[axis]
    x = 1.0 if axis == "speedup" else base[xcol] / scale
    return [go.Scatter(x=[x], y=[base["dec"]], mode="markers", name="Baseline (measured)",
                       marker=dict(symbol="star", size=15, color="black"), meta={"kind": "baseline"},
                       hovertemplate=f"<b>Baseline</b> (unpruned, {base['n']} seed(s))<br>{base['dec_split']} top-1 "
                                     "%{y:.2f}%<extra></extra>")]


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
            marker=dict(symbol=plotly_symbol(str(method)) + "-open", size=10, color="rgba(0,0,0,0)",
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


def pareto_figure(pts: pd.DataFrame, base: dict[str, float] | None, reference: pd.DataFrame, axis: str) -> go.Figure:
    """Decision top-1 against one cost axis (AXES): measured points and runs.csv's fronts, the baseline;
    published points (test top-1 of other papers) only where the axis is test top-1 too."""
    if set(pts["dec_split"]) != {"test"}:
        reference = reference.iloc[0:0]  # never test numbers on a validation axis
    xcol, scale, xtitle, better = AXES[axis]
    traces: list[go.Scatter] = []
    for method in method_order(pts["method"]):
        for series in dict.fromkeys(pts.loc[pts["method"] == method, "series"]):
            traces += _series_traces(pts, series, xcol, scale, better)
    traces += _baseline(base, axis) + _published(reference, axis) + [_highlight()]
    fig = go.Figure(traces)
    fig.update_layout(
        title=dict(text=f"{y_title(pts).split(' (')[0]} against {xtitle.split(' (')[0]}", x=0.01),
        xaxis_title=xtitle, yaxis_title=y_title(pts), hovermode="closest", template="plotly_white",
        height=540, margin=dict(t=90, r=20), legend=dict(groupclick="togglegroup"),
        updatemenus=_toggles(traces))
    return fig
