"""`make paper`: DECORE's tables regenerated from every stored experiment, our rows beside the published ones.

A pure function of RESULTS_DIR (each experiment's runs.csv and experiment.json) and the reference table:
no training. CIFAR-10: VGG-16, ResNet-56, ResNet-110, GoogLeNet, DenseNet-40; ImageNet: ResNet-50 (top-1
and top-5). Per model, our rows are the configurations on their series' Pareto fronts (validation top-1
against FLOPs, seed means) of every experiment on that model and dataset, each row with its experiment and
protocol; a model with no experiment is listed as not run yet, with the command that fills it. Writes
RESULTS_DIR/paper/paper.md, paper.tex and README.md.
"""
from __future__ import annotations

from pathlib import Path
import pandas as pd

from bench.core.errors import UserError
from bench.core.io import atomic_write
from bench.report.rows import (REFERENCE_CSV, aggregate, baseline_point, latex_escape, load_reference, official_data,
                               protocol_text)
from bench.report.tables import _reference_rows
from bench.trial.results import ResultsTable, mark_pareto

# (what users type, timm name, dataset, the make command that fills the row)
PAPER_MODELS = (
    ("vgg16", "cifar_vgg16_bn", "cifar10"),
    ("resnet56", "cifar_resnet56", "cifar10"),
    ("resnet110", "cifar_resnet110", "cifar10"),
    ("googlenet", "cifar_googlenet", "cifar10"),
    ("densenet40", "cifar_densenet40", "cifar10"),
    ("resnet50", "resnet50", "imagenet"),
)
HEADERS = ["Method", "Top-1 (%)", "Top-1 drop", "Top-5 (%)", "Params (M) (down %)", "FLOPs (M) (down %)"]


def _command(user: str, dataset: str) -> str:
    if dataset == "imagenet":
        return ("`make bench MODEL=resnet50.tv_in1k DATASET=imagefolder:/path/to/imagenet PROFILE=imagenet "
                "SWEEP_ARGS=--pretrained` (torchvision's weights through timm, downloaded once; offline: "
                "SWEEP_ARGS='--checkpoint PATH'), 30 epochs per trial split 26 + 4 as we read the paper "
                "(see the README's 'Reproducing the paper')")
    return f"`make bench MODEL={user} DATASET={dataset} PROFILE=paper`"


class _SplitSizes:
    """The sizes plan_images reads, without loading data: CIFAR-10 under the default protocol (45,000 training
    images, 5,000 held out for selection, 10,000 test; 10 balanced classes)."""

    def __init__(self, train: int = 45_000, val: int = 5_000, test: int = 10_000, classes: int = 10) -> None:
        self.n, self.info, self.classes = train, {"val_images": val, "test_images": test}, classes
        self.y = range(train)

    @property
    def train(self) -> "_SplitSizes":
        return self

    def subset_per_class(self, per_class: int | None) -> "_SplitSizes":
        return self if not per_class else _SplitSizes(min(self.n, per_class * self.classes), **self.info)

    def split_info(self) -> dict[str, int]:
        return self.info


def _paper_images(user: str, dataset: str) -> dict[str, float]:
    """The images `make bench ... PROFILE=paper` would train and evaluate (sweeps.plan.plan_images)."""
    from sweeps.profile import load_profile
    from sweeps.config import SweepConfig
    from sweeps.plan import plan_images

    cfg = SweepConfig(model=user, dataset=dataset, profile="paper")
    profile = load_profile("paper")
    return plan_images(cfg, profile, None, _SplitSizes())


def _estimate(dataset: str, user: str = "") -> str:
    if dataset == "imagenet":
        return ("not measured (no GPU was available to this project, and the plan prints no estimate for image "
                "folders): every trial trains 30 epochs over the training images, about 21 trials with the profile's "
                "4 per method, matched partners and the control")
    imgs = _paper_images(user, dataset)
    return (f"not measured (no GPU step time is stored yet: the plan prints one when the command starts on a GPU); "
            f"the sweep trains {(imgs['baseline'] + imgs['trials']) / 1e6:.1f}M images (baseline "
            f"{imgs['baseline'] / 1e6:.1f}M, {imgs['n_trials']:.0f} trials) and evaluates {imgs['evals'] / 1e6:.1f}M, "
            f"so at R training images per second on your GPU it takes about {(imgs['baseline'] + imgs['trials']) / 3600:,.0f} / R hours")


def _paper_key(model: str, dataset: str) -> tuple[str, str]:
    """(architecture, dataset) as the paper's tables name them: a timm tag (resnet50.tv_in1k: which weights the
    baseline came from) is dropped, and an ImageNet-layout folder fills the ImageNet table."""
    return model.split(".", 1)[0], "imagenet" if dataset.startswith("imagefolder:") else dataset


def experiments(results: Path) -> dict[tuple[str, str], list[Path]]:
    """Experiment folders under `results` by (architecture, dataset) (see _paper_key)."""
    out: dict[tuple[str, str], list[Path]] = {}
    for csv in sorted(Path(results).glob("*/runs.csv")):
        df = ResultsTable(csv.parent).read()
        if df.empty:
            continue
        first = df.iloc[0]
        out.setdefault(_paper_key(str(first["model"]), str(first["dataset"])), []).append(csv.parent)
    return out


