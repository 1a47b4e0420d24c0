"""What a sweep is: `SweepConfig` (everything that changes a number, hashed into the experiment's name) and its
validation against the profile."""
from __future__ import annotations


import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


import methods
from bench.core.errors import UserError
from bench.core.version import engine_version
from bench.engine.baseline import weights_identity, weights_source
from bench.engine.data import data_fingerprint
from bench.engine.recipe import load_recipe
from bench.engine.splits import check_selection
from bench.engine.train import resolve_device
from bench.trial.results import ResultsTable
from bench.trial.run import experiment_dir, experiment_name, imported_selection

from .profile import Profile, load_profile



@dataclass(frozen=True)
class SweepConfig:
    model: str
    dataset: str
    profile: str = "smoke"
    methods: tuple[str, ...] = ("decore", "l1", "random")
    trials: int | None = None           # per method; None: the profile's
    seeds: int = 1
    storage: str | None = None          # None: sqlite in the experiment folder
    workers: int = 1
    device: str = "auto"
    scope: str | None = None            # None: each method's default
    match: str | None = "decore"        # "decore": the other methods at every DECORE trial's FLOPs; None: off
    round_to: int = 1
    wandb: str = "auto"
    sampler_seed: int = 0
    compile: bool = False               # torch.compile the method's training and fine-tuning (GPUs)
    budget: str = "equal"               # equal: the same training images after the baseline; paper: each its own
    selection: str = "val"              # val: decisions read a hold-out of the training set; test: papers' practice
    control: bool = True                # the no-pruning control per seed (the baseline trained on, same budget)
    scratch: tuple[str, ...] = ()       # scratch-b / scratch-e of every DECORE trial (Liu et al. 2019), --control
    scratch_at: float | None = None     # scratch controls only of each seed's DECORE trial nearest this FLOPs removed
    pretrained: bool = False            # the baseline is timm's pretrained weights for the model (--pretrained)
    checkpoint: str | None = None       # the baseline is this state_dict of the user's (--checkpoint)
    # --round-to auto: the measurement behind round_to (bench.deploy.align); recorded in experiment.json, not in the
    # identity (which holds the chosen number: auto and the same number typed by hand share an experiment)
    alignment: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    deploy_form: str = "eager"          # the form the measuring pass times speed-ups in (and --round-to auto aligns
                                        # for): eager, folded, onnxruntime; latency columns only, not in the identity
    # write the experiment's report at the end (plots, tables, README); False (--no-report, or BENCH_SWEEP_REPORT=0
    # where no flag is given) leaves it to `python -m bench report`: output only, not in the identity
    report: bool = field(default_factory=lambda: os.environ.get("BENCH_SWEEP_REPORT", "1") != "0", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "selection", imported_selection(self.selection, self.pretrained, self.checkpoint))

    def identity(self) -> dict[str, Any]:
        """Everything that changes a number, except the method's own code (in the study name and trial hash)."""
        profile = load_profile(self.profile)
        recipes = sorted({profile.baseline_for(_timm(self.model)), profile.joint_recipe, profile.finetune_recipe,
                          *profile.paper_finetune.values()})
        return {"profile": profile.identity(), "recipes": {r: load_recipe(r).to_dict() for r in recipes},
                "scope": self.scope, "round_to": self.round_to, "budget": self.budget, "selection": self.selection,
                "data": _fingerprint(self.dataset), **weights_identity(self.model, self.pretrained, self.checkpoint)}

    @functools.cached_property
    def experiment(self) -> str:
        return experiment_name(self.model, self.dataset, self.profile, self.identity())

    @property
    def folder(self) -> Path:
        return experiment_dir(self.experiment)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.folder / 'optuna.db'}"

    def study_name(self, method: str) -> str:
        """One study per method code and engine version: a changed engine searches (and trains) again."""
        return f"{self.experiment}-{method}-{methods.code_version(method)}-{engine_version()}"

    def protocol(self) -> dict[str, Any]:
        return {"budget": self.budget, "selection": self.selection, "match": self.match, "scope": self.scope,
                "round_to": self.round_to, "control": self.control, "scratch": self.scratch,
                **({"scratch_at": self.scratch_at} if self.scratch_at is not None else {})}

    def baseline_weights(self) -> dict[str, Any]:
        """get_baseline's arguments for where the baseline's weights come from."""
        return {"pretrained": self.pretrained, "checkpoint": self.checkpoint}


