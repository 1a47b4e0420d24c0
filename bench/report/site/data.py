"""What the site reads: runs.csv, trial folders, published numbers. The one place that knows column names.

Every figure of the site is a function of the *points* table built here: one row per complete trial of
runs.csv, with the columns below under fixed names whatever the results table calls them. Columns the
table may lack are looked up through `ALIASES`, first name found wins, so the site works with the
current table and with the one the report is moving to (`test_top1`, `match_of`, `speedup`, ...).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report.style import method_style
from bench.trial.results import CONFIG_KEYS, SERIES_KEYS, mark_pareto

# site name -> names the results table may use for it, first found wins
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("trial_id", "config_hash"),
    "label": ("label",),
    "top1": ("test_top1", "top1_pct"),
    "top5": ("test_top5", "top5_pct"),
    "val_top1": ("val_top1", "val_top1_pct"),
    "top1_std": ("test_top1_std", "top1_std"),
    "n_seeds": ("n_seeds",),
    "match": ("match_of", "matched_to"),
    "speedup": ("speedup", "speedup_b1"),
    "budget": ("budget_images", "budget"),
    "wandb_url": ("wandb_url",),
    "wandb_id": ("wandb_run_id",),
}
# columns that tell one configuration from another when only the seed differs
CONFIG_KEY = ("method", "scope", "knob_name", "knob_value", "knobs", "round_to", "joint_epochs",
              "finetune_epochs", "budget_images", "budget", "selection", "method_version")
CONTROL = "control"
REFERENCE_CSV = Path(__file__).parents[3] / "results" / "reference" / "published_results.csv"


def style(method: str) -> tuple[str, str]:
    """(display name, colour) of a method: the project's one map (bench.report.style.METHOD_STYLE, Okabe-Ito)."""
    name, colour, _ = method_style(method)
    return name, colour


def find_experiments(results_dir: Path) -> list[Path]:
    """Experiment folders under results_dir: every folder that holds a runs.csv, sorted by name."""
    return sorted(p.parent for p in Path(results_dir).glob("*/runs.csv"))


def read_runs(folder: Path) -> pd.DataFrame:
    """runs.csv as written, with whatever columns it has (the site must not refuse a newer table)."""
    return pd.read_csv(Path(folder) / "runs.csv", low_memory=False)


def col(df: pd.DataFrame, name: str) -> pd.Series:
    """The table's column for a site name (see ALIASES), or NaNs when the table has none of its names."""
    for c in ALIASES.get(name, (name,)):
        if c in df.columns:
            return df[c]
    return pd.Series(np.nan, index=df.index, dtype=object)


def _pct(s: pd.Series) -> pd.Series:
    """Accuracies as percent; a column of fractions (all values <= 1) is scaled."""
    v = pd.to_numeric(s, errors="coerce")
    return v * 100 if v.notna().any() and v.max() <= 1.0 else v


def _num(df: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(col(df, name), errors="coerce")


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) or pd.isna(v) else str(v)


def is_trial(df: pd.DataFrame) -> pd.Series:
    rt = col(df, "row_type").fillna("trial").astype(str)
    return rt.eq("trial") & df["method"].astype(str).ne("baseline")


def drawable(df: pd.DataFrame) -> pd.Series:
    """Rows the fronts draw: complete trials (control rows included) with top-1 and FLOPs."""
    status = col(df, "status").fillna("complete").astype(str)
    return is_trial(df) & status.eq("complete") & _pct(col(df, "top1")).notna() & _num(df, "flops").notna()


def knob_text(row: pd.Series) -> str:
    name, value = _text(row.get("knob_name")), row.get("knob_value")
    if not name:
        return "-"
    return name if pd.isna(value) else f"{name}={float(value):g}"


def _label(row: pd.Series) -> str:
    given = _text(row.get("label"))
    if given:
        return given
    name = style(str(row["method"]))[0]
    return name if row["knob_text"] == "-" else f"{name} {row['knob_text']}"


