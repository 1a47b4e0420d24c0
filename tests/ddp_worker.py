"""One torchrun rank for tests/test_ddp.py: the collective checks, then `python -m bench ...`, recorded.

Usage: python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py OUT_DIR bench-args...
Joins the gloo process group itself, runs the collective checks (DECORE's agent gradient averaged over
ranks, sharded evaluation, a rank-dependent plan refused) into OUT_DIR/checks<R>.pt, then runs the bench
command in the same group and writes OUT_DIR/rank<R>.json: the DECORE agents' keep-probabilities and the
keep plan this rank selected, a hash of the network after every training phase, every file it wrote.
One launch for all of it: starting two more Python processes costs more than the checks themselves.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as tdist

B, UNITS = 24, (5, 3)  # samples per rank, units per agent group


def samples() -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Agent weights and 2B samples (actions, correctness), drawn once: rank r gets samples r*B..(r+1)*B."""
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(u, generator=gen) for u in UNITS]
    actions = [torch.bernoulli(torch.full((2 * B, u), 0.6), generator=gen) for u in UNITS]
    correct = torch.rand(2 * B, generator=gen) < 0.7
    return weights, actions, correct


def agent_grads(weights, actions, correct, lam: float = 3.0) -> list[torch.Tensor]:
    from methods.decore import agent_loss

    ws = [w.clone().requires_grad_(True) for w in weights]
    loss, _ = agent_loss(ws, actions, correct, lam)
    loss.backward()
    return [w.grad for w in ws]


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 8 * 8, 10))


def eval_split():
    from bench.engine.data import ArraySplit, make_synthetic

    data = make_synthetic()
    return ArraySplit(data.test.x[:151], data.test.y[:151]), data.mean, data.std


def checks(rank: int) -> dict:
    from bench.engine import dist
    from bench.engine.data import DeviceLoader
    from bench.engine.train import evaluate

    weights, actions, correct = samples()
    mine = slice(rank * B, (rank + 1) * B)
    grads = agent_grads(weights, [a[mine] for a in actions], correct[mine])
    dist.all_reduce_(grads, "mean")
    split, mean, std = eval_split()
    metrics = evaluate(small_net(), DeviceLoader(split, mean, std, 40, channels_last=False, rank=rank, world=2),
                       torch.device("cpu"))
    refused = ""
    try:
        dist.check_same({"g": [0, 1, 2 + rank]}, "the keep plan")
    except RuntimeError as e:
        refused = str(e)
    dist.check_same({"g": [0, 1, 2]}, "the keep plan")  # equal: passes
    return {"grads": grads, "metrics": metrics, "refused": refused,
            "all_true": [dist.all_true(True), dist.all_true(rank == 0)]}


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def install_recorders(seen: dict) -> None:
    """Wrap the engine's training, writing and DECORE's selection so this rank records what it did."""
    import bench.engine.baseline
    import bench.core.io
    import bench.deploy.pruned
    import bench.trial.run
    import methods.decore

    def record_fit(fit):
        def wrapped(model, *args, **kwargs):
            out = fit(model, *args, **kwargs)
            seen["weights"].append(_digest(model))
            return out
        return wrapped

    def record_writes(write):
        def wrapped(path, *args, **kwargs):
            seen["writes"].append(str(path))
            return write(path, *args, **kwargs)
        return wrapped

    def record_select(select):
        def wrapped(self, ctx, **knobs):
            result = select(self, ctx, **knobs)
            seen["keep_prob"], seen["plan"] = result.info["keep_prob"], result.plan.to_json()
            return result
        return wrapped

    bench.engine.baseline.fit = record_fit(bench.engine.baseline.fit)
    bench.trial.run.fit = record_fit(bench.trial.run.fit)
    bench.core.io.atomic_write = bench.deploy.pruned.atomic_write = record_writes(bench.core.io.atomic_write)
    methods.decore.Decore.select = record_select(methods.decore.Decore.select)


if __name__ == "__main__":
    from bench.cli import main

    out, argv, rank = Path(sys.argv[1]), sys.argv[2:], int(os.environ["RANK"])
    tdist.init_process_group("gloo")  # bench's own setup() finds the group and joins no other
    torch.save(checks(rank), out / f"checks{rank}.pt")
    seen: dict = {"keep_prob": None, "plan": None, "weights": [], "writes": []}
    install_recorders(seen)
    code = main(argv)
    (out / f"rank{rank}.json").write_text(json.dumps({**seen, "exit": code}))
    sys.exit(code)
