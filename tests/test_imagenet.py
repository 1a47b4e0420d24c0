"""The ImageNet ResNet-50 path on a generated ImageNet-layout folder: timm's transforms, --pretrained without a
network, the weights in the identities, and a sweep of the real ResNet-50 architecture at 64x64 that starts from
a checkpoint (baseline, a DECORE trial, an L1 trial, the report)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models import register_model
from timm.models.resnet import resnet50

import models
from bench.engine.baseline import BaselineSpec, load_pretrained
from bench.cli import main
from bench.engine.imagefolder import image_data_config, image_transforms
from bench.core.errors import UserError
from bench.core.io import sha256_file
from bench.engine.measure import count_flops
from bench.engine.recipe import load_recipe
from bench.trial.results import ResultsTable
from bench.trial.run import TrialConfig

ROOT = Path(__file__).resolve().parents[1]


@register_model
def resnet50_64px(pretrained: bool = False, **kwargs):
    """timm's ResNet-50, unchanged, with a pretrained_cfg that says 64x64: the real architecture at a test size."""
    kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "input_size": (3, 64, 64),
                                        "pool_size": (2, 2)}
    return resnet50(pretrained, **kwargs)


def make_image_folder(root: Path, classes: int, train: int, val: int, size: int) -> Path:
    """ImageNet layout: root/{train,val}/<wnid>/*.JPEG (and PNG), one noisy colour per class."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (classes, 3))
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(colours[c] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{c}_{i}.{'JPEG' if i % 2 else 'png'}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagenet"), classes=3, train=12, val=4, size=64)


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


# ---------------------------------------------------------------- transforms

@pytest.mark.parametrize("name, size", [("resnet50_64px", 64), ("resnet50", 224), ("resnet50.tv_in1k", 224),
                                        ("resnet20", 32)])
def test_transforms_are_timms_for_the_models_pretrained_cfg(name, size):
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision import transforms as T

    cfg = image_data_config(name)
    pcfg = models.create(name).pretrained_cfg
    assert cfg["input_size"] == (3, size, size) == tuple(pcfg["input_size"]) and cfg["crop_pct"] == pcfg["crop_pct"]
    train, evaluation = image_transforms(cfg)
    crop = train.transforms[0]
    assert isinstance(crop, RandomResizedCropAndInterpolation) and tuple(crop.size) == (size, size)
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in train.transforms)
    resize, centre, *_, norm = evaluation.transforms
    assert isinstance(resize, T.Resize) and resize.size == math.floor(size / pcfg["crop_pct"])  # 235 / 256 / 32
    assert isinstance(centre, T.CenterCrop) and tuple(centre.size) == (size, size)
    assert norm.mean.tolist() == pytest.approx(list(pcfg["mean"])) and norm.std.tolist() == pytest.approx(list(pcfg["std"]))


# ---------------------------------------------------------------- --pretrained

@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, and nothing reaches for one: the hub's port does not answer the harness's probe, and timm's
    every download path fails as it does offline."""
    import timm.models._builder as builder

    def unreachable(url: str, timeout: float = 5.0) -> None:
        raise ConnectionError("cannot reach huggingface.co:443 (Name or service not known)")

    def refuse(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
                      "the cached files.\nCheck your internet connection")

    monkeypatch.setattr("bench.engine.baseline.check_reachable", unreachable)
    for fn in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file", "load_custom_from_hf"):
        monkeypatch.setattr(builder, fn, refuse)


@pytest.mark.parametrize("probe", ["unreachable", "answers"])
def test_pretrained_without_a_network_is_one_line_naming_checkpoint(offline, monkeypatch, probe):
    if probe == "answers":  # the port answers (a proxy, a firewall), the download fails all the same
        monkeypatch.setattr("bench.engine.baseline.check_reachable", lambda url, timeout=5.0: None)
    with pytest.raises(UserError) as e:
        load_pretrained(models.create("resnet50", num_classes=1000), "resnet50.a1_in1k", 1000)
    msg = str(e.value)
    assert "\n" not in msg and "resnet50.a1_in1k" in msg and "--checkpoint PATH" in msg
    assert ("ConnectionError: cannot reach huggingface.co" if probe == "unreachable" else "OSError: We couldn't") in msg


