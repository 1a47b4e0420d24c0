"""Channels kept per layer: a chosen point against its matched partners (one figure per chosen point).

Partners are the points sharing its match key (data.match_keys); a point without any is compared with the
point of every other method closest in FLOPs, as `make report`'s layers.png does.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from bench.report.style import distinct_allocations, group_name, ordered_groups

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


def layerwise_figure(pts: pd.DataFrame, point_id: str, folder: Path | None = None, model: str = "") -> go.Figure:
    """Kept fraction per channel group of the chosen point and its partners, grouped bars: one bar per distinct
    allocation, groups in graph order under the names the static layers.png uses (bench.report.style)."""
    rows = [pts[pts["id"] == i].iloc[0] for i in partners(pts, point_id)]
    kept = [kept_channels(r, folder) for r in rows]
    groups = ordered_groups(model, kept)
    names = [group_name(*g) for g in groups]
    fig = go.Figure()
    for members in distinct_allocations(kept):
        r, k = rows[members[0]], kept[members[0]]
        _, colour = style(r["method"])
        label = " = ".join(str(rows[m]["label"]) for m in members)
        accs = " / ".join(f"{rows[m]['top1']:.2f}" for m in members)
        fig.add_bar(x=names, y=[k[g][0] / k[g][1] if g in k else 1.0 for g, _, _ in groups],
                    name=f"{label}{': the same channels' if len(members) > 1 else ''}: FLOPs {r['rel_flops']:.0%} of "
                         f"the baseline, test top-1 {accs}%",
                    marker_color=colour, customdata=[f"{k[g][0]}/{k[g][1]}" if g in k else "all: outside its scope, kept whole"
                                 for g, _, _ in groups],
                    marker_pattern_shape=["" if g in k else "/" for g, _, _ in groups],
                    hovertemplate="%{x}: kept %{customdata}<extra>" + label + "</extra>")
    chosen = rows[0]
    fig.update_layout(title=dict(text=f"Channels kept per layer: {chosen['label']} (trial {chosen['id']}) and its "
                                      "partners", x=0.01),
                      barmode="group", yaxis=dict(title="channels kept (fraction)", range=[0, 1.02]),
                      xaxis=dict(title="channel group (units), graph order", tickangle=-60),
                      template="plotly_white", height=480, legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig
