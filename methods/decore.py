"""DECORE (Alwani, Wang, Madhavan, CVPR 2022), as ../shared/DESIGN.md section 2 specifies.

One agent per channel unit of every group (a residual stream shares one agent per channel), weight
initialised to 6.9. Per sample, each agent draws a ~ Bernoulli(sigmoid(w)) (1 = keep) and the gate
multiplies the channel by a. Reward of group i for sample b:
    R_bi = (channels of group i dropped for sample b) * (+1 if b is classified correctly else -lambda)
and the agents follow REINFORCE with Adam (lr 0.01):
    loss_agents = -(1/N) sum_b sum_i R_bi * sum_j log pi(a_bij)
while the network trains jointly with cross-entropy on the gated forward pass. At the end every
channel with sigmoid(w) < 0.5 is removed.

Named options beyond the paper (all off by default): `reward_baseline` (subtract each group's batch
mean reward), `agent_lr`, `agent_init`, `per_batch` (one action per channel per batch, not per sample),
`lambda_per_stage` (one multiplier of lambda per stage: group i's penalty is lambda * factor[stage of i]).

Under torchrun each rank samples its own actions (its own seed) for its batch_size / N images; the
agents' gradients are averaged across ranks before every Adam step, which equals the one-process
gradient on the whole batch, and the epoch statistics are summed over ranks. With `reward_baseline`
the baseline is each rank's own batch mean; with `per_batch` each rank draws one action per channel.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Context, Knob, KnobError, Method, Result, keep_top, register, round_up
from .core import Gates
from .scored import _parse_floats, stage_of

AGENT_INIT = 6.9
AGENT_LR = 0.01


def break_even_lambda(train_accuracy: float) -> float:
    """The lambda at which dropping a channel has zero expected reward: accuracy = lambda / (1 + lambda).

    Below it the agents learn to drop; at it nothing moves; the paper's lambdas (50-500 on CIFAR) follow
    from near-100% training accuracy. `train_accuracy` is a fraction in (0, 1).
    """
    if not 0.0 < train_accuracy < 1.0:
        raise KnobError(f"training accuracy {train_accuracy} must be a fraction in (0, 1)")
    return train_accuracy / (1.0 - train_accuracy)


def break_even_from_counts(correct: int, seen: int) -> tuple[float, str]:
    """Break-even lambda from counted predictions, and the rule that gave it.

    "measured": correct / errors, i.e. break_even_lambda(correct / seen). With no error in `seen` images the
    accuracy rounds to 100% and the break-even is unbounded; the rule "one error in N" counts one error
    (lambda = seen - 1, the smallest lambda that count is consistent with), and says so. No correct
    prediction: "no correct prediction" (lambda = 1 / seen), the same rule mirrored.
    """
    if seen < 2:
        raise KnobError(f"break-even lambda needs at least 2 counted images, got {seen}")
    if correct >= seen:
        return float(seen - 1), f"one error in {seen}: no error in {seen} images, counted as one"
    if correct <= 0:
        return 1.0 / seen, f"no correct prediction in {seen} images, counted as one"
    return break_even_lambda(correct / seen), "measured"


def agent_loss(weights: Sequence[torch.Tensor], actions: Sequence[torch.Tensor], correct: torch.Tensor,
               lam: float | Sequence[float], reward_baseline: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE loss of the agents and the mean reward per group (both device tensors).

    weights[i]: (units_i,) agent weights; actions[i]: (N, units_i) or (1, units_i) in {0, 1};
    correct: (N,) bool; lam: one lambda, or one per group (option lambda_per_stage).
    Implements -(1/N) sum_b sum_i R_bi sum_j log pi(a_bij), through `flat_agent_loss` on the concatenation.
    """
    if not weights:
        zero = correct.new_zeros((), dtype=torch.float32)
        return zero, zero.new_zeros(0)
    segments = segment_ids([len(w) for w in weights], correct.device)
    lams = lambda_vector(lam, len(weights), correct.device)
    return flat_agent_loss(torch.cat(list(weights)), torch.cat(list(actions), 1), segments, correct, lams,
                           reward_baseline)


def segment_ids(sizes: Sequence[int], device: torch.device) -> torch.Tensor:
    """(units,) group index of every agent in the flat vector: [0]*sizes[0] + [1]*sizes[1] + ..."""
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))


def lambda_vector(lam: float | Sequence[float], groups: int, device: torch.device) -> torch.Tensor:
    values = [float(lam)] * groups if isinstance(lam, (int, float)) else [float(v) for v in lam]
    return torch.tensor(values, dtype=torch.float32, device=device)