def test_pretrained_through_the_cli_offline(offline, tmp_path, capsys):
    """What a user without a network sees: one line and exit 2, and no baseline is cached."""
    thousand = tmp_path / "in1k"
    for split, n in (("train", 2), ("val", 1)):  # ImageNet-1k's class count, 8x8 images
        for c in range(1000):
            (thousand / split / f"n{c:08d}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), c % 256, np.uint8)).save(thousand / split / f"n{c:08d}" / f"{i}.png")
    err = _error(["baseline", "--model", "resnet50.tv_in1k", "--dataset", f"imagefolder:{thousand}", "--pretrained",
                  "--device", "cpu"], capsys)
    assert "resnet50.tv_in1k" in err and "could not be loaded" in err and "--checkpoint PATH" in err
    assert not list(Path(os.environ["RESULTS_DIR"]).glob("baselines/*/meta.json"))


def test_pretrained_refusals_name_the_fix(folder, capsys):
    images = ["baseline", "--dataset", f"imagefolder:{folder}", "--device", "cpu", "--pretrained", "--model"]
    err = _error(images + ["resnet50"], capsys)  # 3 classes here, 1000 in timm's weights: checked before any download
    assert "classifies 1000 classes" in err and "has 3" in err and "--checkpoint PATH" in err
    err = _error(images + ["resnet20"], capsys)  # the CIFAR zoo has no published weights
    assert "no pretrained weights for 'resnet20'" in err and "--checkpoint PATH" in err
    err = _error(images + ["resnet50.no_such_tag"], capsys)
    assert "resnet50.no_such_tag" in err and "tv_in1k" in err
    with pytest.raises(SystemExit):  # argparse: one source of weights
        main(images + ["resnet50", "--checkpoint", "x.pt"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (Path(os.environ["RESULTS_DIR"]) / "baselines").exists()


def test_the_weights_are_part_of_every_identity(folder, tmp_path):
    spec = BaselineSpec("resnet50", f"imagefolder:{folder}", load_recipe("imagenet-baseline"))
    keys = {spec.key, *(dataclasses.replace(spec, **kw).key for kw in (
        {"pretrained": "resnet50.a1_in1k"}, {"pretrained": "resnet50.tv_in1k"}, {"checkpoint_sha256": "ab" * 32}))}
    assert len(keys) == 4
    ckpt = tmp_path / "a.pt"
    torch.save({"w": torch.zeros(2)}, ckpt)
    shutil.copy(ckpt, tmp_path / "b.pt")
    trial = TrialConfig("resnet50", f"imagefolder:{folder}", "l1", {"ratio": 0.5})
    trained, pretrained, from_a, from_b = (dataclasses.replace(trial, **kw) for kw in (
        {}, {"pretrained": True}, {"checkpoint": str(ckpt)}, {"checkpoint": str(tmp_path / "b.pt")}))
    assert len({trained.key, pretrained.key, from_a.key}) == 3 and from_a.key == from_b.key  # content, not path
    assert len({trained.experiment_name, pretrained.experiment_name, from_a.experiment_name}) == 3
    assert pretrained.weights == {"weights": "timm:resnet50.a1_in1k"}  # the default tag, resolved


# ---------------------------------------------------------------- end to end

def _micro_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The imagenet profile at test size: its recipes with 1 epoch of batch 16, one trial, fast agents."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    profile = json.loads((ROOT / "sweeps" / "profiles" / "imagenet.json").read_text())
    for phase in ("baseline_recipe", "joint_recipe", "finetune_recipe"):
        recipe = json.loads((ROOT / "bench" / "engine" / "recipes" / f"{profile[phase]}.json").read_text())
        path = tmp_path / f"micro-{phase}.json"
        path.write_text(json.dumps({**recipe, "epochs": 1, "batch_size": 16, "milestones": []}))
        profile[phase] = str(path)
    profile["trials"] = 1
    profile["methods"] = {"decore": {"knob": "lambda", "break_even_range": [0.05, 0.1],
                                     "options": {"agent_init": 0.05, "agent_lr": 0.1}},
                          "l1": {"knob": "ratio", "range": [0.3, 0.5]}}
    (profiles / "imagenet-micro.json").write_text(json.dumps(profile))
    monkeypatch.setattr("sweeps.profile.PROFILE_DIR", profiles)
    return "imagenet-micro"


@pytest.mark.slow
def test_resnet50_sweep_from_a_checkpoint(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_SWEEP_REPORT", "1")  # its report is checked below
    profile = _micro_profile(tmp_path, monkeypatch)
    ckpt = tmp_path / "resnet50-3classes.pt"
    torch.save(models.create("resnet50_64px", num_classes=3).state_dict(), ckpt)
    sweep = ["sweep", "--model", "resnet50_64px", "--dataset", f"imagefolder:{folder}", "--profile", profile,
             "--methods", "decore,l1", "--trials", "1", "--match", "none", "--control", "none", "--device", "cpu",
             "--wandb", "off"]
    err = _error(sweep, capsys)  # the profile never trains its baseline
    assert f"profile '{profile}' starts from trained weights" in err and "--pretrained" in err and "--checkpoint" in err

    assert main(sweep + ["--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"baseline: imported, not trained: checkpoint {ckpt}" in out
    results = Path(os.environ["RESULTS_DIR"])
    (meta_path,) = results.glob("baselines/*/meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta["source"] == "checkpoint" and meta["spec"]["checkpoint_sha256"] == sha256_file(ckpt)
    assert meta["input_size"] == [3, 64, 64] and meta["train_images"] == 0  # the model's size; nothing trained

    (experiment,) = (p.parent for p in results.glob("resnet50_64px-*/runs.csv"))
    df = ResultsTable(experiment).read()
    base = df[df["row_type"] == "baseline"].iloc[0]
    trials = df[df["row_type"] == "trial"].set_index("method")
    assert sorted(trials.index) == ["decore", "l1"] and (trials["status"] == "complete").all()
    for column in ("val_top1_pct", "top1_pct", "top5_pct"):  # test top-1 and top-5 of every row
        assert trials[column].notna().all() and not math.isnan(base[column])
    assert base["flops"] == count_flops(models.create("resnet50", num_classes=3), (3, 64, 64))
    assert (trials["flops"] < base["flops"]).all() and (trials["params"] < base["params"]).all()
    assert trials.loc["decore", "method_images"] > 0 and (trials["budget_images"] == trials["budget_images"].iloc[0]).all()
    for name in ("README.md", "table.md", "table.tex", "pareto.png", "runs.csv", "experiment.json"):
        assert (experiment / name).is_file(), name
    assert "decore" in (experiment / "table.md").read_text().lower()
