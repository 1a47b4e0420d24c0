"""Several experiments on the same axes: top-1 against relative FLOPs (FLOPs / that experiment's baseline).

One trace per (experiment, method) with `meta.experiment`; the comparison page's checkboxes show and hide
whole experiments, a button switches the y axis between top-1 and the drop against each experiment's own
baseline.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .data import CONTROL, HOVER_TEMPLATE, hover_data, style
from .pareto import MARKERS, _front, method_order

DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "triangle-up", "diamond", "cross", "x", "star-triangle-up", "pentagon")


def compare_figure(experiments: dict[str, pd.DataFrame]) -> go.Figure:
    """experiment name -> its points table (data.points); one marker shape per experiment, colour per method."""
    traces: list[go.Scatter] = []
    views: dict[str, tuple[list, list]] = {"top1": ([], []), "drop": ([], [])}  # per trace: x, y of each view
    for i, (name, pts) in enumerate(experiments.items()):
        for method in method_order(pts["method"]):
            part = pts[pts["method"] == method]
            label, colour = style(method)
            x = part["rel_flops"].to_numpy(float)
            traces.append(go.Scatter(
                x=x.tolist(), y=part["top1"].tolist(), mode="markers", name=f"{name}: {label}", legendgroup=name,
                meta={"kind": "measured", "experiment": name, "method": method},
                customdata=hover_data(part), hovertemplate=HOVER_TEMPLATE,
                marker=dict(color=colour, size=9, line=dict(width=0.5, color="white"),
                            symbol=MARKERS[CONTROL] if method == CONTROL else SYMBOLS[i % len(SYMBOLS)])))
            fronts = {"top1": _front(x, part["top1"].to_numpy(float), False)}
            dx, neg = _front(x, -part["drop"].to_numpy(float), False)  # drop: lower is better
            fronts["drop"] = (dx, [-v for v in neg])
            for view, (xs, ys) in views.items():
                xs += [x.tolist(), fronts[view][0]]
                ys += [part[view].tolist(), fronts[view][1]]
            traces.append(go.Scatter(x=fronts["top1"][0], y=fronts["top1"][1], mode="lines", legendgroup=name,
                                     showlegend=False, hoverinfo="skip", name=f"{name}: {label} front",
                                     meta={"kind": "front", "experiment": name, "method": method},
                                     line=dict(color=colour, width=1.5, shape="hv", dash=DASHES[i % len(DASHES)])))
    fig = go.Figure(traces)
    buttons = [dict(label=text, method="update", args=[{"x": views[v][0], "y": views[v][1]}, {"yaxis.title.text": axis}])
               for v, text, axis in (("top1", "top-1", "Top-1 (%)"),
                                     ("drop", "top-1 drop vs own baseline", "Top-1 drop (points, lower is better)"))]
    fig.update_layout(
        title=dict(text="Experiments compared: top-1 against FLOPs relative to each experiment's baseline", x=0.01),
        xaxis=dict(title="FLOPs / baseline FLOPs", tickformat=".0%"), yaxis_title="Top-1 (%)",
        template="plotly_white", height=620, hovermode="closest",
        margin=dict(t=110),
        updatemenus=[dict(type="buttons", direction="right", x=0, xanchor="left", y=1.01, yanchor="bottom",
                          buttons=buttons)] if traces else [])
    return fig
