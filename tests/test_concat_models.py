"""DenseNet-40 and GoogLeNet (channel groups through concatenation): every method runs end to end."""
import copy

import pytest
import torch

import methods
import models
from bench.engine.data import DeviceLoader, make_synthetic
from bench.engine.measure import count_flops, count_params
from bench.engine.recipe import Recipe
from bench.engine.train import fit
from methods.core import channel_groups, prune_model

CPU = torch.device("cpu")
SIZE = 16  # both are CIFAR models with global pooling: 16x16 keeps DECORE's joint epoch to a second


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(train_per_class=4, test_per_class=1, size=SIZE)


def _ctx(name, data):
    model = models.create(name).eval()
    groups = channel_groups(model, torch.randn(1, 3, SIZE, SIZE), "all", name=name)

    def plan_cost(plan):
        pruned = prune_model(model, plan)
        return {"params": count_params(pruned), "flops": count_flops(pruned, (3, SIZE, SIZE))}

    train = DeviceLoader(data.train, data.mean, data.std, 20, train=True)
    recipe = Recipe("joint", epochs=1, batch_size=20, lr=0.01, schedule="constant")
    return methods.Context(copy.deepcopy(model), groups, name, {"num_classes": 10}, (3, SIZE, SIZE), CPU,
                           train_loader=train, recipe=recipe, fit=fit, plan_cost=plan_cost)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["decore", "l1", "random"])
@pytest.mark.parametrize("name", ["cifar_densenet40", "cifar_googlenet"])
def test_methods_prune_concat_models(name, method, tiny):
    m = methods.get_method(method)
    ctx = _ctx(name, tiny)
    # two joint steps only: agents start near keep-probability 0.5 so that the policy moves some across it
    knobs = {"lambda": 0.01, "agent_init": 0.05, "agent_lr": 0.1} if method == "decore" else {"ratio": 0.5}
    plan = m.select(ctx, **m.check_knobs(knobs)).plan
    assert any(len(k) < plan.units[g] for g, k in plan.keep.items())
    pruned = prune_model(ctx.model, plan)
    assert ctx.plan_cost(plan)["flops"] == count_flops(pruned, (3, SIZE, SIZE)) < count_flops(ctx.model, (3, SIZE, SIZE))
    for gid, kept in plan.keep.items():  # the root layer of every group has exactly the kept channels
        root = pruned.get_submodule(gid)
        assert root.out_channels == len(kept), gid
    assert pruned(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 10)
