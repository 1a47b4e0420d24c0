"""`make perf` machinery on a tiny configuration: files, columns and internal consistency, never speed."""
import pandas as pd
import pytest
import torch

from bench.checks import perf, perf_report, timing
from bench.cli import main


@pytest.mark.slow
def test_perf_writes_tables_with_every_measurement(tmp_path):
    cfg = timing.PerfConfig(models=("resnet20",), batch_size=8, steps=1, rounds=2, max_rounds=3, flops_targets=(0.5,),
                          round_to=(8,), ref_workers=0, eval_images=64, latency_repeats=2, latency_batch=4,
                          device=torch.device("cpu"), processes=2)
    csv, md = perf.run(cfg, tmp_path / "perf", "pytest")
    df = pd.read_csv(csv)
    assert set(df.variant) >= {"harness", "reference", "decore_gated", "baseline", "l1@0.5", "l1@0.5 round8"}
    timed = df[df.unit != "convs"]
    assert (timed.value > 0).all() and (df.q1 <= df.value).all() and (df.value <= df.q3).all()
    # the optimised ONNX graphs' facts: every conv of resnet20 (19) counted, those outside the blocked layout among them
    convs = df[df.measure == "onnx convs"].set_index("variant").value
    unblocked = df[df.measure == "onnx convs unblocked"].set_index("variant").value
    assert set(convs.index) == {"baseline", "l1@0.5", "l1@0.5 round8"} and (convs == 19).all()
    assert ((0 <= unblocked) & (unblocked <= convs)).all()
    # the training section times the alignments of train_round_to (1, 16 by default): not the round8 plan
    assert set(df[df.measure == "train speed-up"].variant) == {"l1@0.5"}
    assert (df.processes == 2).all()                                  # every section's rounds came from 2 processes
    assert df.rounds.between(2, 4).all()                              # per process: 1 (2 / 2) to 2 (ceil(3 / 2))
    lat = df[df.measure == "latency ms"]
    assert sorted(set(lat.batch)) == [1, 4]
    assert set(lat.form) == {"eager", "folded", "onnxruntime"}
    assert set(lat[lat.form == "onnxruntime"].variant) == {"baseline", "l1@0.5", "l1@0.5 round8"}  # every alignment
    half = lat[lat.variant == "l1@0.5"].iloc[0]
    assert half.flops_fraction == pytest.approx(0.5, abs=0.01)       # the plan meets its FLOPs target
    round8 = lat[lat.variant == "l1@0.5 round8"].iloc[0]
    assert round8.round_to == 8 and round8.flops_fraction == pytest.approx(0.5, abs=0.02)  # the same work, aligned
    text = md.read_text()
    for heading in ("## Training loops", "## Pruned models", "## Deployment form", "harness / reference",
                    "gated step / plain step", "efficiency b4", "train speed-up", "median (IQR)"):
        assert heading in text
    tables = perf_report.summarise(df.drop(columns="device").to_dict("records"))
    cell = tables["train"].iloc[0]["gated step / plain step"]
    ratios = df[(df.measure == "gated / plain")].iloc[0]
    assert isinstance(cell, timing.Spread) and cell.median == pytest.approx(ratios.value)
    assert f"{cell.median:.2f} ({cell.iqr:.2f})" in text
    assert "split among 2 fresh processes" in text and "in 2 processes" in text
    advice = perf_report.alignment_advice(df)
    assert set(advice.form) == {"eager", "folded", "onnxruntime"} and set(advice.round_to) == {1, 8}
    for (form, batch), g in advice.groupby(["form", "batch"]):
        eff = df[(df.measure == "efficiency") & (df.form == form) & (df.batch == batch)]
        best = max((1, 8), key=lambda r: (round(eff[eff.round_to == r].value.median(), 6), -r))
        assert g[g.pick != ""].round_to.tolist() == [best]
    assert "## Which alignment to pick on this machine" in text and "**pick**" in text
    assert perf_report.onnx_layout_note(df) in text and "convs outside NCHWc" in text
    # the summary a perf folder's README and the main README quote, from the same rows
    from bench.checks import perf_summary

    picked = perf_summary.picks(df, batch=4)
    for form, (r, eff) in picked.items():
        g = advice[(advice.form == form) & (advice.batch == 4) & (advice.round_to == r)]
        assert g.pick.tolist() == ["**pick**"] and g["median efficiency"].iloc[0] == pytest.approx(eff)
    up = df[(df.measure == "speed-up") & (df.batch == 4)]
    for form, (slow, n) in perf_summary.slower_with_pick(df, batch=4).items():
        g = up[(up.form == form) & (up.round_to == picked[form][0])]
        assert (slow, n) == (int((g.value < 1).sum()), len(g)) and n == 1   # one 50% plan per alignment here
    best = perf_summary.best_half_cut(df, batch=4)["resnet20"]
    assert best[0] == pytest.approx(up.value.max()) and best[1] in ("eager", "folded", "onnxruntime")
    assert perf_summary.pick_sentence(df, 4).startswith("at batch 4, pick `round_to ")
    assert f"Unpruned models: {int(unblocked['baseline'])} such convs in 1 model." in text


