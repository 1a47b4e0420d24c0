"""The comparison protocol: a validation split for every decision, equal budgets, identities that cannot mix,
break-even as the agents see it (issue: a comparison people can trust by default)."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch

from bench.engine.baseline import get_baseline
from bench.engine.splits import CIFAR_STATS
from bench.engine.data import DeviceLoader, load_dataset, make_synthetic, with_selection
from bench.engine.recipe import load_recipe
from bench.trial.results import ResultsTable
from bench.trial.run import TrialConfig, train_accuracy
from methods.decore import break_even_from_counts
from sweeps.config import SweepConfig
from sweeps.study import run_sweep


def _rows(split) -> set[bytes]:
    return {x.tobytes() for x in split.x}


def test_validation_split_is_seeded_class_balanced_and_disjoint(synthetic):
    data = with_selection(synthetic, "val")
    assert data.selection == "val" and len(data.val.y) == 100 and len(data.train.y) == 900
    assert np.bincount(data.val.y).tolist() == [10] * 10  # class-balanced
    # disjoint from what the baseline trains on and from the test set; together they are the training set
    assert not _rows(data.val) & _rows(data.train) and not _rows(data.val) & _rows(data.test)
    assert _rows(data.val) | _rows(data.train) == _rows(synthetic.train)
    again = with_selection(make_synthetic(), "val")  # fixed: the same hold-out every time
    assert np.array_equal(again.val.x, data.val.x)
    papers = with_selection(synthetic, "test")  # the papers' practice: train on everything, decide on test
    assert papers.val is None and papers.selection_split is papers.test and len(papers.train.y) == 1000


def test_cifar_holds_out_5000_images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    y = np.repeat(np.arange(10), 600)
    for split, labels in (("train", y), ("test", y[:100])):
        np.savez(folder / f"{split}.npz", x=rng.integers(0, 255, (len(labels), 8, 8, 3), dtype=np.uint8), y=labels)
    data = load_dataset("cifar10", tmp_path, selection="val")
    assert len(data.val.y) == 5000 and len(data.train.y) == 1000 and "cifar10" in CIFAR_STATS
    assert not data.official  # no checksum-verified download made these arrays


def _fake_cifar(root, seed):
    rng = np.random.default_rng(seed)
    folder = root / "cifar10"
    folder.mkdir(parents=True)
    y = np.repeat(np.arange(10), 20)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", x=rng.integers(0, 255, (len(y), 32, 32, 3), dtype=np.uint8), y=y)


def test_other_data_content_trains_another_baseline(tmp_path, monkeypatch):
    recipe = load_recipe("test-micro")
    _fake_cifar(tmp_path / "a", 0)
    _fake_cifar(tmp_path / "b", 1)
    keys = []
    for d in ("a", "b", "a"):
        monkeypatch.setenv("DATA_DIR", str(tmp_path / d))
        keys.append(get_baseline("resnet20", "cifar10", recipe, device=torch.device("cpu"), selection="test"))
    assert keys[0].spec.key != keys[1].spec.key  # same name, other arrays: another baseline
    assert keys[2].cached and keys[2].spec.key == keys[0].spec.key  # unchanged data: never trained again
    assert keys[0].meta["data"]["fingerprint"] != keys[1].meta["data"]["fingerprint"]
    # trials too: the data fingerprint is in the trial's hash
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "a"))
    ka = TrialConfig("resnet20", "cifar10", "l1", {"ratio": 0.5}).key
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "b"))
    assert TrialConfig("resnet20", "cifar10", "l1", {"ratio": 0.5}).key != ka


@pytest.mark.parametrize("change", [{"scope": "all"}, {"round_to": 8}, {"budget": "paper"}, {"selection": "test"}])
def test_protocol_changes_start_a_new_experiment(change):
    base = SweepConfig("resnet20", "synthetic", profile="test")
    other = SweepConfig("resnet20", "synthetic", profile="test", **change)
    assert other.experiment != base.experiment and other.folder != base.folder
    assert other.study_name("l1") != base.study_name("l1")
    assert base.experiment.startswith("resnet20-synthetic-test-")


def test_method_code_is_part_of_the_identity(monkeypatch):
    import methods

    key = TrialConfig("resnet20", "synthetic", "l1", {"ratio": 0.5}).key
    study = SweepConfig("resnet20", "synthetic", profile="test").study_name("l1")
    monkeypatch.setattr(methods.base, "code_version", lambda name: "changed")
    monkeypatch.setattr(methods, "code_version", lambda name: "changed")
    assert TrialConfig("resnet20", "synthetic", "l1", {"ratio": 0.5}).key != key
    assert SweepConfig("resnet20", "synthetic", profile="test").study_name("l1") != study


def test_code_version_follows_the_source():
    import methods

    assert methods.code_version("l1") != methods.code_version("random")  # own module hashed
    assert len(methods.code_version("decore")) == 10


def test_break_even_counts_train_mode_augmented_predictions(synthetic):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    loader = DeviceLoader(synthetic.train, synthetic.mean, synthetic.std, 64, train=True, seed=0)
    correct, seen = train_accuracy(model, loader, torch.device("cpu"), images=300)
    assert seen == 300
    # its definition: the same batches (the loader's seeded permutation and augmentation), counted by hand
    loader = DeviceLoader(synthetic.train, synthetic.mean, synthetic.std, 64, train=True, seed=0)
    hand, n = 0, 0
    for x, y in loader:
        x, y = x[: 300 - n], y[: 300 - n]
        hand += int((model(x).argmax(1) == y).sum())
        n += len(y)
        if n >= 300:
            break
    assert correct == hand
    lam, rule = break_even_from_counts(correct, seen)
    assert rule == "measured" and lam == pytest.approx(correct / (seen - correct))
    assert break_even_from_counts(500, 500) == (499.0, "one error in 500: no error in 500 images, counted as one")


def test_break_even_leaves_the_baseline_untouched(synthetic):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(10))
    model(torch.randn(2, 3, 32, 32))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_accuracy(model, DeviceLoader(synthetic.train, synthetic.mean, synthetic.std, 64, train=True), torch.device("cpu"), 128)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats too
    assert not model.training


def _decisions(folder, cfg):
    df = ResultsTable(folder).read()
    trials = df[df["row_type"] == "trial"].sort_values("config_hash")
    storage = optuna.storages.RDBStorage(cfg.storage_url)
    values = {m: [tuple(t.values or ()) for t in optuna.load_study(study_name=cfg.study_name(m), storage=storage).trials]
              for m in cfg.methods}
    return (values, list(trials["config_hash"]), list(trials["pareto"].astype(bool)),
            list(trials["val_top1_pct"].round(6)), list(trials["top1_pct"].round(6)))


@pytest.mark.slow
def test_no_decision_reads_the_test_set(tmp_path, monkeypatch):
    """Corrupt the test labels: objectives, Pareto flags and the trials chosen stay as they were; only the
    reported test top-1 changes."""
    import bench.engine.data as data_mod

    cfg_kw = dict(profile="test", device="cpu", methods=("l1", "random"), trials=1, control=False)
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "clean"))
    clean_cfg = SweepConfig("resnet20", "synthetic", **cfg_kw)
    clean = _decisions(run_sweep(clean_cfg), clean_cfg)

    real = data_mod.make_synthetic

    def corrupted(*a, **k):
        d = real(*a, **k)
        d.test.y = (d.test.y + 1) % d.num_classes  # every test label wrong; the fingerprint stays the same
        return d
    monkeypatch.setattr(data_mod, "make_synthetic", corrupted)
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "corrupt"))
    bad_cfg = SweepConfig("resnet20", "synthetic", **cfg_kw)
    bad = _decisions(run_sweep(bad_cfg), bad_cfg)
    assert bad[:4] == clean[:4]      # objective values, trials, fronts, validation top-1
    assert bad[4] != clean[4]        # the reported test top-1 did change


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_scratch_controls_have_the_architecture_and_liu_et_al_budgets(tmp_path):
    """Scratch-B and Scratch-E of a real trial: the pruned architecture, fresh weights, and Liu et al.'s budgets
    (E: the baseline's training images; B: those x FLOPs_base / FLOPs_pruned), counted by the engine."""
    from bench.deploy.pruned import load_pruned
    from bench.trial.scratch import run_scratch, scratch_folder

    data = with_selection(make_synthetic(), "val")
    tc = TrialConfig("resnet20", "synthetic", "l1", {"ratio": 0.5}, baseline_recipe="test-micro",
                     joint_recipe="test-micro", finetune_recipe="test-micro", profile="test")
    from bench.trial.run import run_trial, trial_folder
    trial = run_trial(tc, torch.device("cpu"), data=data)
    base = get_baseline("resnet20", "synthetic", load_recipe("test-micro"), data=data)
    base_images = base.meta["train_images"]
    ratio = trial["base_flops"] / trial["flops"]
    assert ratio > 1.9  # ratio 0.5 per internal group: about half the FLOPs
    rows = {rule: run_scratch(tc, torch.device("cpu"), data, rule) for rule in ("scratch-b", "scratch-e")}
    batch = load_recipe("test-micro").batch_size
    assert rows["scratch-e"]["budget_images"] == base_images
    assert rows["scratch-b"]["budget_images"] == round(base_images * ratio)  # the fit stops at exactly that image
    assert rows["scratch-b"]["budget_images"] > 1.9 * base_images > 2 * batch
    _, pruned = load_pruned(trial_folder(tc))
    for rule, row in rows.items():
        _, scratch = load_pruned(scratch_folder(tc, rule))
        a, b = pruned.state_dict(), scratch.state_dict()
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}  # exactly the architecture
        weights = [k for k, v in a.items() if v.dim() > 1]
        assert weights and not any(torch.equal(a[k], b[k]) for k in weights)  # none of its weights
        assert row["method"] == rule and row["match_of"] == trial["config_hash"]
        assert row["flops"] == trial["flops"] and row["params"] == trial["params"]
        assert row["engine_version"] == trial["engine_version"]
        assert run_scratch(tc, torch.device("cpu"), data, rule) == row  # finished: read back, not trained again
    assert rows["scratch-b"]["config_hash"] != rows["scratch-e"]["config_hash"]


