"""The site's pages: RESULTS_DIR/index.html, RESULTS_DIR/<experiment>/index.html, RESULTS_DIR/compare.html.

Each page function returns the HTML of one page from runs.csv (as a frame) and the files beside it (trial
folders, optuna.db, paper/paper.md); `write_site` reads the tables and writes the pages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import studies
from .compare import compare_figure, group_heading, groups
from .data import baseline, col, is_trial, load_reference, points, style, title, trial_json
from .dynamics import dynamics_figure, has_dynamics
from .html import COMPARE_JS, EXPERIMENT_JS, esc, fig_dict, markdown, page, plot_div, table
from .layers import layerwise_figure
from .pareto import axes_available, method_order, pareto_figure

EXPERIMENT_PAGE = "index.html"


def _counts(df: pd.DataFrame) -> str:
    trials = df[is_trial(df)]
    status = col(trials, "status").fillna("complete").astype(str).value_counts()
    return ", ".join(f"{n} {s}" for s, n in status.items()) or "no trials"


def _protocol(df: pd.DataFrame) -> str:
    """The protocol, said once per page: model, dataset, profile, epochs, devices."""
    parts = [title(df)]
    for c, text in (("baseline_epochs", "baseline epochs"), ("joint_epochs", "joint epochs"),
                    ("finetune_epochs", "fine-tune epochs")):
        vals = sorted({int(v) for v in pd.to_numeric(col(df[is_trial(df)], c), errors="coerce").dropna()})
        if vals:
            parts.append(f"{text} {'/'.join(map(str, vals))}")
    devices = sorted({str(d) for d in col(df, "device").dropna()})
    if devices:
        parts.append("on " + ", ".join(devices))
    return "; ".join(parts)


def _status_line(folder: Path, df: pd.DataFrame) -> str:
    """What the index says of this experiment, on its own page too; a legacy one is flagged in bold."""
    f = experiment_facts(folder, df)
    text = (f"Status: {f['status']}. Split decisions read: {f['split']}; seeds: {f['seeds']}; budget: {f['budget']}; "
            f"official data: {f['official']}; engine version: {f['engine']}.")
    return f'<p class="card"><b>{esc(text)}</b></p>' if f["status"].startswith("legacy") else f'<p class="note">{esc(text)}</p>'


def _report_links(folder: Path) -> str:
    """Links to the report's files beside the page, those that exist only."""
    names = [n for n in ("paper.png", "paper.pdf", "pareto.png", "table.md", "table.tex", "README.md")
             if (folder / n).is_file()]
    links = ", ".join(f'<a href="{esc(n)}">{esc(n)}</a>' for n in names)
    return f"Test top-1 against the control, the table and the report: {links}." if names else ""


def default_point(pts: pd.DataFrame) -> str | None:
    """The point shown first: the DECORE point with the smallest FLOPs, else the first point."""
    if pts.empty:
        return None
    decore = pts[pts["method"] == "decore"]
    pool = decore if not decore.empty else pts
    return str(pool.loc[pool["flops"].idxmin(), "id"])


def _point_info(r: pd.Series, partners: list[str], folder: Path) -> str:
    links = []
    if r["trial_dir"]:
        links.append(f'<a href="{esc(r["trial_dir"])}/">trial folder</a>')
        links += [f'<a href="{esc(r["trial_dir"])}/{n}">{n}</a>' for n in ("result.json", "history.json", "plan.json")
                  if (folder / r["trial_dir"] / n).is_file()]
    url = r.get("wandb_url")
    if isinstance(url, str) and url.startswith("http"):
        links.append(f'<a href="{esc(url)}">W&amp;B run</a>')
    elif isinstance(r.get("wandb_id"), str) and r["wandb_id"]:
        links.append(f"W&amp;B run id <code>{esc(r['wandb_id'])}</code> (open it in your W&amp;B project)")
    partner_text = (", ".join(esc(p) for p in partners) if partners else
                    "none (the layers below compare it with the closest point in FLOPs of each other method)")
    return (f"<b>{esc(r['label'])}</b> (trial <code>{esc(r['id'])}</code>), top-1 {r['top1']:.2f}%, "
            f"FLOPs {r['flops'] / 1e6:.2f}M ({r['rel_flops']:.0%} of the baseline)<br>"
            f"matched partners: {partner_text}<br>" + (" | ".join(links) or "no trial folder stored"))


