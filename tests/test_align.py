"""bench align and --round-to auto: alignments compared by measurement, the choice recorded and reused."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bench.deploy import align
from bench.cli import main
from bench.core.errors import UserError


def test_choice_is_the_highest_efficiency_and_the_smaller_multiple_on_a_tie():
    rows = [{"round_to": 1, "efficiency": 0.6}, {"round_to": 8, "efficiency": 0.8}, {"round_to": 16, "efficiency": 0.8}]
    assert align.choose(rows) == 8
    assert align.choose(rows[:1] + [{"round_to": 16, "efficiency": 0.5}]) == 1
    # a multiple too coarse for the target keeps more FLOPs: it does not compete, however efficient
    kept = [{**r, "flops_kept": 0.5} for r in rows] + [{"round_to": 32, "efficiency": 0.9, "flops_kept": 0.77}]
    assert align.choose(kept, 0.5) == 8 and align.choose(kept) == 32


def test_candidates_are_parsed_or_refused():
    assert align.parse_candidates("16, 1,8,8") == (1, 8, 16)
    for bad in ("", "0,8", "x"):
        with pytest.raises(UserError, match="--candidates"):
            align.parse_candidates(bad)


def test_measure_compares_plans_of_equal_flops_and_writes_a_record(tmp_path):
    """Every candidate's plan keeps the target's FLOPs (within 1% where rounding allows: resnet20's 16-wide
    stage keeps its widths whole at round_to 16, so that plan is the nearest uniform ratio); the record reads
    back equal, and a record of another version is refused."""
    torch.set_num_threads(1)
    rec = align.measure("resnet20", torch.device("cpu"), "eager", batch=2, target=0.5, candidates=(1, 8), rounds=2,
                        repeats=1, progress=False)
    assert [c["round_to"] for c in rec.candidates] == [1, 8] and rec.chosen in (1, 8)
    assert abs(rec.candidates[0]["flops_kept"] - 0.5) <= 0.01
    for c in rec.candidates:
        assert c["speedup_q1"] <= c["speedup"] <= c["speedup_q3"]
        assert c["efficiency"] == pytest.approx(c["speedup"] * c["flops_kept"])
    path = align.write(rec, tmp_path / "a.json")
    assert align.read(path) == rec
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "version": 0}))
    with pytest.raises(UserError, match="delete it to measure again"):
        align.read(path)


def test_round_to_auto_reuses_the_record_and_the_experiment_records_it(tmp_path, monkeypatch, capsys):
    """A sweep with --round-to auto takes the multiple for its deploy form from RESULTS_DIR/align/ (written there
    by a measurement once; here by hand, so that nothing is timed) and records it in its experiment.json."""
    from bench.cli import build_parser
    from sweeps.plan import sweep_config

    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    device = torch.device("cpu")
    from bench.core.env import cpu_model

    rec = align.Alignment("cifar_resnet20", align.device_label(device), "folded", 64, 0.5, 3, cpu_model(), torch.__version__,
                          [{"round_to": 1, "flops": 1, "flops_kept": 0.5, "speedup": 1.0, "speedup_q1": 1.0,
                            "speedup_q3": 1.0, "efficiency": 0.5},
                           {"round_to": 16, "flops": 1, "flops_kept": 0.5, "speedup": 1.5, "speedup_q1": 1.4,
                            "speedup_q3": 1.6, "efficiency": 0.75}], 16)
    align.write(rec, align.record_path("resnet20", device, "folded", 64))
    args = build_parser().parse_args(["sweep", "--model", "resnet20", "--dataset", "synthetic", "--profile", "test",
                                      "--device", "cpu", "--round-to", "auto", "--deploy-form", "folded"])
    cfg = sweep_config(args)
    assert cfg.round_to == 16 and cfg.alignment["chosen"] == 16 and cfg.deploy_form == "folded"
    assert "round_to 16" in capsys.readouterr().out
    assert cfg.identity()["round_to"] == 16  # auto and a typed 16 share one experiment
    from bench.engine.data import load_dataset
    from sweeps.study import write_experiment

    write_experiment(cfg, load_dataset("synthetic", selection="val"))
    written = json.loads((cfg.folder / "experiment.json").read_text())
    assert written["alignment"]["form"] == "folded" and written["deploy_form"] == "folded"
    # a record measured on another CPU is measured again here (a device label does not tell CPUs apart)
    rec.cpu = "another CPU"
    align.write(rec, align.record_path("resnet20", device, "folded", 64))
    measured = []
    monkeypatch.setattr(align, "measure", lambda *a, **k: measured.append(a) or dataclasses.replace(rec, cpu=cpu_model(), chosen=8))
    assert align.auto("resnet20", device, "folded").chosen == 8 and len(measured) == 1
    assert align.read(align.record_path("resnet20", device, "folded", 64)).cpu == cpu_model()


def test_align_command_prints_the_table_and_the_choice(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["align", "--model", "resnet20", "--form", "eager", "--batch", "2", "--rounds", "1",
                 "--candidates", "1,8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "efficiency" in text and "round_to" in text and out.is_file()
    assert json.loads(out.read_text())["chosen"] in (1, 8)
