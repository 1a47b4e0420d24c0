"""Budgeted search on the synthetic set: winners within budget, infeasible and pruned trials recorded as such."""
import json
from pathlib import Path

import optuna
import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.engine.measure import count_flops
from bench.deploy.pruned import load_pruned
from bench.trial.results import ResultsTable
from sweeps.budget import SearchConfig, parse_budget
from sweeps.search import run_search

STATES = optuna.trial.TrialState


def _cfg(**kw):
    return SearchConfig("resnet20", "synthetic", kw.pop("budget", "flops:0.5"), profile="test", device="cpu",
                        wandb="off", **kw)


def _study(cfg, method):
    return optuna.load_study(study_name=cfg.study_name(method), storage=cfg.sweep.storage_url)


class PruneTrialOne(optuna.pruners.BasePruner):
    """Stops trial 1 at its first report, so the test knows which trial must end PRUNED."""

    def prune(self, study, trial):
        return trial.number == 1


def test_a_search_searches_the_range_a_sweep_fixes():
    """cpu-agents fixes DECORE's lambdas for its sweep; a search of that profile still searches the break-even range,
    reaching DOWN_FACTOR lower, as for any profile."""
    from sweeps.objective import Objective
    from sweeps.profile import load_profile
    from sweeps.search import DOWN_FACTOR

    profile = load_profile("cpu-agents")
    values, (low, high) = profile.methods["decore"].values, profile.methods["decore"].break_even_range
    cfg = _cfg().sweep
    sweep = Objective(cfg, profile, "decore", 4.0)
    search = Objective(cfg, profile, "decore", 4.0, low_divisor=DOWN_FACTOR, fixed=False)
    assert sweep.knob_range() == (float(f"{min(values) * 4:.3g}"), float(f"{max(values) * 4:.3g}"))
    assert search.knob_range() == pytest.approx((low * 4 / DOWN_FACTOR, high * 4))
    assert search.knob_range()[0] < sweep.knob_range()[0]


@pytest.mark.parametrize("text, kind, value, fraction", [
    ("flops:0.5", "flops", 0.5, True), ("params:0.4", "params", 0.4, True), ("flops:60M", "flops", 60e6, False),
    ("params:0.4M", "params", 0.4e6, False), ("FLOPS:2.5g", "flops", 2.5e9, False), ("flops:123456", "flops", 123456, False),
    ("latency_ms:2.5", "latency_ms", 2.5, False),
])
def test_budget_parsing(text, kind, value, fraction):
    b = parse_budget(text)
    assert (b.kind, b.fraction) == (kind, fraction) and b.value == pytest.approx(value)
    assert b.limit({"flops": 40e6, "params": 0.27e6, "latency_ms": 3.0}) == pytest.approx(value * (40e6 if kind == "flops" else 0.27e6) if fraction else value)


@pytest.mark.parametrize("text, message", [
    ("flops", "is not KIND:VALUE"), ("flop:0.5", "did you mean flops"), ("flops:half", "is not a number"),
    ("flops:-1", "is not a number"), ("params:0", "must be positive"), ("latency_ms:2M", "without a K/M/G suffix"),
])
def test_bad_budgets_are_one_line_errors(text, message, capsys):
    with pytest.raises(UserError, match=message):
        parse_budget(text)
    assert main(["search", "--model", "resnet20", "--dataset", "synthetic", "--profile", "test", "--budget", text]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_winner_meets_the_budget_and_pruned_trials_are_pruned(tmp_path, monkeypatch):
    # two fine-tune epochs: the pruner judges after epoch 1 (after the last epoch nothing is left to save)
    root = Path(__file__).resolve().parents[1]
    recipe = json.loads((root / "bench" / "engine" / "recipes" / "test-micro.json").read_text())
    (tmp_path / "ft2.json").write_text(json.dumps({**recipe, "epochs": 2}))
    profile = json.loads((root / "sweeps" / "profiles" / "test.json").read_text())
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "test.json").write_text(json.dumps({**profile, "finetune_recipe": str(tmp_path / "ft2.json")}))
    monkeypatch.setattr("sweeps.profile.PROFILE_DIR", profiles)
    cfg = _cfg(methods=("l1",), trials=2)
    winners = run_search(cfg, pruner=PruneTrialOne())
    w = winners["l1"]
    df = ResultsTable(cfg.sweep.folder).read()
    base_flops = float(df.loc[df["row_type"] == "baseline", "flops"].iloc[0])
    assert w["row"]["flops"] <= 0.5 * base_flops and w["budget_value"] == w["row"]["flops"]
    plan, model = load_pruned(w["folder"])  # rebuilt with one call, from plan + weights
    assert count_flops(model) == w["row"]["flops"]
    marked = df[df["budget_winner"].notna()]
    assert list(marked["config_hash"]) == [w["row"]["config_hash"]] and marked["budget_winner"].iloc[0] == "flops:0.5"
    study = _study(cfg, "l1")
    assert [t.state for t in study.trials] == [STATES.COMPLETE, STATES.PRUNED]  # pruned, not failed
    pruned = df[df["status"] == "pruned"]
    assert list(pruned["optuna_trial"]) == [1] and pruned["flops"].iloc[0] <= 0.5 * base_flops
    readme = (cfg.folder / "README.md").read_text()
    assert "found at trial" in readme and "load_pruned" in readme and "layer1.0.conv1" in readme


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_unreachable_budget_names_the_smallest_model_and_records_infeasible_trials():
    cfg = _cfg(methods=("decore", "l1"), trials=1, budget="flops:0.01")
    with pytest.raises(UserError, match=r"was not met by any trial of decore, l1: the smallest model reached has "
                                        r"[0-9.]+M FLOPs \([0-9.]+ of the baseline's\)"):
        run_search(cfg)
    df = ResultsTable(cfg.sweep.folder).read()
    trials = df[df["row_type"] == "trial"]
    assert sorted(trials["method"]) == ["decore", "l1"] and (trials["status"] == "infeasible").all()
    assert (trials["flops"] > 0.01 * trials["base_flops"]).all() and trials["top1_pct"].isna().all()  # not fine-tuned
    for method in ("decore", "l1"):
        (t,) = _study(cfg, method).trials
        assert t.state == STATES.COMPLETE and t.constraints["budget"] > 0  # kept in the study, as infeasible
    assert "no feasible model" in (cfg.folder / "README.md").read_text()