def _per_point(pts: pd.DataFrame, folder: Path) -> tuple[dict, dict, dict]:
    """SITE.points (info, match key), SITE.layers and SITE.dynamics, keyed by point id."""
    info, layers, dyn = {}, {}, {}
    model = str(pts.attrs.get("model", ""))
    for _, r in pts.iterrows():
        pid = str(r["id"])
        mates = pts.loc[(pts["match_key"] == r["match_key"]) & (pts["id"] != pid), "id"].tolist() if r["match_key"] else []
        info[pid] = {"key": r["match_key"], "info": _point_info(r, mates, folder)}
        fig = layerwise_figure(pts, pid, folder, model)
        if fig.data and any(any(v is not None for v in t.y) for t in fig.data):
            layers[pid] = fig_dict(fig)
        history = trial_json(folder, r["trial_dir"], "history.json")
        if has_dynamics(history):
            dyn[pid] = fig_dict(dynamics_figure(history, r["base_flops"], f"{r['label']} (trial {pid})"))
    return info, layers, dyn


def _select(pts: pd.DataFrame) -> str:
    opts = []
    for m in method_order(pts["method"]):
        for _, r in pts[pts["method"] == m].sort_values("flops").iterrows():
            opts.append(f'<option value="{esc(r["id"])}">{esc(r["label"])}: FLOPs {r["flops"] / 1e6:.2f}M, '
                        f'top-1 {r["top1"]:.2f}% ({esc(r["id"])})</option>')
    return f'<select id="point-select">{"".join(opts)}</select>'


def _studies_section(folder: Path, data: dict[str, Any]) -> str:
    parts = ["<h2>Optuna studies</h2>",
             f'<p class="note">Browse the studies interactively, from this experiment\'s folder: '
             f"<code>{esc(studies.dashboard_command())}</code></p>"]
    found = studies.load_studies(folder)
    if not found:
        parts.append(f'<p class="note">No readable {studies.DB} in this folder (studies on PostgreSQL or a journal '
                     "file are not drawn here).</p>")
    for i, study in enumerate(found):
        parts.append(f"<h3>{esc(study.study_name)}</h3>")
        for kind, make in (("history", studies.history_figure), ("importance", studies.importance_figure)):
            fig = make(study)
            if fig is None:
                parts.append(f'<p class="note">{kind}: not enough complete trials.</p>')
                continue
            div = f"study-{i}-{kind}"
            data["figures"][div] = fig_dict(fig)
            parts.append(plot_div(div))
    return "\n".join(parts)


