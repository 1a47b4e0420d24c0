"""Optuna storages by URL: SQLite (default, no server), PostgreSQL/MySQL (many machines), journal files.

RDB storages (SQLite, PostgreSQL) and journal files get Optuna's heartbeat (for journals `HeartbeatJournalStorage`,
the heartbeat a trial system attribute), so a trial whose worker died is failed and retried by the next worker; every storage also gets `recover_dead_trials`, which does the same at once
for trials whose worker process on this host is gone (a SIGKILL, a closed laptop).

The heartbeat interval and the grace period after which a silent trial counts as dead are read from
SWEEP_HEARTBEAT_S (default 30) and SWEEP_GRACE_S (default 120), in whole seconds: a retried trial waits
about GRACE_S, so short values suit tests, long ones busy databases.
"""
from __future__ import annotations

import datetime
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from bench.core.errors import UserError
from bench.core.io import scrub_url as scrub

HEARTBEAT_S, GRACE_S = 30, 120  # defaults of SWEEP_HEARTBEAT_S, SWEEP_GRACE_S


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds, from the environment or the defaults."""
    values = []
    for name, default in (("SWEEP_HEARTBEAT_S", HEARTBEAT_S), ("SWEEP_GRACE_S", GRACE_S)):
        raw = os.environ.get(name, "").strip() or str(default)
        if not raw.isdigit() or int(raw) < 1:
            raise UserError(f"{name}={raw!r} must be a whole number of seconds >= 1 (default {default})")
        values.append(int(raw))
    if values[1] <= values[0]:
        raise UserError(f"SWEEP_GRACE_S={values[1]} must exceed SWEEP_HEARTBEAT_S={values[0]}: "
                        "a live trial would be failed between two heartbeats")
    return values[0], values[1]


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: sqlite:///f.db, postgresql://..., journal:f.log (or a *.log path)."""
    heartbeat, grace = heartbeat_settings()
    try:
        if url.startswith("journal:") or url.endswith((".log", ".journal")):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            # a symlink lock: atomic on NFS, where a cluster's results folder lives
            return HeartbeatJournalStorage(JournalFileBackend(str(path), JournalFileSymlinkLock(str(path))),
                                           heartbeat, grace)
        if "://" not in url:
            raise UserError(f"storage {url!r} is not a URL: use sqlite:///path.db, postgresql://user@host/db or journal:path.log")
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                              heartbeat_stale_trial_callback=retry_stale,
                              engine_kwargs={"pool_pre_ping": True})
    except UserError:
        raise
    except Exception as e:
        detail = " ".join(str(e).split())[:160]
        raise UserError(f"cannot open Optuna storage {scrub(url)!r} ({type(e).__name__}: {detail}): "
                        "check the URL, that the server is up and the database exists") from None


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal file with Optuna's heartbeat, as RDB storages have it: a worker's trial records the time every
    `heartbeat` seconds (system attribute `heartbeat`, one journal line), and a RUNNING trial silent for more than
    `grace` seconds is stale (its worker is gone: another node, a SIGKILL, a lost job), so `fail_stale` fails it
    and enqueues it again once. The clocks of the machines that share the file must agree within `grace`."""

    def __init__(self, backend: JournalFileBackend, heartbeat: int, grace: int) -> None:
        super().__init__(backend)
        self._heartbeat, self._grace = heartbeat, grace

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, "heartbeat", time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # the trial was failed meanwhile (its worker handed it back): nothing left to beat for

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # a retry by Optuna's own callback (journals older than retry_stale) inherits its original's system
        # attributes, old heartbeat included: a beat counts only after the trial started; a trial that never
        # beat is timed from its start
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if t.datetime_start is not None
                and now - max(t.system_attrs.get("heartbeat", 0.0), t.datetime_start.timestamp()) > self._grace]

    def get_heartbeat_interval(self) -> int:
        return self._heartbeat

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None]:
        return retry_stale


def mark_owner(trial: optuna.Trial) -> None:
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    if job := slurm_job():
        trial.set_user_attr("slurm_job", job)  # `bench status` names the job behind a running trial


def slurm_job() -> str | None:
    """This process's SLURM job as squeue names it (<array>_<task> for an array task), None outside SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker on this host is dead, and enqueue their parameters again.

    Only the process that moves a trial to FAIL enqueues its retry: a heartbeat check or another
    worker recovering the same trial at the same moment gets UpdateFinishedTrialError and stands back.
    """
    host, recovered = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or _alive(int(pid)):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        _retry(study, t)
        recovered.append(t.number)
    return recovered


def requeue(study: optuna.Study, trial_id: int) -> None:
    """The running trial `trial_id` of this interrupted worker queued again while it still runs: from then on
    every worker counts it as running or waiting, never as neither (a worker that saw neither would start a
    fresh trial in its place, and the retry would then be surplus). Its retry is not the original's twin
    (`retry_of`: see sweeps.objective)."""
    _retry(study, study._storage.get_trial(trial_id))


def _retry(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
    """`failed` queued again: a WAITING trial with its parameters (the next worker's trial takes them) and the
    user attribute retry_of, nothing of the dead worker's attributes; nothing when it is queued already (its
    interrupted worker queued it, `requeue`, then died before its trial was marked failed)."""
    if any(t.user_attrs.get("retry_of") == failed.number for t in study.get_trials(deepcopy=False)):
        return
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=failed.params,
                                        distributions=failed.distributions, user_attrs={"retry_of": failed.number}))


MAX_RETRY = 3  # retries along one chain of a stale trial (Optuna's RetryHeartbeatStaleTrialCallback's, as before)


def retry_stale(study: optuna.Study, failed: FrozenTrial) -> None:
    """The heartbeat's retry of a stale trial (RDB and journal storages), the same retry as a dead or signalled
    worker's (`_retry`: user attribute retry_of, no copy of the dead worker's host, pid and job), so `hand_back`,
    `bench status` and the tests see one kind; at most MAX_RETRY along one chain."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    depth, trial = 0, failed
    while (before := trial.user_attrs.get("retry_of")) is not None and before in by_number:
        depth, trial = depth + 1, by_number[before]
    if depth < MAX_RETRY:
        _retry(study, failed)


