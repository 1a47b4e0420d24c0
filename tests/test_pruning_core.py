"""The pruning core's invariant: gating a channel to zero == removing it, on CIFAR and timm models."""
import json

import pytest
import torch
import torch.nn as nn

import models
from bench.engine.measure import count_flops, count_params
from bench.deploy.pruned import load_pruned, save_pruned
from methods.core import Gates, KeepPlan, PruningError, channel_groups, gate_vs_removal, prune_model, rebuild
from methods.core.verify import perturb_norms

# (model, constructor args, input size, scope)
CASES = [
    ("cifar_resnet20", {}, 32, "all"),
    ("cifar_resnet20", {}, 32, "internal"),
    ("cifar_resnet56", {}, 32, "all"),
    ("cifar_resnet56", {}, 32, "internal"),
    ("cifar_vgg16_bn", {}, 32, "all"),
    ("cifar_densenet40", {}, 32, "all"),
    ("cifar_googlenet", {}, 16, "all"),  # a CIFAR model at 16x16 (global pooling): same groups, 4x faster
    ("resnet18", {}, 64, "all"),
    ("mobilenetv3_small_100", {}, 64, "all"),
    ("efficientnet_b0", {}, 64, "all"),
    ("regnetx_002", {}, 64, "all"),
    ("convnext_atto", {}, 64, "all"),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, 32, "all"),
]


_randomize = perturb_norms  # non-trivial norm statistics and affine terms, so a wrong gate shows


def _random_plan(groups, name, kw, size, seed, p_keep=0.5):
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for gr in groups:
        m = torch.rand(gr.units, generator=g) < p_keep
        m[torch.randint(gr.units, (1,), generator=g)] = True  # at least one survives
        masks[gr.id] = m
    return masks, KeepPlan.from_masks(groups, masks, name, model_args=kw, input_size=[3, size, size])