def experiment_page(folder: Path, df: pd.DataFrame, results_dir: Path | None = None) -> str:
    """One experiment: fronts, chosen point (partners, layers, agent dynamics), Optuna's figures."""
    folder = Path(folder)
    pts = points(df, folder)
    from bench.report.rows import official_data, protocol_text

    base, reference = baseline(df), load_reference(df, results_dir)
    official = official_data(folder)
    if not official:  # published points only where the data is the official set (the report's rule)
        attrs = dict(reference.attrs)
        reference = reference.iloc[0:0]
        reference.attrs = {**attrs, "baseline": None}
    data: dict[str, Any] = {"figures": {}, "points": {}, "layers": {}, "dynamics": {}, "initial": default_point(pts)}
    protocol = _protocol(df) + (f". Protocol: {protocol_text(df, official)}" if "budget" in df.columns else "")
    body = ['<nav><a href="../index.html">all experiments</a><a href="../compare.html">compare experiments</a></nav>',
            f"<h1>{esc(folder.name)}</h1>", f'<p class="sub">{esc(protocol)}. runs.csv: {esc(_counts(df))}.</p>',
            _status_line(folder, df),
            "<h2>Pareto fronts</h2>",
            '<p class="note">One point per complete trial, at the top-1 decisions read (the y axis names the split; '
            "hover: method, knob, scope, budget, seeds as mean ± std of test top-1 over its configuration, validation "
            "and test top-1, params, FLOPs, latency). Lines: each series' Pareto front exactly as runs.csv flags it "
            "(validation top-1 against FLOPs, on seed means), through the seed means of its configurations; on the "
            "params and speed-up axes the same configurations are joined. Colour and marker: method; a dot inside: "
            "scope internal. Click a legend entry to hide a series. Click a point to ring it and its matched partners "
            f"and to show its layers and links below. {_report_links(folder)}</p>"]
    if pts.empty:
        body.append("<p>No complete trials yet.</p>")
    else:
        for axis in axes_available(pts):
            data["figures"][f"pareto-{axis}"] = fig_dict(pareto_figure(pts, base, reference, axis))
            body.append(plot_div(f"pareto-{axis}", "plot pareto"))
        data["points"], data["layers"], data["dynamics"] = _per_point(pts, folder)
        body += ["<h2>Chosen point</h2>", f"<p>Point: {_select(pts)}</p>", '<div class="card" id="point-info"></div>',
                 '<p class="note" id="layers-note"></p>', plot_div("layers"),
                 "<h2>DECORE's agents</h2>", '<p class="note" id="dynamics-note"></p>', plot_div("dynamics")]
    body.append(_studies_section(folder, data))
    body.append(f'<p class="note">Made by <code>bench.report.site.write_site</code> from {esc(folder.name)}/runs.csv, '
                "its trials/ folders and results/reference/; plotly.js comes from ../plotly.min.js: the page works "
                "offline.</p>")
    return page(f"{folder.name}: results", "\n".join(body), data, EXPERIMENT_JS, root="../")


def compare_page(results_dir: Path, tables: dict[str, pd.DataFrame]) -> str:
    """Each experiment's change against its own control vs FLOPs kept; one figure per data and protocol (only
    experiments on the same data fingerprint, selection split and budget rule share an axis)."""
    pts = {name: points(df) for name, df in tables.items()}
    boxes = " ".join(f'<label><input type="checkbox" class="experiment" value="{esc(n)}" checked> {esc(n)} '
                     f'<span class="note">({esc(title(tables[n]))}, {len(p)} points)</span></label>'
                     for n, p in pts.items())
    data: dict[str, Any] = {"figures": {}}
    body = ['<nav><a href="index.html">all experiments</a></nav>', "<h1>Compare experiments</h1>",
            '<p class="sub">Each experiment\'s change in test top-1 against its own no-pruning control (its own '
            "baseline where it has none, as the legend says), against FLOPs kept as a percentage of its own baseline: "
            "models of any accuracy share an axis. Experiments share a figure only when they ran on the same data "
            "(fingerprint) under the same protocol (selection split, budget rule). Points: configurations (seed means); "
            "colour: method; marker shape: experiment; lines: the fronts runs.csv flags. The checkboxes show and hide "
            "experiments; hover a point for its configuration.</p>",
            f'<p id="experiment-boxes">{boxes or "No experiments."}</p>']
    for i, (key, names) in enumerate(groups(tables).items()):
        heading = group_heading(key)
        data["figures"][f"compare-{i}"] = fig_dict(compare_figure({n: pts[n] for n in names}, "Test top-1 change vs "
                                                                  "own control, against FLOPs kept"))
        body += [f"<h2>{esc(heading)}</h2>", plot_div(f"compare-{i}", "plot compare")]
    return page("Compare experiments", "\n".join(body), data, COMPARE_JS)


