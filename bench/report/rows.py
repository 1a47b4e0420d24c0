"""What the report says about rows of a results table: published reference rows, labels of trials and series,
seed means (`aggregate`), the baseline and control points, and the protocol sentence every output carries."""
from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import UserError
from bench.report.style import METHOD_STYLE, method_style
from bench.trial.results import CONFIG_KEYS


REFERENCE_CSV = Path(__file__).parents[2] / "results" / "reference" / "published_results.csv"


# method -> (name in plots and tables, colour, marker): one map for every output (bench.report.style)
STYLE = METHOD_STYLE
COSTS = {"flops": "FLOPs (M)", "params": "Params (M)"}


def style(method: str) -> tuple[str, str, str]:
    return method_style(method)


def reference_model_name(model: str) -> str:
    """timm name -> the name the papers use: cifar_resnet56 -> resnet56."""
    return model.removeprefix("cifar_")


def load_reference(model: str, dataset: str, path: Path | None = None) -> pd.DataFrame:
    """Published pruning points of one model/dataset; the published baseline is in `.attrs["baseline"]`.

    `.attrs["baseline"]` is a dict (top1, params_m, flops_m, reported_in) or None.
    """
    path = Path(path) if path is not None else REFERENCE_CSV
    if not path.is_file():
        raise UserError(f"reference table {str(path)!r} does not exist: restore results/reference/ from git")
    ref = pd.read_csv(path, dtype={"variant": str, "reported_in": str, "note": str})
    ref = ref[(ref["model"] == reference_model_name(model)) & (ref["dataset"] == dataset)]
    base = ref[ref["method"] == "baseline"]
    points = ref[ref["method"] != "baseline"].reset_index(drop=True)
    points.attrs["baseline"] = (None if base.empty else
                                {k: base.iloc[0][k] for k in ("top1", "params_m", "flops_m", "reported_in")})
    return points


def _reference_baseline(reference: pd.DataFrame | None) -> dict[str, Any] | None:
    return None if reference is None else reference.attrs.get("baseline")


def _knobs(row: pd.Series) -> dict[str, Any]:
    text = row.get("knobs")
    try:
        return json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}


def _num(v: float) -> str:
    """Compact number as in variant names: 200 -> '200', 0.72 -> '0.72'."""
    return f"{float(v):g}"


CONTROL_NAMES = {"scratch": "Scratch (baseline + trial images)"}  # older rows; scratch-b/-e are named in METHOD_STYLE


def _name(method: str) -> str:
    return CONTROL_NAMES.get(method) or style(method)[0]


def non_paper(row: pd.Series) -> list[str]:
    """What a row used beyond its paper (methods.Method.non_paper): e.g. ["agents init 3, lr 0.1"], ["scope all"]."""
    import methods

    cls = methods.METHODS.get(str(row["method"]))
    if cls is None:
        return []
    scope = row.get("scope")
    model = row.get("model")
    return cls().non_paper(_knobs(row), str(scope) if pd.notna(scope) else None, str(model) if pd.notna(model) else None)


def trial_label(row: pd.Series) -> str:
    """The paper's name of a configuration: DECORE-200, L1 (ratio 0.5), L1 (li2017-B), Random (FLOPs 0.60), then
    whatever the row used beyond its paper: DECORE-0.99 (agents init 3, lr 0.1), L1 (FLOPs 0.60; scope all)."""
    name = _name(str(row["method"]))
    knob, value, knobs = row.get("knob_name"), row.get("knob_value"), _knobs(row)
    if pd.isna(knob) or not knob:
        knob = next((k for k in ("lambda", "ratio", "flops_target", "preset", "stage_ratios") if k in knobs), None)
    if pd.isna(value):
        value = knobs.get(knob) if knob else None
    extra = non_paper(row)
    if knob is None:
        return f"{name} ({', '.join(extra)})" if extra else name
    if row["method"] == "decore" and knob == "lambda":
        return f"{name}-{_num(value)}" + (f" ({'; '.join(extra)})" if extra else "")
    return f"{name} ({'; '.join([_knob_text(str(knob), value), *extra])})"


def _knob_text(knob: str, value: Any) -> str:
    if knob == "preset":
        return str(value)
    if knob == "flops_target":
        return f"FLOPs {float(value):.2f}"
    if knob == "stage_ratios":
        return f"stages {value}"
    return f"{knob} {_num(value)}" if _is_number(value) else f"{knob} {value}"


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _images(n: float) -> str:
    n = float(n)
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def training_text(row: pd.Series) -> str:
    """The training a row got after the baseline: images (engine-counted) and epochs, joint + fine-tune."""
    joint = row.get("joint_epochs")
    ft = row.get("finetune_epochs")
    epochs = (f"{int(joint)}+{int(ft)} ep" if pd.notna(joint) and int(joint) > 0 else
              f"{int(ft)} ep" if pd.notna(ft) else "")
    images = row.get("budget_images")
    if pd.notna(images) and float(images) > 0:
        return f"{_images(images)} img" + (f" ({epochs})" if epochs else "")
    return epochs or "?"


