"""Channel splits, slices and attention-like blocks, each on a small network built here (CPU, seconds).

For every construct: channel groups are found, a seeded random half of every group is removed, the gated
network equals the physically pruned one, and the pruned network runs (its split sizes follow the removal).
"""
import re

import pytest
import torch
import torch.nn as nn
from timm.layers import MixedConv2d, SelectiveKernel

from methods.core import KeepPlan, channel_groups, gate_vs_removal, prune_model
from methods.core.errors import PruningError
from test_pruning_core import _randomize


def _cbr(cin, cout, k=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Net(nn.Module):
    """stem -> block -> pooled linear head."""

    def __init__(self, block: nn.Module, cin: int, cout: int) -> None:
        super().__init__()
        self.stem = _cbr(3, cin, 3)
        self.block = block
        self.head = nn.Linear(cout, 10)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class CspBlock(nn.Module):
    """CSP: a conv's output halved by an int split, one half through a residual block, rejoined by concatenation."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.expand_chs = 2 * c
        self.conv_exp = _cbr(c, 2 * c)
        self.block = nn.Sequential(_cbr(c, c, 3), _cbr(c, c, 3))
        self.conv_transition = _cbr(2 * c, c)

    def forward(self, x):
        x = self.conv_exp(x)
        xs, xb = x.split(self.expand_chs // 2, dim=1)
        xb = xb + self.block(xb)
        return self.conv_transition(torch.cat([xs, xb], dim=1))


class ScaleSplit(nn.Module):
    """Res2Net: a conv's output split into `scale` parts of `width`, each part added to the previous part's conv."""

    def __init__(self, c: int = 16, width: int = 6, scale: int = 4) -> None:
        super().__init__()
        self.width, self.scale = width, scale
        self.conv1 = _cbr(c, width * scale)
        self.convs = nn.ModuleList(_cbr(width, width, 3) for _ in range(scale - 1))
        self.conv3 = nn.Sequential(nn.Conv2d(width * scale, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        spx = torch.split(self.conv1(x), self.width, 1)
        out, sp = [], None
        for i, conv in enumerate(self.convs):
            sp = conv(spx[i] if i == 0 else sp + spx[i])
            out.append(sp)
        return torch.relu(self.conv3(torch.cat(out + [spx[-1]], 1)) + x)


class MixedKernel(nn.Module):
    """MixNet: a depthwise conv whose channels are split into parts with kernels 3, 5 and 7 (split_with_sizes)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.conv_pw = _cbr(c, 3 * c)
        self.conv_dw = MixedConv2d(3 * c, 3 * c, kernel_size=[3, 5, 7], depthwise=True)
        self.bn = nn.BatchNorm2d(3 * c)
        self.conv_pwl = nn.Sequential(nn.Conv2d(3 * c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv_pwl(torch.relu(self.bn(self.conv_dw(self.conv_pw(x)))))


class PartialResidual(nn.Module):
    """ReXNet: the block widens the stream; its shortcut adds into the first `in_channels` channels only."""

    def __init__(self, c: int = 16, grow: int = 6, inplace: bool = False) -> None:
        super().__init__()
        self.in_channels, self.inplace = c, inplace
        self.conv_exp = _cbr(c, 4 * c)
        self.conv_pwl = nn.Sequential(nn.Conv2d(4 * c, c + grow, 1, bias=False), nn.BatchNorm2d(c + grow))

    def forward(self, x):
        y = self.conv_pwl(self.conv_exp(x))
        if self.inplace:
            y[:, :self.in_channels] += x
            return y
        return torch.cat([y[:, 0:self.in_channels] + x, y[:, self.in_channels:]], dim=1)


class Stacked(nn.Sequential):
    """Two partial-residual blocks: the second's shortcut is the first's sliced-and-joined output."""

    def __init__(self, inplace: bool) -> None:
        super().__init__(PartialResidual(16, 6, inplace), PartialResidual(22, 6, inplace))


class SkBlock(nn.Module):
    """A selective-kernel conv (timm's): two kernel paths, a small attention fc choosing between them."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.sk = SelectiveKernel(c, c, rd_ratio=1 / 4, rd_divisor=4)
        self.conv = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.conv(self.sk(x)))


class ChannelOffset(nn.Module):
    """A per-channel offset held in a buffer of fixed width: the trace sees an add of a constant, and after a
    removal the buffer no longer fits (a construct the harness cannot prune: its group is excluded)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.register_buffer("offset", torch.linspace(-1, 1, c).view(1, c, 1, 1))

    def forward(self, x):
        return x + self.offset


class SoftmaxMix(nn.Module):
    """A conv whose normalised outputs go through a softmax over the channels: a gated channel still counts in
    the softmax's sum (as exp(0)), a removed one does not, so gating differs from removal (its group is
    excluded, the block named)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.softmax(self.bn(self.conv(x)), dim=1)


def _between(construct: nn.Module) -> nn.Module:
    """stem -> conv -> construct -> conv -> head: only the first conv's group passes through the construct."""
    return _Net(nn.Sequential(_cbr(16, 16, 3), construct, _cbr(16, 16)), 16, 16)


CONSTRUCTS = {
    "csp_split_concat": (lambda: _Net(CspBlock(), 16, 16)),
    "scale_split": (lambda: _Net(ScaleSplit(), 16, 16)),
    "mixed_kernel": (lambda: _Net(MixedKernel(), 16, 16)),
    "partial_residual": (lambda: _Net(Stacked(inplace=False), 16, 28)),
    "partial_residual_inplace": (lambda: _Net(Stacked(inplace=True), 16, 28)),
    "selective_kernel": (lambda: _Net(SkBlock(), 16, 16)),
}


def _random_half(groups, seed=0):
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for g in groups:
        m = torch.zeros(g.units, dtype=torch.bool)
        m[torch.randperm(g.units, generator=gen)[: max(1, g.units // 2)]] = True
        masks[g.id] = m
    return masks


@pytest.mark.parametrize("name", list(CONSTRUCTS))
def test_construct_gate_equals_removal(name):
    torch.manual_seed(0)
    model = _randomize(CONSTRUCTS[name]())
    x = torch.randn(4, 3, 16, 16)
    groups = channel_groups(model, x[:1], "all", name=name)
    masks = _random_half(groups)
    plan = KeepPlan.from_masks(groups, masks, name, input_size=[3, 16, 16])
    pruned = prune_model(model, plan)
    assert gate_vs_removal(model, groups, masks, pruned, x)[2] < 1e-5
    before, after = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in pruned.parameters())
    assert after < 0.6 * before, (before, after)


def test_equal_split_parts_are_tied():
    """The CSP halves and the Res2Net scales keep the same channels in every part (their int split sizes stay
    equal), whichever layer the group is rooted at: each mask unit gates one channel of every part."""
    torch.manual_seed(0)
    for name, producer, parts in (("csp_split_concat", "block.conv_exp.0", 2), ("scale_split", "block.conv1.0", 4)):
        groups = channel_groups(CONSTRUCTS[name]().eval(), torch.randn(1, 3, 16, 16), "all", name=name)
        (point,) = [p for g in groups for p in g.producers if p.module == producer]
        counts = {u: point.units.count(u) for u in point.units}
        assert len(point.channels) == len(set(point.channels)) and set(counts.values()) == {parts}, counts


def test_pruned_split_sizes_follow_the_removal():
    torch.manual_seed(0)
    model = _randomize(CONSTRUCTS["mixed_kernel"]())
    groups = channel_groups(model, torch.randn(1, 3, 16, 16), "all", name="mixed")
    masks = _random_half(groups, seed=3)
    pruned = prune_model(model, KeepPlan.from_masks(groups, masks, "mixed", input_size=[3, 16, 16]))
    conv = pruned.block.conv_dw
    assert conv.splits == [c.in_channels for c in conv.values()] and sum(conv.splits) == pruned.block.bn.num_features
    width = _randomize(CONSTRUCTS["scale_split"]())
    groups = channel_groups(width, torch.randn(1, 3, 16, 16), "all", name="scale")
    pruned = prune_model(width, KeepPlan.from_masks(groups, _random_half(groups), "scale", input_size=[3, 16, 16]))
    assert pruned.block.width == 3 and pruned.block.convs[0][0].in_channels == 3


def test_partial_residual_groups_are_found_in_linear_time():
    """Eight stacked partial-residual blocks: each stream couples with every later block's slice; the group
    finder visits each (layer, channel) pair once per group, so 8 blocks take far less than 8x 1 block's
    calls to torch-pruning's traversal, not an exponential number."""
    torch.manual_seed(0)
    model = _Net(nn.Sequential(*(PartialResidual(16 + 6 * i, 6) for i in range(8))), 16, 64).eval()
    groups = channel_groups(model, torch.randn(1, 3, 16, 16), "all", name="rexnet-like")
    assert len(groups) >= 8 and all(g.gate_points for g in groups)


def test_nothing_prunable_names_the_construct():
    """A network whose only hidden group is normalised across channels is refused, naming the layer."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Flatten(), nn.LazyLinear(10))
    model(torch.randn(1, 3, 8, 8))
    with pytest.raises(PruningError, match="GroupNorm"):
        channel_groups(model, torch.randn(1, 3, 8, 8), "all", name="gn")


@pytest.mark.parametrize("construct, bad, reason", [
    (ChannelOffset, "block.0.0", r"removing it breaks ChannelOffset \(block\.1\): .*size"),
    (SoftmaxMix, "block.1.conv", r"its gate differs from its removal in SoftmaxMix \(block\.1\): relative error"),
])
def test_a_group_a_construct_cannot_take_is_excluded_and_the_rest_pruned(construct, bad, reason):
    """The removal check: the group whose removal breaks the construct (or differs from its gate) is excluded
    with the construct named; every other group stays offered, and a random half of them prunes exactly."""
    torch.manual_seed(0)
    model = _randomize(_between(construct()))
    x = torch.randn(4, 3, 16, 16)
    groups = channel_groups(model, x[:1], "all", name=construct.__name__)
    assert list(groups.excluded) == [bad], groups.excluded
    assert re.search(reason, groups.excluded[bad]), groups.excluded
    assert len(groups) >= 2
    masks = _random_half(groups)
    pruned = prune_model(model, KeepPlan.from_masks(groups, masks, "x", input_size=[3, 16, 16]))
    assert gate_vs_removal(model, groups, masks, pruned, x)[2] < 1e-5


def test_a_network_refused_names_the_construct_that_stopped_it():
    """Nothing prunable left after the removal check: refused, naming the construct (not its wrapper)."""
    model = nn.Sequential(_cbr(3, 8, 3), ChannelOffset(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(PruningError, match=r"nothing to prune.*removing it breaks ChannelOffset \(1\)"):
        channel_groups(model, torch.randn(1, 3, 8, 8), "all", name="offset")
