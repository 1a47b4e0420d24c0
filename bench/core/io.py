"""Atomic files, hashes and safe checkpoint loading: nothing half-written, nothing pickled."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core.errors import UserError

if TYPE_CHECKING:
    import torch


def config_hash(obj: Any, length: int = 12) -> str:
    """Content hash of a JSON-able object (sorted keys, no timestamps): a cache key."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file_cached(path: str | Path) -> str:
    """sha256_file memoised per path, size and mtime (a changed file is hashed again): for inputs a run names
    many times, such as data files and user checkpoints."""
    st = os.stat(path)
    return _sha256_memo(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_memo(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temporary file beside `path`, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(folder: str | Path, name: str = "RESULTS_DIR") -> None:
    """Refuse a folder that cannot be created or written, before anything trains; leaves nothing behind
    (the probe is an unnamed temporary file in the nearest existing parent)."""
    folder = Path(folder).absolute()
    probe = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is a file")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UserError(f"{name}={str(folder)!r} is not writable ({e.strerror or e}): "
                        f"set {name} to a folder you can write, e.g. {name}=./results") from None


def write_json(path: str | Path, obj: Any) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
    return atomic_write(path, _write)


def read_json(path: str | Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"no such file {str(path)!r}: check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{str(path)!r} is not valid JSON ({e}): delete or fix it") from None


def save_state_dict(path: str | Path, state: dict[str, Any]) -> Path:
    import torch  # here, not above: `bench status` and the other light commands never load torch

    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint with `weights_only=True`; accepts a bare state_dict or common wrappers."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist: check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of modules, random bytes ...
        raise UserError(
            f"checkpoint {str(path)!r} cannot be loaded safely ({_load_failure(e)}): "
            "pass a state_dict saved with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {str(path)!r} holds no state_dict of tensors: save model.state_dict()")
    # weights saved from DataParallel / torch.compile carry a prefix
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


_PICKLED_CLASS = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _load_failure(e: Exception) -> str:
    """torch.load's multi-paragraph errors, in a few words for a one-line message."""
    text = str(e)
    if isinstance(e, EOFError) or not text.strip():
        return f"not a torch checkpoint: the file is empty or cut short ({type(e).__name__})"
    if "central directory" in text or "zip archive" in text:
        return "a truncated or corrupt zip archive"
    if m := _PICKLED_CLASS.search(text):
        return f"it pickles the Python object {m.group(1)}, which weights_only=True refuses"
    if "WeightsUnpickler error:" in text:
        detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        return f"not a torch checkpoint: {detail[:80]}"
    # anything else (bytes that are neither a zip archive nor a pickle fail in many ways): the same answer
    first = re.sub(r"\x1b\[[0-9;]*m", "", text.strip().splitlines()[0])[:80]
    return f"not a torch checkpoint: {type(e).__name__}: {first}"


def scrub_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def results_dir() -> Path:
    """RESULTS_DIR (default `results`), where every command writes and reads experiments."""
    return Path(os.environ.get("RESULTS_DIR", "results")).expanduser()