def _seed_stats(pts: pd.DataFrame) -> pd.DataFrame:
    """Per row: n and mean/std of top-1 over the seeds of its configuration (or the table's own n_seeds)."""
    keys = [c for c in CONFIG_KEY if c in pts.columns]
    # text keys, NaN as "": a preset has no knob_value and must still form a group
    grouped = pts.groupby([pts[c].map(_text) for c in keys], sort=False)["top1"] if keys else None
    out = pd.DataFrame(index=pts.index)
    out["n"] = grouped.transform("size") if keys else 1
    out["top1_mean"] = grouped.transform("mean") if keys else pts["top1"]
    out["top1_sd"] = grouped.transform("std") if keys else np.nan
    given_n = pd.to_numeric(pts["n_seeds"], errors="coerce")
    # a row that is already a mean over seeds: n_seeds > 1 and no other row of its configuration
    aggregated = given_n.notna() & (given_n > 1) & (out["n"] == 1)
    out.loc[aggregated, "n"] = given_n[aggregated]
    out.loc[aggregated, "top1_mean"] = pts.loc[aggregated, "top1"]
    out.loc[aggregated, "top1_sd"] = pd.to_numeric(pts.loc[aggregated, "top1_std"], errors="coerce")
    return out


def match_keys(pts: pd.DataFrame) -> pd.Series:
    """Rows that were matched to one DECORE point share a key: that DECORE point's id.

    A DECORE row's key is its own id; a partner's is its `match_of` (or `matched_to`) value, which may name
    the DECORE trial by id, by trial folder (`decore-<id>`) or by label. Tables without such a column
    (sweeps run with `--match decore` before it existed) are matched through the partner's
    `flops_target` knob: equal, to 4 decimals, to the DECORE trial's FLOPs fraction.
    """
    keys = pd.Series("", index=pts.index, dtype=object)
    decore = pts["method"].eq("decore")
    keys[decore] = pts.loc[decore, "id"]
    by_name = {**{f"decore-{i}": i for i in pts.loc[decore, "id"]},
               **{str(l): i for l, i in zip(pts.loc[decore, "label"], pts.loc[decore, "id"])},
               **{str(i): i for i in pts.loc[decore, "id"]}}
    if pts["match"].notna().any():
        given = pts["match"].map(lambda v: by_name.get(_text(v).strip(), _text(v).strip()))
        keys[~decore & given.ne("")] = given[~decore & given.ne("")]
        return keys
    fractions = {round(f, 4): i for f, i in zip(pts.loc[decore, "rel_flops"], pts.loc[decore, "id"])}
    target = pts["knob_name"].astype(str).eq("flops_target") & ~decore
    for idx in pts.index[target]:
        keys[idx] = fractions.get(round(float(pts.at[idx, "knob_value"]), 4), "")
    return keys


def points(df: pd.DataFrame, folder: Path | None = None) -> pd.DataFrame:
    """One row per drawable trial of runs.csv, under the site's column names (see module docstring)."""
    rows = df[drawable(df)]
    pts = pd.DataFrame(index=rows.index)
    pts["id"] = col(rows, "id").astype(str).where(col(rows, "id").notna(), [f"row{i}" for i in rows.index])
    for c in ("method", "scope", "knob_name", "knob_value", "knobs", "round_to", "joint_epochs", "finetune_epochs",
              "seed", "kept_channels", "label", "match", "budget", "wandb_url", "wandb_id", "n_seeds", "top1_std"):
        pts[c] = col(rows, c).to_numpy()
    pts["budget_images"] = pts["budget"]
    pts["method"] = pts["method"].astype(str)
    pts["top1"], pts["top5"], pts["val_top1"] = _pct(col(rows, "top1")), _pct(col(rows, "top5")), _pct(col(rows, "val_top1"))
    for c in ("params", "flops", "base_params", "base_flops", "latency_cpu_b1_ms", "base_latency_cpu_b1_ms"):
        pts[c] = _num(rows, c)
    base_top1 = _pct(col(rows, "base_top1_pct"))
    pts["drop"] = base_top1 - pts["top1"]
    pts["rel_flops"] = pts["flops"] / pts["base_flops"]
    pts["rel_params"] = pts["params"] / pts["base_params"]
    pts["latency_ratio"] = pts["latency_cpu_b1_ms"] / pts["base_latency_cpu_b1_ms"]
    pts["speedup"] = _num(rows, "speedup").where(_num(rows, "speedup").notna(), 1 / pts["latency_ratio"])
    pts["knob_text"] = [knob_text(r) for _, r in rows.iterrows()]
    pts["label"] = [_label(r) for _, r in pts.iterrows()]
    pts = pts.join(_seed_stats(pts))
    pts["match_key"] = match_keys(pts)
    pts["trial_dir"] = [_trial_dir(folder, m, i) for m, i in zip(pts["method"], pts["id"])]
    # what decisions read (validation; test on rows from before the selection split) and the runs.csv front
    pts["dec"] = pts["val_top1"].where(pts["val_top1"].notna(), pts["top1"])
    pts["dec_split"] = np.where(pts["val_top1"].notna(), "validation", "test")
    pts["pareto"] = front_flags(df).loc[rows.index].to_numpy()
    keys = _keys_frame(rows)
    pts["series_key"] = [" | ".join(r) for r in keys[list(SERIES_KEYS)].itertuples(index=False)]
    pts["config_key"] = [" | ".join(r) for r in keys[list(CONFIG_KEYS)].itertuples(index=False)]
    versions = ({str(m): int(n) for m, n in rows.groupby("method")["method_version"].nunique().items()}
                if "method_version" in rows.columns else {})
    pts["series"] = [_series_name(r, versions) for _, r in rows.iterrows()]
    pts["config_hash"] = col(rows, "config_hash").astype(str).to_numpy()
    models = col(df, "model").dropna()
    pts.attrs["model"] = str(models.iloc[0]) if len(models) else ""  # graph order of the layer figures
    return pts


