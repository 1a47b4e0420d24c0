"""Shared fixtures. Tests run on CPU, on the generated `synthetic` set unless they say otherwise."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_cifar10() -> Path | None:
    """The real CIFAR-10 copy beside the repo (or in DATA_DIR), when present."""
    for root in (Path(os.environ.get("DATA_DIR", "")), SHARED_DATA):
        if str(root) and (root / "cifar10" / "test.npz").is_file():
            return root
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker's torch gets its share of the cores (two workers of two threads each on two
    cores would fight over them)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)  # the processes a test starts (CLI runs, torchrun, SLURM jobs)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests marked slow first, each group in its file order: pytest-xdist hands tests out in this order, so the
    long ones start early and the short ones fill the end, instead of one worker finishing a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test writes results under its own tmp folder; torch is seeded and on few threads."""
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("BENCH_LATENCY_ROUNDS", "3,5")  # the measuring pass, short: speed is benchmarked, not tested
    # a sweep leaves its report (plots, tables, README) to `bench report`: the tests that read a sweep's report
    # (tests/test_imagenet.py, tests/test_slurm.py, tests/test_sweep.py's report test) ask for it; the report
    # itself is tested from stored rows (tests/test_report.py)
    monkeypatch.setenv("BENCH_SWEEP_REPORT", "0")
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def _baseline_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("baseline-store")


@pytest.fixture
def reuse_baselines(_baseline_store: Path) -> Iterator[None]:
    """The baselines this test process trained in earlier tests of this fixture, copied into this test's
    RESULTS_DIR/baselines as cache entries (each still verified by its sha256 when read); the ones this test
    trains are kept for the next. For the tests that run sweeps and trials on the test profile, all of which
    start from the same resnet20 baseline; the baseline's own training and caching are tested in
    tests/test_baseline.py and tests/test_crash.py, with their own folders."""
    cache = Path(os.environ["RESULTS_DIR"]) / "baselines"
    for entry in _baseline_store.iterdir():
        shutil.copytree(entry, cache / entry.name)
    yield
    for meta in cache.glob("*/meta.json"):
        if not (_baseline_store / meta.parent.name).exists():
            shutil.copytree(meta.parent, _baseline_store / meta.parent.name)


@pytest.fixture(scope="session")
def synthetic():
    from bench.engine.data import make_synthetic
    return make_synthetic()


@pytest.fixture(scope="session")
def training_run(synthetic):
    """resnet20 trained for 3 epochs on the synthetic set (accurate, not perfect), once per test process: the model,
    its test top-1 before training and fit's history (validated on the test split each epoch)."""
    import models
    from bench.engine.data import DeviceLoader
    from bench.engine.recipe import Recipe
    from bench.engine.train import evaluate, fit, prepare_model

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = prepare_model(models.create("resnet20", num_classes=10), cpu)
    train = DeviceLoader(synthetic.train, synthetic.mean, synthetic.std, 50, train=True, seed=0)
    test = DeviceLoader(synthetic.test, synthetic.mean, synthetic.std, 100)
    before = evaluate(model, test, cpu)["top1"]
    history = fit(model, train, test, Recipe("t", epochs=3, batch_size=50, lr=0.05, weight_decay=5e-4, nesterov=True),
                  cpu)
    return model.eval(), before, history


@pytest.fixture(scope="session")
def trained(training_run):
    """The model of `training_run`; tests that change a model take a copy (tests/test_methods.py `_ctx`)."""
    return training_run[0]
