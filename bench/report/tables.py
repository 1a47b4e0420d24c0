"""The paper-style table of one experiment (Markdown and LaTeX): measured rows with their fronts and speed-ups,
the matched sets, and the published rows beside them, never mixed in."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench.report.stats import paired
from bench.report.rows import _reference_baseline, _title, aggregate, baseline_point, complete_trials, control_point, latex_escape, protocol_text, style, training_text, trial_label


def _millions(v: float) -> str:
    # small CIFAR models have well under 1M params: keep three decimals there
    m = v / 1e6
    return f"{m:.3f}" if m < 1 else f"{m:.2f}"


def _pm(mean: float, std: float, fmt: str = "{:.2f}") -> str:
    if pd.isna(mean):
        return "–"
    return fmt.format(mean) if pd.isna(std) else f"{fmt.format(mean)} ± {fmt.format(std)}"


def _cost_cell(value: float, reduction: float) -> str:
    return f"{_millions(value)} ({reduction:.1f}%)"


def _speedup_cell(r: pd.Series | dict) -> str:
    if pd.isna(r.get("speedup_b1")):
        return "–"
    return f"{r['speedup_b1']:.2f}x ({r['speedup_b1_q3'] - r['speedup_b1_q1']:.2f})"  # median (IQR), as perf.md


def _efficiency_cell(r: pd.Series | dict) -> str:
    """Speed-up over the FLOPs ratio it was promised (1.0: latency fell as much as FLOPs)."""
    if pd.isna(r.get("speedup_b1")) or pd.isna(r.get("flops")) or pd.isna(r.get("base_flops")):
        return "–"
    return f"{r['speedup_b1'] / (float(r['base_flops']) / float(r['flops'])):.2f}"


HEADERS = ["Method · scope · training after the baseline", "Front", "n", "Val top-1 (%)", "Test top-1 (%)",
           "vs control", "Params (M) (down %)", "FLOPs (M) (down %)", "Speed-up, eager b1 (IQR)", "Efficiency"]


def _measured_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Baseline, the no-pruning control, then configurations by FLOPs descending; cells as printed."""
    rows, base, control = [], baseline_point(df), control_point(df)
    if base is not None:
        b = df[df["row_type"] == "baseline"]
        val = b["val_top1_pct"].astype(float).mean() if len(b) else math.nan
        rows.append({"cells": ["Baseline (before pruning)", "", str(base.get("n", 1)), _pm(val, math.nan),
                               _pm(base["top1_pct"], base["top1_std"]), "", _millions(base["params"]),
                               _millions(base["flops"]), "1.00x", ""]})
    points = aggregate(df).sort_values("flops", ascending=False, kind="stable")
    for _, r in points.iterrows():
        label = r["label"].rsplit(" · n=", 1)[0]
        if r["n_failed"]:
            label += f" (partial: {int(r['n_failed'])} seed(s) failed)"
        vs = "" if control is None or r["method"] == "control" else f"{r['top1_pct'] - control['top1_pct']:+.2f}"
        rows.append({"cells": [
            label, "◆" if r["pareto"] and r["method"] != "control" else "", str(int(r["n"])),
            _pm(r["val_top1_pct"], r["val_std"]), _pm(r["top1_pct"], r["top1_std"]), vs,
            _cost_cell(r["params"], r["params_reduction_pct"]), _cost_cell(r["flops"], r["flops_reduction_pct"]),
            _speedup_cell(r), _efficiency_cell(r)]})
    return rows