def _keys_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """SERIES_KEYS and CONFIG_KEYS of each row as text (NaN as ''), as bench.trial.results groups them."""
    return pd.DataFrame({k: col(rows, k).map(_text).astype(str) for k in CONFIG_KEYS}, index=rows.index)


def _series_name(row: pd.Series, versions: dict[str, int]) -> str:
    from bench.report.rows import series_label  # the tables' and static figures' name of a series

    return series_label(row, versions)


def front_flags(df: pd.DataFrame) -> pd.Series:
    """runs.csv's `pareto` column (bench.trial.results.mark_pareto: validation top-1 against FLOPs, per series, on
    seed means); a table without the column gets it computed by the same function, never another rule."""
    if "pareto" in df.columns:
        return df["pareto"].map(lambda v: str(v) in ("True", "true", "1")).astype(bool)
    frame = pd.DataFrame({"row_type": col(df, "row_type").fillna("trial"), "status": col(df, "status").fillna("complete"),
                          "flops": _num(df, "flops"), "val_top1_pct": _pct(col(df, "val_top1")),
                          "top1_pct": _pct(col(df, "top1")),
                          **{k: col(df, k).map(_text) for k in CONFIG_KEYS}}, index=df.index)
    return mark_pareto(frame)["pareto"].fillna(False).astype(bool)


def _trial_dir(folder: Path | None, method: str, trial_id: str) -> str:
    """The trial folder relative to the experiment folder, when it is stored ('' otherwise)."""
    rel = f"trials/{method}-{trial_id}"
    return rel if folder is not None and (Path(folder) / rel).is_dir() else ""


def trial_json(folder: Path, trial_dir: str, name: str) -> dict[str, Any] | None:
    """result.json, history.json or plan.json of a stored trial; None when absent or unreadable."""
    path = Path(folder) / trial_dir / name
    if not trial_dir or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def kept_channels(pts_row: pd.Series, folder: Path | None = None) -> dict[str, list[int]]:
    """group -> [kept, units] of one point: the table's kept_channels, else the trial's result/plan.json."""
    text = _text(pts_row.get("kept_channels"))
    if not text and folder is not None:
        result = trial_json(folder, pts_row["trial_dir"], "result.json") or {}
        text = _text(result.get("kept_channels"))
        plan = trial_json(folder, pts_row["trial_dir"], "plan.json") if not text else None
        if plan and isinstance(plan.get("keep"), dict) and isinstance(plan.get("units"), dict):
            return {g: [len(k), int(plan["units"][g])] for g, k in plan["keep"].items() if g in plan["units"]}
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}


def baseline(df: pd.DataFrame) -> dict[str, float] | None:
    """The unpruned model of the experiment (mean of its baseline rows, else the trials' base_* columns): test
    top-1, and `dec`, the top-1 decisions read (validation where recorded) with its split."""
    base = df[col(df, "row_type").astype(str).eq("baseline")]
    if not base.empty and _pct(col(base, "top1")).notna().any():
        val = _pct(col(base, "val_top1"))
        top1 = float(_pct(col(base, "top1")).mean())
        return {"top1": top1, "flops": float(_num(base, "flops").mean()), "params": float(_num(base, "params").mean()),
                "n": len(base), "dec": float(val.mean()) if val.notna().any() else top1,
                "dec_split": "validation" if val.notna().any() else "test"}
    trials = df[is_trial(df)]
    b = _pct(col(trials, "base_top1_pct")).dropna()
    if b.empty:
        return None
    val = _pct(col(trials, "base_val_top1_pct")).dropna()
    return {"top1": float(b.iloc[0]), "flops": float(_num(trials, "base_flops").dropna().iloc[0]),
            "params": float(_num(trials, "base_params").dropna().iloc[0]), "n": 1,
            "dec": float(val.iloc[0]) if len(val) else float(b.iloc[0]), "dec_split": "validation" if len(val) else "test"}


