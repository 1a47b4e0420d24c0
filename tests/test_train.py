import pytest
import torch

import models
from bench.data import DeviceLoader
from bench.recipe import Recipe, load_recipe
from bench.errors import UserError
from bench.train import evaluate, fit, lr_factor, prepare_model, topk_correct


def test_lr_schedules():
    cos = Recipe("c", epochs=10, batch_size=8, lr=1.0, schedule="cosine", warmup_epochs=2)
    assert lr_factor(cos, 1.0) == pytest.approx(0.5)       # halfway through warm-up
    assert lr_factor(cos, 2.0) == pytest.approx(1.0)       # peak
    assert lr_factor(cos, 6.0) == pytest.approx(0.5)       # cosine midpoint
    assert lr_factor(cos, 10.0) == pytest.approx(0.0, abs=1e-9)
    ms = Recipe("m", epochs=164, batch_size=8, lr=1.0, schedule="multistep", milestones=(82, 123))
    assert [lr_factor(ms, e) for e in (0, 81.9, 82, 123)] == pytest.approx([1, 1, 0.1, 0.01])


def test_recipes_load_and_validate(tmp_path):
    assert load_recipe("cifar-standard").epochs == 164
    with pytest.raises(UserError, match="did you mean cpu-tiny"):
        load_recipe("cpu-tiyn")
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 0, "batch_size": 8, "lr": 0.1}')
    with pytest.raises(UserError, match="epochs=0 must be a positive number"):
        load_recipe(str(bad))


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.7], [0.2, 0.3, 0.5]])
    y = torch.tensor([1, 2, 0])
    assert topk_correct(logits, y, (1, 2)).tolist() == [1, 2]  # top-5 on 3 classes clamps to 3


def test_training_learns_the_synthetic_set(synthetic):
    device = torch.device("cpu")
    recipe = Recipe("t", epochs=3, batch_size=50, lr=0.05, weight_decay=5e-4, nesterov=True)
    train = DeviceLoader(synthetic.train, synthetic.mean, synthetic.std, 50, train=True, seed=0)
    test = DeviceLoader(synthetic.test, synthetic.mean, synthetic.std, 100)
    model = prepare_model(models.create("resnet20", num_classes=10), device)
    before = evaluate(model, test, device)["top1"]
    history = fit(model, train, test, recipe, device)
    assert len(history) == 3 and history[0]["lr"] == pytest.approx(0.05)
    assert history[-1]["test_top1"] > 60 > before + 20
    assert history[-1]["train_loss"] < history[0]["train_loss"]
