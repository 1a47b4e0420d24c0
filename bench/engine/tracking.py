"""Weights & Biases mirror of the results: one run per trial, one summary run per sweep. Never fails a trial.

runs.csv stays the source of truth; W&B is a view. Every wandb call goes through `Tracker._call`: the first
exception (no network, init timeout, disk full) logs one warning and turns tracking off for the rest of
the process (an online tracker first falls back to offline once). Modes: auto (online when a W&B login
exists, else offline), online, offline, off; WANDB_MODE=disabled turns any mode off and writes nothing.
"""
from __future__ import annotations

import functools
import json
import logging
import netrc
import numbers
import os
import re
import socket
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from bench.core.errors import UserError

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "off")
SECRET_KEYS = ("api_key", "apikey", "password", "passwd", "token", "secret")
# greedy up to the last "@" before the host: a password holding a raw "@" is hidden whole
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^/\s:@]*:)[^/\s]+@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)[^&\s]+", re.IGNORECASE)
MODEL_FILES = ("plan.json", "model.pt")


# ---------------------------------------------------------------- configuration

def scrub(obj: Any) -> Any:
    """Drop secret-looking keys and hide URL passwords (postgresql://u:secret@h/db -> postgresql://u:***@h/db)."""
    if isinstance(obj, Mapping):
        return {k: scrub(v) for k, v in obj.items() if not any(s in str(k).lower() for s in SECRET_KEYS)}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    if isinstance(obj, (str, Path)):
        return _QUERY_PASSWORD.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>***@", str(obj)))
    return obj


def has_login() -> bool:
    """A W&B API key in the environment or a ~/.netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """auto|online|offline|off -> online|offline|off, honouring WANDB_MODE."""
    if mode not in MODES:
        raise UserError(f"W&B mode {mode!r} is unknown: use one of {', '.join(MODES)}")
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "off" or env == "disabled" or os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return "off"
    if mode != "auto":
        return mode
    if env in ("online", "offline"):
        return env
    if env == "dryrun":  # the old name of offline
        return "offline"
    return "online" if has_login() else "offline"


def flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as {"prefix/a/b": value}; strings, None and lists are skipped."""
    out: dict[str, float] = {}
    for k, v in row.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        elif isinstance(v, numbers.Real) and not isinstance(v, bool):
            out[key] = float(v) if not isinstance(v, numbers.Integral) else int(v)
    return out


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError when a server's port does not answer (the W&B server, the Hugging Face hub).
    wandb.init would retry for its init_timeout (90 s) per process before failing, huggingface_hub for about a
    minute; a closed port or a dead network is known in seconds."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return  # the client goes through the proxy: a direct connection proves nothing
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {parsed.hostname}:{port} ({e.strerror or e})") from None


@functools.cache
def _sync_hint(wandb_dir: str) -> None:
    # cached: one line per process and folder, not one per trial
    log.info("W&B runs are written offline; upload them with: wandb sync %s/offline-run-*", wandb_dir)


# ---------------------------------------------------------------- runs

class TrialRun:
    """One W&B run of a trial; a no-op (id None) when tracking is off or failed."""

    def __init__(self, tracker: Tracker | None, run: Any = None) -> None:
        self._tracker, self._run, self._step, self._done = tracker, run, 0, run is None

    @property
    def id(self) -> str | None:
        return None if self._run is None else self._run.id

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        if self._done or self._tracker is None or self._tracker.mode == "off":
            return None
        return self._tracker._call(what, lambda: fn(self._run))

    def log_epoch(self, phase: str, row: Mapping[str, Any]) -> None:
        """Log one epoch's numbers as "<phase>/<key>" at this run's next step."""
        data = flatten(row, phase)
        if data:
            self._call("log", lambda run: run.log(data, step=self._step))
            self._step += 1

    def finish(self, summary: Mapping[str, Any], kept_channels: Mapping[str, list[int]] | None = None,
               artifact_dir: Path | None = None) -> None:
        """Summary, the kept-channels table and the pruned model as an artifact; then finish the run."""
        def _finish(run: Any) -> None:
            import wandb
            run.summary.update({"status": "complete", **_summary(summary)})
            if kept_channels:
                run.log({"kept_channels": _kept_table(wandb, kept_channels)}, step=self._step)
            if artifact_dir is not None:
                _log_model(wandb, run, Path(artifact_dir), summary)
            run.finish()
        self._call("finish", _finish)
        self._done = True

    def fail(self, reason: str) -> None:
        """Mark the run failed with its reason and finish it with exit code 1."""
        def _fail(run: Any) -> None:
            run.summary.update({"status": "failed", "reason": reason})
            run.finish(exit_code=1)
        self._call("fail", _fail)
        self._done = True

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._done:  # an exception left the block: record it, never swallow it
            self.fail(f"{exc_type.__name__}: {exc}" if exc_type else "finished without a summary")


