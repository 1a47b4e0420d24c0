"""`bench retime`: stored trials timed again alone, from their kept channels (issue 29, numbers that agree)."""
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.engine.measure import count_flops, count_params
from bench.report.tables import speedup_form, speedup_when
from bench.trial.retime import rebuilt

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "results" / "resnet20-cifar10-cpu-bea263c0"


def _trials(folder: Path) -> pd.DataFrame:
    df = pd.read_csv(folder / "runs.csv")
    return df[(df["row_type"] == "trial") & (df["status"] == "complete")]


@pytest.mark.slow
def test_kept_channels_rebuild_each_trials_widths_exactly():
    # the rebuilt network has the row's FLOPs and params: the widths, hence the latency, are the trial's
    trials = _trials(EXPERIMENT)
    assert len(trials) >= 10
    for _, row in trials.iterrows():
        pruned, base = rebuilt(row)
        assert count_flops(pruned, (3, 32, 32)) == int(row["flops"]) <= count_flops(base, (3, 32, 32))
        assert count_params(pruned) == int(row["params"])


def test_a_changed_architecture_or_unknown_dataset_is_refused():
    row = _trials(EXPERIMENT).iloc[0].to_dict()
    with pytest.raises(UserError, match="the row says"):
        rebuilt({**row, "flops": int(row["flops"]) + 1})
    with pytest.raises(UserError, match="'imagenette'"):
        rebuilt({**row, "dataset": "imagenette"})


@pytest.mark.slow
def test_retime_times_the_rows_alone_and_changes_nothing_else(tmp_path, capsys):
    folder = tmp_path / EXPERIMENT.name
    shutil.copytree(EXPERIMENT, folder)
    before = pd.read_csv(folder / "runs.csv")
    keep = set(_trials(folder)["config_hash"][:2]) | set(before.loc[before["row_type"] != "trial", "config_hash"])
    before = before[before["config_hash"].isin(keep)].copy()  # two trials: a short test
    before["speedup_pass"] = None  # rows as they were before the measuring pass
    before.to_csv(folder / "runs.csv", index=False)
    (folder / "runs.parquet").unlink()
    assert "timed inside their trials" in speedup_when(pd.read_csv(folder / "runs.csv"))

    # the command line's retime in this process (the CLI in a real process: tests/test_bad_input.py)
    assert main(["retime", str(folder)]) == 0
    assert "2 trial(s) timed alone" in capsys.readouterr().out
    after = pd.read_csv(folder / "runs.csv")
    trials = after[after["row_type"] == "trial"]
    assert (trials["speedup_pass"] == "alone").all() and trials["speedup_b1"].between(0.2, 20).all()
    assert (trials["speedup_b1_q1"] <= trials["speedup_b1"]).all() and (trials["speedup_b1"] <= trials["speedup_b1_q3"]).all()
    old = before.reset_index(drop=True)
    same = [c for c in old.columns if not c.startswith(("speedup", "latency_cpu", "base_latency"))]
    pd.testing.assert_frame_equal(old[same], after[same], check_dtype=False)
    assert speedup_when(after).startswith("timed alone")
    # a second call finds nothing left to time
    assert main(["retime", str(folder)]) == 0
    assert "0 trial(s) timed alone" in capsys.readouterr().out
    # in another deploy form: every row is timed again, in that form, and the table's footnote says which
    assert main(["retime", str(folder), "--deploy-form", "folded"]) == 0
    assert "2 trial(s) timed alone (folded)" in capsys.readouterr().out
    folded = pd.read_csv(folder / "runs.csv")
    assert (folded.loc[folded["row_type"] == "trial", "speedup_form"] == "folded").all()
    assert speedup_form(folded) == ("PyTorch with BatchNorm folded", "channels_last")
    assert speedup_form(after) == ("eager PyTorch", "channels_last")  # rows from before the column: eager


@pytest.mark.slow
def test_speedup_columns_in_the_onnxruntime_form(monkeypatch):
    """The measuring pass times an onnxruntime session of each model like a module (bench.deploy.forms.in_form)."""
    import torch

    import models
    from bench.deploy.forms import OnnxModule, in_form
    from bench.deploy.speed import speedup_columns

    monkeypatch.setenv("BENCH_LATENCY_ROUNDS", "3,3")
    row = _trials(EXPERIMENT).iloc[0]
    pruned, base = rebuilt(row)
    session = in_form(pruned, "onnxruntime", (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(session, OnnxModule) and torch.allclose(session(x), pruned.eval()(x), atol=1e-4)
    cols = speedup_columns(pruned, models.create("resnet20", num_classes=10), (3, 32, 32), form="onnxruntime")
    assert cols["speedup_form"] == "onnxruntime" and cols["speedup_pass"] == "alone" and cols["speedup_b1"] > 0
    with pytest.raises(UserError, match="deploy form 'tensorrt' is unknown"):
        in_form(base, "tensorrt", (3, 32, 32))
