"""Method contracts and the algorithms' defining behaviour (DESIGN.md section 2, Li et al. 2017)."""
import math

import pytest
import torch

import methods
import models
from bench.engine.data import DeviceLoader
from bench.engine.measure import count_flops, count_params
from bench.engine.recipe import Recipe
from bench.engine.train import fit
from methods.base import Knob, KnobError, Method, register
from methods.core import channel_groups, prune_model
from methods.decore import agent_loss, break_even_lambda

CPU = torch.device("cpu")


def _ctx(model, synthetic, scope="all", seed=0, epochs=2):
    import copy
    model = copy.deepcopy(model)
    groups = channel_groups(model, torch.randn(1, 3, 32, 32), scope, name="cifar_resnet20")

    def plan_cost(plan):
        pruned = prune_model(model, plan)
        return {"params": count_params(pruned), "flops": count_flops(pruned)}

    train = DeviceLoader(synthetic.train, synthetic.mean, synthetic.std, 50, train=True, seed=seed)
    recipe = Recipe("joint", epochs=epochs, batch_size=50, lr=0.01, schedule="constant")
    return methods.Context(model, groups, "cifar_resnet20", {"num_classes": 10}, (3, 32, 32), CPU, seed,
                           train_loader=train, recipe=recipe, fit=fit, plan_cost=plan_cost)


def _flops_fraction(ctx, plan):
    return ctx.plan_cost(plan)["flops"] / ctx.plan_cost(ctx.plan({}))["flops"]


# ---------------------------------------------------------------- registry and knobs

def test_registry_refuses_duplicates_and_suggests_names():
    assert set(methods.METHODS) >= {"decore", "l1", "random"}
    with pytest.raises(ValueError, match="already registered"):
        register("l1")(type("Other", (Method,), {}))
    with pytest.raises(KnobError, match="did you mean decore"):
        methods.get_method("decor")


@pytest.mark.parametrize("method, knobs, message", [
    ("decore", {"lambda": -1}, "outside"),
    ("decore", {"lambda": 0}, "outside"),
    ("l1", {"ratio": 1.0}, "outside"),
    ("random", {"ratio": "half"}, "not a number"),
    ("l1", {"ratoi": 0.5}, "did you mean ratio"),
])
def test_knobs_are_validated(method, knobs, message):
    with pytest.raises(KnobError, match=message):
        methods.get_method(method).check_knobs(knobs)


