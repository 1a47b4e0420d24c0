"""Re-time the speed-ups of stored trials alone, from their `kept_channels`, for rows measured before the
sweep's measuring pass existed (timed inside their trials, while other work may have run beside them).

A pruned network's latency depends on its widths, not on its weights or on which channels were kept: each
trial's architecture is rebuilt from the unpruned model and the kept count of every group (the first `kept`
units), and timed against the unpruned architecture exactly as the measuring pass times a trial
(`bench.engine.measure.speedup`: batch 1, one thread, interleaved rounds, in the deploy form: eager channels_last by
default, `--deploy-form folded` or `onnxruntime`). The rows get the pass's columns, `speedup_pass` = `alone`
and `speedup_form`; every other column stays. Run it with nothing else training on the
machine: `python -m bench retime results/<experiment>`, then `make report`.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from bench.engine.splits import CIFAR_STATS
from bench.engine.data import make_synthetic
from bench.core.errors import UserError
from bench.engine.measure import count_flops
from bench.trial.results import ResultsTable

SIZE = (3, 32, 32)  # the array datasets' images (CIFAR and the synthetic set)


def _classes(dataset: str) -> int:
    if dataset in CIFAR_STATS:
        return CIFAR_STATS[dataset][2]
    if dataset == "synthetic":
        return make_synthetic().num_classes
    raise UserError(f"retime knows the 32x32 array datasets ({', '.join(CIFAR_STATS)}, synthetic), not {dataset!r}: "
                    "rerun that experiment to time it in its measuring pass")


def rebuilt(row: pd.Series | dict[str, Any]):
    """(pruned, unpruned) networks of a trial row: the unpruned model with each group cut to its kept count."""
    import models
    from methods.core import prune_model
    from methods.core.surgery import KeepPlan

    name, classes = str(row["model"]), _classes(str(row["dataset"]))
    kept = json.loads(row["kept_channels"])
    base, groups = _unpruned(name, classes, str(row.get("scope") or "all"))
    units = {g.id: g.units for g in groups}
    missing = sorted(set(kept) - set(units))
    if missing:
        raise UserError(f"{name}'s groups at scope {row.get('scope')!r} lack {missing[:3]} of the row's kept_channels: "
                        "the grouping changed since the row was written; rerun that experiment")
    # [kept, units, kind]; rows of before the kind was recorded hold [kept, units]
    keep = {gid: list(range(int(v[0]))) for gid, v in kept.items() if int(v[0]) < int(v[1])}
    plan = KeepPlan(models.resolve(name), keep, {gid: units[gid] for gid in keep}, groups.scope,
                    model_args={"num_classes": classes}, input_size=list(SIZE))
    pruned = prune_model(base, plan)
    flops = count_flops(pruned, SIZE)
    if pd.notna(row.get("flops")) and flops != int(row["flops"]):
        raise UserError(f"trial {row['config_hash']}: the widths of its kept_channels give {flops:,} FLOPs, the row says "
                        f"{int(row['flops']):,}: the model code changed since; rerun that experiment")
    return pruned, base


@functools.lru_cache(maxsize=8)
def _unpruned(name: str, classes: int, scope: str):
    """The unpruned network and its groups (prune_model copies it: one build serves every row)."""
    import torch

    import models
    from methods.core import channel_groups

    base = models.create(name, num_classes=classes).eval()
    return base, channel_groups(base, torch.randn(1, *SIZE), scope, name=models.resolve(name))


def retime(folder: str | Path, force: bool = False, form: str = "eager") -> int:
    """Re-time, in the deploy `form`, the complete trials of one experiment folder whose speed-up was not timed
    alone in that form (all with `force`); returns how many rows it re-timed."""
    from bench.deploy.speed import speedup_columns

    table = ResultsTable(Path(folder))
    df = table.read()
    trials = df[(df["row_type"] == "trial") & (df["status"] == "complete") & df["kept_channels"].notna()]
    if not force and "speedup_pass" in trials.columns:
        timed_form = trials["speedup_form"].fillna("eager") if "speedup_form" in trials.columns else "eager"
        trials = trials[(trials["speedup_pass"].fillna("") != "alone") | (timed_form != form)]
    for _, row in tqdm(list(trials.iterrows()), desc=f"retime {Path(folder).name}", unit="model", disable=None):
        pruned, base = rebuilt(row)
        table.upsert({**row.to_dict(), **speedup_columns(pruned, base, SIZE, form=form)})
    return len(trials)
