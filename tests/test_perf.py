"""`make perf` machinery on a tiny configuration: files, columns and internal consistency, never speed."""
import pandas as pd
import pytest
import torch

from bench import perf
from bench.cli import main


def test_perf_writes_tables_with_every_measurement(tmp_path):
    cfg = perf.PerfConfig(models=("resnet20",), batch_size=8, steps=1, rounds=1, flops_targets=(0.5,), round_to=(8,),
                          ref_workers=0, eval_images=64, latency_repeats=2, device=torch.device("cpu"))
    csv, md = perf.run(cfg, tmp_path / "perf", "pytest")
    df = pd.read_csv(csv)
    assert set(df.variant) >= {"harness", "reference", "decore_gated", "baseline", "l1@0.5", "l1@0.5 round8"}
    assert (df.value > 0).all()
    lat = df[df.measure == "latency"]
    assert sorted(set(lat.latency_batch)) == [1, 8]
    half = lat[lat.variant == "l1@0.5"].iloc[0]
    assert half.flops_fraction == pytest.approx(0.5, abs=0.01)       # the plan meets its FLOPs target
    rounded = lat[lat.variant == "l1@0.5 round8"].iloc[0]
    assert rounded.round_to == 8
    text = md.read_text()
    for heading in ("## Training loops", "## Pruned models", "harness / reference", "gated step / plain step",
                    "efficiency b8", "train speed-up"):
        assert heading in text
    tables = perf.summarise(df.drop(columns="device").to_dict("records"))
    row = tables["train"].iloc[0]
    assert row["harness / reference"] == pytest.approx(row["harness img/s"] / row["reference img/s"])


def test_perf_cli_refuses_bad_values(capsys):
    for args, needle in ((["--models", "resnt20"], "resnt20"), (["--flops-targets", "1.5"], "(0, 1)"),
                         (["--steps", "0"], "--steps 0")):
        assert main(["perf", *args]) == 2
        assert needle in capsys.readouterr().err
