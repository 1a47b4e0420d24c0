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


def _shared(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder every test process of this run shares: under pytest-xdist, beside the workers' own base folders
    (the run's folder); in a plain run, this process's base folder."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    (root / name).mkdir(exist_ok=True)
    return root / name


@pytest.fixture(scope="session")
def _baseline_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _shared(tmp_path_factory, "baseline-store")


@pytest.fixture
def reuse_baselines(_baseline_store: Path) -> Iterator[None]:
    """The baselines that earlier tests of this fixture trained (in any test process of this run), copied into this
    test's RESULTS_DIR/baselines as cache entries (each still verified by its sha256 when read); the ones this test
    trains are kept for the next (copied whole, then renamed into the store: a half-copied entry is never seen).
    For the tests that run sweeps and trials on the test profile, all of which start from the same resnet20
    baseline; the baseline's own training and caching are tested in tests/test_baseline.py and
    tests/test_crash.py, with their own folders."""
    cache = Path(os.environ["RESULTS_DIR"]) / "baselines"
    for entry in _baseline_store.iterdir():
        if not entry.name.startswith("."):
            shutil.copytree(entry, cache / entry.name)
    yield
    for meta in cache.glob("*/meta.json"):
        if not (_baseline_store / meta.parent.name).exists():
            part = _baseline_store / f".{meta.parent.name}.{os.getpid()}"
            shutil.copytree(meta.parent, part)
            try:
                part.rename(_baseline_store / meta.parent.name)
            except OSError:  # another test process stored it meanwhile
                shutil.rmtree(part)


@pytest.fixture(scope="session")
def synthetic():
    from bench.engine.data import make_synthetic
    return make_synthetic()


@pytest.fixture(scope="session")
def training_run(synthetic, tmp_path_factory: pytest.TempPathFactory):
    """resnet20 trained for 3 epochs on the synthetic set (accurate, not perfect), once per run: the model, its test
    top-1 before training and fit's history (validated on the test split each epoch). The first test process to
    need it trains it and saves it; the others load it (under a lock: never half-written)."""
    from filelock import FileLock

    import models
    from bench.engine.data import DeviceLoader
    from bench.engine.recipe import Recipe
    from bench.engine.train import evaluate, fit, prepare_model

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = prepare_model(models.create("resnet20", num_classes=10), cpu)
    shared = _shared(tmp_path_factory, "training-run")
    with FileLock(shared / "lock"):
        if (shared / "run.pt").is_file():
            saved = torch.load(shared / "run.pt", weights_only=True)
            model.load_state_dict(saved["state"])
            return model.eval(), saved["before"], saved["history"]
        train = DeviceLoader(synthetic.train, synthetic.mean, synthetic.std, 50, train=True, seed=0)
        test = DeviceLoader(synthetic.test, synthetic.mean, synthetic.std, 100)
        before = evaluate(model, test, cpu)["top1"]
        history = fit(model, train, test, Recipe("t", epochs=3, batch_size=50, lr=0.05, weight_decay=5e-4,
                                                 nesterov=True), cpu)
        torch.save({"state": model.state_dict(), "before": before, "history": history}, shared / "run.pt.part")
        (shared / "run.pt.part").rename(shared / "run.pt")
    return model.eval(), before, history


@pytest.fixture(scope="session")
def trained(training_run):
    """The model of `training_run`; tests that change a model take a copy (tests/test_methods.py `_ctx`)."""
    return training_run[0]