def _summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers flattened with "/", plus top-level strings (status, reason, labels)."""
    out: dict[str, Any] = {k: v for k, v in summary.items() if isinstance(v, str)}
    out.update(flatten(summary))
    return out


def _kept_table(wandb: Any, kept: Mapping[str, list[int]]) -> Any:
    rows = [[gid, int(k), int(u), k / u] for gid, (k, u, *_) in kept.items()]
    return wandb.Table(columns=["group", "kept", "units", "fraction"], data=rows)


def _log_model(wandb: Any, run: Any, folder: Path, summary: Mapping[str, Any]) -> None:
    files = [folder / f for f in MODEL_FILES if (folder / f).is_file()]
    if not files:
        log.warning("no %s in %s: the model artifact is skipped", " or ".join(MODEL_FILES), folder)
        return
    name = re.sub(r"[^\w.-]", "-", f"model-{run.name or run.id}")[:128]
    art = wandb.Artifact(name, type="model", metadata=flatten(summary))
    for f in files:
        # immutable: reference the trial folder instead of copying the weights into W&B's staging area
        art.add_file(str(f.absolute()), name=f.name, policy="immutable", skip_cache=True)
    run.log_artifact(art)


# ---------------------------------------------------------------- tracker

class Tracker:
    """Creates W&B runs for trials and sweeps; make one per process (its failure state is per tracker)."""

    def __init__(self, mode: str = "auto", project: str | None = None, directory: Path | None = None) -> None:
        self.mode = resolve_mode(mode)
        self.project = project or os.environ.get("WANDB_PROJECT") or "decore-bench"
        self.directory = Path(directory) if directory is not None else _results_dir()

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run fn; on any exception warn once, turn tracking off and return False."""
        if self.mode == "off":
            return None
        try:
            return fn()
        except Exception as e:  # wandb can fail in any way (network, disk, service): never fail a trial for it
            self._give_up(what, e)
            return False

    def _give_up(self, what: str, e: Exception) -> None:
        log.warning("W&B %s failed (%s: %s): tracking is off for the rest of this process",
                    what, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        self.mode = "off"

    def _init(self, **kwargs: Any) -> Any:
        """wandb.init in this tracker's mode; online falls back to offline once; None when off."""
        if self.mode == "off":
            return None
        try:
            return self._start(**kwargs)
        except Exception as e:
            if self.mode != "online":
                self._give_up("init", e)
                return None
            log.warning("W&B online init failed (%s: %s): writing runs offline instead", type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "")
            self.mode = "offline"
            return self._init(**kwargs)

    def _start(self, **kwargs: Any) -> Any:
        import wandb
        if self.mode == "online":
            check_reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
        self.directory.mkdir(parents=True, exist_ok=True)
        # create_new: a sweep's summary run and trial runs may overlap in one process;
        # silent/console off: the harness prints its own progress; no stats: the system monitor would add
        # background load to the latency measurements of a small machine
        # W&B records the command line (sys.argv) in the run's metadata: a --storage URL would carry its
        # password there, so the run sees the command line scrubbed
        saved_argv = sys.argv
        sys.argv = [scrub(a) if isinstance(a, str) else a for a in saved_argv]
        try:
            settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
            run = wandb.init(project=self.project, dir=str(self.directory), mode=self.mode, reinit="create_new",
                             settings=settings, **kwargs)
        finally:
            sys.argv = saved_argv
        if self.mode == "offline":
            _sync_hint(str(self.directory.absolute() / "wandb"))
        return run

    def trial(self, name: str, group: str, job_type: str, config: Mapping[str, Any]) -> TrialRun:
        """One run per trial: group = study, job_type = method, config with credentials scrubbed."""
        run = self._init(name=name, group=group, job_type=job_type, config=scrub(dict(config)))
        return TrialRun(self if run is not None else None, run)

    def sweep_summary(self, group: str, images: Mapping[str, Path], tables: Mapping[str, pd.DataFrame]) -> str | None:
        """One summary run per sweep (job_type "summary") with the plots as images and the results as tables."""
        run = self._init(name=f"{group}-summary", group=group, job_type="summary")
        if run is None:
            return None

        def _log() -> str:
            import wandb
            data = {k: wandb.Image(str(p)) for k, p in images.items()}
            data.update({k: wandb.Table(dataframe=_plain(df)) for k, df in tables.items()})
            run.log(data)
            run.finish()
            return run.id
        result = self._call("sweep summary", _log)
        return result or None


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    # wandb.Table does not take pandas' nullable dtypes (pd.NA): plain objects with None
    return df.astype(object).where(df.notna(), None)


def _results_dir() -> Path:
    from bench.core.io import results_dir
    return results_dir()


# ---------------------------------------------------------------- reading offline runs back

_BLOCK = 32 * 1024          # LevelDB log block size
_HEADER = struct.Struct("<4sHB")  # W&B file header: ":W&B", magic 0xBEE1, version 0
_CHUNK = struct.Struct("<IHB")    # LevelDB record header: masked crc32c, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes) -> Iterator[bytes]:
    """Payloads of a LevelDB-log framed file after W&B's 7-byte header (CRCs are not checked)."""
    ident, magic, _ = _HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B run file (bad header)")
    pos, parts = _HEADER.size, []
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += left  # zero-filled rest of a block
            continue
        chunk = data[pos + _CHUNK.size:pos + _CHUNK.size + length]
        if len(chunk) < length:
            return  # a file still being written ends mid-record
        pos += _CHUNK.size + length
        if kind in (_FULL, _FIRST):
            parts = [chunk]
        else:
            parts.append(chunk)
        if kind in (_FULL, _LAST):
            yield b"".join(parts)


def _key(item: Any) -> str:
    return item.key if item.key else ".".join(item.nested_key)


def _apply(target: dict[str, Any], items: Any) -> None:
    for item in items:
        target[_key(item)] = json.loads(item.value_json)


def read_offline_run(path: Path) -> dict[str, Any]:
    """Read a run written with WANDB_MODE=offline: an offline-run-* folder or its run-*.wandb file.

    Returns id, project, name, group, job_type, config, summary, history (one dict per step), artifacts
    ({name, type, files}) and exit_code. Keys nested by W&B itself (tables) are joined with ".".
    wandb-core writes the file asynchronously: exit_code stays None until the run is complete on disk.
    """
    from wandb.proto import wandb_internal_pb2 as pb
    path = Path(path)
    if path.is_dir():
        path = next(path.glob("run-*.wandb"))
    out: dict[str, Any] = {"id": None, "project": None, "name": None, "group": None, "job_type": None,
                           "config": {}, "summary": {}, "history": [], "artifacts": [], "exit_code": None}
    for payload in _records(path.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        _read_record(rec, out)
    out["config"].pop("_wandb", None)
    return out


def _read_record(rec: Any, out: dict[str, Any]) -> None:
    kind = rec.WhichOneof("record_type")
    if kind == "run":
        r = rec.run
        out.update(id=r.run_id, project=r.project, name=r.display_name, group=r.run_group, job_type=r.job_type)
        _apply(out["config"], r.config.update)
    elif kind == "config":
        _apply(out["config"], rec.config.update)
    elif kind == "history":
        row: dict[str, Any] = {}
        _apply(row, rec.history.item)
        out["history"].append(row)
    elif kind == "summary":
        _apply(out["summary"], rec.summary.update)
        for item in rec.summary.remove:
            out["summary"].pop(_key(item), None)
    elif kind == "artifact":
        a = rec.artifact
        out["artifacts"].append({"name": a.name, "type": a.type, "files": [c.path for c in a.manifest.contents]})
    elif kind == "exit":
        out["exit_code"] = rec.exit.exit_code
