"""The end of `make search`: the winners' README (what each method reached under the budget, or why none fits)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from bench.core.io import atomic_write
from bench.trial.results import ResultsTable

from sweeps.budget import Setup, fmt, row_cost


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A table row with pandas' missing values as None (JSON, and upsert, want plain values)."""
    return {k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def _mark(table: ResultsTable, df: pd.DataFrame, method: str, key: str, budget: str) -> None:
    """`budget` in the winner's budget_winner column, and out of any other row of this method."""
    for _, r in df[(df["method"] == method) & (df["row_type"] == "trial")].iterrows():
        have = [b for b in ("" if pd.isna(r["budget_winner"]) else str(r["budget_winner"])).split(";") if b]
        want = sorted((set(have) - {budget}) | ({budget} if r["config_hash"] == key else set()))
        if want != sorted(have):
            table.upsert({**_plain(r.to_dict()), "budget_winner": ";".join(want) or None})


def unreachable_message(setup: Setup, counts: dict[str, int]) -> str:
    """No winner: say what the smallest models reached, so the user knows how far off the budget is."""
    if counts.get("pruned") or counts.get("failed"):  # models within the budget were tried but none finished
        return (f"budget {setup.budget.text}: no trial within it finished ({counts['pruned']} pruned, "
                f"{counts['failed']} failed, {counts['infeasible']} infeasible): run more trials (--trials) or "
                "use --pruner none")
    df = ResultsTable(setup.cfg.sweep.folder).read()
    mine = df[df["study"].isin([setup.cfg.study_name(m) for m in setup.cfg.methods]) & df["flops"].notna()]
    b, budget = setup.base_cost, setup.budget
    head = f"budget {budget.text} ({budget.describe(b)}) was not met by any trial of {', '.join(setup.cfg.methods)}"
    if mine.empty:
        return f"{head}, and no trial got as far as choosing its channels: see the messages above"
    flops, params = int(mine["flops"].min()), int(mine["params"].min())
    scope = "" if setup.cfg.scope == "all" else "; --scope all prunes the residual streams too"
    return (f"{head}: the smallest model reached has {fmt('flops', flops)} FLOPs ({flops / b['flops']:.3f} of the "
            f"baseline's) and {fmt('params', params)} params ({params / b['params']:.3f}); relax the budget{scope}")


def write_search_report(setup: Setup, winners: dict[str, dict[str, Any] | None]) -> Path:
    """README.md in the search folder: the winners, their layer widths and the trials they took."""
    cfg, b, meta = setup.cfg, setup.base_cost, setup.base.meta
    lines = [f"# Budgeted search: {cfg.model} on {cfg.dataset} ({cfg.profile}), budget `{setup.budget.text}`", "",
             f"Budget: {setup.budget.describe(b)}. Baseline: top-1 {meta['test']['top1']:.2f}%, "
             f"{fmt('flops', b['flops'])} FLOPs, {fmt('params', b['params'])} params. Pruner: {cfg.pruner}"
             f"{', DECORE per-stage lambda on' if cfg.decore_per_stage else ''}.", "",
             "| method | val top-1 (%) (chose it) | test top-1 (%) | FLOPs | params | latency (ms) | knobs | found at trial | trials (complete / infeasible / pruned / failed) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for method, w in winners.items():
        if w is None:
            lines.append(f"| {method} | no feasible model | | | | | | | |")
            continue
        r = w["row"]
        val = r.get("val_top1_pct")
        lines.append(f"| {method} | {'–' if val is None else f'{val:.2f}'} | {r['top1_pct']:.2f} | {fmt('flops', r['flops'])} (-{r['flops_reduction_pct']:.1f}%) | "
                     f"{fmt('params', r['params'])} (-{r['params_reduction_pct']:.1f}%) | {_latency(r, w['folder']):.3f} | "
                     f"`{r['knobs']}` | {w['found_at_trial']} | {w['trials']} ({w['complete']} / {w['infeasible']} / "
                     f"{w['pruned']} / {w['failed']}) |")
    for method, w in winners.items():
        if w is None:
            continue
        kept = json.loads(w["row"]["kept_channels"])
        lines += ["", f"## {method}", "", f"Rebuild: `from bench.deploy.pruned import load_pruned; plan, model = "
                  f"load_pruned({w['folder']!r})`", "", "| layer group | kept | of |", "| --- | ---: | ---: |"]
        lines += [f"| {gid} | {k} | {n} |" for gid, (k, n, *_) in kept.items()]
    path = cfg.folder / "README.md"
    cfg.folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    tqdm.write(f"search report: {path}")
    for method, w in winners.items():
        tqdm.write(f"  {method:7s} " + ("no feasible model" if w is None else
                   f"winner top-1 {w['row']['top1_pct']:.2f}%  FLOPs {fmt('flops', w['row']['flops'])}  "
                   f"params {fmt('params', w['row']['params'])}  latency {_latency(w['row'], w['folder']):.3f} ms  "
                   f"(trial {w['found_at_trial']} of {w['trials']}) -> {w['folder']}"))
    return path


def _latency(row: dict[str, Any], folder: str | Path | None = None) -> float:
    return row_cost("latency_ms", row, Path(folder) if folder is not None else None)
