"""Report: Pareto fronts, the paper table (Markdown, LaTeX), plots and README of a hand-made results table."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer

from bench.report import experiment as report
from bench.report import rows as report_rows
from bench.report import tables
from bench.core.errors import UserError
from bench.trial.results import ResultsTable, mark_pareto, normalise

BASE = {"top1": 93.10, "params": 853_018, "flops": 125_485_706}
GROUPS = {"conv1": 16, "layer1.0.conv1": 16, "layer1.1.conv1": 16, "layer2.0.conv2": 32, "layer2.0.conv1": 32,
          "layer3.0.conv2": 64, "layer3.0.conv1": 64}
# (method, knob, value, seed, top-1, params, FLOPs); None top-1 = a failed trial
TRIALS = [
    ("decore", "lambda", 450.0, 0, 93.20, 640_000, 92_000_000),
    ("decore", "lambda", 200.0, 0, 92.90, 430_000, 63_000_000),
    ("decore", "lambda", 200.0, 1, 92.80, 440_000, 64_000_000),
    ("decore", "lambda", 55.0, 0, 90.50, 130_000, 23_500_000),
    ("decore", "lambda", 10.0, 0, None, None, None),
    ("l1", "ratio", 0.1, 0, 93.00, 770_000, 112_000_000),
    ("l1", "preset", "li2017-B", 0, 93.25, 730_000, 90_900_000),
    ("l1", "ratio", 0.5, 0, 91.80, 520_000, 64_500_000),
    ("random", "ratio", 0.1, 0, 92.70, 770_000, 112_000_000),
    ("random", "ratio", 0.3, 0, 92.00, 640_000, 85_000_000),
    ("random", "ratio", 0.5, 0, 90.90, 520_000, 63_000_000),
]
COMMON = {"experiment": "cifar_resnet56-cifar10-paper", "model": "cifar_resnet56", "dataset": "cifar10",
          "profile": "paper", "base_top1_pct": BASE["top1"], "base_params": BASE["params"],
          "base_flops": BASE["flops"], "finetune_epochs": 2, "round_to": 1, "budget": "equal", "selection": "val",
          "budget_images": 4000, "data_fingerprint": "f00d"}
STREAMS = {"conv1", "layer2.0.conv2", "layer3.0.conv2"}


def _kept(params: int, groups=GROUPS) -> str:
    frac = params / BASE["params"]  # any monotone choice: the plot only needs plausible fractions
    return json.dumps({g: [max(1, round(u * frac)), u, "stream" if g in STREAMS else "internal"]
                       for g, u in groups.items()})


def _trial(i: int, method: str, knob: str, value, seed: int, top1, params, flops) -> dict:
    preset = isinstance(value, str)
    row = {**COMMON, "row_type": "trial", "method": method, "scope": "all" if method == "decore" else "internal",
           "knob_name": knob, "knob_value": None if preset else value, "knobs": json.dumps({knob: value}),
           "seed": seed, "config_hash": f"hash{i:02d}", "joint_epochs": 2 if method == "decore" else 0}
    if top1 is None:
        return {**row, "status": "failed", "reason": "RuntimeError: out of memory"}
    return {**row, "status": "complete", "top1_pct": top1, "val_top1_pct": top1 - 0.5, "top1_drop_pct": BASE["top1"] - top1,
            "params": params, "flops": flops, "params_reduction_pct": 100 * (1 - params / BASE["params"]),
            "flops_reduction_pct": 100 * (1 - flops / BASE["flops"]), "kept_channels": _kept(params)}


def make_table() -> pd.DataFrame:
    base = {**COMMON, "row_type": "baseline", "method": "baseline", "status": "complete", "seed": 0,
            "config_hash": "base00", "top1_pct": BASE["top1"], "params": BASE["params"], "flops": BASE["flops"]}
    return mark_pareto(normalise([base] + [_trial(i, *t) for i, t in enumerate(TRIALS)]))


@pytest.fixture
def table() -> pd.DataFrame:
    return make_table()


@pytest.fixture
def reference() -> pd.DataFrame:
    return report_rows.load_reference("cifar_resnet56", "cifar10")


def _by_hash(df: pd.DataFrame) -> dict[str, str]:
    return {h: f"{m}:{v}" for h, m, v in zip(df["config_hash"], df["method"], df["knobs"])}


# ---------------------------------------------------------------- reference and labels

def test_reference_maps_timm_names_and_keeps_baseline_apart(reference):
    assert set(reference["model"]) == {"resnet56"} and "baseline" not in set(reference["method"])
    assert len(reference) == 10
    assert reference.attrs["baseline"]["flops_m"] == pytest.approx(125.49)
    decore200 = reference[reference["variant"] == "DECORE-200"].iloc[0]
    assert (decore200["flops_m"], decore200["top1"]) == (62.93, 93.26)
    vgg = report_rows.load_reference("cifar_vgg16_bn", "cifar10")
    assert vgg.attrs["baseline"]["params_m"] == pytest.approx(14.98) and (vgg["model"] == "vgg16_bn").all()
    assert report_rows.load_reference("cifar_resnet20", "cifar10").empty


def test_missing_reference_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        report_rows.load_reference("cifar_resnet56", "cifar10", tmp_path / "nope.csv")


@pytest.mark.parametrize("method,knob,value,label", [
    ("decore", "lambda", 0.72, "DECORE-0.72"), ("decore", "lambda", 200.0, "DECORE-200"),
    ("decore", "lambda", 1e-5, "DECORE-1e-05"), ("l1", "ratio", 0.5, "L1 (ratio 0.5)"),
    ("l1", "preset", "li2017-B", "L1 (li2017-B)"), ("l1", "flops_target", 0.6, "L1 (FLOPs 0.60)"),
    ("random", "ratio", 0.3, "Random (ratio 0.3)"),
])
def test_trial_labels_follow_the_paper(method, knob, value, label):
    row = normalise([_trial(0, method, knob, value, 0, 90.0, 1, 1)]).iloc[0]
    assert report_rows.trial_label(row) == label


# ---------------------------------------------------------------- Pareto front

def test_pareto_flags_on_hand_chosen_points(table):
    """The one front (bench.trial.results.mark_pareto, validation top-1 against FLOPs per series on seed means):
    DECORE-200's seeds share the flag; L1 ratio 0.1 is beaten by li2017-B; the failed trial is out."""
    assert set(table.loc[table["pareto"].fillna(False), "config_hash"]) == {"hash03", "hash01", "hash02", "hash00",
                                                                            "hash07", "hash06", "hash10", "hash09",
                                                                            "hash08"}


