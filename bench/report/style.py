"""One look for every output of the project, and the layer-wise panels' group order and names.

`METHOD_STYLE` is the single map method -> (name, colour, marker) that the static plots (bench.report.experiment), the
results site (bench.report.site) and the paper figure (bench.report.figures) read: one colour per *method*, from the
colour-blind-safe Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), the same in every figure. Scope is
shown by marker fill (all: filled, internal: half-filled), published points are hollow.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from bench.core.io import atomic_write


# Okabe-Ito: black, orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7"}


# method -> (name in plots and tables, colour, matplotlib marker). Eight hues exist: the methods we run get
# one each (scratch and the control take greys), the literature we only cite gets greys with their own marker.
METHOD_STYLE: dict[str, tuple[str, str, str]] = {
    "decore": ("DECORE", OKABE_ITO["blue"], "o"),
    "l1": ("L1", OKABE_ITO["vermillion"], "s"),
    "random": ("Random", OKABE_ITO["bluish green"], "^"),
    "hrank": ("HRank", OKABE_ITO["reddish purple"], "D"),
    "fpgm": ("FPGM", OKABE_ITO["orange"], "v"),
    "slim": ("Slimming", OKABE_ITO["sky blue"], "P"),
    "taylor": ("Taylor", OKABE_ITO["yellow"], "X"),
    "scratch-b": ("Scratch-B", "#666666", "h"),
    "scratch-e": ("Scratch-E", "#444444", "H"),
    "control": ("No pruning (control)", "#999999", "d"),
    "gal": ("GAL", "#555555", "<"),
    "nisp": ("NISP", "#777777", ">"),
    "baseline": ("Baseline", OKABE_ITO["black"], "*"),
}


OTHER_STYLE = ("", "#888888", "p")


# matplotlib marker -> plotly symbol, so the site draws each method with the static plots' marker
PLOTLY_SYMBOL = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "v": "triangle-down",
                 "P": "cross", "X": "x", "h": "hexagon", "d": "diamond-tall", "<": "triangle-left",
                 ">": "triangle-right", "*": "star", "p": "pentagon", "H": "hexagon2"}


# scope -> matplotlib fillstyle (published points: "none")
SCOPE_FILL = {"all": "full", "internal": "bottom"}
FONT_PT = 8  # the smallest text at print size


def method_style(method: str) -> tuple[str, str, str]:
    """(display name, colour, marker) of a method; unknown methods are grey pentagons under their own name."""
    name, colour, marker = METHOD_STYLE.get(method, OTHER_STYLE)
    return name or method, colour, marker


def method_order(methods: pd.Series | list[str]) -> list[str]:
    """Methods as every legend lists them: METHOD_STYLE's order, others alphabetically, the control last."""
    found = list(dict.fromkeys(str(m) for m in methods))
    known = [m for m in METHOD_STYLE if m in found and m != "control"]
    return known + sorted(m for m in found if m not in METHOD_STYLE) + (["control"] if "control" in found else [])


def plotly_symbol(method: str, scope: str | None = None) -> str:
    """The method's marker in plotly; internal scope half-filled (a '-open-dot' would read as published)."""
    symbol = PLOTLY_SYMBOL.get(method_style(method)[2], "circle")
    return f"{symbol}-dot" if scope == "internal" else symbol


@contextmanager
def print_rc() -> Iterator[None]:
    """Fonts a publisher's PDF check accepts (TrueType, Type 42: never Type 3) and 8 pt text."""
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
                                "font.family": "DejaVu Sans", "font.size": FONT_PT, "axes.titlesize": FONT_PT,
                                "axes.labelsize": FONT_PT, "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT,
                                "legend.fontsize": FONT_PT, "figure.titlesize": FONT_PT + 1}):
        yield


def save(fig: Figure, path: Path, fmt: str, dpi: int = 150) -> Path:
    """One atomic write of a figure; PDFs with TrueType fonts; no date or random ids in PDF/SVG, so a rerun on the
    same runs.csv rewrites the same bytes (and git shows no change)."""
    meta = {"pdf": {"CreationDate": None, "ModDate": None}, "svg": {"Date": None}}.get(fmt)
    with print_rc(), matplotlib.rc_context({"svg.hashsalt": "decore-bench"}):
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, metadata=meta))


@functools.lru_cache(maxsize=16)
def graph_order(model: str) -> dict[str, int]:
    """Conv name -> its position in the model's module order (graph order); {} when the model cannot be built."""
    try:
        import models
        from methods.scored import conv_numbers

        return conv_numbers(models.create(model))
    except Exception:  # an unknown or foreign model: the table's own order stands
        return {}


def ordered_groups(model: str, kept: list[dict[str, list]]) -> list[tuple[str, int, str | None]]:
    """The union of the groups of several kept_channels dicts as (id, units, kind), in graph order."""
    units: dict[str, tuple[int, str | None]] = {}
    for k in kept:
        for g, ku in k.items():
            units.setdefault(g, (int(ku[1]), ku[2] if len(ku) > 2 else None))
    order = graph_order(model)
    ids = sorted(units, key=lambda g: (order.get(g, len(order) + list(units).index(g))))
    return [(g, *units[g]) for g in ids]


def group_name(gid: str, units: int, kind: str | None) -> str:
    """A group's name in every layer figure: streams by stage (their id is only the stream's first conv)."""
    if kind == "stream":
        from methods.scored import stage_of

        return f"stage {stage_of(gid) + 1} stream ({units})"
    return f"{gid} ({units})"


def distinct_allocations(kept: list[dict[str, list]]) -> list[list[int]]:
    """Indices of rows grouped by identical kept channels (one bar per distinct allocation), first seen first."""
    out: dict[str, list[int]] = {}
    for i, k in enumerate(kept):
        key = json.dumps({g: ku[0] for g, ku in k.items()}, sort_keys=True)
        out.setdefault(key, []).append(i)
    return list(out.values())