def matched_sets(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DECORE configurations with their matched partners (rows whose `match_of` names one of its seeds' trials):
    per partner method the paired rows, seed by seed."""
    points = aggregate(df)
    trials = complete_trials(df)
    out = []
    for _, d in points[points["method"] == "decore"].iterrows():
        pairs: dict[str, list[tuple[pd.Series, pd.Series]]] = {}
        for h in d["hashes"]:
            own = trials[trials["config_hash"] == h].iloc[0]
            partners = trials[trials["match_of"].fillna("").str.split(";").map(lambda hs, h=h: h in hs)]
            for _, p in partners.iterrows():
                pairs.setdefault(str(p["method"]), []).append((own, p))
        if pairs:
            out.append({"decore": d, "pairs": pairs})
    return out


def _matched_rows(df: pd.DataFrame) -> list[list[str]]:
    rows = []
    for m in matched_sets(df):
        d = m["decore"]
        rows.append([d["label"], _pm(d["top1_pct"], d["top1_std"]), f"{100 * d['flops'] / d['base_flops']:.1f}%", "", ""])
        for method, pairs in m["pairs"].items():
            own = np.array([float(a["top1_pct"]) for a, _ in pairs])
            other = np.array([float(b["top1_pct"]) for _, b in pairs])
            flops = np.array([float(b["flops"]) / float(b["base_flops"]) for _, b in pairs])
            gap = np.array([100 * (float(b["flops"]) - float(a["flops"])) / float(a["flops"]) for a, b in pairs])
            diff = paired(other, own)  # per seed: partner minus DECORE
            n = diff.n
            scope = pairs[0][1]["scope"]
            rows.append([f"  {trial_label(pairs[0][1]).split(' (')[0]} at the same FLOPs · {scope} · "
                         f"{training_text(pairs[0][1])} · n={n}",
                         _pm(other.mean(), other.std(ddof=1) if n >= 2 else math.nan),
                         f"{100 * flops.mean():.1f}% (gap {gap.mean():+.2f}%)", diff.interval_text(),
                         diff.verdict("partner better", "DECORE better") + (", paired by seed" if n >= 2 else "")])
    return rows


SUMMARY_TEXT = ("**In one table.** Other minus DECORE, test top-1 points, paired by seed: mean [95% t interval, "
                "n - 1 degrees of freedom]; n.s.: the interval covers 0; no verdict below 3 seeds:")


def matched_summary(df: pd.DataFrame) -> str:
    """The matched-FLOPs comparison as one Markdown table for a README: a row per DECORE configuration (its FLOPs
    removed and test top-1, mean +- std over seeds, n), a column per partner method and one for the no-pruning
    control, each cell the paired difference, other minus DECORE in test top-1 points, mean [95% t interval] over
    the seeds both ran; "n.s." where the interval covers 0, "no verdict" below 3 seeds (bench.report.stats)."""
    sets = matched_sets(df)
    trials = complete_trials(df)
    control = trials[trials["method"] == "control"].drop_duplicates("seed").set_index("seed")
    names: dict[str, str] = {}
    for m in sets:
        for method, pairs in m["pairs"].items():
            names.setdefault(method, trial_label(pairs[0][1]).split(" (")[0])
    columns = [*names, *(["control"] if len(control) else [])]
    headers = ["DECORE configuration", "FLOPs removed", "DECORE test top-1 (%)",
               *[f"{names.get(c, 'No pruning (control)')} minus DECORE" for c in columns]]

    def cell(diff: Any) -> str:
        verdict = diff.verdict("", "")
        return diff.interval_text() + ("" if not verdict else " n.s." if verdict == "not significant" else " (no verdict)")

    rows = []
    for m in sets:
        d = m["decore"]
        own = trials[trials["config_hash"].isin(d["hashes"])].drop_duplicates("seed").set_index("seed")
        removed = 100 * (1 - own["flops"].astype(float) / own["base_flops"].astype(float))
        spread = f" ({removed.min():.1f}-{removed.max():.1f})" if len(removed) > 1 else ""
        cells = [d["label"].split(" · ")[0], f"{removed.mean():.1f}%{spread}",
                 f"{_pm(d['top1_pct'], d['top1_std'])} (n={int(d['n'])})"]
        for c in columns:
            if c == "control":
                seeds = [s for s in own.index if s in control.index]
                a, b = [float(control.loc[s, "top1_pct"]) for s in seeds], [float(own.loc[s, "top1_pct"]) for s in seeds]
            else:
                pairs = m["pairs"].get(c, [])
                a, b = [float(p["top1_pct"]) for _, p in pairs], [float(o["top1_pct"]) for o, _ in pairs]
            cells.append(cell(paired(a, b)) if a else "")
        rows.append((removed.mean(), cells))
    return "\n".join(_md_table(headers, [c for _, c in sorted(rows, key=lambda r: r[0])]))


def matched_tally(df: pd.DataFrame) -> str:
    """One sentence counting the verdicts of matched_summary's pruning partners (scratch controls and the no-pruning
    control left out: they answer other questions), e.g. "Of 12 matched comparisons (3 seeds each): 9 partner
    better, 0 DECORE better, 3 not significant." Comparisons with fewer than 3 seeds are counted apart."""
    counts = {"partner better": 0, "DECORE better": 0, "not significant": 0}
    seeds, few = set(), 0
    for m in matched_sets(df):
        for method, pairs in m["pairs"].items():
            if method.startswith("scratch"):
                continue
            diff = paired([float(p["top1_pct"]) for _, p in pairs], [float(o["top1_pct"]) for o, _ in pairs])
            verdict = diff.verdict("partner better", "DECORE better")
            if verdict in counts:
                counts[verdict] += 1
                seeds.add(diff.n)
            else:
                few += 1
    total = sum(counts.values())
    each = f"{min(seeds)}" if len(seeds) == 1 else f"{min(seeds)}-{max(seeds)}" if seeds else "0"
    text = (f"Of {total} matched comparison{'s' * (total != 1)} ({each} seeds each): " + ", ".join(f"{v} {k}" for k, v in counts.items())
            + ".") if total else "No matched comparison has 3 seeds."
    return text + (f" {few} with fewer than 3 seeds give{'s' * (few == 1)} no verdict." if few else "")


def _reference_name(row: pd.Series) -> str:
    name = style(str(row["method"]))[0]
    variant = row["variant"] if isinstance(row["variant"], str) else ""
    if not variant:
        return name
    return variant if variant.lower().startswith(name.lower()) else f"{name} ({variant})"


PUBLISHED_HEADERS = ["Method", "Top-1 (%)", "Acc. drop", "Params (M) (down %)", "FLOPs (M) (down %)"]


def _reference_rows(reference: pd.DataFrame | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Published baseline and points by FLOPs descending, with numbered sources."""
    if reference is None:
        return [], []
    sources: list[str] = []

    def note(src: str) -> int:
        if src not in sources:
            sources.append(src)
        return sources.index(src) + 1

    rows = []
    base = _reference_baseline(reference)
    if base is not None:
        rows.append({"cells": ["Baseline", f"{base['top1']:.2f}", "–", f"{base['params_m']:.2f}",
                               f"{base['flops_m']:.2f}"], "source": note(str(base["reported_in"]))})
    for _, r in reference.sort_values("flops_m", ascending=False, kind="stable").iterrows():
        rows.append({"source": note(str(r["reported_in"])), "cells": [
            _reference_name(r), f"{r['top1']:.2f}", f"{r['base_top1'] - r['top1']:.2f}",
            f"{r['params_m']:.2f} ({100 * (1 - r['params_m'] / r['base_params_m']):.1f}%)",
            f"{r['flops_m']:.2f} ({100 * (1 - r['flops_m'] / r['base_flops_m']):.1f}%)"]})
    return rows, sources


MATCHED_HEADERS = ["Matched set", "Test top-1 (%)", "FLOPs kept (partner minus DECORE)",
                   "Partner minus DECORE (points, mean [95% t interval, n-1 dof])", "Verdict"]


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _timed(df: pd.DataFrame) -> pd.DataFrame:
    """The trial rows that carry a speed-up."""
    return df[(df["row_type"] == "trial") & df["speedup_b1"].notna()] if "speedup_b1" in df.columns else df.iloc[:0]


def speedup_when(df: pd.DataFrame) -> str:
    """When the table's speed-ups were timed, from the rows' `speedup_pass` (empty: before the measuring pass)."""
    timed = _timed(df)
    alone = int((timed.get("speedup_pass", pd.Series(dtype=object)) == "alone").sum())
    if alone == len(timed):
        return "timed alone, nothing training beside it: the sweep's measuring pass after its trials, or bench retime"
    before = ("timed inside their trials, before the measuring pass existed: other trials may have trained beside "
              "them; bench retime times them again alone")
    return before if alone == 0 else f"{alone} of {len(timed)} rows from the measuring pass, the other {len(timed) - alone} {before}"


FORM_TEXT = {"eager": ("eager PyTorch", "channels_last"), "folded": ("PyTorch with BatchNorm folded", "channels_last"),
             "onnxruntime": ("onnxruntime", "the ONNX export")}


def speedup_form(df: pd.DataFrame) -> tuple[str, str]:
    """The deploy form the table's speed-ups were timed in, from the rows' `speedup_form` (empty: eager), as
    (name, detail) for the footnote."""
    timed = _timed(df)
    forms = (timed["speedup_form"].fillna("eager") if "speedup_form" in timed.columns
             else pd.Series(["eager"] * len(timed), dtype=object)).value_counts()
    if len(forms) <= 1:
        return FORM_TEXT[forms.index[0] if len(forms) else "eager"]
    return "in several forms", ", ".join(f"{n} rows {FORM_TEXT[f][0]}" for f, n in forms.items())


def _markdown(measured: list[dict], published: list[dict], sources: list[str], caption: str,
              matched: list[list[str]], when: str, form: tuple[str, str] = FORM_TEXT["eager"], summary: str = "") -> str:
    lines = [f"*{caption}*", ""]
    lines += _md_table(HEADERS, [r["cells"] for r in measured])
    foot = ("◆: on its series' Pareto front (validation top-1 against FLOPs, on seed means). Mean ± std over n seeds. "
            "vs control: test top-1 minus the no-pruning control's (the baseline trained on for the same budget), so "
            "extra training is not read as a pruning gain. (down %): reduction against the baseline. Speed-up: "
            f"baseline time / pruned time at batch 1 on one CPU thread, {form[0]} ({form[1]}; "
            f"{when}), median (IQR: third minus first quartile) over interleaved rounds, as "
            "perf.md prints it; "
            "efficiency: speed-up / (baseline FLOPs / pruned FLOPs).")
    lines += ["", foot]
    if matched:
        lines += ["", "**Matched FLOPs.** Each DECORE configuration beside the other methods run at its FLOPs "
                  "(within 1%, the same scope, the same budget), seed by seed:", ""]
        lines += _md_table(MATCHED_HEADERS, matched)
    if summary:
        lines += ["", SUMMARY_TEXT, "", summary]
    if published:
        lines += ["", "**Published (their schedules, not comparable to the rows above unless the protocol is):**", ""]
        lines += _md_table(PUBLISHED_HEADERS, [[f"{r['cells'][0]} [{r['source']}]", *r["cells"][1:]] for r in published])
        notes = [f"[{i}] {s}" for i, s in enumerate(sources, 1)]
        lines += ["", f"Sources: {'; '.join(notes)} (full references: results/reference/README.md)"]
    return "\n".join(lines) + "\n"


def _latex_tabular(headers: list[str], rows: list[list[str]]) -> list[str]:
    n = len(headers)
    lines = [rf"\begin{{tabular}}{{l{'r' * (n - 1)}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in rows]
    return lines + [r"\bottomrule", r"\end{tabular}"]


def _latex(measured: list[dict], published: list[dict], sources: list[str], caption: str,
           matched: list[list[str]]) -> str:
    lines = [r"% needs \usepackage{booktabs,graphicx}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(caption)}}}", r"\resizebox{\linewidth}{!}{%"]
    lines += _latex_tabular(HEADERS, [r["cells"] for r in measured]) + ["}"]
    if matched:
        lines += [r"\par\medskip", r"\resizebox{\linewidth}{!}{%"] + _latex_tabular(MATCHED_HEADERS, matched) + ["}"]
    if published:
        lines += [r"\par\medskip", r"{\small\emph{Published, their schedules}}\par"]
        rows = [[r["cells"][0], *r["cells"][1:]] for r in published]
        tab = _latex_tabular(PUBLISHED_HEADERS, rows)
        for i, r in enumerate(published):  # the source as a superscript on the name
            tab[4 + i] = tab[4 + i].replace(latex_escape(r["cells"][0]), latex_escape(r["cells"][0]) + rf"$^{{{r['source']}}}$", 1)
        lines += tab
    if sources:
        notes = "; ".join(f"$^{{{i}}}${latex_escape(s)}" for i, s in enumerate(sources, 1))
        lines += [r"\par\smallskip", rf"{{\footnotesize {notes}}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def paper_table(df: pd.DataFrame, reference: pd.DataFrame | None, official: bool | None = None) -> tuple[str, str]:
    """The paper's table of results as (markdown, latex): measured block with Pareto marks and the control,
    the matched-FLOPs sets, then the literature (a separate block, always: their schedules)."""
    measured = _measured_rows(df)
    published, sources = _reference_rows(reference)
    caption = f"{_title(df)}. Protocol: {protocol_text(df, official)}."
    matched = _matched_rows(df)
    summary = f"{matched_summary(df)}\n\n{matched_tally(df)}" if matched else ""
    return (_markdown(measured, published, sources, caption, matched, speedup_when(df), speedup_form(df), summary),
            _latex(measured, published, sources, caption, matched))
