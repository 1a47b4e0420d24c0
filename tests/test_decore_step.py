"""DECORE's batched agent loss (one flat agent vector) equals the per-group loss it replaced, value and gradient."""
import pytest
import torch
import torch.nn.functional as F

import models
from methods.core import Gates, channel_groups
from methods.decore import DecoreStep, agent_loss, flat_agent_loss, lambda_vector, make_agents, segment_ids


def per_group_loss(weights, actions, correct, lam, reward_baseline=False):
    """The loop over groups as methods/decore.py computed it before the batched version (the reference)."""
    lams = [float(lam)] * len(weights) if isinstance(lam, (int, float)) else [float(v) for v in lam]
    loss = correct.new_zeros((), dtype=torch.float32)
    rewards = []
    for w, a, lam_i in zip(weights, actions, lams):
        sign = torch.where(correct, 1.0, -lam_i)
        reward = (1.0 - a).sum(1) * sign
        if reward_baseline:
            reward = reward - reward.mean()
        log_pi = -F.binary_cross_entropy_with_logits(w.expand_as(a), a, reduction="none").sum(1)
        loss = loss - (reward.detach() * log_pi).mean()
        rewards.append(reward.detach().mean())
    return loss, torch.stack(rewards)


@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("reward_baseline", [False, True])
@pytest.mark.parametrize("lam", [3.0, [0.5, 2.0, 8.0, 1.0]])
def test_flat_loss_and_gradient_equal_the_per_group_loop(per_batch, reward_baseline, lam):
    gen = torch.Generator().manual_seed(int(per_batch) + 2 * int(reward_baseline))
    sizes, n = [16, 7, 32, 1], 24
    weights = [torch.randn(u, generator=gen) * 2 for u in sizes]
    actions = [torch.bernoulli(torch.full((1 if per_batch else n, u), 0.6), generator=gen) for u in sizes]
    correct = torch.rand(n, generator=gen) < 0.6

    ref_w = [w.clone().requires_grad_(True) for w in weights]
    ref_loss, ref_rewards = per_group_loss(ref_w, actions, correct, lam, reward_baseline)
    ref_loss.backward()

    flat = torch.cat(weights).requires_grad_(True)
    loss, rewards = flat_agent_loss(flat, torch.cat(actions, 1), segment_ids(sizes, flat.device), correct,
                                    lambda_vector(lam, len(sizes), flat.device), reward_baseline)
    loss.backward()
    # the terms reach a few hundred, so float32 summation order alone moves the sum by ~1e-5
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(rewards, ref_rewards, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(flat.grad, torch.cat([w.grad for w in ref_w]), rtol=1e-6, atol=1e-5)
    if not (per_batch and reward_baseline):  # that pair is degenerate: one action per batch minus its mean is 0
        assert ref_loss.abs().item() > 1e-1 and flat.grad.abs().max().item() > 1e-1   # not a vacuous comparison

    listed, _ = agent_loss([w.clone() for w in weights], actions, correct, lam, reward_baseline)  # the list API
    torch.testing.assert_close(listed, ref_loss, rtol=1e-6, atol=1e-4)


def test_step_gates_each_group_with_its_slice_of_the_flat_actions():
    model = models.create("resnet20").train()
    groups = channel_groups(model, torch.randn(1, 3, 32, 32), "all", name="cifar_resnet20")
    ids = [g.id for g in groups]
    agents, update = make_agents(groups, 0.0, 0.01, torch.device("cpu"))   # keep-probability 0.5: many drops
    assert len(list(agents)) == len(groups) and agents.weight.numel() == sum(g.units for g in groups)
    seen = {}
    with Gates(model, groups) as gates:
        original = gates.set
        gates.set = lambda masks: (seen.update(masks), original(masks))
        step = DecoreStep(agents, gates, ids, 2.0, False, False, torch.device("cpu"))
        x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
        loss, _ = step(model, x, y)
        loss.backward()
    assert [tuple(seen[i].shape) for i in ids] == [(6, g.units) for g in groups]
    ref_w = [w.detach().clone().requires_grad_(True) for w in agents]
    correct = step.stats[2].item()
    assert 0 <= correct <= 6
    ref_loss, _ = per_group_loss(ref_w, [seen[i] for i in ids], _correct(model, x, y, gates, seen, ids, groups), 2.0)
    ref_loss.backward()
    torch.testing.assert_close(agents.weight.grad, torch.cat([w.grad for w in ref_w]), rtol=1e-5, atol=1e-6)
    before = agents.weight.detach().clone()
    update()
    assert not torch.equal(before, agents.weight.detach()) and agents.weight.grad is None


def _correct(model, x, y, gates, masks, ids, groups):
    with Gates(model, groups) as g2, torch.no_grad():
        g2.set({i: masks[i] for i in ids})
        return model(x).argmax(1) == y
