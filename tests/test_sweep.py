"""The sweep on the synthetic set: trials per method, the results table, resume, workers on a journal file."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from bench.core.errors import UserError
from bench.trial.results import COLUMNS, ResultsTable
from sweeps.config import SweepConfig
from sweeps.study import run_sweep

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw):
    return SweepConfig("resnet20", "synthetic", profile="test", device="cpu", **kw)


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_sweep_trials_per_method_then_resume_and_top_up(capsys, monkeypatch):
    folder = run_sweep(_cfg(trials=1, match=None, report=True))
    assert (folder / "README.md").is_file() and (folder / "pareto.png").is_file()
    df = ResultsTable(folder).read()
    assert list(df.columns) == list(COLUMNS)
    assert (df["row_type"] == "baseline").sum() == 1
    trials = df[df["row_type"] == "trial"]
    assert trials.groupby("method").size().to_dict() == {"decore": 1, "l1": 1, "random": 1, "control": 1}
    assert (trials["status"] == "complete").all() and trials["config_hash"].is_unique
    assert trials["pareto"].any() and trials["flops"].le(trials["base_flops"]).all()
    assert set(trials.loc[trials["method"] == "decore", "knob_name"]) == {"lambda"}
    assert pd.read_parquet(folder / "runs.parquet").shape == df.shape
    out = capsys.readouterr().out
    assert "plan:" in out and "estimate" in out and f"report: {folder / 'README.md'}" in out
    assert re.search(r"measured here, which took \d+ s before this line and is not in the estimate", out)
    for line in ("selection split: validation hold-out", "budget: equal", "no-pruning control", "break-even lambda"):
        assert line in out
    # the budget every method trained on after the baseline, counted by the engine, is the same
    assert trials["budget_images"].nunique() == 1 and trials["budget_images"].iloc[0] > 0
    assert set(trials["budget"]) == {"equal"} and set(trials["selection"]) == {"val"}

    before = (folder / "runs.csv").read_text()
    with monkeypatch.context() as m:  # everything finished: no trial runs, nothing changes
        m.setattr("sweeps.objective.run_trial", lambda *a, **k: pytest.fail("a finished sweep ran a trial again"))
        run_sweep(_cfg(trials=1, match=None))
    assert (folder / "runs.csv").read_text() == before

    readme = (folder / "README.md").read_text()
    run_sweep(_cfg(trials=2, methods=("l1",), match=None, report=False))  # topping up runs only the missing trial
    assert "report: not written (--no-report)" in capsys.readouterr().out
    assert (folder / "README.md").read_text() == readme  # left as it was, for `bench report`
    df = ResultsTable(folder).read()
    assert (df["method"] == "l1").sum() == 2 and (df["method"] == "decore").sum() == 1
    assert df.loc[df["method"] == "l1", "knob_value"].nunique() == 2  # the study's second suggestion, not the first again


def test_no_report_flag_and_its_environment_default(monkeypatch):
    from bench.cli import build_parser
    from sweeps.plan import sweep_config

    argv = ["sweep", "--model", "resnet20", "--dataset", "synthetic", "--profile", "test", "--device", "cpu"]
    monkeypatch.setenv("BENCH_SWEEP_REPORT", "1")
    assert sweep_config(build_parser().parse_args(argv)).report  # the default: the sweep writes its report
    assert not sweep_config(build_parser().parse_args(argv + ["--no-report"])).report
    monkeypatch.setenv("BENCH_SWEEP_REPORT", "0")
    assert not sweep_config(build_parser().parse_args(argv)).report
    assert _cfg().experiment == _cfg(report=True).experiment  # output only: not in the experiment's identity


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_workers_on_a_journal_file(tmp_path):
    journal = tmp_path / "studies.log"
    cfg = _cfg(trials=2, methods=("random",), workers=2, storage=f"journal:{journal}", control=False)
    folder = run_sweep(cfg)
    df = ResultsTable(folder).read()
    assert (df["method"] == "random").sum() == 2 and df["config_hash"].is_unique
    study = optuna.load_study(study_name=cfg.study_name("random"),
                              storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))))
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # two processes did the work


@pytest.mark.parametrize("kw, message", [
    ({"trials": 0}, "TRIALS=0 must be at least 1"),
    ({"methods": ("decor",)}, "did you mean decore"),
    ({"profile": "smok"}, "unknown profile 'smok': did you mean smoke"),
    ({"storage": "postgresql://u:secret@127.0.0.1:1/db"}, "cannot open Optuna storage 'postgresql://u:***@127.0.0.1:1/db'"),
])
def test_bad_sweep_input(kw, message, tmp_path):
    base = dict(profile="test")
    base.update(kw)
    cfg = SweepConfig("resnet20", "synthetic", device="cpu", **base)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("*", r"\*")):
        run_sweep(cfg)
    assert not (Path(os.environ["RESULTS_DIR"]) / "baselines").exists()


@pytest.mark.slow
def test_sigkill_mid_trial_loses_and_duplicates_nothing(tmp_path):
    env = {**os.environ, "RESULTS_DIR": str(tmp_path)}
    args = [sys.executable, "-m", "bench", "sweep", "--model", "resnet20", "--dataset", "synthetic", "--profile", "test",
            "--methods", "l1", "--trials", "2", "--device", "cpu", "--control", "none", "--match", "none"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    csv = tmp_path / SweepConfig("resnet20", "synthetic", profile="test").experiment / "runs.csv"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once the first trial is in the table: the second is running
        if csv.exists() and (pd.read_csv(csv)["row_type"] == "trial").sum() >= 1:
            break
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before it could be killed: {proc.stdout.read()[-2000:]}")
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"no trial in {csv} after 240 s: {proc.communicate()[0][-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = pd.read_csv(csv)
    done = set(first.loc[first["row_type"] == "trial", "config_hash"])
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(csv)
    trials = df[df["row_type"] == "trial"]
    assert len(trials) == 2 and trials["config_hash"].is_unique, (len(trials), r.stdout[-3000:])
    assert done <= set(trials["config_hash"])  # nothing finished was lost


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_matched_partners_by_default_at_decores_scope(tmp_path):
    # fast agents and a low lambda, so that the one DECORE trial removes channels and gets partners; l1 and random
    # run no trial of their own (a profile's per-method trials 0): only the partners
    import json as _json
    from sweeps.objective import Objective
    profile = _json.loads((ROOT / "sweeps" / "profiles" / "test.json").read_text())
    profile["trials"] = 1
    for m in ("l1", "random"):
        profile["methods"][m]["trials"] = 0
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "test.json").write_text(_json.dumps(profile))
    with pytest.MonkeyPatch.context() as m:
        m.setattr("sweeps.profile.PROFILE_DIR", tmp_path / "profiles")
        m.setattr(Objective, "knob", lambda self, trial: {**({"lambda": 0.02, "agent_init": 0.5, "agent_lr": 0.2}
                                                              if self.method == "decore" else {"flops_target": 0.7})})
        folder = run_sweep(_cfg(control=False))
    df = ResultsTable(folder).read()
    decore = df[(df["method"] == "decore") & (df["row_type"] == "trial")].iloc[0]
    assert float(decore["flops"]) < float(decore["base_flops"])
    matched = df[df["study"].str.endswith("-match", na=False)]
    assert sorted(matched["method"]) == ["l1", "random"]
    assert df.loc[df["method"].isin(["l1", "random"]), "study"].str.endswith("-match").all()  # no trial of their own
    assert set(matched["match_of"]) == {decore["config_hash"]} and set(matched["scope"]) == {decore["scope"]}
    target = float(decore["flops"]) / float(decore["base_flops"])
    assert (matched["flops"] / matched["base_flops"]).between(target * 0.99 - 1e-9, target * 1.01 + 1e-9).all()
    # the closest plan at or below DECORE's FLOPs (one exists within 1% here), and the signed gap recorded
    assert (matched["flops"] <= decore["flops"]).all()
    gap = 100 * (matched["flops"].astype(float) - float(decore["flops"])) / float(decore["flops"])
    assert np.allclose(matched["flops_gap_pct"].astype(float), gap) and (matched["flops_gap_pct"] <= 0).all()
    assert set(matched["knob_name"]) == {"flops_target"}
    # the equal budget: every method trained on as many images after the baseline as DECORE (engine-counted)
    trials = df[df["row_type"] == "trial"]
    assert (trials["budget_images"] == decore["budget_images"]).all()
    assert int(decore["method_images"]) > 0 and (trials[trials["method"] != "decore"]["method_images"] == 0).all()


def test_measure_rates_counts_a_pruned_copy_and_fixed_costs():
    from bench.engine.data import load_dataset
    from bench.engine.recipe import load_recipe
    from sweeps.plan import measure_rates

    r = measure_rates("resnet20", load_dataset("synthetic", selection="val"), load_recipe("test-micro"),
                      torch.device("cpu"), batches=1)
    for v in (r.train, r.eval, r.train_pruned, r.eval_pruned, r.trace, r.count, r.latency):
        assert 0 < v < 60
    assert r.trial_train >= r.train and r.trial_eval >= r.eval
    assert r.per_trial(True) > r.per_trial(False) > r.latency


def test_profile_auto_on_a_cpu_takes_fewer_trials_when_no_profile_fits(monkeypatch):
    from sweeps import config, plan

    rates = plan.Rates(train=1e-3, eval=1e-4, trace=0.1, count=0.5, latency=10.0, train_pruned=2e-3, eval_pruned=1e-4)
    monkeypatch.setattr(plan, "measure_rates", lambda *a, **k: rates)
    cfg = config.SweepConfig("resnet20", "synthetic", profile="auto", device="cpu")
    imgs = {k: plan.plan_images(plan.dataclasses.replace(cfg, profile="smoke"), plan.load_profile("smoke"), k,
                                 plan.load_dataset("synthetic", selection="val")) for k in (1, 3)}
    one, three = (plan.estimate_seconds(imgs[k], rates) / 60 for k in (1, 3))
    # the estimate counts every trial's fixed cost, and the FLOPs bisection of matched and flops_target trials
    assert imgs[3]["n_trials"] == 16 and imgs[3]["n_bisect"] == 12
    fixed = (16 * rates.per_trial(False) + 12 * (rates.per_trial(True) - rates.per_trial(False))) / 60
    assert three > fixed > 0
    # evaluation images: each trial reads the selection split twice and the test set once; the baseline both once;
    # the break-even pass at most one epoch of the joint loader, and only when DECORE is swept
    data = plan.load_dataset("synthetic", selection="val")
    info, smoke = data.split_info(), plan.load_profile("smoke")
    val, test = info["val_images"], info["test_images"]
    for methods, break_even in ((("decore", "l1", "random"), min(plan.BREAK_EVEN_IMAGES, imgs[3][f"n:{smoke.joint_recipe}"])),
                                (("l1", "random"), 0)):
        e = plan.plan_images(plan.dataclasses.replace(cfg, profile="smoke", methods=methods), smoke, 3, data)
        assert e["evals"] == e["n_trials"] * (2 * val + test) + val + test + break_even
    monkeypatch.setattr(plan, "AUTO_CPU_MINUTES", (one + three) / 2)  # smoke fits with 1 trial, not with 3
    profile, trials, line = plan.choose_profile(cfg, torch.device("cpu"))
    assert (profile, trials) in {("smoke", 1), ("smoke", 2)} and f"smoke with {trials} trial(s) per method" in line
    profile, trials, line = plan.choose_profile(plan.dataclasses.replace(cfg, trials=3), torch.device("cpu"))
    assert (profile, trials) == ("smoke", 3) and "the cheapest" in line  # an explicit trial count is obeyed
    monkeypatch.setattr(plan, "AUTO_CPU_MINUTES", one / 2)  # not even one trial fits: one, and it says so
    assert plan.choose_profile(cfg, torch.device("cpu"))[1] == 1


@pytest.mark.slow
def test_fixed_knob_values_and_partner_only_methods(monkeypatch, synthetic):
    """A profile's fixed values run once each (break-even fractions scaled), a method with trials 0 runs none of its
    own, the plan counts both, and --scratch-at picks each seed's DECORE trial nearest the point."""
    import dataclasses as dc

    from sweeps import objective, plan, study
    from sweeps.profile import load_profile

    base = load_profile("test")
    spaces = {**base.methods, "decore": dc.replace(base.methods["decore"], values=(0.1, 0.3)),
              "l1": dc.replace(base.methods["l1"], trials=0)}
    profile = dc.replace(base, methods=spaces)
    assert profile.trials_for("decore") == 2 and profile.trials_for("l1") == 0 and profile.trials_for("random") == 2
    assert profile.trials_for("l1", 3) == 3  # the command line's count is obeyed
    assert base.identity() == load_profile("test").identity() and "values" not in str(base.identity())
    ran = []

    def fake(cfg, tc, data, study_name, number, **kw):
        ran.append((tc.method, tc.knobs.get("lambda"), tc.seed))
        return {"status": "complete", "val_top1_pct": 50.0, "flops": 1.0}
    monkeypatch.setattr(objective, "run_and_record", fake)
    cfg = _cfg(methods=("decore", "l1"), seeds=2, control=False)
    study.run_studies(cfg, study.Setup(profile, None, synthetic, {}, break_even=4.0))
    assert sorted(ran) == [("decore", 0.4, 0), ("decore", 0.4, 1), ("decore", 1.2, 0), ("decore", 1.2, 1)]
    study.run_studies(cfg, study.Setup(profile, None, synthetic, {}, break_even=4.0))  # resumed: nothing runs again
    assert len(ran) == 4

    imgs = plan.plan_images(cfg, profile, None, synthetic)
    assert imgs["n_trials"] == 2 * (2 + 0 + 2)  # per seed: two DECORE trials, no l1 trial of its own, two partners
    scratch = plan.plan_images(dc.replace(cfg, scratch=("scratch-b",), scratch_at=0.5), profile, None, synthetic)
    assert scratch["n_trials"] == imgs["n_trials"] + 2 and scratch["trials"] > imgs["trials"]

    rows = pd.DataFrame({"seed": [0, 0, 0, 1, 1], "flops_reduction_pct": [20.0, 36.0, 52.0, 44.0, 61.0]})
    assert study.nearest_per_seed(rows, 0.5)["flops_reduction_pct"].tolist() == [52.0, 44.0]
    with pytest.raises(UserError, match="--scratch-at 1.5"):
        config_module = __import__("sweeps.config", fromlist=["validate"])
        config_module._check_weights(dc.replace(cfg, scratch=("scratch-b",), scratch_at=1.5), profile)