def _other_results(results_dir: Path, tables: dict[str, pd.DataFrame]) -> str:
    """Folders without a runs.csv that hold notes (curated experiments, perf tables), linked as they are."""
    links = []
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir() and p.name not in tables and p.name != "paper"):
        notes = sorted(folder.glob("*.md"))
        links += [f'<a href="{esc(folder.name)}/{esc(n.name)}">{esc(folder.name)}/{esc(n.name)}</a>' for n in notes]
    return f'<p class="note">Other results (no runs.csv): {", ".join(links)}</p>' if links else ""


def experiment_facts(folder: Path, df: pd.DataFrame) -> dict[str, str]:
    """What a reader must know before comparing an experiment: split, seeds, budget, official data, engine
    version, and its status (legacy: selected on test; pipeline check: a smoke/micro profile; else curated)."""
    from bench.report.rows import official_data

    trials = df[is_trial(df)]
    selection = sorted({str(v) for v in col(trials, "selection").dropna()})
    split = ", ".join({"val": "validation", "test": "test"}.get(v, v) for v in selection) or "test (unrecorded)"
    seeds = sorted({int(v) for v in pd.to_numeric(col(trials, "seed"), errors="coerce").dropna()})
    rules = sorted({str(v) for v in trials["budget"].dropna()}) if "budget" in trials.columns else []  # the rule
    scratch = col(trials, "method").astype(str).str.startswith("scratch")  # Liu et al.'s budgets, from scratch

    def counts(rows: pd.DataFrame) -> list[int]:
        return sorted({int(v) for v in pd.to_numeric(col(rows, "budget_images"), errors="coerce").dropna()})
    images, fresh = counts(trials[~scratch]), counts(trials[scratch])
    fresh_text = f"; scratch controls {fresh[0]:,}{f'-{fresh[-1]:,}' if len(fresh) > 1 else ''} from scratch" if fresh else ""
    budget = (", ".join(rules) or "unrecorded") + (f" ({', '.join(f'{i:,}' for i in images)} images{fresh_text})"
                                                   if images or fresh else "")
    official = official_data(folder)
    engine_col = next((c for c in ("engine_version", "git_commit") if c in df.columns and df[c].notna().any()), None)
    engine = ", ".join(sorted({str(v)[:10] for v in df[engine_col].dropna()})) if engine_col else "unrecorded"
    profile = " ".join(str(v) for v in col(df, "profile").dropna().unique())
    status = ("legacy: decisions read the test set" if not selection or "test" in selection else
              "pipeline check" if any(p in profile for p in ("smoke", "micro", "tiny")) else "curated")
    return {"split": split, "seeds": f"{len(seeds)} ({', '.join(map(str, seeds))})" if seeds else "-",
            "budget": budget, "official": {True: "yes", False: "no"}.get(official, "unrecorded"),
            "engine": engine, "status": status}


