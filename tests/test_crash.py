"""Crash safety: a sweep SIGKILLed in every phase, then rerun, loses, duplicates and corrupts nothing.

The kills come from bench.core.faults (BENCH_CRASH_AT=<point>: the process SIGKILLs itself at that point), so each
one lands inside its phase every time; the test profile's phases last well under a second, too short to hit
reliably by watching a child's output.
"""
import pytest
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd

from bench.core.io import sha256_file
from bench.trial.results import ResultsTable
from sweeps.config import SweepConfig
from sweeps.study import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, "-m", "bench", "sweep", "--model", "resnet20", "--dataset", "synthetic", "--profile", "test",
         "--methods", "decore", "--trials", "2", "--device", "cpu", "--wandb", "off", "--control", "none"]
CFG = SweepConfig("resnet20", "synthetic", profile="test", methods=("decore",), control=False)
COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def _sweep(results: Path, crash: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESULTS_DIR": str(results), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("BENCH_CRASH_AT", None)
    if crash:
        env["BENCH_CRASH_AT"] = crash
    r = subprocess.run(SWEEP, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == (-signal.SIGKILL if crash else 0), (crash, r.returncode, r.stderr[-2000:])
    return r


def _trial_rows(folder: Path) -> pd.DataFrame:
    df = ResultsTable(folder).read()
    return df[df["row_type"] == "trial"]


@pytest.mark.slow
def test_sigkill_in_every_phase_then_rerun(tmp_path):
    folder = tmp_path / CFG.experiment
    _sweep(tmp_path, "baseline")  # killed after the baseline's epoch, before its cache entry is written
    assert not list((tmp_path / "baselines").glob("*/meta.json")) and not (folder / "runs.csv").exists()

    _sweep(tmp_path, "joint")  # the baseline is cached; killed in DECORE's joint phase of the first trial
    (base,) = (tmp_path / "baselines").glob("*/meta.json")
    base_sha, base_mtime = json.loads(base.read_text())["sha256"], base.stat().st_mtime_ns
    assert sha256_file(base.parent / "model.pt") == base_sha and _trial_rows(folder).empty

    r = _sweep(tmp_path, "finetune")  # the interrupted trial runs again; killed while fine-tuning it
    assert "were interrupted; they run again" in r.stdout and _trial_rows(folder).empty

    _sweep(tmp_path, "results")  # killed between writing runs.csv and runs.parquet, the trial's row in the csv only
    finished = _trial_rows(folder)
    assert len(finished) == 1 and (finished["status"] == "complete").all()
    assert (pd.read_parquet(folder / "runs.parquet")["row_type"] == "trial").sum() == 0

    _sweep(tmp_path, None)
    trials = _trial_rows(folder)
    assert len(trials) == 2 and trials["config_hash"].is_unique and (trials["status"] == "complete").all()
    kept = trials.set_index("config_hash").loc[finished["config_hash"]]
    assert kept["wall_seconds"].tolist() == finished["wall_seconds"].tolist()  # the finished trial was not rerun
    assert pd.read_parquet(folder / "runs.parquet").shape == ResultsTable(folder).read().shape
    assert base.stat().st_mtime_ns == base_mtime and sha256_file(base.parent / "model.pt") == base_sha

    study = optuna.load_study(study_name=CFG.study_name("decore"), storage=f"sqlite:///{folder / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(COMPLETE) == 2 and states.count(FAIL) == 3  # killed in joint, fine-tune, results
    killed = [t for t in study.trials if t.state == FAIL]
    redone = [t for t in study.trials if t.state == COMPLETE and t.user_attrs.get("retry_of") == killed[-1].number]
    assert len(redone) == 1 and redone[0].params == killed[0].params  # the same trial, redone and completed once

    for path in tmp_path.rglob("*.json"):  # no half-written file anywhere
        json.loads(path.read_text())
    assert not [p for p in tmp_path.rglob("*.tmp*") if not p.name.endswith(".lock")]


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_a_diverging_trial_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
    recipe = json.loads((ROOT / "bench" / "engine" / "recipes" / "test-micro.json").read_text())
    (tmp_path / "explode.json").write_text(json.dumps({**recipe, "lr": 1e12, "name": "explode"}))
    profile = json.loads((ROOT / "sweeps" / "profiles" / "test.json").read_text())
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "diverge.json").write_text(json.dumps({**profile, "joint_recipe": str(tmp_path / "explode.json")}))
    monkeypatch.setattr("sweeps.profile.PROFILE_DIR", profiles)

    # the paper budget: under the equal one random trains the joint phase's share on DECORE's (exploding) recipe
    # and diverges too, as it should; here only DECORE's phase reads the broken recipe
    cfg = SweepConfig("resnet20", "synthetic", profile="diverge", methods=("decore", "random"), trials=1, device="cpu",
                      wandb="off", control=False, budget="paper")
    folder = run_sweep(cfg)
    trials = _trial_rows(folder).set_index("method")
    assert trials.loc["decore", "status"] == "failed" and "loss became" in trials.loc["decore", "reason"]
    assert trials.loc["random", "status"] == "complete"
    study = optuna.load_study(study_name=cfg.study_name("decore"), storage=f"sqlite:///{folder / 'optuna.db'}")
    (t,) = study.trials
    assert t.state == FAIL and "loss became" in t.user_attrs["reason"]
