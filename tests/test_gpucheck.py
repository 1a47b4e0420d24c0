"""`make gpu-check` in its reduced CPU form (tiny sizes, synthetic data, gloo): every check runs and passes."""
import pytest
import torch

from bench.checks import gpucheck


@pytest.mark.slow
def test_gpu_check_cpu_form_runs_every_check(tmp_path):
    md, ok = gpucheck.run(torch.device("cpu"), tmp_path / "perf", reduced=True, log=lambda s: None)
    text = md.read_text()
    assert ok, text
    for check in gpucheck.CHECKS:
        assert f"| {check} | ok |" in text
    assert "gloo all_reduce over 2 rank(s)" in text and "DECORE trial under torchrun (2 ranks) finished" in text
    assert "## latency" in text and "folded" in text and "reduced (tiny sizes" in text


def test_a_failing_check_is_reported_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "CHECKS", {"loader": gpucheck.check_loader,
                                            "gated": lambda cfg, state: 1 / 0, "train": gpucheck.check_train})
    monkeypatch.setattr(gpucheck, "NEEDS", {"train": "missing"})
    md, ok = gpucheck.run(torch.device("cpu"), tmp_path / "perf", reduced=True, log=lambda s: None)
    text = md.read_text()
    assert not ok and "| gated | failed | ZeroDivisionError" in text and "| train | skipped | needs missing" in text
