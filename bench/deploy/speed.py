"""The results table's latency columns: a pruned model timed alone against the unpruned architecture, both in
the deploy form the experiment names (bench.deploy.forms), interleaved on a fixed thread count."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

import models

from bench.engine.train import progress


def measure_speedup(trial_dir: str | Path, batch_size: int = 1, form: str = "eager") -> dict[str, Any]:
    """The latency columns of a finished trial: its pruned model against the unpruned architecture in the deploy
    `form`, interleaved in this process on a fixed thread count (bench.engine.measure.speedup). Call it when nothing else
    trains on this machine (the sweep's measuring pass after its trials; `run` after its trial)."""
    from bench.deploy.pruned import load_pruned

    progress(f"phase 4/4: time the pruned model against the unpruned one ({form}, batch 1, one thread, interleaved)")
    plan, pruned = load_pruned(trial_dir)
    return speedup_columns(pruned, models.create(plan.model, **plan.model_args), plan.input_size, batch_size, form)


def speedup_columns(pruned: nn.Module, base: nn.Module, input_size, batch_size: int = 1,
                    form: str = "eager") -> dict[str, Any]:
    """The results table's latency columns of `pruned` timed alone against `base`, both in the deploy `form`
    (bench.deploy.forms.in_form; bench.engine.measure.speedup)."""
    from bench.deploy.forms import in_form
    from bench.engine.measure import speedup

    size = tuple(input_size)
    s = speedup(in_form(pruned, form, size), in_form(base, form, size), size, batch_size)
    return {"latency_cpu_b1_ms": s["ms"], "base_latency_cpu_b1_ms": s["base_ms"], "speedup_b1": s["speedup"],
            "speedup_b1_q1": s["speedup_q1"], "speedup_b1_q3": s["speedup_q3"], "speedup_pass": "alone",
            "speedup_form": form}