def test_profile_fields_checked_and_partner_only_methods_need_decore(tmp_path, monkeypatch):
    import json as _json

    from sweeps import status, study
    from sweeps.config import validate
    from sweeps.profile import load_profile

    profile = _json.loads((ROOT / "sweeps" / "profiles" / "test.json").read_text())
    for bad, message in (({"values": []}, "must be a non-empty list"), ({"trials": -1}, "at least 0"),
                         ({"values": [0.1], "trials": 1}, "not both")):
        broken = {**profile, "methods": {**profile["methods"], "decore": {**profile["methods"]["decore"], **bad}}}
        (tmp_path / "broken.json").write_text(_json.dumps(broken))
        with monkeypatch.context() as m:  # (undo() would also undo conftest's RESULTS_DIR)
            m.setattr("sweeps.profile.PROFILE_DIR", tmp_path)
            with pytest.raises(UserError, match=message):
                load_profile("broken")
    with pytest.raises(UserError, match="run only as DECORE's matched partners"):
        validate(SweepConfig("resnet20", "synthetic", profile="cpu-agents", methods=("l1",), device="cpu"))
    # launch.json's wanted trials per method (older files: one count for every method)
    assert status.wanted_of({"trials": {"decore": 3, "l1": 0}}, "l1") == 0 and status.wanted_of({"trials": 2}, "l1") == 2
    assert status.remaining_text({"decore": {"complete": 3}}, {"trials": {"decore": 3, "l1": 0}, "methods": ["decore", "l1"]},
                                 [], True) == "remaining: nothing, the report is written"

    # the break-even counts are measured once per experiment and seed, then read back by every later process
    cfg = _cfg(methods=("decore",))
    assert str(cfg.folder).startswith(os.environ["RESULTS_DIR"])  # the test's own folder, never the repository's
    cfg.folder.mkdir(parents=True)
    base = type("B", (), {"spec": type("S", (), {"key": "base-key"})(), "model": None})()
    monkeypatch.setattr(study, "train_accuracy", lambda *a, **k: (90, 100))
    data = study.load_dataset("synthetic", selection="val")
    assert study._break_even_counts(cfg, load_profile("test"), torch.device("cpu"), data, 0, base) == (90, 100)
    monkeypatch.setattr(study, "train_accuracy", lambda *a, **k: pytest.fail("measured again"))
    assert study._break_even_counts(cfg, load_profile("test"), torch.device("cpu"), data, 0, base) == (90, 100)


def test_sweep_workers_share_the_cores(monkeypatch):
    from sweeps.study import share_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(4)
        assert share_cores(1) == 4  # one worker keeps every core
        assert share_cores(2) == 2
        assert share_cores(8) == 1  # never below one thread
        torch.set_num_threads(4)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
        assert share_cores(2) == 4
    finally:
        torch.set_num_threads(before)
