"""Channels kept per layer: a chosen point against its matched partners (one figure per chosen point).

Partners are the points sharing its match key (data.match_keys); a point without any is compared with the
point of every other method closest in FLOPs, as `make report`'s layers.png does.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from .data import CONTROL, kept_channels, style


def partners(pts: pd.DataFrame, point_id: str) -> list[str]:
    """Ids of the chosen point and its partners, the chosen one first."""
    chosen = pts[pts["id"] == point_id].iloc[0]
    key = chosen["match_key"]
    same = pts[(pts["match_key"] == key) & (pts["id"] != point_id)] if key else pts.iloc[0:0]
    if same.empty:
        others = pts[(pts["method"] != chosen["method"]) & (pts["method"] != CONTROL)]
        nearest = [part.loc[(part["flops"] - chosen["flops"]).abs().idxmin()] for _, part in others.groupby("method")]
        same = pd.DataFrame(nearest)
    return [point_id, *same["id"].astype(str).tolist()]


def layerwise_figure(pts: pd.DataFrame, point_id: str, folder: Path | None = None) -> go.Figure:
    """Kept fraction per channel group (graph order) of the chosen point and its partners, grouped bars."""
    rows = [pts[pts["id"] == i].iloc[0] for i in partners(pts, point_id)]
    kept = [kept_channels(r, folder) for r in rows]
    units: dict[str, int] = {}
    for k in kept:  # union in graph order: a method with another scope prunes other groups
        units.update({g: ku[1] for g, ku in k.items() if g not in units})
    groups = list(units)
    fig = go.Figure()
    for r, k in zip(rows, kept):
        name, colour = style(r["method"])
        fig.add_bar(x=[f"{g} ({units[g]})" for g in groups], y=[k[g][0] / k[g][1] if g in k else 1.0 for g in groups],
                    name=f"{r['label']}: FLOPs {r['rel_flops']:.0%} of the baseline, top-1 {r['top1']:.2f}%",
                    marker_color=colour, customdata=[f"{k[g][0]}/{k[g][1]}" if g in k else "all: outside its scope, kept whole"
                                 for g in groups],
                    marker_pattern_shape=["" if g in k else "/" for g in groups],
                    hovertemplate="%{x}: kept %{customdata}<extra>" + r["label"] + "</extra>")
    chosen = rows[0]
    fig.update_layout(title=dict(text=f"Channels kept per layer: {chosen['label']} (trial {chosen['id']}) and its "
                                      "partners", x=0.01),
                      barmode="group", yaxis=dict(title="channels kept (fraction)", range=[0, 1.02]),
                      xaxis=dict(title="channel group (units), graph order", tickangle=-60),
                      template="plotly_white", height=480, legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig
