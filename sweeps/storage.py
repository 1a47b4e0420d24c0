"""Optuna storages by URL: SQLite (default, no server), PostgreSQL/MySQL (many machines), journal files.

RDB storages get Optuna's heartbeat, so a trial whose worker died is failed and retried by the next
worker; every storage also gets `recover_dead_trials`, which does the same at once for trials whose
worker process on this host is gone (a SIGKILL, a closed laptop).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
import warnings

from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from bench.errors import UserError

HEARTBEAT_S, GRACE_S = 30, 120


def scrub(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: sqlite:///f.db, postgresql://..., journal:f.log (or a *.log path)."""
    try:
        if url.startswith("journal:") or url.endswith((".log", ".journal")):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if "://" not in url:
            raise UserError(f"storage {url!r} is not a URL: use sqlite:///path.db, postgresql://user@host/db or journal:path.log")
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                              engine_kwargs={"pool_pre_ping": True})
    except UserError:
        raise
    except Exception as e:
        detail = " ".join(str(e).split())[:160]
        raise UserError(f"cannot open Optuna storage {scrub(url)!r} ({type(e).__name__}: {detail}): "
                        "check the URL, that the server is up and the database exists") from None


def mark_owner(trial: optuna.Trial) -> None:
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker on this host is dead, and enqueue their parameters again."""
    host, recovered = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or _alive(int(pid)):
            continue
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        recovered.append(t.number)
    return recovered