def _fingerprint(dataset: str) -> str:
    """The data's fingerprint in the identity. The synthetic set is made from fixed seeds, so its fingerprint (the
    set made again, 0.1 s) is taken once per process; CIFAR's file hashes are memoised by size and mtime already.
    (The memo belongs in bench.engine.data.data_fingerprint, which TrialConfig calls too; that is an engine file,
    whose every change changes every trial key: move it there with the next engine change.)"""
    return _synthetic_fingerprint() if dataset == "synthetic" else data_fingerprint(dataset)


@functools.lru_cache(maxsize=1)
def _synthetic_fingerprint() -> str:
    return data_fingerprint("synthetic")


def validate(cfg: SweepConfig) -> Profile:
    """Everything typed by the user, checked before anything trains or is written."""
    profile = load_profile(cfg.profile)
    if not cfg.methods:
        raise UserError("no method given (--methods / METHODS is empty): name one or more, e.g. --methods decore,l1,random")
    for m in cfg.methods:
        try:
            methods.get_method(m)
        except methods.KnobError as e:
            raise UserError(str(e)) from None
        if m not in profile.methods:
            raise UserError(f"profile {cfg.profile!r} has no search space for method {m!r}: add it to sweeps/profiles/{cfg.profile}.json")
    for name, value in (("TRIALS", cfg.trials if cfg.trials is not None else profile.trials), ("SEEDS", cfg.seeds),
                        ("WORKERS", cfg.workers)):
        if value < 1:
            raise UserError(f"{name}={value} must be at least 1")
    partners = cfg.match == "decore" and "decore" in cfg.methods
    idle = [m for m in cfg.methods if profile.trials_for(m, cfg.trials) == 0 and not partners]
    if idle:
        raise UserError(f"{', '.join(idle)} run only as DECORE's matched partners in profile {cfg.profile!r} (trials 0), "
                        "and this sweep has no DECORE trial to match: add decore to --methods and keep --match decore, "
                        "or give --trials")
    if cfg.match not in (None, "decore"):
        raise UserError(f"--match {cfg.match!r} is not supported: use --match decore (the default) or --match none")
    if cfg.budget not in ("equal", "paper"):
        raise UserError(f"--budget {cfg.budget!r} is unknown: use equal (the default) or paper")
    check_selection(cfg.selection)
    resolve_device(cfg.device)
    _check_weights(cfg, profile)
    ResultsTable(cfg.folder).read()  # a table broken by hand is refused before anything trains or is written
    return profile


def _check_weights(cfg: SweepConfig, profile: Profile) -> None:
    """A profile that starts from trained weights gets them; weights exist (a file, timm's for this model)."""
    weights = weights_source(cfg.model, cfg.pretrained, cfg.checkpoint)
    if weights is None and profile.start_from_weights:
        raise UserError(f"profile {cfg.profile!r} starts from trained weights and does not train {cfg.model} itself: "
                        "pass --pretrained (timm's weights, downloaded once; with make: SWEEP_ARGS=--pretrained) "
                        "or --checkpoint PATH (a state_dict of your own)")
    unknown = set(cfg.scratch) - {"scratch-b", "scratch-e"}
    if unknown:
        raise UserError(f"scratch controls {sorted(unknown)} are unknown: use scratch-b, scratch-e")
    if cfg.scratch_at is not None and not (cfg.scratch and 0 < cfg.scratch_at < 1):
        raise UserError(f"--scratch-at {cfg.scratch_at:g} picks the DECORE trial nearest a fraction of the FLOPs removed: "
                        "give one between 0 and 1 (e.g. 0.5) with --control scratch-b or scratch-e")
    if weights is not None and cfg.scratch:
        raise UserError("--control scratch-b/scratch-e scale the baseline's training images, and a baseline from "
                        "--pretrained or --checkpoint has no image count here: use --control keep")


MATCH_METHODS_EXCLUDED = ("decore", "control")


def _timm(model: str) -> str:
    import models

    return models.resolve(model)