def hand_back(study: optuna.Study) -> list[int]:
    """Enqueue again the trials that this process's interrupted objective failed (a scheduler's signal raised
    inside it, so Optuna recorded FAIL): FAIL trials of this host and pid with no `reason` (a diverged trial has
    one) and no retry yet, so the same trial is never enqueued twice, even by a later process with this pid."""
    host, pid = socket.gethostname(), os.getpid()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    mine = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("host") == host
            and t.user_attrs.get("pid") == pid and "reason" not in t.user_attrs and t.number not in retried]
    for t in mine:
        _retry(study, t)
    return [t.number for t in mine]


def fail_stale(study: optuna.Study) -> None:
    """Optuna's heartbeat check (RDB storages): stale RUNNING trials fail and are enqueued again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def has_heartbeat(study: optuna.Study) -> bool:
    return getattr(study._storage, "get_heartbeat_interval", lambda: None)() is not None


def is_active(study: optuna.Study, trial: optuna.trial.FrozenTrial, young_s: float = 60.0) -> bool:
    """Whether a RUNNING trial will still finish or be failed and retried, so workers should wait on it.

    Its worker lives on this host; or the storage has a heartbeat (a dead remote worker's trial goes
    stale); or it started moments ago and has not been claimed yet. A trial left RUNNING by a worker
    that died before its heartbeat began never goes stale: waiting on it would wait forever.
    """
    pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
    if pid is not None and host == socket.gethostname():
        return _alive(int(pid))
    if pid is not None and has_heartbeat(study):
        return True
    start = trial.datetime_start  # naive local time in RDB storages, aware UTC in journal files
    return start is not None and (datetime.datetime.now(start.tzinfo) - start).total_seconds() < young_s
