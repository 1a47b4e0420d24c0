"""Training recipes as data: named JSON files in bench/engine/recipes/ (or any JSON path) -> a frozen Recipe."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import UserError

RECIPE_DIR = Path(__file__).parent / "recipes"
SCHEDULES = ("cosine", "multistep", "constant")


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    subset_per_class: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"recipe {self.name!r}: schedule {self.schedule!r} is unknown: use one of {', '.join(SCHEDULES)}")
        for field, value in (("epochs", self.epochs), ("batch_size", self.batch_size), ("lr", self.lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UserError(f"recipe {self.name!r}: {field}={value!r} must be a positive number")
        if int(self.epochs) != self.epochs:
            raise UserError(f"recipe {self.name!r}: epochs={self.epochs} must be a whole number")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise UserError(f"recipe {self.name!r}: warmup_epochs={self.warmup_epochs} must lie in [0, epochs={self.epochs}]")

    def to_dict(self) -> dict[str, Any]:
        """Everything that changes the weights (the description does not)."""
        d = dataclasses.asdict(self)
        d.pop("description")
        d["milestones"] = list(d["milestones"])
        return d

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def load_recipe(name_or_path: str) -> Recipe:
    """A recipe by name (bench/engine/recipes/<name>.json) or by path to a JSON file; each file is read once
    while it is unchanged (a Recipe is frozen, so the cached one is shared safely)."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = RECIPE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        close = difflib.get_close_matches(name_or_path, list_recipes(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(list_recipes())} or a .json path"
        raise UserError(f"unknown recipe {name_or_path!r}: {hint}")
    stat = path.stat()
    return _read_recipe(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _read_recipe(path: str, mtime_ns: int, size: int) -> Recipe:
    try:
        data = json.loads(Path(path).read_text())
        data["milestones"] = tuple(data.get("milestones", ()))
        return Recipe(name=data.pop("name", Path(path).stem), **data)
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"recipe file {path!r} is invalid ({e}): fix it against bench/engine/recipes/cifar-standard.json") from None