def _recipe(path, name: str, per_class: int, schedule: str, lr: float) -> str:
    """A smoke-shaped recipe file (smoke: joint 1,000 per class constant lr, fine-tune 500 per class cosine)."""
    spec = {"epochs": 1, "batch_size": 32, "lr": lr, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
            "schedule": schedule, "milestones": [], "gamma": 0.1, "warmup_epochs": 0, "label_smoothing": 0.0,
            "subset_per_class": per_class}
    (path / f"{name}.json").write_text(json.dumps(spec))
    return str(path / f"{name}.json")


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_equal_budget_means_equal_data(tmp_path):
    """Smoke's shape (the joint phase on twice the fine-tuning subset) in miniature: DECORE, methods without a
    training phase (one that reads batches for its scores, one that does not) and the no-pruning control train
    on the same set of distinct images, as the engine counts them, and on the same number of images."""
    from bench.trial.run import run_trial

    data = with_selection(make_synthetic(), "val")  # 90 training images per class
    joint = _recipe(tmp_path, "joint", 60, "constant", 0.01)
    finetune = _recipe(tmp_path, "finetune", 30, "cosine", 0.02)
    runs = {"decore": {"lambda": 0.01, "agent_init": 0.5, "agent_lr": 0.1}, "l1": {"ratio": 0.3},
            "hrank": {"ratio": 0.3, "batches": 2}, "control": {}}
    rows = {m: run_trial(TrialConfig("resnet20", "synthetic", m, k, baseline_recipe="test-micro", joint_recipe=joint,
                                     finetune_recipe=finetune, profile="test"), torch.device("cpu"), data=data)
            for m, k in runs.items()}
    decore = rows["decore"]
    # DECORE drew full batches of 32 from the joint subset (600: 18 batches, 576 images) and then from the
    # fine-tuning subset (300, a part of the joint subset's images)
    assert 576 <= decore["distinct_images"] <= 600 and decore["distinct_images"] > 300
    for m, row in rows.items():
        assert row["distinct_images"] == decore["distinct_images"], m
        assert row["distinct_images_sha"] == decore["distinct_images_sha"], m  # the same images, not only as many
        assert row["budget_images"] == decore["budget_images"] == 576 + 288, m
    assert rows["l1"]["method_images"] == 0 and rows["l1"]["finetune_images"] == 576 + 288
    assert [r["segment"] for r in run_history(rows["l1"])] == ["joint share", "finetune"]