def series_label(row: pd.Series, versions: dict[str, int] | None = None) -> str:
    """What makes a series: method, scope, training after the baseline, round_to (when not 1), code version
    (when the experiment holds several of one method)."""
    parts = [_name(str(row["method"])), str(row["scope"]) if pd.notna(row.get("scope")) else "?", training_text(row)]
    if pd.notna(row.get("round_to")) and int(row["round_to"]) != 1:
        parts.append(f"round_to {int(row['round_to'])}")
    if versions and versions.get(str(row["method"]), 1) > 1 and pd.notna(row.get("method_version")):
        parts.append(f"code {str(row['method_version'])[:6]}")
    if versions and versions.get(ENGINE, 1) > 1:  # rows of several engines: each says which
        engine = row.get("engine_version")
        parts.append(f"engine {str(engine)[:6]}" if pd.notna(engine) else "engine older (unrecorded)")
    return " · ".join(parts)


def config_label(row: pd.Series, versions: dict[str, int] | None = None) -> str:
    """A configuration in full: knob label, then the series' parts, then n seeds."""
    series = series_label(row, versions).split(" · ", 1)[1]
    n = row.get("n")
    return f"{trial_label(row)} · {series}" + (f" · n={int(n)}" if pd.notna(n) else "")


ENGINE = "engine"  # _versions' key for the number of engine versions (a row without one counts as one more)


def _versions(df: pd.DataFrame) -> dict[str, int]:
    trials = df[df["row_type"] == "trial"]
    out = {str(m): int(part["method_version"].nunique()) for m, part in trials.groupby("method")}
    if "engine_version" in trials:
        out[ENGINE] = int(trials["engine_version"].nunique(dropna=False)) if len(trials) else 1
    return out


def complete_trials(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["row_type"] == "trial") & (df["status"] == "complete")]


# the columns that tell one configuration from another when only the seed differs
CONFIG_KEY = [*CONFIG_KEYS, "knob_name", "knob_value", "joint_epochs", "finetune_epochs", "budget_images"]
_MEANS = ("top1_pct", "val_top1_pct", "top5_pct", "top1_drop_pct", "params", "flops", "params_reduction_pct",
          "flops_reduction_pct", "speedup_b1", "speedup_b1_q1", "speedup_b1_q3", "budget_images")


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Complete trials, one row per configuration: means over seeds, `*_std` (NaN for one seed), `n`, and
    `n_failed` (seeds of the configuration that did not complete: such a mean is marked partial)."""
    trials = complete_trials(df)
    cols = [*df.columns, "label", "series", "n", "n_failed", "top1_std", "val_std", "params_std", "flops_std"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    failed = df[(df["row_type"] == "trial") & (df["status"] == "failed")]
    versions = _versions(df)
    key = [c for c in CONFIG_KEY if c != "budget_images"]
    rows = []
    # dropna=False: a preset has no knob_value, and its configuration must still form a group
    for _, part in trials.groupby(key, sort=False, dropna=False):
        row = part.iloc[0].to_dict()
        for c in _MEANS:
            row[c] = part[c].astype(float).mean()
        for c, std in (("top1_pct", "top1_std"), ("val_top1_pct", "val_std"), ("params", "params_std"),
                       ("flops", "flops_std")):
            row[std] = part[c].astype(float).std(ddof=1) if len(part) > 1 else math.nan
        row["n"] = len(part)
        same = failed
        for c in ("method", "knobs", "scope"):
            same = same[same[c].astype(str) == str(row[c])]
        row["n_failed"] = len(same)
        row["hashes"] = list(part["config_hash"])
        row["pareto"] = bool(part["pareto"].fillna(False).any())
        s = pd.Series(row)
        row["series"] = series_label(s, versions)
        row["label"] = config_label(s, versions)
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def control_point(df: pd.DataFrame) -> dict[str, float] | None:
    """The no-pruning control (the baseline trained on for the same budget): test/val top-1 mean, std, n."""
    part = complete_trials(df)
    part = part[part["method"] == "control"]
    if part.empty:
        return None
    t = part["top1_pct"].astype(float)
    return {"top1_pct": float(t.mean()), "top1_std": float(t.std(ddof=1)) if len(t) > 1 else math.nan,
            "val_top1_pct": float(part["val_top1_pct"].astype(float).mean()), "n": len(part),
            "params": float(part["params"].astype(float).mean()), "flops": float(part["flops"].astype(float).mean()),
            "label": config_label(pd.Series({**part.iloc[0].to_dict(), "n": len(part)}), _versions(df))}


def baseline_point(df: pd.DataFrame) -> dict[str, float] | None:
    """Our unpruned model: the baseline rows (mean over seeds), else the trials' base_* columns."""
    base = df[df["row_type"] == "baseline"]
    if not base.empty and base["top1_pct"].notna().any():
        vals = {"top1_pct": base["top1_pct"], "params": base["params"].fillna(base["base_params"]),
                "flops": base["flops"].fillna(base["base_flops"])}
        out = {k: float(v.astype(float).mean()) for k, v in vals.items()}
        out["top1_std"] = float(base["top1_pct"].astype(float).std(ddof=1)) if len(base) > 1 else math.nan
        out["n"] = len(base)
        return out
    trials = complete_trials(df).dropna(subset=["base_top1_pct"])
    if trials.empty:
        return None
    r = trials.iloc[0]
    return {"top1_pct": float(r["base_top1_pct"]), "params": float(r["base_params"]),
            "flops": float(r["base_flops"]), "top1_std": math.nan, "n": 1}