def flat_agent_loss(w: torch.Tensor, a: torch.Tensor, segments: torch.Tensor, correct: torch.Tensor,
                    lams: torch.Tensor, reward_baseline: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`agent_loss` over one flat agent vector, in a few batched operations instead of a loop over groups.

    w: (U,) every group's agents, concatenated; a: (N or 1, U) actions; segments: (U,) group of each agent
    (`segment_ids`); lams: (G,) lambda per group. Per-group sums are index_add over `segments` (exact sums
    of 0/1 counts, and neither autocast nor TF32 touches them, unlike a matmul with a one-hot matrix).
    """
    groups = len(lams)
    n = a.shape[0]
    log_pi_j = -F.binary_cross_entropy_with_logits(w.float().expand_as(a), a.float(), reduction="none")  # (n, U)
    log_pi = log_pi_j.new_zeros(n, groups).index_add(1, segments, log_pi_j)                          # (n, G)
    dropped = log_pi_j.new_zeros(n, groups).index_add_(1, segments, 1.0 - a.float())                # (n, G)
    sign = torch.where(correct[:, None], 1.0, -lams[None, :])                                        # (N, G)
    reward = dropped * sign                                                                          # (N, G)
    if reward_baseline:
        reward = reward - reward.mean(0)
    reward = reward.detach()
    loss = -(reward * log_pi).mean(0).sum()
    return loss, reward.mean(0)


class Agents(nn.Module):
    """Every group's agent weights as one flat parameter; iterating yields each group's (units_i,) view."""

    def __init__(self, sizes: Sequence[int], init: float, device: torch.device) -> None:
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.weight = nn.Parameter(torch.full((sum(self.sizes),), float(init), device=device))
        self.register_buffer("segments", segment_ids(self.sizes, device), persistent=False)

    def __iter__(self):
        return iter(self.weight.split(self.sizes))

    def __len__(self) -> int:
        return len(self.sizes)


def make_agents(groups: Sequence[Any], init: float, lr: float, device: torch.device,
                all_reduce: Callable[[Sequence[torch.Tensor], str], None] = lambda tensors, op="sum": None,
                ) -> tuple[Agents, Callable[[], None]]:
    """One agent weight per channel of every group, and the Adam update to run after each training step."""
    agents = Agents([g.units for g in groups], init, device)
    opt = torch.optim.Adam([agents.weight], lr=lr)

    def agent_update() -> None:
        # each rank's loss is a mean over its B samples: the average of the ranks' gradients is the
        # gradient of the mean over all N * B samples, and keeps the agents identical on every rank
        all_reduce([agents.weight.grad], "mean")
        opt.step()
        opt.zero_grad(set_to_none=True)
    return agents, agent_update


class AgentTrace:
    """A record of the policy between epochs, for the agents figure (reporting only: the training is unchanged).

    After agent steps 1, 2, 3, 4, 5, 7, 9, ... (each about 1.25 times the last: some 40 records for 10,000
    steps, so a one-epoch joint phase still shows a trajectory) it stores per group the 10th, 50th and 90th
    percentile of the keep-probabilities and the channels alive (p >= 0.5). `take()` hands the records since
    the last call to the epoch's history row (`agent_steps`, `agent_step`).
    """

    def __init__(self, agents: Agents, ids: list[str]) -> None:
        self.agents, self.ids, self.step, self.next, self.records = agents, ids, 0, 1, []

    def __call__(self) -> None:
        self.step += 1
        if self.step < self.next:
            return
        self.next = max(self.next + 1, math.ceil(self.next * 1.25))
        with torch.no_grad():
            probs = torch.sigmoid(self.agents.weight.detach()).float().cpu().split(self.agents.sizes)
        self.records.append({"step": self.step,
                             "keep_q": {g: torch.quantile(p, torch.tensor([0.1, 0.5, 0.9])).tolist()
                                        for g, p in zip(self.ids, probs)},
                             "alive": {g: int((p >= 0.5).sum()) for g, p in zip(self.ids, probs)}})

    def take(self) -> dict[str, Any]:
        out, self.records = {"agent_step": self.step, "agent_steps": self.records}, []
        return out


class DecoreStep:
    """The gated training step: sample actions, gate, forward, cross-entropy + the agents' REINFORCE loss.

    Every group's actions are drawn by one Bernoulli call over the flat agent vector and the loss is
    `flat_agent_loss`: a handful of operations per step whatever the number of groups.
    """

    def __init__(self, agents: Agents, gates: Gates, ids: list[str], lam: float | list[float],
                 reward_baseline: bool, per_batch: bool, device: torch.device,
                 all_reduce: Callable[[Sequence[torch.Tensor], str], None] = lambda tensors, op="sum": None) -> None:
        self.agents, self.gates, self.ids, self.all_reduce = agents, gates, ids, all_reduce
        self.lams = lambda_vector(lam, len(ids), device)
        self.reward_baseline, self.per_batch = reward_baseline, per_batch
        self.ce = nn.CrossEntropyLoss()
        self.stats = torch.zeros(3 + len(ids), device=device)   # [samples, ce sum, correct, reward per group...]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = 1 if self.per_batch else x.shape[0]
        w = self.agents.weight
        actions = torch.bernoulli(torch.sigmoid(w.detach()).expand(n, -1))        # (n, U), one call
        self.gates.set(dict(zip(self.ids, actions.split(self.agents.sizes, 1))))
        logits = model(x)
        ce = self.ce(logits, y)
        correct = logits.detach().argmax(1) == y
        a_loss, rewards = flat_agent_loss(w, actions, self.agents.segments, correct, self.lams, self.reward_baseline)
        self.stats += torch.cat([torch.stack([ce.new_tensor(float(len(y))), ce.detach() * len(y),
                                              correct.sum().float()]), rewards * len(y)])
        return ce + a_loss, logits

    def read(self) -> dict[str, Any]:
        """Epoch means over every rank's samples, read once from the device, then reset."""
        self.all_reduce([self.stats], "sum")
        s = self.stats.tolist()
        self.stats.zero_()
        n = max(s[0], 1.0)
        per_group = [r / n for r in s[3:]]
        return {"ce_loss": s[1] / n, "gated_top1": 100 * s[2] / n, "reward": sum(per_group),
                "reward_per_group": dict(zip(self.ids, per_group))}


@register("decore")
class Decore(Method):
    knobs: ClassVar[tuple[Knob, ...]] = (
        Knob("lambda", 0.0, 1e5, log=True, open_low=True,
             help="DECORE's penalty for a wrong prediction, > 0 (larger = less compression; see break_even_lambda)"),
    )
    extra_options: ClassVar[dict[str, str]] = {
        "reward_baseline": "subtract each group's batch-mean reward (beyond the paper; off)",
        "agent_lr": f"Adam lr of the agents (paper: {AGENT_LR})",
        "agent_init": f"initial agent weight (paper: {AGENT_INIT})",
        "per_batch": "one action per channel per batch instead of per sample (beyond the paper; off)",
        "lambda_per_stage": "comma-separated multipliers of lambda, one per stage, e.g. 1,0.5,2 (beyond the paper; off)",
    }
    default_scope: ClassVar[str] = "all"
    trains: ClassVar[bool] = True
    example: ClassVar[dict[str, Any]] = {"lambda": 0.01, "agent_init": 0.5, "agent_lr": 0.1}  # fast agents: tests

    def paper_options(self, model: str | None = None) -> dict[str, Any]:
        return {"agent_init": AGENT_INIT, "agent_lr": AGENT_LR, "reward_baseline": False, "per_batch": False,
                "lambda_per_stage": None}

    def non_paper(self, knobs: Mapping[str, Any], scope: str | None = None, model: str | None = None) -> list[str]:
        """As Method.non_paper, the agents' two settings in one phrase: ["agents init 3, lr 0.1"]."""
        out = super().non_paper(knobs, scope, model)
        agents = [p for p in out if p.startswith(("agent_init ", "agent_lr "))]
        if agents:
            text = ", ".join(p.replace("agent_init", "init").replace("agent_lr", "lr") for p in agents)
            out = [f"agents {text}"] + [p for p in out if p not in agents]
        return out

    def check_combination(self, knobs: dict[str, Any]) -> None:
        if knobs.get("lambda") is None:
            raise KnobError("decore needs lambda=<value > 0>, e.g. --knob lambda=2")
        _options(knobs)

    def select(self, ctx: Context, **knobs: Any) -> Result:
        self.check_combination(knobs)
        lam = self.knobs[0].check(knobs["lambda"])
        opts = _options(knobs)
        if ctx.fit is None or ctx.train_loader is None or ctx.recipe is None:
            raise KnobError("decore trains jointly: the engine must pass fit, train_loader and recipe")
        ids = [g.id for g in ctx.groups]
        agents, agent_update = make_agents(ctx.groups, opts["agent_init"], opts["agent_lr"], ctx.device, ctx.all_reduce)

        history: list[dict[str, Any]] = []
        torch.manual_seed(ctx.seed * ctx.world_size + ctx.rank)  # actions differ between ranks (one process: seed)
        with Gates(ctx.model, ctx.groups) as gates:
            lams = group_lambdas(ctx.groups, lam, opts["lambda_per_stage"])
            step = DecoreStep(agents, gates, ids, lams, opts["reward_baseline"], opts["per_batch"], ctx.device,
                              ctx.all_reduce)

            trace = AgentTrace(agents, ids)

            def on_epoch(row: dict[str, Any]) -> None:
                row.update(step.read())
                row.update(self._policy_stats(ctx, agents, ids))
                row.update(trace.take())
                history.append(row)
                ctx.log({k: v for k, v in row.items() if k != "agent_steps"})

            ctx.fit(ctx.model, ctx.train_loader, None, ctx.recipe, ctx.device, step=step,
                    after_step=[agent_update, trace], on_epoch=on_epoch, desc=f"decore lambda={lam:g} ")
        plan = ctx.plan(self._final_masks(agents, ids, ctx.round_to))
        return Result(plan, history, info={"lambda": lam, **{k: v for k, v in opts.items()},
                                           "keep_prob": {i: torch.sigmoid(w.detach()).tolist() for i, w in zip(ids, agents)}})

    @staticmethod
    def _final_masks(agents: Agents, ids: list[str], round_to: int = 1) -> dict[str, torch.Tensor]:
        """Remove every channel with sigmoid(w) < 0.5; a group that would be emptied keeps its likeliest channel.

        With the named option round_to > 1 (beyond the paper), the kept count is rounded up to a multiple
        and the extra channels are the likeliest of those the policy dropped.
        """
        masks = {}
        for gid, w in zip(ids, agents):
            w = w.detach().cpu()
            keep = torch.sigmoid(w) >= 0.5
            count = round_up(max(int(keep.sum()), 1), round_to, len(w))
            masks[gid] = keep if count == int(keep.sum()) else keep_top(w, count)
        return masks

    def _policy_stats(self, ctx: Context, agents: Agents, ids: list[str]) -> dict[str, Any]:
        probs = {gid: torch.sigmoid(w.detach()) for gid, w in zip(ids, agents)}
        stats: dict[str, Any] = {
            "keep_prob": {gid: float(p.mean()) for gid, p in probs.items()},
            "kept_if_pruned": {gid: int((p >= 0.5).sum()) for gid, p in probs.items()},
        }
        if ctx.plan_cost is not None:
            stats.update({f"{k}_if_pruned": v for k, v in ctx.plan_cost(ctx.plan(self._final_masks(agents, ids, ctx.round_to))).items()})
        return stats


def group_lambdas(groups: Sequence[Any], lam: float, factors: tuple[float, ...] | None) -> float | list[float]:
    """Lambda of every group: one value (the paper), or lambda * factor of the group's stage (lambda_per_stage)."""
    if factors is None:
        return lam
    out = []
    for g in groups:
        stage = stage_of(g.id)
        if stage >= len(factors):
            raise KnobError(f"lambda_per_stage has {len(factors)} entries but group {g.id} is in stage {stage + 1}: "
                            "give one factor per stage")
        out.append(lam * factors[stage])
    return out


def _options(knobs: dict[str, Any]) -> dict[str, Any]:
    def flag(v: Any) -> bool:
        if isinstance(v, bool):
            return v
        if str(v).lower() in ("1", "true", "yes", "on"):
            return True
        if str(v).lower() in ("0", "false", "no", "off"):
            return False
        raise KnobError(f"option value {v!r} is not a boolean: use true or false")

    def positive(name: str, default: float) -> float:
        v = float(knobs.get(name, default))
        if not (math.isfinite(v) and (v > 0 or name == "agent_init")):
            raise KnobError(f"decore option {name}={v} must be a positive number")
        return v

    factors = None
    if knobs.get("lambda_per_stage") is not None:
        factors = _parse_floats(knobs["lambda_per_stage"], "lambda_per_stage")
        if not factors or not all(math.isfinite(f) and f > 0 for f in factors):
            raise KnobError(f"lambda_per_stage={knobs['lambda_per_stage']!r} must be positive factors, e.g. 1,0.5,2")
    return {"reward_baseline": flag(knobs.get("reward_baseline", False)), "per_batch": flag(knobs.get("per_batch", False)),
            "agent_lr": positive("agent_lr", AGENT_LR), "agent_init": positive("agent_init", AGENT_INIT),
            "lambda_per_stage": factors}