def run_history(row):
    from bench.trial.run import experiment_dir
    from bench.core.io import read_json

    folder = experiment_dir(row["experiment"]) / "trials" / f"{row['method']}-{row['config_hash']}"
    return read_json(folder / "history.json")["finetune"]


def test_engine_code_is_part_of_the_identity(tmp_path, monkeypatch):
    """An edit to methods/core/gates.py (in a copy of the engine) changes the trial key and the study name;
    an edit to a module outside the engine (the report) changes neither."""
    import shutil

    import bench.core.version as engine
    import bench.trial.run as trial_mod
    import sweeps.config as config_mod

    root = tmp_path / "copy"
    for path in engine.engine_files() + [engine.ROOT / "bench" / "report" / "experiment.py"]:
        dest = root / path.relative_to(engine.ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)

    def identity() -> tuple[str, str]:
        version = engine.engine_version(root)
        monkeypatch.setattr(trial_mod, "engine_version", lambda: version)
        monkeypatch.setattr(config_mod, "engine_version", lambda: version)
        tc = TrialConfig("resnet20", "synthetic", "l1", {"ratio": 0.5}, profile="test")
        return tc.key, SweepConfig("resnet20", "synthetic", profile="test").study_name("l1")

    original = identity()
    assert engine.engine_version(root) == engine.engine_version()  # a faithful copy hashes as the real engine
    report = root / "bench" / "report" / "experiment.py"
    report.write_text(report.read_text() + "\n# an unrelated edit\n")
    engine.engine_version.cache_clear()
    assert identity() == original
    gates = root / "methods" / "core" / "gates.py"
    gates.write_text(gates.read_text().replace("return", "return  ", 1))  # any change of the engine's source
    engine.engine_version.cache_clear()
    changed = identity()
    assert changed[0] != original[0] and changed[1] != original[1]


