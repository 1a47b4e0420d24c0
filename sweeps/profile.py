"""Run profiles as data: sweeps/profiles/<name>.json names the recipes of each phase and each method's
search space (DECORE's lambda as a fraction range of the baseline's break-even lambda, log scale). A profile
with "start_from_weights" (imagenet) never trains its baseline: the sweep needs --pretrained or --checkpoint."""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import UserError

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class MethodSpace:
    knob: str
    range: tuple[float, float] | None = None             # absolute range
    break_even_range: tuple[float, float] | None = None  # as fractions of the break-even lambda
    options: dict[str, Any] = field(default_factory=dict)
    values: tuple[float, ...] | None = None  # fixed knob values, each run once per seed (break-even fractions for
                                             # a break_even_range method) instead of values Optuna suggests
    trials: int | None = None                # this method's own trials (0: matched partners only); None: the profile's


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    baseline_recipe: str
    joint_recipe: str
    finetune_recipe: str
    trials: int
    methods: dict[str, MethodSpace]
    baseline_recipe_by_model: dict[str, str] = field(default_factory=dict)
    paper_finetune: dict[str, str] = field(default_factory=dict)  # --budget paper: a method's own fine-tuning recipe
    start_from_weights: bool = False  # the baseline is imported (--pretrained or --checkpoint), never trained here

    def baseline_for(self, model: str) -> str:
        return self.baseline_recipe_by_model.get(model, self.baseline_recipe)

    def identity(self) -> dict[str, Any]:
        """What of the profile changes a number. start_from_weights is a rule about what the user must pass (the
        weights themselves are part of the experiment's identity), so it is left out: earlier hashes stay."""
        d = dataclasses.asdict(self)
        d.pop("start_from_weights")
        for space in d["methods"].values():  # unset, they leave the hashes of earlier experiments as they were
            for key in ("values", "trials"):
                if space[key] is None:
                    space.pop(key)
        return d

    def trials_for(self, method: str, trials: int | None = None) -> int:
        """A method's own trials: `trials` (the command line's) when given, else its fixed values' count, else its
        own count, else the profile's."""
        space = self.methods[method]
        if trials is not None:
            return trials
        if space.values is not None:
            return len(space.values)
        return self.trials if space.trials is None else space.trials


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name: str) -> Profile:
    path = PROFILE_DIR / f"{name}.json"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_profiles(), n=2)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(list_profiles())}"
        raise UserError(f"unknown profile {name!r}: {hint}")
    data = json.loads(path.read_text())
    spaces = {}
    for method, spec in data.pop("methods").items():
        _check_space(name, method, spec)
        spaces[method] = MethodSpace(spec["knob"], tuple(spec["range"]) if "range" in spec else None,
                                     tuple(spec["break_even_range"]) if "break_even_range" in spec else None,
                                     dict(spec.get("options", {})),
                                     tuple(spec["values"]) if "values" in spec else None, spec.get("trials"))
    return Profile(name=name, methods=spaces, **data)


def _check_space(profile: str, method: str, spec: dict[str, Any]) -> None:
    """A method's fixed values and own trial count, checked when the profile is read."""
    values, trials = spec.get("values"), spec.get("trials")
    where = f"profile {profile!r}, method {method!r}"
    if values is not None and (not isinstance(values, list) or not values
                               or not all(isinstance(v, (int, float)) and v > 0 for v in values)):
        raise UserError(f"{where}: \"values\" {values!r} must be a non-empty list of positive numbers, e.g. [0.1, 0.2]")
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 0):
        raise UserError(f"{where}: \"trials\" {trials!r} must be a whole number of at least 0 (0: matched partner only)")
    if values is not None and trials is not None:
        raise UserError(f"{where}: give \"values\" (one trial each) or \"trials\", not both")
