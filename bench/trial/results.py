"""The results table: one row per trial and one per baseline, fixed columns with units in their names.

`RESULTS_DIR/<model>-<dataset>-<profile>/runs.csv` (and runs.parquet) is the single source of truth:
plots, tables and W&B mirror it. Rows are keyed by `config_hash`; writers take a file lock and replace
the files atomically, so concurrent workers and a crash mid-write never leave a half row.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.errors import UserError
from bench.core.faults import crash_point
from bench.core.io import atomic_write

# name -> (pandas dtype, meaning). The order is the order of the CSV's columns.
COLUMNS: dict[str, tuple[str, str]] = {
    "experiment": ("string", "<model>-<dataset>-<profile>-<hash>: the experiment folder's name"),
    "row_type": ("string", "baseline or trial"),
    "model": ("string", "timm model name"),
    "dataset": ("string", "dataset name"),
    "profile": ("string", "run profile (sweeps/profiles)"),
    "method": ("string", "a name of methods.METHODS (decore, l1, control, ...); baseline for the unpruned row"),
    "scope": ("string", "internal or all"),
    "knob_name": ("string", "the swept knob (lambda, ratio, flops_target, preset)"),
    "knob_value": ("float64", "its value (NaN for a preset)"),
    "knobs": ("string", "all knobs and options, JSON"),
    "seed": ("Int64", "seed of baseline, method and fine-tuning"),
    "status": ("string", "complete, failed, pruned or infeasible"),
    "reason": ("string", "why a trial failed"),
    "val_top1_pct": ("float64", "validation top-1 after fine-tuning (%): what every decision reads"),
    "top1_pct": ("float64", "test top-1 after fine-tuning (%): reported only"),
    "top5_pct": ("float64", "test top-5 after fine-tuning (%)"),
    "top1_drop_pct": ("float64", "baseline top-1 minus top-1 (points)"),
    "top1_before_finetune_pct": ("float64", "test top-1 right after removal (%)"),
    "params": ("Int64", "parameters of the pruned model"),
    "flops": ("Int64", "conv+linear multiply-accumulates of one image"),
    "params_reduction_pct": ("float64", "100 * (1 - params / baseline params)"),
    "flops_reduction_pct": ("float64", "100 * (1 - flops / baseline flops)"),
    "base_val_top1_pct": ("float64", "baseline validation top-1 (%)"),
    "base_top1_pct": ("float64", "baseline test top-1 (%)"),
    "base_top5_pct": ("float64", "baseline test top-5 (%)"),
    "base_params": ("Int64", "baseline parameters"),
    "base_flops": ("Int64", "baseline FLOPs (MACs)"),
    "latency_cpu_b1_ms": ("float64", "median CPU latency at batch 1 (ms), measured interleaved with the baseline"),
    "base_latency_cpu_b1_ms": ("float64", "the baseline's, measured interleaved in the same process (ms)"),
    "speedup_b1": ("float64", "baseline time / pruned time at batch 1: median over interleaved rounds, 1 thread"),
    "speedup_b1_q1": ("float64", "its first quartile over rounds"),
    "speedup_b1_q3": ("float64", "its third quartile over rounds"),
    "speedup_pass": ("string", "when the speed-up was timed: alone (the sweep's measuring pass after its trials, "
                               "run's after its trial, or bench retime); empty: a row from before that pass, timed "
                               "inside its trial"),
    "speedup_form": ("string", "the deploy form the speed-up was timed in: eager (channels_last), folded (BatchNorm "
                               "folded) or onnxruntime (the ONNX export, one thread); empty: eager"),
    "latency_gpu_b1_ms": ("float64", "median GPU latency at batch 1 (ms), when on a GPU"),
    "baseline_epochs": ("Int64", "epochs of baseline training"),
    "joint_epochs": ("Int64", "epochs of the method's own training phase (DECORE's joint phase)"),
    "finetune_epochs": ("Int64", "fine-tuning epochs after removal (the last may be partial)"),
    "method_images": ("Int64", "training images of the method's own phase, counted by the engine"),
    "finetune_images": ("Int64", "training images of fine-tuning, counted by the engine"),
    "budget_images": ("Int64", "training images after the baseline: method phase + fine-tuning"),
    "budget": ("string", "budget rule: equal (same images after the baseline) or paper (each its own schedule)"),
    "selection": ("string", "split decisions read: val (hold-out of the training set) or test (papers' practice)"),
    "data_fingerprint": ("string", "content hash of the data loaded"),
    "method_version": ("string", "hash of the method's code"),
    "engine_version": ("string", "hash of the engine's code (bench.core.version); empty: a row from before it was recorded"),
    "distinct_images": ("Int64", "distinct training images the trial's training drew after the baseline (engine-counted)"),
    "flops_gap_pct": ("float64", "matched partners: 100 * (FLOPs - the DECORE trial's FLOPs) / the DECORE trial's FLOPs"),
    "bn_sparse_pct": ("float64", "slimming: % of BatchNorm scales with |gamma| < 1e-2 when pruned (after the sparsity phase)"),
    "base_bn_sparse_pct": ("float64", "slimming: the same % in the baseline, before the sparsity phase"),
    "match_of": ("string", "config_hash of the DECORE trial(s) whose FLOPs this trial was run at (;-joined)"),
    "kept_channels": ("string", "JSON: group id -> [kept, units, kind (internal or stream)]"),
    "round_to": ("Int64", "kept channels rounded up to this multiple (1 = off)"),
    "wall_seconds": ("float64", "wall time of the trial (s)"),
    "config_hash": ("string", "hash of the trial's full config: the row's key"),
    "study": ("string", "Optuna study name"),
    "optuna_trial": ("Int64", "Optuna trial number"),
    "wandb_run_id": ("string", "W&B run id"),
    "git_commit": ("string", "commit of the harness"),
    "packages": ("string", "JSON: versions of torch, timm, torch-pruning, ..."),
    "device": ("string", "device the trial trained on"),
    "pareto": ("boolean", "on its series' front: max validation top-1 and min FLOPs on seed means"),
    "budget_winner": ("string", "budgets (e.g. flops:0.5; several joined by ;) whose search this trial won for its method"),
}


def empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, (t, _) in COLUMNS.items()})


def normalise(rows: list[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows -> a frame with exactly COLUMNS, in order and with their dtypes (unknown keys refused)."""
    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    extra = set(df.columns) - set(COLUMNS)
    if extra:
        raise ValueError(f"results rows carry unknown columns {sorted(extra)}")
    out = pd.DataFrame(index=df.index)
    for c, (t, _) in COLUMNS.items():
        col = df[c] if c in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)
        if t in ("float64", "Int64"):
            col = pd.to_numeric(col.astype(object).where(col.notna(), None), errors="raise")
        elif t == "boolean":
            col = col.map(lambda v: None if pd.isna(v) else str(v) in ("True", "true", "1"))
        out[c] = col.astype(t)
    df = out
    return df


