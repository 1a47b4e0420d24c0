"""The pruning contract on a dozen timm families, at 32x32 with 10 classes (CPU, seconds per family).

For each family: channel groups are found (and only the expected ones excluded); the plans of L1 and
random (ratio 0.5) and a DECORE-shaped plan (the final masks of random agent weights: a random plan)
remove exactly what they say, or are refused with a clear error, and gating each plan equals removing
it; scope `internal` is refused where nothing is internal.
"""
import functools
import logging

import pytest
import torch

import methods
import models
from bench.engine.measure import count_flops
from methods.core import KeepPlan, PruningError, channel_groups, gate_vs_removal, prune_model
from methods.core.gates import _out_channels
from methods.decore import Decore
from test_pruning_core import _randomize

SIZE = 32
# timm name -> (constructor overrides, expected: groups excluded at scope all, internal scope refused)
FAMILIES = {
    "resnet18d": ({}, 0, False),
    "resnext26ts": ({}, 0, False),
    "densenet121": ({"block_config": (2, 2, 2, 2)}, 0, False),  # timm's DenseNet, 2 layers per block: the
    # concatenations are the same; torch-pruning re-maps every concat per pruned group (10 s for 6-12-24-16)
    "dla46_c": ({}, 0, False),
    "hrnet_w18_small": ({}, 0, False),
    "ghostnet_100": ({}, 0, False),
    "repvgg_a0": ({}, 0, True),  # every conv writes onto a residual stream
    "mobilenetv2_050": ({}, 0, False),
    "mobilenetv3_small_050": ({}, 0, False),
    "efficientnet_b0": ({}, 0, False),
    "mnasnet_050": ({}, 0, False),
    "regnetx_002": ({}, 0, False),
    "convnext_atto": ({}, 4, False),  # LayerNorm before each downsampling conv and the head
    # one per channel-split construct (tests/test_split_constructs.py builds each in miniature)
    "cs3darknet_focus_s": ({}, 0, False),  # CSP: int split into halves, one through the blocks, concatenated
    "res2next50": ({}, 0, False),  # Res2Net scales: split by width, cascaded adds, concatenated
    "mixnet_s": ({}, 1, False),  # mixed kernels: split_with_sizes into depthwise convs of several kernels; 1
    # stream concatenated from two pointwise convs would lose one whole conv at some half: excluded
    "rexnet_100": ({}, 0, False),  # partial residual: the shortcut adds into a slice of the channels
    "skresnet18": ({}, 8, False),  # selective kernel: its 8 attention maps cannot lose half their units
    "resnest14d": ({}, 17, False),  # split attention: 13 groups regroup or are too small; the removal check
    # excludes the 4 whose removal breaks SplitAttn's radix reshape (methods/core/verify.py); 6 stay prunable
}


def _family(name: str) -> pytest.MarkDecorator:
    """A family's tests in one pytest-xdist group: `_setup` builds a family's model and groups once per worker
    process, so its tests share one worker."""
    return pytest.mark.xdist_group(f"timm-{name}")


def _families() -> list:
    """FAMILIES as parameters, each in its family's group."""
    return [pytest.param(n, marks=_family(n)) for n in FAMILIES]


@functools.lru_cache(maxsize=None)
def _setup(name):
    torch.manual_seed(0)
    kw = FAMILIES[name][0]
    model = _randomize(models.create(name, num_classes=10, **kw))
    logging.disable(logging.WARNING)  # excluded groups are asserted below, not logged
    try:
        groups = channel_groups(model, torch.randn(1, 3, SIZE, SIZE), "all", name=name)
    finally:
        logging.disable(logging.NOTSET)
    return model, groups, count_flops(model, (3, SIZE, SIZE))


def _check_removal(name, plan, masks, x):
    """The pruned model keeps len(kept) * tie channels of every group's root, and equals the gated one."""
    model, groups, flops = _setup(name)
    pruned = prune_model(model, plan)
    for gid, kept in plan.keep.items():
        assert _out_channels(pruned.get_submodule(gid)) == len(kept) * groups[gid].tie, gid
    err = gate_vs_removal(model, groups, masks, pruned, x)[2]
    assert err < 1e-5, f"gate vs removal relative error {err:.2e}"
    assert count_flops(pruned, (3, SIZE, SIZE)) < flops