def protocol_text(df: pd.DataFrame, official: bool | None = None) -> str:
    """The protocol, stated once: selection split, budget rule, data, profile, matching."""
    trials = df[df["row_type"] == "trial"]
    # an experiment with no row yet (its page says so) has no dataset or profile to name
    first = df.iloc[0] if len(df) else pd.Series({c: None for c in ("dataset", "profile", "model")}, dtype=object)
    sel = set(trials["selection"].dropna()) or {None}
    bud = set(trials["budget"].dropna()) or {None}
    parts = []
    parts.append("selection: " + ", ".join(
        "validation hold-out of the training set (decisions read it; test top-1 only reported)" if s == "val" else
        "test set (the papers' practice: decisions read test accuracy)" if s == "test" else
        "test set (rows from before the selection split)" for s in sorted(sel, key=str)))
    parts.append("budget: " + ", ".join(
        "equal (the same training images after the baseline for every method)" if b == "equal" else
        "paper budgets, unequal" if b == "paper" else "unrecorded (rows from before the budget rule)"
        for b in sorted(bud, key=str)))
    fp = trials["data_fingerprint"].dropna()
    data = f"{first['dataset']}" + (f" (fingerprint {fp.iloc[0]})" if len(fp) else "")
    if official is not None:
        data += ", the official set" if official else ", not the official set"
    parts.append(f"data: {data}")
    parts.append(f"profile: {first['profile'] if pd.notna(first['profile']) else '-'}")
    matched = trials["match_of"].notna().sum() if "match_of" in trials else 0
    parts.append(f"matched partners: {int(matched)} trial(s) run at DECORE's FLOPs" if matched else "matched partners: none")
    return "; ".join(parts)


def _title(df: pd.DataFrame) -> str:
    first = df.iloc[0]
    return f"{first['model']} on {first['dataset']} ({first['profile'] if pd.notna(first['profile']) else '-'})"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$", "–": "--",
                   "—": "---", "◆": r"$\bullet$", "·": r"$\cdot$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$",
                   "→": r"$\to$", "≈": r"$\approx$", "λ": r"$\lambda$", "−": "-", "…": r"\ldots{}", "°": r"$^\circ$",
                   "µ": r"$\mu$", "’": "'", "‘": "`", "“": "``", "”": "''"}


def latex_escape(text: str) -> str:
    """Text -> ASCII LaTeX source that pdflatex compiles with base packages; one pass, so replacements are never
    escaped twice. Other non-ASCII characters are decomposed to ASCII (e -> e for an accented e), else '?'."""
    out = re.sub("|".join(map(re.escape, _LATEX_SPECIALS)), lambda m: _LATEX_SPECIALS[m.group()], text)
    return "".join(c if c.isascii() else (unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode() or "?")
                   for c in out)


def official_data(folder: Path) -> bool | None:
    """Whether the experiment ran on the official dataset, as recorded in experiment.json when the data was loaded
    (a CIFAR download through torchvision, checksum-verified, marks its converted arrays; anything else is not
    official). None: the experiment predates the record."""
    path = Path(folder) / "experiment.json"
    if not path.is_file():
        return None
    return bool(json.loads(path.read_text()).get("data", {}).get("official", False))