def test_aggregate_means_over_seeds(table):
    agg = report_rows.aggregate(table)
    assert len(agg) == 9  # 10 complete trials, two of them seeds of one configuration
    d200 = agg[agg["label"].str.startswith("DECORE-200 ")].iloc[0]
    assert d200["label"] == "DECORE-200 · all · 4.0k img (2+2 ep) · n=2"
    assert d200["n"] == 2 and d200["top1_pct"] == pytest.approx(92.85) and d200["val_top1_pct"] == pytest.approx(92.35)
    assert d200["top1_std"] == pytest.approx(np.std([92.9, 92.8], ddof=1))
    assert d200["flops"] == pytest.approx(63_500_000) and d200["flops_std"] == pytest.approx(np.std([63e6, 64e6], ddof=1))
    assert agg[agg["label"].str.startswith("DECORE-450")]["top1_std"].isna().all()
    # lambda 10 failed on its only seed: no mean; a configuration with a failed seed is marked partial
    assert not agg["label"].str.startswith("DECORE-10 ").any()


def test_labels_differ_when_only_budget_scope_or_round_to_differ():
    rows = [_trial(0, "l1", "ratio", 0.5, 0, 91.0, 500_000, 60_000_000)]
    rows.append({**rows[0], "config_hash": "b", "budget": "paper", "budget_images": 2000, "finetune_epochs": 40})
    rows.append({**rows[0], "config_hash": "c", "scope": "all"})
    rows.append({**rows[0], "config_hash": "d", "round_to": 8})
    agg = report_rows.aggregate(normalise(rows))
    assert len(agg) == 4 and agg["label"].is_unique and agg["series"].is_unique
    assert "round_to 8" in agg.loc[agg["round_to"] == 8, "label"].iloc[0]
    assert "internal" in agg.loc[0, "label"] and " all " in agg.loc[2, "label"]