@pytest.mark.slow
@pytest.mark.parametrize("name", _families())
def test_groups_found(name):
    _, groups, _ = _setup(name)
    assert len(groups) > 0 and len(groups.excluded) == FAMILIES[name][1], groups.excluded
    assert all(g.gate_points for g in groups)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["l1", "random", "decore"])
@pytest.mark.parametrize("name", _families())
def test_method_plans_remove_what_they_say(name, method):
    model, groups, _ = _setup(name)
    ctx = methods.Context(model, groups, name, {"num_classes": 10, **FAMILIES[name][0]}, (3, SIZE, SIZE),
                          torch.device("cpu"))
    if method == "decore":  # the plan DECORE ends with: channels whose keep-probability fell below 0.5
        agents = [torch.randn(g.units, generator=torch.Generator().manual_seed(1)) for g in groups]
        masks = Decore._final_masks(agents, [g.id for g in groups])
        plan = ctx.plan(masks)
    else:
        try:
            plan = methods.get_method(method).select(ctx, ratio=0.5).plan
        except (methods.KnobError, PruningError) as e:  # a refusal must say what and how to fix it
            pytest.fail(f"{method} refused {name}: {e}")
        masks = {gid: torch.isin(torch.arange(plan.units[gid]), torch.tensor(kept)) for gid, kept in plan.keep.items()}
        assert all(len(k) == max(1, int(plan.units[g] * 0.5)) for g, k in plan.keep.items())
    _check_removal(name, plan, masks, torch.randn(2, 3, SIZE, SIZE))


@pytest.mark.slow
@pytest.mark.parametrize("name", _families())
def test_internal_scope(name):
    model, _, _ = _setup(name)
    if FAMILIES[name][2]:
        with pytest.raises(PruningError, match=rf"{name} has nothing to prune at scope 'internal'.*use scope all"):
            channel_groups(model, torch.randn(1, 3, SIZE, SIZE), "internal", name=name)
    else:
        groups = channel_groups(model, torch.randn(1, 3, SIZE, SIZE), "internal", name=name)
        assert len(groups) > 0 and all(g.kind == "internal" for g in groups)


def test_nothing_to_prune_is_refused_before_training(synthetic, tmp_path):
    """The engine refuses repvgg_a0 at scope internal before any baseline trains (nothing is written)."""
    from bench.trial.run import TrialConfig, run_trial

    cfg = TrialConfig("repvgg_a0", "synthetic", "l1", {"ratio": 0.5}, scope="internal", selection="test")
    with pytest.raises(PruningError, match="repvgg_a0 has nothing to prune at scope 'internal'"):
        run_trial(cfg, torch.device("cpu"), data=synthetic)
    assert not any((tmp_path / "results").rglob("*.pt"))


@_family("ghostnet_100")
def test_ghostnet_cheap_branch_channels_are_tied():
    """GhostNet's x2 = depthwise(x1) is concatenated with x1: stream channels j and j + C/2 are one unit."""
    _, groups, _ = _setup("ghostnet_100")
    stream = groups["blocks.1.0.shortcut.0"]
    assert stream.kind == "stream" and stream.tie == 2 and stream.units == 8
    assert {p.module for p in stream.producers} >= {"blocks.0.0.ghost2.primary_conv.1", "blocks.0.0.ghost2.cheap_operation.1"}
    kept = KeepPlan.from_masks(groups, {stream.id: torch.arange(8) < 3}, "ghostnet_100").keep[stream.id]
    assert kept == [0, 1, 2]


def test_coupling_ties_only_a_regular_pattern():
    from methods.core.groups import _coupling_tie

    assert _coupling_tie([], 16) == (1, "")
    assert _coupling_tie([[c, c + 8] for c in range(8)], 16) == (2, "")
    tie, why = _coupling_tie([[0, 5]], 16)  # one pair only: no mask unit layout can gate it exactly
    assert tie == 1 and "coupled unevenly" in why and "[0, 5]" in why


@_family("resnest14d")
def test_split_attention_groups_the_removal_check_excludes_are_named():
    """ResNeSt: the groups of SplitAttn's fc2 pass tracing, but removing them breaks its radix reshape; the
    removal check excludes exactly those four, naming the construct, and leaves the rest prunable."""
    _, groups, _ = _setup("resnest14d")
    broke = sorted(gid for gid, why in groups.excluded.items() if why.startswith("removing it breaks SplitAttn ("))
    assert broke == [f"layer{i}.0.conv2.fc2" for i in range(1, 5)], groups.excluded