def test_rounds_repeat_until_ratios_settle():
    cfg = timing.PerfConfig(rounds=3, max_rounds=12, rel_iqr=0.05, max_seconds=60)
    noisy = iter([1.0, 2.0, 0.5, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    r = timing.repeat_rounds(lambda i: ({}, {("x", "v", "", 1): next(noisy)}), cfg, "test")
    assert r.settled and 3 < len(r.series[("x", "v", "", 1)]) < 12     # more rounds than the minimum, then stops
    steady = timing.repeat_rounds(lambda i: ({}, {("x", "v", "", 1): 2.0}), cfg, "test")
    assert steady.settled and len(steady.series[("x", "v", "", 1)]) == 3
    wild = timing.repeat_rounds(lambda i: ({}, {("x", "v", "", 1): float(i % 2 + 1)}), cfg, "test")
    assert not wild.settled and len(wild.series[("x", "v", "", 1)]) == 12
    # a later process continues an earlier one's rounds: numbering goes on, settling is judged on all of them
    first = timing.repeat_rounds(lambda i: ({}, {("x", "v", "", 1): float(i % 2 + 1)}), timing.PerfConfig(
        rounds=2, max_rounds=2, rel_iqr=0.05), "test")
    seen = []
    later = timing.repeat_rounds(lambda i: (seen.append(i), ({}, {("x", "v", "", 1): 1.0}))[1], cfg, "test", first)
    assert seen[0] == 2 and later.series[("x", "v", "", 1)][:2] == [1.0, 2.0] and len(later.pids) == len(seen) + 2
    assert not first.settled and later.settled and len(seen) == 3     # its minimum: 4 of 5 rounds at 1.0, IQR 0
    s = timing.spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.median, s.q1, s.q3, s.iqr) == (3.0, 2.0, 4.0, 2.0)


def test_perf_cli_refuses_bad_values(capsys):
    for args, needle in ((["--models", "resnt20"], "resnt20"), (["--flops-targets", "1.5"], "(0, 1)"),
                         (["--steps", "0"], "--steps 0"), (["--processes", "0"], "--processes 0")):
        assert main(["perf", *args]) == 2
        assert needle in capsys.readouterr().err


def _ratios(values, iqrs):
    rows = [dict(model="resnet56", section="latency", measure="speed-up", variant=f"l1@{t}", form="folded", batch=1,
                 value=v, iqr=q, unit="ratio") for t, v, q in zip((0.7, 0.5, 0.3), values, iqrs)]
    rows.append(dict(model="resnet56", section="latency", measure="latency ms", variant="baseline", form="folded",
                     batch=1, value=7.0, iqr=9.0, unit="ms"))                # not a ratio: never compared
    return pd.DataFrame(rows)


def test_perf_compare_checks_every_ratio_against_the_printed_spreads(tmp_path, capsys):
    a = _ratios([1.00, 1.20, 1.50], [0.05, 0.05, 0.10])
    b = _ratios([1.04, 1.40, 1.601], [0.02, 0.05, 0.02])
    m = perf_report.compare(a, b)
    assert len(m) == 3                                                       # the ms row is left out
    agree = dict(zip(m.variant, m.agree))
    assert agree == {"l1@0.7": True, "l1@0.5": False, "l1@0.3": True}       # 0.04 <= 0.05; 0.20 > 0.05; 0.10 <= 0.10 as printed
    a.to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "b").mkdir()
    b.to_csv(tmp_path / "b" / "perf.csv", index=False)
    assert main(["perf-compare", str(tmp_path / "a.csv"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "2 of 3 ratios" in out and "l1@0.5" in out.split("disagree:")[1]
    (tmp_path / "bad.csv").write_text("model,value\nresnet56,1.0\n")
    for path, needle in ((tmp_path / "nothing", "no perf.csv"), (tmp_path / "bad.csv", "missing")):
        assert main(["perf-compare", str(tmp_path / "a.csv"), str(path)]) == 2
        assert needle in capsys.readouterr().err


def test_every_abbreviation_of_the_committed_perf_tables_is_defined():
    """perf.md's plan names (l1@F, round8, round16) and column abbreviations (bN, red., ms, IQR) are defined in
    the text perf_report.write puts above the tables, and every committed perf.md carries that text."""
    import re
    from pathlib import Path

    found = sorted(Path(__file__).resolve().parents[1].glob("results/perf/**/perf.md"))
    assert found
    for path in found:
        text = path.read_text()
        legend = perf_report.ABBREVIATIONS if perf_report.ABBREVIATIONS in text else perf_report.LEGACY_ABBREVIATIONS
        assert legend in text, path
        tables = "\n".join(ln for ln in text.splitlines() if ln.startswith("|"))
        for word in set(re.findall(r"round\d+|l1@|\bb\d+\b|red\.|\bms\b", tables)):
            generic = {"l1@": "*l1@F*", "red.": "*red.*", "ms": "*ms*"}.get(word)
            defined = generic or (f"*{word}*" if word.startswith("round") else "*bN*")
            assert defined in legend, (path, word)
    assert "IQR i (interquartile range" in perf_report.ABBREVIATIONS


TINY = "perf_test_tiny"


class _TinyNet(torch.nn.Module):
    """Two conv-BN-ReLU layers and a classifier: inductor compiles its training step in seconds, resnet20's in a
    minute of this machine's CPU (what the compiled rows' test checks does not depend on the network's depth)."""

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def _register_tiny() -> None:
    import timm
    from timm.models import register_model

    if not timm.is_model(TINY):
        def perf_test_tiny(pretrained=False, **kwargs):
            return _TinyNet(**kwargs)
        register_model(perf_test_tiny)


@pytest.mark.slow
def test_compiled_gated_and_plain_steps_are_timed_with_compile_time_apart(tmp_path):
    """--compile: the gated DECORE step and the plain one compiled (inductor) beside the eager ones; their ratio
    is a row of its own, and the compilation (the first calls) is reported in seconds, not in any step time."""
    _register_tiny()
    cfg = timing.PerfConfig(models=(TINY,), compile_models=(TINY,), batch_size=4, steps=1, rounds=1, max_rounds=1,
                          flops_targets=(0.5,), round_to=(), ref_workers=0, eval_images=16, latency_repeats=1,
                          latency_batch=2, device=torch.device("cpu"), processes=1, deploy=False, compile=True)
    csv, md = perf.run(cfg, tmp_path / "perf", "pytest")
    df = pd.read_csv(csv)
    assert {"harness_compiled", "decore_gated_compiled"} <= set(df.variant)
    ratio = df[df.measure == "compiled gated / plain"]
    assert len(ratio) == 1 and ratio.iloc[0].value > 0
    compile_s = df[df.measure == "compile s"]
    assert set(compile_s.variant) == {"harness_compiled", "decore_gated_compiled"} and (compile_s.unit == "s").all()
    assert "compiled gated / plain" in md.read_text() and "compile s (plain, gated)" in md.read_text()
