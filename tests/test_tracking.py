"""W&B tracking: real offline runs read back from disk, credentials scrubbed, and failures that never raise."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import wandb

from bench.engine import tracking
from bench.engine.tracking import Tracker, read_offline_run

DB_URL = "postgresql://bench:hunter2@db.example.org:5432/optuna"
KEPT = {"conv1": [8, 16], "layer1.0.conv1": [5, 16], "layer2.0.conv2": [32, 32]}


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """WANDB_MODE=offline, with every W&B folder (cache, staging, config) inside tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "results"
    out.mkdir()
    return out


def _run_files(directory: Path) -> list[Path]:
    return sorted((directory / "wandb").glob("offline-run-*/run-*.wandb"))


def _read_finished(directory: Path) -> tuple[Path, dict]:
    """The one run of `directory`, once complete: wandb-core may still be writing it when finish() returns."""
    [path] = _run_files(directory)
    deadline = time.monotonic() + 20
    while (got := read_offline_run(path))["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return path, got


def _model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "trial"
    folder.mkdir()
    (folder / "plan.json").write_text(json.dumps({"keep": {"conv1": [0, 1]}}))
    torch.save({"w": torch.ones(2)}, folder / "model.pt")
    return folder


def test_offline_trial_run_round_trip(offline: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="bench.engine.tracking")
    tracker = Tracker(directory=offline)
    assert tracker.mode == "offline"
    config = {"model": "cifar_resnet20", "knobs": {"lambda": 2.0}, "storage": DB_URL, "wandb_api_key": "k1",
              "optuna": {"db_password": "p2", "n_trials": 8}}
    run = tracker.trial("decore-lambda2-abc123", group="study-1", job_type="decore", config=config)
    assert isinstance(run.id, str)
    for epoch in range(3):
        run.log_epoch("finetune", {"epoch": epoch, "train_loss": 2.0 - epoch / 2, "lr": 0.1,
                                   "note": "skipped", "keep_prob": {"layer1.0.conv1": 0.9 - epoch / 10}})
    run.finish({"top1_pct": 91.25, "params": 123456, "flops_reduction_pct": 48.5, "latency_cpu_b1_ms": 1.5},
               kept_channels=KEPT, artifact_dir=_model_dir(tmp_path))

    path, got = _read_finished(offline)
    assert (got["id"], got["group"], got["job_type"], got["name"]) == (run.id, "study-1", "decore", "decore-lambda2-abc123")
    assert got["config"] == {"model": "cifar_resnet20", "knobs": {"lambda": 2.0},
                             "storage": "postgresql://bench:***@db.example.org:5432/optuna", "optuna": {"n_trials": 8}}
    epochs = [h for h in got["history"] if "finetune/train_loss" in h]
    assert [h["_step"] for h in epochs] == [0, 1, 2]
    assert [h["finetune/train_loss"] for h in epochs] == [2.0, 1.5, 1.0]
    assert [h["finetune/keep_prob/layer1.0.conv1"] for h in epochs] == pytest.approx([0.9, 0.8, 0.7])
    assert not any(k.startswith("finetune/note") for h in epochs for k in h)
    assert {"top1_pct": 91.25, "params": 123456, "flops_reduction_pct": 48.5, "status": "complete"}.items() \
        <= got["summary"].items()
    [model] = [a for a in got["artifacts"] if a["type"] == "model"]
    assert model["name"] == "model-decore-lambda2-abc123" and sorted(model["files"]) == ["model.pt", "plan.json"]
    [table] = list(path.parent.glob("files/media/table/kept_channels*.table.json"))
    content = json.loads(table.read_text())
    assert content["columns"] == ["group", "kept", "units", "fraction"]
    assert content["data"][1] == ["layer1.0.conv1", 5, 16, 0.3125]
    assert got["exit_code"] == 0
    for secret in (b"hunter2", b"k1\"", b"p2\""):
        assert secret not in path.read_bytes()
    hints = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()]
    assert hints == [f"W&B runs are written offline; upload them with: wandb sync {offline / 'wandb'}/offline-run-*"]


def test_reader_follows_records_across_blocks(offline: Path):
    run = Tracker(directory=offline).trial("big", group="g", job_type="l1", config={})
    layers = {f"layer{i}.conv{j}": i + j / 100 for i in range(40) for j in range(3)}
    for epoch in range(40):  # ~40 x 4 KB of history: many 32 KB blocks, records split across them
        run.log_epoch("decore", {"epoch": epoch, "keep_prob": layers})
    run.finish({"top1_pct": 1.0})
    path, got = _read_finished(offline)
    assert path.stat().st_size > 3 * 32 * 1024
    rows = [h for h in got["history"] if "decore/epoch" in h]
    assert [h["decore/epoch"] for h in rows] == list(range(40))
    assert all(h["decore/keep_prob/layer39.conv2"] == 39.02 for h in rows)


def test_failed_trial_is_recorded_and_the_exception_propagates(offline: Path):
    tracker = Tracker(directory=offline)
    with pytest.raises(ValueError, match="boom"):
        with tracker.trial("t", group="g", job_type="random", config={}) as run:
            run.log_epoch("finetune", {"train_loss": 1.0})
            raise ValueError("boom")
    _, got = _read_finished(offline)
    assert got["summary"]["status"] == "failed" and got["summary"]["reason"] == "ValueError: boom"
    assert got["exit_code"] == 1