def index_page(results_dir: Path, tables: dict[str, pd.DataFrame]) -> str:
    """The list of experiments with what tells them apart (experiment_facts), links to their pages, and the
    paper's tables when paper/paper.md exists."""
    rows = []
    for name, df in tables.items():
        folder = Path(results_dir) / name
        pts, base = points(df), baseline(df)
        facts = experiment_facts(folder, df)
        methods = ", ".join(f"{style(m)[0]} ({(pts['method'] == m).sum()})" for m in method_order(pts["method"]))
        extra = [f'<a href="{esc(name)}/{f}">{f}</a>' for f in ("README.md", "table.md", "paper.png", "pareto.png")
                 if (folder / f).is_file()]
        status = esc(facts["status"])
        if facts["status"].startswith("legacy"):
            status = f'<b class="legacy">{status}</b>'
        rows.append([f'<a href="{esc(name)}/{EXPERIMENT_PAGE}">{esc(name)}</a>', esc(title(df)), status,
                     esc(facts["split"]), esc(facts["seeds"]), esc(facts["budget"]), esc(facts["official"]),
                     f"<code>{esc(facts['engine'])}</code>", "-" if base is None else f"{base['top1']:.2f}%",
                     esc(methods or "-"), esc(_counts(df)), " ".join(extra)])
    body = ["<h1>Results</h1>", f'<p class="sub">{len(tables)} experiment(s) under {esc(Path(results_dir).name)}/; '
            '<a href="compare.html">compare experiments</a> (only those on the same data and protocol share an '
            "axis). Split: what decisions read. Official data: a checksum-verified download of the dataset. Engine "
            "version: the harness commit(s) the rows ran on. Legacy experiments chose their points on the test set: "
            "do not compare them with the others.</p>",
            table(["Experiment", "Model and data", "Status", "Split", "Seeds", "Budget", "Official data",
                   "Engine version", "Baseline test top-1", "Points per method", "Trials", "Files"], rows, "text")
            if rows else "<p>No runs.csv found.</p>", _other_results(Path(results_dir), tables)]
    paper = Path(results_dir) / "paper" / "paper.md"
    if paper.is_file():
        body += ['<h2>Paper</h2>', '<p class="note">The tables of <a href="paper/paper.md">paper/paper.md</a>, as written '
                 "there:</p>", markdown(paper.read_text(errors="replace"), prefix="paper/", shift=2)]
    return page("Results", "\n".join(body))


def _first_heading(path: Path) -> str:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def results_readme(results_dir: Path, tables: dict[str, pd.DataFrame]) -> str:
    """RESULTS_DIR/README.md: every experiment folder with model, data, protocol, seeds, budget and status, then
    the folders without a runs.csv (perf tables, references) with their own README's heading."""
    lines = ["# Results", "", "Written by `make report` (`python -m bench report`, bench/report/site/pages.py) from each "
             "folder's runs.csv and experiment.json; do not edit by hand. Open [index.html](index.html) for the site, "
             "[compare.html](compare.html) for experiments side by side.", "",
             "Status: *curated* (a profile meant for comparison), *pipeline check* (smoke/micro profiles: they show "
             "the pipeline runs, not which method is better), *legacy* (decisions read the test set: never compare "
             "it with the others). Official data: the checksum-verified dataset download (else a local copy, "
             "fingerprint given).", "",
             "| Folder | Model | Data | Protocol (split, budget rule) | Seeds | Budget (images after the baseline) "
             "| Status |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, df in tables.items():
        facts = experiment_facts(Path(results_dir) / name, df)
        fingerprints = sorted({str(v) for v in df["data_fingerprint"].dropna()}) if "data_fingerprint" in df else []
        data = (f"{' '.join(str(v) for v in col(df, 'dataset').dropna().unique())} "
                f"({', '.join(fingerprints) or 'fingerprint unrecorded'}; official: {facts['official']})")
        lines.append(f"| [{name}]({name}/README.md) | {' '.join(str(v) for v in col(df, 'model').dropna().unique())} "
                     f"| {data} | {facts['split']}, {facts['budget'].split(' (')[0]} | {facts['seeds']} "
                     f"| {facts['budget'].split(' (', 1)[1].rstrip(')') if ' (' in facts['budget'] else '-'} "
                     f"| {facts['status']} |")
    # baselines/ is the baseline cache (bench.engine.baseline), generated and never committed
    others = sorted(p for p in Path(results_dir).iterdir() if p.is_dir() and p.name not in tables and p.name != "baselines")
    if others:
        lines += ["", "## Other folders", ""]
        for folder in others:
            readme = folder / "README.md"
            what = _first_heading(readme) if readme.is_file() else ", ".join(n.name for n in sorted(folder.glob("*.md")))
            link = f"[{folder.name}/]({folder.name}/README.md)" if readme.is_file() else f"{folder.name}/"
            lines.append(f"- {link}: {what or 'no README'}")
    return "\n".join(lines) + "\n"
