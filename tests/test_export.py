"""Deployable exports: safetensors and ONNX round-trips of pruned models, the CLI, and its refusals."""
import json
import pickle

import numpy as np
import pytest
import torch

import models
from bench.deploy import export
from bench.cli import main
from bench.deploy.pruned import save_pruned
from methods.core import channel_groups, prune_model
from test_pruning_core import _random_plan, _randomize

# (model, input size): a pruned CIFAR ResNet (ShortcutA streams pruned), VGG-16 (pruned hidden FC) and a timm model
CASES = [("cifar_resnet20", 32), ("cifar_vgg16_bn", 32), ("mobilenetv3_small_100", 64)]


def _trial_folder(tmp_path, name, size):
    model = _randomize(models.create(name, num_classes=10))
    groups = channel_groups(model, torch.randn(1, 3, size, size), "all", name=name)
    _, plan = _random_plan(groups, name, {"num_classes": 10}, size, 0)
    pruned = prune_model(model, plan)
    return save_pruned(tmp_path / "trial", plan, pruned), pruned


@pytest.mark.slow
@pytest.mark.parametrize("name, size", CASES)
def test_export_round_trips(tmp_path, name, size):
    folder, pruned = _trial_folder(tmp_path, name, size)
    written = export.export_folder(folder)
    assert set(written) == {"onnx", "safetensors"} and (folder / "model.onnx").is_file()
    x = torch.randn(3, 3, size, size)   # another batch size than the export's check: the batch dim is dynamic
    with torch.no_grad():
        want = pruned(x)
    (folder / "model.pt").unlink()      # loading back needs plan.json + model.safetensors only
    plan, again = export.load_exported(folder)
    with torch.no_grad():
        assert torch.equal(again(x), want)
    got = export.run_onnx(folder / "model.onnx", x.numpy())
    np.testing.assert_allclose(got, want.numpy(), rtol=export.RTOL, atol=export.ATOL)
    assert plan.model == name


def test_safetensors_holds_no_pickle(tmp_path):
    folder, _ = _trial_folder(tmp_path, "cifar_resnet20", 32)
    export.export_folder(folder, ["safetensors"])
    blob = (folder / "model.safetensors").read_bytes()
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"} and "conv1.weight" in header
    assert pickle.PROTO not in blob[:2]  # not a pickle stream
    assert not (folder / "model.onnx").exists()


@pytest.mark.slow
def test_onnx_mismatch_fails_in_one_line(tmp_path, monkeypatch):
    folder, _ = _trial_folder(tmp_path, "cifar_resnet20", 32)
    monkeypatch.setattr(export, "run_onnx", lambda path, x, session=None: np.zeros((len(x), 10), np.float32))
    with pytest.raises(export.ExportError, match="differs from PyTorch") as err:
        export.export_folder(folder, ["onnx"])
    assert "\n" not in str(err.value)


def test_export_cli(tmp_path, capsys):
    folder, _ = _trial_folder(tmp_path, "cifar_resnet20", 32)
    assert main(["export", str(folder), "--format", "safetensors"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "holds no plan.json" in capsys.readouterr().err
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(export.UserError, match="not a readable safetensors"):
        export.load_exported(folder)


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg16_bn"])
def test_folded_model_equals_unfolded_in_eval_mode(name):
    from bench.deploy.forms import count_bn, fold_bn

    model = _randomize(models.create(name, num_classes=10))
    groups = channel_groups(model, torch.randn(1, 3, 32, 32), "all", name=name)
    pruned = prune_model(model, _random_plan(groups, name, {}, 32, 1)[1]).eval()
    folded = fold_bn(pruned)
    assert count_bn(pruned) > 0 and count_bn(folded) == 0     # every BatchNorm went into a conv / linear
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), pruned(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_save_pruned_exports_on_request(tmp_path):
    """What the budgeted search's winners get: save_pruned(..., export=True)."""
    model = _randomize(models.create("cifar_resnet20", num_classes=10))
    groups = channel_groups(model, torch.randn(1, 3, 32, 32), "all", name="cifar_resnet20")
    plan = _random_plan(groups, "cifar_resnet20", {"num_classes": 10}, 32, 2)[1]
    pruned = prune_model(model, plan)
    folder = save_pruned(tmp_path / "winner", plan, pruned, export=True)
    assert {p.name for p in folder.iterdir()} >= {"plan.json", "model.pt", "model.safetensors", "model.onnx"}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(export.load_exported(folder)[1](x), pruned(x))
