"""The engine's version: a content hash of every module whose code can change a trial's numbers.

A trial's identity already holds its method's own code (`methods.code_version`); this is the rest of what
it runs on: the channel-group machinery (methods/core: groups, gates, shortcuts, surgery), the method
interface (methods/base.py) and bench's training loop, trial pipeline and budget rule, data loading and
splits, recipes, baselines, FLOPs/params counting and the scratch controls. Trial keys, Optuna study
names and the results table's `engine_version` column carry it, so changed engine code trains again and
rows of different engines are never merged; unchanged code hashes the same and reuses every trial.

Files are hashed from disk once per process (the code that runs is the code imported at start), so an
edit during a sweep changes nothing until the next run.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# relative to the repository root; a folder stands for its *.py files
ENGINE_FILES: tuple[str, ...] = (
    "methods/core",
    "methods/base.py",
    "bench/engine/train.py",        # the training loop, optimiser and schedule
    "bench/trial/run.py",           # the trial pipeline and the equal budget
    "bench/engine/data.py",         # loading and augmentation
    "bench/engine/splits.py",       # the selection splits
    "bench/engine/imagefolder.py",  # image folders: their splits and transforms
    "bench/engine/recipe.py",       # how a recipe file becomes a schedule
    "bench/engine/baseline.py",     # the baseline a trial starts from
    "bench/engine/measure.py",      # FLOPs and parameter counting
    "bench/trial/scratch.py",       # the scratch controls' budgets
)


def engine_files(root: Path = ROOT) -> list[Path]:
    """The files `engine_version` hashes, in a fixed order (a missing one is an error: the list is stale)."""
    out = []
    for rel in ENGINE_FILES:
        path = root / rel
        if path.is_dir():
            out.extend(sorted(path.glob("*.py")))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"engine file {rel} is missing under {root}: update bench.core.version.ENGINE_FILES")
    return out


@functools.lru_cache(maxsize=8)
def engine_version(root: Path = ROOT) -> str:
    """10 hex digits of a sha256 over the engine files' relative paths and contents."""
    h = hashlib.sha256()
    for path in engine_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:10]
