"""Report: Pareto fronts, the paper table (Markdown, LaTeX), plots and README of a hand-made results table."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from bench import report
from bench.errors import UserError
from bench.results import ResultsTable, mark_pareto, normalise

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
          "base_flops": BASE["flops"], "finetune_epochs": 2, "round_to": 1}


def _kept(params: int) -> str:
    frac = params / BASE["params"]  # any monotone choice: the plot only needs plausible fractions
    return json.dumps({g: [max(1, round(u * frac)), u] for g, u in GROUPS.items()})


def _trial(i: int, method: str, knob: str, value, seed: int, top1, params, flops) -> dict:
    preset = isinstance(value, str)
    row = {**COMMON, "row_type": "trial", "method": method, "scope": "all" if method == "decore" else "internal",
           "knob_name": knob, "knob_value": None if preset else value, "knobs": json.dumps({knob: value}),
           "seed": seed, "config_hash": f"hash{i:02d}", "joint_epochs": 2 if method == "decore" else 0}
    if top1 is None:
        return {**row, "status": "failed", "reason": "RuntimeError: out of memory"}
    return {**row, "status": "complete", "top1_pct": top1, "top1_drop_pct": BASE["top1"] - top1,
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
    return report.load_reference("cifar_resnet56", "cifar10")


def _by_hash(df: pd.DataFrame) -> dict[str, str]:
    return {h: f"{m}:{v}" for h, m, v in zip(df["config_hash"], df["method"], df["knobs"])}


# ---------------------------------------------------------------- reference and labels

def test_reference_maps_timm_names_and_keeps_baseline_apart(reference):
    assert set(reference["model"]) == {"resnet56"} and "baseline" not in set(reference["method"])
    assert len(reference) == 10
    assert reference.attrs["baseline"]["flops_m"] == pytest.approx(125.49)
    decore200 = reference[reference["variant"] == "DECORE-200"].iloc[0]
    assert (decore200["flops_m"], decore200["top1"]) == (62.93, 93.26)
    vgg = report.load_reference("cifar_vgg16_bn", "cifar10")
    assert vgg.attrs["baseline"]["params_m"] == pytest.approx(14.98) and (vgg["model"] == "vgg16_bn").all()
    assert report.load_reference("cifar_resnet20", "cifar10").empty


def test_missing_reference_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        report.load_reference("cifar_resnet56", "cifar10", tmp_path / "nope.csv")


@pytest.mark.parametrize("method,knob,value,label", [
    ("decore", "lambda", 0.72, "DECORE-0.72"), ("decore", "lambda", 200.0, "DECORE-200"),
    ("decore", "lambda", 1e-5, "DECORE-1e-05"), ("l1", "ratio", 0.5, "L1 (ratio 0.5)"),
    ("l1", "preset", "li2017-B", "L1 (li2017-B)"), ("l1", "flops_target", 0.6, "L1 (FLOPs 0.60)"),
    ("random", "ratio", 0.3, "Random (ratio 0.3)"),
])
def test_trial_labels_follow_the_paper(method, knob, value, label):
    row = normalise([_trial(0, method, knob, value, 0, 90.0, 1, 1)]).iloc[0]
    assert report.trial_label(row) == label


# ---------------------------------------------------------------- Pareto front

def test_pareto_front_on_hand_chosen_points(table):
    decore = report.pareto_front(table[table["method"] == "decore"])
    # seed 1 of lambda=200 (92.80 at 64M) is beaten by seed 0 (92.90 at 63M); the failed trial is out
    assert list(decore["config_hash"]) == ["hash03", "hash01", "hash00"]
    l1 = report.pareto_front(table[table["method"] == "l1"])
    assert list(l1["config_hash"]) == ["hash07", "hash06"]  # ratio 0.1 is beaten by li2017-B
    by_params = report.pareto_front(table[table["method"] == "random"], cost="params")
    assert list(by_params["config_hash"]) == ["hash10", "hash09", "hash08"]
    assert set(table.loc[table["pareto"].fillna(False), "config_hash"]) == {"hash03", "hash01", "hash00", "hash07",
                                                                            "hash06", "hash10", "hash09", "hash08"}


def test_aggregate_means_over_seeds(table):
    agg = report.aggregate(table)
    assert len(agg) == 9  # 10 complete trials, two of them seeds of one configuration
    d200 = agg[agg["label"] == "DECORE-200"].iloc[0]
    assert d200["n"] == 2 and d200["top1_pct"] == pytest.approx(92.85)
    assert d200["top1_std"] == pytest.approx(np.std([92.9, 92.8], ddof=1))
    assert d200["flops"] == pytest.approx(63_500_000) and d200["flops_std"] == pytest.approx(np.std([63e6, 64e6], ddof=1))
    assert agg[agg["label"] == "DECORE-450"]["top1_std"].isna().all()


# ---------------------------------------------------------------- paper table

def _md_rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")][2:]  # drop header and separator
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _section(rows: list[list[str]], title: str) -> list[list[str]]:
    start = next(i for i, r in enumerate(rows) if r[0] == f"*{title}*") + 1
    end = next((i for i in range(start, len(rows)) if rows[i][0].startswith("*")), len(rows))
    return rows[start:end]


def test_markdown_table_rows_numbers_and_order(table, reference):
    md, _ = report.paper_table(table, reference)
    rows = _md_rows(md)
    assert len(rows) == 2 + (1 + 9) + (1 + 10)  # two section rows, baseline + 9 configurations, literature
    measured = _section(rows, "Measured here")
    assert [r[0] for r in measured] == ["Baseline", "L1 (ratio 0.1)", "Random (ratio 0.1)", "DECORE-450",
                                        "L1 (li2017-B)", "Random (ratio 0.3)", "L1 (ratio 0.5)", "DECORE-200",
                                        "Random (ratio 0.5)", "DECORE-55"]  # FLOPs descending, stable on ties
    assert measured[0] == ["Baseline", "93.10", "–", "0.853", "125.49"]
    assert "| DECORE-450 | 93.20 | -0.10 | 0.640 (25.0%) | 92.00 (26.7%) |" in md
    assert measured[7] == ["DECORE-200", "92.85 ± 0.07", "0.25", "0.435 (49.0%)", "63.50 (49.4%)"]
    assert "DECORE-10" not in md  # failed


def test_best_in_column_is_bold_in_the_measured_block_only(table, reference):
    md, tex = report.paper_table(table, reference)
    measured = _section(_md_rows(md), "Measured here")
    bold = {(r[0], i) for r in measured for i, c in enumerate(r) if c.startswith("**")}
    # top-1 and drop: L1 (li2017-B) 93.25; params and FLOPs: DECORE-55; never the baseline
    assert bold == {("L1 (li2017-B)", 1), ("L1 (li2017-B)", 2), ("DECORE-55", 3), ("DECORE-55", 4)}
    assert "| DECORE-55 | 90.50 | 2.60 | **0.130 (84.8%)** | **23.50 (81.3%)** |" in md
    assert md.count("**") == 8  # HRank-1's 93.52 in the literature block is not marked
    assert r"\textbf{93.25} & \textbf{-0.15}" in tex and tex.count(r"\textbf{") == 4


def test_reference_block_lists_published_rows_with_sources(table, reference):
    md, tex = report.paper_table(table, reference)
    published = _section(_md_rows(md), "Reported in the literature")
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
    _, tex = report.paper_table(table, reference)
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1)
    assert len(spec) == len(report.HEADERS)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    body = tex[tex.index(r"\toprule"):tex.index(r"\bottomrule")]
    rows = [ln for ln in body.splitlines() if ln.rstrip().endswith(r"\\")]
    assert len(rows) == 1 + 2 + 10 + 11  # header, two section rows, measured, literature
    for ln in rows:
        if not ln.startswith(r"\multicolumn"):
            assert len(re.findall(r"(?<!\\)&", ln)) == len(report.HEADERS) - 1, ln
    assert not re.search(r"(?<!\\)[%_#]", tex), "unescaped LaTeX special character"
    assert r"cifar\_resnet56" in tex and r"$\pm$" in tex
    for env in ("table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
    assert _balanced(tex)
    if shutil.which("pdflatex"):
        _compile(tex)


def _balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _compile(tex: str) -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        doc = "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + tex + "\\end{document}\n"
        Path(d, "t.tex").write_text(doc)
        done = subprocess.run(["pdflatex", "-halt-on-error", "t.tex"], cwd=d, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout[-2000:]


def test_latex_escape():
    assert report.latex_escape("a_b & 5% #1 {x} ~ ^ \\") == \
        r"a\_b \& 5\% \#1 \{x\} \textasciitilde{} \^{} \textbackslash{}"


# ---------------------------------------------------------------- plots

def _scatter_points(ax) -> dict[str, np.ndarray]:
    return {c.get_label(): np.asarray(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)}


def test_pareto_figure_draws_ours_fronts_baselines_and_published(table, reference):
    fig = report.pareto_figure(table, reference)
    flops_ax, params_ax = fig.axes[:2]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    for want in ("DECORE", "L1", "Random", "Baseline (measured)", "Baseline (reported)", "DECORE (reported)",
                 "L1 (reported)", "HRank (reported)", "GAL (reported)", "NISP (reported)"):
        assert want in labels
    pts = _scatter_points(flops_ax)
    assert [125.485706, 93.10] in pts["Baseline (measured)"].round(6).tolist()
    assert [62.93, 93.26] in pts["DECORE (reported)"].tolist()
    assert [63.5, 92.85] in pts["DECORE"].round(6).tolist()  # the mean of two seeds, not each seed
    assert len(pts["DECORE"]) == 3 and len(pts["Random"]) == 3
    assert [0.43, 93.26] in _scatter_points(params_ax)["DECORE (reported)"].tolist()
    assert {"DECORE-200", "Li2017-B", "HRank-1"} <= {t.get_text() for t in flops_ax.texts}
    steps = [ln for ln in flops_ax.lines if ln.get_drawstyle() == "steps-post"]
    assert any(ln.get_xdata().tolist() == [23.5, 63.5, 92.0] for ln in steps)  # DECORE's front (means)
    assert any(ln.get_xdata().tolist() == [64.5, 90.9] for ln in steps)       # L1's front
    assert fig._suptitle.get_text() == "cifar_resnet56 on cifar10 (paper)"


def test_pareto_plot_writes_png_svg_pdf(table, reference, tmp_path):
    paths = report.pareto_plot(table, reference, tmp_path / "pareto")
    assert [p.name for p in paths] == ["pareto.png", "pareto.svg", "pareto.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[2].read_bytes()[:5] == b"%PDF-"
    assert "<svg" in paths[1].read_text()[:2000]
    assert not list(tmp_path.glob(".*.tmp"))


def test_layerwise_picks_decore_and_its_nearest_rivals(table, tmp_path):
    assert report.pick_layerwise_trials(table) == ["hash03", "hash07", "hash10"]
    fig = report.layerwise_figure(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{g} ({u})" for g, u in GROUPS.items()]
    decore = ax.containers[0]
    want = [json.loads(_kept(130_000))[g][0] / u for g, u in GROUPS.items()]
    assert [b.get_height() for b in decore] == pytest.approx(want)
    out = report.layerwise_plot(table, tmp_path / "layers.png", trials=["hash00"])
    assert out.stat().st_size > 1000
    with pytest.raises(UserError, match="nope"):
        report.layerwise_figure(table, ["nope"])


# ---------------------------------------------------------------- the report

def test_report_experiment_writes_everything(table, tmp_path):
    folder = tmp_path / "cifar_resnet56-cifar10-paper"
    folder.mkdir()
    table.to_csv(folder / "runs.csv", index=False)
    out = report.report_experiment(folder)
    assert set(out) == {"pareto.png", "pareto.svg", "pareto.pdf", "table.md", "table.tex", "layers.png", "README.md"}
    for p in out.values():
        assert p.parent == folder and p.stat().st_size > 0
    readme = out["README.md"].read_text()
    assert "![Top-1 against FLOPs and params](pareto.png)" in readme and "(layers.png)" in readme
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
    assert "DECORE-" not in _section(_md_rows(out["table.md"].read_text()), "Measured here").__str__()


def test_report_experiment_user_errors(table, tmp_path):
    with pytest.raises(UserError, match="runs.csv"):
        report.report_experiment(tmp_path)
    table[table["status"] != "complete"].to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(UserError, match="no complete trials"):
        report.report_experiment(tmp_path)
