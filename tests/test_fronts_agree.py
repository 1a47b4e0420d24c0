"""One front everywhere (issue #29): every committed experiment's page, static Pareto figure and paper figure,
regenerated with today's code, draws exactly the configurations runs.csv flags (`pareto`: validation top-1
against FLOPs, per series, on seed means), through their seed means; and the committed page draws them too."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report import figures
from bench.report import experiment as report
from bench.report import rows, style
from bench.trial.results import SERIES_KEYS, ResultsTable, decision_top1
from bench.report.site.data import find_experiments, read_runs
from bench.report.site.pages import experiment_page

REPO = Path(__file__).resolve().parents[1]
COMMITTED = find_experiments(REPO / "results")


def flagged(folder: Path, control: bool = True) -> dict[frozenset, tuple[float, float]]:
    """From runs.csv alone: per flagged configuration (its config hashes), FLOPs (M) and decision top-1 seed means
    (without the no-pruning control's own one-point front when `control` is False)."""
    df = ResultsTable(folder).read()
    on = df[df["pareto"].fillna(False).astype(bool) & (control | (df["method"] != "control"))]
    keys = ["|".join(map(str, r)) for r in on[[*SERIES_KEYS, "knobs"]].itertuples(index=False)]
    on = on.assign(_dec=decision_top1(on), _key=keys)
    return {frozenset(part["config_hash"]): (part["flops"].astype(float).mean() / 1e6, part["_dec"].mean())
            for _, part in on.groupby("_key")}


def site_data(html: str) -> dict:
    block = re.search(r'<script type="application/json" id="site-data">(.*?)</script>', html, re.S)
    assert block, "no site data in the page"
    return json.loads(block.group(1).replace("<\\/", "</"))


def drawn_fronts(html: str) -> dict[frozenset, tuple[float, float]]:
    """The page's FLOPs figure: per configuration on a front trace, its hashes and drawn (x, y)."""
    fig = site_data(html)["figures"]["pareto-flops"]
    out = {}
    for trace in fig["data"]:
        meta = trace.get("meta") or {}
        if meta.get("kind") == "front":
            out.update({frozenset(h): (x, y) for h, x, y in zip(meta["rows"], trace["x"], trace["y"])})
    return out


def assert_same(drawn: dict, want: dict, where: str) -> None:
    assert set(drawn) == set(want), f"{where}: fronts differ from runs.csv's flags"
    for key, (x, y) in want.items():
        assert drawn[key] == pytest.approx((x, y), abs=1e-9), (where, sorted(key))


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_site_draws_the_flagged_fronts(folder: Path) -> None:
    want = flagged(folder)
    assert want, f"{folder.name} flags no front"
    assert_same(drawn_fronts(experiment_page(folder, read_runs(folder), folder.parent)), want, "regenerated page")
    committed = folder / "index.html"
    assert_same(drawn_fronts(committed.read_text()), want, f"committed {committed} (run `make report`)")
    fig = site_data(committed.read_text())["figures"]["pareto-flops"]
    title = fig["layout"]["yaxis"]["title"]["text"]
    df = ResultsTable(folder).read()
    assert ("Validation" in title) == bool(df["val_top1_pct"].notna().any()) and "top-1" in title


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_static_and_paper_figures_draw_the_flagged_fronts(folder: Path) -> None:
    df = ResultsTable(folder).read()
    want = flagged(folder, control=False)  # these figures draw the control as the reference line, not a series
    # the static figure's decision panel: the step lines are the fronts, at the flagged seed means
    val_ax = report.pareto_figure(df, None).axes[0]
    lines = [ln for ln in val_ax.lines if ln.get_drawstyle() == "steps-post" and len(ln.get_xdata())]
    drawn = sorted((float(x), float(y)) for ln in lines for x, y in zip(ln.get_xdata(), ln.get_ydata()))
    if df["val_top1_pct"].notna().any():
        assert np.allclose(drawn, sorted(want.values()), atol=1e-9) and len(drawn) == len(want)
    # the paper figure marks the same configurations as fronts
    pts, _ = figures.paper_points(df)
    hashes = {frozenset(h) for h, on in zip(rows.aggregate(df).query("method != 'control'")["hashes"], pts["pareto"]) if on}
    assert hashes == set(want)


def test_paper_figure_sizes_fonts_and_colours() -> None:
    folder = next(f for f in COMMITTED if "cpu" in f.name)
    df = ResultsTable(folder).read()
    for width, inches in figures.WIDTHS_IN.items():
        fig = figures.paper_figure(df, None, width)
        assert fig.get_figwidth() == inches
        texts = [t for ax in fig.axes for t in (ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels())]
        texts += list(fig.legends[0].get_texts())
        assert min(t.get_fontsize() for t in texts) >= style.FONT_PT
        # one colour per method: every marker of a method has the method's Okabe-Ito colour
        for ax in fig.axes:
            for line in ax.lines:
                if line.get_marker() not in (None, "None", ""):
                    colours = {style.method_style(m)[1].lower() for m in style.METHOD_STYLE}
                    assert str(line.get_color()).lower() in colours
    assert len({c for _, c, _ in style.METHOD_STYLE.values()}) == len(style.METHOD_STYLE)


def test_every_row_kind_has_its_own_style() -> None:
    """The scratch controls and the no-pruning control are drawn under the names the tables give them, each in its
    own grey, not as an unknown method's grey pentagon under its raw name."""
    from bench.report.rows import trial_label
    from bench.trial.scratch import RULES

    for method, name in {**RULES, "control": "No pruning (control)"}.items():
        assert method in style.METHOD_STYLE and style.method_style(method)[0] == name
        assert trial_label(pd.Series({"method": method, "knobs": "{}", "scope": "all"})).startswith(name)


def test_t_interval_matches_tables() -> None:
    assert figures.t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert figures.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-2)
    mean, half = figures.change_vs(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0]), np.array([0, 1, 2]),
                                   np.array([0, 1, 2]))
    assert (mean, half) == (1.0, 0.0)  # paired by seed: the same difference every seed
    assert np.isnan(figures.change_vs(np.array([1.0]), np.array([0.5]))[1])  # one seed: no interval
    assert pd.notna(figures.change_vs(np.array([1.0, 2.0]), np.array([0.5]))[1])