def _pct(v: float, base: float) -> str:
    return f"{100 * (1 - v / base):.1f}%"


def _our_rows(folder: Path) -> list[list[str]]:
    df = mark_pareto(ResultsTable(folder).read())
    base = baseline_point(df)
    points = aggregate(df)
    if points.empty or base is None:
        return []
    points = points[(points["pareto"]) | (points["method"] == "control")].sort_values("flops", ascending=False)
    rows = [[f"Baseline ({folder.name})", f"{base['top1_pct']:.2f}", "–", "–", f"{base['params'] / 1e6:.2f}",
             f"{base['flops'] / 1e6:.2f}"]]
    for _, r in points.iterrows():
        std = "" if pd.isna(r["top1_std"]) else f" ± {r['top1_std']:.2f}"
        rows.append([r["label"], f"{r['top1_pct']:.2f}{std}", f"{base['top1_pct'] - r['top1_pct']:.2f}",
                     "–" if pd.isna(r["top5_pct"]) else f"{r['top5_pct']:.2f}",
                     f"{r['params'] / 1e6:.2f} ({_pct(r['params'], base['params'])})",
                     f"{r['flops'] / 1e6:.2f} ({_pct(r['flops'], base['flops'])})"])
    return rows


def _published_rows(model: str, dataset: str, reference: Path | None) -> tuple[list[list[str]], list[str]]:
    ref = load_reference(model, dataset, reference)
    rows, sources = _reference_rows(ref)
    out = []
    for r in rows:
        c = r["cells"]
        out.append([f"{c[0]} [{r['source']}]", c[1], c[2], "–", c[3], c[4]])
    if dataset == "imagenet":  # the reference holds top-5 for ImageNet rows: put it in its column
        full = pd.read_csv(reference or REFERENCE_CSV)
        full = full[(full["model"] == model.removeprefix("cifar_")) & (full["dataset"] == dataset)]
        order = [full[full["method"] == "baseline"]] + [full[full["method"] != "baseline"].sort_values("flops_m", ascending=False)]
        top5 = pd.concat(order)["top5"].tolist()
        for row, t in zip(out, top5):
            row[3] = "–" if pd.isna(t) else f"{float(t):.2f}"
    return out, sources


def _md_table(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(HEADERS) + " |", "| --- |" + " ---: |" * (len(HEADERS) - 1),
            *("| " + " | ".join(r) + " |" for r in rows)]


def paper_tables(results: Path, reference: Path | None = None) -> tuple[str, str, list[str]]:
    """(markdown, latex, models not run yet) of the paper's CIFAR-10 and ImageNet tables."""
    found = experiments(results)
    md, tex, missing = ["# DECORE's tables, regenerated", ""], [], []
    for title, dataset in (("CIFAR-10", "cifar10"), ("ImageNet (ResNet-50)", "imagenet")):
        md += [f"## {title}", ""]
        for user, timm_name, ds in (m for m in PAPER_MODELS if m[2] == dataset):
            md += [f"### {user}", ""]
            folders = found.get((timm_name, ds), [])
            ours: list[list[str]] = []
            for folder in folders:
                df = ResultsTable(folder).read()
                md += [f"Measured here, `{folder.name}`. Protocol: {protocol_text(df, official_data(folder))}.", ""]
                ours += _our_rows(folder)
            if not folders:
                missing.append(user)
                md += [f"**Not run yet.** Command: {_command(user, ds)}. Estimated time on one GPU: {_estimate(ds, user)}.", ""]
            published, sources = _published_rows(timm_name, ds, reference)
            if ours:
                md += ["Ours (rows on their series' Pareto front, and the no-pruning control):", ""]
                md += _md_table(ours) + [""]
            if published:
                md += ["Published (their schedules; not comparable unless the protocol above is the papers'):", ""]
                md += _md_table(published) + ["", "Sources: " + "; ".join(f"[{i}] {s}" for i, s in enumerate(sources, 1)), ""]
            tex += _latex(user, ds, ours, published)
    return "\n".join(md) + "\n", "\n".join(tex) + "\n", missing


def _latex(user: str, dataset: str, ours: list[list[str]], published: list[list[str]]) -> list[str]:
    n = len(HEADERS)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(f'{user} on {dataset}')}}}",
             r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{l{'r' * (n - 1)}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in HEADERS) + r" \\", r"\midrule"]
    if ours:
        lines += [rf"\multicolumn{{{n}}}{{l}}{{\emph{{Measured here}}}} \\"]
        lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in ours]
    else:
        lines += [rf"\multicolumn{{{n}}}{{l}}{{\emph{{Not run yet}}}} \\"]
    if published:
        lines += [r"\midrule", rf"\multicolumn{{{n}}}{{l}}{{\emph{{Published, their schedules}}}} \\"]
        lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in published]
    return lines + [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]


def write_paper(results: Path, reference: Path | None = None) -> dict[str, Path]:
    results = Path(results)
    if not results.is_dir():
        raise UserError(f"RESULTS_DIR {str(results)!r} does not exist: run `make bench` first or set RESULTS_DIR")
    md, tex, missing = paper_tables(results, reference)
    out = results / "paper"
    written = {}
    for name, text in (("paper.md", md), ("paper.tex", tex), ("README.md", md)):
        written[name] = atomic_write(out / name, lambda tmp, t=text: Path(tmp).write_text(t))
    return written