def test_imported_weights_take_the_hold_out_from_the_test_side(tmp_path):
    """Weights trained elsewhere on every training image (--pretrained, --checkpoint): the selection split is a
    seeded, class-balanced part of the test split, disjoint from the training images and from the reported rest."""
    data = make_synthetic()
    held = with_selection(data, "val-test")
    assert held.selection == "val-test" and len(held.train.y) == len(data.train.y)  # every training image trains
    val_ids, test_ids = set(held.val.image_ids()), set(held.test.image_ids())
    assert not val_ids & test_ids and len(val_ids | test_ids) == len(data.test.y)  # the test side, split in two
    assert np.bincount(held.val.y).tolist() == [2] * 10  # 10% of each class's 20 test images
    assert not _rows(held.val) & _rows(held.train)  # no hold-out image is a training image
    assert again_equal(held, with_selection(data, "val-test"))  # seeded
    ckpt = TrialConfig("resnet20", "synthetic", "l1", {"ratio": 0.5}, checkpoint="weights.pt")
    assert ckpt.selection == "val-test"
    assert TrialConfig("resnet20", "synthetic", "l1", {"ratio": 0.5}).selection == "val"  # trained here: unchanged
    assert SweepConfig("resnet20", "synthetic", pretrained=True).selection == "val-test"


def test_image_folder_test_side_hold_out_is_disjoint(tmp_path):
    from PIL import Image

    from bench.engine.imagefolder import image_folder_loaders, image_folder_split_info

    for split, n in (("train", 6), ("val", 12)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20, 0 if c == "a" else 200, 0)).save(tmp_path / split / c / f"{i}.png")
    config = {"input_size": (3, 8, 8), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    train, select, test, classes = image_folder_loaders(tmp_path, 4, config, workers=0, selection="val-test")
    chosen, rest = select.loader.dataset, test.loader.dataset
    assert not set(chosen.indices) & set(rest.indices) and len(chosen.indices) == 20 and len(rest.indices) == 4
    assert chosen.dataset.root == rest.dataset.root == str(tmp_path / "val") and len(train.loader.dataset) == 12
    info = image_folder_split_info(f"imagefolder:{tmp_path}", "val-test")
    assert (info["train_images"], info["val_images"], info["test_images"]) == (12, 20, 4)


def again_equal(a, b) -> bool:
    return all(np.array_equal(x.image_ids(), y.image_ids()) for x, y in ((a.val, b.val), (a.test, b.test)))