def test_pareto_flags_are_on_seed_means_not_lucky_seeds():
    # configuration A: seeds 90 and 80 (mean 85); B: one seed at 88, same FLOPs. A's lucky seed (90) beats B,
    # but on means B dominates A: only B is flagged, and both of A's rows are not
    a0 = _trial(0, "l1", "ratio", 0.5, 0, 90.5, 500_000, 60_000_000)
    a1 = {**_trial(1, "l1", "ratio", 0.5, 1, 80.5, 500_000, 60_000_000)}
    b = _trial(2, "l1", "ratio", 0.6, 0, 88.5, 500_000, 60_000_000)
    df = mark_pareto(normalise([a0, a1, b]))
    assert df.set_index("config_hash")["pareto"].to_dict() == {"hash00": False, "hash01": False, "hash02": True}
    # the flag reads validation top-1: the test column alone would not change it
    df2 = mark_pareto(normalise([{**a0, "top1_pct": 99.0}, {**a1, "top1_pct": 99.0}, b]))
    assert df2.set_index("config_hash")["pareto"].to_dict() == df.set_index("config_hash")["pareto"].to_dict()


# ---------------------------------------------------------------- paper table

def _md_rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|") and not ln.startswith("| ---")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _block(md: str, first_header: str) -> list[list[str]]:
    rows = _md_rows(md)
    start = next(i for i, r in enumerate(rows) if r[0] == first_header) + 1
    end = next((i for i in range(start, len(rows)) if rows[i][0] in ("Matched set", "Method")), len(rows))
    return rows[start:end]


def test_table_rows_numbers_order_and_no_trivial_bold(table, reference):
    md, tex = tables.paper_table(table, reference)
    measured = _block(md, tables.HEADERS[0])
    assert len(measured) == 1 + 9  # baseline + 9 configurations
    assert [r[0].split(" · ")[0] for r in measured] == [
        "Baseline (before pruning)", "L1 (ratio 0.1)", "Random (ratio 0.1)", "DECORE-450", "L1 (li2017-B)",
        "Random (ratio 0.3)", "L1 (ratio 0.5)", "DECORE-200", "Random (ratio 0.5)", "DECORE-55"]
    d200 = measured[7]
    assert d200[2:5] == ["2", "92.35 ± 0.07", "92.85 ± 0.07"] and d200[7] == "63.50 (49.4%)"
    # no best-in-column bold in a trade-off table
    assert not any("**" in c for r in _md_rows(md) for c in r) and r"\textbf" not in tex
    fronts = {r[0].split(" · ")[0] for r in measured if r[1] == "◆"}
    assert fronts == {"DECORE-450", "DECORE-200", "DECORE-55", "L1 (li2017-B)", "L1 (ratio 0.5)",
                      "Random (ratio 0.1)", "Random (ratio 0.3)", "Random (ratio 0.5)"}
    assert "DECORE-10" not in md  # failed
    assert "Protocol: selection: validation hold-out" in md and "budget: equal" in md


def test_matched_partners_side_by_side_with_paired_difference():
    rows = []
    for seed, (d, l1) in enumerate([(91.0, 90.0), (92.0, 90.5)]):
        dec = _trial(seed, "decore", "lambda", 2.0, seed, d, 500_000, 60_000_000)
        part = {**_trial(10 + seed, "l1", "flops_target", 0.478 + seed / 1000, seed, l1, 500_000, 60_100_000),
                "match_of": dec["config_hash"], "scope": "all"}
        rows += [dec, part]
    control = {**_trial(20, "control", "ratio", 0.0, 0, 93.0, BASE["params"], BASE["flops"]), "knob_name": None,
               "knob_value": None, "knobs": "{}", "scope": "all"}
    md, _ = tables.paper_table(normalise(rows + [control]), None)
    matched = _block(md, "Matched set")
    assert matched[0][0].startswith("DECORE-2 · all") and matched[0][1] == "91.50 ± 0.71"
    l1 = matched[1]
    assert l1[0].strip().startswith("L1 at the same FLOPs · all") and l1[0].endswith("n=2")
    # (-1.0, -1.5): mean -1.25, sd 0.354, t(0.975, 1 dof) = 12.706: half-width 3.18; two seeds give no verdict
    assert l1[3] == "-1.25 [-4.43, +1.93]" and l1[4] == "n=2 < 3: no verdict, paired by seed"
    assert l1[2] == "47.9% (gap +0.17%)"  # 60.1M against DECORE's 60.0M
    measured = _block(md, tables.HEADERS[0])
    decore = next(r for r in measured if r[0].startswith("DECORE-2 "))
    assert decore[5] == "-1.50"  # against the no-pruning control's 93.00


