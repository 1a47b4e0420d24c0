"""`python -m bench status [FOLDER ...]`: where a sweep stands, read from its studies and from SLURM.

Per method: trials complete / running / failed / waiting (a failed trial's retry waits in the queue until a
worker takes it), against the trials wanted; the jobs of a launched sweep as `squeue` sees them (finished jobs
too, while slurmctld keeps them: MinJobAge, 5 min by default); and what remains, timed by the mean length of
the complete trials (the plan's estimate until one is complete) over the running workers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core.errors import UserError

STATES = ("complete", "running", "failed", "waiting")


def add_status_parser(sub: argparse._SubParsersAction, commands: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    p = sub.add_parser("status", help="a sweep's trials per method and state, its SLURM jobs, and what remains")
    p.add_argument("experiments", nargs="*", help="experiment folders (default: every RESULTS_DIR/* with a study)")
    commands["status"] = cmd_status


def cmd_status(args: argparse.Namespace) -> int:
    from bench.core.io import results_dir

    folders = [Path(f) for f in args.experiments] or sorted(
        {p.parent for pattern in ("*/launch.json", "*/optuna.db", "*/optuna.journal") for p in results_dir().glob(pattern)})
    if not folders:
        raise UserError(f"no sweep under {str(results_dir())!r}: pass an experiment folder, or set RESULTS_DIR")
    for folder in folders:
        print(status_text(folder))
    return 0


def status_text(folder: Path) -> str:
    """The status of one experiment folder, as printed."""
    from bench.core.io import scrub_url as scrub

    launch = _read_launch(folder)
    url = _storage_url(folder, launch)
    counts = study_counts(folder, url)
    lines = [f"{folder.name}: storage {scrub(url)}"]
    for method in launch.get("methods") or sorted(counts):
        c = counts.get(method, {s: 0 for s in STATES})
        wanted = wanted_of(launch, method)
        lines.append(f"  {method:8s} {c['complete']} complete, {c['running']} running, {c['failed']} failed, "
                     f"{c['waiting']} waiting" + (f" (of {wanted} wanted)" if wanted is not None else "") +
                     (f"; running: trial {', '.join(c['jobs'])}" if c.get("jobs") else ""))
    jobs = launch.get("jobs") or {}
    table = squeue(jobs)
    if jobs:
        lines.append("  jobs: " + ("; ".join(table) if table else "none in the queue (squeue: ended and forgotten, "
                                  "or no SLURM here)"))
    lines.append("  " + remaining_text(counts, launch, table, (folder / "README.md").is_file()))
    if (folder / "README.md").is_file():
        lines.append(f"  report: {folder / 'README.md'}")
    offline = list((folder / "wandb").glob("offline-run-*"))
    if offline:
        lines.append(f"  W&B: {len(offline)} offline run(s); upload with: wandb sync {folder / 'wandb'}/offline-run-*")
    return "\n".join(lines)


def _read_launch(folder: Path) -> dict[str, Any]:
    path = folder / "launch.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{str(path)!r} is not valid JSON ({e}): launch the sweep again or delete the file") from None


def _storage_url(folder: Path, launch: dict[str, Any]) -> str:
    stored = launch.get("storage")
    if stored and stored.startswith("journal:"):
        return stored
    if launch:  # a URL storage: its password was never written down
        url = os.environ.get("BENCH_STORAGE")
        if not url:
            raise UserError(f"{folder.name}'s studies are in {stored}: set BENCH_STORAGE to that URL (with its "
                            "password) to read them")
        return url
    if (folder / "optuna.db").is_file():
        return f"sqlite:///{folder / 'optuna.db'}"
    return f"journal:{folder / 'optuna.journal'}"


def study_counts(folder: Path, url: str) -> dict[str, dict[str, int]]:
    """{method: {state: trials}} of the experiment's studies (named <experiment>-<method>-<code version>)."""
    import optuna
    from optuna.trial import TrialState

    from .storage import open_storage

    if url.startswith("journal:") and not Path(url.removeprefix("journal:")).is_file():
        return {}  # the first job has not opened it yet
    storage = open_storage(url)
    names = [n for n in optuna.get_all_study_names(storage) if n.startswith(folder.name + "-")]
    kinds = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running", TrialState.FAIL: "failed",
             TrialState.WAITING: "waiting"}
    counts: dict[str, dict[str, int]] = {}
    for name in names:
        method = method_of(name, folder.name)
        c = counts.setdefault(method, {s: 0 for s in STATES} | {"seconds": 0.0, "jobs": []})
        for t in storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False):
            if t.state in kinds:
                c[kinds[t.state]] += 1
            if t.state == TrialState.RUNNING:
                c["jobs"].append(f"{t.number} on {t.user_attrs.get('slurm_job') or t.user_attrs.get('host', '?')}")
            if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete:
                c["seconds"] += (t.datetime_complete - t.datetime_start).total_seconds()
    return counts


def method_of(study_name: str, experiment: str) -> str:
    """The method of a study named <experiment>-<method>-<method code version>-<engine version>
    (`SweepConfig.study_name`); a method's own name may hold a hyphen (scratch-b)."""
    return study_name.removeprefix(experiment + "-").rsplit("-", 2)[0]


def squeue(jobs: dict[str, str]) -> list[str]:
    """'<id> <name> <state> <elapsed> <reason or node>' of the sweep's jobs, array tasks one by one."""
    if not jobs or not shutil.which("squeue"):
        return []
    cmd = ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(jobs.values()), "-o", "%i %j %T %M %R"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    # squeue fails as a whole when every id is forgotten (Invalid job id): the same as no rows
    return [" ".join(line.split()) for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def wanted_of(launch: dict[str, Any], method: str) -> int | None:
    """A method's own trials wanted, from launch.json: one count for every method (older files) or one per method."""
    wanted = launch.get("trials")
    return wanted.get(method) if isinstance(wanted, dict) else wanted


def remaining_text(counts: dict[str, dict[str, Any]], launch: dict[str, Any], table: list[str], reported: bool) -> str:
    if not launch.get("trials"):
        return "remaining: unknown (no launch.json: the trials wanted are the sweep command's)"
    left = sum(max((wanted_of(launch, m) or 0) - counts.get(m, {}).get("complete", 0), 0) for m in launch["methods"])
    if not left:
        return "remaining: nothing, the report is written" if reported else \
            "remaining: no trial of the studies; the finish job (partners, controls, report)"
    done = sum(c["complete"] for c in counts.values())
    if done:
        per, how = sum(c["seconds"] for c in counts.values()) / done, f"the mean of {done} complete"
    elif launch.get("trial_estimate_s"):
        per, how = float(launch["trial_estimate_s"]), "the plan's estimate"
    else:
        return f"remaining: {left} trial(s) of the studies, then the finish job (no trial timed yet)"
    workers = sum(1 for row in table if " bench-worker RUNNING " in f" {row} ") or launch.get("workers") or 1
    minutes = math.ceil(left / workers) * per / 60
    return (f"remaining: {left} trial(s) of the studies, ~{minutes:.1f} min at {per:.0f} s a trial ({how}) on "
            f"{workers} worker(s), then the finish job (partners, controls, report)")
