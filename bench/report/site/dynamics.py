"""DECORE's agent dynamics from a trial's history.json (one figure per DECORE trial).

history.json's "method" list holds one dict per joint epoch; the site reads `epoch`, `keep_prob`
(group -> mean keep-probability of its agents) and `flops_if_pruned` (FLOPs of the model the agents
would keep now).
"""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def has_dynamics(history: dict[str, Any] | None) -> bool:
    epochs = (history or {}).get("method") or []
    return isinstance(epochs, list) and any(isinstance(e, dict) and "keep_prob" in e for e in epochs)


def dynamics_figure(history: dict[str, Any], base_flops: float, label: str) -> go.Figure:
    """Mean keep-probability per group and FLOPs-if-pruned (fraction of the baseline's) per joint epoch."""
    epochs = [e for e in history["method"] if isinstance(e, dict) and "keep_prob" in e]
    x = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.08)
    groups = list(dict.fromkeys(g for e in epochs for g in e["keep_prob"]))
    for g in groups:
        fig.add_scatter(x=x, y=[e["keep_prob"].get(g) for e in epochs], mode="lines+markers", name=g,
                        legendgroup="groups", hovertemplate=f"{g}<br>epoch %{{x}}: p(keep) %{{y:.3f}}<extra></extra>",
                        row=1, col=1)
    flops = [e.get("flops_if_pruned") for e in epochs]
    fig.add_scatter(x=x, y=[f / base_flops if f is not None and base_flops else None for f in flops],
                    mode="lines+markers", name="FLOPs if pruned now", line=dict(color="black", width=2),
                    customdata=[f / 1e6 if f is not None else None for f in flops],
                    hovertemplate="epoch %{x}: FLOPs if pruned %{customdata:.2f}M (%{y:.0%})<extra></extra>", row=2, col=1)
    fig.update_yaxes(title_text="mean p(keep)", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="FLOPs / baseline", tickformat=".0%", row=2, col=1)
    fig.update_xaxes(title_text="joint epoch", dtick=1 if len(x) < 15 else None, row=2, col=1)
    fig.update_layout(title=dict(text=f"DECORE's agents during the joint phase: {label}", x=0.01),
                      template="plotly_white", height=560, hovermode="closest")
    return fig
