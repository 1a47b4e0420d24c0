import copy

import pytest
import torch

from bench.engine.data import DeviceLoader
from bench.engine.recipe import Recipe, load_recipe
from bench.core.errors import UserError
from bench.engine.train import fit, lr_factor, prepare_model, topk_correct


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


@pytest.mark.slow
def test_training_learns_the_synthetic_set(training_run):
    """The session's training run (tests/conftest.py): resnet20, 3 epochs of fit, validated on the test split."""
    _, before, history = training_run
    assert len(history) == 3 and history[0]["lr"] == pytest.approx(0.05)
    assert history[-1]["val_top1"] > 60 > before + 20
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def _tiny_net():
    import torch.nn as nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


@pytest.mark.slow
def test_compiled_gated_model_keeps_its_gates_after_an_ungated_one_of_its_class():
    """Real inductor on CPU. Dynamo skips hook guards by default: without `compiled`'s guard, a gated model
    compiled after an ungated one of the same class reused the ungated graph and ran without its gates."""
    from methods.core import Gates, channel_groups

    torch._dynamo.reset()
    device = torch.device("cpu")
    torch.manual_seed(0)
    base = _tiny_net().eval()
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    plain = prepare_model(copy.deepcopy(base), device)
    assert torch.allclose(prepare_model(plain, device, compile=True)(x), plain(x), atol=1e-5)
    gated = prepare_model(copy.deepcopy(base), device)
    groups = channel_groups(gated, torch.randn(1, 3, 8, 8), "all")
    with Gates(gated, groups) as gates:
        run = prepare_model(gated, device, compile=True)
        for seed in (0, 1):  # masks change every step: the graph reads the current ones
            torch.manual_seed(seed)
            gates.set({g.id: torch.bernoulli(torch.full((4, g.units), 0.5)) for g in groups})
            want = gated(x)
            assert not torch.allclose(want, plain(x), atol=1e-3)   # the gates change the output ...
            assert torch.allclose(run(x), want, atol=1e-5)          # ... and the compiled model applies them


def test_bf16_autocast_path_trains_on_cpu(synthetic):
    """The CUDA default (bf16 autocast) forced on CPU: convolutions run in bf16 and training still learns."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = prepare_model(_tiny_net(), device)
    dtypes = set()
    model[0].register_forward_hook(lambda m, a, out: dtypes.add(out.dtype))
    train = DeviceLoader(synthetic.train, synthetic.mean, synthetic.std, 50, train=True)
    history = fit(model, train, None, Recipe("t", epochs=2, batch_size=50, lr=0.05), device, bf16=True)
    assert dtypes == {torch.bfloat16}
    assert all(h["train_loss"] == h["train_loss"] for h in history)  # finite, no NaN
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_compiled_training_reuses_the_graph_for_the_same_architecture(synthetic):
    """fit(compile=True) with the real inductor on CPU; a second model of the same architecture (the next
    trial in a sweep worker) trains without a new graph."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    device = torch.device("cpu")
    train = DeviceLoader(synthetic.train.subset_per_class(10), synthetic.mean, synthetic.std, 50, train=True)
    graphs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = prepare_model(_tiny_net(), device)
        before = [p.detach().clone() for p in model.parameters()]
        history = fit(model, train, None, Recipe("t", epochs=1, batch_size=50, lr=0.05), device, compile=True)
        assert history[0]["train_loss"] == history[0]["train_loss"]
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # the model itself trained
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[1] == graphs[0]