def test_knobs_are_declared_as_data():
    lam = {k.name: k for k in methods.get_method("decore").knobs}["lambda"]
    assert isinstance(lam, Knob) and lam.log and lam.open_low
    ratio = {k.name: k for k in methods.get_method("l1").knobs}["ratio"]
    assert (ratio.low, ratio.high, ratio.log) == (0.0, 1.0, False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_method_contract(name, trained, synthetic):
    """Every registered method: a valid plan, a smaller model that runs."""
    method = methods.get_method(name)
    ctx = _ctx(trained, synthetic, scope=method.default_scope, epochs=1)
    result = method.select(ctx, **method.check_knobs(method.example))
    plan = result.plan
    assert set(plan.keep) <= {g.id for g in ctx.groups}
    assert all(1 <= len(k) <= plan.units[g] for g, k in plan.keep.items())
    pruned = prune_model(trained, plan)
    if name == "control":  # the no-pruning control keeps every channel
        assert count_flops(pruned) == count_flops(trained)
    else:
        assert count_flops(pruned) < count_flops(trained)
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------- DECORE

def test_break_even_lambda():
    assert break_even_lambda(0.87) == pytest.approx(0.87 / 0.13)
    lam = break_even_lambda(0.9)
    assert 0.9 == pytest.approx(lam / (1 + lam))
    with pytest.raises(KnobError):
        break_even_lambda(1.0)


def test_agent_gradient_matches_hand_computation():
    """Two channels, two samples: sample 0 correct, keeps channel 0 drops channel 1; sample 1 wrong, drops both."""
    lam = 3.0
    w = torch.tensor([0.5, -1.0], requires_grad=True)
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    correct = torch.tensor([True, False])
    loss, rewards = agent_loss([w], [a], correct, lam)
    loss.backward()
    r = torch.tensor([1 * 1.0, 2 * -lam])                      # dropped count x (+1 / -lambda)
    p = torch.sigmoid(w.detach())
    # d/dw_j of -(1/N) sum_b R_b sum_j log pi(a_bj) = -(1/N) sum_b R_b (a_bj - sigmoid(w_j))
    expected = -(r[:, None] * (a - p)).mean(0)
    assert torch.allclose(w.grad, expected)
    assert rewards.tolist() == pytest.approx([r.mean().item()])
    log_pi = (a * torch.log(p) + (1 - a) * torch.log(1 - p)).sum(1)
    assert loss.item() == pytest.approx(-(r * log_pi).mean().item())


def test_all_correct_makes_keep_probabilities_fall():
    torch.manual_seed(0)
    w = torch.full((8,), 2.0, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.01)
    start = torch.sigmoid(w).mean().item()
    for _ in range(100):
        a = torch.bernoulli(torch.sigmoid(w.detach()).expand(64, -1))
        loss, _ = agent_loss([w], [a], torch.ones(64, dtype=torch.bool), lam=5.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.sigmoid(w).mean().item() < start - 0.1


def test_lambda_per_stage_scales_each_groups_penalty(synthetic):
    """Named option lambda_per_stage: group i's loss equals the single-lambda loss at lambda * factor[stage]."""
    from methods.decore import group_lambdas

    torch.manual_seed(0)
    ws = [torch.randn(4, requires_grad=True) for _ in range(2)]
    acts = [torch.bernoulli(torch.full((6, 4), 0.5)) for _ in range(2)]
    correct = torch.tensor([True, False, True, False, False, True])
    both, _ = agent_loss(ws, acts, correct, [2.0, 8.0])
    apart = agent_loss(ws[:1], acts[:1], correct, 2.0)[0] + agent_loss(ws[1:], acts[1:], correct, 8.0)[0]
    assert both.item() == pytest.approx(apart.item())
    groups = _ctx(models.create("resnet20"), synthetic).groups
    lams = dict(zip([g.id for g in groups], group_lambdas(groups, 2.0, (1.0, 0.5, 4.0))))
    assert lams["layer1.0.conv1"] == 2.0 and lams["layer2.1.conv1"] == 1.0 and lams["layer3.0.conv2"] == 8.0
    assert group_lambdas(groups, 2.0, None) == 2.0  # off by default: the paper's single lambda
    with pytest.raises(KnobError, match="lambda_per_stage has 2 entries"):
        group_lambdas(groups, 2.0, (1.0, 1.0))
    with pytest.raises(KnobError, match="must be positive"):
        methods.get_method("decore").check_knobs({"lambda": 1, "lambda_per_stage": "1,-1,2"})


@pytest.mark.slow
def test_decore_compression_does_not_grow_with_lambda(trained, synthetic):
    """On the synthetic set: tiny lambda drops a lot, a huge lambda with errors present drops nothing."""
    decore = methods.get_method("decore")
    fractions = []
    for lam in (0.01, 1.0, 1e4):
        ctx = _ctx(trained, synthetic)
        result = decore.select(ctx, **{"lambda": lam, "agent_init": 2.0, "agent_lr": 0.1})
        fractions.append(_flops_fraction(ctx, result.plan))
        assert len(result.history) == 2 and "keep_prob" in result.history[-1] and "flops_if_pruned" in result.history[-1]
        if lam == 1e4:
            assert result.history[-1]["gated_top1"] < 100  # errors were present
            assert all(len(k) == result.plan.units[g] for g, k in result.plan.keep.items())  # nothing dropped
    assert fractions[0] < 0.9
    assert fractions[0] <= fractions[1] <= fractions[2] == 1.0


# ---------------------------------------------------------------- L1 and random

def test_l1_removes_exactly_the_smallest_norm_filters(synthetic):
    model = models.create("resnet20")
    conv = model.layer1[0].conv1
    scale = torch.randperm(16).float() + 1
    with torch.no_grad():
        conv.weight.copy_(torch.sign(torch.randn_like(conv.weight)) * scale[:, None, None, None])
    ctx = _ctx(model, synthetic, scope="internal")
    plan = methods.get_method("l1").select(ctx, ratio=0.25).plan
    expected = sorted(torch.argsort(scale, descending=True)[:12].tolist())  # int(16 * 0.75) = 12 kept
    assert plan.keep["layer1.0.conv1"] == expected


LI_TABLE1 = {  # (model, preset): (FLOPs, params) of Li et al.'s Table 1
    ("cifar_resnet56", "li2017-A"): (112e6, 0.77e6),
    ("cifar_resnet56", "li2017-B"): (90.9e6, 0.73e6),
    ("cifar_resnet110", "li2017-A"): (213e6, 1.68e6),
    ("cifar_resnet110", "li2017-B"): (155e6, 1.16e6),
    ("cifar_vgg16_bn", "li2017-A"): (206e6, 5.4e6),
}


@pytest.mark.parametrize("name, preset", list(LI_TABLE1))
def test_li2017_presets_reproduce_table1(name, preset):
    model = models.create(name).eval()
    groups = channel_groups(model, torch.randn(1, 3, 32, 32), "internal")
    ctx = methods.Context(model, groups, name, {"num_classes": 10}, (3, 32, 32), CPU)
    pruned = prune_model(model, methods.get_method("l1").select(ctx, preset=preset).plan)
    flops, params = LI_TABLE1[(name, preset)]
    assert count_flops(pruned) == pytest.approx(flops, rel=0.01)
    assert count_params(pruned) == pytest.approx(params, rel=0.01)


def test_random_is_deterministic_per_seed(trained, synthetic):
    rnd = methods.get_method("random")
    plans = [rnd.select(_ctx(trained, synthetic, seed=s), ratio=0.5).plan.keep for s in (0, 0, 1)]
    assert plans[0] == plans[1] and plans[0] != plans[2]


@pytest.mark.parametrize("method, scope, target", [("l1", "all", 0.5), ("random", "all", 0.3), ("l1", "internal", 0.7)])
def test_flops_targets_land_within_one_percent(trained, synthetic, method, scope, target):
    ctx = _ctx(trained, synthetic, scope=scope)
    result = methods.get_method(method).select(ctx, flops_target=target)
    assert _flops_fraction(ctx, result.plan) == pytest.approx(target, rel=0.01)


def test_unreachable_flops_target_is_a_clear_error(trained, synthetic):
    with pytest.raises(KnobError, match="cannot be met at scope 'internal': the smallest reachable"):
        methods.get_method("l1").select(_ctx(trained, synthetic, scope="internal"), flops_target=0.02)


def test_round_to_rounds_kept_channels_up(trained, synthetic):
    ctx = _ctx(trained, synthetic, scope="all")
    ctx.round_to = 8
    plan = methods.get_method("l1").select(ctx, ratio=0.3).plan
    assert all(len(k) % 8 == 0 or len(k) == plan.units[g] for g, k in plan.keep.items())
    assert math.isclose(len(plan.keep["layer1.0.conv1"]), 16)  # int(16 * 0.7) = 11 -> 16


def test_decore_round_to_keeps_the_likeliest_dropped_channels():
    from methods.decore import Decore
    w = torch.tensor([3.0, -1.0, 2.0, -0.5, -4.0, 1.0, -2.0, -3.0, 0.2, -0.1, -5.0])  # 4 kept by the policy
    ids = ["g"]
    plain = Decore._final_masks([w], ids)["g"]
    assert plain.tolist() == (torch.sigmoid(w) >= 0.5).tolist()
    rounded = Decore._final_masks([w], ids, round_to=8)["g"]
    assert int(rounded.sum()) == 8 and bool((rounded | ~plain).all())          # a superset of the policy's choice
    dropped_kept = w[rounded & ~plain]
    assert dropped_kept.min() >= w[~rounded].max()                               # the likeliest of the dropped
    assert int(Decore._final_masks([torch.full((5,), -9.0)], ids, round_to=8)["g"].sum()) == 5  # capped at units