def title(df: pd.DataFrame) -> str:
    first = df.iloc[0] if len(df) else pd.Series(dtype=object)
    parts = [_text(first.get(c)) or "?" for c in ("model", "dataset")]
    profile = _text(first.get("profile"))
    return f"{parts[0]} on {parts[1]}" + (f" ({profile} profile)" if profile else "")


def load_reference(df: pd.DataFrame, results_dir: Path | None = None) -> pd.DataFrame:
    """Published points for the experiment's model and dataset; empty when none. The published baseline
    (top1, params_m, flops_m, reported_in) is in `.attrs["baseline"]`, or None.

    RESULTS_DIR/reference/published_results.csv is used when present, else the repository's copy.
    """
    candidates: Sequence[Path] = ([Path(results_dir) / "reference" / "published_results.csv"] if results_dir else []) + [REFERENCE_CSV]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None or df.empty:
        return pd.DataFrame(columns=["method", "variant", "top1", "params_m", "flops_m", "reported_in"])
    ref = pd.read_csv(path, dtype={"variant": str, "reported_in": str, "note": str})
    model = str(df["model"].dropna().iloc[0]).removeprefix("cifar_") if df["model"].notna().any() else ""
    dataset = str(df["dataset"].dropna().iloc[0]) if df["dataset"].notna().any() else ""
    ref = ref[(ref["model"] == model) & (ref["dataset"] == dataset)]
    base = ref[ref["method"] == "baseline"]
    out = ref[ref["method"] != "baseline"].reset_index(drop=True)
    out.attrs["baseline"] = None if base.empty else base.iloc[0][["top1", "params_m", "flops_m", "reported_in"]].to_dict()
    return out


def _fmt(v: float, fmt: str, none: str = "-") -> str:
    return none if pd.isna(v) else fmt.format(v)


def _budget(r: pd.Series) -> str:
    if not pd.isna(r["budget_images"]):
        return f"{float(r['budget_images']):,.0f} images"
    j, f = r["joint_epochs"], r["finetune_epochs"]
    return "-" if pd.isna(j) and pd.isna(f) else f"{_fmt(j, '{:.0f}', '0')} joint + {_fmt(f, '{:.0f}')} fine-tune epochs"


def _seeds(r: pd.Series) -> str:
    if r["n"] <= 1:
        return f"1 (seed {_fmt(r['seed'], '{:.0f}')})"
    return f"n={int(r['n'])}: top-1 {r['top1_mean']:.2f} ± {_fmt(r['top1_sd'], '{:.2f}')}"


HOVER_FIELDS = ("label", "method", "knob", "scope", "budget", "seeds", "top1", "top5", "params", "flops",
                "latency", "id", "match", "val_top1", "series")


def hover_data(pts: pd.DataFrame) -> list[list[str]]:
    """Per point, the texts of HOVER_FIELDS (customdata of the plotly traces; pages read it on click)."""
    out = []
    for _, r in pts.iterrows():
        out.append([r["label"], style(r["method"])[0], r["knob_text"], _text(r["scope"]) or "-", _budget(r),
                    _seeds(r), _fmt(r["top1"], "{:.2f}%"), _fmt(r["top5"], "{:.2f}%"),
                    _fmt(r["params"] / 1e6, "{:.3f}M"), _fmt(r["flops"] / 1e6, "{:.2f}M"),
                    _fmt(r["latency_ratio"], "{:.2f}x the baseline's"), str(r["id"]), str(r["match_key"]),
                    _fmt(r["val_top1"], "{:.2f}%"), str(r.get("series", ""))])
    return out


HOVER_TEMPLATE = ("<b>%{customdata[0]}</b><br>method %{customdata[1]} | knob %{customdata[2]} | scope "
                  "%{customdata[3]}<br>budget %{customdata[4]}<br>seeds (test top-1) %{customdata[5]}<br>validation "
                  "top-1 %{customdata[13]} | test top-1 %{customdata[6]} | test top-5 %{customdata[7]}<br>params "
                  "%{customdata[8]} | FLOPs %{customdata[9]} (MACs)<br>latency %{customdata[10]}<br>trial "
                  "%{customdata[11]}")
# the experiment page's points answer a click (partners, layers, links); the comparison page's do not
CLICK_HINT = " (click for partners, layers, links)"