def test_reference_block_lists_published_rows_with_sources(table, reference):
    md, tex = tables.paper_table(table, reference)
    published = _block(md, "Method")
    assert len(published) == 11 and published[0][0].startswith("Baseline [")
    decore200 = next(r for r in published if r[0].startswith("DECORE-200"))
    assert decore200[1:] == ["93.26", "0.00", "0.43 (49.4%)", "62.93 (49.9%)"]
    note = int(re.search(r"\[(\d+)\]", decore200[0]).group(1))
    assert f"[{note}] DECORE" in md
    flops = [float(r[4].split()[0]) for r in published[1:]]
    assert flops == sorted(flops, reverse=True)
    assert any(r[0].startswith("L1 (Li2017-B)") for r in published)
    assert "DECORE-200$^{" in tex and "62.93 (49.9\\%)" in tex


def test_latex_is_a_well_formed_booktabs_table(table, reference):
    _, tex = tables.paper_table(table, reference)
    specs = re.findall(r"\\begin\{tabular\}\{([^}]*)\}", tex)
    assert [len(s) for s in specs] == [len(tables.HEADERS), len(tables.PUBLISHED_HEADERS)]
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 2
    for ln in tex.splitlines():
        if ln.rstrip().endswith(r"\\") and "&" in ln:
            assert len(re.findall(r"(?<!\\)&", ln)) in (len(tables.HEADERS) - 1, len(tables.PUBLISHED_HEADERS) - 1), ln
    body = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("%"))  # a leading comment names the packages
    assert not re.search(r"(?<!\\)[%_#]", body.replace("%\n", "\n")), "unescaped LaTeX special character"
    assert tex.isascii() and r"$\bullet$" in tex  # the front mark, in a macro every pdflatex knows
    assert r"cifar\_resnet56" in tex and r"$\pm$" in tex
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 2
    assert _balanced(tex)  # compiled with pdflatex in tests/test_tex_and_fonts.py


def _balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_escape():
    assert report_rows.latex_escape("a_b & 5% #1 {x} ~ ^ \\") == \
        r"a\_b \& 5\% \#1 \{x\} \textasciitilde{} \^{} \textbackslash{}"


# ---------------------------------------------------------------- plots