@pytest.mark.parametrize("name, kw, size, scope", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_gated_equals_pruned(name, kw, size, scope):
    torch.manual_seed(0)
    model = _randomize(models.create(name, num_classes=10, **kw))
    x = torch.randn(3, 3, size, size)
    groups = channel_groups(model, x[:1], scope, name=name)
    assert len(groups) > 0
    if scope == "internal":
        assert all(g.kind == "internal" for g in groups)
    with torch.no_grad():
        full = model(x)
    for seed in range(2):
        masks, plan = _random_plan(groups, name, kw, size, seed)
        pruned = prune_model(model, plan)
        _, out, err = gate_vs_removal(model, groups, masks, pruned, x)
        assert err < 1e-5, f"{name} seed {seed}: gate vs removal relative error {err:.2e}"
        assert ((full - out).norm() / full.norm()).item() > 1e-3  # pruning changed something
        assert count_params(pruned) < count_params(model)
        assert count_flops(pruned, (3, size, size)) < count_flops(model, (3, size, size))
    with torch.no_grad():
        assert torch.equal(model(x), full)  # gates removed, original untouched


def test_per_sample_masks_match_per_sample_pruning():
    model = _randomize(models.create("cifar_resnet20"))
    x = torch.randn(2, 3, 32, 32)
    groups = channel_groups(model, x[:1], "all")
    plans = [_random_plan(groups, "cifar_resnet20", {}, 32, seed) for seed in (3, 4)]
    masks = {gid: torch.stack([plans[0][0][gid], plans[1][0][gid]]).float() for gid in plans[0][0]}
    with Gates(model, groups) as gates, torch.no_grad():
        gates.set(masks)  # (N, units): sample b gets plan b
        gated = model(x)
    for b, (_, plan) in enumerate(plans):
        with torch.no_grad():
            out = prune_model(model, plan)(x[b:b + 1])
        assert torch.allclose(gated[b:b + 1], out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kw, size", [("cifar_resnet20", {}, 32), ("efficientnet_b0", {}, 64)])
def test_inplace_gates_train_exactly_like_out_of_place(name, kw, size, monkeypatch):
    """In-place gating (BN/Conv/Linear outputs) gives the same loss and gradients as a plain multiply."""
    from methods.core import gates as gates_mod
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    results = []
    for inplace in (True, False):
        monkeypatch.setattr(gates_mod, "INPLACE", inplace)
        torch.manual_seed(0)
        model = _randomize(models.create(name, num_classes=10, **kw)).train()
        groups = channel_groups(model, x[:1], "all", name=name)
        masks, _ = _random_plan(groups, name, kw, size, seed=5)
        per_sample = {k: torch.stack([v, v.roll(1), v, v.roll(2)]).float() for k, v in masks.items()}
        with Gates(model, groups) as g:
            g.set(per_sample)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l_in, g_in), (l_out, g_out) = results
    assert torch.allclose(l_in, l_out, rtol=1e-6)
    assert g_in.keys() == g_out.keys()
    for n in g_in:
        assert torch.allclose(g_in[n], g_out[n], rtol=1e-4, atol=1e-6), n


def test_cifar_resnet_groups_are_per_stage():
    model = models.create("cifar_resnet56")
    groups = channel_groups(model, torch.randn(1, 3, 32, 32), "all")
    streams = [g for g in groups if g.kind == "stream"]
    assert [g.channels for g in streams] == [16, 32, 64]
    assert len(groups) == 27 + 3
    stage2 = streams[1]
    names = [p.module for p in stage2.producers]
    assert "layer2.0.shortcut" in names and all(not n.startswith("layer3") for n in names)


def _prune_one(name, gid, n_removed, size):
    """The model and its copy with the first `n_removed` units of group `gid` removed (gated check too)."""
    model = _randomize(models.create(name))
    x = torch.randn(2, 3, size, size)
    groups = channel_groups(model, x[:1], "all", name=name)
    mask = torch.ones(groups[gid].units, dtype=torch.bool)
    mask[:n_removed] = False
    plan = KeepPlan.from_masks(groups, {gid: mask}, name, input_size=[3, size, size])
    pruned = prune_model(model, plan)
    with Gates(model, groups) as gates, torch.no_grad():
        gates.set({gid: mask.float()})
        assert torch.allclose(model(x), pruned(x), rtol=1e-5, atol=1e-5)
    return model, pruned


def test_densenet_concat_group_flops():
    """A dense layer's 12 new channels feed every later layer of its block and the transition."""
    model, pruned = _prune_one("cifar_densenet40", "dense1.0.conv1", 5, 32)
    hw = 32 * 32
    own = 5 * 24 * 9 * hw                # the layer's own 3x3 conv from 24 channels
    later = 5 * 11 * 12 * 9 * hw         # input channels of the 11 later 3x3 convs of block 1
    trans = 5 * 168 * hw                 # input channels of trans1's 1x1 conv (its output is untouched)
    assert count_flops(model) - count_flops(pruned) == own + later + trans
    assert pruned.dense1[11].bn1.num_features == 156 - 5 and pruned.trans1.conv1.weight.shape == (168, 163, 1, 1)
    assert pruned.dense2[0].bn1.num_features == 168
    # torch-pruning's concat index mapping: the layer's channels sit at offset 24 of every later input
    group = channel_groups(model, torch.randn(1, 3, 32, 32), "all")["dense1.0.conv1"]
    offsets = {p.module: p.channels for p in group.producers}
    assert offsets["dense1.0.conv1"] == list(range(12))
    assert offsets["dense1.5.bn1"] == offsets["trans1.bn1"] == list(range(24, 36))
    assert len(offsets) == 1 + 11 + 1 and all(p.units == list(range(12)) for p in group.producers)


def test_googlenet_branch_group_flops():
    """An Inception branch's output feeds the four branches of the next block through the concatenation."""
    model, pruned = _prune_one("cifar_googlenet", "a3.b2.3", 8, 32)  # a3's 3x3 branch: 128 channels at 32x32
    hw = 32 * 32
    own = 8 * 96 * 9 * hw                   # a3.b2's 3x3 conv from 96 channels
    consumers = 8 * (128 + 128 + 32 + 64) * hw  # b3's 1x1 convs: b1, b2 reduce, b3 reduce, pool projection
    assert count_flops(model) - count_flops(pruned) == own + consumers
    assert pruned.b3.b1[0].in_channels == 256 - 8 and pruned.a4.b1[0].in_channels == 480


def test_tied_masks_for_grouped_convs():
    model = models.create("regnetx_002")
    groups = channel_groups(model, torch.randn(1, 3, 64, 64), "all")
    tied = [g for g in groups if g.tie > 1]
    assert tied and all(g.units == 8 for g in tied)  # RegNetX-200MF: group width 8


def test_excluded_groups_are_named(caplog):
    model = models.create("convnext_atto")
    with caplog.at_level("WARNING"):
        groups = channel_groups(model, torch.randn(1, 3, 64, 64), "all", name="convnext_atto")
    assert set(groups.excluded) == {"stem.0", "stages.1.downsample.1", "stages.2.downsample.1", "stages.3.downsample.1"}
    assert all("LayerNorm" in why for why in groups.excluded.values())
    assert len(caplog.records) == 1 and "stem.0" in caplog.records[0].getMessage()


def test_classifier_is_never_pruned():
    model = models.create("cifar_vgg16_bn")
    groups = channel_groups(model, torch.randn(1, 3, 32, 32), "all")
    assert "fc" not in groups.by_id and "pre_logits.0" in groups.by_id


def test_save_rebuild_roundtrip(tmp_path):
    model = _randomize(models.create("cifar_resnet20"))
    x = torch.randn(2, 3, 32, 32)
    groups = channel_groups(model, x[:1], "all")
    _, plan = _random_plan(groups, "cifar_resnet20", {}, 32, 7)
    pruned = prune_model(model, plan)
    save_pruned(tmp_path / "p", plan, pruned)
    text = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert text["model"] == "cifar_resnet20" and set(text["keep"]) == {g.id for g in groups}
    plan2, again = load_pruned(tmp_path / "p")
    assert plan2 == plan
    with torch.no_grad():
        assert torch.equal(pruned(x), again.eval()(x))


def test_bad_plans():
    groups = channel_groups(models.create("cifar_resnet20"), torch.randn(1, 3, 32, 32), "all")
    g = groups.groups[0]
    with pytest.raises(ValueError, match="removes every channel"):
        KeepPlan("cifar_resnet20", {g.id: []}, {g.id: g.units})
    with pytest.raises(ValueError, match="not distinct"):
        KeepPlan("cifar_resnet20", {g.id: [0, 0]}, {g.id: g.units})
    with pytest.raises(PruningError, match="does not have"):
        rebuild(KeepPlan("cifar_resnet20", {"nope": [0]}, {"nope": 4}))


def test_untraceable_model_error():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return {"not": "a tensor"}

    with pytest.raises(PruningError, match="cannot trace the dependency graph of weird"):
        channel_groups(Weird(), torch.randn(1, 3, 8, 8), name="weird")
