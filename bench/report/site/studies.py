"""Optuna's own figures for the experiment's studies: optimisation history and parameter importances.

Read from `optuna.db` in the experiment folder (the sweep's default storage), never written. Studies on
another storage (PostgreSQL, a journal file) are skipped; `dashboard_command` tells how to browse them.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna
import plotly.graph_objects as go

DB = "optuna.db"


def dashboard_command() -> str:
    """Run in the experiment folder (a relative path, so the line holds on any machine)."""
    return f"pip install optuna-dashboard && optuna-dashboard sqlite:///{DB}"


def load_studies(folder: Path) -> list[optuna.Study]:
    """The studies stored in folder/optuna.db ([] when there is none or it cannot be read)."""
    path = Path(folder) / DB
    if not path.is_file():
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{path.resolve()}"
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(url)]
        return [optuna.load_study(study_name=n, storage=url) for n in sorted(names)]
    except Exception as e:  # a broken or foreign database must not break the site
        logging.getLogger(__name__).warning("cannot read %s: %s", path, e)
        return []


def _target(study: optuna.Study):
    # the sweep's studies are multi-objective (top-1 up, FLOPs down): Optuna's plots need one target
    if len(study.directions) == 1:
        return None, "objective"
    return (lambda t: t.values[0]), "top-1 (%)"


def history_figure(study: optuna.Study) -> go.Figure | None:
    """optuna.visualization.plot_optimization_history of the study's first objective; None if it has no trial."""
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return None
    target, name = _target(study)
    fig = optuna.visualization.plot_optimization_history(study, target=target, target_name=name)
    fig.update_layout(title=f"Optimisation history: {study.study_name}", height=420)
    return fig


def importance_figure(study: optuna.Study) -> go.Figure | None:
    """optuna.visualization.plot_param_importances; None when Optuna cannot compute them (too few trials)."""
    target, name = _target(study)
    try:
        # Optuna's default evaluator (PED-ANOVA, deterministic) ranks params for *low* target values:
        # a maximised objective is negated, which leaves the importances' meaning (and the name) intact
        if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE:
            first = target or (lambda t: t.value)
            target = lambda t: -first(t)  # noqa: E731
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "importances will be equal" with few trials
            fig = optuna.visualization.plot_param_importances(study, target=target, target_name=name)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None
    fig.update_layout(title=f"Parameter importances: {study.study_name}", height=320)
    return fig
