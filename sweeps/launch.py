"""`python -m bench launch` (`make bench LAUNCHER=slurm`): a sweep's workers as a SLURM job array, via submitit.

Three submissions, and the launcher returns: a first job checks the time limit against one trial's estimate on
the node, prints the plan and trains each seed's baseline (so no two workers ever train it); WORKERS array tasks
that depend on it (afterok) and fill the studies; a last job (after the array, whatever its tasks' ends) tops up
whatever a lost worker left, runs the matched partners and controls, the measuring pass and the report.

Storage: the PostgreSQL (or any) URL in BENCH_STORAGE/--storage, passed to the jobs through their environment
(never written to disk), else Optuna's journal file in the experiment folder on the shared filesystem (no
server; sweeps.storage.HeartbeatJournalStorage). Every job is a submitit Checkpointable: on the scheduler's
signal (SIGUSR2 before the time limit or at preemption, SIGTERM from `scancel` or a preemption) the running
trial is enqueued again, then failed (a live worker takes it up), and the time limit's signal requeues the
job, which resumes from the studies and the results table instead of starting over. W&B runs are offline on the
nodes; `wandb sync <experiment>/wandb/offline-run-*` uploads them from the login node.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from submitit.helpers import Checkpointable
except ImportError:  # the launcher says so when used; importing this module (for the CLI's parser) must not fail
    Checkpointable = object

from bench.core.errors import Interrupted, UserError

ROOT = Path(__file__).resolve().parents[1]
JOURNAL = "optuna.journal"
LAUNCH_JSON = "launch.json"
GENERIC = ("timeout_min", "mem_gb", "cpus_per_task", "gpus_per_node")  # submitit's names for every cluster
ALIASES = {"time": "timeout_min", "partition": "slurm_partition"}
PREEMPT_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


def register(sub: argparse._SubParsersAction, commands: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    """The `launch` and `status` subcommands (called once from bench.cli.build_parser, after `sweep`)."""
    from .status import add_status_parser

    p = sub.add_parser("launch", parents=[sub.choices["sweep"]], add_help=False, conflict_handler="resolve",
                       help="submit a sweep's workers to SLURM with submitit and return (make bench LAUNCHER=slurm)")
    p.add_argument("--slurm", default="", metavar="'KEY=VALUE ...'",
                   help="job options: time=MINUTES (required: at least one trial's estimate), partition=gpu, "
                        "gpus_per_node=1, cpus_per_task=8, mem_gb=32, or any submitit slurm_* name without its "
                        "prefix (account=..., qos=..., constraint=...)")
    p.add_argument("--workers", type=int, default=1, help="array tasks: worker jobs that share the studies")
    commands["launch"] = cmd_launch
    add_status_parser(sub, commands)


def parse_slurm(text: str) -> dict[str, Any]:
    """'partition=gpu gpus_per_node=1 time=240' -> submitit parameters (time in whole minutes, required)."""
    params: dict[str, Any] = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UserError(f"SLURM item {item!r} is not KEY=VALUE: write e.g. SLURM=\"partition=gpu time=240\"")
        key = ALIASES.get(key, key if key in GENERIC or key.startswith("slurm_") else f"slurm_{key}")
        params[key] = int(value) if value.isdigit() else value
    minutes = params.get("timeout_min")
    if not isinstance(minutes, int) or minutes < 1:
        raise UserError(f"SLURM needs time=MINUTES, a whole number of minutes (got {minutes!r}): e.g. "
                        "SLURM=\"time=240\", at least one trial's estimated length")
    return params


def check_time_limit(cfg: Any, minutes: int, where: str) -> float | None:
    """Refuse a job time limit shorter than one trial as the plan estimates it (rates measured on this machine's
    device); the estimate in seconds, or None where it cannot be made (image folders: no in-memory data)."""
    from bench.engine.data import load_dataset
    from bench.engine.recipe import load_recipe
    from bench.engine.train import resolve_device

    from .profile import load_profile
    from .plan import measure_rates, trial_seconds

    if cfg.dataset.startswith("imagefolder:"):
        return None
    profile, device = load_profile(cfg.profile), resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, selection=cfg.selection)
    rates = measure_rates(cfg.model, data, load_recipe(profile.finetune_recipe), device)
    seconds, method = trial_seconds(cfg, profile, data, rates)
    if minutes * 60 < seconds:
        raise UserError(f"SLURM time={minutes} is shorter than one {method} trial, estimated at {seconds / 60:.1f} min "
                        f"on {device} ({where}): give time={math.ceil(seconds / 60)} or more")
    return seconds


class Preempted(Interrupted):
    """Raised in the main thread by a scheduler's signal: the objective queues its trial again, then Optuna records
    it failed."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class SweepJob(Checkpointable):
    """One SLURM job of a launched sweep: stage `prepare`, `worker` or `finish` (see the module docstring).
    Checkpointable: submitit requeues the same call when the time limit's signal comes, and it resumes."""

    def __call__(self, stage: str, cfg: Any, check_minutes: int | None) -> str:
        cfg = _node_config(cfg)
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, PREEMPT_SIGNAL)}

        def stop(signum: int, frame: Any) -> None:
            for s in previous:  # once: a second signal (srun forwards scancel's) must not interrupt the hand-back
                signal.signal(s, signal.SIG_IGN)
            raise Preempted(signum)
        for s in previous:
            signal.signal(s, stop)
        try:
            STAGES[stage](cfg, check_minutes)
        except Preempted as e:
            _hand_back(cfg)  # what the objective did not queue again (a signal outside a trial's run)
            print(f"{stage}: {e}; its running trial (if any) is enqueued again", flush=True)
            if e.signum == PREEMPT_SIGNAL and callable(previous[PREEMPT_SIGNAL]):
                previous[PREEMPT_SIGNAL](e.signum, None)  # submitit: checkpoint this call, requeue, exit
            raise SystemExit(128 + e.signum) from None
        return f"{stage} done: {cfg.folder}"