def test_sweep_summary_holds_image_and_table(offline: Path, tmp_path: Path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [0, 1])
    png = tmp_path / "pareto.png"
    fig.savefig(png)
    df = pd.DataFrame({"method": pd.Series(["decore", None], dtype="string"), "top1_pct": [91.0, 90.0],
                       "seed": pd.Series([0, None], dtype="Int64")})
    run_id = Tracker(directory=offline).sweep_summary("study-1", {"pareto": png}, {"results": df})
    path, got = _read_finished(offline)
    assert run_id == got["id"] and got["job_type"] == "summary" and got["group"] == "study-1"
    assert list(path.parent.glob("files/media/images/pareto_*.png"))
    [table] = list(path.parent.glob("files/media/table/results_*.table.json"))
    assert json.loads(table.read_text())["data"] == [["decore", 91.0, 0], [None, 90.0, None]]


def test_disabled_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    monkeypatch.setattr(wandb, "init", lambda *a, **k: calls.append(k))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for mode in ("auto", "online", "offline"):
        tracker = Tracker(mode=mode, directory=tmp_path / "r")
        run = tracker.trial("t", group="g", job_type="decore", config={"a": 1})
        run.log_epoch("finetune", {"loss": 1.0})
        run.finish({"top1_pct": 1.0}, kept_channels=KEPT)
        assert run.id is None and tracker.sweep_summary("g", {}, {}) is None
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert Tracker(mode="off", directory=tmp_path / "r").trial("t", "g", "l1", {}).id is None
    assert calls == [] and not (tmp_path / "r").exists()


def test_init_failure_falls_back_once_then_turns_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture):
    modes = []

    def broken_init(**kwargs):
        modes.append(kwargs["mode"])
        raise TimeoutError("Run initialization has timed out after 90.0 sec")

    monkeypatch.setattr(wandb, "init", broken_init)
    monkeypatch.setattr(tracking, "check_reachable", lambda url: None)  # the server answers; init still fails
    monkeypatch.setenv("WANDB_MODE", "online")
    tracker = Tracker(directory=tmp_path)
    run = tracker.trial("t", group="g", job_type="decore", config={})
    assert run.id is None and modes == ["online", "offline"] and tracker.mode == "off"
    run.log_epoch("finetune", {"loss": 1.0})
    run.finish({"top1_pct": 1.0}, kept_channels=KEPT, artifact_dir=tmp_path)
    run.fail("x")
    assert tracker.trial("t2", group="g", job_type="decore", config={}).id is None
    assert tracker.sweep_summary("g", {}, {}) is None
    assert modes == ["online", "offline"]  # off for good: no third try
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2  # fallback, then giving up


class _BrokenRun:
    id, name = "abc", "t"

    def __init__(self) -> None:
        self.logged = 0

    def log(self, data, step=None):
        self.logged += 1
        raise OSError(28, "No space left on device")

    def finish(self, exit_code=None):
        raise AssertionError("a broken tracker must not call wandb again")


def test_failure_mid_run_turns_tracking_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture):
    broken = _BrokenRun()
    monkeypatch.setattr(wandb, "init", lambda **k: broken)
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Tracker(directory=tmp_path)
    run = tracker.trial("t", group="g", job_type="l1", config={})
    assert run.id == "abc"
    run.log_epoch("finetune", {"loss": 1.0})
    run.log_epoch("finetune", {"loss": 0.5})
    run.finish({"top1_pct": 1.0})
    assert broken.logged == 1 and tracker.mode == "off"
    assert [r.levelno for r in caplog.records if r.name == "bench.engine.tracking"].count(logging.WARNING) == 1


def test_scrub_hides_credentials():
    cfg = {"storage": DB_URL, "urls": ["redis://:s3cret@cache:6379/0", "sqlite:///optuna.db"],
           "API_KEY": "x", "auth_token": "y", "client_secret": "z", "path": Path("/data/x"),
           "nested": {"Password": "p", "lr": 0.1}, "plain": "user:pass is not a URL"}
    assert tracking.scrub(cfg) == {
        "storage": "postgresql://bench:***@db.example.org:5432/optuna",
        "urls": ["redis://:***@cache:6379/0", "sqlite:///optuna.db"], "path": "/data/x",
        "nested": {"lr": 0.1}, "plain": "user:pass is not a URL"}


def test_flatten_keeps_numbers_only():
    row = {"loss": 1, "ok": True, "name": "x", "none": None, "probs": {"a": 0.5, "b": {"c": 2.0}}, "list": [1]}
    assert tracking.flatten(row, "decore") == {"decore/loss": 1, "decore/probs/a": 0.5, "decore/probs/b/c": 2.0}


def test_auto_mode_is_online_only_with_a_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tracking.resolve_mode("auto") == "offline"
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    netrc.chmod(0o600)
    assert tracking.resolve_mode("auto") == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "abc")
    assert tracking.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.resolve_mode("auto") == "offline" and tracking.resolve_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode("online") == "off"
    with pytest.raises(tracking.UserError, match="nope"):
        tracking.resolve_mode("nope")


def test_command_line_password_never_reaches_the_run_files(offline: Path, monkeypatch: pytest.MonkeyPatch):
    """W&B stores sys.argv in the run's metadata: a --storage URL with a password must arrive scrubbed."""
    import sys
    argv = ["bench", "sweep", "--storage", "postgresql://bench:s3cretpw@db.example:5432/sweeps"]
    monkeypatch.setattr(sys, "argv", list(argv))
    run = Tracker(directory=offline).trial("t", group="g", job_type="l1", config={})
    run.finish({"top1_pct": 1.0})
    path, _ = _read_finished(offline)
    assert b"bench:***@db.example" in path.read_bytes()         # the scrubbed command line is there
    leaks = [p for p in offline.rglob("*") if p.is_file() and b"s3cretpw" in p.read_bytes()]
    assert not leaks
    assert sys.argv == argv                                      # the process's own argv is untouched