def non_dominated(top1: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats (top-1 at least as high and cost at most as low, one strictly)."""
    better = (top1[None, :] >= top1[:, None]) & (cost[None, :] <= cost[:, None])
    strictly = (top1[None, :] > top1[:, None]) | (cost[None, :] < cost[:, None])
    return ~(better & strictly).any(axis=1)


# Rows that differ in any of these are different series: never merged into one mean, label or front.
SERIES_KEYS = ("method", "scope", "budget", "selection", "round_to", "method_version", "engine_version")
CONFIG_KEYS = (*SERIES_KEYS, "knobs")   # one configuration; its rows differ only in the seed


def decision_top1(df: pd.DataFrame) -> pd.Series:
    """The accuracy every decision reads: validation top-1 (rows from before the selection split: test top-1)."""
    return df["val_top1_pct"].astype(float).fillna(df["top1_pct"].astype(float))


def config_means(df: pd.DataFrame) -> pd.DataFrame:
    """Complete trials averaged over seeds per configuration: decision top-1, FLOPs, and the row indices."""
    ok = (df["row_type"] == "trial") & (df["status"] == "complete") & df["flops"].notna()
    part = df[ok].assign(_dec=decision_top1(df[ok]), _flops=df.loc[ok, "flops"].astype(float))
    part = part[part["_dec"].notna()]
    if part.empty:
        return pd.DataFrame(columns=[*CONFIG_KEYS, "dec", "flops", "rows"])
    keys = part[list(CONFIG_KEYS)].astype(str)
    grouped = part.groupby([keys[k] for k in CONFIG_KEYS], sort=False, dropna=False)
    out = grouped.agg(dec=("_dec", "mean"), flops=("_flops", "mean")).reset_index()
    out["rows"] = [list(idx) for idx in grouped.groups.values()]
    return out


def mark_pareto(df: pd.DataFrame) -> pd.DataFrame:
    """Set `pareto` per series: configurations whose seed means (validation top-1 up, FLOPs down) no other
    configuration of the series beats; every seed row of such a configuration is flagged."""
    df = df.copy()
    df["pareto"] = False
    means = config_means(df)
    for _, part in means.groupby(list(SERIES_KEYS), sort=False, dropna=False):
        mask = non_dominated(part["dec"].to_numpy(float), part["flops"].to_numpy(float))
        for rows, on in zip(part["rows"], mask):
            df.loc[rows, "pareto"] = bool(on)
    df["pareto"] = df["pareto"].astype("boolean")
    return df


class ResultsTable:
    """runs.csv + runs.parquet of one experiment folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.csv = self.folder / "runs.csv"
        self.parquet = self.folder / "runs.parquet"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".runs.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> pd.DataFrame:
        if not self.csv.exists():
            return empty()
        try:
            df = pd.read_csv(self.csv, dtype=str, keep_default_na=True)
            missing = [c for c in ("row_type", "method", "config_hash", "status") if c not in df.columns]
            if missing:
                raise ValueError(f"columns {missing} are missing")
            return normalise(df)
        except (ValueError, TypeError, pd.errors.ParserError) as e:
            raise UserError(f"results table {str(self.csv)!r} is broken ({str(e).splitlines()[0][:160]}): "
                            "restore it from runs.parquet or git, or move it away to start a new one") from None

    def upsert(self, row: Mapping[str, Any]) -> pd.DataFrame:
        """Insert or replace the row with this config_hash; rewrite both files atomically."""
        with self._locked():
            df = self.read()
            new = normalise([dict(row)])
            same = df.index[df["config_hash"] == row["config_hash"]]
            if len(same):  # replace in place: row order stays stable across reruns
                merged = df.copy()
                merged.loc[same[0], :] = new.iloc[0].to_numpy()
                merged = normalise(merged.drop(index=same[1:]).reset_index(drop=True))
            else:
                merged = pd.concat([df, new], ignore_index=True) if len(df) else new
            merged = mark_pareto(merged)
            if not merged.equals(df) or self._parquet_stale():
                self._write(merged)
            return merged

    def _write(self, df: pd.DataFrame) -> None:
        for stale in self.folder.glob(".runs.*.tmp"):  # left by a writer killed mid-write; we hold the lock
            stale.unlink(missing_ok=True)
        atomic_write(self.csv, lambda tmp: df.to_csv(tmp, index=False))
        crash_point("results")
        atomic_write(self.parquet, lambda tmp: df.to_parquet(tmp, index=False))

    def _parquet_stale(self) -> bool:
        """runs.parquet is missing or older than runs.csv (a crash between the two writes)."""
        return self.csv.exists() and (not self.parquet.exists()
                                      or self.parquet.stat().st_mtime_ns < self.csv.stat().st_mtime_ns)

    def finished_hashes(self) -> set[str]:
        df = self.read()
        return set(df.loc[df["status"].isin(["complete", "infeasible"]), "config_hash"].dropna())


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