def _node_config(cfg: Any) -> Any:
    """The job's config: the storage URL from the environment when the launcher kept it off disk."""
    if cfg.storage is None:
        url = os.environ.get("BENCH_STORAGE")
        if not url:
            raise UserError("this job's storage is the URL in BENCH_STORAGE, which its environment lacks: "
                            "submit from a shell where it is set (sbatch exports the environment)")
        cfg = dataclasses.replace(cfg, storage=url)
    return cfg


def _hand_back(cfg: Any) -> None:
    import optuna

    from .storage import hand_back, open_storage

    storage = open_storage(cfg.storage_url)
    for method in cfg.methods:
        try:
            study = optuna.load_study(study_name=cfg.study_name(method), storage=storage)
        except KeyError:
            continue
        if numbers := hand_back(study):
            print(f"{method}: trial(s) {numbers} interrupted here; enqueued again for a live worker", flush=True)


def _prepare(cfg: Any, check_minutes: int | None) -> None:
    """The plan and the baselines, after the time limit's check where the login node could not make it."""
    from .study import start_sweep

    if check_minutes is not None:
        check_time_limit(cfg, check_minutes, "measured on this node")
    start_sweep(cfg)


def _work(cfg: Any, check_minutes: int | None) -> None:
    from .study import run_studies, start_sweep

    run_studies(cfg, start_sweep(cfg, plan=False))


def _finish(cfg: Any, check_minutes: int | None) -> None:
    from .study import finish_sweep, run_studies, start_sweep

    setup = start_sweep(cfg, plan=False)
    run_studies(cfg, setup)  # trials a lost worker left (its retry enqueued, or stale by now)
    finish_sweep(cfg, setup.profile, setup.data)


STAGES: dict[str, Callable[[Any, int | None], None]] = {"prepare": _prepare, "worker": _work, "finish": _finish}


# ---------------------------------------------------------------- the login node

def cmd_launch(args: argparse.Namespace) -> int:
    from bench.core.io import results_dir
    from sweeps.plan import sweep_config
    from bench.core.io import check_writable

    check_writable(results_dir())
    if args.profile == "auto":
        raise UserError("--profile auto picks a profile for this machine, not the nodes': name one for the cluster, "
                        "e.g. PROFILE=fast (make) or --profile fast")
    params = parse_slurm(args.slurm)
    cfg = sweep_config(args)
    launch(cfg, params)
    return 0