def _scatter_points(ax) -> dict[str, np.ndarray]:
    """Label -> drawn points, of scatters and of errorbars (whose markers are the container's data line)."""
    out = {c.get_label(): np.asarray(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            out[c.get_label()] = np.column_stack([c.lines[0].get_xdata(), c.lines[0].get_ydata()])
    return out


SERIES = {"decore": "DECORE · all · 4.0k img (2+2 ep)", "l1": "L1 · internal · 4.0k img (2 ep)",
          "random": "Random · internal · 4.0k img (2 ep)"}


def test_pareto_figure_draws_series_fronts_on_validation_and_published_points(table, reference):
    fig = report.pareto_figure(table, reference, official=True)
    val_ax, test_ax, params_ax = fig.axes[:3]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    for want in (*SERIES.values(), "Baseline (measured)", "Baseline (published)",
                 "DECORE (published)", "HRank (published)"):
        assert want in labels
    pts = _scatter_points(test_ax)
    assert [125.485706, 93.10] in pts["Baseline (measured)"].round(6).tolist()
    assert [62.93, 93.26] in pts["DECORE (published)"].tolist()
    assert [63.5, 92.85] in pts[SERIES["decore"]].round(6).tolist()  # the mean of two seeds, not each seed
    assert [63.5, 92.35] in _scatter_points(val_ax)[SERIES["decore"]].round(6).tolist()  # validation panel
    assert len(pts[SERIES["decore"]]) == 3 and len(pts[SERIES["random"]]) == 3
    assert not any("published" in k for k in _scatter_points(val_ax))  # decisions' panel: ours only
    steps = [ln for ln in val_ax.lines if ln.get_drawstyle() == "steps-post"]
    assert any(ln.get_xdata().tolist() == [23.5, 63.5, 92.0] for ln in steps)  # DECORE's front (means)
    assert any(ln.get_xdata().tolist() == [64.5, 90.9] for ln in steps)       # L1's front
    assert fig._suptitle is None and fig.get_figwidth() == 7.0  # the protocol goes to the README and caption


@pytest.mark.slow
def test_published_points_vanish_on_data_that_is_not_official(table, reference, tmp_path):
    fig = report.pareto_figure(table, None, official=False)
    assert not any("published" in t.get_text() for t in fig.legends[0].get_texts())
    folder = tmp_path / "exp"
    folder.mkdir()
    table.to_csv(folder / "runs.csv", index=False)
    (folder / "experiment.json").write_text(json.dumps({"data": {"fingerprint": "f00d", "official": False}}))
    out = report.report_experiment(folder)
    readme = out["README.md"].read_text()
    assert "Published points are not drawn: this data is not the official set" in readme
    assert "DECORE-200 [" in out["table.md"].read_text()  # the published block of the table stays
    (folder / "experiment.json").write_text(json.dumps({"data": {"fingerprint": "f00d", "official": True}}))
    assert "Hollow markers: published numbers" in report.report_experiment(folder)["README.md"].read_text()


def test_pareto_plot_writes_png_svg_pdf(table, reference, tmp_path):
    paths = report.pareto_plot(table, reference, tmp_path / "pareto")
    assert [p.name for p in paths] == ["pareto.png", "pareto.svg", "pareto.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[2].read_bytes()[:5] == b"%PDF-"
    assert "<svg" in paths[1].read_text()[:2000]
    assert not list(tmp_path.glob(".*.tmp"))


def _matched_table():
    internal = {g: u for g, u in GROUPS.items() if g not in STREAMS}
    dec = {**_trial(0, "decore", "lambda", 2.0, 0, 91.0, 400_000, 60_000_000)}
    l1 = {**_trial(1, "l1", "flops_target", 0.478, 0, 90.0, 420_000, 60_300_000), "match_of": dec["config_hash"],
          "kept_channels": _kept(420_000, internal)}
    far = {**_trial(2, "random", "flops_target", 0.8, 0, 92.0, 700_000, 100_000_000)}
    return normalise([dec, l1, far])


def test_layerwise_pairs_matched_partners_and_draws_unpruned_groups_whole():
    df = _matched_table()
    assert report.pick_layerwise_trials(df) == [["hash00", "hash01"]]
    fig = report.layerwise_figure(df)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert "stage 2 stream (32)" in ticks and "stage 1 stream (16)" in ticks and "layer1.0.conv1 (16)" in ticks
    assert not any(t.startswith("layer2.0.conv2") for t in ticks)  # a stream is not named after one conv
    # L1's scope is internal: its stream groups are drawn kept whole (1.0), hatched
    hatched = [p for p in ax.patches if p.get_hatch() == "///"]
    assert len(hatched) == len(STREAMS) and all(p.get_height() == 1.0 for p in hatched)
    assert "matched within 1%" in ax.get_title(loc="left") and "DECORE-2 (seed 0): 47.8% of the FLOPs" in ax.get_title(loc="left")


def test_layerwise_refuses_trials_far_apart_in_flops():
    df = _matched_table()  # hash02 is at 79.7% of the FLOPs, DECORE at 47.8%
    with pytest.raises(UserError, match="within 2% of the FLOPs"):
        report.layerwise_figure(df, [["hash00", "hash02"]])
    lonely = normalise([r for _, r in df.iterrows() if r["config_hash"] != "hash01"])
    fig = report.layerwise_figure(lonely)
    assert "no matched partner exists" in fig.axes[0].get_title(loc="left")
    with pytest.raises(UserError, match="nope"):
        report.layerwise_figure(df, [["nope"]])


def test_agents_figure_from_history(tmp_path):
    df = _matched_table()
    folder = tmp_path / "trials" / "decore-hash00"
    folder.mkdir(parents=True)
    hist = [{"epoch": e, "keep_prob": {"conv1": 1 - 0.1 * e, "layer1.0.conv1": 0.9}, "flops_if_pruned": 1e8 - 1e7 * e}
            for e in (1, 2, 3)]
    (folder / "history.json").write_text(json.dumps({"method": hist, "finetune": []}))
    found = report.agent_histories(tmp_path, df)
    assert len(found) == 1 and found[0][1] == hist
    fig = report.agents_figure(df, found)
    lines = fig.axes[0].lines  # a history without per-step records: one point per epoch, with markers
    assert len(lines) == 2 and lines[0].get_ydata().tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert lines[0].get_marker() == "o" and "per-step records not stored" in fig.axes[0].get_xlabel()
    flops = fig.axes[2].lines[0].get_ydata()
    assert flops[0] == pytest.approx(100 * 9e7 / BASE["flops"])


def test_agents_figure_over_agent_steps_of_one_epoch(tmp_path):
    """A one-epoch joint phase: AgentTrace's records draw a trajectory over steps, not a single point."""
    import torch

    from methods.decore import Agents, AgentTrace

    agents = Agents([4, 2], init=0.0, device=torch.device("cpu"))
    trace = AgentTrace(agents, ["conv1", "layer1.0.conv1"])
    for i in range(30):
        with torch.no_grad():
            agents.weight[:4] -= 0.2  # conv1's agents learn to drop their channels
        trace()
    row = {"epoch": 1, "keep_prob": {"conv1": 0.0, "layer1.0.conv1": 0.5}, "flops_if_pruned": 9e7, **trace.take()}
    steps = [r["step"] for r in row["agent_steps"]]
    assert steps == [1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30] and row["agent_step"] == 30
    assert row["agent_steps"][-1]["alive"] == {"conv1": 0, "layer1.0.conv1": 2} and not trace.take()["agent_steps"]
    fig = report.agents_figure(_matched_table(), [(_matched_table().iloc[0], [row])])
    median = fig.axes[0].lines[0]
    assert median.get_xdata().tolist() == steps and median.get_marker() == "o"
    assert median.get_ydata()[0] > 0.4 > median.get_ydata()[-1]  # the trajectory inside the one epoch
    assert fig.axes[1].lines[0].get_ydata().tolist()[-1] == 0.0


# ---------------------------------------------------------------- the report

def test_report_experiment_writes_everything(table, tmp_path):
    folder = tmp_path / "cifar_resnet56-cifar10-paper"
    folder.mkdir()
    table.to_csv(folder / "runs.csv", index=False)
    out = report.report_experiment(folder)
    assert set(out) == {"pareto.png", "pareto.svg", "pareto.pdf", "table.md", "table.tex", "layers.png", "README.md",
                        *(f"{stem}.{fmt}" for stem in ("paper", "paper-column") for fmt in ("pdf", "png", "svg")),
                        "caption.md", "caption.tex"}
    for p in out.values():
        assert p.parent == folder and p.stat().st_size > 0
    readme = out["README.md"].read_text()
    assert "(pareto.png)" in readme and "(layers.png)" in readme and "(paper.png)" in readme
    assert out["caption.md"].read_text().strip() in readme and "not the official set" not in readme
    assert out["table.md"].read_text() in readme
    assert f"python -m bench report {folder}" in readme
    assert "12 rows: 1 baseline, 11 trials (10 complete, 1 failed)" in readme


def test_report_experiment_via_upsert_and_without_decore(tmp_path):
    results = ResultsTable(tmp_path)
    for _, row in make_table().iterrows():
        if row["method"] != "decore":
            results.upsert({k: v for k, v in row.items() if not pd.isna(v)})
    out = report.report_experiment(tmp_path)
    assert "layers.png" not in out and not (tmp_path / "layers.png").exists()
    assert "DECORE-" not in str(_block(out["table.md"].read_text(), tables.HEADERS[0]))


def test_report_experiment_user_errors(table, tmp_path):
    with pytest.raises(UserError, match="runs.csv"):
        report.report_experiment(tmp_path)
    table[table["status"] != "complete"].to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(UserError, match="no complete trials"):
        report.report_experiment(tmp_path)


def test_layerwise_draws_one_bar_per_distinct_allocation_in_graph_order():
    df = _matched_table()
    twin = {**df[df["config_hash"] == "hash01"].iloc[0].to_dict(), "method": "random", "config_hash": "hash03"}
    df = normalise([*(r.to_dict() for _, r in df.iterrows()), twin])  # random kept exactly L1's channels
    ax = report.layerwise_figure(df, [["hash00", "hash01", "hash03"]]).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 2 and labels[1] == "L1 (FLOPs 0.48), internal\n= Random (FLOPs 0.48), internal (the same channels)"
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    # module order of cifar_resnet56 (the stem first, stage 2's conv1 before its stream's conv2 is named by stage)
    assert ticks[0] == "stage 1 stream (16)" and ticks.index("layer1.0.conv1 (16)") < ticks.index("layer2.0.conv1 (32)")


def test_labels_name_non_paper_options_and_engine_versions():
    """A row that used a setting beyond its paper says so in its label; rows of several engine versions (and
    older rows without one) say which engine made them."""
    dec = pd.Series({"method": "decore", "knob_name": "lambda", "knob_value": 0.99, "scope": "all",
                     "model": "cifar_resnet20", "knobs": json.dumps({"lambda": 0.99, "agent_init": 3.0, "agent_lr": 0.1})})
    assert report_rows.trial_label(dec) == "DECORE-0.99 (agents init 3, lr 0.1)"
    assert report_rows.trial_label({**dec, "knobs": json.dumps({"lambda": 0.99})}) == "DECORE-0.99"
    l1 = pd.Series({"method": "l1", "knob_name": "flops_target", "knob_value": 0.6, "scope": "all",
                    "model": "cifar_resnet20", "knobs": json.dumps({"flops_target": 0.6})})
    assert report_rows.trial_label(l1) == "L1 (FLOPs 0.60; scope all)"  # Li et al. prune inside the blocks
    assert report_rows.trial_label({**l1, "scope": "internal"}) == "L1 (FLOPs 0.60)"
    assert report_rows.trial_label(pd.Series({"method": "scratch-b", "knobs": "{}", "scope": "all"})) == "Scratch-B"
    row = {**l1, "scope": "internal", "budget_images": 15000, "joint_epochs": 0, "finetune_epochs": 2,
           "round_to": 1, "method_version": "abc", "engine_version": "e1e1e1e1"}
    assert "engine" not in report_rows.series_label(pd.Series(row), {"l1": 1, report_rows.ENGINE: 1})
    assert report_rows.series_label(pd.Series(row), {"l1": 1, report_rows.ENGINE: 2}).endswith("engine e1e1e1")
    older = pd.Series({**row, "engine_version": None})
    assert report_rows.series_label(older, {"l1": 1, report_rows.ENGINE: 2}).endswith("engine older (unrecorded)")


def test_matched_summary_pairs_partners_and_the_control_by_seed():
    """The README's one-table comparison: per DECORE configuration, partner (and control) minus DECORE, by hand."""
    rows, decore = [], (91.0, 92.0, 91.5)
    for seed, (d, l1, ctl) in enumerate(zip(decore, (90.0, 90.5, 91.0), (93.0, 93.5, 94.0))):
        dec = _trial(seed, "decore", "lambda", 2.0, seed, d, 500_000, 62_742_853 + 1_254_857 * seed)
        part = {**_trial(10 + seed, "l1", "flops_target", 0.49, seed, l1, 500_000, 62_000_000),
                "match_of": dec["config_hash"], "scope": "all"}
        control = {**_trial(20 + seed, "control", "ratio", 0.0, seed, ctl, BASE["params"], BASE["flops"]),
                   "knob_name": None, "knob_value": None, "knobs": "{}", "scope": "all"}
        rows += [dec, part, control]
    table = _md_rows(tables.matched_summary(normalise(rows)))
    assert table[0][3:] == ["L1 minus DECORE", "No pruning (control) minus DECORE"]
    (row,) = table[1:]
    assert row[0] == "DECORE-2" and row[1] == "49.0% (48.0-50.0)" and row[2] == "91.50 ± 0.50 (n=3)"
    # L1 - DECORE per seed: -1.0, -1.5, -0.5: mean -1.0, sd 0.5, t(0.975, 2 dof) = 4.303: half-width 1.24, covers 0
    assert row[3] == "-1.00 [-2.24, +0.24] n.s."
    # control - DECORE per seed: 2.0, 1.5, 2.5: the same spread, off zero: a verdict, so no mark
    assert row[4] == "+2.00 [+0.76, +3.24]"
    two = [r for r in rows if r["seed"] < 2]
    assert _md_rows(tables.matched_summary(normalise(two)))[1][3] == "-1.25 [-4.43, +1.93] (no verdict)"
    three = normalise(rows)
    assert tables.matched_tally(three) == "Of 1 matched comparison (3 seeds each): 0 partner better, 0 DECORE better, 1 not significant."
    assert tables.matched_tally(normalise(two)) == "No matched comparison has 3 seeds. 1 with fewer than 3 seeds gives no verdict."