def launch(cfg: Any, params: dict[str, Any]) -> dict[str, str]:
    """Submit prepare -> WORKERS array tasks -> finish; write launch.json; print the job ids and what to run next."""
    try:
        import submitit
    except ImportError:
        raise UserError("submitit is not installed: pip install submitit (or make env)") from None
    from bench.core.io import scrub_url as scrub, write_json

    from .config import validate
    from .storage import open_storage

    validate(cfg)
    open_storage(cfg.storage or f"journal:{cfg.folder / JOURNAL}")  # a bad URL or a server down: said now
    minutes = params["timeout_min"]
    estimate = _check_here(cfg, params)
    check = None if estimate is not None else minutes  # then the first job checks, on a node
    workers, url = cfg.workers, cfg.storage
    cfg, journal = _job_config(cfg)
    storage = journal or scrub(url)  # what launch.json and `status` show: never a password
    executor = submitit.AutoExecutor(folder=cfg.folder / "slurm" / "%j", cluster="slurm")
    try:
        executor.update_parameters(**params, slurm_setup=[f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"])
    except (ValueError, TypeError) as e:
        raise UserError(f"SLURM option not known to submitit ({' '.join(str(e).split())[:200]}): see docs/clusters.md") from None
    job = SweepJob()
    first = _submit(executor, "prepare", lambda: executor.submit(job, "prepare", cfg, check))
    executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{first}", "kill_on_invalid_dep": "yes"},
                               slurm_array_parallelism=workers)
    array = _submit(executor, "worker", lambda: executor.map_array(job, *zip(*[("worker", cfg, None)] * workers))[0])
    array = array.split("_")[0]
    executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{first},afterany:{array}",
                                                            "kill_on_invalid_dep": "yes"})
    last = _submit(executor, "finish", lambda: executor.submit(job, "finish", cfg, None))
    jobs = {"prepare": first, "workers": array, "finish": last}
    write_json(cfg.folder / LAUNCH_JSON, {"jobs": jobs, "workers": workers, "storage": storage,
                                          "methods": list(cfg.methods), "trials": _trials(cfg), "seeds": cfg.seeds,
                                          "time_min": minutes, "trial_estimate_s": estimate,
                                          "slurm": params})
    print(f"submitted: prepare {first} (baselines), workers {array}_[0-{workers - 1}], finish {last} (report)")
    print(f"  storage: {storage if journal else 'the URL in BENCH_STORAGE, ' + storage}; logs: {cfg.folder / 'slurm'}")
    print(f"  progress: python -m bench status {cfg.folder}")
    print(f"  W&B (offline on the nodes): wandb sync {cfg.folder / 'wandb'}/offline-run-*")
    return jobs


def _check_here(cfg: Any, params: dict[str, Any]) -> float | None:
    """The time-limit check on the login node when its device is the nodes' kind; else the first job does it."""
    import torch

    wants_gpu = any(str(params.get(k, "0")) not in ("0", "") for k in ("gpus_per_node", "slurm_gres", "slurm_gpus"))
    if wants_gpu and not torch.cuda.is_available():
        print("time limit: checked by the first job on a GPU node (this machine has none to measure a trial on)")
        return None
    return check_time_limit(cfg, params["timeout_min"], "measured on this machine")


def _job_config(cfg: Any) -> tuple[Any, str | None]:
    """The config the jobs receive (pickled to the shared filesystem): a URL storage stays in the environment
    (BENCH_STORAGE, exported to the jobs by sbatch), so a password never reaches a file; else the journal file.
    Paths become absolute, and W&B offline on the nodes (they often have no internet)."""
    for name in ("RESULTS_DIR", "DATA_DIR"):
        if os.environ.get(name):
            os.environ[name] = str(Path(os.environ[name]).absolute())
    wandb = "off" if cfg.wandb == "off" else "offline"
    if cfg.storage:
        os.environ["BENCH_STORAGE"] = cfg.storage
        return dataclasses.replace(cfg, storage=None, wandb=wandb, workers=1), None
    journal = f"journal:{cfg.folder.absolute() / JOURNAL}"
    return dataclasses.replace(cfg, storage=journal, wandb=wandb, workers=1), journal


def _trials(cfg: Any) -> dict[str, int]:
    """Each method's own trials (a profile may give a method its own count, 0 for a partner-only method)."""
    from .profile import load_profile

    profile = load_profile(cfg.profile)
    return {m: profile.trials_for(m, cfg.trials) for m in cfg.methods}


def _submit(executor: Any, what: str, submit: Callable[[], Any]) -> str:
    executor.update_parameters(name=f"bench-{what}")
    try:
        return str(submit().job_id)
    except Exception as e:  # sbatch's refusal (unknown partition, no such account): its own words, one line
        raise UserError(f"sbatch refused the {what} job: {' '.join(str(e).split())[-300:]}") from None
